//! The Stable Diffusion U-Net and CLIP text encoder, written once over the [`Graph`] ops (so over every device).
//!
//! Forward passes follow diffusers' `UNet2DConditionModel` (SD 1.x: `ResnetBlock2D`, `Transformer2DModel` with
//! conv `proj_in`/`proj_out`, GEGLU feed-forward, nearest 2× upsampling, strided-conv downsampling,
//! flip-sin-to-cos timestep embedding) and transformers' `CLIPTextModel` (causal self-attention, quick-GELU,
//! final LayerNorm; the last hidden state is the U-Net's context). Every Linear/Conv layer looks up its kohya
//! name, so LoRA networks apply to any layer without merging.

use std::collections::BTreeMap;

use rand::Rng as _;

use super::config::{ClipConfig, LayerKind, UNetConfig};
use super::lora_net::{apply_loras, conv_cfg_for, linear_with_loras, LoraNetwork};
use super::names::lora_name;
use crate::autograd::{Graph, ParamId, ParamStore, Var};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::lora::LoraContext;
use crate::ops::Conv2dCfg;
use crate::tensor::Tensor;

/// Store-name prefix of the U-Net's parameters.
pub const UNET: &str = "unet.";
/// Store-name prefix of the text encoder's parameters.
pub const TE: &str = "te.";

/// The weights of a U-Net and a text encoder in one [`ParamStore`] (names `unet.{diffusers}` and
/// `te.{transformers}`), with their configs.
#[derive(Debug, Clone)]
pub struct SdModel {
    /// The U-Net's config.
    pub unet: UNetConfig,
    /// The text encoder's config.
    pub te: ClipConfig,
    /// All base weights.
    pub store: ParamStore,
}

/// sinusoidal timestep embedding, diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos=True,
/// downscale_freq_shift=0)`: `[cos(t·f), sin(t·f)]` with `f_i = exp(−ln(10000)·i/(dim/2))`.
pub fn timestep_embedding(timesteps: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut out = vec![0.0f32; timesteps.len() * dim];
    for (n, &t) in timesteps.iter().enumerate() {
        for i in 0..half {
            let exponent = -(10000f32).ln() * i as f32 / half as f32;
            let arg = t * exponent.exp();
            out[n * dim + i] = arg.cos();
            out[n * dim + half + i] = arg.sin();
        }
    }
    out
}

impl SdModel {
    /// Where the weights live (see [`ParamStore::to_device`]).
    pub fn device(&self) -> crate::Device {
        self.store.device()
    }

    /// A model with freshly initialised weights (torch's default init: U(±1/√fan_in) for Linear/Conv weights
    /// and biases, N(0, 0.02) embeddings, unit norms). All parameters are trainable.
    pub fn new_random(unet: UNetConfig, te: ClipConfig, seed: u64) -> Result<Self> {
        unet.validate()?;
        te.validate()?;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        let mut store = ParamStore::new();
        let mut fan_in: BTreeMap<String, usize> = BTreeMap::new();
        for l in unet
            .layers()
            .iter()
            .map(|l| (UNET, l))
            .chain(te.layers().iter().map(|l| (TE, l)))
            .map(|(p, l)| {
                let k = match l.kind {
                    LayerKind::Linear => 1,
                    LayerKind::Conv { k } => k * k,
                };
                (format!("{p}{}", l.path), l.in_dim * k)
            })
        {
            fan_in.insert(l.0, l.1);
        }
        let params = unet
            .parameters()
            .into_iter()
            .map(|(n, s)| (format!("{UNET}{n}"), s))
            .chain(
                te.parameters()
                    .into_iter()
                    .map(|(n, s)| (format!("{TE}{n}"), s)),
            );
        for (name, shape) in params {
            let numel: usize = shape.iter().product();
            let layer = name
                .rsplit_once('.')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default();
            let data: Vec<f32> = if name.ends_with("embedding.weight") {
                (0..numel).map(|_| 0.02 * normal(&mut rng)).collect()
            } else if let Some(&fi) = fan_in.get(&layer) {
                let b = 1.0 / (fi as f32).sqrt();
                (0..numel).map(|_| rng.random_range(-b..b)).collect()
            } else if name.ends_with(".weight") {
                vec![1.0; numel] // norm scale
            } else {
                vec![0.0; numel] // norm shift
            };
            store.add(name, Tensor::from_vec(data, &shape)?, true)?;
        }
        Ok(SdModel { unet, te, store })
    }

