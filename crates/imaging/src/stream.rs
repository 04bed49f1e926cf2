//! The fast path for JPEGs that need shrinking: decode and resample/encode overlap on two
//! threads, the way libvips streams. The decoding thread hands over rows in chunks; the other
//! resamples each chunk horizontally at once (fast_image_resize), runs the vertical Lanczos3 pass
//! as soon as the rows an output row needs have arrived, and feeds finished rows straight into
//! the JPEG encoder. If the encoder's output is on course to exceed the size limit, a second
//! encoder at a predicted lower quality starts from the buffered rows and runs alongside, so an
//! oversized photo usually costs no extra pass after decoding.

use std::{
    io::Write,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
};

use fast_image_resize::{
    images::{Image, ImageRef},
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};
use mozjpeg::{compress::CompressStarted, ColorSpace, Decompress, Marker};

use crate::{
    jpeg,
    progressive::{self, Corrupt, Progressive},
    raster::Raster,
    ImageError, Limits,
};

/// Where the rows come from.
enum Source<'a> {
    Libjpeg(Box<mozjpeg::decompress::DecompressStarted<&'a [u8]>>),
    Ours(Progressive<'a>, usize),
}

/// Rows per hand-over between the threads. fast_image_resize recomputes its Lanczos weights on
/// every call (~0.3 ms at 1920 px), so chunks must not be small: 8 rows cost 4x the time of 64.
const CHUNK_ROWS: usize = 64;
/// Fixed-point precision of the vertical filter weights.
const PRECISION: u32 = 14;

/// What the streaming path produced.
pub struct Streamed {
    pub bytes: Vec<u8>,
    pub quality: u8,
    pub width: u32,
    pub height: u32,
    /// The resampled image, kept in case no encoding fitted and dimensions must shrink.
    pub raster: Raster,
    pub icc: Option<Vec<u8>>,
    pub fitted: bool,
    /// EXIF orientation still to apply to `raster` (nothing was encoded then).
    pub orientation: u16,
}

/// A `Write` that counts what the encoder has emitted so far.
struct Counted {
    buf: Vec<u8>,
    written: Arc<AtomicUsize>,
}

impl Write for Counted {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written.store(self.buf.len(), Ordering::Relaxed);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One JPEG encoder running on its own thread, fed batches of finished rows.
struct Encoder<'scope> {
    quality: u8,
    /// Optimized Huffman tables: a few percent smaller, but nothing is written before the end,
    /// so its size cannot be projected; the standard-table probe encoder's projection is used.
    optimized: bool,
    tx: Option<mpsc::Sender<Arc<Vec<u8>>>>,
    written: Arc<AtomicUsize>,
    rows_done: Arc<AtomicUsize>,
    join: std::thread::ScopedJoinHandle<'scope, Result<Vec<u8>, ImageError>>,
}

struct Shape<'a> {
    width: u32,
    height: u32,
    channels: u8,
    icc: Option<&'a [u8]>,
}

fn spawn_encoder<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    shape: &Shape<'scope>,
    quality: u8,
    optimized: bool,
) -> Encoder<'scope> {
    let (tx, rx) = mpsc::channel::<Arc<Vec<u8>>>();
    let written = Arc::new(AtomicUsize::new(0));
    let rows_done = Arc::new(AtomicUsize::new(0));
    let (w, h, channels, icc) = (shape.width, shape.height, shape.channels, shape.icc);
    let (written_in, rows_in) = (written.clone(), rows_done.clone());
    let join = scope.spawn(move || {
        let run = || -> std::io::Result<Vec<u8>> {
            let c = jpeg::compressor(w, h, channels, quality, optimized);
            let sink = Counted { buf: Vec::with_capacity(512 * 1024), written: written_in };
            let mut started: CompressStarted<Counted> = c.start_compress(sink)?;
            if let Some(icc) = icc {
                started.write_icc_profile(icc);
            }
            let stride = w as usize * usize::from(channels);
            for batch in rx {
                started.write_scanlines(&batch)?;
                rows_in.fetch_add(batch.len() / stride, Ordering::Relaxed);
            }
            Ok(started.finish()?.buf)
        };
        catch_unwind(AssertUnwindSafe(run))
            .map_err(unwound)?
            .map_err(|e| ImageError::Internal(format!("JPEG encode: {e}")))
    });
    Encoder { quality, optimized, tx: Some(tx), written, rows_done, join }
}

