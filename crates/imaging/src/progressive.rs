//! Progressive JPEG decoding on both cores.
//!
//! libjpeg-turbo entropy-decodes every scan of a progressive JPEG, one after another on one
//! thread, before it returns the first row; without restart markers no scan can be split. But a
//! scan needs only the rows that earlier scans of the same component and band have finished —
//! the refinement scan's block `b` needs the first scans' block `b`, nothing else. So each scan
//! here is a cursor over its own bitstream, the scans advance as a wavefront a few block rows
//! apart, and two threads take whichever runnable scan is furthest behind. Rows that every scan
//! has passed are dequantized and run through a scaled inverse DCT (the top-left N×N
//! coefficients, as libjpeg's `scale`), converted to RGB and handed on in chunks while the
//! entropy decoding goes on.
//!
//! Scope: 8-bit progressive Huffman JPEGs with 1 (gray) or 3 (YCbCr) components — what cameras
//! and `cjpeg -progressive` write. Anything else (`parse` answers `None`) goes to libjpeg.

use std::sync::{
    atomic::{AtomicBool, AtomicI16, AtomicU64, AtomicUsize, Ordering},
    Condvar, Mutex,
};

/// Coefficient position of the k-th zigzag entry (natural, row-major order).
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// Code lengths up to this many bits decode with one table lookup.
const LOOKUP_BITS: u32 = 9;

/// More scans than any encoder's script (libjpeg's has 10, mozjpeg's up to ~60): such a file is
/// left to libjpeg, which reads scans one at a time, so a hostile file cannot make the
/// dependency lists (quadratic in the scan count) large.
const MAX_SCANS: usize = 100;

/// Block rows a thread decodes of one scan before it looks for a scan further behind.
const CHUNK_ROWS: usize = 4;

#[derive(Debug)]
pub(crate) struct Corrupt(pub String);

fn corrupt<T>(msg: impl Into<String>) -> Result<T, Corrupt> {
    Err(Corrupt(msg.into()))
}

struct Huffman {
    /// `(length << 8) | symbol` for codes of at most `LOOKUP_BITS`; 0 when longer.
    lookup: Vec<u16>,
    /// Largest code of each length (index 1..=16), -1 when none.
    maxcode: [i32; 18],
    /// `values` index minus the first code, per length.
    offset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, Corrupt> {
        let total: usize = counts.iter().map(|c| usize::from(*c)).sum();
        if total > values.len() || total > 256 {
            return corrupt("Huffman table lists more codes than values");
        }
        let mut lookup = vec![0u16; 1 << LOOKUP_BITS];
        let mut maxcode = [-1i32; 18];
        let mut offset = [0i32; 17];
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16u32 {
            let n = i32::from(counts[len as usize - 1]);
            offset[len as usize] = k as i32 - code;
            for _ in 0..n {
                if code >= (1 << len) {
                    return corrupt("Huffman table has more codes than fit their lengths");
                }
                if len <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len;
                    let first = (code as usize) << shift;
                    let entry = ((len as u16) << 8) | u16::from(values[k]);
                    lookup[first..first + (1usize << shift)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len as usize] = code - 1;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Self { lookup, maxcode, offset, values })
    }
}

/// MSB-first bit reader over one scan's entropy-coded bytes. Past the end (or a marker) it
/// reads zeros, as libjpeg does with corrupt data; it never reads out of bounds.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    n: u32,
    at_marker: bool,
    /// How many of the `n` bits (the last ones) are zeros made up past a marker.
    pad: u32,
    /// A made-up bit was read: libjpeg's `insufficient_data`. Like it, the scan then leaves its
    /// units alone until a restart marker resynchronizes it.
    insufficient: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, buf: 0, n: 0, at_marker: false, pad: 0, insufficient: false }
    }

    #[inline(always)]
    fn consume(&mut self, count: u32) {
        self.buf <<= count;
        self.n -= count;
        if self.n < self.pad {
            self.insufficient = true;
            self.pad = self.n;
        }
    }

    #[inline(always)]
    fn fill(&mut self) {
        // Fast path: the next 8 bytes hold no 0xFF (no stuffing, no marker) — take as many
        // whole bytes as fit at once.
        if !self.at_marker && self.n <= 56 {
            if let Some(chunk) = self.data.get(self.pos..self.pos + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
                let word = u64::from_be_bytes(chunk);
                let inv = !word;
                if inv.wrapping_sub(0x0101_0101_0101_0101) & !inv & 0x8080_8080_8080_8080 == 0 {
                    let take = (64 - self.n) / 8;
                    let n = self.n + 8 * take;
                    let keep = if n >= 64 { !0u64 } else { !(!0u64 >> n) };
                    self.buf |= (word >> self.n) & keep;
                    self.n = n;
                    self.pos += take as usize;
                    return;
                }
            }
        }
        while self.n <= 56 {
            let mut byte = 0u8;
            if !self.at_marker {
                if let Some(&b) = self.data.get(self.pos) {
                    if b == 0xFF {
                        // FF (FF…) 00 is one FF data byte, as libjpeg reads it; FF (FF…) and
                        // anything else is a marker.
                        let mut q = self.pos + 1;
                        while self.data.get(q) == Some(&0xFF) {
                            q += 1;
                        }
                        if self.data.get(q) == Some(&0) {
                            byte = 0xFF;
                            self.pos = q + 1;
                        } else {
                            self.at_marker = true;
                        }
                    } else {
                        byte = b;
                        self.pos += 1;
                    }
                } else {
                    self.at_marker = true;
                }
            }
            if self.at_marker {
                self.pad += 8;
            }
            self.buf |= u64::from(byte) << (56 - self.n);
            self.n += 8;
        }
    }

    #[inline(always)]
    fn bits(&mut self, count: u32) -> u32 {
        if count == 0 {
            return 0;
        }
        if self.n < count {
            self.fill();
        }
        let v = (self.buf >> (64 - count)) as u32;
        self.consume(count);
        v
    }

    #[inline(always)]
    fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// `count` bits as a signed value (JPEG's EXTEND).
    #[inline(always)]
    fn extend(&mut self, count: u32) -> i32 {
        if count == 0 {
            return 0;
        }
        let v = self.bits(count.min(16)) as i32;
        if v < (1 << (count.min(16) - 1)) {
            v - (1 << count.min(16)) + 1
        } else {
            v
        }
    }

    #[inline(always)]
    fn decode(&mut self, h: &Huffman) -> u8 {
        if self.n < 16 {
            self.fill();
        }
        let entry = h.lookup[(self.buf >> (64 - LOOKUP_BITS)) as usize];
        if entry != 0 {
            let len = u32::from(entry >> 8);
            self.consume(len);
            return entry as u8;
        }
        for len in LOOKUP_BITS + 1..=16 {
            let code = (self.buf >> (64 - len)) as i32;
            if code <= h.maxcode[len as usize] {
                self.consume(len);
                let i = (code + h.offset[len as usize]) as usize;
                return h.values.get(i).copied().unwrap_or(0);
            }
        }
        // Not a code of this table: corrupt data. libjpeg has read 17 bits by the time it gives
        // up, and carries on with symbol 0.
        if self.n < 17 {
            self.fill();
        }
        self.consume(17);
        0
    }

    /// Move past the marker that ends a restart interval, `expected` (0..7) the RSTn due: what
    /// libjpeg's read_restart_marker and jpeg_resync_to_restart do, decision for decision, so a
    /// corrupt or missing restart marker costs the same blocks as there.
    fn restart(&mut self, expected: u8) {
        self.buf = 0;
        self.n = 0;
        self.pad = 0;
        let d = self.data;
        // The next marker from `from`: (code, its first FF, past it). None: none left in this
        // scan's data, which ends at a marker that is not a restart (or the end of the file).
        let next = |from: usize| -> Option<(u8, usize, usize)> {
            let mut p = from;
            loop {
                let at = p + memchr::memchr(0xFF, d.get(p..)?)?;
                let mut q = at + 1;
                while d.get(q) == Some(&0xFF) {
                    q += 1;
                }
                match d.get(q) {
                    None => return None,
                    Some(0) => p = q + 1,
                    Some(&c) => return Some((c, at, q + 1)),
                }
            }
        };
        let mut marker = next(self.pos);
        loop {
            // 1: take the marker and go on after it; 2: skip it and look at the next one;
            // 3: leave it unread, so this interval reads as empty.
            let action = match marker {
                None => 3,
                Some((c, ..)) if c == 0xD0 + expected => 1,
                Some((c, ..)) if c < 0xC0 => 2,
                Some((c, ..)) if !(0xD0..=0xD7).contains(&c) => 3,
                Some((c, ..)) => {
                    let k = c - 0xD0;
                    if k == (expected + 1) & 7 || k == (expected + 2) & 7 {
                        3
                    } else if k == expected.wrapping_sub(1) & 7 || k == expected.wrapping_sub(2) & 7 {
                        2
                    } else {
                        1
                    }
                }
            };
            match (action, marker) {
                (1, Some((_, _, after))) => {
                    self.pos = after;
                    self.at_marker = false;
                    self.insufficient = false;
                    return;
                }
                (2, Some((_, _, after))) => marker = next(after),
                (_, Some((_, at, _))) => {
                    self.pos = at;
                    self.at_marker = true;
                    return;
                }
                (_, None) => {
                    self.pos = d.len();
                    self.at_marker = true;
                    return;
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks per row/column that carry image data (what non-interleaved scans cover).
    bw: usize,
    bh: usize,
    /// Blocks per row/column padded to whole MCUs (what interleaved scans cover).
    pw: usize,
    ph: usize,
}

struct Scan<'a> {
    comps: Vec<usize>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
    data: &'a [u8],
    dc: [Option<usize>; 4],
    ac: Option<usize>,
    restart: usize,
    /// Earlier scans whose coefficients this one refines (same component, overlapping band).
    deps: Vec<usize>,
}

impl Scan<'_> {
    fn interleaved(&self) -> bool {
        self.comps.len() > 1
    }

    fn reach(&self) -> usize {
        reach(self.ss, self.se, self.ah)
    }
}

/// The last zigzag position a scan of band `ss..=se` may write. Corrupt data makes libjpeg (so
/// us) store past the band: a first AC scan up to a run of 15 beyond it, a refinement one
/// beyond it. Scans that may touch the same coefficients are ordered by this, not just the band,
/// so which write lands last is libjpeg's answer, not the threads'.
fn reach(ss: usize, se: usize, ah: u32) -> usize {
    match (ss, ah) {
        (0, _) => 0,
        (_, 0) => (se + 15).min(63),
        _ => (se + 1).min(63),
    }
}

/// A parsed progressive JPEG, ready to decode.
pub(crate) struct Progressive<'a> {
    pub width: usize,
    pub height: usize,
    comps: Vec<Component>,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
    scans: Vec<Scan<'a>>,
    /// `None`: a table whose code lengths do not add up; like libjpeg, an error only for a scan
    /// that uses it.
    tables: Vec<Option<Huffman>>,
    quant: Vec<[u16; 64]>,
    /// Quantization table of each component, latched at its first scan.
    comp_quant: Vec<usize>,
}

