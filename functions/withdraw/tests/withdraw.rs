//! `withdraw` and `payout-ack` against the real NATS, PostgreSQL and Redis: a withdrawal held,
//! asked of its payment provider and settled by the answer (paid, declined, repeated,
//! contradicted, from the wrong provider), every rejection, the daily limit counted exactly over
//! two replicas, and a limit configuration that cannot start.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::json;
use testkit::commands::deposit;
use testkit::{Received, TestEnv};

const T: Duration = Duration::from_secs(60);

type Msg = (String, String, Vec<u8>);

fn withdraw(id: &str, user: &str, psp: &str, amount: &str, currency: &str) -> Msg {
    let body = json!({"withdraw_id": id, "user_id": user, "psp": psp,
                      "amount": amount, "currency": currency});
    (
        "wallet.withdraw".into(),
        id.into(),
        serde_json::to_vec(&body).unwrap(),
    )
}

/// A payment provider's answer, with the adapters' `Nats-Msg-Id` (`<psp>:<withdrawal>:<status>`).
fn answer(psp: &str, withdrawal: &str, status: &str) -> Msg {
    let body = json!({"withdraw_id": withdrawal, "status": status, "psp_ref": format!("ref-{withdrawal}")});
    (
        format!("payout.{psp}.ack"),
        format!("{psp}:{withdrawal}:{status}"),
        serde_json::to_vec(&body).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_is_held_asked_for_and_settled_once_by_its_answer() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let _withdraw = env.spawn("withdraw", &[]);
    let _payout_ack = env.spawn("payout-ack", &[("UNKNOWN_TRANSFER_RETRY", "2s")]);
    let balance = env.spawn("balance", &[]);
    let mut events = env.events().await;
    let mut dead = env.dead_letters().await;
    let mut requests = env.reader("PAYOUT_REQUESTS", "payout.>").await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-1", "u-1", "100", "USD")],
    )
    .await;

    env.publish_many(vec![withdraw("w-1", "u-1", "bank", "30.5", "USD")])
        .await;
    let e = events.by_id("withdrawal:w-1:pending", T).await;
    assert_eq!(e.subject, env.subject("wallet.events.withdrawal.pending"));
    assert_eq!(
        e.without_at(),
        json!({"schema_version": 1, "id": "w-1", "entity": "withdrawal", "status": "pending",
               "user_id": "u-1", "currency": "USD", "amount": "30.50", "balance": "69.50",
               "reason": null, "psp": "bank"})
    );
    let r = requests.by_id("w-1", T).await;
    // On the user's partition, which the adapter's answer echoes.
    assert_eq!(
        r.subject,
        env.subject(&wallet_runtime::partition::subject(
            "payout.bank.request",
            "u-1"
        ))
    );
    assert_eq!(
        r.body,
        json!({"withdraw_id": "w-1", "user_id": "u-1", "amount": "30.50", "currency": "USD"})
    );

    env.publish_many(vec![answer("bank", "w-1", "paid")]).await;
    let e = events.by_id("withdrawal:w-1:paid", T).await;
    assert_eq!(
        e.without_at(),
        json!({"schema_version": 1, "id": "w-1", "entity": "withdrawal", "status": "paid",
               "user_id": "u-1", "currency": "USD", "amount": "30.50", "balance": "0.00",
               "reason": null, "psp": "bank"})
    );

    env.publish_many(vec![withdraw("w-2", "u-1", "bank", "20", "USD")])
        .await;
    events.by_id("withdrawal:w-2:pending", T).await;
    env.publish_many(vec![answer("bank", "w-2", "declined")])
        .await;
    let e = events.by_id("withdrawal:w-2:declined", T).await;
    assert_eq!(e.body["balance"], "69.50", "back in main");

    // A repeat under another Nats-Msg-Id changes nothing; the other answer is a conflict; an
    // answer from another provider a mismatch; one for a withdrawal nobody asked for, unknown.
    let mut again = answer("bank", "w-1", "paid");
    again.1 = "bank:w-1:paid:again".into();
    env.publish_many(vec![
        again,
        answer("bank", "w-1", "declined"),
        answer("card", "w-2", "declined"),
        answer("bank", "w-nobody", "paid"),
    ])
    .await;
    dead.count(3, T).await;
    let reasons: Vec<(String, String)> = dead
        .seen
        .iter()
        .map(|d: &Received| {
            (
                d.body["withdraw_id"].as_str().unwrap().to_owned(),
                d.header("Wallet-Dlq-Reason"),
            )
        })
        .collect();
    for expected in [
        ("w-1", "ack_conflict"),
        ("w-2", "provider_mismatch"),
        ("w-nobody", "unknown_withdrawal"),
    ] {
        assert!(
            reasons.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} in {reasons:?}"
        );
    }
    env.drained("payout-ack").await;
    assert!(
        events
            .seen
            .iter()
            .filter(|e| e.msg_id.starts_with("withdrawal:w-1:"))
            .count()
            == 2
    );

    env.ready(&balance).await;
    testkit::eventually(T, "main and held after the payouts", || async {
        let b = env.balance("u-1").await;
        (b == json!({"user_id": "u-1", "wallets": [
            {"kind": "main", "currency": "USD", "balance": "69.50"},
            {"kind": "held", "provider": "bank", "currency": "USD", "balance": "0.00"}]}))
        .then_some(())
    })
    .await;
    let pg = env.pg().await;
    let rows: Vec<(String, String, Option<String>)> = pg
        .query(
            "SELECT id, status, psp_ref FROM withdrawals ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            ("w-1".into(), "paid".into(), Some("ref-w-1".into())),
            ("w-2".into(), "declined".into(), Some("ref-w-2".into()))
        ]
    );
    assert_eq!(
        env.platform_balance("payouts:bank", "USD").await,
        "30.5".parse::<Decimal>().unwrap()
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    // A paid withdrawal whose row says more than was paid out: the payouts account is not
    // explained by it.
    pg.execute("UPDATE withdrawals SET amount = 31 WHERE id = 'w-1'", &[])
        .await
        .unwrap();
    let report = env.audit().await.to_string();
    assert!(
        report.contains("payouts:bank USD: posted 30.5, paid withdrawals 31"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_names_its_reason_and_moves_nothing() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let _withdraw = env.spawn(
        "withdraw",
        &[("WITHDRAW_DAILY_LIMITS", "USD:50,EUR:50,VND:50,BTC:1")],
    );
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-1", "u-1", "100", "USD")],
    )
    .await;
    let bad = |id: &str, body: serde_json::Value| -> Msg {
        (
            "wallet.withdraw".into(),
            id.into(),
            serde_json::to_vec(&body).unwrap(),
        )
    };
    env.run_commands(
        &mut events,
        "withdrawal",
        vec![
            bad("r-1", json!({"withdraw_id": "r-1", "user_id": " ", "psp": "bank", "amount": "1", "currency": "USD"})),
            withdraw("r-2", "u-1", "paypal", "1", "USD"),
            withdraw("r-3", "u-1", "bank", "1", "XXX"),
            withdraw("r-4", "u-1", "bank", "1.001", "USD"),
            withdraw("r-5", "u-1", "bank", "50.01", "USD"),
            withdraw("r-6", "u-1", "bank", "40", "EUR"),
            withdraw("r-7", "u-1", "bank", "50", "USD"),
        ],
    )
    .await;
    let reason = |id: &str| {
        let e = events
            .seen
            .iter()
            .find(|e| e.msg_id.starts_with(&format!("withdrawal:{id}:")))
            .unwrap();
        (
            e.body["status"].as_str().unwrap().to_owned(),
            e.body["reason"].as_str().unwrap_or("").to_owned(),
        )
    };
    let rejected = |r: &str| ("rejected".to_owned(), r.to_owned());
    assert_eq!(reason("r-1"), rejected("invalid_user_id"));
    assert_eq!(reason("r-2"), rejected("unknown_psp"));
    assert_eq!(reason("r-3"), rejected("unknown_currency"));
    assert_eq!(reason("r-4"), rejected("invalid_amount"));
    assert_eq!(reason("r-5"), rejected("limit_exceeded"));
    assert_eq!(reason("r-6"), rejected("insufficient_funds"));
    assert_eq!(reason("r-7"), ("pending".to_owned(), String::new()));
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        "50".parse().unwrap()
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");

    // A limit missing for a configured currency: one line, exit 64, before any connection.
    let out = std::process::Command::new(testkit::binary("withdraw"))
        .envs(env.env())
        .env("WITHDRAW_DAILY_LIMITS", "USD:100")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid WITHDRAW_DAILY_LIMITS: no limit for BTC"),
        "{stderr}"
    );
}

