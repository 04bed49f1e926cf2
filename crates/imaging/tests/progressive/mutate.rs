//! JPEG-aware mutations: bytes and bits anywhere, but mostly the structure a decoder trusts —
//! segment lengths, frame and scan headers, Huffman and quantization tables, restart intervals
//! and markers, scan order and count — so that few mutants die at the first length check.

use fastrand::Rng;

/// One marker segment, or one scan: its header and the entropy-coded data after it.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub marker: u8,
    /// The marker's 0xFF.
    pub start: usize,
    /// Where the payload starts (after the length), or `start + 2` for parameterless markers.
    pub body: usize,
    /// Past the segment (for a scan, past its entropy-coded data).
    pub end: usize,
}

/// The file's segments in order, walked the way libjpeg does (garbage between segments skipped).
pub fn segments(b: &[u8]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut i = 2;
    while i + 1 < b.len() {
        if b[i] != 0xFF {
            i += 1;
            continue;
        }
        let m = b[i + 1];
        if m == 0xFF || m == 0 {
            i += 1;
            continue;
        }
        if m == 0xD9 || m == 0x01 || (0xD0..=0xD8).contains(&m) {
            out.push(Segment { marker: m, start: i, body: i + 2, end: i + 2 });
            if m == 0xD9 {
                break;
            }
            i += 2;
            continue;
        }
        let Some(len) = b.get(i + 2..i + 4).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { break };
        let end = (i + 2 + len.max(2)).min(b.len());
        if m == 0xDA {
            let mut j = end;
            while j + 1 < b.len() && !(b[j] == 0xFF && b[j + 1] != 0 && !(0xD0..=0xD7).contains(&b[j + 1])) {
                j += 1;
            }
            let data_end = if j + 1 < b.len() { j } else { b.len() };
            out.push(Segment { marker: m, start: i, body: i + 4, end: data_end });
            i = data_end;
        } else {
            out.push(Segment { marker: m, start: i, body: i + 4, end });
            i = end;
        }
    }
    out
}

fn pick<T: Copy>(rng: &mut Rng, xs: &[T]) -> T {
    xs[rng.usize(..xs.len())]
}

fn segment_of(rng: &mut Rng, b: &[u8], markers: &[u8]) -> Option<Segment> {
    let segs: Vec<Segment> =
        segments(b).into_iter().filter(|s| markers.is_empty() || markers.contains(&s.marker)).collect();
    (!segs.is_empty()).then(|| segs[rng.usize(..segs.len())])
}

