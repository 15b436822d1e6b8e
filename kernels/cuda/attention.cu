// Causal self-attention (the LM's), f32, head dim D ≤ 64, flash-style: no [L, L] score or
// probability matrix exists; the backward recomputes probabilities from the saved log-sum-exp.
// The CPU twin is kernels/src/cpu/causal_attention.rs (which also applies the rotary embedding
// inside; here the engine rotates q and k with ordinary ops first).
//
// Shapes: q [B, H, L, D], k and v [B, KVH, L, D] (KVH divides H: query head h reads key/value head
// h / (H / KVH)), each read through a HeadView (last axis contiguous). O, dO, dQ are token-major
// [B, L, H, D]; dK, dV token-major [B, L, KVH, D]; lse and δ = rowsum(dO∘O) are [B, H, L].
// Scores are scaled: s = q·k / √D, p = exp(s − lse).
//
// Work: blocks of CA_THREADS = 128 threads over tiles of CA_T = 32 query rows or 32 keys. Thread
// t owns row t / 4 of a tile and columns t % 4 + 4·j of it, so the four threads of a row combine
// row maxima and sums through shared memory (no warp shuffles). Operand tiles are staged in shared
// memory, rows padded to 65 floats so that a warp's reads fall in distinct banks.
//   - forward: one block per (b, h, query tile), online softmax over the key tiles 0..=its own;
//   - dQ (and δ): one block per (b, h, query tile), over the same key tiles;
//   - dK, dV: one block per (b, kv head, key tile), over the query heads sharing that kv head and
//     the query tiles at or after the key tile. Every gradient element is written by exactly one
//     thread after a fixed-order sum: no atomics, deterministic.
#define CA_T 32
#define CA_DM 64
#define CA_LD 65
#define CA_THREADS 128

struct CaDims {
    i64 b, h, kvh, l, d;
};

// Element (b, h, i, e) of a [B, heads, L, D] view sits at offset + b·sb + h·sh + i·sl + e.
struct HeadView {
    i64 offset, sb, sh, sl;
};

// Rows i0..i0+CA_T of head (b, h) into dst, zero beyond L and D.
__device__ __forceinline__ void ca_load(float (*dst)[CA_LD], const float* __restrict__ base, HeadView v, i64 b, i64 h, i64 i0, const CaDims& s) {
    for (int e = threadIdx.x; e < CA_T * CA_DM; e += CA_THREADS) {
        int r = e / CA_DM, c = e % CA_DM;
        i64 i = i0 + r;
        dst[r][c] = (i < s.l && c < s.d) ? base[v.offset + b * v.sb + h * v.sh + i * v.sl + c] : 0.0f;
    }
}

// Rows i0..i0+CA_T of a token-major [B, L, heads, D] tensor into dst, zero beyond L and D.
__device__ __forceinline__ void ca_load_tm(float (*dst)[CA_LD], const float* __restrict__ base, i64 heads, i64 b, i64 h, i64 i0, const CaDims& s) {
    for (int e = threadIdx.x; e < CA_T * CA_DM; e += CA_THREADS) {
        int r = e / CA_DM, c = e % CA_DM;
        i64 i = i0 + r;
        dst[r][c] = (i < s.l && c < s.d) ? base[((b * s.l + i) * heads + h) * s.d + c] : 0.0f;
    }
}

__device__ __forceinline__ float ca_dot(const float* a, const float* b, i64 d) {
    float acc = 0.0f;
    for (i64 e = 0; e < d; ++e) acc = fmaf(a[e], b[e], acc);
    return acc;
}

// The combined value of the four threads of row r (red[r][0..4] written by them, then a barrier).
__device__ __forceinline__ float ca_row_max(float (*red)[4], int r) { return fmaxf(fmaxf(red[r][0], red[r][1]), fmaxf(red[r][2], red[r][3])); }
__device__ __forceinline__ float ca_row_sum(float (*red)[4], int r) { return (red[r][0] + red[r][1]) + (red[r][2] + red[r][3]); }

// The (b, query head, query tile) of a block of the forward and dQ kernels, its kv head and first
// row, and the calling thread's row r, column offset sub and query row qi.
struct CaQueryBlock {
    i64 b, h, kh, i0, qi;
    int r, sub;
};
__device__ __forceinline__ CaQueryBlock ca_query_block(const CaDims& s) {
    i64 tiles = (s.l + CA_T - 1) / CA_T, bid = blockIdx.x, qt = bid % tiles;
    bid /= tiles;
    i64 h = bid % s.h, b = bid / s.h, i0 = qt * CA_T;
    int r = threadIdx.x >> 2;
    return CaQueryBlock{b, h, h / (s.h / s.kvh), i0, i0 + r, r, (int)(threadIdx.x & 3)};
}

