//! Shared by the parity tests: the kernel runners (CPU emulation, real GPU) and the parity cases,
//! written once and run on either.
#![allow(dead_code)]

pub mod cases;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub use lora_cuda::cuda::host::KArg;

/// Something that runs a kernel by name.
pub trait Runner {
    /// Runs `kernel`; buffers in `args` are replaced by their contents after the launch.
    fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [KArg],
    );
    /// Whether tensor-core (mma.sync) code runs here (false in the emulation: the scalar twin runs).
    fn has_tensor_cores(&self) -> bool;
}

/// The CPU emulation harness: `kernels/emu/runner.cpp` compiled once per test binary with g++.
pub struct Emu {
    exe: PathBuf,
}

impl Emu {
    pub fn get() -> &'static Emu {
        static EMU: OnceLock<Emu> = OnceLock::new();
        EMU.get_or_init(|| {
            let kdir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("emu_runner_{}", std::process::id()));
            let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
            let status = Command::new(&cxx)
                .args([
                    "-std=c++20",
                    "-O1",
                    "-pthread",
                    "-Wno-unknown-pragmas",
                    "-include",
                ])
                .arg(kdir.join("emu/cuda_emu.h"))
                .arg(kdir.join("emu/runner.cpp"))
                .arg("-o")
                .arg(&out)
                .status()
                .unwrap_or_else(|e| panic!("running {cxx} to build the emulation harness: {e}"));
            assert!(
                status.success(),
                "the kernel emulation harness failed to compile with {cxx}"
            );
            Emu { exe: out }
        })
    }
}

impl Runner for Emu {
    fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [KArg],
    ) {
        let mut job = Vec::new();
        job.extend((kernel.len() as u32).to_le_bytes());
        job.extend(kernel.as_bytes());
        for v in [
            grid.0,
            grid.1,
            grid.2,
            block.0,
            block.1,
            block.2,
            args.len() as u32,
        ] {
            job.extend(v.to_le_bytes());
        }
        for a in args.iter() {
            match a {
                KArg::F32s(v) => {
                    job.push(b'p');
                    job.extend((v.len() as u64 * 4).to_le_bytes());
                    v.iter().for_each(|x| job.extend(x.to_le_bytes()));
                }
                KArg::U16s(v) => {
                    job.push(b'p');
                    job.extend((v.len() as u64 * 2).to_le_bytes());
                    v.iter().for_each(|x| job.extend(x.to_le_bytes()));
                }
                KArg::I32(v) => {
                    job.push(b's');
                    job.extend(4u32.to_le_bytes());
                    job.extend(v.to_le_bytes());
                }
                KArg::I64(v) => {
                    job.push(b's');
                    job.extend(8u32.to_le_bytes());
                    job.extend(v.to_le_bytes());
                }
                KArg::F32(v) => {
                    job.push(b's');
                    job.extend(4u32.to_le_bytes());
                    job.extend(v.to_le_bytes());
                }
                KArg::Raw(b) => {
                    job.push(b's');
                    job.extend((b.len() as u32).to_le_bytes());
                    job.extend(b);
                }
            }
        }
        let mut child = Command::new(&self.exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the emulation harness");
        child.stdin.take().unwrap().write_all(&job).unwrap();
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let st = child.wait_with_output().unwrap();
        assert!(
            st.status.success(),
            "emulated {kernel} failed: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let mut pos = 0;
        for a in args.iter_mut() {
            let take = |pos: &mut usize| {
                let len = u64::from_le_bytes(out[*pos..*pos + 8].try_into().unwrap()) as usize;
                *pos += 8;
                let b = &out[*pos..*pos + len];
                *pos += len;
                b.to_vec()
            };
            match a {
                KArg::F32s(v) => {
                    let b = take(&mut pos);
                    *v = b
                        .chunks(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                }
                KArg::U16s(v) => {
                    let b = take(&mut pos);
                    *v = b
                        .chunks(2)
                        .map(|c| u16::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                }
                _ => {}
            }
        }
    }

    fn has_tensor_cores(&self) -> bool {
        false
    }
}

/// The real GPU (device 0).
pub struct Gpu;

impl Gpu {
    /// The GPU runner, or the reason there is none (the caller prints it and skips).
    pub fn get() -> Result<Gpu, String> {
        match lora_cuda::Device::cuda(0) {
            Ok(_) => Ok(Gpu),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Runner for Gpu {
    fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [KArg],
    ) {
        lora_cuda::cuda::host::launch_host(0, kernel, grid, block, args)
            .unwrap_or_else(|e| panic!("{kernel}: {e}"));
    }

    fn has_tensor_cores(&self) -> bool {
        true
    }
}

/// Asserts |got − want| ≤ atol + rtol·|want| everywhere, reporting the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let lim = atol + rtol * w.abs();
        assert!(
            err.is_finite() || (g.is_nan() && w.is_nan()),
            "{what}: element {i} is {g}, want {w}"
        );
        if err - lim > worst.1 {
            worst = (i, err - lim);
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: element {} is {}, want {} (atol {atol}, rtol {rtol})",
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Blocks for a 1-D grid-stride launch of 256 threads over n elements (capped small for the emulation).
pub fn blocks(n: usize, cap: u32) -> u32 {
    (n.div_ceil(256) as u32).clamp(1, cap)
}
