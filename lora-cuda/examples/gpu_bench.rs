//! GPU kernel benchmarks (run by `scripts/gpu-check.sh` on a machine with a GPU): SGEMM and bf16 GEMM at
//! 4096³, fused AdamW and an elementwise kernel against the measured device-to-device copy bandwidth, and
//! flash attention at SD 1.x's first-level shape. Prints a markdown table. The PyTorch side of each
//! comparison (cuBLAS, SDPA) is timed by scripts/cuda_torch_bench.py in the same run.

use std::time::Instant;

use cudarc::driver::{LaunchConfig, PushKernelArg};
use lora_cuda::cuda::CudaBackend;

fn time<F: FnMut()>(b: &CudaBackend, iters: usize, mut f: F) -> f64 {
    f();
    b.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    b.synchronize().unwrap();
    t.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let b = match CudaBackend::get(0) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIPPED gpu_bench: {e}");
            return;
        }
    };
    let s = b.stream().clone();
    println!("| kernel | shape | time | rate |");
    println!("|---|---|---|---|");
    // GEMMs at 4096^3.
    let n = 4096usize;
    for (kernel, file, threads, elem) in [
        ("sgemm", "sgemm.cu", 256u32, 4usize),
        ("hgemm_bf16", "hgemm.cu", 128, 2),
    ] {
        let f = b.function(file, kernel).unwrap();
        let a = s.alloc_zeros::<u8>(n * n * elem).unwrap();
        let bm = s.alloc_zeros::<u8>(n * n * elem).unwrap();
        let mut c = s.alloc_zeros::<u8>(n * n * elem).unwrap();
        let (ni, z64, z32, one, zero) = (n as i32, 0i64, 0i32, 1.0f32, 0.0f32);
        let cfg = LaunchConfig {
            grid_dim: ((n / 64) as u32, (n / 64) as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let t = time(&b, 10, || {
            let mut lb = s.launch_builder(&f);
            lb.arg(&a)
                .arg(&bm)
                .arg(&mut c)
                .arg(&ni)
                .arg(&ni)
                .arg(&ni)
                .arg(&ni)
                .arg(&ni)
                .arg(&ni)
                .arg(&z64)
                .arg(&z64)
                .arg(&z64)
                .arg(&z32)
                .arg(&z32)
                .arg(&one)
                .arg(&zero);
            // SAFETY: three n x n buffers of the kernel's element type.
            unsafe { lb.launch(cfg) }.unwrap();
        });
        println!(
            "| {kernel} | 4096³ | {:.3} ms | {:.1} TFLOP/s |",
            t * 1e3,
            2.0 * (n as f64).powi(3) / t / 1e12
        );
    }
    // Bandwidth: device-to-device copy, AdamW, axpby on 64 Mi floats.
    let len = 64usize << 20;
    let src = s.alloc_zeros::<f32>(len).unwrap();
    let mut dst = s.alloc_zeros::<f32>(len).unwrap();
    let t = time(&b, 20, || s.memcpy_dtod(&src, &mut dst).unwrap());
    let copy_bw = 2.0 * 4.0 * len as f64 / t / 1e9;
    println!(
        "| memcpy_dtod | 64 Mi f32 | {:.3} ms | {copy_bw:.0} GB/s |",
        t * 1e3
    );
    let f = b.function("elementwise.cu", "adamw_f32").unwrap();
    let mut p = s.alloc_zeros::<f32>(len).unwrap();
    let g = s.alloc_zeros::<f32>(len).unwrap();
    let mut m = s.alloc_zeros::<f32>(len).unwrap();
    let mut v = s.alloc_zeros::<f32>(len).unwrap();
    let nn = len as i64;
    let (lr, b1, b2, eps, wd, ss, bc) = (
        1e-4f32, 0.9f32, 0.999f32, 1e-8f32, 0.01f32, 1e-3f32, 0.03f32,
    );
    let cfg = LaunchConfig {
        grid_dim: ((len / 4).div_ceil(256).min(65535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let t = time(&b, 20, || {
        let mut lb = s.launch_builder(&f);
        lb.arg(&mut p)
            .arg(&g)
            .arg(&mut m)
            .arg(&mut v)
            .arg(&nn)
            .arg(&lr)
            .arg(&b1)
            .arg(&b2)
            .arg(&eps)
            .arg(&wd)
            .arg(&ss)
            .arg(&bc);
        // SAFETY: four buffers of len floats.
        unsafe { lb.launch(cfg) }.unwrap();
    });
    let bw = 7.0 * 4.0 * len as f64 / t / 1e9;
    println!(
        "| adamw_f32 | 64 Mi params | {:.3} ms | {bw:.0} GB/s ({:.0}% of copy) |",
        t * 1e3,
        100.0 * bw / copy_bw
    );
    let f = b.function("elementwise.cu", "axpby").unwrap();
    let mut out = s.alloc_zeros::<f32>(len).unwrap();
    let (al, be) = (0.5f32, 2.0f32);
    let t = time(&b, 20, || {
        let mut lb = s.launch_builder(&f);
        lb.arg(&src)
            .arg(&dst)
            .arg(&mut out)
            .arg(&nn)
            .arg(&al)
            .arg(&be);
        // SAFETY: three buffers of len floats.
        unsafe { lb.launch(cfg) }.unwrap();
    });
    let bw = 3.0 * 4.0 * len as f64 / t / 1e9;
    println!(
        "| axpby | 64 Mi f32 | {:.3} ms | {bw:.0} GB/s ({:.0}% of copy) |",
        t * 1e3,
        100.0 * bw / copy_bw
    );
    // Attention: batch 2 x 8 heads, 4096 tokens, head width 40 (SD 1.x at 512 px, first level).
    let (bh, l, d) = (16usize, 4096usize, 40usize);
    let f = b.function("attention.cu", "attn_fwd").unwrap();
    let q = s.alloc_zeros::<f32>(bh * l * d).unwrap();
    let mut o = s.alloc_zeros::<f32>(bh * l * d).unwrap();
    let mut lse = s.alloc_zeros::<f32>(bh * l).unwrap();
    let (li, di, sc, ca) = (l as i32, d as i32, 1.0f32 / (d as f32).sqrt(), 0i32);
    let cfg = LaunchConfig {
        grid_dim: ((l / 4) as u32, bh as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let t = time(&b, 5, || {
        let mut lb = s.launch_builder(&f);
        lb.arg(&q)
            .arg(&q)
            .arg(&q)
            .arg(&mut o)
            .arg(&mut lse)
            .arg(&li)
            .arg(&li)
            .arg(&di)
            .arg(&di)
            .arg(&sc)
            .arg(&ca);
        // SAFETY: q/k/v share one buffer of bh*l*d floats; o and lse sized to match.
        unsafe { lb.launch(cfg) }.unwrap();
    });
    println!(
        "| attn_fwd | 2x8 heads, L 4096, D 40 | {:.3} ms | {:.2} TFLOP/s |",
        t * 1e3,
        4.0 * (bh * l * l * d) as f64 / t / 1e12
    );
    println!("device: {}", b.name().unwrap_or_default());
}
