//! `provider-ack` through what goes wrong: a SIGKILL with acks in flight, a faulty provider
//! (`walletctl provider-sim`), acks with hostile text, an ack still undecidable at its last
//! delivery.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::json;
use testkit::commands::{ack, transfer};
use testkit::eventually;

mod common;

use common::*;

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
