//! Module names: the sd-scripts module tables, base-model detection, kohya ↔ model-path and
//! kohya ↔ LDM checkpoint key mapping (§1.2, §8).
//!
//! Kohya names replace every `.` of a module path with `_`, and module names contain `_`
//! themselves, so a name cannot be split by parsing alone. [`kohya_to_module_path`] splits it with
//! the vocabulary of compound words that occur in Stable Diffusion module paths; the tests check it
//! against every name in every table.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::OnceLock;

use crate::lora::ModuleKind;

/// One row of a module table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// Kohya name.
    pub name: &'static str,
    /// Linear or conv (with kernel).
    pub kind: ModuleKind,
    /// Input features / channels.
    pub in_features: usize,
    /// Output features / channels.
    pub out_features: usize,
}

/// The module tables of §1.2, each in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// SD1.x, attention modules only (264).
    Sd1,
    /// SD1.x with `conv_dim` (350).
    Sd1Conv,
    /// SD2.x as trained (proj_in/proj_out as conv 1x1).
    Sd2TrainConvProj,
    /// SD2.x as extracted or merged (proj_in/proj_out linear).
    Sd2ExtractLinearProj,
    /// SDXL, attention modules only (986).
    Sdxl,
    /// SDXL with `conv_dim` (1052).
    SdxlConv,
}

impl Table {
    /// All tables.
    pub const ALL: [Table; 6] = [
        Table::Sd1,
        Table::Sd1Conv,
        Table::Sd2TrainConvProj,
        Table::Sd2ExtractLinearProj,
        Table::Sdxl,
        Table::SdxlConv,
    ];

    fn source(self) -> &'static str {
        match self {
            Table::Sd1 => include_str!("../tables/sd1.tsv"),
            Table::Sd1Conv => include_str!("../tables/sd1_conv.tsv"),
            Table::Sd2TrainConvProj => include_str!("../tables/sd2_train_conv_proj.tsv"),
            Table::Sd2ExtractLinearProj => include_str!("../tables/sd2_extract_linear_proj.tsv"),
            Table::Sdxl => include_str!("../tables/sdxl.tsv"),
            Table::SdxlConv => include_str!("../tables/sdxl_conv.tsv"),
        }
    }

    /// The rows, in creation order.
    pub fn entries(self) -> &'static [ModuleEntry] {
        static CACHE: OnceLock<HashMap<Table, Vec<ModuleEntry>>> = OnceLock::new();
        let all = CACHE.get_or_init(|| {
            Table::ALL
                .iter()
                .map(|&t| (t, parse_table(t.source())))
                .collect()
        });
        &all[&self]
    }

    /// The row for `name`.
    pub fn get(self, name: &str) -> Option<&'static ModuleEntry> {
        self.entries().iter().find(|e| e.name == name)
    }

    /// The base model the table belongs to.
    pub fn base_model(self) -> BaseModel {
        match self {
            Table::Sd1 | Table::Sd1Conv => BaseModel::Sd1,
            Table::Sd2TrainConvProj | Table::Sd2ExtractLinearProj => BaseModel::Sd2,
            Table::Sdxl | Table::SdxlConv => BaseModel::Sdxl,
        }
    }
}

fn parse_table(src: &'static str) -> Vec<ModuleEntry> {
    src.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let c: Vec<&'static str> = l.split('\t').collect();
            let kind = match *c.get(1)? {
                "linear" => ModuleKind::Linear,
                "conv1x1" => ModuleKind::Conv { kernel: [1, 1] },
                "conv3x3" => ModuleKind::Conv { kernel: [3, 3] },
                _ => return None,
            };
            Some(ModuleEntry {
                name: c[0],
                kind,
                in_features: c.get(2)?.parse().ok()?,
                out_features: c.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// The base model a LoRA or checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BaseModel {
    /// Stable Diffusion 1.x.
    Sd1,
    /// Stable Diffusion 2.x.
    Sd2,
    /// Stable Diffusion XL.
    Sdxl,
    /// None of them; `unknown_keys` lists the names that the closest model does not have.
    Unknown {
        /// Names (or keys) that did not match.
        unknown_keys: Vec<String>,
    },
}

impl BaseModel {
    /// `"sd1"`, `"sd2"`, `"sdxl"`, `"unknown"`.
    pub fn label(&self) -> &'static str {
        match self {
            BaseModel::Sd1 => "sd1",
            BaseModel::Sd2 => "sd2",
            BaseModel::Sdxl => "sdxl",
            BaseModel::Unknown { .. } => "unknown",
        }
    }

    /// sd-scripts' `ss_base_model_version` for an epsilon model (`sd_v1`, `sd_v2`, `sdxl_base_v1-0`).
    pub fn model_version(&self) -> Option<&'static str> {
        match self {
            BaseModel::Sd1 => Some("sd_v1"),
            BaseModel::Sd2 => Some("sd_v2"),
            BaseModel::Sdxl => Some("sdxl_base_v1-0"),
            BaseModel::Unknown { .. } => None,
        }
    }
}

