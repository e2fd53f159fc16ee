//! Per-module operations on factor pairs (the low-level API for callers that loop over modules).
//!
//! Every function takes 2-D views: a LoRA `up` (`out × r`) and `down` (`r × in·kh·kw`); a conv module is
//! passed reshaped (see [`crate::shape::ModuleShape`]). Nothing here forms an `out × in` matrix except
//! [`extract_factors`], whose input *is* the dense difference.

use ndarray::{s, Array2, ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::linalg::{complete_rows, quantile, randomized_svd, LowRankCore, RsvdParams, Svd};
use crate::rank::{padded_singular_values, select_rank, ModuleStats, RankRule};

/// Scratch buffers reused across modules by [`svd_merge_factors`] and [`clamp_factors`].
#[derive(Debug, Default)]
pub struct Workspace {
    up_stack: Vec<f32>,
    down_stack: Vec<f32>,
    values: Vec<f32>,
}

impl Workspace {
    /// An empty workspace; buffers grow to the largest module seen.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A factor pair `up · down` (`up: out × k`, `down: k × n`).
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    /// `out × k`.
    pub up: Array2<f32>,
    /// `k × n`.
    pub down: Array2<f32>,
}

impl Factors {
    /// The rank `k`.
    pub fn rank(&self) -> usize {
        self.down.nrows()
    }
}

/// The result of [`resize_factors`].
#[derive(Debug, Clone)]
pub struct Resized {
    /// New factors, singular values folded into `up` (`up = U·S`, `down = Vt`).
    pub factors: Factors,
    /// The new alpha (`f32(old_alpha / old_rank) · new_rank`, or `new_rank` without an old alpha).
    pub alpha: f32,
    /// The chosen rank (the tensors have `min(rank, out, n)` rows, see [`resize_factors`]).
    pub rank: usize,
    /// Verbose statistics over all singular values.
    pub stats: ModuleStats,
}

/// A deterministic seed from a tensor name (for the random directions of basis completion).
pub(crate) fn name_seed(name: &str) -> u64 {
    // FNV-1a, stable across runs and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fixes the arbitrary sign of each singular pair: the entry of largest magnitude of each `Vt` row (the first
/// one on ties) is made positive, flipping the matching `U` column with it. The product is unchanged; the
/// outputs become deterministic across LAPACK builds, and so does the sign-dependent quantile clamp (spec
/// §11.1). `scripts/ops_make_goldens.py` applies the same convention.
pub fn normalize_signs(svd: &mut Svd) {
    for j in 0..svd.len() {
        let row = svd.vt.row(j);
        let mut best = 0usize;
        for (i, v) in row.iter().enumerate() {
            if v.abs() > row[best].abs() {
                best = i;
            }
        }
        if !row.is_empty() && row[best] < 0.0 {
            svd.vt.row_mut(j).mapv_inplace(|v| -v);
            svd.u.column_mut(j).mapv_inplace(|v| -v);
        }
    }
}

/// Turns a (possibly short) SVD into `k` factor rows: `up = U[:, :k]·S[:k]`, `down = Vt[:k]`, completing
/// `down` with orthonormal directions (and `up` with zero columns) when the product has fewer than `k`
/// non-zero singular values. `k` must not exceed `min(out, n)`.
fn factors_from_svd(mut svd: Svd, k: usize, out: usize, n: usize, tensor: &str) -> Result<Factors> {
    normalize_signs(&mut svd);
    let have = svd.len().min(k);
    if have == k && svd.u.dim() == (out, k) && svd.vt.dim() == (k, n) {
        // The usual case: the SVD's own arrays become the factors (no copies).
        let mut up = svd.u;
        up *= &svd.s.insert_axis(Axis(0));
        return Ok(Factors { up, down: svd.vt });
    }
    let mut up = Array2::zeros((out, k));
    let us = &svd.u.slice(s![.., ..have]) * &svd.s.slice(s![..have]).insert_axis(Axis(0));
    up.slice_mut(s![.., ..have]).assign(&us);
    let down = if have < k {
        complete_rows(
            svd.vt.slice(s![..have, ..]),
            k - have,
            name_seed(tensor),
            tensor,
        )?
    } else {
        svd.vt.slice(s![..k, ..]).to_owned()
    };
    debug_assert_eq!(down.dim(), (k, n));
    Ok(Factors { up, down })
}

fn check_pair(up: ArrayView2<f32>, down: ArrayView2<f32>, tensor: &str) -> Result<()> {
    if up.ncols() != down.nrows() {
        return Err(Error::shape(
            tensor,
            format!(
                "lora_up has rank {} but lora_down has rank {}",
                up.ncols(),
                down.nrows()
            ),
        ));
    }
    Ok(())
}

/// Resizes one module (`resize_lora.py`, spec §4.3): exact SVD of `up·down` through [`crate::linalg::lowrank_svd`],
/// rank chosen by `rule` capped at `max_rank`, new alpha keeping `alpha/rank`.
///
/// `alpha` is the module's old alpha (`None` when the file has none: scale 1). As in the reference, the
/// fixed rank is *not* capped at the old rank; extra components have singular value 0. The tensors are
/// capped at `min(out, n)` rows, while the alpha uses the uncapped rank (the reference does the same).
pub fn resize_factors(
    up: ArrayView2<f32>,
    down: ArrayView2<f32>,
    alpha: Option<f32>,
    rule: RankRule,
    max_rank: usize,
    tensor: &str,
) -> Result<Resized> {
    check_pair(up, down, tensor)?;
    let (out, n) = (up.nrows(), down.ncols());
    let old_rank = down.nrows();
    if old_rank == 0 {
        return Err(Error::shape(tensor, "rank 0 module"));
    }
    let core = LowRankCore::new(up, down, tensor)?;
    let full = padded_singular_values(&core.singular_values().to_vec(), out.min(n));
    let rank = select_rank(&full, rule, max_rank);
    let alpha = match alpha {
        // torch: f32 tensor alpha / int rank → f32; times int rank → f32.
        Some(a) => (a / old_rank as f32) * rank as f32,
        None => rank as f32,
    };
    let stats = ModuleStats::new(&full, rank);
    let k = rank.min(out.min(n));
    let factors = factors_from_svd(core.svd(k), k, out, n, tensor)?;
    Ok(Resized {
        factors,
        alpha,
        rank,
        stats,
    })
}

/// One input of [`svd_merge_factors`]: a factor pair and its coefficient `ratio · alpha / rank`.
#[derive(Debug, Clone, Copy)]
pub struct WeightedFactors<'a> {
    /// `out × r`.
    pub up: ArrayView2<'a, f32>,
    /// `r × n`.
    pub down: ArrayView2<'a, f32>,
    /// `ratio · alpha / r` (signed).
    pub coef: f32,
}

/// SVD merge of one module (`svd_merge_lora.py`, spec §3): the exact SVD of `Σ coefᵢ·upᵢ·downᵢ`, computed
/// from the stacked factors `[c₁U₁ | c₂U₂ | …] · [D₁; D₂; …]`, truncated to `rank` (the caller applies
/// `min(new_rank, in_channels, out_channels)`), then clamped at the signed `clamp_quantile` of all values
/// (`None`: no clamp).
pub fn svd_merge_factors(
    inputs: &[WeightedFactors<'_>],
    rank: usize,
    clamp_quantile: Option<f64>,
    tensor: &str,
    ws: &mut Workspace,
) -> Result<Factors> {
    let Some(first) = inputs.first() else {
        return Err(Error::InvalidArgument(format!(
            "{tensor}: no input to merge"
        )));
    };
    let (out, n) = (first.up.nrows(), first.down.ncols());
    let mut total = 0;
    for inp in inputs {
        check_pair(inp.up, inp.down, tensor)?;
        if inp.up.nrows() != out || inp.down.ncols() != n {
            return Err(Error::shape(
                tensor,
                format!(
                    "inputs disagree on the weight shape: {}x{} vs {out}x{n}",
                    inp.up.nrows(),
                    inp.down.ncols()
                ),
            ));
        }
        total += inp.down.nrows();
    }
    let mut up_buf = std::mem::take(&mut ws.up_stack);
    let mut down_buf = std::mem::take(&mut ws.down_stack);
    // Every element is assigned below: only growth is zero-filled, not each module's whole stack.
    up_buf.resize(out * total, 0.0);
    up_buf.truncate(out * total);
    down_buf.resize(total * n, 0.0);
    down_buf.truncate(total * n);
    let mut up_stack = Array2::from_shape_vec((out, total), up_buf).expect("sized above");
    let mut down_stack = Array2::from_shape_vec((total, n), down_buf).expect("sized above");
    let mut at = 0;
    for inp in inputs {
        let r = inp.down.nrows();
        let c = inp.coef;
        up_stack
            .slice_mut(s![.., at..at + r])
            .zip_mut_with(&inp.up, |d, &v| *d = v * c);
        down_stack.slice_mut(s![at..at + r, ..]).assign(&inp.down);
        at += r;
    }
    let k = rank.min(out.min(n));
    let core = LowRankCore::new(up_stack.view(), down_stack.view(), tensor);
    ws.up_stack = up_stack.into_raw_vec_and_offset().0;
    ws.down_stack = down_stack.into_raw_vec_and_offset().0;
    let svd = core?.svd(k);
    let mut f = factors_from_svd(svd, k, out, n, tensor)?;
    if let Some(q) = clamp_quantile {
        clamp_factors(&mut f, q, ws);
    }
    Ok(f)
}

/// Clamps `up` and `down` to `[-hi, hi]`, `hi` being the signed `q` quantile of all their values
/// (`torch.quantile(cat(up.flatten(), down.flatten()), q)`). Returns `hi`.
pub fn clamp_factors(f: &mut Factors, q: f64, ws: &mut Workspace) -> f32 {
    ws.values.clear();
    ws.values.extend(f.up.iter().copied());
    ws.values.extend(f.down.iter().copied());
    let hi = quantile(&mut ws.values, q);
    let lo = -hi;
    let clamp = |v: &mut f32| *v = v.max(lo).min(hi);
    f.up.map_inplace(clamp);
    f.down.map_inplace(clamp);
    hi
}

/// Extraction of one module from a dense difference `delta` (`out × n`, spec §5.3): top-`rank` SVD by
/// [`randomized_svd`] (exact dense SVD for small matrices), `up = U·S`, `down = Vt`, then the quantile clamp.
/// The caller applies `min(dim, in_channels, out_channels)` to `rank`.
pub fn extract_factors(
    delta: ArrayView2<f32>,
    rank: usize,
    clamp_quantile: Option<f64>,
    params: &RsvdParams,
    tensor: &str,
    ws: &mut Workspace,
) -> Result<Factors> {
    let (out, n) = delta.dim();
    let k = rank.min(out.min(n));
    let mut p = *params;
    p.seed ^= name_seed(tensor);
    let svd = randomized_svd(delta, k, &p, tensor)?;
    let mut f = factors_from_svd(svd, k, out, n, tensor)?;
    if let Some(q) = clamp_quantile {
        clamp_factors(&mut f, q, ws);
    }
    Ok(f)
}

/// The delta of a module, `m · scale · (up · down)` (dense, `out × n`), added to `weight` in place.
///
/// `merge_lora.py` evaluates `W + (m·(U@D))·scale`; one GEMM with coefficient `m·scale` differs from
/// that by at most a rounding step per element.
pub fn add_delta(
    weight: &mut ndarray::ArrayViewMut2<f32>,
    up: ArrayView2<f32>,
    down: ArrayView2<f32>,
    m: f32,
    scale: f32,
    tensor: &str,
) -> Result<()> {
    check_pair(up, down, tensor)?;
    if weight.dim() != (up.nrows(), down.ncols()) {
        return Err(Error::shape(
            tensor,
            format!(
                "LoRA delta is {}x{} but the model weight is {}x{}",
                up.nrows(),
                down.ncols(),
                weight.nrows(),
                weight.ncols()
            ),
        ));
    }
    // One GEMM straight into the weight: W ← W + (m·scale)·U·D.
    ndarray::linalg::general_mat_mul(m * scale, &up, &down, 1.0, weight);
    Ok(())
}
