//! JPEG through mozjpeg (libjpeg-turbo's SIMD code): decode at a reduced DCT scale — the trick
//! that makes libvips fast — reading EXIF orientation and the ICC profile on the way; encode with
//! the standard (libjpeg) tables and optimized Huffman coding; strip metadata losslessly.

use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg::{ColorSpace, Compress, Decompress, Format, Marker};

use crate::{
    raster::{cmyk_to_rgb, Raster},
    ImageError,
};

/// What a JPEG carries besides pixels that we act on.
#[derive(Debug, Clone, Default)]
pub struct JpegMeta {
    /// EXIF orientation (1 = upright).
    pub orientation: u16,
    pub icc: Option<Vec<u8>>,
    pub cmyk: bool,
    /// Any EXIF/XMP/IPTC/comment segment is present (must be stripped).
    pub has_metadata: bool,
    /// An Adobe APP14 marker: CMYK data is stored inverted.
    pub adobe: bool,
}

const ICC_TAG: &[u8] = b"ICC_PROFILE\0";

/// libjpeg reports fatal errors by unwinding; turn that into a 400.
fn guarded<T>(f: impl FnOnce() -> std::io::Result<T>) -> Result<T, ImageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ImageError::Corrupt(format!("JPEG: {e}"))),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "decoder error".into());
            Err(ImageError::Corrupt(format!("JPEG: {msg}")))
        }
    }
}

/// libjpeg pads a truncated file with gray and only warns; a complete file has an EOI marker
/// after its last scan.
pub(crate) fn is_complete(b: &[u8]) -> bool {
    let tail = &b[b.len().saturating_sub(64 * 1024)..];
    let last_sos = memchr::memmem::rfind(b, &[0xFF, 0xDA]);
    let eoi = memchr::memmem::rfind(tail, &[0xFF, 0xD9]).map(|p| p + b.len() - tail.len());
    matches!((last_sos, eoi), (Some(s), Some(e)) if e > s)
}

/// The smallest DCT scale (n/8) whose output still covers `target_long` on the long side, so
/// the final resample only ever shrinks.
/// Scales 6/8 and 7/8 are skipped: libjpeg-turbo has no SIMD IDCT for them and a full-size
/// decode is measured faster.
pub fn scale_numerator(width: u32, height: u32, target_long: u32) -> u8 {
    let long = u64::from(width.max(height));
    [1u8, 2, 3, 4, 5, 8].into_iter().find(|n| (long * u64::from(*n)).div_ceil(8) >= u64::from(target_long)).unwrap_or(8)
}

/// Decode, scaled so the long side is at least `target_long`.
pub fn decode(bytes: &[u8], target_long: u32) -> Result<(Raster, JpegMeta), ImageError> {
    if !is_complete(bytes) {
        return Err(ImageError::Corrupt("JPEG data is truncated (no end-of-image marker after the last scan)".into()));
    }
    guarded(|| {
        let markers = [Marker::APP(1), Marker::APP(2), Marker::APP(13), Marker::APP(14), Marker::COM];
        let mut d = Decompress::builder().with_markers(&markers).from_mem(bytes)?;
        let mut meta = read_meta(&d);
        let adobe = meta.adobe;
        let (w, h) = d.size();
        let n = scale_numerator(w as u32, h as u32, target_long);
        d.scale(n);
        if u64::from(w.max(h) as u32) * u64::from(n) > u64::from(target_long) * 8 {
            // The image will be resampled down anyway: libjpeg's merged (non-"fancy") chroma
            // upsampling is measurably faster and the difference vanishes in the resample.
            d.do_fancy_upsampling(false);
        }
        let raster = match d.image()? {
            Format::RGB(mut s) => {
                let data = s.read_scanlines::<u8>()?;
                let (width, height) = (s.width() as u32, s.height() as u32);
                s.finish()?;
                Raster { width, height, channels: 3, data }
            }
            Format::Gray(mut s) => {
                let data = s.read_scanlines::<u8>()?;
                let (width, height) = (s.width() as u32, s.height() as u32);
                s.finish()?;
                Raster { width, height, channels: 1, data }
            }
            Format::CMYK(mut s) => {
                let cmyk = s.read_scanlines::<u8>()?;
                let (width, height) = (s.width() as u32, s.height() as u32);
                s.finish()?;
                meta.cmyk = true;
                // A CMYK profile cannot describe the RGB we produce.
                meta.icc = None;
                Raster { width, height, channels: 3, data: cmyk_to_rgb(&cmyk, adobe) }
            }
        };
        Ok((raster, meta))
    })
}

