//! The CUDA backend: kernel sources compiled with NVRTC on first use, cached per device, and launched
//! through cudarc. The driver and NVRTC are loaded dynamically, so this module builds without CUDA.

pub mod host;
mod kernels;
pub(crate) mod ops;
pub(crate) mod ops_more;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use half::{bf16, f16};

use crate::device::cuda_device_count;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Storage;

pub use kernels::{compile_ptx, KernelSource, COMMON_HEADER, KERNEL_SOURCES};

/// Device memory of one tensor: untyped bytes plus the element type and count.
#[derive(Clone)]
pub(crate) struct CudaStorage {
    pub(crate) ordinal: usize,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) buf: Arc<CudaSlice<u8>>,
}

/// One CUDA device: its context, a stream, and the kernel modules compiled so far.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

fn driver_err(op: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda {
        op: op.to_string(),
        msg: format!("{e:?}"),
    }
}

impl CudaBackend {
    /// The backend of device `ordinal`, created on first use and shared afterwards.
    pub fn get(ordinal: usize) -> Result<Arc<CudaBackend>> {
        static CACHE: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = cache
            .lock()
            .map_err(|_| driver_err("backend cache", "poisoned"))?;
        if let Some(b) = map.get(&ordinal) {
            return Ok(b.clone());
        }
        let n = cuda_device_count()?;
        if ordinal >= n {
            return Err(Error::CudaUnavailable {
                reason: format!("CUDA device {ordinal} requested but {n} device(s) found"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::CudaUnavailable {
            reason: format!("creating a context on device {ordinal}: {e:?}"),
        })?;
        let (maj, min) = ctx
            .compute_capability()
            .map_err(|e| driver_err("compute_capability", e))?;
        let stream = ctx.default_stream();
        let b = Arc::new(CudaBackend {
            ctx,
            stream,
            arch: format!("compute_{maj}{min}"),
            modules: Mutex::new(HashMap::new()),
        });
        map.insert(ordinal, b.clone());
        Ok(b)
    }

    /// The device's name as the driver reports it.
    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(|e| driver_err("name", e))
    }

    /// The NVRTC architecture the kernels are compiled for (`compute_XY`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The stream all launches go to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))
    }

    /// A kernel function, compiling its `.cu` file with NVRTC on first use (cached per device).
    pub fn function(&self, file: &'static str, name: &str) -> Result<CudaFunction> {
        let module = {
            let mut mods = self
                .modules
                .lock()
                .map_err(|_| driver_err("module cache", "poisoned"))?;
            match mods.get(file) {
                Some(m) => m.clone(),
                None => {
                    let src = KERNEL_SOURCES
                        .iter()
                        .find(|k| k.file == file)
                        .ok_or_else(|| Error::UnknownHandle(format!("kernel file {file}")))?;
                    let ptx = compile_ptx(src, &self.arch)?;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                        .map_err(|e| driver_err(&format!("loading module {file}"), e))?;
                    mods.insert(file, m.clone());
                    m
                }
            }
        };
        module
            .load_function(name)
            .map_err(|e| driver_err(&format!("loading kernel {name} from {file}"), e))
    }

    /// Uninitialised device memory for `len` elements of `dtype`.
    pub(crate) fn alloc(&self, len: usize, dtype: DType) -> Result<CudaSlice<u8>> {
        self.stream
            .alloc_zeros::<u8>(len.max(1) * dtype.size())
            .map_err(|e| driver_err("alloc", e))
    }

    pub(crate) fn wrap(
        &self,
        ordinal: usize,
        dtype: DType,
        len: usize,
        buf: CudaSlice<u8>,
    ) -> CudaStorage {
        CudaStorage {
            ordinal,
            dtype,
            len,
            buf: Arc::new(buf),
        }
    }
}

fn bytes_of<T: bytemuck_like::Pod>(v: &[T]) -> &[u8] {
    // SAFETY: T is a plain numeric type without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

mod bytemuck_like {
    /// Plain numeric types whose bytes can be copied as they are.
    pub trait Pod: Copy {}
    impl Pod for f32 {}
    impl Pod for f64 {}
    impl Pod for half::bf16 {}
    impl Pod for half::f16 {}
}

/// Copies CPU storage to device `ordinal`.
pub(crate) fn upload(ordinal: usize, s: &Storage) -> Result<CudaStorage> {
    let b = CudaBackend::get(ordinal)?;
    let (dtype, len, bytes): (DType, usize, &[u8]) = match s {
        Storage::F32(v) => (DType::F32, v.len(), bytes_of(v)),
        Storage::F64(v) => (DType::F64, v.len(), bytes_of(v)),
        Storage::BF16(v) => (DType::BF16, v.len(), bytes_of(v)),
        Storage::F16(v) => (DType::F16, v.len(), bytes_of(v)),
        Storage::Cuda(c) => return Ok(c.clone()),
    };
    let mut buf = b.alloc(len, dtype)?;
    if !bytes.is_empty() {
        b.stream
            .memcpy_htod(bytes, &mut buf)
            .map_err(|e| driver_err("upload", e))?;
    }
    Ok(b.wrap(ordinal, dtype, len, buf))
}

/// Copies device storage back to the CPU.
pub(crate) fn download(c: &CudaStorage) -> Result<Storage> {
    let b = CudaBackend::get(c.ordinal)?;
    let bytes = b
        .stream
        .clone_dtoh(c.buf.as_ref())
        .map_err(|e| driver_err("download", e))?;
    let n = c.len;
    fn from_bytes<T: Copy + Default>(bytes: &[u8], n: usize) -> Vec<T> {
        let mut v = vec![T::default(); n];
        let sz = std::mem::size_of::<T>() * n;
        // SAFETY: v has room for n elements = sz bytes; T is a plain numeric type.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, sz) };
        v
    }
    Ok(match c.dtype {
        DType::F32 => Storage::F32(Arc::new(from_bytes::<f32>(&bytes, n))),
        DType::F64 => Storage::F64(Arc::new(from_bytes::<f64>(&bytes, n))),
        DType::BF16 => Storage::BF16(Arc::new(from_bytes::<bf16>(&bytes, n))),
        DType::F16 => Storage::F16(Arc::new(from_bytes::<f16>(&bytes, n))),
    })
}

/// Converts the element type of device storage with the cast kernels (f64 through the host).
pub(crate) fn cast(c: &CudaStorage, dtype: DType) -> Result<CudaStorage> {
    ops::cast(c, dtype)
}

/// Converts the element type of device storage through the host (f64, which has no kernel).
pub(crate) fn cast_via_host(c: &CudaStorage, dtype: DType) -> Result<CudaStorage> {
    let host = crate::tensor::Tensor::from_storage(vec![c.len], download(c)?);
    let t = host.to_dtype(dtype)?;
    upload(c.ordinal, &t.storage)
}

/// One fused AdamW update of a device parameter (see [`crate::optim::AdamW`]).
pub(crate) fn adamw_step(
    value: &crate::tensor::Tensor,
    grad: &crate::tensor::Tensor,
    opt: &mut crate::optim::AdamW,
    id: crate::autograd::ParamId,
    lr: f64,
) -> Result<crate::tensor::Tensor> {
    ops::adamw(value, grad, opt, id, lr)
}