    /// A model from named tensors (`unet.*` and `te.*` store names), checking that every parameter the configs
    /// need is present with the right shape. `source` names the file in errors.
    pub fn from_tensors(
        unet: UNetConfig,
        te: ClipConfig,
        mut get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        unet.validate()?;
        te.validate()?;
        let mut store = ParamStore::new();
        let params = unet
            .parameters()
            .into_iter()
            .map(|(n, s)| (format!("{UNET}{n}"), s))
            .chain(
                te.parameters()
                    .into_iter()
                    .map(|(n, s)| (format!("{TE}{n}"), s)),
            );
        for (name, shape) in params {
            let t = get(&name, &shape)?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Shape {
                    op: format!("tensor {name}"),
                    msg: format!("shape {:?}, the config needs {shape:?}", t.shape()),
                });
            }
            store.add(name, t, true)?;
        }
        Ok(SdModel { unet, te, store })
    }

    /// Marks every base weight trainable (pretraining) or frozen (LoRA training, inference).
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        let ids: Vec<ParamId> = self.store.ids().collect();
        for id in ids {
            self.store.set_trainable(id, trainable)?;
        }
        Ok(())
    }

    /// Number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.store
            .ids()
            .filter_map(|id| self.store.value(id).ok().map(|t| t.numel()))
            .sum()
    }

    /// The U-Net: `x [N, C, H, W]` at timesteps `t` (one per sample), cross-attending to `context [N, L, D]`.
    pub fn unet_forward(
        &self,
        g: &mut Graph,
        nets: &[&LoraNetwork],
        ctx: &mut LoraContext,
        x: Var,
        timesteps: &[f32],
        context: Var,
    ) -> Result<Var> {
        let cfg = &self.unet;
        let n = g.shape(x)?[0];
        if timesteps.len() != n {
            return Err(Error::Shape {
                op: "unet_forward".into(),
                msg: format!("{} timesteps for batch {n}", timesteps.len()),
            });
        }
        let mut f = Fwd {
            g,
            store: &self.store,
            prefix: UNET,
            lora_prefix: "lora_unet",
            nets,
            ctx,
        };
        let c0 = cfg.block_out_channels[0];
        // Built on the host; goes where the input lives (the model's device).
        let dev = f.g.value(x)?.device();
        let temb_in = f
            .g
            .input(Tensor::from_vec(timestep_embedding(timesteps, c0), &[n, c0])?.to_device(&dev)?);
        let t1 = f.linear("time_embedding.linear_1", temb_in, true)?;
        let t1 = f.g.silu(t1)?;
        let temb = f.linear("time_embedding.linear_2", t1, true)?;
        let temb_act = f.g.silu(temb)?;

        let mut h = f.conv("conv_in", x, 3)?;
        let mut skips = vec![h];
        let nlev = cfg.block_out_channels.len();
        for i in 0..nlev {
            for j in 0..cfg.layers_per_block {
                h = f.resnet(cfg, &format!("down_blocks.{i}.resnets.{j}"), h, temb_act)?;
                if cfg.down_attention[i] {
                    h =
                        f.transformer(cfg, &format!("down_blocks.{i}.attentions.{j}"), h, context)?;
                }
                skips.push(h);
            }
            if i + 1 < nlev {
                h = f.conv(&format!("down_blocks.{i}.downsamplers.0.conv"), h, 3)?;
                skips.push(h);
            }
        }
        h = f.resnet(cfg, "mid_block.resnets.0", h, temb_act)?;
        h = f.transformer(cfg, "mid_block.attentions.0", h, context)?;
        h = f.resnet(cfg, "mid_block.resnets.1", h, temb_act)?;
        for i in 0..nlev {
            for j in 0..=cfg.layers_per_block {
                let skip = skips.pop().ok_or_else(|| Error::Shape {
                    op: "unet_forward".into(),
                    msg: "skip stack exhausted".into(),
                })?;
                h = f.g.concat(&[h, skip], 1)?;
                h = f.resnet(cfg, &format!("up_blocks.{i}.resnets.{j}"), h, temb_act)?;
                if cfg.up_attention(i) {
                    h = f.transformer(cfg, &format!("up_blocks.{i}.attentions.{j}"), h, context)?;
                }
            }
            if i + 1 < nlev {
                h = f.g.upsample_nearest2x(h)?;
                h = f.conv(&format!("up_blocks.{i}.upsamplers.0.conv"), h, 3)?;
            }
        }
        h = f.group_norm_silu("conv_norm_out", h, cfg.norm_num_groups, cfg.norm_eps as f64)?;
        f.conv("conv_out", h, 3)
    }

    /// The text encoder: token ids (each row the context length) → last hidden state `[N, L, D]`.
    pub fn te_forward(
        &self,
        g: &mut Graph,
        nets: &[&LoraNetwork],
        ctx: &mut LoraContext,
        ids: &[Vec<u32>],
    ) -> Result<Var> {
        let cfg = &self.te;
        let n = ids.len();
        let l = ids.first().map(|r| r.len()).unwrap_or(0);
        if n == 0 || l == 0 || l > cfg.max_positions || ids.iter().any(|r| r.len() != l) {
            return Err(Error::Shape {
                op: "te_forward".into(),
                msg: format!(
                    "{n} token rows of length {l}; each must have the same length ≤ {}",
                    cfg.max_positions
                ),
            });
        }
        if let Some(bad) = ids
            .iter()
            .flatten()
            .find(|&&i| i as usize >= cfg.vocab_size)
        {
            return Err(Error::InvalidArgument {
                what: "token ids".into(),
                msg: format!("id {bad} ≥ vocabulary size {}", cfg.vocab_size),
            });
        }
        let d = cfg.hidden;
        let mut f = Fwd {
            g,
            store: &self.store,
            prefix: TE,
            lora_prefix: "lora_te",
            nets,
            ctx,
        };
        let flat: Vec<usize> = ids.iter().flatten().map(|&i| i as usize).collect();
        let tok_table = f.p("text_model.embeddings.token_embedding.weight")?;
        let tok = f.g.embedding(tok_table, &flat)?;
        let tok = f.g.reshape(tok, &[n, l, d])?;
        let pos_table = f.p("text_model.embeddings.position_embedding.weight")?;
        let pos: Vec<usize> = (0..l).collect();
        let pos = f.g.embedding(pos_table, &pos)?;
        let mut h = f.g.add(tok, pos)?;
        let heads = cfg.heads;
        let hd = d / heads;
        let eps = cfg.layer_norm_eps as f64;
        for i in 0..cfg.layers {
            let p = format!("text_model.encoder.layers.{i}");
            let x = f.layer_norm(&format!("{p}.layer_norm1"), h, eps)?;
            let q = f.linear(&format!("{p}.self_attn.q_proj"), x, true)?;
            let k = f.linear(&format!("{p}.self_attn.k_proj"), x, true)?;
            let v = f.linear(&format!("{p}.self_attn.v_proj"), x, true)?;
            let a = f.mha(q, k, v, n, l, l, heads, hd, true)?;
            let a = f.linear(&format!("{p}.self_attn.out_proj"), a, true)?;
            h = f.g.add(h, a)?;
            let x = f.layer_norm(&format!("{p}.layer_norm2"), h, eps)?;
            let m = f.linear(&format!("{p}.mlp.fc1"), x, true)?;
            let m = f.g.quick_gelu(m)?;
            let m = f.linear(&format!("{p}.mlp.fc2"), m, true)?;
            h = f.g.add(h, m)?;
        }
        f.layer_norm("text_model.final_layer_norm", h, eps)
    }
}

