// Checks the causal self-attention kernels of kernels/cuda/attention.cu on the CPU (through
// cuda_emu.h) against direct double-precision loops: output, log-sum-exp, dQ, dK and dV, with
// grouped-query heads, lengths that are not multiples of the 32-row tiles, head dims up to 64, and
// q read through a token-major view (strides). Exit status 0 when all pass.
// Build and run: scripts/cuda-emu-test.sh
#include "cuda_emu.h"
#include "check.h"
#include "../common.cuh"
#include "../attention.cu"
#include <cstdio>
#include <random>

static bool check(const char* name, i64 B, i64 H, i64 KVH, i64 L, i64 D, bool q_token_major) {
    CaDims s{B, H, KVH, L, D};
    std::mt19937 rng(77);
    auto rand_vec = [&](size_t n) { return randn(rng, n); };
    // q as [B, H, L, D] contiguous, or the same values stored token-major [B, L, H, D]
    auto q = rand_vec(B * H * L * D), k = rand_vec(B * KVH * L * D), v = rand_vec(B * KVH * L * D), d_o = rand_vec(B * L * H * D);
    HeadView qv = q_token_major ? HeadView{0, L * H * D, D, H * D} : HeadView{0, H * L * D, L * D, D};
    HeadView kv{0, KVH * L * D, L * D, D}, vv = kv;
    auto Q = [&](i64 b, i64 h, i64 i, i64 e) { return (double)q[qv.offset + b * qv.sb + h * qv.sh + i * qv.sl + e]; };
    auto K = [&](i64 b, i64 h, i64 i, i64 e) { return (double)k[b * kv.sb + h * kv.sh + i * kv.sl + e]; };
    auto V = [&](i64 b, i64 h, i64 i, i64 e) { return (double)v[b * vv.sb + h * vv.sh + i * vv.sl + e]; };
    auto DO = [&](i64 b, i64 h, i64 i, i64 e) { return (double)d_o[((b * L + i) * H + h) * D + e]; };
    // reference
    std::vector<double> o_ref(B * L * H * D), lse_ref(B * H * L), dq_ref(B * L * H * D, 0.0), dk_ref(B * L * KVH * D, 0.0), dv_ref(B * L * KVH * D, 0.0);
    double scale = 1.0 / std::sqrt((double)D);
    for (i64 b = 0; b < B; ++b)
        for (i64 h = 0; h < H; ++h) {
            i64 kh = h / (H / KVH);
            for (i64 i = 0; i < L; ++i) {
                std::vector<double> p(i + 1), dp(i + 1);
                double mx = -1e300, sum = 0.0;
                for (i64 j = 0; j <= i; ++j) {
                    double d = 0;
                    for (i64 e = 0; e < D; ++e) d += Q(b, h, i, e) * K(b, kh, j, e);
                    p[j] = d * scale;
                    mx = std::fmax(mx, p[j]);
                }
                for (i64 j = 0; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
                for (i64 j = 0; j <= i; ++j) p[j] /= sum;
                lse_ref[(b * H + h) * L + i] = mx + std::log(sum);
                double delta = 0.0;
                for (i64 e = 0; e < D; ++e) {
                    double acc = 0;
                    for (i64 j = 0; j <= i; ++j) acc += p[j] * V(b, kh, j, e);
                    o_ref[((b * L + i) * H + h) * D + e] = acc;
                    delta += acc * DO(b, h, i, e);
                }
                for (i64 j = 0; j <= i; ++j) {
                    double d = 0;
                    for (i64 e = 0; e < D; ++e) d += DO(b, h, i, e) * V(b, kh, j, e);
                    double ds = p[j] * (d - delta);
                    for (i64 e = 0; e < D; ++e) {
                        dq_ref[((b * L + i) * H + h) * D + e] += ds * K(b, kh, j, e) * scale;
                        dk_ref[((b * L + j) * KVH + kh) * D + e] += ds * Q(b, h, i, e) * scale;
                        dv_ref[((b * L + j) * KVH + kh) * D + e] += p[j] * DO(b, h, i, e);
                    }
                }
            }
        }
    std::vector<float> o(o_ref.size(), NAN), lse(lse_ref.size(), NAN), delta(lse_ref.size(), NAN), dq(dq_ref.size(), NAN), dk(dk_ref.size(), NAN), dv(dv_ref.size(), NAN);
    unsigned tiles = (unsigned)((L + CA_T - 1) / CA_T);
    emu_launch(B * H * tiles, CA_THREADS, causal_attn_fwd_f32, s, q.data(), qv, k.data(), kv, v.data(), vv, o.data(), lse.data());
    emu_launch(B * H * tiles, CA_THREADS, causal_attn_bwd_dq_f32, s, q.data(), qv, k.data(), kv, v.data(), vv, (const float*)o.data(), d_o.data(), (const float*)lse.data(), delta.data(), dq.data());
    emu_launch(B * KVH * tiles, CA_THREADS, causal_attn_bwd_dkv_f32, s, q.data(), qv, k.data(), kv, v.data(), vv, d_o.data(), (const float*)lse.data(), (const float*)delta.data(), dk.data(), dv.data());
    double eo = max_rel(o, o_ref), el = max_rel(lse, lse_ref), eq = max_rel(dq, dq_ref), ek = max_rel(dk, dk_ref), ev = max_rel(dv, dv_ref);
    bool ok = eo < 1e-5 && el < 1e-5 && eq < 1e-5 && ek < 1e-5 && ev < 1e-5;
    std::printf("%-30s o %.1e  lse %.1e  dq %.1e  dk %.1e  dv %.1e  %s\n", name, eo, el, eq, ek, ev, ok ? "ok" : "FAIL");
    return ok;
}

int main() {
    bool ok = true;
    ok &= check("B2 H4 KVH2 L45 D24", 2, 4, 2, 45, 24, false);
    ok &= check("B1 H2 KVH2 L70 D64, q token-major", 1, 2, 2, 70, 64, true);
    ok &= check("B1 H3 KVH1 L5 D8", 1, 3, 1, 5, 8, false);
    ok &= check("B1 H2 KVH1 L64 D32", 1, 2, 1, 64, 32, true);
    return ok ? 0 : 1;
}
