//! Rank selection of `resize_lora.py` (`rank_resize` and its index functions) and the verbose statistics.
//!
//! The rules are copied exactly from `resize_lora.py` (checked against its own outputs in
//! `tests/sdscripts.rs`), including its quirks: comparisons in `f32`, a sequential `f32` running sum, and
//! `sv_ratio`'s `+1` (it keeps one more singular value than those above `S₀/param`).
//!
//! Where the spec (§4.4) and the reference differ, the reference wins: `index_sv_cumulative` / `index_sv_fro`
//! return `clamp(i*, 0, n − 1)` with `i*` the first index reaching the target, so the new rank `i* + 1` is
//! exactly the number of singular values needed (the spec's `clamp(i* + 1, 1, n − 1) + 1` is one too many);
//! and every index is clamped below at 0, not 1 (`max(0, min(index, len(S) - 1))`), so `sv_ratio` with
//! `param < 1` gives rank 1.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// Singular values at or below this are treated as a zero matrix (rank 1), as `MIN_SV` in the reference.
pub const MIN_SV: f32 = 1e-6;

/// The dynamic rank methods of `resize_lora.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DynamicMethod {
    /// Keep singular values larger than `S₀ / param`.
    SvRatio,
    /// Keep enough singular values to reach `param` of the cumulative sum of `S`.
    SvCumulative,
    /// Keep enough singular values to reach `param` of the Frobenius norm (`param²` of `ΣS²`).
    SvFro,
}

impl DynamicMethod {
    /// The reference's name (`sv_ratio`, `sv_cumulative`, `sv_fro`).
    pub fn as_str(self) -> &'static str {
        match self {
            DynamicMethod::SvRatio => "sv_ratio",
            DynamicMethod::SvCumulative => "sv_cumulative",
            DynamicMethod::SvFro => "sv_fro",
        }
    }
}

impl fmt::Display for DynamicMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DynamicMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "sv_ratio" => Ok(DynamicMethod::SvRatio),
            "sv_cumulative" => Ok(DynamicMethod::SvCumulative),
            "sv_fro" => Ok(DynamicMethod::SvFro),
            other => Err(Error::InvalidArgument(format!(
                "unknown dynamic method {other:?} (expected sv_ratio, sv_cumulative or sv_fro)"
            ))),
        }
    }
}

/// How the new rank of a module is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RankRule {
    /// Always the maximum rank (`--new_rank` / `--new_conv_rank`), even above the old rank.
    Fixed,
    /// A dynamic method with its parameter, capped by the maximum rank.
    Dynamic(DynamicMethod, f32),
}

fn clamp_index(i: usize, n: usize) -> usize {
    // The reference's `max(0, min(index, len(S) - 1))`.
    i.min(n.saturating_sub(1))
}

/// First index `i` with `cum[i] >= target` over the sequential `f32` running sum of `values` divided by
/// `f32(total)` (`searchsorted(..., side="left")`); `values.len()` when none reaches it.
fn cumulative_index(values: &[f32], total: f32, target: f32) -> usize {
    let mut run = 0.0f32;
    for (i, v) in values.iter().enumerate() {
        run += *v;
        if run / total >= target {
            return i;
        }
    }
    values.len()
}

/// `index_sv_cumulative`: `clamp(i*, 0, n − 1)`, `i*` the first index whose cumulative share reaches
/// `target`. `s` must hold all `n` singular values.
pub fn index_sv_cumulative(s: &[f32], target: f32) -> usize {
    let total = s.iter().map(|&v| v as f64).sum::<f64>() as f32;
    clamp_index(cumulative_index(s, total, target), s.len())
}

/// `index_sv_fro`: the cumulative rule over `S²` with target `param²` (squared in `f64`, compared in `f32`).
pub fn index_sv_fro(s: &[f32], target: f32) -> usize {
    let sq: Vec<f32> = s.iter().map(|v| v * v).collect();
    let total = sq.iter().map(|&v| v as f64).sum::<f64>() as f32;
    let t = ((target as f64) * (target as f64)) as f32;
    clamp_index(cumulative_index(&sq, total, t), s.len())
}

