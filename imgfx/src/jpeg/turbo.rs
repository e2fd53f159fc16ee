//! The system libjpeg-turbo through its TurboJPEG 2 API (`turbojpeg.h`, `libturbojpeg`): the codec Pillow
//! links, so a round trip here is bit-identical to Pillow's `save(..., "JPEG", quality=q)` + decode.
//!
//! Only the eight functions this crate needs are declared. The TurboJPEG 2 API is what Debian 12's
//! `libturbojpeg0-dev` (libjpeg-turbo 2.1) provides, and libjpeg-turbo 3 keeps it. (The `turbojpeg` crate
//! binds the 3.0-only `tj3*` API, so it cannot link Debian's library and would build libjpeg-turbo from
//! source with CMake and NASM instead.) `build.rs` links the static archive where there is one, so binaries
//! do not need the library at run time.
//!
//! Flags: `TJFLAG_ACCURATEDCT` selects libjpeg's default integer DCT/IDCT (`JDCT_ISLOW`, what Pillow uses;
//! TurboJPEG's own default is the fast, less exact `JDCT_IFAST`); fancy upsampling stays on (libjpeg's and
//! Pillow's default); `TJFLAG_NOREALLOC` makes the encoder write into our buffer sized by `tjBufSize`.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uchar, c_ulong, c_void};

use crate::{Error, Result};

type Handle = *mut c_void;