fn be16(b: &[u8], i: usize) -> Result<usize, Corrupt> {
    match (b.get(i), b.get(i + 1)) {
        (Some(&h), Some(&l)) => Ok(usize::from(u16::from_be_bytes([h, l]))),
        _ => corrupt("segment ends early"),
    }
}

/// Where the entropy-coded data starting at `from` ends (the next marker that is not a
/// stuffed byte or a restart marker).
fn entropy_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(at) = b.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) {
        i += at;
        let mut q = i + 1;
        while b.get(q) == Some(&0xFF) {
            q += 1;
        }
        // Codes below C0 (TEM, reserved ones) end no scan for libjpeg either: it stops reading
        // bits at them as at any marker, and skips them when resynchronizing at a restart.
        match b.get(q) {
            Some(&m) if m >= 0xC0 && !(0xD0..=0xD7).contains(&m) => return i,
            Some(_) => i = q + 1,
            None => break,
        }
    }
    b.len()
}

impl<'a> Progressive<'a> {
    /// `Ok(None)`: not a JPEG this decoder takes (baseline, 12-bit, arithmetic, CMYK, Adobe
    /// RGB…). `Err`: a progressive JPEG whose structure is broken.
    pub fn parse(b: &'a [u8]) -> Result<Option<Self>, Corrupt> {
        if b.get(..2) != Some(&[0xFF, 0xD8]) {
            return Ok(None);
        }
        let mut tables: Vec<Option<Huffman>> = Vec::new();
        // Current table slot → index into `tables` (DC 0..4, AC 4..8).
        let mut slots: [Option<usize>; 8] = [None; 8];
        let mut quant: Vec<[u16; 64]> = Vec::new();
        let mut qslots: [Option<usize>; 4] = [None; 4];
        let mut comp_quant: Vec<Option<usize>> = Vec::new();
        let mut frame: Option<(usize, usize, Vec<Component>)> = None;
        let mut scans: Vec<Scan<'a>> = Vec::new();
        let mut restart = 0usize;
        // Tables a scan refers to are kept; one redefined before any scan used it is replaced,
        // so a file of nothing but table definitions cannot grow memory.
        let mut used: Vec<bool> = Vec::new();
        let mut jfif = false;
        let mut i = 2usize;
        // The next marker as libjpeg's next_marker finds it: bytes before a 0xFF skipped, fill
        // bytes too, FF 00 no marker. Read any other way, a file could show us another frame than
        // the one libjpeg read and the pixel limit was checked against. At the end of the file
        // libjpeg's source makes up an end-of-image marker (whether the file is complete is
        // `compress`'s check, made before this).
        while let Some(at) = b.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) {
            i += at;
            while b.get(i + 1) == Some(&0xFF) {
                i += 1;
            }
            let Some(&m) = b.get(i + 1) else { break };
            match m {
                0xD9 => break,
                // FF 00, and the markers that have no length (TEM, RSTn): libjpeg reads on.
                0x00 | 0x01 | 0xD0..=0xD7 => {
                    i += 2;
                    continue;
                }
                0xD8 => return corrupt("a second start-of-image marker"),
                _ => {}
            }
            let len = be16(b, i + 2)?;
            if len < 2 {
                // libjpeg skips what an APPn or comment claims past its length bytes: nothing.
                if matches!(m, 0xE0..=0xEF | 0xFE) {
                    i += 4;
                    continue;
                }
                return corrupt("segment length below 2");
            }
            let Some(seg) = b.get(i + 4..i + 2 + len) else {
                // libjpeg reads on into the made-up end-of-image markers its source supplies
                // past the end: a table, APPn or comment cut off by the end of the file swallows
                // the rest, and the image is what the scans so far made it.
                if !matches!(m, 0xC0..=0xCF | 0xDA) || m == 0xC4 || m == 0xCC {
                    break;
                }
                return corrupt("segment runs past the end");
            };
            let next = i + 2 + len;
            match m {
                0xC2 => {
                    if frame.is_some() {
                        return corrupt("two frame headers");
                    }
                    if seg.first() != Some(&8) {
                        return Ok(None);
                    }
                    let height = be16(seg, 1)?;
                    let width = be16(seg, 3)?;
                    let n = usize::from(*seg.get(5).unwrap_or(&0));
                    if !(n == 1 || n == 3) || width == 0 || height == 0 || seg.len() < 6 + 3 * n {
                        return Ok(None);
                    }
                    let mut comps = Vec::with_capacity(n);
                    for k in 0..n {
                        let (id, hv, tq) = (seg[6 + 3 * k], seg[7 + 3 * k], seg[8 + 3 * k]);
                        let (h, v) = (usize::from(hv >> 4), usize::from(hv & 15));
                        if !(1..=2).contains(&h) || !(1..=2).contains(&v) || tq > 3 {
                            return Ok(None);
                        }
                        comps.push(Component { id, h, v, tq: usize::from(tq), bw: 0, bh: 0, pw: 0, ph: 0 });
                    }
                    comp_quant = vec![None; n];
                    frame = Some((width, height, comps));
                }
                0xC0 | 0xC1 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(None),
                0xC4 => {
                    let mut p = 0;
                    while p < seg.len() {
                        let tc_th = seg[p];
                        let Some(counts) = seg.get(p + 1..p + 17) else { return corrupt("short DHT") };
                        let counts: [u8; 16] = counts.try_into().map_err(|_| Corrupt("short DHT".into()))?;
                        let total: usize = counts.iter().map(|c| usize::from(*c)).sum();
                        let Some(values) = seg.get(p + 17..p + 17 + total) else { return corrupt("short DHT") };
                        let (class, id) = (usize::from(tc_th >> 4), usize::from(tc_th & 15));
                        if class > 1 || id > 3 {
                            return corrupt("bad Huffman table id");
                        }
                        let table = Huffman::new(&counts, values.to_vec()).ok();
                        match slots[class * 4 + id] {
                            Some(t) if !used[t] => tables[t] = table,
                            _ => {
                                tables.push(table);
                                used.push(false);
                                slots[class * 4 + id] = Some(tables.len() - 1);
                            }
                        }
                        p += 17 + total;
                    }
                }
                0xDB => {
                    let mut p = 0;
                    while p < seg.len() {
                        let (pq, tq) = (seg[p] >> 4, usize::from(seg[p] & 15));
                        if tq > 3 {
                            return corrupt("bad quantization table id");
                        }
                        let mut t = [0u16; 64];
                        for (k, z) in ZIGZAG.iter().enumerate() {
                            t[*z] = if pq == 0 {
                                u16::from(*seg.get(p + 1 + k).ok_or_else(|| Corrupt("short DQT".into()))?)
                            } else {
                                be16(seg, p + 1 + 2 * k)? as u16
                            };
                        }
                        match qslots[tq] {
                            Some(k) if !comp_quant.contains(&Some(k)) => quant[k] = t,
                            _ => {
                                quant.push(t);
                                qslots[tq] = Some(quant.len() - 1);
                            }
                        }
                        p += 1 + if pq == 0 { 64 } else { 128 };
                    }
                }
                0xDD => restart = be16(seg, 0)?,
                0xEE if seg.starts_with(b"Adobe") => return Ok(None), // colour transform flags
                // What libjpeg takes for JFIF (only before the first scan, where it decides the
                // colour space).
                0xE0 if scans.is_empty() && seg.len() >= 14 && seg.starts_with(b"JFIF\0") => jfif = true,
                0xDA => {
                    let Some((_, _, comps)) = frame.as_ref() else { return corrupt("scan before the frame header") };
                    let ns = usize::from(*seg.first().unwrap_or(&0));
                    if ns == 0 || ns > 4 || seg.len() < 4 + 2 * ns {
                        return corrupt("bad scan header");
                    }
                    let mut sc = Vec::with_capacity(ns);
                    let mut dc = [None; 4];
                    let mut ac = None;
                    for k in 0..ns {
                        let (cid, t) = (seg[1 + 2 * k], seg[2 + 2 * k]);
                        let Some(ci) = comps.iter().position(|c| c.id == cid) else {
                            return corrupt("scan names an unknown component");
                        };
                        if comp_quant[ci].is_none() {
                            comp_quant[ci] = qslots[comps[ci].tq];
                        }
                        dc[k] = slots[usize::from(t >> 4) & 3];
                        ac = slots[4 + (usize::from(t & 15) & 3)];
                        for t in [dc[k], ac].into_iter().flatten() {
                            used[t] = true;
                        }
                        sc.push(ci);
                    }
                    let (ss, se, a) = (usize::from(seg[1 + 2 * ns]), usize::from(seg[2 + 2 * ns]), seg[3 + 2 * ns]);
                    let (ah, al) = (u32::from(a >> 4), u32::from(a & 15));
                    let valid = if ss == 0 { se == 0 } else { ss <= se && se <= 63 && ns == 1 };
                    // libjpeg's rules: a refinement scan refines by one bit.
                    if !valid || al > 13 || (ah != 0 && al + 1 != ah) {
                        return corrupt("bad progressive scan parameters");
                    }
                    if scans.len() >= MAX_SCANS {
                        return Ok(None);
                    }
                    let end = entropy_end(b, next);
                    let hi = reach(ss, se, ah);
                    let deps = scans
                        .iter()
                        .enumerate()
                        .filter(|(_, d)| d.comps.iter().any(|c| sc.contains(c)) && d.ss <= hi && ss <= d.reach())
                        .map(|(k, _)| k)
                        .collect();
                    scans.push(Scan { comps: sc, ss, se, ah, al, data: &b[next..end], dc, ac, restart, deps });
                    i = end;
                    continue;
                }
                _ => {}
            }
            i = next;
        }
        let Some((width, height, mut comps)) = frame else { return Ok(None) };
        if scans.is_empty() {
            return corrupt("no scans");
        }
        // Without a JFIF marker, component ids R, G, B tell libjpeg the data is RGB, not YCbCr.
        if !jfif && comps.iter().map(|c| c.id).eq([b'R', b'G', b'B']) {
            return Ok(None);
        }
        let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
        let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
        let mcux = width.div_ceil(8 * hmax);
        let mcuy = height.div_ceil(8 * vmax);
        for c in comps.iter_mut() {
            c.bw = (width * c.h).div_ceil(hmax).div_ceil(8);
            c.bh = (height * c.v).div_ceil(vmax).div_ceil(8);
            c.pw = mcux * c.h;
            c.ph = mcuy * c.v;
        }
        // A component no scan carried is mid-gray in libjpeg (its dequantization table stays
        // all zeros): the same here.
        let comp_quant = comp_quant
            .into_iter()
            .map(|q| {
                q.unwrap_or_else(|| {
                    quant.push([0; 64]);
                    quant.len() - 1
                })
            })
            .collect();
        Ok(Some(Self { width, height, comps, hmax, vmax, mcux, mcuy, scans, tables, quant, comp_quant }))
    }

    pub fn channels(&self) -> u8 {
        if self.comps.len() == 1 {
            1
        } else {
            3
        }
    }

    /// Output pixels of one MCU at scale `n`/8 (across, down) and MCUs per row.
    pub fn mcu_grid(&self, n: usize) -> (usize, usize, usize) {
        (self.hmax * n, self.vmax * n, self.mcux)
    }

    /// Output size at scale `n`/8 (as libjpeg computes it).
    pub fn scaled(&self, n: usize) -> (usize, usize) {
        ((self.width * n).div_ceil(8), (self.height * n).div_ceil(8))
    }

    /// Rows of its own iteration a scan has (block rows, or MCU rows when interleaved).
    fn scan_rows(&self, s: &Scan<'_>) -> usize {
        if s.interleaved() {
            self.mcuy
        } else {
            self.comps[s.comps[0]].bh
        }
    }
}

