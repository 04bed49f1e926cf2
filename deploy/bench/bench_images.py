#!/usr/bin/env python3
"""Benchmark `jewelshot compress` against libvips' vipsthumbnail, whole process each.

usage: bench_images.py JEWELSHOT_BIN FIXTURE_DIR [RUNS]

For every photo: median wall time over RUNS runs (after one warm-up), peak memory (max RSS of
the process), output bytes; then the ratio ours / vips. Goal: ratio <= 0.5 on every fixture and
output size within 10% of libvips' at the same quality (80).
"""
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(cmd):
    """Run cmd; return (wall seconds, peak RSS KiB of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    # ru_maxrss of children is the max over all children so far; run each measured command in
    # a fresh interpreter-free way by measuring via /usr/bin/time when available.
    return wall, before


def peak_kib(cmd):
    time_bin = shutil.which("time") or "/usr/bin/time"
    if not os.path.exists(time_bin):
        return None
    out = subprocess.run([time_bin, "-f", "%M", *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return int(out.stderr.strip().splitlines()[-1])


def median_ms(cmd, runs):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # warm-up
    times = [run(cmd)[0] for _ in range(runs)]
    return statistics.median(times) * 1000


def main():
    ours_bin, fixtures = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    vips = shutil.which("vipsthumbnail")
    if not vips:
        sys.exit("vipsthumbnail not found: apt-get install libvips-tools (just bench-images does this)")
    photos = sorted(f for f in os.listdir(fixtures) if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
    tmp = tempfile.mkdtemp()
    rows, worst = [], 0.0
    for name in photos:
        src = os.path.join(fixtures, name)
        ours_out = os.path.join(tmp, "ours-" + name)
        vips_out = os.path.join(tmp, "vips-" + name)
        ours = [ours_bin, "compress", src, ours_out]
        # Compare sizes at the same quality: ours may step below 80 to fit 500 KB.
        info = json.loads(subprocess.run([ours_bin, "--json", "compress", src, ours_out], check=True, capture_output=True, text=True).stdout)
        q = info.get("quality") or 80
        theirs = [vips, src, "--size", "1920x1920", "-o", vips_out + f"[Q={q},strip]"]
        o_ms, v_ms = median_ms(ours, runs), median_ms(theirs, runs)
        o_kb, v_kb = peak_kib(ours), peak_kib(theirs)
        o_b, v_b = os.path.getsize(ours_out), os.path.getsize(vips_out)
        ratio = o_ms / v_ms
        worst = max(worst, ratio)
        rows.append((name, o_ms, v_ms, ratio, o_b, v_b, o_kb, v_kb, q))
    print(f"{'fixture':32} {'q':>3} {'ours ms':>8} {'vips ms':>8} {'ratio':>6} {'ours B':>8} {'vips B':>8} {'size':>6} {'ours MiB':>9} {'vips MiB':>9}")
    for name, o_ms, v_ms, ratio, o_b, v_b, o_kb, v_kb, q in rows:
        mib = lambda k: f"{k / 1024:.1f}" if k else "?"
        print(f"{name:32} {q:3d} {o_ms:8.1f} {v_ms:8.1f} {ratio:6.2f} {o_b:8d} {v_b:8d} {o_b / v_b:6.2f} {mib(o_kb):>9} {mib(v_kb):>9}")
    print(f"worst time ratio: {worst:.2f} (goal <= 0.50); {runs} runs per command, median wall time, whole process")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
