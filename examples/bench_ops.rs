//! Benchmarks of the LoRA tools on generated files with the real SD1 module names and shapes, printed as a
//! table with wall time and peak memory (`/usr/bin/time -v`) against sd-scripts' times on a 2-core machine.
//!
//! ```text
//! cargo build --release --examples && cargo run --release --example bench_ops [-- --dir /some/tmp] [--quick]
//! ```
//! It writes two SD1 rank-64 LoRAs (fp16), a full-size SD1-shaped fp16 checkpoint (~2.1 GB), a merged copy
//! and the tools' outputs into a temporary folder, which it deletes at the end. `--quick` skips the two
//! checkpoint benchmarks; `--keep` keeps the folder (for profiling the tools on the same files).
//! `--sdscripts` also runs kohya-ss sd-scripts' own resize_lora.py, svd_merge_lora.py and merge_lora.py on
//! the same files in the same run (torch CPU, from `.tools/sd-scripts` and `.tools/py`, set up as
//! `scripts/ops_sdscripts_goldens.py` explains), so that the CPU times compare under the same load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lora_core::names::{ldm_targets, Table};
use lora_core::{
    BaseModel, DType, LoraFile, LoraModule, Metadata, ModuleKind, SaveOptions, SavePrecision,
};
use lora_ops::ckpt_io::{f32_to_bytes, safetensors_sort, write_streamed, OutTensor};
use ndarray::{ArrayD, IxDyn};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn make_lora(path: &Path, seed: u64, rank: usize) {
    let mut rng = Rng(seed | 1);
    let modules = Table::Sd1
        .entries()
        .iter()
        .map(|e| {
            let (dshape, ushape) = match e.kind {
                ModuleKind::Linear => (vec![rank, e.in_features], vec![e.out_features, rank]),
                ModuleKind::Conv { kernel: [kh, kw] } => (
                    vec![rank, e.in_features, kh, kw],
                    vec![e.out_features, rank, 1, 1],
                ),
            };
            let down = ArrayD::from_shape_simple_fn(IxDyn(&dshape), || rng.next() * 0.1);
            let up = ArrayD::from_shape_simple_fn(IxDyn(&ushape), || rng.next() * 0.02);
            LoraModule::new(e.name, down, up, Some(32.0)).expect("valid module")
        })
        .collect();
    let mut meta = Metadata::new();
    meta.set_network_module("networks.lora")
        .set_network_dim(rank as i64);
    meta.insert("ss_network_alpha", "32.0");
    meta.insert("ss_v2", "False");
    meta.insert("ss_base_model_version", "sd_v1");
    LoraFile::new(modules, meta)
        .save(path, SavePrecision::Fp16, &SaveOptions::default())
        .expect("write LoRA");
}

/// An fp16 checkpoint with every SD1 LoRA-targeted weight at its LDM key and shape, the token embedding, and
/// filler tensors under the U-Net / VAE prefixes up to SD1's parameter count (~1.07 G parameters).
fn make_checkpoint(path: &Path, seed: u64) {
    let mut tensors = Vec::new();
    let mut params = 0usize;
    for e in Table::Sd1Conv.entries() {
        let key = ldm_targets(e.name, &BaseModel::Sd1)[0].key.clone();
        let shape = match e.kind {
            ModuleKind::Linear => vec![e.out_features, e.in_features],
            ModuleKind::Conv { kernel: [kh, kw] } => vec![e.out_features, e.in_features, kh, kw],
        };
        params += shape.iter().product::<usize>();
        tensors.push(OutTensor {
            name: key,
            dtype: DType::F16,
            shape,
        });
    }
    tensors.push(OutTensor {
        name: "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight".into(),
        dtype: DType::F16,
        shape: vec![49408, 768],
    });
    params += 49408 * 768;
    let target = 1_066_000_000usize;
    let mut i = 0;
    while params < target {
        let prefix = if i % 5 == 0 {
            "first_stage_model"
        } else {
            "model.diffusion_model"
        };
        tensors.push(OutTensor {
            name: format!("{prefix}.filler_{i}.weight"),
            dtype: DType::F16,
            shape: vec![1024, 4096],
        });
        params += 1024 * 4096;
        i += 1;
    }
    safetensors_sort(&mut tensors);
    let mut rng = Rng(seed | 1);
    write_streamed(
        path,
        &tensors,
        &Metadata::new(),
        64 << 20,
        |chunk| {
            Ok(chunk
                .iter()
                .map(|t| {
                    let v: Vec<f32> = (0..t.shape.iter().product::<usize>())
                        .map(|_| rng.next() * 0.05)
                        .collect();
                    f32_to_bytes(t.dtype, &v).expect("f16")
                })
                .collect())
        },
        |_| {},
    )
    .expect("write checkpoint");
}