/// Decoding state of one scan between turns.
struct Cursor<'a> {
    bits: Bits<'a>,
    row: usize,
    eobrun: u32,
    pred: [i32; 4],
    /// Units (blocks or MCUs) left in the current restart interval.
    to_restart: usize,
    /// The RSTn due next (0..7).
    next_rst: u8,
    /// Time spent decoding this scan (for `JEWELSHOT_IMAGING_TRACE`).
    nanos: u64,
}

/// Coefficients of one component on the padded block grid. Only the top-left K×K of each
/// block are kept — all the scaled IDCT reads — plus a mask of which AC coefficients are
/// nonzero (bit k for zigzag position k), all a refinement scan needs of the others: a third of the memory (and of the page
/// faults) of whole blocks at 1/2 scale. Atomics so the two threads may work on the same plane
/// without `unsafe`; which thread may write what is decided by the progress counters
/// (Release/Acquire), and scans that may touch one block at once own disjoint mask bits.
struct Plane {
    vals: Vec<AtomicI16>,
    masks: Vec<AtomicU64>,
    pw: usize,
    k: usize,
    /// Where natural position z is kept in a block's values, or `NOT_KEPT`.
    slot: [u8; 64],
}

const NOT_KEPT: u8 = u8::MAX;

/// One block of a plane.
struct Block<'p> {
    vals: &'p [AtomicI16],
    mask: &'p AtomicU64,
    slot: &'p [u8; 64],
}

