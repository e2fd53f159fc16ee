//! The kernel parity cases: each runs kernels through a [`Runner`] and compares with the CPU reference
//! (`lora_cuda::cpu`) on small shapes with odd sizes (tile edges are where kernels break).

use super::{assert_close, blocks, rnd, KArg, Runner};
use half::{bf16, f16};
use lora_cuda::cpu::{self, AttnGeom, ConvGeom};
use lora_cuda::Real;

fn f(a: &KArg) -> &Vec<f32> {
    match a {
        KArg::F32s(v) => v,
        _ => panic!("not an f32 buffer"),
    }
}

fn u(a: &KArg) -> &Vec<u16> {
    match a {
        KArg::U16s(v) => v,
        _ => panic!("not a 16-bit buffer"),
    }
}

const B256: (u32, u32, u32) = (256, 1, 1);

pub fn elementwise_activations(r: &dyn Runner) {
    let n = 1031;
    let x: Vec<f32> = rnd(n, 1).iter().map(|v| v * 4.0).collect();
    let dy = rnd(n, 2);
    for op in 0..3 {
        let mut a = [
            KArg::F32s(x.clone()),
            KArg::F32s(vec![0.0; n]),
            KArg::I64(n as i64),
            KArg::I32(op),
        ];
        r.launch("act_fwd", (blocks(n, 3), 1, 1), B256, &mut a);
        let act = [
            lora_cuda::Activation::Silu,
            lora_cuda::Activation::Gelu,
            lora_cuda::Activation::QuickGelu,
        ][op as usize];
        let xt = lora_cuda::Tensor::from_vec(x.clone(), &[n]).unwrap();
        let want = lora_cuda::ops::activation(&xt, act)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_close(&format!("act_fwd {act:?}"), f(&a[1]), &want, 2e-6, 2e-5);
        let mut b = [
            KArg::F32s(x.clone()),
            KArg::F32s(dy.clone()),
            KArg::F32s(vec![0.0; n]),
            KArg::I64(n as i64),
            KArg::I32(op),
        ];
        r.launch("act_bwd", (blocks(n, 3), 1, 1), B256, &mut b);
        let dyt = lora_cuda::Tensor::from_vec(dy.clone(), &[n]).unwrap();
        let want = lora_cuda::ops::activation_backward(&xt, &dyt, act)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_close(&format!("act_bwd {act:?}"), f(&b[2]), &want, 2e-6, 2e-5);
    }
}

fn bcast_bytes(nd: usize, shape: &[usize], sa: &[usize], sb: &[usize]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend((nd as i32).to_le_bytes());
    b.extend([0u8; 4]);
    for arr in [shape, sa, sb] {
        for i in 0..6 {
            b.extend((*arr.get(i).unwrap_or(&0) as i64).to_le_bytes());
        }
    }
    b
}

pub fn elementwise_binary_axpby_fill(r: &dyn Runner) {
    let n = 1031;
    let (a, b) = (rnd(n, 3), rnd(n, 4));
    for op in 0..3 {
        let mut args = [
            KArg::F32s(a.clone()),
            KArg::F32s(b.clone()),
            KArg::F32s(vec![0.0; n]),
            KArg::I64(n as i64),
            KArg::I32(op),
        ];
        r.launch("binary_same", (2, 1, 1), B256, &mut args);
        let want: Vec<f32> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| [x + y, x - y, x * y][op as usize])
            .collect();
        assert_close(
            &format!("binary_same op {op}"),
            f(&args[2]),
            &want,
            0.0,
            0.0,
        );
    }
    // Broadcast [2,3,5] op [3,1].
    let (ash, bsh, out) = ([2usize, 3, 5], [3usize, 1], [2usize, 3, 5]);
    let (av, bv) = (rnd(30, 5), rnd(3, 6));
    let sa = cpu::broadcast_strides(&ash, &out);
    let sb = cpu::broadcast_strides(&bsh, &out);
    let mut args = [
        KArg::F32s(av.clone()),
        KArg::F32s(bv.clone()),
        KArg::F32s(vec![0.0; 30]),
        KArg::I64(30),
        KArg::I32(2),
        KArg::Raw(bcast_bytes(3, &out, &sa, &sb)),
    ];
    r.launch("binary_bcast", (1, 1, 1), B256, &mut args);
    let want = cpu::broadcast_binary(&av, &ash, &bv, &bsh, &out, |x, y| x * y);
    assert_close("binary_bcast", f(&args[2]), &want, 0.0, 0.0);
    let mut args = [
        KArg::F32s(a.clone()),
        KArg::F32s(b.clone()),
        KArg::F32s(vec![0.0; n]),
        KArg::I64(n as i64),
        KArg::F32(0.5),
        KArg::F32(-2.0),
    ];
    r.launch("axpby", (2, 1, 1), B256, &mut args);
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.5 * x - 2.0 * y).collect();
    assert_close("axpby", f(&args[2]), &want, 1e-7, 1e-7);
    let mut args = [KArg::F32s(vec![0.0; 300]), KArg::I64(300), KArg::F32(3.5)];
    r.launch("fill_f32", (1, 1, 1), B256, &mut args);
    assert!(f(&args[0]).iter().all(|&v| v == 3.5));
}

