//! Hostile files, built on demand for the tests that send them (imaging, the gateway's uploads,
//! the worker's fal results): the same bytes everywhere, none of them checked in. Not an API.

use std::io::Write;

use mozjpeg::{ColorSpace, Compress};

use crate::ImageError;

/// 35 bytes: a GIF whose screen is 1×1 and whose one frame is 65535×65535 — a decoder that
/// trusts the frame allocates 17 GB for it.
pub fn gif_frame() -> Vec<u8> {
    // Header, a 1×1 screen with a two-colour global table, then the frame.
    let mut g = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.push(0x2C);
    g.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x00]);
    g.extend_from_slice(&[0x02, 0x02, 0x4C, 0x01, 0x00, 0x3B]);
    g
}

/// A still, opaque `w`×`h` photo-like gradient as a progressive JPEG.
pub fn progressive_jpeg(w: u32, h: u32) -> Result<Vec<u8>, ImageError> {
    let data: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [(x * 255 / w) as u8, (y * 255 / h) as u8, ((x ^ y) & 0xFF) as u8]))
        .collect();
    let encode = || {
        let mut c = Compress::new(ColorSpace::JCS_RGB);
        c.set_size(w as usize, h as usize);
        c.set_quality(85.0);
        c.set_progressive_mode();
        let mut s = c.start_compress(Vec::new())?;
        s.write_scanlines(&data)?;
        s.finish()
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode))
        .map_err(|_| ImageError::Internal("JPEG encode panicked".into()))?
        .map_err(|e| ImageError::Internal(format!("JPEG encode: {e}")))
}

/// `jpeg` with its last scan (header and entropy data) repeated until it has `scans` more.
pub fn repeat_last_scan(jpeg: &[u8], scans: usize) -> Option<Vec<u8>> {
    let last = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA])?;
    let end = jpeg.len().checked_sub(2).filter(|&e| jpeg[e..] == [0xFF, 0xD9] && e > last)?;
    let mut out = jpeg[..end].to_vec();
    out.reserve((end - last) * scans + 2);
    for _ in 0..scans {
        out.extend_from_slice(&jpeg[last..end]);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    Some(out)
}

/// 9 bytes: a PNG signature and one more byte.
pub fn tiny_png() -> Vec<u8> {
    b"\x89PNG\r\n\x1a\n\0".to_vec()
}

/// A valid `w`×`h` 8-bit RGB PNG of zeros, written row by row (never whole in memory): a
/// 7000×7000 one is about 150 KB on the wire and 147 MB decoded.
pub fn zero_png(w: u32, h: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header()?;
    let mut stream = writer.stream_writer()?;
    let row = vec![0u8; w as usize * 3];
    for _ in 0..h {
        stream.write_all(&row)?;
    }
    stream.finish()?;
    drop(writer);
    Ok(out)
}

/// The first half of `file`.
pub fn truncated(file: &[u8]) -> Vec<u8> {
    file[..file.len() / 2].to_vec()
}
