//! A kohya LoRA network over a U-Net and a text encoder: one [`LoraAdapter`] per target module, in its own
//! [`ParamStore`], applied at a signed multiplier without merging.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::config::{ClipConfig, LayerKind, UNetConfig};
use super::names::{lora_targets, LoraSpec, LoraTarget};
use crate::autograd::{Graph, ParamStore, Var};
use crate::error::{Error, Result};
use crate::lora::{LoraAdapter, LoraConfig, LoraContext, LoraKind};
use crate::ops::Conv2dCfg;
use crate::tensor::Tensor;

/// A LoRA network: adapters for every target module of a model, their parameters and a multiplier.
#[derive(Debug, Clone)]
pub struct LoraNetwork {
    /// The adapters' parameters (`{lora_name}.lora_down.weight`, `{lora_name}.lora_up.weight`).
    pub store: ParamStore,
    /// The adapters, in kohya's module order.
    pub adapters: Vec<LoraAdapter>,
    /// The modules they wrap, in the same order.
    pub targets: Vec<LoraTarget>,
    /// The strength the network is applied at (signed).
    pub multiplier: f64,
    index: HashMap<String, usize>,
}

/// The conv geometry of a module: 3×3 convs in the U-Net pad by 1, down-samplers also stride 2.
pub fn conv_cfg_for(path: &str, k: usize) -> Conv2dCfg {
    let stride = if path.contains("downsamplers") { 2 } else { 1 };
    Conv2dCfg {
        stride,
        padding: k / 2,
    }
}

fn kind_of(t: &LoraTarget) -> LoraKind {
    match t.layer.kind {
        LayerKind::Linear => LoraKind::Linear,
        LayerKind::Conv { k } => LoraKind::Conv {
            kernel: k,
            cfg: conv_cfg_for(&t.layer.path, k),
        },
    }
}

impl LoraNetwork {
    /// A freshly initialised network (down: kaiming-uniform, up: zero, as sd-scripts), seeded.
    pub fn new(
        unet: &UNetConfig,
        te: Option<&ClipConfig>,
        spec: &LoraSpec,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut store = ParamStore::new();
        let targets = lora_targets(unet, te, spec);
        let mut adapters = Vec::with_capacity(targets.len());
        for t in &targets {
            let cfg = LoraConfig::new(t.rank, t.alpha as f64);
            let a = match kind_of(t) {
                LoraKind::Linear => LoraAdapter::new_linear(
                    &mut store,
                    &t.lora_name,
                    t.layer.in_dim,
                    t.layer.out_dim,
                    cfg,
                    &mut rng,
                )?,
                LoraKind::Conv { kernel, cfg: cc } => LoraAdapter::new_conv(
                    &mut store,
                    &t.lora_name,
                    t.layer.in_dim,
                    t.layer.out_dim,
                    kernel,
                    cc,
                    cfg,
                    &mut rng,
                )?,
            };
            adapters.push(a);
        }
        Ok(Self::assemble(store, adapters, targets))
    }

    fn assemble(store: ParamStore, adapters: Vec<LoraAdapter>, targets: Vec<LoraTarget>) -> Self {
        let index = adapters
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        LoraNetwork {
            store,
            adapters,
            targets,
            multiplier: 1.0,
            index,
        }
    }