impl Encoder<'_> {
    fn feed(&self, rows: Arc<Vec<u8>>) {
        if let Some(tx) = &self.tx {
            // A failed encoder reports its error when joined.
            let _ = tx.send(rows);
        }
    }
}

/// Lanczos3 taps for each output row: (first input row, fixed-point weights).
fn vertical_taps(src: usize, dst: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = src as f64 / dst as f64;
    let support = 3.0 * scale.max(1.0);
    let filter_scale = scale.max(1.0);
    let lanczos3 = |x: f64| {
        if x.abs() < 1e-9 {
            1.0
        } else if x.abs() < 3.0 {
            let px = std::f64::consts::PI * x;
            3.0 * px.sin() * (px / 3.0).sin() / (px * px)
        } else {
            0.0
        }
    };
    (0..dst)
        .map(|j| {
            let center = (j as f64 + 0.5) * scale;
            let left = ((center - support).floor().max(0.0)) as usize;
            let right = ((center + support).ceil() as usize).min(src);
            let raw: Vec<f64> = (left..right).map(|i| lanczos3((i as f64 + 0.5 - center) / filter_scale)).collect();
            let sum: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION);
            let mut w: Vec<i32> = raw.iter().map(|v| (v / sum * one).round() as i32).collect();
            // Make the weights sum to exactly one so flat areas stay exactly flat.
            let err = (1i32 << PRECISION) - w.iter().sum::<i32>();
            if let Some(mid) = w.get_mut((right - left) / 2) {
                *mid += err;
            }
            (left, w)
        })
        .collect()
}

fn vertical_row(hbuf: &[u8], stride: usize, first: usize, weights: &[i32], acc: &mut [i32], out: &mut [u8]) {
    acc.fill(1 << (PRECISION - 1));
    for (k, w) in weights.iter().enumerate() {
        let row = &hbuf[(first + k) * stride..(first + k + 1) * stride];
        for (a, p) in acc.iter_mut().zip(row) {
            *a += w * i32::from(*p);
        }
    }
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = (*a >> PRECISION).clamp(0, 255) as u8;
    }
}

fn unwound(panic: Box<dyn std::any::Any + Send>) -> ImageError {
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "codec error".into());
    ImageError::Corrupt(format!("JPEG: {msg}"))
}

fn io_corrupt(e: std::io::Error) -> ImageError {
    ImageError::Corrupt(format!("JPEG: {e}"))
}

