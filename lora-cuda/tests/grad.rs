//! Gradient checks: every op's explicit backward against central finite differences in f64 on the CPU.

use lora_cuda::{
    Activation, Conv2dCfg, DType, Graph, LoraAdapter, LoraConfig, LoraContext, LoraKind, ParamId,
    ParamStore, Tensor, Var,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_t(shape: &[usize], rng: &mut StdRng) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec_f64(
        (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect(),
        shape,
    )
    .unwrap()
}

/// Builds `loss = sum(f(inputs) ⊙ R)` for a fixed random R and compares the backward gradients of every input
/// with central differences.
fn check<F>(name: &str, shapes: &[&[usize]], f: F)
where
    F: Fn(&mut Graph, &[Var]) -> Var,
{
    check_with(name, shapes, 1e-6, 1e-6, f)
}

fn check_with<F>(name: &str, shapes: &[&[usize]], atol: f64, rtol: f64, f: F)
where
    F: Fn(&mut Graph, &[Var]) -> Var,
{
    let mut rng = StdRng::seed_from_u64(name.len() as u64 * 7919);
    let mut store = ParamStore::new();
    let ids: Vec<ParamId> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            store
                .add(format!("p{i}"), rand_t(s, &mut rng), true)
                .unwrap()
        })
        .collect();
    // Output shape, and the fixed projection R.
    let out_shape = {
        let mut g = Graph::new();
        let vs: Vec<Var> = ids.iter().map(|&i| g.param(&store, i).unwrap()).collect();
        let y = f(&mut g, &vs);
        g.shape(y).unwrap()
    };
    let r = rand_t(&out_shape, &mut rng);
    let loss_of = |store: &ParamStore| -> (f64, Option<lora_cuda::Grads>, Graph, Var) {
        let mut g = Graph::new();
        let vs: Vec<Var> = ids.iter().map(|&i| g.param(store, i).unwrap()).collect();
        let y = f(&mut g, &vs);
        let rv = g.input(r.clone());
        let p = g.mul(y, rv).unwrap();
        let l = g.sum(p).unwrap();
        let v = g.value(l).unwrap().scalar_value().unwrap();
        (v, None, g, l)
    };
    let (_, _, g, l) = loss_of(&store);
    let grads = g.backward(l).unwrap();
    let h = 1e-6;
    for (pi, &id) in ids.iter().enumerate() {
        let analytic = grads
            .get(id)
            .unwrap_or_else(|| panic!("{name}: input {pi} got no gradient"))
            .to_vec_f64()
            .unwrap();
        let base = store.value(id).unwrap().to_vec_f64().unwrap();
        let shape = store.value(id).unwrap().shape().to_vec();
        assert_eq!(
            analytic.len(),
            base.len(),
            "{name}: gradient shape of input {pi}"
        );
        for j in 0..base.len() {
            let mut plus = base.clone();
            plus[j] += h;
            store
                .set_value(id, Tensor::from_vec_f64(plus, &shape).unwrap())
                .unwrap();
            let lp = loss_of(&store).0;
            let mut minus = base.clone();
            minus[j] -= h;
            store
                .set_value(id, Tensor::from_vec_f64(minus, &shape).unwrap())
                .unwrap();
            let lm = loss_of(&store).0;
            store
                .set_value(id, Tensor::from_vec_f64(base.clone(), &shape).unwrap())
                .unwrap();
            let numeric = (lp - lm) / (2.0 * h);
            let a = analytic[j];
            assert!(
                (a - numeric).abs() <= atol + rtol * a.abs().max(numeric.abs()),
                "{name}: input {pi} element {j}: backward {a} vs finite difference {numeric}"
            );
        }
    }
}

