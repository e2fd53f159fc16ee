//! Reads an fp16 checkpoint of at least 1 GB into f32, tensor by tensor, and hashes it.
//!
//! The file is generated in a temporary folder (8 × 128 MiB F16 tensors, 1 GiB of data). Targets:
//! fp16 → f32 at ≥ 1 GB/s per core (throughput is reported in input bytes), sha256 at the `sha2`
//! crate's native speed (compared against hashing the same bytes already in memory).
//! `LORA_CORE_BENCH_MB` shrinks the file for a quick run.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lora_core::{write_safetensors, DType, Metadata, SafetensorsFile, TensorView};
use sha2::{Digest, Sha256};
use std::hint::black_box;

fn make_checkpoint(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    let total_mb: usize = std::env::var("LORA_CORE_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let n_tensors = 8usize;
    let per_tensor = total_mb * (1 << 20) / n_tensors / 2; // f16 elements
    let path = dir.join("fp16.safetensors");
    let bufs: Vec<Vec<u8>> = (0..n_tensors)
        .map(|t| {
            let v: Vec<half::f16> = (0..per_tensor)
                .map(|i| half::f16::from_f32(((i * 31 + t) % 2001) as f32 * 1e-3 - 1.0))
                .collect();
            bytemuck::cast_slice(&v).to_vec()
        })
        .collect();
    let tensors: Vec<(String, TensorView)> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                format!("model.w{i}"),
                TensorView::from_bytes(DType::F16, vec![per_tensor], b.as_slice()).unwrap(),
            )
        })
        .collect();
    write_safetensors(&path, &tensors, &Metadata::new()).unwrap();
    let bytes = (n_tensors * per_tensor * 2) as u64;
    (path, bytes)
}

/// Nanoseconds this thread has spent on a CPU (Linux), so that a figure per core can be given
/// even when other processes share the machine.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Runs `f` a few times and prints wall and on-CPU throughput.
fn per_core(label: &str, bytes: u64, mut f: impl FnMut()) {
    let runs = 3;
    let (c0, t0) = (thread_cpu_ns(), std::time::Instant::now());
    for _ in 0..runs {
        f();
    }
    let wall = t0.elapsed().as_secs_f64();
    let gb = (bytes * runs) as f64 / 1e9;
    match (c0, thread_cpu_ns()) {
        (Some(a), Some(b)) => {
            let cpu = (b - a) as f64 / 1e9;
            println!(
                "{label}: {:.2} GB/s wall, {:.2} GB/s per CPU-second (one thread)",
                gb / wall,
                gb / cpu
            )
        }
        _ => println!("{label}: {:.2} GB/s wall", gb / wall),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = make_checkpoint(dir.path());
    let file = SafetensorsFile::open(&path).unwrap();
    let names: Vec<String> = file.names().into_iter().map(String::from).collect();
    // Warm the page cache so the numbers measure conversion and hashing, not the disk.
    black_box(Sha256::digest(file.bytes()));

    per_core("fp16 -> f32 (input bytes)", bytes, || {
        for n in &names {
            black_box(file.tensor_f32(n).unwrap());
        }
    });
    let mut buf = Vec::new();
    per_core("fp16 -> f32 into a reused buffer", bytes, || {
        for n in &names {
            black_box(file.tensor_f32_into(n, &mut buf).unwrap());
        }
    });
    per_core("sha256 of the data section", bytes, || {
        black_box(Sha256::digest(file.data_section()));
    });

    let mut g = c.benchmark_group("fp16_checkpoint");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("fp16_to_f32_all_tensors", |b| {
        b.iter(|| {
            for n in &names {
                black_box(file.tensor_f32(n).unwrap());
            }
        })
    });
    g.bench_function("fp16_to_f32_reused_buffer", |b| {
        let mut buf = Vec::new();
        b.iter(|| {
            for n in &names {
                black_box(file.tensor_f32_into(n, &mut buf).unwrap());
            }
        })
    });
    g.bench_function("sha256_file", |b| {
        b.iter(|| black_box(lora_core::sha256_file(&path).unwrap()))
    });
    g.bench_function("sha256_in_memory_native", |b| {
        b.iter(|| black_box(Sha256::digest(file.data_section())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
