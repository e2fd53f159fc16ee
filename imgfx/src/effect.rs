//! One [`Effect`] enum for the pipeline and the command line, parsed from `name:key=value,...`.
//!
//! Names and parameters (defaults in parentheses) keep their reference tools' names:
//!
//! - `outline`: `method` (default xdog) (`xdog`, `canny`, `contour`, `find_edges`), `strength` (default 1), `thickness` (default 1),
//!   `sigma` (default 0.8), `k` (default 1.6), `p` (default 20), `epsilon` (default 0.1), `phi` (default 10), `threshold1` (default 100), `threshold2` (default 200)
//! - `flatten`: `d` (default 9), `sigma_color` (default 75), `sigma_space` (default 75), `iterations` (default 5), `k` (default 0 = off),
//!   `seed` (default 0), `max_iter` (default 20)
//! - `contrast`: `factor` (default 1.5) (Pillow `ImageEnhance.Contrast`)
//! - `autocontrast`: `cutoff` (default 0) (sets both ends), `cutoff_low`, `cutoff_high`, `ignore` (default none),
//!   `preserve_tone` (default false)
//! - `posterize`: `bits` (default 4) (Pillow `ImageOps.posterize`)
//! - `levels`: `levels` (default 4) (evenly spaced posterization)
//! - `jpeg`: `quality` (default 75), `subsampling` (default 4:2:0), `passes` (default 1)
//! - Pillow's kernel filters, no parameters: `blur`, `contour`, `detail`, `edge_enhance`,
//!   `edge_enhance_more`, `emboss`, `find_edges`, `sharpen`, `smooth`, `smooth_more`

use std::fmt;
use std::str::FromStr;

use image::DynamicImage;

use crate::flatten::FlattenParams;
use crate::jpeg::{JpegParams, Subsampling};
use crate::kernel::PillowFilter;
use crate::outline::{OutlineMethod, OutlineParams};
use crate::tone::AutocontrastParams;
use crate::{Error, Result};

/// The known effect names, for messages.
pub const EFFECT_NAMES: &str =
    "outline, flatten, contrast, autocontrast, posterize, levels, jpeg, blur, contour, \
detail, edge_enhance, edge_enhance_more, emboss, find_edges, sharpen, smooth, smooth_more";

/// An image effect with its parameters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Effect {
    /// [`crate::outline()`].
    Outline(OutlineParams),
    /// [`crate::flatten()`].
    Flatten(FlattenParams),
    /// [`crate::contrast`] with Pillow's `factor`.
    Contrast {
        /// Pillow's `factor`.
        factor: f32,
    },
    /// [`crate::autocontrast`].
    Autocontrast(AutocontrastParams),
    /// [`crate::posterize`] with Pillow's `bits`.
    Posterize {
        /// Bits kept per sample, 1–8.
        bits: u8,
    },
    /// [`crate::posterize_levels`].
    Levels {
        /// Output levels, 2–256.
        levels: u16,
    },
    /// [`crate::jpeg_noise`].
    Jpeg(JpegParams),
    /// One of Pillow's kernel filters, [`crate::pillow_filter`].
    Filter(PillowFilter),
}

