//! `bench/RESULTS.md`: the profiles of `make bench` side by side, checked against the targets.

use std::fmt::Write as _;

use crate::figures::{fastest_of, ms, rate, thousands};
use crate::raw::Raw;
use crate::report::Report;

/// A profile whose run ended without a summary (`make bench` keeps what a run printed on stderr
/// in `<profile>.err`), and why: the last line it printed.
pub type Failure = (&'static str, String);

/// What `bench/RESULTS.md` says about the machine and the build.
#[derive(Debug)]
pub struct Provenance {
    pub machine: String,
    pub servers: String,
    pub commit: String,
    pub date: String,
}

/// The targets of the issue, checked against the profiles found.
pub const P99_TARGET_MS: f64 = 250.0;
/// `history`: deposit-max on a database of months of remembered commands, against a fresh one.
pub const HISTORY_SHARE: f64 = 0.85;
/// The `quiet` profile's targets: publish-to-event latency at 100 deposits/s.
pub const QUIET_P50_MS: f64 = 10.0;
pub const QUIET_P99_MS: f64 = 50.0;
pub const RSS_TARGET_KIB: u64 = 64 * 1024;

/// Whether a run at a fixed rate held it: every command sent at the rate asked (2 % slack),
/// publish-to-outcome p99 under [`P99_TARGET_MS`], consumer lag not growing, verified. The peak
/// profiles' target, and what `mixed-r3`'s search asks of each rate it tries.
pub fn holds(r: &Report) -> bool {
    let wanted: Option<f64> = r.rate.parse().ok();
    let kept = wanted.is_none_or(|w| r.sent_per_second >= 0.98 * w);
    kept && r.latency_ms.p99 < P99_TARGET_MS
        && r.lag.growing == Some(false)
        && r.verification.passed
}

fn verdict(r: &Report) -> &'static str {
    if r.verification.passed {
        "verified"
    } else {
        "verification failed"
    }
}

/// `a ÷ b = share`, with each side's runs when it ran several times; returns the share too.
fn share(a: (&str, f64, Option<String>), b: (&str, f64, Option<String>)) -> (f64, String) {
    let share = a.1 / b.1;
    let runs: String = [(a.0, a.2), (b.0, b.2)]
        .into_iter()
        .filter_map(|(name, runs)| Some(format!(" ({name}: {})", runs?)))
        .collect();
    (
        share,
        format!("{}/s ÷ {}/s = {share:.3}{runs}", rate(a.1), rate(b.1)),
    )
}

/// One line on a run at a fixed rate: what it held.
pub fn held(r: &Report) -> String {
    format!(
        "{}/s of {}/s for {:.0} s, p99 {} ms, lag {}, {}",
        rate(r.sent_per_second),
        r.rate,
        r.send_seconds,
        ms(r.latency_ms.p99),
        match r.lag.growing {
            Some(true) => "growing",
            Some(false) => "flat",
            None => "unknown",
        },
        verdict(r)
    )
}

/// The inputs of `bench/RESULTS.md` besides the provenance.
#[derive(Debug, Default)]
pub struct Runs {
    pub raw: Option<Raw>,
    /// `raw` on the 3-node cluster, R3 streams.
    pub raw_r3: Option<Raw>,
    pub reports: Vec<Report>,
    pub failed: Vec<Failure>,
    /// `mixed-r3`'s search: one line per rate tried.
    pub search: Option<String>,
    /// What the history seed printed: its timings and the disk it took.
    pub seed: Option<String>,
}