/// Try the streaming path. `Ok(None)`: not applicable (no shrink needed, rotated or CMYK) —
/// the general path handles those.
pub fn compress_jpeg(input: &[u8], limits: &Limits) -> Result<Option<Streamed>, ImageError> {
    if !jpeg::is_complete(input) {
        return Err(ImageError::Corrupt("JPEG data is truncated (no end-of-image marker after the last scan)".into()));
    }
    // Header, metadata and the decoder's start on this thread (libjpeg reports by unwinding).
    let started = catch_unwind(AssertUnwindSafe(|| {
        let markers = [Marker::APP(1), Marker::APP(2), Marker::APP(14)];
        let mut d = Decompress::builder().with_markers(&markers).from_mem(input).map_err(io_corrupt)?;
        let meta = jpeg::read_meta(&d);
        let (w, h) = d.size();
        // The limit applies to the long side, which rotation does not change.
        let (tw, th) = crate::raster::fit(w as u32, h as u32, limits.max_side);
        let cmyk = matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK);
        let n = jpeg::scale_numerator(w as u32, h as u32, tw.max(th));
        // Without DCT scaling the decode is short next to the resample: overlapping them buys
        // nothing and the per-chunk resample costs more than one whole-image pass.
        if cmyk || n == 8 || (tw, th) == (w as u32, h as u32) {
            return Ok(None);
        }
        // Progressive: our own two-thread decoder (libjpeg would decode every scan serially first).
        let ours = std::env::var_os("JEWELSHOT_IMAGING_LIBJPEG").is_none();
        match Progressive::parse(input).map(|p| p.filter(|_| ours)) {
            Ok(Some(p)) => {
                let channels = p.channels();
                let (sw, sh) = p.scaled(usize::from(n));
                return Ok(Some((
                    Source::Ours(p, usize::from(n)),
                    sw,
                    sh,
                    channels,
                    tw,
                    th,
                    meta.icc,
                    meta.orientation,
                )));
            }
            Ok(None) => {}
            Err(Corrupt(e)) => return Err(ImageError::Corrupt(format!("JPEG: {e}"))),
        }
        d.scale(n);
        d.do_fancy_upsampling(false);
        let (s, channels) = match d.image().map_err(io_corrupt)? {
            mozjpeg::Format::RGB(s) => (s, 3u8),
            mozjpeg::Format::Gray(s) => (s, 1u8),
            mozjpeg::Format::CMYK(_) => return Ok(None),
        };
        let (sw, sh) = (s.width(), s.height());
        Ok(Some((Source::Libjpeg(Box::new(s)), sw, sh, channels, tw, th, meta.icc, meta.orientation)))
    }))
    .map_err(unwound)??;
    let Some((source, sw, sh, channels, tw, th, icc, orientation)) = started else { return Ok(None) };
    // A rotated photo's rows are not the output's rows: resample while decoding, encode after.
    let encode = orientation <= 1;
    let c = usize::from(channels);

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
        // Row buffers go back to the decoder once resampled: fresh memory costs a page fault
        // per 4 KiB, which on a VM was a third of the decode.
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        let icc_ref = icc.as_deref();
        let worker = scope.spawn(move || {
            catch_unwind(AssertUnwindSafe(|| {
                resample_and_encode(scope, rx, recycle_tx, (sw, sh, channels), (tw, th), icc_ref, limits, encode)
            }))
            .map_err(unwound)?
        });
        let decoded = catch_unwind(AssertUnwindSafe(move || -> Result<(), ImageError> {
            match source {
                Source::Libjpeg(mut s) => {
                    let mut remaining = sh;
                    while remaining > 0 {
                        let rows = remaining.min(CHUNK_ROWS);
                        let mut buf = recycle_rx.try_recv().unwrap_or_default();
                        buf.resize(rows * sw * c, 0);
                        s.read_scanlines_into(&mut buf).map_err(io_corrupt)?;
                        remaining -= rows;
                        if tx.send(buf).is_err() {
                            break; // the worker failed; its error is reported below
                        }
                    }
                    drop(tx);
                    s.finish().map_err(io_corrupt)
                }
                Source::Ours(p, n) => {
                    let r = progressive::decode(
                        &p,
                        n,
                        CHUNK_ROWS,
                        || recycle_rx.try_recv().unwrap_or_default(),
                        |rows| tx.send(rows).is_ok(),
                    );
                    drop(tx);
                    r.map_err(|Corrupt(e)| ImageError::Corrupt(format!("JPEG: {e}")))
                }
            }
        }))
        .map_err(unwound)
        .and_then(|r| r);
        let decoded_at = std::time::Instant::now();
        let worked = worker.join().map_err(unwound).and_then(|r| r);
        if std::env::var_os("JEWELSHOT_IMAGING_TRACE").is_some() {
            eprintln!("stream: worker finished {:.1} ms after the decoder", decoded_at.elapsed().as_secs_f64() * 1e3);
        }
        decoded?;
        let mut streamed = worked?;
        streamed.icc = icc.clone();
        streamed.orientation = orientation;
        Ok(Some(streamed))
    })
}

/// What optimized Huffman tables leave of a standard-table encoding (measured 0.97-0.99).
const OPTIMIZED: f64 = 0.98;