// Linked by build.rs (static archive preferred).
extern "C" {
    fn tjInitCompress() -> Handle;
    fn tjInitDecompress() -> Handle;
    fn tjDestroy(handle: Handle) -> c_int;
    fn tjBufSize(width: c_int, height: c_int, subsamp: c_int) -> c_ulong;
    #[allow(clippy::too_many_arguments)]
    fn tjCompress2(
        handle: Handle,
        src: *const c_uchar,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        jpeg_buf: *mut *mut c_uchar,
        jpeg_size: *mut c_ulong,
        subsamp: c_int,
        quality: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjDecompressHeader3(
        handle: Handle,
        jpeg_buf: *const c_uchar,
        jpeg_size: c_ulong,
        width: *mut c_int,
        height: *mut c_int,
        subsamp: *mut c_int,
        colorspace: *mut c_int,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn tjDecompress2(
        handle: Handle,
        jpeg_buf: *const c_uchar,
        jpeg_size: c_ulong,
        dst: *mut c_uchar,
        width: c_int,
        pitch: c_int,
        height: c_int,
        pixel_format: c_int,
        flags: c_int,
    ) -> c_int;
    fn tjGetErrorStr2(handle: Handle) -> *mut c_char;
    fn tjGetErrorCode(handle: Handle) -> c_int;
}

const TJFLAG_NOREALLOC: c_int = 1024;
const TJFLAG_ACCURATEDCT: c_int = 4096;
const TJERR_WARNING: c_int = 0;

/// TurboJPEG pixel formats (`TJPF_*`) of the layouts this crate passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PixelFormat {
    /// 3 bytes, R G B.
    Rgb = 0,
    /// 4 bytes, R G B and one byte the codec ignores (encoding) or sets to 255 (decoding).
    Rgbx = 2,
    /// 1 byte.
    Gray = 6,
}

impl PixelFormat {
    pub(crate) fn bytes(self) -> usize {
        match self {
            Self::Rgb => 3,
            Self::Rgbx => 4,
            Self::Gray => 1,
        }
    }
}

/// TurboJPEG subsampling codes (`TJSAMP_*`): 4:4:4 = 0, 4:2:2 = 1, 4:2:0 = 2, grey = 3.
pub(crate) const TJSAMP_GRAY: c_int = 3;

/// An owned TurboJPEG handle, destroyed on drop.
struct Tj(Handle);

impl Tj {
    fn new(compress: bool) -> Result<Self> {
        // SAFETY: plain constructors; a null return means out of memory.
        let h = unsafe {
            if compress {
                tjInitCompress()
            } else {
                tjInitDecompress()
            }
        };
        if h.is_null() {
            return Err(Error::Jpeg(
                "libjpeg-turbo: cannot create a codec handle".into(),
            ));
        }
        Ok(Self(h))
    }

    fn error(&self, what: &str) -> Error {
        // SAFETY: the handle is live; the library returns a NUL-terminated string it owns.
        let msg = unsafe {
            let p = tjGetErrorStr2(self.0);
            if p.is_null() {
                "unknown error".into()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Error::Jpeg(format!("libjpeg-turbo {what}: {msg}"))
    }

    fn is_warning(&self) -> bool {
        // SAFETY: the handle is live.
        unsafe { tjGetErrorCode(self.0) == TJERR_WARNING }
    }
}

impl Drop for Tj {
    fn drop(&mut self) {
        // SAFETY: created by tjInit*, destroyed once.
        unsafe {
            tjDestroy(self.0);
        }
    }
}

fn dim(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v)
        .ok()
        .filter(|&d| d > 0 && d <= 65_535)
        .ok_or_else(|| Error::Jpeg(format!("{what} {v}: JPEG needs 1 to 65535 pixels a side")))
}

/// Encodes `height` rows of `width` pixels, `pitch` bytes apart, in format `pf`, at `quality` with TurboJPEG
/// subsampling code `subsamp` (ignored for grey, which always encodes one component).
pub(crate) fn compress(
    src: &[u8],
    width: usize,
    pitch: usize,
    height: usize,
    pf: PixelFormat,
    subsamp: c_int,
    quality: u8,
) -> Result<Vec<u8>> {
    let (w, h) = (dim(width, "width")?, dim(height, "height")?);
    let need = pitch
        .checked_mul(height - 1)
        .and_then(|n| n.checked_add(width * pf.bytes()));
    if pitch < width * pf.bytes() || need.is_none_or(|n| n > src.len()) {
        return Err(Error::Jpeg(format!(
            "{width}x{height} image: {} bytes given with a {pitch}-byte row pitch",
            src.len()
        )));
    }
    let pitch = c_int::try_from(pitch).map_err(|_| Error::Jpeg("row pitch too large".into()))?;
    let subsamp = if pf == PixelFormat::Gray {
        TJSAMP_GRAY
    } else {
        subsamp
    };
    let tj = Tj::new(true)?;
    // SAFETY: pure function of its arguments.
    let cap = unsafe { tjBufSize(w, h, subsamp) };
    if cap == c_ulong::MAX {
        return Err(tj.error("tjBufSize"));
    }
    let mut buf = vec![0u8; cap as usize];
    let mut ptr = buf.as_mut_ptr();
    let mut size = cap;
    // SAFETY: `src` holds `height` rows of `pitch` bytes (checked above); `buf` holds `tjBufSize` bytes, the
    // most the encoder writes, and TJFLAG_NOREALLOC keeps it from reallocating or freeing it.
    let rc = unsafe {
        tjCompress2(
            tj.0,
            src.as_ptr(),
            w,
            pitch,
            h,
            pf as c_int,
            &mut ptr,
            &mut size,
            subsamp,
            quality as c_int,
            TJFLAG_NOREALLOC | TJFLAG_ACCURATEDCT,
        )
    };
    if rc != 0 {
        return Err(tj.error("encoding"));
    }
    debug_assert!(std::ptr::eq(ptr, buf.as_ptr()) && size <= cap);
    buf.truncate(size as usize);
    Ok(buf)
}

/// Reads the header of `jpeg`: width, height, and whether it has one component (grey).
fn read_header(tj: &Tj, jpeg: &[u8]) -> Result<(usize, usize, bool)> {
    let (mut w, mut h, mut subsamp, mut cs) = (0, 0, 0, 0);
    // SAFETY: reads `jpeg.len()` bytes of `jpeg`; writes the four ints.
    let rc = unsafe {
        tjDecompressHeader3(
            tj.0,
            jpeg.as_ptr(),
            jpeg.len() as c_ulong,
            &mut w,
            &mut h,
            &mut subsamp,
            &mut cs,
        )
    };
    if rc != 0 || w <= 0 || h <= 0 {
        return Err(tj.error("reading the header"));
    }
    Ok((w as usize, h as usize, subsamp == TJSAMP_GRAY))
}

/// The size of a JPEG image and whether it has one component (grey).
pub(crate) fn header(jpeg: &[u8]) -> Result<(usize, usize, bool)> {
    read_header(&Tj::new(false)?, jpeg)
}

/// Decodes a JPEG image that must be `width`×`height` into `dst` as format `pf`, rows `pitch` bytes apart.
/// Corrupt-data warnings are accepted (as libjpeg and Pillow do); errors are returned.
pub(crate) fn decompress(
    jpeg: &[u8],
    dst: &mut [u8],
    width: usize,
    pitch: usize,
    height: usize,
    pf: PixelFormat,
) -> Result<()> {
    let (w, h) = (dim(width, "width")?, dim(height, "height")?);
    let need = pitch
        .checked_mul(height - 1)
        .and_then(|n| n.checked_add(width * pf.bytes()));
    if pitch < width * pf.bytes() || need.is_none_or(|n| n > dst.len()) {
        return Err(Error::Jpeg(format!(
            "{width}x{height} image: {}-byte output with a {pitch}-byte row pitch is too small",
            dst.len()
        )));
    }
    let pitch = c_int::try_from(pitch).map_err(|_| Error::Jpeg("row pitch too large".into()))?;
    let tj = Tj::new(false)?;
    let (hw, hh, _) = read_header(&tj, jpeg)?;
    if (hw, hh) != (width, height) {
        return Err(Error::Jpeg(format!(
            "the JPEG is {hw}x{hh}, expected {width}x{height}"
        )));
    }
    // SAFETY: `dst` holds `height` rows of `pitch` bytes (checked above) and the image is exactly
    // `width`×`height` (its header says so), so the decoder writes inside `dst`.
    let rc = unsafe {
        tjDecompress2(
            tj.0,
            jpeg.as_ptr(),
            jpeg.len() as c_ulong,
            dst.as_mut_ptr(),
            w,
            pitch,
            h,
            pf as c_int,
            TJFLAG_ACCURATEDCT,
        )
    };
    if rc != 0 && !tj.is_warning() {
        return Err(tj.error("decoding"));
    }
    Ok(())
}