// Grid: B · H · ⌈L/32⌉ blocks.
extern "C" __global__ void causal_attn_fwd_f32(CaDims s, const float* __restrict__ q, HeadView qv, const float* __restrict__ k, HeadView kv,
                                               const float* __restrict__ v, HeadView vv, float* __restrict__ o, float* __restrict__ lse) {
    __shared__ float qs[CA_T][CA_LD], ks[CA_T][CA_LD], vs[CA_T][CA_LD], ps[CA_T][CA_T + 1], red[CA_T][4];
    const CaQueryBlock qb = ca_query_block(s);
    const i64 b = qb.b, h = qb.h, kh = qb.kh, i0 = qb.i0, qi = qb.qi;
    const int r = qb.r, sub = qb.sub;
    float scale = 1.0f / sqrtf((float)s.d);
    ca_load(qs, q, qv, b, h, i0, s);
    float m = FL_NEG_INF, lsum = 0.0f, acc[CA_DM / 4];
    for (int j = 0; j < CA_DM / 4; ++j) acc[j] = 0.0f;
    for (i64 j0 = 0; j0 <= i0; j0 += CA_T) {
        __syncthreads();  // the previous tile's readers are done with ks, vs, ps
        ca_load(ks, k, kv, b, kh, j0, s);
        ca_load(vs, v, vv, b, kh, j0, s);
        __syncthreads();
        float sv[CA_T / 4], mx = FL_NEG_INF;
        for (int j = 0; j < CA_T / 4; ++j) {
            int c = sub + 4 * j;
            i64 key = j0 + c;
            sv[j] = (key <= qi && key < s.l) ? ca_dot(qs[r], ks[c], s.d) * scale : FL_NEG_INF;
            mx = fmaxf(mx, sv[j]);
        }
        red[r][sub] = mx;
        __syncthreads();
        float m_new = fmaxf(m, ca_row_max(red, r));
        __syncthreads();
        float part = 0.0f;
        for (int j = 0; j < CA_T / 4; ++j) {
            float p = (sv[j] == FL_NEG_INF) ? 0.0f : expf(sv[j] - m_new);
            ps[r][sub + 4 * j] = p;
            part += p;
        }
        red[r][sub] = part;
        __syncthreads();
        float alpha = (m == FL_NEG_INF) ? 0.0f : expf(m - m_new);
        lsum = lsum * alpha + ca_row_sum(red, r);
        m = m_new;
        for (int j = 0; j < CA_DM / 4; ++j) {
            int e = sub + 4 * j;
            float a = acc[j] * alpha;
            for (int c = 0; c < CA_T; ++c) a = fmaf(ps[r][c], vs[c][e], a);
            acc[j] = a;
        }
    }
    if (qi < s.l) {
        float inv = 1.0f / lsum;
        for (int j = 0; j < CA_DM / 4; ++j) {
            int e = sub + 4 * j;
            if (e < s.d) o[((b * s.l + qi) * s.h + h) * s.d + e] = acc[j] * inv;
        }
        if (sub == 0) lse[(b * s.h + h) * s.l + qi] = m + logf(lsum);
    }
}

// dQ = Σ_keys dS·k / √D with dS = p∘(dO·vᵀ − δ); also stores δ = rowsum(dO∘O) for the dK/dV
// kernel. Grid: B · H · ⌈L/32⌉ blocks.
extern "C" __global__ void causal_attn_bwd_dq_f32(CaDims s, const float* __restrict__ q, HeadView qv, const float* __restrict__ k, HeadView kv,
                                                  const float* __restrict__ v, HeadView vv, const float* __restrict__ o, const float* __restrict__ d_o,
                                                  const float* __restrict__ lse, float* __restrict__ delta, float* __restrict__ dq) {
    __shared__ float qs[CA_T][CA_LD], dos[CA_T][CA_LD], ks[CA_T][CA_LD], vs[CA_T][CA_LD], dss[CA_T][CA_T + 1], red[CA_T][4];
    const CaQueryBlock qb = ca_query_block(s);
    const i64 b = qb.b, h = qb.h, kh = qb.kh, i0 = qb.i0, qi = qb.qi;
    const int r = qb.r, sub = qb.sub;
    float scale = 1.0f / sqrtf((float)s.d);
    ca_load(qs, q, qv, b, h, i0, s);
    ca_load_tm(dos, d_o, s.h, b, h, i0, s);
    // δ of row r from O (token-major) and dO, each thread over its columns
    float part = 0.0f;
    if (qi < s.l)
        for (int j = 0; j < CA_DM / 4; ++j) {
            int e = sub + 4 * j;
            if (e < s.d) part = fmaf(d_o[((b * s.l + qi) * s.h + h) * s.d + e], o[((b * s.l + qi) * s.h + h) * s.d + e], part);
        }
    red[r][sub] = part;
    __syncthreads();
    float dl = ca_row_sum(red, r);
    float lr = qi < s.l ? lse[(b * s.h + h) * s.l + qi] : 0.0f;
    if (qi < s.l && sub == 0) delta[(b * s.h + h) * s.l + qi] = dl;
    float acc[CA_DM / 4];
    for (int j = 0; j < CA_DM / 4; ++j) acc[j] = 0.0f;
    for (i64 j0 = 0; j0 <= i0; j0 += CA_T) {
        __syncthreads();
        ca_load(ks, k, kv, b, kh, j0, s);
        ca_load(vs, v, vv, b, kh, j0, s);
        __syncthreads();
        for (int j = 0; j < CA_T / 4; ++j) {
            int c = sub + 4 * j;
            i64 key = j0 + c;
            float ds = 0.0f;
            if (key <= qi && key < s.l && qi < s.l) {
                float p = expf(ca_dot(qs[r], ks[c], s.d) * scale - lr);
                ds = p * (ca_dot(dos[r], vs[c], s.d) - dl);
            }
            dss[r][c] = ds;
        }
        __syncthreads();
        for (int j = 0; j < CA_DM / 4; ++j) {
            int e = sub + 4 * j;
            float a = acc[j];
            for (int c = 0; c < CA_T; ++c) a = fmaf(dss[r][c], ks[c][e], a);
            acc[j] = a;
        }
    }
    if (qi < s.l)
        for (int j = 0; j < CA_DM / 4; ++j) {
            int e = sub + 4 * j;
            if (e < s.d) dq[((b * s.l + qi) * s.h + h) * s.d + e] = acc[j] * scale;
        }
}

