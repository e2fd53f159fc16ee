//! Streaming access to checkpoints: tensors read one at a time with positioned reads (so a multi-GB
//! checkpoint never becomes resident), conversions between stored bytes and `f32`, and a streaming
//! safetensors writer (header first, then each tensor as it is produced, into a temporary file renamed
//! into place).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use lora_core::{Checkpoint, DType, Metadata, SafetensorsFile};
use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A checkpoint opened for streaming reads: `.safetensors` by positioned reads, `.ckpt`/`.pt` through
/// `lora_core::Checkpoint`.
pub enum CheckpointReader {
    /// A safetensors file: header parsed by `lora-core`, data read with `pread`.
    Safetensors {
        /// Parsed header (the map is touched only for the header).
        st: SafetensorsFile,
        /// Handle for positioned reads.
        file: File,
    },
    /// A PyTorch zip checkpoint.
    Torch(Checkpoint),
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointReader({})", self.path().display())
    }
}

impl CheckpointReader {
    /// Opens `path`, deciding the format from its first bytes (`PK` = zip).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut head = [0u8; 2];
        let mut f = File::open(path).map_err(|e| io(path, e))?;
        let n = f.read(&mut head).map_err(|e| io(path, e))?;
        if n == 2 && &head == b"PK" {
            return Ok(CheckpointReader::Torch(Checkpoint::open(path)?));
        }
        let st = SafetensorsFile::open(path)?;
        Ok(CheckpointReader::Safetensors { st, file: f })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            CheckpointReader::Safetensors { st, .. } => st.path(),
            CheckpointReader::Torch(c) => c.path(),
        }
    }

    /// Tensor names.
    pub fn names(&self) -> Vec<String> {
        match self {
            CheckpointReader::Safetensors { st, .. } => {
                st.names().into_iter().map(str::to_string).collect()
            }
            CheckpointReader::Torch(c) => c.names().into_iter().map(str::to_string).collect(),
        }
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            CheckpointReader::Safetensors { st, .. } => st.contains(name),
            CheckpointReader::Torch(c) => c.contains(name),
        }
    }

    /// Dtype and shape of `name`.
    pub fn info(&self, name: &str) -> Result<(DType, Vec<usize>)> {
        match self {
            CheckpointReader::Safetensors { st, .. } => {
                let i = st.info(name)?;
                Ok((i.dtype, i.shape.clone()))
            }
            CheckpointReader::Torch(c) => Ok(c.info(name)?),
        }
    }

    /// The stored bytes of `name` (little-endian, C order).
    pub fn raw_bytes(&self, name: &str) -> Result<Vec<u8>> {
        match self {
            CheckpointReader::Safetensors { st, file } => {
                let i = st.info(name)?;
                let (a, b) = i.data_offsets;
                let mut buf = vec![0u8; b - a];
                file.read_exact_at(&mut buf, (st.data_start() + a) as u64)
                    .map_err(|e| io(st.path(), e))?;
                Ok(buf)
            }
            CheckpointReader::Torch(c) => Ok(c.raw(name)?.data.into_owned()),
        }
    }

    /// `name` as an `f32` array (F32, F16, BF16 here; other dtypes through `lora-core`).
    pub fn tensor_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let (dtype, shape) = self.info(name)?;
        let v = match dtype {
            DType::F32 | DType::F16 | DType::BF16 => bytes_to_f32(dtype, &self.raw_bytes(name)?),
            _ => {
                return match self {
                    CheckpointReader::Safetensors { st, .. } => Ok(st.tensor_f32(name)?),
                    CheckpointReader::Torch(c) => Ok(c.tensor_f32(name)?),
                }
            }
        };
        let v = v.ok_or_else(|| {
            format_err(
                self.path(),
                format!("tensor {name}: cannot read {dtype} as f32"),
            )
        })?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format_err(
                self.path(),
                format!("tensor {name}: non-finite value {} at index {i}", v[i]),
            ));
        }
        ArrayD::from_shape_vec(IxDyn(&shape), v)
            .map_err(|e| format_err(self.path(), format!("tensor {name}: {e}")))
    }
}

/// Converts stored bytes of a float dtype to `f32` (`None` for other dtypes or a bad length).
pub fn bytes_to_f32(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    let size = match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
        _ => return None,
    };
    if bytes.len() % size != 0 {
        return None;
    }
    Some(match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => {
            let h: Vec<f16> = bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect();
            let mut out = vec![0f32; h.len()];
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(&h[..], &mut out);
            out
        }
        _ => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    })
}