fn normal(rng: &mut rand::rngs::StdRng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Forward-pass helper: parameter lookup by name, layers with their LoRA adapters.
struct Fwd<'a, 'b> {
    g: &'a mut Graph,
    store: &'a ParamStore,
    prefix: &'static str,
    lora_prefix: &'static str,
    nets: &'a [&'b LoraNetwork],
    ctx: &'a mut LoraContext,
}

impl Fwd<'_, '_> {
    fn p(&mut self, name: &str) -> Result<Var> {
        let full = format!("{}{name}", self.prefix);
        let id = self
            .store
            .find(&full)
            .ok_or_else(|| Error::InvalidArgument {
                what: format!("model parameter {full}"),
                msg: "missing from the model's weights".into(),
            })?;
        self.g.param(self.store, id)
    }

    fn lora(&mut self, path: &str, x: Var, y: Var) -> Result<Var> {
        if self.nets.is_empty() {
            return Ok(y);
        }
        let name = lora_name(self.lora_prefix, path);
        apply_loras(self.nets, &name, self.g, x, y, self.ctx)
    }

    fn linear(&mut self, path: &str, x: Var, bias: bool) -> Result<Var> {
        let w = self.p(&format!("{path}.weight"))?;
        let b = if bias {
            Some(self.p(&format!("{path}.bias"))?)
        } else {
            None
        };
        if self.nets.is_empty() {
            return self.g.linear(x, w, b);
        }
        let name = lora_name(self.lora_prefix, path);
        linear_with_loras(self.nets, &name, self.g, x, w, b, self.ctx)
    }