/// Text as one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The cost of sharding itself (docs/sharding.md): deposit-max on 1, 2 and 4 shards of this
/// host, per CPU-second of PostgreSQL and of the deposit processes. On one host the rate cannot
/// grow with shards; the work per deposit must not grow either.
fn sharding<'a>(s: &mut String, find: &dyn Fn(&str) -> Option<&'a Report>) {
    let runs: Vec<(usize, &Report)> = [1, 2, 4]
        .into_iter()
        .filter_map(|n| find(&format!("shards-{n}")).map(|r| (n, r)))
        .collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n## Sharding\n\n`shards-N`: deposit-max with N shards, each a database on this host's one \
         PostgreSQL with a deposit process of its own, on the pinned nats-server. The shards share \
         two cores, so the rate cannot grow here; the deposits per CPU-second show what sharding \
         itself costs. The peak lag per partition is the most deposits a partition held at once \
         (highest, median, lowest of the 256).\n\n\
         | shards | deposits/s | per PostgreSQL CPU-second | per deposit-process CPU-second | nats-server CPU-seconds | peak lag per partition |\n\
         |---:|---:|---:|---:|---:|---|"
    );
    for (n, r) in runs {
        let cpu = |of: &dyn Fn(&str) -> bool| -> Option<f64> {
            let used: Vec<f64> = r
                .cpu_seconds
                .iter()
                .filter(|(name, _)| of(name))
                .filter_map(|(_, seconds)| *seconds)
                .collect();
            (!used.is_empty()).then(|| used.iter().sum())
        };
        let per = |seconds: Option<f64>| {
            seconds
                .filter(|c| *c > 0.0)
                .map_or("—".to_owned(), |c| rate(r.commands as f64 / c))
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} | {} |",
            rate(r.outcomes_per_second),
            per(cpu(&|name| name == "postgres")),
            per(cpu(&|name| name.starts_with("deposit"))),
            cpu(&|name| name == "nats-server").map_or("—".to_owned(), |c| format!("{c:.1}")),
            r.lag.partition_spread().unwrap_or_else(|| "—".to_owned()),
        );
    }
}