/// `index_sv_ratio`: `clamp(#{S_i > S₀/param}, 0, n − 1)` with the threshold computed in `f32`.
pub fn index_sv_ratio(s: &[f32], ratio: f32) -> usize {
    let Some(&s0) = s.first() else { return 0 };
    let thr = s0 / ratio;
    clamp_index(s.iter().filter(|&&v| v > thr).count(), s.len())
}

/// The new rank per `rank_resize`: dynamic index `+ 1` or the fixed rank,
/// then 1 for a zero matrix (`S₀ ≤ 1e-6`), else capped at `max_rank`.
///
/// `s` must hold all `n = min(out, in·k·k)` singular values of the module (pad with zeros beyond the
/// factor rank; see [`padded_singular_values`]).
pub fn select_rank(s: &[f32], rule: RankRule, max_rank: usize) -> usize {
    let k = match rule {
        RankRule::Fixed => max_rank,
        RankRule::Dynamic(m, p) => {
            1 + match m {
                DynamicMethod::SvRatio => index_sv_ratio(s, p),
                DynamicMethod::SvCumulative => index_sv_cumulative(s, p),
                DynamicMethod::SvFro => index_sv_fro(s, p),
            }
        }
    };
    if s.first().is_none_or(|&s0| s0 <= MIN_SV) {
        1
    } else {
        k.min(max_rank)
    }
}

/// The singular values of a product with `s.len()` non-zero values padded with zeros to its full length
/// `n` (the reference runs a full SVD and sees `n` values, the tail being numerical noise).
pub fn padded_singular_values(s: &[f32], n: usize) -> Vec<f32> {
    let mut v = s.to_vec();
    if v.len() < n {
        v.resize(n, 0.0);
    }
    v
}

/// The verbose statistics of one resized module (spec §4.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModuleStats {
    /// `Σ|S[:k]| / Σ|S|`.
    pub sum_retained: f32,
    /// `sqrt(ΣS²[:k]) / sqrt(ΣS²)`.
    pub fro_retained: f32,
    /// `S₀ / S[k−1]` (infinite when `S[k−1]` is zero).
    pub max_ratio: f32,
    /// The chosen rank.
    pub new_rank: usize,
}

