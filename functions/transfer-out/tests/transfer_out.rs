//! `transfer-out` against the real NATS, PostgreSQL and Redis: the pending event and the
//! provider's request, every rejection of CONTRACT §4, and concurrent transfers that race for one
//! balance over two replicas.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use testkit::commands::{deposit, transfer};
use testkit::{Received, TestEnv};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_debits_main_and_asks_its_provider_once() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let _transfer = env.spawn("transfer-out", &[]);
    let balance = env.spawn("balance", &[]);
    let mut events = env.events().await;
    let mut requests = env.provider_requests().await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-1", "u-1", "100", "USD")],
    )
    .await;

    env.publish_many(vec![transfer("t-1", "u-1", "alpha", "30.5", "USD")])
        .await;
    let e = events.by_id("transfer:t-1:pending", T).await;
    assert_eq!(e.subject, env.subject("wallet.events.transfer.pending"));
    assert_eq!(
        e.without_at(),
        json!({"schema_version": 1, "id": "t-1", "entity": "transfer", "status": "pending", "user_id": "u-1",
               "currency": "USD", "amount": "30.50", "balance": "69.50", "reason": null,
               "provider": "alpha"})
    );
    let r = requests.by_id("t-1", T).await;
    // On the user's partition, which the adapter's ack echoes.
    assert_eq!(
        r.subject,
        env.subject(&wallet_runtime::partition::subject(
            "provider.alpha.transfer",
            "u-1"
        ))
    );
    assert_eq!(
        r.body,
        json!({"transfer_id": "t-1", "user_id": "u-1", "amount": "30.50", "currency": "USD"})
    );

    // The same command again, under another Nats-Msg-Id: no second debit, no second request.
    let mut again = transfer("t-1", "u-1", "alpha", "30.50", "USD");
    again.1 = "t-1-again".into();
    env.publish_many(vec![again]).await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-2", "u-1", "1", "USD")],
    )
    .await;
    env.ready(&balance).await;
    testkit::eventually(T, "main after the second deposit", || async {
        let b = env.balance("u-1").await;
        (b == json!({"user_id": "u-1", "wallets": [
            {"kind": "main", "currency": "USD", "balance": "70.50"},
            {"kind": "in_transit", "provider": "alpha", "currency": "USD", "balance": "30.50"}]}))
        .then_some(())
    })
    .await;
    assert_eq!(
        requests.seen.iter().filter(|r| r.msg_id == "t-1").count(),
        1
    );
    let pg = env.pg().await;
    let row = pg
        .query_one(
            "SELECT status, amount::text, checks, t.partition, c.partition
             FROM transfers t JOIN commands c ON (c.function, c.id) = ('transfer-out', t.id)
             WHERE t.id = 't-1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, String>(1), "30.5");
    assert_eq!(row.get::<_, i32>(2), 0);
    // The transfer and its remembered id are in u-1's partition, 2 (docs/sharding.md).
    assert_eq!(row.get::<_, i16>(3), 2);
    assert_eq!(row.get::<_, Option<i16>>(4), Some(2));
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");

    let show = wallet_ops::transfer::show(&env.config, "t-1")
        .await
        .unwrap();
    assert!(show.to_string().contains("status    pending"), "{show}");
    // The same as a script reads it (`walletctl transfer show --json`).
    let json = serde_json::to_value(&show).unwrap();
    assert_eq!(json["status"], "pending");
    assert_eq!(json["amount"], "30.50");
    assert_eq!(
        json["history"][0]["what"],
        "pending: main -30.50, in_transit:alpha +30.50"
    );

    // A transfer stored in another partition than its user's would not move with them.
    pg.execute("UPDATE transfers SET partition = 3 WHERE id = 't-1'", &[])
        .await
        .unwrap();
    let audit = env.audit().await.to_string();
    assert!(
        audit.contains(
            "FAIL  every transfer, withdrawal, daily amount and grant is in its user's partition"
        ),
        "{audit}"
    );
    assert!(
        audit.contains("transfer t-1 of u-1: partition 3, its user's 2"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_reason_in_the_contracts_order_moves_nothing() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let _transfer = env.spawn("transfer-out", &[]);
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-1", "u-1", "10", "USD")],
    )
    .await;

    let cases: Vec<(&str, serde_json::Value, serde_json::Value)> = vec![
        (
            "t-user",
            json!({"transfer_id": "t-user", "user_id": "bad user", "provider": "gamma", "amount": "1", "currency": "XXX"}),
            json!({"reason": "invalid_user_id", "user_id": null, "provider": null, "currency": null, "amount": null}),
        ),
        (
            "t-provider",
            json!({"transfer_id": "t-provider", "user_id": "u-1", "provider": "gamma", "amount": "1", "currency": "XXX"}),
            json!({"reason": "unknown_provider", "user_id": "u-1", "provider": null, "currency": null, "amount": null}),
        ),
        (
            "t-currency",
            json!({"transfer_id": "t-currency", "user_id": "u-1", "provider": "beta", "amount": "1", "currency": "XXX"}),
            json!({"reason": "unknown_currency", "user_id": "u-1", "provider": "beta", "currency": null, "amount": null}),
        ),
        (
            "t-amount",
            json!({"transfer_id": "t-amount", "user_id": "u-1", "provider": "beta", "amount": "1.001", "currency": "USD"}),
            json!({"reason": "invalid_amount", "user_id": "u-1", "provider": "beta", "currency": "USD", "amount": null}),
        ),
        (
            "t-funds",
            json!({"transfer_id": "t-funds", "user_id": "u-1", "provider": "beta", "amount": "10.01", "currency": "USD"}),
            json!({"reason": "insufficient_funds", "user_id": "u-1", "provider": "beta", "currency": "USD", "amount": "10.01"}),
        ),
        (
            "t-nouser",
            json!({"transfer_id": "t-nouser", "user_id": "u-none", "provider": "alpha", "amount": "1", "currency": "EUR"}),
            json!({"reason": "insufficient_funds", "user_id": "u-none", "provider": "alpha", "currency": "EUR", "amount": "1.00"}),
        ),
    ];
    let msgs = cases
        .iter()
        .map(|(id, body, _)| {
            (
                "wallet.transfer-out".to_owned(),
                id.to_string(),
                serde_json::to_vec(body).unwrap(),
            )
        })
        .collect();
    env.run_commands(&mut events, "transfer", msgs).await;
    for (id, _, expected) in &cases {
        let e = events.by_id(&format!("transfer:{id}:rejected"), T).await;
        let body = e.without_at();
        for (field, value) in expected.as_object().unwrap() {
            assert_eq!(&body[field], value, "{id}: {field} in {body}");
        }
        assert_eq!(body["balance"], json!(null), "{id}");
        assert_eq!(body["status"], json!("rejected"), "{id}");
    }
    // Not a command: dead-lettered `malformed`. The id of a remembered rejection with another
    // payload: `id_conflict`.
    env.publish_many(vec![
        (
            "wallet.transfer-out".into(),
            "m-1".into(),
            br#"{"user_id": "u-1"}"#.to_vec(),
        ),
        {
            let mut other = transfer("t-funds", "u-1", "beta", "1", "USD");
            other.1 = "t-funds-other".into(); // past JetStream's duplicate window
            other
        },
    ])
    .await;
    let mut dlq = env.dead_letters().await;
    dlq.count(2, T).await;
    let mut reasons: Vec<String> = dlq
        .seen
        .iter()
        .map(|r| r.header("Wallet-Dlq-Reason"))
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["id_conflict", "malformed"]);
    // No transfer recorded, no request published, no wallet but the funded main one.
    let pg = env.pg().await;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM transfers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert_eq!(env.stored("PROVIDER_REQUESTS").await, 0);
    assert_eq!(
        balance_rows(&env).await,
        vec![("u-1".to_owned(), "main".to_owned(), "10".to_owned())]
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}

/// Wallets that ever had a posting: (owner, kind, balance).
async fn balance_rows(env: &TestEnv) -> Vec<(String, String, String)> {
    env.pg()
        .await
        .query(
            "SELECT owner, kind, balance::text FROM accounts
             WHERE kind <> 'platform' AND version > 0 ORDER BY owner, kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_transfers_over_two_replicas_spend_exactly_the_balance() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-1", "u-1", "300", "USD")],
    )
    .await;
    // Both replicas up and bound before the burst, so that they race for the same wallet.
    let replicas = [
        env.spawn("transfer-out", &[("BATCH_MAX", "100")]),
        env.spawn("transfer-out", &[("BATCH_MAX", "100")]),
    ];
    for r in &replicas {
        env.ready(r).await;
    }
    let msgs = (0..1000)
        .map(|i| {
            let provider = if i % 2 == 0 { "alpha" } else { "beta" };
            transfer(&format!("t-{i}"), "u-1", provider, "1.00", "USD")
        })
        .collect();
    env.run_commands(&mut events, "transfer", msgs).await;

    let pending = events
        .seen
        .iter()
        .filter(|r| r.msg_id.ends_with(":pending"))
        .count();
    let rejected: Vec<&Received> = events
        .seen
        .iter()
        .filter(|r| r.msg_id.starts_with("transfer:") && r.msg_id.ends_with(":rejected"))
        .collect();
    assert_eq!(pending, 300);
    assert_eq!(rejected.len(), 700);
    assert!(
        rejected
            .iter()
            .all(|r| r.body["reason"] == "insufficient_funds")
    );
    // Each pending event's balance is a distinct step from 299.00 down to 0.00.
    let mut balances: Vec<String> = events
        .seen
        .iter()
        .filter(|r| r.msg_id.ends_with(":pending"))
        .map(|r| r.body["balance"].as_str().unwrap().to_owned())
        .collect();
    balances.sort_by_key(|b| b.parse::<rust_decimal::Decimal>().unwrap());
    balances.dedup();
    assert_eq!(balances.len(), 300);
    assert_eq!(balances[0], "0.00");
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::ZERO
    );
    let in_transit: rust_decimal::Decimal = env
        .pg()
        .await
        .query_one(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE owner = 'u-1' AND kind = 'in_transit'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_transit, rust_decimal::Decimal::from(300));
    let mut requests = env.provider_requests().await;
    requests.count(300, T).await;
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_a_transfer_in_takes_while_the_batch_is_decided_is_rejected_and_moves_nothing() {
    let (env, mut events, _procs) = TestEnv::funded(&["transfer-out"], &[], 1, "100").await;
    // A transfer in records `t-race` and has not committed: transfer-out's look-up of taken ids
    // cannot see it, and its own insert of the id waits for that transaction.
    let transfer_in = env.pg().await;
    transfer_in
        .batch_execute(
            "BEGIN;
             INSERT INTO transfers
                 (id, user_id, provider, currency, amount, partition, direction, next_check_at)
             VALUES ('t-race', 'u-0', 'alpha', 'USD', NULL, wallet_partition('u-0'), 'in',
                     now() + interval '1 hour')",
        )
        .await
        .unwrap();
    env.publish_many(vec![transfer("t-race", "u-0", "alpha", "10", "USD")])
        .await;
    let pg = env.pg().await;
    testkit::eventually(
        T,
        "transfer-out's insert waiting for the transfer in",
        || async {
            let waiting: i64 = pg
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE '%INSERT INTO transfers%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (waiting == 1).then_some(())
        },
    )
    .await;
    transfer_in.batch_execute("COMMIT").await.unwrap();
    // The batch that had debited `main` is decided again, and the id is now taken.
    let e = events.by_id("transfer:t-race:rejected", T).await;
    assert_eq!(e.body["reason"], json!("transfer_exists"));
    assert_eq!(e.body["balance"], json!(null));
    assert_eq!(
        balance_rows(&env).await,
        vec![("u-0".to_owned(), "main".to_owned(), "100".to_owned())]
    );
    let direction: String = pg
        .query_one("SELECT direction FROM transfers WHERE id = 't-race'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(direction, "in");
    assert_eq!(env.stored("PROVIDER_REQUESTS").await, 0);
    assert_eq!(env.stored("DLQ").await, 0);
}
