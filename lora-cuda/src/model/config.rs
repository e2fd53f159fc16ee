//! Model configurations and the module trees they define (names, kinds, shapes), without any weights.
//!
//! The U-Net follows diffusers' `UNet2DConditionModel` as kohya's SD1 U-Net (`library/original_unet.py`) builds
//! it: `down_blocks.{i}.{attentions,resnets,downsamplers}`, `mid_block`, `up_blocks.{i}.{attentions,resnets,
//! upsamplers}`, `Transformer2DModel` with `proj_in`, `transformer_blocks.0.{attn1,ff,attn2}`, `proj_out`. The text
//! encoder follows transformers' `CLIPTextModel`. Walking a config yields every Linear/Conv layer in kohya's
//! module-creation order, which is the order LoRA networks list their modules in.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// A Linear or Conv2d layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// `Linear(in → out)`, weight `[out, in]`.
    Linear,
    /// `Conv2d(in → out, k×k)`, weight `[out, in, k, k]`.
    Conv {
        /// Kernel size (1 or 3).
        k: usize,
    },
}

/// The kind of module a layer sits in (what kohya's target-module rules test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Inside a `Transformer2DModel`.
    Transformer,
    /// Inside a `ResnetBlock2D`.
    Resnet,
    /// A `Downsample2D`.
    Downsample,
    /// An `Upsample2D`.
    Upsample,
    /// A CLIP encoder layer (`CLIPAttention` / `CLIPMLP`).
    TextLayer,
    /// Anything else (`conv_in`, `time_embedding`, `conv_out`): never a LoRA target.
    Other,
}

/// One Linear/Conv layer of a model: its module path, kind and sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// Module path in diffusers / transformers naming, e.g. `down_blocks.0.attentions.0.proj_in`.
    pub path: String,
    /// Linear or conv.
    pub kind: LayerKind,
    /// Input features / channels.
    pub in_dim: usize,
    /// Output features / channels.
    pub out_dim: usize,
    /// The enclosing block kind.
    pub block: BlockKind,
    /// Whether the layer has a bias.
    pub bias: bool,
}

/// The configuration of a `UNet2DConditionModel` (SD 1.x layout).
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// Input channels (4 latent channels for SD, 3 for the pixel-space demo).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// Whether each down level has cross-attention (the up levels mirror it; the mid block always has it).
    pub down_attention: Vec<bool>,
    /// ResnetBlock2D per down level (up levels have one more).
    pub layers_per_block: usize,
    /// Attention heads (diffusers' SD1 config calls this `attention_head_dim = 8`).
    pub attention_heads: usize,
    /// Width of the text encoder's hidden states.
    pub cross_attention_dim: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// GroupNorm epsilon (1e-5; the transformer's LayerNorms also use 1e-5).
    pub norm_eps: f32,
    /// Nominal image side the model was trained at (metadata only).
    pub sample_size: usize,
}

impl UNetConfig {
    /// Stable Diffusion 1.x: 320/640/1280/1280, 8 heads, context 768, 4 latent channels, 64×64 latents.
    pub fn sd15() -> Self {
        UNetConfig {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_attention: vec![true, true, true, false],
            layers_per_block: 2,
            attention_heads: 8,
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            sample_size: 64,
        }
    }

