//! The ops of `lora_cuda::ops` on CUDA tensors against the CPU backend, and a LoRA training step on both
//! devices. Runs where a GPU exists; elsewhere each test says plainly that it was skipped.

use lora_cuda::ops::{self, Activation, BinaryOp, Conv2dCfg};
use lora_cuda::{DType, Device, Graph, LoraAdapter, LoraConfig, LoraContext, ParamStore, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

mod cuda_or_skip;
use cuda_or_skip::cuda_or_skip as gpu;

fn close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f32) {
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
    assert_eq!(gpu.dtype(), cpu.dtype(), "{what}: dtype");
    let (g, c) = (gpu.to_vec_f32().unwrap(), cpu.to_vec_f32().unwrap());
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: element {i}: gpu {a} vs cpu {b}"
        );
    }
}

fn r(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &mut StdRng::seed_from_u64(seed))
}

#[test]
fn parity_gpu_ops_forward_backward() {
    let Some(dev) = gpu("parity_gpu_ops_forward_backward") else {
        return;
    };
    let up = |t: &Tensor| t.to_device(&dev).unwrap();
    let (a, b) = (r(&[2, 37, 45], 1), r(&[2, 45, 29], 2));
    close(
        "matmul",
        &ops::matmul(&up(&a), &up(&b), false, false).unwrap(),
        &ops::matmul(&a, &b, false, false).unwrap(),
        1e-4,
    );
    let bt = r(&[29, 45], 3);
    close(
        "matmul shared tb",
        &ops::matmul(&up(&a), &up(&bt), false, true).unwrap(),
        &ops::matmul(&a, &bt, false, true).unwrap(),
        1e-4,
    );
    let (a16, b16) = (
        a.to_dtype(DType::BF16).unwrap(),
        b.to_dtype(DType::BF16).unwrap(),
    );
    close(
        "matmul bf16",
        &ops::matmul(&up(&a16), &up(&b16), false, false).unwrap(),
        &ops::matmul(&a16, &b16, false, false).unwrap(),
        2e-2,
    );
    let x = r(&[2, 3, 9, 7], 4);
    let w = r(&[5, 3, 3, 3], 5);
    let bias = r(&[5], 6);
    let cfg = Conv2dCfg {
        stride: 2,
        padding: 1,
    };
    close(
        "conv2d",
        &ops::conv2d(&up(&x), &up(&w), Some(&up(&bias)), cfg).unwrap(),
        &ops::conv2d(&x, &w, Some(&bias), cfg).unwrap(),
        1e-4,
    );
    let w1 = r(&[4, 3, 1, 1], 7);
    close(
        "conv2d 1x1",
        &ops::conv2d(&up(&x), &up(&w1), None, Conv2dCfg::default()).unwrap(),
        &ops::conv2d(&x, &w1, None, Conv2dCfg::default()).unwrap(),
        1e-4,
    );
    for act in [Activation::Silu, Activation::Gelu, Activation::QuickGelu] {
        close(
            "activation",
            &ops::activation(&up(&x), act).unwrap(),
            &ops::activation(&x, act).unwrap(),
            1e-4,
        );
        close(
            "activation bwd",
            &ops::activation_backward(&up(&x), &up(&x), act).unwrap(),
            &ops::activation_backward(&x, &x, act).unwrap(),
            1e-4,
        );
    }
    let col = r(&[3, 1, 1], 8);
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul] {
        close(
            "binary bcast",
            &ops::binary(&up(&x), &up(&col), op).unwrap(),
            &ops::binary(&x, &col, op).unwrap(),
            1e-5,
        );
        close(
            "binary same",
            &ops::binary(&up(&x), &up(&x), op).unwrap(),
            &ops::binary(&x, &x, op).unwrap(),
            1e-5,
        );
    }
    close(
        "sum",
        &ops::sum(&up(&x)).unwrap(),
        &ops::sum(&x).unwrap(),
        1e-4,
    );
    close(
        "mse",
        &ops::mse_loss(&up(&x), &up(&x.reshape(&[2, 3, 9, 7]).unwrap())).unwrap(),
        &ops::mse_loss(&x, &x).unwrap(),
        1e-5,
    );
    let s = r(&[3, 4, 33], 9);
    close(
        "softmax",
        &ops::softmax(&up(&s)).unwrap(),
        &ops::softmax(&s).unwrap(),
        1e-5,
    );
    let (gamma, beta) = (r(&[33], 10), r(&[33], 11));
    let (yg, sg) = ops::layer_norm(&up(&s), Some(&up(&gamma)), Some(&up(&beta)), 1e-5).unwrap();
    let (yc, sc) = ops::layer_norm(&s, Some(&gamma), Some(&beta), 1e-5).unwrap();
    close("layer_norm", &yg, &yc, 1e-4);
    let (dg, _, _) = ops::layer_norm_backward(&up(&s), Some(&up(&gamma)), &sg, &up(&s)).unwrap();
    let (dc, _, _) = ops::layer_norm_backward(&s, Some(&gamma), &sc, &s).unwrap();
    close("layer_norm bwd", &dg, &dc, 1e-4);
    let (g6, b6) = (r(&[6], 12), r(&[6], 13));
    let xg = r(&[2, 6, 5, 5], 14);
    let (yg, sg) = ops::group_norm(&up(&xg), 3, Some(&up(&g6)), Some(&up(&b6)), 1e-5).unwrap();
    let (yc, sc) = ops::group_norm(&xg, 3, Some(&g6), Some(&b6), 1e-5).unwrap();
    close("group_norm", &yg, &yc, 1e-4);
    let (dg, dgg, _) =
        ops::group_norm_backward(&up(&xg), 3, Some(&up(&g6)), &sg, &up(&xg)).unwrap();
    let (dc, dgc, _) = ops::group_norm_backward(&xg, 3, Some(&g6), &sc, &xg).unwrap();
    close("group_norm bwd dx", &dg, &dc, 1e-4);
    close("group_norm bwd dgamma", &dgg, &dgc, 1e-4);
    let (q, k, v) = (
        r(&[2, 2, 9, 40], 15),
        r(&[2, 2, 11, 40], 16),
        r(&[2, 2, 11, 40], 17),
    );
    close(
        "attention",
        &ops::attention(&up(&q), &up(&k), &up(&v), 0.15, false).unwrap(),
        &ops::attention(&q, &k, &v, 0.15, false).unwrap(),
        1e-4,
    );
    let d_o = r(&[2, 2, 9, 40], 18);
    let (gq, gk, gv) =
        ops::attention_backward(&up(&q), &up(&k), &up(&v), &up(&d_o), 0.15, false).unwrap();
    let (cq, ck, cv) = ops::attention_backward(&q, &k, &v, &d_o, 0.15, false).unwrap();
    close("attention dq", &gq, &cq, 1e-3);
    close("attention dk", &gk, &ck, 1e-3);
    close("attention dv", &gv, &cv, 1e-3);
}