struct Run {
    wall: f64,
    cpu: f64,
    rss_mb: f64,
}

fn run_tool(exe_dir: &Path, tool: &str, args: &[&str]) -> Run {
    let exe = exe_dir.join(tool);
    assert!(
        exe.exists(),
        "{} missing: run `cargo build --release --examples` first",
        exe.display()
    );
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v").arg(&exe).args(args);
    timed(cmd, tool)
}

/// sd-scripts' `networks/{script}` with the venv's python (torch on the CPU).
fn run_sdscripts(script: &str, args: &[&str]) -> Run {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools");
    let (py, sds) = (root.join("py/bin/python"), root.join("sd-scripts"));
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-v")
        .arg(py)
        .arg(sds.join("networks").join(script))
        .args(args)
        .env("PYTHONPATH", &sds)
        .current_dir(&sds);
    timed(cmd, script)
}

fn timed(mut cmd: Command, tool: &str) -> Run {
    let t = Instant::now();
    let out = cmd.output().expect("run /usr/bin/time");
    let wall = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!("{tool} failed:\n{err}");
    }
    let rss_kb: f64 = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let field = |name: &str| -> f64 {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let cpu = field("User time (seconds): ") + field("System time (seconds): ");
    Run {
        wall,
        cpu,
        rss_mb: rss_kb / 1024.0,
    }
}

