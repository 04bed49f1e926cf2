//! How much of a decode is entropy decoding (start) vs the output pass (scanlines), per scale.
fn main() {
    let path = std::env::args().nth(1).expect("FILE");
    let n: u8 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let bytes = std::fs::read(&path).expect("read");
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let mut d = mozjpeg::Decompress::builder().from_mem(&bytes).expect("header");
        d.scale(n);
        d.do_fancy_upsampling(false);
        let mut s = d.rgb().expect("start");
        let t1 = t.elapsed();
        let px = s.read_scanlines::<u8>().expect("read");
        let t2 = t.elapsed();
        s.finish().expect("finish");
        std::hint::black_box(px);
        println!(
            "{path} n={n}: start {:.1} ms, scanlines {:.1} ms",
            t1.as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3
        );
    }
}
