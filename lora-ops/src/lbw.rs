//! Layer-block weights (`--lbws` of `svd_merge_lora.py`, spec §3.2): one list per model, of 12, 17, 20 or 26
//! weights, spread over the 26 blocks `BASE, IN00–IN11, MID, OUT00–OUT11` by the reference's masks; each
//! module's scale is multiplied by the weight of its block.
//!
//! Reproduced as the reference does it, quirks included: a list of 12 or 20 weights means SDXL block
//! numbering (whatever the LoRA is), text-encoder modules are block 0 (`BASE`), and modules whose name maps to
//! no block (or to a block the mask leaves out) keep weight 1.

use crate::error::{Error, Result};

/// The 26 block names, in the reference's order.
pub const BLOCKS: [&str; 26] = [
    "BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "IN09", "IN10",
    "IN11", "MID", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08",
    "OUT09", "OUT10", "OUT11",
];

/// Which of the 26 blocks a list of `len` weights addresses (`LAYER12/17/20/26`).
fn mask(len: usize) -> Option<[bool; 26]> {
    let on = |idx: &[usize]| {
        let mut m = [false; 26];
        for &i in idx {
            m[i] = true;
        }
        m
    };
    match len {
        // BASE, IN04, IN05, IN07, IN08, MID, OUT00–OUT05
        12 => Some(on(&[0, 5, 6, 8, 9, 13, 14, 15, 16, 17, 18, 19])),
        // BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID, OUT03–OUT11
        17 => Some(on(&[
            0, 2, 3, 5, 6, 8, 9, 13, 17, 18, 19, 20, 21, 22, 23, 24, 25,
        ])),
        // BASE, IN00–IN08, MID, OUT00–OUT08
        20 => Some(on(&[
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ])),
        26 => Some([true; 26]),
        _ => None,
    }
}

/// Parsed `--lbws`: the 26-slot weights of each model and the block numbering.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerBlockWeights {
    /// Per model, 26 weights (1 where the list does not address a block).
    pub weights: Vec<[f32; 26]>,
    /// Blocks the lists address (the reference's `LBW_TARGET_IDX`).
    pub targets: [bool; 26],
    /// SDXL block numbering (lists of 12 or 20 weights).
    pub sdxl: bool,
}

impl LayerBlockWeights {
    /// Parses one JSON list per model (`"[1,0.5,...]"`), checked like `format_lbws`: JSON lists of numbers,
    /// all of the same length, the length one of 12, 17, 20, 26.
    pub fn parse(lists: &[String]) -> Result<Self> {
        let mut parsed = Vec::with_capacity(lists.len());
        for l in lists {
            let v: serde_json::Value = serde_json::from_str(l).map_err(|_| {
                Error::InvalidArgument(format!(
                    "--lbws: {l:?} is not JSON (expected a list like [1,0.5,...])"
                ))
            })?;
            let arr = v
                .as_array()
                .ok_or_else(|| Error::InvalidArgument(format!("--lbws: {l:?} is not a list")))?;
            let nums = arr
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "--lbws: {l:?} holds a value that is not a number"
                    ))
                })?;
            parsed.push(nums);
        }
        Self::from_lists(&parsed)
    }

    /// From numeric lists (see [`parse`](Self::parse)).
    pub fn from_lists(lists: &[Vec<f32>]) -> Result<Self> {
        let len = lists.first().map(Vec::len).unwrap_or(0);
        if lists.iter().any(|l| l.len() != len) {
            return Err(Error::InvalidArgument(
                "--lbws: all lists must have the same length".into(),
            ));
        }
        let targets = mask(len).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--lbws: a list has {len} weights; expected 12, 17, 20 or 26"
            ))
        })?;
        let idx: Vec<usize> = (0..26).filter(|&i| targets[i]).collect();
        let weights = lists
            .iter()
            .map(|l| {
                let mut w = [1.0f32; 26];
                for (&i, &v) in idx.iter().zip(l) {
                    w[i] = v;
                }
                w
            })
            .collect();
        Ok(LayerBlockWeights {
            weights,
            targets,
            sdxl: len == 12 || len == 20,
        })
    }

    /// The factor of module `name` in model `model`: its block's weight, or 1.
    pub fn factor(&self, model: usize, name: &str) -> f32 {
        match block_index(name, self.sdxl) {
            Some(i) if self.targets[i] => self.weights[model][i],
            _ => 1.0,
        }
    }
}

