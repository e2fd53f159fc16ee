//! The LoRA model: modules by kohya name, loading with validation, saving like sd-scripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::dtype::{first_non_finite, DType, SavePrecision};
use crate::hash::{sshs_hashes, sshs_model_hash, SshsHashes};
use crate::names::{detect_base_model, BaseModel};
use crate::peft;
use crate::write::{write_safetensors, TensorView};
use crate::{Error, Metadata, Result, SafetensorsFile};

/// Shape class of a LoRA module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    /// Linear: down `[r, in]`, up `[out, r]`.
    Linear,
    /// Conv2d: down `[r, in, kh, kw]`, up `[out, r, 1, 1]` (1x1 and 3x3 / LoCon).
    Conv {
        /// Kernel size `[kh, kw]`.
        kernel: [usize; 2],
    },
}

impl ModuleKind {
    /// `"linear"`, `"conv1x1"`, `"conv3x3"` (the tables' spelling; `"convKxK"` in general).
    pub fn label(&self) -> String {
        match self {
            ModuleKind::Linear => "linear".into(),
            ModuleKind::Conv { kernel: [h, w] } => format!("conv{h}x{w}"),
        }
    }
}

/// One LoRA module: `lora_down`, `lora_up` and the optional alpha, held as `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraModule {
    /// Kohya name, e.g. `lora_unet_mid_block_attentions_0_proj_in`.
    pub name: String,
    /// `lora_down.weight`: `[r, in]` or `[r, in, kh, kw]`.
    pub down: ArrayD<f32>,
    /// `lora_up.weight`: `[out, r]` or `[out, r, 1, 1]`.
    pub up: ArrayD<f32>,
    /// `alpha`; `None` (or 0) means alpha = rank.
    pub alpha: Option<f32>,
}

impl LoraModule {
    /// A module with its shapes checked (ranks agree, dims 2 or 4, up 4-D is `[out, r, 1, 1]`).
    pub fn new(
        name: impl Into<String>,
        down: ArrayD<f32>,
        up: ArrayD<f32>,
        alpha: Option<f32>,
    ) -> Result<Self> {
        let m = LoraModule {
            name: name.into(),
            down,
            up,
            alpha,
        };
        m.validate(Path::new("<memory>"))?;
        Ok(m)
    }

    fn validate(&self, file: &Path) -> Result<()> {
        let (d, u) = (self.down.shape(), self.up.shape());
        let bad = |t: &str, shape: &[usize], msg: &str| Error::BadShape {
            file: file.into(),
            tensor: format!("{}.{t}", self.name),
            shape: shape.to_vec(),
            message: msg.into(),
        };
        if !(d.len() == 2 || d.len() == 4) {
            return Err(bad(
                "lora_down.weight",
                d,
                "lora_down must be 2-D [r, in] or 4-D [r, in, kh, kw]",
            ));
        }
        if u.len() != d.len() {
            return Err(bad(
                "lora_up.weight",
                u,
                "lora_up must have as many dimensions as lora_down",
            ));
        }
        if u.len() == 4 && (u[2] != 1 || u[3] != 1) {
            return Err(bad(
                "lora_up.weight",
                u,
                "a conv lora_up must be [out, r, 1, 1]",
            ));
        }
        if d.iter().chain(u).any(|&x| x == 0) {
            return Err(bad("lora_down.weight", d, "empty dimension"));
        }
        if d[0] != u[1] {
            return Err(Error::RankMismatch {
                file: file.into(),
                module: self.name.clone(),
                down_rank: d[0],
                up_rank: u[1],
            });
        }
        if let Some(a) = self.alpha {
            if !a.is_finite() {
                return Err(Error::NonFinite {
                    file: file.into(),
                    tensor: format!("{}.alpha", self.name),
                    index: 0,
                    value: a,
                });
            }
        }
        Ok(())
    }

    /// Rank r (rows of down).
    pub fn rank(&self) -> usize {
        self.down.shape()[0]
    }

    /// Alpha, with `None` and 0 meaning the rank (lora.py).
    pub fn alpha_or_rank(&self) -> f32 {
        match self.alpha {
            Some(a) if a != 0.0 => a,
            _ => self.rank() as f32,
        }
    }

