//! `walletctl provider-sim`: plays the game providers and the payment providers, for `make run`
//! and for tests.
//!
//! It reads `provider.<provider>.transfer`, `.withdraw` and `.status` (its own durable consumer
//! `provider-sim` on `PROVIDER_REQUESTS`) and answers on `provider.<provider>.ack` with
//! `Nats-Msg-Id: <provider>:<transfer_id>:<status>`, as a provider's adapter does: every saga of
//! `wallet_runtime::saga` whose requests a stream carries, as the saga describes them. An accepted
//! transfer in returns the amount asked for, or, asked for everything, a whole amount from 0 to
//! 99 drawn for the transfer (what the player has left after playing); it keeps no books, so a
//! status query answers every transfer with that drawn amount (ignored for a transfer out). And the same
//! for payouts (`payout.<psp>.request` and `.status` on `PAYOUT_REQUESTS`, answered
//! `paid` or `declined` on `payout.<psp>.ack`). Every decision is drawn from a hash of `--seed`
//! and the saga's id, so a transfer or a withdrawal gets the same answer every time it is asked
//! (a status query repeats the first answer) and a run can be replayed.
//!
//! Faults, each with its probability per transfer or withdrawal:
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
use wallet_runtime::saga::{self, Saga};
use wallet_runtime::trace::TRACEPARENT;

/// In-flight requests (each one a task waiting out its latency).
const IN_FLIGHT: usize = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct SimOptions {
    /// Share of transfers (withdrawals) the providers accept (pay); the others they reject
    /// (decline).
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

/// Whether the simulated provider accepts `transfer` (pays a withdrawal: what its answers say).
pub fn accepts(opts: &SimOptions, transfer: &str) -> bool {
    draw(opts.seed, "accept", transfer) < opts.accept
}

/// Whether the simulated provider follows its ack to `transfer` with a contradicting one.
pub fn contradicts(opts: &SimOptions, transfer: &str) -> bool {
    opts.contradict > 0.0 && draw(opts.seed, "contradict", transfer) < opts.contradict
}

/// The simulator of one stream of requests: its sagas share their prefix, id field, answers and
/// reference field (game providers: transfers out and in; payment providers: withdrawals).
struct Sim {
    sagas: Vec<&'static Saga>,
    opts: SimOptions,
    js: jetstream::Context,
    names: Names,
    stats: Arc<Stats>,
}

/// Runs until `shutdown`, then finishes the requests in flight: every stream of requests, one
/// stats.
pub async fn run(
    config: &Config,
    opts: SimOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<Stats>> {
    let js = jetstream::new(wallet_ops::nats(config).await?);
    let stats = Arc::new(Stats::default());
    let mut streams: Vec<&str> = saga::ALL.iter().map(|s| s.requests).collect();
    streams.sort_unstable();
    streams.dedup();
    // Collected: the futures own what they use, so the whole is Send for any caller.
    let sims: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let sim = Sim {
                sagas: saga::ALL
                    .iter()
                    .copied()
                    .filter(|s| s.requests == stream)
                    .collect(),
                opts: opts.clone(),
                js: js.clone(),
                names: config.names.clone(),
                stats: stats.clone(),
            };
            Arc::new(sim).serve(shutdown.clone())
        })
        .collect();
    let report = async {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        let mut reported = String::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = every.tick() => {}
            }
            let now = stats.to_string();
            if now != reported {
                tracing::info!(stats = %now, "provider-sim");
                reported = now;
            }
        }
    };
    tokio::try_join!(futures::future::try_join_all(sims), report)?;
    Ok(stats)
}

/// Whom an answer goes to: the provider, on the partition its request named (if any).
struct To<'a> {
    provider: &'a str,
    partition: Option<&'a str>,
}

