//! Acceptance B1: every fixture photo comes out ≤ 1920 px and ≤ 500 KB, decodes with an
//! independent decoder, and is visibly the same photo; the EXIF-rotated one is upright
//! (1080x1920) with no GPS or camera tags left.

use std::path::PathBuf;

use image::{imageops::FilterType, DynamicImage, ImageDecoder};
use jewelshot_imaging::{compress, Limits};

fn fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/photos");
    if dir.is_dir() {
        return Some(dir);
    }
    assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI must have ../shared/fixtures");
    eprintln!("skipped: no ../shared/fixtures/photos beside this checkout");
    None
}

/// Decode with the `image` crate (not our mozjpeg path), upright.
fn decode_upright(bytes: &[u8]) -> DynamicImage {
    let mut dec = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .expect("format")
        .into_decoder()
        .expect("decoder");
    let orientation = dec.orientation().expect("orientation");
    let mut img = DynamicImage::from_decoder(dec).expect("decodes");
    img.apply_orientation(orientation);
    img
}

/// Mean absolute difference per channel (0-255) between two images at thumbnail size.
fn difference(a: &DynamicImage, b: &DynamicImage) -> f64 {
    let (w, h) = (96, 96 * a.height() / a.width());
    let ta = a.resize_exact(w, h, FilterType::Triangle).to_rgb8();
    let tb = b.resize_exact(w, h, FilterType::Triangle).to_rgb8();
    let sum: u64 = ta.as_raw().iter().zip(tb.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    sum as f64 / ta.as_raw().len() as f64
}

fn exif_of(jpeg: &[u8]) -> Option<exif::Exif> {
    exif::Reader::new().read_from_container(&mut std::io::Cursor::new(jpeg)).ok()
}

#[test]
fn it_every_fixture_fits_the_limits_and_looks_the_same() {
    let Some(dir) = fixtures() else { return };
    let limits = Limits::default();
    let mut seen = 0;
    let mut paths: Vec<_> = std::fs::read_dir(dir).expect("fixtures").map(|e| e.expect("entry").path()).collect();
    paths.sort();
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) != Some("jpg") {
            continue;
        }
        seen += 1;
        let input = std::fs::read(&path).expect("read");
        let out = compress(&input, &limits).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        assert!(out.width.max(out.height) <= 1920, "{name}: {}x{}", out.width, out.height);
        assert!(out.bytes.len() <= 500_000, "{name}: {} bytes", out.bytes.len());
        assert_eq!(out.content_type, "image/jpeg", "{name}");
        assert!(exif_of(&out.bytes).is_none(), "{name}: EXIF must be stripped");
        let decoded = decode_upright(&out.bytes);
        assert_eq!((decoded.width(), decoded.height()), (out.width, out.height), "{name}");
        let original = decode_upright(&input);
        let ar = |w: u32, h: u32| f64::from(w) / f64::from(h);
        assert!((ar(original.width(), original.height()) - ar(out.width, out.height)).abs() < 0.01, "{name}");
        let diff = difference(&original, &decoded);
        assert!(diff < 4.0, "{name}: mean difference {diff:.2} from the original");
        println!(
            "{name}: {}x{} → {}x{}, {} B, q{:?}, mean diff {diff:.2}",
            original.width(),
            original.height(),
            out.width,
            out.height,
            out.bytes.len(),
            out.quality
        );
    }
    assert!(seen >= 6, "expected the six fixture photos, saw {seen}");
}

#[test]
fn it_exif_rotated_photo_comes_out_upright_without_gps() {
    let Some(dir) = fixtures() else { return };
    let input = std::fs::read(dir.join("seeding-exif-orientation-6.jpg")).expect("read");
    let before = exif_of(&input).expect("the fixture carries EXIF");
    assert!(before.fields().any(|f| f.tag == exif::Tag::GPSLatitude), "the fixture has a GPS position");
    assert!(before.fields().any(|f| f.tag == exif::Tag::Make), "the fixture has a camera make");

    let out = compress(&input, &Limits::default()).expect("compress");
    assert_eq!((out.width, out.height), (1080, 1920), "portrait, upright");
    assert!(exif_of(&out.bytes).is_none(), "no EXIF at all: no GPS, no camera make, no orientation tag");
    assert!(!out.bytes.windows(6).any(|w| w == b"Exif\0\0"));
    // The pixels were rotated, not re-tagged: a decoder that ignores EXIF sees portrait too.
    let plain = image::load_from_memory(&out.bytes).expect("decode");
    assert_eq!((plain.width(), plain.height()), (1080, 1920));
    let diff = difference(&decode_upright(&input), &plain);
    assert!(diff < 4.0, "the same picture, upright (mean difference {diff:.2})");
}

/// The photo that needs a lower quality takes the same bytes every time: what is encoded is
/// decided from the probe's output at fixed rows, never from how far the threads got.
#[test]
fn it_an_oversized_photo_compresses_the_same_every_time() {
    let Some(dir) = fixtures() else { return };
    let input = std::fs::read(dir.join("life-3088x2056.jpg")).expect("read");
    let first = compress(&input, &Limits::default()).expect("compress");
    assert!(
        first.bytes.len() <= 500_000 && first.quality < Some(80),
        "{} B at q{:?}",
        first.bytes.len(),
        first.quality
    );
    for run in 1..8 {
        let again = compress(&input, &Limits::default()).expect("compress");
        assert_eq!(again.quality, first.quality, "run {run}");
        assert!(again.bytes == first.bytes, "run {run}: {} B vs {} B", again.bytes.len(), first.bytes.len());
    }
}

// The progressive decoder against libjpeg on every fixture: tests/it_progressive.rs.
