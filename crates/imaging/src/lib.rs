//! # jewelshot-imaging
//!
//! Shrinks photos to what a storefront needs — longest side ≤ 1920 px, JPEG quality 80, at most
//! 500 KB — as fast as libvips: JPEGs are decoded at a reduced DCT scale (libjpeg-turbo's SIMD
//! code via mozjpeg) and resampled with fast_image_resize's SIMD Lanczos3. EXIF orientation is
//! applied, metadata (GPS, camera) stripped, the ICC profile kept so colour does not shift.
//! Images with transparency stay transparent (WebP); everything else becomes JPEG.
//!
//! Bounded by construction: the header is read first and an image over the pixel limit is
//! refused before any pixel is allocated; bodies over the byte limit are refused unread.
//!
//! ## Layout
//! - [`probe()`] — format and dimensions from the header only.
//! - [`compress()`] — the whole pipeline; [`Limits`] in, [`Compressed`] out.
//! - `jpeg` — scaled decode, encode, lossless metadata strip. `png` — chunk strip.
//! - `raster` — pixels, resize, orientation, CMYK → RGB.
//! - `stream` — the JPEG fast path: decode, resample and encode overlapped on threads.
//! - `progressive` — our two-thread progressive JPEG decoder (libjpeg takes everything else).
//! - `inspect` — the container walked before any decoder runs (scans, GIF frames, animation,
//!   decoded size): image bombs are refused there.
//! - `bombs` (hidden) — hostile files built on demand, for the tests that send them.
//! - `harness` (hidden) — that decoder behind the same gate as `compress`, for the fuzz harness
//!   and the corpus test in `tests/it_progressive.rs`.

#[doc(hidden)]
pub mod bombs;
#[doc(hidden)]
pub mod harness;
mod inspect;
mod jpeg;
mod png;
mod probe;
mod progressive;
mod raster;
mod stream;

use std::{borrow::Cow, io::Cursor};

use image::{DynamicImage, ImageDecoder};
use serde::{Deserialize, Serialize};

pub use probe::{probe, Format, Probe};
use raster::{fit, Raster};

/// What "small enough" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Longest side of the output, in pixels (never upscaled).
    pub max_side: u32,
    /// JPEG/WebP quality to start from.
    pub quality: u8,
    /// Lowest quality tried before the dimensions are reduced instead.
    pub min_quality: u8,
    /// Largest output, in bytes.
    pub max_output_bytes: usize,
    /// Largest input accepted, in bytes (checked before reading further).
    pub max_input_bytes: usize,
    /// Largest input accepted, in pixels (checked from the header, before decoding; for a GIF,
    /// every frame too).
    pub max_pixels: u64,
    /// Most scans a JPEG may have (each progressive scan is a pass over the whole image; photos
    /// have at most a few dozen).
    pub max_scans: u32,
    /// Most bytes a whole decode of a PNG, WebP or GIF may take (its buffer and the 8-bit copy),
    /// estimated from the header before decoding and enforced on the decoder's allocations.
    pub max_decode_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_side: 1920,
            quality: 80,
            min_quality: 60,
            max_output_bytes: 500 * 1000,
            max_input_bytes: 25 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_scans: 100,
            max_decode_bytes: 96 * 1024 * 1024,
        }
    }
}

/// Why an image was refused. Every variant is the client's input except `Internal`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("the body is empty")]
    Empty,
    #[error("the image is {len} bytes; at most {limit} are accepted")]
    TooManyBytes { len: usize, limit: usize },
    #[error("the image is {width}x{height} pixels; at most {limit} pixels are accepted")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error(
        "decoding this {} would take {} MB; at most {} MB are allowed for PNG, WebP and GIF images",
        format.name(), needed / 1_000_000, limit / 1_000_000
    )]
    TooLargeToDecode { format: Format, needed: u64, limit: u64 },
    #[error("the image is too complex to decode: {0}")]
    TooComplex(String),
    #[error("the body is not a JPEG, PNG, WebP or GIF image")]
    NotAnImage,
    #[error("{0}")]
    UnsupportedFormat(String),
    #[error("the image is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("image processing failed: {0}")]
    Internal(String),
}

