//! The two-thread progressive decoder (`src/progressive.rs`) runs on untrusted uploads: held to
//! libjpeg and to its limits on every fixture photo, on the committed corpus (seeds plus every
//! input the fuzzer ever failed on), and — `just fuzz-imaging MINUTES` — on mutants of both.
//!
//! Properties, for every input at every production scale (`progressive::check`): no panic; no
//! frame decoded past the pixel limit, nor one other than the frame the limit was checked
//! against; peak heap within the decoder's budget (measured by the global allocator below,
//! which also hard-caps the process so a runaway allocation fails fast); where libjpeg decodes
//! the file, ours decodes it too, to the same size and, outside MCUs whose coefficients no 8-bit
//! encoder writes, the same pixels (the unit tests' tolerance).

mod progressive;

use std::{
    alloc::System,
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use cap::Cap;
use jewelshot_imaging::{
    harness::{self, Outcome},
    Limits,
};
use peakmem_alloc::PeakMemAlloc;
use progressive::{
    check::{self, check, diff, libjpeg, within_tolerance, SCALES},
    seeds,
};

pub static PEAK: PeakMemAlloc<System> = PeakMemAlloc::system();

#[global_allocator]
static ALLOC: Cap<&PeakMemAlloc<System>> = Cap::new(&PEAK, usize::MAX);

/// Above what the process already holds: far past any budget, well short of swapping the machine.
const HARD_CAP: usize = 3 << 30;

/// One test at a time in this binary: the peak heap is the process's.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _ = ALLOC.set_limit(ALLOC.allocated() + HARD_CAP);
    guard
}