pub fn geglu_fwd_bwd(r: &dyn Runner) {
    let (rows, d) = (5, 13);
    let x: Vec<f32> = rnd(rows * 2 * d, 7).iter().map(|v| v * 3.0).collect();
    let dy = rnd(rows * d, 8);
    let xt = lora_cuda::Tensor::from_vec(x.clone(), &[rows, 2 * d]).unwrap();
    let mut a = [
        KArg::F32s(x.clone()),
        KArg::F32s(vec![0.0; rows * d]),
        KArg::I64(rows as i64),
        KArg::I64(d as i64),
    ];
    r.launch("geglu_fwd", (1, 1, 1), B256, &mut a);
    let want = lora_cuda::ops::geglu(&xt).unwrap().to_vec_f32().unwrap();
    assert_close("geglu_fwd", f(&a[1]), &want, 2e-6, 2e-5);
    let mut b = [
        KArg::F32s(x),
        KArg::F32s(dy.clone()),
        KArg::F32s(vec![0.0; rows * 2 * d]),
        KArg::I64(rows as i64),
        KArg::I64(d as i64),
    ];
    r.launch("geglu_bwd", (1, 1, 1), B256, &mut b);
    let dyt = lora_cuda::Tensor::from_vec(dy, &[rows, d]).unwrap();
    let want = lora_cuda::ops::geglu_backward(&xt, &dyt)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    assert_close("geglu_bwd", f(&b[2]), &want, 2e-6, 2e-5);
}

pub fn casts_round_to_nearest_even(r: &dyn Runner) {
    let mut x: Vec<f32> = rnd(517, 9).iter().map(|v| v * 1000.0).collect();
    x.extend([0.0, -0.0, 1.0 + 1.0 / 256.0, 65504.0, 1e-8, -3.0e38]);
    let n = x.len();
    let mut a = [
        KArg::F32s(x.clone()),
        KArg::U16s(vec![0; n]),
        KArg::I64(n as i64),
    ];
    r.launch("f32_to_bf16", (1, 1, 1), B256, &mut a);
    let want: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    assert_eq!(u(&a[1]), &want, "f32_to_bf16");
    let mut b = [
        KArg::U16s(want.clone()),
        KArg::F32s(vec![0.0; n]),
        KArg::I64(n as i64),
    ];
    r.launch("bf16_to_f32", (1, 1, 1), B256, &mut b);
    let back: Vec<f32> = want.iter().map(|&h| bf16::from_bits(h).to_f32()).collect();
    assert_eq!(f(&b[1]), &back, "bf16_to_f32");
    let mut c = [
        KArg::F32s(x.clone()),
        KArg::U16s(vec![0; n]),
        KArg::I64(n as i64),
    ];
    r.launch("f32_to_f16", (1, 1, 1), B256, &mut c);
    let want: Vec<u16> = x.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    assert_eq!(u(&c[1]), &want, "f32_to_f16");
    let mut d = [
        KArg::U16s(want.clone()),
        KArg::F32s(vec![0.0; n]),
        KArg::I64(n as i64),
    ];
    r.launch("f16_to_f32", (1, 1, 1), B256, &mut d);
    let back: Vec<f32> = want.iter().map(|&h| f16::from_bits(h).to_f32()).collect();
    assert_eq!(f(&d[1]), &back, "f16_to_f32");
}