#[test]
fn parity_gpu_lora_training_step_matches_cpu() {
    let Some(dev) = gpu("parity_gpu_lora_training_step_matches_cpu") else {
        return;
    };
    let run = |device: &Device| -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(1);
        let mut store = ParamStore::new();
        let w = store
            .add("w", Tensor::randn(&[16, 24], DType::F32, &mut rng), false)
            .unwrap();
        let ad = LoraAdapter::from_tensors(
            &mut store,
            "l",
            Tensor::randn(&[4, 24], DType::F32, &mut rng),
            Tensor::randn(&[16, 4], DType::F32, &mut rng),
            lora_cuda::LoraKind::Linear,
            LoraConfig::new(4, 2.0),
        )
        .unwrap();
        store.to_device(device).unwrap();
        let x = Tensor::randn(&[3, 5, 24], DType::F32, &mut rng)
            .to_device(device)
            .unwrap();
        let t = Tensor::randn(&[3, 5, 16], DType::F32, &mut rng)
            .to_device(device)
            .unwrap();
        let mut opt = lora_cuda::optim::AdamW::new(Default::default()).unwrap();
        for _ in 0..3 {
            let mut g = Graph::new();
            let (xv, tv, wv) = (
                g.input(x.clone()),
                g.input(t.clone()),
                g.param(&store, w).unwrap(),
            );
            let mut ctx = LoraContext::eval(-1.0);
            let y = ad.linear(&mut g, &store, xv, wv, None, &mut ctx).unwrap();
            let y = g.silu(y).unwrap();
            let l = g.mse_loss(y, tv).unwrap();
            let mut grads = g.backward(l).unwrap();
            lora_cuda::optim::clip_grad_norm(&mut grads, 1.0).unwrap();
            opt.step(&mut store, &grads, 1e-2).unwrap();
        }
        let mut out = store.value(ad.down).unwrap().to_vec_f32().unwrap();
        out.extend(store.value(ad.up).unwrap().to_vec_f32().unwrap());
        out
    };
    let (c, g) = (run(&Device::Cpu), run(&dev));
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        assert!(
            (a - b).abs() < 1e-4 * (1.0 + b.abs()),
            "parameter element {i}: gpu {a} vs cpu {b}"
        );
    }
}

