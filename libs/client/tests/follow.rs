//! A follower hands on every message on its filter from its starting point, once and in order,
//! through what it meets on one server: its consumer deleted under it, the server restarted.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_reads_on_through_a_deleted_consumer_and_a_restarted_server() {
    let nats = testkit::PrivateNats::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    common::stream(&js, 1).await;
    // Stored before the follower starts from "new": never seen.
    common::publish(&js, 5000..5100).await;
    let mut followed = common::follow(&js).await;
    let mut seen = Vec::new();
    let limit = Duration::from_secs(60);

    common::publish(&js, 0..500).await;
    common::read(&mut followed, &mut seen, 500, limit).await;

    for c in common::consumers(&js).await {
        js.delete_consumer_from_stream(&c.name, common::STREAM)
            .await
            .unwrap();
    }
    common::publish(&js, 500..1000).await;
    common::read(&mut followed, &mut seen, 1000, limit).await;

    nats.stop();
    nats.start_again();
    common::publish(&js, 1000..1500).await;
    common::read(&mut followed, &mut seen, 1500, limit).await;
}
