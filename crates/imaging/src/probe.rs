//! Format and dimensions from the first bytes, before anything is decoded — so a 1 KB file that
//! claims 60000x60000 is refused without allocating a pixel.

use serde::Serialize;

use crate::ImageError;

/// Input formats we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl Format {
    /// The format's name as people write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Webp => "WebP",
            Self::Gif => "GIF",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
        }
    }
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    pub width: u32,
    pub height: u32,
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?])))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, 0]))
}

/// Identify the format and read the dimensions from the header.
pub fn probe(b: &[u8]) -> Result<Probe, ImageError> {
    if b.is_empty() {
        return Err(ImageError::Empty);
    }
    let corrupt = |what: &str| ImageError::Corrupt(format!("{what} header is truncated or corrupt"));
    let (format, dims) = if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        (Format::Jpeg, jpeg_dims(b).ok_or_else(|| corrupt("JPEG"))?)
    } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        let dims = (b.get(12..16) == Some(b"IHDR"))
            .then(|| Some((be32(b, 16)?, be32(b, 20)?)))
            .flatten()
            .ok_or_else(|| corrupt("PNG"))?;
        (Format::Png, dims)
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        (Format::Webp, webp_dims(b).ok_or_else(|| corrupt("WebP"))?)
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        (Format::Gif, (|| Some((le16(b, 6)?, le16(b, 8)?)))().ok_or_else(|| corrupt("GIF"))?)
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return Err(ImageError::UnsupportedFormat("HEIC/AVIF (ISO-BMFF) images are not supported yet".into()));
    } else {
        return Err(ImageError::NotAnImage);
    };
    let (width, height) = dims;
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt("the image has a zero dimension".into()));
    }
    Ok(Probe { format, width, height })
}

/// Walk JPEG markers to the first start-of-frame.
fn jpeg_dims(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    loop {
        while *b.get(i)? != 0xFF {
            i += 1; // tolerate stray bytes between segments
        }
        while *b.get(i)? == 0xFF {
            i += 1;
        }
        let m = *b.get(i)?;
        i += 1;
        match m {
            // FF 00 is no marker (libjpeg skips it while looking for one); these have no length.
            0x00 | 0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 | 0xDA => return None, // end of image or scan data before any frame header
            0xC0..=0xCF if m != 0xC4 && m != 0xC8 && m != 0xCC => {
                let h = be16(b, i + 3)?;
                let w = be16(b, i + 5)?;
                return Some((w, h));
            }
            _ => i += be16(b, i)? as usize,
        }
    }
}

fn webp_dims(b: &[u8]) -> Option<(u32, u32)> {
    match b.get(12..16)? {
        b"VP8 " => {
            // Frame tag (3 bytes) then the start code 9d 01 2a.
            (b.get(23..26)? == [0x9d, 0x01, 0x2a]).then_some(())?;
            Some((le16(b, 26)? & 0x3FFF, le16(b, 28)? & 0x3FFF))
        }
        b"VP8L" => {
            (*b.get(20)? == 0x2f).then_some(())?;
            let bits = u32::from_le_bytes([*b.get(21)?, *b.get(22)?, *b.get(23)?, *b.get(24)?]);
            Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        b"VP8X" => Some((le24(b, 24)? + 1, le24(b, 27)? + 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_png_header_without_decoding() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&60000u32.to_be_bytes());
        png.extend_from_slice(&60000u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        assert_eq!(probe(&png).expect("probe"), Probe { format: Format::Png, width: 60000, height: 60000 });
    }

    #[test]
    fn ff00_is_no_marker_as_for_libjpeg() {
        // Read as a segment with a length, FF 00 00 05 would skip the frame header after it.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0x00, 0x00, 0x05];
        jpeg.extend_from_slice(&[0xFF, 0xC2, 0x00, 0x0B, 0x08, 0x0B, 0xB8, 0x0F, 0xA0, 0x01, 0x01, 0x11, 0x00]);
        let p = probe(&jpeg).expect("probe");
        assert_eq!((p.width, p.height), (4000, 3000));
    }

    #[test]
    fn refuses_what_is_not_an_image() {
        assert!(matches!(probe(b""), Err(ImageError::Empty)));
        assert!(matches!(probe(b"hello, this is text"), Err(ImageError::NotAnImage)));
        assert!(matches!(probe(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00]), Err(ImageError::Corrupt(_))));
        assert!(matches!(probe(b"\0\0\0\x18ftypheic\0\0\0\0"), Err(ImageError::UnsupportedFormat(_))));
    }
}
