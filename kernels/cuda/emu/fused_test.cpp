// Checks the f32 kernels of kernels/cuda/fused.cu that need no host-side work plan on the CPU
// (through cuda_emu.h) against direct double-precision loops: the tanh-gated residual (forward,
// backward, dα), weight standardisation in both scale modes (forward, backward), and the
// warp-per-row masked cross-attention (forward, backward with atomics) in both media modes.
// fused.cu also holds tensor-core kernels written in inline PTX: they are compiled here with the
// PTX removed and never launched. Build and run: scripts/cuda-emu-test.sh
#include "cuda_emu.h"
#include "check.h"
#include <atomic>
#include <cstdio>
#include <random>
// CUDA built-ins fused.cu uses beyond cuda_emu.h.
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
struct uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#include "../common.cuh"
// `asm volatile("…")` (the tensor-core PTX) becomes a no-op expression.
#define asm
#define volatile(...) ((void)0)
#include "../fused.cu"
#undef asm
#undef volatile

int main() {
    bool ok = true;
    std::mt19937 rng(9);
    auto rand_vec = [&](size_t n) { return randn(rng, n); };
    // ---- gated residual
    {
        const i64 n = 1000;
        auto x = rand_vec(n), f = rand_vec(n), g = rand_vec(n);
        std::vector<float> alpha = {0.3f};
        double t = std::tanh(0.3);
        std::vector<double> y_ref(n), df_ref(n);
        double dot = 0;
        for (i64 i = 0; i < n; ++i) {
            y_ref[i] = x[i] + t * f[i];
            df_ref[i] = t * g[i];
            dot += (double)g[i] * f[i];
        }
        const unsigned blocks = 3, threads = 64;
        std::vector<float> y(n), df(n), partial(blocks), da(1);
        emu_launch(blocks, threads, gated_residual_f32, n, (const float*)x.data(), (const float*)f.data(), (const float*)alpha.data(), y.data());
        emu_launch(blocks, threads, gated_residual_bwd_f32, n, (const float*)g.data(), (const float*)f.data(), (const float*)alpha.data(), df.data(), partial.data());
        emu_launch(1, 64, gated_residual_dalpha_f32, (i64)blocks, (const float*)partial.data(), (const float*)alpha.data(), da.data());
        ok &= report("gated_residual forward, df, dalpha", std::fmax(std::fmax(max_rel(y, y_ref), max_rel(df, df_ref)), max_rel(da, {(1 - t * t) * dot})));
    }
    // ---- weight standardisation, both modes
    for (int mode : {0, 1}) {
        const i64 rows = 5, n = 90;
        auto w = rand_vec(rows * n), gain = rand_vec(rows), dy = rand_vec(rows * n);
        float p = mode == 0 ? 1e-5f : 1e-4f;
        std::vector<double> y_ref(rows * n), dw_ref(rows * n), dg_ref(rows);
        // y = (w − mean)·s·gain, s = (n·(var + p))^(−1/2) (timm) or max(n·var, p)^(−1/2) (DeepMind);
        // dw by central differences of L = Σ dy·y in double (independent of the kernel's formula).
        auto row_loss = [&](const std::vector<double>& wr, i64 r, std::vector<double>* yo) {
            double mean = 0, var = 0;
            for (double x : wr) mean += x;
            mean /= n;
            for (double x : wr) var += (x - mean) * (x - mean);
            var /= n;
            double u = mode == 0 ? n * (var + p) : std::fmax(n * var, (double)p), sc = 1.0 / std::sqrt(u), l = 0;
            for (i64 j = 0; j < n; ++j) {
                double y = (wr[j] - mean) * sc * gain[r];
                if (yo) (*yo)[j] = y;
                l += dy[r * n + j] * y;
            }
            return l;
        };
        for (i64 r = 0; r < rows; ++r) {
            std::vector<double> wr(w.begin() + r * n, w.begin() + (r + 1) * n), yr(n);
            double l0 = row_loss(wr, r, &yr);
            for (i64 j = 0; j < n; ++j) {
                y_ref[r * n + j] = yr[j];
                double h = 1e-6, keep = wr[j];
                wr[j] = keep + h;
                double lp = row_loss(wr, r, nullptr);
                wr[j] = keep - h;
                double lm = row_loss(wr, r, nullptr);
                wr[j] = keep;
                dw_ref[r * n + j] = (lp - lm) / (2 * h);
            }
            dg_ref[r] = l0 / gain[r];
        }
        std::vector<float> y(rows * n), dw(rows * n), dg(rows);
        emu_launch(2, 64, weight_standardize_f32, rows, n, mode, p, (const float*)w.data(), (const float*)gain.data(), y.data());
        emu_launch(2, 64, weight_standardize_bwd_f32, rows, n, mode, p, (const float*)w.data(), (const float*)gain.data(), (const float*)dy.data(), dw.data(), dg.data());
        char name[64];
        std::snprintf(name, sizeof name, "weight_standardize %s forward, backward", mode == 0 ? "timm" : "deepmind");
        ok &= report(name, std::fmax(std::fmax(max_rel(y, y_ref), max_rel(dw, dw_ref)), max_rel(dg, dg_ref)));
    }
    // ---- masked cross-attention, one warp per query row
    for (int mode : {0, 1}) {
        const i64 B = 2, T = 9, M = 3, R = 5, H = 2, D = 40;
        XAttnDims s{B, T, M, R, H, D, mode, (float)(1.0 / std::sqrt((double)D))};
        std::vector<i64> media = {0, 1, 1, 2, 2, 2, 3, 3, 1, 0, 0, 2, 2, 3, 3, 3, 3, 1};
        auto q = rand_vec(B * T * H * D), k = rand_vec(B * M * R * H * D), v = rand_vec(B * M * R * H * D), d_o = rand_vec(B * T * H * D);
        std::vector<double> o_ref(q.size(), 0.0), dq_ref(q.size(), 0.0), dk_ref(k.size(), 0.0), dv_ref(v.size(), 0.0);
        for (i64 b = 0; b < B; ++b)
            for (i64 t = 0; t < T; ++t)
                for (i64 h = 0; h < H; ++h) {
                    i64 mi = media[b * T + t];
                    if (mi == 0) continue;
                    i64 j0 = mode == 0 ? (mi - 1) * R : 0, nk = mode == 0 ? R : mi * R;
                    const i64 qo = ((b * T + t) * H + h) * D;
                    auto ko = [&](i64 j) { return ((b * M * R + j) * H + h) * D; };
                    std::vector<double> p(nk);
                    double mx = -1e300, sum = 0;
                    for (i64 j = 0; j < nk; ++j) {
                        double d = 0;
                        for (i64 e = 0; e < D; ++e) d += (double)q[qo + e] * k[ko(j0 + j) + e];
                        p[j] = d * s.scale;
                        mx = std::fmax(mx, p[j]);
                    }
                    for (auto& x : p) sum += (x = std::exp(x - mx));
                    for (auto& x : p) x /= sum;
                    double delta = 0;
                    for (i64 e = 0; e < D; ++e) {
                        double a = 0;
                        for (i64 j = 0; j < nk; ++j) a += p[j] * v[ko(j0 + j) + e];
                        o_ref[qo + e] = a;
                        delta += a * d_o[qo + e];
                    }
                    for (i64 j = 0; j < nk; ++j) {
                        double dp = 0;
                        for (i64 e = 0; e < D; ++e) dp += (double)d_o[qo + e] * v[ko(j0 + j) + e];
                        double ds = p[j] * (dp - delta);
                        for (i64 e = 0; e < D; ++e) {
                            dq_ref[qo + e] += ds * k[ko(j0 + j) + e] * s.scale;
                            dk_ref[ko(j0 + j) + e] += ds * q[qo + e] * s.scale;
                            dv_ref[ko(j0 + j) + e] += p[j] * d_o[qo + e];
                        }
                    }
                }
        std::vector<float> o(q.size()), lse(B * T * H), dq(q.size()), dk(k.size(), 0.0f), dv(v.size(), 0.0f);
        emu_launch(2, 128, masked_xattn_fwd_f32, s, (const float*)q.data(), (const float*)k.data(), (const float*)v.data(), (const i64*)media.data(), o.data(), lse.data());
        emu_launch(2, 128, masked_xattn_bwd_f32, s, (const float*)q.data(), (const float*)k.data(), (const float*)v.data(), (const i64*)media.data(), (const float*)o.data(),
                   (const float*)lse.data(), (const float*)d_o.data(), dq.data(), dk.data(), dv.data());
        char name[64];
        std::snprintf(name, sizeof name, "masked_xattn warp-per-row (%s)", mode == 0 ? "immediate" : "all previous");
        ok &= report(name, std::fmax(std::fmax(max_rel(o, o_ref), max_rel(dq, dq_ref)), std::fmax(max_rel(dk, dk_ref), max_rel(dv, dv_ref))));
    }
    return ok ? 0 : 1;
}
