// A CPU stand-in for the CUDA execution model, enough to run this project's block-tiled kernels
// (kernels/cuda/*.cu) on a machine without a GPU and check their results: every block runs in
// turn, its threads as real threads, `__syncthreads` as a barrier, `__shared__` arrays shared by
// the block's threads. Warp intrinsics are not modelled (the kernels tested here use none), and it
// is slow (one OS thread per CUDA thread): for small checking problems only. `__shfl_xor_sync`
// is modelled for full warps (blockDim a multiple of 32, all 32 lanes taking part), as the block
// reductions of common.cuh use it.
#pragma once
#include <barrier>
#include <cassert>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline dim3 gridDim, blockDim, blockIdx;
inline thread_local dim3 threadIdx;
inline std::barrier<>* emu_block_barrier = nullptr;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
// One copy per kernel instantiation, shared by the block's threads (blocks run one at a time).
#define __shared__ static

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
// One warp's exchange slots and barrier, for __shfl_xor_sync.
struct EmuWarp {
    std::barrier<> bar{32};
    float slot[32];
};
inline std::unique_ptr<EmuWarp[]> emu_warps;

// Lane i gets the value of lane i ^ o: every lane writes its slot, waits, reads, waits.
inline float __shfl_xor_sync(unsigned, float v, int o) {
    unsigned lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    EmuWarp& warp = emu_warps[w];
    warp.slot[lane] = v;
    warp.bar.arrive_and_wait();
    float r = warp.slot[lane ^ (unsigned)o];
    warp.bar.arrive_and_wait();
    return r;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// Runs `kernel(args...)` on a 1-D grid of `grid` blocks of `block` threads.
template <class K, class... A>
void emu_launch(unsigned grid, unsigned block, K kernel, A... args) {
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    assert(block % 32 == 0 || block < 32);
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = dim3{b, 1, 1};
        std::barrier<> bar(block);
        emu_block_barrier = &bar;
        emu_warps = std::make_unique<EmuWarp[]>((block + 31) / 32);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([&, t] {
                threadIdx = dim3{t, 1, 1};
                kernel(args...);
            });
        }
        for (auto& th : threads) th.join();
    }
}