pub fn adamw_matches_cpu_optimizer(r: &dyn Runner) {
    use lora_cuda::optim::{AdamW, AdamWConfig};
    let n = 1030;
    let p0 = rnd(n, 10);
    let (g1, g2) = (rnd(n, 11), rnd(n, 12));
    let cfg = AdamWConfig::default();
    let mut store = lora_cuda::ParamStore::new();
    let id = store
        .add(
            "p",
            lora_cuda::Tensor::from_vec(p0.clone(), &[n]).unwrap(),
            true,
        )
        .unwrap();
    let mut opt = AdamW::new(cfg).unwrap();
    let (mut p, mut m, mut v) = (p0, vec![0.0f32; n], vec![0.0f32; n]);
    for (t, (g, lr)) in [(&g1, 1e-2f64), (&g2, 5e-3)].into_iter().enumerate() {
        let mut grads = lora_cuda::Grads::default();
        grads.insert(id, lora_cuda::Tensor::from_vec(g.clone(), &[n]).unwrap());
        opt.step(&mut store, &grads, lr).unwrap();
        let step = (t + 1) as f64;
        let bc1 = 1.0 - cfg.beta1.powf(step);
        let bc2 = 1.0 - cfg.beta2.powf(step);
        let mut a = [
            KArg::F32s(p.clone()),
            KArg::F32s(g.clone()),
            KArg::F32s(m.clone()),
            KArg::F32s(v.clone()),
            KArg::I64(n as i64),
            KArg::F32(lr as f32),
            KArg::F32(cfg.beta1 as f32),
            KArg::F32(cfg.beta2 as f32),
            KArg::F32(cfg.eps as f32),
            KArg::F32(cfg.weight_decay as f32),
            KArg::F32((lr / bc1) as f32),
            KArg::F32(bc2.sqrt() as f32),
        ];
        r.launch("adamw_f32", (2, 1, 1), B256, &mut a);
        p = f(&a[0]).clone();
        m = f(&a[2]).clone();
        v = f(&a[3]).clone();
    }
    let want = store.value(id).unwrap().to_vec_f32().unwrap();
    assert_close("adamw_f32", &p, &want, 1e-6, 1e-5);
}

pub fn reductions(r: &dyn Runner) {
    let n = 5003;
    let x = rnd(n, 13);
    let mut a = [
        KArg::F32s(x.clone()),
        KArg::F32s(vec![0.0]),
        KArg::I64(n as i64),
    ];
    r.launch("sum_f32", (3, 1, 1), B256, &mut a);
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert_close("sum_f32", f(&a[1]), &[want as f32], 1e-3, 1e-5);
    let mut a = [
        KArg::F32s(x.clone()),
        KArg::F32s(vec![0.0]),
        KArg::I64(n as i64),
    ];
    r.launch("sumsq_f32", (3, 1, 1), B256, &mut a);
    let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    assert_close("sumsq_f32", f(&a[1]), &[want as f32], 1e-3, 1e-5);
    let (rows, cols) = (37, 300);
    let y = rnd(rows * cols, 14);
    let mut a = [
        KArg::F32s(y.clone()),
        KArg::F32s(vec![0.0; cols]),
        KArg::I64(rows as i64),
        KArg::I64(cols as i64),
    ];
    r.launch("col_sum", (2, 1, 1), B256, &mut a);
    let want = cpu::sum_to_shape(&y, &[rows, cols], &[cols]);
    assert_close("col_sum", f(&a[1]), &want, 1e-5, 1e-5);
    let mut a = [
        KArg::F32s(y.clone()),
        KArg::F32s(vec![0.0; rows]),
        KArg::I64(rows as i64),
        KArg::I64(cols as i64),
    ];
    r.launch("row_mean", (5, 1, 1), B256, &mut a);
    let want: Vec<f32> = y
        .chunks(cols)
        .map(|c| c.iter().sum::<f32>() / cols as f32)
        .collect();
    assert_close("row_mean", f(&a[1]), &want, 1e-6, 1e-5);
}

#[allow(clippy::too_many_arguments)]
fn ref_gemm(
    ta: bool,
    tb: bool,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    sa: usize,
    b: &[f32],
    sb: usize,
    alpha: f32,
    beta: f32,
    c0: &[f32],
) -> Vec<f32> {
    let mut c = c0.to_vec();
    cpu::batched_gemm(ta, tb, batch, m, n, k, alpha, a, sa, b, sb, beta, &mut c);
    c
}