impl Plane {
    fn new(c: &Component, k: usize) -> Self {
        let mut slot = [NOT_KEPT; 64];
        for v in 0..k {
            for u in 0..k {
                slot[v * 8 + u] = (v * k + u) as u8;
            }
        }
        let blocks = c.pw * c.ph;
        Self { vals: bytemuck::zeroed_vec(blocks * k * k), masks: bytemuck::zeroed_vec(blocks), pw: c.pw, k, slot }
    }

    #[inline(always)]
    fn block(&self, bx: usize, by: usize) -> Block<'_> {
        let i = by * self.pw + bx;
        let kk = self.k * self.k;
        Block { vals: &self.vals[i * kk..(i + 1) * kk], mask: &self.masks[i], slot: &self.slot }
    }
}

impl Block<'_> {
    #[inline(always)]
    fn store(&self, z: usize, v: i32) {
        if let Some(c) = self.vals.get(usize::from(self.slot[z])) {
            set(c, v);
        }
    }
}

#[inline(always)]
fn get(c: &AtomicI16) -> i32 {
    i32::from(c.load(Ordering::Relaxed))
}

#[inline(always)]
fn set(c: &AtomicI16, v: i32) {
    c.store(v as i16, Ordering::Relaxed);
}

struct Shared {
    /// Rows each scan has finished (its own unit).
    progress: Vec<AtomicUsize>,
    generation: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
    failed: AtomicBool,
}

impl Shared {
    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let _g = self.lock.lock();
        self.wake.notify_all();
    }
}

/// Decode at scale `n`/8, handing RGB (or gray) rows to `sink` in chunks of about `chunk_rows`
/// rows, top to bottom, on the calling thread; chunks are filled into `buffer()`s (reused ones,
/// ideally). `sink` returning false stops the decode.
pub(crate) fn decode(
    p: &Progressive<'_>,
    n: usize,
    chunk_rows: usize,
    buffer: impl FnMut() -> Vec<u8>,
    sink: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), Corrupt> {
    run(p, n, chunk_rows, buffer, sink, false).map(|_| ())
}

/// [`decode`], also answering which MCUs hold wild blocks (see [`WILD`]): where a comparison
/// with libjpeg is meaningful. For the fuzz harness.
pub(crate) fn decode_tracking(
    p: &Progressive<'_>,
    n: usize,
    chunk_rows: usize,
    buffer: impl FnMut() -> Vec<u8>,
    sink: impl FnMut(Vec<u8>) -> bool,
) -> Result<Vec<bool>, Corrupt> {
    run(p, n, chunk_rows, buffer, sink, true).map(Option::unwrap_or_default)
}

fn run(
    p: &Progressive<'_>,
    n: usize,
    chunk_rows: usize,
    mut buffer: impl FnMut() -> Vec<u8>,
    mut sink: impl FnMut(Vec<u8>) -> bool,
    track_wild: bool,
) -> Result<Option<Vec<bool>>, Corrupt> {
    let planes: Vec<Plane> = p.comps.iter().map(|c| Plane::new(c, idct_size(p, c, n).min(8))).collect();
    let cursors: Vec<Mutex<Cursor<'_>>> = p
        .scans
        .iter()
        .map(|s| {
            Mutex::new(Cursor {
                bits: Bits::new(s.data),
                row: 0,
                eobrun: 0,
                pred: [0; 4],
                to_restart: s.restart,
                next_rst: 0,
                nanos: 0,
            })
        })
        .collect();
    let shared = Shared {
        progress: p.scans.iter().map(|_| AtomicUsize::new(0)).collect(),
        generation: AtomicU64::new(0),
        lock: Mutex::new(()),
        wake: Condvar::new(),
        failed: AtomicBool::new(false),
    };
    let (ow, oh) = p.scaled(n);
    let channels = usize::from(p.channels());
    std::thread::scope(|scope| {
        let threads = 2;
        let workers: Vec<_> =
            (0..threads).map(|_| scope.spawn(|| entropy_worker(p, &planes, &cursors, &shared))).collect();
        // Output on this thread: every MCU row all scans have passed → IDCT, colour, sink.
        let chunk_bytes = (chunk_rows + 16).min(oh) * ow * channels;
        let mut fresh = || {
            let mut b = buffer();
            b.clear();
            b.reserve(chunk_bytes);
            b
        };
        let mut out = fresh();
        let mut emitted = 0usize;
        let mut scratch = Scratch::new(p, n);
        if track_wild {
            scratch.wild = Some(vec![false; p.mcux * p.mcuy]);
        }
        let mut result = Ok(());
        let mut idct_nanos = 0u64;
        let started = std::time::Instant::now();
        for my in 0..p.mcuy {
            if !wait_for_mcu_row(p, &shared, my) {
                result = corrupt("decoding stopped");
                break;
            }
            let t0 = std::time::Instant::now();
            scratch.mark_wild(p, &planes, my);
            let rows = scratch.mcu_row(p, &planes, my, n, ow, oh, emitted, &mut out);
            idct_nanos += t0.elapsed().as_nanos() as u64;
            emitted += rows;
            if out.len() >= chunk_rows * ow * channels || emitted == oh {
                // Handed on before the next buffer is taken: one chunk in flight, not two.
                if !sink(std::mem::take(&mut out)) {
                    shared.failed.store(true, Ordering::Release);
                    shared.bump();
                    break;
                }
                if emitted < oh {
                    out = fresh();
                }
            }
        }
        if result.is_err() || emitted < oh {
            shared.failed.store(true, Ordering::Release);
            shared.bump();
        }
        for w in workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = corrupt("decoder thread panicked"),
            }
        }
        if std::env::var_os("JEWELSHOT_IMAGING_TRACE").is_some() {
            let per_scan: Vec<String> = cursors
                .iter()
                .map(|c| c.lock().map(|c| format!("{:.1}", c.nanos as f64 / 1e6)).unwrap_or_default())
                .collect();
            eprintln!(
                "progressive: {:.1} ms wall, scans [{}] ms, idct+colour {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3,
                per_scan.join(" "),
                idct_nanos as f64 / 1e6
            );
        }
        result.map(|()| scratch.wild)
    })
}