#[test]
fn it_corpus_decodes_within_limits_as_libjpeg_does() {
    let _one = exclusive();
    let corpus = seeds::jpegs_in(&seeds::corpus_dir());
    assert!(corpus.len() >= 20, "the corpus is {} files: {}", corpus.len(), seeds::corpus_dir().display());
    let (mut failures, mut decoded, mut compared) = (Vec::new(), 0, 0);
    for (name, input) in &corpus {
        for n in SCALES {
            let v = check(input, n);
            decoded += usize::from(v.ours);
            compared += usize::from(v.compared.is_some());
            if let Some(f) = v.finding {
                failures.push(format!("{name} at {n}/8: {}: {}", f.kind, f.detail));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // A corpus our decoder never reaches would pass vacuously.
    assert!(decoded >= corpus.len() * 2, "only {decoded} of {} checks reached our decoder", corpus.len() * 6);
    assert!(compared >= corpus.len(), "only {compared} checks compared pixels with libjpeg");
    eprintln!(
        "{} files × {} scales: {decoded} decoded by ours, {compared} compared with libjpeg",
        corpus.len(),
        SCALES.len()
    );
}

/// Well-formed files of every layout and both scan scripts: ours takes each, and matches
/// libjpeg everywhere (no MCU is excused).
#[test]
fn it_every_layout_decodes_as_libjpeg_does() {
    let _one = exclusive();
    for (name, input) in seeds::generated() {
        for n in SCALES {
            let v = check(&input, n);
            assert!(v.finding.is_none(), "{name} at {n}/8: {:?}", v.finding);
            assert!(v.ours, "{name}: a progressive 8-bit JPEG is ours");
            assert!(v.peak <= v.budget, "{name} at {n}/8");
            if check::compared_at(n) {
                let d = v.compared.unwrap_or_else(|| panic!("{name} at {n}/8: not compared"));
                assert_eq!(v.wild.0, 0, "{name} at {n}/8: a well-formed file has no wild MCU");
                assert!(within_tolerance(&d), "{name} at {n}/8: {d:?}");
            }
        }
    }
}

/// The scale production decodes a photo at for the 1920 px target.
fn production_scale(w: usize, h: usize) -> usize {
    let long = w.max(h);
    SCALES.into_iter().find(|n| (long * n).div_ceil(8) >= 1920).unwrap_or(8)
}

/// Every fixture photo through the production gate at the scale production uses: the progressive
/// ones decode as libjpeg does (tame MCUs to the unit tests' tolerance, and a PSNR floor over all
/// pixels); the baseline ones are left to libjpeg, and a progressive re-encoding of each at full
/// size (same sampling, standard script) is held to the same.
#[test]
fn it_every_fixture_decodes_as_libjpeg_does() {
    let _one = exclusive();
    let Some(dir) = seeds::fixtures_dir() else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI must have ../shared/fixtures");
        eprintln!("skipped: no ../shared/fixtures/photos beside this checkout");
        return;
    };
    let limits = Limits::default();
    let fixtures = seeds::jpegs_in(&dir);
    assert!(fixtures.len() >= 6, "expected the six fixture photos, saw {}", fixtures.len());
    let mut progressive_seen = 0;
    for (name, input) in &fixtures {
        let p = jewelshot_imaging::probe(input).expect("probe");
        let n = production_scale(p.width as usize, p.height as usize);
        let (label, file, scales) = match harness::progressive(input, n, &limits) {
            Outcome::Libjpeg => (format!("{name} (re-encoded progressive)"), reencode_progressive(input), vec![n]),
            Outcome::Ours { .. } => {
                progressive_seen += 1;
                (name.clone(), input.clone(), vec![n, 8])
            }
            Outcome::Refused(e) => panic!("{name}: refused: {e}"),
            Outcome::OverLimit { frame, .. } => panic!("{name}: {frame:?} over the limit"),
        };
        // The progressive photos at the production scale and at full size; re-encodings at the
        // production scale (their full size is what the fuzzer's truncated seeds exercise).
        for n in scales {
            let Outcome::Ours { result, frame, header, .. } = harness::progressive(&file, n, &limits) else {
                panic!("{label}: not decoded by ours");
            };
            assert_eq!(frame, header, "{label}");
            let ours = result.unwrap_or_else(|e| panic!("{label}: {e}"));
            let (w, h, ch, theirs) = libjpeg(&file, n).unwrap_or_else(|e| panic!("{label}: libjpeg: {e}"));
            assert_eq!((ours.width, ours.height, ours.channels), (w, h, ch), "{label} at {n}/8");
            let mse = ours.pixels.iter().zip(&theirs).map(|(a, b)| f64::from(a.abs_diff(*b)).powi(2)).sum::<f64>()
                / ours.pixels.len() as f64;
            let psnr = 10.0 * (255.0f64.powi(2) / mse.max(1e-9)).log10();
            let d = diff(&ours, &theirs);
            let wild = ours.wild.iter().filter(|w| **w).count();
            eprintln!("{label} at {n}/8: PSNR {psnr:.1} dB, tame MCUs {d:?}, {wild}/{} wild", ours.wild.len());
            // 3/8, 5/8, 8/8: the same IDCT up to float rounding. 4/8: libjpeg's "reduced" 4x4
            // IDCT lets some aliasing through that our low-pass one does not.
            let floor = if n == 4 { 45.0 } else { 58.0 };
            assert!(psnr >= floor, "{label} at {n}/8: PSNR {psnr:.1} dB < {floor}");
            if check::compared_at(n) {
                assert!(within_tolerance(&d), "{label} at {n}/8: {d:?}");
            }
        }
    }
    assert_eq!(progressive_seen, 3, "three of the fixtures are progressive");
}

/// A baseline photo as a progressive JPEG of the same size and chroma layout (libjpeg's standard
/// script), so our decoder sees its content too.
fn reencode_progressive(input: &[u8]) -> Vec<u8> {
    let d = mozjpeg::Decompress::new_mem(input).expect("header");
    let layout: Vec<(u8, u8)> = d.components().iter().map(|c| (c.h_samp_factor as u8, c.v_samp_factor as u8)).collect();
    let mut s = d.rgb().expect("rgb");
    let (w, h) = (s.width(), s.height());
    let px = s.read_scanlines::<u8>().expect("rows");
    let (hmax, vmax) = (layout[0].0, layout[0].1);
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_fastest_defaults();
    c.set_size(w, h);
    c.set_quality(90.0);
    c.set_chroma_sampling_pixel_sizes((hmax, vmax), (hmax, vmax));
    c.set_progressive_mode();
    let mut e = c.start_compress(Vec::new()).expect("start");
    e.write_scanlines(&px).expect("rows");
    e.finish().expect("finish")
}

/// `just fuzz-imaging MINUTES` runs this (release build): `JEWELSHOT_FUZZ_SECONDS` long, from
/// `JEWELSHOT_FUZZ_SEED` (default: the clock). Failures are written, minimized, to the corpus;
/// inputs that reached new behaviour to `target/fuzz-imaging/queue`, the next run's pool.
#[test]
#[ignore = "long: run by `just fuzz-imaging MINUTES`"]
fn fuzz_progressive() {
    let _one = exclusive();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seconds = env("JEWELSHOT_FUZZ_SECONDS").unwrap_or(60);
    let seed = env("JEWELSHOT_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-imaging");
    let dirs = progressive::Dirs {
        findings: std::env::var_os("JEWELSHOT_FUZZ_FINDINGS").map_or_else(seeds::corpus_dir, PathBuf::from),
        queue: target.join("queue"),
        in_flight: target.join("in-flight.jpg"),
    };
    let findings = progressive::fuzz(Duration::from_secs(seconds), seed, &dirs);
    let list: Vec<String> =
        findings.iter().map(|(f, p)| format!("{}: {} ({})", f.kind, f.detail, progressive::path_name(p))).collect();
    assert!(list.is_empty(), "{} findings (seed {seed}):\n{}", list.len(), list.join("\n"));
}