/// Guesses the base model from LoRA modules `(name, kind, in, out)`: the model whose tables hold
/// every module with the same kind and sizes. When several do (e.g. a U-Net self-attention-only
/// LoRA fits SD1 and SD2 alike), SD1 is preferred, then SD2. When none does, the model matching the
/// most modules gives the list of unknown names.
pub fn detect_base_model<'a>(
    modules: impl IntoIterator<Item = (&'a str, ModuleKind, usize, usize)>,
) -> BaseModel {
    let modules: Vec<_> = modules.into_iter().collect();
    if modules.is_empty() {
        return BaseModel::Unknown {
            unknown_keys: vec![],
        };
    }
    let candidates: [(BaseModel, &[Table]); 3] = [
        (BaseModel::Sd1, &[Table::Sd1Conv]),
        (
            BaseModel::Sd2,
            &[Table::Sd2TrainConvProj, Table::Sd2ExtractLinearProj],
        ),
        (BaseModel::Sdxl, &[Table::SdxlConv]),
    ];
    let mut best: Option<Vec<String>> = None;
    for (model, tables) in candidates {
        let index = lookup(tables);
        let unknown: Vec<String> = modules
            .iter()
            .filter(|(n, k, i, o)| {
                !index.get(n).is_some_and(|es| {
                    es.iter()
                        .any(|e| e.kind == *k && e.in_features == *i && e.out_features == *o)
                })
            })
            .map(|(n, ..)| n.to_string())
            .collect();
        if unknown.is_empty() {
            return model;
        }
        if best.as_ref().is_none_or(|b| unknown.len() < b.len()) {
            best = Some(unknown);
        }
    }
    BaseModel::Unknown {
        unknown_keys: best.unwrap_or_default(),
    }
}

fn lookup(tables: &[Table]) -> HashMap<&'static str, Vec<&'static ModuleEntry>> {
    let mut m: HashMap<&'static str, Vec<&'static ModuleEntry>> = HashMap::new();
    for t in tables {
        for e in t.entries() {
            m.entry(e.name).or_default().push(e);
        }
    }
    m
}

/// Guesses the base model of a checkpoint from its keys (LDM layout): SDXL has
/// `conditioner.embedders.*`, SD2 has `cond_stage_model.model.*` (OpenCLIP), SD1 has
/// `cond_stage_model.transformer.*` (CLIP-L). A file with none of them gives `Unknown` with the
/// first keys listed.
pub fn detect_checkpoint_base_model<'a>(keys: impl IntoIterator<Item = &'a str>) -> BaseModel {
    let keys: Vec<&str> = keys.into_iter().collect();
    if keys.iter().any(|k| k.starts_with("conditioner.embedders.")) {
        BaseModel::Sdxl
    } else if keys
        .iter()
        .any(|k| k.starts_with("cond_stage_model.model."))
    {
        BaseModel::Sd2
    } else if keys
        .iter()
        .any(|k| k.starts_with("cond_stage_model.transformer."))
    {
        BaseModel::Sd1
    } else {
        BaseModel::Unknown {
            unknown_keys: keys.iter().take(20).map(|s| s.to_string()).collect(),
        }
    }
}

/// Which model part a LoRA module belongs to (the kohya prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// `lora_unet_`.
    Unet,
    /// `lora_te_` (SD1/SD2).
    TextEncoder,
    /// `lora_te1_` (SDXL CLIP-L).
    TextEncoder1,
    /// `lora_te2_` (SDXL OpenCLIP-bigG).
    TextEncoder2,
}

