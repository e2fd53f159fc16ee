// Group norm and layer norm, forward and backward, with Welford statistics.
//
// Launch shapes:
// * group_norm_fwd / group_norm_bwd_dx: one block of 256 threads per (sample, group); the group's
//   C/G * S elements are contiguous, threads stride over them (coalesced), Welford per thread, merged
//   across the warp with shuffles and across warps through shared memory. Groups hold thousands of
//   elements in the U-Net, which is what a 256-thread block wants.
// * group_norm_bwd_param: one block of 256 threads per channel, reducing over samples and pixels.
// * layer_norm_fwd / layer_norm_bwd_dx: one warp per row, 8 rows per block (rows are 320..1280 wide).
// * layer_norm_bwd_param: one thread per column looping over rows (coalesced along each row).
#include "common.cuh"

__device__ __forceinline__ void block_welford(float& n, float& mean, float& m2, float* sh_n, float* sh_mean, float* sh_m2) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    welford_warp(n, mean, m2);
    if (lane == 0) { sh_n[warp] = n; sh_mean[warp] = mean; sh_m2[warp] = m2; }
    __syncthreads();
    if (warp == 0) {
        n = lane < nwarps ? sh_n[lane] : 0.0f;
        mean = lane < nwarps ? sh_mean[lane] : 0.0f;
        m2 = lane < nwarps ? sh_m2[lane] : 0.0f;
        welford_warp(n, mean, m2);
        if (lane == 0) { sh_n[0] = n; sh_mean[0] = mean; sh_m2[0] = m2; }
    }
    __syncthreads();
    n = sh_n[0]; mean = sh_mean[0]; m2 = sh_m2[0];
}

// x [N, C, S] -> y; mean/rstd [N*G].
extern "C" __global__ void group_norm_fwd(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float* __restrict__ mean_out,
                                          float* __restrict__ rstd_out, int C, long long S, int G, float eps) {
    __shared__ float sh_n[32], sh_mean[32], sh_m2[32];
    long long ng = blockIdx.x;
    int cg = C / G;
    long long len = (long long)cg * S;
    const float* xg = x + ng * len;
    float n = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        float v = xg[i];
        n += 1.0f;
        float d = v - mean;
        mean += d / n;
        m2 += d * (v - mean);
    }
    block_welford(n, mean, m2, sh_n, sh_mean, sh_m2);
    float rstd = rsqrtf(m2 / (float)len + eps);
    if (threadIdx.x == 0) { mean_out[ng] = mean; rstd_out[ng] = rstd; }
    int c0 = (ng % G) * cg;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        int c = c0 + (int)(i / S);
        y[ng * len + i] = (xg[i] - mean) * rstd * gamma[c] + beta[c];
    }
}

extern "C" __global__ void group_norm_bwd_dx(const float* __restrict__ x, const float* __restrict__ dy,
                                             const float* __restrict__ gamma, const float* __restrict__ mean_in,
                                             const float* __restrict__ rstd_in, float* __restrict__ dx, int C, long long S,
                                             int G) {
    __shared__ float scratch[32];
    long long ng = blockIdx.x;
    int cg = C / G;
    long long len = (long long)cg * S;
    int c0 = (ng % G) * cg;
    float mean = mean_in[ng], rstd = rstd_in[ng];
    float s1 = 0.0f, s2 = 0.0f;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        float dxh = dy[ng * len + i] * gamma[c0 + i / S];
        float xh = (x[ng * len + i] - mean) * rstd;
        s1 += dxh;
        s2 += dxh * xh;
    }
    s1 = block_sum(s1, scratch);
    __syncthreads();
    s2 = block_sum(s2, scratch);
    float a1 = s1 / (float)len, a2 = s2 / (float)len;
    for (long long i = threadIdx.x; i < len; i += blockDim.x) {
        float dxh = dy[ng * len + i] * gamma[c0 + i / S];
        float xh = (x[ng * len + i] - mean) * rstd;
        dx[ng * len + i] = rstd * (dxh - a1 - xh * a2);
    }
}

// dgamma[c], dbeta[c]: block per channel.
extern "C" __global__ void group_norm_bwd_param(const float* __restrict__ x, const float* __restrict__ dy,
                                                const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                                                float* __restrict__ dgamma, float* __restrict__ dbeta, int N, int C,
                                                long long S, int G) {
    __shared__ float scratch[32];
    int c = blockIdx.x;
    int cg = C / G;
    float sg = 0.0f, sb = 0.0f;
    for (int n = 0; n < N; ++n) {
        long long ng = (long long)n * G + c / cg;
        float mean = mean_in[ng], rstd = rstd_in[ng];
        const float* xr = x + ((long long)n * C + c) * S;
        const float* gr = dy + ((long long)n * C + c) * S;
        for (long long i = threadIdx.x; i < S; i += blockDim.x) {
            sg += gr[i] * (xr[i] - mean) * rstd;
            sb += gr[i];
        }
    }
    sg = block_sum(sg, scratch);
    __syncthreads();
    sb = block_sum(sb, scratch);
    if (threadIdx.x == 0) { dgamma[c] = sg; dbeta[c] = sb; }
}

extern "C" __global__ void layer_norm_fwd(const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ gamma,
                                          const float* __restrict__ beta, float* __restrict__ mean_out,
                                          float* __restrict__ rstd_out, long long rows, int d, float eps) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + row * d;
    float n = 0.0f, mean = 0.0f, m2 = 0.0f;
    for (int j = lane; j < d; j += 32) {
        float v = xr[j];
        n += 1.0f;
        float dd = v - mean;
        mean += dd / n;
        m2 += dd * (v - mean);
    }
    welford_warp(n, mean, m2);
    float rstd = rsqrtf(m2 / (float)d + eps);
    if (lane == 0) { mean_out[row] = mean; rstd_out[row] = rstd; }
    for (int j = lane; j < d; j += 32) y[row * d + j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
}

extern "C" __global__ void layer_norm_bwd_dx(const float* __restrict__ x, const float* __restrict__ dy,
                                             const float* __restrict__ gamma, const float* __restrict__ mean_in,
                                             const float* __restrict__ rstd_in, float* __restrict__ dx, long long rows, int d) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float mean = mean_in[row], rstd = rstd_in[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = lane; j < d; j += 32) {
        float dxh = dy[row * d + j] * gamma[j];
        float xh = (x[row * d + j] - mean) * rstd;
        s1 += dxh;
        s2 += dxh * xh;
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    float a1 = s1 / (float)d, a2 = s2 / (float)d;
    for (int j = lane; j < d; j += 32) {
        float dxh = dy[row * d + j] * gamma[j];
        float xh = (x[row * d + j] - mean) * rstd;
        dx[row * d + j] = rstd * (dxh - a1 - xh * a2);
    }
}

extern "C" __global__ void layer_norm_bwd_param(const float* __restrict__ x, const float* __restrict__ dy,
                                                const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                                                float* __restrict__ dgamma, float* __restrict__ dbeta, long long rows, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float sg = 0.0f, sb = 0.0f;
    for (long long r = 0; r < rows; ++r) {
        float g = dy[r * d + j];
        sg += g * (x[r * d + j] - mean_in[r]) * rstd_in[r];
        sb += g;
    }
    dgamma[j] = sg;
    dbeta[j] = sb;
}
