// Half-precision GEMM (bf16 or f16 inputs and output, f32 accumulation) on tensor cores:
// C = alpha * op(A) * op(B) + beta * C, row-major, batched.
//
// Launch shape: 128 threads = 4 warps per block, block tile 64x64, K slabs of 16; warp w owns the
// 32x32 sub-tile (w/2, w%2) as 2x4 mma.sync.m16n8k16 tiles (32 f32 accumulators per thread). Grid
// (ceil(N/64), ceil(M/64), batch). Slabs are staged in shared memory as 16-bit values with 8 elements of
// padding per row so fragment reads of consecutive lanes fall in different banks.
//
// GPU-only code: the mma.sync fragment math sits behind the single `#if HGEMM_USE_MMA` below. Its scalar
// twin computes exactly the accumulator elements each lane owns in the mma layout, so loading, indexing
// and the epilogue are shared and checked by the CPU emulation; only the fragment multiply is not.
#include "common.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
#define HGEMM_USE_MMA 1
#else
#define HGEMM_USE_MMA 0
#endif

#define HBM 64
#define HBN 64
#define HBK 16
#define HPAD 8

__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

template <typename T> __device__ __forceinline__ unsigned int pack2(T lo, T hi) {
    unsigned short l = *reinterpret_cast<const unsigned short*>(&lo);
    unsigned short h = *reinterpret_cast<const unsigned short*>(&hi);
    return (unsigned int)l | ((unsigned int)h << 16);
}

template <typename T> __device__ __forceinline__ void mma_16816(float* d, const unsigned int* a, const unsigned int* b);

#if HGEMM_USE_MMA
template <> __device__ __forceinline__ void mma_16816<__nv_bfloat16>(float* d, const unsigned int* a, const unsigned int* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma_16816<__half>(float* d, const unsigned int* a, const unsigned int* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

template <typename T>
__device__ __forceinline__ void hgemm_body(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N,
                                           int K, int lda, int ldb, int ldc, long long sA, long long sB, long long sC,
                                           int transA, int transB, float alpha, float beta) {
    __shared__ T As[HBM][HBK + HPAD];
    __shared__ T Bs[HBK][HBN + HPAD];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const int g = lane >> 2, c2 = (lane & 3) * 2;
    const int row0 = blockIdx.y * HBM, col0 = blockIdx.x * HBN;
    A += blockIdx.z * sA;
    B += blockIdx.z * sB;
    C += blockIdx.z * sC;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += HBK) {
#pragma unroll
        for (int l = 0; l < 8; ++l) {
            int e = tid + l * 128;  // 0..1023
            int r = e / HBK, kk = e % HBK;
            int gr = row0 + r, gk = k0 + kk;
            T a = from_f<T>(0.0f);
            if (gr < M && gk < K) a = transA ? A[(long long)gk * lda + gr] : A[(long long)gr * lda + gk];
            As[r][kk] = a;
            int kr = e / HBN, c = e % HBN;
            int gk2 = k0 + kr, gc = col0 + c;
            T b = from_f<T>(0.0f);
            if (gk2 < K && gc < N) b = transB ? B[(long long)gc * ldb + gk2] : B[(long long)gk2 * ldb + gc];
            Bs[kr][c] = b;
        }
        __syncthreads();
#if HGEMM_USE_MMA
        unsigned int af[2][4], bfr[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            int r = wm * 32 + mi * 16 + g;
            af[mi][0] = pack2(As[r][c2], As[r][c2 + 1]);
            af[mi][1] = pack2(As[r + 8][c2], As[r + 8][c2 + 1]);
            af[mi][2] = pack2(As[r][c2 + 8], As[r][c2 + 9]);
            af[mi][3] = pack2(As[r + 8][c2 + 8], As[r + 8][c2 + 9]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            int c = wn * 32 + ni * 8 + g;
            bfr[ni][0] = pack2(Bs[c2][c], Bs[c2 + 1][c]);
            bfr[ni][1] = pack2(Bs[c2 + 8][c], Bs[c2 + 9][c]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bfr[ni]);
#else
        // Scalar twin: the same accumulator elements, computed one by one.
        for (int mi = 0; mi < 2; ++mi)
            for (int ni = 0; ni < 4; ++ni)
                for (int r = 0; r < 4; ++r) {
                    int row = wm * 32 + mi * 16 + g + (r >= 2 ? 8 : 0);
                    int col = wn * 32 + ni * 8 + c2 + (r & 1);
                    float s = 0.0f;
                    for (int kk = 0; kk < HBK; ++kk) s += to_f(As[row][kk]) * to_f(Bs[kk][col]);
                    acc[mi][ni][r] += s;
                }
#endif
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                int row = row0 + wm * 32 + mi * 16 + g + (r >= 2 ? 8 : 0);
                int col = col0 + wn * 32 + ni * 8 + c2 + (r & 1);
                if (row < M && col < N) {
                    T* dst = &C[(long long)row * ldc + col];
                    float prev = beta == 0.0f ? 0.0f : beta * to_f(*dst);
                    *dst = from_f<T>(alpha * acc[mi][ni][r] + prev);
                }
            }
}

extern "C" __global__ void __launch_bounds__(128) hgemm_bf16(
    const __nv_bfloat16* A, const __nv_bfloat16* B, __nv_bfloat16* C, int M, int N, int K, int lda, int ldb, int ldc,
    long long sA, long long sB, long long sC, int transA, int transB, float alpha, float beta) {
    hgemm_body<__nv_bfloat16>(A, B, C, M, N, K, lda, ldb, ldc, sA, sB, sC, transA, transB, alpha, beta);
}

extern "C" __global__ void __launch_bounds__(128) hgemm_f16(
    const __half* A, const __half* B, __half* C, int M, int N, int K, int lda, int ldb, int ldc, long long sA,
    long long sB, long long sC, int transA, int transB, float alpha, float beta) {
    hgemm_body<__half>(A, B, C, M, N, K, lda, ldb, ldc, sA, sB, sC, transA, transB, alpha, beta);
}
