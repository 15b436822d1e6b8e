// Gathers and scatter-adds along the middle axis of [outer, n, inner] arrays (indices checked on
// the host before launch).
template <typename T>
__device__ void index_select_t(i64 outer, i64 n, i64 inner, i64 k, const T* __restrict__ x, const i64* __restrict__ idx, T* __restrict__ out) {
    GRID_STRIDE(i, outer * k * inner) {
        i64 c = i % inner, j = (i / inner) % k, o = i / (inner * k);
        out[i] = x[(o * n + idx[j]) * inner + c];
    }
}
extern "C" __global__ void index_select_f32(i64 outer, i64 n, i64 inner, i64 k, const float* x, const i64* idx, float* out) { index_select_t(outer, n, inner, k, x, idx, out); }
extern "C" __global__ void index_select_bf16(i64 outer, i64 n, i64 inner, i64 k, const bf16_t* x, const i64* idx, bf16_t* out) { index_select_t(outer, n, inner, k, x, idx, out); }
extern "C" __global__ void index_select_i64(i64 outer, i64 n, i64 inner, i64 k, const i64* x, const i64* idx, i64* out) { index_select_t(outer, n, inner, k, x, idx, out); }
// dx[o, idx[j], c] += g[o, j, c] (dx zeroed first). Repeated indices meet in atomics, so the
// summation order of repeats is not fixed on the GPU.
extern "C" __global__ void index_add_f32(i64 outer, i64 n, i64 inner, i64 k, const float* __restrict__ g, const i64* __restrict__ idx, float* __restrict__ dx) {
    GRID_STRIDE(i, outer * k * inner) {
        i64 c = i % inner, j = (i / inner) % k, o = i / (inner * k);
        atomicAdd(dx + (o * n + idx[j]) * inner + c, g[i]);
    }
}
