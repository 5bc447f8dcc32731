//! `transfer-in` and its answers (`provider-ack`) against the real NATS, PostgreSQL and Redis:
//! what comes back and what the game wallet gives up, rejections, dead letters, acks in any
//! order with transfers out, the sweeper, and the simulated providers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::json;
use testkit::commands::{ack, returned, transfer, transfer_in};
use testkit::{Proc, Reader, Received, TestEnv};

const T: Duration = Duration::from_secs(60);

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// `users` funded with `funds` USD each; deposit, transfer-out, transfer-in and provider-ack
/// running with `extra`.
async fn funded(extra: &[(&str, &str)], users: usize, funds: &str) -> (TestEnv, Reader, Vec<Proc>) {
    let functions = ["transfer-out", "transfer-in", "provider-ack"];
    TestEnv::funded(&functions, extra, users, funds).await
}

async fn wallets(env: &TestEnv, user: &str) -> (Decimal, Decimal) {
    (
        env.stored_balance(user, "main", "USD").await,
        env.stored_balance(user, "game", "USD").await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn what_comes_back_is_credited_and_the_game_wallet_gives_up_at_most_what_it_held() {
    let (env, mut events, _procs) = funded(&[], 1, "100").await;
    let mut requests = env.provider_requests().await;
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-1", "u-0", "alpha", "60", "USD")],
    )
    .await;
    env.publish_many(vec![ack("alpha", "t-1", "accepted")])
        .await;
    events.by_id("transfer:t-1:completed", T).await;

    // Everything back: the player won 15.50 at the provider.
    env.run_commands(
        &mut events,
        "transfer_in",
        vec![transfer_in("i-1", "u-0", "alpha", None, "USD")],
    )
    .await;
    let pending = events.by_id("transfer_in:i-1:pending", T).await;
    assert_eq!(
        pending.subject,
        env.subject("wallet.events.transfer_in.pending")
    );
    assert_eq!(
        pending.without_at(),
        json!({"schema_version": 1, "id": "i-1", "entity": "transfer_in", "status": "pending",
               "user_id": "u-0", "currency": "USD", "amount": null, "balance": null,
               "reason": null, "provider": "alpha"})
    );
    let asked = requests.by_id("i-1", T).await;
    assert_eq!(
        asked.subject,
        env.subject(&wallet_runtime::partition::subject(
            "provider.alpha.withdraw",
            "u-0"
        ))
    );
    assert_eq!(
        asked.body,
        json!({"transfer_id": "i-1", "user_id": "u-0", "currency": "USD", "amount": null})
    );
    env.publish_many(vec![returned("alpha", "i-1", "75.50")])
        .await;
    let done = events.by_id("transfer_in:i-1:completed", T).await;
    assert_eq!(
        done.without_at(),
        json!({"schema_version": 1, "id": "i-1", "entity": "transfer_in", "status": "completed",
               "user_id": "u-0", "currency": "USD", "amount": "75.50", "balance": "115.50",
               "reason": null, "provider": "alpha"})
    );
    assert_eq!(wallets(&env, "u-0").await, (dec("115.50"), dec("0")));
    assert_eq!(
        env.platform_balance("game-results:alpha", "USD").await,
        dec("-15.50")
    );
    let show = wallet_ops::transfer::show(&env.config, "i-1")
        .await
        .unwrap();
    assert!(
        show.to_string().contains("amount    everything (USD)"),
        "{show}"
    );
    let show = serde_json::to_value(&show).unwrap();
    assert_eq!(
        (
            &show["direction"],
            &show["amount"],
            &show["returned"],
            &show["taken"]
        ),
        (&json!("in"), &json!(null), &json!("75.50"), &json!("60.00"))
    );
    let history: Vec<&str> = show["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [
            "pending: provider asked to return everything",
            "completed: game:alpha -60.00, main +75.50"
        ]
    );

    // An amount: the provider returns 50, the game wallet held 30 of it for the player.
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-2", "u-0", "alpha", "30", "USD")],
    )
    .await;
    env.publish_many(vec![ack("alpha", "t-2", "accepted")])
        .await;
    events.by_id("transfer:t-2:completed", T).await;
    env.run_commands(
        &mut events,
        "transfer_in",
        vec![transfer_in("i-2", "u-0", "alpha", Some("50"), "USD")],
    )
    .await;
    let asked = requests.by_id("i-2", T).await;
    assert_eq!(asked.body["amount"], "50.00");
    env.publish_many(vec![returned("alpha", "i-2", "50")]).await;
    events.by_id("transfer_in:i-2:completed", T).await;
    assert_eq!(wallets(&env, "u-0").await, (dec("135.50"), dec("0")));
    assert_eq!(
        env.platform_balance("game-results:alpha", "USD").await,
        dec("-35.50")
    );

    // An amount of a game wallet that holds more: only that amount leaves it.
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-3", "u-0", "alpha", "40", "USD")],
    )
    .await;
    env.publish_many(vec![ack("alpha", "t-3", "accepted")])
        .await;
    events.by_id("transfer:t-3:completed", T).await;
    env.run_commands(
        &mut events,
        "transfer_in",
        vec![
            transfer_in("i-3", "u-0", "alpha", Some("25"), "USD"),
            transfer_in("i-4", "u-0", "alpha", Some("10"), "USD"),
            transfer_in("i-5", "u-0", "alpha", None, "USD"),
        ],
    )
    .await;
    env.publish_many(vec![
        returned("alpha", "i-3", "25"),
        ack("alpha", "i-4", "rejected"),
        returned("alpha", "i-5", "0"),
    ])
    .await;
    events.by_id("transfer_in:i-3:completed", T).await;
    let failed = events.by_id("transfer_in:i-4:failed", T).await;
    assert_eq!(failed.body["amount"], "10.00");
    // The player lost the last 15 it had there: nothing comes back, the game wallet is emptied.
    let nothing = events.by_id("transfer_in:i-5:completed", T).await;
    assert_eq!(nothing.body["amount"], "0.00");
    assert_eq!(wallets(&env, "u-0").await, (dec("120.50"), dec("0")));
    assert_eq!(
        env.platform_balance("game-results:alpha", "USD").await,
        dec("-20.50")
    );

    let report = env.audit().await;
    assert!(report.ok(), "{report}");
    // The audit sees a transfer in whose row disagrees with its posting.
    env.pg()
        .await
        .execute(
            "UPDATE transfers SET taken = taken + 1 WHERE id = 'i-3'",
            &[],
        )
        .await
        .unwrap();
    let report = env.audit().await.to_string();
    assert!(
        report.contains("i-3 completed: 2 leg(s), credited 25, took 25; returned 25, taken 26"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejections_and_dead_letters_move_nothing() {
    let (env, mut events, _procs) = funded(&[], 1, "100").await;
    let mut dlq = env.dead_letters().await;
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("t-1", "u-0", "alpha", "10", "USD")],
    )
    .await;
    let unknown = transfer_in("i-2", "u-0", "nobody", None, "USD");
    env.run_commands(
        &mut events,
        "transfer_in",
        vec![
            transfer_in("t-1", "u-0", "alpha", None, "USD"),
            unknown,
            transfer_in("i-3", "u-0", "alpha", Some("-1"), "USD"),
            transfer_in("i-4", "u-0", "alpha", None, "XXX"),
            transfer_in("i-5", "u-0", "alpha", None, "USD"),
        ],
    )
    .await;
    let reason = |e: Received| e.body["reason"].as_str().unwrap().to_owned();
    for (id, why) in [
        ("t-1", "transfer_exists"),
        ("i-2", "unknown_provider"),
        ("i-3", "invalid_amount"),
        ("i-4", "unknown_currency"),
    ] {
        let rejected = events.by_id(&format!("transfer_in:{id}:rejected"), T).await;
        assert_eq!(reason(rejected), why, "{id}");
    }
    // The id space is shared the other way too: a transfer out may not take a transfer in's id
    // (it was dead-lettered, a unique violation, before transfers were recorded first).
    env.run_commands(
        &mut events,
        "transfer",
        vec![transfer("i-5", "u-0", "alpha", "5", "USD")],
    )
    .await;
    let rejected = events.by_id("transfer:i-5:rejected", T).await;
    assert_eq!(reason(rejected), "transfer_exists");
    // An acceptance that does not say what came back waits for an operator; the provider's
    // corrected answer (another message id) then finishes the transfer.
    let mut without = returned("alpha", "i-5", "1");
    without.2 = serde_json::to_vec(&json!({"transfer_id": "i-5", "status": "accepted"})).unwrap();
    env.publish_many(vec![without]).await;
    dlq.count(1, T).await;
    assert_eq!(dlq.seen.len(), 1);
    assert_eq!(dlq.seen[0].header("Wallet-Dlq-Reason"), "invalid_amount");
    let mut corrected = returned("alpha", "i-5", "2.50");
    corrected.1 = "alpha:i-5:accepted:corrected".into();
    env.publish_many(vec![corrected]).await;
    events.by_id("transfer_in:i-5:completed", T).await;
    assert_eq!(
        wallets(&env, "u-0").await,
        (dec("92.50"), dec("0")),
        "t-1 is still in transit"
    );
    assert_eq!(
        env.platform_balance("game-results:alpha", "USD").await,
        dec("-2.50")
    );
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

/// Fifty players each send 100 to the provider and ask for everything back; the acks of both
/// transfers come in an order drawn per player. Whichever comes first, the game wallet gives up
/// what it held when the transfer in was answered, and every amount is counted once.
#[tokio::test(flavor = "multi_thread")]
async fn acks_of_transfers_out_and_in_in_any_order_count_every_amount_once() {
    let (env, mut events, _procs) = funded(&[], 50, "100").await;
    let users: Vec<String> = (0..50).map(|u| format!("u-{u}")).collect();
    env.run_commands(
        &mut events,
        "transfer",
        users
            .iter()
            .map(|u| transfer(&format!("out-{u}"), u, "alpha", "100", "USD"))
            .collect(),
    )
    .await;
    env.run_commands(
        &mut events,
        "transfer_in",
        users
            .iter()
            .map(|u| transfer_in(&format!("in-{u}"), u, "alpha", None, "USD"))
            .collect(),
    )
    .await;
    let back = |i: usize| format!("{}.{:02}", 50 + i, i);
    let mut acks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let out = ack("alpha", &format!("out-{u}"), "accepted");
        let back = returned("alpha", &format!("in-{u}"), &back(i));
        if i % 3 == 0 {
            acks.extend([back, out]);
        } else {
            acks.extend([out, back]);
        }
    }
    env.publish_many(acks).await;
    events
        .until(T, "every transfer finished", |s| {
            s.iter()
                .filter(|e| e.body["status"] == "completed" && e.body["entity"] != "deposit")
                .count()
                == 100
        })
        .await;
    let pg = env.pg().await;
    let mut results = Decimal::ZERO;
    for (i, u) in users.iter().enumerate() {
        let taken: Decimal = pg
            .query_one(
                "SELECT taken FROM transfers WHERE id = $1",
                &[&format!("in-{u}")],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            taken == dec("0") || taken == dec("100"),
            "{u}: took {taken}"
        );
        let (main, game) = wallets(&env, u).await;
        assert_eq!(main, dec(&back(i)), "{u}");
        assert_eq!(game + taken, dec("100"), "{u}");
        results += taken - main;
    }
    assert_eq!(
        env.platform_balance("game-results:alpha", "USD").await,
        results
    );
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

/// A transfer in without an answer is asked about again and reported stuck once, as a transfer
/// out; its answer still finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_in_without_an_answer_is_queried_then_reported_stuck() {
    let timings = [
        ("TRANSFER_ACK_TIMEOUT", "200ms"),
        ("TRANSFER_STUCK_AFTER", "1500ms"),
    ];
    let (env, mut events, _procs) = funded(&timings, 1, "10").await;
    let mut requests = env.provider_requests().await;
    env.run_commands(
        &mut events,
        "transfer_in",
        vec![transfer_in("i-1", "u-0", "alpha", None, "USD")],
    )
    .await;
    let query = requests.by_id("i-1:status:1", T).await;
    assert_eq!(
        query.subject,
        env.subject(&wallet_runtime::partition::subject(
            "provider.alpha.status",
            "u-0"
        ))
    );
    assert_eq!(query.body, json!({"transfer_id": "i-1"}));
    let stuck = events.by_id("transfer_in:i-1:stuck", T).await;
    assert_eq!(stuck.body["amount"], serde_json::Value::Null);
    assert_eq!(stuck.body["provider"], "alpha");
    env.publish_many(vec![returned("alpha", "i-1", "3")]).await;
    events.by_id("transfer_in:i-1:completed", T).await;
    assert_eq!(wallets(&env, "u-0").await, (dec("13"), dec("0")));
    let stuck_events = events
        .seen
        .iter()
        .filter(|e| e.msg_id == "transfer_in:i-1:stuck")
        .count();
    assert_eq!(stuck_events, 1);
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

/// `walletctl provider-sim` returns what a transfer in asks for, or a drawn amount when it asks
/// for everything, including through a status query when it dropped its first answer.
#[tokio::test(flavor = "multi_thread")]
async fn the_simulated_game_providers_return_money() {
    let timings = [("TRANSFER_ACK_TIMEOUT", "300ms")];
    let (env, mut events, _procs) = funded(&timings, 1, "1000").await;
    let _sim = env.spawn_args(
        "walletctl",
        &[
            "provider-sim",
            "--accept",
            "1",
            "--drop",
            "0.5",
            "--latency",
            "1ms",
        ],
        &[],
    );
    let ids: Vec<String> = (0..20).map(|i| format!("i-{i}")).collect();
    env.run_commands(
        &mut events,
        "transfer_in",
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let amount = (i % 2 == 0).then_some("1.25");
                transfer_in(id, "u-0", "alpha", amount, "USD")
            })
            .collect(),
    )
    .await;
    let seen = events
        .until(T, "every transfer in completed", |s| {
            s.iter()
                .filter(|e| e.body["entity"] == "transfer_in" && e.body["status"] == "completed")
                .count()
                == ids.len()
        })
        .await;
    let back: Decimal = seen
        .iter()
        .filter(|e| e.body["entity"] == "transfer_in" && e.body["status"] == "completed")
        .map(|e| dec(e.body["amount"].as_str().unwrap()))
        .sum();
    assert!(back > dec("0"));
    assert_eq!(
        env.stored_balance("u-0", "main", "USD").await,
        dec("1000") + back
    );
    assert_eq!(
        env.platform_balance("game-results:alpha", "USD").await,
        -back
    );
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}
