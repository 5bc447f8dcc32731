//! The helper's own promises, where a broken one would let other tests pass or fail for nothing.

#![allow(clippy::unwrap_used)]

use testkit::TestEnv;

/// A process that could not start (here a bad setting; in CI once its HTTP port taken) must not
/// be waited for as if it were starting, nor taken for another process answering on its port.
#[tokio::test(flavor = "multi_thread")]
#[should_panic(expected = "exited before it was ready")]
async fn ready_fails_at_once_for_a_process_that_exited() {
    let env = TestEnv::new().await;
    let p = env.spawn("deposit", &[("BATCH_MAX", "0")]);
    env.ready(&p).await;
}

/// What a rolling restart (chaos) waits for before it stops the next node: the restarted node
/// must hold every message of its R3 stream, or the next stop would leave the stream with one
/// current copy. `/healthz` alone answered 200 with the node 20,000 messages behind: this test
/// fails when `wait_current` trusts it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_cluster_node_is_current_only_once_its_streams_caught_up() {
    use std::time::Duration;
    const BEFORE: u64 = 100;
    const WHILE_DOWN: u64 = 20_000;

    let cluster = testkit::PrivateCluster::start().await;
    // Node 1 stays up throughout.
    let nats = async_nats::connect(format!("nats://127.0.0.1:{}", cluster.client_port(1)))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HZ".into(),
        subjects: vec!["hz".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let publish = |n: u64| {
        let js = js.clone();
        async move {
            let payload = bytes::Bytes::from(vec![b'x'; 1024]);
            let mut acks = Vec::new();
            for _ in 0..n {
                acks.push(js.publish("hz", payload.clone()).await.unwrap());
                if acks.len() == 500 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                }
            }
            for a in acks {
                a.await.unwrap();
            }
        }
    };
    // A publish finds no responder while the stream has no leader: just created, or its leader
    // just killed.
    let leader = || async {
        testkit::eventually(Duration::from_secs(60), "a leader of HZ", || async {
            let info = js.get_stream("HZ").await.ok()?.info().await.ok()?.clone();
            info.cluster?.leader.filter(|l| !l.is_empty())
        })
        .await
    };
    leader().await;
    publish(BEFORE).await;
    assert!(cluster.wait_current(0, Duration::from_secs(30)).await);
    cluster.kill_node(0);
    leader().await;
    publish(WHILE_DOWN).await;
    let total = BEFORE + WHILE_DOWN;

    cluster.start_node(0);
    let port = cluster.http_port(0);
    assert!(
        cluster.wait_current(0, Duration::from_secs(60)).await,
        "node 0 not current 60 s after its restart"
    );
    let held = testkit::stream_seqs(port).await.unwrap_or_default();
    assert_eq!(
        held.get("HZ"),
        Some(&total),
        "current with the stream behind"
    );
}
