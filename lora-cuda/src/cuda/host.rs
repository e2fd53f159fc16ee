//! Launching a kernel with host-side arguments: buffers are uploaded, the kernel runs, and every buffer
//! is copied back. This is what the GPU parity tests use (the same argument lists drive the CPU
//! emulation harness), and it is the simplest way to run one kernel from Rust.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::{driver_err, CudaBackend, KERNEL_SOURCES};
use crate::error::{Error, Result};

/// One kernel argument, as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum KArg {
    /// A device buffer of f32 (`float*`).
    F32s(Vec<f32>),
    /// A device buffer of 16-bit values (`__half*` / `__nv_bfloat16*`), as raw bits.
    U16s(Vec<u16>),
    /// An `int` by value.
    I32(i32),
    /// A `long long` by value.
    I64(i64),
    /// A `float` by value.
    F32(f32),
    /// A struct by value, as its C bytes (at most 256).
    Raw(Vec<u8>),
}

/// A by-value struct argument: up to 256 bytes, 16-byte aligned (the driver copies the kernel's own
/// parameter size from it).
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct RawArg(pub [u8; 256]);

// SAFETY: plain bytes; the driver reads only the kernel's declared parameter size.
unsafe impl DeviceRepr for RawArg {}

/// The kernel file that defines `kernel`.
pub fn file_of(kernel: &str) -> Result<&'static str> {
    KERNEL_SOURCES
        .iter()
        .find(|s| s.kernels.contains(&kernel))
        .map(|s| s.file)
        .ok_or_else(|| Error::UnknownHandle(format!("kernel {kernel}")))
}

/// Runs `kernel` on device `ordinal` with the given grid and block, copying buffers in and out.
pub fn launch_host(
    ordinal: usize,
    kernel: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    args: &mut [KArg],
) -> Result<()> {
    let b = CudaBackend::get(ordinal)?;
    let f = b.function(file_of(kernel)?, kernel)?;
    let stream = b.stream().clone();
    enum Dev {
        F(cudarc::driver::CudaSlice<f32>),
        H(cudarc::driver::CudaSlice<u16>),
        I(i32),
        L(i64),
        S(f32),
        R(Box<RawArg>),
    }
    let mut devs = Vec::with_capacity(args.len());
    for a in args.iter() {
        devs.push(match a {
            KArg::F32s(v) => Dev::F(
                stream
                    .clone_htod(&v[..])
                    .map_err(|e| driver_err("upload", e))?,
            ),
            KArg::U16s(v) => Dev::H(
                stream
                    .clone_htod(&v[..])
                    .map_err(|e| driver_err("upload", e))?,
            ),
            KArg::I32(v) => Dev::I(*v),
            KArg::I64(v) => Dev::L(*v),
            KArg::F32(v) => Dev::S(*v),
            KArg::Raw(bytes) => {
                if bytes.len() > 256 {
                    return Err(Error::InvalidArgument {
                        what: format!("kernel {kernel} argument"),
                        msg: "struct larger than 256 bytes".into(),
                    });
                }
                let mut r = RawArg([0; 256]);
                r.0[..bytes.len()].copy_from_slice(bytes);
                Dev::R(Box::new(r))
            }
        });
    }
    {
        let mut lb = stream.launch_builder(&f);
        for d in devs.iter() {
            match d {
                Dev::F(s) => lb.arg(s),
                Dev::H(s) => lb.arg(s),
                Dev::I(v) => lb.arg(v),
                Dev::L(v) => lb.arg(v),
                Dev::S(v) => lb.arg(v),
                Dev::R(r) => lb.arg(r.as_ref()),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: block,
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list is built from the caller's description of the kernel's signature;
        // buffers are device allocations of the given lengths.
        unsafe { lb.launch(cfg) }.map_err(|e| driver_err(&format!("launching {kernel}"), e))?;
    }
    stream
        .synchronize()
        .map_err(|e| driver_err(&format!("running {kernel}"), e))?;
    for (a, d) in args.iter_mut().zip(devs.iter()) {
        match (a, d) {
            (KArg::F32s(v), Dev::F(s)) => {
                *v = stream
                    .clone_dtoh(s)
                    .map_err(|e| driver_err("download", e))?
            }
            (KArg::U16s(v), Dev::H(s)) => {
                *v = stream
                    .clone_dtoh(s)
                    .map_err(|e| driver_err("download", e))?
            }
            _ => {}
        }
    }
    Ok(())
}