    /// `scale = alpha / rank`, in f32 like the reference's float32 buffer.
    pub fn scale(&self) -> f32 {
        self.alpha_or_rank() / self.rank() as f32
    }

    /// Linear or conv (with kernel size).
    pub fn kind(&self) -> ModuleKind {
        let d = self.down.shape();
        if d.len() == 4 {
            ModuleKind::Conv {
                kernel: [d[2], d[3]],
            }
        } else {
            ModuleKind::Linear
        }
    }

    /// Input features / channels.
    pub fn in_features(&self) -> usize {
        self.down.shape()[1]
    }

    /// Output features / channels.
    pub fn out_features(&self) -> usize {
        self.up.shape()[0]
    }

    /// Shape of the base weight this module patches: `[out, in]` or `[out, in, kh, kw]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        match self.kind() {
            ModuleKind::Linear => vec![self.out_features(), self.in_features()],
            ModuleKind::Conv { kernel: [h, w] } => {
                vec![self.out_features(), self.in_features(), h, w]
            }
        }
    }

    /// `U @ D` as an `[out, in·kh·kw]` matrix, without multiplier or scale.
    pub fn product_2d(&self) -> ndarray::Array2<f32> {
        let r = self.rank();
        let out = self.out_features();
        let inn = self.down.len() / r;
        let u = self.up.as_standard_layout();
        let d = self.down.as_standard_layout();
        let u = u
            .view()
            .into_shape_with_order((out, r))
            .expect("validated shape");
        let d = d
            .view()
            .into_shape_with_order((r, inn))
            .expect("validated shape");
        // matrixmultiply directly, not `dot`: with ndarray's `blas` feature switched on elsewhere in a
        // workspace, `dot` would need a BLAS library linked into every binary that uses this crate.
        let mut p = ndarray::Array2::<f32>::zeros((out, inn));
        // SAFETY: u is out×r, d is r×inn and p is out×inn, all in standard (row-major) layout, so
        // every pointer and stride below stays inside its array.
        unsafe {
            matrixmultiply::sgemm(
                out,
                r,
                inn,
                1.0,
                u.as_ptr(),
                r as isize,
                1,
                d.as_ptr(),
                inn as isize,
                1,
                0.0,
                p.as_mut_ptr(),
                inn as isize,
                1,
            );
        }
        p
    }

    /// The merged delta of §1.1, shaped like the base weight: `(m·(U@D))·scale`, evaluated in that
    /// order in f32 (the conv k×k case as `(U.reshape(out,r) @ D.reshape(r, in·k·k))`).
    pub fn delta(&self, multiplier: f32) -> ArrayD<f32> {
        let s = self.scale();
        let mut p = self.product_2d();
        p.mapv_inplace(|x| (multiplier * x) * s);
        p.into_dyn()
            .into_shape_with_order(IxDyn(&self.weight_shape()))
            .expect("sizes agree")
    }
}

/// Dtype of the alpha tensors on save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaDtype {
    /// The save precision, like the weights (training `save_weights` with `--save_precision`).
    #[default]
    SameAsWeights,
    /// Always F32 (training without a save precision; merge_lora's hashed alpha).
    F32,
    /// I64 0-dim, as svd_merge and extract write `torch.tensor(int)`; alpha must be integral.
    I64,
}

/// Options for [`LoraFile::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveOptions {
    /// Dtype of the alpha tensors.
    pub alpha_dtype: AlphaDtype,
    /// Clamp values beyond the fp16/bf16 range instead of failing with [`Error::Overflow`].
    pub clamp: bool,
    /// Compute `sshs_model_hash` / `sshs_legacy_hash` on the written bytes and store them.
    pub hashes: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            alpha_dtype: AlphaDtype::SameAsWeights,
            clamp: false,
            hashes: true,
        }
    }
}

/// Naming scheme of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// kohya-ss: `lora_unet_x.lora_down.weight`, `.lora_up.weight`, `.alpha`.
    Kohya,
    /// diffusers / PEFT: `unet.x.lora_A.weight`, `lora_B`, `lora.down`, ... (converted on load).
    Peft,
}

/// A LoRA: modules (sorted by name) and metadata.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoraFile {
    /// Modules, sorted by kohya name.
    pub modules: Vec<LoraModule>,
    /// The `__metadata__` map.
    pub metadata: Metadata,
}

