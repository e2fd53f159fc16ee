//! JPEG noise: an encode/decode round trip at a given quality, as Pillow's `img.save(buf, "JPEG",
//! quality=q)` followed by a decode does it.
//!
//! Two codecs, the same parameters:
//! - with the `turbojpeg` feature (the default), the system **libjpeg-turbo** — the library Pillow links —
//!   through its TurboJPEG API (`src/jpeg/turbo.rs`): libjpeg's quality scaling, box-averaged 4:2:0 chroma, the
//!   accurate integer DCT (`JDCT_ISLOW`, libjpeg's default) and fancy upsampling, so the output is
//!   bit-identical to Pillow's at the same quality and subsampling (the golden tests check max abs
//!   difference 0; on 513² and 1024² images at qualities 5–100 and every subsampling the pixels were
//!   identical and the files the same size);
//! - without it, the pure-Rust [`pure`] codec (`jpeg-encoder` + the `image` crate's decoder), which matches
//!   Pillow statistically (PSNR within 0.5 dB, blockiness within 10%; also tested with the feature on).
//!
//! [`CODEC`] names the one in use.

use image::DynamicImage;
use rayon::prelude::*;

use crate::pixels::{make_8bit, samples_mut};
use crate::{Error, Result};

pub mod pure;
#[cfg(feature = "turbojpeg")]
mod turbo;

/// The codec [`jpeg_noise`], [`encode_jpeg`] and [`decode_jpeg`] use: `"libjpeg-turbo"` with the
/// `turbojpeg` feature, else `"pure Rust"`.
pub const CODEC: &str = if cfg!(feature = "turbojpeg") {
    "libjpeg-turbo"
} else {
    "pure Rust"
};

/// Chroma subsampling, with Pillow's names (`subsampling=` "4:4:4" = 0, "4:2:2" = 1, "4:2:0" = 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Subsampling {
    /// No subsampling.
    S444,
    /// Chroma halved horizontally.
    S422,
    /// Chroma halved in both directions: libjpeg's and Pillow's default.
    #[default]
    S420,
}

impl Subsampling {
    /// Pillow's spelling (`"4:2:0"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::S444 => "4:4:4",
            Self::S422 => "4:2:2",
            Self::S420 => "4:2:0",
        }
    }

    /// TurboJPEG's `TJSAMP_*` code.
    #[cfg(feature = "turbojpeg")]
    fn tjsamp(self) -> std::os::raw::c_int {
        match self {
            Self::S444 => 0,
            Self::S422 => 1,
            Self::S420 => 2,
        }
    }

    /// Parses Pillow's spellings: `"4:4:4"`/`0`, `"4:2:2"`/`1`, `"4:2:0"`/`2` (and `-1`, the default).
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "4:4:4" | "444" | "0" => Some(Self::S444),
            "4:2:2" | "422" | "1" => Some(Self::S422),
            "4:2:0" | "420" | "2" | "-1" => Some(Self::S420),
            _ => None,
        }
    }
}

/// Parameters of [`jpeg_noise`], with Pillow's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JpegParams {
    /// 1–100; Pillow's default (`quality=-1`) is libjpeg's 75.
    pub quality: u8,
    /// Chroma subsampling; default 4:2:0.
    pub subsampling: Subsampling,
    /// How many times to re-encode (generation loss); default 1.
    pub passes: u32,
}

impl Default for JpegParams {
    fn default() -> Self {
        Self {
            quality: 75,
            subsampling: Subsampling::S420,
            passes: 1,
        }
    }
}

impl JpegParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(1..=100).contains(&self.quality) {
            return Err(Error::InvalidParameter {
                effect: "jpeg",
                param: "quality",
                value: self.quality.to_string(),
                reason: "must be 1 to 100".into(),
            });
        }
        if self.passes == 0 || self.passes > 1000 {
            return Err(Error::InvalidParameter {
                effect: "jpeg",
                param: "passes",
                value: self.passes.to_string(),
                reason: "must be 1 to 1000".into(),
            });
        }
        Ok(())
    }
}

/// Encodes 8-bit interleaved samples (1 = grey, 3 = RGB, 4 = RGBA with alpha ignored) to JPEG bytes with
/// [`CODEC`].
pub fn encode_jpeg(
    data: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    p: &JpegParams,
) -> Result<Vec<u8>> {
    p.validate()?;
    #[cfg(feature = "turbojpeg")]
    {
        let pf = match channels {
            1 => turbo::PixelFormat::Gray,
            3 => turbo::PixelFormat::Rgb,
            4 => turbo::PixelFormat::Rgbx,
            n => return Err(Error::Jpeg(format!("{n} channels cannot be encoded"))),
        };
        let w = width as usize;
        turbo::compress(
            data,
            w,
            w * channels,
            height as usize,
            pf,
            p.subsampling.tjsamp(),
            p.quality,
        )
    }
    #[cfg(not(feature = "turbojpeg"))]
    pure::encode(data, width, height, channels, p)
}

