//! Decoded pixels and the geometric operations on them: SIMD resampling (fast_image_resize),
//! EXIF orientation, CMYK → RGB.

use fast_image_resize::{
    images::{Image, ImageRef},
    FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer,
};

use crate::ImageError;

/// Interleaved 8-bit pixels: 1 (gray), 3 (RGB) or 4 (RGBA) channels.
#[derive(Debug, Clone)]
pub struct Raster {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

impl Raster {
    fn pixel_type(&self) -> PixelType {
        match self.channels {
            1 => PixelType::U8,
            3 => PixelType::U8x3,
            _ => PixelType::U8x4,
        }
    }

    /// Whether any pixel is not fully opaque.
    pub fn has_transparency(&self) -> bool {
        self.channels == 4 && self.data.chunks_exact(4).any(|p| p[3] != 255)
    }

    /// Drop a fully opaque alpha channel.
    pub fn without_alpha(self) -> Raster {
        if self.channels != 4 {
            return self;
        }
        let data = self.data.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        Raster { channels: 3, data, ..self }
    }

    /// Resample to exactly `width`×`height` with Lanczos3 (alpha-aware for RGBA). A large
    /// output is made in two halves on two threads: each half is the same resize of a source
    /// crop at the same scale (the filter still reads the rows around the crop), so the result
    /// is one pass's.
    pub fn resize(&self, width: u32, height: u32) -> Result<Raster, ImageError> {
        if (width, height) == (self.width, self.height) {
            return Ok(self.clone());
        }
        let internal = |e: &dyn std::fmt::Display| ImageError::Internal(format!("resize: {e}"));
        let pixel_type = self.pixel_type();
        let src = ImageRef::new(self.width, self.height, &self.data, pixel_type).map_err(|e| internal(&e))?;
        let stride = width as usize * usize::from(self.channels);
        let mut data = vec![0u8; stride * height as usize];
        let scale = f64::from(self.height) / f64::from(height);
        let part = |rows: &mut [u8], y0: u32, n: u32| -> Result<(), ImageError> {
            let mut dst = Image::from_slice_u8(width, n, rows, pixel_type).map_err(|e| internal(&e))?;
            // Rounding may carry the bottom half's box a hair past the image (2000 → 1920 rows).
            let top = f64::from(y0) * scale;
            let rows = (f64::from(n) * scale).min(f64::from(self.height) - top);
            let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)).crop(
                0.0,
                top,
                f64::from(self.width),
                rows,
            );
            Resizer::new().resize(&src, &mut dst, &options).map_err(|e| internal(&e))
        };
        let half = height / 2;
        if u64::from(width) * u64::from(height) < 1 << 20 {
            part(&mut data, 0, height)?;
        } else {
            let (top, bottom) = data.split_at_mut(half as usize * stride);
            std::thread::scope(|s| {
                let other = s.spawn(|| part(bottom, half, height - half));
                let mine = part(top, 0, half);
                mine.and(other.join().map_err(|_| ImageError::Internal("resize thread panicked".into()))?)
            })?;
        }
        Ok(Raster { width, height, channels: self.channels, data })
    }

    /// Apply an EXIF orientation (1-8) so the pixels are upright (the two halves of the output
    /// on two threads).
    pub fn oriented(self, orientation: u16) -> Raster {
        if !(2..=8).contains(&orientation) {
            return self;
        }
        let (ow, oh) = self.upright_size(orientation);
        let stride = ow as usize * usize::from(self.channels);
        let mut out = vec![0u8; self.data.len()];
        let half = oh as usize / 2;
        let (top, bottom) = out.split_at_mut(half * stride);
        std::thread::scope(|s| {
            s.spawn(|| self.upright_rows(orientation, half, bottom));
            self.upright_rows(orientation, 0, top);
        });
        Raster { width: ow, height: oh, channels: self.channels, data: out }
    }

    /// Width and height once turned upright by `orientation`.
    pub fn upright_size(&self, orientation: u16) -> (u32, u32) {
        if (5..=8).contains(&orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }

    /// Rows `y0..` of the upright image (as many as `out` holds), so an encoder can take an
    /// oriented image band by band without the whole turned copy.
    pub fn upright_rows(&self, orientation: u16, y0: usize, out: &mut [u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        match orientation {
            2 => self.remap(w, y0, out, move |ox, oy| (w - 1 - ox, oy)),
            3 => self.remap(w, y0, out, move |ox, oy| (w - 1 - ox, h - 1 - oy)),
            4 => self.remap(w, y0, out, move |ox, oy| (ox, h - 1 - oy)),
            5 => self.remap(h, y0, out, move |ox, oy| (oy, ox)),
            6 => self.remap(h, y0, out, move |ox, oy| (oy, h - 1 - ox)),
            7 => self.remap(h, y0, out, move |ox, oy| (w - 1 - oy, h - 1 - ox)),
            8 => self.remap(h, y0, out, move |ox, oy| (w - 1 - oy, ox)),
            _ => {
                let from = (y0 * w * usize::from(self.channels)).min(self.data.len());
                let n = out.len().min(self.data.len() - from);
                out[..n].copy_from_slice(&self.data[from..from + n]);
            }
        }
    }

    /// Fill `rows` (output rows from `y0`, `ow` pixels wide) with the source pixels `src(x, y)`.
    /// Generic over the mapping so each orientation compiles to its own tight loop.
    fn remap(&self, ow: usize, y0: usize, rows: &mut [u8], src: impl Fn(usize, usize) -> (usize, usize)) {
        match self.channels {
            1 => remap_c::<1>(&self.data, self.width as usize, ow, y0, rows, src),
            3 => remap_c::<3>(&self.data, self.width as usize, ow, y0, rows, src),
            _ => remap_c::<4>(&self.data, self.width as usize, ow, y0, rows, src),
        }
    }
}

/// `remap` for `C` channels: fixed-size pixel copies, walked in tiles so reads and writes both
/// stay in cache.
fn remap_c<const C: usize>(
    data: &[u8],
    w: usize,
    ow: usize,
    y0: usize,
    rows: &mut [u8],
    src: impl Fn(usize, usize) -> (usize, usize),
) {
    const T: usize = 32;
    let oh_part = rows.len() / (ow * C);
    for ty in (0..oh_part).step_by(T) {
        for tx in (0..ow).step_by(T) {
            for ly in ty..(ty + T).min(oh_part) {
                let row = &mut rows[ly * ow * C..(ly + 1) * ow * C];
                for ox in tx..(tx + T).min(ow) {
                    let (sx, sy) = src(ox, y0 + ly);
                    let s = (sy * w + sx) * C;
                    let px: [u8; C] = data.get(s..s + C).and_then(|p| p.try_into().ok()).unwrap_or([0; C]);
                    row[ox * C..ox * C + C].copy_from_slice(&px);
                }
            }
        }
    }
}

/// CMYK (as libjpeg decodes it) to RGB. Adobe's CMYK JPEGs store inverted values.
pub fn cmyk_to_rgb(cmyk: &[u8], inverted: bool) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let [c, m, y, k] =
                if inverted { [p[0], p[1], p[2], p[3]] } else { [255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]] };
            // With inverted storage, value = 255 × (1 − ink).
            let k = u32::from(k);
            [c, m, y].map(|v| ((u32::from(v) * k + 127) / 255) as u8)
        })
        .collect()
}

