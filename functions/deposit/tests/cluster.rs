//! `deposit` on the production shape: a 3-node JetStream cluster of the pinned current
//! nats-server, R3 streams, fsync on every write; then the same under leader changes and a node
//! killed with SIGKILL and restarted.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use testkit::{PrivateCluster, TestEnv, completed};

const T: Duration = Duration::from_secs(120);

/// `n` deposits of 1.25 for 20 users, queued before any function runs.
async fn queue_deposits(env: &TestEnv, prefix: &str, n: usize) {
    let msgs = (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            let (_, _, body) =
                testkit::commands::deposit(&id, &format!("u-{}", i % 20), "1.25", "USD");
            ("wallet.deposit".to_owned(), id, body)
        })
        .collect();
    env.publish_many(msgs).await;
}

/// Every deposit applied once: each user's balance is its share of the deposits, nothing is
/// left pending or dead-lettered, the audit is clean.
async fn each_applied_once(env: &TestEnv, n: usize) {
    env.drained("deposit").await;
    for u in 0..20 {
        let deposits = (n / 20 + usize::from(u < n % 20)) as i64;
        assert_eq!(
            env.stored_balance(&format!("u-{u}"), "main", "USD").await,
            rust_decimal::Decimal::new(125 * deposits, 2),
            "u-{u}"
        );
    }
    let dlq = env
        .js
        .get_stream(env.config.names.name("DLQ"))
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(dlq.state.messages, 0, "nothing is dead-lettered");
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

/// What the stream, the consumer and each node said when deposits stopped coming: which side
/// stalled (the consumer delivering nothing, the functions, or the events reader).
async fn explain(env: &TestEnv, cluster: &PrivateCluster) {
    let (stream, consumer) = (
        env.config.names.name("DEPOSITS"),
        env.config.names.name("deposit"),
    );
    match env.js.get_stream(&stream).await {
        Ok(mut s) => eprintln!("{stream}: {:?}", s.info().await.map(|i| i.state.clone())),
        Err(e) => eprintln!("{stream}: {e}"),
    }
    let info = async {
        let mut c: async_nats::jetstream::consumer::PullConsumer = env
            .js
            .get_stream(&stream)
            .await?
            .get_consumer(&consumer)
            .await?;
        let i = c.info().await?.clone();
        Ok::<_, async_nats::Error>(format!(
            "pending {}, ack pending {}, waiting pulls {}, redelivered {}, delivered {:?}, ack floor {:?}, leader {:?}",
            i.num_pending,
            i.num_ack_pending,
            i.num_waiting,
            i.num_redelivered,
            i.delivered,
            i.ack_floor,
            i.cluster.as_ref().and_then(|c| c.leader.clone())
        ))
    };
    eprintln!("{consumer}: {:?}", info.await);
    let done: i64 = env
        .pg()
        .await
        .query_one(
            "SELECT count(*) FROM commands WHERE function = 'deposit'",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1);
    eprintln!("deposits decided in PostgreSQL: {done}");
    for i in 1..3 {
        eprintln!(
            "node {i}: {:?}",
            testkit::stream_seqs(cluster.http_port(i)).await
        );
    }
}

/// A replicated consumer sends a message only once the cluster agreed on its delivery, and its
/// `409 Batch Completed` status at once: one-shot pulls ended at the status and dropped the late
/// messages, and about 1.5 % of deposits were redelivered into the same race until the test
/// gave up. Every one must complete.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_three_node_cluster_with_r3_streams_every_deposit_completes_once() {
    let cluster = PrivateCluster::start().await;
    let env = TestEnv::with_env(&[("NATS_URL", &cluster.url()), ("STREAM_REPLICAS", "3")]).await;
    let stream = env.js.get_stream(env.config.names.name("DEPOSITS")).await;
    assert_eq!(stream.unwrap().cached_info().config.num_replicas, 3);
    let mut events = env.events().await;
    queue_deposits(&env, "c", 3000).await;
    let a = env.spawn("deposit", &[("BATCH_MAX", "100")]);
    let b = env.spawn("deposit", &[("BATCH_MAX", "100")]);
    env.ready(&a).await;
    env.ready(&b).await;
    events
        .until(T, "3000 completed deposits", |s| completed(s) >= 3000)
        .await;
    each_applied_once(&env, 3000).await;
}

/// While the functions work through a backlog: the stream's and the consumer's leaders are
/// asked to step down, then one node is killed with SIGKILL and restarted on its store. Nothing
/// is lost, nothing is applied twice, nothing transient is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn leader_changes_and_a_killed_node_lose_and_repeat_nothing() {
    let cluster = PrivateCluster::start().await;
    let env = TestEnv::with_env(&[("NATS_URL", &cluster.url()), ("STREAM_REPLICAS", "3")]).await;
    let mut events = env.events().await;
    queue_deposits(&env, "f", 4000).await;
    // Small batches, so that the faults come while most of the backlog is still there.
    let a = env.spawn(
        "deposit",
        &[("BATCH_MAX", "20"), ("BATCHES_IN_FLIGHT", "1")],
    );
    let b = env.spawn(
        "deposit",
        &[("BATCH_MAX", "20"), ("BATCHES_IN_FLIGHT", "1")],
    );
    env.ready(&a).await;
    env.ready(&b).await;
    events
        .until(T, "some deposits done", |s| completed(s) >= 200)
        .await;
    let (stream, consumer) = (
        env.config.names.name("DEPOSITS"),
        env.config.names.name("deposit"),
    );
    for api in [
        format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
        format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"),
    ] {
        let reply = env.nats.request(api.clone(), "".into()).await.unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["success"], true, "{api}: {reply}");
    }
    events
        .until(T, "deposits after the step-downs", |s| completed(s) >= 1000)
        .await;
    cluster.kill_node(0);
    // Events are read on through the kill: the follower replaces a consumer the dead node held
    // (the ordered consumer it replaced stopped here in CI, at 1,163 of 4,000 stored events).
    let down = events
        .try_until(T, "deposits with a node down", |s| completed(s) >= 1800)
        .await
        .map(|_| ());
    if let Err(e) = down {
        explain(&env, &cluster).await;
        panic!("{e}");
    }
    cluster.start_node(0);
    assert!(
        completed(&events.seen) < 4000,
        "the faults came too late to prove anything"
    );
    events
        .until(T, "4000 completed deposits", |s| completed(s) >= 4000)
        .await;
    each_applied_once(&env, 4000).await;
}
