//! `walletctl load` against the real functions: a mixed run with duplicates and broken commands
//! verifies, and a run whose commands cannot all be answered fails its verification.

#![allow(clippy::unwrap_used)]

use testkit::TestEnv;
use wallet_load::{self as load, LoadArgs};

fn args(line: &str) -> LoadArgs {
    LoadArgs::from_line(line).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_run_with_duplicates_and_broken_commands_is_verified() {
    let env = TestEnv::new().await;
    let procs: Vec<_> = [
        "deposit",
        "transfer-out",
        "transfer-in",
        "provider-ack",
        "bonus-grant",
        "withdraw",
        "payout-ack",
    ]
    .into_iter()
    .map(|f| env.spawn(f, &[]))
    .collect();
    for p in &procs {
        env.ready(p).await;
    }
    let args = args(
        "--mix deposit=40,transfer=20,bonus=15,withdraw=15,transfer_in=10 --count 3000 --users 40 \
         --duplicates 0.05 --malformed 0.04 --envelopes 100 --drain-timeout 90s",
    );
    let report = load::run(&env.config, &testkit::topology(), &args)
        .await
        .unwrap();
    let failed: Vec<_> = report
        .verification
        .checks
        .iter()
        .filter(|c| !c.ok)
        .collect();
    if !report.verification.passed {
        for p in &procs {
            eprintln!("{}", p.counters().await);
        }
    }
    assert!(report.verification.passed, "{failed:#?}\n{report}");
    assert_eq!(report.commands, 3000);
    let copies = report.messages_sent - report.commands;
    assert!((90..=210).contains(&copies), "{copies} duplicate copies");
    let sent: u64 = report.kinds.values().map(|k| k.sent).sum();
    assert_eq!(sent, 3000);
    let outcome = |kind: load::plan::Kind, name: &str| {
        report.kinds[&kind]
            .outcomes
            .get(name)
            .copied()
            .unwrap_or_default()
    };
    use load::plan::Kind::{Bonus, Deposit, Transfer, TransferIn, Withdraw};
    for (kind, k) in &report.kinds {
        // Exactly one terminal outcome per command, of every kind.
        assert_eq!(k.outcomes.values().sum::<u64>(), k.sent, "{kind}: {k:?}");
        assert!(k.latency_ms.p50 > 0.0 && k.latency_ms.p50 <= k.latency_ms.max);
    }
    // Every kind of broken command was refused its own way.
    for kind in [Deposit, Transfer, Bonus, Withdraw, TransferIn] {
        assert!(outcome(kind, "dead_lettered") > 0, "{kind}");
    }
    for kind in [Deposit, Transfer, Withdraw, TransferIn] {
        assert!(outcome(kind, "rejected invalid_amount") > 0, "{kind}");
    }
    assert!(outcome(Bonus, "rejected invalid_user_id") > 0);
    // The providers decided: about 90 % accepted (paid, for withdrawals).
    for kind in [Transfer, Withdraw, TransferIn] {
        let (completed, failed) = (outcome(kind, "completed"), outcome(kind, "failed"));
        assert!(
            failed > 0 && completed > 4 * failed,
            "{kind}: {completed} / {failed}"
        );
    }
    // A flash crowd of ~450 grants for 100 envelopes.
    assert_eq!(outcome(Bonus, "granted"), 100);
    assert!(outcome(Bonus, "rejected campaign_exhausted") > 200);
    assert!(report.jetstream_messages > 2 * report.commands);
    // The summary survives its JSON (what make bench reads back).
    let json = serde_json::to_string(&report).unwrap();
    let back: load::Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.kinds[&Bonus].outcomes, report.kinds[&Bonus].outcomes);
    assert!(env.audit().await.ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_unanswered_commands_fails_and_exits_non_zero() {
    let env = TestEnv::new().await;
    let deposit = env.spawn("deposit", &[]);
    env.ready(&deposit).await;
    // Nobody runs bonus-grant: its half of the commands gets no outcome.
    let out = std::process::Command::new(testkit::binary("walletctl"))
        .args([
            "load",
            "--mix",
            "deposit=1,bonus=1",
            "--count",
            "200",
            "--rate",
            "400",
            "--drain-timeout",
            "3s",
            "--json",
        ])
        .envs(env.env())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: load::Report = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!report.verification.passed);
    let missing = &report.verification.checks[0];
    assert_eq!(missing.name, "every command reached a terminal outcome");
    let bonus = report.kinds[&load::plan::Kind::Bonus].sent;
    assert!(
        !missing.ok && missing.detail.starts_with(&format!("{bonus}, e.g. ")),
        "{missing:?}"
    );
    assert!(report.kinds[&load::plan::Kind::Deposit].outcomes["completed"] > 0);
    // At 400 commands/s, 200 commands take about half a second.
    assert!(
        (0.4..2.0).contains(&report.send_seconds),
        "{}",
        report.send_seconds
    );
}

#[test]
fn bad_options_are_one_clear_line() {
    for (line, needle) in [
        ("--mix deposit=x", "whole number"),
        ("--rate 0", "neither `max` nor a positive number"),
        ("--duplicates 2", "not a share from 0 to 1"),
        ("--count 5 --duration 1m", "cannot be used with"),
        ("--users 0", "0 is not in 1.."),
    ] {
        let e = LoadArgs::from_line(line).unwrap_err().to_string();
        assert!(e.contains(needle), "{line}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_keeps_the_fastest_of_its_runs_and_leaves_no_stream_behind() {
    use futures::TryStreamExt;
    let env = TestEnv::new().await;
    let raw = load::raw::run(&env.config, 2_000, 3, 1).await.unwrap();
    assert_eq!(raw.messages, 2_000);
    assert_eq!(raw.rates.len(), 3, "{raw:?}");
    let fastest = raw.rates.iter().copied().fold(f64::MIN, f64::max);
    assert_eq!(raw.rate, fastest, "{raw:?}");
    assert!((raw.rate - 2_000.0 / raw.seconds).abs() < 1e-6, "{raw:?}");
    let runs = raw.runs().unwrap();
    assert!(
        runs.starts_with("the fastest of 3 runs: ") && runs.ends_with("/s"),
        "{runs}"
    );
    let js = async_nats::jetstream::new(async_nats::connect(testkit::nats_url()).await.unwrap());
    let prefix = env.config.names.name("RAW");
    let left: Vec<String> = js
        .stream_names()
        .try_filter(|n| std::future::ready(n.starts_with(&prefix)))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // One run keeps its JSON as before: no list of rates.
    let one = load::raw::run(&env.config, 500, 1, 1).await.unwrap();
    assert!(one.rates.is_empty() && one.runs().is_none());
    assert!(!serde_json::to_string(&one).unwrap().contains("rates"));
}

/// A profile whose run ended without a summary (its JSON empty or missing, its stderr kept by
/// `make bench`) is a failed row with the run's last line, and fails the targets it is part of;
/// the results are still written for the profiles that ran.
#[tokio::test(flavor = "multi_thread")]
async fn bench_results_report_a_profile_that_ended_without_a_summary() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("bench-report-{}", env.config.names.namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("deposit-peak.json"), "").unwrap();
    std::fs::write(
        dir.join("deposit-peak.err"),
        "    233 s  sent 1896769  outcomes 1820500  lag 0\n\
         walletctl: publishing d-1: no stream found for given subject\n\n",
    )
    .unwrap();
    std::fs::write(dir.join("per-message.err"), "walletctl: a | b\n").unwrap();
    let md = wallet_load::bench::results(&env.config, &dir, "abc1234")
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(md.contains("commit `abc1234`"), "{md}");
    assert!(
        md.contains(
            "| deposit-peak | **failed**: walletctl: publishing d-1: no stream found for given \
             subject | — |"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "| deposit-peak: rate kept, p99 < 250 ms, lag flat, verified | deposit-peak failed: \
             walletctl: publishing d-1: no stream found for given subject | **no** |"
        ),
        "{md}"
    );
    // A `|` in the message stays inside its cell.
    assert!(
        md.contains(
            "| batch path ≥ 5 × per-message | per-message failed: walletctl: a \\| b | **no** |"
        ),
        "{md}"
    );
    // Neither a summary nor an error: not run.
    assert!(
        md.contains("| mixed-peak: rate kept, p99 < 250 ms, lag flat, verified | — | not run |"),
        "{md}"
    );
}

/// `make bench` runs `deposit-max` as often as `raw`: the results report its fastest run and
/// list every run's rate, unless a run failed its verification, which is then the one reported.
#[tokio::test(flavor = "multi_thread")]
async fn bench_results_report_the_fastest_of_several_runs_unless_one_failed() {
    let env = TestEnv::new().await;
    let deposit = env.spawn("deposit", &[]);
    env.ready(&deposit).await;
    let report = load::run(
        &env.config,
        &testkit::topology(),
        &args("--count 200 --users 10"),
    )
    .await
    .unwrap();
    assert!(report.verification.passed);
    let dir = std::env::temp_dir().join(format!("bench-runs-{}", env.config.names.namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |k: usize, rate: f64, passed: bool| {
        let mut r = report.clone();
        r.profile = Some("deposit-max".into());
        r.outcomes_per_second = rate;
        r.verification.passed = passed;
        std::fs::write(
            dir.join(format!("deposit-max.{k}.json")),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(format!("deposit-max.{k}.err")), "").unwrap();
    };
    let raw = load::raw::Raw {
        messages: 300_000,
        payload_bytes: 100,
        publish_seconds: 4.0,
        seconds: 6.0,
        rate: 50_000.0,
        rates: vec![48_000.0, 50_000.0, 49_000.0],
    };
    std::fs::write(dir.join("raw.json"), serde_json::to_vec(&raw).unwrap()).unwrap();
    let results = || wallet_load::bench::results(&env.config, &dir, "abc1234");

    run(1, 14_000.0, true);
    run(2, 15_500.0, true);
    run(3, 15_000.0, true);
    let md = results().await.unwrap();
    assert!(
        md.contains(
            "| deposit-max ≥ 0.3 × raw | 15,500/s ÷ 50,000/s = 0.310 (deposit-max: the fastest \
             of 3 runs: 14,000, 15,500, 15,000/s) (raw: the fastest of 3 runs: 48,000, 50,000, \
             49,000/s) | yes |"
        ),
        "{md}"
    );

    run(1, 14_000.0, false);
    let md = results().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        md.contains("| deposit-max ≥ 0.3 × raw | 14,000/s ÷ 50,000/s = 0.280 (raw: the fastest"),
        "{md}"
    );
    let row = md
        .lines()
        .find(|l| l.starts_with("| deposit-max |"))
        .unwrap();
    assert!(
        row.contains("| 14,000 |") && row.ends_with("| **NO** |"),
        "{row}"
    );
}

/// CPU per process (`--watch`, `--cpu`), the verification's duration, `--no-audit`, and
/// `walletctl bench holds` on the summary: a short run at full speed has no lag trend, so it did
/// not hold a rate.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_reports_the_cpu_of_what_it_watches_and_may_leave_the_audit_out() {
    let env = TestEnv::new().await;
    let deposit = env.spawn("deposit", &[]);
    env.ready(&deposit).await;
    let args = args(&format!(
        "--mix deposit=100 --count 2000 --users 20 --drain-timeout 60s --no-audit \
         --watch deposit={} --cpu postgres",
        deposit.child.id()
    ));
    let report = load::run(&env.config, &testkit::topology(), &args)
        .await
        .unwrap();
    assert!(report.verification.passed, "{report}");
    assert!(
        !report
            .verification
            .checks
            .iter()
            .any(|c| c.name.contains("audit")),
        "--no-audit still audited"
    );
    assert!(report.verify_seconds > 0.0);
    for name in ["deposit", "postgres"] {
        let cpu = report.cpu_seconds[name].unwrap_or_default();
        assert!(cpu > 0.0, "{name}: {cpu} CPU seconds");
    }
    let file = std::env::temp_dir().join(format!("{}.json", env.config.names.namespace()));
    std::fs::write(&file, serde_json::to_string(&report).unwrap()).unwrap();
    let (held, line) = load::bench::holds(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(!held, "{line}");
    assert!(line.contains("lag unknown"), "{line}");
}
