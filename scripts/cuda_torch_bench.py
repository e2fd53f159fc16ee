#!/usr/bin/env python3
"""PyTorch yardsticks for scripts/gpu-check.sh: cuBLAS SGEMM / bf16 GEMM at 4096^3, device copy bandwidth,
torch's fused AdamW, and scaled_dot_product_attention at the shape gpu_bench uses. Prints markdown rows."""
import time
import torch


def t(f, iters):
    f()
    torch.cuda.synchronize()
    s = time.perf_counter()
    for _ in range(iters):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - s) / iters


n = 4096
torch.backends.cuda.matmul.allow_tf32 = False
for dt, name in ((torch.float32, "torch.matmul f32 (cuBLAS)"), (torch.bfloat16, "torch.matmul bf16 (cuBLAS)")):
    a = torch.randn(n, n, device="cuda", dtype=dt)
    b = torch.randn(n, n, device="cuda", dtype=dt)
    s = t(lambda: a @ b, 10)
    print(f"| {name} | 4096³ | {s*1e3:.3f} ms | {2*n**3/s/1e12:.1f} TFLOP/s |")
x = torch.empty(64 << 20, device="cuda")
y = torch.empty_like(x)
s = t(lambda: y.copy_(x), 20)
print(f"| torch copy_ | 64 Mi f32 | {s*1e3:.3f} ms | {2*4*x.numel()/s/1e9:.0f} GB/s |")
p = torch.nn.Parameter(torch.zeros(64 << 20, device="cuda"))
p.grad = torch.zeros_like(p)
opt = torch.optim.AdamW([p], lr=1e-4, fused=True)
s = t(opt.step, 20)
print(f"| torch AdamW fused | 64 Mi params | {s*1e3:.3f} ms | {7*4*p.numel()/s/1e9:.0f} GB/s |")
q = torch.randn(2, 8, 4096, 40, device="cuda")
s = t(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q), 5)
print(f"| torch SDPA f32 | 2x8 heads, L 4096, D 40 | {s*1e3:.3f} ms | {4*16*4096*4096*40/s/1e12:.2f} TFLOP/s |")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