/// Orientation, ICC profile and metadata presence from the saved markers.
pub(crate) fn read_meta<R>(d: &Decompress<R>) -> JpegMeta {
    let mut meta = JpegMeta { orientation: 1, ..Default::default() };
    let mut icc_chunks: Vec<(u8, &[u8])> = Vec::new();
    for m in d.markers() {
        match m.marker {
            Marker::APP(1) if m.data.starts_with(b"Exif\0\0") => {
                meta.has_metadata = true;
                meta.orientation = exif_orientation(&m.data[6..]).unwrap_or(1);
            }
            Marker::APP(2) if m.data.starts_with(ICC_TAG) && m.data.len() > 14 => {
                icc_chunks.push((m.data[12], &m.data[14..]));
            }
            Marker::APP(14) if m.data.starts_with(b"Adobe") => meta.adobe = true,
            Marker::APP(1) | Marker::APP(13) | Marker::COM => meta.has_metadata = true,
            _ => {}
        }
    }
    icc_chunks.sort_by_key(|(seq, _)| *seq);
    if !icc_chunks.is_empty() {
        meta.icc = Some(icc_chunks.iter().flat_map(|(_, d)| d.iter().copied()).collect());
    }
    meta
}

/// Read the Orientation tag from an EXIF (TIFF) payload.
fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let exif = exif::Reader::new().read_raw(tiff.to_vec()).ok()?;
    let field = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?;
    field.value.get_uint(0).and_then(|v| u16::try_from(v).ok())
}

/// An encoder as every JPEG we write is made: libjpeg-turbo's own defaults (standard tables,
/// no trellis) — fast, and sizes comparable with libvips at the same quality; optimized Huffman
/// tables shave a few percent more.
pub(crate) fn compressor(width: u32, height: u32, channels: u8, quality: u8, optimize: bool) -> Compress {
    let cs = if channels == 1 { ColorSpace::JCS_GRAYSCALE } else { ColorSpace::JCS_RGB };
    let mut c = Compress::new(cs);
    c.set_fastest_defaults();
    c.set_size(width as usize, height as usize);
    c.set_quality(f32::from(quality));
    c.set_optimize_coding(optimize);
    c
}

/// Encode the upright rows `y0..y0 + rows` of `r` (turned by EXIF `orientation` band by band,
/// so a turned image never exists whole).
#[allow(clippy::too_many_arguments)]
fn encode_rows(
    r: &Raster,
    orientation: u16,
    y0: usize,
    rows: usize,
    quality: u8,
    icc: Option<&[u8]>,
    optimize: bool,
) -> Result<Vec<u8>, ImageError> {
    let (uw, _) = r.upright_size(orientation);
    let stride = uw as usize * usize::from(r.channels);
    // Upright already: the rows are fed as they lie.
    let direct = match orientation {
        2..=8 => None,
        _ => Some(
            r.data
                .get(y0 * stride..(y0 + rows) * stride)
                .ok_or_else(|| ImageError::Internal(format!("JPEG encode: rows {y0}+{rows} outside the image")))?,
        ),
    };
    guarded(|| {
        let c = compressor(uw, rows as u32, r.channels, quality, optimize);
        let mut s = c.start_compress(Vec::with_capacity(stride * rows / 8))?;
        if let Some(icc) = icc {
            s.write_icc_profile(icc);
        }
        if let Some(data) = direct {
            s.write_scanlines(data)?;
        } else {
            // One MCU row at a time (16 rows at 4:2:0), turned into a band buffer.
            let mut band = vec![0u8; stride * 16];
            let mut y = y0;
            while y < y0 + rows {
                let n = 16.min(y0 + rows - y);
                r.upright_rows(orientation, y, &mut band[..n * stride]);
                s.write_scanlines(&band[..n * stride])?;
                y += n;
            }
        }
        s.finish()
    })
    .map_err(|e| ImageError::Internal(format!("JPEG encode: {e}")))
}

