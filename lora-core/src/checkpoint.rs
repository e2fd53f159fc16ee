//! Base-model checkpoints: `.safetensors`, and PyTorch `.ckpt` / `.pt` zip archives read through
//! the restricted pickle reader.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::dtype::{bytes_to_f32_checked, ConvertError, DType};
use crate::names::{detect_checkpoint_base_model, normalize_te_key, BaseModel};
use crate::pickle::{self, PickleError, TensorRef, Value};
use crate::read::Backing;
use crate::{Error, Metadata, Result, SafetensorsFile};

/// One stored tensor in its own dtype.
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes in C order (borrowed from the map when possible).
    pub data: Cow<'a, [u8]>,
}

/// A checkpoint opened for reading, tensor by tensor.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Safetensors(SafetensorsFile),
    Torch(TorchFile),
}

#[derive(Debug)]
struct TorchFile {
    mmap: Backing,
    /// Tensor name -> (rebuilt tensor, storage byte range in the file).
    tensors: Vec<(String, TensorRef)>,
    index: HashMap<String, usize>,
    storages: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, or a PyTorch zip checkpoint (`.ckpt`, `.pt`, `.pth`, `.bin`):
    /// decided by the file's first bytes (`PK` for zip), not its name. A checkpoint whose top
    /// dict has a `state_dict` entry is read from that (§8.1).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut head = [0u8; 4];
        {
            use std::io::Read;
            let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
            let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
            if n < 4 {
                return Err(Error::Truncated {
                    file: path.into(),
                    len: n as u64,
                });
            }
        }
        let inner = if &head == b"PK\x03\x04" {
            Inner::Torch(TorchFile::open(path, Backing::map(path)?)?)
        } else if head[0] == 0x80 && head[1] <= 5 {
            return Err(Error::Pickle {
                file: path.into(),
                entry: String::new(),
                message: "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save with a newer torch".into(),
            });
        } else {
            Inner::Safetensors(SafetensorsFile::open(path)?)
        };
        Ok(Checkpoint {
            path: path.into(),
            inner,
        })
    }

    /// Reads a torch zip checkpoint image held in memory; `path` only names it in errors (used by
    /// the fuzz targets).
    pub fn torch_from_vec(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.as_ref();
        let inner = Inner::Torch(TorchFile::open(path, Backing::Owned(bytes))?);
        Ok(Checkpoint {
            path: path.into(),
            inner,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Safetensors metadata (empty for a torch checkpoint).
    pub fn metadata(&self) -> Cow<'_, Metadata> {
        match &self.inner {
            Inner::Safetensors(f) => Cow::Borrowed(f.metadata()),
            Inner::Torch(_) => Cow::Owned(Metadata::new()),
        }
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        match &self.inner {
            Inner::Safetensors(f) => f.names(),
            Inner::Torch(t) => {
                let mut v: Vec<&str> = t.tensors.iter().map(|(n, _)| n.as_str()).collect();
                v.sort_unstable();
                v
            }
        }
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        match &self.inner {
            Inner::Safetensors(f) => f.contains(name),
            Inner::Torch(t) => t.index.contains_key(name),
        }
    }

    /// The stored name for `key`, trying the SD1 text-encoder variants with and without
    /// `text_model.` (§8.1).
    pub fn resolve(&self, key: &str) -> Option<String> {
        if self.contains(key) {
            return Some(key.to_string());
        }
        let normalized = normalize_te_key(key);
        if self.contains(&normalized) {
            return Some(normalized);
        }
        let stripped = key.replacen(
            "cond_stage_model.transformer.text_model.",
            "cond_stage_model.transformer.",
            1,
        );
        self.contains(&stripped).then_some(stripped)
    }

    /// Dtype and shape of `name`.
    pub fn info(&self, name: &str) -> Result<(DType, Vec<usize>)> {
        match &self.inner {
            Inner::Safetensors(f) => {
                let i = f.info(name)?;
                Ok((i.dtype, i.shape.clone()))
            }
            Inner::Torch(t) => {
                let r = t.get(&self.path, name)?;
                Ok((r.storage.dtype, r.shape.clone()))
            }
        }
    }

    /// Guesses SD1 / SD2 / SDXL from the keys.
    pub fn base_model(&self) -> BaseModel {
        detect_checkpoint_base_model(self.names())
    }

    /// `name` in its stored dtype, C order.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        match &self.inner {
            Inner::Safetensors(f) => {
                let i = f.info(name)?;
                Ok(RawTensor {
                    dtype: i.dtype,
                    shape: i.shape.clone(),
                    data: Cow::Borrowed(f.tensor_bytes(name)?),
                })
            }
            Inner::Torch(t) => t.raw(&self.path, name),
        }
    }

    /// `name` as an owned `f32` array; NaN/inf is an [`Error::NonFinite`].
    pub fn tensor_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let raw = self.raw(name)?;
        let numel: usize = raw.shape.iter().product();
        let mut out = vec![0f32; numel];
        match bytes_to_f32_checked(raw.dtype, &raw.data, &mut out) {
            Ok(()) => {}
            Err(ConvertError::Unsupported) => {
                return Err(Error::UnsupportedDtype {
                    file: self.path.clone(),
                    tensor: name.into(),
                    dtype: raw.dtype.to_string(),
                })
            }
            Err(ConvertError::NonFinite(index, value)) => {
                return Err(Error::NonFinite {
                    file: self.path.clone(),
                    tensor: name.into(),
                    index,
                    value,
                })
            }
        }
        ArrayD::from_shape_vec(IxDyn(&raw.shape), out).map_err(|e| Error::BadShape {
            file: self.path.clone(),
            tensor: name.into(),
            shape: raw.shape.clone(),
            message: e.to_string(),
        })
    }

    /// Every tensor as `f32`, one at a time, sorted by name.
    pub fn iter_f32(&self) -> impl Iterator<Item = (String, Result<ArrayD<f32>>)> + '_ {
        self.names()
            .into_iter()
            .map(move |n| (n.to_string(), self.tensor_f32(n)))
    }
}

