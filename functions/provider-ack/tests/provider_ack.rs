//! `provider-ack` and the transfer sweeper against the real NATS, PostgreSQL and Redis: every
//! ack row of CONTRACT §5, status queries and the `stuck` event, a crash with acks in flight, and
//! whole transfers against `walletctl provider-sim` with faults.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::json;
use testkit::commands::{ack, deposit, transfer};
use testkit::{Proc, Reader, Received, TestEnv, eventually};

const T: Duration = Duration::from_secs(60);

/// An env with `deposit` and `transfer-out` running, `users` funded with `funds` USD each.
async fn funded(extra: &[(&str, &str)], users: usize, funds: &str) -> (TestEnv, Reader, Vec<Proc>) {
    let env = TestEnv::with_env(extra).await;
    let procs = vec![
        env.spawn("deposit", extra),
        env.spawn("transfer-out", extra),
    ];
    let mut events = env.events().await;
    let deposits = (0..users)
        .map(|u| deposit(&format!("d-{u}"), &format!("u-{u}"), funds, "USD"))
        .collect();
    env.run_commands(&mut events, "deposit", deposits).await;
    (env, events, procs)
}

fn pending_ids(events: &Reader) -> HashSet<String> {
    events
        .seen
        .iter()
        .filter(|r| r.msg_id.ends_with(":pending"))
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The final event (`completed` or `failed`) of every transfer, checking there is one per id.
fn finals(events: &Reader) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for r in &events.seen {
        let status = r.body["status"].as_str().unwrap_or_default();
        if r.body["entity"] == "transfer" && (status == "completed" || status == "failed") {
            let previous = out.insert(r.body["id"].as_str().unwrap().to_owned(), status.to_owned());
            assert!(
                previous.is_none() || previous.as_deref() == Some(status),
                "two different final events for {}",
                r.body["id"]
            );
        }
    }
    out
}

/// Distinct transfers with a final event.
fn final_count(seen: &[Received]) -> usize {
    seen.iter()
        .filter(|r| {
            r.msg_id.starts_with("transfer:")
                && (r.msg_id.ends_with(":completed") || r.msg_id.ends_with(":failed"))
        })
        .map(|r| r.msg_id.as_str())
        .collect::<HashSet<_>>()
        .len()
}

