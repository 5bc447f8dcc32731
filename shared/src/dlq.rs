//! Dead letters (CONTRACT §8): the original payload and headers, republished to
//! `dlq.<function>` with `Wallet-Dlq-*` headers and `Nats-Msg-Id: dlq:<function>:<stream seq>`,
//! so that one delivery dead-lettered twice (a crash between publish and term) is stored once.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Message};

use crate::error::StepError;
use crate::names::Names;

pub const MALFORMED: &str = "malformed";
pub const ID_CONFLICT: &str = "id_conflict";
/// The message failed on its last allowed delivery.
pub const MAX_DELIVER: &str = "max_deliver";

/// Publishes `msg` as a dead letter and waits for JetStream to store it. The caller terminates
/// the original only after this returns `Ok`.
pub async fn publish(
    js: &jetstream::Context,
    names: &Names,
    function: &str,
    msg: &Message,
    reason: &str,
) -> Result<(), StepError> {
    let info = msg.info().map_err(StepError::transient)?;
    let (stream_seq, delivered) = (info.stream_sequence, info.delivered);
    let mut headers = msg.headers.clone().unwrap_or_default();
    let original_id = headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let set = |h: &mut HeaderMap, k: &'static str, v: String| h.insert(k, v.as_str());
    set(
        &mut headers,
        "Nats-Msg-Id",
        format!("dlq:{function}:{stream_seq}"),
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
    metrics::counter!("wallet_dead_letters_total", "function" => function.to_owned(), "reason" => reason.to_owned())
        .increment(1);
    tracing::warn!(function, reason, stream_seq, "dead-lettered");
    Ok(())
}
