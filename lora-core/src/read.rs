//! Reading safetensors files by mmap, with a defensive header parser.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayD, ArrayView, CowArray, IxDyn};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::dtype::{bytes_to_f32, bytes_to_f32_checked, first_non_finite, ConvertError, DType};
use crate::{Error, Metadata, Result};

/// Largest header accepted, in bytes (the safetensors crate's own limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Where one tensor lives in a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a 0-dim scalar).
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub data_offsets: (usize, usize),
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The bytes behind a reader: a read-only map of a file, or an owned buffer.
#[derive(Debug)]
pub(crate) enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

impl Backing {
    /// Maps `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Backing> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            // mmap of an empty file fails on some systems; report it as truncated.
            return Err(Error::Truncated {
                file: path.into(),
                len,
            });
        }
        // SAFETY: the map is read-only. A file changed by another process while mapped is the one
        // risk of every mmap reader (the safetensors crate shares it); references into the map
        // never outlive the reader that owns it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Backing::Map(mmap))
    }
}

/// An open safetensors file: the header parsed and checked, the data mapped, nothing copied.
///
/// Tensors are read one at a time, so a multi-GB checkpoint never sits in memory whole.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Backing,
    data_start: usize,
    metadata: Metadata,
    /// In data (offset) order.
    tensors: Vec<(String, TensorInfo)>,
    index: HashMap<String, usize>,
}

impl SafetensorsFile {
    /// Opens and checks `path`: header length and size limit, UTF-8, JSON shape, dtypes, shapes,
    /// offsets (checked arithmetic, in bounds, no overlap, no hole, nothing trailing), duplicate
    /// names. The file is mapped, not read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_backing(path, Backing::map(path)?)
    }

    /// Parses a file image held in memory; `path` only names it in errors (used by the fuzz
    /// targets; [`open`](Self::open) maps the file instead of reading it).
    pub fn from_vec(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_backing(path.as_ref(), Backing::Owned(bytes))
    }

    fn from_backing(path: &Path, mmap: Backing) -> Result<Self> {
        let (data_start, metadata, tensors) = parse(path, &mmap)?;
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        Ok(Self {
            path: path.into(),
            mmap,
            data_start,
            metadata,
            tensors,
            index,
        })
    }

    /// Parses a file image already in memory (used by the fuzz targets and tests). `path` only
    /// names the source in errors.
    pub fn check_bytes(
        path: impl AsRef<Path>,
        bytes: &[u8],
    ) -> Result<(Metadata, Vec<(String, TensorInfo)>)> {
        let (_, m, t) = parse(path.as_ref(), bytes)?;
        Ok((m, t))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` map (empty when the file has none), in the file's order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensor names, sorted by name (the order `safetensors.torch.load_file` returns, §1.4).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.iter().map(|(n, _)| n.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// Tensors in data order (the order they lie in the file; fastest to stream).
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Header entry of `name`.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i].1)
            .ok_or_else(|| Error::TensorNotFound {
                file: self.path.clone(),
                tensor: name.into(),
            })
    }

    /// Dtype of `name`.
    pub fn dtype(&self, name: &str) -> Result<DType> {
        Ok(self.info(name)?.dtype)
    }

    /// Shape of `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.info(name)?.shape)
    }

    /// Offset of the data section from the start of the file (8 + header length).
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    /// The whole data section (what `sshs_model_hash` hashes).
    pub fn data_section(&self) -> &[u8] {
        &self.mmap[self.data_start..]
    }

    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// Raw little-endian bytes of `name`, borrowed from the map (may be misaligned).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info(name)?;
        let (a, b) = info.data_offsets;
        Ok(&self.data_section()[a..b])
    }

    /// `name` converted to an owned `f32` array (from F32, F16, BF16, F64, I64, I32, I16, I8, U8,
    /// BOOL), aligned or not. NaN and infinity are reported as [`Error::NonFinite`].
    pub fn tensor_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let mut buf = Vec::new();
        let shape = self.tensor_f32_into(name, &mut buf)?.to_vec();
        ArrayD::from_shape_vec(IxDyn(&shape), buf).map_err(|e| Error::BadShape {
            file: self.path.clone(),
            tensor: name.into(),
            shape,
            message: e.to_string(),
        })
    }

    /// `name` as `f32` without a copy when it is stored as aligned F32 (a view into the map),
    /// converted otherwise. NaN and infinity are reported as [`Error::NonFinite`].
    pub fn tensor_f32_cow(&self, name: &str) -> Result<CowArray<'_, f32, IxDyn>> {
        let info = self.info(name)?;
        if info.dtype == DType::F32 {
            if let Ok(v) = bytemuck::try_cast_slice::<u8, f32>(self.tensor_bytes(name)?) {
                if let Some((index, value)) = first_non_finite(v) {
                    return Err(Error::NonFinite {
                        file: self.path.clone(),
                        tensor: name.into(),
                        index,
                        value,
                    });
                }
                let view =
                    ArrayView::from_shape(IxDyn(&info.shape), v).map_err(|e| Error::BadShape {
                        file: self.path.clone(),
                        tensor: name.into(),
                        shape: info.shape.clone(),
                        message: e.to_string(),
                    })?;
                return Ok(CowArray::from(view));
            }
        }
        Ok(CowArray::from(self.tensor_f32(name)?))
    }

    /// Like [`tensor_f32`](Self::tensor_f32), into a caller-owned buffer (resized to fit) so a loop
    /// over a checkpoint reuses one allocation. Returns the shape.
    pub fn tensor_f32_into(&self, name: &str, buf: &mut Vec<f32>) -> Result<&[usize]> {
        let info = self.info(name)?;
        let bytes = self.tensor_bytes(name)?;
        buf.resize(info.numel(), 0.0);
        match bytes_to_f32_checked(info.dtype, bytes, buf) {
            Ok(()) => Ok(&info.shape),
            Err(ConvertError::Unsupported) => Err(Error::UnsupportedDtype {
                file: self.path.clone(),
                tensor: name.into(),
                dtype: info.dtype.to_string(),
            }),
            Err(ConvertError::NonFinite(index, value)) => Err(Error::NonFinite {
                file: self.path.clone(),
                tensor: name.into(),
                index,
                value,
            }),
        }
    }

    /// Like [`tensor_f32`](Self::tensor_f32) but passes NaN and infinity through.
    pub fn tensor_f32_unchecked(&self, name: &str) -> Result<ArrayD<f32>> {
        let info = self.info(name)?;
        let bytes = self.tensor_bytes(name)?;
        let mut out = vec![0f32; info.numel()];
        if !bytes_to_f32(info.dtype, bytes, &mut out) {
            return Err(Error::UnsupportedDtype {
                file: self.path.clone(),
                tensor: name.into(),
                dtype: info.dtype.to_string(),
            });
        }
        ArrayD::from_shape_vec(IxDyn(&info.shape), out).map_err(|e| Error::BadShape {
            file: self.path.clone(),
            tensor: name.into(),
            shape: info.shape.clone(),
            message: e.to_string(),
        })
    }
}

