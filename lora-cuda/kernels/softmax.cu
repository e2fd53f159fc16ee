// Softmax over rows.
//
// Launch shape: one warp per row, 8 warps (256 threads) per block, grid ceil(rows/8). Rows in attention
// and CLIP are short (<= a few thousand), so a warp streams a row three times (max, sum, write) from L1/L2
// without shared memory; all reductions are warp shuffles.
#include "common.cuh"

// causal_rows > 0: row r sees columns j <= (r % causal_rows) + causal_off (the rest get 0).
extern "C" __global__ void softmax_fwd(const float* __restrict__ x, float* __restrict__ y, long long rows, int d,
                                       int causal_rows, int causal_off) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;  // whole warps exit together: rows are warp-uniform
    const float* xr = x + row * d;
    float* yr = y + row * d;
    int limit = d;
    if (causal_rows > 0) {
        long long l = (row % causal_rows) + causal_off + 1;
        limit = l < d ? (int)l : d;
    }
    float mx = -INFINITY;
    for (int j = lane; j < limit; j += 32) mx = fmaxf(mx, xr[j]);
    mx = warp_max(mx);
    float s = 0.0f;
    for (int j = lane; j < limit; j += 32) s += expf(xr[j] - mx);
    s = warp_sum(s);
    float inv = 1.0f / s;
    for (int j = lane; j < d; j += 32) yr[j] = j < limit ? expf(xr[j] - mx) * inv : 0.0f;
}

// dx = y * (dy - sum(dy * y)).
extern "C" __global__ void softmax_bwd(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ dx,
                                       long long rows, int d) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* yr = y + row * d;
    const float* gr = dy + row * d;
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32) dot += yr[j] * gr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < d; j += 32) dx[row * d + j] = yr[j] * (gr[j] - dot);
}
