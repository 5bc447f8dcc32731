//! The partition of a user, computed here, against the one a real nats-server computes in a
//! subject mapping (`{{partition(256,1)}}`): the promise of `wallet_runtime::partition` is that
//! a client, a function and a server-side mapping agree for every user, on every server the
//! project supports (Debian's 2.9 and the pinned current one).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use testkit::{PrivateNats, pinned_nats_server};
use wallet_runtime::partition::{PARTITIONS, Partition};

const MAPPING: &str = r#"mappings { "part.*": "mapped.{{partition(256,1)}}.{{wildcard(1)}}" }"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_user_is_in_the_partition_debians_nats_server_maps_it_to() {
    agrees_with(PrivateNats::with_config(|_| MAPPING.to_owned())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_user_is_in_the_partition_the_pinned_nats_server_maps_it_to() {
    agrees_with(PrivateNats::of(pinned_nats_server(), |_| {
        MAPPING.to_owned()
    }))
    .await;
}

async fn agrees_with(nats: PrivateNats) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut mapped = client.subscribe("mapped.>").await.unwrap();

    // The shapes of user ids clients use: sequences, prefixed numbers, UUIDs, odd characters (one
    // token each: a dot would split it, which is why subjects will carry the partition instead).
    let users: Vec<String> = (0..1000)
        .map(|i| format!("u-{i}"))
        .chain((0..500).map(|i| format!("player:{}", i * 7919)))
        .chain((0..500).map(|_| uuid::Uuid::new_v4().to_string()))
        .chain(["a".into(), "x@example".into(), "Z_9-~+".into()])
        .collect();
    for u in &users {
        client
            .publish(format!("part.{u}"), Vec::new().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let mut by_server = HashMap::new();
    while by_server.len() < users.len() {
        let m = tokio::time::timeout(Duration::from_secs(20), mapped.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {} mapped within 20 s", by_server.len(), users.len()))
            .unwrap();
        let (partition, user) = m
            .subject
            .strip_prefix("mapped.")
            .and_then(|rest| rest.split_once('.'))
            .unwrap();
        by_server.insert(user.to_owned(), partition.parse::<u16>().unwrap());
    }
    for u in &users {
        assert_eq!(by_server[u], Partition::of(u).get(), "{u}");
    }
    // And they spread: a hash that put everyone in a few partitions would pass the above.
    let used: std::collections::HashSet<_> = by_server.values().collect();
    assert!(
        used.len() > usize::from(PARTITIONS) * 9 / 10,
        "{} used",
        used.len()
    );
}
