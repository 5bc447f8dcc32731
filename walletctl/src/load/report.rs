//! A run's summary: the table `walletctl load` prints, its JSON, and the Markdown of
//! `bench/RESULTS.md`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::LoadArgs;
use super::lag::LagSeries;
use super::plan::{Kind, Plan};
use super::raw::Raw;
use super::track::Tracker;
use super::verify::Verification;

/// Publish-to-outcome latency, milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KindSummary {
    pub sent: u64,
    /// Terminal outcomes: `completed`, `rejected invalid_amount`, `dead_lettered`, …
    pub outcomes: BTreeMap<String, u64>,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lag {
    pub peak: u64,
    pub peak_by_function: BTreeMap<String, u64>,
    /// Mean lag over the first and the last fifth of the sending time.
    pub first_fifth_mean: f64,
    pub last_fifth_mean: f64,
    /// The last fifth's mean exceeds the first's by more than a second of the send rate (and
    /// 1,000 messages); `None` when the run was too short to tell (under 10 samples).
    pub growing: Option<bool>,
    /// The summed lag, one sample a second.
    pub series: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub profile: Option<String>,
    pub run: String,
    pub mix: String,
    /// The requested rate: commands/s or `max`.
    pub rate: String,
    pub users: u64,
    pub duplicates: f64,
    pub malformed: f64,
    pub commands: u64,
    /// Messages published by the generator: commands and duplicate copies.
    pub messages_sent: u64,
    pub send_seconds: f64,
    /// From the first publish to the last first outcome.
    pub seconds: f64,
    /// Commands sent per second while sending.
    pub sent_per_second: f64,
    /// Commands that reached their outcome per second, first publish to last outcome.
    pub outcomes_per_second: f64,
    /// Messages JetStream stored in every stream during the run (commands, events, provider
    /// requests and acks, dead letters), and per second of the run.
    pub jetstream_messages: u64,
    pub jetstream_per_second: f64,
    pub kinds: BTreeMap<Kind, KindSummary>,
    pub latency_ms: Latency,
    pub lag: Lag,
    /// Peak resident memory (VmHWM) of the watched processes, KiB.
    pub rss_kib: BTreeMap<String, Option<u64>>,
    pub envelopes: Option<u64>,
    pub verification: Verification,
    /// Every run's outcomes/s, when the profile ran several times (`make bench` runs
    /// `deposit-max` as often as `raw`); the fields above are the fastest run's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<f64>,
}

/// What `measure` hands over besides the tracker.
#[derive(Debug)]
pub struct Measured {
    pub commands: u64,
    pub messages: u64,
    pub send_seconds: f64,
    pub jetstream_messages: u64,
    pub lag: LagSeries,
    pub rss: BTreeMap<String, Option<u64>>,
    pub envelopes: u64,
}

impl Report {
    pub fn new(
        args: &LoadArgs,
        plan: &Plan,
        m: Measured,
        tracker: &Tracker,
        verification: Verification,
    ) -> Self {
        let seconds = (tracker.last_outcome as f64 / 1e6).max(m.send_seconds);
        let mut kinds: BTreeMap<Kind, KindSummary> = plan
            .mix
            .kinds()
            .map(|k| {
                let summary = KindSummary {
                    sent: 0,
                    outcomes: BTreeMap::new(),
                    latency_ms: Latency::of(&tracker.latency[&k]),
                };
                (k, summary)
            })
            .collect();
        for i in 0..m.commands {
            if let Some(s) = kinds.get_mut(&plan.kind(i)) {
                s.sent += 1;
            }
        }
        let mut finished = 0;
        for ((kind, outcome, reason), n) in &tracker.counts {
            let name = match reason {
                Some(r) => format!("{outcome} {r}"),
                None => outcome.to_string(),
            };
            if let Some(s) = kinds.get_mut(kind) {
                *s.outcomes.entry(name).or_default() += n;
            }
            finished += n;
        }
        let sent_per_second = m.commands as f64 / m.send_seconds;
        Self {
            profile: args.profile.clone(),
            run: plan.run.clone(),
            mix: plan.mix.to_string(),
            rate: args.rate.to_string(),
            users: args.users,
            duplicates: args.duplicates,
            malformed: args.malformed,
            commands: m.commands,
            messages_sent: m.messages,
            send_seconds: m.send_seconds,
            seconds,
            sent_per_second,
            outcomes_per_second: finished as f64 / seconds,
            jetstream_messages: m.jetstream_messages,
            jetstream_per_second: m.jetstream_messages as f64 / seconds,
            kinds,
            latency_ms: Latency::of(&tracker.all_latency()),
            lag: lag_summary(&m.lag, m.send_seconds, sent_per_second),
            rss_kib: m.rss,
            envelopes: plan.mix.has(Kind::Bonus).then_some(m.envelopes),
            verification,
            rates: Vec::new(),
        }
    }
}

