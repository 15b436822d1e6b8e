// Elementwise kernels: strided copies with dtype conversion, fills, unary ops and their
// derivatives, broadcasting binary ops, comparisons and select. Float math is done in f32;
// bf16 storage is converted on load and store.

// ---- loads and stores by dtype -------------------------------------------------------------
__device__ __forceinline__ float ld(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, i64 i) { return bf2f(p[i]); }
__device__ __forceinline__ float ld(const i64* p, i64 i) { return (float)p[i]; }
__device__ __forceinline__ void st(float* p, i64 i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, i64 i, float v) { p[i] = f2bf(v); }
__device__ __forceinline__ void st(i64* p, i64 i, float v) { p[i] = (i64)v; }

// ---- copies ----------------------------------------------------------------------------------
// dst (strided) <- src (strided), both views of n elements in row-major order, with conversion.
template <typename S, typename D>
__device__ void copy_strided(i64 n, Layout ls, const S* src, Layout ld_, D* dst) {
    GRID_STRIDE(i, n) { st(dst, strided_index(ld_, i), ld(src, strided_index(ls, i))); }
}
// Same-dtype copies move the bits untouched (i64 values above 2^24, NaN payloads).
template <typename T>
__device__ void copy_bits(i64 n, Layout ls, const T* src, Layout ld_, T* dst) {
    GRID_STRIDE(i, n) { dst[strided_index(ld_, i)] = src[strided_index(ls, i)]; }
}
extern "C" __global__ void copy_f32_f32(i64 n, Layout ls, const float* s, Layout l, float* d) { copy_bits(n, ls, s, l, d); }
extern "C" __global__ void copy_bf16_bf16(i64 n, Layout ls, const bf16_t* s, Layout l, bf16_t* d) { copy_bits(n, ls, s, l, d); }
extern "C" __global__ void copy_i64_i64(i64 n, Layout ls, const i64* s, Layout l, i64* d) { copy_bits(n, ls, s, l, d); }
extern "C" __global__ void copy_f32_bf16(i64 n, Layout ls, const float* s, Layout l, bf16_t* d) { copy_strided(n, ls, s, l, d); }
extern "C" __global__ void copy_bf16_f32(i64 n, Layout ls, const bf16_t* s, Layout l, float* d) { copy_strided(n, ls, s, l, d); }
extern "C" __global__ void copy_i64_f32(i64 n, Layout ls, const i64* s, Layout l, float* d) { copy_strided(n, ls, s, l, d); }
extern "C" __global__ void copy_i64_bf16(i64 n, Layout ls, const i64* s, Layout l, bf16_t* d) { copy_strided(n, ls, s, l, d); }
extern "C" __global__ void copy_f32_i64(i64 n, Layout ls, const float* s, Layout l, i64* d) { copy_strided(n, ls, s, l, d); }
extern "C" __global__ void copy_bf16_i64(i64 n, Layout ls, const bf16_t* s, Layout l, i64* d) { copy_strided(n, ls, s, l, d); }

// Contiguous f32 copy, 4 elements per thread when aligned: the bandwidth reference for benchmarks.
extern "C" __global__ void copy_f32_contig(i64 n, const float* __restrict__ s, float* __restrict__ d) {
    i64 n4 = n / 4;
    const float4* s4 = reinterpret_cast<const float4*>(s);
    float4* d4 = reinterpret_cast<float4*>(d);
    GRID_STRIDE(i, n4) { d4[i] = s4[i]; }
    GRID_STRIDE(j, n - n4 * 4) { d[n4 * 4 + j] = s[n4 * 4 + j]; }
}

extern "C" __global__ void fill_f32(i64 n, float v, float* d) { GRID_STRIDE(i, n) { d[i] = v; } }
extern "C" __global__ void fill_bf16(i64 n, float v, bf16_t* d) { bf16_t b = f2bf(v); GRID_STRIDE(i, n) { d[i] = b; } }
extern "C" __global__ void fill_i64(i64 n, i64 v, i64* d) { GRID_STRIDE(i, n) { d[i] = v; } }

