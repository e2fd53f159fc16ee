//! Linear algebra kernels: the exact SVD of a low-rank product, thin dense SVD, randomized SVD
//! (Halko–Martinsson–Tropp), the signed quantile used by the clamp, and basis completion.
//!
//! Everything is `f32`, as in the reference tools. All SVDs are thin (`SVDDC` with `JobSvd::Some`).

use ndarray::{s, Array1, Array2, ArrayView2, Axis, ShapeBuilder};
use ndarray_linalg::{Cholesky, Diag, JobSvd, QRInto, SVDDCInto, SolveTriangular, UPLO};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};

/// A thin singular value decomposition `A = U·diag(S)·Vt`, singular values descending.
#[derive(Debug, Clone)]
pub struct Svd {
    /// Left singular vectors, `m × p`.
    pub u: Array2<f32>,
    /// Singular values, length `p`, descending.
    pub s: Array1<f32>,
    /// Right singular vectors as rows, `p × n`.
    pub vt: Array2<f32>,
}

impl Svd {
    /// Number of singular triplets held.
    pub fn len(&self) -> usize {
        self.s.len()
    }

    /// True when no triplet is held (a zero-size matrix).
    pub fn is_empty(&self) -> bool {
        self.s.is_empty()
    }

    /// Keeps only the first `k` triplets (no-op when `k >= len`).
    pub fn truncate(&mut self, k: usize) {
        if k < self.len() {
            self.u = self.u.slice(s![.., ..k]).to_owned();
            self.s = self.s.slice(s![..k]).to_owned();
            self.vt = self.vt.slice(s![..k, ..]).to_owned();
        }
    }

    /// Reconstructs `U·diag(S)·Vt` (test helper; forms the dense matrix).
    pub fn reconstruct(&self) -> Array2<f32> {
        let us = &self.u * &self.s.view().insert_axis(Axis(0));
        us.dot(&self.vt)
    }
}

fn check_finite(a: ArrayView2<f32>, tensor: &str) -> Result<()> {
    if a.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite {
            tensor: tensor.to_string(),
        })
    }
}

fn empty_svd(m: usize, n: usize) -> Svd {
    Svd {
        u: Array2::zeros((m, 0)),
        s: Array1::zeros(0),
        vt: Array2::zeros((0, n)),
    }
}

/// Thin SVD of a dense matrix with LAPACK `gesdd` (`SVDDC`, `JobSvd::Some`).
pub fn dense_svd(a: ArrayView2<f32>, tensor: &str) -> Result<Svd> {
    let (m, n) = a.dim();
    if m == 0 || n == 0 {
        return Ok(empty_svd(m, n));
    }
    check_finite(a, tensor)?;
    // LAPACK wants a standard layout; `to_owned` gives one.
    let (u, s, vt) = a
        .to_owned()
        .svddc_into(JobSvd::Some)
        .map_err(|e| Error::linalg(tensor, "svd", e))?;
    let (u, vt) = match (u, vt) {
        (Some(u), Some(vt)) => (u, vt),
        _ => {
            return Err(Error::linalg(
                tensor,
                "svd",
                "LAPACK returned no singular vectors",
            ))
        }
    };
    Ok(Svd { u, s, vt })
}

/// Thin QR `a = Q·R` (`Q: m × min(m,n)`, `R: min(m,n) × n`).
pub fn thin_qr(a: ArrayView2<f32>, tensor: &str) -> Result<(Array2<f32>, Array2<f32>)> {
    // Column-major (LAPACK's own layout): a row-major input is factorised through its transpose, which
    // for tall-skinny matrices is about 4x slower (measured on SD1 factors).
    let mut f = Array2::zeros(a.raw_dim().f());
    f.assign(&a);
    f.qr_into().map_err(|e| Error::linalg(tensor, "qr", e))
}

