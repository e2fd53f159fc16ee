//! SVD-based LoRA resize, merge, difference and extraction on ndarray + OpenBLAS: the library behind the
//! `resize_lora`, `svd_merge_lora`, `merge_lora` and `extract_lora_from_models` tools, computing what
//! kohya-ss sd-scripts computes (spec `sdscripts-compat.md` §2–§7) without forming `out × in` matrices
//! where the math does not need them.
//!
//! ```
//! use lora_core::{LoraFile, LoraModule, Metadata};
//! use lora_ops::{resize, svd_merge, DynamicMethod, ResizeOptions, SvdMergeOptions};
//! use ndarray::{ArrayD, IxDyn};
//!
//! # fn main() -> lora_ops::Result<()> {
//! // A rank-8 linear module 320 -> 640 with alpha 4.
//! let f = |i: usize| ((i * 7919) % 101) as f32 / 101.0 - 0.5;
//! let down = ArrayD::from_shape_fn(IxDyn(&[8, 320]), |d| f(d[0] * 320 + d[1]));
//! let up = ArrayD::from_shape_fn(IxDyn(&[640, 8]), |d| f(d[0] * 8 + d[1] + 5));
//! let name = "lora_unet_down_blocks_0_attentions_0_proj_in";
//! let lora = LoraFile::new(vec![LoraModule::new(name, down, up, Some(4.0))?], Metadata::new());
//!
//! // Resize to rank 4: alpha keeps alpha/rank (4/8 · 4 = 2).
//! let (small, report) = resize(&lora, &ResizeOptions { new_rank: 4, ..Default::default() })?;
//! assert_eq!(small.modules[0].rank(), 4);
//! assert_eq!(small.modules[0].alpha, Some(2.0));
//! assert_eq!(small.metadata.get("ss_network_dim"), Some("4"));
//! assert!(report.modules[0].stats.fro_retained > 0.5);
//!
//! // Dynamic rank: keep 99 % of the Frobenius norm (at most rank 8).
//! let opts = ResizeOptions { new_rank: 8, dynamic: Some((DynamicMethod::SvFro, 0.99)), ..Default::default() };
//! let (dynamic, _) = resize(&lora, &opts)?;
//! assert!(dynamic.modules[0].rank() <= 8);
//!
//! // Difference of a LoRA with itself is zero: svd_merge with ratios 1, -1.
//! let diff = svd_merge(&[&lora, &lora], &SvdMergeOptions { ratios: vec![1.0, -1.0], ..Default::default() })?;
//! assert!(diff.modules[0].up.iter().all(|v| v.abs() < 1e-4));
//! # Ok(()) }
//! ```
//!
//! # Design
//! * **Exact low-rank SVD.** A LoRA delta `U·D` has rank ≤ r. Thin QRs `U = Qa·Ra`, `Dᵀ = Qb·Rb` and the SVD of
//!   the r×r core `Ra·Rbᵀ` give the exact singular triplets ([`linalg::lowrank_svd`]); svd_merge stacks the
//!   scaled factors of all inputs and does the same. Cost `O((out+in)·r²)` per module instead of a dense SVD.
//!   The QRs are Cholesky QRs (`f64` Gram matrix by one `dsyrk`, `Q` kept implicit as `U·Ra⁻¹`), with
//!   Householder QR as the fallback for rank-deficient or ill-conditioned factors.
//! * **Bounded memory.** The tools read inputs through [`LoraSource`] (each module read with positioned reads
//!   and converted to `f32` when it is processed) and write through [`save_streamed`] /
//!   [`resize_to_file`] (module by module), so peak memory stays below 2× the input size.
//! * **Randomized SVD for extraction** ([`linalg::randomized_svd`], Halko–Martinsson–Tropp with 3 power
//!   iterations and a sketch of `max(k+16, 1.5k)`): at most 1 % more Frobenius error than the exact truncated
//!   SVD, measured in `tests/svd_props.rs`.
//! * **Rank rules** ([`rank`]) copied from `resize_lora.py` with their `f32` comparisons and `sv_ratio`'s `+1`,
//!   checked against sd-scripts' own outputs (`tests/sdscripts.rs`).
//! * **Two API levels**: one call per operation ([`resize()`], [`svd_merge()`], [`merge_loras`],
//!   [`merge_into_checkpoint`], [`extract()`]) and per-module functions with a reusable [`module::Workspace`]
//!   ([`module::resize_factors`], [`module::svd_merge_factors`], [`module::extract_factors`]).
//! * **Parallel and streamed**: modules run on rayon with OpenBLAS single-threaded ([`SingleThreadedBlas`]);
//!   checkpoints are read with positioned reads and written tensor by tensor ([`ckpt_io`]), atomically.
//! * Numbers differ from sd-scripts only by rounding and by the sign convention of singular vectors, which
//!   moves svd_merge's quantile clamp (spec §11.1): by up to a few percent, as much as it moves between two
//!   LAPACK builds running sd-scripts itself (`tests/sdscripts.rs` checks against sd-scripts' own outputs).
//! * `--lbws` layer-block weights for svd_merge ([`lbw`]).
#![warn(missing_docs)]

// Links OpenBLAS/LAPACK for ndarray's `blas` feature too.
extern crate ndarray_linalg;

pub mod ckpt_io;
mod common;
pub mod error;
pub mod extract;
pub mod lbw;
pub mod linalg;
pub mod lora_merge;
pub mod model_merge;
pub mod modelspec;
pub mod module;
pub mod rank;
pub mod resize;
pub mod save;
pub mod shape;
pub mod source;
pub mod svd_merge;

pub use common::SingleThreadedBlas;
pub use error::{Error, Result};
pub use extract::{extract, extract_files, extract_modules, ExtractOptions, ExtractReport};
pub use lbw::LayerBlockWeights;
pub use lora_merge::{merge_loras, merge_loras_encoded, LoraMergeOptions};
pub use model_merge::{merge_into_checkpoint, ModelFamily, ModelMergeOptions, ModelMergeReport};
pub use rank::{DynamicMethod, RankRule};
pub use resize::{resize, resize_to_file, ResizeOptions, ResizeReport};
pub use save::{save_streamed, EncodedLora};
pub use source::{LoraSource, ModuleSource};
pub use svd_merge::{svd_merge, svd_merge_encoded, SvdMergeOptions};