/// Fit `(w, h)` inside a `max_side` square, keeping the aspect ratio; never upscale.
pub fn fit(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let long = w.max(h);
    if long <= max_side {
        return (w, h);
    }
    let scale = f64::from(max_side) / f64::from(long);
    let f = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
    if w >= h {
        (max_side, f(h))
    } else {
        (f(w), max_side)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(w: u32, h: u32) -> Raster {
        Raster { width: w, height: h, channels: 1, data: (0..(w * h) as u8).collect() }
    }

    #[test]
    fn orientation_6_rotates_clockwise() {
        // 3x2:  0 1 2      rotated 90° clockwise (2x3):  3 0
        //       3 4 5                                     4 1
        //                                                 5 2
        let r = numbered(3, 2).oriented(6);
        assert_eq!((r.width, r.height), (2, 3));
        assert_eq!(r.data, vec![3, 0, 4, 1, 5, 2]);
        let r = numbered(3, 2).oriented(8);
        assert_eq!(r.data, vec![2, 5, 1, 4, 0, 3]);
        let r = numbered(3, 2).oriented(3);
        assert_eq!(r.data, vec![5, 4, 3, 2, 1, 0]);
    }

    #[test]
    fn upright_rows_by_band_match_the_turned_image() {
        let r =
            Raster { width: 37, height: 23, channels: 3, data: (0..37 * 23 * 3).map(|i| (i % 251) as u8).collect() };
        for orientation in 1..=8u16 {
            let whole = r.clone().oriented(orientation);
            assert_eq!((whole.width, whole.height), r.upright_size(orientation));
            let stride = whole.width as usize * 3;
            let mut banded = Vec::new();
            for y0 in (0..whole.height as usize).step_by(5) {
                let mut band = vec![0u8; stride * 5.min(whole.height as usize - y0)];
                r.upright_rows(orientation, y0, &mut band);
                banded.extend_from_slice(&band);
            }
            assert!(banded == whole.data, "orientation {orientation}");
        }
    }

    #[test]
    fn fits_without_upscaling() {
        assert_eq!(fit(4000, 3000, 1920), (1920, 1440));
        assert_eq!(fit(1350, 2400, 1920), (1080, 1920));
        assert_eq!(fit(800, 600, 1920), (800, 600));
    }

    #[test]
    fn split_resize_matches_a_single_pass() {
        let (w, h) = (1700u32, 1301u32); // over 1 MP out: two halves
        let data: Vec<u8> = (0..u64::from(w * h * 3)).map(|i| ((i * 7919) % 251) as u8).collect();
        let r = Raster { width: w, height: h, channels: 3, data };
        let (ow, oh) = (1234u32, 943u32);
        let split = r.resize(ow, oh).expect("split");
        let src = ImageRef::new(w, h, &r.data, PixelType::U8x3).expect("src");
        let mut one = Image::new(ow, oh, PixelType::U8x3);
        Resizer::new()
            .resize(&src, &mut one, &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)))
            .expect("one pass");
        let max_diff = split.data.iter().zip(one.buffer()).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        assert!(max_diff <= 1, "halves must match one pass (max difference {max_diff})");
    }

    #[test]
    fn split_resize_boxes_stay_inside_the_image() {
        // 2000 → 1920 rows: 960 × (2000 / 1920) rounds a hair past row 1000 for the bottom half.
        let r = Raster { width: 2000, height: 2000, channels: 3, data: vec![7; 2000 * 2000 * 3] };
        let s = r.resize(1920, 1920).expect("resize");
        assert!(s.data.iter().all(|&v| v == 7));
    }

    #[test]
    fn resizes_and_keeps_flat_colour() {
        let r = Raster { width: 64, height: 32, channels: 3, data: [10u8, 200, 90].repeat(64 * 32) };
        let s = r.resize(16, 8).expect("resize");
        assert_eq!(s.data.len(), 16 * 8 * 3);
        assert!(s.data.chunks_exact(3).all(|p| p == [10, 200, 90]));
    }

    #[test]
    fn converts_adobe_cmyk() {
        // Inverted storage: 255 = no ink. No ink → white; full K → black.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255], true), vec![255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0], true), vec![0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255], true), vec![0, 255, 255]); // full cyan
    }
}