fn mb(p: &Path) -> f64 {
    std::fs::metadata(p)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let keep = args.iter().any(|a| a == "--keep");
    let sdscripts = args.iter().any(|a| a == "--sdscripts");
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("copier-lora-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let exe_dir = std::env::current_exe()
        .expect("exe")
        .parent()
        .expect("dir")
        .to_path_buf();
    let p = |n: &str| dir.join(n);
    let s = |q: &Path| q.to_string_lossy().into_owned();

    eprintln!("generating SD1 rank-64 LoRAs in {}", dir.display());
    make_lora(&p("a.safetensors"), 1, 64);
    make_lora(&p("b.safetensors"), 2, 64);
    let mut rows: Vec<(String, Run, f64, &str)> = Vec::new();

    let r = run_tool(
        &exe_dir,
        "resize_lora",
        &[
            "--model",
            &s(&p("a.safetensors")),
            "--save_to",
            &s(&p("r.safetensors")),
            "--new_rank",
            "16",
            "--save_precision",
            "fp16",
        ],
    );
    rows.push((
        "resize SD1 r64 -> 16".into(),
        r,
        mb(&p("a.safetensors")),
        "78 s",
    ));
    let r = run_tool(
        &exe_dir,
        "resize_lora",
        &[
            "--model",
            &s(&p("a.safetensors")),
            "--save_to",
            &s(&p("rd.safetensors")),
            "--new_rank",
            "64",
            "--dynamic_method",
            "sv_fro",
            "--dynamic_param",
            "0.9",
            "--verbose",
        ],
    );
    rows.push((
        "resize SD1 r64 sv_fro 0.9".into(),
        r,
        mb(&p("a.safetensors")),
        "-",
    ));
    let r = run_tool(
        &exe_dir,
        "svd_merge_lora",
        &[
            "--models",
            &s(&p("a.safetensors")),
            &s(&p("b.safetensors")),
            "--ratios",
            "1",
            "-1",
            "--new_rank",
            "32",
            "--save_to",
            &s(&p("m.safetensors")),
            "--save_precision",
            "fp16",
        ],
    );
    rows.push((
        "svd_merge 2x SD1 r64 -> 32".into(),
        r,
        2.0 * mb(&p("a.safetensors")),
        "83 s",
    ));
    let r = run_tool(
        &exe_dir,
        "merge_lora",
        &[
            "--models",
            &s(&p("a.safetensors")),
            &s(&p("b.safetensors")),
            "--ratios",
            "1",
            "0.5",
            "--save_to",
            &s(&p("ab.safetensors")),
            "--save_precision",
            "fp16",
        ],
    );
    rows.push((
        "LoRA+LoRA merge 2x SD1 r64".into(),
        r,
        2.0 * mb(&p("a.safetensors")),
        "2.4 s",
    ));

    if sdscripts {
        eprintln!("running sd-scripts' own tools on the same files (minutes)");
        let (a, b) = (s(&p("a.safetensors")), s(&p("b.safetensors")));
        let input = mb(&p("a.safetensors"));
        let out = s(&p("sds_r.safetensors"));
        let r = run_sdscripts(
            "resize_lora.py",
            &[
                "--model",
                &a,
                "--save_to",
                &out,
                "--new_rank",
                "16",
                "--save_precision",
                "fp16",
            ],
        );
        rows.push((
            "sd-scripts resize_lora.py r64 -> 16".into(),
            r,
            input,
            "(same run)",
        ));
        let out = s(&p("sds_m.safetensors"));
        let r = run_sdscripts(
            "svd_merge_lora.py",
            &[
                "--models",
                &a,
                &b,
                "--ratios",
                "1",
                "-1",
                "--new_rank",
                "32",
                "--save_to",
                &out,
                "--save_precision",
                "fp16",
            ],
        );
        rows.push((
            "sd-scripts svd_merge_lora.py -> 32".into(),
            r,
            2.0 * input,
            "(same run)",
        ));
        let out = s(&p("sds_ab.safetensors"));
        let r = run_sdscripts(
            "merge_lora.py",
            &[
                "--models",
                &a,
                &b,
                "--ratios",
                "1",
                "0.5",
                "--save_to",
                &out,
                "--save_precision",
                "fp16",
            ],
        );
        rows.push((
            "sd-scripts merge_lora.py LoRA+LoRA".into(),
            r,
            2.0 * input,
            "(same run)",
        ));
    }

    if !quick {
        eprintln!("generating a full-size SD1 fp16 checkpoint (~2.1 GB)");
        make_checkpoint(&p("sd1.safetensors"), 3);
        let t = Instant::now();
        std::fs::copy(p("sd1.safetensors"), p("copy.safetensors")).expect("copy");
        let copy = t.elapsed().as_secs_f64();
        std::fs::remove_file(p("copy.safetensors")).ok();
        rows.push((
            "plain file copy of the checkpoint".into(),
            Run {
                wall: copy,
                cpu: f64::NAN,
                rss_mb: f64::NAN,
            },
            mb(&p("sd1.safetensors")),
            "-",
        ));
        let r = run_tool(
            &exe_dir,
            "merge_lora",
            &[
                "--sd_model",
                &s(&p("sd1.safetensors")),
                "--models",
                &s(&p("a.safetensors")),
                "--ratios",
                "1",
                "--save_to",
                &s(&p("tuned.safetensors")),
                "--save_precision",
                "fp16",
            ],
        );
        rows.push((
            "merge LoRA into SD1 fp16 ckpt".into(),
            r,
            mb(&p("sd1.safetensors")),
            "(loads model)",
        ));
        let r = run_tool(
            &exe_dir,
            "extract_lora_from_models",
            &[
                "--model_org",
                &s(&p("sd1.safetensors")),
                "--model_tuned",
                &s(&p("tuned.safetensors")),
                "--dim",
                "64",
                "--save_to",
                &s(&p("x.safetensors")),
            ],
        );
        rows.push((
            "extract dim 64 from 2 SD1 ckpts".into(),
            r,
            2.0 * mb(&p("sd1.safetensors")),
            "98 s, 11 GB",
        ));
    }

    println!("| operation | wall (s) | CPU user+sys (s) | peak RSS (MB) | input (MB) | sd-scripts (2 cores) |");
    println!("|---|---:|---:|---:|---:|---|");
    for (name, r, input, reference) in &rows {
        println!(
            "| {name} | {:.2} | {:.2} | {:.0} | {:.0} | {reference} |",
            r.wall, r.cpu, r.rss_mb, input
        );
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!("(load average during the run: {})", l.trim());
    }
    if keep {
        eprintln!("kept the files in {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).ok();
    }
}
