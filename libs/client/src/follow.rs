//! Following what a stream holds, from a point on, through lost connections, restarted servers and
//! leader changes, without a durable consumer to clean up.
//!
//! Why not async-nats's ordered consumer: it recovers through a state machine of missed
//! heartbeats, and that stalled twice here: after a restarted server it answered `Pending` without
//! arranging to be polled again, and in a 3-node cluster with one node killed it stopped at 1,163
//! of the 4,000 events both live nodes held, while the functions had decided all 4,000.
//!
//! This follower keeps one rule instead. It knows the next stream sequence it wants, and whenever
//! anything is in doubt (an error, a pull no server answered, a gap in the consumer's sequence, a
//! consumer that sent more than arrived) it replaces its consumer with one that starts there. So
//! every message on the filter from the starting point is handed on once, in stream order, or the
//! follower is still trying to reach a server.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use wallet_runtime::runtime::Backoff;

use crate::ClientError;

/// Messages asked for in one pull; they are handed on as they arrive, not when the pull ends.
const BATCH: usize = 1024;
/// How long one pull waits on the server; an idle follower checks its consumer this often.
const PULL: Duration = Duration::from_secs(2);
/// How long after its expiry a pull is still waited for. nats-server 2.9.10 sometimes lets a pull
/// request lapse without its `408` status; async-nats then ends the pull 5 s after its expiry,
/// and nothing was handed on meanwhile: the quiet bench profile's publish-to-event maximum was
/// that 5 s, in one run of two. A message the server did send after this is caught by the
/// next pull's sequence check.
const LATE: Duration = Duration::from_millis(500);
/// How long a request about the consumer (create, info, delete) may take before it is in doubt.
const PATIENCE: Duration = Duration::from_secs(5);
/// Messages read ahead of the caller.
const AHEAD: usize = 1024;
/// A consumer nobody pulls from is deleted by the server after this; a slow caller costs a
/// replacement, never a message.
const INACTIVE: Duration = Duration::from_secs(30);

/// The messages stored on `filter` of `stream`, from `from` on, in stream order, each once. The
/// stream only ends if the follower's task dies; outages are waited out (and logged), not returned.
pub async fn follow(
    js: &jetstream::Context,
    names: &wallet_runtime::names::Names,
    stream: &str,
    filter: &str,
    from: consumer::DeliverPolicy,
) -> Result<Followed, ClientError> {
    let mut follower = Follower {
        js: js.clone(),
        stream: names.name(stream),
        filter: names.subject(filter),
        consumer: None,
        delivered: 0,
        next: 0,
    };
    // The first consumer is made here, not in the task, so that a missing stream is this call's
    // error and `DeliverPolicy::New` means new from the moment `follow` returns.
    follower
        .open(from)
        .await
        .map_err(|doubt| ClientError::Follow {
            stream: stream.to_owned(),
            source: Box::new(doubt),
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
    tokio::spawn(follower.run(tx));
    Ok(futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|m| (m, rx)) }).boxed())
}

/// A followed stream's messages, as [`follow`] gives them.
pub type Followed = futures::stream::BoxStream<'static, jetstream::Message>;

struct Follower {
    js: jetstream::Context,
    stream: String,
    filter: String,
    consumer: Option<consumer::PullConsumer>,
    /// The consumer sequence of the last message handed on (0: none from this consumer yet).
    delivered: u64,
    /// The stream sequence to start a replacement consumer at.
    next: u64,
}

