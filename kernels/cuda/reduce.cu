// Reductions over the middle axis of a contiguous [outer, n, inner] array (f32).
// Each output is reduced by one block (inner == 1) or one thread (inner > 1) in a fixed order,
// so results do not depend on the launch.

// inner == 1: one block per row.
extern "C" __global__ void sum_rows_f32(i64 rows, i64 n, const float* __restrict__ x, float* __restrict__ out) {
    for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + r * n;
        float acc = 0.0f;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) acc += xr[j];
        acc = block_sum(acc);
        if (threadIdx.x == 0) out[r] = acc;
    }
}
// inner > 1: one thread per (outer, inner) pair; neighbouring threads read neighbouring columns.
extern "C" __global__ void sum_mid_f32(i64 outer, i64 n, i64 inner, const float* __restrict__ x, float* __restrict__ out) {
    GRID_STRIDE(i, outer * inner) {
        i64 o = i / inner, c = i % inner;
        const float* p = x + o * n * inner + c;
        float acc = 0.0f;
        for (i64 j = 0; j < n; ++j) acc += p[j * inner];
        out[i] = acc;
    }
}
// Max and the index of its first occurrence (NaN wins, as on the CPU).
extern "C" __global__ void max_mid_f32(i64 outer, i64 n, i64 inner, const float* __restrict__ x, float* __restrict__ out, i64* __restrict__ arg) {
    GRID_STRIDE(i, outer * inner) {
        i64 o = i / inner, c = i % inner;
        const float* p = x + o * n * inner + c;
        float best = p[0];
        i64 bi = 0;
        for (i64 j = 1; j < n; ++j) {
            float v = p[j * inner];
            if (best != best) break;
            if (v > best || v != v) { best = v; bi = j; }
        }
        out[i] = best;
        arg[i] = bi;
    }
}
// dx[o, arg[o, c], c] = g[o, c]; dx is zeroed first.
extern "C" __global__ void max_backward_f32(i64 outer, i64 n, i64 inner, const float* __restrict__ g, const i64* __restrict__ arg, float* __restrict__ dx) {
    GRID_STRIDE(i, outer * inner) {
        i64 o = i / inner, c = i % inner;
        dx[(o * n + arg[i]) * inner + c] = g[i];
    }
}