impl Sim {
    /// What its sagas share.
    fn first(&self) -> &'static Saga {
        self.sagas[0]
    }

    async fn serve(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stream_name = self.first().requests;
        let stream = self
            .js
            .get_stream(self.names.name(stream_name))
            .await
            .with_context(|| {
                format!("stream {stream_name} not found; run `walletctl setup` first")
            })?;
        let name = self.names.name("provider-sim");
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
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
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
            let sim = self.clone();
            tokio::spawn(async move {
                sim.answer(message).await;
                drop(permit);
            });
        }
        let _ = slots.acquire_many(IN_FLIGHT as u32).await;
        Ok(())
    }

    async fn answer(&self, message: jetstream::Message) {
        let p = self.first();
        let subject = self.names.strip(&message.subject).to_owned();
        let payload = serde_json::from_slice::<serde_json::Value>(&message.payload).ok();
        let field = |name: &str| {
            payload
                .as_ref()
                .and_then(|v| v.get(name)?.as_str().map(str::to_owned))
        };
        let transfer = field(p.id_field);
        let tokens: Vec<&str> = subject.split('.').collect();
        // A request on its user's partition (`provider.alpha.transfer.144`) is answered on the
        // same partition (`provider.alpha.ack.144`): the shard that asked reads only its own.
        let (provider, kind, partition, transfer) = match (&tokens[..], transfer) {
            ([prefix, provider, kind], Some(t)) if *prefix == p.prefix => {
                (*provider, *kind, None, t)
            }
            ([prefix, provider, kind, partition], Some(t)) if *prefix == p.prefix => {
                (*provider, *kind, Some(*partition), t)
            }
            _ => {
                tracing::warn!(subject, "provider-sim: not a provider request; skipped");
                let _ = message.ack().await;
                return;
            }
        };
        // The ack continues the request's trace, as a provider's adapter should.
        let trace = message
            .headers
            .as_ref()
            .and_then(|h| h.get(TRACEPARENT))
            .map(|v| v.as_str().to_owned());
        let trace = trace.as_deref();
        let to = To {
            provider,
            partition,
        };
        let asked = self.sagas.iter().find(|s| s.request == kind);
        let result = match asked {
            Some(s) if s.returns => {
                let amount = field("amount").unwrap_or_else(|| self.left(&transfer));
                self.transfer(&to, &transfer, Some(&amount), trace).await
            }
            Some(_) => self.transfer(&to, &transfer, None, trace).await,
            None => {
                self.stats.status_queries.fetch_add(1, Ordering::Relaxed);
                let returns = self.sagas.iter().any(|s| s.returns);
                let amount = returns.then(|| self.left(&transfer));
                self.ack(
                    &to,
                    &transfer,
                    accepts(&self.opts, &transfer),
                    amount.as_deref(),
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

    /// What a player has left at the provider, drawn for the transfer: 0 to 99.
    fn left(&self, transfer: &str) -> String {
        ((draw(self.opts.seed, "left", transfer) * 100.0) as u32).to_string()
    }

    /// Answers a request: a transfer out, or (with what it returns) a transfer in.
    async fn transfer(
        &self,
        to: &To<'_>,
        transfer: &str,
        returned: Option<&str>,
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
        self.ack(to, transfer, accepted, returned, "", trace)
            .await?;
        if accepted {
            stats.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        if chance("duplicate", o.duplicate) {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
            self.ack(to, transfer, accepted, returned, ":copy", trace)
                .await?;
        }
        if contradicts(o, transfer) {
            stats.contradicted.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(o.latency).await;
            self.ack(to, transfer, !accepted, returned, "", trace)
                .await?;
        }
        Ok(())
    }

    /// Publishes one ack and waits until JetStream stored it.
    async fn ack(
        &self,
        to: &To<'_>,
        transfer: &str,
        accepted: bool,
        returned: Option<&str>,
        id_suffix: &str,
        trace: Option<&str>,
    ) -> anyhow::Result<()> {
        let p = self.first();
        let provider = to.provider;
        let status = if accepted { p.answers.0 } else { p.answers.1 };
        let mut payload = serde_json::json!({
            p.id_field: transfer,
            "status": status,
            p.ref_field: format!("{provider}-{transfer}"),
        });
        if !accepted {
            payload["reason"] = "declined by the simulated provider".into();
        } else if let Some(amount) = returned {
            payload["amount"] = amount.into();
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
                self.names.subject(&match to.partition {
                    Some(partition) => format!("{}.{provider}.ack.{partition}", p.prefix),
                    None => format!("{}.{provider}.ack", p.prefix),
                }),
                headers,
                serde_json::to_vec(&payload)?.into(),
            )
            .await?
            .await?;
        Ok(())
    }
}
