//! `walletctl dlq list|replay`: reading and replaying dead letters (CONTRACT §8).

use std::fmt::Write;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use wallet_runtime::Config;
use wallet_runtime::streams::{Topology, subject_matches};

#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the DLQ stream.
    pub seq: u64,
    pub function: String,
    pub reason: String,
    pub deliveries: String,
    /// The subject the command arrived on, namespace included.
    pub subject: String,
    /// The command's own Nats-Msg-Id.
    pub msg_id: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

fn header(h: &HeaderMap, k: &str) -> String {
    h.get(k).map(|v| v.as_str().to_owned()).unwrap_or_default()
}

/// Every dead letter, or those of `function`, oldest first.
pub async fn list(config: &Config, function: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
    let js = jetstream::new(crate::nats(config).await?);
    list_with(&js, config, function).await
}

async fn list_with(
    js: &jetstream::Context,
    config: &Config,
    function: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let stream = js.get_stream(config.names.name("DLQ")).await?;
    let filter = config
        .names
        .subject(&format!("dlq.{}", function.unwrap_or(">")));
    // An ephemeral reader that acknowledges nothing: listing never changes the DLQ.
    let reader = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: filter,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await?;
    let mut letters = Vec::new();
    loop {
        let mut batch = reader.fetch().max_messages(500).messages().await?;
        let before = letters.len();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("reading the DLQ: {e}"))?;
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            let headers = m.headers.clone().unwrap_or_default();
            letters.push(DeadLetter {
                seq,
                function: header(&headers, "Wallet-Dlq-Function"),
                reason: header(&headers, "Wallet-Dlq-Reason"),
                deliveries: header(&headers, "Wallet-Dlq-Deliveries"),
                subject: header(&headers, "Wallet-Dlq-Subject"),
                msg_id: header(&headers, "Wallet-Dlq-Msg-Id"),
                payload: m.payload.clone(),
                headers,
            });
        }
        if letters.len() == before {
            break;
        }
    }
    let _ = stream.delete_consumer(&reader.cached_info().name).await;
    Ok(letters)
}

/// `--json`: every field, the headers as a map and the payload as text (lossy for bytes that are
/// not UTF-8).
impl serde::Serialize for DeadLetter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let headers: std::collections::BTreeMap<String, String> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let values: Vec<&str> = v.iter().map(|v| v.as_str()).collect();
                (k.to_string(), values.join(", "))
            })
            .collect();
        let mut m = s.serialize_struct("DeadLetter", 8)?;
        m.serialize_field("seq", &self.seq)?;
        m.serialize_field("function", &self.function)?;
        m.serialize_field("reason", &self.reason)?;
        m.serialize_field("deliveries", &self.deliveries)?;
        m.serialize_field("subject", &self.subject)?;
        m.serialize_field("msg_id", &self.msg_id)?;
        m.serialize_field("headers", &headers)?;
        m.serialize_field("payload", &String::from_utf8_lossy(&self.payload))?;
        m.end()
    }
}

pub fn render(letters: &[DeadLetter]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8} {:<14} {:<16} {:>4} {:<28} {:<30} PAYLOAD",
        "SEQ", "FUNCTION", "REASON", "DLV", "MSG_ID", "SUBJECT"
    );
    for l in letters {
        let mut payload: String = String::from_utf8_lossy(&l.payload)
            .chars()
            .take(60)
            .collect();
        payload = payload.replace(['\n', '\r', '\t'], " ");
        if l.payload.len() > 60 {
            payload.push('…');
        }
        let _ = writeln!(
            out,
            "{:>8} {:<14} {:<16} {:>4} {:<28} {:<30} {}",
            l.seq, l.function, l.reason, l.deliveries, l.msg_id, l.subject, payload
        );
    }
    let _ = writeln!(out, "{} dead letter(s)", letters.len());
    out
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: usize,
    /// Letters left in the DLQ because their subject is not one the function consumes.
    pub refused: usize,
}

/// Publishes `function`'s dead letters (or the one whose command id is `id`) to their original
/// subject with their original headers and a new `Nats-Msg-Id`, then removes them from the DLQ.
/// The command's own id still guarantees a single effect. Only a subject that the function's own
/// consumer reads is replayed to: a letter's headers are the sender's words, and a forged
/// `Wallet-Dlq-Subject` must not turn a replay into a publish anywhere else.
pub async fn replay(
    config: &Config,
    topology: &Topology,
    function: &str,
    id: Option<&str>,
) -> anyhow::Result<Replayed> {
    let Some(consumer) = topology.consumer(function) else {
        anyhow::bail!("no function `{function}` in the streams file");
    };
    let read: Vec<String> = topology
        .read_by(consumer)
        .iter()
        .map(|s| config.names.subject(s))
        .collect();
    let js = jetstream::new(crate::nats(config).await?);
    let stream = js.get_stream(config.names.name("DLQ")).await?;
    let letters = list_with(&js, config, Some(function)).await?;
    let mut done = Replayed::default();
    for l in letters
        .into_iter()
        .filter(|l| id.is_none_or(|id| l.msg_id == id))
    {
        if !read.iter().any(|r| subject_matches(r, &l.subject)) {
            eprintln!(
                "walletctl: dead letter {} left in the DLQ: its subject `{}` is not one {function} reads ({})",
                l.seq,
                l.subject,
                read.join(", ")
            );
            done.refused += 1;
            continue;
        }
        let mut headers = wallet_runtime::dlq::forwarded(Some(&l.headers));
        // Unique per dead letter: a replay that fails again is a new dead letter with a new
        // sequence, and replaying that one is not swallowed by the duplicate window.
        headers.insert(
            "Nats-Msg-Id",
            format!("replay:{function}:{}", l.seq).as_str(),
        );
        js.publish_with_headers(l.subject.clone(), headers, l.payload.clone())
            .await?
            .await?;
        stream.delete_message(l.seq).await?;
        done.replayed += 1;
    }
    Ok(done)
}