#[test]
fn parity_gpu_layout_conv_backward_reductions() {
    let Some(dev) = gpu("parity_gpu_layout_conv_backward_reductions") else {
        return;
    };
    let up = |t: &Tensor| t.to_device(&dev).unwrap();
    let x = r(&[2, 3, 9, 7], 20);
    for (w, cfg) in [
        (
            r(&[5, 3, 3, 3], 21),
            Conv2dCfg {
                stride: 2,
                padding: 1,
            },
        ),
        (r(&[4, 3, 1, 1], 22), Conv2dCfg::default()),
    ] {
        let yc = ops::conv2d(&x, &w, None, cfg).unwrap();
        let dy = r(yc.shape(), 23);
        let (gx, gw, gb) =
            ops::conv2d_backward(&up(&x), &up(&w), &up(&dy), cfg, [true, true, true]).unwrap();
        let (cx, cw, cb) = ops::conv2d_backward(&x, &w, &dy, cfg, [true, true, true]).unwrap();
        close("conv2d_backward dx", &gx.unwrap(), &cx.unwrap(), 1e-4);
        close("conv2d_backward dw", &gw.unwrap(), &cw.unwrap(), 1e-4);
        close("conv2d_backward db", &gb.unwrap(), &cb.unwrap(), 1e-4);
    }
    close(
        "upsample",
        &ops::upsample_nearest2x(&up(&x)).unwrap(),
        &ops::upsample_nearest2x(&x).unwrap(),
        0.0,
    );
    let dy = r(&[2, 3, 18, 14], 24);
    close(
        "upsample bwd",
        &ops::upsample_nearest2x_backward(&up(&dy), x.shape()).unwrap(),
        &ops::upsample_nearest2x_backward(&dy, x.shape()).unwrap(),
        1e-6,
    );
    close(
        "permute",
        &ops::permute(&up(&x), &[0, 2, 1, 3]).unwrap(),
        &ops::permute(&x, &[0, 2, 1, 3]).unwrap(),
        0.0,
    );
    let x2 = r(&[2, 5, 9, 7], 25);
    close(
        "concat",
        &ops::concat(&[&up(&x), &up(&x2)], 1).unwrap(),
        &ops::concat(&[&x, &x2], 1).unwrap(),
        0.0,
    );
    let parts_g = ops::split(&up(&x2), 1, &[2, 3]).unwrap();
    let parts_c = ops::split(&x2, 1, &[2, 3]).unwrap();
    close("split 0", &parts_g[0], &parts_c[0], 0.0);
    close("split 1", &parts_g[1], &parts_c[1], 0.0);
    let h = r(&[3, 4, 16], 26);
    close(
        "geglu",
        &ops::geglu(&up(&h)).unwrap(),
        &ops::geglu(&h).unwrap(),
        1e-5,
    );
    let dh = r(&[3, 4, 8], 27);
    close(
        "geglu bwd",
        &ops::geglu_backward(&up(&h), &up(&dh)).unwrap(),
        &ops::geglu_backward(&h, &dh).unwrap(),
        1e-5,
    );
    close(
        "sum_to",
        &ops::sum_to(&up(&h), &[16]).unwrap(),
        &ops::sum_to(&h, &[16]).unwrap(),
        1e-5,
    );
    close(
        "mean_over",
        &ops::mean_over(&up(&h), 1).unwrap(),
        &ops::mean_over(&h, 1).unwrap(),
        1e-5,
    );
}
