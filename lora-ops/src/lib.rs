//! SVD-based LoRA resize, merge, difference and extraction on ndarray + OpenBLAS.
//!
//! This crate grows in its own issue; see the workspace README.
#![warn(missing_docs)]
