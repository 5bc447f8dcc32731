//! A private nats-server, for a test that must stop, restart or configure its server.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::free_port;

/// A NATS server with JetStream of the test's own (its port, its store folder), for tests that
/// restart one.
#[derive(Debug)]
pub struct PrivateNats {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl PrivateNats {
    pub fn start() -> Self {
        Self::with_config(|_| String::new())
    }

    /// One started with a configuration file: `conf` is given the server's folder (for
    /// certificates) and returns the file's text (`tls { … }`, `authorization { … }`).
    pub fn with_config(conf: impl FnOnce(&std::path::Path) -> String) -> Self {
        Self::of("nats-server", conf)
    }

    /// One of the server binary `bin` (Debian's `nats-server` on the PATH, or
    /// [`crate::pinned_nats_server`]), started with a configuration file as in
    /// [`Self::with_config`].
    pub fn of(bin: impl Into<PathBuf>, conf: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = std::env::temp_dir().join(format!("nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nats.conf"), conf(&dir)).unwrap();
        let n = Self {
            port: free_port(),
            bin: bin.into(),
            dir,
            child: Mutex::new(None),
        };
        n.start_again();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it on the same port and store folder; waits until it accepts connections.
    pub fn start_again(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["-c", self.dir.join("nats.conf").to_str().unwrap()])
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .args(["-sd", self.dir.join("store").to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{} (apt-get install nats-server): {e}", self.bin.display())
            });
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (a clean shutdown: JetStream flushes its store) and waits for the exit.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
