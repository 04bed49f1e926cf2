//! A certificate authority of the test's own and a server certificate it signed (for
//! `127.0.0.1` and `localhost`), made with the `openssl` command line: what a managed Postgres or
//! Redis with a private CA looks like to our processes, which trust it through `SSL_CERT_FILE`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA's certificate (PEM): what clients trust.
    pub ca_file: PathBuf,
    /// The server's certificate and key (PEM).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl (Debian package openssl)")?;
    if !out.status.success() {
        bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl TestCa {
    pub fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("jewelshot-ca-").tempdir()?;
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca =
            vec!["req", "-x509", "-days", "2", "-subj", "/CN=JewelShot test CA", "-keyout", "ca.key", "-out", "ca.pem"];
        ca.extend(ec);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(d, &ca)?;
        let mut csr = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
        csr.extend(ec);
        openssl(d, &csr)?;
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        )?;
        Ok(Self {
            ca_file: d.join("ca.pem"),
            cert_file: d.join("server.pem"),
            key_file: d.join("server.key"),
            _dir: dir,
        })
    }
}