pub fn sgemm_odd_shapes_transposes_batched(r: &dyn Runner) {
    let cases: &[(usize, usize, usize, usize, bool)] = &[
        (37, 29, 45, 2, false),
        (64, 68, 32, 1, false),
        (5, 3, 70, 3, true),
    ];
    for &(m, n, k, batch, shared_b) in cases {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = rnd(batch * m * k, 20 + m as u64);
            let bsz = if shared_b { k * n } else { batch * k * n };
            let b = rnd(bsz, 21 + n as u64);
            let c0 = rnd(batch * m * n, 22);
            let (alpha, beta) = (1.5f32, 0.5f32);
            let lda = if ta { m } else { k };
            let ldb = if tb { k } else { n };
            let sb = if shared_b { 0 } else { k * n };
            let mut args = [
                KArg::F32s(a.clone()),
                KArg::F32s(b.clone()),
                KArg::F32s(c0.clone()),
                KArg::I32(m as i32),
                KArg::I32(n as i32),
                KArg::I32(k as i32),
                KArg::I32(lda as i32),
                KArg::I32(ldb as i32),
                KArg::I32(n as i32),
                KArg::I64((m * k) as i64),
                KArg::I64(sb as i64),
                KArg::I64((m * n) as i64),
                KArg::I32(ta as i32),
                KArg::I32(tb as i32),
                KArg::F32(alpha),
                KArg::F32(beta),
            ];
            r.launch(
                "sgemm",
                (n.div_ceil(64) as u32, m.div_ceil(64) as u32, batch as u32),
                B256,
                &mut args,
            );
            let want = ref_gemm(ta, tb, batch, m, n, k, &a, m * k, &b, sb, alpha, beta, &c0);
            assert_close(
                &format!("sgemm {m}x{n}x{k} b{batch} ta{ta} tb{tb}"),
                f(&args[2]),
                &want,
                1e-5,
                1e-5,
            );
        }
    }
}

pub fn hgemm_bf16_f16(r: &dyn Runner) {
    let (m, n, k, batch) = (70, 33, 40, 2);
    for (kernel, is_bf16) in [("hgemm_bf16", true), ("hgemm_f16", false)] {
        for (ta, tb) in [(false, false), (true, true)] {
            let to16 = |v: &[f32]| -> Vec<u16> {
                v.iter()
                    .map(|&x| {
                        if is_bf16 {
                            bf16::from_f32(x).to_bits()
                        } else {
                            f16::from_f32(x).to_bits()
                        }
                    })
                    .collect()
            };
            let from16 = |v: &[u16]| -> Vec<f32> {
                v.iter()
                    .map(|&h| {
                        if is_bf16 {
                            bf16::from_bits(h).to_f32()
                        } else {
                            f16::from_bits(h).to_f32()
                        }
                    })
                    .collect()
            };
            let a16 = to16(&rnd(batch * m * k, 30));
            let b16 = to16(&rnd(batch * k * n, 31));
            let c16 = to16(&rnd(batch * m * n, 32));
            let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
            let mut args = [
                KArg::U16s(a16.clone()),
                KArg::U16s(b16.clone()),
                KArg::U16s(c16.clone()),
                KArg::I32(m as i32),
                KArg::I32(n as i32),
                KArg::I32(k as i32),
                KArg::I32(lda as i32),
                KArg::I32(ldb as i32),
                KArg::I32(n as i32),
                KArg::I64((m * k) as i64),
                KArg::I64((k * n) as i64),
                KArg::I64((m * n) as i64),
                KArg::I32(ta as i32),
                KArg::I32(tb as i32),
                KArg::F32(1.0),
                KArg::F32(0.25),
            ];
            r.launch(
                kernel,
                (n.div_ceil(64) as u32, m.div_ceil(64) as u32, batch as u32),
                (128, 1, 1),
                &mut args,
            );
            // Reference: f32 GEMM of the 16-bit inputs, then rounded to the 16-bit type.
            let want = ref_gemm(
                ta,
                tb,
                batch,
                m,
                n,
                k,
                &from16(&a16),
                m * k,
                &from16(&b16),
                k * n,
                1.0,
                0.25,
                &from16(&c16),
            );
            let want = from16(&to16(&want));
            let tol = if is_bf16 { 1.6e-2 } else { 2e-3 };
            assert_close(
                &format!("{kernel} ta{ta} tb{tb}"),
                &from16(u(&args[2])),
                &want,
                tol,
                tol,
            );
        }
    }
}

