//! Element types and conversions to and from `f32`.

use half::{bf16, f16, slice::HalfFloatSliceExt};
use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Element type of a stored tensor, spelled as in the safetensors header.
///
/// The variants are listed in the safetensors crate's enum order, which is the order that decides
/// where a tensor lands in a written file (§1.4: descending dtype, then ascending name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DType {
    /// Boolean, 1 byte.
    Bool,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// FP8 E5M2.
    F8E5M2,
    /// FP8 E4M3.
    F8E4M3,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// Brain float 16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E5M2 | DType::F8E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The header spelling (`"F16"`, `"BF16"`, `"F32"`, `"I64"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    /// Whether reads as `f32` (e.g. [`SafetensorsFile::tensor_f32`](crate::SafetensorsFile::tensor_f32)) can convert this dtype (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL).
    pub fn converts_to_f32(self) -> bool {
        !matches!(
            self,
            DType::F8E5M2 | DType::F8E4M3 | DType::U16 | DType::U32 | DType::U64
        )
    }

    /// The safetensors crate's dtype.
    pub fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::Bool => S::BOOL,
            DType::U8 => S::U8,
            DType::I8 => S::I8,
            DType::F8E5M2 => S::F8_E5M2,
            DType::F8E4M3 => S::F8_E4M3,
            DType::I16 => S::I16,
            DType::U16 => S::U16,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I32 => S::I32,
            DType::U32 => S::U32,
            DType::F32 => S::F32,
            DType::F64 => S::F64,
            DType::I64 => S::I64,
            DType::U64 => S::U64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "BOOL" => DType::Bool,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "F8_E5M2" => DType::F8E5M2,
            "F8_E4M3" => DType::F8E4M3,
            "I16" => DType::I16,
            "U16" => DType::U16,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I32" => DType::I32,
            "U32" => DType::U32,
            "F32" => DType::F32,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "U64" => DType::U64,
            other => return Err(Error::InvalidArgument(format!("unknown dtype {other:?}"))),
        })
    }
}

/// sd-scripts' `--save_precision`: the float dtype tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SavePrecision {
    /// `float`: F32.
    #[default]
    Float,
    /// `fp16`: F16.
    Fp16,
    /// `bf16`: BF16.
    Bf16,
}

impl SavePrecision {
    /// The dtype written.
    pub fn dtype(self) -> DType {
        match self {
            SavePrecision::Float => DType::F32,
            SavePrecision::Fp16 => DType::F16,
            SavePrecision::Bf16 => DType::BF16,
        }
    }
}

impl FromStr for SavePrecision {
    type Err = Error;
    /// Parses `"float"`, `"fp16"` or `"bf16"` (sd-scripts' spellings).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "float" => Ok(SavePrecision::Float),
            "fp16" => Ok(SavePrecision::Fp16),
            "bf16" => Ok(SavePrecision::Bf16),
            other => Err(Error::InvalidArgument(format!(
                "save precision must be float, fp16 or bf16, not {other:?}"
            ))),
        }
    }
}

impl fmt::Display for SavePrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SavePrecision::Float => "float",
            SavePrecision::Fp16 => "fp16",
            SavePrecision::Bf16 => "bf16",
        })
    }
}

/// Converts little-endian bytes of `dtype` into `out` (which must hold `bytes.len() / dtype.size()`
/// elements). Works on misaligned bytes. Returns `false` for a dtype that does not convert.
pub(crate) fn bytes_to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) -> bool {
    debug_assert_eq!(bytes.len(), out.len() * dtype.size());
    match dtype {
        DType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(s) => out.copy_from_slice(s),
            Err(_) => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
        DType::F16 => convert_halves(bytes, out, |h: &[f16], o| h.convert_to_f32_slice(o)),
        DType::BF16 => convert_halves(bytes, out, |h: &[bf16], o| h.convert_to_f32_slice(o)),
        DType::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32;
            }
        }
        DType::I64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32;
            }
        }
        DType::I32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f32;
            }
        }
        DType::I16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = i16::from_le_bytes([c[0], c[1]]) as f32;
            }
        }
        DType::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as i8 as f32;
            }
        }
        DType::U8 | DType::Bool => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as f32;
            }
        }
        _ => return false,
    }
    true
}

/// Why [`bytes_to_f32_checked`] stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ConvertError {
    /// The dtype does not convert to f32.
    Unsupported,
    /// A NaN or infinity at this flat index.
    NonFinite(usize, f32),
}

