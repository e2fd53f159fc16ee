//! Property tests for invariants of the CPU reference.

use lora_cuda::cpu;
use lora_cuda::ops;
use lora_cuda::{Real, Tensor};
use proptest::prelude::*;

fn naive(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                c[i * n + j] += av * bv;
            }
        }
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn gemm_matches_naive_for_any_shape_and_transpose(m in 1usize..9, n in 1usize..9, k in 0usize..9, ta: bool, tb: bool, seed in 0u64..1000) {
        let a: Vec<f64> = (0..m * k).map(|i| ((i as u64 * 31 + seed) % 17) as f64 - 8.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i as u64 * 7 + seed) % 13) as f64 - 6.0).collect();
        let mut c = vec![0.0; m * n];
        f64::gemm(ta, tb, m, n, k, 1.0, &a, if ta { m } else { k }, &b, if tb { k } else { n }, 0.0, &mut c, n);
        prop_assert_eq!(c, naive(ta, tb, m, n, k, &a, &b));
    }

    #[test]
    fn broadcast_and_sum_to_are_adjoint(d0 in 1usize..4, d1 in 1usize..4, d2 in 1usize..5, mask in 0u8..8) {
        // <broadcast(b), g> == <b, sum_to(g)> for every broadcastable b shape.
        let out = [d0, d1, d2];
        let bsh: Vec<usize> = out.iter().enumerate().map(|(i, &d)| if mask & (1 << i) != 0 { 1 } else { d }).collect();
        let nb: usize = bsh.iter().product();
        let n: usize = out.iter().product();
        let b: Vec<f64> = (0..nb).map(|i| i as f64 * 0.5 - 1.0).collect();
        let g: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let zeros = vec![0.0; n];
        let bb = cpu::broadcast_binary(&zeros, &out, &b, &bsh, &out, |x, y| x + y);
        let lhs: f64 = bb.iter().zip(&g).map(|(x, y)| x * y).sum();
        let st = cpu::sum_to_shape(&g, &out, &bsh);
        let rhs: f64 = b.iter().zip(&st).map(|(x, y)| x * y).sum();
        prop_assert!((lhs - rhs).abs() < 1e-9);
    }

    #[test]
    fn split_inverts_concat(outer in 1usize..4, inner in 1usize..4, s0 in 0usize..4, s1 in 1usize..4) {
        let a: Vec<f64> = (0..outer * s0 * inner).map(|i| i as f64).collect();
        let b: Vec<f64> = (0..outer * s1 * inner).map(|i| -(i as f64) - 1.0).collect();
        let c = cpu::concat(&[&a, &b], &[s0, s1], outer, inner);
        let parts = cpu::split(&c, &[s0, s1], outer, inner);
        prop_assert_eq!(&parts[0], &a);
        prop_assert_eq!(&parts[1], &b);
    }

    #[test]
    fn softmax_rows_are_distributions(rows in 1usize..5, d in 1usize..40, scale in 0.1f32..30.0) {
        let x: Vec<f32> = (0..rows * d).map(|i| ((i as f32) * 1.3).sin() * scale).collect();
        let t = Tensor::from_vec(x, &[rows, d]).unwrap();
        let y = ops::softmax(&t).unwrap().to_vec_f32().unwrap();
        for r in y.chunks(d) {
            let s: f32 = r.iter().sum();
            prop_assert!((s - 1.0).abs() < 1e-5);
            prop_assert!(r.iter().all(|&v| (0.0..=1.0).contains(&v)));
        }
    }

    #[test]
    fn permute_then_inverse_is_identity(a in 1usize..4, b in 1usize..4, c in 1usize..4, p in 0usize..6) {
        let perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let perm = perms[p];
        let t = Tensor::from_vec((0..a * b * c).map(|i| i as f32).collect(), &[a, b, c]).unwrap();
        let y = ops::permute(&t, &perm).unwrap();
        let back = ops::permute(&y, &ops::inverse_permutation(&perm)).unwrap();
        prop_assert_eq!(back.to_vec_f32().unwrap(), t.to_vec_f32().unwrap());
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let a = Tensor::zeros(&[2, 3], lora_cuda::DType::F32);
    let b = Tensor::zeros(&[4, 5], lora_cuda::DType::F32);
    assert!(ops::matmul(&a, &b, false, false).is_err());
    assert!(ops::binary(&a, &b, ops::BinaryOp::Add).is_err());
    assert!(ops::conv2d(&a, &b, None, Default::default()).is_err());
    assert!(ops::group_norm(&a, 4, None, None, 1e-5).is_err());
    assert!(ops::split(&a, 1, &[1, 1]).is_err());
    assert!(ops::permute(&a, &[0, 0]).is_err());
    assert!(ops::embedding(&a, &[5]).is_err());
    assert!(ops::geglu(&Tensor::zeros(&[2, 3], lora_cuda::DType::F32)).is_err());
    let x = Tensor::zeros(&[1, 2, 3, 3], lora_cuda::DType::F32);
    let w = Tensor::zeros(&[2, 2, 5, 5], lora_cuda::DType::F32);
    assert!(ops::conv2d(&x, &w, None, Default::default()).is_err());
    assert!(ops::conv2d(
        &x,
        &Tensor::zeros(&[2, 2, 3, 3], lora_cuda::DType::F32),
        None,
        ops::Conv2dCfg {
            stride: 0,
            padding: 0
        }
    )
    .is_err());
}