pub fn conv_im2col_col2im_bias(r: &dyn Runner) {
    for g in [
        ConvGeom {
            n: 1,
            c: 3,
            h: 7,
            w: 5,
            o: 1,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        },
        ConvGeom {
            n: 1,
            c: 2,
            h: 6,
            w: 6,
            o: 1,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        },
        ConvGeom {
            n: 1,
            c: 4,
            h: 3,
            w: 5,
            o: 1,
            kh: 1,
            kw: 1,
            stride: 2,
            pad: 0,
        },
    ] {
        let x = rnd(g.c * g.h * g.w, 40);
        let cols = g.ckk() * g.ho() * g.wo();
        let geo = |v: &mut Vec<KArg>| {
            for a in [g.c, g.h, g.w, g.kh, g.kw, g.stride, g.pad, g.ho(), g.wo()] {
                v.push(KArg::I32(a as i32));
            }
        };
        let mut args = vec![KArg::F32s(x.clone()), KArg::F32s(vec![0.0; cols])];
        geo(&mut args);
        r.launch("im2col_f32", (blocks(cols, 4), 1, 1), B256, &mut args);
        let mut want = vec![0.0f32; cols];
        cpu::im2col(&x, &g, &mut want);
        assert_close(&format!("im2col {g:?}"), f(&args[1]), &want, 0.0, 0.0);
        let colv = rnd(cols, 41);
        let mut args = vec![KArg::F32s(colv.clone()), KArg::F32s(vec![0.0; x.len()])];
        geo(&mut args);
        r.launch("col2im_f32", (blocks(x.len(), 4), 1, 1), B256, &mut args);
        let mut want = vec![0.0f32; x.len()];
        cpu::col2im(&colv, &g, &mut want);
        assert_close(&format!("col2im {g:?}"), f(&args[1]), &want, 1e-6, 1e-6);
    }
    let (n, o, hw) = (2, 3, 7);
    let y = rnd(n * o * hw, 42);
    let b = rnd(o, 43);
    let mut args = [
        KArg::F32s(y.clone()),
        KArg::F32s(b.clone()),
        KArg::I64((n * o * hw) as i64),
        KArg::I32(o as i32),
        KArg::I64(hw as i64),
    ];
    r.launch("add_channel_bias", (1, 1, 1), B256, &mut args);
    let want: Vec<f32> = y
        .iter()
        .enumerate()
        .map(|(i, v)| v + b[(i / hw) % o])
        .collect();
    assert_close("add_channel_bias", f(&args[0]), &want, 0.0, 0.0);
}

pub fn softmax_fwd_bwd_causal(r: &dyn Runner) {
    let (rows, d) = (11, 37);
    let x: Vec<f32> = rnd(rows * d, 50).iter().map(|v| v * 5.0).collect();
    for causal in [0i32, 5] {
        let mut args = [
            KArg::F32s(x.clone()),
            KArg::F32s(vec![0.0; rows * d]),
            KArg::I64(rows as i64),
            KArg::I32(d as i32),
            KArg::I32(causal),
            KArg::I32(2),
        ];
        r.launch("softmax_fwd", (2, 1, 1), B256, &mut args);
        let mut want = x.clone();
        cpu::softmax_rows_inplace(&mut want, d, (causal > 0).then_some((causal as usize, 2)));
        assert_close(
            &format!("softmax_fwd causal {causal}"),
            f(&args[1]),
            &want,
            1e-6,
            1e-5,
        );
    }
    let mut y = x.clone();
    cpu::softmax_rows_inplace(&mut y, d, None);
    let dy = rnd(rows * d, 51);
    let mut args = [
        KArg::F32s(y.clone()),
        KArg::F32s(dy.clone()),
        KArg::F32s(vec![0.0; rows * d]),
        KArg::I64(rows as i64),
        KArg::I32(d as i32),
    ];
    r.launch("softmax_bwd", (2, 1, 1), B256, &mut args);
    let want = cpu::softmax_rows_bwd(&y, &dy, d);
    assert_close("softmax_bwd", f(&args[2]), &want, 1e-6, 1e-5);
}

