//! Element types and the numeric trait the CPU kernels are written over.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// The element type of a tensor.
///
/// `F64` exists for gradient checks and other exact work on the CPU; the CUDA kernels use `F32`,
/// `BF16` and `F16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE double precision (CPU only; used by gradient checks).
    F64,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// IEEE half precision.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// True for the 16-bit types.
    pub fn is_half(self) -> bool {
        matches!(self, DType::BF16 | DType::F16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        };
        f.write_str(s)
    }
}

/// The real-number type a CPU kernel computes in: `f32` (the normal case) or `f64` (gradient checks).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Conversion from `f64` (rounding).
    fn from_f64(v: f64) -> Self;
    /// Conversion to `f64` (exact).
    fn to_f64(self) -> f64;
    /// e^x.
    fn exp(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// The error function (f64: accurate to ~1e-14; f32: Abramowitz–Stegun 7.1.26 refined, ~1e-7).
    fn erf(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Larger of two (NaN-ignoring like `f32::max`).
    fn max(self, o: Self) -> Self;
    /// Row-major GEMM `C = alpha·op(A)·op(B) + beta·C` through OpenBLAS (`cblas_sgemm` / `cblas_dgemm`).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: &[Self],
        lda: usize,
        b: &[Self],
        ldb: usize,
        beta: Self,
        c: &mut [Self],
        ldc: usize,
    );
}

/// Accurate erf in f64: Taylor series near 0, continued fraction for erfc in the tails.
pub(crate) fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    if ax < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = x * x;
        let mut term = x; // (-1)^n x^(2n+1)/n!
        let mut sum = x;
        let mut n = 0.0f64;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 * sum.abs().max(1e-300) {
                break;
            }
            if n > 200.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax > 6.0 {
        x.signum()
    } else {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) via modified Lentz.
        let tiny = 1e-300;
        let mut f = ax;
        if f == 0.0 {
            f = tiny;
        }
        let mut c = f;
        let mut d = 0.0;
        for i in 1..300 {
            let a = i as f64 / 2.0;
            d = ax + a * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = ax + a / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / f;
        x.signum() * (1.0 - erfc)
    }
}

/// e^x in f32 without a libm call, so that loops over it vectorize (softmax, SiLU, GELU): Cephes' `expf`
/// (x = k·ln2 + r with |r| ≤ ln2/2, a degree-6 polynomial for e^r, then 2^k built in the exponent bits),
/// within 2 ulp of the correctly rounded result. Below −87.33 (where e^x leaves the normal range) it returns
/// 0, above 88.72 infinity; NaN stays NaN. Branch-free: the edge cases are selects.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
    const HI: f32 = 88.722_83; // ln(f32::MAX)
                               // 1.5·2^23: adding and subtracting it rounds to the nearest integer (ties to even) in SSE2 code.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // k ∈ [−126, 128]: 2^k as two factors so that k = 128 (x just below HI) does not overflow the exponent.
    // k from t's mantissa (t = 1.5·2^23 + k exactly): integer lanes, where `k as i32` would be a scalar
    // saturating conversion that stops the loop from vectorizing.
    let ki = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let half = ki >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((ki - half + 127) as u32) << 23);
    let y = er * s1 * s2;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// erf in f32: Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7), enough for f32 activations.
pub(crate) fn erf_f32(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_74) * t
            + 0.254_829_6)
            * t
            * exp_f32(-a * a);
    s * y
}

