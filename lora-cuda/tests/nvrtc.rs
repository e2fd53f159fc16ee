//! Every kernel file compiles with NVRTC for sm_80 and sm_90 and assembles with ptxas (no GPU needed).
//! Needs `source scripts/setup.sh` (libnvrtc on LD_LIBRARY_PATH, CUDA_INCLUDE_DIR, PTXAS); without it the
//! test fails with a message that says so, because a silent skip would hide a broken kernel in CI.

use lora_cuda::cuda::{compile_ptx, KERNEL_SOURCES};

fn ptxas() -> Option<String> {
    std::env::var("PTXAS")
        .ok()
        .filter(|p| std::path::Path::new(p).exists())
}

#[test]
fn every_kernel_compiles_with_nvrtc_and_ptxas_for_sm80_and_sm90() {
    assert!(
        lora_cuda::device::nvrtc_present(),
        "libnvrtc not found: run `source scripts/setup.sh` first (it installs NVRTC from PyPI)"
    );
    let ptxas = ptxas().expect("PTXAS not set or missing: run `source scripts/setup.sh` first");
    let dir = std::env::temp_dir().join(format!("lora-cuda-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut report = String::new();
    for arch in ["80", "90"] {
        for src in KERNEL_SOURCES {
            let ptx =
                compile_ptx(src, &format!("compute_{arch}")).unwrap_or_else(|e| panic!("{e}"));
            for k in src.kernels {
                assert!(
                    ptx.contains(&format!(".entry {k}(")),
                    "{}: kernel {k} missing from PTX for sm_{arch}",
                    src.file
                );
            }
            let path = dir.join(format!("{}.sm{arch}.ptx", src.file));
            std::fs::write(&path, &ptx).unwrap();
            let out = std::process::Command::new(&ptxas)
                .args([&format!("-arch=sm_{arch}"), "-v", "-o", "/dev/null"])
                .arg(&path)
                .output()
                .expect("running ptxas");
            let log = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                out.status.success(),
                "ptxas failed on {} for sm_{arch}:\n{log}",
                src.file
            );
            for line in log.lines() {
                if line.contains("spill")
                    && !line.contains(" 0 bytes spill stores, 0 bytes spill loads")
                {
                    report.push_str(&format!("sm_{arch} {}: {}\n", src.file, line.trim()));
                }
                if line.contains("Used") {
                    report.push_str(&format!("sm_{arch} {}: {}\n", src.file, line.trim()));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("ptxas resource usage (registers, shared memory, spills):\n{report}");
}

#[test]
fn a_broken_kernel_reports_the_compiler_log() {
    if !lora_cuda::device::nvrtc_present() {
        panic!("libnvrtc not found: run `source scripts/setup.sh` first");
    }
    let bad = lora_cuda::cuda::KernelSource {
        file: "broken.cu",
        source: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        kernels: &["k"],
    };
    let e = compile_ptx(&bad, "compute_80").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("broken.cu") && msg.contains("undefined_name"),
        "{msg}"
    );
}