/// [`bytes_to_f32`] fused with the NaN/inf scan: converts in cache-sized chunks and checks each
/// chunk while it is still in cache.
pub(crate) fn bytes_to_f32_checked(
    dtype: DType,
    bytes: &[u8],
    out: &mut [f32],
) -> Result<(), ConvertError> {
    const CHUNK: usize = 1 << 14;
    let es = dtype.size();
    for (ci, (bc, oc)) in bytes
        .chunks(CHUNK * es)
        .zip(out.chunks_mut(CHUNK))
        .enumerate()
    {
        if !bytes_to_f32(dtype, bc, oc) {
            return Err(ConvertError::Unsupported);
        }
        if let Some((i, v)) = first_non_finite(oc) {
            return Err(ConvertError::NonFinite(ci * CHUNK + i, v));
        }
    }
    Ok(())
}

/// 16-bit conversion in chunks: aligned input is cast in place, misaligned input is copied through
/// a small aligned buffer so that the SIMD path of `half` is used either way.
fn convert_halves<H: bytemuck::Pod>(
    bytes: &[u8],
    out: &mut [f32],
    conv: impl Fn(&[H], &mut [f32]),
) {
    if let Ok(h) = bytemuck::try_cast_slice::<u8, H>(bytes) {
        // Chunked so each piece stays in cache while converted.
        const CHUNK: usize = 1 << 14;
        for (hc, oc) in h.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            conv(hc, oc);
        }
        return;
    }
    const CHUNK: usize = 4096;
    let mut buf: Vec<H> = vec![bytemuck::Zeroable::zeroed(); CHUNK];
    for (bc, oc) in bytes.chunks(CHUNK * 2).zip(out.chunks_mut(CHUNK)) {
        let n = oc.len();
        bytemuck::cast_slice_mut::<H, u8>(&mut buf[..n]).copy_from_slice(bc);
        conv(&buf[..n], oc);
    }
}

/// First element that is NaN or infinite.
pub(crate) fn first_non_finite(v: &[f32]) -> Option<(usize, f32)> {
    // Fast path: a sum-free branchless scan over chunks, then locate.
    for (ci, c) in v.chunks(1024).enumerate() {
        if c.iter().any(|x| !x.is_finite()) {
            let (i, x) = c.iter().enumerate().find(|(_, x)| !x.is_finite())?;
            return Some((ci * 1024 + i, *x));
        }
    }
    None
}

/// Largest finite magnitude of a float dtype, `None` for F32/F64 and integers.
pub(crate) fn narrow_max(dtype: DType) -> Option<f32> {
    match dtype {
        DType::F16 => Some(f16::MAX.to_f32()),
        DType::BF16 => Some(bf16::MAX.to_f32()),
        _ => None,
    }
}

/// Whether `x` rounds to infinity in `dtype` (F16/BF16).
pub(crate) fn overflows(dtype: DType, x: f32) -> bool {
    match dtype {
        DType::F16 => f16::from_f32(x).is_infinite() && x.is_finite(),
        DType::BF16 => bf16::from_f32(x).is_infinite() && x.is_finite(),
        _ => false,
    }
}

/// The smallest magnitude that rounds to infinity in `dtype` (round to nearest even: halfway between the
/// largest finite value and the next power of two, which rounds up because the largest finite value has an
/// odd mantissa); infinity for dtypes that cannot overflow from `f32`. For finite `x`,
/// `overflows(dtype, x) == (x.abs() >= overflow_threshold(dtype))` (tested at the boundary).
pub(crate) fn overflow_threshold(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 65520.0,
        DType::BF16 => f32::from_bits(0x7f7f_8000),
        _ => f32::INFINITY,
    }
}

/// Whether every value is finite and below `limit` in magnitude: one branch-free pass (it vectorizes),
/// NaN failing the comparison like infinity. Used as the fast path of the write checks, the position of
/// a bad value being looked for only when this says there is one.
pub(crate) fn all_below(v: &[f32], limit: f32) -> bool {
    v.chunks(4096)
        .all(|c| c.iter().fold(true, |ok, x| ok & (x.abs() < limit)))
}

