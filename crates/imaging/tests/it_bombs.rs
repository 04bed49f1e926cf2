//! Image bombs and awkward formats (issue F): each hostile file is refused with its code before a
//! decoder spends memory or time on it; the awkward but legitimate ones (16-bit, gray, ICC,
//! CMYK) are handled; no cut of any format panics.

use std::{borrow::Cow, time::Instant};

use jewelshot_imaging::{bombs, compress, ImageError, Limits};

fn code_of(input: &[u8]) -> Result<&'static str, String> {
    match compress(input, &Limits::default()) {
        Ok(c) => Err(format!("accepted as {}x{} {}", c.width, c.height, c.content_type)),
        Err(e) => Ok(e.code()),
    }
}

/// Every bomb of the list, with the code it gets. The decoders would take gigabytes or
/// minutes on them; refused from their structure, each takes well under a millisecond here.
#[test]
fn it_refuses_every_bomb_with_its_code() {
    let photo = bombs::progressive_jpeg(640, 480).expect("jpeg");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("35-byte GIF with a 65535x65535 frame", bombs::gif_frame(), "image-too-large"),
        (
            "progressive JPEG with 5,000 scans",
            bombs::repeat_last_scan(&photo, 5_000).expect("scans"),
            "image-too-complex",
        ),
        ("9-byte PNG", bombs::tiny_png(), "invalid-image"),
        ("49 MP all-zero PNG", bombs::zero_png(7000, 7000).expect("png"), "image-too-large"),
        ("truncated JPEG", bombs::truncated(&photo), "invalid-image"),
    ];
    assert_eq!(bombs::gif_frame().len(), 35);
    for (what, file, want) in cases {
        let t = Instant::now();
        assert_eq!(code_of(&file), Ok(want), "{what} ({} bytes)", file.len());
        eprintln!("{what}: {} bytes, refused in {:.2} ms", file.len(), t.elapsed().as_secs_f64() * 1e3);
    }
}

/// The scan bound is the only thing between a repeated-scan file and minutes of CPU: the same
/// file with a few repeats is a valid image (the extra scans refine nothing), one past the bound
/// is refused. Both decoders are behind the same check.
#[test]
fn it_bounds_jpeg_scans_whichever_decoder_reads_them() {
    let photo = bombs::progressive_jpeg(320, 240).expect("jpeg");
    let base = photo.windows(2).filter(|w| *w == [0xFF, 0xDA]).count();
    let limits = Limits::default();
    let under = bombs::repeat_last_scan(&photo, limits.max_scans as usize - base).expect("under");
    assert!(compress(&under, &limits).is_ok(), "{} scans are within the bound", limits.max_scans);
    let over = bombs::repeat_last_scan(&photo, limits.max_scans as usize - base + 1).expect("over");
    assert!(matches!(compress(&over, &limits), Err(ImageError::TooComplex(_))));
    std::env::set_var("JEWELSHOT_IMAGING_LIBJPEG", "1");
    let libjpeg = compress(&over, &limits);
    std::env::remove_var("JEWELSHOT_IMAGING_LIBJPEG");
    assert!(matches!(libjpeg, Err(ImageError::TooComplex(_))), "libjpeg's path is bounded too");
}

/// The decoded-size budget: the same zero PNG is fine at 4 MP, refused at 49 MP (which would be
/// 147 MB decoded) with a sentence that says why, and the budget is a setting.
#[test]
fn it_holds_whole_decodes_to_the_memory_budget() {
    let small = compress(&bombs::zero_png(2000, 2000).expect("png"), &Limits::default());
    assert!(small.is_ok(), "{small:?}");
    let big = bombs::zero_png(7000, 7000).expect("png");
    let err = compress(&big, &Limits::default()).expect_err("over the budget");
    assert!(matches!(err, ImageError::TooLargeToDecode { .. }), "{err}");
    assert!(err.to_string().contains("147 MB"), "{err}");
    let roomy = Limits { max_decode_bytes: 200 * 1024 * 1024, ..Limits::default() };
    let ok = compress(&big, &roomy).expect("within a larger budget");
    assert_eq!((ok.original_width, ok.original_height), (7000, 7000));
}

fn png(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8], icc: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut info = png::Info::with_size(w, h);
    info.color_type = color;
    info.bit_depth = depth;
    info.icc_profile = icc.map(|b| Cow::Owned(b.to_vec()));
    let enc = png::Encoder::with_info(&mut out, info).expect("info");
    let mut writer = enc.write_header().expect("header");
    writer.write_image_data(data).expect("data");
    writer.finish().expect("finish");
    out
}

fn gradient(w: u32, h: u32, channels: usize) -> Vec<u8> {
    (0..w * h).flat_map(|i| (0..channels).map(move |c| ((i as usize * (c + 1)) % 251) as u8)).collect()
}