impl ImageError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty | Self::Corrupt(_) => "invalid-image",
            Self::TooManyBytes { .. } => "payload-too-large",
            Self::TooManyPixels { .. } | Self::TooLargeToDecode { .. } => "image-too-large",
            Self::TooComplex(_) => "image-too-complex",
            Self::NotAnImage => "not-an-image",
            Self::UnsupportedFormat(_) => "unsupported-image-format",
            Self::Internal(_) => "internal-error",
        }
    }

    /// The HTTP status this maps to.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Empty
            | Self::Corrupt(_)
            | Self::TooManyPixels { .. }
            | Self::TooLargeToDecode { .. }
            | Self::TooComplex(_) => 400,
            Self::TooManyBytes { .. } => 413,
            Self::NotAnImage | Self::UnsupportedFormat(_) => 415,
            Self::Internal(_) => 500,
        }
    }
}

/// The result of [`compress`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compressed {
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    /// File extension for the content type.
    pub extension: &'static str,
    pub width: u32,
    pub height: u32,
    pub original_bytes: usize,
    pub original_width: u32,
    pub original_height: u32,
    pub input_format: Format,
    /// Quality used when re-encoded; `None` when the input was kept.
    pub quality: Option<u8>,
    /// The input (with metadata stripped) was smaller than any re-encoding and within limits.
    pub kept_original: bool,
}

