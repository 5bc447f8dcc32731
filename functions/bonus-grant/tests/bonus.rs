//! `bonus-grant` against the real NATS, PostgreSQL and Redis: every rejection of CONTRACT §4,
//! exact budgets and limits under concurrency, the cheap path, Redis losing its data, and a
//! crash between the Redis reservation and the commit.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde_json::json;
use testkit::commands::grant;
use testkit::{Proc, TestEnv};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_reason_in_the_contracts_order() {
    let env = TestEnv::new().await;
    assert_eq!(
        create(&env, &args("c-1", "10", "5", 1)).await,
        "campaign c-1: created"
    );
    assert_eq!(
        create(&env, &args("c-1", "10.00", "5.00", 1)).await,
        "campaign c-1: unchanged"
    );
    let e = wallet_ops::campaign::create(&env.config, &args("c-1", "20", "5", 1))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "campaign `c-1` exists with other parameters: budget is 10.00, not 20.00"
    );
    let mut later = args("c-later", "10", "1", 1);
    later.starts = Some("2099-01-01T00:00:00Z".into());
    create(&env, &later).await;
    let mut over = args("c-over", "10", "1", 1);
    over.ends = Some("2020-01-01T00:00:00Z".into());
    create(&env, &over).await;

    let bonus = env.spawn("bonus-grant", &[]);
    let mut events = env.events().await;
    env.run_commands(&mut events, "bonus", vec![grant("g-1", "c-1", "u-1")])
        .await;
    env.run_commands(
        &mut events,
        "bonus",
        vec![
            grant("g-unknown", "c-none", "u-1"),
            grant("g-badcamp", "bad campaign", "u-1"),
            grant("g-user", "c-1", "bad user"),
            grant("g-later", "c-later", "u-1"),
            grant("g-over", "c-over", "u-1"),
            grant("g-limit", "c-1", "u-1"),
        ],
    )
    .await;
    env.run_commands(&mut events, "bonus", vec![grant("g-2", "c-1", "u-2")])
        .await;
    env.run_commands(&mut events, "bonus", vec![grant("g-3", "c-1", "u-3")])
        .await;

    let g1 = events.by_id("bonus:g-1:granted", T).await;
    assert_eq!(g1.subject, env.subject("wallet.events.bonus.granted"));
    assert_eq!(
        g1.without_at(),
        json!({"schema_version": 1, "id": "g-1", "entity": "bonus", "status": "granted", "user_id": "u-1",
               "currency": "USD", "amount": "5.00", "balance": "5.00", "reason": null,
               "campaign_id": "c-1"})
    );
    let rejected = |id: &str, reason: &str, campaign: Option<&str>, user: Option<&str>| {
        json!({"schema_version": 1, "id": id, "entity": "bonus", "status": "rejected", "user_id": user,
               "currency": null, "amount": null, "balance": null, "reason": reason,
               "campaign_id": campaign})
    };
    for (id, want) in [
        (
            "g-unknown",
            rejected("g-unknown", "unknown_campaign", None, None),
        ),
        (
            "g-badcamp",
            rejected("g-badcamp", "unknown_campaign", None, None),
        ),
        (
            "g-user",
            rejected("g-user", "invalid_user_id", Some("c-1"), None),
        ),
        (
            "g-later",
            rejected("g-later", "campaign_inactive", Some("c-later"), Some("u-1")),
        ),
        (
            "g-over",
            rejected("g-over", "campaign_inactive", Some("c-over"), Some("u-1")),
        ),
        (
            "g-limit",
            rejected("g-limit", "limit_reached", Some("c-1"), Some("u-1")),
        ),
        (
            "g-3",
            rejected("g-3", "campaign_exhausted", Some("c-1"), Some("u-3")),
        ),
    ] {
        let e = events.by_id(&format!("bonus:{id}:rejected"), T).await;
        assert_eq!(e.without_at(), want, "{id}");
    }
    assert_eq!(granted_total(&env, "c-1").await, (Decimal::from(10), 2));

    // A copy of a rejection answered from Redis is answered the same; the same id with another
    // payload is an id_conflict.
    let mut other = grant("g-3", "c-1", "u-4");
    other.1 = "g-3-other".into();
    env.publish_many(vec![other]).await;
    let mut dlq = env.dead_letters().await;
    let letter = dlq.count(1, T).await[0].clone();
    assert_eq!(letter.header("Wallet-Dlq-Reason"), "id_conflict");

    let show = wallet_ops::campaign::show(&env.config, "c-1")
        .await
        .unwrap();
    assert_eq!(
        (show.granted.as_str(), show.grants, show.users),
        ("10.00", 2, 2)
    );
    let show = show.to_string();
    assert!(
        show.contains("granted   10.00 in 2 grant(s) to 2 user(s); 0.00 left"),
        "{show}"
    );
    let list = wallet_ops::campaign::list(&env.config).await.unwrap();
    assert_eq!(list.0.len(), 3);
    let list = list.to_string();
    assert_eq!(list.lines().count(), 4, "{list}");
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    drop(bonus);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flash_crowd_of_5000_gets_exactly_500_envelopes_and_losers_never_reach_postgres() {
    let env = TestEnv::new().await;
    create(&env, &args("red", "1000", "2", 1)).await;
    let replicas = [env.spawn("bonus-grant", &[]), env.spawn("bonus-grant", &[])];
    for r in &replicas {
        env.ready(r).await;
    }
    let mut events = env.events().await;
    let grants = (0..5000)
        .map(|i| grant(&format!("g-{i}"), "red", &format!("u-{i}")))
        .collect();
    env.run_commands(&mut events, "bonus", grants).await;
    let granted = outcomes(&events, "granted");
    let rejected = outcomes(&events, "rejected");
    assert_eq!(granted.len(), 500);
    assert_eq!(rejected.len(), 4500);
    assert!(
        rejected
            .iter()
            .all(|r| r.body["reason"] == "campaign_exhausted")
    );
    assert_eq!(granted_total(&env, "red").await, (Decimal::from(1000), 500));
    let users: HashSet<&str> = granted
        .iter()
        .map(|r| r.body["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 500);

    // The cheap path: an exhausted campaign is answered from Redis, with no transaction.
    let procs: Vec<&Proc> = replicas.iter().collect();
    let before = transactions(&procs).await;
    let more = (5000..6000)
        .map(|i| grant(&format!("g-{i}"), "red", &format!("u-{i}")))
        .collect();
    env.run_commands(&mut events, "bonus", more).await;
    assert_eq!(outcomes(&events, "rejected").len(), 5500);
    assert_eq!(
        transactions(&procs).await,
        before,
        "PostgreSQL transactions for rejections"
    );
    audit_clean(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_grants_of_one_user_with_a_limit_of_three_grant_three() {
    let env = TestEnv::new().await;
    create(&env, &args("c-3", "1000", "1.50", 3)).await;
    let _replicas = [env.spawn("bonus-grant", &[]), env.spawn("bonus-grant", &[])];
    let mut events = env.events().await;
    let grants = (0..50)
        .map(|i| grant(&format!("g-{i}"), "c-3", "u-1"))
        .collect();
    env.run_commands(&mut events, "bonus", grants).await;
    assert_eq!(outcomes(&events, "granted").len(), 3);
    let rejected = outcomes(&events, "rejected");
    assert_eq!(rejected.len(), 47);
    assert!(rejected.iter().all(|r| r.body["reason"] == "limit_reached"));
    assert_eq!(
        env.stored_balance("u-1", "bonus", "USD").await,
        Decimal::new(450, 2)
    );
    audit_clean(&env).await;
}
