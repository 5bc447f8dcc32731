//! The processes a test starts: a free port, a workspace binary, a child killed with the test.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::eventually;

/// A free TCP port on 127.0.0.1, for a server a test starts.
///
/// Drawn at random below the kernel's ephemeral range (32768 and up), and free when drawn. A
/// port the kernel hands out (`bind` to port 0, which this used) could be handed out again to
/// another test's process before the server started here bound it: the server then exited with
/// "address in use" while the other process answered its `/readyz` (a CI run saw a mixed
/// load run whose bonus-grant never started).
///
/// Two test processes could also draw the same free port before either server bound it (a CI
/// run's `balance` exited "address in use" while the shards tests ran 38 processes): a port is
/// claimed by a file under the temporary folder, created only if missing, so it goes to one
/// test process. A claim older than ten minutes is from a test long over and is taken back.
pub fn free_port() -> u16 {
    let claims = std::env::temp_dir().join("testkit-ports");
    std::fs::create_dir_all(&claims).unwrap();
    loop {
        let port = rand::random_range(10_000..32_000);
        let claim = claims.join(port.to_string());
        let stale = std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 600));
        if stale {
            let _ = std::fs::remove_file(&claim);
        }
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok();
        if claimed && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A binary of this workspace, built by `cargo build` next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap(); // target/<profile>/deps/.. 
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// A function process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub http: u16,
}

impl Proc {
    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has not exited (without reaping it: its exit status stays for `wait`).
    pub fn running(&self) -> bool {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        matches!(
            waitid(
                Id::Pid(nix::unistd::Pid::from_raw(self.child.id() as i32)),
                flags
            ),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// Sends `sig` and waits up to `limit` for the exit status.
    pub async fn signal_and_wait(
        &mut self,
        sig: nix::sys::signal::Signal,
        limit: Duration,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        self.wait(limit).await
    }

    /// Waits up to `limit` for the process to exit by itself; its exit status.
    pub async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        eventually(limit, "the process to exit", || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        http_get(self.http, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Its counters and gauges (no histograms), for a failing test to show what the process did.
    pub async fn counters(&self) -> String {
        self.metrics()
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{") && !l.contains("quantile="))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value of a counter or gauge summed over its label sets (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
