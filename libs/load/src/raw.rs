//! `walletctl bench raw`: the ceiling of this machine, measured in the same run as the profiles.
//!
//! A throwaway file stream, `count` deposit-sized messages published at full speed (with
//! `Nats-Msg-Id`, up to [`super::IN_FLIGHT`] publish acks in flight), and one durable pull
//! consumer that fetches batches of 1,000 and acknowledges every message while the publisher
//! runs — JetStream doing a deposit's message work and nothing else. The rate is `count` over the
//! seconds from the first publish to the last acknowledgement; with `--runs`, the fastest of
//! several runs.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use wallet_runtime::Config;

/// What the ceiling run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Raw {
    pub messages: usize,
    pub payload_bytes: usize,
    pub publish_seconds: f64,
    pub seconds: f64,
    /// Messages published, consumed and acknowledged per second.
    pub rate: f64,
    /// Every run's rate, when there were several; the fields above are the fastest run's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<f64>,
}

impl Raw {
    /// "the fastest of 3 runs: 39,406, 44,920, 51,085/s", when there were several runs.
    pub fn runs(&self) -> Option<String> {
        crate::figures::fastest_of(&self.rates)
    }
}

/// Messages per fetch, as the issue's raw profile sets it.
const BATCH: usize = 1_000;

/// `runs` measurements, one after another; the fastest is the ceiling. One run on a shared
/// 2-core host varies by ±20 %, and a slow `raw` would flatter every ratio taken against it.
pub async fn run(
    config: &Config,
    count: usize,
    runs: usize,
    replicas: usize,
) -> anyhow::Result<Raw> {
    let mut best: Option<Raw> = None;
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let raw = run_once(config, count, replicas).await?;
        rates.push(raw.rate);
        if best.as_ref().is_none_or(|b| raw.rate > b.rate) {
            best = Some(raw);
        }
    }
    let mut best = best.context("no raw run was made")?;
    if rates.len() > 1 {
        best.rates = rates;
    }
    Ok(best)
}

async fn run_once(config: &Config, count: usize, replicas: usize) -> anyhow::Result<Raw> {
    let js = jetstream::new(wallet_ops::nats(config).await?);
    let name = config.names.name(&format!("RAW{}", std::process::id()));
    let subject = config
        .names
        .subject(&format!("bench.raw.{}", std::process::id()));
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            // As the command streams (streams.toml).
            duplicate_window: Duration::from_secs(30),
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the stream {name}"))?;
    let result = measure(&js, &stream, &subject, count).await;
    // Whatever happened, leave nothing behind.
    let deleted = js.delete_stream(&name).await;
    let raw = result?;
    deleted.with_context(|| format!("deleting the stream {name}"))?;
    Ok(raw)
}

async fn measure(
    js: &jetstream::Context,
    stream: &stream::Stream,
    subject: &str,
    count: usize,
) -> anyhow::Result<Raw> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    // A deposit's size: the payload `walletctl load` sends, id included.
    let payload = |i: usize| {
        format!(
            r#"{{"deposit_id":"raw-deposit-{i:07}","user_id":"raw-u{:05}","amount":"1.25","currency":"USD"}}"#,
            i % 10_000
        )
        .into_bytes()
    };
    let payload_bytes = payload(0).len();
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut acked = 0;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await?;
        while acked < count {
            let m = messages
                .next()
                .await
                .context("the consumer's stream ended")?
                .map_err(|e| anyhow::anyhow!("consuming: {e}"))?;
            m.ack().await.map_err(|e| anyhow::anyhow!("acking: {e}"))?;
            acked += 1;
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    });
    let messages = (0..count).map(|i| (subject.to_owned(), format!("raw-{i}"), payload(i)));
    wallet_client::publish_all(js, messages).await?;
    let publish_seconds = started.elapsed().as_secs_f64();
    let seconds = consume.await??;
    Ok(Raw {
        messages: count,
        payload_bytes,
        publish_seconds,
        seconds,
        rate: count as f64 / seconds,
        rates: Vec::new(),
    })
}
