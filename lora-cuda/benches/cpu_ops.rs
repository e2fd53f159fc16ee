//! CPU backend at the demo model's shapes against OpenBLAS `sgemm` called directly, and the LoRA adapter's
//! forward+backward. `cargo bench -p lora-cuda --bench cpu_ops`.
//!
//! Pairs to compare: `matmul/ours/*` vs `matmul/sgemm_direct/*` (target ≥ 90%), `conv/ours/*` vs
//! `conv/sgemm_direct/*` (the same GEMM without the im2col unfold, so the ratio is the cost of the unfold
//! and the bias). The LoRA adapter figures stand alone here; for the comparison with PyTorch CPU in the same
//! run, in CPU time (what to compare on a loaded machine), use `scripts/cpu_torch_bench.py`, which runs
//! `examples/bench_cpu_ops.rs` (all these cases and more, at the demo model's shapes) next to PyTorch and prints
//! one table; figures in `docs/cpu-bench.md`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lora_cuda::ops::{self, Conv2dCfg};
use lora_cuda::{DType, Graph, LoraAdapter, LoraConfig, LoraContext, ParamStore, Real, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn rt(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &mut StdRng::seed_from_u64(seed))
}

fn bench_matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    // (m, n, k): attention projection at 16x16 tokens, feed-forward, and the 3x3 conv GEMMs of levels 1-3.
    for (m, n, k) in [
        (256, 128, 128),
        (256, 512, 128),
        (32, 4096, 288),
        (64, 1024, 576),
        (128, 256, 1152),
    ] {
        let id = format!("{m}x{n}x{k}");
        let (a, b) = (rt(&[m, k], 1), rt(&[k, n], 2));
        g.bench_with_input(BenchmarkId::new("ours", &id), &(), |bch, _| {
            bch.iter(|| ops::matmul(&a, &b, false, false).unwrap())
        });
        let (av, bv) = (a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap());
        let mut cv = vec![0.0f32; m * n];
        g.bench_with_input(BenchmarkId::new("sgemm_direct", &id), &(), |bch, _| {
            bch.iter(|| f32::gemm(false, false, m, n, k, 1.0, &av, k, &bv, n, 0.0, &mut cv, n))
        });
    }
    g.finish();
}

fn bench_conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    for (ch, hw) in [(32usize, 64usize), (64, 32), (128, 16)] {
        let id = format!("{ch}ch_{hw}px_3x3");
        let x = rt(&[1, ch, hw, hw], 3);
        let w = rt(&[ch, ch, 3, 3], 4);
        let b = rt(&[ch], 5);
        let cfg = Conv2dCfg {
            stride: 1,
            padding: 1,
        };
        g.bench_with_input(BenchmarkId::new("ours", &id), &(), |bch, _| {
            bch.iter(|| ops::conv2d(&x, &w, Some(&b), cfg).unwrap())
        });
        let (m, n, k) = (ch, hw * hw, ch * 9);
        let (av, bv) = (
            w.to_vec_f32().unwrap(),
            rt(&[k, n], 6).to_vec_f32().unwrap(),
        );
        let mut cv = vec![0.0f32; m * n];
        g.bench_with_input(BenchmarkId::new("sgemm_direct", &id), &(), |bch, _| {
            bch.iter(|| f32::gemm(false, false, m, n, k, 1.0, &av, k, &bv, n, 0.0, &mut cv, n))
        });
    }
    g.finish();
}

fn bench_lora(c: &mut Criterion) {
    let mut g = c.benchmark_group("lora_fwd_bwd");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300));
    let mut rng = StdRng::seed_from_u64(7);
    // Linear: attention projection 128 -> 128 on 2 x 256 tokens, rank 8.
    let mut store = ParamStore::new();
    let w = store
        .add("w", Tensor::randn(&[128, 128], DType::F32, &mut rng), false)
        .unwrap();
    let ad = LoraAdapter::new_linear(&mut store, "l", 128, 128, LoraConfig::new(8, 4.0), &mut rng)
        .unwrap();
    let x = Tensor::randn(&[2, 256, 128], DType::F32, &mut rng);
    g.bench_function("linear_128_tokens512_r8", |bch| {
        bch.iter(|| {
            let mut gr = Graph::new();
            let (xv, wv) = (gr.input(x.clone()), gr.param(&store, w).unwrap());
            let y = ad
                .linear(&mut gr, &store, xv, wv, None, &mut LoraContext::eval(1.0))
                .unwrap();
            let l = gr.sum(y).unwrap();
            gr.backward(l).unwrap()
        })
    });
    // Conv: 3x3 64 -> 64 at 32x32, rank 8.
    let wc = store
        .add(
            "wc",
            Tensor::randn(&[64, 64, 3, 3], DType::F32, &mut rng),
            false,
        )
        .unwrap();
    let cfg = Conv2dCfg {
        stride: 1,
        padding: 1,
    };
    let adc = LoraAdapter::new_conv(
        &mut store,
        "c",
        64,
        64,
        3,
        cfg,
        LoraConfig::new(8, 4.0),
        &mut rng,
    )
    .unwrap();
    let xc = Tensor::randn(&[1, 64, 32, 32], DType::F32, &mut rng);
    g.bench_function("conv3x3_64ch_32px_r8", |bch| {
        bch.iter(|| {
            let mut gr = Graph::new();
            let (xv, wv) = (gr.input(xc.clone()), gr.param(&store, wc).unwrap());
            let y = adc
                .conv2d(&mut gr, &store, xv, wv, None, &mut LoraContext::eval(1.0))
                .unwrap();
            let l = gr.sum(y).unwrap();
            gr.backward(l).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_matmul, bench_conv, bench_lora);
criterion_main!(benches);
