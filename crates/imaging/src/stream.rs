//! The fast path for JPEGs that need shrinking: decode and resample/encode overlap on two
//! threads, the way libvips streams. The decoding thread hands over rows in chunks; the other
//! resamples each chunk horizontally at once (fast_image_resize), runs the vertical Lanczos3 pass
//! as soon as the rows an output row needs have arrived, and feeds finished rows straight into
//! the JPEG encoder. That first encoder (the probe) is read at a third and at two thirds of the
//! rows: if its output is on course to exceed the size limit, an encoder at a predicted lower
//! quality starts from the buffered rows and runs alongside, and a probe far over the limit is
//! stopped — so an oversized photo costs about one encode, not a pass per quality step. The
//! readings are taken where libjpeg flushed its output buffer on a fixed row band, so the same
//! input always gets the same encoders and the same bytes.

use std::{
    io::Write,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
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

/// Where an encoder's output stood each time libjpeg emptied its 64 KiB output buffer: (row,
/// bytes so far), `row` the middle of the 16-row band being compressed at that moment. A pure
/// function of the image (the encoder is fed on 16-row boundaries), so decisions taken from it
/// do not depend on thread timing.
type Flushes = Arc<Mutex<Vec<(usize, usize)>>>;

/// A `Write` that records where the encoder was when it flushed.
struct Counted {
    buf: Vec<u8>,
    at_row: Arc<AtomicUsize>,
    flushes: Flushes,
}

impl Write for Counted {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        let at = (self.at_row.load(Ordering::Relaxed), self.buf.len());
        self.flushes.lock().unwrap_or_else(|e| e.into_inner()).push(at);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Rows libjpeg compresses at once (one MCU row at 4:2:0; two for gray).
const BAND: usize = 16;

/// One JPEG encoder running on its own thread, fed batches of finished rows.
struct Encoder<'scope> {
    quality: u8,
    /// Optimized Huffman tables: a few percent smaller, but nothing is written before the end,
    /// so only a standard-table encoder's flushes project the final size.
    optimized: bool,
    tx: Option<mpsc::Sender<Arc<Vec<u8>>>>,
    flushes: Flushes,
    /// `None`: retired before the last row (its sender dropped early).
    join: std::thread::ScopedJoinHandle<'scope, Result<Option<Vec<u8>>, ImageError>>,
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
    let flushes = Flushes::default();
    let (w, h, channels, icc) = (shape.width, shape.height, shape.channels, shape.icc);
    let flushes_in = flushes.clone();
    let join = scope.spawn(move || {
        let run = || -> std::io::Result<Option<Vec<u8>>> {
            let c = jpeg::compressor(w, h, channels, quality, optimized);
            let at_row = Arc::new(AtomicUsize::new(0));
            let sink = Counted { buf: Vec::with_capacity(512 * 1024), at_row: at_row.clone(), flushes: flushes_in };
            let mut started: CompressStarted<Counted> = c.start_compress(sink)?;
            if let Some(icc) = icc {
                started.write_icc_profile(icc);
            }
            let stride = w as usize * usize::from(channels);
            let mut fed = 0usize;
            for batch in rx {
                // Cut on band boundaries: any flush inside a call is then known to come from
                // the band that call completes.
                let mut rest: &[u8] = &batch;
                while !rest.is_empty() {
                    let take = (BAND - fed % BAND).min(rest.len() / stride).max(1);
                    let (slice, tail) = rest.split_at((take * stride).min(rest.len()));
                    let end = fed + take;
                    at_row.store(((end - 1) / BAND * BAND + end) / 2, Ordering::Relaxed);
                    started.write_scanlines(slice)?;
                    fed = end;
                    rest = tail;
                }
            }
            if fed < h as usize {
                started.abort();
                return Ok(None);
            }
            at_row.store(h as usize, Ordering::Relaxed);
            Ok(Some(started.finish()?.buf))
        };
        catch_unwind(AssertUnwindSafe(run))
            .map_err(unwound)?
            .map_err(|e| ImageError::Internal(format!("JPEG encode: {e}")))
    });
    Encoder { quality, optimized, tx: Some(tx), flushes, join }
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

/// libjpeg's reading of the header, with the markers we act on saved: every JPEG decode starts
/// here, and a file whose header libjpeg refuses goes no further.
pub(crate) fn libjpeg_header(input: &[u8]) -> std::io::Result<Decompress<&[u8]>> {
    let markers = [Marker::APP(1), Marker::APP(2), Marker::APP(14)];
    Decompress::builder().with_markers(&markers).from_mem(input)
}

/// Our progressive decoder for `input`, if it takes the file; `header` is libjpeg's reading of the
/// frame size, which the pixel limit was checked against.
pub(crate) fn ours(input: &[u8], header: (usize, usize)) -> Result<Option<Progressive<'_>>, ImageError> {
    match Progressive::parse(input) {
        // Two readings of one header: decoding ours would bypass the limit checked against libjpeg's.
        Ok(Some(p)) if (p.width, p.height) != header => {
            Err(ImageError::Corrupt("JPEG: the frame header reads two ways".into()))
        }
        Ok(p) => Ok(p),
        Err(Corrupt(e)) => Err(ImageError::Corrupt(format!("JPEG: {e}"))),
    }
}

/// Try the streaming path. `Ok(None)`: not applicable (no shrink needed, rotated or CMYK) —
/// the general path handles those.
pub fn compress_jpeg(input: &[u8], limits: &Limits) -> Result<Option<Streamed>, ImageError> {
    if !jpeg::is_complete(input) {
        return Err(ImageError::Corrupt("JPEG data is truncated (no end-of-image marker after the last scan)".into()));
    }
    // Header, metadata and the decoder's start on this thread (libjpeg reports by unwinding).
    let started = catch_unwind(AssertUnwindSafe(|| {
        let mut d = libjpeg_header(input).map_err(io_corrupt)?;
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
        let ours_wanted = std::env::var_os("JEWELSHOT_IMAGING_LIBJPEG").is_none();
        match ours(input, (w, h)).map(|p| p.filter(|_| ours_wanted)) {
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
            Err(e) => return Err(e),
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
    let mut checkpoints = Checkpoints { taken: 0, probe_retired: false, trace };
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
        checkpoints.take(scope, &shape, &mut encoders, &batches, th_us, limits, false);
    }
    if trace {
        eprintln!("stream: horizontal {:.1} ms, vertical {:.1} ms, {} encoders", t_h * 1e3, t_v * 1e3, encoders.len());
    }
    if next < th_us {
        return Err(ImageError::Corrupt("JPEG ended before all rows were decoded".into()));
    }
    // Every row is fed: the encoders may finish. Checkpoints the probe had not reached are
    // taken now, so what is encoded never depends on how fast the threads ran.
    for e in encoders.iter_mut() {
        e.tx = None;
    }
    checkpoints.take(scope, &shape, &mut encoders, &batches, th_us, limits, true);
    for e in encoders.iter_mut() {
        e.tx = None;
    }
    // The best quality that fits wins; otherwise the smallest, and the caller shrinks further.
    let mut results = Vec::with_capacity(encoders.len());
    for (i, e) in encoders.into_iter().enumerate() {
        let bytes = e.join.join().map_err(unwound)??;
        // A retired probe counts as not encoded even if it got to the end first.
        if let Some(bytes) = bytes.filter(|_| !(i == 0 && checkpoints.probe_retired)) {
            results.push((e.quality, e.optimized, bytes));
        }
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

/// Checkpoints at which the probe's projection is read, evenly spaced over the rows.
const CHECKPOINTS: usize = 2;

/// The probe (the first encoder: standard tables, the start quality) is read at a third and at
/// two thirds of the rows: its projection decides whether a lower quality must be encoded too,
/// and whether the probe is worth finishing.
struct Checkpoints {
    taken: usize,
    probe_retired: bool,
    trace: bool,
}

impl Checkpoints {
    /// Take the checkpoints the probe has passed; with `wait`, all that remain (the probe's
    /// final flush answers any it never reached).
    #[allow(clippy::too_many_arguments)]
    fn take<'scope>(
        &mut self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        shape: &Shape<'scope>,
        encoders: &mut Vec<Encoder<'scope>>,
        batches: &[Arc<Vec<u8>>],
        rows: usize,
        limits: &Limits,
        wait: bool,
    ) {
        while self.taken < CHECKPOINTS && !self.probe_retired {
            let Some(probe) = encoders.first() else { return };
            let at = rows * (self.taken + 1) / (CHECKPOINTS + 1);
            let Some(projected) = projection(&probe.flushes.lock().unwrap_or_else(|e| e.into_inner()), at, rows) else {
                if !wait || probe.join.is_finished() {
                    return; // not there yet, or failed (its error comes at the join)
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            };
            self.taken += 1;
            let lowest = encoders[1..].iter().map(|e| e.quality).min();
            let step = step(projected, probe.quality, lowest, self.taken, limits);
            if self.trace {
                eprintln!("stream: checkpoint at row {at}/{rows}: the probe projects {projected:.0} B: {step:?}");
            }
            if step.retire_probe {
                encoders[0].tx = None;
                self.probe_retired = true;
            }
            if let Some(q) = step.start {
                let e = spawn_encoder(scope, shape, q, true);
                for b in batches {
                    e.feed(b.clone());
                }
                encoders.push(e);
            }
        }
    }
}

/// The final size the probe's flushes point to once it has passed `row` (its first flush at or
/// after that row), if it has got that far.
fn projection(flushes: &[(usize, usize)], row: usize, rows: usize) -> Option<f64> {
    flushes.iter().find(|(r, _)| *r >= row.max(1)).map(|&(r, b)| b as f64 * rows as f64 / r as f64)
}

/// What a checkpoint decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Step {
    /// Start an encoder (optimized tables) at this quality.
    start: Option<u8>,
    /// Stop the probe: it cannot fit.
    retire_probe: bool,
}

/// At checkpoint `n` (1-based), from the probe's projection: when neither the probe nor the
/// lowest running candidate is predicted to fit, a candidate at the highest quality below them
/// predicted to fit (never below the floor). The first checkpoint picks with 3 % headroom; a
/// later one adds a candidate only when the running one is clearly over — a near miss costs a
/// re-encode after the stream, a needless candidate a whole encode on every such photo. The
/// probe is retired once it is far over (by a third at the first checkpoint, whose projection
/// was seen 20 % off; by 15 % at the second).
fn step(projected: f64, probe_q: u8, lowest: Option<u8>, n: usize, limits: &Limits) -> Step {
    let max = limits.max_output_bytes as f64;
    if projected <= max * 0.97 {
        return Step::default();
    }
    let predicted = |q: u8| projected * crate::relative_size(q) / crate::relative_size(probe_q) * OPTIMIZED;
    let from = lowest.unwrap_or(probe_q);
    let enough = match lowest {
        Some(q) => predicted(q) <= max * if n == 1 { 0.98 } else { 1.02 },
        None => false,
    };
    let start = (!enough && from > limits.min_quality).then(|| {
        let mut q = from.saturating_sub(5).max(limits.min_quality);
        while q > limits.min_quality && predicted(q) > max * 0.97 {
            q = q.saturating_sub(5).max(limits.min_quality);
        }
        q
    });
    let retire_probe = projected > max * if n == 1 { 1.3 } else { 1.15 };
    Step { start, retire_probe }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's flushes on the `life` photo (1278 rows, 686,798 bytes at q80).
    const LIFE: [(usize, usize); 10] = [
        (120, 65536),
        (264, 131072),
        (376, 196608),
        (488, 262144),
        (600, 327680),
        (712, 393216),
        (824, 458752),
        (936, 524288),
        (1080, 589824),
        (1208, 655360),
    ];

    #[test]
    fn the_projection_reads_the_first_flush_past_the_row() {
        assert_eq!(projection(&LIFE, 426, 1278), Some(262144.0 * 1278.0 / 488.0));
        assert_eq!(projection(&LIFE, 488, 1278), Some(262144.0 * 1278.0 / 488.0));
        assert_eq!(projection(&LIFE[..3], 426, 1278), None, "not there yet");
        assert_eq!(projection(&[(1278, 181014)], 852, 1278), Some(181014.0), "the final flush answers");
        assert_eq!(projection(&[], 0, 1278), None);
    }

    #[test]
    fn checkpoints_pick_one_candidate_and_retire_a_far_over_probe() {
        let limits = Limits::default();
        let p = |at| projection(&LIFE, at, 1278).expect("flush");
        // On course to fit: nothing to do.
        assert_eq!(step(470_000.0, 80, None, 1, &limits), Step::default());
        // `life` at a third: q65 is predicted to fit; q80 is a third over, so the probe stops.
        assert_eq!(step(p(426), 80, None, 1, &limits), Step { start: Some(65), retire_probe: true });
        // A little over: the next step down, and the probe runs on (the projection may be high).
        assert_eq!(step(540_000.0, 80, None, 1, &limits), Step { start: Some(75), retire_probe: false });
        // Second checkpoint: the running q65 is a near miss at worst — no second candidate.
        assert_eq!(step(p(852), 80, Some(65), 2, &limits), Step { start: None, retire_probe: true });
        // ...but clearly over, and a lower one starts.
        assert_eq!(step(800_000.0, 80, Some(65), 2, &limits), Step { start: Some(60), retire_probe: true });
        // Never below the floor.
        assert_eq!(step(2_000_000.0, 80, Some(60), 2, &limits).start, None);
        assert_eq!(step(2_000_000.0, 80, None, 1, &limits).start, Some(60));
    }

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