mod blas {
    use std::os::raw::c_int;
    pub const ROW_MAJOR: c_int = 101;
    pub const NO_TRANS: c_int = 111;
    pub const TRANS: c_int = 112;
    #[link(name = "openblas")]
    extern "C" {
        pub fn cblas_sgemm(
            order: c_int,
            ta: c_int,
            tb: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        pub fn cblas_dgemm(
            order: c_int,
            ta: c_int,
            tb: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f64,
            a: *const f64,
            lda: c_int,
            b: *const f64,
            ldb: c_int,
            beta: f64,
            c: *mut f64,
            ldc: c_int,
        );
    }
}

/// Checks the slice lengths a row-major GEMM will touch, so the FFI call can never read out of bounds.
#[allow(clippy::too_many_arguments)]
fn gemm_bounds_ok(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    la: usize,
    lda: usize,
    lb: usize,
    ldb: usize,
    lc: usize,
    ldc: usize,
) -> bool {
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    let fits = |len: usize, rows: usize, cols: usize, ld: usize| {
        rows == 0 || cols == 0 || (ld >= cols && (rows - 1) * ld + cols <= len)
    };
    fits(la, ar, ac, lda)
        && fits(lb, br, bc, ldb)
        && fits(lc, m, n, ldc)
        && m < i32::MAX as usize
        && n < i32::MAX as usize
        && k < i32::MAX as usize
}

macro_rules! impl_real {
    ($t:ty, $dt:expr, $gemm:ident, $exp:expr, $erf:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const DTYPE: DType = $dt;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            fn gemm(
                ta: bool,
                tb: bool,
                m: usize,
                n: usize,
                k: usize,
                alpha: Self,
                a: &[Self],
                lda: usize,
                b: &[Self],
                ldb: usize,
                beta: Self,
                c: &mut [Self],
                ldc: usize,
            ) {
                assert!(
                    gemm_bounds_ok(ta, tb, m, n, k, a.len(), lda, b.len(), ldb, c.len(), ldc),
                    "internal error: gemm bounds (callers validate shapes first)"
                );
                if m == 0 || n == 0 {
                    return;
                }
                if k == 0 {
                    for i in 0..m {
                        for v in &mut c[i * ldc..i * ldc + n] {
                            *v = if beta == 0.0 { 0.0 } else { *v * beta };
                        }
                    }
                    return;
                }
                // SAFETY: the bounds were checked above; the pointers are valid for the lengths used.
                unsafe {
                    blas::$gemm(
                        blas::ROW_MAJOR,
                        if ta { blas::TRANS } else { blas::NO_TRANS },
                        if tb { blas::TRANS } else { blas::NO_TRANS },
                        m as i32,
                        n as i32,
                        k as i32,
                        alpha,
                        a.as_ptr(),
                        lda.max(1) as i32,
                        b.as_ptr(),
                        ldb.max(1) as i32,
                        beta,
                        c.as_mut_ptr(),
                        ldc.max(1) as i32,
                    );
                }
            }
        }
    };
}

impl_real!(f32, DType::F32, cblas_sgemm, exp_f32, erf_f32);
// f64 is the exact path (gradient checks): libm's exp.
impl_real!(f64, DType::F64, cblas_dgemm, f64::exp, erf_f64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from tables of erf.
        let known = [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.5, -0.966_105_146_475_310_7),
        ];
        for (x, e) in known {
            assert!((erf_f64(x) - e).abs() < 1e-13, "erf_f64({x})");
            assert!((erf_f32(x as f32) as f64 - e).abs() < 5e-7, "erf_f32({x})");
        }
    }

    #[test]
    fn exp_f32_is_within_two_ulp_everywhere() {
        // A dense sweep of the whole finite range, against the f64 exponential rounded to f32.
        let mut worst = 0.0f64;
        let mut x = -87.3f32;
        while x < 88.7 {
            let got = exp_f32(x);
            let want = (x as f64).exp();
            let ulp = (want as f32).to_bits() as i64 - got.to_bits() as i64;
            worst = worst.max(ulp.abs() as f64);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        // Right below the overflow edge the result is finite and accurate.
        let e = exp_f32(88.72);
        let want = (88.72f32 as f64).exp();
        assert!(
            e.is_finite() && ((e as f64) / want - 1.0).abs() < 3e-7,
            "{e} vs {want}"
        );
    }

    #[test]
    fn erf_is_continuous_at_branch_points() {
        // Across each branch point the change must be the slope 2/sqrt(pi)·exp(-x²) times the step.
        for x in [2.5f64, 6.0] {
            let h = 1e-7;
            let a = erf_f64(x - h);
            let b = erf_f64(x + h);
            let slope = std::f64::consts::FRAC_2_SQRT_PI * (-x * x).exp();
            assert!(
                ((b - a) - slope * 2.0 * h).abs() < 1e-14,
                "jump at {x}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn gemm_small_transposes() {
        // A 2x3, B 3x2
        let a = [1.0f64, 2., 3., 4., 5., 6.];
        let b = [7.0f64, 8., 9., 10., 11., 12.];
        let mut c = [0.0f64; 4];
        f64::gemm(false, false, 2, 2, 3, 1.0, &a, 3, &b, 2, 0.0, &mut c, 2);
        assert_eq!(c, [58., 64., 139., 154.]);
        // A^T stored as 3x2 and B^T stored as 2x3 give the same product.
        let at = [1.0f64, 4., 2., 5., 3., 6.];
        let bt = [7.0f64, 9., 11., 8., 10., 12.];
        let mut c2 = [0.0f64; 4];
        f64::gemm(true, true, 2, 2, 3, 1.0, &at, 2, &bt, 3, 0.0, &mut c2, 2);
        assert_eq!(c2, c);
    }
}
