//! The effects the pipelines process images with, and the metric that measures each.

use image::DynamicImage;
use imgfx::{metrics, Effect};

use crate::error::{Error, Result};

/// The metrics the report measures on every sampled image.
pub const METRICS: [&str; 6] = [
    "line_density",
    "gradient_energy",
    "rms_contrast",
    "colour_count",
    "blockiness",
    "level_error",
];

/// The metrics of [`METRICS`] with the parameters a run's effects give them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricSet {
    /// The bits of `level_error`: those of the run's first `posterize` effect, else Pillow's default 4.
    pub level_bits: u8,
}

impl MetricSet {
    /// The metric parameters for a run with these effects.
    pub fn for_effects(effects: &[EffectSpec]) -> Self {
        let level_bits = effects
            .iter()
            .find_map(|e| match e.effect {
                Effect::Posterize { bits } => Some(bits),
                _ => None,
            })
            .unwrap_or(4);
        MetricSet { level_bits }
    }

    /// Measures every metric of [`METRICS`] on `img`, in that order.
    pub fn measure(&self, img: &DynamicImage) -> Vec<f64> {
        vec![
            metrics::line_density(img),
            metrics::gradient_energy(img),
            metrics::rms_contrast(img),
            metrics::colour_count(img) as f64,
            metrics::blockiness(img),
            metrics::level_error(img, self.level_bits),
        ]
    }
}

/// One effect of `--effects`, with the label its files are named by.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectSpec {
    /// File-name label (`outline`, or `outline_2` for a second outline).
    pub label: String,
    /// The text it was parsed from.
    pub spec: String,
    /// The effect.
    pub effect: Effect,
}

impl EffectSpec {
    /// Index in [`METRICS`] of the metric that measures this effect.
    pub fn metric_index(&self) -> usize {
        match self.effect.name() {
            "outline" | "contour" | "find_edges" | "edge_enhance" | "edge_enhance_more" => 0,
            "contrast" | "autocontrast" => 2,
            // Posterize by its level error: the colour count of a generated image is dominated by its sampling
            // noise, which adds colours without moving values off their levels.
            "posterize" => 5,
            "levels" => 3,
            "jpeg" => 4,
            _ => 1,
        }
    }

    /// The metric's name.
    pub fn metric_name(&self) -> &'static str {
        METRICS[self.metric_index()]
    }
}

/// What each effect did to the original: its metric on the processed image (`processed(effect)`) minus the
/// same metric on `original`.
pub fn effect_deltas(
    effects: &[EffectSpec],
    original: &DynamicImage,
    mut processed: impl FnMut(&EffectSpec) -> Result<DynamicImage>,
) -> Result<Vec<f64>> {
    let metrics = MetricSet::for_effects(effects);
    let m0 = metrics.measure(original);
    effects
        .iter()
        .map(|e| {
            let k = e.metric_index();
            Ok(metrics.measure(&processed(e)?)[k] - m0[k])
        })
        .collect()
}

/// Splits `--effects` into specs: effects are separated by commas, but a comma followed by `key=value`
/// continues the previous effect's parameters (`outline:strength=0.5,thickness=2,flatten`).
pub fn parse_effects(list: &[String]) -> Result<Vec<EffectSpec>> {
    let mut specs: Vec<String> = Vec::new();
    for item in list {
        for part in item.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match specs.last_mut() {
                Some(last) if part.contains('=') && !part.contains(':') => {
                    last.push(',');
                    last.push_str(part);
                }
                _ => specs.push(part.to_string()),
            }
        }
    }
    if specs.is_empty() {
        return Err(Error::option("--effects", "no effect given"));
    }
    let mut out: Vec<EffectSpec> = Vec::new();
    for spec in specs {
        let effect: Effect = spec
            .parse()
            .map_err(|e: imgfx::Error| Error::option("--effects", format!("{spec:?}: {e}")))?;
        let name = effect.name();
        let n = out.iter().filter(|e| e.effect.name() == name).count();
        let label = if n == 0 {
            name.to_string()
        } else {
            format!("{name}_{}", n + 1)
        };
        out.push(EffectSpec {
            label,
            spec,
            effect,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_split_on_commas_and_keep_parameters() {
        let e = parse_effects(&[
            "outline:strength=0.5,thickness=2,flatten".into(),
            "outline".into(),
        ])
        .unwrap();
        let labels: Vec<&str> = e.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["outline", "flatten", "outline_2"]);
        assert_eq!(e[0].spec, "outline:strength=0.5,thickness=2");
        assert_eq!(e[0].metric_name(), "line_density");
        assert_eq!(e[1].metric_name(), "gradient_energy");
    }

    #[test]
    fn posterize_is_measured_by_its_level_error_at_its_own_bits() {
        let e = parse_effects(&["contrast,posterize:bits=3,posterize".into()]).unwrap();
        assert_eq!(e[1].metric_name(), "level_error");
        assert_eq!(MetricSet::for_effects(&e).level_bits, 3);
        assert_eq!(MetricSet::for_effects(&e[..1]).level_bits, 4);
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(8, 8, image::Rgb([255, 96, 0])));
        let m = MetricSet::for_effects(&e).measure(&img);
        assert_eq!(m.len(), METRICS.len());
        // 3 bits: levels every 32, the top one 224: 255 → 31, 96 → 0, 0 → 0.
        assert!((m[5] - 31.0 / 3.0).abs() < 1e-9, "{}", m[5]);
    }

    #[test]
    fn unknown_effects_and_parameters_are_errors() {
        let e = parse_effects(&["sparkle".into()]).unwrap_err().to_string();
        assert!(e.contains("sparkle"), "{e}");
        let e = parse_effects(&["posterize:colours=3".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("colours"), "{e}");
        assert!(parse_effects(&[]).is_err());
    }
}