impl Component {
    /// The kohya prefix including the trailing `_`.
    pub fn kohya_prefix(self) -> &'static str {
        match self {
            Component::Unet => "lora_unet_",
            Component::TextEncoder => "lora_te_",
            Component::TextEncoder1 => "lora_te1_",
            Component::TextEncoder2 => "lora_te2_",
        }
    }

    /// The diffusers / PEFT prefix without the dot: `unet`, `text_encoder`, `text_encoder_2`.
    pub fn diffusers_prefix(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder | Component::TextEncoder1 => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// Words of Stable Diffusion module paths that contain `_` themselves, longest first.
const COMPOUNDS: &[&[&str]] = &[
    &["time", "emb", "proj"],
    &["down", "blocks"],
    &["up", "blocks"],
    &["mid", "block"],
    &["transformer", "blocks"],
    &["input", "blocks"],
    &["output", "blocks"],
    &["middle", "block"],
    &["to", "q"],
    &["to", "k"],
    &["to", "v"],
    &["to", "out"],
    &["proj", "in"],
    &["proj", "out"],
    &["conv", "shortcut"],
    &["text", "model"],
    &["self", "attn"],
    &["q", "proj"],
    &["k", "proj"],
    &["v", "proj"],
    &["out", "proj"],
    &["in", "layers"],
    &["out", "layers"],
    &["emb", "layers"],
    &["skip", "connection"],
    &["position", "embedding"],
    &["token", "embedding"],
    &["final", "layer", "norm"],
];

/// Splits a kohya name into its component and dotted module path:
/// `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0` →
/// (`Unet`, `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0`).
pub fn kohya_to_module_path(name: &str) -> Option<(Component, String)> {
    let (component, rest) = [
        Component::TextEncoder1,
        Component::TextEncoder2,
        Component::TextEncoder,
        Component::Unet,
    ]
    .into_iter()
    .find_map(|c| name.strip_prefix(c.kohya_prefix()).map(|r| (c, r)))?;
    if rest.is_empty() {
        return None;
    }
    let tokens: Vec<&str> = rest.split('_').collect();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let hit = COMPOUNDS.iter().find(|c| tokens[i..].starts_with(c));
        match hit {
            Some(c) => {
                parts.push(c.join("_"));
                i += c.len();
            }
            None => {
                parts.push(tokens[i].to_string());
                i += 1;
            }
        }
    }
    Some((component, parts.join(".")))
}

/// The kohya name of a module path: `prefix + path.replace(".", "_")`.
pub fn module_path_to_kohya(component: Component, path: &str) -> String {
    format!("{}{}", component.kohya_prefix(), path.replace('.', "_"))
}

