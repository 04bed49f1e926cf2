//! The properties every input is held to: no panic; nothing decoded past the pixel limit, and
//! no more heap than the decoder's budget; where libjpeg decodes the file, our pixels equal its.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, Once,
    },
};

use jewelshot_imaging::{
    harness::{self, Decoded, Outcome},
    probe, Limits,
};
use peakmem_alloc::PeakMemAllocTrait;

/// What the harness gives the decoder: production's limits, with a pixel limit small enough that
/// a mutated header cannot make one execution take seconds (the property is the same).
pub const LIMITS: Limits = Limits {
    max_side: 1920,
    quality: 80,
    min_quality: 60,
    max_output_bytes: 500 * 1000,
    max_input_bytes: 25 * 1024 * 1024,
    max_pixels: 4_000_000,
    max_scans: 100,
    max_decode_bytes: 96 * 1024 * 1024,
};

/// The scales production decodes at (6/8 and 7/8 are never used).
pub const SCALES: [usize; 6] = [1, 2, 3, 4, 5, 8];

/// Heap a decode may take: the coefficient planes (at most the top-left 8×8 of each block as
/// i16 plus a 64-bit mask, 136 B per 64 pixels per component, three components: 6.4 B per
/// pixel, MCU-padded), so 8 B per padded pixel; the rows handed out (`output`, the harness's
/// copy) and one chunk of them in flight (at most 80 rows: the harness asks for 64, plus an MCU
/// row); and a fixed allowance for tables, scan lists and scratch rows. Nothing scales with the
/// size of the file itself.
pub fn budget(frame: (usize, usize), output: usize, row_bytes: usize, rows: usize) -> usize {
    let padded = (frame.0 + 15) * (frame.1 + 15);
    8 * padded + output + rows.min(80) * row_bytes + FIXED
}

/// Huffman tables (1 KiB each; the ones scans use, at most five per scan and 100 scans), scan
/// lists, scratch rows.
pub const FIXED: usize = 2 << 20;

#[derive(Debug, Clone)]
pub struct Finding {
    /// Short class, used in file names and to deduplicate.
    pub kind: &'static str,
    pub detail: String,
}

/// The result of one check.
pub struct Verdict {
    pub finding: Option<Finding>,
    /// Hash of what happened (outcome, error classes, scale, layout, how the pixels compared): a
    /// cheap stand-in for coverage, to tell inputs that reach new behaviour.
    pub behaviour: u64,
    /// Peak heap during our side of the check and what was allowed.
    pub peak: usize,
    pub budget: usize,
    /// Our decoder ran (parse accepted the file).
    pub ours: bool,
    /// Both decoded it and the pixels were compared: how they differed.
    pub compared: Option<Diff>,
    /// MCUs excused from the comparison as wild, of all.
    pub wild: (usize, usize),
}

static IN_DECODE: AtomicBool = AtomicBool::new(false);
static PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Panics inside our decoder are findings, not test noise: record them (worker threads' panics
/// are caught by their join and would otherwise only show as an error string).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_DECODE.load(Ordering::SeqCst) {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{msg}{at}"));
            } else {
                default(info);
            }
        }));
    });
}

/// libjpeg (the mozjpeg crate, as production's fallback path calls it) at scale `n`/8: width,
/// height, channels, pixels. Block smoothing off: libjpeg applies it only to files whose
/// progression never finishes some low coefficients — a display heuristic, not decoding.
pub fn libjpeg(input: &[u8], n: usize) -> Result<(usize, usize, usize, Vec<u8>), String> {
    let run = || -> std::io::Result<(usize, usize, usize, Vec<u8>)> {
        let mut d = mozjpeg::Decompress::builder().from_mem(input)?;
        d.scale(n as u8);
        d.do_fancy_upsampling(false);
        d.do_block_smoothing(false);
        match d.image()? {
            mozjpeg::Format::RGB(mut s) => {
                let px = s.read_scanlines::<u8>()?;
                let (w, h) = (s.width(), s.height());
                s.finish()?;
                Ok((w, h, 3, px))
            }
            mozjpeg::Format::Gray(mut s) => {
                let px = s.read_scanlines::<u8>()?;
                let (w, h) = (s.width(), s.height());
                s.finish()?;
                Ok((w, h, 1, px))
            }
            mozjpeg::Format::CMYK(_) => Err(std::io::Error::other("CMYK")),
        }
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg error".into())),
    }
}

