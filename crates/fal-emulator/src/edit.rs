//! The emulator's "edit": a visible, deterministic transform of the input — per-channel
//! auto-levels (1st to 99th percentile stretched to full range) and a warm tint — on a copy no
//! larger than 1024 px, as fal's models answer at about that size.

use std::io::Cursor;

use image::{imageops::FilterType, DynamicImage, ImageDecoder, ImageFormat, RgbImage};

/// Longest side of the result.
const MAX_SIDE: u32 = 1024;

/// Decode, edit, and encode as JPEG. Errors are for inputs that are not decodable images.
pub fn edit_image(input: &[u8]) -> Result<(Vec<u8>, u32, u32), String> {
    let mut reader = image::ImageReader::new(Cursor::new(input)).with_guessed_format().map_err(|e| e.to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(20_000);
    limits.max_image_height = Some(20_000);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let bad = |e: image::ImageError| format!("could not decode the input image: {e}");
    let mut decoder = reader.into_decoder().map_err(bad)?;
    // Phones store portrait photos sideways with an EXIF tag; show them the way they were taken.
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    let img = if img.width().max(img.height()) > MAX_SIDE {
        img.resize(MAX_SIDE, MAX_SIDE, FilterType::Triangle)
    } else {
        img
    };
    let mut rgb = img.to_rgb8();
    auto_levels_warm(&mut rgb);
    let (w, h) = rgb.dimensions();
    let mut out = Cursor::new(Vec::with_capacity((w * h / 4) as usize));
    DynamicImage::ImageRgb8(rgb).write_to(&mut out, ImageFormat::Jpeg).map_err(|e| e.to_string())?;
    Ok((out.into_inner(), w, h))
}

fn auto_levels_warm(img: &mut RgbImage) {
    let mut hist = [[0u64; 256]; 3];
    for p in img.pixels() {
        for c in 0..3 {
            hist[c][p[c] as usize] += 1;
        }
    }
    let total = u64::from(img.width()) * u64::from(img.height());
    let mut lut = [[0u8; 256]; 3];
    // Warm tint: a little more red, a little less blue.
    let gain = [1.08f32, 1.0, 0.88];
    for c in 0..3 {
        let (lo, hi) = percentiles(&hist[c], total);
        let span = f32::from(hi.saturating_sub(lo).max(1));
        for (v, slot) in lut[c].iter_mut().enumerate() {
            let stretched = ((v as f32 - f32::from(lo)) / span * 255.0).clamp(0.0, 255.0);
            *slot = (stretched * gain[c]).round().clamp(0.0, 255.0) as u8;
        }
    }
    for p in img.pixels_mut() {
        for c in 0..3 {
            p[c] = lut[c][p[c] as usize];
        }
    }
}

fn percentiles(hist: &[u64; 256], total: u64) -> (u8, u8) {
    let cut = total / 100;
    let mut acc = 0;
    let mut lo = 0u8;
    for (i, n) in hist.iter().enumerate() {
        acc += n;
        if acc > cut {
            lo = i as u8;
            break;
        }
    }
    acc = 0;
    let mut hi = 255u8;
    for (i, n) in hist.iter().enumerate().rev() {
        acc += n;
        if acc > cut {
            hi = i as u8;
            break;
        }
    }
    if hi <= lo {
        (0, 255)
    } else {
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_jpeg() -> Vec<u8> {
        // A dull low-contrast gradient: auto-levels must widen it.
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([100 + (x as u8 / 2), 110 + (y as u8 / 2), 120]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut out, ImageFormat::Jpeg).expect("encode");
        out.into_inner()
    }

    #[test]
    fn edit_is_visible_and_deterministic() {
        let input = sample_jpeg();
        let (a, w, h) = edit_image(&input).expect("edit");
        let (b, _, _) = edit_image(&input).expect("edit again");
        assert_eq!(a, b, "same input, same output");
        assert_eq!((w, h), (64, 48));
        let before = image::load_from_memory(&input).expect("decode").to_rgb8();
        let after = image::load_from_memory(&a).expect("decode").to_rgb8();
        let range = |img: &RgbImage| {
            let r: Vec<u8> = img.pixels().map(|p| p[0]).collect();
            r.iter().max().copied().unwrap_or(0) - r.iter().min().copied().unwrap_or(0)
        };
        assert!(range(&after) > range(&before) * 3, "contrast stretched");
    }

    #[test]
    fn refuses_non_images() {
        assert!(edit_image(b"hello, not an image").is_err());
        assert!(edit_image(&[]).is_err());
    }
}
