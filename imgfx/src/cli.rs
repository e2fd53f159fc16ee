//! The `imgfx` command line (the thin `examples/imgfx.rs` calls [`run`]):
//!
//! ```text
//! imgfx --effect NAME [--PARAM value ...] [--max-pixels N] IN OUT
//! imgfx --effect 'NAME:key=value,...' IN OUT
//! imgfx --metrics A [B] [--max-pixels N]
//! ```
//!
//! Unreadable, empty or too large inputs give an error naming the file and nothing is written; the output
//! is written atomically and never over an input.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::io::{load_image, save_image_atomic, DEFAULT_MAX_PIXELS};
use crate::{metrics, Effect, Error, Result};

/// The usage text.
pub const USAGE: &str = "usage:
  imgfx --effect NAME [--PARAM value ...] [--max-pixels N] IN OUT
  imgfx --effect 'NAME:key=value,...' IN OUT
  imgfx --metrics A [B] [--max-pixels N]
effects: outline, flatten, contrast, autocontrast, posterize, levels, jpeg, and Pillow's kernel filters
(blur, contour, detail, edge_enhance, edge_enhance_more, emboss, find_edges, sharpen, smooth, smooth_more);
see the imgfx crate docs for their parameters.";

fn usage(msg: &str) -> Error {
    Error::Usage(format!("{msg}\n{USAGE}"))
}

/// Runs the command line `args` (without the program name), printing to `out`.
pub fn run<I, S>(args: I, out: &mut dyn Write) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    let mut effect: Option<String> = None;
    let mut metrics_mode = false;
    let mut max_pixels = DEFAULT_MAX_PIXELS;
    let mut params: Vec<(String, String)> = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let value = |i: usize| {
            args.get(i + 1)
                .cloned()
                .ok_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "-h" | "--help" => {
                writeln!(out, "{USAGE}").map_err(|source| Error::Io {
                    path: "<stdout>".into(),
                    source,
                })?;
                return Ok(());
            }
            "--effect" => {
                effect = Some(value(i)?);
                i += 1;
            }
            "--metrics" => metrics_mode = true,
            "--max-pixels" => {
                let v = value(i)?;
                max_pixels = v
                    .parse()
                    .map_err(|_| usage(&format!("--max-pixels: `{v}` is not a number")))?;
                i += 1;
            }
            s if s.starts_with("--") && s.len() > 2 => {
                let (k, v) = match s[2..].split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => {
                        i += 1;
                        (
                            s[2..].to_string(),
                            args.get(i)
                                .cloned()
                                .ok_or_else(|| usage(&format!("{s} needs a value")))?,
                        )
                    }
                };
                params.push((k.replace('-', "_"), v));
            }
            _ => paths.push(PathBuf::from(a)),
        }
        i += 1;
    }
    let io_err = |source| Error::Io {
        path: "<stdout>".into(),
        source,
    };
    match (metrics_mode, effect) {
        (true, Some(_)) => Err(usage("--metrics and --effect exclude each other")),
        (true, None) => {
            if !params.is_empty() {
                return Err(usage(&format!(
                    "--metrics takes no parameter --{}",
                    params[0].0
                )));
            }
            let (a, b) = match paths.as_slice() {
                [a] => (a, None),
                [a, b] => (a, Some(b)),
                _ => return Err(usage("--metrics takes one or two images")),
            };
            let ia = load_image(a, max_pixels)?;
            let ib = b.map(|b| load_image(b, max_pixels)).transpose()?;
            let ma = metrics::Metrics::of(&ia);
            let mb = ib.as_ref().map(metrics::Metrics::of);
            match &mb {
                None => writeln!(out, "metric\t{}", a.display()).map_err(io_err)?,
                Some(_) => writeln!(out, "metric\t{}\t{}", a.display(), b.unwrap().display())
                    .map_err(io_err)?,
            }
            let rows_b = mb.as_ref().map(|m| m.rows());
            for (k, (name, va)) in ma.rows().into_iter().enumerate() {
                match &rows_b {
                    None => writeln!(out, "{name}\t{va}").map_err(io_err)?,
                    Some(rb) => writeln!(out, "{name}\t{va}\t{}", rb[k].1).map_err(io_err)?,
                }
            }
            if let Some(ib) = &ib {
                let p = metrics::psnr(&ia, ib).map_err(|e| {
                    usage(&format!("{} vs {}: {e}", a.display(), b.unwrap().display()))
                })?;
                let s = metrics::ssim(&ia, ib)?;
                writeln!(out, "psnr_db\t{p:.3}\nssim\t{s:.5}").map_err(io_err)?;
            }
            Ok(())
        }
        (false, Some(spec)) => {
            let [input, output] = paths.as_slice() else {
                return Err(usage("--effect needs IN and OUT"));
            };
            let e = match spec.split_once(':') {
                Some(_) if !params.is_empty() => {
                    return Err(usage(
                        "give parameters either in the spec or as --PARAM, not both",
                    ))
                }
                Some(_) => spec.parse::<Effect>()?,
                None => Effect::from_parts(&spec, &params)?,
            };
            apply_file(&e, input, output, max_pixels)?;
            writeln!(out, "{} -> {}: {e}", input.display(), output.display()).map_err(io_err)?;
            Ok(())
        }
        (false, None) => Err(usage("give --effect or --metrics")),
    }
}

/// Reads `input`, applies `e`, writes `output` atomically (never over `input`).
pub fn apply_file(e: &Effect, input: &Path, output: &Path, max_pixels: u64) -> Result<()> {
    if let Ok(true) =
        std::fs::canonicalize(input).map(|i| Some(i) == std::fs::canonicalize(output).ok())
    {
        return Err(Error::WouldOverwriteInput {
            path: output.to_path_buf(),
        });
    }
    let img = load_image(input, max_pixels)?;
    let res = e.apply(&img).map_err(|err| match err {
        Error::EmptyImage { width, height, .. } => Error::EmptyImage {
            what: input.display().to_string(),
            width,
            height,
        },
        other => other,
    })?;
    save_image_atomic(&res, output, &[input])
}
