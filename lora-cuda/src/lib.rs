//! Compute backends for LoRA training: a CPU reference backend (OpenBLAS + rayon) and hand-written CUDA
//! kernels (cudarc + NVRTC), with the operations, their explicit backward passes, a small tape autograd,
//! AdamW, gradient clipping and sd-scripts' learning-rate schedules.
//!
//! ```
//! use lora_cuda::{Device, DType, Graph, LoraAdapter, LoraConfig, LoraContext, ParamStore, Tensor};
//! use lora_cuda::optim::{clip_grad_norm, AdamW, AdamWConfig};
//! use lora_cuda::schedule::{LrSchedule, ScheduleKind, Warmup};
//! use rand::{rngs::StdRng, SeedableRng};
//!
//! # fn main() -> lora_cuda::Result<()> {
//! let mut rng = StdRng::seed_from_u64(0);
//! // A frozen linear layer 8 → 4 with a rank-2 LoRA on it.
//! let mut store = ParamStore::new();
//! let w = store.add("w", Tensor::randn(&[4, 8], DType::F32, &mut rng), false)?;
//! let lora = LoraAdapter::new_linear(&mut store, "lora_layer", 8, 4, LoraConfig::new(2, 1.0), &mut rng)?;
//! let mut opt = AdamW::new(AdamWConfig::default())?;
//! let sched = LrSchedule::new(ScheduleKind::ConstantWithWarmup, 1e-2, Warmup::Steps(2), 10, 1.0, 1.0)?;
//! let x = Tensor::randn(&[3, 8], DType::F32, &mut rng);
//! let target = Tensor::randn(&[3, 4], DType::F32, &mut rng);
//! let mut ctx = LoraContext::training(1);
//! for step in 0..10 {
//!     let mut g = Graph::new();
//!     let (xv, tv, wv) = (g.input(x.clone()), g.input(target.clone()), g.param(&store, w)?);
//!     let y = lora.linear(&mut g, &store, xv, wv, None, &mut ctx)?;
//!     let loss = g.mse_loss(y, tv)?;
//!     let mut grads = g.backward(loss)?;
//!     assert!(grads.get(w).is_none()); // frozen: no gradient
//!     clip_grad_norm(&mut grads, 1.0)?;
//!     opt.step(&mut store, &grads, sched.lr_at(step))?;
//! }
//! assert_eq!(opt.state_len(), 2); // only lora_down and lora_up have optimizer state
//! assert_eq!(Device::Cpu.to_string(), "cpu");
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//! * [`Tensor`]: shape + dtype ([`DType`]: f32, bf16, f16, and f64 for exact CPU work) + storage on a
//!   [`Device`] (CPU, or a CUDA ordinal chosen at run time with [`Device::cuda`], which returns
//!   [`Error::CudaUnavailable`] rather than panicking where there is no driver or device).
//! * [`ops`]: every operation as a forward function and an explicit backward function (matmul with
//!   transposes, linear, conv2d, group/layer norm, SiLU/GELU/quick-GELU/GEGLU, softmax, attention, nearest
//!   2× upsampling, concat/split, broadcasting add/sub/mul, scale, sum/mean, MSE, permute, embedding).
//!   The CPU versions ([`cpu`]) are the reference: OpenBLAS `sgemm`/`dgemm`, im2col convolutions, rayon.
//! * [`Graph`]: a tape. Each op records its output and a closure calling its backward function;
//!   [`Graph::backward`] returns [`Grads`] for trainable parameters of a [`ParamStore`] only.
//! * [`LoraAdapter`]: `y = W·x + m·s·U·(D·x)` for linear and conv layers with sd-scripts' dropout, rank
//!   dropout and module dropout, and a signed per-step multiplier ([`LoraContext`]).
//! * [`optim`]: AdamW (torch semantics) and global-norm clipping; [`schedule`]: sd-scripts' LR schedules.
//! * [`cuda`]: the kernels (`lora-cuda/kernels/*.cu`), compiled with NVRTC on first use and cached per
//!   device. Mixed precision: bf16/f16 activations and base weights, f32 LoRA master weights.
//!
//! # The CUDA kernels
//! `lora-cuda/kernels/*.cu` (each file's header comment gives its launch shape and why):
//! `sgemm.cu` (64×64 tiles, 4×4 register blocking, float4 loads), `hgemm.cu` (bf16/f16 on tensor cores
//! with `mma.sync.m16n8k16`, f32 accumulation), `conv.cu` (im2col / col2im; the GEMM does the rest),
//! `softmax.cu` (warp per row), `attention.cu` (flash-style online softmax, forward and backward),
//! `norm.cu` (group and layer norm with Welford statistics), `elementwise.cu` (activations, broadcasting
//! arithmetic, GEGLU, casts, fused AdamW), `reduce.cu`, `layout.cu` (upsampling, permutes, concat).
//! On CUDA tensors, [`ops`] launches them (see [`cuda`] for the few ops that still round-trip through the
//! host). cuBLAS/cuDNN are not used.
//!
//! # Checking kernels without a GPU
//! * `tests/nvrtc.rs` compiles every `.cu` file with NVRTC for `compute_80` and `compute_90` and
//!   assembles the PTX with `ptxas`, printing registers, shared memory and spills per kernel
//!   (`scripts/cuda_nvrtc_check.py` does the same without a Rust rebuild).
//! * `tests/emu_parity.rs` compiles the same sources with the host C++ compiler against
//!   `kernels/emu/cuda_emu.h`, which emulates the CUDA thread model (blocks one after another, the
//!   threads of a block as OS threads with a barrier for `__syncthreads`, `__shared__` as static storage,
//!   warp shuffles and atomics emulated), and compares every kernel with the CPU reference on small and
//!   odd shapes.
//! * `tests/gpu_parity.rs` and `tests/gpu_ops.rs` run the same cases on a GPU where there is one and
//!   print `SKIPPED ...: no CUDA device (reason)` otherwise; `tests/gpu_model.rs` does the same for the
//!   model: LoRA training steps ([`train::Trainer::to_device`], `train_network --device cuda`) and
//!   sampling on the GPU against the CPU. `scripts/gpu-check.sh` runs them, with the
//!   kernel benchmarks, on a GPU machine and appends the figures to `docs/gpu-results.md`.
//!
//! GPU-only code (not run by the emulation; each place has a scalar twin behind the same `#if`):
//! * `kernels/hgemm.cu`: the `mma.sync` fragment loads and multiply (`#if HGEMM_USE_MMA`, i.e.
//!   `__CUDA_ARCH__ >= 800`). The twin computes exactly the accumulator elements each lane owns in the
//!   mma layout, so tiling, loads and the epilogue are emulated and checked.
#![warn(missing_docs)]

pub mod autograd;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod lora;
pub mod ops;
pub mod optim;
pub mod schedule;
mod tensor;

pub use autograd::{Grads, Graph, Param, ParamId, ParamStore, Var};
pub use device::Device;
pub use dtype::{DType, Real};
pub use error::{Error, Result};
pub use lora::{LoraAdapter, LoraConfig, LoraContext, LoraKind};
pub use ops::{Activation, Conv2dCfg};
pub use tensor::Tensor;
pub mod demo;
pub mod model;
pub mod sched;
pub mod train;
