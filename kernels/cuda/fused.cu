// Fused kernels of the testbed on the GPU (f32): tanh-gated residual, weight standardisation and
// masked cross-attention. Their CPU twins are kernels/src/cpu/{gated,standardize,xattn}.rs; the
// selftest compares the two.

// ---- tanh-gated residual: y = x + tanh(α)·f --------------------------------------------------
extern "C" __global__ void gated_residual_f32(i64 n, const float* __restrict__ x, const float* __restrict__ f, const float* __restrict__ alpha, float* __restrict__ y) {
    float g = tanhf(alpha[0]);
    GRID_STRIDE(i, n) { y[i] = x[i] + g * f[i]; }
}
// df = tanh(α)·g (df may be null) and one partial Σ g∘f per block (summed by the next kernel).
extern "C" __global__ void gated_residual_bwd_f32(i64 n, const float* __restrict__ g, const float* __restrict__ f, const float* __restrict__ alpha,
                                                  float* __restrict__ df, float* __restrict__ partial) {
    float gate = tanhf(alpha[0]);
    float acc = 0.0f;
    GRID_STRIDE(i, n) {
        float gv = g[i];
        if (df) df[i] = gate * gv;
        acc += gv * f[i];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}
// dα = (1 − tanh²α)·Σ partial, one block, fixed order.
extern "C" __global__ void gated_residual_dalpha_f32(i64 parts, const float* __restrict__ partial, const float* __restrict__ alpha, float* __restrict__ dalpha) {
    float acc = 0.0f;
    for (i64 j = threadIdx.x; j < parts; j += blockDim.x) acc += partial[j];
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
        float t = tanhf(alpha[0]);
        dalpha[0] = (1.0f - t * t) * acc;
    }
}

// ---- weight standardisation, one block per output channel ----------------------------------
// mode 0 (timm): u = n·(var + p); mode 1 (DeepMind): u = max(n·var, p). s = u^(−1/2).
__device__ __forceinline__ float ws_scale(float var, i64 n, int mode, float p, bool* active) {
    float u = mode == 0 ? (float)n * (var + p) : (float)n * var;
    *active = true;
    if (mode == 1 && u <= p) { u = p; *active = false; }
    return rsqrtf(u);
}
extern "C" __global__ void weight_standardize_f32(i64 rows, i64 n, int mode, float p, const float* __restrict__ w, const float* __restrict__ gain, float* __restrict__ y) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* wr = w + r * n;
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += wr[j];
        float mean = block_sum(s) / (float)n;
        float v = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) { float c = wr[j] - mean; v += c * c; }
        bool active;
        float sc = ws_scale(block_sum(v) / (float)n, n, mode, p, &active) * gain[r];
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) y[r * n + j] = (wr[j] - mean) * sc;
    }
}
// dgain = Σ dy·c·s; dc = dy·gain·s − (Σ dy·gain·c)·s³·c (while active); dw = dc − mean(dc).
extern "C" __global__ void weight_standardize_bwd_f32(i64 rows, i64 n, int mode, float p, const float* __restrict__ w, const float* __restrict__ gain,
                                                      const float* __restrict__ dy, float* __restrict__ dw, float* __restrict__ dgain) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* wr = w + r * n;
        const float* dr = dy + r * n;
        float s = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s += wr[j];
        float mean = block_sum(s) / (float)n;
        float v = 0.0f, dot = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) { float c = wr[j] - mean; v += c * c; dot += dr[j] * c; }
        v = block_sum(v);
        dot = block_sum(dot);
        bool active;
        float sc = ws_scale(v / (float)n, n, mode, p, &active);
        float g = gain[r];
        float k3 = active ? g * dot * sc * sc * sc : 0.0f;
        float sum = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) sum += dr[j] * g * sc - k3 * (wr[j] - mean);
        float mdc = block_sum(sum) / (float)n;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) dw[r * n + j] = dr[j] * g * sc - k3 * (wr[j] - mean) - mdc;
        if (threadIdx.x == 0) dgain[r] = dot * sc;
    }
}

// ---- masked cross-attention -----------------------------------------------------------------
// q, o, do: [B, T, H, D]; k, v, dk, dv: [B, M, R, H, D]; media: [B, T] (0 = none, else 1..=M);
// lse: [B, T, H]. One warp per (b, t, h) query row, lanes over D (D ≤ 32·FL_XA_PER_LANE), online
// softmax over the row's keys: medium m−1 (mode 0) or media 0..m−1 (mode 1). Rows with media 0
// get exact zeros.
#define FL_XA_PER_LANE 8
struct XAttnDims { i64 b, t, m, r, h, d; int mode; float scale; };

__device__ __forceinline__ void xa_keys(const XAttnDims& s, i64 mi, i64* first, i64* count) {
    if (s.mode == 0) { *first = (mi - 1) * s.r; *count = s.r; } else { *first = 0; *count = mi * s.r; }
}

extern "C" __global__ void masked_xattn_fwd_f32(XAttnDims s, const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                const i64* __restrict__ media, float* __restrict__ o, float* __restrict__ lse) {
    int lane = threadIdx.x & 31;
    i64 rows = s.b * s.t * s.h;
    for (i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += ((i64)gridDim.x * blockDim.x) >> 5) {
        i64 hh = row % s.h, bt = row / s.h, bb = bt / s.t;
        i64 mi = media[bt];
        const float* qr = q + row * s.d;
        float* orow = o + row * s.d;
        if (mi <= 0) {
            for (i64 d = lane; d < s.d; d += 32) orow[d] = 0.0f;
            if (lane == 0) lse[row] = 0.0f;
            continue;
        }
        float qv[FL_XA_PER_LANE], acc[FL_XA_PER_LANE];
        for (int i = 0; i < FL_XA_PER_LANE; ++i) {
            i64 d = lane + 32 * i;
            qv[i] = d < s.d ? qr[d] * s.scale : 0.0f;
            acc[i] = 0.0f;
        }
        i64 first, count;
        xa_keys(s, mi, &first, &count);
        float mx = FL_NEG_INF, l = 0.0f;
        for (i64 j = first; j < first + count; ++j) {
            const float* kr = k + ((bb * s.m * s.r + j) * s.h + hh) * s.d;
            const float* vr = v + ((bb * s.m * s.r + j) * s.h + hh) * s.d;
            float part = 0.0f;
            for (int i = 0; i < FL_XA_PER_LANE; ++i) { i64 d = lane + 32 * i; if (d < s.d) part += qv[i] * kr[d]; }
            float sc = warp_sum(part);
            float mn = fmaxf(mx, sc);
            float corr = expf(mx - mn), pj = expf(sc - mn);
            l = l * corr + pj;
            for (int i = 0; i < FL_XA_PER_LANE; ++i) { i64 d = lane + 32 * i; if (d < s.d) acc[i] = acc[i] * corr + pj * vr[d]; }
            mx = mn;
        }
        float inv = 1.0f / l;
        for (int i = 0; i < FL_XA_PER_LANE; ++i) { i64 d = lane + 32 * i; if (d < s.d) orow[d] = acc[i] * inv; }
        if (lane == 0) lse[row] = mx + logf(l);
    }
}

