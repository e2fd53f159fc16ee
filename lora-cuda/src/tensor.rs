//! The tensor type: a shape, an element type and storage on a device.

use std::borrow::Cow;
use std::sync::Arc;

use half::{bf16, f16};
use rand::Rng;

use crate::device::Device;
use crate::dtype::{DType, Real};
use crate::error::{shape_err, Error, Result};

/// The bytes of a tensor, on the CPU (one `Vec` per element type) or on a CUDA device.
#[derive(Clone)]
pub(crate) enum Storage {
    F32(Arc<Vec<f32>>),
    F64(Arc<Vec<f64>>),
    BF16(Arc<Vec<bf16>>),
    F16(Arc<Vec<f16>>),
    Cuda(crate::cuda::CudaStorage),
}

/// An n-dimensional array, row-major and contiguous, with an element type and a device.
///
/// Cloning is cheap (the storage is shared and never mutated in place: every operation makes a new tensor).
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    pub(crate) storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, device={})",
            self.shape,
            self.dtype(),
            self.device()
        )
    }
}

fn numel_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub(crate) fn from_storage(shape: Vec<usize>, storage: Storage) -> Tensor {
        Tensor { shape, storage }
    }

    /// An f32 CPU tensor from data in row-major order; errors if the length does not match the shape.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::from_vec", data.len(), shape)?;
        Ok(Tensor::from_storage(
            shape.to_vec(),
            Storage::F32(Arc::new(data)),
        ))
    }

    /// An f64 CPU tensor (for exact work such as gradient checks).
    pub fn from_vec_f64(data: Vec<f64>, shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::from_vec_f64", data.len(), shape)?;
        Ok(Tensor::from_storage(
            shape.to_vec(),
            Storage::F64(Arc::new(data)),
        ))
    }

    /// A CPU tensor of the given dtype from f32 values (rounded to the dtype).
    pub fn from_f32_as(data: &[f32], shape: &[usize], dtype: DType) -> Result<Tensor> {
        check_len("Tensor::from_f32_as", data.len(), shape)?;
        Ok(Tensor::from_real(data.to_vec(), shape.to_vec(), dtype))
    }

    /// A bf16 CPU tensor.
    pub fn from_vec_bf16(data: Vec<bf16>, shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::from_vec_bf16", data.len(), shape)?;
        Ok(Tensor::from_storage(
            shape.to_vec(),
            Storage::BF16(Arc::new(data)),
        ))
    }

    /// An f16 CPU tensor.
    pub fn from_vec_f16(data: Vec<f16>, shape: &[usize]) -> Result<Tensor> {
        check_len("Tensor::from_vec_f16", data.len(), shape)?;
        Ok(Tensor::from_storage(
            shape.to_vec(),
            Storage::F16(Arc::new(data)),
        ))
    }

    /// A CPU tensor filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        let n = numel_of(shape);
        match dtype {
            DType::F64 => Tensor::from_real(vec![value; n], shape.to_vec(), dtype),
            _ => Tensor::from_real(vec![value as f32; n], shape.to_vec(), dtype),
        }
    }

    /// A CPU tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 0.0, dtype)
    }

    /// A CPU tensor of ones.
    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// A 0-dimensional tensor.
    pub fn scalar(value: f64, dtype: DType) -> Tensor {
        Tensor::full(&[], value, dtype)
    }

    /// Standard-normal samples (Box–Muller) as an f32 CPU tensor, then cast to `dtype`.
    pub fn randn<R: Rng + ?Sized>(shape: &[usize], dtype: DType, rng: &mut R) -> Tensor {
        let n = numel_of(shape);
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            v.push(r * t.cos());
            if v.len() < n {
                v.push(r * t.sin());
            }
        }
        Tensor::from_real(v, shape.to_vec(), dtype)
    }

    /// Uniform samples in `[lo, hi)` as a CPU tensor of `dtype` (e.g. kaiming-uniform init of `lora_down`).
    pub fn rand_uniform<R: Rng + ?Sized>(
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        rng: &mut R,
    ) -> Tensor {
        let n = numel_of(shape);
        let v: Vec<f64> = (0..n)
            .map(|_| lo + (hi - lo) * rng.random::<f64>())
            .collect();
        Tensor::from_real(v, shape.to_vec(), dtype)
    }

    /// An f32 CPU tensor from an ndarray array (any layout).
    pub fn from_array(a: &ndarray::ArrayD<f32>) -> Tensor {
        let data: Vec<f32> = a.iter().copied().collect();
        Tensor::from_storage(a.shape().to_vec(), Storage::F32(Arc::new(data)))
    }

    /// The values as an f32 ndarray array (copied to the CPU).
    pub fn to_array(&self) -> Result<ndarray::ArrayD<f32>> {
        let v = self.to_vec_f32()?;
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&self.shape), v)
            .map_err(|e| shape_err("Tensor::to_array", e.to_string()))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel_of(&self.shape)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
            Storage::Cuda(c) => c.dtype,
        }
    }

    /// The device the storage lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cuda(c) => Device::Cuda(c.ordinal),
            _ => Device::Cpu,
        }
    }

    /// The same data with another shape of the same element count (free: storage is shared).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel_of(shape) != self.numel() {
            return Err(shape_err(
                "reshape",
                format!("cannot view {:?} as {:?}", self.shape, shape),
            ));
        }
        Ok(Tensor::from_storage(shape.to_vec(), self.storage.clone()))
    }

    /// All values converted to f32 (copied from the device if needed).
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self
            .to_device(&Device::Cpu)?
            .cpu_data::<f32>()?
            .into_owned())
    }

    /// All values converted to f64 (copied from the device if needed).
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self
            .to_device(&Device::Cpu)?
            .cpu_data::<f64>()?
            .into_owned())
    }

    /// The single value of a one-element tensor.
    pub fn scalar_value(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(shape_err(
                "scalar_value",
                format!("tensor of shape {:?} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_vec_f64()?[0])
    }

    /// The same values with another element type (rounded to nearest even for the 16-bit types).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        match &self.storage {
            Storage::Cuda(c) => Ok(Tensor::from_storage(
                self.shape.clone(),
                Storage::Cuda(crate::cuda::cast(c, dtype)?),
            )),
            _ => {
                if dtype == DType::F64 {
                    let v = self.cpu_data::<f64>()?.into_owned();
                    Ok(Tensor::from_real(v, self.shape.clone(), dtype))
                } else {
                    let v = self.cpu_data::<f32>()?.into_owned();
                    Ok(Tensor::from_real(v, self.shape.clone(), dtype))
                }
            }
        }
    }

    /// A copy on another device (a cheap clone when it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match (&self.storage, device) {
            (Storage::Cuda(c), Device::Cuda(o)) if c.ordinal == *o => Ok(self.clone()),
            (Storage::Cuda(c), _) => {
                let host = crate::cuda::download(c)?;
                let t = Tensor::from_storage(self.shape.clone(), host);
                t.to_device(device)
            }
            (_, Device::Cpu) => Ok(self.clone()),
            (s, Device::Cuda(o)) => Ok(Tensor::from_storage(
                self.shape.clone(),
                Storage::Cuda(crate::cuda::upload(*o, s)?),
            )),
        }
    }

    /// Builds a CPU tensor of `dtype` from values computed in `T`.
    pub(crate) fn from_real<T: Real>(v: Vec<T>, shape: Vec<usize>, dtype: DType) -> Tensor {
        let storage = match dtype {
            DType::F64 => Storage::F64(Arc::new(v.into_iter().map(|x| x.to_f64()).collect())),
            DType::F32 => {
                // Avoid a copy when T is already f32.
                let any: Box<dyn std::any::Any> = Box::new(v);
                match any.downcast::<Vec<f32>>() {
                    Ok(b) => Storage::F32(Arc::new(*b)),
                    Err(any) => {
                        let v = any.downcast::<Vec<T>>().expect("same type");
                        Storage::F32(Arc::new(v.iter().map(|x| x.to_f64() as f32).collect()))
                    }
                }
            }
            DType::BF16 => Storage::BF16(Arc::new(
                v.iter().map(|x| bf16::from_f64(x.to_f64())).collect(),
            )),
            DType::F16 => Storage::F16(Arc::new(
                v.iter().map(|x| f16::from_f64(x.to_f64())).collect(),
            )),
        };
        Tensor::from_storage(shape, storage)
    }

    /// The CPU values in compute type `T` (borrowed when the storage already has that type).
    pub(crate) fn cpu_data<T: Real>(&self) -> Result<Cow<'_, [T]>> {
        fn conv<S: Copy + Sync, T: Real>(s: &[S], f: impl Fn(S) -> f64 + Sync) -> Vec<T> {
            s.iter().map(|&x| T::from_f64(f(x))).collect()
        }
        let any_t = std::any::TypeId::of::<T>();
        Ok(match &self.storage {
            Storage::F32(v) => {
                if any_t == std::any::TypeId::of::<f32>() {
                    // SAFETY: T is f32 (checked by TypeId), so the slice types are identical.
                    let s: &[T] =
                        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const T, v.len()) };
                    Cow::Borrowed(s)
                } else {
                    Cow::Owned(conv(v, |x| x as f64))
                }
            }
            Storage::F64(v) => {
                if any_t == std::any::TypeId::of::<f64>() {
                    // SAFETY: T is f64 (checked by TypeId).
                    let s: &[T] =
                        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const T, v.len()) };
                    Cow::Borrowed(s)
                } else {
                    Cow::Owned(conv(v, |x| x))
                }
            }
            Storage::BF16(v) => Cow::Owned(conv(v, |x| x.to_f64())),
            Storage::F16(v) => Cow::Owned(conv(v, |x| x.to_f64())),
            Storage::Cuda(_) => {
                return Err(Error::Device {
                    op: "cpu_data".into(),
                    msg: "tensor is on a CUDA device; this operation runs on the CPU".into(),
                })
            }
        })
    }
}