    fn conv(&mut self, path: &str, x: Var, k: usize) -> Result<Var> {
        let w = self.p(&format!("{path}.weight"))?;
        let b = self.p(&format!("{path}.bias"))?;
        let cfg: Conv2dCfg = conv_cfg_for(path, k);
        let y = self.g.conv2d(x, w, Some(b), cfg)?;
        self.lora(path, x, y)
    }

    fn group_norm(&mut self, path: &str, x: Var, groups: usize, eps: f64) -> Result<Var> {
        let w = self.p(&format!("{path}.weight"))?;
        let b = self.p(&format!("{path}.bias"))?;
        self.g.group_norm(x, groups, w, b, eps)
    }

    fn group_norm_silu(&mut self, path: &str, x: Var, groups: usize, eps: f64) -> Result<Var> {
        let w = self.p(&format!("{path}.weight"))?;
        let b = self.p(&format!("{path}.bias"))?;
        self.g.group_norm_silu(x, groups, w, b, eps)
    }

    fn layer_norm(&mut self, path: &str, x: Var, eps: f64) -> Result<Var> {
        let w = self.p(&format!("{path}.weight"))?;
        let b = self.p(&format!("{path}.bias"))?;
        self.g.layer_norm(x, w, b, eps)
    }

    /// `ResnetBlock2D`: norm1 → SiLU → conv1 → + time_emb_proj(SiLU(temb)) → norm2 → SiLU → conv2, + shortcut.
    fn resnet(&mut self, cfg: &UNetConfig, p: &str, x: Var, temb_act: Var) -> Result<Var> {
        let eps = cfg.norm_eps as f64;
        let h = self.group_norm_silu(&format!("{p}.norm1"), x, cfg.norm_num_groups, eps)?;
        let h = self.conv(&format!("{p}.conv1"), h, 3)?;
        let t = self.linear(&format!("{p}.time_emb_proj"), temb_act, true)?;
        let ts = self.g.shape(t)?;
        let t = self.g.reshape(t, &[ts[0], ts[1], 1, 1])?;
        let h = self.g.add(h, t)?;
        let h = self.group_norm_silu(&format!("{p}.norm2"), h, cfg.norm_num_groups, eps)?;
        let h = self.conv(&format!("{p}.conv2"), h, 3)?;
        let short = if self
            .store
            .find(&format!("{}{p}.conv_shortcut.weight", self.prefix))
            .is_some()
        {
            self.conv(&format!("{p}.conv_shortcut"), x, 1)?
        } else {
            x
        };
        self.g.add(short, h)
    }

