//! AdamW (torch semantics) and gradient clipping by global norm.

use std::collections::HashMap;

use crate::autograd::{Grads, ParamId, ParamStore};
use crate::dtype::DType;
use crate::error::{arg_err, shape_err, Result};
use crate::tensor::Tensor;

/// AdamW hyper-parameters; the defaults are torch's (`torch.optim.AdamW`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁ (default 0.9).
    pub beta1: f64,
    /// β₂ (default 0.999).
    pub beta2: f64,
    /// ε added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (default 0.01).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct State {
    step: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// AdamW with torch's update rule, state kept only for parameters that received a gradient (so never for
/// frozen ones). Master weights and moments are f32 (f64 parameters are updated in f64 precision of the
/// formula but stored back in their dtype).
///
/// For step `t` (1-based), learning rate `lr`, gradient `g`:
/// `p ← p·(1 − lr·wd)`; `m ← β₁m + (1−β₁)g`; `v ← β₂v + (1−β₂)g²`;
/// `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`.
pub struct AdamW {
    cfg: AdamWConfig,
    state: HashMap<ParamId, State>,
}

impl AdamW {
    /// A new optimizer; errors on betas outside [0, 1) or a negative ε / weight decay.
    pub fn new(cfg: AdamWConfig) -> Result<AdamW> {
        for (n, b) in [("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(arg_err(
                    &format!("AdamW {n}"),
                    format!("{b} is not in [0, 1)"),
                ));
            }
        }
        if cfg.eps < 0.0
            || cfg.weight_decay < 0.0
            || !cfg.eps.is_finite()
            || !cfg.weight_decay.is_finite()
        {
            return Err(arg_err(
                "AdamW eps/weight_decay",
                "must be finite and non-negative",
            ));
        }
        Ok(AdamW {
            cfg,
            state: HashMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> AdamWConfig {
        self.cfg
    }

    /// Number of parameters that have optimizer state.
    pub fn state_len(&self) -> usize {
        self.state.len()
    }

    /// The step count of a parameter (0 if it never had a gradient).
    pub fn step_count(&self, id: ParamId) -> u64 {
        self.state.get(&id).map_or(0, |s| s.step)
    }

    /// One update of every trainable parameter that has a gradient, with learning rate `lr`.
    pub fn step(&mut self, store: &mut ParamStore, grads: &Grads, lr: f64) -> Result<()> {
        let ids: Vec<ParamId> = grads.iter().map(|(id, _)| id).collect();
        self.step_params(store, grads, &ids, lr)
    }

    /// One update of the listed parameters only (a parameter group with its own learning rate, as
    /// sd-scripts' `unet_lr` / `text_encoder_lr`). Frozen parameters in the list are skipped.
    pub fn step_params(
        &mut self,
        store: &mut ParamStore,
        grads: &Grads,
        ids: &[ParamId],
        lr: f64,
    ) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(arg_err(
                "learning rate",
                format!("{lr} must be finite and non-negative"),
            ));
        }
        for &id in ids {
            let Some(g) = grads.get(id) else { continue };
            let p = store.get(id)?;
            if !p.trainable {
                continue;
            }
            if g.shape() != p.value.shape() {
                return Err(shape_err(
                    "AdamW",
                    format!(
                        "parameter {}: gradient {:?} for value {:?}",
                        p.name,
                        g.shape(),
                        p.value.shape()
                    ),
                ));
            }
            let device = p.value.device();
            if !device.is_cpu() {
                let new = crate::cuda::adamw_step(&p.value, g, self, id, lr)?;
                store.set_value(id, new)?;
                continue;
            }
            let dtype = p.value.dtype();
            let pv = p.value.to_vec_f64()?;
            let gv = g.to_vec_f64()?;
            let st = self.state.entry(id).or_insert_with(|| State {
                step: 0,
                m: vec![0.0; pv.len()],
                v: vec![0.0; pv.len()],
            });
            st.step += 1;
            let t = st.step as f64;
            let c = self.cfg;
            let bc1 = 1.0 - c.beta1.powf(t);
            let bc2 = 1.0 - c.beta2.powf(t);
            let step_size = lr / bc1;
            let bc2_sqrt = bc2.sqrt();
            let mut out = Vec::with_capacity(pv.len());
            for i in 0..pv.len() {
                let mut w = pv[i] * (1.0 - lr * c.weight_decay);
                let m = c.beta1 * st.m[i] as f64 + (1.0 - c.beta1) * gv[i];
                let v = c.beta2 * st.v[i] as f64 + (1.0 - c.beta2) * gv[i] * gv[i];
                st.m[i] = m as f32;
                st.v[i] = v as f32;
                let denom = v.sqrt() / bc2_sqrt + c.eps;
                w -= step_size * m / denom;
                out.push(w);
            }
            let shape = p.value.shape().to_vec();
            store.set_value(id, Tensor::from_vec_f64(out, &shape)?.to_dtype(dtype)?)?;
        }
        Ok(())
    }

    pub(crate) fn state_for_device(
        &mut self,
        id: ParamId,
        len: usize,
    ) -> (&mut Vec<f32>, &mut Vec<f32>, u64) {
        let st = self.state.entry(id).or_insert_with(|| State {
            step: 0,
            m: vec![0.0; len],
            v: vec![0.0; len],
        });
        st.step += 1;
        (&mut st.m, &mut st.v, st.step)
    }
}

/// The global L2 norm of all gradients (as `torch.nn.utils.clip_grad_norm_` computes it).
pub fn global_grad_norm(grads: &Grads) -> Result<f64> {
    let mut ss = 0.0f64;
    for (_, g) in grads.iter() {
        let v = g.to_vec_f64()?;
        ss += v.iter().map(|x| x * x).sum::<f64>();
    }
    Ok(ss.sqrt())
}

/// Clips gradients by global norm like `torch.nn.utils.clip_grad_norm_`: with `total` the global norm,
/// every gradient is multiplied by `min(1, max_norm / (total + 1e-6))`. Returns `total` (before clipping).
/// `max_norm = 0` disables clipping (sd-scripts' convention) and only measures.
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    if max_norm < 0.0 || !max_norm.is_finite() {
        return Err(arg_err(
            "max_grad_norm",
            format!("{max_norm} must be finite and non-negative"),
        ));
    }
    let total = global_grad_norm(grads)?;
    if max_norm > 0.0 {
        let coef = (max_norm / (total + 1e-6)).min(1.0);
        if coef < 1.0 {
            grads.scale(coef)?;
        }
    }
    Ok(total)
}

impl DType {
    #[allow(dead_code)]
    fn is_f64(self) -> bool {
        self == DType::F64
    }
}
