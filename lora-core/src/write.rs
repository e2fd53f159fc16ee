//! Writing safetensors files atomically through the safetensors crate's [`View`] trait.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use safetensors::View;
use sha2::{Digest, Sha256};

use crate::dtype::{
    all_below, f32_to_bytes, first_non_finite, overflow_threshold, overflows, DType,
};
use crate::{Error, Metadata, Result};

/// One tensor to write: dtype, shape and where its bytes come from.
///
/// `F32` sources are converted to the target dtype when the writer asks for the bytes, one tensor
/// at a time, so writing a checkpoint does not need a second copy of it in memory.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    dtype: DType,
    shape: Vec<usize>,
    source: Source<'a>,
}

#[derive(Debug, Clone)]
enum Source<'a> {
    Bytes(Cow<'a, [u8]>),
    F32 {
        array: Cow<'a, ArrayD<f32>>,
        clamp: bool,
    },
}

impl<'a> TensorView<'a> {
    /// Raw little-endian bytes (e.g. borrowed from a [`SafetensorsFile`](crate::SafetensorsFile) to
    /// copy a tensor through unchanged). Fails if the length does not match dtype and shape.
    pub fn from_bytes(
        dtype: DType,
        shape: Vec<usize>,
        bytes: impl Into<Cow<'a, [u8]>>,
    ) -> Result<Self> {
        let bytes = bytes.into();
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel.and_then(|n| n.checked_mul(dtype.size())) != Some(bytes.len()) {
            return Err(Error::InvalidArgument(format!(
                "{} bytes do not hold a {dtype} tensor of shape {shape:?}",
                bytes.len()
            )));
        }
        Ok(Self {
            dtype,
            shape,
            source: Source::Bytes(bytes),
        })
    }

    /// An `f32` array written as `dtype` (F32, F16, BF16 or F64). Values beyond the dtype's range
    /// make the write fail with [`Error::Overflow`] unless `clamp` is set, in which case they are
    /// clamped to the largest finite value.
    pub fn from_f32(array: &'a ArrayD<f32>, dtype: DType, clamp: bool) -> Result<Self> {
        Self::from_cow(Cow::Borrowed(array), dtype, clamp)
    }

    /// Like [`from_f32`](Self::from_f32), taking the array by value.
    pub fn from_f32_owned(array: ArrayD<f32>, dtype: DType, clamp: bool) -> Result<Self> {
        Self::from_cow(Cow::Owned(array), dtype, clamp)
    }

    fn from_cow(array: Cow<'a, ArrayD<f32>>, dtype: DType, clamp: bool) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(Error::InvalidArgument(format!(
                "cannot write f32 data as {dtype}"
            )));
        }
        Ok(Self {
            dtype,
            shape: array.shape().to_vec(),
            source: Source::F32 { array, clamp },
        })
    }

    /// A 0-dim I64 scalar (svd_merge's alpha).
    pub fn scalar_i64(v: i64) -> TensorView<'static> {
        TensorView {
            dtype: DType::I64,
            shape: vec![],
            source: Source::Bytes(Cow::Owned(v.to_le_bytes().to_vec())),
        }
    }

    /// The dtype written.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape written.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Checks an `f32` source for NaN/inf and for overflow of the target dtype.
    pub(crate) fn check(&self, file: &Path, name: &str) -> Result<()> {
        let Source::F32 { array, clamp } = &self.source else {
            return Ok(());
        };
        let limit = if *clamp {
            f32::INFINITY
        } else {
            overflow_threshold(self.dtype)
        };
        // Fast path: one vectorized pass; the slow scans below only locate what it found.
        if let Some(s) = array.as_slice() {
            if all_below(s, limit) {
                return Ok(());
            }
        }
        let std;
        let v: &[f32] = match array.as_slice() {
            Some(s) => s,
            None => {
                std = array.iter().copied().collect::<Vec<_>>();
                &std
            }
        };
        if let Some((index, value)) = first_non_finite(v) {
            return Err(Error::NonFinite {
                file: file.into(),
                tensor: name.into(),
                index,
                value,
            });
        }
        if !clamp {
            if let Some(&value) = v.iter().find(|&&x| overflows(self.dtype, x)) {
                return Err(Error::Overflow {
                    file: file.into(),
                    tensor: name.into(),
                    value,
                    dtype: self.dtype.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The bytes as they will be written.
    pub fn bytes(&self) -> Cow<'_, [u8]> {
        match &self.source {
            Source::Bytes(b) => Cow::Borrowed(b.as_ref()),
            Source::F32 { array, clamp } => match array.as_slice() {
                Some(s) if self.dtype == DType::F32 => Cow::Borrowed(bytemuck::cast_slice(s)),
                Some(s) => Cow::Owned(f32_to_bytes(self.dtype, s, *clamp).unwrap_or_default()),
                None => {
                    let v: Vec<f32> = array.iter().copied().collect();
                    Cow::Owned(f32_to_bytes(self.dtype, &v, *clamp).unwrap_or_default())
                }
            },
        }
    }

    /// Converts to an owned view holding its final bytes (so they can be hashed and then written).
    pub fn into_owned_bytes(self) -> TensorView<'static> {
        let bytes = self.bytes().into_owned();
        TensorView {
            dtype: self.dtype,
            shape: self.shape,
            source: Source::Bytes(Cow::Owned(bytes)),
        }
    }

    fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

impl View for &TensorView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        self.bytes()
    }
    fn data_len(&self) -> usize {
        self.byte_len()
    }
}

/// Sorts tensors into the order safetensors writes them (§1.4): descending dtype, then name.
pub fn safetensors_order<'v, 'a>(
    tensors: &'v [(String, TensorView<'a>)],
) -> Vec<&'v (String, TensorView<'a>)> {
    let mut v: Vec<_> = tensors.iter().collect();
    v.sort_by(|(ln, l), (rn, r)| r.dtype.cmp(&l.dtype).then(ln.cmp(rn)));
    v
}

