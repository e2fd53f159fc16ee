//! The LoRA adapter `y = W·x + m·s·U·(D·x)` for linear and conv layers, with sd-scripts' dropouts
//! (`networks/lora.py`, spec §1.1).
//!
//! Training forward, with `lx = D·x` (for conv: `D` is a k×k conv with the original stride and padding,
//! `U` a 1×1 conv):
//! * module dropout: with probability `p_module` the adapter is skipped for this call (`y = W·x`);
//! * dropout: `lx = F.dropout(lx, p)` (inverted dropout);
//! * rank dropout: a mask `[batch, r]` of `rand > p_rank`, broadcast over the other axes, and the scale
//!   becomes `s / (1 − p_rank)`;
//! * `y = W·x + U·lx · m · s`, with the multiplier `m` settable per step and signed.
//!
//! Out of training (or with all dropouts off) it is exactly `W·x + m·s·U·D·x`. Gradients reach `D` and
//! `U` (trainable) but never `W` (frozen).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autograd::{Graph, ParamId, ParamStore, Var};
use crate::dtype::DType;
use crate::error::{arg_err, shape_err, Result};
use crate::ops::Conv2dCfg;
use crate::tensor::Tensor;

/// Rank, alpha and the dropouts of a LoRA network (sd-scripts' `network_dim`, `network_alpha`,
/// `network_dropout`, `rank_dropout`, `module_dropout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraConfig {
    /// The rank r.
    pub rank: usize,
    /// alpha; 0 means alpha = rank (scale 1).
    pub alpha: f64,
    /// Dropout on `D·x` (None: off).
    pub dropout: Option<f64>,
    /// Rank dropout (None: off).
    pub rank_dropout: Option<f64>,
    /// Module dropout (None: off).
    pub module_dropout: Option<f64>,
}

impl LoraConfig {
    /// Rank and alpha, dropouts off.
    pub fn new(rank: usize, alpha: f64) -> LoraConfig {
        LoraConfig {
            rank,
            alpha,
            dropout: None,
            rank_dropout: None,
            module_dropout: None,
        }
    }

    /// `alpha / rank` (alpha 0 means alpha = rank).
    pub fn scale(&self) -> f64 {
        let a = if self.alpha == 0.0 {
            self.rank as f64
        } else {
            self.alpha
        };
        a / self.rank as f64
    }

    fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(arg_err("LoRA rank", "must be at least 1"));
        }
        for (n, p) in [
            ("dropout", self.dropout),
            ("rank_dropout", self.rank_dropout),
            ("module_dropout", self.module_dropout),
        ] {
            if let Some(p) = p {
                if !(0.0..1.0).contains(&p) {
                    return Err(arg_err(
                        &format!("LoRA {n}"),
                        format!("{p} is not in [0, 1)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Per-step state shared by all adapters of a network: the signed multiplier, training mode, and the
/// random source of the dropouts.
#[derive(Debug, Clone)]
pub struct LoraContext {
    /// The multiplier m (negative values train/apply the opposite direction).
    pub multiplier: f64,
    /// Training mode: dropouts active.
    pub training: bool,
    /// Random source for the dropouts.
    pub rng: StdRng,
}

impl LoraContext {
    /// Training mode with multiplier 1 and a seeded random source.
    pub fn training(seed: u64) -> LoraContext {
        LoraContext {
            multiplier: 1.0,
            training: true,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Evaluation mode (no dropout) with the given multiplier.
    pub fn eval(multiplier: f64) -> LoraContext {
        LoraContext {
            multiplier,
            training: false,
            rng: StdRng::seed_from_u64(0),
        }
    }
}

/// The kind of layer an adapter wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraKind {
    /// A linear layer `[out, in]`.
    Linear,
    /// A conv layer with the base layer's kernel size, stride and padding.
    Conv {
        /// Kernel size of the base conv (and of `lora_down`).
        kernel: usize,
        /// Stride and padding of the base conv.
        cfg: Conv2dCfg,
    },
}

/// One LoRA adapter: `lora_down` (D) and `lora_up` (U) parameters in a [`ParamStore`].
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// The kohya module name (e.g. `lora_unet_down_blocks_0_attentions_0_proj_in`).
    pub name: String,
    /// `lora_down.weight`: `[r, in]` or `[r, in, k, k]`.
    pub down: ParamId,
    /// `lora_up.weight`: `[out, r]` or `[out, r, 1, 1]`.
    pub up: ParamId,
    /// Layer kind.
    pub kind: LoraKind,
    /// Rank, alpha, dropouts.
    pub cfg: LoraConfig,
}

impl LoraAdapter {
    /// A new adapter for a linear layer `in → out`, initialised as sd-scripts does: `lora_down` kaiming-uniform
    /// (a = √5, i.e. U(−1/√in, 1/√in)), `lora_up` zero. Parameters are f32 and trainable, named
    /// `{name}.lora_down.weight` / `{name}.lora_up.weight`.
    pub fn new_linear<R: Rng + ?Sized>(
        store: &mut ParamStore,
        name: &str,
        in_f: usize,
        out_f: usize,
        cfg: LoraConfig,
        rng: &mut R,
    ) -> Result<LoraAdapter> {
        cfg.validate()?;
        let b = 1.0 / (in_f.max(1) as f64).sqrt();
        let d = Tensor::rand_uniform(&[cfg.rank, in_f], -b, b, DType::F32, rng);
        let u = Tensor::zeros(&[out_f, cfg.rank], DType::F32);
        Self::from_tensors(store, name, d, u, LoraKind::Linear, cfg)
    }

    /// A new adapter for a conv layer `in → out` with kernel `k` and the base layer's stride/padding.
    #[allow(clippy::too_many_arguments)]
    pub fn new_conv<R: Rng + ?Sized>(
        store: &mut ParamStore,
        name: &str,
        in_c: usize,
        out_c: usize,
        kernel: usize,
        conv: Conv2dCfg,
        cfg: LoraConfig,
        rng: &mut R,
    ) -> Result<LoraAdapter> {
        cfg.validate()?;
        let b = 1.0 / ((in_c * kernel * kernel).max(1) as f64).sqrt();
        let d = Tensor::rand_uniform(&[cfg.rank, in_c, kernel, kernel], -b, b, DType::F32, rng);
        let u = Tensor::zeros(&[out_c, cfg.rank, 1, 1], DType::F32);
        Self::from_tensors(store, name, d, u, LoraKind::Conv { kernel, cfg: conv }, cfg)
    }

    /// An adapter from existing weights (e.g. loaded from a file).
    pub fn from_tensors(
        store: &mut ParamStore,
        name: &str,
        down: Tensor,
        up: Tensor,
        kind: LoraKind,
        cfg: LoraConfig,
    ) -> Result<LoraAdapter> {
        cfg.validate()?;
        let ok = match kind {
            LoraKind::Linear => {
                down.rank() == 2
                    && up.rank() == 2
                    && down.shape()[0] == cfg.rank
                    && up.shape()[1] == cfg.rank
            }
            LoraKind::Conv { kernel, .. } => {
                down.rank() == 4
                    && up.rank() == 4
                    && down.shape()[0] == cfg.rank
                    && down.shape()[2] == kernel
                    && down.shape()[3] == kernel
                    && up.shape()[1] == cfg.rank
                    && up.shape()[2] == 1
                    && up.shape()[3] == 1
            }
        };
        if !ok {
            return Err(shape_err(
                &format!("LoRA {name}"),
                format!(
                    "lora_down {:?} / lora_up {:?} do not fit rank {} and {kind:?}",
                    down.shape(),
                    up.shape(),
                    cfg.rank
                ),
            ));
        }
        let d = store.add(format!("{name}.lora_down.weight"), down, true)?;
        let u = store.add(format!("{name}.lora_up.weight"), up, true)?;
        Ok(LoraAdapter {
            name: name.to_string(),
            down: d,
            up: u,
            kind,
            cfg,
        })
    }

    /// True when this adapter, in this context, is exactly `W·x + m·s·U·D·x` on a linear layer: no dropout
    /// of any kind will be drawn (so it may run fused with its base layer, see [`Graph::lora_linear`]).
    pub fn fusable(&self, ctx: &LoraContext) -> bool {
        let no_dropout = self.cfg.dropout.is_none()
            && self.cfg.rank_dropout.is_none()
            && self.cfg.module_dropout.is_none();
        self.kind == LoraKind::Linear && (!ctx.training || no_dropout)
    }

    /// Adds the adapter's output to `base_out` (the frozen layer's output for the same input `x`).
    pub fn apply(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        x: Var,
        base_out: Var,
        ctx: &mut LoraContext,
    ) -> Result<Var> {
        if ctx.training {
            if let Some(p) = self.cfg.module_dropout {
                if ctx.rng.random::<f64>() < p {
                    return Ok(base_out);
                }
            }
        }
        let d = g.param(store, self.down)?;
        let u = g.param(store, self.up)?;
        let mut lx = match self.kind {
            LoraKind::Linear => g.linear(x, d, None)?,
            LoraKind::Conv { cfg, .. } => g.conv2d(x, d, None, cfg)?,
        };
        let mut scale = self.cfg.scale();
        if ctx.training {
            if let Some(p) = self.cfg.dropout {
                lx = g.dropout(lx, p, &mut ctx.rng)?;
            }
            if let Some(p) = self.cfg.rank_dropout {
                let sh = g.shape(lx)?;
                let batch = sh[0];
                let r = self.cfg.rank;
                let keep: Vec<f32> = (0..batch * r)
                    .map(|_| {
                        if ctx.rng.random::<f32>() > p as f32 {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                // [batch, r] → [batch, 1, r] for 3-D, [batch, r, 1, 1] for 4-D (lora.py).
                let mshape: Vec<usize> = match sh.len() {
                    3 => vec![batch, 1, r],
                    4 => vec![batch, r, 1, 1],
                    _ => vec![batch, r],
                };
                let dt = g.value(lx)?.dtype();
                let dev = g.value(lx)?.device();
                let mask = g.input(Tensor::from_f32_as(&keep, &mshape, dt)?.to_device(&dev)?);
                lx = g.mul(lx, mask)?;
                scale /= 1.0 - p;
            }
        }
        // m·s applied to the rank-r activation before `up` rather than to the full-width output
        // (the same product, U·(m·s·lx) = m·s·U·lx): a pass over an r-wide tensor instead of an out-wide
        // one, forward and backward.
        let lx = g.scale(lx, ctx.multiplier * scale)?;
        let up = match self.kind {
            LoraKind::Linear => g.linear(lx, u, None)?,
            LoraKind::Conv { .. } => g.conv2d(lx, u, None, Conv2dCfg::default())?,
        };
        g.add(base_out, up)
    }

    /// A frozen linear layer with this adapter: `x·Wᵀ + b + LoRA(x)`.
    pub fn linear(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        x: Var,
        w: Var,
        b: Option<Var>,
        ctx: &mut LoraContext,
    ) -> Result<Var> {
        let base = g.linear(x, w, b)?;
        self.apply(g, store, x, base, ctx)
    }

    /// A frozen conv layer with this adapter.
    pub fn conv2d(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        x: Var,
        w: Var,
        b: Option<Var>,
        ctx: &mut LoraContext,
    ) -> Result<Var> {
        let LoraKind::Conv { cfg, .. } = self.kind else {
            return Err(shape_err(
                &format!("LoRA {}", self.name),
                "conv2d called on a linear adapter",
            ));
        };
        let base = g.conv2d(x, w, b, cfg)?;
        self.apply(g, store, x, base, ctx)
    }

    /// The merged weight delta `m·s·U·D` in the base weight's shape (sd-scripts' `merge_to` math).
    pub fn delta_weight(&self, store: &ParamStore, multiplier: f64) -> Result<Tensor> {
        let d = store.value(self.down)?;
        let u = store.value(self.up)?;
        let r = self.cfg.rank;
        let d2 = d.reshape(&[r, d.numel() / r])?;
        let u2 = u.reshape(&[u.shape()[0], r])?;
        let prod = crate::ops::matmul(&u2, &d2, false, false)?;
        let mut shape = vec![u.shape()[0]];
        shape.extend_from_slice(&d.shape()[1..]);
        crate::ops::scale(&prod, multiplier * self.cfg.scale())?.reshape(&shape)
    }
}
