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
