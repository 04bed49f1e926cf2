//! fal's official Python client works against the emulator: submit, status, result, subscribe,
//! cancel and a 422, run by `deploy/interop/fal_client_check.py`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> std::path::PathBuf {
    let venv = repo_root().join("target/pytools/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// The emulator binary on port 0, and its URL.
fn spawn_emulator() -> (std::process::Child, String) {
    let mut emu = Command::new(env!("CARGO_BIN_EXE_fal-emulator"))
        .args(["--listen", "127.0.0.1:0", "--latency-ms", "200-400", "--max-concurrent", "1", "--max-per-minute", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn emulator");
    let stdout = emu.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let url = line.trim().strip_prefix("listening on ").expect("listening line").to_owned();
    (emu, url)
}

#[test]
fn it_official_python_client_round_trips() {
    let (mut emu, url) = spawn_emulator();
    let out = Command::new(python())
        .arg(repo_root().join("deploy/interop/fal_client_check.py"))
        .arg(&url)
        .arg(repo_root().join("deploy/demo"))
        .env("FAL_KEY", "interop-key")
        .output()
        .expect("run python (`just tools` installs fal-client)");
    let _ = emu.kill();
    let _ = emu.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "fal-client check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l == "ok"));
}

/// fal's official JavaScript client (`@fal-ai/client`): submit, status, subscribe, result,
/// cancel and a 422, run by `deploy/interop/fal-js/check.mjs`.
#[test]
fn it_official_js_client_round_trips() {
    let tools = repo_root().join("target/jstools");
    if !tools.join("node_modules/@fal-ai/client/package.json").exists() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must run this test: `just tools` installs the client"
        );
        eprintln!("skipped: @fal-ai/client is not installed (`just tools` installs it when Node.js is present)");
        return;
    }
    // Run the repository's copy of the script from beside its node_modules.
    std::fs::copy(repo_root().join("deploy/interop/fal-js/check.mjs"), tools.join("check.mjs")).expect("copy script");
    let (mut emu, url) = spawn_emulator();
    let out = Command::new("node")
        .arg(tools.join("check.mjs"))
        .arg(&url)
        .arg(repo_root().join("deploy/demo"))
        .output()
        .expect("run node");
    let _ = emu.kill();
    let _ = emu.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "@fal-ai/client check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l == "ok"));
}