/// Decodes JPEG bytes to an 8-bit image (grey or RGB) with [`CODEC`]. Images over
/// [`crate::io::DEFAULT_MAX_PIXELS`] are refused from the header, before anything is allocated.
pub fn decode_jpeg(bytes: &[u8]) -> Result<DynamicImage> {
    #[cfg(feature = "turbojpeg")]
    {
        let (w, h, grey) = turbo::header(bytes)?;
        if (w as u64) * (h as u64) > crate::io::DEFAULT_MAX_PIXELS {
            return Err(Error::Jpeg(format!(
                "{w}x{h}: over the limit of {} pixels",
                crate::io::DEFAULT_MAX_PIXELS
            )));
        }
        let too_big = || Error::Jpeg(format!("{w}x{h}: too large for this crate's images"));
        let (w32, h32) = (
            u32::try_from(w).map_err(|_| too_big())?,
            u32::try_from(h).map_err(|_| too_big())?,
        );
        let cn = if grey { 1 } else { 3 };
        let mut buf = vec![
            0u8;
            w.checked_mul(h)
                .and_then(|n| n.checked_mul(cn))
                .ok_or_else(too_big)?
        ];
        decode_into(bytes, &mut buf, w, h, cn)?;
        Ok(if grey {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w32, h32, buf).ok_or_else(too_big)?)
        } else {
            DynamicImage::ImageRgb8(image::RgbImage::from_raw(w32, h32, buf).ok_or_else(too_big)?)
        })
    }
    #[cfg(not(feature = "turbojpeg"))]
    pure::decode(bytes)
}

/// Decodes into packed samples of `channels` (1 or 3) that must be `width`×`height`.
fn decode_into(bytes: &[u8], dst: &mut [u8], w: usize, h: usize, channels: usize) -> Result<()> {
    #[cfg(feature = "turbojpeg")]
    {
        let pf = if channels == 1 {
            turbo::PixelFormat::Gray
        } else {
            turbo::PixelFormat::Rgb
        };
        turbo::decompress(bytes, dst, w, w * channels, h, pf)
    }
    #[cfg(not(feature = "turbojpeg"))]
    pure::decode_into(bytes, dst, w, h, channels)
}

/// Rows per strip of the parallel round trip (a multiple of 16, the 4:2:0 MCU height).
const STRIP: usize = 256;
/// Context rows encoded above and below each strip, so that the decoder's chroma upsampling sees the same
/// neighbours as in a whole-image round trip.
const MARGIN: usize = 16;

/// One encode/decode round trip of packed samples (1 or 3 channels), in place. On one thread, or for short
/// images, the whole image is encoded and decoded straight back into `data`. With more threads, tall images
/// are cut into strips of [`STRIP`] rows that are encoded and decoded in parallel, each with [`MARGIN`] rows
/// of context: JPEG blocks are local and the strips are MCU-aligned, so the result is identical to a
/// whole-image round trip (tested).
fn round_trip(data: &mut [u8], w: usize, h: usize, cn: usize, p: &JpegParams) -> Result<()> {
    if h <= STRIP + 2 * MARGIN || rayon::current_num_threads() < 2 {
        let bytes = encode_jpeg(data, w as u32, h as u32, cn, p)?;
        return decode_into(&bytes, data, w, h, cn);
    }
    round_trip_strips(data, w, h, cn, p)
}

/// The strip-parallel round trip of [`round_trip`], whatever the image's height or the number of threads.
fn round_trip_strips(data: &mut [u8], w: usize, h: usize, cn: usize, p: &JpegParams) -> Result<()> {
    let row = w * cn;
    let strips: Vec<(usize, usize)> = (0..h)
        .step_by(STRIP)
        .map(|s| (s, (s + STRIP).min(h)))
        .collect();
    let span = |start: usize, end: usize| (start.saturating_sub(MARGIN), (end + MARGIN).min(h));
    // Encode every strip (with its context rows) first, then decode them into place.
    let encoded: Vec<Vec<u8>> = strips
        .par_iter()
        .map(|&(start, end)| {
            let (lo, hi) = span(start, end);
            encode_jpeg(&data[lo * row..hi * row], w as u32, (hi - lo) as u32, cn, p)
        })
        .collect::<Result<_>>()?;
    data.par_chunks_mut(STRIP * row)
        .zip(strips.par_iter().zip(encoded.par_iter()))
        .try_for_each(|(dst, (&(start, end), bytes))| {
            let (lo, hi) = span(start, end);
            let mut dec = vec![0u8; (hi - lo) * row];
            decode_into(bytes, &mut dec, w, hi - lo, cn)?;
            dst.copy_from_slice(&dec[(start - lo) * row..(end - lo) * row]);
            Ok(())
        })
}

