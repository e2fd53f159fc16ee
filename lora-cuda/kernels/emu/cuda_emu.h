// Emulation of the CUDA thread model on the CPU, so that the kernel sources in ../*.cu run unchanged
// (compiled as C++20 by the host compiler) in CI, where there is no GPU.
//
// * Blocks run one after another; the threads of a block run as OS threads (std::thread).
// * __syncthreads() is a std::barrier over the block; a thread that returns early drops out of it
//   (as exited threads do on the GPU).
// * __shared__ is `static`: one copy, which is correct because only one block runs at a time.
// * threadIdx / blockIdx are thread_local; blockDim / gridDim are globals set before a launch.
// * Warp shuffles go through a per-warp slot array and a per-warp barrier (lanes of a warp are the
//   consecutive thread ids 32w..32w+31, as on the GPU).
// * atomicAdd uses std::atomic_ref.
// * __half is g++'s _Float16; __nv_bfloat16 is a 16-bit struct with round-to-nearest-even conversion.
// What the emulation cannot run — inline PTX (mma.sync) — sits behind `#if` on __CUDA_ARCH__, which is not
// defined here, so the scalar twin is compiled instead.
#pragma once
#define CUDA_EMU 1

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local unsigned emu_tid;
inline dim3 blockDim;
inline dim3 gridDim;

struct EmuWarp {
    std::barrier<> bar;
    uint64_t slots[32];
    explicit EmuWarp(int n) : bar(n) {}
};
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<std::unique_ptr<EmuWarp>>* emu_warps = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <typename T, typename F>
inline T emu_exchange(T v, F src_of) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
    EmuWarp& w = *(*emu_warps)[emu_tid / 32];
    int lane = emu_tid % 32;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slots[lane] = bits;
    w.bar.arrive_and_wait();
    int src = src_of(lane);
    int nlanes = (int)std::min<unsigned>(32, blockDim.x * blockDim.y * blockDim.z - (emu_tid / 32) * 32);
    T r = v;
    if (src >= 0 && src < nlanes) std::memcpy(&r, &w.slots[src], sizeof(T));
    w.bar.arrive_and_wait();
    return r;
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    return emu_exchange(v, [&](int lane) { return (lane ^ mask) < ((lane / width) + 1) * width ? (lane ^ mask) : lane; });
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    return emu_exchange(v, [&](int lane) { return (int)(lane % width + d) < width ? lane + (int)d : lane; });
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return emu_exchange(v, [&](int lane) { return (lane / width) * width + (src % width); });
}

inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }

struct alignas(16) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

struct __half {
    _Float16 v;
};
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half(float f) { return __half{(_Float16)f}; }

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}

// Runs `body` for every thread of every block of the launch.
template <typename F>
inline void emu_launch(dim3 grid, dim3 block, F&& body) {
    gridDim = grid;
    blockDim = block;
    const unsigned nthreads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar(nthreads);
                std::vector<std::unique_ptr<EmuWarp>> warps;
                for (unsigned w = 0; w * 32 < nthreads; ++w)
                    warps.push_back(std::make_unique<EmuWarp>((int)std::min<unsigned>(32, nthreads - w * 32)));
                emu_block_barrier = &bar;
                emu_warps = &warps;
                std::vector<std::thread> ts;
                ts.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t) {
                    ts.emplace_back([&, t] {
                        emu_tid = t;
                        threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        blockIdx = uint3{bx, by, bz};
                        body();
                        bar.arrive_and_drop();
                        warps[t / 32]->bar.arrive_and_drop();
                    });
                }
                for (auto& th : ts) th.join();
            }
}