/// The header JSON safetensors writes for these tensors and metadata (compact, before padding).
/// The `__metadata__` key order follows a `HashMap`, as in the safetensors crate; the length does not
/// depend on it.
pub fn header_json(tensors: &[(String, TensorView<'_>)], metadata: &Metadata) -> Result<String> {
    let mut offset = 0usize;
    let infos: Vec<(String, safetensors::tensor::TensorInfo)> = safetensors_order(tensors)
        .into_iter()
        .map(|(n, t)| {
            let len = t.byte_len();
            let info = safetensors::tensor::TensorInfo {
                dtype: t.dtype.to_safetensors(),
                shape: t.shape.clone(),
                data_offsets: (offset, offset + len),
            };
            offset += len;
            (n.clone(), info)
        })
        .collect();
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.to_hash_map())
    };
    let m = safetensors::tensor::Metadata::new(meta, infos)
        .map_err(|e| Error::InvalidArgument(format!("building header: {e}")))?;
    serde_json::to_string(&m).map_err(|e| Error::InvalidArgument(format!("building header: {e}")))
}

/// Refuses to write `output` when it is the same file as one of `inputs` (compared after resolving
/// links); a tool calls this before it starts.
pub fn ensure_not_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    let out = output.canonicalize().ok();
    for i in inputs {
        let same = match (&out, i.canonicalize().ok()) {
            (Some(o), Some(i)) => *o == i,
            _ => output == *i,
        };
        if same {
            return Err(Error::OverwriteInput {
                file: output.into(),
            });
        }
    }
    Ok(())
}

/// A temporary file in `dir` for an output that is renamed into place when complete. Created with the
/// permissions of an ordinary new file (0666 less the umask on Unix), not the 0600 of a private temporary
/// file, so that the renamed output is readable like any file the user writes.
pub fn output_temp_file(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o666));
    }
    b.tempfile_in(dir)
}

/// Writes named tensors and metadata to `path` as a safetensors file, atomically: the bytes go to a
/// temporary file in the same folder, which is renamed over `path` only when complete. On error no
/// file is left at `path` (an existing file there is untouched).
///
/// Layout and order are the safetensors crate's (§1.4). `F32` sources are checked for NaN/inf and
/// for overflow of their target dtype before anything is written.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, TensorView<'_>)],
    metadata: &Metadata,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::DuplicateTensor {
                file: path.into(),
                tensor: name.clone(),
            });
        }
        t.check(path, name)?;
    }
    let dir = parent_dir(path);
    let tmp = output_temp_file(&dir, ".lora-core-", ".tmp").map_err(|e| Error::io(path, e))?;
    let perms = std::fs::metadata(tmp.path())
        .map_err(|e| Error::io(path, e))?
        .permissions();
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.to_hash_map())
    };
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        meta,
        tmp.path(),
    )
    .map_err(|e| Error::Write {
        file: path.into(),
        message: e.to_string(),
    })?;
    // safetensors renames its own private (0600) temporary file over ours: give back the ordinary mode.
    std::fs::set_permissions(tmp.path(), perms).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes tensors like [`write_safetensors`] and returns the file's sshs hashes, storing them in the
