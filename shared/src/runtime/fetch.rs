//! Batches from the consumer: one long-lived pull subscription per consume loop, cut into
//! batches of what has arrived, bounded in messages and bytes.
//!
//! Why a long-lived pull (async-nats's `Consumer::stream`) and not one pull request per batch:
//! - Messages arrive while the previous batch is being decided, so a batch is what came in
//!   meanwhile: one message when it is quiet (no fetch round trip, no wait), hundreds under load.
//! - A replicated consumer (a cluster, R3) sends a message only once the cluster agreed it was
//!   delivered, but its `409 Batch Completed` status at once: the status can overtake the last
//!   messages of its request. A one-shot pull ends at that status and drops the messages still on
//!   their way; they were redelivered after their ack wait, into the same race, again and again
//!   (1.5 % of deposits on a 3-node 2.12 cluster, never decided). The long-lived pull counts a
//!   status by its pending headers and keeps its subscription, so late messages still land.
//!
//! A stream that reports an error (a missed heartbeat: the server holding its pull request died
//! or was cut off) is dropped and a new one made; what it had delivered and not handed out comes
//! back after its ack wait, as after a crash.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Stream;
use async_nats::jetstream::{AckKind, Message};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::error::StepError;

/// A pull request lives this long; the stream renews it before it runs out.
const EXPIRES: Duration = Duration::from_secs(30);
/// The server says it is alive this often while it has nothing to send; two missed mean the
/// request is gone with its server, and the stream is made again.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the next batch may wait for more messages, once it has one, given how long the
/// loop's last batch took to decide if it held more than one message. Messages arriving faster
/// than batches are decided turn many small transactions into fewer larger ones, each message
/// waiting at most as long again as the last batch took to decide and never more than
/// `BATCH_LINGER`. When it is quiet (the last batch was one message, or the wait for one timed
/// out) a message is decided as soon as it is there. The load alone decides; nothing is tuned
/// per deployment.
///
/// Measured on `mixed-all-peak`: the low-rate functions (about 300 commands/s each) decided
/// batches of 4 to 7 in transactions of their own and never lingered while the rule was 16
/// messages or more; bench/ANALYSIS.md has what lingering on them changed.
fn linger(decided_in: Option<Duration>, cap: Duration) -> Option<Duration> {
    decided_in.filter(|_| !cap.is_zero()).map(|d| d.min(cap))
}

/// One consume loop's source of batches.
pub(super) struct Batches {
    consumer: PullConsumer,
    max: usize,
    max_bytes: usize,
    wait: Duration,
    linger: Duration,
    messages: Option<Stream>,
    /// A message that did not fit the last batch's bytes: it opens the next one.
    carried: Option<Message>,
    /// When the last batch was handed out, if it held more than one message: the time until the
    /// next call is its decision's. `None` when it held one, or when a wait for the next
    /// timed out: a loop that has been idle is quiet, however busy it was before.
    several_handed_out: Option<tokio::time::Instant>,
}

impl Batches {
    pub(super) fn new(
        consumer: PullConsumer,
        (max, max_bytes): (usize, usize),
        wait: Duration,
        linger: Duration,
    ) -> Self {
        Self {
            consumer,
            max,
            max_bytes,
            wait,
            linger,
            messages: None,
            carried: None,
            several_handed_out: None,
        }
    }

    /// The next batch: empty when nothing came within `wait`, `None` once `shutdown` is
    /// cancelled before a message came.
    pub(super) async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Message>>, StepError> {
        let decided_in = self.several_handed_out.map(|t| t.elapsed());
        let linger = linger(decided_in, self.linger);
        let first = match self.carried.take() {
            Some(m) => m,
            None => {
                let wait = self.wait;
                let messages = self.messages().await?;
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(None),
                    next = tokio::time::timeout(wait, messages.next()) => next,
                };
                match next {
                    Err(_) => {
                        self.several_handed_out = None;
                        return Ok(Some(Vec::new()));
                    }
                    Ok(next) => self.took(next)?,
                }
            }
        };
        let mut bytes = first.length;
        let mut batch = vec![first];
        let linger_until = linger.map(|l| tokio::time::Instant::now() + l);
        while batch.len() < self.max {
            let Some(messages) = self.messages.as_mut() else {
                break;
            };
            // What has arrived is taken at once; more is waited for only while lingering.
            let next = match messages.next().now_or_never() {
                Some(next) => next,
                None => match linger_until {
                    Some(until) => match tokio::time::timeout_at(until, messages.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    },
                    None => break,
                },
            };
            let Ok(m) = self.took(next) else { break };
            if bytes + m.length > self.max_bytes {
                self.carried = Some(m);
                break;
            }
            bytes += m.length;
            batch.push(m);
        }
        self.several_handed_out = (batch.len() > 1).then(tokio::time::Instant::now);
        Ok(Some(batch))
    }

    /// At shutdown: the messages delivered to this loop and not yet handed out go back to the
    /// consumer at once (a negative acknowledgement) for the other replicas, instead of waiting
    /// out their ack wait.
    pub(super) async fn release(mut self) {
        let mut held: Vec<Message> = self.carried.take().into_iter().collect();
        if let Some(messages) = self.messages.as_mut() {
            while let Some(Some(Ok(m))) = messages.next().now_or_never() {
                held.push(m);
            }
        }
        for m in held {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }

    async fn messages(&mut self) -> Result<&mut Stream, StepError> {
        if self.messages.is_none() {
            let stream = self
                .consumer
                .stream()
                .max_messages_per_batch(self.max)
                .max_bytes_per_batch(self.max_bytes)
                .expires(EXPIRES)
                .heartbeat(HEARTBEAT)
                .messages()
                .await
                .map_err(StepError::transient)?;
            self.messages = Some(stream);
        }
        Ok(self.messages.as_mut().expect("made above"))
    }

    /// A message from the stream; an error or the stream's end drops the stream (the next batch
    /// makes a new one) and is reported as transient.
    fn took<E: std::fmt::Display>(
        &mut self,
        next: Option<Result<Message, E>>,
    ) -> Result<Message, StepError> {
        match next {
            Some(Ok(m)) => Ok(m),
            Some(Err(e)) => {
                self.messages = None;
                Err(StepError::transient(format!("pull subscription: {e}")))
            }
            None => {
                self.messages = None;
                Err(StepError::transient("pull subscription ended"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_millis(20);

    #[test]
    fn a_loop_lingers_as_long_as_its_last_batch_of_several_took_and_no_longer_than_the_cap() {
        let ms = Duration::from_millis;
        // Quiet: the last batch was one message, or the wait for one timed out.
        assert_eq!(linger(None, CAP), None);
        // Busy: as long again as the last decision took...
        assert_eq!(linger(Some(ms(3)), CAP), Some(ms(3)));
        assert_eq!(linger(Some(ms(13)), CAP), Some(ms(13)));
        // ...never more than BATCH_LINGER, and never with BATCH_LINGER=0s.
        assert_eq!(linger(Some(ms(150)), CAP), Some(CAP));
        assert_eq!(linger(Some(ms(150)), Duration::ZERO), None);
    }
}
