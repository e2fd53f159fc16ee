//! Each metric moves the right way as its effect is applied with growing strength.

use image::DynamicImage;
use imgfx::{metrics, testimage::synthetic, Effect};

fn img() -> DynamicImage {
    synthetic(128, 96, 7)
}

fn apply(spec: &str) -> DynamicImage {
    spec.parse::<Effect>().unwrap().apply(&img()).unwrap()
}

fn strictly_increasing(v: &[f64]) -> bool {
    v.windows(2).all(|w| w[1] > w[0])
}

#[test]
fn outline_strength_raises_line_density() {
    for method in ["xdog", "canny", "contour"] {
        let d: Vec<f64> = [0.0, 0.4, 0.7, 1.0]
            .iter()
            .map(|s| {
                metrics::line_density(&apply(&format!("outline:method={method},strength={s}")))
            })
            .collect();
        assert!(strictly_increasing(&d), "{method}: {d:?}");
    }
}

#[test]
fn outline_thickness_raises_mean_line_thickness() {
    for method in ["xdog", "canny", "contour"] {
        let t: Vec<f64> = [1, 2, 3]
            .iter()
            .map(|t| {
                metrics::mean_line_thickness(&apply(&format!(
                    "outline:method={method},thickness={t}"
                )))
            })
            .collect();
        assert!(strictly_increasing(&t), "{method}: {t:?}");
    }
}

#[test]
fn flatten_iterations_lower_gradient_energy_and_k_lowers_colour_count() {
    // A gentle bilateral filter, so that each pass removes a little more shading.
    let e: Vec<f64> = [0, 1, 2, 4, 8]
        .iter()
        .map(|i| {
            -metrics::gradient_energy(&apply(&format!(
                "flatten:iterations={i},d=5,sigma_color=20,sigma_space=5"
            )))
        })
        .collect();
    assert!(strictly_increasing(&e), "gradient energy (negated): {e:?}");
    let c: Vec<f64> = [0, 32, 8, 3]
        .iter()
        .map(|k| -(metrics::colour_count(&apply(&format!("flatten:iterations=1,k={k}"))) as f64))
        .collect();
    assert!(strictly_increasing(&c), "colour count (negated): {c:?}");
    assert!(metrics::colour_count(&apply("flatten:iterations=1,k=3")) <= 3);
}

#[test]
fn contrast_factor_raises_rms_contrast_and_spread() {
    let imgs: Vec<DynamicImage> = [0.5, 1.0, 1.4, 2.0]
        .iter()
        .map(|f| apply(&format!("contrast:factor={f}")))
        .collect();
    let rms: Vec<f64> = imgs.iter().map(metrics::rms_contrast).collect();
    let spread: Vec<f64> = imgs.iter().map(metrics::histogram_spread).collect();
    assert!(strictly_increasing(&rms), "{rms:?}");
    // the spread saturates once the 5th/95th percentiles clip at 0/255
    assert!(
        spread.windows(2).all(|w| w[1] >= w[0]) && spread[3] > spread[0],
        "{spread:?}"
    );
    // autocontrast with a cutoff stretches the histogram too
    assert!(
        metrics::histogram_spread(&apply("autocontrast:cutoff=5"))
            > metrics::histogram_spread(&img())
    );
}

#[test]
fn posterize_bits_lower_occupied_levels() {
    let l: Vec<f64> = [8, 6, 4, 2, 1]
        .iter()
        .map(|b| -(metrics::occupied_levels(&apply(&format!("posterize:bits={b}")))[0] as f64))
        .collect();
    assert!(strictly_increasing(&l), "{l:?}");
    for levels in [2usize, 5, 16] {
        let got = metrics::occupied_levels(&apply(&format!("levels:levels={levels}")));
        assert!(got.iter().all(|&n| n <= levels), "{levels}: {got:?}");
    }
}

#[test]
fn jpeg_quality_drop_raises_blockiness_and_lowers_psnr_ssim() {
    let src = img();
    let outs: Vec<DynamicImage> = [95, 60, 30, 10]
        .iter()
        .map(|q| apply(&format!("jpeg:quality={q}")))
        .collect();
    let b: Vec<f64> = outs.iter().map(metrics::blockiness).collect();
    let p: Vec<f64> = outs
        .iter()
        .map(|o| -metrics::psnr(&src, o).unwrap())
        .collect();
    let s: Vec<f64> = outs
        .iter()
        .map(|o| -metrics::ssim(&src, o).unwrap())
        .collect();
    assert!(strictly_increasing(&b), "blockiness {b:?}");
    assert!(strictly_increasing(&p), "psnr (negated) {p:?}");
    assert!(strictly_increasing(&s), "ssim (negated) {s:?}");
    // repeated passes lose more
    let one = metrics::psnr(&src, &apply("jpeg:quality=30,passes=1")).unwrap();
    let five = metrics::psnr(&src, &apply("jpeg:quality=30,passes=5,subsampling=4:2:0")).unwrap();
    assert!(five < one, "{five} !< {one}");
}
