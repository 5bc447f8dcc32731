//! Publishing commands so that each is stored once: a `Nats-Msg-Id` per command, the publish
//! retried under the same id until JetStream acknowledges it (its duplicate window drops a second
//! copy), and a bounded number of acknowledgements awaited at once so a slow server pushes back.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};

use crate::ClientError;

/// One message to publish.
#[derive(Debug)]
pub struct Message {
    pub subject: String,
    pub msg_id: String,
    pub payload: bytes::Bytes,
}

/// In-flight publish acks: enough to keep JetStream busy on this machine, bounded so that a
/// slow server pushes back on the publisher.
pub const IN_FLIGHT: usize = 2_000;

/// Publishes `(subject, Nats-Msg-Id, payload)` messages with up to [`IN_FLIGHT`] acks awaited
/// at once; returns when JetStream has stored every one, or at the first error.
pub async fn publish_all(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = (String, String, Vec<u8>)>,
) -> Result<(), ClientError> {
    futures::stream::iter(messages)
        .map(|(subject, msg_id, payload)| {
            publish(
                js,
                Message {
                    subject,
                    msg_id,
                    payload: payload.into(),
                },
            )
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
}

/// Publishes one message and waits until JetStream stored it, trying again (same
/// `Nats-Msg-Id`, so never twice) when the ack does not come, for up to [`PUBLISH_PATIENCE`]:
/// a NATS restart or a cut connection (`make chaos`) delays commands, it does not end the run.
pub async fn publish(js: &jetstream::Context, m: Message) -> Result<(), ClientError> {
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", m.msg_id.as_str());
        let sent = async {
            js.publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                .await?
                .await
        };
        match sent.await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, msg_id = m.msg_id, "publish not acknowledged; again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(ClientError::Publish {
                    msg_id: m.msg_id,
                    source: e,
                });
            }
        }
    }
}

/// How long a command's publish is retried; well inside the streams' 2-minute duplicate window.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);