#[test]
fn matmul_grad_all_transposes_batched_and_shared() {
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a: &[usize] = if ta { &[2, 4, 3] } else { &[2, 3, 4] };
        let b: &[usize] = if tb { &[2, 5, 4] } else { &[2, 4, 5] };
        check(&format!("matmul {ta} {tb}"), &[a, b], |g, v| {
            g.matmul(v[0], v[1], ta, tb).unwrap()
        });
        let b2: &[usize] = if tb { &[5, 4] } else { &[4, 5] };
        if !ta {
            check(&format!("matmul shared {ta} {tb}"), &[a, b2], |g, v| {
                g.matmul(v[0], v[1], ta, tb).unwrap()
            });
        }
    }
}

#[test]
fn linear_grad_with_bias_and_3d_input() {
    check("linear", &[&[2, 3, 5], &[4, 5], &[4]], |g, v| {
        g.linear(v[0], v[1], Some(v[2])).unwrap()
    });
    check("linear nobias", &[&[3, 5], &[4, 5]], |g, v| {
        g.linear(v[0], v[1], None).unwrap()
    });
}

#[test]
fn conv2d_grad_3x3_1x1_stride_padding() {
    let cases: &[(&[usize], &[usize], usize, usize)] = &[
        (&[2, 3, 5, 6], &[4, 3, 3, 3], 1, 1),
        (&[1, 2, 7, 5], &[3, 2, 3, 3], 2, 1),
        (&[2, 3, 4, 3], &[5, 3, 1, 1], 1, 0),
        (&[1, 2, 5, 5], &[2, 2, 3, 3], 1, 0),
        (&[1, 3, 6, 6], &[2, 3, 1, 1], 2, 0),
    ];
    for &(x, w, stride, padding) in cases {
        let cfg = Conv2dCfg { stride, padding };
        let bias = [w[0]];
        check(
            &format!("conv {x:?} {w:?} s{stride} p{padding}"),
            &[x, w, &bias],
            |g, v| g.conv2d(v[0], v[1], Some(v[2]), cfg).unwrap(),
        );
    }
}

#[test]
fn group_norm_grad() {
    check("group_norm", &[&[2, 6, 3, 2], &[6], &[6]], |g, v| {
        g.group_norm(v[0], 3, v[1], v[2], 1e-5).unwrap()
    });
}

#[test]
fn layer_norm_grad() {
    check("layer_norm", &[&[2, 3, 7], &[7], &[7]], |g, v| {
        g.layer_norm(v[0], v[1], v[2], 1e-5).unwrap()
    });
}

#[test]
fn activation_grads_silu_gelu_quick_gelu() {
    for a in [Activation::Silu, Activation::Gelu, Activation::QuickGelu] {
        check(&format!("{a:?}"), &[&[3, 7]], |g, v| {
            g.activation(v[0], a).unwrap()
        });
    }
}

#[test]
fn geglu_grad() {
    check("geglu", &[&[2, 3, 8]], |g, v| g.geglu(v[0]).unwrap());
}

#[test]
fn softmax_grad() {
    check("softmax", &[&[3, 5]], |g, v| g.softmax(v[0]).unwrap());
}

#[test]
fn attention_grad_self_cross_causal_multihead() {
    // Self-attention, 2 batches × 2 heads.
    check(
        "attn self",
        &[&[2, 2, 5, 4], &[2, 2, 5, 4], &[2, 2, 5, 4]],
        |g, v| g.attention(v[0], v[1], v[2], 0.5, false).unwrap(),
    );
    // Cross-attention: 3 queries, 6 keys, value width 5.
    check(
        "attn cross",
        &[&[1, 2, 3, 4], &[1, 2, 6, 4], &[1, 2, 6, 5]],
        |g, v| g.attention(v[0], v[1], v[2], 0.5, false).unwrap(),
    );
    // Causal (CLIP's text encoder).
    check(
        "attn causal",
        &[&[2, 4, 3], &[2, 4, 3], &[2, 4, 3]],
        |g, v| g.attention(v[0], v[1], v[2], 0.7, true).unwrap(),
    );
}

#[test]
fn upsample_grad() {
    check("upsample", &[&[1, 2, 3, 2]], |g, v| {
        g.upsample_nearest2x(v[0]).unwrap()
    });
}