/// How our pixels compare with libjpeg's outside wild MCUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diff {
    pub samples: usize,
    pub mean: f64,
    pub max: u8,
    /// Where the largest difference is (x, y).
    pub at: (usize, usize),
}

pub fn diff(ours: &Decoded, theirs: &[u8]) -> Diff {
    let (mw, mh, across) = ours.mcu;
    let (w, ch) = (ours.width, ours.channels);
    let (mut sum, mut samples, mut max, mut at) = (0u64, 0usize, 0u8, (0, 0));
    for y in 0..ours.height {
        for x in 0..w {
            if ours.wild.get((y / mh) * across + x / mw).copied().unwrap_or(true) {
                continue;
            }
            for c in 0..ch {
                let i = (y * w + x) * ch + c;
                let d = ours.pixels[i].abs_diff(theirs[i]);
                sum += u64::from(d);
                samples += 1;
                if d > max {
                    (max, at) = (d, (x, y));
                }
            }
        }
    }
    Diff { samples, mean: if samples == 0 { 0.0 } else { sum as f64 / samples as f64 }, max, at }
}

/// The equivalence tolerance of the unit tests at the scales where libjpeg's IDCT is the exact
/// one (3/8, 5/8, 8/8): max 4, mean 0.1 — the mean only over enough samples to mean something
/// (a 1×1 image off by 1, float against integer rounding, is a mean of 1).
pub fn within_tolerance(d: &Diff) -> bool {
    d.max <= 4 && (d.mean < 0.1 || (d.samples < 4096 && d.mean <= 1.0))
}

/// libjpeg-turbo's 1/8, 2/8 and 4/8 IDCTs are its older "reduced" ones, which let some of the
/// dropped frequencies alias back; ours is the plain low-pass. Pixels are compared elsewhere.
pub fn compared_at(n: usize) -> bool {
    matches!(n, 3 | 5 | 8)
}

/// An error message without its numbers (sizes, marker codes, offsets), so that the behaviour
/// hash counts kinds of error, not instances.
fn strip_digits(s: &str) -> String {
    s.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).take(10).collect::<Vec<_>>().join(" ")
}