/// JPEG noise in place: encode and decode `passes` times at `quality`. Alpha is kept.
pub fn jpeg_noise_in_place(img: &mut DynamicImage, p: &JpegParams) -> Result<()> {
    p.validate()?;
    crate::pixels::check_nonempty(img)?;
    make_8bit(img);
    let s = samples_mut(img);
    let (w, h, cn, colour) = (s.width, s.height, s.channels, s.colour);
    if cn == colour {
        // Grey or RGB: round trips straight in the image's buffer.
        for _ in 0..p.passes {
            round_trip(s.data, w, h, cn, p)?;
        }
        return Ok(());
    }
    // With alpha: the colour samples packed, round-tripped, written back; alpha is kept.
    let mut colour_data: Vec<u8> = s
        .data
        .chunks_exact(cn)
        .flat_map(|px| px[..colour].iter().copied())
        .collect();
    for _ in 0..p.passes {
        round_trip(&mut colour_data, w, h, colour, p)?;
    }
    for (px, c) in s
        .data
        .chunks_exact_mut(cn)
        .zip(colour_data.chunks_exact(colour))
    {
        px[..colour].copy_from_slice(c);
    }
    Ok(())
}

/// JPEG noise; see [`jpeg_noise_in_place`].
pub fn jpeg_noise(img: &DynamicImage, p: &JpegParams) -> Result<DynamicImage> {
    let mut out = img.clone();
    jpeg_noise_in_place(&mut out, p)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_equal_a_whole_image_round_trip() {
        for (w, h, cn, sub) in [
            (40usize, 700usize, 3usize, Subsampling::S420),
            (33, 613, 3, Subsampling::S422),
            (21, 300, 1, Subsampling::S420),
        ] {
            let data: Vec<u8> = (0..w * h * cn)
                .map(|i| ((i * 37 + (i / (w * cn)) * 11) % 251) as u8)
                .collect();
            let p = JpegParams {
                quality: 20,
                subsampling: sub,
                passes: 1,
            };
            let mut strips = data.clone();
            round_trip_strips(&mut strips, w, h, cn, &p).unwrap();
            let bytes = encode_jpeg(&data, w as u32, h as u32, cn, &p).unwrap();
            let dec = decode_jpeg(&bytes).unwrap();
            let whole = if cn == 1 {
                dec.into_luma8().into_raw()
            } else {
                dec.into_rgb8().into_raw()
            };
            assert!(
                strips != data,
                "{w}x{h}x{cn}: the round trip changed nothing"
            );
            assert!(
                strips == whole,
                "{w}x{h}x{cn} {sub:?}: strip round trip differs"
            );
        }
    }

    #[test]
    fn bad_bytes_give_errors_not_panics() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 9) as u8, 77])
        }));
        let bytes = encode_jpeg(img.as_bytes(), 40, 24, 3, &JpegParams::default()).unwrap();
        assert!(decode_jpeg(&bytes).is_ok());
        assert!(decode_jpeg(b"not a jpeg").is_err());
        assert!(decode_jpeg(&[]).is_err());
        assert!(decode_jpeg(&bytes[..20]).is_err());
        // Too few samples for the size, and a size the format cannot hold.
        assert!(encode_jpeg(&[0u8; 10], 40, 24, 3, &JpegParams::default()).is_err());
        assert!(encode_jpeg(&[0u8; 3], 70_000, 1, 3, &JpegParams::default()).is_err());
        #[cfg(feature = "turbojpeg")]
        {
            // The same data with the frame header (SOF0) claiming 20000×20000 (400 megapixels): refused before
            // anything is allocated.
            let mut big = bytes.clone();
            let sof = big.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
            big[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]);
            let e = decode_jpeg(&big).unwrap_err().to_string();
            assert!(e.contains("20000x20000") && e.contains("limit"), "{e}");
        }
        let mut small = vec![0u8; 10];
        assert!(decode_into(&bytes, &mut small, 40, 24, 3).is_err());
    }

    #[test]
    fn quality_and_passes_are_checked() {
        let img = DynamicImage::new_rgb8(8, 8);
        assert!(jpeg_noise(
            &img,
            &JpegParams {
                quality: 0,
                ..Default::default()
            }
        )
        .is_err());
        assert!(jpeg_noise(
            &img,
            &JpegParams {
                quality: 101,
                ..Default::default()
            }
        )
        .is_err());
        assert!(jpeg_noise(
            &img,
            &JpegParams {
                passes: 0,
                ..Default::default()
            }
        )
        .is_err());
    }
}
