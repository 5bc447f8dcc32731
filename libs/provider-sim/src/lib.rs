//! `walletctl provider-sim`: plays the game providers, for `make run` and for tests.
//!
//! It reads `provider.<provider>.transfer` and `provider.<provider>.status` (its own durable
//! consumer `provider-sim` on `PROVIDER_REQUESTS`) and answers on `provider.<provider>.ack` with
//! `Nats-Msg-Id: <provider>:<transfer_id>:<status>`, as a provider's adapter does. Every decision
//! is drawn from a hash of `--seed` and the transfer id, so a transfer gets the same answer every
//! time it is asked (a status query repeats the first answer) and a run can be replayed.
//!
//! Faults, each with its probability per transfer:
//! - `--drop`: the ack to the transfer request is never sent (the sweeper's status query gets it);
//! - `--duplicate`: a second copy of the ack under another `Nats-Msg-Id`, as a copy arriving after
//!   JetStream's duplicate window would;
//! - `--reorder`: the ack is held back (ten latencies and up to 100 ms more), so later acks pass it;
//! - `--contradict`: after the ack, one with the opposite status (dead-lettered `ack_conflict`).
//!
//! A request is acknowledged only once its answers are stored, so a crash of the simulator
//! loses nothing either.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wallet_runtime::Config;
use wallet_runtime::names::Names;
use wallet_runtime::trace::TRACEPARENT;

/// In-flight requests (each one a task waiting out its latency).
const IN_FLIGHT: usize = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct SimOptions {
    /// Share of transfers the providers accept; the others they reject.
    #[arg(long, default_value_t = 0.9, value_parser = ratio)]
    pub accept: f64,
    /// Delay before each answer.
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Probability of a second copy of an ack under another Nats-Msg-Id.
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub duplicate: f64,
    /// Probability of an ack held back so that later ones pass it.
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub reorder: f64,
    /// Probability of a contradicting ack after the real one.
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub contradict: f64,
    /// Probability that the ack to a transfer request is never sent.
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    pub drop: f64,
    /// Seed of every decision.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn ratio(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("`{s}` is not a probability from 0 to 1"))
}

/// What the simulator did.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub status_queries: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub contradicted: AtomicU64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        write!(
            f,
            "requests {} (accepted {}, rejected {}), status queries {}, dropped {}, duplicated {}, reordered {}, contradicted {}",
            n(&self.requests),
            n(&self.accepted),
            n(&self.rejected),
            n(&self.status_queries),
            n(&self.dropped),
            n(&self.duplicated),
            n(&self.reordered),
            n(&self.contradicted)
        )
    }
}

/// A number in [0, 1) fixed by the seed, the aspect decided and the transfer.
fn draw(seed: u64, aspect: &str, transfer: &str) -> f64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(aspect.as_bytes())
        .chain_update([0])
        .chain_update(transfer.as_bytes())
        .finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the simulated provider accepts `transfer` (what its acks will say).
pub fn accepts(opts: &SimOptions, transfer: &str) -> bool {
    draw(opts.seed, "accept", transfer) < opts.accept
}

/// Whether the simulated provider follows its ack to `transfer` with a contradicting one.
pub fn contradicts(opts: &SimOptions, transfer: &str) -> bool {
    opts.contradict > 0.0 && draw(opts.seed, "contradict", transfer) < opts.contradict
}

struct Sim {
    opts: SimOptions,
    js: jetstream::Context,
    names: Names,
    stats: Arc<Stats>,
}