/// Shrink `input` to `limits`. CPU-bound: call it from a blocking pool, not an async thread.
pub fn compress(input: &[u8], limits: &Limits) -> Result<Compressed, ImageError> {
    let (p, shape) = admit(input, limits)?;
    let trace = std::env::var_os("JEWELSHOT_IMAGING_TRACE").is_some();
    if p.format == Format::Jpeg {
        if let Some(done) = stream::compress_jpeg(input, limits)? {
            if done.fitted {
                return Ok(Compressed {
                    width: done.width,
                    height: done.height,
                    content_type: "image/jpeg",
                    extension: "jpg",
                    bytes: done.bytes,
                    original_bytes: input.len(),
                    original_width: p.width,
                    original_height: p.height,
                    input_format: p.format,
                    quality: Some(done.quality),
                    kept_original: false,
                });
            }
            // Rotated (encode now, turned upright band by band), or nothing fitted at the
            // qualities tried (go on from the resampled image, already at the target size).
            let pr = Probe { width: done.raster.width, height: done.raster.height, ..p };
            let mut out =
                fit_loop(done.raster, done.orientation, done.icc, None, &pr, input.len(), limits, done.quality, trace)?;
            (out.original_width, out.original_height) = (p.width, p.height);
            return Ok(out);
        }
    }
    let t0 = std::time::Instant::now();
    let target_long = p.width.max(p.height).min(limits.max_side);
    let (decoded, orientation, icc, stripped_input) = match p.format {
        Format::Jpeg => {
            let (r, meta) = jpeg::decode(input, target_long)?;
            // The input can be kept only if it needs no pixel change (upright, RGB/gray).
            let keepable = meta.orientation <= 1 && !meta.cmyk;
            let stripped = keepable.then(|| jpeg::strip_metadata(input)).flatten();
            (r, meta.orientation, meta.icc, stripped.map(|b| (b, "image/jpeg", "jpg")))
        }
        _ => {
            let (r, orientation, icc) = decode_other(input, &p, shape, limits)?;
            let stripped = (p.format == Format::Png && orientation <= 1)
                .then(|| png::strip_metadata(input))
                .flatten()
                .map(|b| (b, "image/png", "png"));
            (r, orientation, icc, stripped)
        }
    };
    if trace {
        eprintln!(
            "decode {}x{} → {}x{}: {:.1} ms",
            p.width,
            p.height,
            decoded.width,
            decoded.height,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    fit_loop(decoded, orientation, icc, stripped_input, &p, input.len(), limits, limits.quality, trace)
}

/// The checks made before anything is decoded: the byte limit, the pixel limit from the header,
/// then the file's structure (scans, frames, animation, decoded size: `inspect`).
fn admit(input: &[u8], limits: &Limits) -> Result<(Probe, inspect::Shape), ImageError> {
    if input.len() > limits.max_input_bytes {
        return Err(ImageError::TooManyBytes { len: input.len(), limit: limits.max_input_bytes });
    }
    let p = probe(input)?;
    let pixels = u64::from(p.width) * u64::from(p.height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels { width: p.width, height: p.height, limit: limits.max_pixels });
    }
    let shape = inspect::inspect(input, &p, limits)?;
    Ok((p, shape))
}

/// Resize, orient and encode `decoded` until it fits the limits: quality first, then dimensions.
#[allow(clippy::too_many_arguments)]
fn fit_loop(
    decoded: Raster,
    orientation: u16,
    icc: Option<Vec<u8>>,
    stripped_input: Option<(Vec<u8>, &'static str, &'static str)>,
    p: &Probe,
    input_len: usize,
    limits: &Limits,
    start_quality: u8,
    trace: bool,
) -> Result<Compressed, ImageError> {
    let transparent = decoded.has_transparency();
    let decoded = if transparent { decoded } else { decoded.without_alpha() };

    // Orientation swaps the axes for 5-8; the size limit applies to the upright image.
    let (uw, uh) = if orientation >= 5 { (p.height, p.width) } else { (p.width, p.height) };
    let (tw, th) = fit(uw, uh, limits.max_side);
    let (dw, dh) = if orientation >= 5 { (th, tw) } else { (tw, th) };

    let mut long = tw.max(th);
    let mut quality = start_quality;
    loop {
        let (rw, rh) = fit(dw, dh, long);
        let t1 = std::time::Instant::now();
        let resized = if (rw, rh) == (decoded.width, decoded.height) {
            Cow::Borrowed(&decoded)
        } else {
            Cow::Owned(decoded.resize(rw, rh)?)
        };
        if trace {
            eprintln!("resize → {rw}x{rh}: {:.1} ms", t1.elapsed().as_secs_f64() * 1e3);
        }
        let t2 = std::time::Instant::now();
        let (ow, oh) = resized.upright_size(orientation);
        let bytes = if transparent {
            encode_webp(&resized.into_owned().oriented(orientation), quality)?
        } else {
            jpeg::encode(&resized, orientation, quality, icc.as_deref())?
        };
        if trace {
            eprintln!(
                "encode q{quality}, orientation {orientation}: {:.1} ms, {} B",
                t2.elapsed().as_secs_f64() * 1e3,
                bytes.len()
            );
        }
        if bytes.len() <= limits.max_output_bytes || long <= 64 {
            let within = long == tw.max(th) && (p.width, p.height) == (dw, dh);
            // Keep the input when it is already within every limit and smaller than ours.
            if let Some((orig, ct, ext)) = stripped_input.filter(|(b, ct, _)| {
                within
                    && b.len() <= limits.max_output_bytes
                    && b.len() <= bytes.len()
                    && (!transparent || *ct == "image/png")
            }) {
                return Ok(Compressed {
                    width: uw,
                    height: uh,
                    content_type: ct,
                    extension: ext,
                    bytes: orig,
                    original_bytes: input_len,
                    original_width: p.width,
                    original_height: p.height,
                    input_format: p.format,
                    quality: None,
                    kept_original: true,
                });
            }
            let (content_type, extension) = if transparent { ("image/webp", "webp") } else { ("image/jpeg", "jpg") };
            return Ok(Compressed {
                width: ow,
                height: oh,
                content_type,
                extension,
                bytes,
                original_bytes: input_len,
                original_width: p.width,
                original_height: p.height,
                input_format: p.format,
                quality: Some(quality),
                kept_original: false,
            });
        }
        // Too big: lower the quality first (to the floor), then the dimensions.
        if quality > limits.min_quality {
            quality = next_quality(quality, limits.min_quality, bytes.len(), limits.max_output_bytes);
        } else {
            long = (f64::from(long) * 0.9) as u32;
        }
    }
}

/// Relative JPEG size against quality for photographs at libjpeg's standard tables (measured on
/// the fixtures; the curve is much the same for any natural photo): size(q) / size(80).
const SIZE_AT: [(u8, f64); 7] = [(80, 1.0), (75, 0.87), (70, 0.78), (65, 0.71), (60, 0.65), (55, 0.60), (50, 0.56)];

pub(crate) fn relative_size(q: u8) -> f64 {
    SIZE_AT.iter().find(|(at, _)| *at <= q).map_or(0.5, |(_, r)| *r)
}

/// The highest quality below `current` predicted to fit (with 3 % headroom), so an oversized
/// image usually needs one more encode instead of one per step.
pub(crate) fn next_quality(current: u8, floor: u8, size: usize, max: usize) -> u8 {
    let needed = max as f64 * 0.97 / size as f64 * relative_size(current);
    let mut q = current.saturating_sub(5).max(floor);
    while q > floor && relative_size(q) > needed {
        q = q.saturating_sub(5).max(floor);
    }
    q
}

/// PNG, WebP and GIF through the `image` crate, with its limits set from ours: the dimensions
/// the header gave and the decode size `inspect` admitted (animations were refused there).
fn decode_other(
    input: &[u8],
    p: &Probe,
    shape: inspect::Shape,
    limits: &Limits,
) -> Result<(Raster, u16, Option<Vec<u8>>), ImageError> {
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => ImageError::Corrupt(format!("decoder limit: {l}")),
        image::ImageError::Unsupported(u) => ImageError::UnsupportedFormat(u.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    };
    let mut reader = image::ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(p.width);
    decoder_limits.max_image_height = Some(p.height);
    decoder_limits.max_alloc = Some(shape.decode_bytes.max(1 << 20).min(limits.max_decode_bytes));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let icc = decoder.icc_profile().ok().flatten();
    let orientation = match decoder.orientation() {
        Ok(o) => orientation_number(o),
        Err(_) => 1,
    };
    let has_alpha = decoder.color_type().has_alpha();
    let img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let raster = if has_alpha {
        let i = img.into_rgba8();
        Raster { width: i.width(), height: i.height(), channels: 4, data: i.into_raw() }
    } else {
        let i = img.into_rgb8();
        Raster { width: i.width(), height: i.height(), channels: 3, data: i.into_raw() }
    };
    Ok((raster, orientation, icc))
}

fn orientation_number(o: image::metadata::Orientation) -> u16 {
    use image::metadata::Orientation as O;
    match o {
        O::NoTransforms => 1,
        O::FlipHorizontal => 2,
        O::Rotate180 => 3,
        O::FlipVertical => 4,
        O::Rotate90FlipH => 5,
        O::Rotate90 => 6,
        O::Rotate270FlipH => 7,
        O::Rotate270 => 8,
    }
}

fn encode_webp(r: &Raster, quality: u8) -> Result<Vec<u8>, ImageError> {
    let enc = match r.channels {
        4 => webp::Encoder::from_rgba(&r.data, r.width, r.height),
        _ => webp::Encoder::from_rgb(&r.data, r.width, r.height),
    };
    let mem = enc
        .encode_simple(false, f32::from(quality))
        .map_err(|e| ImageError::Internal(format!("WebP encode: {e:?}")))?;
    Ok(mem.to_vec())
}

/// Decode a progressive JPEG at scale `n`/8 with the two-thread decoder: (width, height, RGB
/// or gray rows), or `None` if the file is not one it takes. For tests and the examples.
#[doc(hidden)]
pub fn decode_progressive(input: &[u8], n: usize) -> Option<(usize, usize, Vec<u8>)> {
    let p = progressive::Progressive::parse(input).ok()??;
    let (w, h) = p.scaled(n);
    let mut px = Vec::new();
    progressive::decode(&p, n, 64, Vec::new, |r| {
        px.extend_from_slice(&r);
        true
    })
    .ok()?;
    Some((w, h, px))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicts_the_quality_that_fits() {
        assert_eq!(next_quality(80, 60, 673_000, 500_000), 65); // 500/673 = 0.74 → q65 (0.71)
        assert_eq!(next_quality(80, 60, 520_000, 500_000), 75);
        assert_eq!(next_quality(80, 60, 2_000_000, 500_000), 60, "never below the floor");
    }
}