// Backward, one warp per query row: p = exp(q·k·scale − lse), dv += p·do, ds = p·(do·v − δ),
// dq = Σ ds·k·scale, dk += ds·q·scale. dk and dv are zeroed first and accumulated with atomics
// (rows sharing a medium meet there), so their summation order is not fixed.
extern "C" __global__ void masked_xattn_bwd_f32(XAttnDims s, const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                                                const i64* __restrict__ media, const float* __restrict__ o, const float* __restrict__ lse,
                                                const float* __restrict__ d_o, float* __restrict__ dq, float* __restrict__ dk, float* __restrict__ dv) {
    int lane = threadIdx.x & 31;
    i64 rows = s.b * s.t * s.h;
    for (i64 row = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows; row += ((i64)gridDim.x * blockDim.x) >> 5) {
        i64 hh = row % s.h, bt = row / s.h, bb = bt / s.t;
        i64 mi = media[bt];
        float* dqr = dq + row * s.d;
        if (mi <= 0) {
            for (i64 d = lane; d < s.d; d += 32) dqr[d] = 0.0f;
            continue;
        }
        float qv[FL_XA_PER_LANE], dov[FL_XA_PER_LANE], dqv[FL_XA_PER_LANE];
        float dpart = 0.0f;
        for (int i = 0; i < FL_XA_PER_LANE; ++i) {
            i64 d = lane + 32 * i;
            bool in = d < s.d;
            qv[i] = in ? q[row * s.d + d] : 0.0f;
            dov[i] = in ? d_o[row * s.d + d] : 0.0f;
            dqv[i] = 0.0f;
            if (in) dpart += dov[i] * o[row * s.d + d];
        }
        float delta = warp_sum(dpart);
        float lr = lse[row];
        i64 first, count;
        xa_keys(s, mi, &first, &count);
        for (i64 j = first; j < first + count; ++j) {
            i64 base = ((bb * s.m * s.r + j) * s.h + hh) * s.d;
            float part = 0.0f, dp = 0.0f;
            for (int i = 0; i < FL_XA_PER_LANE; ++i) {
                i64 d = lane + 32 * i;
                if (d < s.d) { part += qv[i] * k[base + d]; dp += dov[i] * v[base + d]; }
            }
            float sc = warp_sum(part) * s.scale;
            dp = warp_sum(dp);
            float pj = expf(sc - lr);
            float ds = pj * (dp - delta);
            for (int i = 0; i < FL_XA_PER_LANE; ++i) {
                i64 d = lane + 32 * i;
                if (d < s.d) {
                    dqv[i] += ds * k[base + d] * s.scale;
                    atomicAdd(dk + base + d, ds * qv[i] * s.scale);
                    atomicAdd(dv + base + d, pj * dov[i]);
                }
            }
        }
        for (int i = 0; i < FL_XA_PER_LANE; ++i) { i64 d = lane + 32 * i; if (d < s.d) dqr[d] = dqv[i]; }
    }
}