impl LoraFile {
    /// A LoRA from modules (sorted by name here) and metadata.
    pub fn new(mut modules: Vec<LoraModule>, metadata: Metadata) -> Self {
        modules.sort_by(|a, b| a.name.cmp(&b.name));
        LoraFile { modules, metadata }
    }

    /// Loads a kohya or PEFT/diffusers LoRA (PEFT names are converted to kohya names; a PEFT
    /// `adapter_config.json` beside the file supplies alphas). Validates: every module has up and
    /// down, ranks agree, alpha is a scalar, no NaN/inf, no foreign tensor.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = SafetensorsFile::open(path)?;
        Self::from_safetensors(&f)
    }

    /// Builds the LoRA from an open file (see [`load`](Self::load)).
    pub fn from_safetensors(f: &SafetensorsFile) -> Result<Self> {
        let path = f.path();
        match detect_format(f) {
            LoraFormat::Kohya => load_kohya(f),
            LoraFormat::Peft => peft::load_peft(f, peft::adapter_config_beside(path)?.as_ref()),
        }
    }

    /// The module named `name`.
    pub fn module(&self, name: &str) -> Option<&LoraModule> {
        self.modules
            .binary_search_by(|m| m.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.modules[i])
    }

    /// Base model guessed from module names and shapes (SD1 / SD2 / SDXL / unknown).
    pub fn base_model(&self) -> BaseModel {
        detect_base_model(
            self.modules
                .iter()
                .map(|m| (m.name.as_str(), m.kind(), m.in_features(), m.out_features())),
        )
    }

    /// The tensors as sd-scripts writes them (§1.3): `{name}.alpha`, `{name}.lora_down.weight`,
    /// `{name}.lora_up.weight`, converted to their final bytes. `path` names the output in errors.
    pub fn to_tensors(
        &self,
        path: &Path,
        precision: SavePrecision,
        opts: &SaveOptions,
    ) -> Result<Vec<(String, TensorView<'static>)>> {
        let wdtype = precision.dtype();
        let mut out = Vec::with_capacity(self.modules.len() * 3);
        let mut seen = std::collections::HashSet::new();
        for m in &self.modules {
            if !seen.insert(m.name.as_str()) {
                return Err(Error::DuplicateTensor {
                    file: path.into(),
                    tensor: m.name.clone(),
                });
            }
            m.validate(path)?;
            if let Some(a) = m.alpha {
                let name = format!("{}.alpha", m.name);
                let view = match opts.alpha_dtype {
                    AlphaDtype::I64 => {
                        if a.fract() != 0.0 || a.abs() > 9.0e15 {
                            return Err(Error::BadValue {
                                file: path.into(),
                                tensor: name,
                                message: format!(
                                    "alpha {a} is not an integer and cannot be stored as I64"
                                ),
                            });
                        }
                        TensorView::scalar_i64(a as i64)
                    }
                    AlphaDtype::F32 => scalar_view(a, DType::F32, opts.clamp)?,
                    AlphaDtype::SameAsWeights => scalar_view(a, wdtype, opts.clamp)?,
                };
                push_checked(&mut out, path, name, view)?;
            }
            // Encoded straight from the arrays when they are in standard layout (no f32 copy).
            for (a, suffix) in [(&m.down, "lora_down.weight"), (&m.up, "lora_up.weight")] {
                let v = match a.is_standard_layout() {
                    true => TensorView::from_f32(a, wdtype, opts.clamp)?,
                    false => TensorView::from_f32_owned(
                        a.as_standard_layout().into_owned(),
                        wdtype,
                        opts.clamp,
                    )?,
                };
                push_checked(&mut out, path, format!("{}.{suffix}", m.name), v)?;
            }
        }
        Ok(out)
    }

    /// Writes the LoRA like sd-scripts (§1.3–§1.5): tensors in `precision` (alpha per
    /// `opts.alpha_dtype`), atomically, with `sshs_model_hash` / `sshs_legacy_hash` computed on the
    /// bytes written and stored in the metadata (unless `opts.hashes` is off). The written data is
    /// re-hashed from disk and compared before the file is put in place. Returns the hashes.
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        precision: SavePrecision,
        opts: &SaveOptions,
    ) -> Result<SshsHashes> {
        let path = path.as_ref();
        let tensors = self.to_tensors(path, precision, opts)?;
        let mut meta = self.metadata.clone();
        let hashes = sshs_hashes(&tensors, &meta)?;
        if opts.hashes {
            meta.insert("sshs_model_hash", hashes.model_hash.clone());
            meta.insert("sshs_legacy_hash", hashes.legacy_hash.clone());
        }
        write_verified(path, &tensors, &meta, &hashes.model_hash)?;
        Ok(hashes)
    }

    /// Writes the LoRA in diffusers/PEFT naming (`unet.…lora_A.weight` / `lora_B.weight`, alphas in
    /// the `lora_adapter_metadata` header entry), losslessly readable by [`load`](Self::load).
    pub fn save_peft(
        &self,
        path: impl AsRef<Path>,
        precision: SavePrecision,
        opts: &SaveOptions,
    ) -> Result<()> {
        let path = path.as_ref();
        let (tensors, meta) = peft::to_peft_tensors(self, path, precision, opts)?;
        write_safetensors(path, &tensors, &meta)
    }
}

