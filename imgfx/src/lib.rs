//! Image effects (outline, flatten, contrast, posterize, JPEG noise) exact to Pillow/OpenCV, and metrics that measure them.
//!
//! This crate grows in its own issue; see the workspace README.
#![warn(missing_docs)]