fn hash(parts: &[&str]) -> u64 {
    // FNV-1a: stable across runs, so a queue saved by one run means the same to the next.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for b in p.bytes().chain([0xFF]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Check `input` at scale `n`/8 against every property.
pub fn check(input: &[u8], n: usize) -> Verdict {
    install_panic_hook();
    *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = None;
    crate::PEAK.reset_peak_memory();
    IN_DECODE.store(true, Ordering::SeqCst);
    let outcome = catch_unwind(AssertUnwindSafe(|| harness::progressive(input, n, &LIMITS)));
    IN_DECODE.store(false, Ordering::SeqCst);
    let peak = crate::PEAK.get_peak_memory();
    let panicked = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();

    let mut v = Verdict { finding: None, behaviour: 0, peak, budget: FIXED, ours: false, compared: None, wild: (0, 0) };
    let found = |kind, detail: String| Some(Finding { kind, detail });
    let outcome = match outcome {
        Ok(o) => o,
        Err(_) => {
            v.finding = found("panic", panicked.unwrap_or_default());
            v.behaviour = hash(&["panic"]);
            return v;
        }
    };
    if let Some(p) = panicked {
        v.finding = found("panic", p);
    }
    let (header, frame, (ow, oh, och), result) = match outcome {
        Outcome::Refused(e) => {
            v.behaviour = hash(&["refused", e.code(), &strip_digits(&e.to_string())]);
            if v.finding.is_none() && peak > v.budget {
                v.finding = found("memory", format!("{peak} B before anything was decoded"));
            }
            return v;
        }
        Outcome::Libjpeg => {
            v.behaviour = hash(&["libjpeg"]);
            if v.finding.is_none() && peak > v.budget {
                v.finding = found("memory", format!("{peak} B to decide the file is not ours"));
            }
            return v;
        }
        Outcome::OverLimit { header, frame } => {
            v.finding = v.finding.or_else(|| {
                found("pixel-limit", format!("our frame {frame:?} is over the limit; libjpeg's header says {header:?}"))
            });
            v.behaviour = hash(&["over-limit"]);
            return v;
        }
        Outcome::Ours { header, frame, output, result } => (header, frame, output, result),
    };
    v.ours = true;
    v.budget = budget(frame, ow * oh * och, ow * och, oh);
    // The pixel limit was checked against the probe's reading of the header: it must be the
    // frame libjpeg reads and the one we decode.
    let probed = probe(input).map(|p| (p.width as usize, p.height as usize)).ok();
    if v.finding.is_none() && probed != Some(header) {
        v.finding = found("pixel-limit", format!("the probe read {probed:?}, libjpeg {header:?}"));
    }
    if v.finding.is_none() && result.is_ok() && frame != header {
        v.finding = found("pixel-limit", format!("we decoded frame {frame:?}, libjpeg's header is {header:?}"));
    }
    if v.finding.is_none() && peak > v.budget {
        v.finding = found("memory", format!("peak {peak} B > budget {} B for frame {frame:?}", v.budget));
    }
    let theirs = libjpeg(input, n);
    let ours_tag = match &result {
        Ok(d) => format!("ok {} ch, mcu {}x{}", d.channels, d.mcu.0 / n, d.mcu.1 / n),
        Err(e) => format!("err {}", strip_digits(e)),
    };
    let theirs_tag = match &theirs {
        Ok(_) => "ok".to_string(),
        Err(e) => strip_digits(e),
    };
    let mut compare_tag = String::new();
    if let (Ok(ours), Ok((w, h, ch, px))) = (&result, &theirs) {
        let wild = ours.wild.iter().filter(|w| **w).count();
        v.wild = (wild, ours.wild.len());
        compare_tag = format!(
            "wild {}",
            match wild {
                0 => "none",
                w if w == ours.wild.len() => "all",
                _ => "some",
            }
        );
        if (ours.width, ours.height, ours.channels) != (*w, *h, *ch) {
            v.finding = v.finding.or_else(|| {
                found(
                    "mismatch",
                    format!("ours {}x{}x{}, libjpeg {w}x{h}x{ch}", ours.width, ours.height, ours.channels),
                )
            });
        } else if compared_at(n) {
            let d = diff(ours, px);
            v.compared = Some(d);
            compare_tag.push_str(match d.max {
                0 => " same",
                1..=2 => " close",
                3..=4 => " near",
                _ => " far",
            });
            if !within_tolerance(&d) {
                v.finding = v.finding.or_else(|| {
                    found(
                        "mismatch",
                        format!(
                            "at {n}/8: mean {:.3}, max {} at {:?} over {} samples outside {wild} wild MCUs",
                            d.mean, d.max, d.at, d.samples
                        ),
                    )
                });
            }
        }
    }
    if let (Err(e), Ok(_)) = (&result, &theirs) {
        // Production would answer 400 for a file libjpeg decodes.
        v.finding = v.finding.or_else(|| found("refusal", format!("ours refused ({e}) where libjpeg decodes")));
    }
    v.behaviour = hash(&["ours", &n.to_string(), &ours_tag, &theirs_tag, &compare_tag]);
    v
}
