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

/// The helpers every kernel file includes (`#include "common.cuh"`).
pub const COMMON_HEADER: &str = include_str!("../../kernels/common.cuh");

macro_rules! kernel_file {
    ($file:literal, [$($k:literal),* $(,)?]) => {
        KernelSource {
            file: $file,
            source: include_str!(concat!("../../kernels/", $file)),
            kernels: &[$($k),*],
        }
    };
}

/// Every kernel file of the CUDA backend, with the kernels it defines.
pub const KERNEL_SOURCES: &[KernelSource] = &[
    kernel_file!(
        "elementwise.cu",
        [
            "act_fwd",
            "act_bwd",
            "binary_same",
            "binary_bcast",
            "axpby",
            "fill_f32",
            "geglu_fwd",
            "geglu_bwd",
            "f32_to_bf16",
            "bf16_to_f32",
            "f32_to_f16",
            "f16_to_f32",
            "adamw_f32",
        ]
    ),
    kernel_file!("reduce.cu", ["sum_f32", "sumsq_f32", "col_sum", "row_mean"]),
    kernel_file!("sgemm.cu", ["sgemm"]),
    kernel_file!("hgemm.cu", ["hgemm_bf16", "hgemm_f16"]),
    kernel_file!("conv.cu", ["im2col_f32", "col2im_f32", "add_channel_bias"]),
    kernel_file!("softmax.cu", ["softmax_fwd", "softmax_bwd"]),
    kernel_file!(
        "norm.cu",
        [
            "group_norm_fwd",
            "group_norm_bwd_dx",
            "group_norm_bwd_param",
            "layer_norm_fwd",
            "layer_norm_bwd_dx",
            "layer_norm_bwd_param",
        ]
    ),
    kernel_file!("attention.cu", ["attn_fwd", "attn_bwd_dot", "attn_bwd"]),
    kernel_file!(
        "layout.cu",
        [
            "upsample2x_fwd",
            "upsample2x_bwd",
            "permute_f32",
            "copy_block"
        ]
    ),
];

impl KernelSource {
    /// The source as NVRTC sees it: `#include "common.cuh"` replaced by the header's text (NVRTC gets no
    /// file system view of `kernels/`, and the binary may run far from the source tree).
    pub fn expanded(&self) -> String {
        self.source
            .replace("#include \"common.cuh\"", COMMON_HEADER)
    }
}

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
        cudarc::nvrtc::compile_ptx_with_opts(src.expanded(), opts).map_err(|e| Error::Compile {
            file: src.file.to_string(),
            log: format!("{e:?}"),
        })?;
    Ok(ptx.to_src())
}
