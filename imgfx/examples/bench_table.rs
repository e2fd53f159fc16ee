//! Prints the median time of each effect on the images in a folder (`bench_512.png`, `bench_1024.png`) as
//! tab-separated `effect size ms` lines; `scripts/imgfx_bench.py` runs it next to Pillow/OpenCV.
//! Threads: set `RAYON_NUM_THREADS` (the script runs 1 and 2).
//!
//! `cargo run --release -p imgfx --example bench_table -- DIR [REPEATS]`

use std::time::Instant;

use imgfx::Effect;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: bench_table DIR [REPEATS] [EFFECT ...]")?;
    let repeats: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let specs: Vec<String> = args.collect();
    let specs: Vec<String> = if specs.is_empty() {
        [
            "contrast:factor=1.5",
            "autocontrast",
            "posterize:bits=3",
            "contour",
            "find_edges",
            "smooth_more",
            "jpeg:quality=30",
            "flatten:iterations=1",
            "flatten:iterations=5",
            "outline",
            "outline:method=canny",
            "outline:method=contour",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    } else {
        specs
    };
    for size in [512, 1024] {
        let img = image::open(std::path::Path::new(&dir).join(format!("bench_{size}.png")))?;
        for spec in &specs {
            let e: Effect = spec.parse()?;
            let _ = e.apply(&img)?; // warm-up
            let mut t: Vec<f64> = (0..repeats)
                .map(|_| {
                    let s = Instant::now();
                    let out = e.apply(&img).unwrap();
                    let el = s.elapsed().as_secs_f64() * 1e3;
                    drop(out);
                    el
                })
                .collect();
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!("{spec}\t{size}\t{:.3}", t[t.len() / 2]);
        }
    }
    Ok(())
}
