// Elementwise kernels: activations, arithmetic with broadcasting, casts, GEGLU, AdamW.
//
// Launch shape (all kernels here unless noted): 1-D grid-stride loops, 256 threads per block and
// min(ceil(n/256), 65535) blocks (n/4 for the float4 paths). 256 threads keep 8 warps per block resident
// for latency hiding on every architecture from sm_80 on; grid-stride loops make any n valid. These
// kernels are bandwidth bound, so the float4 paths (16-byte loads) matter more than anything else.
#include "common.cuh"

#define MAX_DIMS 6

struct Bcast {
    int nd;
    long long shape[MAX_DIMS];
    long long sa[MAX_DIMS];
    long long sb[MAX_DIMS];
};

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float act_f(int op, float x) {
    switch (op) {
        case 0: return x * sigmoidf_(x);                                   // SiLU
        case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));  // exact GELU
        default: return x * sigmoidf_(1.702f * x);                          // quick GELU
    }
}

__device__ __forceinline__ float act_df(int op, float x) {
    switch (op) {
        case 0: { float s = sigmoidf_(x); return s * (1.0f + x * (1.0f - s)); }
        case 1: {
            float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
            float pdf = expf(-0.5f * x * x) * 0.39894228040143268f;
            return cdf + x * pdf;
        }
        default: { float s = sigmoidf_(1.702f * x); return s + 1.702f * x * s * (1.0f - s); }
    }
}

// y = act(x); op: 0 SiLU, 1 GELU, 2 quick GELU.
extern "C" __global__ void act_fwd(const float* __restrict__ x, float* __restrict__ y, long long n, int op) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = act_f(op, x[i]);
}

// dx = dy * act'(x).
extern "C" __global__ void act_bwd(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
                                   long long n, int op) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dx[i] = dy[i] * act_df(op, x[i]);
}

__device__ __forceinline__ float bin(int op, float a, float b) {
    return op == 0 ? a + b : (op == 1 ? a - b : a * b);
}

// c = a op b for equal shapes, float4 path (n4 = n/4 vectors; the tail is handled by binary_bcast or
// the scalar loop below). op: 0 add, 1 sub, 2 mul.
extern "C" __global__ void binary_same(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                       long long n, int op) {
    long long n4 = n / 4;
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    float4* c4 = reinterpret_cast<float4*>(c);
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 x = a4[i], y = b4[i];
        c4[i] = make_float4(bin(op, x.x, y.x), bin(op, x.y, y.y), bin(op, x.z, y.z), bin(op, x.w, y.w));
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        c[i] = bin(op, a[i], b[i]);
}

// c = a op b with numpy broadcasting: out index decomposed over `bc.shape`, inputs read through their
// (zero on broadcast axes) strides.
extern "C" __global__ void binary_bcast(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                        long long n, int op, Bcast bc) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i, oa = 0, ob = 0;
        for (int ax = bc.nd - 1; ax >= 0; --ax) {
            long long idx = r % bc.shape[ax];
            r /= bc.shape[ax];
            oa += idx * bc.sa[ax];
            ob += idx * bc.sb[ax];
        }
        c[i] = bin(op, a[oa], b[ob]);
    }
}

// out = alpha*x + beta*y (scale: beta = 0 and y may alias x), float4 path plus tail.
extern "C" __global__ void axpby(const float* __restrict__ x, const float* y, float* out, long long n, float alpha, float beta) {
    long long n4 = n / 4;
    long long stride = (long long)gridDim.x * blockDim.x;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const float4* y4 = reinterpret_cast<const float4*>(y);
    float4* o4 = reinterpret_cast<float4*>(out);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 a = x4[i], b = y4[i];
        o4[i] = make_float4(alpha * a.x + beta * b.x, alpha * a.y + beta * b.y, alpha * a.z + beta * b.z,
                            alpha * a.w + beta * b.w);
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = alpha * x[i] + beta * y[i];
}

// Fills n floats with v.
extern "C" __global__ void fill_f32(float* out, long long n, float v) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = v;
}

// GEGLU: x [rows, 2d] -> y [rows, d], y = h * gelu(gate) with h = x[:, :d], gate = x[:, d:].
extern "C" __global__ void geglu_fwd(const float* __restrict__ x, float* __restrict__ y, long long rows, long long d) {
    long long n = rows * d;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / d, j = i % d;
        y[i] = x[r * 2 * d + j] * act_f(1, x[r * 2 * d + d + j]);
    }
}

extern "C" __global__ void geglu_bwd(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
                                     long long rows, long long d) {
    long long n = rows * d;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / d, j = i % d;
        float h = x[r * 2 * d + j], g = x[r * 2 * d + d + j], gy = dy[i];
        dx[r * 2 * d + j] = gy * act_f(1, g);
        dx[r * 2 * d + d + j] = gy * h * act_df(1, g);
    }
}

// Casts between f32 and the 16-bit types (round to nearest even, as the hardware conversions do).
extern "C" __global__ void f32_to_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}
extern "C" __global__ void bf16_to_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}
extern "C" __global__ void f32_to_f16(const float* __restrict__ x, __half* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = __float2half(x[i]);
}
extern "C" __global__ void f16_to_f32(const __half* __restrict__ x, float* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = __half2float(x[i]);
}

// Fused AdamW (torch semantics) on f32 master weights p with gradient g and moments m, v:
//   p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= step_size * m / (sqrt(v)/bc2_sqrt + eps)
// with step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t) computed on the host.
// float4 path: 4 streams read and 3 written per element, so 16-byte accesses are what reach bandwidth.
extern "C" __global__ void adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                     float* __restrict__ v, long long n, float lr, float b1, float b2, float eps,
                                     float wd, float step_size, float bc2_sqrt) {
    long long n4 = n / 4;
    long long stride = (long long)gridDim.x * blockDim.x;
    float decay = 1.0f - lr * wd;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 pp = reinterpret_cast<float4*>(p)[i];
        float4 gg = reinterpret_cast<const float4*>(g)[i];
        float4 mm = reinterpret_cast<float4*>(m)[i];
        float4 vv = reinterpret_cast<float4*>(v)[i];
        float* pa = &pp.x; const float* ga = &gg.x; float* ma = &mm.x; float* va = &vv.x;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            float w = pa[k] * decay;
            ma[k] = b1 * ma[k] + (1.0f - b1) * ga[k];
            va[k] = b2 * va[k] + (1.0f - b2) * ga[k] * ga[k];
            pa[k] = w - step_size * ma[k] / (sqrtf(va[k]) / bc2_sqrt + eps);
        }
        reinterpret_cast<float4*>(p)[i] = pp;
        reinterpret_cast<float4*>(m)[i] = mm;
        reinterpret_cast<float4*>(v)[i] = vv;
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) {
        float w = p[i] * decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        p[i] = w - step_size * m[i] / (sqrtf(v[i]) / bc2_sqrt + eps);
    }
}