const RESNET_CHILDREN: [(&str, &str); 4] = [
    ("conv1", "in_layers.2"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
];

fn split_num(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// SDXL U-Net module path, diffusers naming → SAI/LDM naming (sd-scripts'
/// `make_unet_conversion_map`, §8.3): `down_blocks.1.attentions.0.x` → `input_blocks.4.1.x`,
/// `up_blocks.0.upsamplers.0.conv` → `output_blocks.2.2.conv`, resnet children renamed.
/// `None` for a path that is not a diffusers SDXL U-Net path.
pub fn sdxl_diffusers_to_sai(path: &str) -> Option<String> {
    let res = |child: &str| {
        RESNET_CHILDREN
            .iter()
            .find(|(d, _)| *d == child)
            .map(|(_, s)| s.to_string())
    };
    if let Some(rest) = path.strip_prefix("down_blocks.") {
        let (i, rest) = split_num(rest)?;
        if let Some(r) = rest.strip_prefix("resnets.") {
            let (j, child) = split_num(r)?;
            return Some(format!("input_blocks.{}.0.{}", 3 * i + j + 1, res(child)?));
        }
        if let Some(r) = rest.strip_prefix("attentions.") {
            let (j, tail) = split_num(r)?;
            return Some(format!("input_blocks.{}.1.{tail}", 3 * i + j + 1));
        }
        if rest == "downsamplers.0.conv" {
            return Some(format!("input_blocks.{}.0.op", 3 * (i + 1)));
        }
        return None;
    }
    if let Some(rest) = path.strip_prefix("up_blocks.") {
        let (i, rest) = split_num(rest)?;
        if let Some(r) = rest.strip_prefix("resnets.") {
            let (j, child) = split_num(r)?;
            return Some(format!("output_blocks.{}.0.{}", 3 * i + j, res(child)?));
        }
        if let Some(r) = rest.strip_prefix("attentions.") {
            let (j, tail) = split_num(r)?;
            return Some(format!("output_blocks.{}.1.{tail}", 3 * i + j));
        }
        if let Some(tail) = rest.strip_prefix("upsamplers.0.") {
            return Some(format!("output_blocks.{}.2.{tail}", 3 * i + 2));
        }
        return None;
    }
    if let Some(tail) = path.strip_prefix("mid_block.attentions.0.") {
        return Some(format!("middle_block.1.{tail}"));
    }
    if let Some(r) = path.strip_prefix("mid_block.resnets.") {
        let (j, child) = split_num(r)?;
        return Some(format!("middle_block.{}.{}", 2 * j, res(child)?));
    }
    None
}

/// The inverse of [`sdxl_diffusers_to_sai`].
pub fn sdxl_sai_to_diffusers(path: &str) -> Option<String> {
    let res = |child: &str| {
        RESNET_CHILDREN
            .iter()
            .find(|(_, s)| *s == child)
            .map(|(d, _)| d.to_string())
    };
    if let Some(rest) = path.strip_prefix("input_blocks.") {
        let (n, rest) = split_num(rest)?;
        if n == 0 {
            return None;
        }
        if rest == "0.op" && n % 3 == 0 {
            return Some(format!("down_blocks.{}.downsamplers.0.conv", n / 3 - 1));
        }
        let (i, j) = ((n - 1) / 3, (n - 1) % 3);
        if j > 1 {
            return None;
        }
        if let Some(child) = rest.strip_prefix("0.") {
            return Some(format!("down_blocks.{i}.resnets.{j}.{}", res(child)?));
        }
        if let Some(tail) = rest.strip_prefix("1.") {
            return Some(format!("down_blocks.{i}.attentions.{j}.{tail}"));
        }
        return None;
    }
    if let Some(rest) = path.strip_prefix("output_blocks.") {
        let (n, rest) = split_num(rest)?;
        let (i, j) = (n / 3, n % 3);
        if let Some(child) = rest.strip_prefix("0.") {
            return Some(format!("up_blocks.{i}.resnets.{j}.{}", res(child)?));
        }
        if let Some(tail) = rest.strip_prefix("1.") {
            return Some(format!("up_blocks.{i}.attentions.{j}.{tail}"));
        }
        if let Some(tail) = rest.strip_prefix("2.") {
            return (j == 2).then(|| format!("up_blocks.{i}.upsamplers.0.{tail}"));
        }
        return None;
    }
    if let Some(tail) = path.strip_prefix("middle_block.1.") {
        return Some(format!("mid_block.attentions.0.{tail}"));
    }
    if let Some(rest) = path.strip_prefix("middle_block.") {
        let (n, child) = split_num(rest)?;
        if n % 2 == 0 && n <= 2 {
            return Some(format!("mid_block.resnets.{}.{}", n / 2, res(child)?));
        }
    }
    None
}

/// Where a LoRA module's weight lives in an LDM checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LdmTarget {
    /// Checkpoint key, e.g. `model.diffusion_model.input_blocks.1.1.proj_in.weight`.
    pub key: String,
    /// Row slice of that tensor when the weight is part of a fused one (`attn.in_proj_weight`
    /// holds q, k and v stacked along dim 0).
    pub rows: Option<Range<usize>>,
}

fn unet_map(table: &'static str) -> HashMap<&'static str, &'static str> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .collect()
}

fn sd1_unet_map() -> &'static HashMap<&'static str, &'static str> {
    static M: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    M.get_or_init(|| unet_map(include_str!("../tables/sd1_unet_to_ldm.tsv")))
}

fn sdxl_unet_map() -> &'static HashMap<&'static str, &'static str> {
    static M: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    M.get_or_init(|| unet_map(include_str!("../tables/sdxl_unet_to_ldm.tsv")))
}

