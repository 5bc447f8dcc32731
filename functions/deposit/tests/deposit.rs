//! `deposit` against the real NATS, PostgreSQL and Redis: every row of the CONTRACT §2 outcome
//! table, the event fields, read-your-writes, replicas and a crash.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use testkit::TestEnv;

const T: Duration = Duration::from_secs(60);

fn deposit(id: &str, user: &str, amount: &str, currency: &str) -> Vec<u8> {
    testkit::commands::deposit(id, user, amount, currency).2
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_completes_with_the_contract_event_and_reads_back() {
    let env = TestEnv::new().await;
    let deposit_proc = env.spawn("deposit", &[]);
    let balance = env.spawn("balance", &[]);
    let mut events = env.events().await;

    env.publish(
        "wallet.deposit",
        "d-1",
        deposit("d-1", "u-7", "10.5", "USD"),
    )
    .await;
    let e = events.by_id("deposit:d-1:completed", T).await;
    assert_eq!(e.subject, env.subject("wallet.events.deposit.completed"));
    let mut body = e.body.clone();
    let at = body.as_object_mut().unwrap().remove("at").unwrap();
    assert_eq!(
        body,
        json!({"schema_version": 1, "id": "d-1", "entity": "deposit", "status": "completed", "user_id": "u-7",
               "currency": "USD", "amount": "10.50", "balance": "10.50", "reason": null})
    );
    let at = at.as_str().unwrap();
    assert!(
        at.ends_with('Z') && at.len() == "2026-11-22T10:00:00.123Z".len(),
        "{at}"
    );

    // Nobody has read u-7 yet: the write-through created no hash.
    assert_eq!(env.cached_ttl("u-7").await, -2, "a hash nobody read");

    env.ready(&balance).await;
    assert_eq!(
        env.balance("u-7").await,
        json!({"user_id": "u-7", "wallets": [{"kind": "main", "currency": "USD", "balance": "10.50"}]})
    );
    // The read filled u-7's hash from PostgreSQL, with a TTL.
    assert_eq!(
        env.cached("u-7", "main:USD").await.as_deref(),
        Some("1|10.50")
    );
    let ttl = env.cached_ttl("u-7").await;
    assert!((1..=86_400).contains(&ttl), "TTL {ttl}");

    // Read-your-writes: the cache now holds u-7; the next event's balance must be what we read.
    env.publish("wallet.deposit", "d-2", deposit("d-2", "u-7", "0.5", "USD"))
        .await;
    env.publish(
        "wallet.deposit",
        "d-3",
        deposit("d-3", "u-7", "1000", "VND"),
    )
    .await;
    let e = events.by_id("deposit:d-2:completed", T).await;
    assert_eq!(e.body["balance"], "11.00");
    let e = events.by_id("deposit:d-3:completed", T).await;
    assert_eq!(e.body["balance"], "1000");
    let ttl = env.cached_ttl("u-7").await;
    assert!((1..=86_400).contains(&ttl), "TTL {ttl}");
    assert_eq!(
        env.balance("u-7").await["wallets"],
        json!([{"kind": "main", "currency": "USD", "balance": "11.00"}, {"kind": "main", "currency": "VND", "balance": "1000"}])
    );

    assert_eq!(
        env.balance("nobody").await,
        json!({"user_id": "nobody", "wallets": []})
    );
    let bad = env
        .nats
        .request(
            env.subject("wallet.balance.get"),
            "{\"user_id\": \"a b\"}".into(),
        )
        .await
        .unwrap();
    let bad: Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(bad["error"]["code"], "invalid_user_id");
    let bad = env
        .nats
        .request(env.subject("wallet.balance.get"), "nope".into())
        .await
        .unwrap();
    let bad: Value = serde_json::from_slice(&bad.payload).unwrap();
    assert_eq!(bad["error"]["code"], "invalid_request");
    assert!(env.audit().await.ok());

    // Metrics: three commands from publication to commit; five requests, two errors by code,
    // two reads from PostgreSQL (u-7's first, nobody's) and one from the cache.
    assert_eq!(
        deposit_proc
            .metric("wallet_command_age_seconds_count")
            .await,
        3.0
    );
    testkit::eventually(
        Duration::from_secs(10),
        "five balance requests counted",
        || async { (balance.metric("wallet_requests_total").await == 5.0).then_some(()) },
    )
    .await;
    let text = balance.metrics().await;
    for line in [
        r#"wallet_requests_total{function="balance"} 5"#,
        r#"wallet_balance_errors_total{function="balance",code="invalid_user_id"} 1"#,
        r#"wallet_balance_errors_total{function="balance",code="invalid_request"} 1"#,
        r#"wallet_balance_cache_total{function="balance",result="miss"} 2"#,
        r#"wallet_balance_cache_total{function="balance",result="hit"} 1"#,
        r#"wallet_request_seconds_count{function="balance"} 5"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_fields_are_rejected_in_contract_order_and_change_nothing() {
    let env = TestEnv::new().await;
    let deposit_proc = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    // (id, payload, reason, the fields the rejection reports)
    let cases: Vec<(&str, Value, &str, Value)> = vec![
        (
            "r-1",
            json!({"deposit_id": "r-1", "amount": "1", "currency": "USD"}),
            "invalid_user_id",
            json!([null, null, null]),
        ),
        (
            "r-2",
            json!({"deposit_id": "r-2", "user_id": "a b", "amount": "x", "currency": "GBP"}),
            "invalid_user_id",
            json!([null, null, null]),
        ),
        (
            "r-3",
            json!({"deposit_id": "r-3", "user_id": 7, "amount": "1", "currency": "USD"}),
            "invalid_user_id",
            json!([null, null, null]),
        ),
        (
            "r-4",
            json!({"deposit_id": "r-4", "user_id": "u-1", "amount": "x", "currency": "GBP"}),
            "unknown_currency",
            json!(["u-1", null, null]),
        ),
        (
            "r-5",
            json!({"deposit_id": "r-5", "user_id": "u-1", "amount": "1"}),
            "unknown_currency",
            json!(["u-1", null, null]),
        ),
        (
            "r-6",
            json!({"deposit_id": "r-6", "user_id": "u-1", "amount": 10, "currency": "USD"}),
            "invalid_amount",
            json!(["u-1", "USD", null]),
        ),
        (
            "r-7",
            json!({"deposit_id": "r-7", "user_id": "u-1", "amount": "-1", "currency": "USD"}),
            "invalid_amount",
            json!(["u-1", "USD", null]),
        ),
        (
            "r-8",
            json!({"deposit_id": "r-8", "user_id": "u-1", "amount": "0", "currency": "USD"}),
            "invalid_amount",
            json!(["u-1", "USD", null]),
        ),
        (
            "r-9",
            json!({"deposit_id": "r-9", "user_id": "u-1", "amount": "1e3", "currency": "USD"}),
            "invalid_amount",
            json!(["u-1", "USD", null]),
        ),
        (
            "r-10",
            json!({"deposit_id": "r-10", "user_id": "u-1", "amount": "10.505", "currency": "USD"}),
            "invalid_amount",
            json!(["u-1", "USD", null]),
        ),
        (
            "r-11",
            json!({"deposit_id": "r-11", "user_id": "u-1", "amount": "1000000000000000", "currency": "USD"}),
            "invalid_amount",
            json!(["u-1", "USD", null]),
        ),
        (
            "r-12",
            json!({"deposit_id": "r-12", "user_id": "u-1", "amount": "1.5", "currency": "VND"}),
            "invalid_amount",
            json!(["u-1", "VND", null]),
        ),
        (
            "r-13",
            json!({"deposit_id": "r-13", "user_id": "u-1", "currency": "USD"}),
            "invalid_amount",
            json!(["u-1", "USD", null]),
        ),
    ];
    for (id, payload, _, _) in &cases {
        env.publish("wallet.deposit", id, serde_json::to_vec(payload).unwrap())
            .await;
    }
    for (id, _, reason, fields) in &cases {
        let e = events.by_id(&format!("deposit:{id}:rejected"), T).await;
        assert_eq!(e.subject, env.subject("wallet.events.deposit.rejected"));
        assert_eq!(e.body["reason"], *reason, "{id}");
        assert_eq!(
            json!([e.body["user_id"], e.body["currency"], e.body["amount"]]),
            *fields,
            "{id}"
        );
        assert_eq!(e.body["balance"], Value::Null);
    }
    let wallets: i64 = env
        .pg()
        .await
        .query_one("SELECT count(*) FROM accounts WHERE owner <> ''", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wallets, 0, "a rejection created a wallet");
    assert!(env.audit().await.ok());

    // Rejections are counted by reason; every metric carries its function and a help text, and
    // the outbox relay reports the backlog it found.
    let text = testkit::eventually(T, "the outbox backlog gauge", || async {
        let text = deposit_proc.metrics().await;
        text.contains("wallet_outbox_backlog{").then_some(text)
    })
    .await;
    for (reason, n) in [
        ("invalid_user_id", 3),
        ("unknown_currency", 2),
        ("invalid_amount", 8),
    ] {
        let line = format!(
            r#"wallet_commands_rejected_total{{function="deposit",reason="{reason}"}} {n}"#
        );
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    for sample in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(sample.contains(r#"function="deposit""#), "{sample}");
        let name = sample.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# HELP {base} ")),
            "{base} has no HELP text"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_commands_are_dead_lettered_with_their_headers_and_can_be_replayed() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let big = serde_json::to_vec(
        &json!({"deposit_id": "big", "user_id": "u", "amount": "1", "currency": "USD",
                                         "pad": "x".repeat(70 * 1024)}),
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("m-1", b"not json".to_vec()),
        ("m-2", b"[1, 2]".to_vec()),
        (
            "m-3",
            br#"{"user_id": "u", "amount": "1", "currency": "USD"}"#.to_vec(),
        ),
        (
            "m-4",
            br#"{"deposit_id": "a b", "user_id": "u", "amount": "1", "currency": "USD"}"#.to_vec(),
        ),
        (
            "m-5",
            br#"{"deposit_id": 42, "user_id": "u", "amount": "1", "currency": "USD"}"#.to_vec(),
        ),
        ("m-6", big),
    ];
    for (id, payload) in &cases {
        env.publish("wallet.deposit", id, payload.clone()).await;
    }
    let mut dlq = env.dead_letters().await;
    dlq.count(cases.len(), T).await;
    // Batches run concurrently (BATCHES_IN_FLIGHT): dead letters come in any order.
    for (id, payload) in &cases {
        let letter = dlq
            .seen
            .iter()
            .find(|l| l.header("Wallet-Dlq-Msg-Id") == *id)
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        assert_eq!(letter.header("Wallet-Dlq-Reason"), "malformed", "{id}");
        assert_eq!(letter.header("Wallet-Dlq-Function"), "deposit");
        assert_eq!(
            letter.header("Wallet-Dlq-Subject"),
            env.subject("wallet.deposit")
        );
        assert_eq!(letter.header("Wallet-Dlq-Msg-Id"), *id);
        assert_eq!(letter.header("Wallet-Dlq-Deliveries"), "1");
        let seq: u64 = letter.header("Wallet-Dlq-Stream-Seq").parse().unwrap();
        assert_eq!(letter.msg_id, format!("dlq:deposit:{seq}"));
        assert_eq!(letter.subject, env.subject("dlq.deposit"));
        assert_eq!(
            letter.payload.as_ref(),
            payload.as_slice(),
            "{id}: payload changed"
        );
    }
    let listed = wallet_ops::dlq::list(&env.config, Some("deposit"))
        .await
        .unwrap();
    assert_eq!(listed.len(), cases.len());
    assert!(env.audit().await.ok());

    // Replay: published again under a new Nats-Msg-Id, dead-lettered again (still malformed),
    // stored again with the new stream sequence; the replayed letter leaves the DLQ.
    let topology = testkit::topology();
    let replay =
        |id: &'static str| wallet_ops::dlq::replay(&env.config, &topology, "deposit", Some(id));
    assert_eq!(replay("m-1").await.unwrap().replayed, 1);
    dlq.count(cases.len() + 1, T).await;
    let again = &dlq.seen[cases.len()];
    assert!(
        again
            .header("Wallet-Dlq-Msg-Id")
            .starts_with("replay:deposit:")
    );
    let listed = wallet_ops::dlq::list(&env.config, Some("deposit"))
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        cases.len(),
        "the replayed letter is gone and its new failure is stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_effect_per_id_whatever_the_msg_id_and_conflicts_are_dead_lettered() {
    let env = TestEnv::new().await;
    let deposit_proc = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    env.publish("wallet.deposit", "a", deposit("d-1", "u-1", "10", "USD"))
        .await;
    events.by_id("deposit:d-1:completed", T).await;
    // The same command under other Nats-Msg-Ids (beyond JetStream's own dedup), once with its
    // fields reordered and an unknown one: no new effect.
    env.publish("wallet.deposit", "b", deposit("d-1", "u-1", "10", "USD"))
        .await;
    env.publish(
        "wallet.deposit",
        "c",
        br#"{"currency":"USD","extra":1,"amount":"10","user_id":"u-1","deposit_id":"d-1"}"#
            .to_vec(),
    )
    .await;
    // Same id, another payload.
    env.publish("wallet.deposit", "d", deposit("d-1", "u-1", "99", "USD"))
        .await;
    // A rejected id is remembered too. The conflicting copy goes out after the rejection: two
    // copies back to back may land in concurrent batches (or replicas), and the one committed
    // first is the one "already processed".
    env.publish("wallet.deposit", "e", deposit("d-2", "u-1", "0", "USD"))
        .await;
    events.by_id("deposit:d-2:rejected", T).await;
    env.publish("wallet.deposit", "f", deposit("d-2", "u-1", "5", "USD"))
        .await;
    // A marker behind them all in the stream: once it is done, so are they.
    env.publish("wallet.deposit", "g", deposit("d-3", "u-1", "1", "USD"))
        .await;
    events.by_id("deposit:d-3:completed", T).await;

    let mut dlq = env.dead_letters().await;
    dlq.count(2, T).await;
    // Batches are decided concurrently: dead letters of different batches come in any order.
    let mut reasons: Vec<(String, String)> = dlq
        .seen
        .iter()
        .map(|l| (l.header("Wallet-Dlq-Msg-Id"), l.header("Wallet-Dlq-Reason")))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("d".into(), "id_conflict".into()),
            ("f".into(), "id_conflict".into())
        ]
    );
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(11)
    );
    let d1 = events.seen.iter().filter(|r| r.body["id"] == "d-1").count();
    assert_eq!(d1, 1, "no second event for d-1");
    assert!(deposit_proc.metric("wallet_commands_duplicate_total").await >= 2.0);
    assert!(env.audit().await.ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_among_ids_decided_before_still_claims_the_new_ones() {
    use wallet_runtime::dedup::{Claim, Key, claim};
    use wallet_runtime::partition::Partition;
    let env = TestEnv::new().await;
    let pool = wallet_runtime::db::pool(&env.config).unwrap();
    let mut client = pool.get().await.unwrap();
    let (a, b) = ([1u8; 32], [2u8; 32]);
    let key = |id, print, partition: Option<u16>| Key {
        id,
        print,
        partition: partition.map(|p| Partition::new(p).unwrap()),
    };
    let tx = client.transaction().await.unwrap();
    let first = claim(
        &tx,
        "deposit",
        &[key("d-2", a, Some(7)), key("d-1", a, None)],
    )
    .await;
    assert_eq!(first.unwrap(), [Claim::New, Claim::New]);
    tx.commit().await.unwrap();
    // Two ids seen before among new ones: the all-new insert fails and is undone, and the
    // transaction goes on to claim each id by its fate.
    let tx = client.transaction().await.unwrap();
    let second = claim(
        &tx,
        "deposit",
        &[
            key("d-3", a, Some(255)),
            key("d-1", a, Some(1)),
            key("d-4", b, Some(0)),
            key("d-2", b, Some(9)),
        ],
    )
    .await;
    assert_eq!(
        second.unwrap(),
        [Claim::New, Claim::Duplicate, Claim::New, Claim::Conflict]
    );
    tx.commit().await.unwrap();
    let stored: Vec<(String, Vec<u8>, Option<i16>)> = env
        .pg()
        .await
        .query(
            "SELECT id, fingerprint, partition FROM commands ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // Each id keeps the partition of its first claim; the slow path stores it as the fast one.
    let want = |id: &str, p: [u8; 32], partition| (id.to_owned(), p.to_vec(), partition);
    assert_eq!(
        stored,
        [
            want("d-1", a, None),
            want("d-2", a, Some(7)),
            want("d-3", a, Some(255)),
            want("d-4", b, Some(0))
        ]
    );
}

/// CONTRACT §3: a deposit may name its user's partition in its subject, or none; one naming
/// another partition is dead-lettered `wrong_partition` and moves nothing (on several shards it
/// would open the user's wallets where they are not kept).
#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_on_another_users_partition_is_dead_lettered_and_moves_nothing() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    // u-7 is in partition 144 (docs/sharding.md's vectors), u-1 in 2.
    for (subject, id) in [
        ("wallet.deposit.144", "on-its-partition"),
        ("wallet.deposit", "bare"),
        ("wallet.deposit.2", "on-u-1s"),
        ("wallet.deposit.0144", "zero-padded"),
    ] {
        env.publish(subject, id, deposit(id, "u-7", "1", "USD"))
            .await;
    }
    events.by_id("deposit:on-its-partition:completed", T).await;
    events.by_id("deposit:bare:completed", T).await;
    let mut dlq = env.dead_letters().await;
    let mut letters: Vec<(String, String, String)> = dlq
        .count(2, T)
        .await
        .iter()
        .map(|l| {
            let h = |n| l.header(n);
            (
                h("Wallet-Dlq-Msg-Id"),
                h("Wallet-Dlq-Reason"),
                h("Wallet-Dlq-Subject"),
            )
        })
        .collect();
    letters.sort();
    let subject = |s| env.subject(s);
    assert_eq!(
        letters,
        [
            (
                "on-u-1s".into(),
                "wrong_partition".into(),
                subject("wallet.deposit.2")
            ),
            (
                "zero-padded".into(),
                "wrong_partition".into(),
                subject("wallet.deposit.0144")
            ),
        ]
    );
    assert_eq!(
        env.stored_balance("u-7", "main", "USD").await,
        rust_decimal::Decimal::from(2)
    );
    assert!(env.audit().await.ok());
}
