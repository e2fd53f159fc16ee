//! JPEG noise: an encode/decode round trip at a given quality, as Pillow's `img.save(buf, "JPEG",
//! quality=q)` does it.
//!
//! The encoder ([`jpeg_encoder`]) scales the IJG tables of ITU-T T.81 Annex K exactly as libjpeg's
//! `jpeg_set_quality(q, force_baseline=TRUE)` does (`s = q<50 ? 5000/q : 200−2q`, `Q = clamp((base·s+50)/100,
//! 1, 255)`), and subsamples chroma 4:2:0 by default like Pillow. It is not byte-identical to libjpeg (DCT
//! and rounding differ), so the artifacts match Pillow's statistically: the golden tests check PSNR within
//! 0.5 dB and 8×8 blockiness within 10%.

use std::io::Cursor;

use image::DynamicImage;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use rayon::prelude::*;

use crate::pixels::{make_8bit, samples_mut};
use crate::{Error, Result};

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

    /// Parses Pillow's spellings: `"4:4:4"`/`0`, `"4:2:2"`/`1`, `"4:2:0"`/`2` (and `-1`, the default).
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "4:4:4" | "444" | "0" => Some(Self::S444),
            "4:2:2" | "422" | "1" => Some(Self::S422),
            "4:2:0" | "420" | "2" | "-1" => Some(Self::S420),
            _ => None,
        }
    }

    fn factor(self) -> SamplingFactor {
        match self {
            Self::S444 => SamplingFactor::F_1_1,
            Self::S422 => SamplingFactor::F_2_1,
            Self::S420 => SamplingFactor::F_2_2,
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

/// Encodes 8-bit interleaved samples (1 = grey or 3 = RGB colour channels) to JPEG bytes.
pub fn encode_jpeg(
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
    let mut buf = Vec::with_capacity(data.len() / 8 + 1024);
    let mut enc = Encoder::new(&mut buf, p.quality);
    enc.set_sampling_factor(p.subsampling.factor());
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

/// libjpeg's `rgb_ycc_convert` (jccolor.c, 16-bit fixed point) followed by its `h2v2_downsample` /
/// `h2v1_downsample` (jcsample.c: box average with alternating rounding bias, edges replicated), with each
/// averaged chroma value written back over its whole cell.
/// libjpeg's `rgb_ycc_convert` for one pixel (16-bit fixed point).
#[inline]
fn rgb_to_ycc(r: u8, g: u8, b: u8) -> [u8; 3] {
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

fn ycbcr_subsampled(data: &[u8], w: usize, h: usize, cn: usize, sub: Subsampling) -> Vec<u8> {
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

/// Decodes JPEG bytes to an 8-bit image.
pub fn decode_jpeg(bytes: &[u8]) -> Result<DynamicImage> {
    image::load(Cursor::new(bytes), image::ImageFormat::Jpeg)
        .map_err(|e| Error::Jpeg(e.to_string()))
}

/// Rows per strip of the parallel round trip (a multiple of 16, the 4:2:0 MCU height).
const STRIP: usize = 256;
/// Context rows encoded above and below each strip, so that the decoder's chroma upsampling sees the same
/// neighbours as in a whole-image round trip.
const MARGIN: usize = 16;

/// One encode/decode round trip of packed samples. Tall images are cut into strips of [`STRIP`] rows that
/// are encoded and decoded in parallel, each with [`MARGIN`] rows of context: JPEG blocks are local and the
/// strips are MCU-aligned, so the result is identical to a whole-image round trip (tested), whatever the
/// number of threads.
fn round_trip(data: &[u8], w: usize, h: usize, cn: usize, p: &JpegParams) -> Result<Vec<u8>> {
    let whole = |data: &[u8], rows: usize| -> Result<Vec<u8>> {
        let bytes = encode_jpeg(data, w as u32, rows as u32, cn, p)?;
        let dec = decode_jpeg(&bytes)?;
        let out = if cn == 1 {
            dec.into_luma8().into_raw()
        } else {
            dec.into_rgb8().into_raw()
        };
        if out.len() != w * rows * cn {
            return Err(Error::Jpeg(format!(
                "decoded {} samples, expected {}",
                out.len(),
                w * rows * cn
            )));
        }
        Ok(out)
    };
    if h <= STRIP + 2 * MARGIN {
        return whole(data, h);
    }
    let row = w * cn;
    let strips: Vec<(usize, usize)> = (0..h)
        .step_by(STRIP)
        .map(|s| (s, (s + STRIP).min(h)))
        .collect();
    let mut out = vec![0u8; data.len()];
    out.par_chunks_mut(STRIP * row)
        .zip(strips.par_iter())
        .try_for_each(|(dst, &(start, end))| {
            let (lo, hi) = (start.saturating_sub(MARGIN), (end + MARGIN).min(h));
            let dec = whole(&data[lo * row..hi * row], hi - lo)?;
            dst.copy_from_slice(&dec[(start - lo) * row..(end - lo) * row]);
            Ok::<(), Error>(())
        })?;
    Ok(out)
}

/// JPEG noise in place: encode and decode `passes` times at `quality`. Alpha is kept.
pub fn jpeg_noise_in_place(img: &mut DynamicImage, p: &JpegParams) -> Result<()> {
    p.validate()?;
    crate::pixels::check_nonempty(img)?;
    make_8bit(img);
    let s = samples_mut(img);
    let (w, h, cn, colour) = (s.width, s.height, s.channels, s.colour);
    // Colour samples only (alpha removed), packed.
    let mut colour_data: Vec<u8> = if cn == colour {
        s.data.to_vec()
    } else {
        s.data
            .chunks_exact(cn)
            .flat_map(|px| px[..colour].iter().copied())
            .collect()
    };
    for _ in 0..p.passes {
        colour_data = round_trip(&colour_data, w, h, colour, p)?;
    }
    let s = samples_mut(img);
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
            let strips = round_trip(&data, w, h, cn, &p).unwrap();
            let bytes = encode_jpeg(&data, w as u32, h as u32, cn, &p).unwrap();
            let dec = decode_jpeg(&bytes).unwrap();
            let whole = if cn == 1 {
                dec.into_luma8().into_raw()
            } else {
                dec.into_rgb8().into_raw()
            };
            assert!(
                strips == whole,
                "{w}x{h}x{cn} {sub:?}: strip round trip differs"
            );
        }
    }

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