fn lag_summary(series: &LagSeries, send_seconds: f64, rate: f64) -> Lag {
    let sending: Vec<u64> = series
        .samples
        .iter()
        .filter(|(t, _)| *t <= send_seconds)
        .map(|(_, l)| *l)
        .collect();
    let fifth = sending.len() / 5;
    let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64;
    let (first, last) = (
        mean(&sending[..fifth]),
        mean(&sending[sending.len() - fifth..]),
    );
    Lag {
        peak: series.samples.iter().map(|(_, l)| *l).max().unwrap_or(0),
        peak_by_function: series.peak_by_function.clone(),
        first_fifth_mean: first,
        last_fifth_mean: last,
        growing: (sending.len() >= 10).then(|| last > first + rate.max(1_000.0)),
        series: series.samples.iter().map(|(_, l)| *l).collect(),
    }
}

/// Peak resident memory of a process, KiB (`VmHWM`); `None` when it cannot be read.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "the fastest of 3 runs: 39,406, 44,920, 51,085/s", when there were several runs.
pub(super) fn fastest_of(rates: &[f64]) -> Option<String> {
    let all: Vec<String> = rates.iter().map(|r| rate(*r)).collect();
    (all.len() > 1).then(|| format!("the fastest of {} runs: {}/s", all.len(), all.join(", ")))
}

pub(super) fn rate(r: f64) -> String {
    thousands(r.round() as u64)
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}{}: mix {}, rate {}, {} users, duplicates {}, malformed {}",
            self.profile
                .as_deref()
                .map(|p| format!("{p} "))
                .unwrap_or_default(),
            self.run,
            self.mix,
            self.rate,
            self.users,
            self.duplicates,
            self.malformed
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| kind | sent | outcomes | p50 ms | p95 ms | p99 ms | max ms |"
        )?;
        writeln!(f, "|---|---:|---|---:|---:|---:|---:|")?;
        for (kind, s) in &self.kinds {
            let outcomes: Vec<String> = s
                .outcomes
                .iter()
                .map(|(o, n)| format!("{o} {}", thousands(*n)))
                .collect();
            let l = &s.latency_ms;
            writeln!(
                f,
                "| {kind} | {} | {} | {} | {} | {} | {} |",
                thousands(s.sent),
                outcomes.join(", "),
                ms(l.p50),
                ms(l.p95),
                ms(l.p99),
                ms(l.max)
            )?;
        }
        let l = &self.latency_ms;
        writeln!(
            f,
            "| all | {} | {} duplicate copies | {} | {} | {} | {} |",
            thousands(self.commands),
            thousands(self.messages_sent - self.commands),
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.max)
        )?;
        writeln!(f)?;
        writeln!(f, "| measure | value |")?;
        writeln!(f, "|---|---|")?;
        writeln!(
            f,
            "| commands sent | {} in {:.1} s: {}/s sustained |",
            thousands(self.commands),
            self.send_seconds,
            rate(self.sent_per_second)
        )?;
        writeln!(
            f,
            "| outcomes | first publish to last outcome {:.1} s: {}/s |",
            self.seconds,
            rate(self.outcomes_per_second)
        )?;
        writeln!(
            f,
            "| JetStream messages stored | {}: {}/s |",
            thousands(self.jetstream_messages),
            rate(self.jetstream_per_second)
        )?;
        let by: Vec<String> = self
            .lag
            .peak_by_function
            .iter()
            .map(|(k, v)| format!("{k} {}", thousands(*v)))
            .collect();
        writeln!(
            f,
            "| peak consumer lag | {} ({}) |",
            thousands(self.lag.peak),
            by.join(", ")
        )?;
        writeln!(
            f,
            "| lag trend | first fifth {:.0}, last fifth {:.0}: {} |",
            self.lag.first_fifth_mean,
            self.lag.last_fifth_mean,
            match self.lag.growing {
                Some(true) => "GROWING",
                Some(false) => "not growing",
                None => "run too short to tell",
            }
        )?;
        if !self.rss_kib.is_empty() {
            let rss: Vec<String> = self
                .rss_kib
                .iter()
                .map(|(k, v)| match v {
                    Some(kib) => format!("{k} {:.1} MiB", *kib as f64 / 1024.0),
                    None => format!("{k} unknown"),
                })
                .collect();
            writeln!(f, "| peak RSS | {} |", rss.join(", "))?;
        }
        writeln!(f)?;
        for c in &self.verification.checks {
            writeln!(
                f,
                "{}  {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        writeln!(
            f,
            "verification: {}",
            if self.verification.passed {
                "passed"
            } else {
                "FAILED"
            }
        )
    }
}

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
pub const RSS_TARGET_KIB: u64 = 64 * 1024;

