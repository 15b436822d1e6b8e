// Comparison helpers shared by the emulator checks.
#pragma once
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

// max |got − want| / max(1, max |want|): the selftest's error measure.
inline double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
    double scale = 1.0, err = 0.0;
    for (double v : want) scale = std::fmax(scale, std::fabs(v));
    for (size_t i = 0; i < got.size(); ++i) err = std::fmax(err, std::fabs(got[i] - want[i]));
    return err / scale;
}

// Prints one check's line ("… ok" or "… FAIL") and returns whether err < tol.
inline bool report(const char* name, double err, double tol = 2e-5) {
    bool ok = err < tol;
    std::printf("%-46s %.1e  %s\n", name, err, ok ? "ok" : "FAIL");
    return ok;
}

// n standard-normal floats from `rng`.
inline std::vector<float> randn(std::mt19937& rng, size_t n) {
    std::normal_distribution<float> nd;
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}
