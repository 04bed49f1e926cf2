//! The structure of a file, read before any decoder runs — the checks that make image bombs cheap
//! to refuse. [`probe`](crate::probe) reads the header; this walks the rest of the container (never
//! a pixel) for what the header alone cannot say:
//!
//! - **JPEG**: the number of scans. Each progressive scan makes a decoder pass over the whole
//!   coefficient buffer, so a file that repeats one scan 5,000 times costs minutes of CPU in any
//!   decoder; more than [`Limits::max_scans`] is refused, whichever decoder would read it.
//! - **GIF**: every frame's rectangle, which a decoder allocates before decoding it (a 35-byte GIF
//!   with a 1×1 screen can declare a 65535×65535 frame). A frame over the pixel limit or outside
//!   the screen is refused; more than one frame is an animation, refused without decoding any.
//! - **PNG**: an `acTL` chunk before the image data (an animated PNG) is refused; the colour type
//!   and bit depth give the decoded size.
//! - **WebP**: the extended header's animation flag; its alpha flag gives the decoded size.
//!
//! PNG, WebP and GIF are decoded whole (JPEG is decoded at a reduced DCT scale), so for them the
//! bytes a decode will take — the decoder's buffer plus the 8-bit RGB(A) copy the pipeline makes —
//! are estimated here and held to [`Limits::max_decode_bytes`]: a 49 MP PNG of zeros is a few
//! kilobytes on the wire and 147 MB once decoded. The same figure bounds the decoder's own
//! allocations (`image::Limits::max_alloc`).

use crate::{probe::Format, ImageError, Limits, Probe};

/// What a decode of an admitted file will take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Peak bytes of a whole decode (PNG, WebP, GIF); 0 for JPEG, which is bounded by its scale.
    pub decode_bytes: u64,
}

/// Check `b` (already probed as `p`, within the pixel limit) against the structural limits.
pub(crate) fn inspect(b: &[u8], p: &Probe, limits: &Limits) -> Result<Shape, ImageError> {
    let pixels = u64::from(p.width) * u64::from(p.height);
    let decode_bytes = match p.format {
        Format::Jpeg => {
            let scans = jpeg_scans(b, limits.max_scans);
            if scans > limits.max_scans {
                return Err(ImageError::TooComplex(format!(
                    "the JPEG has more than {} scans (photos have at most a few dozen)",
                    limits.max_scans
                )));
            }
            return Ok(Shape { decode_bytes: 0 });
        }
        Format::Png => pixels * png_bytes_per_pixel(b)?,
        Format::Gif => {
            gif_frames(b, p, limits)?;
            // The screen as RGBA, and a frame buffer of at most the screen's size.
            pixels * 8
        }
        Format::Webp => {
            let (animated, alpha) = webp_flags(b);
            if animated {
                return Err(animated_error());
            }
            pixels * if alpha { 4 + 3 } else { 3 }
        }
    };
    if decode_bytes > limits.max_decode_bytes {
        return Err(ImageError::TooLargeToDecode {
            format: p.format,
            needed: decode_bytes,
            limit: limits.max_decode_bytes,
        });
    }
    Ok(Shape { decode_bytes })
}

fn animated_error() -> ImageError {
    ImageError::UnsupportedFormat("animated images are not supported; upload a still photo".into())
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

/// Scans (SOS markers) in reading order, as libjpeg meets them: segments are skipped by their
/// length, entropy-coded data byte by byte (a stuffed `FF 00` or a restart marker is no marker),
/// up to the end of image. Stops counting past `max`, so the walk is linear and short.
fn jpeg_scans(b: &[u8], max: u32) -> u32 {
    let mut scans = 0;
    let mut i = 2;
    loop {
        let Some(off) = b.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) else {
            return scans;
        };
        i += off;
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&m) = b.get(i) else { return scans };
        i += 1;
        match m {
            // No marker (stuffing), or markers without a length: TEM, restarts, SOI.
            0x00 | 0x01 | 0xD0..=0xD8 => {}
            0xD9 => return scans,
            _ => {
                if m == 0xDA {
                    scans += 1;
                    if scans > max {
                        return scans;
                    }
                }
                let Some(len) = be16(b, i) else { return scans };
                i += len.max(2);
            }
        }
    }
}