/// Encode RGB or gray pixels, turned upright by EXIF `orientation` (1 = as they are), at
/// `quality`, embedding `icc` when given. No other metadata.
///
/// Large images are encoded as two halves on two threads and joined with a restart marker:
/// a JPEG decoder resets its DC predictions at a restart marker, which is exactly the state a
/// second encoder starts from, so the joined file is the one a single encoder would write with
/// a restart interval of half the image (decoded pixel for pixel the same). Both halves use
/// the standard Huffman tables (they must share them), a few percent larger than optimized.
pub fn encode(r: &Raster, orientation: u16, quality: u8, icc: Option<&[u8]>) -> Result<Vec<u8>, ImageError> {
    let (uw, uh) = r.upright_size(orientation);
    let (uw, uh) = (uw as usize, uh as usize);
    // fastest defaults: 4:2:0 for colour, so MCUs are 16x16 (8x8 for gray).
    let mcu = if r.channels == 1 { 8 } else { 16 };
    let top = (uh / 2).div_ceil(mcu) * mcu;
    let interval = uw.div_ceil(mcu) * (top / mcu);
    let (Ok(height), Ok(interval)) = (u16::try_from(uh), u16::try_from(interval)) else {
        return encode_rows(r, orientation, 0, uh, quality, icc, true);
    };
    if uw * uh < 1_000_000 || top >= uh {
        return encode_rows(r, orientation, 0, uh, quality, icc, true);
    }
    let (a, b) = std::thread::scope(|scope| {
        let bottom = scope.spawn(|| encode_rows(r, orientation, top, uh - top, quality, None, false));
        let a = encode_rows(r, orientation, 0, top, quality, icc, false);
        (a, bottom.join().unwrap_or_else(|_| Err(ImageError::Internal("JPEG encode thread panicked".into()))))
    });
    join_halves(&a?, &b?, height, interval)
        .ok_or_else(|| ImageError::Internal("JPEG encode: could not join the halves".into()))
}

/// Offset of the first `FF marker` segment in the header part of a JPEG we wrote.
fn find_marker(b: &[u8], marker: u8) -> Option<usize> {
    let mut i = 2;
    while i + 4 <= b.len() {
        if b[i] != 0xFF {
            return None;
        }
        if b[i + 1] == marker {
            return Some(i);
        }
        i += 2 + usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
    }
    None
}

/// `a` (the top, with every table) + DRI + its scan + RST0 + `b`'s scan + EOI, with the frame
/// height set to the whole image.
fn join_halves(a: &[u8], b: &[u8], height: u16, interval: u16) -> Option<Vec<u8>> {
    let sof = find_marker(a, 0xC0)?;
    let sos_a = find_marker(a, 0xDA)?;
    let sos_b = find_marker(b, 0xDA)?;
    let data_a = sos_a + 2 + usize::from(u16::from_be_bytes([*a.get(sos_a + 2)?, *a.get(sos_a + 3)?]));
    let data_b = sos_b + 2 + usize::from(u16::from_be_bytes([*b.get(sos_b + 2)?, *b.get(sos_b + 3)?]));
    let (end_a, end_b) = (a.len().checked_sub(2)?, b.len().checked_sub(2)?);
    if a.get(end_a..)? != [0xFF, 0xD9] || b.get(end_b..)? != [0xFF, 0xD9] || data_a > end_a || data_b > end_b {
        return None;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(&a[..sos_a]);
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&[0xFF, 0xDD, 0x00, 0x04]);
    out.extend_from_slice(&interval.to_be_bytes());
    out.extend_from_slice(&a[sos_a..end_a]);
    out.extend_from_slice(&[0xFF, 0xD0]);
    out.extend_from_slice(&b[data_b..end_b]);
    out.extend_from_slice(&[0xFF, 0xD9]);
    Some(out)
}