/// Exact SVD of the product `up · down` (`up: m × r`, `down: r × n`) without forming the `m × n` matrix.
///
/// With thin QRs `up = Qa·Ra` and `downᵀ = Qb·Rb`, the product is `Qa·(Ra·Rbᵀ)·Qbᵀ`; the SVD of the
/// small core `Ra·Rbᵀ = Uc·S·Vcᵀ` gives `U = Qa·Uc`, `Vt = Vcᵀ·Qbᵀ`. Cost `O((m+n)·r²)` instead of
/// `O(m·n·min(m,n))`. At most `min(m, n, r)` triplets are returned; the remaining singular values of the
/// product are exactly zero.
pub fn lowrank_svd(up: ArrayView2<f32>, down: ArrayView2<f32>, tensor: &str) -> Result<Svd> {
    let core = LowRankCore::new(up, down, tensor)?;
    Ok(core.svd(core.len()))
}

/// The factored form of [`lowrank_svd`] before the singular vectors are formed: `Qa`, `Qb` and the SVD of
/// the core. The singular values are available at once ([`LowRankCore::singular_values`]); [`svd`](Self::svd)
/// forms only the first `k` vectors, which is all a truncation needs (`O((m+n)·r·k)` instead of `r²`).
#[derive(Debug, Clone)]
pub struct LowRankCore {
    left: Basis,
    right: Basis,
    core: Svd,
    m: usize,
    n: usize,
}

/// The orthonormal factor of a thin QR, explicit or implicit.
#[derive(Debug, Clone)]
enum Basis {
    /// `Q` from Householder QR (`m × r`).
    Q(Array2<f32>),
    /// `Q = A·R⁻¹` from Cholesky QR: `A` (`m × r`) and `R` (upper triangular, `r × r`, `f64`).
    Implicit(Array2<f32>, Array2<f64>),
}

impl Basis {
    /// `Q · X` for a small `X` (`r × k`).
    fn times(&self, x: ArrayView2<f32>) -> Array2<f32> {
        match self {
            Basis::Q(q) => q.dot(&x),
            Basis::Implicit(a, r) => {
                let rx = r
                    .solve_triangular(UPLO::Upper, Diag::NonUnit, &x.mapv(|v| v as f64))
                    .expect("R was checked to be well conditioned");
                a.dot(&rx.mapv(|v| v as f32))
            }
        }
    }
}

/// The upper triangle of `aᵀ·a` (`r × r`) for a standard-layout `a` (`m × r`), or of `a·aᵀ` when
/// `transposed` (then `a` is `r × m`), by one `dsyrk` (half the work of a general product); the strict
/// lower triangle is left zero (the Cholesky reads the upper one).
fn gram_upper(a: &Array2<f64>, transposed: bool) -> Array2<f64> {
    extern "C" {
        fn cblas_dsyrk(
            order: i32,
            uplo: i32,
            trans: i32,
            n: i32,
            k: i32,
            alpha: f64,
            a: *const f64,
            lda: i32,
            beta: f64,
            c: *mut f64,
            ldc: i32,
        );
    }
    const ROW_MAJOR: i32 = 101;
    const UPPER: i32 = 121;
    const TRANS: i32 = 112;
    const NO_TRANS: i32 = 111;
    let (m, r) = if transposed {
        (a.ncols(), a.nrows())
    } else {
        a.dim()
    };
    let fallback = || {
        if transposed {
            a.dot(&a.t())
        } else {
            a.t().dot(a)
        }
    };
    let mut c = Array2::<f64>::zeros((r, r));
    let (Some(src), Some(dst)) = (a.as_slice(), c.as_slice_mut()) else {
        return fallback();
    };
    if m > i32::MAX as usize || r > i32::MAX as usize {
        return fallback();
    }
    // SAFETY: `src` is `m × r` row-major (lda = r), or `r × m` row-major (lda = m) when transposed; `dst`
    // is `r × r` row-major (ldc = r); cblas_dsyrk reads `src` and writes the upper triangle of `dst` only,
    // within those bounds.
    unsafe {
        cblas_dsyrk(
            ROW_MAJOR,
            UPPER,
            if transposed { NO_TRANS } else { TRANS },
            r as i32,
            m as i32,
            1.0,
            src.as_ptr(),
            if transposed { m as i32 } else { r as i32 },
            0.0,
            dst.as_mut_ptr(),
            r as i32,
        );
    }
    c
}

