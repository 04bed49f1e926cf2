//! What one libjpeg encode of a 1920 px photo costs, standard vs optimized Huffman tables:
//! `cargo run --release -p jewelshot-imaging --example encode_cost -- FILE` (min of 7).
fn main() {
    let path = std::env::args().nth(1).expect("FILE");
    let out = image::open(&path).expect("open").resize(1920, 1920, image::imageops::FilterType::Triangle).to_rgb8();
    let (w, h) = out.dimensions();
    let data = out.into_raw();
    for (q, opt) in [(80u8, false), (65, true), (65, false), (80, true)] {
        let mut best = f64::MAX;
        let mut len = 0;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            c.set_fastest_defaults();
            c.set_size(w as usize, h as usize);
            c.set_quality(f32::from(q));
            c.set_optimize_coding(opt);
            let mut s = c.start_compress(Vec::new()).expect("start");
            s.write_scanlines(&data).expect("write");
            len = s.finish().expect("finish").len();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("{w}x{h} q{q} opt={opt}: {best:.1} ms, {len} B");
    }
}
