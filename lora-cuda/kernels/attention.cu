// Fused scaled dot-product attention, flash-style (online softmax; the Lq x Lk score matrix is never
// stored), forward and backward.
//
// Layout: q [BH, Lq, D], k [BH, Lk, D], v [BH, Lk, DV], o [BH, Lq, DV], lse [BH, Lq] (log-sum-exp of
// each query row, saved by the forward for the backward). D, DV <= ATT_DMAX.
//
// Launch shape (forward and backward): one warp per query row, ATT_WARPS = 4 warps (128 threads) per
// block, grid (ceil(Lq/4), BH). Each lane holds D/32 entries of its row's q, o and (backward) dq in
// registers. Keys and values stream through shared memory in tiles of ATT_BC = 16 rows shared by the
// block's 4 warps; a score is a warp-shuffle dot product. Threads of a warp whose row is past Lq still
// load tiles and hit the barriers, they just do not write.
// Backward: dq is accumulated in registers; dk and dv (zeroed by the caller) receive atomicAdds, since
// every query row contributes to every key row. attn_bwd_dot first computes delta_i = dO_i . O_i.
#include "common.cuh"

#define ATT_DMAX 256
#define ATT_PER_LANE (ATT_DMAX / 32)
#define ATT_BC 16
#define ATT_WARPS 4

extern "C" __global__ void __launch_bounds__(128) attn_fwd(const float* __restrict__ q, const float* __restrict__ k,
                                                          const float* __restrict__ v, float* __restrict__ o,
                                                          float* __restrict__ lse, int Lq, int Lk, int D, int DV,
                                                          float scale, int causal) {
    __shared__ float Ks[ATT_BC][ATT_DMAX];
    __shared__ float Vs[ATT_BC][ATT_DMAX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long bh = blockIdx.y;
    const int row = blockIdx.x * ATT_WARPS + warp;
    const bool active = row < Lq;
    const int causal_limit = causal ? row + (Lk - Lq) : Lk - 1;  // last visible key
    float qr[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int t = 0; t < ATT_PER_LANE; ++t) {
        int d = lane + 32 * t;
        qr[t] = (active && d < D) ? q[(bh * Lq + row) * D + d] : 0.0f;
        acc[t] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j0 = 0; j0 < Lk; j0 += ATT_BC) {
        for (int e = threadIdx.x; e < ATT_BC * ATT_DMAX; e += blockDim.x) {
            int jj = e / ATT_DMAX, d = e % ATT_DMAX, j = j0 + jj;
            Ks[jj][d] = (j < Lk && d < D) ? k[(bh * Lk + j) * D + d] : 0.0f;
            Vs[jj][d] = (j < Lk && d < DV) ? v[(bh * Lk + j) * DV + d] : 0.0f;
        }
        __syncthreads();
        for (int jj = 0; jj < ATT_BC && j0 + jj < Lk; ++jj) {
            float s = 0.0f;
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) s += qr[t] * Ks[jj][lane + 32 * t];
            s = warp_sum(s) * scale;
            if (j0 + jj > causal_limit) continue;  // warp-uniform
            float m_new = fmaxf(m, s);
            float corr = expf(m - m_new);
            float p = expf(s - m_new);
            l = l * corr + p;
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) acc[t] = acc[t] * corr + p * Vs[jj][lane + 32 * t];
            m = m_new;
        }
        __syncthreads();
    }
    if (active) {
        float inv = 1.0f / l;
#pragma unroll
        for (int t = 0; t < ATT_PER_LANE; ++t) {
            int d = lane + 32 * t;
            if (d < DV) o[(bh * Lq + row) * DV + d] = acc[t] * inv;
        }
        if (lane == 0) lse[bh * Lq + row] = m + logf(l);
    }
}

// delta[i] = sum_d dO[i, d] * O[i, d] : one warp per row, 8 rows per block.
extern "C" __global__ void attn_bwd_dot(const float* __restrict__ o, const float* __restrict__ d_o, float* __restrict__ delta,
                                        long long rows, int DV) {
    long long row = blockIdx.x * (long long)(blockDim.x / 32) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float s = 0.0f;
    for (int d = lane; d < DV; d += 32) s += o[row * DV + d] * d_o[row * DV + d];
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

extern "C" __global__ void __launch_bounds__(128) attn_bwd(const float* __restrict__ q, const float* __restrict__ k,
                                                          const float* __restrict__ v, const float* __restrict__ d_o,
                                                          const float* __restrict__ lse, const float* __restrict__ delta,
                                                          float* __restrict__ dq, float* dk, float* dv, int Lq, int Lk,
                                                          int D, int DV, float scale, int causal) {
    __shared__ float Ks[ATT_BC][ATT_DMAX];
    __shared__ float Vs[ATT_BC][ATT_DMAX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long bh = blockIdx.y;
    const int row = blockIdx.x * ATT_WARPS + warp;
    const bool active = row < Lq;
    const int causal_limit = causal ? row + (Lk - Lq) : Lk - 1;
    float qr[ATT_PER_LANE], dor[ATT_PER_LANE], dqr[ATT_PER_LANE];
#pragma unroll
    for (int t = 0; t < ATT_PER_LANE; ++t) {
        int d = lane + 32 * t;
        qr[t] = (active && d < D) ? q[(bh * Lq + row) * D + d] : 0.0f;
        dor[t] = (active && d < DV) ? d_o[(bh * Lq + row) * DV + d] : 0.0f;
        dqr[t] = 0.0f;
    }
    const float L = active ? lse[bh * Lq + row] : 0.0f;
    const float Di = active ? delta[bh * Lq + row] : 0.0f;
    for (int j0 = 0; j0 < Lk; j0 += ATT_BC) {
        for (int e = threadIdx.x; e < ATT_BC * ATT_DMAX; e += blockDim.x) {
            int jj = e / ATT_DMAX, d = e % ATT_DMAX, j = j0 + jj;
            Ks[jj][d] = (j < Lk && d < D) ? k[(bh * Lk + j) * D + d] : 0.0f;
            Vs[jj][d] = (j < Lk && d < DV) ? v[(bh * Lk + j) * DV + d] : 0.0f;
        }
        __syncthreads();
        for (int jj = 0; jj < ATT_BC && j0 + jj < Lk; ++jj) {
            int j = j0 + jj;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) {
                s += qr[t] * Ks[jj][lane + 32 * t];
                dp += dor[t] * Vs[jj][lane + 32 * t];
            }
            s = warp_sum(s) * scale;
            dp = warp_sum(dp);
            if (!active || j > causal_limit) continue;  // warp-uniform
            float p = expf(s - L);
            float ds = p * (dp - Di);
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) {
                int d = lane + 32 * t;
                dqr[t] += scale * ds * Ks[jj][d];
                if (d < D) atomicAdd(&dk[(bh * Lk + j) * D + d], scale * ds * qr[t]);
                if (d < DV) atomicAdd(&dv[(bh * Lk + j) * DV + d], p * dor[t]);
            }
        }
        __syncthreads();
    }
    if (active) {
#pragma unroll
        for (int t = 0; t < ATT_PER_LANE; ++t) {
            int d = lane + 32 * t;
            if (d < D) dq[(bh * Lq + row) * D + d] = dqr[t];
        }
    }
}