#[test]
fn concat_split_grad() {
    check("concat", &[&[2, 3, 2], &[2, 1, 2]], |g, v| {
        g.concat(&[v[0], v[1]], 1).unwrap()
    });
    check("split", &[&[2, 5, 2]], |g, v| {
        let parts = g.split(v[0], 1, &[2, 3]).unwrap();
        let a = g.scale(parts[0], 2.0).unwrap();
        let b = g.scale(parts[1], -3.0).unwrap();
        g.concat(&[b, a], 1).unwrap()
    });
}

#[test]
fn broadcast_add_sub_mul_grad() {
    check("add bcast", &[&[2, 3, 4], &[3, 1]], |g, v| {
        g.add(v[0], v[1]).unwrap()
    });
    check("sub bcast", &[&[4], &[2, 3, 4]], |g, v| {
        g.sub(v[0], v[1]).unwrap()
    });
    check("mul bcast", &[&[2, 3, 1, 1], &[2, 3, 2, 2]], |g, v| {
        g.mul(v[0], v[1]).unwrap()
    });
    check("mul same", &[&[3, 2], &[3, 2]], |g, v| {
        g.mul(v[0], v[1]).unwrap()
    });
}

#[test]
fn scale_sum_mean_grad() {
    check("scale", &[&[3, 2]], |g, v| g.scale(v[0], -1.7).unwrap());
    check("sum", &[&[3, 2]], |g, v| g.sum(v[0]).unwrap());
    check("mean", &[&[3, 2]], |g, v| g.mean(v[0]).unwrap());
    check("mean_over", &[&[2, 3, 2]], |g, v| {
        g.mean_over(v[0], 1).unwrap()
    });
}

#[test]
fn mse_grad() {
    check("mse", &[&[2, 3], &[2, 3]], |g, v| {
        g.mse_loss(v[0], v[1]).unwrap()
    });
}

#[test]
fn permute_reshape_embedding_grad() {
    check("permute", &[&[2, 3, 4]], |g, v| {
        g.permute(v[0], &[2, 0, 1]).unwrap()
    });
    check("reshape", &[&[2, 6]], |g, v| {
        let r = g.reshape(v[0], &[3, 4]).unwrap();
        g.matmul(r, r, true, false).unwrap()
    });
    check("embedding", &[&[5, 3]], |g, v| {
        g.embedding(v[0], &[4, 0, 4, 2]).unwrap()
    });
}

fn lora_case(kind: LoraKind, x_shape: &[usize], w_shape: &[usize], multiplier: f64) {
    // Base weight frozen; the LoRA weights and the input are checked. lora_up is given random values
    // (a zero init would hide errors in the down path).
    let mut rng = StdRng::seed_from_u64(42);
    let rank = 3;
    let (down_shape, up_shape): (Vec<usize>, Vec<usize>) = match kind {
        LoraKind::Linear => (vec![rank, w_shape[1]], vec![w_shape[0], rank]),
        LoraKind::Conv { kernel, .. } => (
            vec![rank, w_shape[1], kernel, kernel],
            vec![w_shape[0], rank, 1, 1],
        ),
    };
    let name = format!("lora {kind:?} m={multiplier}");
    let w = rand_t(w_shape, &mut rng);
    check(&name, &[x_shape, &down_shape, &up_shape], |g, v| {
        let mut store = ParamStore::new();
        let cfg = LoraConfig::new(rank, 2.0);
        let ad = LoraAdapter::from_tensors(
            &mut store,
            "m",
            g.value(v[1]).unwrap().clone(),
            g.value(v[2]).unwrap().clone(),
            kind,
            cfg,
        )
        .unwrap();
        let _ = ad;
        // Build the same math with the graph's own variables so the check sees v[1], v[2].
        let wv = g.input(w.clone());
        let mut ctx = LoraContext::eval(multiplier);
        let base = match kind {
            LoraKind::Linear => g.linear(v[0], wv, None).unwrap(),
            LoraKind::Conv { cfg, .. } => g.conv2d(v[0], wv, None, cfg).unwrap(),
        };
        lora_apply_with_vars(g, v[0], v[1], v[2], base, kind, cfg.scale(), &mut ctx)
    });
}