// dV = Σ pᵀ·dO and dK = Σ dSᵀ·q / √D for one key tile of one kv head, summed over the query heads
// that share it (in order) and the query tiles from the key tile on (in order). Needs lse and δ.
// Grid: B · KVH · ⌈L/32⌉ blocks.
extern "C" __global__ void causal_attn_bwd_dkv_f32(CaDims s, const float* __restrict__ q, HeadView qv, const float* __restrict__ k, HeadView kv,
                                                   const float* __restrict__ v, HeadView vv, const float* __restrict__ d_o, const float* __restrict__ lse,
                                                   const float* __restrict__ delta, float* __restrict__ dk, float* __restrict__ dv) {
    __shared__ float ks[CA_T][CA_LD], vs[CA_T][CA_LD], qs[CA_T][CA_LD], dos[CA_T][CA_LD], ps[CA_T][CA_T + 1], dss[CA_T][CA_T + 1], ls[CA_T], dls[CA_T];
    i64 tiles = (s.l + CA_T - 1) / CA_T, bid = blockIdx.x, kt = bid % tiles;
    bid /= tiles;
    i64 kh = bid % s.kvh, b = bid / s.kvh, j0 = kt * CA_T, rep = s.h / s.kvh;
    int tid = threadIdx.x, r = tid >> 2, sub = tid & 3;
    float scale = 1.0f / sqrtf((float)s.d);
    ca_load(ks, k, kv, b, kh, j0, s);
    ca_load(vs, v, vv, b, kh, j0, s);
    float adk[CA_DM / 4], adv[CA_DM / 4];
    for (int j = 0; j < CA_DM / 4; ++j) adk[j] = adv[j] = 0.0f;
    for (i64 g = 0; g < rep; ++g) {
        i64 h = kh * rep + g;
        for (i64 i0 = j0; i0 < s.l; i0 += CA_T) {
            __syncthreads();  // the previous tile's readers are done with qs, dos, ps, dss, ls, dls
            ca_load(qs, q, qv, b, h, i0, s);
            ca_load_tm(dos, d_o, s.h, b, h, i0, s);
            if (tid < CA_T) {
                i64 i = i0 + tid;
                ls[tid] = i < s.l ? lse[(b * s.h + h) * s.l + i] : 0.0f;
                dls[tid] = i < s.l ? delta[(b * s.h + h) * s.l + i] : 0.0f;
            }
            __syncthreads();
            // p and dS for query row r (of this query tile) and keys sub + 4·j (of this key tile)
            i64 qi = i0 + r;
            for (int j = 0; j < CA_T / 4; ++j) {
                int c = sub + 4 * j;
                i64 key = j0 + c;
                float p = 0.0f, ds = 0.0f;
                if (key <= qi && key < s.l && qi < s.l) {
                    p = expf(ca_dot(qs[r], ks[c], s.d) * scale - ls[r]);
                    ds = p * (ca_dot(dos[r], vs[c], s.d) - dls[r]);
                }
                ps[r][c] = p;
                dss[r][c] = ds;
            }
            __syncthreads();
            // now thread row r is key row r of the tile
            for (int j = 0; j < CA_DM / 4; ++j) {
                int e = sub + 4 * j;
                float a = adv[j], bk = adk[j];
                for (int qq = 0; qq < CA_T; ++qq) {
                    a = fmaf(ps[qq][r], dos[qq][e], a);
                    bk = fmaf(dss[qq][r], qs[qq][e], bk);
                }
                adv[j] = a;
                adk[j] = bk;
            }
        }
    }
    i64 key = j0 + r;
    if (key < s.l)
        for (int j = 0; j < CA_DM / 4; ++j) {
            int e = sub + 4 * j;
            if (e < s.d) {
                dk[((b * s.l + key) * s.kvh + kh) * s.d + e] = adk[j] * scale;
                dv[((b * s.l + key) * s.kvh + kh) * s.d + e] = adv[j];
            }
        }
}