    /// The demo model: pixel space (3 channels, 64×64), widths 32/64/128/128, attention only at 16×16 and 8×8
    /// (and the mid block), one ResNet per down level (two per up level), context from [`ClipConfig::demo`].
    /// One layer per block instead of SD's two makes a training step about 2.5× cheaper on the CPU (measured
    /// here: 7.0M parameters, versus 10.3M with two).
    pub fn demo() -> Self {
        UNetConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![32, 64, 128, 128],
            down_attention: vec![false, false, true, true],
            layers_per_block: 1,
            attention_heads: 8,
            cross_attention_dim: ClipConfig::demo().hidden,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            sample_size: 64,
        }
    }

    /// A very small config for tests: 2 levels of 8/16 channels, attention at the second, 16×16 images.
    pub fn tiny() -> Self {
        UNetConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![8, 16],
            down_attention: vec![false, true],
            layers_per_block: 1,
            attention_heads: 2,
            cross_attention_dim: ClipConfig::tiny().hidden,
            norm_num_groups: 4,
            norm_eps: 1e-5,
            sample_size: 16,
        }
    }

    /// The time embedding width (4 × the first level's width).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }

    /// Checks the config's internal consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::InvalidArgument {
                what: "UNetConfig".into(),
                msg,
            })
        };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_attention.len() != n {
            return bad(format!(
                "{} block widths but {} attention flags",
                n,
                self.down_attention.len()
            ));
        }
        if self.layers_per_block == 0 || self.attention_heads == 0 || self.norm_num_groups == 0 {
            return bad(
                "layers_per_block, attention_heads and norm_num_groups must be positive".into(),
            );
        }
        for &c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 || c % self.attention_heads != 0 {
                return bad(format!(
                    "width {c} is not divisible by {} groups and {} heads",
                    self.norm_num_groups, self.attention_heads
                ));
            }
        }
        Ok(())
    }

    /// Width of up level `i` (levels mirror the down path).
    fn up_out(&self, i: usize) -> usize {
        let n = self.block_out_channels.len();
        self.block_out_channels[n - 1 - i]
    }

    /// Whether up level `i` has attention.
    pub fn up_attention(&self, i: usize) -> bool {
        let n = self.block_out_channels.len();
        self.down_attention[n - 1 - i]
    }

    /// For each up level `i` and resnet `j`: (input channels incl. skip, output channels).
    pub fn up_resnet_channels(&self, i: usize, j: usize) -> (usize, usize) {
        let n = self.block_out_channels.len();
        let out = self.up_out(i);
        let prev = if i == 0 {
            self.block_out_channels[n - 1]
        } else {
            self.up_out(i - 1)
        };
        let input = self.block_out_channels[(n - 1).saturating_sub(i + 1)];
        let input = if i + 1 >= n {
            self.block_out_channels[0]
        } else {
            input
        };
        let skip = if j == self.layers_per_block {
            input
        } else {
            out
        };
        let res_in = if j == 0 { prev } else { out };
        (res_in + skip, out)
    }

    /// Every Linear/Conv layer, in kohya's module-creation order: down blocks (attentions, resnets,
    /// downsamplers), up blocks (attentions, resnets, upsamplers), then the mid block (attention, resnets);
    /// `conv_in`, `time_embedding` and `conv_out` first and last.
    pub fn layers(&self) -> Vec<LayerInfo> {
        let mut v = Vec::new();
        let n = self.block_out_channels.len();
        let temb = self.time_embed_dim();
        let c0 = self.block_out_channels[0];
        let lin = |v: &mut Vec<LayerInfo>, path: String, i, o, block, bias| {
            v.push(LayerInfo {
                path,
                kind: LayerKind::Linear,
                in_dim: i,
                out_dim: o,
                block,
                bias,
            })
        };
        let conv = |v: &mut Vec<LayerInfo>, path: String, k, i, o, block| {
            v.push(LayerInfo {
                path,
                kind: LayerKind::Conv { k },
                in_dim: i,
                out_dim: o,
                block,
                bias: true,
            })
        };
        conv(
            &mut v,
            "conv_in".into(),
            3,
            self.in_channels,
            c0,
            BlockKind::Other,
        );
        lin(
            &mut v,
            "time_embedding.linear_1".into(),
            c0,
            temb,
            BlockKind::Other,
            true,
        );
        lin(
            &mut v,
            "time_embedding.linear_2".into(),
            temb,
            temb,
            BlockKind::Other,
            true,
        );
        let transformer = |v: &mut Vec<LayerInfo>, p: &str, ch: usize| {
            conv(v, format!("{p}.proj_in"), 1, ch, ch, BlockKind::Transformer);
            let tb = format!("{p}.transformer_blocks.0");
            for q in ["to_q", "to_k", "to_v"] {
                lin(
                    v,
                    format!("{tb}.attn1.{q}"),
                    ch,
                    ch,
                    BlockKind::Transformer,
                    false,
                );
            }
            lin(
                v,
                format!("{tb}.attn1.to_out.0"),
                ch,
                ch,
                BlockKind::Transformer,
                true,
            );
            lin(
                v,
                format!("{tb}.ff.net.0.proj"),
                ch,
                8 * ch,
                BlockKind::Transformer,
                true,
            );
            lin(
                v,
                format!("{tb}.ff.net.2"),
                4 * ch,
                ch,
                BlockKind::Transformer,
                true,
            );
            lin(
                v,
                format!("{tb}.attn2.to_q"),
                ch,
                ch,
                BlockKind::Transformer,
                false,
            );
            lin(
                v,
                format!("{tb}.attn2.to_k"),
                self.cross_attention_dim,
                ch,
                BlockKind::Transformer,
                false,
            );
            lin(
                v,
                format!("{tb}.attn2.to_v"),
                self.cross_attention_dim,
                ch,
                BlockKind::Transformer,
                false,
            );
            lin(
                v,
                format!("{tb}.attn2.to_out.0"),
                ch,
                ch,
                BlockKind::Transformer,
                true,
            );
            conv(
                v,
                format!("{p}.proj_out"),
                1,
                ch,
                ch,
                BlockKind::Transformer,
            );
        };
        let resnet = |v: &mut Vec<LayerInfo>, p: &str, i: usize, o: usize| {
            conv(v, format!("{p}.conv1"), 3, i, o, BlockKind::Resnet);
            lin(
                v,
                format!("{p}.time_emb_proj"),
                temb,
                o,
                BlockKind::Resnet,
                true,
            );
            conv(v, format!("{p}.conv2"), 3, o, o, BlockKind::Resnet);
            if i != o {
                conv(v, format!("{p}.conv_shortcut"), 1, i, o, BlockKind::Resnet);
            }
        };
        let mut ch_in = c0;
        for i in 0..n {
            let out = self.block_out_channels[i];
            if self.down_attention[i] {
                for j in 0..self.layers_per_block {
                    transformer(&mut v, &format!("down_blocks.{i}.attentions.{j}"), out);
                }
            }
            for j in 0..self.layers_per_block {
                resnet(
                    &mut v,
                    &format!("down_blocks.{i}.resnets.{j}"),
                    if j == 0 { ch_in } else { out },
                    out,
                );
            }
            if i + 1 < n {
                conv(
                    &mut v,
                    format!("down_blocks.{i}.downsamplers.0.conv"),
                    3,
                    out,
                    out,
                    BlockKind::Downsample,
                );
            }
            ch_in = out;
        }
        for i in 0..n {
            let out = self.up_out(i);
            if self.up_attention(i) {
                for j in 0..=self.layers_per_block {
                    transformer(&mut v, &format!("up_blocks.{i}.attentions.{j}"), out);
                }
            }
            for j in 0..=self.layers_per_block {
                let (ri, ro) = self.up_resnet_channels(i, j);
                resnet(&mut v, &format!("up_blocks.{i}.resnets.{j}"), ri, ro);
            }
            if i + 1 < n {
                conv(
                    &mut v,
                    format!("up_blocks.{i}.upsamplers.0.conv"),
                    3,
                    out,
                    out,
                    BlockKind::Upsample,
                );
            }
        }
        let mid = self.block_out_channels[n - 1];
        transformer(&mut v, "mid_block.attentions.0", mid);
        resnet(&mut v, "mid_block.resnets.0", mid, mid);
        resnet(&mut v, "mid_block.resnets.1", mid, mid);
        conv(
            &mut v,
            "conv_out".into(),
            3,
            c0,
            self.out_channels,
            BlockKind::Other,
        );
        v
    }

    /// Every parameter tensor (diffusers names) with its shape: the layers' weights and biases, and the norms.
    pub fn parameters(&self) -> BTreeMap<String, Vec<usize>> {
        let mut m = BTreeMap::new();
        for l in self.layers() {
            let shape = match l.kind {
                LayerKind::Linear => vec![l.out_dim, l.in_dim],
                LayerKind::Conv { k } => vec![l.out_dim, l.in_dim, k, k],
            };
            m.insert(format!("{}.weight", l.path), shape);
            if l.bias {
                m.insert(format!("{}.bias", l.path), vec![l.out_dim]);
            }
        }
        let norm = |m: &mut BTreeMap<String, Vec<usize>>, p: String, c: usize| {
            m.insert(format!("{p}.weight"), vec![c]);
            m.insert(format!("{p}.bias"), vec![c]);
        };
        // Norms: resnets (norm1 over the input, norm2 over the output), transformers, the output norm.
        let layers = self.layers();
        for l in &layers {
            if let Some(p) = l.path.strip_suffix(".conv1") {
                norm(&mut m, format!("{p}.norm1"), l.in_dim);
                norm(&mut m, format!("{p}.norm2"), l.out_dim);
            }
            if let Some(p) = l.path.strip_suffix(".proj_in") {
                norm(&mut m, format!("{p}.norm"), l.in_dim);
                for k in 1..=3 {
                    norm(
                        &mut m,
                        format!("{p}.transformer_blocks.0.norm{k}"),
                        l.in_dim,
                    );
                }
            }
        }
        norm(&mut m, "conv_norm_out".into(), self.block_out_channels[0]);
        m
    }
}