/// Drop EXIF, XMP, IPTC and comment segments without touching the compressed image data.
/// Keeps JFIF (APP0), ICC (APP2) and Adobe (APP14).
pub fn strip_metadata(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..2]);
    let mut i = 2;
    loop {
        if *b.get(i)? != 0xFF {
            return None;
        }
        let m = *b.get(i + 1)?;
        if m == 0xDA {
            out.extend_from_slice(&b[i..]); // scan data and everything after
            return Some(out);
        }
        if m == 0xFF {
            i += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]));
        let end = i + 2 + len;
        let seg = b.get(i..end)?;
        let drop = matches!(m, 0xE1 | 0xED | 0xFE) || (0xE3..=0xEC).contains(&m) || m == 0xEF;
        if !drop {
            out.extend_from_slice(seg);
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_covering_scale() {
        assert_eq!(scale_numerator(6028, 3391, 1920), 3); // 6028·3/8 = 2261 ≥ 1920
        assert_eq!(scale_numerator(3088, 2056, 1920), 5); // 1930
        assert_eq!(scale_numerator(1000, 800, 1000), 8);
        assert_eq!(scale_numerator(16000, 100, 1920), 1);
    }

    #[test]
    fn two_halves_decode_as_one_encoder_would() {
        for (w, h, channels) in [(1080u32, 1920u32, 3u8), (1003, 1001, 3), (1200, 1000, 1)] {
            let data: Vec<u8> = (0..(w * h) as usize * usize::from(channels))
                .map(|i| ((i * 31 / 7 + i / (w as usize * 3) * 5) % 251) as u8)
                .collect();
            let r = Raster { width: w, height: h, channels, data };
            let split = encode(&r, 1, 80, None).expect("encode");
            assert!(split.windows(2).any(|p| p == [0xFF, 0xD0]), "{w}x{h}: encoded in two halves");
            let single = encode_rows(&r, 1, 0, h as usize, 80, None, false).expect("encode");
            // An independent decoder (the image crate's) reads both the same.
            let a = image::load_from_memory(&split).expect("decodes").to_rgb8();
            let b = image::load_from_memory(&single).expect("decodes").to_rgb8();
            assert_eq!(a.dimensions(), (w, h));
            assert!(a.as_raw() == b.as_raw(), "{w}x{h}x{channels}: pixels differ");
        }
    }

    #[test]
    fn encodes_a_turned_image_band_by_band_as_the_turned_copy() {
        let (w, h) = (1500u32, 900u32);
        let data: Vec<u8> = (0..(w * h * 3) as usize).map(|i| ((i * 13 / 5 + i / 4500 * 7) % 253) as u8).collect();
        let r = Raster { width: w, height: h, channels: 3, data };
        for orientation in [3u16, 6, 8] {
            let banded = encode(&r, orientation, 80, None).expect("encode");
            let copied = encode(&r.clone().oriented(orientation), 1, 80, None).expect("encode");
            assert!(banded == copied, "orientation {orientation}: the same file either way");
            let img = image::load_from_memory(&banded).expect("decodes");
            assert_eq!((img.width(), img.height()), r.upright_size(orientation));
        }
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let r = Raster { width: 40, height: 24, channels: 3, data: [200u8, 120, 40].repeat(40 * 24) };
        let jpeg = encode(&r, 1, 80, None).expect("encode");
        let (back, meta) = decode(&jpeg, 40).expect("decode");
        assert_eq!((back.width, back.height, meta.orientation), (40, 24, 1));
        assert!(decode(&jpeg[..jpeg.len() / 2], 40).is_err(), "truncated");
        let mut broken = jpeg.clone();
        for b in broken.iter_mut().skip(200).take(50) {
            *b = 0xFF;
        }
        // Corrupt entropy data must not panic; either an error or a (garbled) decode is fine.
        let _ = decode(&broken, 40);
    }
}