/// A JSON object read as a list of entries, so that duplicate keys can be reported.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

type Parsed = (usize, Metadata, Vec<(String, TensorInfo)>);

fn parse(path: &Path, buf: &[u8]) -> Result<Parsed> {
    let file = || path.to_path_buf();
    let file_len = buf.len() as u64;
    if buf.len() < 8 {
        return Err(Error::Truncated {
            file: file(),
            len: file_len,
        });
    }
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
    if n > MAX_HEADER_LEN {
        return Err(Error::HeaderTooLarge {
            file: file(),
            len: n,
            limit: MAX_HEADER_LEN,
        });
    }
    let end = 8u64
        .checked_add(n)
        .filter(|&e| e <= file_len)
        .ok_or(Error::HeaderPastEnd {
            file: file(),
            header_len: n,
            file_len,
        })? as usize;
    let header = std::str::from_utf8(&buf[8..end]).map_err(|e| Error::HeaderNotUtf8 {
        file: file(),
        position: e.valid_up_to(),
    })?;
    let entries: Entries = serde_json::from_str(header).map_err(|e| Error::HeaderJson {
        file: file(),
        message: e.to_string(),
    })?;
    let data_len = buf.len() - end;

    let mut metadata = Metadata::new();
    let mut seen_meta = false;
    let mut tensors: Vec<(String, TensorInfo)> = Vec::with_capacity(entries.0.len());
    let mut seen: HashMap<String, ()> = HashMap::with_capacity(entries.0.len());
    for (name, value) in entries.0 {
        if name == "__metadata__" {
            if seen_meta {
                return Err(Error::DuplicateTensor {
                    file: file(),
                    tensor: name,
                });
            }
            seen_meta = true;
            metadata = parse_metadata(path, value)?;
            continue;
        }
        if seen.insert(name.clone(), ()).is_some() {
            return Err(Error::DuplicateTensor {
                file: file(),
                tensor: name,
            });
        }
        let info = parse_entry(path, &name, value, data_len as u64)?;
        tensors.push((name, info));
    }

    // Layout: sorted by start, every byte of the data section belongs to exactly one tensor.
    tensors.sort_by(|a, b| a.1.data_offsets.cmp(&b.1.data_offsets).then(a.0.cmp(&b.0)));
    let mut pos = 0usize;
    for (name, info) in &tensors {
        let (a, b) = info.data_offsets;
        if a < pos {
            return Err(Error::BadLayout {
                file: file(),
                tensor: name.clone(),
                message: format!(
                    "data [{a}, {b}) overlaps the previous tensor, which ends at {pos}"
                ),
            });
        }
        if a > pos {
            return Err(Error::BadLayout {
                file: file(),
                tensor: name.clone(),
                message: format!("data starts at {a}, leaving a hole after offset {pos}"),
            });
        }
        pos = b;
    }
    if pos != data_len {
        let last = tensors.last().map(|(n, _)| n.clone()).unwrap_or_default();
        return Err(Error::BadLayout {
            file: file(),
            tensor: last,
            message: format!(
                "{} bytes after the last tensor belong to no tensor",
                data_len - pos
            ),
        });
    }
    Ok((end, metadata, tensors))
}