/// Cholesky QR of `a` (`m × r`, `m ≥ r`): `R` with `aᵀa = RᵀR`, the Gram matrix formed in `f64`. `None`
/// when `a` is rank-deficient or too ill-conditioned for `Q = a·R⁻¹` to stay orthonormal in `f32`
/// (diagonal of `R` spread over more than 1e3), so that the caller falls back to Householder QR.
///
/// One level-3 product (`m·r²/…` flops) instead of Householder QR plus forming `Q` (about 4× the flops,
/// half of them in level-2 panel updates): 2–3× faster on SD1 modules.
fn cholesky_r(a: ArrayView2<f32>) -> Option<Array2<f64>> {
    let (m, r) = a.dim();
    if m < r || r == 0 {
        return None;
    }
    // A column-major `a` (the transpose of a row-major `down`) is widened as its row-major transpose and
    // its Gram matrix formed from that (`dsyrk` without transposition): no transposing copy.
    let gram = if a.is_standard_layout() || !a.t().is_standard_layout() {
        gram_upper(&a.as_standard_layout().mapv(|v| v as f64), false)
    } else {
        gram_upper(&a.t().mapv(|v| v as f64), true)
    };
    let mut rr = gram.cholesky(UPLO::Upper).ok()?;
    for i in 0..r {
        for j in 0..i {
            rr[[i, j]] = 0.0;
        }
    }
    let d: Vec<f64> = rr.diag().iter().map(|v| v.abs()).collect();
    let (lo, hi) = d.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    if !(lo > 0.0 && hi.is_finite() && lo >= hi * 1e-3) {
        return None;
    }
    Some(rr)
}

impl LowRankCore {
    /// Thin QRs of `up` (`m × r`) and `downᵀ` and the SVD of the small core.
    pub fn new(up: ArrayView2<f32>, down: ArrayView2<f32>, tensor: &str) -> Result<Self> {
        let (m, r) = up.dim();
        let (r2, n) = down.dim();
        if r != r2 {
            return Err(Error::shape(
                tensor,
                format!("up is {m}x{r} but down is {r2}x{n}"),
            ));
        }
        if m == 0 || n == 0 || r == 0 {
            return Ok(LowRankCore {
                left: Basis::Q(Array2::zeros((m, 0))),
                right: Basis::Q(Array2::zeros((n, 0))),
                core: empty_svd(0, 0),
                m,
                n,
            });
        }
        check_finite(up, tensor)?;
        check_finite(down, tensor)?;
        let (left, ra) = Self::factor(up, tensor)?;
        let (right, rb) = Self::factor(down.t(), tensor)?;
        let core_m = ra.dot(&rb.t());
        let core = dense_svd(core_m.view(), tensor)?;
        Ok(LowRankCore {
            left,
            right,
            core,
            m,
            n,
        })
    }

    /// Thin QR of a tall factor: Cholesky QR when well conditioned, Householder otherwise.
    fn factor(a: ArrayView2<f32>, tensor: &str) -> Result<(Basis, Array2<f32>)> {
        if let Some(r) = cholesky_r(a) {
            let r32 = r.mapv(|v| v as f32);
            return Ok((Basis::Implicit(a.to_owned(), r), r32));
        }
        let (q, r) = thin_qr(a, tensor)?;
        Ok((Basis::Q(q), r))
    }

    /// Number of singular triplets (`min(m, n, r)`).
    pub fn len(&self) -> usize {
        self.core.len()
    }

    /// True for a zero-size product.
    pub fn is_empty(&self) -> bool {
        self.core.is_empty()
    }

    /// All singular values, descending.
    pub fn singular_values(&self) -> &Array1<f32> {
        &self.core.s
    }