pub fn group_norm_fwd_bwd(r: &dyn Runner) {
    let (n, c, s, g) = (2, 6, 13, 3);
    let x: Vec<f32> = rnd(n * c * s, 60).iter().map(|v| v * 3.0 + 1.0).collect();
    let (gamma, beta) = (rnd(c, 61), rnd(c, 62));
    let dy = rnd(n * c * s, 63);
    let (y, mean, rstd) = cpu::group_norm_fwd(&x, n, c, s, g, Some(&gamma), Some(&beta), 1e-5);
    let mut args = [
        KArg::F32s(x.clone()),
        KArg::F32s(vec![0.0; x.len()]),
        KArg::F32s(gamma.clone()),
        KArg::F32s(beta.clone()),
        KArg::F32s(vec![0.0; n * g]),
        KArg::F32s(vec![0.0; n * g]),
        KArg::I32(c as i32),
        KArg::I64(s as i64),
        KArg::I32(g as i32),
        KArg::F32(1e-5),
    ];
    r.launch("group_norm_fwd", ((n * g) as u32, 1, 1), B256, &mut args);
    assert_close("group_norm_fwd y", f(&args[1]), &y, 1e-5, 1e-4);
    assert_close("group_norm_fwd mean", f(&args[4]), &mean, 1e-6, 1e-5);
    assert_close("group_norm_fwd rstd", f(&args[5]), &rstd, 1e-6, 1e-4);
    let (dx, dgamma, dbeta) = cpu::group_norm_bwd(&x, &dy, &mean, &rstd, n, c, s, g, Some(&gamma));
    let mut args = [
        KArg::F32s(x.clone()),
        KArg::F32s(dy.clone()),
        KArg::F32s(gamma.clone()),
        KArg::F32s(mean.clone()),
        KArg::F32s(rstd.clone()),
        KArg::F32s(vec![0.0; x.len()]),
        KArg::I32(c as i32),
        KArg::I64(s as i64),
        KArg::I32(g as i32),
    ];
    r.launch("group_norm_bwd_dx", ((n * g) as u32, 1, 1), B256, &mut args);
    assert_close("group_norm_bwd_dx", f(&args[5]), &dx, 1e-5, 1e-4);
    let mut args = [
        KArg::F32s(x),
        KArg::F32s(dy),
        KArg::F32s(mean),
        KArg::F32s(rstd),
        KArg::F32s(vec![0.0; c]),
        KArg::F32s(vec![0.0; c]),
        KArg::I32(n as i32),
        KArg::I32(c as i32),
        KArg::I64(s as i64),
        KArg::I32(g as i32),
    ];
    r.launch("group_norm_bwd_param", (c as u32, 1, 1), B256, &mut args);
    assert_close("group_norm_bwd dgamma", f(&args[4]), &dgamma, 1e-5, 1e-4);
    assert_close("group_norm_bwd dbeta", f(&args[5]), &dbeta, 1e-5, 1e-4);
}

pub fn layer_norm_fwd_bwd(r: &dyn Runner) {
    let (rows, d) = (9, 45);
    let x: Vec<f32> = rnd(rows * d, 70).iter().map(|v| v * 2.0 - 0.5).collect();
    let (gamma, beta) = (rnd(d, 71), rnd(d, 72));
    let dy = rnd(rows * d, 73);
    let (y, mean, rstd) = cpu::layer_norm_fwd(&x, rows, d, Some(&gamma), Some(&beta), 1e-5);
    let mut args = [
        KArg::F32s(x.clone()),
        KArg::F32s(vec![0.0; x.len()]),
        KArg::F32s(gamma.clone()),
        KArg::F32s(beta),
        KArg::F32s(vec![0.0; rows]),
        KArg::F32s(vec![0.0; rows]),
        KArg::I64(rows as i64),
        KArg::I32(d as i32),
        KArg::F32(1e-5),
    ];
    r.launch("layer_norm_fwd", (2, 1, 1), B256, &mut args);
    assert_close("layer_norm_fwd y", f(&args[1]), &y, 1e-5, 1e-4);
    assert_close("layer_norm_fwd rstd", f(&args[5]), &rstd, 1e-6, 1e-4);
    let (dx, dgamma, dbeta) = cpu::layer_norm_bwd(&x, &dy, &mean, &rstd, rows, d, Some(&gamma));
    let mut args = [
        KArg::F32s(x.clone()),
        KArg::F32s(dy.clone()),
        KArg::F32s(gamma),
        KArg::F32s(mean.clone()),
        KArg::F32s(rstd.clone()),
        KArg::F32s(vec![0.0; x.len()]),
        KArg::I64(rows as i64),
        KArg::I32(d as i32),
    ];
    r.launch("layer_norm_bwd_dx", (2, 1, 1), B256, &mut args);
    assert_close("layer_norm_bwd_dx", f(&args[5]), &dx, 1e-5, 1e-4);
    let mut args = [
        KArg::F32s(x),
        KArg::F32s(dy),
        KArg::F32s(mean),
        KArg::F32s(rstd),
        KArg::F32s(vec![0.0; d]),
        KArg::F32s(vec![0.0; d]),
        KArg::I64(rows as i64),
        KArg::I32(d as i32),
    ];
    r.launch("layer_norm_bwd_param", (1, 1, 1), B256, &mut args);
    assert_close("layer_norm dgamma", f(&args[4]), &dgamma, 1e-5, 1e-4);
    assert_close("layer_norm dbeta", f(&args[5]), &dbeta, 1e-5, 1e-4);
}

