//! The kernel sources (`lora-cuda/kernels/*.cu`), embedded in the binary, and their NVRTC compilation.

use crate::error::{Error, Result};

/// One `.cu` file and the kernels it defines.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// File name under `lora-cuda/kernels/`.
    pub file: &'static str,
    /// The CUDA C++ source.
    pub source: &'static str,
    /// The `extern "C"` kernels in the file.
    pub kernels: &'static [&'static str],
}

/// Every kernel file of the CUDA backend.
pub const KERNEL_SOURCES: &[KernelSource] = &[];

/// Compiles one kernel file to PTX for `arch` (e.g. `"compute_80"`), with `CUDA_INCLUDE_DIR` (the
/// directory holding `cuda_fp16.h` / `cuda_bf16.h`) on the include path when it is set.
pub fn compile_ptx(src: &KernelSource, arch: &str) -> Result<String> {
    if !crate::device::nvrtc_present() {
        return Err(Error::CudaUnavailable {
            reason: "the NVRTC library (libnvrtc.so) was not found; run `source scripts/setup.sh`"
                .into(),
        });
    }
    let mut include_paths = Vec::new();
    if let Ok(dir) = std::env::var("CUDA_INCLUDE_DIR") {
        include_paths.push(dir);
    }
    for dir in ["/usr/local/cuda/include", "/usr/include"] {
        if std::path::Path::new(dir).join("cuda_fp16.h").exists() {
            include_paths.push(dir.to_string());
        }
    }
    let arch_static: &'static str = match arch {
        "compute_80" => "compute_80",
        "compute_86" => "compute_86",
        "compute_89" => "compute_89",
        "compute_90" => "compute_90",
        "compute_100" => "compute_100",
        "compute_120" => "compute_120",
        other => Box::leak(other.to_string().into_boxed_str()),
    };
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch_static),
        include_paths,
        options: vec!["-std=c++17".into(), "--use_fast_math".into()],
        ..Default::default()
    };
    let ptx =
        cudarc::nvrtc::compile_ptx_with_opts(src.source, opts).map_err(|e| Error::Compile {
            file: src.file.to_string(),
            log: format!("{e:?}"),
        })?;
    Ok(ptx.to_src())
}