    /// Multi-head attention on `[N, L, H·d]` projections; returns `[N, Lq, H·d]`.
    #[allow(clippy::too_many_arguments)]
    fn mha(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        n: usize,
        lq: usize,
        lk: usize,
        heads: usize,
        hd: usize,
        causal: bool,
    ) -> Result<Var> {
        // Heads stay interleaved in the projections' rows ([N, L, H·d]); no permuted copies.
        debug_assert_eq!(self.g.shape(q)?, [n, lq, heads * hd]);
        debug_assert_eq!(self.g.shape(k)?, [n, lk, heads * hd]);
        self.g
            .attention_heads(q, k, v, heads, 1.0 / (hd as f64).sqrt(), causal)
    }

    fn attn(&mut self, p: &str, x: Var, context: Option<Var>, heads: usize) -> Result<Var> {
        let xs = self.g.shape(x)?;
        let (n, lq, c) = (xs[0], xs[1], xs[2]);
        let kv_in = context.unwrap_or(x);
        let lk = self.g.shape(kv_in)?[1];
        let q = self.linear(&format!("{p}.to_q"), x, false)?;
        let k = self.linear(&format!("{p}.to_k"), kv_in, false)?;
        let v = self.linear(&format!("{p}.to_v"), kv_in, false)?;
        let o = self.mha(q, k, v, n, lq, lk, heads, c / heads, false)?;
        self.linear(&format!("{p}.to_out.0"), o, true)
    }

    /// `Transformer2DModel` (SD1: conv proj_in/proj_out, one `BasicTransformerBlock`).
    fn transformer(&mut self, cfg: &UNetConfig, p: &str, x: Var, context: Var) -> Result<Var> {
        let xs = self.g.shape(x)?;
        let (n, c, hh, ww) = (xs[0], xs[1], xs[2], xs[3]);
        // diffusers' Transformer2DModel builds its GroupNorm with eps 1e-6.
        let h = self.group_norm(&format!("{p}.norm"), x, cfg.norm_num_groups, 1e-6)?;
        let h = self.conv(&format!("{p}.proj_in"), h, 1)?;
        let h = self.g.reshape(h, &[n, c, hh * ww])?;
        let mut h = self.g.permute(h, &[0, 2, 1])?;
        let tb = format!("{p}.transformer_blocks.0");
        let a = self.layer_norm(&format!("{tb}.norm1"), h, 1e-5)?;
        let a = self.attn(&format!("{tb}.attn1"), a, None, cfg.attention_heads)?;
        h = self.g.add(a, h)?;
        let a = self.layer_norm(&format!("{tb}.norm2"), h, 1e-5)?;
        let a = self.attn(
            &format!("{tb}.attn2"),
            a,
            Some(context),
            cfg.attention_heads,
        )?;
        h = self.g.add(a, h)?;
        let a = self.layer_norm(&format!("{tb}.norm3"), h, 1e-5)?;
        let a = self.linear(&format!("{tb}.ff.net.0.proj"), a, true)?;
        let a = self.g.geglu(a)?;
        let a = self.linear(&format!("{tb}.ff.net.2"), a, true)?;
        h = self.g.add(a, h)?;
        let h = self.g.permute(h, &[0, 2, 1])?;
        let h = self.g.reshape(h, &[n, c, hh, ww])?;
        let h = self.conv(&format!("{p}.proj_out"), h, 1)?;
        self.g.add(h, x)
    }
}