async fn dlq_reasons(env: &TestEnv, n: usize) -> Vec<(String, String)> {
    let mut dlq = env.dead_letters().await;
    dlq.count(n, T).await;
    dlq.seen
        .iter()
        .map(|r| (r.header("Wallet-Dlq-Msg-Id"), r.header("Wallet-Dlq-Reason")))
        .collect()
}

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

    env.publish_many(vec![
        ack("alpha", "t-1", "accepted"),
        ack("alpha", "t-2", "rejected"),
    ])
    .await;
    let done = events.by_id("transfer:t-1:completed", T).await;
    assert_eq!(
        done.subject,
        env.subject("wallet.events.transfer.completed")
    );
    assert_eq!(
        done.without_at(),
        json!({"id": "t-1", "entity": "transfer", "status": "completed", "user_id": "u-0",
               "currency": "USD", "amount": "30.00", "balance": "30.00", "reason": null,
               "provider": "alpha"})
    );
    let failed = events.by_id("transfer:t-2:failed", T).await;
    assert_eq!(
        failed.without_at(),
        json!({"id": "t-2", "entity": "transfer", "status": "failed", "user_id": "u-0",
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
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    let show = wallet_ops::transfer::show(&env.config, "t-1")
        .await
        .unwrap();
    assert!(
        show.contains("completed  in_transit:alpha -30.00, game:alpha +30.00"),
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
    assert_eq!(query.subject, env.subject("provider.beta.status"));
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
        json!({"id": "t-1", "entity": "transfer", "status": "stuck", "user_id": "u-0",
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
        .unwrap();
    assert!(show.contains("stuck event published"), "{show}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_2000_acks_in_flight_then_restart_finishes_each_transfer_once() {
    let (env, mut events, _procs) = funded(&[], 20, "1000").await;
    let transfers = (0..2000)
        .map(|i| {
            transfer(
                &format!("t-{i}"),
                &format!("u-{}", i % 20),
                "alpha",
                "1.25",
                "USD",
            )
        })
        .collect();
    env.run_commands(&mut events, "transfer", transfers).await;
    assert_eq!(pending_ids(&events).len(), 2000);

    let mut ack_fn = env.spawn("provider-ack", &[("BATCH_MAX", "100")]);
    let acks = (0..2000)
        .map(|i| {
            ack(
                "alpha",
                &format!("t-{i}"),
                if (i / 20) % 4 == 0 {
                    "rejected"
                } else {
                    "accepted"
                },
            )
        })
        .collect();
    env.publish_many(acks).await;
    events
        .until(T, "the first finished transfers", |seen| {
            seen.iter().any(|r| r.msg_id.ends_with(":completed"))
        })
        .await;
    ack_fn.kill9();
    let before = finals(&events).len();
    assert!(before < 2000, "the crash came too late to test anything");
    let _ack_fn = env.spawn("provider-ack", &[]);
    eventually(Duration::from_secs(120), "2000 finished transfers", || {
        let pg = env.pg();
        async move {
            let n: i64 = pg
                .await
                .query_one(
                    "SELECT count(*) FROM transfers WHERE status <> 'pending'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n == 2000).then_some(())
        }
    })
    .await;
    events
        .until(Duration::from_secs(60), "2000 final events", |seen| {
            final_count(seen) == 2000
        })
        .await;
    let finals = finals(&events);
    assert_eq!(finals.values().filter(|s| *s == "failed").count(), 500);
    // Per user: 100 transfers of 1.25, 25 of them refunded.
    for u in 0..20 {
        let user = format!("u-{u}");
        assert_eq!(
            env.stored_balance(&user, "main", "USD").await,
            Decimal::new(90625, 2)
        );
        assert_eq!(
            env.stored_balance(&user, "game", "USD").await,
            Decimal::new(9375, 2)
        );
        assert_eq!(
            env.stored_balance(&user, "in_transit", "USD").await,
            Decimal::ZERO
        );
    }
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_transfers_through_a_faulty_provider_all_finish_with_exact_balances() {
    let extra = [("TRANSFER_ACK_TIMEOUT", "2s")];
    let (env, mut events, _procs) = funded(&extra, 50, "500").await;
    let _acks = [
        env.spawn("provider-ack", &extra),
        env.spawn("provider-ack", &extra),
    ];
    let sim_args = [
        "provider-sim",
        "--accept",
        "0.8",
        "--duplicate",
        "0.1",
        "--reorder",
        "0.1",
        "--contradict",
        "0.02",
        "--latency",
        "2ms",
        "--seed",
        "7",
    ];
    let _sim = env.spawn_args("walletctl", &sim_args, &[]);
    /// The simulator's options, parsed as `walletctl provider-sim` parses them.
    #[derive(clap::Parser)]
    struct Sim {
        #[command(flatten)]
        opts: provider_sim::SimOptions,
    }
    let opts = <Sim as clap::Parser>::try_parse_from(sim_args.iter().copied())
        .unwrap()
        .opts;
    let amount = |i: usize| Decimal::new(100 + (i % 7) as i64 * 25, 2); // 1.00 to 2.50
    let provider = |i: usize| if i.is_multiple_of(3) { "beta" } else { "alpha" };
    let transfers = (0..5000)
        .map(|i| {
            let user = format!("u-{}", i % 50);
            transfer(
                &format!("t-{i}"),
                &user,
                provider(i),
                &amount(i).to_string(),
                "USD",
            )
        })
        .collect();
    env.publish_many(transfers).await;
    events
        .until(
            Duration::from_secs(180),
            "5000 finished transfers",
            |seen| final_count(seen) == 5000,
        )
        .await;
    let finals = finals(&events);

    // Each transfer ends as its provider said; one that got a contradicting ack ends as whichever
    // of the two acks was decided first, and the other one is dead-lettered.
    let mut expected: HashMap<(String, &str, &str), Decimal> = HashMap::new();
    let mut contradicted = 0;
    for i in 0..5000 {
        let id = format!("t-{i}");
        let completed = finals[&id] == "completed";
        if provider_sim::contradicts(&opts, &id) {
            contradicted += 1;
        } else {
            assert_eq!(completed, provider_sim::accepts(&opts, &id), "{id}");
        }
        let user = format!("u-{}", i % 50);
        if completed {
            *expected.entry((user.clone(), "main", "")).or_default() -= amount(i);
            *expected.entry((user, "game", provider(i))).or_default() += amount(i);
        }
    }
    assert!(
        contradicted > 50,
        "{contradicted} contradictions: too few to test anything"
    );
    let pg = env.pg().await;
    for ((user, kind, provider), delta) in &expected {
        let stored: Decimal = pg
            .query_one(
                "SELECT balance FROM accounts WHERE owner = $1 AND kind = $2 AND provider = $3",
                &[user, kind, provider],
            )
            .await
            .unwrap()
            .get(0);
        let start = if *kind == "main" {
            Decimal::from(500)
        } else {
            Decimal::ZERO
        };
        assert_eq!(stored, start + delta, "{user} {kind} {provider}");
    }
    let in_transit: Decimal = pg
        .query_one(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE kind = 'in_transit'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_transit, Decimal::ZERO);
    // Duplicates and reordering end as nothing; each contradiction as one `ack_conflict`.
    let reasons = dlq_reasons(&env, contradicted).await;
    assert_eq!(reasons.len(), contradicted);
    assert!(
        reasons.iter().all(|(_, r)| r == "ack_conflict"),
        "{reasons:?}"
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_whose_text_holds_control_characters_still_finishes_its_transfer() {
    let (env, mut events, _procs) = funded(&[], 1, "10").await;
    let _ack = env.spawn("provider-ack", &[]);
    env.run_commands(
        &mut events,
        "transfer",
        vec![
            transfer("t-nul", "u-0", "alpha", "4", "USD"),
            transfer("t-esc", "u-0", "alpha", "1", "USD"),
        ],
    )
    .await;
    // PostgreSQL's text cannot hold NUL: stored as given, it failed every transaction.
    let nul = json!({"transfer_id": "t-nul", "status": "accepted", "provider_ref": "a\u{0}b"});
    let esc = json!({"transfer_id": "t-esc", "status": "rejected", "reason": "\u{1b}[31mno\u{0}"});
    env.publish_many(vec![
        (
            "provider.alpha.ack".into(),
            "alpha:t-nul:accepted".into(),
            serde_json::to_vec(&nul).unwrap(),
        ),
        (
            "provider.alpha.ack".into(),
            "alpha:t-esc:rejected".into(),
            serde_json::to_vec(&esc).unwrap(),
        ),
    ])
    .await;
    events.by_id("transfer:t-nul:completed", T).await;
    events.by_id("transfer:t-esc:failed", T).await;
    let rows = env
        .pg()
        .await
        .query(
            "SELECT id, provider_ref, reason FROM transfers WHERE id IN ('t-nul', 't-esc') ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(String, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        stored,
        [
            ("t-esc".into(), None, Some("\u{FFFD}[31mno\u{FFFD}".into())),
            ("t-nul".into(), Some("a\u{FFFD}b".into()), None),
        ]
    );
    assert!(env.audit().await.ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_still_retried_on_its_last_allowed_delivery_is_dead_lettered_with_its_reason() {
    // Its retry window outlasts its deliveries: on the last one it must be dead-lettered, not
    // handed back to a JetStream that would never deliver it again.
    let (env, _events, _procs) = funded(&[], 1, "10").await;
    let streams = env.streams_file_dead_letter_after(3);
    let _ack = env.spawn(
        "provider-ack",
        &[
            ("STREAMS_FILE", &streams),
            ("UNKNOWN_TRANSFER_RETRY", "10m"),
        ],
    );
    env.publish_many(vec![ack("alpha", "t-nobody", "accepted")])
        .await;
    let reasons = dlq_reasons(&env, 1).await;
    assert_eq!(
        reasons,
        [(
            "alpha:t-nobody:accepted".to_owned(),
            "unknown_transfer".to_owned()
        )]
    );
    let mut dlq = env.dead_letters().await;
    assert_eq!(
        dlq.count(1, T).await[0].header("Wallet-Dlq-Deliveries"),
        "3"
    );
    // Terminated once its letter is stored, a moment after.
    env.emptied("PROVIDER_ACKS").await;
}
