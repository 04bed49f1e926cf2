//! Colour profiles survive, transparency stays transparent, and a photo already within the
//! limits is kept as it was (metadata stripped) when re-encoding would only make it bigger.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use jewelshot_imaging::{compress, Format, Limits};

/// A JPEG with an ICC profile (APP2) and an EXIF segment (APP1).
fn jpeg_with_icc_and_exif(w: u32, h: u32, quality: f32, icc: &[u8]) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]));
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_size(w as usize, h as usize);
    c.set_quality(quality);
    let mut s = c.start_compress(Vec::new()).expect("start");
    // EXIF: "Exif\0\0" + a minimal little-endian TIFF header with no entries.
    s.write_marker(mozjpeg::Marker::APP(1), b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0\0\0");
    s.write_icc_profile(icc);
    s.write_scanlines(img.as_raw()).expect("write");
    s.finish().expect("finish")
}

fn icc_of(jpeg: &[u8]) -> Vec<u8> {
    let d = mozjpeg::Decompress::builder().with_markers(&[mozjpeg::Marker::APP(2)]).from_mem(jpeg).expect("header");
    d.markers().filter(|m| m.data.starts_with(b"ICC_PROFILE\0")).flat_map(|m| m.data[14..].to_vec()).collect()
}

fn fake_icc() -> Vec<u8> {
    // Not a valid profile, but a recognisable payload larger than one APP2 segment would be
    // without chunking.
    (0..70_000u32).map(|i| (i % 253) as u8).collect()
}

#[test]
fn it_keeps_the_icc_profile_when_shrinking() {
    let icc = fake_icc();
    let input = jpeg_with_icc_and_exif(2600, 400, 90.0, &icc);
    let out = compress(&input, &Limits::default()).expect("compress");
    assert_eq!((out.width, out.height), (1920, 295));
    assert_eq!(icc_of(&out.bytes), icc, "the colour profile must survive");
    assert!(!out.bytes.windows(6).any(|w| w == b"Exif\0\0"), "EXIF must not");
}

#[test]
fn it_keeps_a_small_input_as_is_but_without_metadata() {
    let icc = fake_icc()[..2000].to_vec();
    let input = jpeg_with_icc_and_exif(400, 300, 55.0, &icc);
    let out = compress(&input, &Limits::default()).expect("compress");
    assert!(out.kept_original, "a q55 photo within the limits is smaller than a q80 re-encode");
    assert_eq!(out.quality, None);
    assert!(out.bytes.len() < input.len(), "metadata stripped");
    assert!(!out.bytes.windows(6).any(|w| w == b"Exif\0\0"));
    assert_eq!(icc_of(&out.bytes), icc);
    // The image data is untouched: both decode to the same pixels.
    let a = image::load_from_memory(&input).expect("input").to_rgb8();
    let b = image::load_from_memory(&out.bytes).expect("output").to_rgb8();
    assert_eq!(a.as_raw(), b.as_raw());
}

#[test]
fn it_keeps_transparency_as_webp() {
    let img = RgbaImage::from_fn(2400, 600, |x, _| image::Rgba([200, 160, 40, if x < 1200 { 0 } else { 255 }]));
    let mut png = Cursor::new(Vec::new());
    DynamicImage::ImageRgba8(img).write_to(&mut png, ImageFormat::Png).expect("png");
    let out = compress(png.get_ref(), &Limits::default()).expect("compress");
    assert_eq!(out.input_format, Format::Png);
    assert_eq!((out.content_type, out.width, out.height), ("image/webp", 1920, 480));
    let back = image::load_from_memory(&out.bytes).expect("decodes").to_rgba8();
    assert!(back.get_pixel(100, 100)[3] < 10, "the transparent half stays transparent");
    assert!(back.get_pixel(1800, 100)[3] > 245, "the opaque half stays opaque");
}

#[test]
fn it_turns_an_opaque_png_into_jpeg() {
    // Photo-like noise: as a PNG it is far over 500 KB, so it must be re-encoded.
    let noise =
        |x: u32, y: u32, k: u32| ((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ k.wrapping_mul(31)) % 251) as u8;
    let img = RgbaImage::from_fn(800, 600, |x, y| image::Rgba([noise(x, y, 1), noise(x, y, 2), noise(x, y, 3), 255]));
    let mut png = Cursor::new(Vec::new());
    DynamicImage::ImageRgba8(img).write_to(&mut png, ImageFormat::Png).expect("png");
    let out = compress(png.get_ref(), &Limits::default()).expect("compress");
    assert!(png.get_ref().len() > 500_000);
    assert_eq!(out.content_type, "image/jpeg", "a fully opaque alpha channel is dropped");
    assert!(out.bytes.len() <= 500_000);
}
