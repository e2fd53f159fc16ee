// Shared helpers for every kernel file. The Rust loader pastes this file in place of
// `#include "common.cuh"` before NVRTC compiles a kernel file; the CPU emulation harness
// includes it through the normal preprocessor with emu/cuda_emu.h already loaded.
#pragma once
#ifndef CUDA_EMU
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

#define FULL_MASK 0xffffffffu

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Sum over the 32 lanes of a warp (butterfly: every lane ends with the total).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Max over the 32 lanes of a warp.
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024). Every thread gets the total.
// `scratch` must hold 32 floats of shared memory; the block must call this uniformly.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    return t;
}

// Welford merge of (count, mean, M2) pairs.
__device__ __forceinline__ void welford_merge(float& n, float& mean, float& m2, float nb, float meanb, float m2b) {
    float nn = n + nb;
    if (nn == 0.0f) return;
    float delta = meanb - mean;
    float f = nb / nn;
    mean += delta * f;
    m2 += m2b + delta * delta * n * f;
    n = nn;
}

__device__ __forceinline__ void welford_warp(float& n, float& mean, float& m2) {
    for (int o = 16; o > 0; o >>= 1) {
        float nb = __shfl_xor_sync(FULL_MASK, n, o);
        float mb = __shfl_xor_sync(FULL_MASK, mean, o);
        float m2b = __shfl_xor_sync(FULL_MASK, m2, o);
        welford_merge(n, mean, m2, nb, mb, m2b);
    }
}
