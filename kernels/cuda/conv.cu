// Convolution helpers (NCHW, f32): im2col / col2im for the cuBLAS GEMMs, bias, average pooling.
// Geometry mirrors flamingo_kernels::cpu::conv::ConvGeom.
struct ConvGeom {
    i64 n, c, h, w, o, kh, kw, sh, sw, pt, pb, pl, pr, groups, ho, wo;
};

// col[n][k][l] for one group g: k = (ci, ky, kx) over c/groups input channels, l = (oy, ox).
extern "C" __global__ void im2col_f32(ConvGeom q, i64 g, const float* __restrict__ x, float* __restrict__ col) {
    i64 cg = q.c / q.groups, K = cg * q.kh * q.kw, L = q.ho * q.wo;
    GRID_STRIDE(i, q.n * K * L) {
        i64 l = i % L, k = (i / L) % K, n = i / (K * L);
        i64 kx = k % q.kw, ky = (k / q.kw) % q.kh, ci = k / (q.kw * q.kh);
        i64 ox = l % q.wo, oy = l / q.wo;
        i64 y = oy * q.sh + ky - q.pt, xx = ox * q.sw + kx - q.pl;
        float v = 0.0f;
        if (y >= 0 && y < q.h && xx >= 0 && xx < q.w) v = x[((n * q.c + g * cg + ci) * q.h + y) * q.w + xx];
        col[i] = v;
    }
}
// dx[n][g·cg + ci][y][x] = Σ over window positions that read (y, x) of dcol (one thread per input
// element: no atomics, fixed order). Writes only group g's channels.
extern "C" __global__ void col2im_f32(ConvGeom q, i64 g, const float* __restrict__ dcol, float* __restrict__ dx) {
    i64 cg = q.c / q.groups, K = cg * q.kh * q.kw, L = q.ho * q.wo;
    GRID_STRIDE(i, q.n * cg * q.h * q.w) {
        i64 xx = i % q.w, y = (i / q.w) % q.h, ci = (i / (q.w * q.h)) % cg, n = i / (q.w * q.h * cg);
        float acc = 0.0f;
        for (i64 ky = 0; ky < q.kh; ++ky) {
            i64 ty = y + q.pt - ky;
            if (ty < 0 || ty % q.sh != 0) continue;
            i64 oy = ty / q.sh;
            if (oy >= q.ho) continue;
            for (i64 kx = 0; kx < q.kw; ++kx) {
                i64 tx = xx + q.pl - kx;
                if (tx < 0 || tx % q.sw != 0) continue;
                i64 ox = tx / q.sw;
                if (ox >= q.wo) continue;
                i64 k = (ci * q.kh + ky) * q.kw + kx;
                acc += dcol[(n * K + k) * L + oy * q.wo + ox];
            }
        }
        dx[((n * q.c + g * cg + ci) * q.h + y) * q.w + xx] = acc;
    }
}
// y[n][o][l] += b[o].
extern "C" __global__ void add_channel_bias_f32(i64 n, i64 o, i64 l, const float* __restrict__ b, float* __restrict__ y) {
    GRID_STRIDE(i, n * o * l) { y[i] += b[(i / l) % o]; }
}
// Average pooling without padding over [planes, h, w].
extern "C" __global__ void avg_pool2d_f32(i64 planes, i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw, i64 ho, i64 wo,
                                          const float* __restrict__ x, float* __restrict__ y) {
    GRID_STRIDE(i, planes * ho * wo) {
        i64 ox = i % wo, oy = (i / wo) % ho, p = i / (wo * ho);
        const float* xp = x + p * h * w;
        float acc = 0.0f;
        for (i64 ky = 0; ky < kh; ++ky)
            for (i64 kx = 0; kx < kw; ++kx) acc += xp[(oy * sh + ky) * w + ox * sw + kx];
        y[i] = acc / (float)(kh * kw);
    }
}
extern "C" __global__ void avg_pool2d_bwd_f32(i64 planes, i64 h, i64 w, i64 kh, i64 kw, i64 sh, i64 sw, i64 ho, i64 wo,
                                              const float* __restrict__ g, float* __restrict__ dx) {
    GRID_STRIDE(i, planes * h * w) {
        i64 xx = i % w, y = (i / w) % h, p = i / (w * h);
        float acc = 0.0f;
        for (i64 ky = 0; ky < kh; ++ky) {
            i64 ty = y - ky;
            if (ty < 0 || ty % sh != 0 || ty / sh >= ho) continue;
            for (i64 kx = 0; kx < kw; ++kx) {
                i64 tx = xx - kx;
                if (tx < 0 || tx % sw != 0 || tx / sw >= wo) continue;
                acc += g[(p * ho + ty / sh) * wo + tx / sw];
            }
        }
        dx[i] = acc / (float)(kh * kw);
    }
}