/// The configuration of a CLIP text model (transformers' `CLIPTextModel`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    /// Token embedding rows.
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Context length (position embedding rows).
    pub max_positions: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

impl ClipConfig {
    /// CLIP ViT-L/14's text model, as SD 1.x uses it.
    pub fn clip_l() -> Self {
        ClipConfig {
            vocab_size: 49408,
            hidden: 768,
            layers: 12,
            heads: 12,
            intermediate: 3072,
            max_positions: 77,
            layer_norm_eps: 1e-5,
        }
    }

    /// The demo text encoder over the demo world's word vocabulary.
    pub fn demo() -> Self {
        ClipConfig {
            vocab_size: crate::demo::WordTokenizer::demo().vocab_size(),
            hidden: 128,
            layers: 2,
            heads: 4,
            intermediate: 512,
            max_positions: crate::demo::DEMO_CONTEXT_LEN,
            layer_norm_eps: 1e-5,
        }
    }

    /// A very small config for tests.
    pub fn tiny() -> Self {
        ClipConfig {
            vocab_size: crate::demo::WordTokenizer::demo().vocab_size(),
            hidden: 16,
            layers: 1,
            heads: 2,
            intermediate: 32,
            max_positions: crate::demo::DEMO_CONTEXT_LEN,
            layer_norm_eps: 1e-5,
        }
    }

