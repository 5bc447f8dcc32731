//! A follower on a 3-node cluster reads on when the node that holds its consumer is killed. The
//! ordered consumer it replaces stopped there, in a cluster test, at 1,163 of 4,000 events.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_reads_on_when_the_node_holding_its_consumer_is_killed() {
    let cluster = testkit::PrivateCluster::start().await;
    let url = cluster.url();
    let servers: Vec<&str> = url.split(',').collect();
    let js = async_nats::jetstream::new(async_nats::connect(servers.as_slice()).await.unwrap());
    common::stream(&js, 3).await;
    let mut followed = common::follow(&js).await;
    let mut seen = Vec::new();

    common::publish(&js, 0..1000).await;
    common::read(&mut followed, &mut seen, 1000, Duration::from_secs(60)).await;

    let consumers = common::consumers(&js).await;
    assert_eq!(consumers.len(), 1, "one follower, one consumer");
    let host = consumers[0]
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the consumer's node");
    let node: usize = host.trim_start_matches('n').parse().unwrap();
    cluster.kill_node(node);

    // Published while the stream may be electing a leader: retried until stored.
    common::publish(&js, 1000..3000).await;
    common::read(&mut followed, &mut seen, 3000, Duration::from_secs(90)).await;
}