/// Maps a CLIP text-encoder layer path `text_model.encoder.layers.{i}.{X}` to OpenCLIP resblock
/// keys (§8.3), with `width` the hidden size (1024 for SD2, 1280 for SDXL TE2).
fn openclip_target(prefix: &str, path: &str, width: usize) -> Option<LdmTarget> {
    let rest = path.strip_prefix("text_model.encoder.layers.")?;
    let (i, x) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let base = format!("{prefix}transformer.resblocks.{i}.");
    let (suffix, rows) = match x {
        "self_attn.q_proj" => ("attn.in_proj_weight", Some(0..width)),
        "self_attn.k_proj" => ("attn.in_proj_weight", Some(width..2 * width)),
        "self_attn.v_proj" => ("attn.in_proj_weight", Some(2 * width..3 * width)),
        "self_attn.out_proj" => ("attn.out_proj.weight", None),
        "mlp.fc1" => ("mlp.c_fc.weight", None),
        "mlp.fc2" => ("mlp.c_proj.weight", None),
        _ => return None,
    };
    Some(LdmTarget {
        key: format!("{base}{suffix}"),
        rows,
    })
}

/// The LDM checkpoint key(s) of a LoRA module for `base`, in order of preference. For the SD1
/// text encoder there are two: with `text_model.` and without it (older checkpoints, §8.1). Empty
/// when the name does not belong to that model.
pub fn ldm_targets(lora_name: &str, base: &BaseModel) -> Vec<LdmTarget> {
    let Some((component, path)) = kohya_to_module_path(lora_name) else {
        return vec![];
    };
    let plain = |key: String| LdmTarget { key, rows: None };
    match (base, component) {
        (BaseModel::Sd1 | BaseModel::Sd2, Component::Unet) => sd1_unet_map()
            .get(lora_name)
            .map(|k| vec![plain(k.to_string())])
            .unwrap_or_default(),
        (BaseModel::Sd1, Component::TextEncoder) => {
            let Some(rest) = path.strip_prefix("text_model.") else {
                return vec![];
            };
            vec![
                plain(format!(
                    "cond_stage_model.transformer.text_model.{rest}.weight"
                )),
                plain(format!("cond_stage_model.transformer.{rest}.weight")),
            ]
        }
        (BaseModel::Sd2, Component::TextEncoder) => {
            openclip_target("cond_stage_model.model.", &path, 1024)
                .into_iter()
                .collect()
        }
        (BaseModel::Sdxl, Component::Unet) => sdxl_unet_map()
            .get(lora_name)
            .map(|k| k.to_string())
            .or_else(|| Some(format!("model.diffusion_model.{path}.weight")))
            .map(|k| vec![plain(k)])
            .unwrap_or_default(),
        (BaseModel::Sdxl, Component::TextEncoder1) => {
            vec![plain(format!(
                "conditioner.embedders.0.transformer.{path}.weight"
            ))]
        }
        (BaseModel::Sdxl, Component::TextEncoder2) => {
            openclip_target("conditioner.embedders.1.model.", &path, 1280)
                .into_iter()
                .collect()
        }
        _ => vec![],
    }
}

/// LoRA names (with row slices) per checkpoint key.
type ReverseMap = HashMap<String, Vec<(String, Option<Range<usize>>)>>;

/// The inverse of [`ldm_targets`] over the module tables of `base`: which LoRA module names (with
/// row slices) patch checkpoint key `key`. `in_proj_weight` gives three (q, k, v).
pub fn lora_names_for_ldm_key(key: &str, base: &BaseModel) -> Vec<(String, Option<Range<usize>>)> {
    static REV: OnceLock<HashMap<&'static str, ReverseMap>> = OnceLock::new();
    let rev = REV.get_or_init(|| {
        let mut all = HashMap::new();
        for (label, base, tables) in [
            ("sd1", BaseModel::Sd1, &[Table::Sd1Conv][..]),
            ("sd2", BaseModel::Sd2, &[Table::Sd2TrainConvProj][..]),
            ("sdxl", BaseModel::Sdxl, &[Table::SdxlConv][..]),
        ] {
            let mut m: ReverseMap = HashMap::new();
            for t in tables {
                for e in t.entries() {
                    for target in ldm_targets(e.name, &base) {
                        m.entry(target.key)
                            .or_default()
                            .push((e.name.to_string(), target.rows));
                    }
                }
            }
            all.insert(label, m);
        }
        all
    });
    rev.get(base.label())
        .and_then(|m| m.get(key))
        .cloned()
        .unwrap_or_default()
}