// ---- unary -----------------------------------------------------------------------------------
// Op codes follow flamingo_kernels::cpu::elementwise::UnaryOp's order; p0, p1 are its scalars.
#define FL_SQRT_2_OVER_PI 0.7978845608028654f
#define FL_FRAC_1_SQRT_2 0.7071067811865476f
#define FL_INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float unary_fwd(int op, float x, float p0, float p1) {
    switch (op) {
        case 0: return -x;
        case 1: return expf(x);
        case 2: return logf(x);
        case 3: return sqrtf(x);
        case 4: return rsqrtf(x);
        case 5: return tanhf(x);
        case 6: return 1.0f / (1.0f + expf(-x));
        case 7: return x > 0.0f ? x : 0.0f;
        case 8: return 0.5f * x * (1.0f + erff(x * FL_FRAC_1_SQRT_2));
        case 9: { float u = FL_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x); return 0.5f * x * (1.0f + tanhf(u)); }
        case 10: return x / (1.0f + expf(-x));
        case 11: return x * x;
        case 12: return fabsf(x);
        case 13: return powf(x, p0);
        default: return x * p0 + p1;
    }
}
__device__ __forceinline__ float unary_bwd(int op, float x, float y, float g, float p0) {
    switch (op) {
        case 0: return -g;
        case 1: return g * y;
        case 2: return g / x;
        case 3: return g * 0.5f / y;
        case 4: return g * -0.5f * y * y * y;
        case 5: return g * (1.0f - y * y);
        case 6: return g * y * (1.0f - y);
        case 7: return x > 0.0f ? g : 0.0f;
        case 8: {
            float cdf = 0.5f * (1.0f + erff(x * FL_FRAC_1_SQRT_2));
            float pdf = FL_INV_SQRT_2PI * expf(-0.5f * x * x);
            return g * (cdf + x * pdf);
        }
        case 9: {
            float u = FL_SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
            float t = tanhf(u);
            float du = FL_SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
            return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
        }
        case 10: { float s = 1.0f / (1.0f + expf(-x)); return g * s * (1.0f + x * (1.0f - s)); }
        case 11: return g * 2.0f * x;
        case 12: return x > 0.0f ? g : (x < 0.0f ? -g : 0.0f);
        case 13: return g * p0 * powf(x, p0 - 1.0f);
        default: return g * p0;
    }
}

// ---- 16-byte packs for the contiguous kernels ------------------------------------------------
// Pack<T>: N elements of T in one 16-byte load/store (4 f32 or 8 bf16), converted to f32.
template <typename T> struct Pack;
template <> struct Pack<float> {
    static const int N = 4;
    __device__ static void load(const float* p, i64 i, float* v) {
        float4 a = __ldg(reinterpret_cast<const float4*>(p) + i);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    }
    __device__ static void store(float* p, i64 i, const float* v) {
        reinterpret_cast<float4*>(p)[i] = make_float4(v[0], v[1], v[2], v[3]);
    }
};
template <> struct Pack<bf16_t> {
    static const int N = 8;
    __device__ static void load(const bf16_t* p, i64 i, float* v) {
        uint4 a = __ldg(reinterpret_cast<const uint4*>(p) + i);
        unsigned int w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) { v[2 * k] = bf2f((bf16_t)(w[k] & 0xffffu)); v[2 * k + 1] = bf2f((bf16_t)(w[k] >> 16)); }
    }
    __device__ static void store(bf16_t* p, i64 i, const float* v) {
        unsigned int w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = (unsigned int)f2bf(v[2 * k]) | ((unsigned int)f2bf(v[2 * k + 1]) << 16);
        reinterpret_cast<uint4*>(p)[i] = make_uint4(w[0], w[1], w[2], w[3]);
    }
};
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15ull) == 0; }

// out[i] = f(a[i], b[i], c[i]) over n contiguous elements: 16-byte packs when every pointer is
// aligned (the caching allocator's blocks are; views with an offset may not be), scalars for the
// tail and otherwise. Unused inputs may repeat another pointer.
template <typename T, typename F>
__device__ void map3(i64 n, const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c, T* __restrict__ out, F f) {
    const int N = Pack<T>::N;
    i64 done = 0;
    if (aligned16(a) && aligned16(b) && aligned16(c) && aligned16(out)) {
        i64 nv = n / N;
        GRID_STRIDE(i, nv) {
            float va[N], vb[N], vc[N];
            Pack<T>::load(a, i, va);
            Pack<T>::load(b, i, vb);
            Pack<T>::load(c, i, vc);
#pragma unroll
            for (int k = 0; k < N; ++k) va[k] = f(va[k], vb[k], vc[k]);
            Pack<T>::store(out, i, va);
        }
        done = nv * N;
    }
    GRID_STRIDE(j, n - done) { i64 k = done + j; st(out, k, f(ld(a, k), ld(b, k), ld(c, k))); }
}
// As map3 with one and two inputs (no redundant loads).
template <typename T, typename F>
__device__ void map1(i64 n, const T* __restrict__ a, T* __restrict__ out, F f) {
    const int N = Pack<T>::N;
    i64 done = 0;
    if (aligned16(a) && aligned16(out)) {
        i64 nv = n / N;
        GRID_STRIDE(i, nv) {
            float va[N];
            Pack<T>::load(a, i, va);
#pragma unroll
            for (int k = 0; k < N; ++k) va[k] = f(va[k]);
            Pack<T>::store(out, i, va);
        }
        done = nv * N;
    }
    GRID_STRIDE(j, n - done) { i64 k = done + j; st(out, k, f(ld(a, k))); }
}
template <typename T, typename F>
__device__ void map2(i64 n, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, F f) {
    const int N = Pack<T>::N;
    i64 done = 0;
    if (aligned16(a) && aligned16(b) && aligned16(out)) {
        i64 nv = n / N;
        GRID_STRIDE(i, nv) {
            float va[N], vb[N];
            Pack<T>::load(a, i, va);
            Pack<T>::load(b, i, vb);
#pragma unroll
            for (int k = 0; k < N; ++k) va[k] = f(va[k], vb[k]);
            Pack<T>::store(out, i, va);
        }
        done = nv * N;
    }
    GRID_STRIDE(j, n - done) { i64 k = done + j; st(out, k, f(ld(a, k), ld(b, k))); }
}