/// The adapter's eval-mode math through [`LoraAdapter::apply`] needs params from a store; this mirrors it
/// with graph variables, and `lora_adapter_apply_matches_manual_math` ties the two together.
#[allow(clippy::too_many_arguments)]
fn lora_apply_with_vars(
    g: &mut Graph,
    x: Var,
    d: Var,
    u: Var,
    base: Var,
    kind: LoraKind,
    scale: f64,
    ctx: &mut LoraContext,
) -> Var {
    let lx = match kind {
        LoraKind::Linear => g.linear(x, d, None).unwrap(),
        LoraKind::Conv { cfg, .. } => g.conv2d(x, d, None, cfg).unwrap(),
    };
    let up = match kind {
        LoraKind::Linear => g.linear(lx, u, None).unwrap(),
        LoraKind::Conv { .. } => g.conv2d(lx, u, None, Conv2dCfg::default()).unwrap(),
    };
    let s = g.scale(up, ctx.multiplier * scale).unwrap();
    g.add(base, s).unwrap()
}

#[test]
fn lora_linear_grad_dropouts_off_signed_multiplier() {
    lora_case(LoraKind::Linear, &[2, 3, 5], &[4, 5], 1.0);
    lora_case(LoraKind::Linear, &[3, 5], &[4, 5], -0.75);
}

#[test]
fn lora_conv_grad_dropouts_off() {
    let k3 = LoraKind::Conv {
        kernel: 3,
        cfg: Conv2dCfg {
            stride: 2,
            padding: 1,
        },
    };
    lora_case(k3, &[1, 2, 5, 4], &[3, 2, 3, 3], 1.0);
    let k1 = LoraKind::Conv {
        kernel: 1,
        cfg: Conv2dCfg {
            stride: 1,
            padding: 0,
        },
    };
    lora_case(k1, &[2, 3, 2, 3], &[2, 3, 1, 1], -1.5);
}

#[test]
fn lora_adapter_grad_through_param_store_matches_finite_differences() {
    // The real LoraAdapter::apply path: gradients w.r.t. lora_down / lora_up only, base weight frozen.
    let mut rng = StdRng::seed_from_u64(7);
    let mut store = ParamStore::new();
    let w = store.add("w", rand_t(&[4, 6], &mut rng), false).unwrap();
    let ad = LoraAdapter::from_tensors(
        &mut store,
        "lora",
        rand_t(&[2, 6], &mut rng),
        rand_t(&[4, 2], &mut rng),
        LoraKind::Linear,
        LoraConfig::new(2, 1.0),
    )
    .unwrap();
    let x = rand_t(&[3, 6], &mut rng);
    let r = rand_t(&[3, 4], &mut rng);
    let loss = |store: &ParamStore| {
        let mut g = Graph::new();
        let xv = g.input(x.clone());
        let wv = g.param(store, w).unwrap();
        let mut ctx = LoraContext::eval(-0.8);
        let y = ad.linear(&mut g, store, xv, wv, None, &mut ctx).unwrap();
        let rv = g.input(r.clone());
        let p = g.mul(y, rv).unwrap();
        let l = g.sum(p).unwrap();
        (g, l)
    };
    let (g, l) = loss(&store);
    let grads = g.backward(l).unwrap();
    assert!(
        grads.get(w).is_none(),
        "frozen base weight must get no gradient"
    );
    assert_eq!(grads.len(), 2);
    for id in [ad.down, ad.up] {
        let a = grads.get(id).unwrap().to_vec_f64().unwrap();
        let base = store.value(id).unwrap().to_vec_f64().unwrap();
        let shape = store.value(id).unwrap().shape().to_vec();
        for j in 0..base.len() {
            let mut eval = |d: f64| {
                let mut v = base.clone();
                v[j] += d;
                store
                    .set_value(id, Tensor::from_vec_f64(v, &shape).unwrap())
                    .unwrap();
                let (g, l) = loss(&store);
                g.value(l).unwrap().scalar_value().unwrap()
            };
            let n = (eval(1e-6) - eval(-1e-6)) / 2e-6;
            store
                .set_value(id, Tensor::from_vec_f64(base.clone(), &shape).unwrap())
                .unwrap();
            assert!(
                (a[j] - n).abs() < 1e-6 + 1e-6 * n.abs(),
                "element {j}: {} vs {n}",
                a[j]
            );
        }
    }
}