/// Converts `f32` values to the bytes of `dtype` (F32, F16, BF16; round to nearest even; values beyond
/// the fp16 range become ±inf as in torch's cast). `None` for other dtypes.
pub fn f32_to_bytes(dtype: DType, v: &[f32]) -> Option<Vec<u8>> {
    match dtype {
        DType::F32 => Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::F16 => {
            let mut h = vec![f16::ZERO; v.len()];
            half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut h[..], v);
            Some(h.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        DType::BF16 => Some(
            v.iter()
                .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
        ),
        _ => None,
    }
}

/// Whether a dtype is a floating type this crate converts (F32, F16, BF16).
pub fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

/// One tensor of a streamed output: its name, dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    /// Name.
    pub name: String,
    /// Stored dtype.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl OutTensor {
    fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Sorts tensors as the safetensors crate writes them: descending dtype, then name ascending (§1.4).
pub fn safetensors_sort(tensors: &mut [OutTensor]) {
    tensors.sort_by(|a, b| {
        b.dtype
            .to_safetensors()
            .cmp(&a.dtype.to_safetensors())
            .then(a.name.cmp(&b.name))
    });
}

/// The padded header bytes (`u64` length + JSON padded with spaces to 8) for tensors already in file order.
pub fn header_bytes(tensors: &[OutTensor], metadata: &Metadata) -> Vec<u8> {
    let mut root = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        root.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut at = 0usize;
    for t in tensors {
        let end = at + t.byte_len();
        root.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.as_str(), "shape": t.shape, "data_offsets": [at, end]}),
        );
        at = end;
    }
    let mut json = serde_json::to_string(&serde_json::Value::Object(root)).expect("plain JSON");
    let padded = json.len().next_multiple_of(8);
    json.extend(std::iter::repeat_n(' ', padded - json.len()));
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out
}

/// Writes a safetensors file tensor by tensor: `tensors` in file order (see [`safetensors_sort`]), their
/// bytes produced by `produce` in batches of about `batch_bytes` (a batch may be computed in parallel by
/// the caller's closure), into a temporary file in the output's folder that is renamed over `path` only
/// when complete. `on_written` is told the bytes written so far (for progress bars).
pub fn write_streamed<F>(
    path: &Path,
    tensors: &[OutTensor],
    metadata: &Metadata,
    batch_bytes: usize,
    mut produce: F,
    mut on_written: impl FnMut(u64),
) -> Result<()>
where
    F: FnMut(&[OutTensor]) -> Result<Vec<Vec<u8>>>,
{
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".lora-ops-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| io(path, e))?;
    {
        let mut w = BufWriter::with_capacity(8 << 20, tmp.as_file());
        w.write_all(&header_bytes(tensors, metadata))
            .map_err(|e| io(path, e))?;
        let mut written = 0u64;
        let mut start = 0;
        while start < tensors.len() {
            let mut end = start;
            let mut size = 0;
            while end < tensors.len()
                && (end == start || size + tensors[end].byte_len() <= batch_bytes)
            {
                size += tensors[end].byte_len();
                end += 1;
            }
            let chunk = &tensors[start..end];
            let bytes = produce(chunk)?;
            for (t, b) in chunk.iter().zip(&bytes) {
                if b.len() != t.byte_len() {
                    return Err(format_err(
                        path,
                        format!(
                            "tensor {}: produced {} bytes, expected {}",
                            t.name,
                            b.len(),
                            t.byte_len()
                        ),
                    ));
                }
                w.write_all(b).map_err(|e| io(path, e))?;
                written += b.len() as u64;
            }
            on_written(written);
            start = end;
        }
        w.flush().map_err(|e| io(path, e))?;
    }
    tmp.persist(path).map_err(|e| io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let mut ts = vec![
            OutTensor {
                name: "b".into(),
                dtype: DType::F16,
                shape: vec![2, 3],
            },
            OutTensor {
                name: "a".into(),
                dtype: DType::F32,
                shape: vec![3],
            },
        ];
        safetensors_sort(&mut ts);
        assert_eq!(ts[0].name, "a");
        let mut meta = Metadata::new();
        meta.insert("k", "v");
        write_streamed(
            &p,
            &ts,
            &meta,
            1,
            |chunk| {
                Ok(chunk
                    .iter()
                    .map(|t| f32_to_bytes(t.dtype, &vec![1.5; t.shape.iter().product()]).unwrap())
                    .collect())
            },
            |_| {},
        )
        .unwrap();
        let r = CheckpointReader::open(&p).unwrap();
        assert_eq!(r.tensor_f32("b").unwrap().shape(), &[2, 3]);
        assert!(r.tensor_f32("b").unwrap().iter().all(|&v| v == 1.5));
        let st = SafetensorsFile::open(&p).unwrap();
        assert_eq!(st.metadata().get("k"), Some("v"));
    }
}
