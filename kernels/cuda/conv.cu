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