fn check_len(op: &str, len: usize, shape: &[usize]) -> Result<()> {
    if len != numel_of(shape) {
        return Err(shape_err(
            op,
            format!("{len} values do not fill shape {shape:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_length() {
        assert!(Tensor::from_vec(vec![1.0; 5], &[2, 3]).is_err());
        let t = Tensor::from_vec(vec![1.0; 6], &[2, 3]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.numel(), 6);
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.device(), Device::Cpu);
    }

    #[test]
    fn dtype_round_trip_rounds_to_half_precision() {
        let t = Tensor::from_vec(vec![1.0, 1.0 + 1.0 / 512.0, -3.25], &[3]).unwrap();
        let b = t.to_dtype(DType::BF16).unwrap();
        assert_eq!(b.dtype(), DType::BF16);
        let back = b.to_vec_f32().unwrap();
        // bf16 has 7 mantissa bits: 1 + 1/512 rounds to 1.
        assert_eq!(back, vec![1.0, 1.0, -3.25]);
        let h = t.to_dtype(DType::F16).unwrap().to_vec_f32().unwrap();
        assert_eq!(h, vec![1.0, 1.0 + 1.0 / 512.0, -3.25]);
    }

    #[test]
    fn reshape_checks_count() {
        let t = Tensor::zeros(&[2, 3], DType::F32);
        assert!(t.reshape(&[3, 2]).is_ok());
        assert!(t.reshape(&[4, 2]).is_err());
    }

    #[test]
    fn ndarray_round_trip() {
        let a =
            ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32);
        let t = Tensor::from_array(&a);
        assert_eq!(t.to_array().unwrap(), a);
    }
}
