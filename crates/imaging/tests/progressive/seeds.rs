//! Where inputs come from: progressive JPEGs encoded here (every sampling layout, both scan
//! scripts), the committed corpus, and the fixture photos cut to a few rows.

use std::path::{Path, PathBuf};

use super::mutate::with_height;

/// The committed corpus: seeds made with cjpeg/jpegtran (see its README) and every input the
/// fuzzer ever failed on.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/progressive")
}

pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/photos");
    dir.is_dir().then_some(dir)
}

/// `*.jpg` files in `dir`, sorted (so runs are reproducible).
pub fn jpegs_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("jpg"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            Some((name, std::fs::read(&p).ok()?))
        })
        .collect()
}

/// Chroma layout of an encoded seed.
#[derive(Clone, Copy)]
pub enum Layout {
    Gray,
    /// Cb/Cr pixel size (h, v): (1,1) 4:4:4, (2,1) 4:2:2, (2,2) 4:2:0, (1,2) 4:4:0.
    Ycc(u8, u8),
}

/// A progressive JPEG of a w×h test picture. `mozjpeg_script`: mozjpeg's own optimized scans
/// (many small ones, successive approximation on DC too); otherwise libjpeg's standard script.
pub fn encode(w: usize, h: usize, layout: Layout, mozjpeg_script: bool, smooth: bool, quality: f32) -> Vec<u8> {
    let sample = |x: usize, y: usize, k: usize| -> u8 {
        if smooth {
            let (fx, fy) = (x as f64 / 23.0, y as f64 / 31.0);
            (128.0 + 90.0 * (fx * (1.0 + k as f64 * 0.3) + fy + k as f64).sin()) as u8
        } else {
            ((x * (7 + k) + y * (3 + 2 * k) + (x * y) % (5 + k)) % 256) as u8
        }
    };
    let (space, channels) = match layout {
        Layout::Gray => (mozjpeg::ColorSpace::JCS_GRAYSCALE, 1),
        Layout::Ycc(..) => (mozjpeg::ColorSpace::JCS_RGB, 3),
    };
    let mut data = Vec::with_capacity(w * h * channels);
    for y in 0..h {
        for x in 0..w {
            for k in 0..channels {
                data.push(sample(x, y, k));
            }
        }
    }
    let mut c = mozjpeg::Compress::new(space);
    if !mozjpeg_script {
        c.set_fastest_defaults();
    }
    c.set_size(w, h);
    c.set_quality(quality);
    if let Layout::Ycc(sh, sv) = layout {
        c.set_chroma_sampling_pixel_sizes((sh, sv), (sh, sv));
    }
    c.set_progressive_mode();
    let mut s = c.start_compress(Vec::new()).expect("start");
    s.write_scanlines(&data).expect("rows");
    s.finish().expect("finish")
}

/// Seeds encoded here: each layout, both scripts, odd and tiny sizes.
pub fn generated() -> Vec<(String, Vec<u8>)> {
    let cases: [(usize, usize, Layout, bool, bool, f32); 14] = [
        (64, 48, Layout::Ycc(2, 2), false, true, 90.0),
        (64, 48, Layout::Ycc(2, 2), true, false, 75.0),
        (33, 17, Layout::Ycc(2, 1), false, false, 90.0),
        (40, 40, Layout::Ycc(1, 1), false, true, 95.0),
        (40, 40, Layout::Ycc(1, 1), true, true, 60.0),
        (24, 40, Layout::Ycc(1, 2), false, false, 85.0),
        (96, 64, Layout::Gray, false, true, 90.0),
        (50, 30, Layout::Gray, true, false, 80.0),
        (120, 80, Layout::Ycc(2, 2), true, true, 92.0),
        (17, 9, Layout::Ycc(2, 2), true, false, 70.0),
        (200, 8, Layout::Ycc(2, 1), false, true, 85.0),
        (8, 120, Layout::Ycc(2, 2), false, false, 85.0),
        (1, 1, Layout::Ycc(2, 2), false, true, 90.0),
        (3, 300, Layout::Gray, true, false, 90.0),
    ];
    cases
        .iter()
        .enumerate()
        .map(|(i, &(w, h, layout, moz, smooth, q))| (format!("generated-{i}"), encode(w, h, layout, moz, smooth, q)))
        .collect()
}

/// The fixture photos cut to a few rows (their frame height rewritten): real camera and encoder
/// output, cheap to decode.
pub fn fixture_strips() -> Vec<(String, Vec<u8>)> {
    let Some(dir) = fixtures_dir() else { return Vec::new() };
    jpegs_in(&dir).into_iter().map(|(name, b)| (format!("fixture-{name}"), with_height(&b, 24))).collect()
}