/// The dtype model weights are kept in on the CPU.
pub const CPU_DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::names::LoraSpec;

    fn tiny() -> SdModel {
        SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 0).unwrap()
    }

    #[test]
    fn forward_shapes_and_lora_starts_as_identity() {
        let m = tiny();
        let ids = vec![
            crate::demo::WordTokenizer::demo()
                .encode("red circle, large")
                .unwrap();
            2
        ];
        let mut g = Graph::inference();
        let mut ctx = LoraContext::eval(1.0);
        let c = m.te_forward(&mut g, &[], &mut ctx, &ids).unwrap();
        assert_eq!(
            g.shape(c).unwrap(),
            vec![2, crate::demo::DEMO_CONTEXT_LEN, 16]
        );
        let x = g.input(
            Tensor::from_vec(
                (0..2 * 3 * 16 * 16)
                    .map(|i| ((i % 17) as f32) / 17.0 - 0.5)
                    .collect(),
                &[2, 3, 16, 16],
            )
            .unwrap(),
        );
        let y = m
            .unet_forward(&mut g, &[], &mut ctx, x, &[10.0, 500.0], c)
            .unwrap();
        assert_eq!(g.shape(y).unwrap(), vec![2, 3, 16, 16]);
        let base = g.value(y).unwrap().to_vec_f32().unwrap();
        assert!(base.iter().all(|v| v.is_finite()));
        // A fresh LoRA (up = 0) changes nothing; after perturbing up it does.
        let spec = LoraSpec {
            network_dim: 2,
            network_alpha: 1.0,
            conv_dim: Some(2),
            ..LoraSpec::default()
        };
        let mut net = LoraNetwork::new(&m.unet, Some(&m.te), &spec, 1).unwrap();
        let y2 = {
            let mut g = Graph::inference();
            let c = m.te_forward(&mut g, &[&net], &mut ctx, &ids).unwrap();
            let x = g.input(
                Tensor::from_vec(
                    (0..2 * 3 * 16 * 16)
                        .map(|i| ((i % 17) as f32) / 17.0 - 0.5)
                        .collect(),
                    &[2, 3, 16, 16],
                )
                .unwrap(),
            );
            let y = m
                .unet_forward(&mut g, &[&net], &mut ctx, x, &[10.0, 500.0], c)
                .unwrap();
            g.value(y).unwrap().to_vec_f32().unwrap()
        };
        assert_eq!(base, y2);
        let ups: Vec<_> = net.adapters.iter().map(|a| a.up).collect();
        for id in ups {
            let t = net.store.value(id).unwrap();
            let s = t.shape().to_vec();
            net.store
                .set_value(id, Tensor::full(&s, 0.05, DType::F32))
                .unwrap();
        }
        let y3 = {
            let mut g = Graph::inference();
            let c = m.te_forward(&mut g, &[&net], &mut ctx, &ids).unwrap();
            let x = g.input(
                Tensor::from_vec(
                    (0..2 * 3 * 16 * 16)
                        .map(|i| ((i % 17) as f32) / 17.0 - 0.5)
                        .collect(),
                    &[2, 3, 16, 16],
                )
                .unwrap(),
            );
            let y = m
                .unet_forward(&mut g, &[&net], &mut ctx, x, &[10.0, 500.0], c)
                .unwrap();
            g.value(y).unwrap().to_vec_f32().unwrap()
        };
        let diff: f32 = base.iter().zip(&y3).map(|(a, b)| (a - b).abs()).sum();
        assert!(diff > 1e-3, "{diff}");
    }

    #[test]
    fn timestep_embedding_matches_the_formula() {
        let e = timestep_embedding(&[0.0, 3.0], 8);
        assert_eq!(&e[..8], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // i = 1: f = exp(-ln(1e4)/4) = 0.1
        assert!((e[8 + 1] - (0.3f32).cos()).abs() < 1e-6);
        assert!((e[8 + 4 + 1] - (0.3f32).sin()).abs() < 1e-6);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let m = tiny();
        let mut g = Graph::inference();
        let mut ctx = LoraContext::eval(1.0);
        assert!(m
            .te_forward(&mut g, &[], &mut ctx, &[vec![0, 1], vec![0]])
            .is_err());
        assert!(m
            .te_forward(&mut g, &[], &mut ctx, &[vec![0, 9999]])
            .is_err());
        let c = m.te_forward(&mut g, &[], &mut ctx, &[vec![0, 1]]).unwrap();
        let x = g.input(Tensor::zeros(&[1, 3, 16, 16], DType::F32));
        assert!(m
            .unet_forward(&mut g, &[], &mut ctx, x, &[1.0, 2.0], c)
            .is_err());
    }
}