/// header's metadata when `store_hashes` is set (what sd-scripts' savers do), in one pass over the data.
///
/// The header's length does not depend on the hash values (64 and 8 hex digits), so the data section is
/// written at its final offset while another thread hashes the same in-memory bytes; the header follows.
/// Before the file is put in place the data section is read back and compared byte for byte with the
/// bytes that were hashed, so the stored `sshs_model_hash` is checked against what reached the file (a
/// stronger check than hashing the read-back bytes a second time, and cheaper). Atomic like
/// [`write_safetensors`]: on error nothing is left at `path`.
pub fn write_safetensors_hashed(
    path: impl AsRef<Path>,
    tensors: &[(String, TensorView<'_>)],
    metadata: &Metadata,
    store_hashes: bool,
) -> Result<crate::SshsHashes> {
    use std::io::{Seek, SeekFrom, Write};
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for (name, t) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::DuplicateTensor {
                file: path.into(),
                tensor: name.clone(),
            });
        }
        t.check(path, name)?;
    }
    let data: Vec<Cow<'_, [u8]>> = safetensors_order(tensors)
        .into_iter()
        .map(|(_, t)| t.bytes())
        .collect();
    let legacy_hash = crate::hash::legacy_with_header(
        header_json(tensors, &metadata.ss_only())?,
        data.iter().map(|d| d.as_ref()),
    );
    // The header as it will be, with a stand-in model hash of the same length.
    let header_with = |model_hash: &str| -> Result<Vec<u8>> {
        let mut meta = metadata.clone();
        if store_hashes {
            meta.insert("sshs_model_hash", model_hash.to_string());
            meta.insert("sshs_legacy_hash", legacy_hash.clone());
        }
        let mut h = header_json(tensors, &meta)?.into_bytes();
        h.resize(h.len().next_multiple_of(8), b' ');
        Ok(h)
    };
    let header_len = header_with(&"0".repeat(64))?.len();
    if header_len as u64 > crate::MAX_HEADER_LEN {
        return Err(Error::Write {
            file: path.into(),
            message: format!("header of {header_len} bytes is too large"),
        });
    }
    let data_start = 8 + header_len as u64;
    let data_len: u64 = data.iter().map(|d| d.len() as u64).sum();
    let io = |e| Error::io(path, e);
    let dir = parent_dir(path);
    let tmp = output_temp_file(&dir, ".lora-core-", ".tmp").map_err(io)?;
    let file = tmp.as_file();
    file.set_len(data_start + data_len).map_err(io)?;
    let (model_hash, written) = std::thread::scope(|s| {
        let hashing = s.spawn(|| {
            let mut h = Sha256::new();
            for d in &data {
                h.update(d);
            }
            crate::hash::hex(&h.finalize())
        });
        let written = write_at(file, data_start, &data).and_then(|()| {
            let mut f = file;
            f.seek(SeekFrom::Start(data_start))?;
            same_bytes(f, &data)
        });
        let hash = hashing
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (hash, written)
    });
    if !written.map_err(io)? {
        return Err(Error::Write {
            file: path.into(),
            message: "the data read back differs from the data hashed".into(),
        });
    }
    let header = header_with(&model_hash)?;
    if header.len() != header_len {
        return Err(Error::Write {
            file: path.into(),
            message: "the header changed length once the hashes were known".into(),
        });
    }
    let mut f = file;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.write_all(&(header_len as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&header).map_err(io)?;
    f.flush().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(crate::SshsHashes {
        model_hash,
        legacy_hash,
    })
}