/// True once every scan has passed MCU row `my`; false if decoding failed.
fn wait_for_mcu_row(p: &Progressive<'_>, shared: &Shared, my: usize) -> bool {
    loop {
        let seen = shared.generation.load(Ordering::Acquire);
        if shared.failed.load(Ordering::Acquire) {
            return false;
        }
        let ready = p.scans.iter().enumerate().all(|(k, s)| {
            let done = shared.progress[k].load(Ordering::Acquire);
            if s.interleaved() {
                done > my
            } else {
                let c = &p.comps[s.comps[0]];
                done >= ((my + 1) * c.v).min(c.bh)
            }
        });
        if ready {
            return true;
        }
        let g = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        if shared.generation.load(Ordering::Acquire) == seen {
            let _ = shared.wake.wait_timeout(g, std::time::Duration::from_millis(5));
        }
    }
}

/// How many of its rows scan `k` may decode given its dependencies' progress.
fn rows_allowed(p: &Progressive<'_>, shared: &Shared, k: usize) -> usize {
    let s = &p.scans[k];
    let own = p.scan_rows(s);
    let mut allowed = own;
    for &d in &s.deps {
        let ds = &p.scans[d];
        let done = shared.progress[d].load(Ordering::Acquire);
        if done >= p.scan_rows(ds) {
            continue;
        }
        // Convert the dependency's progress into this scan's rows, per shared component.
        for &c in s.comps.iter().filter(|c| ds.comps.contains(c)) {
            let comp = &p.comps[c];
            let block_rows = if ds.interleaved() { done * comp.v } else { done };
            let mine = if s.interleaved() { block_rows / comp.v } else { block_rows };
            allowed = allowed.min(mine);
        }
    }
    allowed
}