impl ModuleStats {
    /// Computes the statistics for rank `k` over all singular values `s`.
    pub fn new(s: &[f32], k: usize) -> ModuleStats {
        let k = k.min(s.len());
        let sum_all: f64 = s.iter().map(|v| v.abs() as f64).sum();
        let sum_k: f64 = s[..k].iter().map(|v| v.abs() as f64).sum();
        let sq_all: f64 = s.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let sq_k: f64 = s[..k].iter().map(|&v| (v as f64) * (v as f64)).sum();
        let max_ratio = if k == 0 { f32::NAN } else { s[0] / s[k - 1] };
        ModuleStats {
            sum_retained: (sum_k / sum_all) as f32,
            fro_retained: (sq_k.sqrt() / sq_all.sqrt()) as f32,
            max_ratio,
            new_rank: k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sv_ratio_threshold_is_strict() {
        // S0/param = 10/5 = 2: the value 2.0 is *not* above it, so c = 2 (10, 4), k = c + 1 = 3.
        let s = [10.0, 4.0, 2.0, 1.0, 0.5];
        assert_eq!(index_sv_ratio(&s, 5.0), 2);
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvRatio, 5.0), 64),
            3
        );
        // Just above the threshold counts.
        let s = [10.0, 4.0, 2.000_001, 1.0, 0.5];
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvRatio, 5.0), 64),
            4
        );
    }

    #[test]
    fn sv_ratio_clamps_to_n_minus_one() {
        let s = [1.0, 1.0, 1.0, 1.0];
        // all 4 above threshold → clamp(4, 1, 3) = 3, k = 4
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvRatio, 2.0), 64),
            4
        );
        // none above (param 1: the threshold is S0 itself, strict) → c = 0 → clamp(0, 0, 2) = 0 → k = 1
        // (the reference clamps below at 0: `max(0, min(index, len(S) - 1))`)
        let s = [3.0, 1.0, 0.5];
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvRatio, 1.0), 64),
            1
        );
    }

    #[test]
    fn sv_cumulative_exact_threshold() {
        // cum = [0.5, 0.9, 1.0] in f32 (9/10 rounds to f32(0.9)): searching 0.9 returns index 1 (the f32
        // comparison of the spec's example), so k = 1 + 1 = 2, the number of values needed.
        let s = [5.0, 4.0, 1.0];
        assert_eq!(index_sv_cumulative(&s, 0.9), 1);
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvCumulative, 0.9), 64),
            2
        );
        // A target just above the second cumulative value needs the third value: i* = 2 → k = 3.
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvCumulative, 0.91), 64),
            3
        );
        // target 0.5 is reached exactly by the first value: i* = 0 → k = 1
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvCumulative, 0.5), 64),
            1
        );
        let s = [5.0, 4.0, 1.0, 0.0, 0.0, 0.0];
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvCumulative, 0.9), 64),
            2
        );
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvCumulative, 0.95), 64),
            3
        );
        // A target never reached (f32 rounding of the total) gives searchsorted's n → clamp n − 1 → k = n.
        assert_eq!(index_sv_cumulative(&[1.0, 1.0, 1.0], 1.5), 2);
    }

    #[test]
    fn sv_fro_squares_the_target() {
        // S² = [9, 16·0=..]: use S = [3, 2, 1, 1] → S² = [9, 4, 1, 1], total 15.
        // param 0.8 → target 0.64 (f32 of 0.64 in double). cum = [0.6, 0.8667, ...] → i* = 1 → k = 2.
        let s = [3.0, 2.0, 1.0, 1.0];
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvFro, 0.8), 64),
            2
        );
        // cum[0] = 9/15 = 0.6 in f32; param = sqrt(0.6) → f32(param)² in double, rounded to f32, compared.
        let p = 0.6f64.sqrt() as f32;
        let t = ((p as f64) * (p as f64)) as f32;
        let c0 = 9.0f32 / 15.0f32;
        let expect_i = if c0 >= t { 0 } else { 1 };
        assert_eq!(index_sv_fro(&s, p), clamp_index(expect_i, 4));
    }

    #[test]
    fn caps_and_zero_matrix() {
        let s = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0];
        assert_eq!(
            select_rank(&s, RankRule::Dynamic(DynamicMethod::SvRatio, 100.0), 3),
            3
        );
        assert_eq!(
            select_rank(&s, RankRule::Fixed, 32),
            32,
            "fixed mode is not capped at the old rank"
        );
        let z = [1e-6, 0.0, 0.0];
        assert_eq!(select_rank(&z, RankRule::Fixed, 8), 1);
        assert_eq!(select_rank(&[], RankRule::Fixed, 8), 1);
    }

    #[test]
    fn stats() {
        let s = [4.0, 3.0, 0.0];
        let st = ModuleStats::new(&s, 1);
        assert!((st.sum_retained - 4.0 / 7.0).abs() < 1e-6);
        assert!((st.fro_retained - 0.8).abs() < 1e-6);
        assert_eq!(st.max_ratio, 1.0);
        assert!(ModuleStats::new(&s, 3).max_ratio.is_infinite());
    }

    #[test]
    fn parse_methods() {
        for m in [
            DynamicMethod::SvRatio,
            DynamicMethod::SvCumulative,
            DynamicMethod::SvFro,
        ] {
            assert_eq!(m.as_str().parse::<DynamicMethod>().unwrap(), m);
        }
        assert!("sv_x".parse::<DynamicMethod>().is_err());
    }
}