    /// The first `k` singular triplets (`k` capped at [`len`](Self::len)).
    pub fn svd(&self, k: usize) -> Svd {
        let k = k.min(self.len());
        if k == 0 {
            return empty_svd(self.m, self.n);
        }
        let u = self.left.times(self.core.u.slice(s![.., ..k]));
        let vt = self
            .right
            .times(self.core.vt.slice(s![..k, ..]).t())
            .reversed_axes()
            .as_standard_layout()
            .into_owned();
        Svd {
            u,
            s: self.core.s.slice(s![..k]).to_owned(),
            vt,
        }
    }
}

/// Parameters of the randomized SVD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsvdParams {
    /// Extra sketch columns beyond the target rank (`l = k + oversample`).
    pub oversample: usize,
    /// Number of power (subspace) iterations.
    pub power_iters: usize,
    /// Seed of the Gaussian test matrix (results are deterministic for a given seed).
    pub seed: u64,
}

impl Default for RsvdParams {
    /// `oversample = 16`, `power_iters = 3`: chosen so that the extra Frobenius error over the exact
    /// truncated SVD stays ≤ 1 % on LoRA-delta-like spectra (see the `rsvd_error_bound` test), with the
    /// sketch size also raised to at least `1.5·k` by [`randomized_svd`].
    fn default() -> Self {
        RsvdParams {
            oversample: 16,
            power_iters: 3,
            seed: 0x5eed_1a2b,
        }
    }
}

fn gaussian(rng: &mut StdRng, rows: usize, cols: usize) -> Array2<f32> {
    // Box–Muller; the distribution only needs to be rotation invariant-ish, exactness is irrelevant.
    let mut out = Array2::zeros((rows, cols));
    let mut spare: Option<f32> = None;
    for v in out.iter_mut() {
        if let Some(z) = spare.take() {
            *v = z;
            continue;
        }
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random::<f32>();
        let rad = (-2.0 * u1.ln()).sqrt();
        let th = std::f32::consts::TAU * u2;
        *v = rad * th.cos();
        spare = Some(rad * th.sin());
    }
    out
}

/// Sketch size used by [`randomized_svd`] for target rank `k`.
pub fn sketch_size(k: usize, params: &RsvdParams) -> usize {
    (k + params.oversample).max(k + k / 2)
}

/// Truncated SVD (top `k` triplets) of a dense matrix by the randomized range finder of Halko,
/// Martinsson and Tropp (2011) with power iterations and re-orthonormalisation at each step.
///
/// Falls back to the exact [`dense_svd`] when the sketch would not be much smaller than the matrix.
pub fn randomized_svd(
    a: ArrayView2<f32>,
    k: usize,
    params: &RsvdParams,
    tensor: &str,
) -> Result<Svd> {
    let (m, n) = a.dim();
    let p = m.min(n);
    if k == 0 || p == 0 {
        return Ok(empty_svd(m, n));
    }
    let l = sketch_size(k, params);
    if 2 * l >= p {
        let mut svd = dense_svd(a, tensor)?;
        svd.truncate(k);
        return Ok(svd);
    }
    check_finite(a, tensor)?;
    let mut rng = StdRng::seed_from_u64(params.seed);
    // Work on the orientation with the short side first so that Q is the small factor.
    let transposed = m > n;
    let a = if transposed { a.t() } else { a };
    let (rows, cols) = a.dim();
    let omega = gaussian(&mut rng, cols, l);
    let mut q = thin_qr(a.dot(&omega).view(), tensor)?.0;
    for _ in 0..params.power_iters {
        let z = thin_qr(a.t().dot(&q).view(), tensor)?.0;
        q = thin_qr(a.dot(&z).view(), tensor)?.0;
    }
    debug_assert_eq!(q.dim(), (rows, l));
    let b = q.t().dot(&a); // l × cols
    let small = dense_svd(b.view(), tensor)?;
    let u = q.dot(&small.u);
    let mut svd = Svd {
        u,
        s: small.s,
        vt: small.vt,
    };
    svd.truncate(k);
    if transposed {
        // A = (Aᵀ)ᵀ = (U S Vt)ᵀ = Vtᵀ S Uᵀ
        let Svd { u, s, vt } = svd;
        svd = Svd {
            u: vt.reversed_axes(),
            s,
            vt: u.reversed_axes(),
        };
    }
    Ok(svd)
}