pub fn attention_fwd_bwd_self_cross_causal(r: &dyn Runner) {
    // D = 40 is SD 1.x's head width at the first level; the cross case has Lk != Lq and DV != D.
    for (bh, lq, lk, d, dv, causal) in [
        (2usize, 7usize, 7usize, 40usize, 40usize, false),
        (2, 5, 9, 40, 24, false),
        (1, 6, 6, 33, 33, true),
    ] {
        let g = AttnGeom {
            bh,
            lq,
            lk,
            d,
            dv,
            scale: 1.0 / (d as f64).sqrt(),
            causal,
        };
        let q = rnd(bh * lq * d, 80);
        let k = rnd(bh * lk * d, 81);
        let v = rnd(bh * lk * dv, 82);
        let d_o = rnd(bh * lq * dv, 83);
        let grid = (lq.div_ceil(4) as u32, bh as u32, 1);
        let mut args = [
            KArg::F32s(q.clone()),
            KArg::F32s(k.clone()),
            KArg::F32s(v.clone()),
            KArg::F32s(vec![0.0; bh * lq * dv]),
            KArg::F32s(vec![0.0; bh * lq]),
            KArg::I32(lq as i32),
            KArg::I32(lk as i32),
            KArg::I32(d as i32),
            KArg::I32(dv as i32),
            KArg::F32(g.scale as f32),
            KArg::I32(causal as i32),
        ];
        r.launch("attn_fwd", grid, (128, 1, 1), &mut args);
        let want = cpu::attention_fwd(&q, &k, &v, &g);
        let what = format!("attn_fwd bh{bh} lq{lq} lk{lk} d{d} dv{dv} causal {causal}");
        assert_close(&what, f(&args[3]), &want, 1e-5, 1e-4);
        let o = f(&args[3]).clone();
        let lse = f(&args[4]).clone();
        let mut dargs = [
            KArg::F32s(o),
            KArg::F32s(d_o.clone()),
            KArg::F32s(vec![0.0; bh * lq]),
            KArg::I64((bh * lq) as i64),
            KArg::I32(dv as i32),
        ];
        r.launch(
            "attn_bwd_dot",
            (((bh * lq).div_ceil(8)) as u32, 1, 1),
            B256,
            &mut dargs,
        );
        let delta = f(&dargs[2]).clone();
        let mut bargs = [
            KArg::F32s(q.clone()),
            KArg::F32s(k.clone()),
            KArg::F32s(v.clone()),
            KArg::F32s(d_o.clone()),
            KArg::F32s(lse),
            KArg::F32s(delta),
            KArg::F32s(vec![0.0; q.len()]),
            KArg::F32s(vec![0.0; k.len()]),
            KArg::F32s(vec![0.0; v.len()]),
            KArg::I32(lq as i32),
            KArg::I32(lk as i32),
            KArg::I32(d as i32),
            KArg::I32(dv as i32),
            KArg::F32(g.scale as f32),
            KArg::I32(causal as i32),
        ];
        r.launch("attn_bwd", grid, (128, 1, 1), &mut bargs);
        let (dq, dk, dvv) = cpu::attention_bwd(&q, &k, &v, &d_o, &g);
        assert_close(&format!("{what} dq"), f(&bargs[6]), &dq, 1e-5, 1e-4);
        assert_close(&format!("{what} dk"), f(&bargs[7]), &dk, 1e-5, 1e-4);
        assert_close(&format!("{what} dv"), f(&bargs[8]), &dvv, 1e-5, 1e-4);
    }
}

