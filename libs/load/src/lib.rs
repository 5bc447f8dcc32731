//! `walletctl load`: a load generator and verifier.
//!
//! It sends a mix of deposits, transfers and bonus grants at a fixed rate (or as fast as
//! JetStream takes them) for a duration or a count, optionally with duplicate copies and broken
//! commands, plays the game providers for the transfers, and follows every command to its outcome
//! event or dead letter. It ends with a summary: what was sent, the outcomes by kind, the rates,
//! the publish-to-outcome latency, the consumers' lag, and the verification — every command
//! reached exactly one terminal outcome and the one it must, every wallet of the run holds what
//! the accepted commands put there, and `walletctl audit` is clean. A failed verification is a
//! non-zero exit.
//!
//! The run's users and ids are its own (`load-<pid>-<time>-…`), so a run can go against a stack
//! that holds other data, and the audit checks the whole database.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use async_nats::jetstream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use wallet_runtime::Config;
use wallet_runtime::streams::Topology;

mod args;
pub mod bench;
mod cpu;
mod figures;
mod lag;
mod mix;
pub mod plan;
mod progress;
pub mod raw;
pub mod report;
pub mod results;
mod track;
mod verify;

pub use args::{LoadArgs, Rate};
use plan::{Kind, Mix, Plan};
pub use report::Report;
use track::{Live, SendTimes, Tracker};
use wallet_client::{IN_FLIGHT, publish, publish_all};

/// A duplicate copy's `Nats-Msg-Id` is the command's id with this suffix: JetStream stores it, so
/// only the function's own dedup stands between it and a second effect.
pub const DUPLICATE_SUFFIX: &str = ":dup";

/// A duplicate copy goes out this many commands after its original, so that it lands in another
/// batch than the original.
const DUPLICATE_DELAY: u64 = 1_000;

/// With `--rate max --duration`, room is made for this many commands per second.
const MAX_RATE_ROOM: f64 = 60_000.0;

/// Refuses a mix with a kind of command that no process would decide: on a map of several
/// shards, a function whose consumer is not `sharded` has no consumer (docs/sharding.md), and its
/// commands would wait in their stream until the drain timed out.
fn runs_everywhere(config: &Config, topology: &Topology, mix: &Mix) -> anyhow::Result<()> {
    let Some(map) = config.shard_map()? else {
        return Ok(());
    };
    let deployed = topology.consumers_in(Some(&map));
    for kind in mix.kinds() {
        if !deployed.iter().any(|(c, _)| c.function == kind.function()) {
            anyhow::bail!(
                "--mix {}: {} runs on no shard of a map of {} shards (docs/sharding.md), so its \
                 commands would never be decided; leave it out of the mix",
                kind.as_str(),
                kind.function(),
                map.shards().len()
            );
        }
    }
    Ok(())
}

