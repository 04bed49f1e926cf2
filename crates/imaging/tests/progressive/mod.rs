//! The fuzz harness for the progressive decoder: properties (`check`), mutations (`mutate`),
//! inputs (`seeds`), and the loop that ties them together (`fuzz`).

pub mod check;
pub mod mutate;
pub mod seeds;

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use check::{check, Finding, SCALES};

/// Where findings go, where interesting inputs are kept between runs, and the file that holds the
/// input being checked (left behind only if the process dies inside a check — an allocation over
/// the hard cap aborts — so `just fuzz-imaging` can save it).
pub struct Dirs {
    pub findings: PathBuf,
    pub queue: PathBuf,
    pub in_flight: PathBuf,
}

fn short_hash(b: &[u8]) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for x in b {
        h = (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Shrink a failing input while it fails the same way: cut each scan's data, drop segments, drop
/// byte runs. Bounded in time; fixture-derived findings start at megabytes.
pub fn minimize(input: &[u8], n: usize, kind: &str, deadline: Duration) -> Vec<u8> {
    let start = Instant::now();
    let fails = |b: &[u8]| check(b, n).finding.is_some_and(|f| f.kind == kind);
    let mut best = input.to_vec();
    let mut progress = true;
    while progress && start.elapsed() < deadline {
        progress = false;
        // Scan data halved from the end, last scans first (their data goes first in a dump).
        for s in mutate::segments(&best).into_iter().rev().filter(|s| s.marker == 0xDA) {
            let header_end = s.body + usize::from(u16::from_be_bytes([best[s.body - 2], best[s.body - 1]])) - 2;
            let mut keep = (s.end.saturating_sub(header_end)) / 2;
            while keep > 0 && start.elapsed() < deadline {
                let mut cand = best[..header_end + keep].to_vec();
                cand.extend_from_slice(&best[s.end..]);
                if fails(&cand) {
                    best = cand;
                    progress = true;
                    break;
                }
                keep /= 2;
            }
            if progress {
                break;
            }
        }
        if progress {
            continue;
        }
        for s in mutate::segments(&best).into_iter().rev() {
            if start.elapsed() > deadline {
                break;
            }
            let mut cand = best[..s.start].to_vec();
            cand.extend_from_slice(&best[s.end..]);
            if fails(&cand) {
                best = cand;
                progress = true;
                break;
            }
        }
        if progress || best.len() > 64 * 1024 {
            continue;
        }
        let mut chunk = best.len() / 8;
        while chunk > 0 && !progress && start.elapsed() < deadline {
            let mut i = 2;
            while i + chunk < best.len() && start.elapsed() < deadline {
                let mut cand = best[..i].to_vec();
                cand.extend_from_slice(&best[i + chunk..]);
                if fails(&cand) {
                    best = cand;
                    progress = true;
                    break;
                }
                i += chunk;
            }
            chunk /= 2;
        }
    }
    best
}

/// Run for `duration`: mutate inputs from the pool, check each at a random production scale,
/// keep inputs that reach new behaviour, write each new kind of failure (minimized) to
/// `dirs.findings`. Returns the findings.
pub fn fuzz(duration: Duration, seed: u64, dirs: &Dirs) -> Vec<(Finding, PathBuf)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let _ = std::fs::create_dir_all(&dirs.findings);
    let _ = std::fs::create_dir_all(&dirs.queue);
    if let Some(parent) = dirs.in_flight.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let mut pool: Vec<(String, Vec<u8>)> = seeds::generated();
    pool.extend(seeds::jpegs_in(&seeds::corpus_dir()));
    pool.extend(seeds::jpegs_in(&dirs.queue));
    let strips = seeds::fixture_strips();
    let queued_at_start = seeds::jpegs_in(&dirs.queue).len();
    eprintln!(
        "fuzz: seed {seed}, {} inputs in the pool ({queued_at_start} from the queue), {} fixture strips, {:.0} s",
        pool.len(),
        strips.len(),
        duration.as_secs_f64()
    );

    // A check that never returns (a deadlock) is a finding too: the watchdog saves the input and
    // ends the process.
    let current: Arc<Mutex<Vec<u8>>> = Arc::default();
    let started_at = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    {
        let (current, started_at, findings) = (current.clone(), started_at.clone(), dirs.findings.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            let t = started_at.load(Ordering::SeqCst);
            if t != 0 && epoch.elapsed().as_millis() as u64 > t + 30_000 {
                let input = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let path = findings.join(format!("hang-{}.jpg", short_hash(&input)));
                let _ = std::fs::write(&path, &input);
                eprintln!("fuzz: a check ran for 30 s: saved {}", path.display());
                std::process::exit(3);
            }
        });
    }

    // Behaviours seen by earlier runs are kept beside the queue, so "new" means new.
    let seen_file = dirs.queue.with_extension("behaviours");
    let mut seen: HashSet<u64> = std::fs::read_to_string(&seen_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| u64::from_str_radix(l, 16).ok())
        .collect();
    if seen.is_empty() {
        for (_, input) in &pool {
            for n in [3, 8] {
                seen.insert(check(input, n).behaviour);
            }
        }
    }
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let mut findings: Vec<(Finding, PathBuf)> = Vec::new();
    let (mut execs, mut ours_runs, mut max_peak, mut max_ratio, mut new_behaviour) = (0u64, 0u64, 0usize, 0f64, 0usize);
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut in_flight = std::fs::File::create(&dirs.in_flight).ok();
    while start.elapsed() < duration {
        let parent = if !strips.is_empty() && rng.u32(..16) == 0 {
            &strips[rng.usize(..strips.len())].1
        } else {
            &pool[rng.usize(..pool.len())].1
        };
        let donor = &pool[rng.usize(..pool.len())].1;
        let input = mutate::mutate(&mut rng, parent, donor);
        let n = SCALES[rng.usize(..SCALES.len())];
        if let Some(f) = in_flight.as_mut() {
            let _ = f.set_len(0);
            let _ = f.write_all(&input);
            let _ = std::io::Seek::rewind(f);
        }
        current.lock().unwrap_or_else(|e| e.into_inner()).clone_from(&input);
        started_at.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        let v = check(&input, n);
        started_at.store(0, Ordering::SeqCst);
        execs += 1;
        if v.ours {
            ours_runs += 1;
            max_peak = max_peak.max(v.peak);
            max_ratio = max_ratio.max(v.peak as f64 / v.budget as f64);
        }
        if let Some(f) = v.finding {
            // One file per kind of failure and message shape: a bug found a thousand ways is one.
            let key =
                format!("{}:{}", f.kind, f.detail.chars().filter(|c| c.is_alphabetic()).take(40).collect::<String>());
            let count = kinds.entry(key).or_insert(0);
            *count += 1;
            if *count == 1 {
                let small = minimize(&input, n, f.kind, Duration::from_secs(20));
                let again = check(&small, n).finding.unwrap_or_else(|| f.clone());
                let path = dirs.findings.join(format!("{}-{}-n{n}.jpg", f.kind, short_hash(&small)));
                let _ = std::fs::write(&path, &small);
                eprintln!(
                    "fuzz: FINDING {}: {} ({} B, minimized from {} B) → {}",
                    again.kind,
                    again.detail,
                    small.len(),
                    input.len(),
                    path.display()
                );
                findings.push((again, path));
            }
            continue;
        }
        if seen.insert(v.behaviour) {
            new_behaviour += 1;
            if input.len() <= 256 * 1024 {
                if input.len() <= 64 * 1024 && queued_at_start + new_behaviour <= 5000 {
                    let _ = std::fs::write(dirs.queue.join(format!("{}.jpg", short_hash(&input))), &input);
                }
                pool.push((format!("new-{execs}"), input));
            }
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "fuzz: {:.0} s, {execs} execs ({:.0}/s), {ours_runs} decoded by ours, {} behaviours ({new_behaviour} new), \
                 pool {}, peak heap {:.1} MiB (max {:.0} % of budget), {} findings",
                start.elapsed().as_secs_f64(),
                execs as f64 / start.elapsed().as_secs_f64(),
                seen.len(),
                pool.len(),
                max_peak as f64 / 1048576.0,
                max_ratio * 100.0,
                findings.len()
            );
        }
    }
    drop(in_flight);
    let _ = std::fs::remove_file(&dirs.in_flight);
    let _ = std::fs::write(&seen_file, seen.iter().map(|h| format!("{h:016x}\n")).collect::<String>());
    eprintln!(
        "fuzz: done: {execs} execs in {:.0} s ({:.0}/s), {ours_runs} decoded by ours, {} behaviours ({new_behaviour} new), \
         peak heap {:.1} MiB (max {:.0} % of budget), {} findings ({} distinct)",
        start.elapsed().as_secs_f64(),
        execs as f64 / start.elapsed().as_secs_f64(),
        seen.len(),
        max_peak as f64 / 1048576.0,
        max_ratio * 100.0,
        kinds.values().sum::<usize>(),
        findings.len()
    );
    findings
}

pub fn path_name(p: &Path) -> String {
    p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned()
}
