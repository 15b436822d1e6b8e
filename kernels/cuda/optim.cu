// In-place optimiser updates on contiguous f32 slices (PyTorch semantics, as the CPU kernels).
struct AdamWHyper {
    float step_size;  // lr / (1 − β1^t)
    float bc2_sqrt;   // sqrt(1 − β2^t)
    float decay;      // 1 − lr·wd
    float beta1, beta2, eps;
};
extern "C" __global__ void adamw_f32(i64 n, AdamWHyper h, float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v) {
    GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi = h.beta1 * m[i] + (1.0f - h.beta1) * gi;
        float vi = h.beta2 * v[i] + (1.0f - h.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * h.decay - h.step_size * mi / (sqrtf(vi) / h.bc2_sqrt + h.eps);
    }
}
// d = g + wd·p; without momentum p −= lr·d; else buf = first ? d : μ·buf + d; p −= lr·(nesterov ? d + μ·buf : buf).
extern "C" __global__ void sgd_f32(i64 n, float lr, float mu, float wd, int nesterov, int first, float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf) {
    GRID_STRIDE(i, n) {
        float d = g[i] + wd * p[i];
        if (mu == 0.0f) { p[i] -= lr * d; continue; }
        float b = first ? d : mu * buf[i] + d;
        buf[i] = b;
        p[i] -= lr * (nesterov ? d + mu * b : b);
    }
}
