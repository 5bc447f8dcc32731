//! `walletctl bench report`: `bench/RESULTS.md` from the summaries `make bench` wrote, with the
//! machine, the servers, the commit and the date.

use std::path::Path;

use anyhow::Context as _;
use wallet_runtime::Config;

use crate::raw::Raw;
use crate::report::Report;
use crate::results::{self, Failure, Provenance};

/// The profiles of `make bench`, in the order the results list them.
pub const PROFILES: [&str; 15] = [
    "deposit-max",
    "per-message",
    "deposit-peak",
    "mixed-peak",
    "mixed-all-peak",
    "flash-bonus",
    "quiet",
    "history-fresh",
    "history",
    "shards-1",
    "shards-2",
    "shards-4",
    "deposit-max-r3",
    "quiet-r3",
    "mixed-r3",
];

pub async fn results(config: &Config, dir: &Path, commit: &str) -> anyhow::Result<String> {
    let read = |file: String| -> anyhow::Result<Option<String>> {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    // Empty: `walletctl bench raw` failed before it printed anything; reported as not run.
    let raw = |file: &str| -> anyhow::Result<Option<Raw>> {
        read(file.to_owned())?
            .filter(|s| !s.trim().is_empty())
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .context(file.to_owned())
    };
    let (raw, raw_r3) = (raw("raw.json")?, raw("raw-r3.json")?);
    let mut reports: Vec<Report> = Vec::new();
    let mut failed: Vec<Failure> = Vec::new();
    for name in PROFILES {
        // One run writes `<profile>.json`; several write `<profile>.1.json`, `.2.json`, …
        let single =
            dir.join(format!("{name}.json")).exists() || dir.join(format!("{name}.err")).exists();
        let files: Vec<String> = if single {
            vec![name.to_owned()]
        } else {
            (1..)
                .map(|k| format!("{name}.{k}"))
                .take_while(|f| dir.join(format!("{f}.err")).exists())
                .collect()
        };
        let mut runs: Vec<Report> = Vec::new();
        for file in &files {
            match read(format!("{file}.json"))? {
                Some(s) if !s.trim().is_empty() => {
                    runs.push(serde_json::from_str(&s).with_context(|| format!("{file}.json"))?)
                }
                summary => {
                    let err = read(format!("{file}.err"))?;
                    let last = err
                        .as_deref()
                        .and_then(|e| e.lines().rev().find(|l| !l.trim().is_empty()));
                    if summary.is_some() || last.is_some() {
                        let why = last.unwrap_or("it wrote no summary").trim().to_owned();
                        failed.push((name, why));
                    }
                }
            }
        }
        if runs.len() == files.len()
            && let Some(report) = fastest(runs)
        {
            reports.push(report);
        }
    }
    let provenance = Provenance {
        machine: machine(),
        servers: servers(config).await,
        commit: commit.to_owned(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
    };
    let runs = results::Runs {
        raw,
        raw_r3,
        reports,
        failed,
        search: read("mixed-r3-search.txt".into())?,
        seed: read("history-seed.txt".into())?,
    };
    Ok(results::markdown(&provenance, &runs))
}

/// `walletctl bench holds FILE`: whether the run a summary describes held its rate (see
/// [`results::holds`]), and one line saying what it measured.
pub fn holds(file: &Path) -> anyhow::Result<(bool, String)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    anyhow::ensure!(
        !text.trim().is_empty(),
        "{}: the run wrote no summary",
        file.display()
    );
    let report: Report =
        serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?;
    Ok((results::holds(&report), results::held(&report)))
}

/// The run a profile is reported by: the fastest, with every run's rate, unless one failed its
/// verification, which is then the one reported (a failure is never outrun).
fn fastest(mut runs: Vec<Report>) -> Option<Report> {
    if let Some(at) = runs.iter().position(|r| !r.verification.passed) {
        return Some(runs.swap_remove(at));
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.outcomes_per_second).collect();
    let at = (0..runs.len()).max_by(|&a, &b| rates[a].total_cmp(&rates[b]))?;
    let mut report = runs.swap_remove(at);
    if rates.len() > 1 {
        report.rates = rates;
    }
    Some(report)
}

/// CPU model, cores and memory, from /proc.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let kib: u64 = s
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown memory".into());
    format!("{cores} cores ({cpu}), {mem}")
}

/// The servers' versions, as they report them.
async fn servers(config: &Config) -> String {
    let nats = match wallet_ops::nats(config).await {
        Ok(c) => format!("nats-server {}", c.server_info().version),
        Err(_) => "nats-server (unreachable)".into(),
    };
    // With the settings that shape the figures: without autovacuum nothing removes the rows
    // and index entries that updates and deletes leave behind while a profile runs.
    let pg = match wallet_ops::postgres(config).await {
        Ok(c) => match c
            .query_one(
                "SELECT current_setting('server_version'), current_setting('autovacuum'),
                        current_setting('shared_buffers')",
                &[],
            )
            .await
        {
            Ok(r) => format!(
                "PostgreSQL {} (autovacuum {}, shared_buffers {})",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            ),
            Err(_) => "PostgreSQL (unknown)".into(),
        },
        Err(_) => "PostgreSQL (unreachable)".into(),
    };
    let redis = async {
        let client = wallet_runtime::cache::client(config).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut c)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| format!("Redis {}", v.trim()))
    }
    .await
    .unwrap_or_else(|| "Redis (unknown)".into());
    format!("{nats}, {pg}, {redis}")
}