// ---- masked cross-attention, tiled (the default; the warp-per-row kernels above serve D > 128) --
// Work comes in tiles: ≤ TQ consecutive tokens of one batch row sharing one media index, built on
// the host (`tiles`: [n_tiles, 4] i64 = b, t0, len, mi). A tile attends to one contiguous range of
// the [M·R] key axis (medium mi−1, or media 0..mi−1), so every block runs small dense matrix
// products out of shared memory: S = Q·Kᵀ, online softmax, O += P·V. The backward is two kernels:
// dQ per tile (it also stores δ = rowsum(dO∘O)), and dK, dV per (b, medium, chunk of KC keys),
// which walks the tiles that see that medium (a CSR list from the host) — every key gradient is
// written by exactly one block, in a fixed order: no atomics, no zero fill, deterministic.
// Inputs and outputs are f32 or bf16 (T); everything on chip is f32. 128 threads per block.
//
// Register tiles: a block computes C [ROWS × COLS]; thread (tr, tc) = (tid / (COLS/CT), tid %
// (COLS/CT)) owns rows tr + i·(ROWS/RT) and columns tc + j·(COLS/CT). Shared rows are padded to an
// odd length so that the strided reads of a warp fall in distinct banks.
#define XA_THREADS 128
__device__ __forceinline__ float xld(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float xld(const bf16_t* p, i64 i) { return bf2f(p[i]); }
__device__ __forceinline__ void xst(float* p, i64 i, float v) { p[i] = v; }
__device__ __forceinline__ void xst(bf16_t* p, i64 i, float v) { p[i] = f2bf(v); }

// acc += A·Bᵀ, A [ROWS][lda], B [COLS][ldb], over kk < K.
template <int ROWS, int COLS, int RT, int CT>
__device__ __forceinline__ void mm_abt(float (&acc)[RT][CT], const float* A, int lda, const float* B, int ldb, int K) {
    const int tr = threadIdx.x / (COLS / CT), tc = threadIdx.x % (COLS / CT);
    for (int kk = 0; kk < K; ++kk) {
        float a[RT], b[CT];
#pragma unroll
        for (int i = 0; i < RT; ++i) a[i] = A[(tr + i * (ROWS / RT)) * lda + kk];
#pragma unroll
        for (int j = 0; j < CT; ++j) b[j] = B[(tc + j * (COLS / CT)) * ldb + kk];
#pragma unroll
        for (int i = 0; i < RT; ++i)
#pragma unroll
            for (int j = 0; j < CT; ++j) acc[i][j] += a[i] * b[j];
    }
}
// acc += A·B, A [ROWS][lda] (K along a row), B [K][ldb].
template <int ROWS, int COLS, int RT, int CT>
__device__ __forceinline__ void mm_ab(float (&acc)[RT][CT], const float* A, int lda, const float* B, int ldb, int K) {
    const int tr = threadIdx.x / (COLS / CT), tc = threadIdx.x % (COLS / CT);
    for (int kk = 0; kk < K; ++kk) {
        float a[RT], b[CT];
#pragma unroll
        for (int i = 0; i < RT; ++i) a[i] = A[(tr + i * (ROWS / RT)) * lda + kk];
#pragma unroll
        for (int j = 0; j < CT; ++j) b[j] = B[kk * ldb + tc + j * (COLS / CT)];
#pragma unroll
        for (int i = 0; i < RT; ++i)
#pragma unroll
            for (int j = 0; j < CT; ++j) acc[i][j] += a[i] * b[j];
    }
}
// acc += Aᵀ·B, A [K][lda] (C's rows along A's columns), B [K][ldb].
template <int ROWS, int COLS, int RT, int CT>
__device__ __forceinline__ void mm_atb(float (&acc)[RT][CT], const float* A, int lda, const float* B, int ldb, int K) {
    const int tr = threadIdx.x / (COLS / CT), tc = threadIdx.x % (COLS / CT);
    for (int kk = 0; kk < K; ++kk) {
        float a[RT], b[CT];
#pragma unroll
        for (int i = 0; i < RT; ++i) a[i] = A[kk * lda + tr + i * (ROWS / RT)];
#pragma unroll
        for (int j = 0; j < CT; ++j) b[j] = B[kk * ldb + tc + j * (COLS / CT)];
#pragma unroll
        for (int i = 0; i < RT; ++i)
#pragma unroll
            for (int j = 0; j < CT; ++j) acc[i][j] += a[i] * b[j];
    }
}
template <int ROWS, int COLS, int RT, int CT>
__device__ __forceinline__ int frag_row(int i) { return threadIdx.x / (COLS / CT) + i * (ROWS / RT); }
template <int ROWS, int COLS, int RT, int CT>
__device__ __forceinline__ int frag_col(int j) { return threadIdx.x % (COLS / CT) + j * (COLS / CT); }

// Loads `n` rows (of the [.., H, D] layout: row r at base + r·row_stride) into dst [ROWS][LD],
// times `scale`; rows n..ROWS and columns D..DM are zero.
template <typename T, int ROWS, int DM, int LD>
__device__ __forceinline__ void xa_load(float* dst, const T* src, i64 base, i64 row_stride, int n, int d, float scale) {
    // Every load is issued before the first store: the loads overlap instead of queueing one by one.
    constexpr int PER = ROWS * DM / XA_THREADS;
    float x[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        int e = threadIdx.x + i * XA_THREADS, r = e / DM, c = e % DM;
        x[i] = (r < n && c < d) ? xld(src, base + r * row_stride + c) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        int e = threadIdx.x + i * XA_THREADS;
        dst[(e / DM) * LD + e % DM] = x[i] * scale;
    }
}
// δ[r] = Σ_c a[r][c]·b[r][c] for the ROWS rows of two shared tiles (XA_THREADS / ROWS threads per
// row, combined with shuffles); rows ≥ n give 0.
template <int ROWS, int DM, int LD>
__device__ __forceinline__ float xa_row_dot(const float* a, const float* b, int n, int d, int* row) {
    constexpr int TPR = XA_THREADS / ROWS;
    const int r = threadIdx.x / TPR, part = threadIdx.x % TPR;
    float acc = 0.0f;
    for (int c = part; c < d; c += TPR) acc += a[r * LD + c] * b[r * LD + c];
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    *row = (part == 0 && r < n) ? r : -1;
    return acc;
}
// The key range of a tile with media index mi (≥ 1), in units of the [M·R] key axis.
__device__ __forceinline__ void xa_range(const XAttnDims& s, i64 mi, i64* first, i64* count) {
    if (s.mode == 0) { *first = (mi - 1) * s.r; *count = s.r; } else { *first = 0; *count = mi * s.r; }
}

// Forward: one block per (tile, head). O = softmax(Q·Kᵀ·scale)·V over the tile's keys, lse saved.
template <typename T, int TQ, int KC, int DM, int SRT, int SCT, int ORT, int OCT>
__device__ void xa_fwd(const XAttnDims& s, const i64* __restrict__ tiles, const T* __restrict__ q, const T* __restrict__ k,
                       const T* __restrict__ v, T* __restrict__ o, float* __restrict__ lse) {
    constexpr int LD = DM + 1, LP = KC + 1;
    __shared__ float qs[TQ * LD], ks[KC * LD], vs[KC * LD], ps[TQ * LP];
    __shared__ float row_m[TQ], row_l[TQ], row_c[TQ];
    const i64 h = blockIdx.x % s.h, tile = blockIdx.x / s.h;
    const i64 b = tiles[4 * tile], t0 = tiles[4 * tile + 1], mi = tiles[4 * tile + 3];
    const int len = (int)tiles[4 * tile + 2], d = (int)s.d;
    const i64 qrow = s.h * s.d;                   // stride between tokens in q, o
    const i64 qbase = ((b * s.t + t0) * s.h + h) * s.d;
    if (mi <= 0) {                                // no image yet: exact zeros
        for (int e = threadIdx.x; e < len * d; e += XA_THREADS) xst(o, qbase + (e / d) * qrow + e % d, 0.0f);
        for (int r = threadIdx.x; r < len; r += XA_THREADS) lse[(b * s.t + t0 + r) * s.h + h] = 0.0f;
        return;
    }
    xa_load<T, TQ, DM, LD>(qs, q, qbase, qrow, len, d, s.scale);
    for (int r = threadIdx.x; r < TQ; r += XA_THREADS) { row_m[r] = FL_NEG_INF; row_l[r] = 0.0f; }
    float acc[ORT][OCT];
#pragma unroll
    for (int i = 0; i < ORT; ++i)
#pragma unroll
        for (int j = 0; j < OCT; ++j) acc[i][j] = 0.0f;
    i64 first, count;
    xa_range(s, mi, &first, &count);
    for (i64 c0 = first; c0 < first + count; c0 += KC) {
        const int kc = (int)min((i64)KC, first + count - c0);
        const i64 kbase = ((b * s.m * s.r + c0) * s.h + h) * s.d;
        __syncthreads();  // the previous chunk's readers of ks, vs, ps are done
        xa_load<T, KC, DM, LD>(ks, k, kbase, qrow, kc, d, 1.0f);
        xa_load<T, KC, DM, LD>(vs, v, kbase, qrow, kc, d, 1.0f);
        __syncthreads();
        float sc[SRT][SCT];
#pragma unroll
        for (int i = 0; i < SRT; ++i)
#pragma unroll
            for (int j = 0; j < SCT; ++j) sc[i][j] = 0.0f;
        mm_abt<TQ, KC, SRT, SCT>(sc, qs, LD, ks, LD, d);
#pragma unroll
        for (int i = 0; i < SRT; ++i)
#pragma unroll
            for (int j = 0; j < SCT; ++j) {
                int c = frag_col<TQ, KC, SRT, SCT>(j);
                ps[frag_row<TQ, KC, SRT, SCT>(i) * LP + c] = c < kc ? sc[i][j] : FL_NEG_INF;
            }
        __syncthreads();
        // Online softmax, one thread per row.
        for (int r = threadIdx.x; r < TQ; r += XA_THREADS) {
            float mx = row_m[r];
            for (int c = 0; c < kc; ++c) mx = fmaxf(mx, ps[r * LP + c]);
            float corr = expf(row_m[r] - mx), sum = 0.0f;
            for (int c = 0; c < KC; ++c) {
                float p = c < kc ? expf(ps[r * LP + c] - mx) : 0.0f;
                ps[r * LP + c] = p;
                sum += p;
            }
            row_l[r] = row_l[r] * corr + sum;
            row_m[r] = mx;
            row_c[r] = corr;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < ORT; ++i) {
            float corr = row_c[frag_row<TQ, DM, ORT, OCT>(i)];
#pragma unroll
            for (int j = 0; j < OCT; ++j) acc[i][j] *= corr;
        }
        mm_ab<TQ, DM, ORT, OCT>(acc, ps, LP, vs, LD, kc);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < ORT; ++i) {
        int r = frag_row<TQ, DM, ORT, OCT>(i);
        if (r >= len) continue;
        float inv = 1.0f / row_l[r];
#pragma unroll
        for (int j = 0; j < OCT; ++j) {
            int c = frag_col<TQ, DM, ORT, OCT>(j);
            if (c < d) xst(o, qbase + r * qrow + c, acc[i][j] * inv);
        }
    }
    for (int r = threadIdx.x; r < len; r += XA_THREADS) lse[(b * s.t + t0 + r) * s.h + h] = row_m[r] + logf(row_l[r]);
}

// Backward, part 1: one block per (tile, head). δ = rowsum(dO∘O) (stored for part 2),
// P = exp(Q·Kᵀ·scale − lse), dS = P∘(dO·Vᵀ − δ), dQ = dS·K·scale.
template <typename T, int TQ, int KC, int DM, int SRT, int SCT, int ORT, int OCT>
__device__ void xa_bwd_dq(const XAttnDims& s, const i64* __restrict__ tiles, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                          const T* __restrict__ o, const T* __restrict__ d_o, const float* __restrict__ lse, T* __restrict__ dq, float* __restrict__ delta) {
    constexpr int LD = DM + 1, LP = KC + 1;
    __shared__ float qs[TQ * LD], dos[TQ * LD], ks[KC * LD], vs[KC * LD], ps[TQ * LP];
    __shared__ float row_lse[TQ], row_d[TQ];
    const i64 h = blockIdx.x % s.h, tile = blockIdx.x / s.h;
    const i64 b = tiles[4 * tile], t0 = tiles[4 * tile + 1], mi = tiles[4 * tile + 3];
    const int len = (int)tiles[4 * tile + 2], d = (int)s.d;
    const i64 qrow = s.h * s.d;
    const i64 qbase = ((b * s.t + t0) * s.h + h) * s.d;
    if (mi <= 0) {
        for (int e = threadIdx.x; e < len * d; e += XA_THREADS) xst(dq, qbase + (e / d) * qrow + e % d, 0.0f);
        for (int r = threadIdx.x; r < len; r += XA_THREADS) delta[(b * s.t + t0 + r) * s.h + h] = 0.0f;
        return;
    }
    xa_load<T, TQ, DM, LD>(qs, q, qbase, qrow, len, d, s.scale);
    xa_load<T, TQ, DM, LD>(dos, d_o, qbase, qrow, len, d, 1.0f);
    xa_load<T, TQ, DM, LD>(ks, o, qbase, qrow, len, d, 1.0f);  // O, staged in the key buffer (KC = TQ)
    __syncthreads();
    {
        int r;
        float part = xa_row_dot<TQ, DM, LD>(dos, ks, len, d, &r);
        if (threadIdx.x % (XA_THREADS / TQ) == 0) {
            int rr = threadIdx.x / (XA_THREADS / TQ);
            row_d[rr] = part;
            row_lse[rr] = rr < len ? lse[(b * s.t + t0 + rr) * s.h + h] : 0.0f;
        }
        if (r >= 0) delta[(b * s.t + t0 + r) * s.h + h] = part;
    }
    float acc[ORT][OCT];
#pragma unroll
    for (int i = 0; i < ORT; ++i)
#pragma unroll
        for (int j = 0; j < OCT; ++j) acc[i][j] = 0.0f;
    i64 first, count;
    xa_range(s, mi, &first, &count);
    for (i64 c0 = first; c0 < first + count; c0 += KC) {
        const int kc = (int)min((i64)KC, first + count - c0);
        const i64 kbase = ((b * s.m * s.r + c0) * s.h + h) * s.d;
        __syncthreads();
        xa_load<T, KC, DM, LD>(ks, k, kbase, qrow, kc, d, 1.0f);
        xa_load<T, KC, DM, LD>(vs, v, kbase, qrow, kc, d, 1.0f);
        __syncthreads();
        float sc[SRT][SCT], dp[SRT][SCT];
#pragma unroll
        for (int i = 0; i < SRT; ++i)
#pragma unroll
            for (int j = 0; j < SCT; ++j) { sc[i][j] = 0.0f; dp[i][j] = 0.0f; }
        mm_abt<TQ, KC, SRT, SCT>(sc, qs, LD, ks, LD, d);
        mm_abt<TQ, KC, SRT, SCT>(dp, dos, LD, vs, LD, d);
#pragma unroll
        for (int i = 0; i < SRT; ++i) {
            int r = frag_row<TQ, KC, SRT, SCT>(i);
#pragma unroll
            for (int j = 0; j < SCT; ++j) {
                int c = frag_col<TQ, KC, SRT, SCT>(j);
                float p = (c < kc && r < len) ? expf(sc[i][j] - row_lse[r]) : 0.0f;
                ps[r * LP + c] = p * (dp[i][j] - row_d[r]);
            }
        }
        __syncthreads();
        mm_ab<TQ, DM, ORT, OCT>(acc, ps, LP, ks, LD, kc);
    }
#pragma unroll
    for (int i = 0; i < ORT; ++i) {
        int r = frag_row<TQ, DM, ORT, OCT>(i);
        if (r >= len) continue;
#pragma unroll
        for (int j = 0; j < OCT; ++j) {
            int c = frag_col<TQ, DM, ORT, OCT>(j);
            if (c < d) xst(dq, qbase + r * qrow + c, acc[i][j] * s.scale);
        }
    }
}

// Backward, part 2: one block per (b, medium, chunk of KC keys of that medium, head).
// Walks the tiles that see the medium (list_off / list_tiles, CSR over b·M + medium):
// dV += Pᵀ·dO, dK += dSᵀ·(Q·scale). Keys no tile sees get zeros.
template <typename T, int TQ, int KC, int DM, int SRT, int SCT, int ORT, int OCT>
__device__ void xa_bwd_dkdv(const XAttnDims& s, const i64* __restrict__ tiles, const i64* __restrict__ list_off, const i64* __restrict__ list_tiles,
                            const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ d_o,
                            const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv) {
    constexpr int LD = DM + 1, LP = KC + 1;
    __shared__ float qs[TQ * LD], dos[TQ * LD], ks[KC * LD], vs[KC * LD], ps[TQ * LP];
    __shared__ float row_lse[TQ], row_d[TQ];
    const i64 chunks = (s.r + KC - 1) / KC;
    const i64 h = blockIdx.x % s.h, rest = blockIdx.x / s.h;
    const i64 chunk = rest % chunks, bm = rest / chunks;  // bm = b·M + medium
    const i64 b = bm / s.m, medium = bm % s.m;
    const i64 c0 = medium * s.r + chunk * KC;              // first key on the [M·R] axis
    const int kc = (int)min((i64)KC, s.r - chunk * KC), d = (int)s.d;
    const i64 qrow = s.h * s.d;
    const i64 kbase = ((b * s.m * s.r + c0) * s.h + h) * s.d;
    xa_load<T, KC, DM, LD>(ks, k, kbase, qrow, kc, d, 1.0f);
    xa_load<T, KC, DM, LD>(vs, v, kbase, qrow, kc, d, 1.0f);
    float adk[ORT][OCT], adv[ORT][OCT];
#pragma unroll
    for (int i = 0; i < ORT; ++i)
#pragma unroll
        for (int j = 0; j < OCT; ++j) { adk[i][j] = 0.0f; adv[i][j] = 0.0f; }
    for (i64 li = list_off[bm]; li < list_off[bm + 1]; ++li) {
        const i64 tile = list_tiles[li];
        const i64 t0 = tiles[4 * tile + 1];
        const int len = (int)tiles[4 * tile + 2];
        const i64 qbase = ((b * s.t + t0) * s.h + h) * s.d;
        __syncthreads();  // the previous tile's readers of qs, dos, ps are done
        xa_load<T, TQ, DM, LD>(qs, q, qbase, qrow, len, d, s.scale);
        xa_load<T, TQ, DM, LD>(dos, d_o, qbase, qrow, len, d, 1.0f);
        for (int r = threadIdx.x; r < TQ; r += XA_THREADS) {
            row_lse[r] = r < len ? lse[(b * s.t + t0 + r) * s.h + h] : 0.0f;
            row_d[r] = r < len ? delta[(b * s.t + t0 + r) * s.h + h] : 0.0f;
        }
        __syncthreads();
        float sc[SRT][SCT], dp[SRT][SCT];
#pragma unroll
        for (int i = 0; i < SRT; ++i)
#pragma unroll
            for (int j = 0; j < SCT; ++j) { sc[i][j] = 0.0f; dp[i][j] = 0.0f; }
        mm_abt<TQ, KC, SRT, SCT>(sc, qs, LD, ks, LD, d);
        mm_abt<TQ, KC, SRT, SCT>(dp, dos, LD, vs, LD, d);
        // P first (for dV), then dS (for dK) in the same buffer.
#pragma unroll
        for (int i = 0; i < SRT; ++i) {
            int r = frag_row<TQ, KC, SRT, SCT>(i);
#pragma unroll
            for (int j = 0; j < SCT; ++j) {
                int c = frag_col<TQ, KC, SRT, SCT>(j);
                float p = (c < kc && r < len) ? expf(sc[i][j] - row_lse[r]) : 0.0f;
                sc[i][j] = p;
                ps[r * LP + c] = p;
            }
        }
        __syncthreads();
        mm_atb<KC, DM, ORT, OCT>(adv, ps, LP, dos, LD, TQ);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < SRT; ++i) {
            int r = frag_row<TQ, KC, SRT, SCT>(i);
#pragma unroll
            for (int j = 0; j < SCT; ++j) ps[r * LP + frag_col<TQ, KC, SRT, SCT>(j)] = sc[i][j] * (dp[i][j] - row_d[r]);
        }
        __syncthreads();
        mm_atb<KC, DM, ORT, OCT>(adk, ps, LP, qs, LD, TQ);
    }
#pragma unroll
    for (int i = 0; i < ORT; ++i) {
        int r = frag_row<KC, DM, ORT, OCT>(i);
        if (r >= kc) continue;
#pragma unroll
        for (int j = 0; j < OCT; ++j) {
            int c = frag_col<KC, DM, ORT, OCT>(j);
            if (c < d) {
                xst(dk, kbase + r * qrow + c, adk[i][j]);
                xst(dv, kbase + r * qrow + c, adv[i][j]);
            }
        }
    }
}