template <typename T>
__device__ void unary_t(i64 n, int op, float p0, float p1, const T* __restrict__ x, T* __restrict__ y) {
    map1(n, x, y, [=](float v) { return unary_fwd(op, v, p0, p1); });
}
template <typename T>
__device__ void unary_bwd_t(i64 n, int op, float p0, const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ dx) {
    map3(n, x, y, g, dx, [=](float xv, float yv, float gv) { return unary_bwd(op, xv, yv, gv, p0); });
}
extern "C" __global__ void unary_f32(i64 n, int op, float p0, float p1, const float* x, float* y) { unary_t(n, op, p0, p1, x, y); }
extern "C" __global__ void unary_bf16(i64 n, int op, float p0, float p1, const bf16_t* x, bf16_t* y) { unary_t(n, op, p0, p1, x, y); }
extern "C" __global__ void unary_bwd_f32(i64 n, int op, float p0, const float* x, const float* y, const float* g, float* dx) { unary_bwd_t(n, op, p0, x, y, g, dx); }
extern "C" __global__ void unary_bwd_bf16(i64 n, int op, float p0, const bf16_t* x, const bf16_t* y, const bf16_t* g, bf16_t* dx) { unary_bwd_t(n, op, p0, x, y, g, dx); }

// ---- binary (broadcast through strides; output contiguous) ------------------------------------
// Op codes follow BinaryOp: add, sub, mul, div, max, min; then comparisons 6: gt, 7: ge, 8: lt, 9: eq
// (comparisons give 1/0).
__device__ __forceinline__ float binary_apply(int op, float a, float b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return (a >= b || b != b) ? a : b;
        case 5: return (a <= b || b != b) ? a : b;
        case 6: return a > b ? 1.0f : 0.0f;
        case 7: return a >= b ? 1.0f : 0.0f;
        case 8: return a < b ? 1.0f : 0.0f;
        default: return a == b ? 1.0f : 0.0f;
    }
}
template <typename T>
__device__ void binary_t(i64 n, int op, Layout la, const T* a, Layout lb, const T* b, T* out) {
    GRID_STRIDE(i, n) { st(out, i, binary_apply(op, ld(a, strided_index(la, i)), ld(b, strided_index(lb, i)))); }
}
// Both operands contiguous and of the output's shape: no index arithmetic.
template <typename T>
__device__ void binary_contig_t(i64 n, int op, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out) {
    map2(n, a, b, out, [=](float x, float y) { return binary_apply(op, x, y); });
}
extern "C" __global__ void binary_f32(i64 n, int op, Layout la, const float* a, Layout lb, const float* b, float* o) { binary_t(n, op, la, a, lb, b, o); }
extern "C" __global__ void binary_bf16(i64 n, int op, Layout la, const bf16_t* a, Layout lb, const bf16_t* b, bf16_t* o) { binary_t(n, op, la, a, lb, b, o); }
extern "C" __global__ void binary_contig_f32(i64 n, int op, const float* a, const float* b, float* o) { binary_contig_t(n, op, a, b, o); }
extern "C" __global__ void binary_contig_bf16(i64 n, int op, const bf16_t* a, const bf16_t* b, bf16_t* o) { binary_contig_t(n, op, a, b, o); }

// out = cond != 0 ? a : b, all three broadcast through strides.
template <typename T>
__device__ void select_t(i64 n, Layout lc, const T* c, Layout la, const T* a, Layout lb, const T* b, T* out) {
    GRID_STRIDE(i, n) {
        float cv = ld(c, strided_index(lc, i));
        st(out, i, cv != 0.0f ? ld(a, strided_index(la, i)) : ld(b, strided_index(lb, i)));
    }
}
extern "C" __global__ void select_f32(i64 n, Layout lc, const float* c, Layout la, const float* a, Layout lb, const float* b, float* o) { select_t(n, lc, c, la, a, lb, b, o); }
extern "C" __global__ void select_bf16(i64 n, Layout lc, const bf16_t* c, Layout la, const bf16_t* a, Layout lb, const bf16_t* b, bf16_t* o) { select_t(n, lc, c, la, a, lb, b, o); }

// ---- dropout -----------------------------------------------------------------------------------
// Counter-based: element i's uniform comes from a hash of (seed, i), so the mask depends only on
// the seed and the position, never on the launch shape.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
extern "C" __global__ void dropout_mask_f32(i64 n, unsigned long long seed, float p, float keep_scale, float* mask) {
    GRID_STRIDE(i, n) {
        unsigned long long h = splitmix64(seed ^ splitmix64((unsigned long long)i));
        float u = (float)(h >> 40) * (1.0f / 16777216.0f);
        mask[i] = u < p ? 0.0f : keep_scale;
    }
}