fn entropy_worker(
    p: &Progressive<'_>,
    planes: &[Plane],
    cursors: &[Mutex<Cursor<'_>>],
    shared: &Shared,
) -> Result<(), Corrupt> {
    loop {
        let seen = shared.generation.load(Ordering::Acquire);
        if shared.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        // The runnable scan furthest behind, so the wavefront stays tight (and in cache).
        let mut best: Option<(usize, f64)> = None;
        let mut unfinished = false;
        for (k, s) in p.scans.iter().enumerate() {
            let total = p.scan_rows(s);
            let done = shared.progress[k].load(Ordering::Acquire);
            if done >= total {
                continue;
            }
            unfinished = true;
            if rows_allowed(p, shared, k) > done {
                let frac = done as f64 / total as f64;
                if best.is_none_or(|(_, f)| frac < f) {
                    if let Ok(_probe) = cursors[k].try_lock() {
                        best = Some((k, frac));
                    }
                }
            }
        }
        if !unfinished {
            return Ok(());
        }
        let mut worked = false;
        if let Some((k, _)) = best {
            if let Ok(mut cur) = cursors[k].try_lock() {
                let allowed = rows_allowed(p, shared, k);
                let to = allowed.min(cur.row + CHUNK_ROWS);
                if to > cur.row {
                    let t0 = std::time::Instant::now();
                    let r = decode_rows(p, &p.scans[k], planes, &mut cur, to);
                    cur.nanos += t0.elapsed().as_nanos() as u64;
                    if let Err(e) = r {
                        shared.failed.store(true, Ordering::Release);
                        shared.bump();
                        return Err(e);
                    }
                    shared.progress[k].store(to, Ordering::Release);
                    worked = true;
                }
            }
        }
        if worked {
            shared.bump();
        } else {
            let g = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            if shared.generation.load(Ordering::Acquire) == seen {
                let _ = shared.wake.wait_timeout(g, std::time::Duration::from_millis(5));
            }
        }
    }
}

fn decode_rows(
    p: &Progressive<'_>,
    s: &Scan<'_>,
    planes: &[Plane],
    cur: &mut Cursor<'_>,
    to: usize,
) -> Result<(), Corrupt> {
    let table = |t: Option<usize>| {
        t.and_then(|i| p.tables.get(i)?.as_ref())
            .ok_or_else(|| Corrupt("scan uses an undefined or malformed Huffman table".into()))
    };
    if s.interleaved() {
        // Interleaved scans are DC scans (checked at parse).
        let dcs: Vec<&Huffman> =
            if s.ah == 0 { (0..s.comps.len()).map(|k| table(s.dc[k])).collect::<Result<_, _>>()? } else { Vec::new() };
        for my in cur.row..to {
            for mx in 0..p.mcux {
                restart_check(s, cur);
                if cur.bits.insufficient {
                    continue;
                }
                for (k, &ci) in s.comps.iter().enumerate() {
                    let c = &p.comps[ci];
                    for v in 0..c.v {
                        for h in 0..c.h {
                            let block = planes[ci].block(mx * c.h + h, my * c.v + v);
                            dc_block(s, cur, dcs.get(k).copied(), k, block);
                        }
                    }
                }
            }
        }
    } else {
        let ci = s.comps[0];
        let c = &p.comps[ci];
        let huff = if s.ss == 0 {
            if s.ah == 0 {
                Some(table(s.dc[0])?)
            } else {
                None
            }
        } else {
            Some(table(s.ac)?)
        };
        for by in cur.row..to {
            for bx in 0..c.bw {
                restart_check(s, cur);
                if cur.bits.insufficient {
                    continue;
                }
                let block = planes[ci].block(bx, by);
                if s.ss == 0 {
                    dc_block(s, cur, huff, 0, block);
                } else if let Some(h) = huff {
                    if s.ah == 0 {
                        ac_first(s, cur, h, block);
                    } else {
                        ac_refine(s, cur, h, block);
                    }
                }
            }
        }
    }
    cur.row = to;
    Ok(())
}

#[inline(always)]
fn restart_check(s: &Scan<'_>, cur: &mut Cursor<'_>) {
    if s.restart == 0 {
        return;
    }
    if cur.to_restart == 0 {
        cur.bits.restart(cur.next_rst);
        cur.next_rst = (cur.next_rst + 1) & 7;
        cur.eobrun = 0;
        cur.pred = [0; 4];
        cur.to_restart = s.restart;
    }
    cur.to_restart -= 1;
}

#[inline(always)]
fn dc_block(s: &Scan<'_>, cur: &mut Cursor<'_>, h: Option<&Huffman>, k: usize, block: Block<'_>) {
    let dc = &block.vals[0];
    match h {
        Some(h) if s.ah == 0 => {
            let t = u32::from(cur.bits.decode(h));
            let diff = cur.bits.extend(t.min(16));
            cur.pred[k] = cur.pred[k].wrapping_add(diff);
            set(dc, cur.pred[k].wrapping_shl(s.al));
        }
        _ => {
            if cur.bits.bit() {
                set(dc, get(dc) | (1 << s.al));
            }
        }
    }
}

#[inline(always)]
fn ac_first(s: &Scan<'_>, cur: &mut Cursor<'_>, h: &Huffman, block: Block<'_>) {
    if cur.eobrun > 0 {
        cur.eobrun -= 1;
        return;
    }
    let mut k = s.ss;
    let (mut nonzero, mut zeroed) = (0u64, 0u64);
    while k <= s.se {
        let rs = cur.bits.decode(h);
        let (r, size) = (usize::from(rs >> 4), u32::from(rs & 15));
        if size != 0 {
            k += r;
            let v = cur.bits.extend(size);
            // A run past position 63 stores at 63, as libjpeg's zigzag table (padded with 63s)
            // has it; and a value shifted out of 16 bits is a zero, not a nonzero history.
            let at = k.min(63);
            let stored = v.wrapping_shl(s.al) as i16;
            block.store(ZIGZAG[at], i32::from(stored));
            if stored != 0 {
                nonzero |= 1 << at;
            } else {
                zeroed |= 1 << at;
            }
            k += 1;
        } else if r < 15 {
            cur.eobrun = (1u32 << r) - 1 + cur.bits.bits(r as u32);
            break;
        } else {
            k += 16;
        }
    }
    if nonzero != 0 {
        block.mask.fetch_or(nonzero, Ordering::Relaxed);
    }
    if zeroed != 0 {
        block.mask.fetch_and(!zeroed, Ordering::Relaxed);
    }
}

/// A correction bit for an already nonzero coefficient: 1 raises its magnitude by `p1`.
#[inline(always)]
fn refine(bits: &mut Bits<'_>, block: &Block<'_>, z: usize, p1: i32, m1: i32) {
    if bits.bit() {
        if let Some(c) = block.vals.get(usize::from(block.slot[z])) {
            let v = get(c);
            if v & p1 == 0 {
                set(c, if v >= 0 { v + p1 } else { v + m1 });
            }
        }
    }
}

/// Zigzag positions `k..` as mask bits (none when `k` ≥ 64).
#[inline(always)]
fn from(k: usize) -> u64 {
    if k >= 64 {
        0
    } else {
        !0u64 << k
    }
}

/// Correction bits for every nonzero coefficient among the zigzag positions in `set`, in order.
#[inline(always)]
fn refine_all(bits: &mut Bits<'_>, block: &Block<'_>, mut set: u64, p1: i32, m1: i32) {
    while set != 0 {
        let k = set.trailing_zeros() as usize;
        refine(bits, block, ZIGZAG[k], p1, m1);
        set &= set - 1;
    }
}

/// An AC successive-approximation refinement (libjpeg's `decode_mcu_AC_refine`). The mask is in
/// zigzag order, so runs of zero-history coefficients are found with bit operations instead of
/// a walk over the band (in the late scans most blocks are inside an end-of-band run).
#[inline(always)]
fn ac_refine(s: &Scan<'_>, cur: &mut Cursor<'_>, h: &Huffman, block: Block<'_>) {
    let p1 = 1i32 << s.al;
    let m1 = -1i32 << s.al;
    let band = from(s.ss) & !from(s.se + 1);
    let mut k = s.ss;
    let mut mask = block.mask.load(Ordering::Relaxed) & band;
    let mut newly = 0u64;
    if cur.eobrun == 0 {
        while k <= s.se {
            let rs = cur.bits.decode(h);
            let (r, size) = (u32::from(rs >> 4), rs & 15);
            let mut value = 0;
            if size != 0 {
                // Only magnitude 1 is legal here; anything else is corrupt and read as 1.
                value = if cur.bits.bit() { p1 } else { m1 };
            } else if r != 15 {
                cur.eobrun = (1u32 << r) + cur.bits.bits(r);
                break;
            }
            // Pass `r` zero-history coefficients (refining the nonzero ones on the way) and stop
            // at the next zero-history one, or at the end of the band.
            let mut zeros = !mask & band & from(k);
            for _ in 0..r {
                zeros &= zeros.wrapping_sub(1);
            }
            let target = if zeros == 0 { s.se + 1 } else { zeros.trailing_zeros() as usize };
            refine_all(&mut cur.bits, &block, mask & from(k) & !from(target), p1, m1);
            k = target;
            if value != 0 {
                // Past the band's end libjpeg stores it anyway: one past `se`, or at 63 (its
                // zigzag table is padded with 63s).
                let at = k.min(63);
                block.store(ZIGZAG[at], value);
                mask |= 1 << at;
                newly |= 1 << at;
            }
            k += 1;
        }
    }
    if cur.eobrun > 0 {
        refine_all(&mut cur.bits, &block, mask & from(k), p1, m1);
        cur.eobrun -= 1;
    }
    if newly != 0 {
        block.mask.fetch_or(newly, Ordering::Relaxed);
    }
}

/// Output-side buffers for one MCU row.
struct Scratch {
    comps: Vec<CompOut>,
    /// Per MCU (row-major), when asked for: some block holds coefficients no 8-bit encoder
    /// writes (see [`WILD`]).
    wild: Option<Vec<bool>>,
}

/// How far from mid-gray a block's IDCT may reach before it is "wild": no 8-bit encoder writes
/// such coefficients (its blocks decode to 0..255 plus quantization noise), and there libjpeg's
/// integer IDCTs wrap (their range limit is exact only within ±512) or saturate 16-bit
/// arithmetic where ours clamps — the two legitimately differ on corrupt data, nowhere else.
pub(crate) const WILD: f64 = 480.0;

/// One component's samples for an MCU row at its output scale.
struct CompOut {
    /// IDCT size: n, or 2n for subsampled chroma (libjpeg scales chroma up in the IDCT rather
    /// than upsampling it afterwards, where it can).
    size: usize,
    stride: usize,
    buf: Vec<u8>,
    /// m[x][u] = C(u)/2·cos((2x+1)uπ/2·size), u < min(size, 8).
    matrix: Vec<f32>,
    /// Remaining upsampling (sample replication) across and down.
    up_h: usize,
    up_v: usize,
}

impl Scratch {
    fn new(p: &Progressive<'_>, n: usize) -> Self {
        let comps = p
            .comps
            .iter()
            .map(|c| {
                let size = idct_size(p, c, n);
                let k = size.min(8);
                let mut matrix = vec![0f32; size * k];
                for x in 0..size {
                    for u in 0..k {
                        let cu = if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
                        let angle = (2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * size) as f64;
                        matrix[x * k + u] = (cu / 2.0 * angle.cos()) as f32;
                    }
                }
                let stride = c.pw * size;
                CompOut {
                    size,
                    stride,
                    buf: vec![0u8; stride * c.v * size],
                    matrix,
                    up_h: (p.hmax * n / (c.h * size)).max(1),
                    up_v: (p.vmax * n / (c.v * size)).max(1),
                }
            })
            .collect();
        Self { comps, wild: None }
    }

    /// Mark the MCUs of row `my` that hold a wild block: a dequantized coefficient past 16 bits,
    /// or an IDCT sample (unclamped, at this scale) past [`WILD`].
    fn mark_wild(&mut self, p: &Progressive<'_>, planes: &[Plane], my: usize) {
        let Some(wild) = self.wild.as_mut() else { return };
        for (ci, c) in p.comps.iter().enumerate() {
            let q = &p.quant[p.comp_quant[ci]];
            let plane = &planes[ci];
            let (k, co) = (plane.k, &self.comps[ci]);
            let (size, m) = (co.size, &co.matrix);
            for v in 0..c.v {
                for bx in 0..c.pw {
                    let vals = plane.block(bx, my * c.v + v).vals;
                    let f: Vec<f64> =
                        (0..k * k).map(|i| f64::from(get(&vals[i])) * f64::from(q[(i / k) * 8 + i % k])).collect();
                    // |sample| ≤ Σ|F|/4 (each basis value is at most 1/2 across and down): most
                    // blocks are settled by that bound; the rest get the IDCT itself.
                    if f.iter().map(|x| x.abs()).sum::<f64>() / 4.0 <= WILD {
                        continue;
                    }
                    let mut out_of_range = f.iter().any(|x| x.abs() > 32767.0);
                    let mut rows = vec![0f64; k * size];
                    for fv in 0..k {
                        for x in 0..size {
                            rows[fv * size + x] = (0..k).map(|fu| f64::from(m[x * k + fu]) * f[fv * k + fu]).sum();
                        }
                    }
                    for y in 0..size {
                        for x in 0..size {
                            let sample: f64 = (0..k).map(|fv| f64::from(m[y * k + fv]) * rows[fv * size + x]).sum();
                            out_of_range |= sample.abs() > WILD;
                        }
                    }
                    if out_of_range {
                        wild[my * p.mcux + bx / c.h] = true;
                    }
                }
            }
        }
    }

    /// IDCT MCU row `my` and append its output rows (cropped to the image) to `out`.
    #[allow(clippy::too_many_arguments)]
    fn mcu_row(
        &mut self,
        p: &Progressive<'_>,
        planes: &[Plane],
        my: usize,
        n: usize,
        ow: usize,
        oh: usize,
        emitted: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        for (ci, c) in p.comps.iter().enumerate() {
            let q = &p.quant[p.comp_quant[ci]];
            let co = &mut self.comps[ci];
            let (size, stride, m) = (co.size, co.stride, &co.matrix);
            for v in 0..c.v {
                let by = my * c.v + v;
                let o = &mut co.buf[v * size * stride..];
                let plane = &planes[ci];
                match size {
                    1 => {
                        for (bx, px) in o.iter_mut().take(c.pw).enumerate() {
                            *px = idct_dc(plane.block(bx, by).vals, q);
                        }
                    }
                    2 => idct_row::<2, 2>(plane, by, q, m, o, stride),
                    3 => idct_row::<3, 3>(plane, by, q, m, o, stride),
                    4 => idct_row::<4, 4>(plane, by, q, m, o, stride),
                    5 => idct_row::<5, 5>(plane, by, q, m, o, stride),
                    6 => idct_row::<6, 6>(plane, by, q, m, o, stride),
                    7 => idct_row::<7, 7>(plane, by, q, m, o, stride),
                    8 => idct_row::<8, 8>(plane, by, q, m, o, stride),
                    10 => idct_row::<10, 8>(plane, by, q, m, o, stride),
                    12 => idct_row::<12, 8>(plane, by, q, m, o, stride),
                    14 => idct_row::<14, 8>(plane, by, q, m, o, stride),
                    _ => idct_row::<16, 8>(plane, by, q, m, o, stride),
                }
            }
        }
        let rows = (p.vmax * n).min(oh.saturating_sub(emitted));
        if p.comps.len() == 1 {
            let co = &self.comps[0];
            for y in 0..rows {
                out.extend_from_slice(&co.buf[y * co.stride..y * co.stride + ow]);
            }
            return rows;
        }
        let (cy, cb, cr) = (&self.comps[0], &self.comps[1], &self.comps[2]);
        for y in 0..rows {
            let yrow = &cy.buf[(y / cy.up_v) * cy.stride..];
            let brow = &cb.buf[(y / cb.up_v) * cb.stride..];
            let rrow = &cr.buf[(y / cr.up_v) * cr.stride..];
            let start = out.len();
            out.resize(start + ow * 3, 0);
            let dst = &mut out[start..];
            if cb.up_h == 1 && cr.up_h == 1 && cy.up_h == 1 {
                for (((px, &yv), &b), &r) in dst.chunks_exact_mut(3).zip(yrow).zip(brow).zip(rrow) {
                    ycc_to_rgb(px, yv, b, r);
                }
            } else if cb.up_h == 2 && cr.up_h == 2 && cy.up_h == 1 {
                for (((pair, ys), &b), &r) in dst.chunks_mut(6).zip(yrow.chunks(2)).zip(brow).zip(rrow) {
                    for (px, &yv) in pair.chunks_exact_mut(3).zip(ys) {
                        ycc_to_rgb(px, yv, b, r);
                    }
                }
            } else {
                for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                    ycc_to_rgb(px, yrow[x / cy.up_h], brow[x / cb.up_h], rrow[x / cr.up_h]);
                }
            }
        }
        rows
    }
}