impl Effect {
    /// The effect's name in specifications.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Outline(_) => "outline",
            Self::Flatten(_) => "flatten",
            Self::Contrast { .. } => "contrast",
            Self::Autocontrast(_) => "autocontrast",
            Self::Posterize { .. } => "posterize",
            Self::Levels { .. } => "levels",
            Self::Jpeg(_) => "jpeg",
            Self::Filter(f) => f.name(),
        }
    }

    /// The effect `name` with its defaults, then `params` (key, value) applied in order.
    pub fn from_parts<K: AsRef<str>, V: AsRef<str>>(name: &str, params: &[(K, V)]) -> Result<Self> {
        let mut e = Self::default_for(name)?;
        for (k, v) in params {
            e.set(k.as_ref(), v.as_ref())?;
        }
        e.validate()?;
        Ok(e)
    }

    /// The effect `name` with its default parameters.
    pub fn default_for(name: &str) -> Result<Self> {
        Ok(match name {
            "outline" => Self::Outline(OutlineParams::default()),
            "flatten" => Self::Flatten(FlattenParams::default()),
            "contrast" => Self::Contrast { factor: 1.5 },
            "autocontrast" => Self::Autocontrast(AutocontrastParams::default()),
            "posterize" => Self::Posterize { bits: 4 },
            "levels" => Self::Levels { levels: 4 },
            "jpeg" => Self::Jpeg(JpegParams::default()),
            other => match PillowFilter::from_name(other) {
                Some(f) => Self::Filter(f),
                None => {
                    return Err(Error::UnknownEffect {
                        name: other.into(),
                        known: EFFECT_NAMES,
                    })
                }
            },
        })
    }

    /// The parameter names the effect takes.
    pub fn parameter_names(&self) -> &'static str {
        match self {
            Self::Outline(_) => {
                "method, strength, thickness, sigma, k, p, epsilon, phi, threshold1, threshold2"
            }
            Self::Flatten(_) => "d, sigma_color, sigma_space, iterations, k, seed, max_iter",
            Self::Contrast { .. } => "factor",
            Self::Autocontrast(_) => "cutoff, cutoff_low, cutoff_high, ignore, preserve_tone",
            Self::Posterize { .. } => "bits",
            Self::Levels { .. } => "levels",
            Self::Jpeg(_) => "quality, subsampling, passes",
            Self::Filter(_) => "(none)",
        }
    }

    /// Sets one parameter from its text.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let effect = self.name();
        let known = self.parameter_names();
        let unknown = || Error::UnknownParameter {
            effect,
            param: key.into(),
            known,
        };
        fn num<T: FromStr>(effect: &'static str, param: &'static str, value: &str) -> Result<T> {
            value
                .trim()
                .parse::<T>()
                .map_err(|_| Error::InvalidParameter {
                    effect,
                    param,
                    value: value.into(),
                    reason: format!("not a valid {}", std::any::type_name::<T>()),
                })
        }
        fn flag(effect: &'static str, param: &'static str, value: &str) -> Result<bool> {
            match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(Error::InvalidParameter {
                    effect,
                    param,
                    value: value.into(),
                    reason: "not a boolean".into(),
                }),
            }
        }
        match self {
            Self::Outline(p) => match key {
                "method" => {
                    p.method = OutlineMethod::from_name(value.trim()).ok_or_else(|| {
                        Error::InvalidParameter {
                            effect,
                            param: "method",
                            value: value.into(),
                            reason: "one of xdog, canny, contour, find_edges".into(),
                        }
                    })?
                }
                "strength" => p.strength = num(effect, "strength", value)?,
                "thickness" => p.thickness = num(effect, "thickness", value)?,
                "sigma" => p.sigma = num(effect, "sigma", value)?,
                "k" => p.k = num(effect, "k", value)?,
                "p" => p.p = num(effect, "p", value)?,
                "epsilon" => p.epsilon = num(effect, "epsilon", value)?,
                "phi" => p.phi = num(effect, "phi", value)?,
                "threshold1" => p.threshold1 = num(effect, "threshold1", value)?,
                "threshold2" => p.threshold2 = num(effect, "threshold2", value)?,
                _ => return Err(unknown()),
            },
            Self::Flatten(p) => match key {
                "d" => p.bilateral.d = num(effect, "d", value)?,
                "sigma_color" => p.bilateral.sigma_color = num(effect, "sigma_color", value)?,
                "sigma_space" => p.bilateral.sigma_space = num(effect, "sigma_space", value)?,
                "iterations" => p.iterations = num(effect, "iterations", value)?,
                "k" => p.k = num(effect, "k", value)?,
                "seed" => p.seed = num(effect, "seed", value)?,
                "max_iter" => p.max_iter = num(effect, "max_iter", value)?,
                _ => return Err(unknown()),
            },
            Self::Contrast { factor } => match key {
                "factor" => *factor = num(effect, "factor", value)?,
                _ => return Err(unknown()),
            },
            Self::Autocontrast(p) => match key {
                "cutoff" => {
                    p.cutoff_low = num(effect, "cutoff", value)?;
                    p.cutoff_high = p.cutoff_low;
                }
                "cutoff_low" => p.cutoff_low = num(effect, "cutoff_low", value)?,
                "cutoff_high" => p.cutoff_high = num(effect, "cutoff_high", value)?,
                "ignore" => {
                    p.ignore = match value.trim() {
                        "" | "none" | "None" => None,
                        v => Some(num(effect, "ignore", v)?),
                    }
                }
                "preserve_tone" => p.preserve_tone = flag(effect, "preserve_tone", value)?,
                _ => return Err(unknown()),
            },
            Self::Posterize { bits } => match key {
                "bits" => *bits = num(effect, "bits", value)?,
                _ => return Err(unknown()),
            },
            Self::Levels { levels } => match key {
                "levels" => *levels = num(effect, "levels", value)?,
                _ => return Err(unknown()),
            },
            Self::Jpeg(p) => match key {
                "quality" => p.quality = num(effect, "quality", value)?,
                "subsampling" => {
                    p.subsampling = Subsampling::from_name(value.trim()).ok_or_else(|| {
                        Error::InvalidParameter {
                            effect,
                            param: "subsampling",
                            value: value.into(),
                            reason: "one of 4:4:4, 4:2:2, 4:2:0 (or 0, 1, 2)".into(),
                        }
                    })?
                }
                "passes" => p.passes = num(effect, "passes", value)?,
                _ => return Err(unknown()),
            },
            Self::Filter(_) => return Err(unknown()),
        }
        Ok(())
    }

    /// Checks parameter ranges.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Outline(p) => p.validate(),
            Self::Flatten(p) => p.validate(),
            Self::Contrast { factor } if !factor.is_finite() => Err(Error::InvalidParameter {
                effect: "contrast",
                param: "factor",
                value: factor.to_string(),
                reason: "must be finite".into(),
            }),
            Self::Autocontrast(p) => {
                for (param, v) in [("cutoff_low", p.cutoff_low), ("cutoff_high", p.cutoff_high)] {
                    if !(0.0..100.0).contains(&v) {
                        return Err(Error::InvalidParameter {
                            effect: "autocontrast",
                            param,
                            value: v.to_string(),
                            reason: "must be in [0, 100)".into(),
                        });
                    }
                }
                Ok(())
            }
            Self::Posterize { bits } => crate::tone::check_bits(*bits),
            Self::Levels { levels } => crate::tone::check_levels(*levels),
            Self::Jpeg(p) => p.validate(),
            _ => Ok(()),
        }
    }

    /// Applies the effect in place.
    pub fn apply_in_place(&self, img: &mut DynamicImage) -> Result<()> {
        self.validate()?;
        crate::pixels::check_nonempty(img)?;
        match self {
            Self::Outline(p) => crate::outline::outline_in_place(img, p),
            Self::Flatten(p) => crate::flatten::flatten_in_place(img, p),
            Self::Contrast { factor } => {
                crate::tone::contrast_in_place(img, *factor);
                Ok(())
            }
            Self::Autocontrast(p) => {
                crate::tone::autocontrast_in_place(img, p);
                Ok(())
            }
            Self::Posterize { bits } => crate::tone::posterize_in_place(img, *bits),
            Self::Levels { levels } => crate::tone::posterize_levels_in_place(img, *levels),
            Self::Jpeg(p) => crate::jpeg::jpeg_noise_in_place(img, p),
            Self::Filter(f) => {
                *img = crate::kernel::pillow_filter(img, *f);
                Ok(())
            }
        }
    }

    /// Applies the effect to a copy.
    pub fn apply(&self, img: &DynamicImage) -> Result<DynamicImage> {
        if let Self::Filter(f) = self {
            crate::pixels::check_nonempty(img)?;
            return Ok(crate::kernel::pillow_filter(img, *f));
        }
        let mut out = img.clone();
        self.apply_in_place(&mut out)?;
        Ok(out)
    }
}

