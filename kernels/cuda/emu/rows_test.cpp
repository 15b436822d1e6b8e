// Checks the row kernels (kernels/cuda/norm.cu, softmax.cu, loss.cu) on the CPU through
// cuda_emu.h against direct double-precision loops: layer norm forward and both backward
// kernels, softmax and log-softmax forward and backward, cross-entropy with label smoothing and
// an ignored row, its mean and its backward. Blocks of 64 and 128 threads (two and four warps, so
// the block reductions cross warps), fewer blocks than rows (the kernels' row loops).
// Build and run: scripts/cuda-emu-test.sh
#include "cuda_emu.h"
#include "check.h"
#include "../common.cuh"
#include "../norm.cu"
#include "../softmax.cu"
#include "../loss.cu"
#include <cstdio>
#include <random>

int main() {
    bool ok = true;
    std::mt19937 rng(5);
    auto rand_vec = [&](size_t n) { return randn(rng, n); };
    for (unsigned block : {64u, 128u}) {
        const i64 rows = 5, n = 300;
        auto x = rand_vec(rows * n), g = rand_vec(rows * n), w = rand_vec(n), b = rand_vec(n);
        // layer norm
        std::vector<double> y_ref(rows * n), dx_ref(rows * n), dw_ref(n, 0.0), db_ref(n, 0.0), mu(rows), rs(rows);
        for (i64 r = 0; r < rows; ++r) {
            double m = 0, v = 0;
            for (i64 j = 0; j < n; ++j) m += x[r * n + j];
            m /= n;
            for (i64 j = 0; j < n; ++j) v += (x[r * n + j] - m) * (x[r * n + j] - m);
            double s = 1.0 / std::sqrt(v / n + 1e-5);
            mu[r] = m;
            rs[r] = s;
            double s1 = 0, s2 = 0;
            for (i64 j = 0; j < n; ++j) {
                double xh = (x[r * n + j] - m) * s;
                y_ref[r * n + j] = xh * w[j] + b[j];
                s1 += w[j] * g[r * n + j];
                s2 += w[j] * g[r * n + j] * xh;
                dw_ref[j] += g[r * n + j] * xh;
                db_ref[j] += g[r * n + j];
            }
            for (i64 j = 0; j < n; ++j) {
                double xh = (x[r * n + j] - m) * s;
                dx_ref[r * n + j] = s * (w[j] * g[r * n + j] - s1 / n - xh * s2 / n);
            }
        }
        std::vector<float> y(rows * n), mean(rows), rstd(rows), dx(rows * n), dw(n), db(n);
        emu_launch(3, block, layer_norm_f32, rows, n, 1e-5f, x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data());
        emu_launch(3, block, layer_norm_bwd_dx_f32, rows, n, (const float*)x.data(), (const float*)g.data(), (const float*)w.data(), (const float*)mean.data(), (const float*)rstd.data(), dx.data());
        emu_launch(2, block, layer_norm_bwd_params_f32, rows, n, (const float*)x.data(), (const float*)g.data(), (const float*)mean.data(), (const float*)rstd.data(), dw.data(), db.data());
        char name[64];
        std::snprintf(name, sizeof name, "layer_norm forward (%u threads)", block);
        ok &= report(name, std::fmax(max_rel(y, y_ref), max_rel(mean, mu)));
        std::snprintf(name, sizeof name, "layer_norm dx (%u threads)", block);
        ok &= report(name, max_rel(dx, dx_ref));
        std::snprintf(name, sizeof name, "layer_norm dw, db (%u threads)", block);
        ok &= report(name, std::fmax(max_rel(dw, dw_ref), max_rel(db, db_ref)));
        // softmax and log-softmax
        for (int log_ : {0, 1}) {
            std::vector<double> sy(rows * n), sdx(rows * n);
            for (i64 r = 0; r < rows; ++r) {
                double m = -1e300, s = 0;
                for (i64 j = 0; j < n; ++j) m = std::fmax(m, x[r * n + j]);
                for (i64 j = 0; j < n; ++j) s += std::exp(x[r * n + j] - m);
                double gs = 0;
                for (i64 j = 0; j < n; ++j) {
                    double p = std::exp(x[r * n + j] - m) / s;
                    sy[r * n + j] = log_ ? x[r * n + j] - m - std::log(s) : p;
                    gs += log_ ? g[r * n + j] : g[r * n + j] * p;
                }
                for (i64 j = 0; j < n; ++j) {
                    double p = std::exp(x[r * n + j] - m) / s;
                    sdx[r * n + j] = log_ ? g[r * n + j] - p * gs : p * (g[r * n + j] - gs);
                }
            }
            std::vector<float> yy(rows * n), dd(rows * n);
            emu_launch(2, block, softmax_rows_f32, rows, n, log_, (const float*)x.data(), yy.data());
            emu_launch(2, block, softmax_rows_bwd_f32, rows, n, log_, (const float*)yy.data(), (const float*)g.data(), dd.data());
            std::snprintf(name, sizeof name, "%s forward, backward (%u)", log_ ? "log_softmax" : "softmax", block);
            ok &= report(name, std::fmax(max_rel(yy, sy), max_rel(dd, sdx)));
        }
        // cross-entropy with smoothing 0.1, row 2 ignored
        std::vector<i64> t = {3, 299, -1, 0, 150};
        const float eps = 0.1f;
        std::vector<double> loss_ref(rows), lse_ref(rows), cdx_ref(rows * n, 0.0);
        double total = 0;
        i64 count = 0;
        for (i64 r = 0; r < rows; ++r) {
            double m = -1e300, s = 0, sx = 0;
            for (i64 j = 0; j < n; ++j) m = std::fmax(m, x[r * n + j]);
            for (i64 j = 0; j < n; ++j) {
                s += std::exp(x[r * n + j] - m);
                sx += x[r * n + j];
            }
            double l = m + std::log(s);
            lse_ref[r] = l;
            loss_ref[r] = t[r] < 0 ? 0.0 : (1 - eps) * (l - x[r * n + t[r]]) + eps * (l - sx / n);
            total += loss_ref[r];
            count += t[r] >= 0;
        }
        double gup = 0.7, inv = 1.0 / count;
        for (i64 r = 0; r < rows; ++r)
            for (i64 j = 0; j < n && t[r] >= 0; ++j)
                cdx_ref[r * n + j] = gup * inv * (std::exp(x[r * n + j] - lse_ref[r]) - eps / n - (j == t[r] ? 1 - eps : 0.0));
        std::vector<float> loss(rows), lse(rows), mean_out(1), cdx(rows * n), gdev = {(float)gup};
        emu_launch(2, block, cross_entropy_rows_f32, rows, n, eps, (const float*)x.data(), (const i64*)t.data(), loss.data(), lse.data());
        emu_launch(1, block, mean_of_f32, rows, (float)inv, (const float*)loss.data(), mean_out.data());
        emu_launch(3, block, cross_entropy_rows_bwd_f32, rows, n, eps, (float)inv, (const float*)x.data(), (const i64*)t.data(), (const float*)lse.data(), (const float*)gdev.data(), cdx.data());
        std::snprintf(name, sizeof name, "cross_entropy, mean, backward (%u)", block);
        ok &= report(name, std::fmax(std::fmax(max_rel(loss, loss_ref), max_rel(lse, lse_ref)), std::fmax(max_rel(mean_out, {total * inv}), max_rel(cdx, cdx_ref))));
    }
    return ok ? 0 : 1;
}
