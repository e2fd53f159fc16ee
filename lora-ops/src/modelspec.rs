//! The `modelspec.*` metadata of `sai_model_spec.build_metadata` (spec §1.6), which the tools add last.

use std::time::{SystemTime, UNIX_EPOCH};

use lora_core::Metadata;

/// What the model is, for the modelspec keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSpec {
    /// SD 2.x.
    pub v2: bool,
    /// v-prediction.
    pub v_parameterization: bool,
    /// SDXL.
    pub sdxl: bool,
    /// A LoRA (`/lora` suffix of the architecture).
    pub lora: bool,
    /// A full checkpoint (implementation = Stability's repository).
    pub is_stable_diffusion_ckpt: bool,
    /// `modelspec.title` (the tools use the output file's stem).
    pub title: String,
    /// `modelspec.merged_from`, when set.
    pub merged_from: Option<String>,
    /// Seconds since the epoch for `modelspec.date`; `None` means now.
    pub timestamp: Option<u64>,
}

/// `build_merged_from`: the file stems joined with `", "`.
pub fn merged_from<P: AsRef<std::path::Path>>(paths: &[P]) -> String {
    paths
        .iter()
        .map(|p| {
            p.as_ref()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the epoch (UTC; the reference prints local time without a zone,
/// which is UTC on the servers these tools run on).
fn iso_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl ModelSpec {
    /// Adds the `modelspec.*` keys to `meta`.
    pub fn add_to(&self, meta: &mut Metadata) {
        let arch = if self.sdxl {
            "stable-diffusion-xl-v1-base"
        } else if self.v2 {
            if self.v_parameterization {
                "stable-diffusion-v2-768-v"
            } else {
                "stable-diffusion-v2-512"
            }
        } else {
            "stable-diffusion-v1"
        };
        let arch = if self.lora {
            format!("{arch}/lora")
        } else {
            arch.to_string()
        };
        let implementation = if (self.lora && self.sdxl) || self.is_stable_diffusion_ckpt {
            "https://github.com/Stability-AI/generative-models"
        } else {
            "diffusers"
        };
        let resolution = if self.sdxl {
            "1024x1024"
        } else if self.v2 && self.v_parameterization {
            "768x768"
        } else {
            "512x512"
        };
        let ts = self.timestamp.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
        meta.insert("modelspec.sai_model_spec", "1.0.1");
        meta.insert("modelspec.architecture", arch);
        meta.insert("modelspec.implementation", implementation);
        meta.insert("modelspec.title", self.title.clone());
        meta.insert("modelspec.resolution", resolution);
        meta.insert("modelspec.date", iso_date(ts));
        meta.insert(
            "modelspec.prediction_type",
            if self.v_parameterization {
                "v"
            } else {
                "epsilon"
            },
        );
        if let Some(m) = &self.merged_from {
            meta.insert("modelspec.merged_from", m.clone());
        }
        meta.insert(
            "modelspec.implementation_version",
            concat!("copier-lora/", env!("CARGO_PKG_VERSION")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_keys() {
        assert_eq!(iso_date(0), "1970-01-01T00:00:00");
        assert_eq!(iso_date(1_700_000_000), "2023-11-14T22:13:20");
        let mut m = Metadata::new();
        ModelSpec {
            lora: true,
            sdxl: true,
            title: "x".into(),
            timestamp: Some(0),
            ..Default::default()
        }
        .add_to(&mut m);
        assert_eq!(
            m.get("modelspec.architecture"),
            Some("stable-diffusion-xl-v1-base/lora")
        );
        assert_eq!(
            m.get("modelspec.implementation"),
            Some("https://github.com/Stability-AI/generative-models")
        );
        assert_eq!(m.get("modelspec.resolution"), Some("1024x1024"));
        let mut m = Metadata::new();
        ModelSpec {
            lora: true,
            v2: true,
            v_parameterization: true,
            ..Default::default()
        }
        .add_to(&mut m);
        assert_eq!(
            m.get("modelspec.architecture"),
            Some("stable-diffusion-v2-768-v/lora")
        );
        assert_eq!(m.get("modelspec.implementation"), Some("diffusers"));
        assert_eq!(m.get("modelspec.prediction_type"), Some("v"));
        assert_eq!(merged_from(&["/a/b.safetensors", "c.ckpt"]), "b, c");
    }
}