    /// A network from stored modules: `(name, down, up, alpha)` with down/up as f32 tensors in kohya shapes.
    /// Every name must be a module of the given model; ranks are read from the tensors. `file` names the
    /// source in errors.
    pub fn from_modules(
        unet: &UNetConfig,
        te: Option<&ClipConfig>,
        modules: Vec<(String, Tensor, Tensor, Option<f32>)>,
        file: &str,
    ) -> Result<Self> {
        // Every module a LoRA could have (conv included), to resolve names.
        let all = lora_targets(
            unet,
            te,
            &LoraSpec {
                network_dim: 1,
                network_alpha: 1.0,
                conv_dim: Some(1),
                conv_alpha: 1.0,
                train_text_encoder: true,
            },
        );
        let by_name: HashMap<&str, &LoraTarget> =
            all.iter().map(|t| (t.lora_name.as_str(), t)).collect();
        let mut store = ParamStore::new();
        let mut adapters = Vec::new();
        let mut targets = Vec::new();
        let mut unknown = Vec::new();
        for (name, down, up, alpha) in modules {
            let Some(&t) = by_name.get(name.as_str()) else {
                unknown.push(name);
                continue;
            };
            let rank = down.shape().first().copied().unwrap_or(0);
            let mut t = t.clone();
            t.rank = rank;
            t.alpha = alpha.unwrap_or(rank as f32);
            let want_down = t.down_shape();
            let want_up = t.up_shape();
            // SD2-style 2-D weights on 1×1 convs are accepted by reshaping (merge_lora squeezes them too).
            let down = if down.shape() != want_down.as_slice()
                && down.numel() == want_down.iter().product::<usize>()
            {
                down.reshape(&want_down)?
            } else {
                down
            };
            let up = if up.shape() != want_up.as_slice()
                && up.numel() == want_up.iter().product::<usize>()
            {
                up.reshape(&want_up)?
            } else {
                up
            };
            if down.shape() != want_down.as_slice() || up.shape() != want_up.as_slice() {
                return Err(Error::Shape {
                    op: format!("LoRA file {file}, module {name}"),
                    msg: format!(
                        "lora_down {:?} / lora_up {:?}, but the model's layer needs {:?} / {:?}",
                        down.shape(),
                        up.shape(),
                        want_down,
                        want_up
                    ),
                });
            }
            let cfg = LoraConfig::new(rank, t.alpha as f64);
            adapters.push(LoraAdapter::from_tensors(
                &mut store,
                &name,
                down,
                up,
                kind_of(&t),
                cfg,
            )?);
            targets.push(t);
        }
        if !unknown.is_empty() {
            unknown.sort();
            let shown: Vec<&str> = unknown.iter().take(5).map(String::as_str).collect();
            return Err(Error::InvalidArgument {
                what: format!("LoRA file {file}"),
                msg: format!(
                    "{} module(s) do not exist in this model (a LoRA for another architecture?): {}{}",
                    unknown.len(),
                    shown.join(", "),
                    if unknown.len() > 5 { ", ..." } else { "" }
                ),
            });
        }
        Ok(Self::assemble(store, adapters, targets))
    }

    /// The adapter for a kohya module name.
    pub fn adapter(&self, lora_name: &str) -> Option<&LoraAdapter> {
        self.index.get(lora_name).map(|&i| &self.adapters[i])
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// True when the network has no modules.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// Marks every parameter trainable or frozen.
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        let ids: Vec<_> = self.store.ids().collect();
        for id in ids {
            self.store.set_trainable(id, trainable)?;
        }
        Ok(())
    }

    /// `(name, down, up, alpha)` for every module, the form files are written from.
    pub fn modules(&self) -> Result<Vec<(String, Tensor, Tensor, f32)>> {
        self.adapters
            .iter()
            .map(|a| {
                Ok((
                    a.name.clone(),
                    self.store.value(a.down)?.clone(),
                    self.store.value(a.up)?.clone(),
                    a.cfg.alpha as f32,
                ))
            })
            .collect()
    }
}

/// The linear layer `lora_name` (`x·wᵀ + b`) with every network's adapter for it. When exactly one adapter
/// applies and it has no dropout to draw, layer and adapter run as one fused op ([`Graph::lora_linear`]: the
/// same numbers, less memory and one pass less); otherwise the base layer, then each adapter in turn.
pub(crate) fn linear_with_loras(
    nets: &[&LoraNetwork],
    lora_name: &str,
    g: &mut Graph,
    x: Var,
    w: Var,
    b: Option<Var>,
    ctx: &mut LoraContext,
) -> Result<Var> {
    let mut active = nets
        .iter()
        .filter(|n| n.multiplier != 0.0)
        .filter_map(|n| n.adapter(lora_name).map(|a| (*n, a)));
    if let (Some((net, a)), None) = (active.next(), active.next()) {
        if a.fusable(ctx) {
            let d = g.param(&net.store, a.down)?;
            let u = g.param(&net.store, a.up)?;
            return g.lora_linear(x, w, b, d, u, net.multiplier * a.cfg.scale());
        }
    }
    let y = g.linear(x, w, b)?;
    apply_loras(nets, lora_name, g, x, y, ctx)
}

/// Adds every network's adapter for `lora_name` (if any) to `base_out`.
pub(crate) fn apply_loras(
    nets: &[&LoraNetwork],
    lora_name: &str,
    g: &mut Graph,
    x: Var,
    mut base_out: Var,
    ctx: &mut LoraContext,
) -> Result<Var> {
    for net in nets {
        if net.multiplier == 0.0 {
            continue;
        }
        if let Some(a) = net.adapter(lora_name) {
            let saved = ctx.multiplier;
            ctx.multiplier = net.multiplier;
            let r = a.apply(g, &net.store, x, base_out, ctx);
            ctx.multiplier = saved;
            base_out = r?;
        }
    }
    Ok(base_out)
}
