//! The readers: `balance` is asked for users' balances during the run, so that the cache is
//! filled and written through under the faults, and the audit has it to check.

use std::time::Duration;

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use wallet_runtime::Config;

/// One event in this many has its user's balance read.
const READ_EVERY: u64 = 10;

/// Reads the balance of the user of every [`READ_EVERY`]th event until `stop`, one request at a
/// time; returns the answers and the requests that failed (timed out, or `unavailable` while a
/// server was down). What the answers say is checked by the audit at the end: every balance the
/// cache holds must equal PostgreSQL's.
pub(crate) async fn read_balances(
    config: Config,
    stop: CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let nats = wallet_ops::nats(&config).await?;
    let mut events = nats
        .subscribe(config.names.subject("wallet.events.>"))
        .await?;
    let (mut seen, mut answered, mut failed) = (0u64, 0u64, 0u64);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return Ok((answered, failed)),
            e = events.next() => match e {
                Some(e) => e,
                None => return Ok((answered, failed)),
            },
        };
        seen += 1;
        if seen % READ_EVERY != 0 {
            continue;
        }
        let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap_or_default();
        let Some(user) = event["user_id"].as_str() else {
            continue;
        };
        let request = serde_json::json!({ "user_id": user }).to_string();
        let subject = config.names.subject(&wallet_runtime::partition::subject(
            "wallet.balance.get",
            user,
        ));
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            nats.request(subject.clone(), request.into()),
        )
        .await;
        let ok = matches!(&reply, Ok(Ok(r))
            if serde_json::from_slice::<serde_json::Value>(&r.payload)
                .is_ok_and(|v| v["wallets"].is_array()));
        if ok {
            answered += 1;
        } else {
            failed += 1;
        }
    }
}