#[allow(clippy::too_many_arguments)]
fn resample_and_encode<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    rx: mpsc::Receiver<Vec<u8>>,
    recycle: mpsc::Sender<Vec<u8>>,
    (sw, sh, channels): (usize, usize, u8),
    (tw, th): (u32, u32),
    icc: Option<&'scope [u8]>,
    limits: &Limits,
    encode: bool,
) -> Result<Streamed, ImageError> {
    let c = usize::from(channels);
    let pixel_type = if channels == 1 { PixelType::U8 } else { PixelType::U8x3 };
    let (tw_us, th_us) = (tw as usize, th as usize);
    let stride = tw_us * c;
    let taps = vertical_taps(sh, th_us);
    // Horizontally resampled rows, only those later output rows still need: rows before
    // `hbase` are dropped as the vertical pass moves on, so the buffer stays a few chunks tall.
    let mut hbuf: Vec<u8> = Vec::with_capacity(stride * (CHUNK_ROWS * 3 + 16));
    let mut hbase = 0usize;
    // Finished output rows, in the batches the encoders were fed (kept for a late encoder and
    // for the raster when nothing fitted).
    let mut batches: Vec<Arc<Vec<u8>>> = Vec::new();
    let mut acc = vec![0i32; stride];
    let mut next = 0usize;
    let internal = |e: &dyn std::fmt::Display| ImageError::Internal(format!("resize: {e}"));
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    let shape = Shape { width: tw, height: th, channels, icc };
    // The first encoder (standard tables, the start quality) streams out, so its running size
    // projects the final size; when that is over the limit, lower-quality encoders with
    // optimized tables start from the rows so far, each on its own thread.
    let mut encoders = if encode { vec![spawn_encoder(scope, &shape, limits.quality, false)] } else { Vec::new() };

    let trace = std::env::var_os("JEWELSHOT_IMAGING_TRACE").is_some();
    let (mut t_h, mut t_v) = (0.0, 0.0);
    for chunk in rx {
        let t0 = std::time::Instant::now();
        let rows = chunk.len() / (sw * c);
        let at = hbuf.len();
        if sw as u32 == tw {
            hbuf.extend_from_slice(&chunk);
        } else {
            hbuf.resize(at + rows * stride, 0);
            let src = ImageRef::new(sw as u32, rows as u32, &chunk, pixel_type).map_err(|e| internal(&e))?;
            let mut dst =
                Image::from_slice_u8(tw, rows as u32, &mut hbuf[at..], pixel_type).map_err(|e| internal(&e))?;
            resizer.resize(&src, &mut dst, &options).map_err(|e| internal(&e))?;
        }
        // The decoder may fill this buffer again.
        let _ = recycle.send(chunk);
        let t1 = std::time::Instant::now();
        t_h += (t1 - t0).as_secs_f64();
        let have = hbase + hbuf.len() / stride;
        let mut upto = next;
        while upto < th_us && taps[upto].0 + taps[upto].1.len() <= have {
            upto += 1;
        }
        if upto > next {
            let mut batch = vec![0u8; (upto - next) * stride];
            for (row, out) in (next..upto).zip(batch.chunks_exact_mut(stride)) {
                let (first, w) = &taps[row];
                vertical_row(&hbuf, stride, *first - hbase, w, &mut acc, out);
            }
            next = upto;
            let batch = Arc::new(batch);
            for e in &encoders {
                e.feed(batch.clone());
            }
            batches.push(batch);
            // Drop the rows no later output row reads.
            let keep_from = taps.get(next).map_or(have, |t| t.0).min(have);
            if keep_from > hbase {
                hbuf.drain(..(keep_from - hbase) * stride);
                hbase = keep_from;
            }
        }
        t_v += t1.elapsed().as_secs_f64();
        if let Some(q) = encoders.first().and_then(|probe| another_quality(probe, &encoders, th_us, limits)) {
            if trace {
                let p = &encoders[0];
                let (w, d) = (p.written.load(Ordering::Relaxed), p.rows_done.load(Ordering::Relaxed));
                eprintln!("stream: at row {d}/{th_us} the probe projects {} B: start q{q}", w * th_us / d.max(1));
            }
            let e = spawn_encoder(scope, &shape, q, true);
            for b in &batches {
                e.feed(b.clone());
            }
            encoders.push(e);
        }
    }
    if trace {
        eprintln!("stream: horizontal {:.1} ms, vertical {:.1} ms, {} encoders", t_h * 1e3, t_v * 1e3, encoders.len());
    }
    if next < th_us {
        return Err(ImageError::Corrupt("JPEG ended before all rows were decoded".into()));
    }
    // The best quality that fits wins; otherwise the smallest, and the caller shrinks further.
    for e in encoders.iter_mut() {
        e.tx = None;
    }
    let mut results = Vec::with_capacity(encoders.len());
    for e in encoders {
        let bytes = e.join.join().map_err(unwound)??;
        results.push((e.quality, e.optimized, bytes));
    }
    if trace {
        let sizes: Vec<String> =
            results.iter().map(|(q, o, b)| format!("q{q}{}: {} B", if *o { " opt" } else { "" }, b.len())).collect();
        eprintln!("stream: encoded {}", sizes.join(", "));
    }
    let fits = |b: &Vec<u8>| b.len() <= limits.max_output_bytes;
    let fitted = results.iter().any(|(_, _, b)| fits(b));
    let (quality, _, bytes) = results
        .into_iter()
        .filter(|(_, _, b)| !fitted || fits(b))
        .max_by_key(|(q, _, b)| if fitted { (i64::from(*q), -(b.len() as i64)) } else { (0, -(b.len() as i64)) })
        .unwrap_or((limits.quality, false, Vec::new()));
    // The raster is wanted only when nothing fitted or nothing was encoded (rotated).
    let data = if fitted { Vec::new() } else { batches.iter().flat_map(|b| b.iter().copied()).collect() };
    Ok(Streamed {
        bytes,
        quality,
        width: tw,
        height: th,
        raster: Raster { width: tw, height: th, channels, data },
        icc: None,
        fitted,
        orientation: 1,
    })
}

