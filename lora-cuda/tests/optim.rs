//! AdamW, gradient clipping and the LR schedules against torch's / diffusers' formulas on hand-computed steps.

use lora_cuda::optim::{clip_grad_norm, global_grad_norm, AdamW, AdamWConfig};
use lora_cuda::schedule::{LrSchedule, ScheduleKind, Warmup};
use lora_cuda::{DType, Error, Grads, ParamStore, Tensor};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn adamw_first_step_by_hand() {
    // p = 1, g = 0.5, lr = 0.1, torch defaults. m = 0.05, v = 0.00025; m̂ = 0.5, v̂ = 0.25;
    // p ← 1·(1 − 0.1·0.01) − 0.1·0.5/(0.5 + 1e-8) = 0.999 − 0.0999999998 = 0.8990000002.
    let mut store = ParamStore::new();
    let id = store
        .add("p", Tensor::from_vec(vec![1.0], &[1]).unwrap(), true)
        .unwrap();
    let mut grads = Grads::default();
    grads.insert(id, Tensor::from_vec(vec![0.5], &[1]).unwrap());
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    opt.step(&mut store, &grads, 0.1).unwrap();
    let p = store.value(id).unwrap().to_vec_f64().unwrap()[0];
    assert!(close(p, 0.8990000002, 1e-7), "{p}");
}

#[test]
fn adamw_three_steps_match_torch_formula() {
    let cfg = AdamWConfig {
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
    };
    let gs = [[0.5, -1.0], [-0.3, 2.0], [0.2, 0.0]];
    let lrs = [0.1, 0.05, 0.01];
    let mut store = ParamStore::new();
    let id = store
        .add(
            "p",
            Tensor::from_vec_f64(vec![1.0, -2.0], &[2]).unwrap(),
            true,
        )
        .unwrap();
    let frozen = store
        .add("f", Tensor::from_vec_f64(vec![3.0], &[1]).unwrap(), false)
        .unwrap();
    let mut opt = AdamW::new(cfg).unwrap();
    // torch.optim.AdamW (single-tensor path), written out.
    let (mut p, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
    for (t, (g, lr)) in gs.iter().zip(lrs).enumerate() {
        let step = (t + 1) as f64;
        for i in 0..2 {
            p[i] *= 1.0 - lr * cfg.weight_decay;
            m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
            v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
            let bc1 = 1.0 - cfg.beta1.powf(step);
            let bc2 = 1.0 - cfg.beta2.powf(step);
            let denom = v[i].sqrt() / bc2.sqrt() + cfg.eps;
            p[i] -= lr / bc1 * m[i] / denom;
        }
        let mut grads = Grads::default();
        grads.insert(id, Tensor::from_vec_f64(g.to_vec(), &[2]).unwrap());
        grads.insert(frozen, Tensor::from_vec_f64(vec![1.0], &[1]).unwrap());
        opt.step(&mut store, &grads, lr).unwrap();
    }
    let got = store.value(id).unwrap().to_vec_f64().unwrap();
    for i in 0..2 {
        // Moments are kept in f32, so agreement is to f32 precision.
        assert!(close(got[i], p[i], 1e-6), "{i}: {} vs {}", got[i], p[i]);
    }
    assert_eq!(
        store.value(frozen).unwrap().to_vec_f64().unwrap(),
        vec![3.0],
        "frozen parameter changed"
    );
    assert_eq!(opt.state_len(), 1, "frozen parameter got optimizer state");
    assert_eq!(opt.step_count(id), 3);
}

#[test]
fn adamw_keeps_dtype_and_rejects_bad_config() {
    let mut store = ParamStore::new();
    let id = store
        .add(
            "p",
            Tensor::from_f32_as(&[1.0, 2.0], &[2], DType::BF16).unwrap(),
            true,
        )
        .unwrap();
    let mut grads = Grads::default();
    grads.insert(id, Tensor::from_vec(vec![1.0, 1.0], &[2]).unwrap());
    let mut opt = AdamW::new(AdamWConfig::default()).unwrap();
    opt.step(&mut store, &grads, 0.5).unwrap();
    assert_eq!(store.value(id).unwrap().dtype(), DType::BF16);
    assert!(AdamW::new(AdamWConfig {
        beta1: 1.0,
        ..Default::default()
    })
    .is_err());
    assert!(opt.step(&mut store, &grads, f64::NAN).is_err());
    // A gradient of the wrong shape is an error naming the parameter.
    grads.insert(id, Tensor::from_vec(vec![1.0], &[1]).unwrap());
    let e = opt.step(&mut store, &grads, 0.1).unwrap_err();
    assert!(e.to_string().contains('p'), "{e}");
}

#[test]
fn clip_grad_norm_like_torch() {
    let mut store = ParamStore::new();
    let a = store
        .add("a", Tensor::zeros(&[2], DType::F32), true)
        .unwrap();
    let b = store
        .add("b", Tensor::zeros(&[1], DType::F32), true)
        .unwrap();
    let mut grads = Grads::default();
    grads.insert(a, Tensor::from_vec(vec![3.0, 0.0], &[2]).unwrap());
    grads.insert(b, Tensor::from_vec(vec![4.0], &[1]).unwrap());
    assert!(close(global_grad_norm(&grads).unwrap(), 5.0, 1e-12));
    let total = clip_grad_norm(&mut grads, 1.0).unwrap();
    assert!(close(total, 5.0, 1e-12));
    let coef = 1.0 / (5.0 + 1e-6);
    assert!(close(
        grads.get(a).unwrap().to_vec_f64().unwrap()[0],
        3.0 * coef,
        1e-6
    ));
    assert!(close(
        grads.get(b).unwrap().to_vec_f64().unwrap()[0],
        4.0 * coef,
        1e-6
    ));
    // Below the limit nothing changes; 0 disables.
    let before = grads.get(a).unwrap().to_vec_f64().unwrap();
    clip_grad_norm(&mut grads, 10.0).unwrap();
    assert_eq!(grads.get(a).unwrap().to_vec_f64().unwrap(), before);
    let mut big = Grads::default();
    big.insert(a, Tensor::from_vec(vec![30.0, 40.0], &[2]).unwrap());
    assert!(close(clip_grad_norm(&mut big, 0.0).unwrap(), 50.0, 1e-9));
    assert_eq!(big.get(a).unwrap().to_vec_f64().unwrap(), vec![30.0, 40.0]);
    assert!(clip_grad_norm(&mut big, -1.0).is_err());
}

fn sched(kind: ScheduleKind, warmup: Warmup, total: u64, cycles: f64, power: f64) -> LrSchedule {
    LrSchedule::new(kind, 1.0, warmup, total, cycles, power).unwrap()
}

#[test]
fn constant_and_constant_with_warmup() {
    let c = sched(ScheduleKind::Constant, Warmup::Steps(0), 10, 1.0, 1.0);
    assert_eq!(c.lr_at(0), 1.0);
    assert_eq!(c.lr_at(100), 1.0);
    let w = sched(
        ScheduleKind::ConstantWithWarmup,
        Warmup::Steps(4),
        10,
        1.0,
        1.0,
    );
    assert_eq!(
        [w.lr_at(0), w.lr_at(1), w.lr_at(3), w.lr_at(4), w.lr_at(9)],
        [0.0, 0.25, 0.75, 1.0, 1.0]
    );
}

#[test]
fn constant_with_warmup_is_the_reference_error() {
    let e = LrSchedule::new(
        ScheduleKind::Constant,
        1e-4,
        Warmup::Steps(10),
        100,
        1.0,
        1.0,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Schedule(_)));
    assert_eq!(
        e.to_string(),
        "constant does not require `num_warmup_steps`. Set None or 0."
    );
    // A ratio that truncates to 0 steps is accepted, as int(0.001·100) = 0 in sd-scripts.
    assert!(LrSchedule::new(
        ScheduleKind::Constant,
        1e-4,
        Warmup::Ratio(0.001),
        100,
        1.0,
        1.0
    )
    .is_ok());
}

