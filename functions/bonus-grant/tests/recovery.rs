//! `bonus-grant` when things go wrong: Redis losing its data or lying, a crash between the Redis
//! reservation and the commit, records that expire, campaigns that cannot be reconciled.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rust_decimal::Decimal;
use testkit::commands::grant;
use testkit::{TestEnv, eventually};

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn flushall_mid_campaign_changes_nothing() {
    // A Redis of the test's own: FLUSHALL on the shared one would hit every other test.
    let redis = testkit::PrivateRedis::start();
    let env = TestEnv::with_env(&[("REDIS_URL", &redis.url())]).await;
    create(&env, &args("c-flush", "300", "1", 1)).await;
    let _replicas = [env.spawn("bonus-grant", &[]), env.spawn("bonus-grant", &[])];
    let mut events = env.events().await;
    let first: Vec<_> = (0..200)
        .map(|i| grant(&format!("g-{i}"), "c-flush", &format!("u-{i}")))
        .collect();
    env.run_commands(&mut events, "bonus", first.clone()).await;
    assert_eq!(outcomes(&events, "granted").len(), 200);

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    // Copies of the granted ones (past the duplicate window), then 800 new claims.
    let copies: Vec<_> = first
        .into_iter()
        .map(|(s, id, p)| (s, format!("{id}-copy"), p))
        .collect();
    env.publish_many(copies).await;
    let rest = (200..1000)
        .map(|i| grant(&format!("g-{i}"), "c-flush", &format!("u-{i}")))
        .collect();
    env.run_commands(&mut events, "bonus", rest).await;
    env.drained("bonus-grant").await; // the copies too
    assert_eq!(outcomes(&events, "granted").len(), 300);
    assert_eq!(outcomes(&events, "rejected").len(), 700);
    assert!(
        outcomes(&events, "rejected")
            .iter()
            .all(|r| r.body["reason"] == "campaign_exhausted")
    );
    assert_eq!(
        granted_total(&env, "c-flush").await,
        (Decimal::from(300), 300)
    );
    audit_clean(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_reservation_and_commit_gives_the_budget_back_and_the_redelivery_grants_once()
 {
    let env = TestEnv::new().await;
    let mut random = args("c-rand", "100", "1", 1);
    random.amount = None;
    random.amount_min = Some("1.00".into());
    random.amount_max = Some("9.99".into());
    create(&env, &random).await;
    let mut crashing = env.spawn(
        "bonus-grant",
        &[("WALLET_FAILPOINT", "bonus-after-reserve")],
    );
    env.publish_many(vec![grant("g-r", "c-rand", "u-1")]).await;
    let status = crashing
        .signal_and_wait(nix::sys::signal::Signal::SIGCONT, T)
        .await;
    assert_eq!(status.code(), Some(70), "the fail point ended the process");

    let client = redis::Client::open(env.config.redis_url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let record = record(&conn, &env.config.names.redis_key("bonus:g:g-r"))
        .await
        .unwrap();
    let reserved: i64 = record.split('|').nth(1).unwrap().parse().unwrap();
    assert!((100..=999).contains(&reserved), "{record}");
    let redis_reserved = || async {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("HGET")
            .arg(env.config.names.redis_key("bonus:c:c-rand"))
            .arg("reserved")
            .query_async::<i64>(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(redis_reserved().await, reserved);

    // A healthy replica's reconciler gives the budget back...
    let _healthy = env.spawn("bonus-grant", &[("BONUS_RESERVATION_TIMEOUT", "1s")]);
    eventually(T, "the reservation given back", || async {
        (redis_reserved().await == 0).then_some(())
    })
    .await;
    // ...and the redelivery (after the consumer's ack wait) reserves again, drawing the same
    // amount from the same grant id, and commits once.
    let mut events = env.events().await;
    let e = events
        .by_id("bonus:g-r:granted", Duration::from_secs(90))
        .await;
    let amount = Decimal::new(reserved, 2);
    assert_eq!(e.body["amount"], amount.to_string());
    assert_eq!(granted_total(&env, "c-rand").await, (amount, 1));
    assert_eq!(outcomes(&events, "granted").len(), 1);
    audit_clean(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_holds_the_budget_and_the_limit_when_redis_is_wrong() {
    let env = TestEnv::new().await;
    create(&env, &args("c-pg", "5", "1", 1)).await;
    // Redis now believes in a far larger budget and limit than PostgreSQL.
    let client = redis::Client::open(env.config.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(env.config.names.redis_key("bonus:c:c-pg"))
        .arg("budget")
        .arg(100_000)
        .arg("per_user")
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _bonus = env.spawn("bonus-grant", &[("BONUS_RESERVATION_TIMEOUT", "1s")]);
    let mut events = env.events().await;
    let grants: Vec<_> = (0..10)
        .map(|i| grant(&format!("g-{i}"), "c-pg", &format!("u-{i}")))
        .collect();
    env.run_commands(&mut events, "bonus", grants).await;
    // Again for a user who got one: two loops in flight decide one publish's commands in either
    // order, so which five were granted is not known before.
    let lucky = outcomes(&events, "granted")[0].body["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.run_commands(&mut events, "bonus", vec![grant("g-again", "c-pg", &lucky)])
        .await;
    assert_eq!(outcomes(&events, "granted").len(), 5);
    let reasons: Vec<&str> = outcomes(&events, "rejected")
        .iter()
        .map(|r| r.body["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 6);
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "campaign_exhausted")
            .count(),
        5
    );
    let again = events.by_id("bonus:g-again:rejected", T).await;
    assert_eq!(again.body["reason"], "limit_reached");
    assert_eq!(granted_total(&env, "c-pg").await, (Decimal::from(5), 5));
    // The reservations PostgreSQL refused are given back after the timeout.
    eventually(T, "refused reservations given back", || async {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let reserved: i64 = redis::cmd("HGET")
            .arg(env.config.names.redis_key("bonus:c:c-pg"))
            .arg("reserved")
            .query_async(&mut conn)
            .await
            .unwrap();
        (reserved == 500).then_some(())
    })
    .await;
}

async fn redis_conn(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.config.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A grant's record in Redis, at its full key.
async fn record(conn: &redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn.clone())
        .await
        .unwrap()
}

/// Once `bonus-grant` has drained: `grant` was never answered rejected.
async fn never_rejected(env: &TestEnv, events: &mut testkit::Reader, grant: &str) {
    env.drained("bonus-grant").await;
    events.read_for(Duration::from_secs(1)).await;
    let rejected = format!("bonus:{grant}:rejected");
    assert!(
        !events.seen.iter().any(|r| r.msg_id == rejected),
        "a granted grant was answered rejected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_of_fifteen_digits_of_minor_units_is_granted() {
    let env = TestEnv::new().await;
    let mut btc = args("c-btc", "2000000", "1000000", 1);
    btc.currency = "BTC".into();
    create(&env, &btc).await;
    let _bonus = env.spawn("bonus-grant", &[]);
    let mut events = env.events().await;
    env.publish_many(vec![grant("g-btc", "c-btc", "u-1")]).await;
    let e = events.by_id("bonus:g-btc:granted", T).await;
    assert_eq!(e.body["amount"], "1000000.00000000");
    audit_clean(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_whose_record_cannot_be_read_is_dead_lettered_alone() {
    let env = TestEnv::new().await;
    create(&env, &args("c-p", "100", "1", 1)).await;
    let streams = env.streams_file_dead_letter_after(2);
    let _bonus = env.spawn("bonus-grant", &[("STREAMS_FILE", &streams)]);
    let mut events = env.events().await;
    env.run_commands(&mut events, "bonus", vec![grant("g-0", "c-p", "u-0")])
        .await;
    // A record of this epoch that no runtime can parse.
    let mut conn = redis_conn(&env).await;
    let epoch: String = redis::cmd("HGET")
        .arg(env.config.names.redis_key("bonus:c:c-p"))
        .arg("epoch")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(env.config.names.redis_key("bonus:g:g-bad"))
        .arg(format!("R|1e+14|tok|{epoch}|u-1|c-p"))
        .query_async(&mut conn)
        .await
        .unwrap();
    env.publish_many(vec![
        grant("g-bad", "c-p", "u-1"),
        grant("g-ok", "c-p", "u-2"),
    ])
    .await;
    events.by_id("bonus:g-ok:granted", T).await;
    let mut dlq = env.dead_letters().await;
    let letter = &dlq.count(1, T).await[0];
    assert_eq!(letter.header("Wallet-Dlq-Msg-Id"), "g-bad");
    assert_eq!(letter.header("Wallet-Dlq-Reason"), "max_deliver");
    // And the consumer goes on: a later grant is answered.
    env.run_commands(&mut events, "bonus", vec![grant("g-3", "c-p", "u-3")])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_granted_grant_is_never_refused_after_its_campaign_is_reloaded() {
    let env = TestEnv::new().await;
    create(&env, &args("c-r", "1", "1", 1)).await;
    let mut bonus = env.spawn("bonus-grant", &[]);
    let mut events = env.events().await;
    env.run_commands(&mut events, "bonus", vec![grant("g-1", "c-r", "u-1")])
        .await;
    events.by_id("bonus:g-1:granted", T).await;
    let mut conn = redis_conn(&env).await;
    let key = env.config.names.redis_key("bonus:g:g-1");
    let committed = eventually(T, "the reconciler to mark the grant committed", || {
        let (conn, key) = (conn.clone(), key.clone());
        async move { record(&conn, &key).await.filter(|r| r.starts_with("C|")) }
    })
    .await;
    bonus.kill9();
    // As Redis is between the commit and the reconciler's pass: the grant still a reservation;
    // then the campaign lost (a Redis failover), so that its next grant reloads it.
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(format!("R{}", &committed[1..]))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(env.config.names.redis_key("bonus:c:c-r"))
        .query_async(&mut conn)
        .await
        .unwrap();
    // A copy of the granted grant (another message id), and a grant that must be refused.
    let (subject, _, payload) = grant("g-1", "c-r", "u-1");
    env.publish_many(vec![
        (subject, "g-1-copy".into(), payload),
        grant("g-2", "c-r", "u-2"),
    ])
    .await;
    let _bonus = env.spawn("bonus-grant", &[]);
    let refused = events.by_id("bonus:g-2:rejected", T).await;
    assert_eq!(refused.body["reason"], "campaign_exhausted");
    never_rejected(&env, &mut events, "g-1").await;
    let record = record(&conn, &key).await.unwrap();
    assert!(record.starts_with("C|"), "{record}");
    audit_clean(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_left_unchecked_is_checked_in_postgres_before_it_is_answered() {
    let env = TestEnv::new().await;
    create(&env, &args("c-u", "10", "1", 1)).await;
    let _bonus = env.spawn("bonus-grant", &[]);
    let mut events = env.events().await;
    env.run_commands(&mut events, "bonus", vec![grant("g-1", "c-u", "u-1")])
        .await;
    events.by_id("bonus:g-1:granted", T).await;
    // A second grant of the same user: refused, checked in PostgreSQL, then answered.
    env.run_commands(&mut events, "bonus", vec![grant("g-2", "c-u", "u-1")])
        .await;
    let refused = events.by_id("bonus:g-2:rejected", T).await;
    assert_eq!(refused.body["reason"], "limit_reached");
    let mut conn = redis_conn(&env).await;
    let key = |g: &str| env.config.names.redis_key(&format!("bonus:g:{g}"));
    assert_eq!(
        record(&conn, &key("g-2")).await.as_deref(),
        Some("X|limit_reached|c-u|u-1")
    );
    // What a screen leaves when it fails between Redis and PostgreSQL (PostgreSQL down): g-1's
    // command redelivered after Redis lost its data, decided afresh and refused (its user is at
    // the limit: by g-1 itself), never checked.
    let _: () = redis::cmd("SET")
        .arg(key("g-1"))
        .arg("x|limit_reached|c-u|u-1")
        .arg("EX")
        .arg(3600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (subject, _, payload) = grant("g-1", "c-u", "u-1");
    env.publish_many(vec![(subject, "g-1-again".into(), payload)])
        .await;
    never_rejected(&env, &mut events, "g-1").await;
    let committed = record(&conn, &key("g-1")).await.unwrap();
    assert!(committed.starts_with("C|"), "{committed}");
    assert_eq!(granted_total(&env, "c-u").await, (Decimal::from(1), 1));
    audit_clean(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_campaign_that_cannot_be_reconciled_does_not_stop_the_others() {
    let env = TestEnv::new().await;
    let mut euro = args("c-a", "100", "1", 1);
    euro.currency = "EUR".into();
    create(&env, &euro).await;
    create(&env, &args("c-b", "100", "1", 1)).await;
    // EUR is no longer configured: c-a cannot be loaded.
    let _bonus = env.spawn(
        "bonus-grant",
        &[
            ("WALLET_CURRENCIES", "USD:2"),
            ("BONUS_RESERVATION_TIMEOUT", "1s"),
        ],
    );
    let mut events = env.events().await;
    env.run_commands(&mut events, "bonus", vec![grant("g-0", "c-b", "u-0")])
        .await;
    let mut conn = redis_conn(&env).await;
    let key = |k: &str| env.config.names.redis_key(k);
    // c-a on an older epoch than PostgreSQL's, so that every pass tries to load it (first: ids
    // in order), and c-b with a reservation that never commits.
    let _: () = redis::cmd("HSET")
        .arg(key("bonus:c:c-a"))
        .arg("epoch")
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let epoch: String = redis::cmd("HGET")
        .arg(key("bonus:c:c-b"))
        .arg("epoch")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(key("bonus:g:g-lost"))
        .arg(format!("R|100|tok|{epoch}|u-9|c-b"))
        .ignore()
        .cmd("HINCRBY")
        .arg(key("bonus:c:c-b"))
        .arg("reserved")
        .arg(100)
        .ignore()
        .cmd("HINCRBY")
        .arg(key("bonus:u:c-b"))
        .arg("u-9")
        .arg(1)
        .ignore()
        .cmd("ZADD")
        .arg(key("bonus:p:c-b"))
        .arg(0)
        .arg("g-lost")
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(T, "c-b's lost reservation given back", || {
        let mut conn = conn.clone();
        let key = key("bonus:c:c-b");
        async move {
            let reserved: i64 = redis::cmd("HGET")
                .arg(key)
                .arg("reserved")
                .query_async(&mut conn)
                .await
                .unwrap();
            (reserved == 100).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn records_expire_and_a_copy_of_a_granted_grant_is_recognised_in_postgres() {
    let env = TestEnv::new().await;
    create(&env, &args("c-full", "1", "1", 1)).await;
    create(&env, &args("c-open", "10", "1", 5)).await;
    let _bonus = env.spawn("bonus-grant", &[]);
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "bonus",
        vec![grant("g-1", "c-full", "u-1"), grant("g-2", "c-open", "u-2")],
    )
    .await;
    let mut conn = redis_conn(&env).await;
    let key = |k: &str| env.config.names.redis_key(k);
    for g in ["bonus:g:g-1", "bonus:g:g-2"] {
        let committed = eventually(T, "the committed record", || {
            let (conn, k) = (conn.clone(), key(g));
            async move { record(&conn, &k).await.filter(|r| r.starts_with("C|")) }
        })
        .await;
        // Kept for a bounded time: Redis does not grow with every grant ever made.
        let ttl: i64 = redis::cmd("TTL")
            .arg(key(g))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=25 * 3600).contains(&ttl), "{g}: {committed} ttl {ttl}");
        // Expired.
        let _: () = redis::cmd("DEL")
            .arg(key(g))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // Copies: of a grant whose campaign is exhausted and whose user is at the limit (judged
    // afresh: refused), and of one whose campaign has budget (judged afresh: reserved again).
    let copies = [grant("g-1", "c-full", "u-1"), grant("g-2", "c-open", "u-2")]
        .into_iter()
        .map(|(s, id, p)| (s, format!("{id}-copy"), p))
        .collect();
    env.publish_many(copies).await;
    env.drained("bonus-grant").await;
    events.read_for(Duration::from_secs(1)).await;
    assert!(
        !events.seen.iter().any(|r| r.msg_id.ends_with(":rejected")),
        "a granted grant was refused"
    );
    assert_eq!(outcomes(&events, "granted").len(), 2);
    for g in ["bonus:g:g-1", "bonus:g:g-2"] {
        let r = record(&conn, &key(g)).await.unwrap();
        assert!(r.starts_with("C|"), "{g}: {r}");
    }
    // The copy's reservation was given back at once: one grant's worth counted, one per user.
    let (reserved, count): (i64, i64) = redis::pipe()
        .cmd("HGET")
        .arg(key("bonus:c:c-open"))
        .arg("reserved")
        .cmd("HGET")
        .arg(key("bonus:u:c-open"))
        .arg("u-2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!((reserved, count), (100, 1));
    assert_eq!(granted_total(&env, "c-open").await, (Decimal::from(1), 1));
    audit_clean(&env).await;
}
