//! Prints the median time of each effect on the images in a folder (`bench_512.png`, `bench_1024.png`) as
//! tab-separated `effect size wall_ms cpu_ms` lines (medians; CPU time of the whole process, which a
//! loaded machine disturbs less than wall time);
//! `scripts/imgfx_bench.py` runs it next to Pillow/OpenCV.
//! Threads: set `RAYON_NUM_THREADS` (the script runs 1 and 2).
//!
//! `cargo run --release -p imgfx --example bench_table -- DIR [REPEATS]`

use std::time::Instant;

use imgfx::Effect;

/// CPU time of all this process's threads, in ms (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, the clock
/// Python's `time.process_time` reads; 0 off Linux).
#[cfg(target_os = "linux")]
fn cpu_ms() -> f64 {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; the libc function only writes it.
    if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

#[cfg(not(target_os = "linux"))]
fn cpu_ms() -> f64 {
    0.0
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
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    for size in [512, 1024] {
        let img = image::open(std::path::Path::new(&dir).join(format!("bench_{size}.png")))?;
        for spec in &specs {
            let e: Effect = spec.parse()?;
            let _ = e.apply(&img)?; // warm-up
            let mut wall = Vec::new();
            let mut cpu = Vec::new();
            for _ in 0..repeats {
                let (c0, s) = (cpu_ms(), Instant::now());
                // Inside the pool, so that the calling thread sleeps instead of running serial parts
                // while an idle worker spins (which would count twice in CPU time).
                let out = pool.install(|| e.apply(&img))?;
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