/// Animations are refused from their structure, before any frame is decoded: a two-frame GIF,
/// an animated PNG (its `acTL` chunk) and an animated WebP (its header flag).
#[test]
fn it_refuses_animations_without_decoding_them() {
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        for shade in [0u8, 255] {
            let frame = image::RgbaImage::from_pixel(8, 8, image::Rgba([shade, 0, 0, 255]));
            enc.encode_frame(image::Frame::new(frame)).expect("frame");
        }
    }
    assert_eq!(code_of(&gif), Ok("unsupported-image-format"), "animated GIF");
    let still = {
        let mut g = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut g)
            .encode_frame(image::Frame::new(image::RgbaImage::from_pixel(8, 8, image::Rgba([9, 9, 9, 255]))))
            .expect("frame");
        g
    };
    assert!(compress(&still, &Limits::default()).is_ok(), "a one-frame GIF is a still");

    let mut apng = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut apng, 8, 8);
        enc.set_color(png::ColorType::Rgb);
        enc.set_animated(2, 0).expect("animated");
        let mut w = enc.write_header().expect("header");
        w.write_image_data(&[0u8; 8 * 8 * 3]).expect("frame 1");
        w.write_image_data(&[255u8; 8 * 8 * 3]).expect("frame 2");
        w.finish().expect("finish");
    }
    assert_eq!(code_of(&apng), Ok("unsupported-image-format"), "animated PNG");

    // An extended WebP header with the animation flag (VP8X, flags 0x02, 8x8).
    let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\x02\0\0\0\x07\0\0\x07\0\0".to_vec();
    let len = (webp.len() - 8) as u32;
    webp[4..8].copy_from_slice(&len.to_le_bytes());
    assert_eq!(code_of(&webp), Ok("unsupported-image-format"), "animated WebP");
}

/// 16-bit colour, gray, palette-free RGBA and an ICC profile in a PNG, and a CMYK JPEG: each
/// decodes to an ordinary 8-bit result (the ICC profile carried over, CMYK turned into RGB).
#[test]
fn it_handles_sixteen_bit_gray_icc_and_cmyk() {
    let icc = b"\0\0\x02\x0cADBE\x02\x10\0\0mntrRGB XYZ fake profile for the test".repeat(4);
    // Noise, so the PNG is too big to keep and is re-encoded.
    let mut seed = 0x2545_F491_u32;
    let rgb16: Vec<u8> = (0..900 * 600 * 6)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        })
        .collect();
    let sixteen = png(900, 600, png::ColorType::Rgb, png::BitDepth::Sixteen, &rgb16, Some(&icc));
    let out = compress(&sixteen, &Limits::default()).expect("16-bit PNG");
    assert_eq!((out.width, out.height, out.content_type), (900, 600, "image/jpeg"));
    let icc_out = out.bytes.windows(12).position(|w| w == b"ICC_PROFILE\0");
    assert!(icc_out.is_some(), "the ICC profile is kept");

    let gray = png(120, 80, png::ColorType::Grayscale, png::BitDepth::Eight, &gradient(120, 80, 1), None);
    let out = compress(&gray, &Limits::default()).expect("gray PNG");
    assert_eq!((out.width, out.height), (120, 80));
    let rgba16: Vec<u8> = gradient(64, 64, 4).iter().flat_map(|&v| [v, 0]).collect();
    let alpha = png(64, 64, png::ColorType::Rgba, png::BitDepth::Sixteen, &rgba16, None);
    let out = compress(&alpha, &Limits::default()).expect("RGBA16 PNG");
    assert_ne!(out.content_type, "image/jpeg", "transparency is kept");

    let (w, h) = (96usize, 64usize);
    let cmyk: Vec<u8> = (0..w * h).flat_map(|i| [(i % 200) as u8, 40, 90, 10]).collect();
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
    c.set_size(w, h);
    let mut s = c.start_compress(Vec::new()).expect("start");
    s.write_scanlines(&cmyk).expect("rows");
    let cmyk_jpeg = s.finish().expect("finish");
    let out = compress(&cmyk_jpeg, &Limits::default()).expect("CMYK JPEG");
    let d = mozjpeg::Decompress::new_mem(&out.bytes).expect("decode");
    assert_eq!(d.color_space(), mozjpeg::ColorSpace::JCS_YCbCr, "CMYK becomes RGB");
}

/// Every cut of a small file of each format, at every length: an error or a result, never a
/// panic; a cut before the image data is complete is an error with a 4xx code.
#[test]
fn it_never_panics_on_any_cut_of_any_format() {
    let jpeg = bombs::progressive_jpeg(48, 32).expect("jpeg");
    let png = png(48, 32, png::ColorType::Rgb, png::BitDepth::Eight, &gradient(48, 32, 3), None);
    let mut gif = Vec::new();
    image::codecs::gif::GifEncoder::new(&mut gif)
        .encode_frame(image::Frame::new(image::RgbaImage::from_pixel(48, 32, image::Rgba([1, 2, 3, 255]))))
        .expect("gif");
    let mut webp = Vec::new();
    image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(48, 32, image::Rgba([1, 2, 3, 128])))
        .write_to(&mut std::io::Cursor::new(&mut webp), image::ImageFormat::WebP)
        .expect("webp");
    for (name, file) in [("jpeg", jpeg), ("png", png), ("gif", gif), ("webp", webp)] {
        for len in 0..file.len() {
            let cut = &file[..len];
            let result = std::panic::catch_unwind(|| compress(cut, &Limits::default()));
            let result = result.unwrap_or_else(|_| panic!("{name} cut to {len} bytes panicked"));
            if len < file.len() / 2 {
                let e = result.expect_err(&format!("{name} cut to {len} bytes was accepted"));
                assert!((400..500).contains(&e.http_status()), "{name} at {len}: {e} ({})", e.code());
            }
        }
    }
}
