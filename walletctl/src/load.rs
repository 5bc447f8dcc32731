//! `walletctl load`: floods a function with commands and measures it end to end.
//!
//! Publishes `count` deposits or transfers at full speed (up to [`IN_FLIGHT`] publish acks in
//! flight) for `users` users, reads the outcome events, and reports commands per second from the
//! first publish to the last final event, with a check that every command reached one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use futures::{StreamExt, TryStreamExt};
use wallet_runtime::Config;

/// In-flight publish acks: enough to keep JetStream busy on this machine, bounded so that a
/// slow server pushes back on the publisher.
pub const IN_FLIGHT: usize = 2_000;

/// Publishes `(subject, Nats-Msg-Id, payload)` messages with up to [`IN_FLIGHT`] acks awaited
/// at once; returns when JetStream has stored every one, or at the first error.
pub async fn publish_all(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = (String, String, Vec<u8>)>,
) -> anyhow::Result<()> {
    futures::stream::iter(messages)
        .map(|(subject, id, payload)| async move {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", id.as_str());
            js.publish_with_headers(subject, h, payload.into())
                .await?
                .await?;
            anyhow::Ok(())
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// What `load` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Deposits of 1.25 USD; each ends `completed`.
    Deposit,
    /// Users are funded first; then transfers of 1.25 USD to `alpha` and `beta`, each ending
    /// `completed` or `failed` (needs `provider-ack` and a provider, e.g. `walletctl provider-sim`).
    Transfer,
    /// A flash crowd: a campaign of `count / 10` envelopes of 1.00 USD (one per user), then
    /// `count` grants from distinct users; each ends `granted` or `rejected`.
    Bonus,
}

#[derive(Debug)]
pub struct Summary {
    pub kind: Kind,
    pub sent: usize,
    /// Commands that reached their final event.
    pub finished: usize,
    /// Final events by status (`granted`, `rejected`, …).
    pub by_status: std::collections::BTreeMap<String, usize>,
    /// Seconds from the first publish to each final event, by status.
    pub times_by_status: HashMap<String, Vec<f64>>,
    /// PostgreSQL transactions committed in the database during the run (bonus only).
    pub pg_transactions: Option<i64>,
    pub publish_seconds: f64,
    pub seconds: f64,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.finished as f64 / self.seconds
    }
}

/// Sends `count` commands of `kind` for `users` users at full speed and waits for their final
/// events; the time runs from the first publish to the last final event.
pub async fn run(
    config: &Config,
    kind: Kind,
    count: usize,
    users: usize,
    timeout: Duration,
) -> anyhow::Result<Summary> {
    let js = jetstream::new(crate::nats(config).await?);
    let run = format!("load{}", std::process::id());
    let users = users.max(1);
    let user = |i: usize| format!("{run}-u{}", i % users);
    let command = |entity: &str, i: usize| format!("{run}-{entity}-{i}");
    let deposit = |i: usize, amount: &str| {
        let id = command("deposit", i);
        let body = format!(
            r#"{{"deposit_id":"{id}","user_id":"{}","amount":"{amount}","currency":"USD"}}"#,
            user(i)
        );
        (
            config.names.subject("wallet.deposit"),
            id,
            body.into_bytes(),
        )
    };
    match kind {
        Kind::Deposit => {
            let commands = (0..count).map(|i| deposit(i, "1.25")).collect();
            drive(&js, config, "deposit", commands, timeout).await
        }
        Kind::Transfer => {
            // Enough for every transfer of every user.
            let funds = format!("{}.00", 2 * count.div_ceil(users));
            let funding: Vec<_> = (0..users).map(|i| deposit(i, &funds)).collect();
            eprintln!("  funding {users} users with {funds} USD each");
            drive(&js, config, "deposit", funding, timeout).await?;
            let commands = (0..count)
                .map(|i| {
                let id = command("transfer", i);
                let provider = if i % 2 == 0 { "alpha" } else { "beta" };
                let body = format!(
                    r#"{{"transfer_id":"{id}","user_id":"{}","provider":"{provider}","amount":"1.25","currency":"USD"}}"#,
                    user(i)
                );
                (config.names.subject("wallet.transfer-out"), id, body.into_bytes())
            })
                .collect();
            let mut s = drive(&js, config, "transfer", commands, timeout).await?;
            s.kind = Kind::Transfer;
            Ok(s)
        }
        Kind::Bonus => {
            let campaign = format!("{run}-red");
            let envelopes = (count / 10).max(1);
            let args = crate::campaign::CreateArgs {
                id: campaign.clone(),
                currency: "USD".into(),
                budget: envelopes.to_string(),
                amount: Some("1.00".into()),
                amount_min: None,
                amount_max: None,
                per_user: 1,
                starts: None,
                ends: None,
            };
            eprintln!("  {}", crate::campaign::create(config, &args).await?);
            let commands = (0..count)
                .map(|i| {
                    let id = command("grant", i);
                    let body = format!(
                        r#"{{"grant_id":"{id}","campaign_id":"{campaign}","user_id":"{run}-g{i}"}}"#
                    );
                    (config.names.subject("bonus.grant"), id, body.into_bytes())
                })
                .collect();
            let pg = crate::postgres(config).await?;
            const XACTS: &str =
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
            let before: i64 = pg.query_one(XACTS, &[]).await?.get(0);
            let mut s = drive(&js, config, "bonus", commands, timeout).await?;
            // Statistics reach pg_stat_database within about a second.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let pg = crate::postgres(config).await?;
            let after: i64 = pg.query_one(XACTS, &[]).await?.get(0);
            s.kind = Kind::Bonus;
            s.pg_transactions = Some(after - before);
            Ok(s)
        }
    }
}

/// Publishes `commands` (`count` of them, of `entity`) and reads their events until each has
/// its final one: `completed` for a deposit, `completed` or `failed` for a transfer.
async fn drive(
    js: &jetstream::Context,
    config: &Config,
    entity: &str,
    commands: Vec<(String, String, Vec<u8>)>,
    timeout: Duration,
) -> anyhow::Result<Summary> {
    let count = commands.len();
    let events = js
        .get_stream(config.names.name("WALLET_EVENTS"))
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: config.names.subject(&format!("wallet.events.{entity}.>")),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut events = events.messages().await?;
    let ids: HashSet<String> = commands.iter().map(|(_, id, _)| id.clone()).collect();
    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_all(&js, commands)
                .await
                .map(|()| started.elapsed().as_secs_f64())
        })
    };
    let mut done: HashSet<String> = HashSet::with_capacity(count);
    let mut by_status = std::collections::BTreeMap::new();
    let mut times_by_status: HashMap<String, Vec<f64>> = HashMap::new();
    let mut unexpected: Vec<String> = Vec::new();
    let mut last_report = Instant::now();
    let deadline = Instant::now() + timeout;
    while done.len() < count && Instant::now() < deadline {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await else {
            continue;
        };
        let m = m.map_err(|e| anyhow::anyhow!("reading events: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
        let id = v["id"].as_str().unwrap_or_default();
        if ids.contains(id) {
            match v["status"].as_str().unwrap_or_default() {
                status @ ("completed" | "failed" | "granted") => {
                    if done.insert(id.to_owned()) {
                        *by_status.entry(status.to_owned()).or_default() += 1;
                        times_by_status
                            .entry(status.to_owned())
                            .or_default()
                            .push(started.elapsed().as_secs_f64());
                    }
                }
                "rejected" if entity == "bonus" && v["reason"] == "campaign_exhausted" => {
                    if done.insert(id.to_owned()) {
                        *by_status.entry("rejected".to_owned()).or_default() += 1;
                        times_by_status
                            .entry("rejected".to_owned())
                            .or_default()
                            .push(started.elapsed().as_secs_f64());
                    }
                }
                "pending" => {}
                other => unexpected.push(format!("{id}: {other} {}", v["reason"])),
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  {:>8} / {count} {entity} commands finished  {:>8.0}/s",
                done.len(),
                done.len() as f64 / secs
            );
            last_report = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let publish_seconds = publisher.await??;
    anyhow::ensure!(
        unexpected.is_empty(),
        "{} {entity}(s) of this run did not finish as expected, e.g. {}",
        unexpected.len(),
        unexpected[0]
    );
    Ok(Summary {
        kind: Kind::Deposit,
        sent: count,
        finished: done.len(),
        by_status,
        times_by_status,
        pg_transactions: None,
        publish_seconds,
        seconds,
    })
}