    /// Checks the config's internal consistency.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.heads == 0 || self.hidden % self.heads != 0 || self.layers == 0
        {
            return Err(Error::InvalidArgument {
                what: "ClipConfig".into(),
                msg: format!(
                    "hidden {} must be a positive multiple of heads {}",
                    self.hidden, self.heads
                ),
            });
        }
        Ok(())
    }

    /// Every Linear layer of the encoder, in transformers' creation order (k, v, q, out, fc1, fc2).
    pub fn layers(&self) -> Vec<LayerInfo> {
        let mut v = Vec::new();
        let h = self.hidden;
        for i in 0..self.layers {
            let p = format!("text_model.encoder.layers.{i}");
            for (name, a, b) in [
                ("self_attn.k_proj", h, h),
                ("self_attn.v_proj", h, h),
                ("self_attn.q_proj", h, h),
                ("self_attn.out_proj", h, h),
                ("mlp.fc1", h, self.intermediate),
                ("mlp.fc2", self.intermediate, h),
            ] {
                v.push(LayerInfo {
                    path: format!("{p}.{name}"),
                    kind: LayerKind::Linear,
                    in_dim: a,
                    out_dim: b,
                    block: BlockKind::TextLayer,
                    bias: true,
                });
            }
        }
        v
    }

    /// Every parameter tensor (transformers names, `text_model.` prefix) with its shape.
    pub fn parameters(&self) -> BTreeMap<String, Vec<usize>> {
        let mut m = BTreeMap::new();
        let h = self.hidden;
        m.insert(
            "text_model.embeddings.token_embedding.weight".into(),
            vec![self.vocab_size, h],
        );
        m.insert(
            "text_model.embeddings.position_embedding.weight".into(),
            vec![self.max_positions, h],
        );
        for l in self.layers() {
            m.insert(format!("{}.weight", l.path), vec![l.out_dim, l.in_dim]);
            m.insert(format!("{}.bias", l.path), vec![l.out_dim]);
        }
        for i in 0..self.layers {
            for n in ["layer_norm1", "layer_norm2"] {
                m.insert(format!("text_model.encoder.layers.{i}.{n}.weight"), vec![h]);
                m.insert(format!("text_model.encoder.layers.{i}.{n}.bias"), vec![h]);
            }
        }
        m.insert("text_model.final_layer_norm.weight".into(), vec![h]);
        m.insert("text_model.final_layer_norm.bias".into(), vec![h]);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_validate() {
        for c in [UNetConfig::sd15(), UNetConfig::demo(), UNetConfig::tiny()] {
            c.validate().unwrap();
        }
        for c in [ClipConfig::clip_l(), ClipConfig::demo(), ClipConfig::tiny()] {
            c.validate().unwrap();
        }
        let mut bad = UNetConfig::tiny();
        bad.down_attention.pop();
        assert!(bad.validate().is_err());
    }

    /// SD 1.5's U-Net has 859,520,964 parameters and CLIP-L's text model 123,060,480 (position_ids excluded);
    /// both counts are public facts of the released checkpoints.
    #[test]
    fn sd15_parameter_counts_match_the_released_models() {
        let count = |m: BTreeMap<String, Vec<usize>>| {
            m.values()
                .map(|s| s.iter().product::<usize>())
                .sum::<usize>()
        };
        assert_eq!(count(UNetConfig::sd15().parameters()), 859_520_964);
        assert_eq!(count(ClipConfig::clip_l().parameters()), 123_060_480);
        let demo = count(UNetConfig::demo().parameters());
        assert!((5_000_000..12_000_000).contains(&demo), "{demo}");
    }
}