/// The IDCT size of a component at scale n/8. libjpeg-turbo's rule (jdmaster.c): double it
/// while the component's subsampling allows and it is below 8, so subsampled chroma is scaled
/// up in the IDCT instead of upsampled afterwards.
fn idct_size(p: &Progressive<'_>, c: &Component, n: usize) -> usize {
    let mut size = n;
    while size < 8 && (p.hmax * n) % (c.h * size * 2) == 0 && (p.vmax * n) % (c.v * size * 2) == 0 {
        size *= 2;
    }
    size
}

/// JFIF YCbCr → RGB, 16-bit fixed point, rounded (libjpeg's constants).
#[inline(always)]
fn ycc_to_rgb(px: &mut [u8], y: u8, cb: u8, cr: u8) {
    let (y, b, r) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    px[0] = (y + ((91881 * r + 32768) >> 16)).clamp(0, 255) as u8;
    px[1] = (y + ((-22554 * b - 46802 * r + 32768) >> 16)).clamp(0, 255) as u8;
    px[2] = (y + ((116130 * b + 32768) >> 16)).clamp(0, 255) as u8;
}

#[inline(always)]
fn idct_dc(block: &[AtomicI16], q: &[u16; 64]) -> u8 {
    let dc = get(&block[0]) * i32::from(q[0]);
    (((dc + 4) >> 3) + 128).clamp(0, 255) as u8
}

/// One block row of a component through the scaled IDCT, with the cosine matrix and the
/// dequantization table as fixed-size arrays (no bounds checks, vectorizable loops).
fn idct_row<const S: usize, const K: usize>(
    plane: &Plane,
    by: usize,
    q: &[u16; 64],
    m: &[f32],
    out: &mut [u8],
    stride: usize,
) {
    let mut mm = [[0f32; K]; S];
    for (x, row) in mm.iter_mut().enumerate() {
        for (u, v) in row.iter_mut().enumerate() {
            *v = m[x * K + u];
        }
    }
    let mut qq = [[0f32; K]; K];
    for (v, row) in qq.iter_mut().enumerate() {
        for (u, val) in row.iter_mut().enumerate() {
            *val = f32::from(q[v * 8 + u]);
        }
    }
    for bx in 0..plane.pw {
        idct::<S, K>(plane.block(bx, by).vals, &qq, &mm, &mut out[bx * S..], stride);
    }
}

