//! Fetching a batch: what is ready, else one message within `FETCH_WAIT`, then a short linger
//! for more; bounded in messages, bytes and time.

use std::time::Duration;

use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;

use crate::error::StepError;

/// Takes what is ready, up to `max`; when nothing is, waits up to `wait` for one message and
/// then takes what else is ready. A batch still short of `max` then waits up to `linger` for
/// more: under a steady load that is not enough to fill batches, it turns many small batches,
/// each paying its round trips and two commits, into fewer larger ones (what keeps the peak
/// profile from saturating the machine). A shutdown strands at most the deliveries of the
/// requests in flight, which come back after their ack wait.
///
/// Every pull is also bounded here: a pull request dies with the server that held it (a
/// nats-server restart, a cut connection), and then no end-of-request status ever comes, so
/// without a deadline of its own the loop would wait forever (`make chaos` found it).
pub(super) async fn fetch(
    consumer: &PullConsumer,
    (max, max_bytes): (usize, usize),
    wait: Duration,
    linger: Duration,
) -> Result<Vec<Message>, StepError> {
    let deadline = tokio::time::Instant::now() + wait + PULL_MARGIN;
    let drain = |s| drain_until(s, deadline);
    async fn drain_until(
        mut s: impl futures::Stream<Item = Result<Message, impl std::fmt::Display>> + Unpin,
        deadline: tokio::time::Instant,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, s.next()).await {
            match m {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::debug!(error = %e, "fetch ended early");
                    break;
                }
            }
        }
        out
    }
    // What is ready now, up to `n` messages and `bytes` (a no-wait pull).
    let ready = |n: usize, bytes: usize| async move {
        let s = consumer
            .fetch()
            .max_messages(n)
            .max_bytes(bytes)
            .messages()
            .await
            .map_err(StepError::transient)?;
        Ok::<_, StepError>(drain(s).await)
    };
    let size = |msgs: &[Message]| msgs.iter().map(|m| m.length).sum::<usize>();
    let mut msgs = ready(max, max_bytes).await?;
    if msgs.is_empty() {
        msgs = drain(
            consumer
                .batch()
                .max_messages(1)
                .max_bytes(max_bytes)
                .expires(wait)
                .messages()
                .await
                .map_err(StepError::transient)?,
        )
        .await;
        let left = max_bytes.saturating_sub(size(&msgs));
        if !msgs.is_empty() && max > 1 && left > 0 {
            msgs.extend(ready(max - 1, left).await?);
        }
    }
    if !msgs.is_empty() && msgs.len() < max && !linger.is_zero() {
        // Waited out here, then what is ready is taken: a pull request with a short expiry is
        // not reliable, nats-server 2.9 sometimes lets one lapse without its end-of-request
        // status. A failed request costs only the extra messages: what is held is decided.
        tokio::time::sleep(linger).await;
        let left = max_bytes.saturating_sub(size(&msgs));
        if left > 0 {
            msgs.extend(ready(max - msgs.len(), left).await.unwrap_or_default());
        }
    }
    Ok(msgs)
}

/// How long past its own expiry a pull may take before the runtime gives up on it.
const PULL_MARGIN: Duration = Duration::from_secs(5);