/// The `q` quantile of `values` with linear interpolation between order statistics, as
/// `torch.quantile(x, q)` computes it (position `q·(n−1)`). Reorders `values`. Returns 0 for an empty slice.
pub fn quantile(values: &mut [f32], q: f64) -> f32 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = (pos - lo as f64) as f32;
    let (_, lo_val, upper) = values.select_nth_unstable_by(lo, |a, b| a.total_cmp(b));
    let lo_val = *lo_val;
    if frac == 0.0 || upper.is_empty() {
        return lo_val;
    }
    let hi_val = upper.iter().copied().fold(f32::INFINITY, f32::min);
    lo_val + (hi_val - lo_val) * frac
}

/// Appends `extra` random orthonormal rows, orthogonal to the (orthonormal) rows of `vt`.
///
/// Used when more components are asked for than the product has non-zero singular values: the
/// reference's full SVD then returns arbitrary orthonormal "noise" directions with singular value ≈ 0.
pub fn complete_rows(
    vt: ArrayView2<f32>,
    extra: usize,
    seed: u64,
    tensor: &str,
) -> Result<Array2<f32>> {
    let (m, n) = vt.dim();
    if extra == 0 {
        return Ok(vt.to_owned());
    }
    if m + extra > n {
        return Err(Error::shape(
            tensor,
            format!("cannot complete {m} rows of length {n} with {extra} more"),
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = gaussian(&mut rng, n, extra);
    // Two rounds of Gram–Schmidt against vt, then orthonormalise among themselves.
    for _ in 0..2 {
        let proj = vt.dot(&g);
        g = g - vt.t().dot(&proj);
        g = thin_qr(g.view(), tensor)?.0;
    }
    let mut out = Array2::zeros((m + extra, n));
    out.slice_mut(s![..m, ..]).assign(&vt);
    out.slice_mut(s![m.., ..]).assign(&g.t());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_mat(seed: u64, m: usize, n: usize) -> Array2<f32> {
        gaussian(&mut StdRng::seed_from_u64(seed), m, n)
    }

    fn rel_err(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        let d = (a - b).mapv(|v| v * v).sum().sqrt();
        d / b.mapv(|v| v * v).sum().sqrt().max(1e-30)
    }

    /// Both QR paths of the low-rank core: Cholesky QR on well-conditioned factors, Householder on
    /// rank-deficient (`[U, U]`) and ill-conditioned ones; each gives the dense SVD and orthonormal vectors.
    #[test]
    fn lowrank_core_paths() {
        let up = rand_mat(3, 300, 8);
        let down = rand_mat(4, 8, 500);
        let mut steep = up.clone();
        for (j, mut c) in steep.columns_mut().into_iter().enumerate() {
            c *= 10f32.powi(-(j as i32)); // condition ~1e7
        }
        let twice = ndarray::concatenate(Axis(1), &[up.view(), up.view()]).unwrap();
        let down2 = ndarray::concatenate(Axis(0), &[down.view(), down.view()]).unwrap();
        for (u, d, cholesky) in [
            (up.clone(), down.clone(), true),
            (steep, down.clone(), false),
            (twice, down2, false),
        ] {
            let core = LowRankCore::new(u.view(), d.view(), "t").unwrap();
            assert_eq!(matches!(core.left, Basis::Implicit(..)), cholesky);
            let dense = u.dot(&d);
            let k = 6;
            let a = core.svd(k);
            let mut b = dense_svd(dense.view(), "t").unwrap();
            b.truncate(k);
            for i in 0..k {
                assert!(
                    (a.s[i] - b.s[i]).abs() <= 1e-4 * b.s[0],
                    "{i}: {} vs {}",
                    a.s[i],
                    b.s[i]
                );
            }
            assert!(rel_err(&a.reconstruct(), &b.reconstruct()) < 1e-4);
            let eye = Array2::<f32>::eye(k);
            assert!(rel_err(&a.u.t().dot(&a.u), &eye) < 1e-4, "U orthonormal");
            assert!(rel_err(&a.vt.dot(&a.vt.t()), &eye) < 1e-4, "Vt orthonormal");
        }
    }

    #[test]
    fn lowrank_matches_dense() {
        let up = rand_mat(1, 40, 6);
        let down = rand_mat(2, 6, 90);
        let dense = up.dot(&down);
        let a = lowrank_svd(up.view(), down.view(), "t").unwrap();
        let b = dense_svd(dense.view(), "t").unwrap();
        assert_eq!(a.len(), 6);
        for i in 0..6 {
            assert!(
                (a.s[i] - b.s[i]).abs() <= 1e-4 * b.s[0],
                "{i}: {} vs {}",
                a.s[i],
                b.s[i]
            );
        }
        assert!(rel_err(&a.reconstruct(), &dense) < 1e-5);
    }

    #[test]
    fn lowrank_rank_larger_than_dims() {
        let up = rand_mat(3, 5, 12);
        let down = rand_mat(4, 12, 7);
        let a = lowrank_svd(up.view(), down.view(), "t").unwrap();
        assert_eq!(a.len(), 5);
        assert!(rel_err(&a.reconstruct(), &up.dot(&down)) < 1e-5);
    }

    #[test]
    fn lowrank_rejects_mismatch_and_nan() {
        let up = rand_mat(3, 5, 3);
        let down = rand_mat(4, 4, 7);
        assert!(matches!(
            lowrank_svd(up.view(), down.view(), "x"),
            Err(Error::Shape { .. })
        ));
        let mut down = rand_mat(4, 3, 7);
        down[[1, 1]] = f32::NAN;
        let e = lowrank_svd(up.view(), down.view(), "lora_x").unwrap_err();
        assert!(e.to_string().contains("lora_x"), "{e}");
    }

    #[test]
    fn quantile_matches_torch_linear() {
        // torch.quantile(torch.tensor([1.,2.,3.,4.,10.]), 0.99) = 4 + 0.96*6 = 9.76
        let mut v = vec![10.0, 3.0, 1.0, 4.0, 2.0];
        assert!((quantile(&mut v, 0.99) - 9.76).abs() < 1e-5);
        let mut v = vec![5.0, -1.0, 3.0];
        assert_eq!(quantile(&mut v, 0.5), 3.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
        let mut v = vec![2.0];
        assert_eq!(quantile(&mut v, 0.99), 2.0);
    }

    #[test]
    fn complete_rows_is_orthonormal() {
        let a = rand_mat(5, 3, 20);
        let (q, _) = thin_qr(a.t(), "t").unwrap();
        let vt = q.t().to_owned();
        let full = complete_rows(vt.view(), 4, 9, "t").unwrap();
        let g = full.dot(&full.t());
        for i in 0..7 {
            for j in 0..7 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((g[[i, j]] - want).abs() < 1e-5, "{i},{j}: {}", g[[i, j]]);
            }
        }
    }

    #[test]
    fn randomized_exact_on_low_rank() {
        let a = rand_mat(6, 300, 8).dot(&rand_mat(7, 8, 500));
        let svd = randomized_svd(a.view(), 8, &RsvdParams::default(), "t").unwrap();
        assert!(rel_err(&svd.reconstruct(), &a) < 1e-4);
        let svd_t = randomized_svd(a.t(), 8, &RsvdParams::default(), "t").unwrap();
        assert!(rel_err(&svd_t.reconstruct(), &a.t().to_owned()) < 1e-4);
    }
}
