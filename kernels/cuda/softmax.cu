// Softmax / log-softmax over the last axis of a contiguous [rows, n] f32 array, one block per row.
extern "C" __global__ void softmax_rows_f32(i64 rows, i64 n, int log_, const float* __restrict__ x, float* __restrict__ y) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * n;
        float* yr = y + r * n;
        float m = FL_NEG_INF;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, xr[j]);
        m = block_max(m);
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += expf(xr[j] - m);
        s = block_sum(s);
        if (log_) {
            float lse = m + logf(s);
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] - lse;
        } else {
            float inv = 1.0f / s;
            for (i64 j = threadIdx.x; j < n; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
        }
    }
}
// softmax: dx = y·(g − Σ g·y); log-softmax: dx = g − exp(y)·Σ g.
extern "C" __global__ void softmax_rows_bwd_f32(i64 rows, i64 n, int log_, const float* __restrict__ y, const float* __restrict__ g, float* __restrict__ dx) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* yr = y + r * n;
        const float* gr = g + r * n;
        float* dr = dx + r * n;
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += log_ ? gr[j] : gr[j] * yr[j];
        s = block_sum(s);
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) dr[j] = log_ ? gr[j] - expf(yr[j]) * s : yr[j] * (gr[j] - s);
    }
}
