// Convolution as im2col + GEMM (the GEMM is sgemm.cu / hgemm.cu).
//
// Launch shape: one thread per element of the column matrix (im2col) or of the image (col2im), 256
// threads per block, grid-stride. col2im gathers: each input pixel sums the column entries that read
// it, so no atomics are needed and the result is deterministic.
#include "common.cuh"

// x: one image [C, H, W]; col: [C*KH*KW, HO*WO].
extern "C" __global__ void im2col_f32(const float* __restrict__ x, float* __restrict__ col, int C, int H, int W, int KH,
                                      int KW, int stride, int pad, int HO, int WO) {
    long long n = (long long)C * KH * KW * HO * WO;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int ox = i % WO;
        int oy = (i / WO) % HO;
        long long row = i / ((long long)HO * WO);
        int kx = row % KW, ky = (row / KW) % KH, c = row / (KW * KH);
        int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
        col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((long long)c * H + iy) * W + ix] : 0.0f;
    }
}

// dx: one image [C, H, W] = sum of the column entries that read each pixel.
extern "C" __global__ void col2im_f32(const float* __restrict__ col, float* __restrict__ dx, int C, int H, int W, int KH,
                                      int KW, int stride, int pad, int HO, int WO) {
    long long n = (long long)C * H * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int ix = i % W, iy = (i / W) % H, c = i / ((long long)W * H);
        float acc = 0.0f;
        for (int ky = 0; ky < KH; ++ky) {
            int ty = iy + pad - ky;
            if (ty < 0 || ty % stride != 0) continue;
            int oy = ty / stride;
            if (oy >= HO) continue;
            for (int kx = 0; kx < KW; ++kx) {
                int tx = ix + pad - kx;
                if (tx < 0 || tx % stride != 0) continue;
                int ox = tx / stride;
                if (ox >= WO) continue;
                long long row = ((long long)c * KH + ky) * KW + kx;
                acc += col[row * HO * WO + (long long)oy * WO + ox];
            }
        }
        dx[i] = acc;
    }
}

// y[n, o, :] += bias[o] : one thread per element.
extern "C" __global__ void add_channel_bias(float* __restrict__ y, const float* __restrict__ bias, long long n, int O,
                                            long long hw) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] += bias[(i / hw) % O];
}