impl FromStr for Effect {
    type Err = Error;

    /// Parses `name` or `name:key=value,key=value`.
    fn from_str(spec: &str) -> Result<Self> {
        let spec_t = spec.trim();
        let (name, rest) = match spec_t.split_once(':') {
            Some((n, r)) => (n.trim(), r),
            None => (spec_t, ""),
        };
        if name.is_empty() {
            return Err(Error::BadSpec {
                spec: spec.into(),
                reason: "no effect name",
            });
        }
        let mut params = Vec::new();
        for item in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or(Error::BadSpec {
                spec: spec.into(),
                reason: "parameters are key=value, comma separated",
            })?;
            params.push((k.trim(), v.trim()));
        }
        Self::from_parts(name, &params)
    }
}

impl fmt::Display for Effect {
    /// The canonical specification with every parameter, which [`FromStr`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Outline(p) => write!(
                f,
                "outline:method={},strength={},thickness={},sigma={},k={},p={},epsilon={},phi={},threshold1={},threshold2={}",
                p.method.name(),
                p.strength,
                p.thickness,
                p.sigma,
                p.k,
                p.p,
                p.epsilon,
                p.phi,
                p.threshold1,
                p.threshold2
            ),
            Self::Flatten(p) => write!(
                f,
                "flatten:d={},sigma_color={},sigma_space={},iterations={},k={},seed={},max_iter={}",
                p.bilateral.d, p.bilateral.sigma_color, p.bilateral.sigma_space, p.iterations, p.k, p.seed, p.max_iter
            ),
            Self::Contrast { factor } => write!(f, "contrast:factor={factor}"),
            Self::Autocontrast(p) => {
                write!(f, "autocontrast:cutoff_low={},cutoff_high={}", p.cutoff_low, p.cutoff_high)?;
                if let Some(i) = p.ignore {
                    write!(f, ",ignore={i}")?;
                }
                write!(f, ",preserve_tone={}", p.preserve_tone)
            }
            Self::Posterize { bits } => write!(f, "posterize:bits={bits}"),
            Self::Levels { levels } => write!(f, "levels:levels={levels}"),
            Self::Jpeg(p) => {
                write!(f, "jpeg:quality={},subsampling={},passes={}", p.quality, p.subsampling.name(), p.passes)
            }
            Self::Filter(k) => f.write_str(k.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_defaults_and_params() {
        assert_eq!(
            "contrast".parse::<Effect>().unwrap(),
            Effect::Contrast { factor: 1.5 }
        );
        assert_eq!(
            "contrast:factor=2".parse::<Effect>().unwrap(),
            Effect::Contrast { factor: 2.0 }
        );
        let e: Effect = "jpeg:quality=20,subsampling=4:4:4,passes=3"
            .parse()
            .unwrap();
        assert_eq!(
            e,
            Effect::Jpeg(JpegParams {
                quality: 20,
                subsampling: Subsampling::S444,
                passes: 3
            })
        );
        let e: Effect = "outline: method=canny, thickness=2".parse().unwrap();
        match e {
            Effect::Outline(p) => {
                assert_eq!(p.method, OutlineMethod::Canny);
                assert_eq!(p.thickness, 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            "find_edges".parse::<Effect>().unwrap(),
            Effect::Filter(PillowFilter::FindEdges)
        );
    }

    #[test]
    fn bad_specs_give_typed_errors() {
        assert!(matches!(
            "nope".parse::<Effect>(),
            Err(Error::UnknownEffect { .. })
        ));
        assert!(matches!(
            "contrast:gain=2".parse::<Effect>(),
            Err(Error::UnknownParameter { .. })
        ));
        assert!(matches!(
            "contrast:factor=abc".parse::<Effect>(),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(matches!(
            "posterize:bits=9".parse::<Effect>(),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(matches!(
            "jpeg:quality".parse::<Effect>(),
            Err(Error::BadSpec { .. })
        ));
        assert!(matches!(
            ":x=1".parse::<Effect>(),
            Err(Error::BadSpec { .. })
        ));
        assert!(matches!(
            "blur:radius=2".parse::<Effect>(),
            Err(Error::UnknownParameter { .. })
        ));
    }
}
