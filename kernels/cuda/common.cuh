// Shared helpers for every kernel file. The Rust side prepends this text to each .cu source
// before NVRTC compiles it, so no include path is needed. Kept free of CUDA headers on purpose:
// the kernels compile with NVRTC alone (bf16 is handled as raw 16-bit patterns).
#define FL_MAX_RANK 8
#define FL_NEG_INF (__int_as_float(0xff800000))
typedef unsigned short bf16_t;
typedef long long i64;

// bf16 <-> f32. Rounding is round-to-nearest-even, NaN stays NaN (as half::bf16::from_f32).
__device__ __forceinline__ float bf2f(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ bf16_t f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// A strided view of up to FL_MAX_RANK dimensions (element units). Mirrors `CudaLayout` in Rust.
struct Layout {
    i64 shape[FL_MAX_RANK];
    i64 stride[FL_MAX_RANK];
    i64 offset;
    int rank;
};

// Storage index of the i-th element (row-major order) of the view.
__device__ __forceinline__ i64 strided_index(const Layout& l, i64 i) {
    i64 off = l.offset;
    for (int d = l.rank - 1; d >= 0; --d) {
        i64 s = l.shape[d];
        off += (i % s) * l.stride[d];
        i /= s;
    }
    return off;
}

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)blockDim.x * gridDim.x)

// Block-wide sum and max for blockDim.x a multiple of 32, at most 1024. Every thread gets the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ float block_sum(float v) {
    __shared__ float buf[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nw) ? buf[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) buf[0] = v;
    __syncthreads();
    return buf[0];
}
__device__ float block_max(float v) {
    __shared__ float buf[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    v = (threadIdx.x < nw) ? buf[threadIdx.x] : FL_NEG_INF;
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) buf[0] = v;
    __syncthreads();
    return buf[0];
}
