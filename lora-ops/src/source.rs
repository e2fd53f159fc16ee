//! Where the operations read modules from: a [`LoraFile`] already in memory, or a [`LoraSource`] that reads
//! and converts one module at a time to `f32` (the tools use it, so a LoRA is never held whole, neither in
//! `f32` nor as mapped file pages).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lora_core::{detect_format, LoraFile, LoraFormat, LoraModule, Metadata, SafetensorsFile};

use crate::error::Result;

/// A set of LoRA modules in sorted name order, loadable one at a time.
pub trait ModuleSource: Sync {
    /// Number of modules.
    fn len(&self) -> usize;
    /// True when there is no module.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Name of module `i` (sorted order).
    fn name(&self, i: usize) -> &str;
    /// Module `i` with `f32` factors (borrowed when already in memory).
    fn module(&self, i: usize) -> Result<Cow<'_, LoraModule>>;
    /// Number of elements of module `i`'s factors without reading them (0 when unknown): used to schedule
    /// the largest modules first.
    fn numel_hint(&self, i: usize) -> usize {
        let _ = i;
        0
    }
    /// The file's `__metadata__`.
    fn metadata(&self) -> &Metadata;
}

impl ModuleSource for LoraFile {
    fn len(&self) -> usize {
        self.modules.len()
    }
    fn name(&self, i: usize) -> &str {
        &self.modules[i].name
    }
    fn module(&self, i: usize) -> Result<Cow<'_, LoraModule>> {
        Ok(Cow::Borrowed(&self.modules[i]))
    }
    fn numel_hint(&self, i: usize) -> usize {
        self.modules[i].down.len() + self.modules[i].up.len()
    }
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

struct Entry {
    name: String,
    down: String,
    up: String,
    alpha: Option<String>,
}

enum Backing {
    /// kohya names: the header parsed (and the file mapped) by lora-core; tensors read on demand with
    /// positioned reads through the `File`.
    Mapped(SafetensorsFile, Vec<Entry>, std::fs::File),
    /// Other layouts (PEFT/diffusers names, converted by lora-core): loaded whole.
    Loaded(LoraFile),
}

/// A LoRA file opened for reading module by module (see the module docs).
///
/// Opening checks the header and the module structure (every module has `lora_down.weight` and
/// `lora_up.weight`, nothing foreign), like [`LoraFile::load`]; shapes, alpha and finiteness are checked
/// when each module is read, before anything is written.
pub struct LoraSource {
    path: PathBuf,
    backing: Backing,
}

