//! Dead letters (CONTRACT §8): the original payload and headers, republished to
//! `dlq.<function>` with `Wallet-Dlq-*` headers and `Nats-Msg-Id: dlq:<function>:<stream seq>`
//! (`dlq:<function>:<shard>:<stream seq>` on a shard), so that one delivery dead-lettered twice
//! (a crash between publish and term) is stored once. The shard is part of the id because each
//! shard has a stream of its own, numbered from 1 like the others: without it, two shards' dead
//! letters of one sequence number would be one message to the DLQ's duplicate window, and the
//! second would be dropped as a copy of the first while its command was terminated.
//! A command stream's `max_msg_size` leaves room for the added headers (streams.toml), so every
//! message a command stream accepted fits in the DLQ.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Message};

use crate::error::StepError;
use crate::metrics;
use crate::names::Names;

pub const MALFORMED: &str = "malformed";
pub const ID_CONFLICT: &str = "id_conflict";
/// On a partitioned subject that is not its user's ([`crate::partition::Routing`]).
pub const WRONG_PARTITION: &str = "wrong_partition";
/// The message failed on its last allowed delivery.
pub const MAX_DELIVER: &str = "max_deliver";

/// The most of a message's own `Nats-Msg-Id` a dead letter copies into `Wallet-Dlq-Msg-Id`: a
/// valid command's is its id (at most 128 characters); a hostile one could be as large as the
/// message, and the dead letter would no longer fit in its stream.
const MAX_COPIED_ID: usize = 256;

fn capped(id: &str) -> &str {
    let mut end = id.len().min(MAX_COPIED_ID);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// The headers of a command that a dead letter (or a replay) carries on: all but those the
/// server acts on (`Nats-*`: an expected stream, last sequence or message id, a rollup, a TTL would
/// make the DLQ refuse or mangle the letter) and the `Wallet-Dlq-*` the runtime writes itself (a
/// command could carry forged ones).
pub fn forwarded(original: Option<&HeaderMap>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.into_iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("nats-") || lower.starts_with("wallet-dlq-") {
            continue;
        }
        for v in values {
            headers.append(name, v.as_str());
        }
    }
    headers
}

/// A dead letter's `Nats-Msg-Id`: the function, its shard if it runs on one, and where the
/// command was in that function's (that shard's) stream: one id per delivered message.
pub fn letter_id(function: &str, shard: Option<&str>, stream_seq: u64) -> String {
    match shard {
        Some(shard) => format!("dlq:{function}:{shard}:{stream_seq}"),
        None => format!("dlq:{function}:{stream_seq}"),
    }
}

/// Publishes `msg`, delivered to `function` on `shard`, as a dead letter and waits for JetStream
/// to store it. The caller terminates the original only after this returns `Ok`.
pub async fn publish(
    js: &jetstream::Context,
    names: &Names,
    (function, shard): (&str, Option<&str>),
    msg: &Message,
    reason: &str,
) -> Result<(), StepError> {
    let info = msg.info().map_err(StepError::transient)?;
    let (stream_seq, delivered) = (info.stream_sequence, info.delivered);
    let mut headers = forwarded(msg.headers.as_ref());
    let original_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| capped(v.as_str()).to_owned())
        .unwrap_or_default();
    let set = |h: &mut HeaderMap, k: &'static str, v: String| h.insert(k, v.as_str());
    set(
        &mut headers,
        "Nats-Msg-Id",
        letter_id(function, shard, stream_seq),
    );
    set(&mut headers, "Wallet-Dlq-Reason", reason.to_owned());
    set(&mut headers, "Wallet-Dlq-Function", function.to_owned());
    set(&mut headers, "Wallet-Dlq-Subject", msg.subject.to_string());
    set(&mut headers, "Wallet-Dlq-Deliveries", delivered.to_string());
    set(
        &mut headers,
        "Wallet-Dlq-Stream-Seq",
        stream_seq.to_string(),
    );
    set(&mut headers, "Wallet-Dlq-Msg-Id", original_id);
    js.publish_with_headers(
        names.subject(&format!("dlq.{function}")),
        headers,
        msg.payload.clone(),
    )
    .await
    .map_err(StepError::transient)?
    .await
    .map_err(StepError::transient)?;
    metrics::dead_lettered(function, reason);
    tracing::warn!(function, reason, stream_seq, "dead-lettered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_headers_the_server_ignores_are_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", "d-1");
        h.insert("Nats-Expected-Last-Sequence", "7");
        h.insert("nats-rollup", "all");
        h.insert("Wallet-Dlq-Subject", "wallet.events.deposit.completed");
        h.insert("traceparent", "00-abc-def-01");
        let f = forwarded(Some(&h));
        let names: Vec<String> = f.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["traceparent"]);
        assert_eq!(forwarded(None).iter().count(), 0);
    }

    #[test]
    fn each_shards_dead_letter_of_one_sequence_has_its_own_id() {
        assert_eq!(letter_id("deposit", None, 7), "dlq:deposit:7");
        let a = letter_id("deposit", Some("a"), 7);
        let b = letter_id("deposit", Some("b"), 7);
        assert_eq!(a, "dlq:deposit:a:7");
        assert_ne!(a, b);
    }

    #[test]
    fn a_copied_id_is_capped_on_a_character_boundary() {
        assert_eq!(capped("d-1"), "d-1");
        assert_eq!(capped(&"a".repeat(300)).len(), MAX_COPIED_ID);
        let wide = format!("a{}", "é".repeat(200));
        assert_eq!(capped(&wide).len(), MAX_COPIED_ID - 1);
    }
}