/// The decoded size per pixel of a PNG from its `IHDR` (samples widened to 8 bits, palettes
/// expanded, as the decoder hands them out), plus the 8-bit RGB(A) copy when the decoder's
/// layout is not already that; an `acTL` chunk before `IDAT` is an animation.
fn png_bytes_per_pixel(b: &[u8]) -> Result<u64, ImageError> {
    let corrupt = || ImageError::Corrupt("PNG header is truncated or corrupt".into());
    let depth = *b.get(24).ok_or_else(corrupt)?;
    let color = *b.get(25).ok_or_else(corrupt)?;
    let channels: u64 = match color {
        0 => 1,
        2 => 3,
        3 => 4, // a palette may carry transparency: count it as RGBA
        4 => 2,
        6 => 4,
        _ => return Err(ImageError::Corrupt(format!("PNG colour type {color} does not exist"))),
    };
    let sample = if depth == 16 { 2 } else { 1 };
    let decoded = channels * sample;
    // An 8-bit RGB or RGBA buffer is used as it is; anything else is copied to one (RGBA →
    // RGB again when it turns out opaque).
    let copy = match (channels, sample) {
        (3, 1) => 0,
        (4, 1) => 3,
        _ => 4 + 3,
    };
    // Chunks up to the image data: an animation control chunk means an animated PNG.
    let mut i = 8;
    while let (Some(len), Some(kind)) =
        (b.get(i..i + 4).and_then(|s| <[u8; 4]>::try_from(s).ok()).map(u32::from_be_bytes), b.get(i + 4..i + 8))
    {
        match kind {
            b"acTL" => return Err(animated_error()),
            b"IDAT" | b"IEND" => break,
            _ => i = i.saturating_add(12).saturating_add(len as usize),
        }
    }
    Ok(decoded + copy)
}

/// The extended WebP header's (animated, alpha) flags; a simple lossy file has neither, a
/// lossless one may have alpha.
fn webp_flags(b: &[u8]) -> (bool, bool) {
    match b.get(12..16) {
        Some(b"VP8X") => {
            let flags = b.get(20).copied().unwrap_or(0);
            (flags & 0x02 != 0, flags & 0x10 != 0)
        }
        Some(b"VP8L") => (false, true),
        _ => (false, false),
    }
}