/// `get_lbw_block_index`: the block (0–25) of a LoRA module name, `None` for names it does not map
/// (the reference's −1). Text-encoder modules are block 0.
pub fn block_index(name: &str, sdxl: bool) -> Option<usize> {
    if name.contains("text_model_encoder_") {
        return Some(0);
    }
    if !sdxl {
        const NUM_OF_BLOCKS: usize = 12;
        if let Some((up_down, i, kind, j)) = find_updown(name) {
            let idx = match (up_down, kind) {
                ("down", "resnets" | "attentions") => 3 * i + j + 1,
                ("down", "downsamplers") => 3 * (i + 1),
                ("up", "resnets" | "attentions") => 3 * i + j,
                ("up", "upsamplers") => 3 * i + 2,
                _ => return None,
            };
            let b = if up_down == "down" {
                1 + idx
            } else {
                1 + NUM_OF_BLOCKS + 1 + idx
            };
            return (b < 26).then_some(b);
        }
        if name.contains("mid_block_") {
            return Some(1 + NUM_OF_BLOCKS);
        }
        return None;
    }
    let rest = name.strip_prefix("lora_unet_")?;
    let nth = |s: &str| s.split('_').nth(2).and_then(|v| v.parse::<usize>().ok());
    let b = if rest.starts_with("time_embed_") || rest.starts_with("label_emb_") {
        1
    } else if rest.starts_with("input_blocks_") {
        1 + nth(rest)?
    } else if rest.starts_with("middle_block_") {
        13
    } else if rest.starts_with("output_blocks_") {
        14 + nth(rest)?
    } else if rest.starts_with("out_") {
        23
    } else {
        return None;
    };
    (b < 26).then_some(b)
}

/// The first match of `(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_`.
fn find_updown(name: &str) -> Option<(&'static str, usize, &str, usize)> {
    let bytes = name.as_bytes();
    for start in 0..bytes.len() {
        for (word, tag) in [("up_blocks_", "up"), ("down_blocks_", "down")] {
            let Some(rest) = name[start..].strip_prefix(word) else {
                continue;
            };
            let digits = |s: &str| -> Option<(usize, usize)> {
                let n = s.bytes().take_while(u8::is_ascii_digit).count();
                (n > 0)
                    .then(|| (s[..n].parse().ok(), n))
                    .and_then(|(v, n)| v.map(|v| (v, n)))
            };
            let Some((i, n)) = digits(rest) else { continue };
            let Some(rest) = rest[n..].strip_prefix('_') else {
                continue;
            };
            for kind in ["resnets", "upsamplers", "downsamplers", "attentions"] {
                if let Some(r) = rest.strip_prefix(kind).and_then(|r| r.strip_prefix('_')) {
                    if let Some((j, m)) = digits(r) {
                        if r[m..].starts_with('_') {
                            return Some((tag, i, kind, j));
                        }
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd1_block_indices() {
        let b = |n: &str| block_index(n, false);
        assert_eq!(b("lora_te_text_model_encoder_layers_0_mlp_fc1"), Some(0));
        assert_eq!(b("lora_unet_down_blocks_0_attentions_0_proj_in"), Some(2)); // IN01
        assert_eq!(b("lora_unet_down_blocks_0_resnets_1_conv1"), Some(3)); // IN02
        assert_eq!(b("lora_unet_down_blocks_0_downsamplers_0_conv"), Some(4)); // IN03
        assert_eq!(b("lora_unet_down_blocks_3_resnets_1_conv2"), Some(12)); // IN11
        assert_eq!(b("lora_unet_mid_block_attentions_0_proj_out"), Some(13));
        assert_eq!(b("lora_unet_up_blocks_0_resnets_0_conv1"), Some(14)); // OUT00
        assert_eq!(b("lora_unet_up_blocks_0_upsamplers_0_conv"), Some(16)); // OUT02
        assert_eq!(b("lora_unet_up_blocks_3_attentions_2_proj_out"), Some(25)); // OUT11
        assert_eq!(b("lora_unet_conv_in"), None);
    }

    #[test]
    fn sdxl_block_indices_and_masks() {
        let b = |n: &str| block_index(n, true);
        assert_eq!(b("lora_unet_input_blocks_4_1_proj_in"), Some(5));
        assert_eq!(b("lora_unet_middle_block_1_proj_out"), Some(13));
        assert_eq!(b("lora_unet_output_blocks_2_2_conv"), Some(16));
        assert_eq!(b("lora_te1_text_model_encoder_layers_0_mlp_fc1"), Some(0));
        for len in [12, 17, 20, 26] {
            assert_eq!(mask(len).unwrap().iter().filter(|&&t| t).count(), len);
        }
        let l = LayerBlockWeights::parse(&["[1,0,1,0,1,0,1,0,1,0,1,0]".into()]).unwrap();
        assert!(
            l.sdxl,
            "a 12-list means SDXL numbering, as in the reference"
        );
        assert_eq!(l.factor(0, "lora_unet_input_blocks_4_1_proj_in"), 0.0); // IN04 is the 2nd target
        assert_eq!(l.factor(0, "lora_unet_input_blocks_1_0_in_layers_2"), 1.0); // IN01 not addressed
        assert!(LayerBlockWeights::parse(&["[1,2]".into()]).is_err());
        assert!(LayerBlockWeights::parse(&["{}".into()]).is_err());
        assert!(LayerBlockWeights::parse(&["[1,1,1,1,1,1,1,1,1,1,1,\"x\"]".into()]).is_err());
    }
}
