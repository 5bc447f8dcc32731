//! A private Redis, for a test that must stop, restart or configure its server.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{TestCerts, free_port};

/// A Redis server of the test's own, on a free port, for tests that must stop one.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    password: Option<String>,
    /// TLS only, with these certificates (in a folder removed on drop).
    tls: Option<TestCerts>,
    child: Mutex<Option<Child>>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// One that requires `AUTH password`.
    pub fn with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_owned()))
    }

    /// One that accepts TLS connections only (`rediss://`), with a certificate for 127.0.0.1
    /// signed by a CA of its own: [`PrivateRedis::ca`] is what a client must trust.
    pub fn tls_only() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("redis-tls-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Self {
            port,
            password: None,
            tls: Some(TestCerts::issue(&dir)),
            child: Mutex::new(None),
        };
        r.restart();
        r
    }

    fn start_with(password: Option<String>) -> Self {
        let r = Self {
            port: free_port(),
            password,
            tls: None,
            child: Mutex::new(None),
        };
        r.restart();
        r
    }

    /// The CA a client must trust, for one started with [`PrivateRedis::tls_only`].
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// (Re)starts it empty on the same port and waits until it accepts connections.
    pub fn restart(&self) {
        let port = self.port.to_string();
        let listen: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some(t) => [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-auth-clients",
                "no",
                "--tls-cert-file",
                t.cert.to_str().unwrap(),
                "--tls-key-file",
                t.key.to_str().unwrap(),
                "--tls-ca-cert-file",
                t.ca.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
        };
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): connections drop, data is gone.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.tls.as_ref().and_then(|t| t.ca.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