/// `bench/RESULTS.md`: the profiles side by side and the targets.
/// `failed`: the profiles that ended without a summary; each is a row of its own and fails the
/// targets it is part of.
pub fn markdown(p: &Provenance, runs: &Runs) -> String {
    let (reports, failed) = (&runs.reports, &runs.failed);
    let mut s = String::new();
    let find = |name: &str| reports.iter().find(|r| r.profile.as_deref() == Some(name));
    let failure = |names: &[&str]| {
        failed
            .iter()
            .find(|(n, _)| names.contains(n))
            .map(|(n, why)| format!("{n} failed: {}", cell(why)))
    };
    let _ = writeln!(s, "# Benchmark results\n");
    let _ = writeln!(
        s,
        "`make bench` on {}, commit `{}`, {}.\n\nServers: {}. NATS, PostgreSQL, Redis, the \
         functions and the load generator all share this machine.\n",
        p.machine, p.commit, p.date, p.servers
    );
    let _ = writeln!(
        s,
        "| profile | commands | sent/s | outcomes/s | JetStream msgs/s | p50 ms | p95 ms | p99 ms | max ms | peak lag | lag | peak RSS | verified |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"
    );
    for (name, raw) in [("raw", &runs.raw), ("raw-r3", &runs.raw_r3)] {
        if let Some(raw) = raw {
            let _ = writeln!(
                s,
                "| {name} | {} messages | {} | {} | — | — | — | — | — | — | — | — | — |",
                thousands(raw.messages as u64),
                rate(raw.messages as f64 / raw.publish_seconds),
                rate(raw.rate)
            );
        }
    }
    for r in reports {
        let l = &r.latency_ms;
        let rss = r.rss_kib.values().flatten().max().copied();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.profile.as_deref().unwrap_or(&r.run),
            thousands(r.commands),
            rate(r.sent_per_second),
            rate(r.outcomes_per_second),
            rate(r.jetstream_per_second),
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.max),
            thousands(r.lag.peak),
            match r.lag.growing {
                Some(true) => "growing",
                Some(false) => "flat",
                None => "short run",
            },
            rss.map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            if r.verification.passed {
                "yes"
            } else {
                "**NO**"
            }
        );
    }
    for (name, why) in failed {
        let _ = writeln!(
            s,
            "| {name} | **failed**: {} | — | — | — | — | — | — | — | — | — | — | **NO** |",
            cell(why)
        );
    }
    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    let mut target = |name: String, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not run",
        };
        let _ = writeln!(s, "| {name} | {measured} | {met} |");
    };
    let missing = |names: &[&str]| match failure(names) {
        Some(why) => (why, Some(false)),
        None => ("—".to_owned(), None),
    };
    for name in ["deposit-peak", "mixed-peak", "mixed-all-peak"] {
        match find(name) {
            Some(r) => target(
                format!("{name}: rate kept, p99 < {P99_TARGET_MS} ms, lag flat, verified"),
                held(r),
                Some(holds(r)),
            ),
            None => {
                let (measured, met) = missing(&[name]);
                target(
                    format!("{name}: rate kept, p99 < {P99_TARGET_MS} ms, lag flat, verified"),
                    measured,
                    met,
                )
            }
        }
    }
    // A wallet user's wait when it is quiet: nothing lingers or waits for a fetch; on one server
    // and in the production shape.
    for name in ["quiet", "quiet-r3"] {
        let quiet = format!(
            "{name}: 100 deposits/s, p50 < {QUIET_P50_MS} ms, p99 < {QUIET_P99_MS} ms, verified"
        );
        match find(name) {
            Some(r) => target(
                quiet,
                format!(
                    "{}/s for {:.0} s, p50 {} ms, p99 {} ms, {}",
                    rate(r.sent_per_second),
                    r.send_seconds,
                    ms(r.latency_ms.p50),
                    ms(r.latency_ms.p99),
                    verdict(r)
                ),
                Some(
                    r.latency_ms.p50 < QUIET_P50_MS
                        && r.latency_ms.p99 < QUIET_P99_MS
                        && r.verification.passed,
                ),
            ),
            None => {
                let (measured, met) = missing(&[name]);
                target(quiet, measured, met)
            }
        }
    }
    for (max, raw_name, raw) in [
        ("deposit-max", "raw", &runs.raw),
        ("deposit-max-r3", "raw-r3", &runs.raw_r3),
    ] {
        let name = format!("{max} ≥ 0.3 × {raw_name}");
        match (find(max), raw) {
            (Some(d), Some(raw)) => {
                let (share, measured) = share(
                    (max, d.outcomes_per_second, fastest_of(&d.rates)),
                    (raw_name, raw.rate, raw.runs()),
                );
                target(name, measured, Some(share >= 0.3));
            }
            _ => {
                let (measured, met) = missing(&[max]);
                target(name, measured, met)
            }
        }
    }
    // The cluster's mixed ceiling: found by bench.sh's search, then held for the peak duration.
    let mixed_r3 = format!(
        "mixed-r3: the highest mixed rate that holds (rate kept, p99 < {P99_TARGET_MS} ms, lag flat, verified)"
    );
    let tried = runs
        .search
        .as_deref()
        .map(|s| cell(&s.trim().replace('\n', "; ")));
    match find("mixed-r3") {
        Some(r) => target(
            mixed_r3,
            format!(
                "{} commands/s = {} JetStream messages/hour: {}{}",
                r.rate,
                thousands((r.jetstream_per_second * 3600.0) as u64),
                held(r),
                tried
                    .as_deref()
                    .map(|t| format!(" (rates tried: {t})"))
                    .unwrap_or_default()
            ),
            Some(holds(r)),
        ),
        None => {
            let (measured, met) = match &tried {
                Some(t) => (format!("no rate held: {t}"), Some(false)),
                None => missing(&["mixed-r3"]),
            };
            target(mixed_r3, measured, met)
        }
    }
    let history = format!(
        "history: deposit-max with months of remembered commands ≥ {HISTORY_SHARE} × on a fresh database"
    );
    match (find("history"), find("history-fresh")) {
        (Some(h), Some(f)) => {
            let (share, measured) = share(
                ("history", h.outcomes_per_second, fastest_of(&h.rates)),
                ("fresh", f.outcomes_per_second, fastest_of(&f.rates)),
            );
            target(
                history,
                measured,
                Some(share >= HISTORY_SHARE && h.verification.passed && f.verification.passed),
            );
        }
        _ => {
            let (measured, met) = missing(&["history", "history-fresh"]);
            target(history, measured, met)
        }
    }
    match (find("deposit-max"), find("per-message")) {
        (Some(d), Some(p)) => {
            let x = d.outcomes_per_second / p.outcomes_per_second;
            target(
                "batch path ≥ 5 × per-message".into(),
                format!(
                    "{}/s ÷ {}/s = {x:.1}×",
                    rate(d.outcomes_per_second),
                    rate(p.outcomes_per_second)
                ),
                Some(x >= 5.0),
            );
        }
        _ => {
            let (measured, met) = missing(&["deposit-max", "per-message"]);
            target("batch path ≥ 5 × per-message".into(), measured, met)
        }
    }
    let mut peak: Option<(String, u64)> = None;
    for r in reports {
        for (name, kib) in &r.rss_kib {
            if let Some(kib) = kib
                && peak.as_ref().is_none_or(|(_, k)| kib > k)
            {
                peak = Some((
                    format!("{name} in {}", r.profile.as_deref().unwrap_or("?")),
                    *kib,
                ));
            }
        }
    }
    match peak {
        Some((who, kib)) => target(
            "every function process < 64 MiB RSS".into(),
            format!("largest: {who}, {:.1} MiB", kib as f64 / 1024.0),
            Some(kib < RSS_TARGET_KIB),
        ),
        None => target(
            "every function process < 64 MiB RSS".into(),
            "—".into(),
            None,
        ),
    }
    sharding(&mut s, &find);
    let _ = writeln!(s, "\n## Profiles\n");
    for r in reports {
        let _ = writeln!(s, "### {}\n\n{}", r.profile.as_deref().unwrap_or(&r.run), r);
        if r.profile.as_deref() == Some("history")
            && let Some(seed) = &runs.seed
        {
            let _ = writeln!(
                s,
                "The seed (scripts/seed-history.sql):\n\n```\n{}\n```\n",
                seed.trim()
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(profile: &str, rate: &str, outcomes: f64, p50: f64, p99: f64) -> Report {
        serde_json::from_value(serde_json::json!({
            "profile": profile, "run": profile, "mix": "deposit", "rate": rate, "users": 1000,
            "duplicates": 0.0, "malformed": 0.0, "commands": 1000, "messages_sent": 1000,
            "send_seconds": 120.0, "seconds": 121.0,
            "sent_per_second": rate.parse::<f64>().unwrap_or(outcomes),
            "outcomes_per_second": outcomes, "jetstream_messages": 3000,
            "jetstream_per_second": 25.0, "kinds": {},
            "latency_ms": { "p50": p50, "p95": p99, "p99": p99, "max": p99 },
            "lag": { "peak": 10, "peak_by_function": {}, "first_fifth_mean": 1.0,
                     "last_fifth_mean": 1.0, "growing": false, "series": [] },
            "rss_kib": { "deposit": 40_000 }, "envelopes": null,
            "verification": { "passed": true, "checks": [] },
        }))
        .expect("a report")
    }

    fn provenance() -> Provenance {
        Provenance {
            machine: "m".into(),
            servers: "s".into(),
            commit: "c".into(),
            date: "d".into(),
        }
    }

    fn raw(rate: f64) -> Raw {
        Raw {
            messages: 100_000,
            payload_bytes: 200,
            publish_seconds: 2.0,
            seconds: 2.0,
            rate,
            rates: vec![],
        }
    }

    /// The last cell (`yes`, `**no**`, `not run`) of the targets row that starts with `name`.
    fn met<'a>(md: &'a str, name: &str) -> &'a str {
        let targets = md.split_once("## Targets").expect("a targets section").1;
        let row = targets
            .lines()
            .find(|l| l.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no row {name} in\n{md}"));
        row.trim_end_matches(" |")
            .rsplit(" | ")
            .next()
            .expect("cells")
    }

    #[test]
    fn each_target_is_met_missed_or_not_run_by_the_figures() {
        let mut quiet_r3 = report("quiet-r3", "100", 100.0, 9.0, 42.0);
        quiet_r3.verification.passed = false;
        let runs = Runs {
            raw: Some(raw(45_000.0)),
            raw_r3: None,
            reports: vec![
                report("deposit-max", "max", 15_000.0, 500.0, 900.0),
                report("per-message", "max", 500.0, 1.0, 2.0),
                report("deposit-peak", "8333", 8_300.0, 20.0, 180.0),
                report("quiet", "100", 100.0, 3.0, 72.0),
                quiet_r3,
                report("history", "max", 20_000.0, 1.0, 2.0),
                report("history-fresh", "max", 25_000.0, 1.0, 2.0),
            ],
            failed: vec![("deposit-max-r3", "timed out | no summary".into())],
            search: Some("50/s held\n75/s p99 300 ms".into()),
            seed: None,
        };
        let md = markdown(&provenance(), &runs);
        assert_eq!(met(&md, "deposit-peak:"), "yes");
        assert_eq!(met(&md, "mixed-peak:"), "not run");
        assert_eq!(met(&md, "quiet:"), "**no**", "p99 72 ms");
        assert_eq!(met(&md, "quiet-r3:"), "**no**", "verification failed");
        assert_eq!(met(&md, "deposit-max ≥"), "yes", "15,000 ÷ 45,000 = 0.333");
        assert!(md.contains("= 0.333"), "{md}");
        assert_eq!(met(&md, "deposit-max-r3 ≥"), "**no**");
        assert!(md.contains("deposit-max-r3 failed: timed out \\| no summary"));
        assert_eq!(met(&md, "mixed-r3:"), "**no**");
        assert!(md.contains("no rate held: 50/s held; 75/s p99 300 ms"));
        assert_eq!(met(&md, "history:"), "**no**", "20,000 ÷ 25,000 = 0.8");
        assert_eq!(met(&md, "batch path"), "yes", "30×");
        assert_eq!(met(&md, "every function process"), "yes", "39 MiB");
        assert!(!md.contains("## Sharding"), "no shards profile run");
    }

    /// Deposits per CPU-second of PostgreSQL and of every shard's deposit process together.
    #[test]
    fn the_sharding_table_divides_the_deposits_by_the_cpu_they_took() {
        let shards = |n: usize, postgres: f64, each: f64| {
            let mut r = report(&format!("shards-{n}"), "max", 10_000.0, 1.0, 2.0);
            r.cpu_seconds.insert("postgres".into(), Some(postgres));
            r.cpu_seconds.insert("nats-server".into(), Some(30.0));
            for k in 0..n {
                r.cpu_seconds.insert(format!("deposit-s{k}"), Some(each));
            }
            r
        };
        let mut two = shards(2, 0.5, 0.25);
        two.lag.peak_by_partition = (0..256).map(|p| (p, u64::from(p % 10))).collect();
        let runs = Runs {
            raw: None,
            raw_r3: None,
            // 1,000 deposits each: 1 shard, 0.5 s of PostgreSQL and 0.25 of deposit; 2 shards,
            // 0.5 s and 2 × 0.25; 4 shards missing.
            reports: vec![shards(1, 0.5, 0.25), two],
            failed: vec![],
            search: None,
            seed: None,
        };
        let md = markdown(&provenance(), &runs);
        let table = md.split_once("## Sharding").expect("a sharding section").1;
        assert!(
            table.contains("| 1 | 10,000 | 2,000 | 4,000 | 30.0 | — |"),
            "{table}"
        );
        // Partition 9 is the first that held 9, the most; the 129th of 256 held 4.
        assert!(
            table.contains(
                "| 2 | 10,000 | 2,000 | 2,000 | 30.0 | max 9 (partition 9), median 4, min 0, over 256 partitions |"
            ),
            "{table}"
        );
        assert!(!table.contains("| 4 |"), "{table}");
    }
}