// ---- implicit-GEMM convolution: the GEMM operands are read straight from x, w and dy ----------
// (no im2col / col2im buffer). Each block computes a 64 × 64 tile of C = A·B with 256 threads,
// 4 × 4 accumulators each (thread (ty, tx) = (tid / 16, tid % 16) owns rows ty + 16·i and
// columns tx + 16·j), over K in steps of 16 staged in shared memory. The three problems below say
// how to fetch A(m, k) and B(k, n); out-of-range elements (padding, a window position the stride
// skips, the tile's edge) read as 0. Blocks are numbered on a 1-D grid and decode their indices.
// Summation runs over k in order within a block, so results are deterministic.
#define IC_TILE 64
#define IC_BK 16
#define IC_THREADS 256

template <class P>
__device__ __forceinline__ void ic_gemm_tile(const P& p, i64 m0, i64 n0, i64 k0, i64 k1, float acc[4][4]) {
    __shared__ float as[IC_BK][IC_TILE + 1];
    __shared__ float bs[IC_BK][IC_TILE + 1];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    for (i64 kb = k0; kb < k1; kb += IC_BK) {
        for (int r = 0; r < 4; ++r) {
            // A: consecutive threads take consecutive k of one row (rows of w and dy are contiguous in k)
            int e = tid + IC_THREADS * r, row = e / IC_BK, kk = e % IC_BK;
            i64 m = m0 + row, k = kb + kk;
            as[kk][row] = (m < p.M && k < k1) ? p.a(m, k) : 0.0f;
        }
        for (int r = 0; r < 4; ++r) {
            // B: consecutive threads take consecutive columns (pixels, mostly adjacent in memory)
            int e = tid + IC_THREADS * r, kk = e / IC_TILE, col = e % IC_TILE;
            i64 n = n0 + col, k = kb + kk;
            bs[kk][col] = (n < p.N && k < k1) ? p.b(k, n) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < IC_BK; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
            for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
}

// A block's tile indices on the 1-D grid: blockIdx.x = ((outer · tm) + bm) · tn + bn, with tm, tn
// the tile counts along M and N; returns outer (the image·group, or group·split, index).
__device__ __forceinline__ i64 ic_block(i64 tm, i64 tn, i64* bm, i64* bn) {
    i64 bid = blockIdx.x;
    *bn = bid % tn;
    bid /= tn;
    *bm = bid % tm;
    return bid / tm;
}

// x̂[k][l] of image n, group g: the im2col element the forward (and the weight gradient) multiply.
__device__ __forceinline__ float ic_col(const ConvGeom& q, const float* __restrict__ x, i64 n, i64 g, i64 k, i64 l) {
    i64 cg = q.c / q.groups, khw = q.kh * q.kw;
    i64 ci = k / khw, r = k % khw, ky = r / q.kw, kx = r % q.kw;
    i64 oy = l / q.wo, ox = l % q.wo;
    i64 y = oy * q.sh + ky - q.pt, xx = ox * q.sw + kx - q.pl;
    if (y < 0 || y >= q.h || xx < 0 || xx >= q.w) return 0.0f;
    return x[((n * q.c + g * cg + ci) * q.h + y) * q.w + xx];
}

// Forward of image n, group g: out[n, g·og + m, l] = Σ_k w[g·og + m, k] · x̂[k, l] (+ bias).
struct IcForward {
    ConvGeom q;
    const float* x;
    const float* w;
    i64 n, g, og, M, N, K;
    __device__ float a(i64 m, i64 k) const { return w[(g * og + m) * K + k]; }
    __device__ float b(i64 k, i64 l) const { return ic_col(q, x, n, g, k, l); }
};

// Grid: n · groups · ⌈og/64⌉ · ⌈L/64⌉ blocks of IC_THREADS. bias may be null.
extern "C" __global__ void conv_implicit_fwd_f32(ConvGeom q, const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, float* __restrict__ y) {
    i64 og = q.o / q.groups, K = q.c / q.groups * q.kh * q.kw, L = q.ho * q.wo;
    i64 tm = (og + IC_TILE - 1) / IC_TILE, tn = (L + IC_TILE - 1) / IC_TILE;
    i64 bm, bn, outer = ic_block(tm, tn, &bm, &bn);
    i64 g = outer % q.groups, n = outer / q.groups;
    IcForward p{q, x, w, n, g, og, og, L, K};
    float acc[4][4] = {};
    ic_gemm_tile(p, bm * IC_TILE, bn * IC_TILE, 0, K, acc);
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int i = 0; i < 4; ++i) {
        i64 m = bm * IC_TILE + ty + 16 * i;
        if (m >= og) continue;
        float b0 = bias ? bias[g * og + m] : 0.0f;
        for (int j = 0; j < 4; ++j) {
            i64 l = bn * IC_TILE + tx + 16 * j;
            if (l < L) y[(n * q.o + g * og + m) * L + l] = acc[i][j] + b0;
        }
    }
}

// Data gradient of image n, group g: dx[n, g·cg + ci, p] = Σ over k = (oi, ky, kx) of
// w[g·og + oi, ci, ky, kx] · dy[n, g·og + oi, oy, ox], where (oy, ox) is the output position whose
// window puts tap (ky, kx) on input pixel p (0 where there is none).
struct IcBackwardData {
    ConvGeom q;
    const float* dy;
    const float* w;
    i64 n, g, og, cg, M, N, K;
    __device__ float a(i64 ci, i64 k) const {
        i64 khw = q.kh * q.kw, oi = k / khw, r = k % khw;
        return w[((g * og + oi) * cg + ci) * khw + r];
    }
    __device__ float b(i64 k, i64 p) const {
        i64 khw = q.kh * q.kw, oi = k / khw, r = k % khw, ky = r / q.kw, kx = r % q.kw;
        i64 ty = p / q.w + q.pt - ky, tx = p % q.w + q.pl - kx;
        if (ty < 0 || tx < 0 || ty % q.sh != 0 || tx % q.sw != 0) return 0.0f;
        i64 oy = ty / q.sh, ox = tx / q.sw;
        if (oy >= q.ho || ox >= q.wo) return 0.0f;
        return dy[((n * q.o + g * og + oi) * q.ho + oy) * q.wo + ox];
    }
};

// Grid: n · groups · ⌈cg/64⌉ · ⌈h·w/64⌉ blocks of IC_THREADS. Writes every element of dx.
extern "C" __global__ void conv_implicit_bwd_data_f32(ConvGeom q, const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx) {
    i64 og = q.o / q.groups, cg = q.c / q.groups, HW = q.h * q.w, K = og * q.kh * q.kw;
    i64 tm = (cg + IC_TILE - 1) / IC_TILE, tn = (HW + IC_TILE - 1) / IC_TILE;
    i64 bm, bn, outer = ic_block(tm, tn, &bm, &bn);
    i64 g = outer % q.groups, n = outer / q.groups;
    IcBackwardData p{q, dy, w, n, g, og, cg, cg, HW, K};
    float acc[4][4] = {};
    ic_gemm_tile(p, bm * IC_TILE, bn * IC_TILE, 0, K, acc);
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    for (int i = 0; i < 4; ++i) {
        i64 ci = bm * IC_TILE + ty + 16 * i;
        if (ci >= cg) continue;
        for (int j = 0; j < 4; ++j) {
            i64 px = bn * IC_TILE + tx + 16 * j;
            if (px < HW) dx[(n * q.c + g * cg + ci) * HW + px] = acc[i][j];
        }
    }
}

// Weight gradient of group g: dw[g·og + m, j] = Σ over r = (image, l) of dy[image, g·og + m, l] ·
// x̂_image[j, l], the reduction split into `splits` contiguous ranges of r.
struct IcBackwardWeight {
    ConvGeom q;
    const float* x;
    const float* dy;
    i64 g, og, L, M, N, K;
    __device__ float a(i64 m, i64 r) const { return dy[((r / L) * q.o + g * og + m) * L + r % L]; }
    __device__ float b(i64 r, i64 j) const { return ic_col(q, x, r / L, g, j, r % L); }
};

// Grid: groups · splits · ⌈og/64⌉ · ⌈Kw/64⌉ blocks of IC_THREADS, Kw = cg·kh·kw. Split s writes
// out[s·o·Kw + (g·og + m)·Kw + j]: with one split that is dw itself, otherwise partial sums that
// conv_weight_split_sum_f32 adds in split order.
extern "C" __global__ void conv_implicit_bwd_weight_f32(ConvGeom q, i64 splits, const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out) {
    i64 og = q.o / q.groups, Kw = q.c / q.groups * q.kh * q.kw, L = q.ho * q.wo, R = q.n * L;
    i64 tm = (og + IC_TILE - 1) / IC_TILE, tn = (Kw + IC_TILE - 1) / IC_TILE;
    i64 bm, bn, outer = ic_block(tm, tn, &bm, &bn);
    i64 s = outer % splits, g = outer / splits;
    i64 chunk = (R + splits - 1) / splits, r0 = s * chunk, r1 = r0 + chunk < R ? r0 + chunk : R;
    IcBackwardWeight p{q, x, dy, g, og, L, og, Kw, R};
    float acc[4][4] = {};
    if (r0 < r1) ic_gemm_tile(p, bm * IC_TILE, bn * IC_TILE, r0, r1, acc);
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float* dst = out + s * q.o * Kw;
    for (int i = 0; i < 4; ++i) {
        i64 m = bm * IC_TILE + ty + 16 * i;
        if (m >= og) continue;
        for (int j = 0; j < 4; ++j) {
            i64 jj = bn * IC_TILE + tx + 16 * j;
            if (jj < Kw) dst[(g * og + m) * Kw + jj] = acc[i][j];
        }
    }
}

// dw[i] = Σ_s part[s·n + i], splits in order (deterministic).
extern "C" __global__ void conv_weight_split_sum_f32(i64 splits, i64 n, const float* __restrict__ part, float* __restrict__ dw) {
    GRID_STRIDE(i, n) {
        float acc = 0.0f;
        for (i64 s = 0; s < splits; ++s) acc += part[s * n + i];
        dw[i] = acc;
    }
}