// Instances: D ≤ 64 with 32-token tiles and 32-key chunks; D ≤ 128 with 16 and 16.
#define XA_INSTANCES(T, TN)                                                                                                      \
    extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_fwd_##TN##_d64(XAttnDims s, const i64* tiles, const T* q, const T* k, const T* v, T* o, float* lse) { \
        xa_fwd<T, 32, 32, 64, 2, 4, 4, 4>(s, tiles, q, k, v, o, lse);                                                              \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_fwd_##TN##_d128(XAttnDims s, const i64* tiles, const T* q, const T* k, const T* v, T* o, float* lse) { \
        xa_fwd<T, 16, 16, 128, 1, 2, 2, 8>(s, tiles, q, k, v, o, lse);                                                             \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_bwd_dq_##TN##_d64(XAttnDims s, const i64* tiles, const T* q, const T* k, const T* v, const T* o, \
                                                                                  const T* d_o, const float* lse, T* dq, float* delta) { \
        xa_bwd_dq<T, 32, 32, 64, 2, 4, 4, 4>(s, tiles, q, k, v, o, d_o, lse, dq, delta);                                             \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_bwd_dq_##TN##_d128(XAttnDims s, const i64* tiles, const T* q, const T* k, const T* v, const T* o, \
                                                                                   const T* d_o, const float* lse, T* dq, float* delta) { \
        xa_bwd_dq<T, 16, 16, 128, 1, 2, 2, 8>(s, tiles, q, k, v, o, d_o, lse, dq, delta);                                            \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_bwd_dkdv_##TN##_d64(XAttnDims s, const i64* tiles, const i64* list_off, const i64* list_tiles, \
                                                                                    const T* q, const T* k, const T* v, const T* d_o, const float* lse, \
                                                                                    const float* delta, T* dk, T* dv) {               \
        xa_bwd_dkdv<T, 32, 32, 64, 2, 4, 4, 4>(s, tiles, list_off, list_tiles, q, k, v, d_o, lse, delta, dk, dv);                    \
    }                                                                                                                            \
    extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_bwd_dkdv_##TN##_d128(XAttnDims s, const i64* tiles, const i64* list_off, const i64* list_tiles, \
                                                                                     const T* q, const T* k, const T* v, const T* d_o, const float* lse, \
                                                                                     const float* delta, T* dk, T* dv) {              \
        xa_bwd_dkdv<T, 16, 16, 128, 1, 2, 2, 8>(s, tiles, list_off, list_tiles, q, k, v, d_o, lse, delta, dk, dv);                   \
    }
