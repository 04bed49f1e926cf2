//! Decode time per DCT scale: `cargo run --release --example scales -- FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("FILE");
    let bytes = std::fs::read(&path).expect("read");
    for fancy in [true, false] {
        for n in 1..=8u8 {
            let mut best = f64::MAX;
            let mut dims = (0, 0);
            for _ in 0..3 {
                let t = std::time::Instant::now();
                let mut d = mozjpeg::Decompress::builder().from_mem(&bytes).expect("header");
                d.scale(n);
                d.do_fancy_upsampling(fancy);
                let mut s = d.rgb().expect("start");
                let px = s.read_scanlines::<u8>().expect("read");
                dims = (s.width(), s.height());
                s.finish().expect("finish");
                std::hint::black_box(px);
                best = best.min(t.elapsed().as_secs_f64() * 1e3);
            }
            println!("fancy={fancy} n={n}/8 {}x{}: {best:.1} ms", dims.0, dims.1);
        }
    }
}