/// Scaled inverse DCT: the top-left K×K coefficients → S×S samples, the 8-point basis
/// evaluated at the centres of an S-point grid (libjpeg's scaled IDCTs compute the same).
#[inline(always)]
fn idct<const S: usize, const K: usize>(
    block: &[AtomicI16],
    q: &[[f32; K]; K],
    m: &[[f32; K]; S],
    out: &mut [u8],
    stride: usize,
) {
    let block = &block[..K * K];
    let mut f = [[0f32; K]; K];
    let mut nonzero_rows = [false; K];
    let mut any_ac = false;
    for v in 0..K {
        for u in 0..K {
            let c = get(&block[v * K + u]);
            nonzero_rows[v] |= c != 0;
            any_ac |= c != 0 && (u | v) != 0;
            f[v][u] = c as f32 * q[v][u];
        }
    }
    if !any_ac {
        let px = (f[0][0] / 8.0 + 128.5).clamp(0.0, 255.0) as u8;
        for y in 0..S {
            out[y * stride..y * stride + S].fill(px);
        }
        return;
    }
    // Rows: t[v][x] = Σ_u m[x][u]·f[v][u]; then columns. Most rows of a photo's block are
    // all zero: those stay zero.
    let mut t = [[0f32; S]; K];
    let mut rows = 0;
    for v in 0..K {
        if !nonzero_rows[v] {
            continue;
        }
        rows = v + 1;
        for x in 0..S {
            let mut acc = 0.0;
            for u in 0..K {
                acc += m[x][u] * f[v][u];
            }
            t[v][x] = acc;
        }
    }
    for y in 0..S {
        let mut row = [128.5f32; S];
        for v in 0..rows {
            let w = m[y][v];
            for x in 0..S {
                row[x] += w * t[v][x];
            }
        }
        for (o, r) in out[y * stride..y * stride + S].iter_mut().zip(row) {
            *o = r.clamp(0.0, 255.0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `script`: 0 baseline, 1 libjpeg's standard progression, 2 mozjpeg's own defaults.
    /// `smooth`: a photo-like image; otherwise a texture full of high frequencies.
    fn encode(w: usize, h: usize, script: u8, smooth: bool) -> Vec<u8> {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                if smooth {
                    let (fx, fy) = (x as f64 / 61.0, y as f64 / 83.0);
                    let v = |a: f64| (128.0 + 90.0 * a.sin()) as u8;
                    data.extend_from_slice(&[v(fx + fy), v(fx * 0.7 - fy + 1.0), v(fy * 1.3 + 2.0)]);
                } else {
                    let v = ((x * 7 + y * 3) % 256) as u8;
                    data.extend_from_slice(&[v, ((x * y) % 251) as u8, (255 - v) / 2 + (y % 64) as u8]);
                }
            }
        }
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        if script < 2 {
            c.set_fastest_defaults();
        }
        c.set_size(w, h);
        c.set_quality(90.0);
        if script == 1 {
            c.set_progressive_mode();
        }
        let mut s = c.start_compress(Vec::new()).expect("start");
        s.write_scanlines(&data).expect("rows");
        s.finish().expect("finish")
    }

    fn ours(jpeg: &[u8], n: usize) -> (usize, usize, Vec<u8>) {
        let p = Progressive::parse(jpeg).expect("parse").expect("progressive");
        let (w, h) = p.scaled(n);
        let mut all = Vec::new();
        decode(&p, n, 16, Vec::new, |rows| {
            all.extend_from_slice(&rows);
            true
        })
        .expect("decode");
        (w, h, all)
    }

    fn libjpeg(jpeg: &[u8], n: u8) -> (usize, usize, Vec<u8>) {
        // libjpeg reports fatal errors by unwinding, past any panic hook: say so.
        let decoded = std::panic::catch_unwind(|| {
            let mut d = mozjpeg::Decompress::new_mem(jpeg).expect("header");
            d.scale(n);
            d.do_fancy_upsampling(false);
            d.do_block_smoothing(false);
            let mut s = d.rgb().expect("rgb");
            let px = s.read_scanlines::<u8>().expect("rows");
            (s.width(), s.height(), px)
        });
        decoded.unwrap_or_else(|e| panic!("libjpeg: {:?}", e.downcast_ref::<String>()))
    }

    fn mean_max(a: &[u8], b: &[u8]) -> (f64, u8) {
        let mean = a.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64;
        (mean, a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0))
    }

    #[test]
    fn matches_libjpeg_at_every_scale() {
        for (w, h, script) in [(333, 211, 1), (64, 64, 1), (17, 9, 1), (333, 211, 2), (40, 70, 2)] {
            for smooth in [false, true] {
                let jpeg = encode(w, h, script, smooth);
                for n in [1usize, 2, 3, 4, 5, 8] {
                    let (ow, oh, a) = ours(&jpeg, n);
                    let (lw, lh, b) = libjpeg(&jpeg, n as u8);
                    assert_eq!((ow, oh), (lw, lh), "size at {n}/8");
                    let (mean, max) = mean_max(&a, &b);
                    let at =
                        format!("{w}x{h} script {script} smooth {smooth} at {n}/8: mean diff {mean:.3}, max {max}");
                    // At 1/8, 2/8 and 4/8 libjpeg-turbo uses its older "reduced" IDCTs, which
                    // let some of the dropped high frequencies through (aliasing); ours is the
                    // plain low-pass. They agree on photo-like content, not on a texture.
                    if matches!(n, 3 | 5 | 8) {
                        assert!(mean < 0.1 && max <= 4, "{at}");
                    } else if smooth {
                        assert!(mean < 1.0 && max <= 10, "{at}");
                    }
                }
            }
        }
    }

    /// Our decode at `n`/8 against libjpeg's, outside MCUs whose coefficients went wild: the
    /// largest difference, and how many samples were compared.
    fn against_libjpeg(jpeg: &[u8], n: usize) -> (u8, usize) {
        let p = Progressive::parse(jpeg).expect("parse").expect("progressive");
        let (w, h) = p.scaled(n);
        let mut ours = Vec::new();
        let wild = decode_tracking(&p, n, 16, Vec::new, |rows| {
            ours.extend_from_slice(&rows);
            true
        })
        .expect("corrupt data decodes, as libjpeg decodes it");
        let (lw, lh, theirs) = libjpeg(jpeg, n as u8);
        assert_eq!((w, h, ours.len()), (lw, lh, theirs.len()));
        let (mw, mh, across) = p.mcu_grid(n);
        let (mut max, mut compared) = (0, 0);
        for y in 0..h {
            for x in 0..w {
                if !wild[(y / mh) * across + x / mw] {
                    for c in 0..3 {
                        max = max.max(ours[(y * w + x) * 3 + c].abs_diff(theirs[(y * w + x) * 3 + c]));
                        compared += 1;
                    }
                }
            }
        }
        (max, compared)
    }

    #[test]
    fn baseline_is_not_ours_and_corrupt_data_decodes_as_libjpeg_does() {
        assert!(Progressive::parse(&encode(40, 40, 0, true)).expect("parse").is_none(), "baseline goes to libjpeg");
        let good = encode(120, 80, 1, false);
        let len = good.len();
        // Garbage over part of the entropy-coded data: still our file; it decodes, and where the
        // garbage left coefficients an encoder could have written, to libjpeg's pixels.
        let scans: Vec<usize> =
            good.windows(2).enumerate().filter(|(_, w)| w == &[0xFF, 0xDA]).map(|(i, _)| i).collect();
        let data: Vec<(usize, usize)> = scans
            .iter()
            .zip(scans.iter().skip(1).chain([&len]))
            .map(|(&a, &b)| (a + 2 + be16(&good, a + 2).expect("length"), b))
            .collect();
        let (from, to) = data.iter().copied().max_by_key(|(a, b)| b - a).expect("scans");
        let mut garbage = good.clone();
        for b in &mut garbage[(from + to) / 2 - 100..(from + to) / 2 + 100] {
            *b = b.wrapping_mul(31).wrapping_add(7) & 0x7F; // no 0xFF: no marker, just bad data
        }
        let (max, compared) = against_libjpeg(&garbage, 8);
        assert!(max <= 4 && compared > 120 * 80, "max diff {max} over {compared} samples");
        // Cut off inside a scan (end-of-image marker kept): libjpeg leaves the blocks that scan
        // and the later ones never reached as earlier scans made them; so must we.
        for cut in [data[1], data[data.len() / 2], data[data.len() - 1]].map(|(a, b)| (a + b) / 2) {
            let mut short = good[..cut].to_vec();
            short.extend_from_slice(&[0xFF, 0xD9]);
            for n in [3, 8] {
                let (max, compared) = against_libjpeg(&short, n);
                assert!(max <= 4 && compared > 0, "cut at {cut}, {n}/8: max diff {max} over {compared} samples");
            }
        }
        // Cut inside the headers: nothing to decode.
        assert!(!matches!(Progressive::parse(&good[..10]), Ok(Some(_))));
        // Thousands of scans: left to libjpeg.
        let first_sos = good.windows(2).position(|w| w == [0xFF, 0xDA]).expect("SOS");
        let mut many = good[..first_sos].to_vec();
        for _ in 0..5000 {
            many.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00]);
        }
        many.extend_from_slice(&[0xFF, 0xD9]);
        assert!(Progressive::parse(&many).expect("parse").is_none());
    }
}
