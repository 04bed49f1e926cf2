//! PNG metadata stripping without re-encoding: keep the chunks that define the pixels and their
//! colour, drop text, EXIF and timestamps.

/// Chunks kept: image data, palette, transparency and colour description.
const KEEP: &[&[u8; 4]] =
    &[b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"sBIT", b"pHYs"];

pub fn strip_metadata(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = b.get(..8)?.to_vec();
    let mut i = 8;
    while i < b.len() {
        let len = u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize;
        let kind = b.get(i + 4..i + 8)?;
        let end = i.checked_add(12 + len)?;
        let chunk = b.get(i..end)?;
        if KEEP.iter().any(|k| &k[..] == kind) {
            out.extend_from_slice(chunk);
        }
        if kind == b"IEND" {
            return Some(out);
        }
        i = end;
    }
    None
}
