//! Where the operations read modules from: a [`LoraFile`] already in memory, or a [`LoraSource`] that keeps
//! the file mapped and converts one module at a time to `f32` (the tools use it, so a LoRA is never held
//! whole in `f32`: peak memory stays near the file size).

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
    /// kohya names: the file stays mapped; modules are converted on demand.
    Mapped(SafetensorsFile, Vec<Entry>),
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
        Ok(LoraSource {
            path: path.into(),
            backing: Backing::Mapped(f, entries),
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

/// Drops the mapped pages under `bytes` (which must lie in a read-only file mapping, as every
/// [`SafetensorsFile::open`] makes) from this process's resident set (`madvise(MADV_DONTNEED)` on a
/// read-only file mapping: a later access re-reads them from the page cache, so the contents never change).
/// Without it every converted tensor would stay resident and peak memory would grow by the whole input.
#[cfg(target_os = "linux")]
pub(crate) fn release_pages(bytes: &[u8]) {
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: std::os::raw::c_int) -> i32;
        fn sysconf(name: std::os::raw::c_int) -> std::os::raw::c_long;
    }
    const MADV_DONTNEED: std::os::raw::c_int = 4;
    const SC_PAGESIZE: std::os::raw::c_int = 30;
    if bytes.is_empty() {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { sysconf(SC_PAGESIZE) };
    let page = if page > 0 { page as usize } else { 4096 };
    let start = bytes.as_ptr() as usize / page * page;
    let end = (bytes.as_ptr() as usize + bytes.len()).div_ceil(page) * page;
    // SAFETY: `bytes` lies in a read-only file mapping (SafetensorsFile::open maps every file it opens),
    // and the mapping covers whole pages, so [start, end) is mapped. MADV_DONTNEED on a file mapping that
    // was never written only drops resident pages; their contents, re-read on access, are unchanged. A
    // failure is harmless (the pages simply stay resident), so the result is ignored.
    unsafe {
        madvise(start as *mut std::ffi::c_void, end - start, MADV_DONTNEED);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn release_pages(_bytes: &[u8]) {}

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
            Backing::Mapped(_, e) => e.len(),
            Backing::Loaded(l) => l.modules.len(),
        }
    }

    fn name(&self, i: usize) -> &str {
        match &self.backing {
            Backing::Mapped(_, e) => &e[i].name,
            Backing::Loaded(l) => &l.modules[i].name,
        }
    }

    fn module(&self, i: usize) -> Result<Cow<'_, LoraModule>> {
        let (f, e) = match &self.backing {
            Backing::Mapped(f, e) => (f, &e[i]),
            Backing::Loaded(l) => return Ok(Cow::Borrowed(&l.modules[i])),
        };
        let down = f.tensor_f32(&e.down)?;
        let up = f.tensor_f32(&e.up)?;
        // Converted: the mapped pages are no longer needed (they stay in the page cache).
        release_pages(f.tensor_bytes(&e.down)?);
        release_pages(f.tensor_bytes(&e.up)?);
        let alpha = match &e.alpha {
            None => None,
            Some(key) => {
                let a = f.tensor_f32(key)?;
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
            Backing::Mapped(f, _) => f.metadata(),
            Backing::Loaded(l) => &l.metadata,
        }
    }
}
