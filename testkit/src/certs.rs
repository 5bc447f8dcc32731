//! A private certificate authority and server certificates, for the TLS tests.

use std::path::PathBuf;
use std::process::Command;

/// A certificate authority of a test's own and a server certificate for 127.0.0.1 and
/// localhost that it signs, as PEM files in a folder (made with `openssl`).
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// What a client must trust.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    pub fn issue(dir: &std::path::Path) -> Self {
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let (ca, ca_key, csr, crt, key, ext) = (
            path("ca.crt"),
            path("ca.key"),
            path("server.csr"),
            path("server.crt"),
            path("server.key"),
            path("server.ext"),
        );
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let days = ["-days", "1"];
        let new_key = ["-newkey", "rsa:2048", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &new_key,
                &days,
                &["-subj", "/CN=test-ca", "-keyout", &ca_key, "-out", &ca],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &new_key,
                &["-subj", "/CN=localhost", "-keyout", &key, "-out", &csr],
            ]
            .concat(),
        );
        openssl(
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                ][..],
                &days,
                &["-extfile", &ext, "-out", &crt],
            ]
            .concat(),
        );
        Self {
            ca: ca.into(),
            cert: crt.into(),
            key: key.into(),
        }
    }
}