/// Writes `data` one piece after another from byte `start` of `file` (small pieces batched).
fn write_at(file: &std::fs::File, start: u64, data: &[Cow<'_, [u8]>]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(start))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
    for d in data {
        w.write_all(d)?;
    }
    w.flush()
}

/// Whether the bytes read from `r` are exactly the concatenation of `data`.
fn same_bytes(mut r: impl std::io::Read, data: &[Cow<'_, [u8]>]) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut have, mut at) = (0usize, 0usize);
    for d in data {
        let mut d: &[u8] = d;
        while !d.is_empty() {
            if at == have {
                have = r.read(&mut buf)?;
                at = 0;
                if have == 0 {
                    return Ok(false);
                }
            }
            let n = d.len().min(have - at);
            if d[..n] != buf[at..at + n] {
                return Ok(false);
            }
            d = &d[n..];
            at += n;
        }
    }
    Ok(true)
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    #[cfg(unix)]
    #[test]
    fn outputs_get_the_mode_of_an_ordinary_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = arr2(&[[1.0f32, 2.0]]).into_dyn();
        let out = dir.path().join("out.safetensors");
        let t = vec![(
            "w".to_string(),
            TensorView::from_f32(&a, DType::F32, false).unwrap(),
        )];
        write_safetensors(&out, &t, &Metadata::new()).unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), mode(&plain));
    }

    #[test]
    fn header_matches_safetensors_serialize() {
        let a = arr2(&[[1.0f32, 2.0], [3.0, 4.0]]).into_dyn();
        let tensors = vec![
            (
                "b.weight".to_string(),
                TensorView::from_f32(&a, DType::F16, false).unwrap(),
            ),
            ("a.alpha".to_string(), TensorView::scalar_i64(4)),
            (
                "c".to_string(),
                TensorView::from_f32(&a, DType::F32, false).unwrap(),
            ),
        ];
        let mut m = Metadata::new();
        m.insert("ss_network_dim", "4");
        let ours = header_json(&tensors, &m).unwrap();
        let bytes = safetensors::serialize(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            Some(m.to_hash_map()),
        )
        .unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n, ours.len().next_multiple_of(8));
        assert_eq!(
            std::str::from_utf8(&bytes[8..8 + ours.len()]).unwrap(),
            ours
        );
        // Order: I64 first, then F32, then F16.
        let order: Vec<_> = safetensors_order(&tensors)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(order, ["a.alpha", "c", "b.weight"]);
    }

    /// One pass (hash while writing, compare the read-back) writes what the safetensors crate writes,
    /// with the hashes `sshs_hashes` computes stored in the metadata.
    #[test]
    fn hashed_write_matches_plain_write_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        // Large enough for the legacy window (bytes 0x100000..0x110000) and several read-back chunks.
        let big = ndarray::Array::from_shape_fn((700, 1100), |(i, j)| (i * 31 + j) as f32 * 1e-3)
            .into_dyn();
        let small = arr2(&[[1.0f32, -2.0]]).into_dyn();
        let tensors = vec![
            (
                "b.weight".to_string(),
                TensorView::from_f32(&big, DType::F16, false).unwrap(),
            ),
            ("a.alpha".to_string(), TensorView::scalar_i64(4)),
            (
                "c".to_string(),
                TensorView::from_f32(&small, DType::F32, false).unwrap(),
            ),
        ];
        let mut meta = Metadata::new();
        meta.insert("ss_network_dim", "4");
        meta.insert("modelspec.title", "x");
        let want = crate::hash::sshs_hashes(&tensors, &meta).unwrap();
        let (p1, p2) = (dir.path().join("1"), dir.path().join("2"));
        for store in [true, false] {
            let got = write_safetensors_hashed(&p2, &tensors, &meta, store).unwrap();
            assert_eq!(got, want);
            let mut m = meta.clone();
            if store {
                m.insert("sshs_model_hash", want.model_hash.clone());
                m.insert("sshs_legacy_hash", want.legacy_hash.clone());
            }
            write_safetensors(&p1, &tensors, &m).unwrap();
            let (a, b) = (
                crate::SafetensorsFile::open(&p1).unwrap(),
                crate::SafetensorsFile::open(&p2).unwrap(),
            );
            assert_eq!(a.bytes().len(), b.bytes().len());
            assert_eq!(a.data_section(), b.data_section());
            assert_eq!(a.metadata().to_hash_map(), b.metadata().to_hash_map());
            assert_eq!(crate::hash::sshs_hashes_of_file(&b).unwrap(), want);
        }
        // Refused input leaves nothing behind.
        let huge = arr2(&[[1e6f32]]).into_dyn();
        let bad = vec![(
            "w".to_string(),
            TensorView::from_f32(&huge, DType::F16, false).unwrap(),
        )];
        let p3 = dir.path().join("3");
        let e = write_safetensors_hashed(&p3, &bad, &meta, true).unwrap_err();
        assert!(matches!(e, Error::Overflow { .. }), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        let a = arr2(&[[1e6f32]]).into_dyn();
        let t = vec![(
            "w".to_string(),
            TensorView::from_f32(&a, DType::F16, false).unwrap(),
        )];
        let e = write_safetensors(&p, &t, &Metadata::new()).unwrap_err();
        assert!(matches!(e, Error::Overflow { .. }), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let t = vec![(
            "w".to_string(),
            TensorView::from_f32(&a, DType::F16, true).unwrap(),
        )];
        write_safetensors(&p, &t, &Metadata::new()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