/// Walk a GIF's blocks (never its LZW data): every frame within the pixel limit and the logical
/// screen, one frame only.
fn gif_frames(b: &[u8], p: &Probe, limits: &Limits) -> Result<(), ImageError> {
    let corrupt = |what: &str| ImageError::Corrupt(format!("the GIF is truncated or corrupt: {what}"));
    let table = |flags: u8| if flags & 0x80 != 0 { 3usize << ((flags & 7) + 1) } else { 0 };
    let mut i = 13 + table(*b.get(10).ok_or_else(|| corrupt("no screen descriptor"))?);
    let mut frames = 0u32;
    // Data sub-blocks: a length byte and that many bytes, until a zero length.
    let skip_blocks = |mut i: usize| -> Result<usize, ImageError> {
        loop {
            let n = usize::from(*b.get(i).ok_or_else(|| corrupt("a data block runs past the end"))?);
            i += 1 + n;
            if n == 0 {
                return Ok(i);
            }
        }
    };
    loop {
        match b.get(i) {
            Some(0x21) => i = skip_blocks(i + 2)?, // extension: label, then sub-blocks
            Some(0x2C) => {
                let field = |at| le16(b, i + at).ok_or_else(|| corrupt("an image descriptor is cut short"));
                let (left, top, w, h) = (field(1)?, field(3)?, field(5)?, field(7)?);
                if u64::from(w) * u64::from(h) > limits.max_pixels {
                    return Err(ImageError::TooManyPixels { width: w, height: h, limit: limits.max_pixels });
                }
                if left + w > p.width || top + h > p.height {
                    return Err(corrupt("a frame reaches outside the image"));
                }
                frames += 1;
                if frames > 1 {
                    return Err(animated_error());
                }
                let flags = *b.get(i + 9).ok_or_else(|| corrupt("an image descriptor is cut short"))?;
                // Descriptor, local colour table, LZW code size, then the data sub-blocks.
                i = skip_blocks(i + 10 + table(flags) + 1)?;
            }
            // The trailer, or a file cut after its last block (decoders accept both).
            Some(0x3B) | None if frames > 0 => return Ok(()),
            Some(0x3B) | None => return Err(corrupt("it holds no image")),
            Some(other) => return Err(corrupt(&format!("unknown block 0x{other:02x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gif(screen: (u16, u16), frames: &[(u16, u16, u16, u16)]) -> Vec<u8> {
        let mut g = b"GIF89a".to_vec();
        g.extend_from_slice(&screen.0.to_le_bytes());
        g.extend_from_slice(&screen.1.to_le_bytes());
        g.extend_from_slice(&[0, 0, 0]);
        for &(l, t, w, h) in frames {
            g.push(0x2C);
            for v in [l, t, w, h] {
                g.extend_from_slice(&v.to_le_bytes());
            }
            g.extend_from_slice(&[0, 2, 2, 0x4C, 0x01, 0]);
        }
        g.push(0x3B);
        g
    }

    fn probe_of(b: &[u8]) -> Probe {
        crate::probe(b).expect("probe")
    }

    #[test]
    fn a_gif_frame_over_the_limit_or_outside_the_screen_is_refused() {
        let limits = Limits::default();
        let bomb = gif((1, 1), &[(0, 0, 65535, 65535)]);
        assert!(matches!(gif_frames(&bomb, &probe_of(&bomb), &limits), Err(ImageError::TooManyPixels { .. })));
        let outside = gif((10, 10), &[(5, 5, 10, 10)]);
        assert!(matches!(gif_frames(&outside, &probe_of(&outside), &limits), Err(ImageError::Corrupt(_))));
        let fine = gif((10, 10), &[(0, 0, 10, 10)]);
        assert!(gif_frames(&fine, &probe_of(&fine), &limits).is_ok());
        let two = gif((10, 10), &[(0, 0, 10, 10), (0, 0, 5, 5)]);
        assert!(matches!(gif_frames(&two, &probe_of(&two), &limits), Err(ImageError::UnsupportedFormat(_))));
    }

    #[test]
    fn counts_scans_as_libjpeg_reads_them() {
        // SOI, a segment whose payload holds FF DA (skipped by its length), two scans whose
        // entropy data holds a stuffed FF 00 and a restart marker, EOI, then junk "scans".
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xDA, 0xFF, 0xDA];
        for _ in 0..2 {
            j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0]);
            j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        }
        j.extend_from_slice(&[0xFF, 0xD9, 0xFF, 0xDA, 0x00, 0x02]);
        assert_eq!(jpeg_scans(&j, 100), 2);
        assert_eq!(jpeg_scans(&j, 1), 2, "counting stops just past the bound");
        assert_eq!(jpeg_scans(&j[..20], 100), 1, "a cut file counts what it has");
    }

    #[test]
    fn png_sizes_follow_the_colour_type() {
        let ihdr = |depth: u8, color: u8| {
            let mut p = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
            p.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 10, depth, color, 0, 0, 0, 0, 0, 0, 0]);
            p
        };
        assert_eq!(png_bytes_per_pixel(&ihdr(8, 2)).expect("rgb"), 3);
        assert_eq!(png_bytes_per_pixel(&ihdr(8, 6)).expect("rgba"), 4 + 3);
        assert_eq!(png_bytes_per_pixel(&ihdr(16, 6)).expect("rgba16"), 8 + 7);
        assert_eq!(png_bytes_per_pixel(&ihdr(8, 0)).expect("gray"), 1 + 7);
        assert!(png_bytes_per_pixel(&ihdr(8, 5)).is_err());
        let mut apng = ihdr(8, 2);
        apng.extend_from_slice(&[0, 0, 0, 8]);
        apng.extend_from_slice(b"acTL");
        assert!(matches!(png_bytes_per_pixel(&apng), Err(ImageError::UnsupportedFormat(_))));
    }
}
