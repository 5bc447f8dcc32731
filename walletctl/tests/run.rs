//! `make run` as a person uses it: started in a terminal (tmux), then Ctrl-C. Every function
//! must finish gracefully (its `stopped` line shown), and the script must end by itself.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{TestEnv, eventually};

const T: Duration = Duration::from_secs(60);

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux").args(args).output().unwrap()
}

/// Ends the tmux session even when the test fails.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.0]);
    }
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_in_a_terminal_stops_every_function_gracefully() {
    let env = TestEnv::new().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = testkit::binary("walletctl").parent().unwrap().to_path_buf();
    let out = std::env::temp_dir().join(format!("{}.run.log", env.ns));
    // Five consecutive ports from one drawn free below the ephemeral range.
    let base = testkit::free_port();
    // One HTTP port per function, from `base` (scripts/run.sh).
    let ports = base..base + wallet_ops::catalog::names().len() as u16;
    let mut vars: Vec<String> = env
        .env()
        .into_iter()
        .filter(|(k, _)| k != "RUST_LOG")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.push("RUST_LOG=info".into());
    vars.push(format!("WALLET_BIN={}", bin.display()));
    vars.push(format!("HTTP_PORT_BASE={base}"));
    let command = format!(
        "cd {} && env {} bash scripts/run.sh",
        root.display(),
        vars.join(" ")
    );
    let session = Session(env.ns.clone());
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "200",
        "-y",
        "50",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let piped = tmux(&[
        "pipe-pane",
        "-t",
        &session.0,
        &format!("cat >> {}", out.display()),
    ]);
    assert!(piped.status.success(), "{piped:?}");

    eventually(T, "every function ready", || async {
        for port in ports.clone() {
            testkit::http_get(port, "/readyz")
                .await
                .filter(|(s, _)| *s == 200)?;
        }
        Some(())
    })
    .await;
    assert!(log(&out).contains("run: all functions up"), "{}", log(&out));

    tmux(&["send-keys", "-t", &session.0, "C-c"]);
    // Each function logs `stopped` when it ends gracefully (provider-sim, a walletctl command,
    // does not). The prefixers may print a function's last lines just after the script's own.
    let stopped = |shown: &str| {
        shown.contains("run: stopped")
            && wallet_ops::catalog::names().iter().all(|p| {
                shown
                    .lines()
                    .any(|l| l.starts_with(&format!("[{p}]")) && l.contains("stopped"))
            })
    };
    let waited = tokio::time::timeout(T, async {
        while !stopped(&log(&out)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "not every function stopped gracefully:\n{}",
        log(&out)
    );
    for port in ports {
        assert!(
            testkit::http_get(port, "/healthz").await.is_none(),
            "port {port} still answers"
        );
    }
    let _ = std::fs::remove_file(&out);
}
