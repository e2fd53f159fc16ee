//! Shapes of LoRA modules: linear, conv 1x1 and conv k×k, and their 2-D views.

use ndarray::{ArrayD, ArrayView2, ArrayViewD, Ix2};

use crate::error::{Error, Result};

/// The kind and dimensions of a LoRA module, read from its `lora_down` / `lora_up` shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleShape {
    /// `down [r, in]`, `up [out, r]`.
    Linear {
        /// Output features.
        out: usize,
        /// Input features.
        inp: usize,
    },
    /// `down [r, in, kh, kw]`, `up [out, r, 1, 1]` (k = 1 for a 1x1 conv).
    Conv {
        /// Output channels.
        out: usize,
        /// Input channels.
        inp: usize,
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
    },
}

impl ModuleShape {
    /// Reads the shape from the two tensors' shapes, checking they fit (`tensor` names the module in errors).
    pub fn from_factors(
        down: &[usize],
        up: &[usize],
        tensor: &str,
    ) -> Result<(ModuleShape, usize)> {
        match (down, up) {
            ([r, inp], [out, r2]) if r == r2 => Ok((
                ModuleShape::Linear {
                    out: *out,
                    inp: *inp,
                },
                *r,
            )),
            ([r, inp, kh, kw], [out, r2, 1, 1]) if r == r2 => Ok((
                ModuleShape::Conv {
                    out: *out,
                    inp: *inp,
                    kh: *kh,
                    kw: *kw,
                },
                *r,
            )),
            _ => Err(Error::shape(
                tensor,
                format!("lora_down {down:?} and lora_up {up:?} do not form a LoRA pair"),
            )),
        }
    }

    /// Output channels.
    pub fn out(&self) -> usize {
        match *self {
            ModuleShape::Linear { out, .. } | ModuleShape::Conv { out, .. } => out,
        }
    }

    /// Input channels (not multiplied by the kernel size).
    pub fn in_channels(&self) -> usize {
        match *self {
            ModuleShape::Linear { inp, .. } | ModuleShape::Conv { inp, .. } => inp,
        }
    }

    /// Columns of the flattened weight: `in · kh · kw`.
    pub fn cols(&self) -> usize {
        match *self {
            ModuleShape::Linear { inp, .. } => inp,
            ModuleShape::Conv { inp, kh, kw, .. } => inp * kh * kw,
        }
    }

    /// True for any 4-D (conv) module, 1x1 included.
    pub fn is_conv(&self) -> bool {
        matches!(self, ModuleShape::Conv { .. })
    }

    /// True for a conv with a kernel larger than 1x1.
    pub fn is_conv_kxk(&self) -> bool {
        matches!(self, ModuleShape::Conv { kh, kw, .. } if kh * kw > 1)
    }

    /// The shape of a `lora_down` of rank `r`.
    pub fn down_shape(&self, r: usize) -> Vec<usize> {
        match *self {
            ModuleShape::Linear { inp, .. } => vec![r, inp],
            ModuleShape::Conv { inp, kh, kw, .. } => vec![r, inp, kh, kw],
        }
    }

    /// The shape of a `lora_up` of rank `r`.
    pub fn up_shape(&self, r: usize) -> Vec<usize> {
        match *self {
            ModuleShape::Linear { out, .. } => vec![out, r],
            ModuleShape::Conv { out, .. } => vec![out, r, 1, 1],
        }
    }

    /// The shape of the module's weight (`[out, in]` or `[out, in, kh, kw]`).
    pub fn weight_shape(&self) -> Vec<usize> {
        match *self {
            ModuleShape::Linear { out, inp } => vec![out, inp],
            ModuleShape::Conv { out, inp, kh, kw } => vec![out, inp, kh, kw],
        }
    }
}

/// Views a tensor as a matrix with its first axis as rows and all others flattened (`[out, r, 1, 1]` →
/// `out × r`, `[r, in, kh, kw]` → `r × in·kh·kw`). Needs a standard (row-major) layout.
pub fn as_matrix<'a>(t: &'a ArrayD<f32>, tensor: &str) -> Result<ArrayView2<'a, f32>> {
    as_matrix_view(t.view(), tensor)
}

/// [`as_matrix`] on a view.
pub fn as_matrix_view<'a>(t: ArrayViewD<'a, f32>, tensor: &str) -> Result<ArrayView2<'a, f32>> {
    let shape = t.shape().to_vec();
    let Some((&rows, rest)) = shape.split_first() else {
        return Err(Error::shape(
            tensor,
            "0-dim tensor where a matrix was expected",
        ));
    };
    let cols: usize = rest.iter().product();
    t.into_shape_with_order((rows, cols))
        .and_then(|v| v.into_dimensionality::<Ix2>())
        .map_err(|e| Error::shape(tensor, e.to_string()))
}