fn set_be16(b: &mut [u8], at: usize, v: u16) {
    if at + 1 < b.len() {
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

const INTERESTING_16: [u16; 16] = [0, 1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 2047, 4096, 65500, 65501, 65535];

/// Apply one to four mutations; `donor` is another input to splice from.
pub fn mutate(rng: &mut Rng, input: &[u8], donor: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let count = 1 + (rng.u32(..8).leading_zeros().saturating_sub(29) as usize).min(3);
    for _ in 0..count {
        one(rng, &mut b, donor);
        if b.len() > 8 << 20 {
            b.truncate(8 << 20);
        }
    }
    b
}

/// A position inside some scan's entropy-coded data, if there is one.
fn in_scan_data(rng: &mut Rng, b: &[u8]) -> Option<usize> {
    let s = segment_of(rng, b, &[0xDA])?;
    let from = (s.body + usize::from(u16::from_be_bytes([b[s.body - 2], b[s.body - 1]]))).saturating_sub(2);
    (from < s.end).then(|| rng.usize(from..s.end))
}

fn one(rng: &mut Rng, b: &mut Vec<u8>, donor: &[u8]) {
    if b.len() < 4 {
        b.extend_from_slice(&[0xFF, 0xD9]);
        return;
    }
    match rng.u32(..100) {
        // Bit flips, anywhere or in scan data.
        0..=9 => {
            for _ in 0..rng.usize(1..=8) {
                let i = rng.usize(2..b.len());
                b[i] ^= 1 << rng.u32(..8);
            }
        }
        10..=19 => {
            for _ in 0..rng.usize(1..=4) {
                if let Some(i) = in_scan_data(rng, b) {
                    b[i] ^= 1 << rng.u32(..8);
                }
            }
        }
        // Byte replacement with values that mean something to a JPEG parser.
        20..=27 => {
            let i = rng.usize(2..b.len());
            b[i] = pick(rng, &[0x00u8, 0x01, 0x0F, 0x10, 0x11, 0x22, 0x7F, 0x80, 0xC2, 0xD0, 0xD9, 0xDA, 0xFE, 0xFF])
                .wrapping_add(if rng.bool() { 0 } else { rng.u8(..) });
        }
        // Overwrite a run of scan data with noise (stuffing and markers included).
        28..=32 => {
            if let Some(i) = in_scan_data(rng, b) {
                let end = (i + rng.usize(1..=64)).min(b.len() - 2);
                for x in b.iter_mut().take(end).skip(i) {
                    *x = rng.u8(..);
                }
            }
        }
        // Insert or delete bytes.
        33..=37 => {
            let i = rng.usize(2..b.len());
            let ins: Vec<u8> = match rng.u32(..6) {
                0 => vec![0xFF, 0x00],
                1 => vec![0xFF, 0xFF, 0x00],
                2 => vec![0xFF, 0xD0 + rng.u8(..8)],
                3 => vec![0xFF, rng.u8(..)],
                _ => (0..rng.usize(1..=16)).map(|_| rng.u8(..)).collect(),
            };
            b.splice(i..i, ins);
        }
        38..=41 => {
            let i = rng.usize(2..b.len());
            let end = (i + rng.usize(1..=64)).min(b.len());
            b.drain(i..end);
        }
        // Truncation, with or without an end-of-image marker after it.
        42..=47 => {
            let at = rng.usize(2..b.len());
            b.truncate(at);
            if rng.u32(..4) != 0 {
                b.extend_from_slice(&[0xFF, 0xD9]);
            }
        }
        // Duplicate a segment: a few times, or very many (table spam, scan-count blowup).
        48..=53 => {
            if let Some(s) = segment_of(rng, b, &[]) {
                let seg = b[s.start..s.end].to_vec();
                let times = if rng.u32(..5) == 0 { rng.usize(50..4000) } else { rng.usize(1..=3) };
                let times = times.min((16 << 20) / seg.len().max(1));
                let copies: Vec<u8> = seg.iter().copied().cycle().take(seg.len() * times).collect();
                b.splice(s.end..s.end, copies);
            }
        }
        // Remove or swap segments.
        54..=57 => {
            if let Some(s) = segment_of(rng, b, &[]) {
                b.drain(s.start..s.end);
            }
        }
        58..=60 => {
            let segs = segments(b);
            if segs.len() >= 2 {
                let i = rng.usize(..segs.len() - 1);
                let (x, y) = (segs[i], segs[i + 1]);
                let mut swapped = b[y.start..y.end].to_vec();
                swapped.extend_from_slice(&b[x.start..x.end]);
                b.splice(x.start..y.end, swapped);
            }
        }
        // Inject a marker at a segment boundary.
        61..=66 => {
            let at = segment_of(rng, b, &[]).map_or(2, |s| if rng.bool() { s.start } else { s.end });
            let ins: Vec<u8> = match rng.u32(..9) {
                0 => vec![0xFF, 0xD0 + rng.u8(..8)],
                1 => vec![0xFF, 0x01],
                2 => vec![0xFF, 0xD8],
                3 => vec![0xFF, 0xD9],
                4 => vec![0xFF, 0x00, rng.u8(..), rng.u8(..)],
                5 => {
                    let v = pick(rng, &INTERESTING_16);
                    let mut d = vec![0xFF, 0xDD, 0x00, 0x04];
                    d.extend_from_slice(&v.to_be_bytes());
                    d
                }
                6 => vec![0xFF, 0xFE, 0x00, 0x02],
                7 => vec![0xFF, 0xC4, 0x00, 0x13, rng.u8(..0x14)]
                    .into_iter()
                    .chain((0..16).map(|_| if rng.u32(..4) == 0 { rng.u8(..) } else { 0 }))
                    .collect(),
                _ => vec![0xFF, rng.u8(..)],
            };
            let at = at.min(b.len());
            b.splice(at..at, ins);
        }
        // Frame header: sizes, component count, sampling, tables, precision.
        67..=72 => {
            if let Some(s) = segment_of(rng, b, &[0xC0, 0xC1, 0xC2]) {
                let p = s.body;
                match rng.u32(..6) {
                    0 => set_be16(b, p + 1, pick(rng, &INTERESTING_16)),
                    1 => set_be16(b, p + 3, pick(rng, &INTERESTING_16)),
                    2 => set_be16(b, p + 1 + 2 * rng.usize(..2), rng.u16(..)),
                    3 => {
                        if let Some(x) = b.get_mut(p + 5) {
                            *x = rng.u8(..5);
                        }
                    }
                    4 => {
                        let k = p + 6 + 3 * rng.usize(..3) + rng.usize(..3);
                        if let Some(x) = b.get_mut(k) {
                            *x = if rng.bool() { rng.u8(..0x45) } else { rng.u8(..) };
                        }
                    }
                    _ => {
                        if let Some(x) = b.get_mut(p) {
                            *x = pick(rng, &[0, 8, 12, 16, 7]);
                        }
                    }
                }
                if rng.u32(..8) == 0 {
                    b[s.start + 1] = pick(rng, &[0xC0, 0xC1, 0xC2, 0xC3, 0xCA]);
                }
            }
        }
        // Scan header: components, table selectors, spectral band, successive approximation.
        73..=80 => {
            if let Some(s) = segment_of(rng, b, &[0xDA]) {
                let p = s.body;
                let ns = usize::from(b.get(p).copied().unwrap_or(0)).min(4);
                let tail = p + 1 + 2 * ns;
                match rng.u32(..6) {
                    0 => {
                        if let Some(x) = b.get_mut(tail) {
                            *x = if rng.bool() { rng.u8(..64) } else { rng.u8(..) };
                        }
                    }
                    1 => {
                        if let Some(x) = b.get_mut(tail + 1) {
                            *x = if rng.bool() { rng.u8(..64) } else { rng.u8(..) };
                        }
                    }
                    2 => {
                        if let Some(x) = b.get_mut(tail + 2) {
                            let (ah, al) = (*x >> 4, *x & 15);
                            *x = match rng.u32(..3) {
                                0 => (ah.wrapping_add(1) & 15) << 4 | al,
                                1 => ah << 4 | (al.wrapping_add(1) & 15),
                                _ => rng.u8(..),
                            };
                        }
                    }
                    3 => {
                        if ns > 0 {
                            let k = p + 1 + 2 * rng.usize(..ns) + rng.usize(..2);
                            if let Some(x) = b.get_mut(k) {
                                *x = if rng.bool() { rng.u8(..5) } else { rng.u8(..) };
                            }
                        }
                    }
                    4 => {
                        if let Some(x) = b.get_mut(p) {
                            *x = rng.u8(..6);
                        }
                    }
                    _ => {
                        // Many copies of this scan: more scans than the decoder takes, or just under.
                        let seg = b[s.start..s.end].to_vec();
                        let times = pick(rng, &[60usize, 98, 99, 100, 150, 1000]);
                        if seg.len() * times < 16 << 20 {
                            let copies: Vec<u8> = seg.iter().copied().cycle().take(seg.len() * times).collect();
                            b.splice(s.end..s.end, copies);
                        }
                    }
                }
            }
        }
        // Huffman tables: counts (too many codes for their lengths), ids, symbols.
        81..=86 => {
            if let Some(s) = segment_of(rng, b, &[0xC4]) {
                let p = s.body;
                match rng.u32(..4) {
                    0 => {
                        if let Some(x) = b.get_mut(p) {
                            *x = pick(rng, &[0x00, 0x01, 0x10, 0x11, 0x04, 0x14, 0x20, 0x13]);
                        }
                    }
                    1 => {
                        let k = p + 1 + rng.usize(..16);
                        if k < s.end {
                            b[k] = b[k].wrapping_add(pick(rng, &[1, 2, 255, 128]));
                        }
                    }
                    _ => {
                        if s.end > p + 17 {
                            let k = rng.usize(p + 17..s.end);
                            b[k] = rng.u8(..);
                        }
                    }
                }
            }
        }
        // Quantization tables: precision, zeros, extremes.
        87..=89 => {
            if let Some(s) = segment_of(rng, b, &[0xDB]) {
                if s.end > s.body + 1 {
                    let k = rng.usize(s.body..s.end);
                    b[k] = pick(rng, &[0x00, 0x01, 0x10, 0x11, 0xFF, 0x80]);
                }
            }
        }
        // Restart interval: set one (often an awkward one), or corrupt the restart markers.
        90..=93 => {
            let v = pick(rng, &[0u16, 1, 1, 2, 3, 5, 7, 64, 65535]);
            if let Some(s) = segment_of(rng, b, &[0xDD]) {
                set_be16(b, s.body, v);
            } else if let Some(s) = segment_of(rng, b, &[0xDA]) {
                let mut dri = vec![0xFF, 0xDD, 0x00, 0x04];
                dri.extend_from_slice(&v.to_be_bytes());
                b.splice(s.start..s.start, dri);
            }
        }
        94..=95 => {
            let rst: Vec<usize> = b
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1]))
                .map(|(i, _)| i)
                .collect();
            if !rst.is_empty() {
                let i = rst[rng.usize(..rst.len())];
                match rng.u32(..3) {
                    0 => b[i + 1] = 0xD0 + rng.u8(..8),
                    1 => {
                        b.drain(i..i + 2);
                    }
                    _ => {
                        let m = [0xFF, b[i + 1]];
                        b.splice(i..i, m);
                    }
                }
            }
        }
        // Splice a segment from another input.
        _ => {
            if let (Some(s), Some(d)) = (segment_of(rng, b, &[]), segment_of(rng, donor, &[])) {
                let seg = donor[d.start..d.end].to_vec();
                b.splice(s.start..s.end, seg);
            }
        }
    }
}

/// The same file with the frame `height` rows tall: scans then decode only their first rows and
/// skip the rest of their data, so a multi-megapixel photo is as cheap to fuzz as a thumbnail.
pub fn with_height(b: &[u8], height: u16) -> Vec<u8> {
    let mut out = b.to_vec();
    for s in segments(b) {
        if matches!(s.marker, 0xC0..=0xC2) {
            set_be16(&mut out, s.body + 1, height);
        }
    }
    out
}