fn zip_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Zip {
        file: path.into(),
        message: e.to_string(),
    }
}

impl TorchFile {
    fn open(path: &Path, mmap: Backing) -> Result<Self> {
        let mut archive =
            zip::ZipArchive::new(std::io::Cursor::new(&mmap[..])).map_err(|e| zip_err(path, e))?;
        let pkl_name = archive
            .file_names()
            .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .next()
            .ok_or_else(|| zip_err(path, "no <archive>/data.pkl entry: not a torch checkpoint"))?;
        let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
        let mut storages = HashMap::new();
        let mut pkl_range = None;
        for i in 0..archive.len() {
            let f = archive.by_index_raw(i).map_err(|e| zip_err(path, e))?;
            let name = f.name().to_string();
            let wanted = name == pkl_name || name.starts_with(&format!("{prefix}data/"));
            if !wanted {
                continue;
            }
            if f.compression() != zip::CompressionMethod::Stored {
                return Err(zip_err(
                    path,
                    format!("entry {name} is compressed; torch writes stored entries"),
                ));
            }
            let start = usize::try_from(f.data_start()).map_err(|e| zip_err(path, e))?;
            let len = usize::try_from(f.size()).map_err(|e| zip_err(path, e))?;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= mmap.len())
                .ok_or_else(|| {
                    zip_err(path, format!("entry {name} runs past the end of the file"))
                })?;
            if name == pkl_name {
                pkl_range = Some((start, end));
            } else {
                storages.insert(
                    name[prefix.len() + "data/".len()..].to_string(),
                    (start, end),
                );
            }
        }
        let (a, b) = pkl_range.ok_or_else(|| zip_err(path, "data.pkl missing"))?;
        let tensors = pickle::load_with(&mmap[a..b], |top| collect_tensors(path, &pkl_name, top))
            .map_err(|e| match e {
                PickleError::Malformed(message) => Error::Pickle {
                    file: path.into(),
                    entry: pkl_name.clone(),
                    message,
                },
                PickleError::Forbidden { module, name } => Error::ForbiddenGlobal {
                    file: path.into(),
                    entry: pkl_name.clone(),
                    module,
                    name,
                },
            })??;
        let mut index = HashMap::new();
        for (i, (n, t)) in tensors.iter().enumerate() {
            if index.insert(n.clone(), i).is_some() {
                return Err(Error::DuplicateTensor {
                    file: path.into(),
                    tensor: n.clone(),
                });
            }
            check_extent(path, n, t, &storages)?;
        }
        drop(archive);
        Ok(TorchFile {
            mmap,
            tensors,
            index,
            storages,
        })
    }

    fn get(&self, path: &Path, name: &str) -> Result<&TensorRef> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i].1)
            .ok_or_else(|| Error::TensorNotFound {
                file: path.into(),
                tensor: name.into(),
            })
    }

    fn raw(&self, path: &Path, name: &str) -> Result<RawTensor<'_>> {
        let t = self.get(path, name)?;
        let (a, b) = self.storages[&t.storage.key];
        let storage = &self.mmap[a..b];
        let es = t.storage.dtype.size();
        let numel: usize = t.shape.iter().product();
        let contiguous = is_contiguous(&t.shape, &t.stride);
        let data = if numel == 0 {
            Cow::Owned(Vec::new())
        } else if contiguous {
            Cow::Borrowed(&storage[t.offset * es..(t.offset + numel) * es])
        } else {
            // Strided gather, element by element (rare in SD checkpoints).
            let mut out = Vec::with_capacity(numel * es);
            let mut idx = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let off = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
                out.extend_from_slice(&storage[off * es..(off + 1) * es]);
                for d in (0..idx.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < t.shape[d] {
                        break;
                    }
                    idx[d] = 0;
                }
            }
            Cow::Owned(out)
        };
        Ok(RawTensor {
            dtype: t.storage.dtype,
            shape: t.shape.clone(),
            data,
        })
    }
}

fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}

/// Checks that a tensor's elements lie inside its storage (checked arithmetic).
fn check_extent(
    path: &Path,
    name: &str,
    t: &TensorRef,
    storages: &HashMap<String, (usize, usize)>,
) -> Result<()> {
    let bad = |message: String| Error::Pickle {
        file: path.into(),
        entry: name.into(),
        message,
    };
    let (a, b) = storages
        .get(&t.storage.key)
        .ok_or_else(|| bad(format!("storage {:?} is not in the archive", t.storage.key)))?;
    let es = t.storage.dtype.size();
    if (b - a) % es != 0 {
        return Err(bad(format!(
            "storage {:?} length {} is not a multiple of {}",
            t.storage.key,
            b - a,
            es
        )));
    }
    let storage_numel = (b - a) / es;
    if t.shape.contains(&0) {
        return Ok(());
    }
    let mut last = t.offset;
    for (&d, &s) in t.shape.iter().zip(&t.stride) {
        let span = (d - 1)
            .checked_mul(s)
            .ok_or_else(|| bad("shape × stride overflows".into()))?;
        last = last
            .checked_add(span)
            .ok_or_else(|| bad("shape × stride overflows".into()))?;
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if numel.is_none_or(|n| n > storage_numel) {
        // Only an expanded (stride-0) view can hold more elements than its storage; torch
        // checkpoints of models never contain one, and refusing it bounds memory by the file size.
        return Err(bad(format!(
            "tensor of shape {:?} has more elements than its storage ({storage_numel})",
            t.shape
        )));
    }
    if last >= storage_numel {
        return Err(bad(format!(
            "tensor reaches element {last} of a storage with {storage_numel}"
        )));
    }
    t.shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(es))
        .ok_or_else(|| bad("size overflows".into()))?;
    Ok(())
}

/// The tensors of the top dict (or of its `state_dict` entry); other values are skipped.
fn collect_tensors(path: &Path, entry: &str, top: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(d) = top else {
        return Err(Error::Pickle {
            file: path.into(),
            entry: entry.into(),
            message: "top-level object is not a dict".into(),
        });
    };
    let d = d.borrow();
    let inner = d.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(s), Value::Dict(sd)) if &**s == "state_dict" => Some(sd.clone()),
        _ => None,
    });
    let pairs: Vec<(Value, Value)> = match inner {
        Some(sd) => sd.borrow().clone(),
        None => d.clone(),
    };
    let mut out = Vec::new();
    for (k, v) in pairs {
        if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
            out.push((name.to_string(), (*t).clone()));
        }
    }
    Ok(out)
}
