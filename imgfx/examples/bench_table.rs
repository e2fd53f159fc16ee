//! Prints the median time of each effect on the images in a folder (`bench_512.png`, `bench_1024.png`) as
//! tab-separated `effect size wall_ms cpu_ms` lines (medians; CPU time of the whole process, from
//! `/proc/self/task/*/schedstat`, which a loaded machine disturbs less than wall time);
//! `scripts/imgfx_bench.py` runs it next to Pillow/OpenCV.
//! Threads: set `RAYON_NUM_THREADS` (the script runs 1 and 2).
//!
//! `cargo run --release -p imgfx --example bench_table -- DIR [REPEATS]`

use std::time::Instant;

use imgfx::Effect;

/// CPU time of all this process's threads, in ms (Linux; 0 elsewhere).
fn cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

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
            let mut wall = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..repeats {
                let (c0, s) = (cpu_ms(), Instant::now());
                let out = e.apply(&img)?;
                wall.push(s.elapsed().as_secs_f64() * 1e3);
                cpu.push(cpu_ms() - c0);
                drop(out);
            }
            wall.sort_by(|a, b| a.total_cmp(b));
            cpu.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{spec}\t{size}\t{:.3}\t{:.3}",
                wall[wall.len() / 2],
                cpu[cpu.len() / 2]
            );
        }
    }
    Ok(())
}
