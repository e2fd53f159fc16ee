//! The pure-Rust JPEG codec: the [`jpeg_encoder`] crate and the `image` crate's decoder. It is the codec
//! when the `turbojpeg` feature is off, and stays available (and tested) with it on.
//!
//! The encoder scales the IJG tables of ITU-T T.81 Annex K exactly as libjpeg's
//! `jpeg_set_quality(q, force_baseline=TRUE)` does (`s = q<50 ? 5000/q : 200−2q`, `Q = clamp((base·s+50)/100,
//! 1, 255)`). It subsamples chroma by dropping samples, so the chroma is converted and box-averaged here with
//! libjpeg's arithmetic first. Not byte-identical to libjpeg (DCT and rounding differ): the golden tests
//! check PSNR within 0.5 dB of Pillow's and 8×8 blockiness within 10%.

use std::io::Cursor;

use image::DynamicImage;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use rayon::prelude::*;

use super::{JpegParams, Subsampling};
use crate::{Error, Result};

fn factor(s: Subsampling) -> SamplingFactor {
    match s {
        Subsampling::S444 => SamplingFactor::F_1_1,
        Subsampling::S422 => SamplingFactor::F_2_1,
        Subsampling::S420 => SamplingFactor::F_2_2,
    }
}

/// Encodes 8-bit interleaved samples (1 = grey, 3 = RGB, 4 = RGBA with alpha ignored) to JPEG bytes.
pub fn encode(
    data: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    p: &JpegParams,
) -> Result<Vec<u8>> {
    p.validate()?;
    let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => {
            return Err(Error::Jpeg(format!(
                "{width}x{height}: JPEG needs 1 to 65535 pixels a side"
            )))
        }
    };
    let color = match channels {
        1 => ColorType::Luma,
        3 => ColorType::Rgb,
        4 => ColorType::Rgba,
        n => return Err(Error::Jpeg(format!("{n} channels cannot be encoded"))),
    };
    if data.len() < width as usize * height as usize * channels {
        return Err(Error::Jpeg(format!(
            "{width}x{height}x{channels}: only {} samples given",
            data.len()
        )));
    }
    let mut buf = Vec::with_capacity(data.len() / 8 + 1024);
    let mut enc = Encoder::new(&mut buf, p.quality);
    enc.set_sampling_factor(factor(p.subsampling));
    // The encoder subsamples chroma by dropping samples; libjpeg averages them. Convert and average here
    // (libjpeg's arithmetic) and hand over YCbCr whose chroma is constant over each subsampling cell.
    if channels >= 3 && p.subsampling != Subsampling::S444 {
        let ycc = ycbcr_subsampled(
            data,
            width as usize,
            height as usize,
            channels,
            p.subsampling,
        );
        enc.encode(&ycc, w, h, ColorType::Ycbcr)
            .map_err(|e| Error::Jpeg(e.to_string()))?;
    } else {
        enc.encode(data, w, h, color)
            .map_err(|e| Error::Jpeg(e.to_string()))?;
    }
    Ok(buf)
}

/// Decodes JPEG bytes to an 8-bit image (the `image` crate's decoder).
pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
    image::load(Cursor::new(bytes), image::ImageFormat::Jpeg)
        .map_err(|e| Error::Jpeg(e.to_string()))
}

/// Decodes into packed samples of `channels` (1 or 3) that must be `width`×`height`.
#[cfg_attr(feature = "turbojpeg", allow(dead_code))]
pub(crate) fn decode_into(
    bytes: &[u8],
    dst: &mut [u8],
    width: usize,
    height: usize,
    channels: usize,
) -> Result<()> {
    let dec = decode(bytes)?;
    let (dw, dh) = (dec.width() as usize, dec.height() as usize);
    if (dw, dh) != (width, height) {
        return Err(Error::Jpeg(format!(
            "the JPEG is {dw}x{dh}, expected {width}x{height}"
        )));
    }
    let out = if channels == 1 {
        dec.into_luma8().into_raw()
    } else {
        dec.into_rgb8().into_raw()
    };
    let dst = dst.get_mut(..out.len()).ok_or_else(|| {
        Error::Jpeg(format!(
            "{width}x{height}: {}-byte output is too small",
            out.len()
        ))
    })?;
    dst.copy_from_slice(&out);
    Ok(())
}

