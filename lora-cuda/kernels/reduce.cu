// Reductions.
//
// Launch shape: sum_f32 / sumsq_f32: 256 threads per block, min(ceil(n/256), 1024) blocks; each block
// reduces a grid-stride slice in registers, then warp shuffles, then one atomicAdd per block into
// out[0] (which the caller zeroes). A few hundred blocks fill the GPU while keeping atomics rare.
// col_sum: one thread per column, 256 per block, looping over rows: reads are coalesced along a row.
#include "common.cuh"

extern "C" __global__ void sum_f32(const float* __restrict__ x, float* out, long long n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        acc += x[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) atomicAdd(out, acc);
}

// out[0] += sum of squares (for the global gradient norm and MSE).
extern "C" __global__ void sumsq_f32(const float* __restrict__ x, float* out, long long n) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        acc += x[i] * x[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) atomicAdd(out, acc);
}

// out[c] = sum over rows of x[r, c] (bias gradients).
extern "C" __global__ void col_sum(const float* __restrict__ x, float* __restrict__ out, long long rows, long long cols) {
    long long c = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (long long r = 0; r < rows; ++r) acc += x[r * cols + c];
    out[c] = acc;
}

// out[i] = mean of x[i*inner .. (i+1)*inner] : one warp per output row, 8 warps per block.
extern "C" __global__ void row_mean(const float* __restrict__ x, float* __restrict__ out, long long rows, long long inner) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    float acc = 0.0f;
    if (row < rows)
        for (long long j = lane; j < inner; j += 32) acc += x[row * inner + j];
    acc = warp_sum(acc);
    if (row < rows && lane == 0) out[row] = acc / (float)inner;
}