/// Runs a load as `args` says and verifies it.
pub async fn run(config: &Config, topology: &Topology, args: &LoadArgs) -> anyhow::Result<Report> {
    runs_everywhere(config, topology, &args.mix)?;
    let nats = wallet_ops::nats(config).await?;
    let js = jetstream::new(nats);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let run = format!("load-{}-{secs}", std::process::id());
    let count = match (args.count, args.duration) {
        (Some(c), _) => Some(c),
        (None, None) => Some(50_000),
        (None, Some(_)) => None,
    };
    let capacity = match (count, args.duration, args.rate) {
        (Some(c), _, _) => c,
        (None, Some(d), Rate::PerSecond(r)) => (r * d.as_secs_f64() * 1.02) as u64 + 1_000,
        (None, Some(d), Rate::Max) => (MAX_RATE_ROOM * d.as_secs_f64()) as u64,
        (None, None, _) => unreachable!("a count is set when no duration is"),
    };
    let expected_commands = match (count, args.duration, args.rate) {
        (Some(c), _, _) => c as f64,
        (None, Some(d), Rate::PerSecond(r)) => r * d.as_secs_f64(),
        _ => 100_000.0,
    };
    let providers = (args.mix.kinds().any(|k| k.answered_by().is_some()) && !args.no_providers)
        .then_some(provider_sim::SimOptions {
            accept: 0.9,
            latency: args.provider_latency,
            duplicate: 0.0,
            reorder: 0.0,
            contradict: 0.0,
            drop: 0.0,
            seed: args.seed,
        });
    let plan = Arc::new(Plan {
        campaign: format!("{run}-red"),
        run,
        mix: args.mix.clone(),
        users: args.users as usize,
        seed: args.seed,
        duplicates: args.duplicates,
        malformed: args.malformed,
        providers: providers.clone(),
        names: config.names.clone(),
    });
    let envelopes = args.envelopes.unwrap_or_else(|| {
        ((expected_commands * args.mix.share(Kind::Bonus) / 10.0).ceil() as u64).max(1)
    });
    if args.mix.has(Kind::Bonus) {
        let campaign = wallet_ops::campaign::CreateArgs {
            id: plan.campaign.clone(),
            currency: "USD".into(),
            budget: format!("{envelopes}{}", &plan::GRANT_AMOUNT[1..]),
            amount: Some(plan::GRANT_AMOUNT.into()),
            amount_min: None,
            amount_max: None,
            per_user: 1,
            starts: None,
            ends: None,
        };
        wallet_ops::campaign::create(config, &campaign).await?;
    }
    let stop_sim = CancellationToken::new();
    let sim = providers.filter(|_| !args.providers_elsewhere).map(|opts| {
        let (config, stop) = (config.clone(), stop_sim.clone());
        tokio::spawn(async move { provider_sim::run(&config, opts, stop).await })
    });
    let outcome = async {
        if plan.mix.kinds().any(Kind::spends) {
            fund(&js, &plan, args.drain_timeout).await?;
        }
        measure(
            config,
            topology,
            &js,
            plan.clone(),
            args,
            count,
            capacity,
            envelopes,
        )
        .await
    }
    .await;
    stop_sim.cancel();
    if let Some(sim) = sim {
        sim.await?.context("playing the providers")?;
    }
    outcome
}

/// Deposits [`plan::FUNDING`] to every user before transfers start, and waits until they are
/// all completed.
async fn fund(js: &jetstream::Context, plan: &Plan, timeout: Duration) -> anyhow::Result<()> {
    let users = plan.users;
    let mut completed = wallet_client::follow(
        js,
        &plan.names,
        "WALLET_EVENTS",
        "wallet.events.deposit.completed",
        jetstream::consumer::DeliverPolicy::New,
    )
    .await?;
    let funding = (0..users).map(|u| {
        let m = plan.funding(u);
        (m.subject, m.msg_id, m.payload.to_vec())
    });
    publish_all(js, funding).await?;
    let prefix = format!("deposit:{}-f", plan.run);
    let mut done = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while done < users {
        let m = tokio::time::timeout_at(deadline, completed.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{done} of {users} funding deposits completed within {timeout:?}: is `deposit` running?"
                )
            })?
            .context("the events follower ended")?;
        let ours = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .is_some_and(|id| id.as_str().starts_with(&prefix));
        done += usize::from(ours);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    config: &Config,
    topology: &Topology,
    js: &jetstream::Context,
    plan: Arc<Plan>,
    args: &LoadArgs,
    count: Option<u64>,
    capacity: u64,
    envelopes: u64,
) -> anyhow::Result<Report> {
    let functions: Vec<&'static str> = {
        let mut f: Vec<&'static str> = plan.mix.kinds().map(Kind::function).collect();
        for answer in plan.mix.kinds().filter_map(Kind::answered_by) {
            if !f.contains(&answer) {
                f.push(answer);
            }
        }
        f
    };
    let live = Arc::new(Live::default());
    let times = Arc::new(SendTimes::new(capacity as usize));
    let stop = CancellationToken::new();
    let tracker = Tracker::new(plan.clone(), times.clone(), live.clone())
        .start(js, stop.clone())
        .await?;
    let shards = config.shard_map()?;
    let lag = tokio::spawn(lag::sample(
        js.clone(),
        config.names.clone(),
        topology.clone(),
        shards.clone(),
        functions.clone(),
        live.clone(),
        stop.clone(),
    ));
    let seq_before = lag::stream_sequences(js, &config.names, topology, shards.as_ref()).await?;
    let cpu_before = cpu::sample(&args.watch, &args.cpu);
    let progress = progress::Progress::start(live.clone(), count, args.duration);
    let sending = send(js, &plan, &times, &live, args.rate, count, args.duration).await;
    let send_seconds = times.start().elapsed().as_secs_f64();
    let sent = live.sent.load(Ordering::Relaxed);
    // Drain: every command sent reaches an outcome, or the timeout.
    let deadline = Instant::now() + args.drain_timeout;
    while sending.is_ok()
        && live.finished.load(Ordering::Relaxed) < sent
        && Instant::now() < deadline
        && !tracker.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.finish();
    let cpu = cpu::used(&cpu_before, &cpu::sample(&args.watch, &args.cpu));
    stop.cancel();
    let tracker = tracker.await??;
    let lag = lag.await?;
    let messages = sending?;
    let seq_after = lag::stream_sequences(js, &config.names, topology, shards.as_ref()).await?;
    let verifying = Instant::now();
    let verification =
        verify::verify(config, &plan, &tracker, sent, envelopes, !args.no_audit).await?;
    let verify_seconds = verifying.elapsed().as_secs_f64();
    let rss = args
        .watch
        .iter()
        .map(|(name, pid)| (name.clone(), report::peak_rss_kib(*pid)))
        .collect();
    Ok(Report::new(
        args,
        &plan,
        report::Measured {
            commands: sent,
            messages,
            send_seconds,
            jetstream_messages: seq_after.saturating_sub(seq_before),
            lag,
            rss,
            cpu,
            envelopes,
            verify_seconds,
        },
        &tracker,
        verification,
    ))
}