XA_INSTANCES(float, f32)
XA_INSTANCES(bf16_t, bf16)

// ---- masked cross-attention on the tensor cores (bf16 in and out, D ≤ 64) -----------------------
// The same work split as the tiled kernels above, with 64-token tiles and 64-key chunks, and the
// products on mma.sync.m16n8k16 (bf16 operands, f32 accumulators): each of the 4 warps owns 16
// rows (queries in the forward and dQ kernels, keys in the dK/dV kernel). Softmax statistics and
// all accumulators stay f32 in registers; P and dS are rounded to bf16 only as mma operands.
// Fragment layouts (PTX ISA, m16n8k16, lane = 4·g + tg): A regs {A[g][2tg..], A[g+8][2tg..],
// A[g][2tg+8..], A[g+8][2tg+8..]}; B regs {B[2tg..][g], B[2tg+8..][g]} (read from Bᵀ stored
// row-major); C {C[g][2tg], C[g][2tg+1], C[g+8][2tg], C[g+8][2tg+1]}.
#define XT_T 64             // tokens per tile = keys per chunk
#define XT_DM 64            // largest head dim
#define XT_LD (XT_DM + 8)   // bf16 row stride of every shared tile (rows of 64 + 8 padding)

__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned ld2(const bf16_t* p) { return *reinterpret_cast<const unsigned*>(p); }
__device__ __forceinline__ unsigned pack_bf2(float lo, float hi) { return (unsigned)f2bf(lo) | ((unsigned)f2bf(hi) << 16); }