fn scalar_view(a: f32, dtype: DType, clamp: bool) -> Result<TensorView<'static>> {
    TensorView::from_f32_owned(ArrayD::from_elem(IxDyn(&[]), a), dtype, clamp)
}

fn push_checked(
    out: &mut Vec<(String, TensorView<'static>)>,
    path: &Path,
    name: String,
    v: TensorView<'_>,
) -> Result<()> {
    v.check(path, &name)?;
    out.push((name, v.into_owned_bytes()));
    Ok(())
}

/// Writes, then re-reads the temporary file's data section and compares its sha256 with the hash
/// that went into the metadata; only then renames into place.
fn write_verified(
    path: &Path,
    tensors: &[(String, TensorView<'_>)],
    meta: &Metadata,
    model_hash: &str,
) -> Result<()> {
    let dir = crate::write::parent_dir(path);
    let tmp = crate::write::output_temp_file(&dir, ".lora-core-", ".safetensors")
        .map_err(|e| Error::io(path, e))?;
    write_safetensors(tmp.path(), tensors, meta)?;
    let written = SafetensorsFile::open(tmp.path())?;
    let actual = sshs_model_hash(written.data_section());
    if actual != model_hash {
        return Err(Error::Write {
            file: path.into(),
            message: format!("data written hashes to {actual}, expected {model_hash}"),
        });
    }
    drop(written);
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Which naming a file uses: kohya when any key ends in `.lora_down.weight`/`.lora_up.weight` or
/// starts with `lora_` and ends in `.alpha`, PEFT otherwise.
pub fn detect_format(f: &SafetensorsFile) -> LoraFormat {
    let kohya = f.tensors().any(|(n, _)| {
        n.ends_with(".lora_down.weight")
            || n.ends_with(".lora_up.weight")
            || (n.starts_with("lora_") && n.ends_with(".alpha"))
    });
    let peft = f.tensors().any(|(n, _)| peft::parse_peft_key(n).is_some());
    if peft && !kohya {
        LoraFormat::Peft
    } else {
        LoraFormat::Kohya
    }
}

/// Parts of one module while loading.
#[derive(Default)]
pub(crate) struct Parts {
    pub down: Option<(String, ArrayD<f32>)>,
    pub up: Option<(String, ArrayD<f32>)>,
    pub alpha: Option<(String, f32)>,
}

pub(crate) fn read_alpha(f: &SafetensorsFile, key: &str) -> Result<f32> {
    let a = f.tensor_f32(key)?;
    if a.len() != 1 || a.ndim() > 1 {
        return Err(Error::BadShape {
            file: f.path().into(),
            tensor: key.into(),
            shape: a.shape().to_vec(),
            message: "alpha must be a scalar (shape [])".into(),
        });
    }
    Ok(a.iter().next().copied().unwrap_or(0.0))
}

fn load_kohya(f: &SafetensorsFile) -> Result<LoraFile> {
    let path = f.path();
    let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
    for name in f.names() {
        if let Some(m) = name.strip_suffix(".lora_down.weight") {
            parts.entry(m.into()).or_default().down = Some((name.into(), f.tensor_f32(name)?));
        } else if let Some(m) = name.strip_suffix(".lora_up.weight") {
            parts.entry(m.into()).or_default().up = Some((name.into(), f.tensor_f32(name)?));
        } else if let Some(m) = name.strip_suffix(".alpha") {
            parts.entry(m.into()).or_default().alpha = Some((name.into(), read_alpha(f, name)?));
        } else {
            return Err(Error::UnexpectedTensor {
                file: path.into(),
                tensor: name.into(),
            });
        }
    }
    let modules = assemble(path, parts)?;
    Ok(LoraFile {
        modules,
        metadata: f.metadata().clone(),
    })
}

pub(crate) fn assemble(path: &Path, parts: BTreeMap<String, Parts>) -> Result<Vec<LoraModule>> {
    let mut modules = Vec::with_capacity(parts.len());
    for (name, p) in parts {
        let missing = |what: &str| Error::MissingTensor {
            file: PathBuf::from(path),
            module: name.clone(),
            missing: what.into(),
        };
        let (_, down) = p.down.ok_or_else(|| missing("lora_down.weight"))?;
        let (_, up) = p.up.ok_or_else(|| missing("lora_up.weight"))?;
        let m = LoraModule {
            name: name.clone(),
            down,
            up,
            alpha: p.alpha.map(|a| a.1),
        };
        m.validate(path)?;
        for (t, a) in [("lora_down.weight", &m.down), ("lora_up.weight", &m.up)] {
            if let Some((index, value)) = a.as_slice().and_then(first_non_finite) {
                return Err(Error::NonFinite {
                    file: path.into(),
                    tensor: format!("{name}.{t}"),
                    index,
                    value,
                });
            }
        }
        modules.push(m);
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, ArrayD};

    fn arr(shape: &[usize], f: impl Fn(usize) -> f32) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(f).collect()).unwrap()
    }

    #[test]
    fn linear_delta_matches_formula() {
        let down = arr(&[2, 3], |i| i as f32 * 0.5 - 1.0);
        let up = arr(&[4, 2], |i| i as f32 * 0.25);
        let m = LoraModule::new("m", down.clone(), up.clone(), Some(1.0)).unwrap();
        assert_eq!(m.rank(), 2);
        assert_eq!(m.scale(), 0.5);
        assert_eq!(m.kind(), ModuleKind::Linear);
        assert_eq!(m.weight_shape(), vec![4, 3]);
        let d = m.delta(2.0);
        for o in 0..4 {
            for i in 0..3 {
                let p: f32 = (0..2).map(|k| up[[o, k]] * down[[k, i]]).sum();
                assert_eq!(d[[o, i]], (2.0 * p) * 0.5);
            }
        }
    }

    #[test]
    fn conv3x3_delta_is_reshaped_product() {
        let down = arr(&[2, 3, 3, 3], |i| ((i * 7) % 11) as f32 - 5.0);
        let up = arr(&[5, 2, 1, 1], |i| i as f32 - 2.0);
        let m = LoraModule::new("c", down.clone(), up.clone(), None).unwrap();
        assert_eq!(m.kind(), ModuleKind::Conv { kernel: [3, 3] });
        assert_eq!(m.alpha_or_rank(), 2.0);
        let d = m.delta(1.0);
        assert_eq!(d.shape(), &[5, 3, 3, 3]);
        for o in 0..5 {
            for i in 0..3 {
                for y in 0..3 {
                    for x in 0..3 {
                        let p: f32 = (0..2).map(|k| up[[o, k, 0, 0]] * down[[k, i, y, x]]).sum();
                        assert_eq!(d[[o, i, y, x]], p);
                    }
                }
            }
        }
    }

    #[test]
    fn zero_alpha_means_rank() {
        let m = LoraModule::new(
            "m",
            Array::zeros(IxDyn(&[4, 2])),
            Array::zeros(IxDyn(&[2, 4])),
            Some(0.0),
        )
        .unwrap();
        assert_eq!(m.scale(), 1.0);
    }

    #[test]
    fn rank_mismatch_rejected() {
        let e = LoraModule::new(
            "m",
            Array::zeros(IxDyn(&[4, 2])),
            Array::zeros(IxDyn(&[2, 3])),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Error::RankMismatch {
                    down_rank: 4,
                    up_rank: 3,
                    ..
                }
            ),
            "{e}"
        );
    }
}