pub fn layout_upsample_permute_copy(r: &dyn Runner) {
    let (planes, h, w) = (3, 5, 3);
    let x = rnd(planes * h * w, 90);
    let mut a = [
        KArg::F32s(x.clone()),
        KArg::F32s(vec![0.0; planes * 4 * h * w]),
        KArg::I64(planes as i64),
        KArg::I32(h as i32),
        KArg::I32(w as i32),
    ];
    r.launch("upsample2x_fwd", (1, 1, 1), B256, &mut a);
    assert_close(
        "upsample2x_fwd",
        f(&a[1]),
        &cpu::upsample2x(&x, planes, h, w),
        0.0,
        0.0,
    );
    let dy = rnd(planes * 4 * h * w, 91);
    let mut a = [
        KArg::F32s(dy.clone()),
        KArg::F32s(vec![0.0; x.len()]),
        KArg::I64(planes as i64),
        KArg::I32(h as i32),
        KArg::I32(w as i32),
    ];
    r.launch("upsample2x_bwd", (1, 1, 1), B256, &mut a);
    assert_close(
        "upsample2x_bwd",
        f(&a[1]),
        &cpu::upsample2x_bwd(&dy, planes, h, w),
        1e-6,
        1e-6,
    );
    // Permute [2,3,5,4] by [0,2,1,3] (the attention head split).
    let shape = [2usize, 3, 5, 4];
    let perm = [0usize, 2, 1, 3];
    let xs = rnd(120, 92);
    let mut in_strides = [1usize; 4];
    for i in (0..3).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let mut bytes = Vec::new();
    bytes.extend(4i32.to_le_bytes());
    bytes.extend([0u8; 4]);
    for i in 0..6 {
        bytes.extend((perm.get(i).map_or(0, |&p| shape[p]) as i64).to_le_bytes());
    }
    for i in 0..6 {
        bytes.extend((perm.get(i).map_or(0, |&p| in_strides[p]) as i64).to_le_bytes());
    }
    let mut a = [
        KArg::F32s(xs.clone()),
        KArg::F32s(vec![0.0; 120]),
        KArg::I64(120),
        KArg::Raw(bytes),
    ];
    r.launch("permute_f32", (1, 1, 1), B256, &mut a);
    assert_close(
        "permute_f32",
        f(&a[1]),
        &cpu::permute(&xs, &shape, &perm),
        0.0,
        0.0,
    );
    // Concat [2, 3, 4] and [2, 2, 4] along axis 1 with two copies, then split one back out.
    let (p0, p1) = (rnd(24, 93), rnd(16, 94));
    let mut dst = vec![0.0f32; 40];
    for (src, inner, off) in [(&p0, 12usize, 0usize), (&p1, 8, 12)] {
        let mut a = [
            KArg::F32s(dst.clone()),
            KArg::F32s(src.clone()),
            KArg::I64(2),
            KArg::I64(inner as i64),
            KArg::I64(20),
            KArg::I64(off as i64),
            KArg::I32(1),
        ];
        r.launch("copy_block", (1, 1, 1), B256, &mut a);
        dst = f(&a[0]).clone();
    }
    assert_close(
        "copy_block concat",
        &dst,
        &cpu::concat(&[&p0, &p1], &[3, 2], 2, 4),
        0.0,
        0.0,
    );
    let mut a = [
        KArg::F32s(dst.clone()),
        KArg::F32s(vec![0.0; 16]),
        KArg::I64(2),
        KArg::I64(8),
        KArg::I64(20),
        KArg::I64(12),
        KArg::I32(0),
    ];
    r.launch("copy_block", (1, 1, 1), B256, &mut a);
    assert_close("copy_block split", f(&a[1]), &p1, 0.0, 0.0);
}

/// Keeps `Real` in use for the generic reference calls above (f32 compute type).
pub fn _real_is_f32() -> bool {
    <f32 as Real>::DTYPE == lora_cuda::DType::F32
}
