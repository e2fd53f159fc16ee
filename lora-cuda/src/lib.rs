//! Training backends for LoRA: CPU reference and hand-written CUDA kernels (cudarc + NVRTC), the Stable Diffusion model and trainer.
//!
//! This crate grows in its own issue; see the workspace README.
#![warn(missing_docs)]
