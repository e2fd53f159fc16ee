//! Shared plumbing: BLAS threading, module ↔ matrix conversions, precision rounding.

use half::{bf16, f16};
use lora_core::{LoraModule, SavePrecision};
use ndarray::{ArrayD, ArrayView2, IxDyn};

use crate::error::{Error, Result};
use crate::module::Factors;
use crate::shape::{as_matrix, ModuleShape};

extern "C" {
    fn openblas_set_num_threads(n: std::os::raw::c_int);
    fn openblas_get_num_threads() -> std::os::raw::c_int;
}

/// Sets OpenBLAS to one thread while alive (modules then run in parallel on rayon's threads instead of
/// oversubscribing the cores with nested BLAS threads); restores the previous count on drop.
pub struct SingleThreadedBlas {
    previous: i32,
}

impl SingleThreadedBlas {
    /// Switches OpenBLAS to one thread.
    pub fn new() -> Self {
        // SAFETY: plain setters/getters of OpenBLAS's global thread count.
        let previous = unsafe { openblas_get_num_threads() };
        unsafe { openblas_set_num_threads(1) };
        SingleThreadedBlas { previous }
    }
}

impl Default for SingleThreadedBlas {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SingleThreadedBlas {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { openblas_set_num_threads(self.previous.max(1)) };
    }
}

/// A module's shape, rank and 2-D views of its factors (`up: out × r`, `down: r × in·kh·kw`).
pub(crate) fn module_views(
    m: &LoraModule,
) -> Result<(ModuleShape, ArrayView2<'_, f32>, ArrayView2<'_, f32>)> {
    let (shape, _) = ModuleShape::from_factors(m.down.shape(), m.up.shape(), &m.name)?;
    if !m.down.is_standard_layout() || !m.up.is_standard_layout() {
        return Err(Error::shape(&m.name, "factors are not in standard layout"));
    }
    Ok((
        shape,
        as_matrix(&m.up, &m.name)?,
        as_matrix(&m.down, &m.name)?,
    ))
}

/// Builds a module from 2-D factors, reshaped to `shape`.
pub(crate) fn module_from_factors(
    name: &str,
    shape: ModuleShape,
    f: Factors,
    alpha: Option<f32>,
) -> Result<LoraModule> {
    let k = f.rank();
    let to_dyn = |a: ndarray::Array2<f32>, s: Vec<usize>| -> Result<ArrayD<f32>> {
        let a = a.as_standard_layout().into_owned();
        a.into_shape_with_order(IxDyn(&s))
            .map_err(|e| Error::shape(name, e.to_string()))
    };
    let down = to_dyn(f.down, shape.down_shape(k))?;
    let up = to_dyn(f.up, shape.up_shape(k))?;
    Ok(LoraModule::new(name, down, up, alpha)?)
}

/// Rounds values through the merge dtype (sd-scripts casts inputs to `--precision` at load).
pub(crate) fn round_to_precision(a: &mut ArrayD<f32>, p: SavePrecision) {
    match p {
        SavePrecision::Float => {}
        SavePrecision::Fp16 => a.mapv_inplace(|v| f16::from_f32(v).to_f32()),
        SavePrecision::Bf16 => a.mapv_inplace(|v| bf16::from_f32(v).to_f32()),
    }
}

/// Rounds one value through the merge dtype.
pub(crate) fn round_value(v: f32, p: SavePrecision) -> f32 {
    match p {
        SavePrecision::Fp16 => f16::from_f32(v).to_f32(),
        SavePrecision::Bf16 => bf16::from_f32(v).to_f32(),
        SavePrecision::Float => v,
    }
}

/// The `v2` and `ss_base_model_version` strings of the first input that has them (§2.3).
pub(crate) fn first_v2_and_base<S: crate::source::ModuleSource + ?Sized>(
    loras: &[&S],
) -> (Option<String>, Option<String>) {
    let v2 = loras
        .iter()
        .find_map(|l| l.metadata().get("ss_v2").map(str::to_string));
    let base = loras.iter().find_map(|l| {
        l.metadata()
            .get("ss_base_model_version")
            .map(str::to_string)
    });
    (v2, base)
}
