//! Where a tensor lives: the CPU, or a CUDA device chosen at run time.

use crate::error::{Error, Result};

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU reference backend (always available).
    #[default]
    Cpu,
    /// A CUDA device by ordinal. Build one with [`Device::cuda`], which checks that it exists.
    Cuda(usize),
}

impl Device {
    /// The CUDA device with this ordinal, after checking that a driver and such a device exist.
    ///
    /// Returns [`Error::CudaUnavailable`] with the reason where there is no driver library, no device, or
    /// the ordinal is out of range. Never panics (cudarc would, without the check).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        cuda_device_count().and_then(|n| {
            if ordinal < n {
                Ok(Device::Cuda(ordinal))
            } else {
                Err(Error::CudaUnavailable {
                    reason: format!("CUDA device {ordinal} requested but {n} device(s) found"),
                })
            }
        })
    }

    /// The first CUDA device if there is one, else the CPU.
    pub fn cuda_if_available() -> Device {
        Device::cuda(0).unwrap_or(Device::Cpu)
    }

    /// True for [`Device::Cpu`].
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// True when the CUDA driver library (`libcuda.so`) can be loaded.
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by name.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// True when the NVRTC library (`libnvrtc.so*`) can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by name.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The number of CUDA devices, or [`Error::CudaUnavailable`] when there is no driver or it fails.
pub fn cuda_device_count() -> Result<usize> {
    if !cuda_driver_present() {
        return Err(Error::CudaUnavailable {
            reason: "the CUDA driver library (libcuda.so) was not found".into(),
        });
    }
    // Initialising can still fail (driver without device, driver too old): that is an error, not a panic.
    let r = std::panic::catch_unwind(cudarc::driver::CudaContext::device_count);
    match r {
        Ok(Ok(n)) if n > 0 => Ok(n as usize),
        Ok(Ok(_)) => Err(Error::CudaUnavailable {
            reason: "the CUDA driver reports no device".into(),
        }),
        Ok(Err(e)) => Err(Error::CudaUnavailable {
            reason: format!("the CUDA driver failed: {e:?}"),
        }),
        Err(_) => Err(Error::CudaUnavailable {
            reason: "the CUDA driver could not be initialised".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_request_is_typed_error_or_device() {
        match Device::cuda(0) {
            Ok(d) => assert_eq!(d, Device::Cuda(0)),
            Err(Error::CudaUnavailable { reason }) => assert!(!reason.is_empty()),
            Err(e) => panic!("unexpected error {e}"),
        }
        // An absurd ordinal is always unavailable.
        assert!(matches!(
            Device::cuda(10_000),
            Err(Error::CudaUnavailable { .. })
        ));
    }

    #[test]
    fn display() {
        assert_eq!(Device::Cpu.to_string(), "cpu");
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