/// Sends the run's commands at `rate` until `count` are sent or `duration` is over, with
/// duplicate copies [`DUPLICATE_DELAY`] commands after their originals; returns the messages
/// published (copies included).
async fn send(
    js: &jetstream::Context,
    plan: &Plan,
    times: &SendTimes,
    live: &Live,
    rate: Rate,
    count: Option<u64>,
    duration: Option<Duration>,
) -> anyhow::Result<u64> {
    let limit = count.unwrap_or(u64::MAX).min(times.capacity() as u64);
    let deadline = duration.map(|d| times.start() + d);
    let mut inflight = FuturesUnordered::new();
    let mut copies: VecDeque<(u64, u64)> = VecDeque::new();
    let (mut next, mut messages) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        let open = next < limit && deadline.is_none_or(|d| now < d);
        let due = match rate {
            Rate::Max => u64::MAX,
            Rate::PerSecond(r) => (r * (now - times.start()).as_secs_f64()) as u64 + 1,
        };
        while inflight.len() < IN_FLIGHT {
            if let Some(&(at, i)) = copies.front()
                && (at <= next || !open)
            {
                copies.pop_front();
                let (_, mut m) = plan.message(i);
                m.msg_id.push_str(DUPLICATE_SUFFIX);
                inflight.push(publish(js, m));
                messages += 1;
            } else if open && next < due {
                let (_, m) = plan.message(next);
                times.stamp(next);
                inflight.push(publish(js, m));
                if plan.duplicated(next) {
                    copies.push_back((next + DUPLICATE_DELAY, next));
                }
                next += 1;
                messages += 1;
                live.sent.store(next, Ordering::Relaxed);
                if next >= limit {
                    break;
                }
            } else {
                break;
            }
        }
        let open = next < limit && deadline.is_none_or(|d| Instant::now() < d);
        if !open && copies.is_empty() && inflight.is_empty() {
            return Ok(messages);
        }
        let pacing = open && matches!(rate, Rate::PerSecond(_));
        tokio::select! {
            Some(r) = inflight.next(), if !inflight.is_empty() => r?,
            () = tokio::time::sleep(Duration::from_millis(1)), if pacing || (open && inflight.is_empty()) => {}
        }
    }
}