/// Rewrites an SD1 text-encoder key that lacks `text_model.` the way
/// `load_checkpoint_with_text_encoder_conversion` does (§8.1); other keys are returned unchanged.
pub fn normalize_te_key(key: &str) -> String {
    for part in ["embeddings.", "encoder.", "final_layer_norm."] {
        let old = format!("cond_stage_model.transformer.{part}");
        if let Some(rest) = key.strip_prefix(&old) {
            return format!("cond_stage_model.transformer.text_model.{part}{rest}");
        }
    }
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts_match_spec() {
        let count =
            |t: Table, p: &str| t.entries().iter().filter(|e| e.name.starts_with(p)).count();
        assert_eq!(Table::Sd1.entries().len(), 264);
        assert_eq!(count(Table::Sd1, "lora_te_"), 72);
        assert_eq!(count(Table::Sd1Conv, "lora_unet_"), 278);
        assert_eq!(count(Table::Sd2TrainConvProj, "lora_te_"), 138);
        assert_eq!(count(Table::Sd2ExtractLinearProj, "lora_unet_"), 192);
        assert_eq!(count(Table::Sdxl, "lora_te1_"), 72);
        assert_eq!(count(Table::Sdxl, "lora_te2_"), 192);
        assert_eq!(count(Table::Sdxl, "lora_unet_"), 722);
        assert_eq!(count(Table::SdxlConv, "lora_unet_"), 788);
    }

    #[test]
    fn every_table_name_splits_and_rejoins() {
        for t in Table::ALL {
            for e in t.entries() {
                let (c, p) = kohya_to_module_path(e.name).unwrap_or_else(|| panic!("{}", e.name));
                assert_eq!(module_path_to_kohya(c, &p), e.name);
                assert!(!p.contains(".."), "{p}");
            }
        }
    }

    #[test]
    fn split_matches_sdxl_ldm_keys() {
        // The SDXL U-Net uses LDM names, so the table's key is the module path itself.
        for (name, key) in sdxl_unet_map() {
            let (_, p) = kohya_to_module_path(name).unwrap();
            assert_eq!(format!("model.diffusion_model.{p}.weight"), *key);
        }
    }

    #[test]
    fn split_examples() {
        let (c, p) = kohya_to_module_path(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
        )
        .unwrap();
        assert_eq!(c, Component::Unet);
        assert_eq!(
            p,
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
        );
        let (c, p) =
            kohya_to_module_path("lora_te_text_model_encoder_layers_11_self_attn_out_proj")
                .unwrap();
        assert_eq!(c, Component::TextEncoder);
        assert_eq!(p, "text_model.encoder.layers.11.self_attn.out_proj");
        let (_, p) = kohya_to_module_path("lora_unet_up_blocks_1_resnets_2_time_emb_proj").unwrap();
        assert_eq!(p, "up_blocks.1.resnets.2.time_emb_proj");
        let (_, p) = kohya_to_module_path(
            "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
        )
        .unwrap();
        assert_eq!(
            p,
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"
        );
        let (c, _) = kohya_to_module_path("lora_te2_text_model_encoder_layers_31_mlp_fc1").unwrap();
        assert_eq!(c, Component::TextEncoder2);
    }

    #[test]
    fn ldm_mapping_rules() {
        let t = ldm_targets(
            "lora_unet_down_blocks_1_attentions_1_proj_in",
            &BaseModel::Sd1,
        );
        assert_eq!(
            t[0].key,
            "model.diffusion_model.input_blocks.5.1.proj_in.weight"
        );
        let t = ldm_targets(
            "lora_te_text_model_encoder_layers_3_mlp_fc2",
            &BaseModel::Sd1,
        );
        assert_eq!(
            t[0].key,
            "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc2.weight"
        );
        assert_eq!(
            t[1].key,
            "cond_stage_model.transformer.encoder.layers.3.mlp.fc2.weight"
        );
        let t = ldm_targets(
            "lora_te_text_model_encoder_layers_22_self_attn_k_proj",
            &BaseModel::Sd2,
        );
        assert_eq!(
            t,
            vec![LdmTarget {
                key: "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight".into(),
                rows: Some(1024..2048)
            }]
        );
        let t = ldm_targets(
            "lora_te2_text_model_encoder_layers_0_self_attn_v_proj",
            &BaseModel::Sdxl,
        );
        assert_eq!(t[0].rows, Some(2560..3840));
        assert_eq!(
            t[0].key,
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
        );
        let t = ldm_targets(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            &BaseModel::Sdxl,
        );
        assert_eq!(
            t[0].key,
            "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
        );
        assert!(ldm_targets(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1",
            &BaseModel::Sd1
        )
        .is_empty());
        // Every module of every table maps somewhere for its own model.
        for t in Table::ALL {
            for e in t.entries() {
                assert!(
                    !ldm_targets(e.name, &t.base_model()).is_empty(),
                    "{}",
                    e.name
                );
            }
        }
    }

    #[test]
    fn reverse_mapping() {
        let v = lora_names_for_ldm_key(
            "cond_stage_model.model.transformer.resblocks.5.attn.in_proj_weight",
            &BaseModel::Sd2,
        );
        let mut names: Vec<_> = v.iter().map(|(n, r)| (n.as_str(), r.clone())).collect();
        names.sort_by_key(|(_, r)| r.as_ref().map(|r| r.start));
        assert_eq!(
            names[0],
            (
                "lora_te_text_model_encoder_layers_5_self_attn_q_proj",
                Some(0..1024)
            )
        );
        assert_eq!(names.len(), 3);
        let v = lora_names_for_ldm_key(
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            &BaseModel::Sd1,
        );
        assert_eq!(
            v,
            vec![("lora_unet_up_blocks_0_upsamplers_0_conv".to_string(), None)]
        );
    }

    #[test]
    fn detection() {
        let of = |t: Table| {
            detect_base_model(
                t.entries()
                    .iter()
                    .map(|e| (e.name, e.kind, e.in_features, e.out_features)),
            )
        };
        assert_eq!(of(Table::Sd1), BaseModel::Sd1);
        assert_eq!(of(Table::Sd1Conv), BaseModel::Sd1);
        assert_eq!(of(Table::Sd2TrainConvProj), BaseModel::Sd2);
        assert_eq!(of(Table::Sd2ExtractLinearProj), BaseModel::Sd2);
        assert_eq!(of(Table::Sdxl), BaseModel::Sdxl);
        assert_eq!(of(Table::SdxlConv), BaseModel::Sdxl);
        let odd = detect_base_model([
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1",
                ModuleKind::Linear,
                768,
                3072,
            ),
            ("lora_unet_foo", ModuleKind::Linear, 3, 3),
        ]);
        assert_eq!(
            odd,
            BaseModel::Unknown {
                unknown_keys: vec!["lora_unet_foo".into()]
            }
        );
        // SD1 names with SD2 sizes are SD2.
        let sd2 = detect_base_model([(
            "lora_te_text_model_encoder_layers_0_mlp_fc1",
            ModuleKind::Linear,
            1024,
            4096,
        )]);
        assert_eq!(sd2, BaseModel::Sd2);
    }

    #[test]
    fn sdxl_diffusers_sai_round_trip() {
        assert_eq!(
            sdxl_diffusers_to_sai("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k")
                .unwrap(),
            "input_blocks.4.1.transformer_blocks.1.attn2.to_k"
        );
        assert_eq!(
            sdxl_diffusers_to_sai("up_blocks.0.upsamplers.0.conv").unwrap(),
            "output_blocks.2.2.conv"
        );
        assert_eq!(
            sdxl_diffusers_to_sai("down_blocks.0.downsamplers.0.conv").unwrap(),
            "input_blocks.3.0.op"
        );
        assert_eq!(
            sdxl_diffusers_to_sai("mid_block.resnets.1.time_emb_proj").unwrap(),
            "middle_block.2.emb_layers.1"
        );
        assert_eq!(
            sdxl_diffusers_to_sai("up_blocks.2.resnets.0.conv_shortcut").unwrap(),
            "output_blocks.6.0.skip_connection"
        );
        let mut n = 0;
        for e in Table::SdxlConv.entries() {
            let Some((Component::Unet, sai)) = kohya_to_module_path(e.name) else {
                continue;
            };
            let d = sdxl_sai_to_diffusers(&sai).unwrap_or_else(|| panic!("{sai}"));
            assert_eq!(
                sdxl_diffusers_to_sai(&d).as_deref(),
                Some(sai.as_str()),
                "{d}"
            );
            n += 1;
        }
        assert_eq!(n, 788);
    }

    #[test]
    fn te_key_normalization() {
        assert_eq!(
            normalize_te_key("cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight"),
            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
        );
        let k = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
        assert_eq!(normalize_te_key(k), k);
    }
}
