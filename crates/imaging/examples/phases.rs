//! Time each phase of the pipeline on one file: `cargo run --release --example phases -- FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("FILE");
    let bytes = std::fs::read(&path).expect("read");
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let out = jewelshot_imaging::compress(&bytes, &jewelshot_imaging::Limits::default()).expect("compress");
        println!("{path}: {:.1} ms total, {} B, q{:?}", t.elapsed().as_secs_f64() * 1e3, out.bytes.len(), out.quality);
    }
}