fn parse_metadata(path: &Path, value: serde_json::Value) -> Result<Metadata> {
    let serde_json::Value::Object(map) = value else {
        return Err(Error::BadMetadata {
            file: path.into(),
            key: String::new(),
            message: "__metadata__ is not a JSON object".into(),
        });
    };
    let mut m = Metadata::new();
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => {
                m.insert(k, s);
            }
            other => {
                return Err(Error::BadMetadata {
                    file: path.into(),
                    key: k,
                    message: format!("value is not a string: {other}"),
                })
            }
        }
    }
    Ok(m)
}

fn parse_entry(
    path: &Path,
    name: &str,
    value: serde_json::Value,
    data_len: u64,
) -> Result<TensorInfo> {
    let bad = |message: String| Error::BadTensorEntry {
        file: path.into(),
        tensor: name.into(),
        message,
    };
    let serde_json::Value::Object(obj) = value else {
        return Err(bad("entry is not a JSON object".into()));
    };
    for k in obj.keys() {
        if !matches!(k.as_str(), "dtype" | "shape" | "data_offsets") {
            return Err(bad(format!("unknown field {k:?}")));
        }
    }
    let dtype_str = obj
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("missing or non-string dtype".into()))?;
    let dtype: DType = dtype_str.parse().map_err(|_| Error::UnsupportedDtype {
        file: path.into(),
        tensor: name.into(),
        dtype: dtype_str.into(),
    })?;
    let shape_v = obj
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("missing or non-array shape".into()))?;
    let mut shape = Vec::with_capacity(shape_v.len());
    for d in shape_v {
        let d = d
            .as_u64()
            .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?;
        shape.push(usize::try_from(d).map_err(|_| bad(format!("dimension {d} too large")))?);
    }
    let offs = obj
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .filter(|a| a.len() == 2)
        .ok_or_else(|| bad("data_offsets must be an array of two integers".into()))?;
    let a = offs[0]
        .as_u64()
        .ok_or_else(|| bad("data_offsets[0] is not a non-negative integer".into()))?;
    let b = offs[1]
        .as_u64()
        .ok_or_else(|| bad("data_offsets[1] is not a non-negative integer".into()))?;
    if b < a {
        return Err(bad(format!(
            "data_offsets [{a}, {b}] end before they start"
        )));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows the element count")))?;
    let expected = numel
        .checked_mul(dtype.size() as u64)
        .ok_or_else(|| bad(format!("shape {shape:?} overflows the byte count")))?;
    if b > data_len {
        return Err(Error::OffsetOutOfBounds {
            file: path.into(),
            tensor: name.into(),
            end: b,
            data_len,
        });
    }
    if b - a != expected {
        return Err(Error::ByteLengthMismatch {
            file: path.into(),
            tensor: name.into(),
            expected,
            actual: b - a,
        });
    }
    Ok(TensorInfo {
        dtype,
        shape,
        data_offsets: (a as usize, b as usize),
    })
}