/// Two replicas, small batches, five users each asking for 30 withdrawals of 10 against a limit
/// of 100: exactly ten of each user's are pending, whatever the interleaving; a declined one
/// gives its 10 back to the day, and the next withdrawal takes it.
#[tokio::test(flavor = "multi_thread")]
async fn the_daily_limit_is_counted_exactly_over_two_replicas() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let limits = ("WITHDRAW_DAILY_LIMITS", "USD:100,EUR:100,VND:100,BTC:1");
    let small = [limits, ("BATCH_MAX", "7"), ("BATCHES_IN_FLIGHT", "2")];
    let a = env.spawn("withdraw", &small);
    let b = env.spawn("withdraw", &small);
    let _payout_ack = env.spawn("payout-ack", &[]);
    env.ready(&a).await;
    env.ready(&b).await;
    let mut events = env.events().await;
    let users: Vec<String> = (0..5).map(|u| format!("u-{u}")).collect();
    env.run_commands(
        &mut events,
        "deposit",
        users
            .iter()
            .map(|u| deposit(&format!("d-{u}"), u, "1000", "USD"))
            .collect(),
    )
    .await;
    let commands: Vec<Msg> = (0..30)
        .flat_map(|i| users.iter().map(move |u| (i, u.clone())))
        .map(|(i, u)| withdraw(&format!("w-{u}-{i}"), &u, "bank", "10", "USD"))
        .collect();
    env.run_commands(&mut events, "withdrawal", commands).await;
    let pending = |events: &testkit::Reader, u: &str| {
        events
            .seen
            .iter()
            .filter(|e| e.body["status"] == "pending" && e.body["user_id"] == u)
            .map(|e| e.body["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    for u in &users {
        assert_eq!(pending(&events, u).len(), 10, "{u}");
        assert_eq!(
            env.stored_balance(u, "main", "USD").await,
            "900".parse().unwrap(),
            "{u}"
        );
    }
    let first = pending(&events, "u-0")[0].clone();
    env.publish_many(vec![answer("bank", &first, "declined")])
        .await;
    events
        .by_id(&format!("withdrawal:{first}:declined"), T)
        .await;
    // One after the other: two replicas may decide two commands of one publish in either order.
    for (id, amount) in [("w-u-0-after", "10"), ("w-u-0-over", "0.01")] {
        env.run_commands(
            &mut events,
            "withdrawal",
            vec![withdraw(id, "u-0", "bank", amount, "USD")],
        )
        .await;
    }
    let status = |id: &str| {
        events
            .seen
            .iter()
            .find(|e| e.body["id"] == id && e.body["entity"] == "withdrawal")
            .map(|e| (e.body["status"].clone(), e.body["reason"].clone()))
            .unwrap()
    };
    assert_eq!(status("w-u-0-after"), (json!("pending"), json!(null)));
    assert_eq!(
        status("w-u-0-over"),
        (json!("rejected"), json!("limit_exceeded"))
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");

    // A day's count that disagrees with its withdrawals is a breach the audit names.
    env.pg()
        .await
        .execute(
            "UPDATE withdrawal_days SET amount = amount + 1 WHERE user_id = 'u-1'",
            &[],
        )
        .await
        .unwrap();
    let audit = env.audit().await;
    let breached: Vec<&str> = audit
        .checks
        .iter()
        .filter(|c| !c.breaches.is_empty())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        breached,
        ["every user's withdrawals of a day count its pending and paid withdrawals"]
    );
}

/// A withdrawal whose answer never comes: `payout-ack`'s sweeper (the transfers' sweeper, given
/// the withdrawals) asks the provider again and reports it `stuck` once; the money stays held
/// until the answer, which then settles it as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_without_an_answer_is_queried_then_reported_stuck_and_still_settles() {
    let env = TestEnv::new().await;
    let timings = [
        ("TRANSFER_ACK_TIMEOUT", "300ms"),
        ("TRANSFER_STUCK_AFTER", "2s"),
    ];
    let _deposit = env.spawn("deposit", &[]);
    let _withdraw = env.spawn("withdraw", &timings);
    let _payout_ack = env.spawn("payout-ack", &timings);
    let mut events = env.events().await;
    let mut requests = env.reader("PAYOUT_REQUESTS", "payout.>").await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-1", "u-1", "100", "EUR")],
    )
    .await;
    env.run_commands(
        &mut events,
        "withdrawal",
        vec![withdraw("w-1", "u-1", "card", "40", "EUR")],
    )
    .await;

    let q = requests.by_id("w-1:status:1", T).await;
    assert_eq!(
        q.subject,
        env.subject(&wallet_runtime::partition::subject(
            "payout.card.status",
            "u-1"
        ))
    );
    assert_eq!(q.body, json!({"withdraw_id": "w-1"}));
    let stuck = events.by_id("withdrawal:w-1:stuck", T).await;
    assert_eq!(
        stuck.without_at(),
        json!({"schema_version": 1, "id": "w-1", "entity": "withdrawal", "status": "stuck",
               "user_id": "u-1", "currency": "EUR", "amount": "40.00", "balance": null,
               "reason": null, "psp": "card"})
    );
    requests.by_id("w-1:status:2", T).await;
    assert_eq!(
        env.stored_balance("u-1", "held", "EUR").await,
        "40".parse().unwrap()
    );

    env.publish_many(vec![answer("card", "w-1", "paid")]).await;
    events.by_id("withdrawal:w-1:paid", T).await;
    assert_eq!(
        env.stored_balance("u-1", "held", "EUR").await,
        "0".parse().unwrap()
    );
    let stuck_events = events
        .seen
        .iter()
        .filter(|e| e.msg_id == "withdrawal:w-1:stuck")
        .count();
    assert_eq!(stuck_events, 1);
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}