/// When the probe projects a size over the limit and no running encoder is predicted to fit,
/// the highest quality below them that is (never below the floor; at most 4 encoders).
fn another_quality(probe: &Encoder<'_>, encoders: &[Encoder<'_>], rows: usize, limits: &Limits) -> Option<u8> {
    let (written, done) = (probe.written.load(Ordering::Relaxed), probe.rows_done.load(Ordering::Relaxed));
    if encoders.len() >= 4 || done < rows / 3 || written == 0 {
        return None;
    }
    let projected = (written * rows / done) as f64;
    let max = limits.max_output_bytes as f64;
    let predicted = |q: u8| projected * crate::relative_size(q) / crate::relative_size(probe.quality) * OPTIMIZED;
    let lowest = encoders.iter().map(|e| e.quality).min()?;
    if projected <= max * 0.97 || predicted(lowest) <= max * 0.98 || lowest <= limits.min_quality {
        return None;
    }
    let mut q = lowest.saturating_sub(5).max(limits.min_quality);
    while q > limits.min_quality && predicted(q) > max * 0.97 {
        q = q.saturating_sub(5).max(limits.min_quality);
    }
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_cover_and_sum_to_one() {
        let taps = vertical_taps(2261, 1920);
        assert_eq!(taps.len(), 1920);
        for (first, w) in &taps {
            assert!(first + w.len() <= 2261);
            assert_eq!(w.iter().sum::<i32>(), 1 << PRECISION);
        }
        assert_eq!(taps[0].0, 0);
    }

    #[test]
    fn flat_rows_stay_flat() {
        let stride = 6;
        let hbuf: Vec<u8> = [10u8, 200, 90].repeat(2 * 20);
        let taps = vertical_taps(20, 7);
        let mut acc = vec![0; stride];
        let mut out = vec![0u8; stride];
        for (first, w) in &taps {
            vertical_row(&hbuf, stride, *first, w, &mut acc, &mut out);
            assert_eq!(out, [10, 200, 90, 10, 200, 90]);
        }
    }
}
