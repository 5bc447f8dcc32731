//! Following what a stream holds, from a point on, without a durable consumer to clean up.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use crate::ClientError;

/// The messages stored on `filter` of `stream`, from `from` on (an ordered consumer: nothing to
/// clean up afterwards). Poll it without long pauses: a consumer nobody pulls from is deleted by
/// the server after 30 s, and is then only recreated after two missed heartbeats.
pub async fn follow(
    js: &jetstream::Context,
    names: &wallet_runtime::names::Names,
    stream: &str,
    filter: &str,
    from: consumer::DeliverPolicy,
) -> Result<Followed, ClientError> {
    let failed = |e: async_nats::Error| ClientError::Follow {
        stream: stream.to_owned(),
        source: e,
    };
    let ordered = js
        .get_stream(names.name(stream))
        .await
        .map_err(|e| failed(e.into()))?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: names.subject(filter),
            deliver_policy: from,
            // Pulls of 4 s with a heartbeat every 2 s: a lost server is noticed after two
            // missed heartbeats, within about 8 s (the defaults, 30 s and 15 s, take a minute).
            max_expires: Duration::from_secs(4),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(e.into()))?
        .messages()
        .await
        .map_err(|e| failed(e.into()))?;
    // After a first missed heartbeat (a restarted nats-server) async-nats's ordered consumer
    // answers Pending without arranging to be polled again; a tick polls it again, so it goes on
    // to recreate itself (without it, `make chaos` saw the outcomes stall for 100 s).
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((None, ()))
    });
    Ok(futures::stream::select(ordered.map(Some), ticks)
        .filter_map(std::future::ready)
        .boxed())
}

/// A followed stream's messages, as [`follow`] gives them.
pub type Followed =
    futures::stream::BoxStream<'static, Result<jetstream::Message, consumer::pull::OrderedError>>;
