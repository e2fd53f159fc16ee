//! SVD-based LoRA resize, merge, difference and extraction on ndarray + OpenBLAS.
#![warn(missing_docs)]

// Links OpenBLAS/LAPACK for ndarray's `blas` feature too.
extern crate ndarray_linalg;

pub mod error;
pub mod linalg;
pub mod module;
pub mod rank;
pub mod shape;

pub use error::{Error, Result};
