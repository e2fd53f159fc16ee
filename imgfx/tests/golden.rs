//! Golden tests against Pillow and OpenCV: `scripts/imgfx_goldens.py` made the inputs, the reference outputs
//! and `fixtures/manifest.tsv`; these tests apply the same effect with imgfx and compare with the
//! issue's tolerances: `exact` (max abs difference 0; Pillow's tone and kernel effects, and OpenCV's Canny on
//! Pillow's luma), `bilateral` (≤ 1 on ≥ 99.9% of samples),
//! `jpeg` (with the `turbojpeg` feature, libjpeg-turbo like Pillow: max abs difference 0; and, with or
//! without it, the pure-Rust codec: PSNR to the input within 0.5 dB of Pillow's, blockiness within 10%).

use std::path::{Path, PathBuf};

use image::DynamicImage;
use imgfx::{metrics, Effect};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    golden: String,
    input: String,
    effect: String,
    kind: String,
}

fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("manifest.tsv")).expect("manifest.tsv");
    let cases: Vec<Case> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "bad manifest line {l:?}");
            Case {
                golden: f[0].into(),
                input: f[1].into(),
                effect: f[2].into(),
                kind: f[3].into(),
            }
        })
        .collect();
    assert!(cases.len() > 50, "manifest has only {} cases", cases.len());
    cases
}

fn load(name: &str) -> DynamicImage {
    image::open(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn raw(img: &DynamicImage) -> Vec<u8> {
    match img {
        DynamicImage::ImageLuma8(b) => b.as_raw().clone(),
        other => other.to_rgb8().into_raw(),
    }
}

/// `p.passes` round trips through the pure-Rust codec (`imgfx::jpeg::pure`), whatever the features.
fn pure_round_trip(input: &DynamicImage, p: &imgfx::JpegParams) -> DynamicImage {
    let mut img = input.clone();
    for _ in 0..p.passes {
        let (w, h) = (img.width(), img.height());
        let cn = if matches!(img, DynamicImage::ImageLuma8(_)) {
            1
        } else {
            3
        };
        let bytes = imgfx::jpeg::pure::encode(&raw(&img), w, h, cn, p).unwrap();
        img = imgfx::jpeg::pure::decode(&bytes).unwrap();
    }
    img
}

fn run(kind: &str) -> usize {
    let mut n = 0;
    let mut failures = Vec::new();
    for c in manifest().into_iter().filter(|c| c.kind == kind) {
        let input = load(&c.input);
        let want = load(&c.golden);
        let effect: Effect = c
            .effect
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", c.effect));
        let got = effect.apply(&input).unwrap();
        assert_eq!(got.color(), input.color(), "{}: layout changed", c.golden);
        let (g, w) = (raw(&got), raw(&want));
        assert_eq!(g.len(), w.len(), "{}", c.golden);
        match kind {
            "exact" => {
                let bad = g.iter().zip(&w).filter(|(a, b)| a != b).count();
                let maxd = g
                    .iter()
                    .zip(&w)
                    .map(|(&a, &b)| (a as i32 - b as i32).abs())
                    .max()
                    .unwrap();
                if bad != 0 {
                    failures.push(format!(
                        "{} ({}): {bad} samples differ, max {maxd}",
                        c.golden, c.effect
                    ));
                }
            }
            "bilateral" => {
                let maxd = g
                    .iter()
                    .zip(&w)
                    .map(|(&a, &b)| (a as i32 - b as i32).abs())
                    .max()
                    .unwrap();
                let within1 = g
                    .iter()
                    .zip(&w)
                    .filter(|(&a, &b)| (a as i32 - b as i32).abs() <= 1)
                    .count();
                let frac = within1 as f64 / g.len() as f64;
                if frac < 0.999 {
                    failures.push(format!(
                        "{} ({}): {:.4}% within 1, max {maxd}",
                        c.golden,
                        c.effect,
                        frac * 100.0
                    ));
                }
            }
            "jpeg" => {
                // With libjpeg-turbo (the `turbojpeg` feature), the same codec as Pillow: bit-identical.
                if cfg!(feature = "turbojpeg") {
                    let bad = g.iter().zip(&w).filter(|(a, b)| a != b).count();
                    if bad != 0 {
                        failures.push(format!(
                            "{} ({}, libjpeg-turbo): {bad} samples differ from Pillow's",
                            c.golden, c.effect
                        ));
                    }
                }
                // The pure-Rust codec (the codec without the feature; checked either way): PSNR to the
                // input within 0.5 dB of Pillow's, blockiness within 10%.
                let Effect::Jpeg(p) = effect else {
                    panic!("{}: not a jpeg effect", c.effect)
                };
                let pure = pure_round_trip(&input, &p);
                let ours = metrics::psnr(&input, &pure).unwrap();
                let theirs = metrics::psnr(&input, &want).unwrap();
                let (bo, bt) = (metrics::blockiness(&pure), metrics::blockiness(&want));
                eprintln!("{}: pure-Rust codec PSNR {ours:.2} dB, Pillow {theirs:.2} dB; blockiness {bo:.3}, Pillow {bt:.3}", c.golden);
                if (ours - theirs).abs() > 0.5 {
                    failures.push(format!(
                        "{}: pure-Rust PSNR {ours:.3} vs Pillow {theirs:.3}",
                        c.golden
                    ));
                }
                if (bo - bt).abs() > 0.1 * bt {
                    failures.push(format!(
                        "{}: pure-Rust blockiness {bo:.4} vs Pillow {bt:.4}",
                        c.golden
                    ));
                }
            }
            other => panic!("unknown comparison {other}"),
        }
        n += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {n} goldens fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

#[test]
fn pillow_exact_goldens() {
    // kernel filters, contrast, autocontrast, posterize on RGB and L
    assert!(run("exact") >= 60);
}

#[test]
fn opencv_bilateral_goldens() {
    assert!(run("bilateral") >= 8);
}

#[test]
fn pillow_jpeg_goldens() {
    assert!(run("jpeg") >= 14);
}

#[test]
fn rgba_colour_matches_rgb_and_alpha_is_kept() {
    let rgb = load("in_rgb.png");
    let mut rgba = rgb.to_rgba8();
    for (i, p) in rgba.pixels_mut().enumerate() {
        p[3] = (i * 7 % 256) as u8;
    }
    let rgba = DynamicImage::ImageRgba8(rgba);
    for spec in [
        "contrast:factor=1.7",
        "posterize:bits=3",
        "smooth_more",
        "autocontrast:cutoff=1",
        "levels:levels=5",
        "flatten:iterations=1",
        "outline",
        "outline:method=canny,threshold1=50,threshold2=150",
        "jpeg:quality=30,passes=2",
    ] {
        let e: Effect = spec.parse().unwrap();
        let a = e.apply(&rgb).unwrap();
        let b = e.apply(&rgba).unwrap();
        assert_eq!(
            a.to_rgb8(),
            b.to_rgb8(),
            "{spec}: colour differs between RGB and RGBA"
        );
        let alpha_in: Vec<u8> = rgba.to_rgba8().pixels().map(|p| p[3]).collect();
        let alpha_out: Vec<u8> = b.to_rgba8().pixels().map(|p| p[3]).collect();
        assert_eq!(alpha_in, alpha_out, "{spec}: alpha changed");
    }
}
