//! A run's summary: the table `walletctl load` prints, its JSON, and the Markdown of
//! `bench/RESULTS.md`.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::LoadArgs;
use crate::figures::{ms, rate, thousands};
use crate::lag::LagSeries;
use crate::plan::{Kind, Plan};
use crate::track::Tracker;
use crate::verify::Verification;

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
    /// The most commands each partition held at once (partitions that held none are absent).
    #[serde(default)]
    pub peak_by_partition: BTreeMap<u16, u64>,
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
    /// CPU seconds each watched process (`--watch`) or program (`--cpu`) used from the first
    /// command to the last outcome.
    #[serde(default)]
    pub cpu_seconds: BTreeMap<String, Option<f64>>,
    pub envelopes: Option<u64>,
    pub verification: Verification,
    /// How long the verification took (the audit reads the whole database).
    #[serde(default)]
    pub verify_seconds: f64,
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
    pub cpu: BTreeMap<String, Option<f64>>,
    pub envelopes: u64,
    pub verify_seconds: f64,
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
            cpu_seconds: m.cpu,
            envelopes: plan.mix.has(Kind::Bonus).then_some(m.envelopes),
            verification,
            verify_seconds: m.verify_seconds,
            rates: Vec::new(),
        }
    }
}

impl Lag {
    /// How the partitions' peak lags spread: the highest (and its partition), the median and
    /// the lowest over the partitions that held commands; `None` when none was sampled.
    pub fn partition_spread(&self) -> Option<String> {
        // The first partition of the highest (`max_by_key` keeps the last of equals).
        let (&top, &max) = self
            .peak_by_partition
            .iter()
            .rev()
            .max_by_key(|(_, v)| **v)?;
        let mut peaks: Vec<u64> = self.peak_by_partition.values().copied().collect();
        peaks.sort_unstable();
        Some(format!(
            "max {} (partition {top}), median {}, min {}, over {} partitions",
            thousands(max),
            thousands(peaks[peaks.len() / 2]),
            thousands(peaks[0]),
            peaks.len()
        ))
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
        peak_by_partition: series.peak_by_partition.clone(),
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
        if let Some(spread) = self.lag.partition_spread() {
            writeln!(f, "| peak lag per partition | {spread} |")?;
        }
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
        if !self.cpu_seconds.is_empty() {
            let cpu: Vec<String> = self
                .cpu_seconds
                .iter()
                .map(|(k, v)| match v {
                    Some(s) => format!("{k} {s:.1} s ({:.0} %)", 100.0 * s / self.seconds),
                    None => format!("{k} unknown"),
                })
                .collect();
            writeln!(
                f,
                "| CPU, first command to last outcome (share of one core) | {} |",
                cpu.join(", ")
            )?;
        }
        writeln!(f, "| verification took | {:.1} s |", self.verify_seconds)?;
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
