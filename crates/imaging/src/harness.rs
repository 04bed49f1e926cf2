//! Our progressive decoder behind the same gate as [`compress`](crate::compress), for the fuzz
//! harness and the corpus test (`tests/it_progressive.rs`). Not an API: nothing else calls it.
//!
//! The gate is the production one, call for call: the byte and pixel limits against the probe,
//! the end-of-image check, libjpeg's header, then our parse. Only the scale is free (production
//! picks it from the target size), so every scale gets exercised.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{jpeg, progressive, stream, ImageError, Limits};

/// What our decoder produced.
pub struct Decoded {
    pub width: usize,
    pub height: usize,
    /// 1 (gray) or 3 (RGB).
    pub channels: usize,
    pub pixels: Vec<u8>,
    /// Output pixels of one MCU (across, down) and MCUs per row: the grid `wild` is on.
    pub mcu: (usize, usize, usize),
    /// Per MCU, row-major: some block holds coefficients no 8-bit encoder writes, where
    /// libjpeg's integer IDCT wraps or saturates and ours clamps — no comparison there.
    pub wild: Vec<bool>,
}

pub enum Outcome {
    /// `compress` refuses the input before any pixel is decoded.
    Refused(ImageError),
    /// Not a file our decoder takes: production hands it to libjpeg.
    Libjpeg,
    /// Our decoder took the file. `header` is libjpeg's reading of the frame (what the pixel
    /// limit was checked against, through the probe), `frame` ours, `output` the width, height
    /// and channels of the rows it hands out; `result` is the decode, or why it refused the data.
    Ours {
        header: (usize, usize),
        frame: (usize, usize),
        output: (usize, usize, usize),
        result: Result<Decoded, String>,
    },
    /// Our parse accepted a frame over the pixel limit: not decoded (it is a finding as it is).
    OverLimit { header: (usize, usize), frame: (usize, usize) },
}

/// Run `input` through the gate and, if our decoder takes it, decode it at scale `n`/8.
pub fn progressive(input: &[u8], n: usize, limits: &Limits) -> Outcome {
    let probe = match crate::admit(input, limits) {
        Ok((p, _)) => p,
        Err(e) => return Outcome::Refused(e),
    };
    if probe.format != crate::Format::Jpeg {
        return Outcome::Libjpeg;
    }
    if !jpeg::is_complete(input) {
        return Outcome::Refused(ImageError::Corrupt("truncated".into()));
    }
    let header = match catch_unwind(AssertUnwindSafe(|| stream::libjpeg_header(input).map(|d| d.size()))) {
        Ok(Ok(size)) => size,
        Ok(Err(e)) => return Outcome::Refused(ImageError::Corrupt(e.to_string())),
        Err(_) => return Outcome::Refused(ImageError::Corrupt("libjpeg refused the header".into())),
    };
    let p = match stream::ours(input, header) {
        Ok(Some(p)) => p,
        Ok(None) => return Outcome::Libjpeg,
        Err(e) => return Outcome::Ours { header, frame: (0, 0), output: (0, 0, 0), result: Err(e.to_string()) },
    };
    let frame = (p.width, p.height);
    if p.width as u64 * p.height as u64 > limits.max_pixels {
        return Outcome::OverLimit { header, frame };
    }
    let (width, height) = p.scaled(n);
    let channels = usize::from(p.channels());
    // Sized up front, so the peak heap the harness measures is the decoder's plus this.
    let mut pixels = Vec::with_capacity(width * height * channels);
    let result = progressive::decode_tracking(&p, n, 64, Vec::new, |rows| {
        pixels.extend_from_slice(&rows);
        true
    });
    let result = result
        .map(|wild| Decoded { width, height, channels, pixels, mcu: p.mcu_grid(n), wild })
        .map_err(|progressive::Corrupt(e)| e);
    Outcome::Ours { header, frame, output: (width, height, channels), result }
}
