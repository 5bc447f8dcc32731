//! `walletctl load`: floods the deposit function and measures it end to end.
//!
//! Publishes `count` deposits at full speed (up to [`IN_FLIGHT`] publish acks in flight) for `users`
//! users, reads the outcome events, and reports commands per second from the first publish to
//! the last event, with a check that every command had exactly one completed event.

use std::collections::HashSet;
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

#[derive(Debug)]
pub struct Summary {
    pub sent: usize,
    pub completed: usize,
    pub publish_seconds: f64,
    pub seconds: f64,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.seconds
    }
}

pub async fn deposits(
    config: &Config,
    count: usize,
    users: usize,
    timeout: Duration,
) -> anyhow::Result<Summary> {
    let nats = crate::nats(config).await?;
    let js = jetstream::new(nats);
    let run = format!("load{}", std::process::id());
    let events = js
        .get_stream(config.names.name("WALLET_EVENTS"))
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: config.names.subject("wallet.events.deposit.>"),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut events = events.messages().await?;
    let subject = config.names.subject("wallet.deposit");
    let run_id = run.clone();
    let started = Instant::now();
    let commands = (0..count).map(move |i| {
        let id = format!("{run_id}-{i}");
        let body = format!(
            r#"{{"deposit_id":"{id}","user_id":"{run_id}-u{}","amount":"1.25","currency":"USD"}}"#,
            i % users.max(1)
        );
        (subject.clone(), id, body.into_bytes())
    });
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_all(&js, commands)
                .await
                .map(|()| started.elapsed().as_secs_f64())
        })
    };
    let mut done: HashSet<String> = HashSet::with_capacity(count);
    let mut other = 0usize;
    let mut last_report = Instant::now();
    let deadline = Instant::now() + timeout;
    while done.len() < count && Instant::now() < deadline {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await else {
            continue;
        };
        let m = m.map_err(|e| anyhow::anyhow!("reading events: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
        let id = v["id"].as_str().unwrap_or_default();
        if id.starts_with(&run) {
            if v["status"] == "completed" {
                done.insert(id.to_owned());
            } else {
                other += 1;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  {:>8} / {count} completed  {:>8.0}/s",
                done.len(),
                done.len() as f64 / secs
            );
            last_report = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let publish_seconds = publisher.await??;
    anyhow::ensure!(
        other == 0,
        "{other} deposits of this run were not completed"
    );
    Ok(Summary {
        sent: count,
        completed: done.len(),
        publish_seconds,
        seconds,
    })
}