impl LoraSource {
    /// Opens `path` (kohya files mapped; PEFT/diffusers files loaded and converted whole).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = SafetensorsFile::open(path)?;
        if detect_format(&f) != LoraFormat::Kohya {
            return Ok(LoraSource {
                path: path.into(),
                backing: Backing::Loaded(LoraFile::from_safetensors(&f)?),
            });
        }
        #[derive(Default)]
        struct Parts {
            down: Option<String>,
            up: Option<String>,
            alpha: Option<String>,
        }
        let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
        for name in f.names() {
            let (module, slot) = if let Some(m) = name.strip_suffix(".lora_down.weight") {
                (m, 0)
            } else if let Some(m) = name.strip_suffix(".lora_up.weight") {
                (m, 1)
            } else if let Some(m) = name.strip_suffix(".alpha") {
                (m, 2)
            } else {
                return Err(lora_core::Error::UnexpectedTensor {
                    file: path.into(),
                    tensor: name.into(),
                }
                .into());
            };
            let p = parts.entry(module.to_string()).or_default();
            let s = Some(name.to_string());
            match slot {
                0 => p.down = s,
                1 => p.up = s,
                _ => p.alpha = s,
            }
        }
        let mut entries = Vec::with_capacity(parts.len());
        for (name, p) in parts {
            let missing = |what: &str| lora_core::Error::MissingTensor {
                file: path.into(),
                module: name.clone(),
                missing: what.into(),
            };
            let down = p.down.ok_or_else(|| missing("lora_down.weight"))?;
            let up = p.up.ok_or_else(|| missing("lora_up.weight"))?;
            entries.push(Entry {
                name,
                down,
                up,
                alpha: p.alpha,
            });
        }
        let file = std::fs::File::open(path).map_err(|source| lora_core::Error::Io {
            file: path.into(),
            source,
        })?;
        Ok(LoraSource {
            path: path.into(),
            backing: Backing::Mapped(f, entries, file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads every module (a [`LoraFile`] equal to [`LoraFile::load`]'s).
    pub fn to_lora_file(&self) -> Result<LoraFile> {
        let modules = (0..self.len())
            .map(|i| self.module(i).map(Cow::into_owned))
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraFile::new(modules, self.metadata().clone()))
    }
}

/// Reads tensor `name` as `f32` with a positioned read (F16, BF16, F32; other dtypes through lora-core's
/// mapped reader). Reading instead of touching the map keeps the input out of this process's resident set
/// (touching even a 2-byte alpha through the map faults in its whole neighbourhood: with large page-cache
/// folios the input became resident piece by piece, and dropping pages after use did not hold). NaN and infinity are refused like lora-core does.
fn read_f32(f: &SafetensorsFile, file: &std::fs::File, name: &str) -> Result<ndarray::ArrayD<f32>> {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    use lora_core::DType;
    use std::os::unix::fs::FileExt;
    let info = f.info(name)?;
    let elem = match info.dtype {
        DType::F16 | DType::BF16 => 2,
        DType::F32 => 4,
        _ => return Ok(f.tensor_f32(name)?),
    };
    if cfg!(target_endian = "big") {
        return Ok(f.tensor_f32(name)?);
    }
    let n = info.numel();
    let start = (f.bytes().len() - f.data_section().len() + info.data_offsets.0) as u64;
    let io = |source| lora_core::Error::Io {
        file: f.path().into(),
        source,
    };
    let mut out = vec![0f32; n];
    if elem == 2 {
        // The 16-bit values are read into the second half of the output's own bytes and widened in place,
        // front to back (no second buffer to allocate and fault in). Each chunk is copied out before its
        // `f32`s are stored: they end at byte 4·(i+c), which reaches a later chunk's source (from byte
        // 2·n + 2·(i+c)) only for the last chunk, when there is none.
        // SAFETY: the f32 buffer viewed as its 4·n bytes; every bit pattern is a valid f32 (NaN/inf are
        // refused below).
        let raw = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), n * 4) };
        file.read_exact_at(&mut raw[n * 2..], start).map_err(io)?;
        const CHUNK: usize = 2048;
        let mut bits = [0u16; CHUNK];
        let mut wide = [0f32; CHUNK];
        for i in (0..n).step_by(CHUNK) {
            let c = CHUNK.min(n - i);
            let src = &raw[2 * n + 2 * i..2 * n + 2 * (i + c)];
            for (b, pair) in bits[..c].iter_mut().zip(src.chunks_exact(2)) {
                *b = u16::from_le_bytes([pair[0], pair[1]]);
            }
            if info.dtype == DType::F16 {
                let h: &[half::f16] = bits[..c].reinterpret_cast();
                h.convert_to_f32_slice(&mut wide[..c]);
            } else {
                let h: &[half::bf16] = bits[..c].reinterpret_cast();
                h.convert_to_f32_slice(&mut wide[..c]);
            }
            for (dst, v) in raw[4 * i..4 * (i + c)].chunks_exact_mut(4).zip(&wide[..c]) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        }
    } else {
        // SAFETY: an f32 buffer viewed as its 4·n bytes; every bit pattern is a valid f32 (NaN/inf are
        // refused below).
        let raw = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), n * 4) };
        file.read_exact_at(raw, start).map_err(io)?;
    }
    // A branch-free scan first (vectorizes), the position only when something is wrong.
    let bad = out
        .chunks(4096)
        .any(|c| c.iter().fold(false, |acc, v| acc | !v.is_finite()));
    if let Some((index, &value)) = out.iter().enumerate().find(|(_, v)| bad && !v.is_finite()) {
        return Err(lora_core::Error::NonFinite {
            file: f.path().into(),
            tensor: name.into(),
            index,
            value,
        }
        .into());
    }
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&info.shape), out).map_err(|e| {
        lora_core::Error::BadShape {
            file: f.path().into(),
            tensor: name.into(),
            shape: info.shape.clone(),
            message: e.to_string(),
        }
        .into()
    })
}

/// Puts the file's path into a shape error raised by [`LoraModule::new`] (which names `<memory>`).
fn name_file(e: lora_core::Error, path: &Path) -> lora_core::Error {
    match e {
        lora_core::Error::BadShape {
            tensor,
            shape,
            message,
            ..
        } => lora_core::Error::BadShape {
            file: path.into(),
            tensor,
            shape,
            message,
        },
        other => other,
    }
}

impl ModuleSource for LoraSource {
    fn len(&self) -> usize {
        match &self.backing {
            Backing::Mapped(_, e, _) => e.len(),
            Backing::Loaded(l) => l.modules.len(),
        }
    }

    fn name(&self, i: usize) -> &str {
        match &self.backing {
            Backing::Mapped(_, e, _) => &e[i].name,
            Backing::Loaded(l) => &l.modules[i].name,
        }
    }

    fn numel_hint(&self, i: usize) -> usize {
        match &self.backing {
            Backing::Mapped(f, e, _) => [&e[i].down, &e[i].up]
                .iter()
                .filter_map(|n| f.info(n).ok())
                .map(|t| t.numel())
                .sum(),
            Backing::Loaded(l) => l.numel_hint(i),
        }
    }

    fn module(&self, i: usize) -> Result<Cow<'_, LoraModule>> {
        let (f, e, file) = match &self.backing {
            Backing::Mapped(f, e, file) => (f, &e[i], file),
            Backing::Loaded(l) => return Ok(Cow::Borrowed(&l.modules[i])),
        };
        let down = read_f32(f, file, &e.down)?;
        let up = read_f32(f, file, &e.up)?;
        let alpha = match &e.alpha {
            None => None,
            Some(key) => {
                let a = read_f32(f, file, key)?;
                if a.len() != 1 || a.ndim() > 1 {
                    return Err(lora_core::Error::BadShape {
                        file: self.path.clone(),
                        tensor: key.clone(),
                        shape: a.shape().to_vec(),
                        message: "alpha must be a scalar (shape [])".into(),
                    }
                    .into());
                }
                a.iter().next().copied()
            }
        };
        let m = LoraModule::new(e.name.clone(), down, up, alpha)
            .map_err(|err| name_file(err, &self.path))?;
        Ok(Cow::Owned(m))
    }

    fn metadata(&self) -> &Metadata {
        match &self.backing {
            Backing::Mapped(f, _, _) => f.metadata(),
            Backing::Loaded(l) => &l.metadata,
        }
    }
}
