//! `provider-ack` and the transfer sweeper against the real NATS, PostgreSQL and Redis: every
//! ack row of CONTRACT §5, status queries and the `stuck` event, a crash with acks in flight, and
//! whole transfers against `walletctl provider-sim` with faults.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::json;
use testkit::Received;
use testkit::commands::{ack, transfer};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn accepted_completes_rejected_refunds_repeats_change_nothing_and_the_rest_is_dead_lettered()
{
    let (env, mut events, _procs) = funded(&[], 1, "100").await;
    let _ack = env.spawn("provider-ack", &[]);
    let balance = env.spawn("balance", &[]);
    env.run_commands(
        &mut events,
        "transfer",
        vec![
            transfer("t-1", "u-0", "alpha", "30", "USD"),
            transfer("t-2", "u-0", "alpha", "20", "USD"),
        ],
    )
    .await;

    // t-2's on its user's partition, as an adapter answers a request that named it.
    let mut on_partition = ack("alpha", "t-2", "rejected");
    on_partition.0 = wallet_runtime::partition::subject(&on_partition.0, "u-0");
    env.publish_many(vec![ack("alpha", "t-1", "accepted"), on_partition])
        .await;
    let done = events.by_id("transfer:t-1:completed", T).await;
    assert_eq!(
        done.subject,
        env.subject("wallet.events.transfer.completed")
    );
    assert_eq!(
        done.without_at(),
        json!({"schema_version": 1, "id": "t-1", "entity": "transfer", "status": "completed", "user_id": "u-0",
               "currency": "USD", "amount": "30.00", "balance": "30.00", "reason": null,
               "provider": "alpha"})
    );
    let failed = events.by_id("transfer:t-2:failed", T).await;
    assert_eq!(
        failed.without_at(),
        json!({"schema_version": 1, "id": "t-2", "entity": "transfer", "status": "failed", "user_id": "u-0",
               "currency": "USD", "amount": "20.00", "balance": "70.00", "reason": null,
               "provider": "alpha"})
    );
    env.ready(&balance).await;
    assert_eq!(
        env.balance("u-0").await,
        json!({"user_id": "u-0", "wallets": [
            {"kind": "main", "currency": "USD", "balance": "70.00"},
            {"kind": "game", "provider": "alpha", "currency": "USD", "balance": "30.00"},
            {"kind": "in_transit", "provider": "alpha", "currency": "USD", "balance": "0.00"}]})
    );

    // A repeat under another Nats-Msg-Id and provider_ref: nothing. A contradiction, an ack from
    // another provider, and a contradiction of a failed transfer: dead letters.
    let mut repeat = ack("alpha", "t-1", "accepted");
    repeat.1 = "alpha:t-1:accepted:again".into();
    repeat.2 = serde_json::to_vec(
        &json!({"transfer_id": "t-1", "status": "accepted", "provider_ref": "other"}),
    )
    .unwrap();
    env.publish_many(vec![
        repeat,
        ack("alpha", "t-1", "rejected"),
        ack("beta", "t-1", "accepted"),
        ack("alpha", "t-2", "accepted"),
    ])
    .await;
    let mut reasons = dlq_reasons(&env, 3).await;
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("alpha:t-1:rejected".to_owned(), "ack_conflict".to_owned()),
            ("alpha:t-2:accepted".to_owned(), "ack_conflict".to_owned()),
            (
                "beta:t-1:accepted".to_owned(),
                "provider_mismatch".to_owned()
            ),
        ]
    );
    // Malformed: an unknown status, no transfer id.
    env.publish_many(vec![
        (
            "provider.alpha.ack".into(),
            "m-1".into(),
            br#"{"transfer_id": "t-1", "status": "maybe"}"#.to_vec(),
        ),
        (
            "provider.alpha.ack".into(),
            "m-2".into(),
            br#"{"status": "accepted"}"#.to_vec(),
        ),
    ])
    .await;
    let reasons = dlq_reasons(&env, 5).await;
    assert_eq!(reasons.iter().filter(|(_, r)| r == "malformed").count(), 2);
    assert_eq!(
        events
            .seen
            .iter()
            .filter(|r| r.msg_id.starts_with("transfer:t-1:"))
            .count(),
        2,
        "pending and completed only"
    );
    assert_eq!(
        env.stored_balance("u-0", "main", "USD").await,
        Decimal::from(70)
    );
    let pg = env.pg().await;
    let row = pg
        .query_one(
            "SELECT status, provider_ref FROM transfers WHERE id = 't-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("completed".into(), "ref-t-1".into())
    );
    // An ack names no user: it is remembered in the partition its subject named, or in none.
    let remembered: Vec<(String, Option<i16>)> = pg
        .query(
            "SELECT id, partition FROM commands WHERE function = 'provider-ack' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let u0 = wallet_runtime::partition::Partition::of("u-0").as_smallint();
    assert_eq!(
        remembered,
        [
            ("alpha:t-1:accepted".to_owned(), None),
            ("alpha:t-2:rejected".to_owned(), Some(u0))
        ]
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    let show = wallet_ops::transfer::show(&env.config, "t-1")
        .await
        .unwrap();
    assert_eq!(show.status, "completed");
    assert!(
        show.history
            .iter()
            .any(|h| h.what == "completed: in_transit:alpha -30.00, game:alpha +30.00"),
        "{show}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_before_its_transfer_is_retried_and_an_unknown_one_dead_lettered_after_the_window() {
    let window = Duration::from_secs(6);
    let extra = [("UNKNOWN_TRANSFER_RETRY", "6s")];
    let (env, mut events, _procs) = funded(&extra, 1, "10").await;
    let _ack = env.spawn("provider-ack", &extra);
    let started = Instant::now();
    env.publish_many(vec![
        ack("alpha", "t-early", "accepted"),
        ack("alpha", "t-never", "accepted"),
    ])
    .await;
    // The first ack waits for its transfer, which comes a little later.
    tokio::time::sleep(Duration::from_millis(1500)).await; // lets the ack be refused at least once
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-early", "u-0", "alpha", "4", "USD")],
    )
    .await;
    events.by_id("transfer:t-early:completed", T).await;

    let mut dlq = env.dead_letters().await;
    let letter = dlq.by_id("dlq:provider-ack:2", T).await;
    assert!(
        started.elapsed() >= window,
        "dead-lettered after {:?}",
        started.elapsed()
    );
    assert_eq!(letter.header("Wallet-Dlq-Reason"), "unknown_transfer");
    assert!(
        letter
            .header("Wallet-Dlq-Deliveries")
            .parse::<u32>()
            .unwrap()
            > 2
    );
    assert_eq!(dlq.seen.len(), 1);
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_ack_is_recovered_through_the_status_query() {
    let extra = [("TRANSFER_ACK_TIMEOUT", "500ms")];
    let (env, mut events, _procs) = funded(&extra, 1, "10").await;
    let _ack = env.spawn("provider-ack", &extra);
    let _sim = env.spawn_args(
        "walletctl",
        &[
            "provider-sim",
            "--drop",
            "1",
            "--accept",
            "1",
            "--latency",
            "1ms",
        ],
        &[],
    );
    let mut requests = env.provider_requests().await;
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-1", "u-0", "beta", "4", "USD")],
    )
    .await;
    let done = events.by_id("transfer:t-1:completed", T).await;
    assert_eq!(done.body["balance"], "4.00");
    let query = requests.by_id("t-1:status:1", T).await;
    // On the user's partition, as the request went.
    assert_eq!(
        query.subject,
        env.subject(&wallet_runtime::partition::subject(
            "provider.beta.status",
            "u-0"
        ))
    );
    assert_eq!(query.body, json!({"transfer_id": "t-1"}));
    let pg = env.pg().await;
    let row = pg
        .query_one(
            "SELECT status, checks, next_check_at IS NULL FROM transfers WHERE id = 't-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert!(row.get::<_, i32>(1) >= 1);
    assert!(row.get::<_, bool>(2));
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_without_answer_is_queried_with_backoff_and_reported_stuck_once() {
    let extra = [
        ("TRANSFER_ACK_TIMEOUT", "200ms"),
        ("TRANSFER_STUCK_AFTER", "1500ms"),
    ];
    let (env, mut events, _procs) = funded(&extra, 1, "10").await;
    // Two sweepers: each due transfer is claimed by one of them.
    let _acks = [
        env.spawn("provider-ack", &extra),
        env.spawn("provider-ack", &extra),
    ];
    let mut requests = env.provider_requests().await;
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-1", "u-0", "alpha", "4", "USD")],
    )
    .await;
    events.by_id("transfer:t-1:stuck", T).await;
    // Queries 1..5 at 0.2, 0.6, 1.4 (then capped by the stuck time 1.5), 1.5, 3.1 s: wait for
    // the fifth, well after the stuck event, then count.
    requests.by_id("t-1:status:5", T).await;
    let stuck: Vec<&Received> = events
        .seen
        .iter()
        .filter(|r| r.msg_id.ends_with(":stuck"))
        .collect();
    assert_eq!(stuck.len(), 1);
    assert_eq!(
        stuck[0].without_at(),
        json!({"schema_version": 1, "id": "t-1", "entity": "transfer", "status": "stuck", "user_id": "u-0",
               "currency": "USD", "amount": "4.00", "balance": null, "reason": null,
               "provider": "alpha"})
    );
    let queries: Vec<&Received> = requests
        .seen
        .iter()
        .filter(|r| r.msg_id.contains(":status:"))
        .collect();
    let numbers: Vec<&str> = queries
        .iter()
        .map(|r| r.msg_id.rsplit(':').next().unwrap())
        .collect();
    assert_eq!(numbers, ["1", "2", "3", "4", "5"]);
    let pg = env.pg().await;
    let checks: i32 = pg
        .query_one("SELECT checks FROM transfers WHERE id = 't-1'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        (5..=6).contains(&checks),
        "{checks} status queries recorded"
    );
    // The money waits in transit for the provider's word, which settles it.
    assert_eq!(
        env.stored_balance("u-0", "in_transit", "USD").await,
        Decimal::from(4)
    );
    env.publish_many(vec![ack("alpha", "t-1", "rejected")])
        .await;
    let failed = events.by_id("transfer:t-1:failed", T).await;
    assert_eq!(failed.body["balance"], "10.00");
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    let show = wallet_ops::transfer::show(&env.config, "t-1")
        .await
        .unwrap()
        .to_string();
    assert!(show.contains("stuck event published"), "{show}");
}

/// The trace id of a message's `traceparent` header (W3C: `00-<trace>-<span>-<flags>`).
fn trace_id(r: &Received) -> String {
    let traceparent = r.header("traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{traceparent}");
    parts[1].to_owned()
}

/// One trace follows a transfer: the command's `traceparent` is on its `pending` event, on the
/// request to the provider, on the provider's ack (the simulator continues it, as an adapter
/// should) and on the `completed` event; each hop is a span of its own. A command without one
/// starts a trace, which its events share.
#[tokio::test(flavor = "multi_thread")]
async fn one_trace_follows_a_transfer_from_command_to_provider_to_ack() {
    let (env, mut events, _procs) = funded(&[], 1, "100").await;
    let _ack = env.spawn("provider-ack", &[]);
    let _sim = env.spawn_args(
        "walletctl",
        &["provider-sim", "--accept", "1", "--latency", "1ms"],
        &[],
    );
    let mut requests = env.provider_requests().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace}-00f067aa0ba902b7-01");
    let (subject, id, payload) = transfer("t-1", "u-0", "alpha", "30", "USD");
    let headers = [
        ("Nats-Msg-Id", id.as_str()),
        ("traceparent", parent.as_str()),
    ];
    env.publish_with(&subject, &headers, payload).await;

    let pending = events.by_id("transfer:t-1:pending", T).await;
    let request = requests.by_id("t-1", T).await;
    // The ack is not read here (its stream is a work queue): `completed`, decided from it, is
    // in the transfer's trace only if the ack carried it.
    let completed = events.by_id("transfer:t-1:completed", T).await;
    for hop in [&pending, &request, &completed] {
        assert_eq!(trace_id(hop), trace, "{}", hop.subject);
    }
    // A span of its own per command, not the caller's span passed along.
    assert_ne!(pending.header("traceparent"), parent);
    assert_eq!(
        pending.header("traceparent"),
        request.header("traceparent"),
        "one command, one span"
    );
    assert_ne!(
        completed.header("traceparent"),
        pending.header("traceparent")
    );

    // Without a traceparent (run_commands publishes none): a new trace, shared by its events.
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-2", "u-0", "alpha", "5", "USD")],
    )
    .await;
    let pending = events.by_id("transfer:t-2:pending", T).await;
    let completed = events.by_id("transfer:t-2:completed", T).await;
    assert_eq!(trace_id(&pending), trace_id(&completed));
    assert_ne!(trace_id(&pending), trace);
}
