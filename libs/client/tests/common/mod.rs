//! What both follower tests do: publish numbered messages, read them back, compare.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use wallet_client::Followed;

pub const STREAM: &str = "F";

/// A stream on `f.>` and `g.>`, with `replicas` copies.
pub async fn stream(js: &jetstream::Context, replicas: usize) {
    testkit::eventually(Duration::from_secs(60), "the stream created", || async {
        js.create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["f.>".into(), "g.>".into()],
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .ok()
    })
    .await;
}

/// Follows `f.>` from now on.
pub async fn follow(js: &jetstream::Context) -> Followed {
    let names = wallet_runtime::names::Names::new("").unwrap();
    wallet_client::follow(js, &names, STREAM, "f.>", consumer::DeliverPolicy::New)
        .await
        .unwrap()
}

/// Publishes messages `range` on `f.<i>`, each with a `g.<i>` beside it that the follower must
/// not see; every publish is retried under its id until stored, through any outage.
pub async fn publish(js: &jetstream::Context, range: std::ops::Range<u64>) {
    let messages = range.flat_map(|i| {
        ["f", "g"].map(|s| {
            (
                format!("{s}.{i}"),
                format!("{s}{i}"),
                i.to_string().into_bytes(),
            )
        })
    });
    wallet_client::publish_all(js, messages).await.unwrap();
}

/// Reads until `seen` holds `n` messages (or panics after `limit`), then asserts they are `0..n`
/// in stream order (the publishes overlap, so that is not `0..n`'s order): a message lost,
/// repeated or out of order fails.
pub async fn read(followed: &mut Followed, seen: &mut Vec<(u64, u64)>, n: usize, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while seen.len() < n {
        let Ok(m) = tokio::time::timeout_at(deadline, followed.next()).await else {
            panic!("{} of {n} messages within {limit:?}", seen.len());
        };
        let m = m.expect("the follower ended");
        assert!(
            m.subject.starts_with("f."),
            "{} is not on the filter",
            m.subject
        );
        let sequence = m.info().unwrap().stream_sequence;
        seen.push((
            sequence,
            std::str::from_utf8(&m.payload).unwrap().parse().unwrap(),
        ));
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "not in stream order: {seen:?}"
    );
    let mut numbers: Vec<u64> = seen.iter().map(|&(_, i)| i).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..n as u64).collect::<Vec<_>>());
}

/// The follower's consumers on the stream (one, unless it is replacing it).
pub async fn consumers(js: &jetstream::Context) -> Vec<consumer::Info> {
    let stream = js.get_stream(STREAM).await.unwrap();
    stream
        .consumers()
        .filter_map(|c| async { c.ok() })
        .collect()
        .await
}
