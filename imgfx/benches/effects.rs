//! Criterion benchmarks: each effect on 512² and 1024² RGB images.
//! `scripts/imgfx_bench.py` times Pillow/OpenCV on the same images and prints both side by side.
//! Set `IMGFX_BENCH_DIR` to a folder with `bench_512.png` and `bench_1024.png` to use those images.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use image::DynamicImage;
use imgfx::Effect;

fn images() -> Vec<(u32, DynamicImage)> {
    [512u32, 1024]
        .into_iter()
        .map(|s| {
            let img = std::env::var_os("IMGFX_BENCH_DIR")
                .and_then(|d| {
                    image::open(std::path::Path::new(&d).join(format!("bench_{s}.png"))).ok()
                })
                .unwrap_or_else(|| imgfx::testimage::synthetic(s, s, 1));
            (s, img)
        })
        .collect()
}

/// The effects timed, in `name:key=value` form (shared with the bench table example).
const EFFECTS: &[&str] = &[
    "contrast:factor=1.5",
    "autocontrast",
    "posterize:bits=3",
    "levels:levels=4",
    "contour",
    "find_edges",
    "smooth_more",
    "jpeg:quality=30",
    "flatten:iterations=1",
    "flatten:iterations=5",
    "outline",
    "outline:method=canny",
    "outline:method=contour",
];

fn bench(c: &mut Criterion) {
    let imgs = images();
    let mut g = c.benchmark_group("imgfx");
    g.sample_size(10);
    for spec in EFFECTS {
        let e: Effect = spec.parse().unwrap();
        for (s, img) in &imgs {
            g.bench_with_input(BenchmarkId::new(*spec, s), img, |b, img| {
                b.iter(|| e.apply(img).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
