//! The QR-core SVDs equal a dense reference SVD; the randomized SVD stays within 1 % of the optimum.

use lora_ops::linalg::{dense_svd, randomized_svd, RsvdParams};
use lora_ops::module::{resize_factors, svd_merge_factors, WeightedFactors, Workspace};
use lora_ops::rank::RankRule;
use lora_ops::shape::as_matrix;
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn randn(rng: &mut StdRng, shape: &[usize]) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        // sum of uniforms: cheap, roughly Gaussian
        (0..4).map(|_| rng.random::<f32>() - 0.5).sum::<f32>()
    })
}

fn fro(a: &Array2<f32>) -> f32 {
    a.iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
        .sqrt() as f32
}

/// Checks that factors (up·down) are the best rank-k approximation of `m`, as a dense SVD gives it.
fn assert_matches_dense(m: &Array2<f32>, up: &Array2<f32>, down: &Array2<f32>, k: usize) {
    let reference = dense_svd(m.view(), "ref").unwrap();
    let ours = up.dot(down);
    let s0 = reference.s[0].max(1e-30);
    // Singular values of our result equal the reference's first k.
    let ours_svd = dense_svd(ours.view(), "ours").unwrap();
    let kk = k.min(reference.s.len());
    for i in 0..kk {
        let d = (ours_svd.s[i] - reference.s[i]).abs();
        assert!(
            d <= 2e-4 * s0,
            "singular value {i}: {} vs {} (s0 {s0})",
            ours_svd.s[i],
            reference.s[i]
        );
    }
    // Truncation error equals the optimum.
    let tail: f64 = reference
        .s
        .iter()
        .skip(kk)
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    let err = fro(&(m - &ours));
    assert!(
        (err as f64 - tail.sqrt()).abs() <= 2e-4 * s0 as f64 * (1.0 + (k as f64).sqrt()),
        "err {err} vs {}",
        tail.sqrt()
    );
    // Where the spectrum has a clear gap at k, the approximation itself is unique: compare it.
    if kk < reference.s.len() && reference.s[kk - 1] - reference.s[kk] > 1e-2 * s0 {
        let mut r = reference.clone();
        r.truncate(kk);
        let rel = fro(&(&r.reconstruct() - &ours)) / fro(m).max(1e-30);
        assert!(rel < 5e-4, "reconstruction differs: {rel}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn resize_equals_dense_svd(
        seed in any::<u64>(),
        rank in 1usize..=128,
        new_rank_frac in 0.05f64..1.0,
        out in 8usize..200,
        inp in 8usize..160,
        conv in any::<bool>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (down_shape, up_shape) = if conv {
            (vec![rank, inp, 3, 3], vec![out, rank, 1, 1])
        } else {
            (vec![rank, inp], vec![out, rank])
        };
        let down = randn(&mut rng, &down_shape);
        let up = randn(&mut rng, &up_shape);
        let (d, u) = (as_matrix(&down, "d").unwrap(), as_matrix(&up, "u").unwrap());
        let new_rank = ((rank as f64 * new_rank_frac).ceil() as usize).max(1);
        let r = resize_factors(u, d, Some(rank as f32 / 2.0), RankRule::Fixed, new_rank, "m").unwrap();
        prop_assert_eq!(r.rank, new_rank);
        let k = new_rank.min(out).min(d.ncols());
        prop_assert_eq!(r.factors.down.dim(), (k, d.ncols()));
        prop_assert_eq!(r.factors.up.dim(), (out, k));
        prop_assert!((r.alpha - (rank as f32 / 2.0) / rank as f32 * new_rank as f32).abs() < 1e-6);
        let m = u.dot(&d);
        assert_matches_dense(&m, &r.factors.up, &r.factors.down, k);
    }

    #[test]
    fn svd_merge_equals_dense_svd(
        seed in any::<u64>(),
        ranks in proptest::collection::vec(1usize..=64, 1..4),
        new_rank in 1usize..=128,
        out in 8usize..160,
        inp in 8usize..120,
        conv in any::<bool>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let kk = if conv { 9 } else { 1 };
        let mut ups = Vec::new();
        let mut downs = Vec::new();
        let mut coefs = Vec::new();
        for &r in &ranks {
            ups.push(randn(&mut rng, &[out, r]).into_dimensionality::<ndarray::Ix2>().unwrap());
            downs.push(randn(&mut rng, &[r, inp * kk]).into_dimensionality::<ndarray::Ix2>().unwrap());
            coefs.push((rng.random::<f32>() - 0.5) * 4.0);
        }
        let inputs: Vec<WeightedFactors> = (0..ranks.len())
            .map(|i| WeightedFactors { up: ups[i].view(), down: downs[i].view(), coef: coefs[i] })
            .collect();
        let k = new_rank.min(out).min(inp);
        let mut ws = Workspace::new();
        let f = svd_merge_factors(&inputs, k, None, "m", &mut ws).unwrap();
        prop_assert_eq!(f.up.dim(), (out, k));
        prop_assert_eq!(f.down.dim(), (k, inp * kk));
        let mut m = Array2::<f32>::zeros((out, inp * kk));
        for i in 0..ranks.len() {
            m = m + ups[i].dot(&downs[i]) * coefs[i];
        }
        assert_matches_dense(&m, &f.up, &f.down, k);
        // The workspace is reusable: a second call gives the same answer.
        let g = svd_merge_factors(&inputs, k, None, "m", &mut ws).unwrap();
        prop_assert_eq!(f, g);
    }
}

/// A matrix `out × n` with prescribed singular values and random singular vectors.
fn with_spectrum(rng: &mut StdRng, out: usize, n: usize, s: &Array1<f32>) -> Array2<f32> {
    let p = s.len();
    let a = randn(rng, &[out, p])
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let b = randn(rng, &[n, p])
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let qa = lora_ops::linalg::thin_qr(a.view(), "a").unwrap().0;
    let qb = lora_ops::linalg::thin_qr(b.view(), "b").unwrap().0;
    (&qa * &s.view().insert_axis(ndarray::Axis(0))).dot(&qb.t())
}

/// Randomized SVD with the default parameters: the Frobenius error of the rank-k approximation is at most
/// 1 % above the exact truncated SVD's, over spectra from flat to steep (what model differences look like:
/// fine-tuning deltas have slowly decaying spectra, which is the hard case for sketching).
#[test]
fn rsvd_error_bound() {
    let mut rng = StdRng::seed_from_u64(42);
    let (out, n) = (320, 1280);
    let p = out;
    let spectra: Vec<(&str, Array1<f32>)> = vec![
        (
            "power -0.5",
            Array1::from_shape_fn(p, |i| ((i + 1) as f32).powf(-0.5)),
        ),
        (
            "power -1",
            Array1::from_shape_fn(p, |i| ((i + 1) as f32).powf(-1.0)),
        ),
        (
            "power -2",
            Array1::from_shape_fn(p, |i| ((i + 1) as f32).powf(-2.0)),
        ),
        (
            "exp",
            Array1::from_shape_fn(p, |i| (-(i as f32) / 20.0).exp()),
        ),
        (
            "low rank + noise",
            Array1::from_shape_fn(p, |i| {
                if i < 40 {
                    10.0 / (1.0 + i as f32)
                } else {
                    0.05
                }
            }),
        ),
    ];
    let mut worst = 0.0f64;
    let mut cases: Vec<(&str, Array2<f32>)> = spectra
        .iter()
        .map(|(name, s)| (*name, with_spectrum(&mut rng, out, n, s)))
        .collect();
    // Pure Gaussian noise (Marchenko–Pastur spectrum): the flattest spectrum a difference of two models can
    // plausibly have.
    cases.push((
        "gaussian noise",
        randn(&mut rng, &[out, n])
            .into_dimensionality::<ndarray::Ix2>()
            .unwrap(),
    ));
    for (name, a) in &cases {
        let exact = dense_svd(a.view(), name).unwrap();
        for k in [8usize, 32, 64] {
            let tail: f64 = exact
                .s
                .iter()
                .skip(k)
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            for transpose in [false, true] {
                let m = if transpose {
                    a.t().to_owned()
                } else {
                    a.clone()
                };
                let svd = randomized_svd(m.view(), k, &RsvdParams::default(), name).unwrap();
                assert_eq!(svd.len(), k);
                let err = fro(&(&m - &svd.reconstruct())) as f64;
                let ratio = err / tail;
                worst = worst.max(ratio);
                assert!(ratio <= 1.01, "{name}, k={k}, transposed={transpose}: error {err} vs optimum {tail} (ratio {ratio:.4})");
            }
        }
    }
    eprintln!("rsvd worst error ratio over the optimum: {worst:.5}");
}
