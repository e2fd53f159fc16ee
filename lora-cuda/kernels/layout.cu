// Data movement: nearest 2x upsampling, axis permutation, and block copies for concat/split.
//
// Launch shape: one thread per output element (upsample forward, permute, copy) or per input element
// (upsample backward, which gathers its 4 sources: no atomics), 256 threads per block, grid-stride.
#include "common.cuh"

#define PERM_MAX 6

struct Perm {
    int nd;
    long long out_shape[PERM_MAX];
    long long in_stride[PERM_MAX];  // input stride of each output axis
};

extern "C" __global__ void upsample2x_fwd(const float* __restrict__ x, float* __restrict__ y, long long planes, int H, int W) {
    long long n = planes * 4 * H * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int ox = i % (2 * W);
        int oy = (i / (2 * W)) % (2 * H);
        long long p = i / (4LL * H * W);
        y[i] = x[(p * H + oy / 2) * W + ox / 2];
    }
}

extern "C" __global__ void upsample2x_bwd(const float* __restrict__ dy, float* __restrict__ dx, long long planes, int H, int W) {
    long long n = planes * H * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int ix = i % W, iy = (i / W) % H;
        long long p = i / ((long long)H * W);
        const float* base = dy + p * 4 * H * W;
        long long r0 = (2LL * iy) * 2 * W + 2 * ix, r1 = (2LL * iy + 1) * 2 * W + 2 * ix;
        dx[i] = base[r0] + base[r0 + 1] + base[r1] + base[r1 + 1];
    }
}

extern "C" __global__ void permute_f32(const float* __restrict__ x, float* __restrict__ y, long long n, Perm p) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i, off = 0;
        for (int ax = p.nd - 1; ax >= 0; --ax) {
            off += (r % p.out_shape[ax]) * p.in_stride[ax];
            r /= p.out_shape[ax];
        }
        y[i] = x[off];
    }
}

// Copies src [outer, inner_src] into dst [outer, inner_dst] at column offset `off` (concat), or the
// reverse with `to_dst = 0` (split: dst region -> src).
extern "C" __global__ void copy_block(float* dst, float* src, long long outer, long long inner_src, long long inner_dst,
                                      long long off, int to_dst) {
    long long n = outer * inner_src;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long o = i / inner_src, j = i % inner_src;
        if (to_dst) dst[o * inner_dst + off + j] = src[i];
        else src[i] = dst[o * inner_dst + off + j];
    }
}