// Loads rows [0, n) × columns [0, d) of a [.., H, D] bf16 tensor (row r at base + r·stride) into a
// [64][XT_LD] tile (`rows`) and/or its transpose [64 (d)][XT_LD] (`cols`); the rest is zero.
__device__ __forceinline__ void xt_load(bf16_t* rows, bf16_t* cols, const bf16_t* src, i64 base, i64 stride, int n, int d) {
    if (d == XT_DM && (stride & 7) == 0 && (((unsigned long long)(src + base)) & 15ull) == 0) {
        // Whole aligned rows: 16-byte loads (8 threads per row), all in flight before the stores.
        constexpr int PER = XT_T * XT_DM / 8 / XA_THREADS;
        uint4 x[PER];
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            int e = threadIdx.x + i * XA_THREADS, r = e >> 3, c = (e & 7) * 8;
            x[i] = r < n ? *reinterpret_cast<const uint4*>(src + base + r * stride + c) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            int e = threadIdx.x + i * XA_THREADS, r = e >> 3, c = (e & 7) * 8;
            if (rows) *reinterpret_cast<uint4*>(rows + r * XT_LD + c) = x[i];
            if (cols) {
                unsigned w[4] = {x[i].x, x[i].y, x[i].z, x[i].w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    cols[(c + 2 * j) * XT_LD + r] = (bf16_t)(w[j] & 0xffffu);
                    cols[(c + 2 * j + 1) * XT_LD + r] = (bf16_t)(w[j] >> 16);
                }
            }
        }
        return;
    }
    constexpr int PER = XT_T * XT_DM / XA_THREADS;
    bf16_t x[PER];
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        int e = threadIdx.x + i * XA_THREADS, r = e / XT_DM, c = e % XT_DM;
        x[i] = (r < n && c < d) ? src[base + r * stride + c] : (bf16_t)0;
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) {
        int e = threadIdx.x + i * XA_THREADS, r = e / XT_DM, c = e % XT_DM;
        if (rows) rows[r * XT_LD + c] = x[i];
        if (cols) cols[c * XT_LD + r] = x[i];
    }
}
// acc[nt] += A[16 rows][64] · Bt[nt·8 .. nt·8+8][64]ᵀ, A and Bt in shared memory (row stride XT_LD).
__device__ __forceinline__ void xt_mm_smem(float (&acc)[8][4], const bf16_t* A, const bf16_t* Bt) {
    const int lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
#pragma unroll
    for (int k0 = 0; k0 < XT_DM; k0 += 16) {
        unsigned a[4] = {ld2(A + g * XT_LD + k0 + 2 * tg), ld2(A + (g + 8) * XT_LD + k0 + 2 * tg), ld2(A + g * XT_LD + k0 + 2 * tg + 8),
                         ld2(A + (g + 8) * XT_LD + k0 + 2 * tg + 8)};
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const bf16_t* bp = Bt + (nt * 8 + g) * XT_LD + k0 + 2 * tg;
            mma16816(acc[nt], a, ld2(bp), ld2(bp + 8));
        }
    }
}
// As xt_mm_smem with A given as register fragments (4 k-steps of 16).
__device__ __forceinline__ void xt_mm_rega(float (&acc)[8][4], const unsigned (&a)[4][4], const bf16_t* Bt) {
    const int lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const bf16_t* bp = Bt + (nt * 8 + g) * XT_LD + j * 16 + 2 * tg;
            mma16816(acc[nt], a[j], ld2(bp), ld2(bp + 8));
        }
}
// A fragments of a 16 × 64 matrix held as C fragments (8 n-tiles of 8 columns), rounded to bf16.
__device__ __forceinline__ void xt_c_to_a(unsigned (&a)[4][4], const float (&c)[8][4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        a[j][0] = pack_bf2(c[2 * j][0], c[2 * j][1]);
        a[j][1] = pack_bf2(c[2 * j][2], c[2 * j][3]);
        a[j][2] = pack_bf2(c[2 * j + 1][0], c[2 * j + 1][1]);
        a[j][3] = pack_bf2(c[2 * j + 1][2], c[2 * j + 1][3]);
    }
}
// A fragments of rows [row0, row0+16) of a shared tile.
__device__ __forceinline__ void xt_smem_to_a(unsigned (&a)[4][4], const bf16_t* tile, int row0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    const bf16_t* A = tile + row0 * XT_LD;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        a[j][0] = ld2(A + g * XT_LD + j * 16 + 2 * tg);
        a[j][1] = ld2(A + (g + 8) * XT_LD + j * 16 + 2 * tg);
        a[j][2] = ld2(A + g * XT_LD + j * 16 + 2 * tg + 8);
        a[j][3] = ld2(A + (g + 8) * XT_LD + j * 16 + 2 * tg + 8);
    }
}
__device__ __forceinline__ void xt_zero(float (&acc)[8][4]) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.0f;
}
// Stores a warp's 16 × 64 C-fragment matrix (times `mul`) to rows row0.. of a [.., H, D] tensor,
// rows < n and columns < d only.
__device__ __forceinline__ void xt_store(bf16_t* dst, i64 base, i64 stride, int row0, int n, int d, const float (&c)[8][4], float mul0, float mul1) {
    const int lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            int r = row0 + g + (e >= 2 ? 8 : 0), col = nt * 8 + 2 * tg + (e & 1);
            if (r < n && col < d) dst[base + r * stride + col] = f2bf(c[nt][e] * (e >= 2 ? mul1 : mul0));
        }
}

extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_fwd_bf16_tc64(XAttnDims s, const i64* __restrict__ tiles, const bf16_t* __restrict__ q,
                                                                          const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, bf16_t* __restrict__ o,
                                                                          float* __restrict__ lse) {
    __shared__ __align__(16) bf16_t qs[XT_T * XT_LD], ks[XT_T * XT_LD], vt[XT_DM * XT_LD];
    const i64 h = blockIdx.x % s.h, tile = blockIdx.x / s.h;
    const i64 b = tiles[4 * tile], t0 = tiles[4 * tile + 1], mi = tiles[4 * tile + 3];
    const int len = (int)tiles[4 * tile + 2], d = (int)s.d;
    const i64 stride = s.h * s.d, qbase = ((b * s.t + t0) * s.h + h) * s.d;
    if (mi <= 0) {
        for (int e = threadIdx.x; e < len * d; e += XA_THREADS) o[qbase + (e / d) * stride + e % d] = 0;
        for (int r = threadIdx.x; r < len; r += XA_THREADS) lse[(b * s.t + t0 + r) * s.h + h] = 0.0f;
        return;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    xt_load(qs, nullptr, q, qbase, stride, len, d);
    float m0 = FL_NEG_INF, m1 = FL_NEG_INF, l0 = 0.0f, l1 = 0.0f;  // rows g and g + 8 of the warp
    float acc[8][4];
    xt_zero(acc);
    i64 first, count;
    xa_range(s, mi, &first, &count);
    for (i64 c0 = first; c0 < first + count; c0 += XT_T) {
        const int kc = (int)min((i64)XT_T, first + count - c0);
        const i64 kbase = ((b * s.m * s.r + c0) * s.h + h) * s.d;
        __syncthreads();
        xt_load(ks, nullptr, k, kbase, stride, kc, d);
        xt_load(nullptr, vt, v, kbase, stride, kc, d);
        __syncthreads();
        float sc[8][4];
        xt_zero(sc);
        xt_mm_smem(sc, qs + warp * 16 * XT_LD, ks);
        float mx0 = FL_NEG_INF, mx1 = FL_NEG_INF;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int col = nt * 8 + 2 * tg + (e & 1);
                sc[nt][e] = col < kc ? sc[nt][e] * s.scale : FL_NEG_INF;
                if (e < 2) mx0 = fmaxf(mx0, sc[nt][e]); else mx1 = fmaxf(mx1, sc[nt][e]);
            }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        const float corr0 = expf(m0 - n0), corr1 = expf(m1 - n1);
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p = expf(sc[nt][e] - (e < 2 ? n0 : n1));  // −inf → 0
                sc[nt][e] = p;
                if (e < 2) sum0 += p; else sum1 += p;
            }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        l0 = l0 * corr0 + sum0;
        l1 = l1 * corr1 + sum1;
        m0 = n0;
        m1 = n1;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            acc[nt][0] *= corr0; acc[nt][1] *= corr0;
            acc[nt][2] *= corr1; acc[nt][3] *= corr1;
        }
        unsigned pa[4][4];
        xt_c_to_a(pa, sc);
        xt_mm_rega(acc, pa, vt);
    }
    const int row0 = warp * 16;
    xt_store(o, qbase, stride, row0, len, d, acc, 1.0f / l0, 1.0f / l1);
    if (tg == 0) {
        if (row0 + g < len) lse[(b * s.t + t0 + row0 + g) * s.h + h] = m0 + logf(l0);
        if (row0 + g + 8 < len) lse[(b * s.t + t0 + row0 + g + 8) * s.h + h] = m1 + logf(l1);
    }
}

extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_bwd_dq_bf16_tc64(XAttnDims s, const i64* __restrict__ tiles, const bf16_t* __restrict__ q,
                                                                             const bf16_t* __restrict__ k, const bf16_t* __restrict__ v, const bf16_t* __restrict__ o,
                                                                             const bf16_t* __restrict__ d_o, const float* __restrict__ lse, bf16_t* __restrict__ dq,
                                                                             float* __restrict__ delta) {
    __shared__ __align__(16) bf16_t qs[XT_T * XT_LD], dos[XT_T * XT_LD], ks[XT_T * XT_LD], kt[XT_DM * XT_LD], vs[XT_T * XT_LD];
    __shared__ float row_lse[XT_T], row_d[XT_T];
    const i64 h = blockIdx.x % s.h, tile = blockIdx.x / s.h;
    const i64 b = tiles[4 * tile], t0 = tiles[4 * tile + 1], mi = tiles[4 * tile + 3];
    const int len = (int)tiles[4 * tile + 2], d = (int)s.d;
    const i64 stride = s.h * s.d, qbase = ((b * s.t + t0) * s.h + h) * s.d;
    if (mi <= 0) {
        for (int e = threadIdx.x; e < len * d; e += XA_THREADS) dq[qbase + (e / d) * stride + e % d] = 0;
        for (int r = threadIdx.x; r < len; r += XA_THREADS) delta[(b * s.t + t0 + r) * s.h + h] = 0.0f;
        return;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    xt_load(qs, nullptr, q, qbase, stride, len, d);
    xt_load(dos, nullptr, d_o, qbase, stride, len, d);
    xt_load(ks, nullptr, o, qbase, stride, len, d);  // O, staged in the key buffer
    __syncthreads();
    {
        // δ = rowsum(dO∘O): two threads per row.
        const int r = threadIdx.x >> 1, half = threadIdx.x & 1;
        float part = 0.0f;
        for (int c = half; c < d; c += 2) part += bf2f(dos[r * XT_LD + c]) * bf2f(ks[r * XT_LD + c]);
        part += __shfl_xor_sync(0xffffffffu, part, 1);
        if (half == 0) {
            row_d[r] = part;
            row_lse[r] = r < len ? lse[(b * s.t + t0 + r) * s.h + h] : 0.0f;
            if (r < len) delta[(b * s.t + t0 + r) * s.h + h] = part;
        }
    }
    const int row0 = warp * 16;
    float acc[8][4];
    xt_zero(acc);
    i64 first, count;
    xa_range(s, mi, &first, &count);
    for (i64 c0 = first; c0 < first + count; c0 += XT_T) {
        const int kc = (int)min((i64)XT_T, first + count - c0);
        const i64 kbase = ((b * s.m * s.r + c0) * s.h + h) * s.d;
        __syncthreads();
        xt_load(ks, kt, k, kbase, stride, kc, d);
        xt_load(vs, nullptr, v, kbase, stride, kc, d);
        __syncthreads();
        float sc[8][4], dp[8][4];
        xt_zero(sc);
        xt_zero(dp);
        xt_mm_smem(sc, qs + row0 * XT_LD, ks);
        xt_mm_smem(dp, dos + row0 * XT_LD, vs);
        const float lse0 = row_lse[row0 + g], lse1 = row_lse[row0 + g + 8], d0 = row_d[row0 + g], d1 = row_d[row0 + g + 8];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int col = nt * 8 + 2 * tg + (e & 1), r = row0 + g + (e >= 2 ? 8 : 0);
                float p = (col < kc && r < len) ? expf(sc[nt][e] * s.scale - (e < 2 ? lse0 : lse1)) : 0.0f;
                sc[nt][e] = p * (dp[nt][e] - (e < 2 ? d0 : d1));
            }
        unsigned da[4][4];
        xt_c_to_a(da, sc);
        xt_mm_rega(acc, da, kt);
    }
    xt_store(dq, qbase, stride, row0, len, d, acc, s.scale, s.scale);
}

extern "C" __global__ void __launch_bounds__(XA_THREADS) xa_bwd_dkdv_bf16_tc64(XAttnDims s, const i64* __restrict__ tiles, const i64* __restrict__ list_off,
                                                                               const i64* __restrict__ list_tiles, const bf16_t* __restrict__ q,
                                                                               const bf16_t* __restrict__ k, const bf16_t* __restrict__ v,
                                                                               const bf16_t* __restrict__ d_o, const float* __restrict__ lse,
                                                                               const float* __restrict__ delta, bf16_t* __restrict__ dk, bf16_t* __restrict__ dv) {
    __shared__ __align__(16) bf16_t qs[XT_T * XT_LD], qt[XT_DM * XT_LD], dos[XT_T * XT_LD], dot[XT_DM * XT_LD];
    __shared__ float col_lse[XT_T], col_d[XT_T];
    const i64 chunks = (s.r + XT_T - 1) / XT_T;
    const i64 h = blockIdx.x % s.h, rest = blockIdx.x / s.h;
    const i64 chunk = rest % chunks, bm = rest / chunks;
    const i64 b = bm / s.m, medium = bm % s.m;
    const i64 c0 = medium * s.r + chunk * XT_T;
    const int kc = (int)min((i64)XT_T, s.r - chunk * XT_T), d = (int)s.d;
    const i64 stride = s.h * s.d, kbase = ((b * s.m * s.r + c0) * s.h + h) * s.d;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    const int row0 = warp * 16;  // this warp's keys
    // K and V rows of this warp as A fragments, staged through the query buffers.
    unsigned ka[4][4], va[4][4];
    xt_load(qs, nullptr, k, kbase, stride, kc, d);
    xt_load(dos, nullptr, v, kbase, stride, kc, d);
    __syncthreads();
    xt_smem_to_a(ka, qs, row0);
    xt_smem_to_a(va, dos, row0);
    float adk[8][4], adv[8][4];
    xt_zero(adk);
    xt_zero(adv);
    for (i64 li = list_off[bm]; li < list_off[bm + 1]; ++li) {
        const i64 tile = list_tiles[li];
        const i64 t0 = tiles[4 * tile + 1];
        const int len = (int)tiles[4 * tile + 2];
        const i64 qbase = ((b * s.t + t0) * s.h + h) * s.d;
        __syncthreads();
        xt_load(qs, qt, q, qbase, stride, len, d);
        xt_load(dos, dot, d_o, qbase, stride, len, d);
        for (int r = threadIdx.x; r < XT_T; r += XA_THREADS) {
            col_lse[r] = r < len ? lse[(b * s.t + t0 + r) * s.h + h] : 0.0f;
            col_d[r] = r < len ? delta[(b * s.t + t0 + r) * s.h + h] : 0.0f;
        }
        __syncthreads();
        float st[8][4], dpt[8][4];  // Sᵀ and dPᵀ: this warp's 16 keys × 64 queries
        xt_zero(st);
        xt_zero(dpt);
        xt_mm_rega(st, ka, qs);
        xt_mm_rega(dpt, va, dos);
        float dst[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int col = nt * 8 + 2 * tg + (e & 1), key = row0 + g + (e >= 2 ? 8 : 0);
                float p = (col < len && key < kc) ? expf(st[nt][e] * s.scale - col_lse[col]) : 0.0f;
                st[nt][e] = p;
                dst[nt][e] = p * (dpt[nt][e] - col_d[col]);
            }
        unsigned pa[4][4], dsa[4][4];
        xt_c_to_a(pa, st);
        xt_c_to_a(dsa, dst);
        xt_mm_rega(adv, pa, dot);
        xt_mm_rega(adk, dsa, qt);
    }
    xt_store(dk, kbase, stride, row0, kc, d, adk, s.scale, s.scale);
    xt_store(dv, kbase, stride, row0, kc, d, adv, 1.0f, 1.0f);
}