#[test]
fn two_layer_composite_grad() {
    // conv3x3 → group norm → SiLU → conv1x1 stride 1 → flatten → linear → GELU, all checked at once.
    check(
        "composite",
        &[
            &[2, 2, 4, 4],
            &[4, 2, 3, 3],
            &[4],
            &[4],
            &[4],
            &[3, 4, 1, 1],
            &[5, 12],
        ],
        |g, v| {
            let h = g
                .conv2d(
                    v[0],
                    v[1],
                    Some(v[2]),
                    Conv2dCfg {
                        stride: 2,
                        padding: 1,
                    },
                )
                .unwrap();
            let h = g.group_norm(h, 2, v[3], v[4], 1e-5).unwrap();
            let h = g.silu(h).unwrap();
            let h = g.conv2d(h, v[5], None, Conv2dCfg::default()).unwrap();
            let h = g.reshape(h, &[2, 12]).unwrap();
            let h = g.linear(h, v[6], None).unwrap();
            g.gelu(h).unwrap()
        },
    );
}

#[test]
fn frozen_inputs_get_no_gradient_and_unused_params_none() {
    let mut store = ParamStore::new();
    let mut rng = StdRng::seed_from_u64(1);
    let a = store.add("a", rand_t(&[2, 2], &mut rng), true).unwrap();
    let b = store.add("b", rand_t(&[2, 2], &mut rng), false).unwrap();
    let c = store.add("c", rand_t(&[2, 2], &mut rng), true).unwrap();
    let mut g = Graph::new();
    let (av, bv, _cv) = (
        g.param(&store, a).unwrap(),
        g.param(&store, b).unwrap(),
        g.param(&store, c).unwrap(),
    );
    let y = g.matmul(av, bv, false, false).unwrap();
    let l = g.sum(y).unwrap();
    let grads = g.backward(l).unwrap();
    assert!(grads.get(a).is_some());
    assert!(grads.get(b).is_none());
    assert!(grads.get(c).is_none());
}

#[test]
fn inference_graph_records_no_gradients() {
    let mut store = ParamStore::new();
    let mut rng = StdRng::seed_from_u64(2);
    let a = store.add("a", rand_t(&[2, 2], &mut rng), true).unwrap();
    let mut g = Graph::inference();
    let av = g.param(&store, a).unwrap();
    let y = g.sum(av).unwrap();
    assert!(!g.requires_grad(y).unwrap());
    assert!(g.backward(y).unwrap().is_empty());
}

#[test]
fn mixed_precision_bf16_activations_give_f32_lora_grads() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut store = ParamStore::new();
    let w = store
        .add("w", Tensor::randn(&[4, 6], DType::BF16, &mut rng), false)
        .unwrap();
    let mut ad_rng = StdRng::seed_from_u64(4);
    let ad = LoraAdapter::new_linear(&mut store, "l", 6, 4, LoraConfig::new(2, 2.0), &mut ad_rng)
        .unwrap();
    let mut g = Graph::new();
    let x = g.input(Tensor::randn(&[3, 6], DType::BF16, &mut rng));
    let wv = g.param(&store, w).unwrap();
    let mut ctx = LoraContext::eval(1.0);
    let y = ad.linear(&mut g, &store, x, wv, None, &mut ctx).unwrap();
    assert_eq!(g.value(y).unwrap().dtype(), DType::BF16);
    let t = g.input(Tensor::randn(&[3, 4], DType::F32, &mut rng));
    let l = g.mse_loss(y, t).unwrap();
    let grads = g.backward(l).unwrap();
    assert_eq!(grads.get(ad.down).unwrap().dtype(), DType::F32);
    assert_eq!(grads.get(ad.up).unwrap().dtype(), DType::F32);
    // lora_up starts at zero, so the down gradient is zero and the up gradient is not.
    assert!(grads
        .get(ad.down)
        .unwrap()
        .to_vec_f32()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    assert!(grads
        .get(ad.up)
        .unwrap()
        .to_vec_f32()
        .unwrap()
        .iter()
        .any(|&v| v != 0.0));
}

