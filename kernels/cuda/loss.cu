// Fused softmax cross-entropy over the last axis of [rows, v] f32 logits; targets are i64 with
// −1 meaning "ignored". No probability tensor is stored: the backward recomputes from lse.
// loss_r = (1−ε)(lse − x_t) + ε(lse − mean_j x_j); ignored rows give 0.
extern "C" __global__ void cross_entropy_rows_f32(i64 rows, i64 v, float smoothing, const float* __restrict__ x, const i64* __restrict__ t,
                                                  float* __restrict__ loss, float* __restrict__ lse) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * v;
        float m = FL_NEG_INF;
        for (i64 j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, xr[j]);
        m = block_max(m);
        float s = 0.0f, sx = 0.0f;
        for (i64 j = threadIdx.x; j < v; j += blockDim.x) { s += expf(xr[j] - m); sx += xr[j]; }
        s = block_sum(s);
        sx = block_sum(sx);
        if (threadIdx.x == 0) {
            float l = m + logf(s);
            lse[r] = l;
            i64 tr = t[r];
            loss[r] = tr < 0 ? 0.0f : (1.0f - smoothing) * (l - xr[tr]) + smoothing * (l - sx / (float)v);
        }
    }
}
// out[0] = Σ loss / count, summed in order by one block.
extern "C" __global__ void mean_of_f32(i64 n, float inv_count, const float* __restrict__ x, float* __restrict__ out) {
    float acc = 0.0f;
    for (i64 j = threadIdx.x; j < n; j += blockDim.x) acc += x[j];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = acc * inv_count;
}
// dx_r = (g/count)·(softmax(x_r) − (1−ε)·onehot(t_r) − ε/v); zero for ignored rows. g is the
// upstream scalar gradient, read on the device.
extern "C" __global__ void cross_entropy_rows_bwd_f32(i64 rows, i64 v, float smoothing, float inv_count, const float* __restrict__ x,
                                                      const i64* __restrict__ t, const float* __restrict__ lse, const float* __restrict__ g,
                                                      float* __restrict__ dx) {
    float scale = g[0] * inv_count;
    GRID_STRIDE(i, rows * v) {
        i64 r = i / v, j = i % v;
        i64 tr = t[r];
        float d = 0.0f;
        if (tr >= 0) {
            d = expf(x[i] - lse[r]) - smoothing / (float)v;
            if (j == tr) d -= 1.0f - smoothing;
            d *= scale;
        }
        dx[i] = d;
    }
}