/// Converts `f32` values to little-endian bytes of a float `dtype` (F32, F16, BF16, F64), clamping
/// to the dtype's finite range when `clamp` is set. Returns `None` for a non-float dtype.
pub(crate) fn f32_to_bytes(dtype: DType, v: &[f32], clamp: bool) -> Option<Vec<u8>> {
    let max = narrow_max(dtype);
    let clamp_one = |x: f32| match (clamp, max) {
        (true, Some(m)) if x.is_finite() => x.clamp(-m, m),
        _ => x,
    };
    Some(match dtype {
        DType::F32 => bytemuck::cast_slice(v).to_vec(),
        DType::F64 => v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
        DType::F16 => {
            // Through a small buffer that stays in cache: one allocation of the output, no second copy.
            const CHUNK: usize = 2048;
            let mut out = Vec::with_capacity(v.len() * 2);
            let mut h = [f16::ZERO; CHUNK];
            let mut c = [0f32; CHUNK];
            for src in v.chunks(CHUNK) {
                let n = src.len();
                let src = if clamp {
                    for (d, &x) in c[..n].iter_mut().zip(src) {
                        *d = clamp_one(x);
                    }
                    &c[..n]
                } else {
                    src
                };
                h[..n].convert_from_f32_slice(src);
                out.extend_from_slice(bytemuck::cast_slice(&h[..n]));
            }
            out
        }
        DType::BF16 => {
            let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(clamp_one(x))).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_parses_sd_scripts_spellings() {
        assert_eq!(
            "float".parse::<SavePrecision>().unwrap(),
            SavePrecision::Float
        );
        assert_eq!("fp16".parse::<SavePrecision>().unwrap().dtype(), DType::F16);
        assert_eq!(
            "bf16".parse::<SavePrecision>().unwrap().dtype(),
            DType::BF16
        );
        assert!("fp32".parse::<SavePrecision>().is_err());
    }

    #[test]
    fn dtype_order_matches_safetensors() {
        // §1.4: I64 > F64 > F32 > BF16 > F16 in the enum order.
        let mut ours = [DType::F16, DType::I64, DType::F32, DType::BF16, DType::F64];
        let mut theirs: Vec<_> = ours.iter().map(|d| d.to_safetensors()).collect();
        ours.sort();
        theirs.sort();
        assert_eq!(
            ours.iter().map(|d| d.to_safetensors()).collect::<Vec<_>>(),
            theirs
        );
        for d in ours {
            assert_eq!(d.as_str().parse::<DType>().unwrap(), d);
            assert_eq!(d.size() * 8, d.to_safetensors().bitsize());
        }
    }

    #[test]
    fn misaligned_f16_converts_like_aligned() {
        let vals: Vec<f32> = (0..10000).map(|i| (i as f32 - 5000.0) * 0.37).collect();
        let h: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
        let bytes: Vec<u8> = bytemuck::cast_slice(&h).to_vec();
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let mut a = vec![0f32; vals.len()];
        let mut b = vec![0f32; vals.len()];
        assert!(bytes_to_f32(DType::F16, &bytes, &mut a));
        assert!(bytes_to_f32(DType::F16, &shifted[1..], &mut b));
        assert_eq!(a, b);
        for (x, y) in vals.iter().zip(&a) {
            assert_eq!(f16::from_f32(*x).to_f32(), *y);
        }
    }

    #[test]
    fn overflow_detection() {
        assert!(overflows(DType::F16, 70000.0));
        // The fast check's threshold is exactly where rounding starts to give infinity.
        for dt in [DType::F16, DType::BF16] {
            let t = overflow_threshold(dt);
            for bits in t.to_bits() - 4..t.to_bits() + 4 {
                for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                    assert_eq!(overflows(dt, x), x.abs() >= t, "{dt} {x:e}");
                    assert_eq!(all_below(&[1.0, x], t), !overflows(dt, x), "{dt} {x:e}");
                }
            }
            assert!(!all_below(&[0.0, f32::NAN], t));
            assert!(!all_below(&[f32::NEG_INFINITY], t));
        }
        assert!(all_below(
            &[f32::MAX, -f32::MAX],
            overflow_threshold(DType::F32)
        ));
        assert!(!overflows(DType::F16, 65504.0));
        assert!(!overflows(DType::F32, 1e38));
        let b = f32_to_bytes(DType::F16, &[1e6, -1e6], true).unwrap();
        let h: &[f16] = bytemuck::cast_slice(&b);
        assert_eq!(h[0], f16::MAX);
        assert_eq!(h[1], f16::MIN);
    }

    #[test]
    fn non_finite_located() {
        let mut v = vec![0f32; 5000];
        assert_eq!(first_non_finite(&v), None);
        v[3001] = f32::NAN;
        let (i, x) = first_non_finite(&v).unwrap();
        assert_eq!(i, 3001);
        assert!(x.is_nan());
    }
}