/// Runs until `shutdown`, then finishes the requests in flight.
pub async fn run(
    config: &Config,
    opts: SimOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<Stats>> {
    let js = jetstream::new(wallet_ops::nats(config).await?);
    let names = config.names.clone();
    let stream = js
        .get_stream(names.name("PROVIDER_REQUESTS"))
        .await
        .context("stream PROVIDER_REQUESTS not found; run `walletctl setup` first")?;
    let name = names.name("provider-sim");
    let consumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                description: Some("walletctl provider-sim".into()),
                ack_wait: Duration::from_secs(30),
                max_ack_pending: IN_FLIGHT as i64,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    let sim = Arc::new(Sim {
        opts,
        js,
        names,
        stats: Arc::new(Stats::default()),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut report = tokio::time::interval(Duration::from_secs(5));
    let mut reported = String::new();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = report.tick() => {
                let now = sim.stats.to_string();
                if now != reported {
                    tracing::info!(stats = %now, "provider-sim");
                    reported = now;
                }
                continue;
            }
            m = messages.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "provider-sim: fetch failed");
                    continue;
                }
                None => break,
            },
        };
        let permit = slots.clone().acquire_owned().await?;
        let sim = sim.clone();
        tokio::spawn(async move {
            sim.answer(message).await;
            drop(permit);
        });
    }
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
    Ok(sim.stats.clone())
}

impl Sim {
    async fn answer(&self, message: jetstream::Message) {
        let subject = self.names.strip(&message.subject).to_owned();
        let transfer = serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|v| v.get("transfer_id")?.as_str().map(str::to_owned));
        let tokens: Vec<&str> = subject.split('.').collect();
        let (["provider", provider, kind], Some(transfer)) = (&tokens[..], transfer) else {
            tracing::warn!(subject, "provider-sim: not a provider request; skipped");
            let _ = message.ack().await;
            return;
        };
        // The ack continues the request's trace, as a provider's adapter should.
        let trace = message
            .headers
            .as_ref()
            .and_then(|h| h.get(TRACEPARENT))
            .map(|v| v.as_str().to_owned());
        let trace = trace.as_deref();
        let result = match *kind {
            "transfer" => self.transfer(provider, &transfer, trace).await,
            _ => {
                self.stats.status_queries.fetch_add(1, Ordering::Relaxed);
                self.ack(
                    provider,
                    &transfer,
                    accepts(&self.opts, &transfer),
                    "",
                    trace,
                )
                .await
            }
        };
        let _ = match result {
            Ok(()) => message.ack().await,
            Err(e) => {
                tracing::warn!(error = %e, "provider-sim: ack not stored; the request comes back");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
            }
        };
    }

    async fn transfer(
        &self,
        provider: &str,
        transfer: &str,
        trace: Option<&str>,
    ) -> anyhow::Result<()> {
        let (o, stats) = (&self.opts, &self.stats);
        let chance = |aspect: &str, p: f64| p > 0.0 && draw(o.seed, aspect, transfer) < p;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let accepted = accepts(o, transfer);
        if chance("drop", o.drop) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut delay = o.latency;
        if chance("reorder", o.reorder) {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            delay += o.latency * 10
                + Duration::from_millis((draw(o.seed, "hold", transfer) * 100.0) as u64);
        }
        tokio::time::sleep(delay).await;
        self.ack(provider, transfer, accepted, "", trace).await?;
        if accepted {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        if chance("duplicate", o.duplicate) {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
            self.ack(provider, transfer, accepted, ":copy", trace)
                .await?;
        }
        if contradicts(o, transfer) {
            stats.contradicted.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(o.latency).await;
            self.ack(provider, transfer, !accepted, "", trace).await?;
        }
        Ok(())
    }

    /// Publishes one ack and waits until JetStream stored it.
    async fn ack(
        &self,
        provider: &str,
        transfer: &str,
        accepted: bool,
        id_suffix: &str,
        trace: Option<&str>,
    ) -> anyhow::Result<()> {
        let status = if accepted { "accepted" } else { "rejected" };
        let mut payload = serde_json::json!({
            "transfer_id": transfer,
            "status": status,
            "provider_ref": format!("{provider}-{transfer}"),
        });
        if !accepted {
            payload["reason"] = "declined by the simulated provider".into();
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{provider}:{transfer}:{status}{id_suffix}").as_str(),
        );
        if let Some(traceparent) = trace {
            headers.insert(TRACEPARENT, traceparent);
        }
        self.js
            .publish_with_headers(
                self.names.subject(&format!("provider.{provider}.ack")),
                headers,
                serde_json::to_vec(&payload)?.into(),
            )
            .await?
            .await?;
        Ok(())
    }
}