#[test]
fn fused_op_grads_attention_heads_lora_linear_group_norm_silu() {
    // Multi-head attention on [B, L, heads·d] projections: self (2 heads), cross and causal (3 heads).
    check(
        "attention_heads self",
        &[&[2, 4, 6], &[2, 4, 6], &[2, 4, 6]],
        |g, v| g.attention_heads(v[0], v[1], v[2], 2, 0.5, false).unwrap(),
    );
    check(
        "attention_heads cross causal",
        &[&[1, 3, 6], &[1, 5, 6], &[1, 5, 9]],
        |g, v| g.attention_heads(v[0], v[1], v[2], 3, 0.7, true).unwrap(),
    );
    // Linear layer + LoRA in one op, with and without bias, all five inputs differentiated.
    check(
        "lora_linear bias",
        &[&[2, 3, 5], &[4, 5], &[4], &[2, 5], &[4, 2]],
        |g, v| {
            g.lora_linear(v[0], v[1], Some(v[2]), v[3], v[4], -0.75)
                .unwrap()
        },
    );
    check(
        "lora_linear no bias",
        &[&[3, 5], &[4, 5], &[2, 5], &[4, 2]],
        |g, v| g.lora_linear(v[0], v[1], None, v[2], v[3], 1.5).unwrap(),
    );
    // Group norm → SiLU fused.
    check("group_norm_silu", &[&[2, 4, 3, 2], &[4], &[4]], |g, v| {
        g.group_norm_silu(v[0], 2, v[1], v[2], 1e-5).unwrap()
    });
}

#[test]
fn fused_ops_equal_their_parts() {
    let mut rng = StdRng::seed_from_u64(11);
    let (x, w, b) = (
        rand_t(&[2, 3, 5], &mut rng),
        rand_t(&[4, 5], &mut rng),
        rand_t(&[4], &mut rng),
    );
    let (d, u) = (rand_t(&[2, 5], &mut rng), rand_t(&[4, 2], &mut rng));
    let mut g = Graph::inference();
    let [x, w, b, d, u] = [x, w, b, d, u].map(|t| g.input(t));
    let fused = g.lora_linear(x, w, Some(b), d, u, 0.3).unwrap();
    let base = g.linear(x, w, Some(b)).unwrap();
    let lx = g.linear(x, d, None).unwrap();
    let lx = g.scale(lx, 0.3).unwrap();
    let up = g.linear(lx, u, None).unwrap();
    let parts = g.add(base, up).unwrap();
    let (a, e) = (
        g.value(fused).unwrap().to_vec_f64().unwrap(),
        g.value(parts).unwrap().to_vec_f64().unwrap(),
    );
    for (p, q) in a.iter().zip(&e) {
        assert!((p - q).abs() < 1e-12, "lora_linear {p} vs {q}");
    }
    let xg = g.input(rand_t(&[2, 4, 3, 3], &mut rng));
    let (ga, be) = (
        g.input(rand_t(&[4], &mut rng)),
        g.input(rand_t(&[4], &mut rng)),
    );
    let fused = g.group_norm_silu(xg, 2, ga, be, 1e-5).unwrap();
    let n = g.group_norm(xg, 2, ga, be, 1e-5).unwrap();
    let parts = g.silu(n).unwrap();
    assert_eq!(
        g.value(fused).unwrap().to_vec_f64().unwrap(),
        g.value(parts).unwrap().to_vec_f64().unwrap()
    );
}
