//! Time the two-thread progressive decoder against libjpeg on one file: `FILE N [ours]`
//! (`ours`: only our decoder, so `time` shows its CPU).
fn main() {
    let only_ours = std::env::args().nth(3).is_some_and(|a| a == "ours");
    let path = std::env::args().nth(1).expect("FILE");
    let n: u8 = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let bytes = std::fs::read(&path).expect("read");
    let (mut ours_ms, mut lib_ms) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = std::time::Instant::now();
        let ours = jewelshot_imaging::decode_progressive(&bytes, usize::from(n)).expect("progressive");
        let t_ours = t.elapsed();
        ours_ms.push(t_ours.as_secs_f64() * 1e3);
        if only_ours {
            lib_ms.push(0.0);
            continue;
        }
        let t = std::time::Instant::now();
        let mut d = mozjpeg::Decompress::builder().from_mem(&bytes).expect("header");
        d.scale(n);
        d.do_fancy_upsampling(false);
        let mut s = d.rgb().expect("start");
        let px = s.read_scanlines::<u8>().expect("read");
        s.finish().expect("finish");
        let t_lib = t.elapsed();
        assert_eq!(ours.2.len(), px.len());
        lib_ms.push(t_lib.as_secs_f64() * 1e3);
    }
    ours_ms.sort_by(f64::total_cmp);
    lib_ms.sort_by(f64::total_cmp);
    println!(
        "{path} n={n}: ours min {:.1} / median {:.1} ms, libjpeg min {:.1} / median {:.1} ms",
        ours_ms[0], ours_ms[7], lib_ms[0], lib_ms[7]
    );
}
