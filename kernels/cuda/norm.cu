// Layer normalisation over the last axis of a contiguous [rows, n] f32 array.
// Forward: one block per row; saves mean and 1/sqrt(var + eps) per row for the backward.
extern "C" __global__ void layer_norm_f32(i64 rows, i64 n, float eps, const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ b, float* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * n;
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += xr[j];
        float mu = block_sum(s) / (float)n;
        float v = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) { float d = xr[j] - mu; v += d * d; }
        float rs = rsqrtf(block_sum(v) / (float)n + eps);
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) y[r * n + j] = (xr[j] - mu) * rs * w[j] + b[j];
        if (threadIdx.x == 0) { mean[r] = mu; rstd[r] = rs; }
    }
}
// dx = rstd·(w·g − mean(w·g) − x̂·mean(w·g·x̂)), one block per row.
extern "C" __global__ void layer_norm_bwd_dx_f32(i64 rows, i64 n, const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ w,
                                                 const float* __restrict__ mean, const float* __restrict__ rstd, float* __restrict__ dx) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * n;
        const float* gr = g + r * n;
        float mu = mean[r], rs = rstd[r];
        float s1 = 0.0f, s2 = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            float wg = w[j] * gr[j];
            s1 += wg;
            s2 += wg * (xr[j] - mu) * rs;
        }
        s1 = block_sum(s1) / (float)n;
        s2 = block_sum(s2) / (float)n;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            float xh = (xr[j] - mu) * rs;
            dx[r * n + j] = rs * (w[j] * gr[j] - s1 - xh * s2);
        }
    }
}
// dw[c] = Σ_r g·x̂, db[c] = Σ_r g: one thread per column, rows in order.
extern "C" __global__ void layer_norm_bwd_params_f32(i64 rows, i64 n, const float* __restrict__ x, const float* __restrict__ g,
                                                     const float* __restrict__ mean, const float* __restrict__ rstd, float* __restrict__ dw, float* __restrict__ db) {
    GRID_STRIDE(c, n) {
        float aw = 0.0f, ab = 0.0f;
        for (i64 r = 0; r < rows; ++r) {
            float gv = g[r * n + c];
            aw += gv * (x[r * n + c] - mean[r]) * rstd[r];
            ab += gv;
        }
        dw[c] = aw;
        db[c] = ab;
    }
}
