//! Operations on CUDA tensors: kernel launches for the ops of [`crate::ops`].

use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn not_yet(op: &str) -> Error {
    Error::Device {
        op: op.to_string(),
        msg: "not implemented on CUDA tensors yet; use the CPU backend".into(),
    }
}

/// Batched matmul on the device (see [`crate::ops::matmul`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    _a: &Tensor,
    _b: &Tensor,
    _ta: bool,
    _tb: bool,
    _batch: usize,
    _m: usize,
    _n: usize,
    _k: usize,
    _b_shared: bool,
    _os: &[usize],
) -> Result<Tensor> {
    Err(not_yet("matmul"))
}

/// Fused AdamW on the device.
pub(crate) fn adamw(
    _value: &Tensor,
    _grad: &Tensor,
    _opt: &mut crate::optim::AdamW,
    _id: crate::autograd::ParamId,
    _lr: f64,
) -> Result<Tensor> {
    Err(not_yet("adamw"))
}
