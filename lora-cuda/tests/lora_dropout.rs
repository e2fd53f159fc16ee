//! The LoRA adapter's dropouts and multiplier behave as sd-scripts' lora.py (spec §1.1).

use lora_cuda::{DType, Graph, LoraAdapter, LoraConfig, LoraContext, ParamStore, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn setup(cfg: LoraConfig) -> (ParamStore, LoraAdapter, lora_cuda::ParamId, Tensor) {
    let mut rng = StdRng::seed_from_u64(11);
    let mut store = ParamStore::new();
    let w = store
        .add("w", Tensor::randn(&[5, 8], DType::F32, &mut rng), false)
        .unwrap();
    let ad = LoraAdapter::from_tensors(
        &mut store,
        "l",
        Tensor::randn(&[cfg.rank, 8], DType::F32, &mut rng),
        Tensor::randn(&[5, cfg.rank], DType::F32, &mut rng),
        lora_cuda::LoraKind::Linear,
        cfg,
    )
    .unwrap();
    let x = Tensor::randn(&[4, 3, 8], DType::F32, &mut rng);
    (store, ad, w, x)
}

fn run(
    store: &ParamStore,
    ad: &LoraAdapter,
    w: lora_cuda::ParamId,
    x: &Tensor,
    ctx: &mut LoraContext,
) -> Vec<f32> {
    let mut g = Graph::new();
    let xv = g.input(x.clone());
    let wv = g.param(store, w).unwrap();
    let y = ad.linear(&mut g, store, xv, wv, None, ctx).unwrap();
    g.value(y).unwrap().to_vec_f32().unwrap()
}

#[test]
fn eval_output_is_base_plus_scaled_delta_and_multiplier_is_linear() {
    let cfg = LoraConfig::new(4, 2.0);
    let (store, ad, w, x) = setup(cfg);
    let base = run(&store, &ad, w, &x, &mut LoraContext::eval(0.0));
    let y1 = run(&store, &ad, w, &x, &mut LoraContext::eval(1.0));
    let yneg = run(&store, &ad, w, &x, &mut LoraContext::eval(-2.0));
    // Merged weight check: x·(W + m·s·U·D)ᵀ.
    let delta = ad.delta_weight(&store, 1.0).unwrap();
    let merged = lora_cuda::ops::binary(
        store.value(w).unwrap(),
        &delta,
        lora_cuda::ops::BinaryOp::Add,
    )
    .unwrap();
    let ym = lora_cuda::ops::linear(&x, &merged, None)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    for i in 0..y1.len() {
        assert!((y1[i] - ym[i]).abs() < 1e-4, "merged vs adapter at {i}");
        // y(m) − base is linear in m: y(−2) − base = −2·(y(1) − base).
        assert!(((yneg[i] - base[i]) + 2.0 * (y1[i] - base[i])).abs() < 1e-4);
    }
    assert!(y1.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn module_dropout_skips_the_adapter_at_the_given_rate() {
    let mut cfg = LoraConfig::new(2, 1.0);
    cfg.module_dropout = Some(0.3);
    let (store, ad, w, x) = setup(cfg);
    let base = run(&store, &ad, w, &x, &mut LoraContext::eval(0.0));
    let mut ctx = LoraContext::training(5);
    let trials = 400;
    let mut skipped = 0;
    for _ in 0..trials {
        let y = run(&store, &ad, w, &x, &mut ctx);
        if y == base {
            skipped += 1;
        }
    }
    let rate = skipped as f64 / trials as f64;
    assert!((rate - 0.3).abs() < 0.07, "skip rate {rate}");
    // Not in training: never skipped.
    let y = run(&store, &ad, w, &x, &mut LoraContext::eval(1.0));
    assert_ne!(y, base);
}

#[test]
fn rank_dropout_masks_whole_ranks_per_sample_and_rescales() {
    let mut cfg = LoraConfig::new(3, 3.0);
    cfg.rank_dropout = Some(0.5);
    let (store, ad, w, x) = setup(cfg);
    let base = run(&store, &ad, w, &x, &mut LoraContext::eval(0.0));
    // Each sample's LoRA contribution must be (1/(1-p))·Σ over a subset of ranks of the per-rank terms.
    let mut ctx = LoraContext::training(9);
    let y = run(&store, &ad, w, &x, &mut ctx);
    let d = store.value(ad.down).unwrap().to_vec_f32().unwrap();
    let u = store.value(ad.up).unwrap().to_vec_f32().unwrap();
    let xv = x.to_vec_f32().unwrap();
    let (b, l, inn, out, r) = (4, 3, 8, 5, 3);
    for s in 0..b {
        let mut found = false;
        for subset in 0..(1u32 << r) {
            let mut ok = true;
            for t in 0..l {
                for o in 0..out {
                    let mut acc = 0.0f32;
                    for k in 0..r {
                        if subset & (1 << k) == 0 {
                            continue;
                        }
                        let lx: f32 = (0..inn)
                            .map(|i| d[k * inn + i] * xv[(s * l + t) * inn + i])
                            .sum();
                        acc += u[o * r + k] * lx;
                    }
                    let expect = base[(s * l + t) * out + o] + acc * 1.0 * 2.0; // scale 3/3 / (1-0.5)
                    if (y[(s * l + t) * out + o] - expect).abs() > 1e-4 {
                        ok = false;
                    }
                }
            }
            if ok {
                found = true;
                break;
            }
        }
        assert!(found, "sample {s}: output is not a rank-subset combination");
    }
}

#[test]
fn dropout_zeroes_about_p_of_the_down_activations() {
    let mut cfg = LoraConfig::new(2, 1.0);
    cfg.dropout = Some(0.25);
    let mut rng = StdRng::seed_from_u64(1);
    let m = lora_cuda::ops::dropout_mask(&[10000], 0.25, DType::F32, &mut rng)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
    assert!((zeros - 0.25).abs() < 0.02, "zero fraction {zeros}");
    assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // And the adapter with dropout still produces finite, different outputs per call.
    let (store, ad, w, x) = setup(cfg);
    let mut ctx = LoraContext::training(3);
    let a = run(&store, &ad, w, &x, &mut ctx);
    let b = run(&store, &ad, w, &x, &mut ctx);
    assert_ne!(a, b);
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn bad_dropout_probabilities_are_errors() {
    let mut cfg = LoraConfig::new(2, 1.0);
    cfg.rank_dropout = Some(1.5);
    let mut store = ParamStore::new();
    let mut rng = StdRng::seed_from_u64(0);
    assert!(LoraAdapter::new_linear(&mut store, "x", 4, 4, cfg, &mut rng).is_err());
    assert!(
        LoraAdapter::new_linear(&mut store, "y", 4, 4, LoraConfig::new(0, 1.0), &mut rng).is_err()
    );
}
