//! A private PostgreSQL cluster (initdb, pg_ctl), for a test that must stop or configure it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{TestCerts, free_port};

/// A PostgreSQL server of the test's own (initdb into a temporary folder, its own port), for
/// tests that must stop one or configure it. Runs as the `postgres` user when the test is root.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    pub dir: PathBuf,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str, args: &[&str]) -> Command {
    let path = format!("{PG_BIN}/{program}");
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]).args(args);
        c
    } else {
        let mut c = Command::new(path);
        c.args(args);
        c
    }
}

impl PrivatePostgres {
    /// A new cluster (trust authentication) with `conf` lines appended to postgresql.conf and,
    /// when given, `hba` as its whole pg_hba.conf; started.
    pub fn start(conf: &[String], hba: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if nix::unistd::geteuid().is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.join("data");
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ],
        )
        .stdout(Stdio::null())
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self {
            port: free_port(),
            dir,
        };
        let mut lines = vec![
            format!("port = {}", pg.port),
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", pg.dir.display()),
        ];
        lines.extend(conf.iter().cloned());
        pg.configure(&lines);
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        }
        pg.start_again();
        pg
    }

    /// One that accepts TLS connections only, with a certificate for 127.0.0.1 signed by a CA
    /// of its own; returns it and that CA's certificate (what a client must trust).
    pub fn tls_only() -> (Self, PathBuf) {
        let pg = Self::start(
            &[],
            Some("hostssl all all 127.0.0.1/32 trust\nlocal all all trust\n"),
        );
        pg.stop();
        let certs = TestCerts::issue(&pg.dir);
        for (name, mode) in [("server.key", 0o600), ("server.crt", 0o644)] {
            let contents = std::fs::read(pg.dir.join(name)).unwrap();
            pg.write_file(name, &contents, mode);
        }
        pg.configure(&[
            "ssl = on".to_owned(),
            format!("ssl_cert_file = '{}'", certs.cert.display()),
            format!("ssl_key_file = '{}'", certs.key.display()),
        ]);
        pg.start_again();
        (pg, certs.ca)
    }

    fn configure(&self, lines: &[String]) {
        let conf_path = self.dir.join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!("\n{}\n", lines.join("\n")));
        std::fs::write(&conf_path, text).unwrap();
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = as_postgres("pg_ctl", &all).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A file in its folder, readable by the server.
    pub fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if nix::unistd::geteuid().is_root() {
            Command::new("chown")
                .args(["postgres:postgres", path.to_str().unwrap()])
                .status()
                .unwrap();
        }
        path
    }

    /// `pg_ctl stop -m immediate`: a crash, as far as the data is concerned.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-l", self.dir.join("log").to_str().unwrap()]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "stop", "-m", "immediate"],
        )
        .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
