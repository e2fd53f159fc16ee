// Tiled single-precision GEMM: C = alpha * op(A) * op(B) + beta * C, row-major, batched.
//
// Launch shape: block 256 threads = 16x16; each block computes a 64x64 tile of C and each thread a 4x4
// register tile (rows ty+16i, cols tx+16j: consecutive threads read consecutive shared-memory words, so
// the inner loop is free of bank conflicts). Grid (ceil(N/64), ceil(M/64), batch). The K loop walks
// 16-wide slabs: A and B slabs are staged in shared memory (As stored k-major so both operands are read
// along k with stride-1 addresses), double the arithmetic intensity of a 32x32 tile and register blocking
// gives 16 FMAs per 8 shared loads. When the operands are not transposed and all leading dimensions are
// multiples of 4, slabs are loaded with float4 (one 16-byte load per thread per operand per slab).
#include "common.cuh"

#define BM 64
#define BN 64
#define BK 16

extern "C" __global__ void __launch_bounds__(256) sgemm(
    const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N, int K, int lda,
    int ldb, int ldc, long long strideA, long long strideB, long long strideC, int transA, int transB, float alpha,
    float beta) {
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    A += blockIdx.z * strideA;
    B += blockIdx.z * strideB;
    C += blockIdx.z * strideC;
    const bool vec = !transA && !transB && (lda % 4 == 0) && (ldb % 4 == 0) && (K % 4 == 0) && (N % 4 == 0) &&
                     ((reinterpret_cast<unsigned long long>(A) & 15) == 0) &&
                     ((reinterpret_cast<unsigned long long>(B) & 15) == 0);
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += BK) {
        if (vec) {
            // A slab: 64 rows x 16 k = 256 float4, one per thread.
            int r = tid / 4, kq = (tid % 4) * 4;
            int gr = row0 + r, gk = k0 + kq;
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
            if (gr < M && gk < K) a = *reinterpret_cast<const float4*>(&A[(long long)gr * lda + gk]);
            As[kq + 0][r] = a.x; As[kq + 1][r] = a.y; As[kq + 2][r] = a.z; As[kq + 3][r] = a.w;
            // B slab: 16 k x 64 cols = 256 float4.
            int kr = tid / 16, cq = (tid % 16) * 4;
            int gk2 = k0 + kr, gc = col0 + cq;
            float4 b = make_float4(0.f, 0.f, 0.f, 0.f);
            if (gk2 < K && gc < N) b = *reinterpret_cast<const float4*>(&B[(long long)gk2 * ldb + gc]);
            Bs[kr][cq + 0] = b.x; Bs[kr][cq + 1] = b.y; Bs[kr][cq + 2] = b.z; Bs[kr][cq + 3] = b.w;
        } else {
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                int e = tid + l * 256;  // 0..1023 over the 64x16 slab
                int r = e / BK, kk = e % BK;
                int gr = row0 + r, gk = k0 + kk;
                float a = 0.0f;
                if (gr < M && gk < K) a = transA ? A[(long long)gk * lda + gr] : A[(long long)gr * lda + gk];
                As[kk][r] = a;
                int kr = e / BN, c = e % BN;
                int gk2 = k0 + kr, gc = col0 + c;
                float b = 0.0f;
                if (gk2 < K && gc < N) b = transB ? B[(long long)gc * ldb + gk2] : B[(long long)gk2 * ldb + gc];
                Bs[kr][c] = b;
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int r = row0 + ty + 16 * i;
        if (r >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int c = col0 + tx + 16 * j;
            if (c >= N) continue;
            float* dst = &C[(long long)r * ldc + c];
            *dst = alpha * acc[i][j] + (beta == 0.0f ? 0.0f : beta * *dst);
        }
    }
}