/// libjpeg's `rgb_ycc_convert` for one pixel (jccolor.c, 16-bit fixed point).
#[inline]
pub(crate) fn rgb_to_ycc(r: u8, g: u8, b: u8) -> [u8; 3] {
    const fn fix(x: f64) -> i32 {
        (x * 65536.0 + 0.5) as i32
    }
    const HALF: i32 = 1 << 15;
    const OFFSET: i32 = 128 << 16;
    let (r, g, b) = (r as i32, g as i32, b as i32);
    [
        ((fix(0.29900) * r + fix(0.58700) * g + fix(0.11400) * b + HALF) >> 16) as u8,
        ((-fix(0.16874) * r - fix(0.33126) * g + fix(0.5) * b + OFFSET + HALF - 1) >> 16) as u8,
        ((fix(0.5) * r - fix(0.41869) * g - fix(0.08131) * b + OFFSET + HALF - 1) >> 16) as u8,
    ]
}

/// libjpeg's `rgb_ycc_convert` followed by its `h2v2_downsample` / `h2v1_downsample` (jcsample.c: box
/// average with alternating rounding bias, edges replicated), with each averaged chroma value written back
/// over its whole cell.
pub(crate) fn ycbcr_subsampled(
    data: &[u8],
    w: usize,
    h: usize,
    cn: usize,
    sub: Subsampling,
) -> Vec<u8> {
    let vstep = if sub == Subsampling::S420 { 2 } else { 1 };
    let mut out = vec![0u8; w * h * 3];
    out.par_chunks_mut(w * 3 * vstep)
        .zip(data.par_chunks(w * cn * vstep))
        .for_each(|(o, src)| {
            for (o, px) in o.chunks_exact_mut(3).zip(src.chunks_exact(cn)) {
                o.copy_from_slice(&rgb_to_ycc(px[0], px[1], px[2]));
            }
            // Average each cell (1 or 2 rows × 2 columns, edges replicated) and write it back over the cell.
            let (top, bottom) = o.split_at_mut(w * 3);
            let two_rows = !bottom.is_empty();
            for i in 0..w.div_ceil(2) {
                let (x0, x1) = (2 * i, (2 * i + 1).min(w - 1));
                for c in 1..3 {
                    let (a, b) = (top[x0 * 3 + c] as u32, top[x1 * 3 + c] as u32);
                    let v = if vstep == 2 {
                        let (d, e) = if two_rows {
                            (bottom[x0 * 3 + c] as u32, bottom[x1 * 3 + c] as u32)
                        } else {
                            (a, b)
                        };
                        (a + b + d + e + 1 + (i as u32 & 1)) >> 2
                    } else {
                        (a + b + (i as u32 & 1)) >> 1
                    } as u8;
                    top[x0 * 3 + c] = v;
                    top[x1 * 3 + c] = v;
                    if two_rows {
                        bottom[x0 * 3 + c] = v;
                        bottom[x1 * 3 + c] = v;
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroma_cells_are_libjpeg_box_averages_with_replicated_edges() {
        let (w, h) = (5usize, 3usize);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 53 % 256) as u8).collect();
        let full: Vec<u8> = data
            .chunks_exact(3)
            .flat_map(|p| rgb_to_ycc(p[0], p[1], p[2]))
            .collect();
        for (sub, vstep) in [(Subsampling::S420, 2usize), (Subsampling::S422, 1)] {
            let got = ycbcr_subsampled(&data, w, h, 3, sub);
            for y in 0..h {
                for x in 0..w {
                    let (cx, cy) = (x / 2, y / vstep);
                    for c in 1..3 {
                        let at = |xx: usize, yy: usize| {
                            full[((yy.min(h - 1)) * w + xx.min(w - 1)) * 3 + c] as u32
                        };
                        let (x0, y0) = (cx * 2, cy * vstep);
                        let want = if vstep == 2 {
                            (at(x0, y0)
                                + at(x0 + 1, y0)
                                + at(x0, y0 + 1)
                                + at(x0 + 1, y0 + 1)
                                + 1
                                + (cx as u32 & 1))
                                >> 2
                        } else {
                            (at(x0, y0) + at(x0 + 1, y0) + (cx as u32 & 1)) >> 1
                        };
                        assert_eq!(
                            got[(y * w + x) * 3 + c] as u32,
                            want,
                            "{sub:?} ({x},{y}) c{c}"
                        );
                    }
                    assert_eq!(got[(y * w + x) * 3], full[(y * w + x) * 3]);
                }
            }
        }
    }
}
