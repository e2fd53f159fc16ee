//! A summary of a LoRA file: modules, base model, metadata and whether the stored hashes match
//! (what `examples/inspect_lora.rs` prints).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::hash::{sshs_hashes_of_file, SshsHashes};
use crate::lora::{detect_format, LoraFile, LoraFormat};
use crate::names::BaseModel;
use crate::{Metadata, Result, SafetensorsFile};

/// One module line of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSummary {
    /// Kohya name.
    pub name: String,
    /// `linear`, `conv1x1`, `conv3x3`.
    pub kind: String,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Rank.
    pub rank: usize,
    /// Alpha as stored (`None` when absent).
    pub alpha: Option<f32>,
}

/// Stored vs recomputed sshs hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct HashCheck {
    /// `sshs_model_hash` in the metadata.
    pub stored_model_hash: Option<String>,
    /// `sshs_legacy_hash` in the metadata.
    pub stored_legacy_hash: Option<String>,
    /// Recomputed from the file's bytes.
    pub computed: SshsHashes,
}

impl HashCheck {
    /// Whether the stored model hash equals the data's (`None` when not stored).
    pub fn model_hash_matches(&self) -> Option<bool> {
        self.stored_model_hash
            .as_ref()
            .map(|h| *h == self.computed.model_hash)
    }
    /// Whether the stored legacy hash equals the recomputed one (`None` when not stored).
    pub fn legacy_hash_matches(&self) -> Option<bool> {
        self.stored_legacy_hash
            .as_ref()
            .map(|h| *h == self.computed.legacy_hash)
    }
}

/// Everything `inspect_lora` shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// Kohya or PEFT naming.
    pub format: LoraFormat,
    /// Modules, sorted by name.
    pub modules: Vec<ModuleSummary>,
    /// Detected base model.
    pub base_model: BaseModel,
    /// The metadata as stored.
    pub metadata: Metadata,
    /// Dtypes found in the file, e.g. `["F16", "F32"]`.
    pub dtypes: Vec<String>,
    /// Hash check.
    pub hashes: HashCheck,
}

/// Reads and summarises a LoRA file.
pub fn inspect(path: impl AsRef<Path>) -> Result<Report> {
    let f = SafetensorsFile::open(path.as_ref())?;
    let lora = LoraFile::from_safetensors(&f)?;
    let mut dtypes: Vec<String> = f.tensors().map(|(_, t)| t.dtype.to_string()).collect();
    dtypes.sort();
    dtypes.dedup();
    let meta = f.metadata().clone();
    Ok(Report {
        format: detect_format(&f),
        modules: lora
            .modules
            .iter()
            .map(|m| ModuleSummary {
                name: m.name.clone(),
                kind: m.kind().label(),
                in_features: m.in_features(),
                out_features: m.out_features(),
                rank: m.rank(),
                alpha: m.alpha,
            })
            .collect(),
        base_model: lora.base_model(),
        hashes: HashCheck {
            stored_model_hash: meta.get("sshs_model_hash").map(String::from),
            stored_legacy_hash: meta.get("sshs_legacy_hash").map(String::from),
            computed: sshs_hashes_of_file(&f)?,
        },
        metadata: meta,
        dtypes,
    })
}

impl Report {
    /// Machine-readable form.
    pub fn to_json(&self) -> Value {
        let modules: Vec<Value> = self
            .modules
            .iter()
            .map(|m| {
                json!({"name": m.name, "kind": m.kind, "in": m.in_features, "out": m.out_features,
                       "rank": m.rank, "alpha": m.alpha})
            })
            .collect();
        let metadata: serde_json::Map<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        let unknown = match &self.base_model {
            BaseModel::Unknown { unknown_keys } => unknown_keys.clone(),
            _ => vec![],
        };
        json!({
            "format": format!("{:?}", self.format).to_lowercase(),
            "module_count": self.modules.len(),
            "ranks": self.rank_set(),
            "base_model": self.base_model.label(),
            "unknown_keys": unknown,
            "dtypes": self.dtypes,
            "modules": modules,
            "metadata": metadata,
            "hashes": {
                "stored_model_hash": self.hashes.stored_model_hash,
                "computed_model_hash": self.hashes.computed.model_hash,
                "model_hash_matches": self.hashes.model_hash_matches(),
                "stored_legacy_hash": self.hashes.stored_legacy_hash,
                "computed_legacy_hash": self.hashes.computed.legacy_hash,
                "legacy_hash_matches": self.hashes.legacy_hash_matches(),
            }
        })
    }

    /// Distinct ranks, ascending.
    pub fn rank_set(&self) -> Vec<usize> {
        let mut r: Vec<usize> = self.modules.iter().map(|m| m.rank).collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// Human-readable form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "format: {:?}   dtypes: {}",
            self.format,
            self.dtypes.join(", ")
        );
        let _ = writeln!(s, "base model: {}", self.base_model.label());
        if let BaseModel::Unknown { unknown_keys } = &self.base_model {
            for k in unknown_keys.iter().take(20) {
                let _ = writeln!(s, "  unknown: {k}");
            }
        }
        let _ = writeln!(
            s,
            "modules: {} (ranks {:?})",
            self.modules.len(),
            self.rank_set()
        );
        let _ = writeln!(
            s,
            "{:<90} {:<8} {:>6} {:>6} {:>5} {:>8}",
            "name", "kind", "in", "out", "rank", "alpha"
        );
        for m in &self.modules {
            let alpha = m.alpha.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "{:<90} {:<8} {:>6} {:>6} {:>5} {:>8}",
                m.name, m.kind, m.in_features, m.out_features, m.rank, alpha
            );
        }
        let _ = writeln!(s, "metadata: {} keys", self.metadata.len());
        for (k, v) in self.metadata.iter() {
            let v: String = if v.chars().count() > 120 {
                format!("{}…", v.chars().take(120).collect::<String>())
            } else {
                v.to_string()
            };
            let _ = writeln!(s, "  {k} = {v}");
        }
        let verdict = |m: Option<bool>| match m {
            Some(true) => "matches",
            Some(false) => "DOES NOT MATCH",
            None => "not stored",
        };
        let _ = writeln!(
            s,
            "sshs_model_hash: {} ({})",
            self.hashes.computed.model_hash,
            verdict(self.hashes.model_hash_matches())
        );
        let _ = writeln!(
            s,
            "sshs_legacy_hash: {} ({})",
            self.hashes.computed.legacy_hash,
            verdict(self.hashes.legacy_hash_matches())
        );
        s
    }
}
