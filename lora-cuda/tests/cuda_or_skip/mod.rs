//! The GPU-test gate shared by the `gpu_*` test files: CUDA device 0, or `None` after saying plainly on stderr
//! that the test was skipped and why.

use lora_cuda::Device;

/// CUDA device 0, or `None` with `SKIPPED {test}: no CUDA device (reason)` on stderr.
pub fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no CUDA device ({e})");
            None
        }
    }
}