#[test]
fn linear_schedule_by_hand() {
    let s = sched(ScheduleKind::Linear, Warmup::Steps(2), 10, 1.0, 1.0);
    // warmup: 0, 1/2; then (10 − t)/8.
    let expect = [
        0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0,
    ];
    for (t, e) in expect.iter().enumerate() {
        assert!(close(s.factor(t as u64), *e, 1e-12), "step {t}");
    }
}

#[test]
fn cosine_schedule_by_hand() {
    let s = sched(ScheduleKind::Cosine, Warmup::Steps(2), 10, 1.0, 1.0);
    assert!(close(s.factor(1), 0.5, 1e-12));
    assert!(close(s.factor(2), 1.0, 1e-12));
    assert!(close(s.factor(6), 0.5, 1e-12)); // halfway: 0.5·(1 + cos(π/2))
    assert!(close(
        s.factor(4),
        0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()),
        1e-12
    ));
    assert!(close(s.factor(10), 0.0, 1e-12));
}

#[test]
fn cosine_with_restarts_by_hand() {
    let s = sched(
        ScheduleKind::CosineWithRestarts,
        Warmup::Steps(0),
        8,
        2.0,
        1.0,
    );
    // Two cycles of 4 steps: 1, 0.5·(1+cos(π/4)), 0.5, 0.5·(1+cos(3π/4)), then restart at 1.
    let c = |x: f64| 0.5 * (1.0 + (std::f64::consts::PI * x).cos());
    let expect = [1.0, c(0.25), 0.5, c(0.75), 1.0, c(0.25), 0.5, c(0.75), 0.0];
    for (t, e) in expect.iter().enumerate() {
        assert!(
            close(s.factor(t as u64), *e, 1e-12),
            "step {t}: {} vs {e}",
            s.factor(t as u64)
        );
    }
}

#[test]
fn polynomial_by_hand_and_ratio_warmup() {
    let base = 1e-3;
    let s = LrSchedule::new(
        ScheduleKind::Polynomial,
        base,
        Warmup::Ratio(0.2),
        10,
        1.0,
        2.0,
    )
    .unwrap();
    assert_eq!(s.warmup_steps(), 2); // int(0.2·10)
    assert!(close(s.lr_at(1), base * 0.5, 1e-15));
    // step 6: remaining 1 − 4/8 = 0.5 → (1e-3 − 1e-7)·0.25 + 1e-7
    assert!(close(s.lr_at(6), (base - 1e-7) * 0.25 + 1e-7, 1e-15));
    assert!(close(s.lr_at(10), 1e-7, 1e-15));
    assert!(close(s.lr_at(11), 1e-7, 1e-15));
    // lr must exceed lr_end, as diffusers checks.
    assert!(LrSchedule::new(
        ScheduleKind::Polynomial,
        1e-8,
        Warmup::Steps(0),
        10,
        1.0,
        1.0
    )
    .is_err());
}

#[test]
fn schedule_names_parse() {
    for (n, k) in [
        ("constant", ScheduleKind::Constant),
        ("constant_with_warmup", ScheduleKind::ConstantWithWarmup),
        ("linear", ScheduleKind::Linear),
        ("cosine", ScheduleKind::Cosine),
        ("cosine_with_restarts", ScheduleKind::CosineWithRestarts),
        ("polynomial", ScheduleKind::Polynomial),
    ] {
        assert_eq!(ScheduleKind::parse(n).unwrap(), k);
    }
    assert!(ScheduleKind::parse("adafactor").is_err());
}
