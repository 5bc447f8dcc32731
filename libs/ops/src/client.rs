//! `walletctl publish` and `walletctl balance`: a command sent and a balance asked with what the
//! project ships, as a client would (no `nats` CLI needed). Subjects are the contract's, without
//! the namespace; `WALLET_NAMESPACE` applies as for every command.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream;
use wallet_runtime::Config;
use wallet_runtime::streams::Topology;

/// Publishes `payload` (JSON) to `subject` with `Nats-Msg-Id: msg_id` and waits until JetStream
/// stored it; returns the line to print (stream, sequence and subject, or that it was a
/// duplicate). A command with a `user_id` for a partitioned stream goes to its user's partition
/// (`wallet.deposit.144`), as clients are to publish it.
pub async fn publish(
    config: &Config,
    topology: &Topology,
    subject: &str,
    msg_id: &str,
    payload: &str,
) -> anyhow::Result<String> {
    let body = serde_json::from_str::<serde_json::Value>(payload)
        .with_context(|| format!("the payload is not JSON: {payload}"))?;
    let subject = match body.get("user_id").and_then(|u| u.as_str()) {
        Some(user) => topology.routing(subject).publish(subject, user),
        None => subject.to_owned(),
    };
    let js = jetstream::new(crate::nats(config).await?);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let subject = config.names.subject(&subject);
    let ack = js
        .publish_with_headers(subject.clone(), headers, payload.to_owned().into())
        .await
        .with_context(|| format!("publishing to {subject}"))?
        .await
        .with_context(|| format!("no stream stored {subject}"))?;
    Ok(if ack.duplicate {
        format!("duplicate of {msg_id}: already stored in {}", ack.stream)
    } else {
        format!(
            "stored in {} as message {} on {subject}",
            ack.stream, ack.sequence
        )
    })
}

/// Asks `wallet.balance.get` for `user`'s wallets; the reply, as `balance` sent it (JSON).
pub async fn balance(config: &Config, user: &str) -> anyhow::Result<String> {
    let nats = crate::nats(config).await?;
    let subject = config.names.subject(&wallet_runtime::partition::subject(
        "wallet.balance.get",
        user,
    ));
    let request = serde_json::json!({ "user_id": user }).to_string();
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        nats.request(subject.clone(), request.into()),
    )
    .await;
    let reply = match reply {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => bail!("{subject}: {e} (is `balance` running?)"),
        Err(_) => bail!("{subject}: no answer within 5 s (is `balance` running?)"),
    };
    let body: serde_json::Value = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{subject} answered something that is not JSON"))?;
    Ok(serde_json::to_string_pretty(&body)?)
}