/// Text as one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `bench/RESULTS.md`: the profiles side by side and the targets.
/// `failed`: the profiles that ended without a summary; each is a row of its own and fails the
/// targets it is part of.
pub fn markdown(
    p: &Provenance,
    raw: Option<&Raw>,
    reports: &[Report],
    failed: &[super::bench::Failure],
) -> String {
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
    if let Some(raw) = raw {
        let _ = writeln!(
            s,
            "| raw | {} messages | {} | {} | — | — | — | — | — | — | — | — | — |",
            thousands(raw.messages as u64),
            rate(raw.messages as f64 / raw.publish_seconds),
            rate(raw.rate)
        );
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
    for name in ["deposit-peak", "mixed-peak"] {
        match find(name) {
            Some(r) => {
                let wanted: Option<f64> = r.rate.parse().ok();
                let kept = wanted.is_none_or(|w| r.sent_per_second >= 0.98 * w);
                target(
                    format!("{name}: rate kept, p99 < {P99_TARGET_MS} ms, lag flat, verified"),
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
                        if r.verification.passed {
                            "verified"
                        } else {
                            "verification failed"
                        }
                    ),
                    Some(
                        kept && r.latency_ms.p99 < P99_TARGET_MS
                            && r.lag.growing == Some(false)
                            && r.verification.passed,
                    ),
                );
            }
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
    match (find("deposit-max"), raw) {
        (Some(d), Some(raw)) => {
            let share = d.outcomes_per_second / raw.rate;
            target(
                "deposit-max ≥ 0.3 × raw".into(),
                format!(
                    "{}/s ÷ {}/s = {share:.3}{}",
                    rate(d.outcomes_per_second),
                    rate(raw.rate),
                    [("deposit-max", fastest_of(&d.rates)), ("raw", raw.runs())]
                        .into_iter()
                        .filter_map(|(name, runs)| Some(format!(" ({name}: {})", runs?)))
                        .collect::<String>()
                ),
                Some(share >= 0.3),
            );
        }
        _ => {
            let (measured, met) = missing(&["deposit-max"]);
            target("deposit-max ≥ 0.3 × raw".into(), measured, met)
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
    let _ = writeln!(s, "\n## Profiles\n");
    for r in reports {
        let _ = writeln!(s, "### {}\n\n{}", r.profile.as_deref().unwrap_or(&r.run), r);
    }
    s
}