/// Why the consumer is replaced.
#[derive(Debug, thiserror::Error)]
enum Doubt {
    #[error("{0}")]
    Failed(#[from] async_nats::Error),
    #[error("no answer within {0:?}")]
    Silent(Duration),
    #[error("the consumer skipped from {delivered} to {got}")]
    Gap { delivered: u64, got: u64 },
    #[error("the consumer sent {sent} messages, {arrived} arrived")]
    Lost { sent: u64, arrived: u64 },
    #[error("no consumer")]
    Gone,
}

impl Follower {
    /// Replaces the consumer with one that delivers from `from`.
    async fn open(&mut self, from: consumer::DeliverPolicy) -> Result<(), Doubt> {
        self.retire().await;
        let config = consumer::pull::Config {
            deliver_policy: from,
            ack_policy: consumer::AckPolicy::None,
            filter_subject: self.filter.clone(),
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: INACTIVE,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer = tokio::time::timeout(
            PATIENCE,
            self.js.create_consumer_on_stream(config, &self.stream),
        )
        .await
        .map_err(|_| Doubt::Silent(PATIENCE))?
        .map_err(|e| Doubt::Failed(e.into()))?;
        // What it reports as delivered is where it starts, less one, whatever the policy.
        let delivered = &consumer.cached_info().delivered;
        self.next = delivered.stream_sequence + 1;
        self.delivered = delivered.consumer_sequence;
        self.consumer = Some(consumer);
        Ok(())
    }

    /// Deletes the consumer, if any. Best effort: one on a lost server goes by the inactivity
    /// rule.
    async fn retire(&mut self) {
        if let Some(old) = self.consumer.take() {
            let name = old.cached_info().name.clone();
            let deleted = self.js.delete_consumer_from_stream(name, &self.stream);
            let _ = tokio::time::timeout(PATIENCE, deleted).await;
        }
    }

    async fn run(mut self, tx: tokio::sync::mpsc::Sender<jetstream::Message>) {
        // Backs off while servers are gone, so an outage does not spin.
        let mut backoff = Backoff::default();
        loop {
            let step = async {
                match self.pull(&tx).await {
                    Ok(()) => backoff.reset(),
                    Err(doubt) => {
                        tracing::debug!(stream = %self.stream, next = self.next, %doubt, "replacing the follower's consumer");
                        tokio::time::sleep(backoff.delay()).await;
                        let from = consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: self.next,
                        };
                        if let Err(doubt) = self.open(from).await {
                            tracing::warn!(stream = %self.stream, next = self.next, %doubt, "cannot recreate the follower's consumer; again");
                        }
                    }
                }
            };
            tokio::select! {
                () = tx.closed() => break,
                () = step => {}
            }
        }
        self.retire().await;
    }

    /// One pull, handing on what it brings. An error means the consumer is in doubt.
    async fn pull(
        &mut self,
        tx: &tokio::sync::mpsc::Sender<jetstream::Message>,
    ) -> Result<(), Doubt> {
        // None after a failed replacement: it is tried again.
        let consumer = self.consumer.as_ref().ok_or(Doubt::Gone)?;
        // The batch ends when the server says the pull expired, or `LATE` after that when no
        // server says anything.
        let mut batch = consumer
            .batch()
            .max_messages(BATCH)
            .expires(PULL)
            .messages()
            .await
            .map_err(|e| Doubt::Failed(e.into()))?;
        let mut arrived = 0;
        let deadline = tokio::time::Instant::now() + PULL + LATE;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, batch.next()).await {
            let m = m?;
            let info = m.info()?;
            let (got, stream_sequence) = (info.consumer_sequence, info.stream_sequence);
            if got != self.delivered + 1 {
                return Err(Doubt::Gap {
                    delivered: self.delivered,
                    got,
                });
            }
            self.delivered = got;
            self.next = stream_sequence + 1;
            arrived += 1;
            if tx.send(m).await.is_err() {
                return Ok(());
            }
        }
        if arrived == 0 {
            // Nothing came: make sure nothing was sent, rather than lost with a server or a
            // connection (a later message would show the gap, but there may be none).
            let info = tokio::time::timeout(PATIENCE, consumer.get_info())
                .await
                .map_err(|_| Doubt::Silent(PATIENCE))?
                .map_err(|e| Doubt::Failed(e.into()))?;
            let sent = info.delivered.consumer_sequence;
            if sent != self.delivered {
                return Err(Doubt::Lost {
                    sent,
                    arrived: self.delivered,
                });
            }
        }
        Ok(())
    }
}