/// `walletctl provider-sim` plays the payment providers: it pays or declines each withdrawal as
/// its seed draws, and answers a status query for one whose answer it dropped.
#[tokio::test(flavor = "multi_thread")]
async fn the_simulated_payment_providers_answer_requests_and_status_queries() {
    let env = TestEnv::new().await;
    let timings = [("TRANSFER_ACK_TIMEOUT", "300ms")];
    let _deposit = env.spawn("deposit", &[]);
    let _withdraw = env.spawn("withdraw", &timings);
    let _payout_ack = env.spawn("payout-ack", &timings);
    let _sim = env.spawn_args(
        "walletctl",
        &[
            "provider-sim",
            "--accept",
            "0.5",
            "--drop",
            "0.5",
            "--latency",
            "1ms",
        ],
        &[],
    );
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![deposit("d-1", "u-1", "1000", "USD")],
    )
    .await;
    let ids: Vec<String> = (0..20).map(|i| format!("w-{i}")).collect();
    env.run_commands(
        &mut events,
        "withdrawal",
        ids.iter()
            .map(|id| withdraw(id, "u-1", "card", "10", "USD"))
            .collect(),
    )
    .await;
    let mut requests = env.reader("PAYOUT_REQUESTS", "payout.>").await;
    let count = |seen: &[Received], status: &str| {
        seen.iter()
            .filter(|e| e.body["entity"] == "withdrawal" && e.body["status"] == status)
            .count()
    };
    let seen = events
        .until(T, "every withdrawal paid or declined", |s| {
            count(s, "paid") + count(s, "declined") == ids.len()
        })
        .await;
    let (paid, declined) = (count(seen, "paid"), count(seen, "declined"));
    assert!(paid > 0 && declined > 0, "paid {paid}, declined {declined}");
    // The dropped answers came through the status queries.
    let queries = requests
        .until(T, "a status query", |s| {
            s.iter().any(|r| r.msg_id.contains(":status:"))
        })
        .await;
    assert!(queries.iter().any(|q| q.subject
        == env.subject(&wallet_runtime::partition::subject(
            "payout.card.status",
            "u-1"
        ))));
    env.drained("payout-ack").await;
    assert_eq!(
        env.stored_balance("u-1", "held", "USD").await,
        Decimal::ZERO
    );
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        Decimal::from(1000 - 10 * paid as i64)
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}
