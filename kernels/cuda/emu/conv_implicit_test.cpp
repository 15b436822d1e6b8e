// Checks the implicit-GEMM convolution kernels of kernels/cuda/conv.cu on the CPU (through
// cuda_emu.h) against direct double-precision loops: forward with bias, data gradient, weight
// gradient with and without the split reduction, over geometries with groups, strides, asymmetric
// padding and sizes that are not multiples of the 64-wide tiles. Exit status 0 when all pass.
// Build and run: scripts/cuda-emu-test.sh
#include "cuda_emu.h"
#include "check.h"
#include "../common.cuh"
#include "../conv.cu"
#include <cstdio>
#include <random>

struct Geo {
    i64 n, c, h, w, o, kh, kw, sh, sw, pt, pb, pl, pr, groups;
};

static ConvGeom to_c(const Geo& g) {
    i64 ho = (g.h + g.pt + g.pb - g.kh) / g.sh + 1, wo = (g.w + g.pl + g.pr - g.kw) / g.sw + 1;
    return ConvGeom{g.n, g.c, g.h, g.w, g.o, g.kh, g.kw, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr, g.groups, ho, wo};
}

static bool check(const char* name, const Geo& geo, i64 splits) {
    ConvGeom q = to_c(geo);
    i64 cg = q.c / q.groups, og = q.o / q.groups, L = q.ho * q.wo, khw = q.kh * q.kw, Kw = cg * khw;
    std::mt19937 rng(1234);
    auto rand_vec = [&](size_t n) { return randn(rng, n); };
    auto x = rand_vec(q.n * q.c * q.h * q.w), w = rand_vec(q.o * Kw), bias = rand_vec(q.o), dy = rand_vec(q.n * q.o * L);
    // References in double.
    std::vector<double> y_ref(q.n * q.o * L), dx_ref(x.size(), 0.0), dw_ref(w.size(), 0.0);
    for (i64 n = 0; n < q.n; ++n)
        for (i64 o = 0; o < q.o; ++o) {
            i64 g = o / og;
            for (i64 oy = 0; oy < q.ho; ++oy)
                for (i64 ox = 0; ox < q.wo; ++ox) {
                    double acc = bias[o];
                    double gy = dy[((n * q.o + o) * q.ho + oy) * q.wo + ox];
                    for (i64 ci = 0; ci < cg; ++ci)
                        for (i64 ky = 0; ky < q.kh; ++ky)
                            for (i64 kx = 0; kx < q.kw; ++kx) {
                                i64 yy = oy * q.sh + ky - q.pt, xx = ox * q.sw + kx - q.pl;
                                if (yy < 0 || yy >= q.h || xx < 0 || xx >= q.w) continue;
                                i64 xi = ((n * q.c + g * cg + ci) * q.h + yy) * q.w + xx, wi = (o * cg + ci) * khw + ky * q.kw + kx;
                                acc += (double)w[wi] * x[xi];
                                dx_ref[xi] += (double)w[wi] * gy;
                                dw_ref[wi] += gy * x[xi];
                            }
                    y_ref[((n * q.o + o) * q.ho + oy) * q.wo + ox] = acc;
                }
        }
    auto tiles = [](i64 a) { return (unsigned)((a + IC_TILE - 1) / IC_TILE); };
    std::vector<float> y(y_ref.size(), NAN), dx(x.size(), NAN), dw(w.size(), NAN), part(splits * w.size(), NAN);
    emu_launch(q.n * q.groups * tiles(og) * tiles(L), IC_THREADS, conv_implicit_fwd_f32, q, x.data(), w.data(), bias.data(), y.data());
    emu_launch(q.n * q.groups * tiles(cg) * tiles(q.h * q.w), IC_THREADS, conv_implicit_bwd_data_f32, q, dy.data(), w.data(), dx.data());
    if (splits == 1) {
        emu_launch(q.groups * tiles(og) * tiles(Kw), IC_THREADS, conv_implicit_bwd_weight_f32, q, splits, x.data(), dy.data(), dw.data());
    } else {
        emu_launch(q.groups * splits * tiles(og) * tiles(Kw), IC_THREADS, conv_implicit_bwd_weight_f32, q, splits, x.data(), dy.data(), part.data());
        emu_launch(4, 128, conv_weight_split_sum_f32, splits, (i64)w.size(), part.data(), dw.data());
    }
    double ey = max_rel(y, y_ref), ex = max_rel(dx, dx_ref), ew = max_rel(dw, dw_ref);
    bool ok = ey < 1e-5 && ex < 1e-5 && ew < 1e-5;
    std::printf("%-28s forward %.2e  data %.2e  weight %.2e (splits %lld)  %s\n", name, ey, ex, ew, (long long)splits, ok ? "ok" : "FAIL");
    return ok;
}

int main() {
    bool ok = true;
    //                                     n  c   h   w   o  kh kw sh sw pt pb pl pr groups
    ok &= check("3x3 pad1", Geo{2, 4, 9, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1}, 1);
    ok &= check("3x3 stride2 groups2", Geo{2, 6, 10, 9, 4, 3, 3, 2, 2, 1, 1, 1, 1, 2}, 1);
    ok &= check("tf-same asymmetric pad", Geo{1, 3, 11, 10, 5, 3, 3, 2, 2, 0, 1, 1, 1, 1}, 2);
    ok &= check("1x1 wide (70 out, 2 tiles)", Geo{1, 5, 9, 9, 70, 1, 1, 1, 1, 0, 0, 0, 0, 1}, 1);
    ok &= check("5x3 stride (2,1) 81 px", Geo{3, 2, 11, 9, 3, 5, 3, 2, 1, 2, 2, 1, 1, 1}, 3);
    ok &= check("grouped 3x3, 72-deep", Geo{2, 16, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 2}, 2);
    return ok ? 0 : 1;
}
