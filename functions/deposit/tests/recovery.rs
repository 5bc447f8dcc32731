//! `deposit` through what goes wrong: replicas sharing a stream, a SIGKILL with deposits in
//! flight, Redis down, a tampered balance, a database restored under a running process.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use testkit::{TestEnv, completed, eventually};

const T: Duration = Duration::from_secs(60);

fn deposit(id: &str, user: &str, amount: &str, currency: &str) -> Vec<u8> {
    testkit::commands::deposit(id, user, amount, currency).2
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_5000_deposits_for_50_users_exactly() {
    let env = TestEnv::new().await;
    let a = env.spawn("deposit", &[("BATCH_MAX", "200")]);
    let b = env.spawn("deposit", &[("BATCH_MAX", "200")]);
    env.ready(&a).await;
    env.ready(&b).await;
    let mut events = env.events().await;
    let mut expected: std::collections::HashMap<String, rust_decimal::Decimal> = Default::default();
    let msgs: Vec<_> = (0..5000)
        .map(|i| {
            let (id, user) = (format!("d-{i}"), format!("u-{}", i % 50));
            // Amounts 0.01 … 1.00: sums are exact only if nothing is rounded.
            let amount = rust_decimal::Decimal::new(i % 100 + 1, 2);
            *expected.entry(user.clone()).or_default() += amount;
            (
                "wallet.deposit".to_owned(),
                id.clone(),
                deposit(&id, &user, &amount.to_string(), "USD"),
            )
        })
        .collect();
    env.publish_many(msgs).await;
    events
        .until(T * 2, "5000 completed deposits", |s| completed(s) >= 5000)
        .await;
    assert_eq!(expected.len(), 50);
    for (user, total) in &expected {
        assert_eq!(
            env.stored_balance(user, "main", "USD").await,
            *total,
            "{user}"
        );
    }
    assert!(
        a.metric("wallet_commands_processed_total").await > 0.0,
        "replica a did nothing"
    );
    assert!(
        b.metric("wallet_commands_processed_total").await > 0.0,
        "replica b did nothing"
    );
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_2000_deposits_in_flight_then_restart_applies_each_exactly_once() {
    let env = TestEnv::new().await;
    let mut first = env.spawn("deposit", &[("BATCH_MAX", "100")]);
    let mut events = env.events().await;
    let msgs: Vec<_> = (0..2000)
        .map(|i| {
            let id = format!("k-{i}");
            (
                "wallet.deposit".to_owned(),
                id.clone(),
                deposit(&id, &format!("u-{}", i % 20), "1.25", "USD"),
            )
        })
        .collect();
    env.publish_many(msgs).await;
    events
        .until(T, "some deposits done", |s| completed(s) >= 200)
        .await;
    first.kill9();
    let done_before = completed(&events.seen);
    assert!(
        done_before < 2000,
        "the crash came too late to prove anything"
    );
    let _second = env.spawn("deposit", &[("BATCH_MAX", "100")]);
    events
        .until(T * 2, "2000 completed deposits", |s| completed(s) >= 2000)
        .await;
    for u in 0..20 {
        // 100 deposits of 1.25 each.
        assert_eq!(
            env.stored_balance(&format!("u-{u}"), "main", "USD")
                .await
                .to_string(),
            "125.00",
            "u-{u}"
        );
    }
    let pg = env.pg().await;
    // One posting per deposit to its user; the platform's side, one per transaction, sums to
    // the deposits' total.
    let row = pg
        .query_one(
            "SELECT count(*) FILTER (WHERE command IS NOT NULL),
                    sum(amount) FILTER (WHERE command IS NULL)::text FROM postings",
            &[],
        )
        .await
        .unwrap();
    let (user_postings, platform): (i64, String) = (row.get(0), row.get(1));
    assert_eq!(user_postings, 2000, "one user posting per deposit, no more");
    assert_eq!(platform, "-2500.00");
    // The platform's side is posted in each user's partition: every partition's postings
    // balance on their own.
    let row = pg
        .query_one(
            "SELECT (SELECT count(DISTINCT partition) FROM postings WHERE command IS NULL),
                    (SELECT count(DISTINCT wallet_partition(owner)) FROM accounts WHERE owner <> ''),
                    (SELECT count(*) FROM (SELECT FROM postings GROUP BY partition
                                           HAVING sum(amount) <> 0) unbalanced)",
            &[],
        )
        .await
        .unwrap();
    let (platform_partitions, user_partitions, unbalanced): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    assert!(user_partitions > 10, "{user_partitions}");
    assert_eq!(platform_partitions, user_partitions);
    assert_eq!(unbalanced, 0);
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_holds_commands_without_effect_or_dead_letter_until_it_is_back() {
    let redis = testkit::PrivateRedis::start();
    let url = redis.url();
    let env = TestEnv::with_env(&[("REDIS_URL", &url)]).await;
    let deposit_proc = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    env.publish("wallet.deposit", "o-1", deposit("o-1", "u-1", "10", "USD"))
        .await;
    events.by_id("deposit:o-1:completed", T).await;

    redis.stop();
    env.publish("wallet.deposit", "o-2", deposit("o-2", "u-1", "5", "USD"))
        .await;
    // The function has met the outage (a positive signal, not a hopeful sleep)…
    eventually(T, "the function to see Redis down", || async {
        (deposit_proc.metric("wallet_transient_errors_total").await >= 2.0).then_some(())
    })
    .await;
    // …and applied nothing, dead-lettered nothing.
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(10)
    );
    redis.restart();
    let e = events.by_id("deposit:o-2:completed", T).await;
    assert_eq!(e.body["balance"], "15.00");
    let dlq = wallet_ops::dlq::list(&env.config, None).await.unwrap();
    assert!(
        dlq.is_empty(),
        "a transient failure was dead-lettered: {dlq:?}"
    );
    assert!(env.audit().await.ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_fails_on_a_tampered_balance() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    env.publish("wallet.deposit", "x-1", deposit("x-1", "u-1", "10", "USD"))
        .await;
    events.by_id("deposit:x-1:completed", T).await;
    assert!(env.audit().await.ok());
    // Changes the ledger behind the function's back, then audits it.
    let tampered = |sql: &'static str| {
        let env = &env;
        async move {
            env.pg().await.batch_execute(sql).await.unwrap();
            env.audit().await
        }
    };
    // The platform's side moved to another partition's account: the transaction still sums to
    // zero, but neither partition does on its own (u-1 is in partition 2).
    let report = tampered(
        "INSERT INTO accounts (partition, owner, kind, provider, currency)
             VALUES (5, '', 'platform', 'deposits', 'USD');
         UPDATE postings SET (partition, account_id) =
             (SELECT partition, id FROM accounts WHERE partition = 5)
         WHERE command IS NULL",
    )
    .await
    .to_string();
    assert!(
        report.contains(
            "FAIL  every journal entry since the ledger was partitioned sums to zero within each partition"
        ),
        "{report}"
    );
    assert!(
        report.contains("ok    every journal entry's postings sum to zero per currency"),
        "{report}"
    );
    let report = tampered("UPDATE accounts SET balance = balance + 1 WHERE owner = 'u-1'").await;
    assert!(!report.ok());
    assert!(
        report
            .to_string()
            .contains("FAIL  every wallet's balance equals the sum of its postings"),
        "{report}"
    );
    // The platform's side of the deposit's transaction made smaller: that entry no longer
    // balances, and no user wallet shows it.
    let report = tampered("UPDATE postings SET amount = amount + 1 WHERE command IS NULL")
        .await
        .to_string();
    assert!(
        report.contains("FAIL  every journal entry's postings sum to zero per currency"),
        "{report}"
    );
    // A user wallet's posting that no longer names its command.
    let report = tampered("UPDATE postings SET command = NULL WHERE command IS NOT NULL")
        .await
        .to_string();
    assert!(
        report.contains("FAIL  every posting to a user wallet names its command"),
        "{report}"
    );

    // As a script sees it: `walletctl audit --json` exits 1 on a breach and names it; exit 2
    // when it could not check at all.
    let audit = |extra: &[(&str, &str)]| {
        std::process::Command::new(testkit::binary("walletctl"))
            .args(["audit", "--json"])
            .envs(env.env())
            .envs(extra.iter().copied())
            .output()
            .unwrap()
    };
    let breached = audit(&[]);
    assert_eq!(breached.status.code(), Some(1), "{breached:?}");
    let json: serde_json::Value = serde_json::from_slice(&breached.stdout).unwrap();
    assert_eq!(json["ok"], false);
    let failed: Vec<&str> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["breaches"].as_array().unwrap().is_empty())
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        failed
            .iter()
            .any(|c| c.starts_with("every posting to a user wallet names its command")),
        "{failed:?}"
    );
    let port = testkit::free_port().to_string();
    let unreachable = format!("postgres://postgres@127.0.0.1:{port}/nothing");
    let could_not = audit(&[("DATABASE_URL", unreachable.as_str())]);
    assert_eq!(could_not.status.code(), Some(2), "{could_not:?}");
    assert!(could_not.stdout.is_empty(), "{could_not:?}");
    // A wallet stored in a partition that is not its owner's.
    let report = tampered("UPDATE accounts SET partition = 3 WHERE owner = 'u-1'")
        .await
        .to_string();
    assert!(
        report.contains("FAIL  every user wallet is in its owner's partition"),
        "{report}"
    );
    assert!(
        report.contains("u-1 main  USD: partition 3, its owner's 2"),
        "{report}"
    );
}

/// Two deposits of 10 USD to u-1 (the first creates its wallet and the platform account, the
/// second finds both, and the process remembers their ids), then `restore` run as a database
/// restored under the process, then a deposit of 5 USD to u-1, which must complete with u-1 at
/// 5.00. Returns the environment, to check where the deposit went.
async fn deposit_after_a_restore(restore: &str) -> TestEnv {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    for id in ["r-0", "r-1"] {
        env.publish("wallet.deposit", id, deposit(id, "u-1", "10", "USD"))
            .await;
        events.by_id(&format!("deposit:{id}:completed"), T).await;
    }
    env.pg().await.batch_execute(restore).await.unwrap();
    env.publish("wallet.deposit", "r-2", deposit("r-2", "u-1", "5", "USD"))
        .await;
    let e = events.by_id("deposit:r-2:completed", T).await;
    assert_eq!(e.body["balance"], "5.00");
    env
}

/// The process remembers wallets' ids; a database restored under it (point-in-time recovery, a
/// recreated database) may give a remembered id to another wallet. The lock notices, the batch is
/// retried, and the deposit lands on its own user's wallet.
#[tokio::test(flavor = "multi_thread")]
async fn a_remembered_wallet_id_that_now_names_another_wallet_is_not_credited() {
    // As a restore to before u-1's wallet existed, after which u-14's got the same id (u-14 is
    // in u-1's partition, 2: the key is the partition and the id).
    let env = deposit_after_a_restore(
        "CREATE TEMP TABLE w AS SELECT id FROM accounts WHERE owner = 'u-1';
         DELETE FROM postings WHERE account_id IN (SELECT id FROM w);
         DELETE FROM accounts WHERE id IN (SELECT id FROM w);
         INSERT INTO accounts (partition, id, owner, kind, provider, currency)
             OVERRIDING SYSTEM VALUE SELECT 2, id, 'u-14', 'main', '', 'USD' FROM w;",
    )
    .await;
    assert_eq!(
        env.stored_balance("u-14", "main", "USD").await,
        rust_decimal::Decimal::ZERO,
        "u-1's deposit credited the wallet that now has its old id"
    );
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(5)
    );
}

/// The same for a remembered platform account: after a restore its id may name a user's wallet,
/// which would take the platform's side of the deposit (a posting that moves no balance).
#[tokio::test(flavor = "multi_thread")]
async fn a_remembered_platform_account_id_that_now_names_a_user_wallet_gets_no_posting() {
    // As a restore to before the platform account existed (u-1's wallet, empty, did), after which
    // u-14's wallet got the platform account's id (u-14 is in u-1's partition, 2, and so is the
    // platform account u-1's deposits post to).
    let env = deposit_after_a_restore(
        "CREATE TEMP TABLE p AS SELECT id FROM accounts WHERE kind = 'platform';
         DELETE FROM postings;
         UPDATE accounts SET balance = 0 WHERE owner = 'u-1';
         DELETE FROM accounts WHERE id IN (SELECT id FROM p);
         INSERT INTO accounts (partition, id, owner, kind, provider, currency)
             OVERRIDING SYSTEM VALUE SELECT 2, id, 'u-14', 'main', '', 'USD' FROM p;",
    )
    .await;
    let pg = env.pg().await;
    let postings = |owner: &'static str| {
        let pg = &pg;
        async move {
            let row = pg
                .query_one(
                    "SELECT count(*), coalesce(sum(p.amount), 0) FROM postings p
                     JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id) WHERE a.owner = $1",
                    &[&owner],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, rust_decimal::Decimal>(1))
        }
    };
    assert_eq!(
        postings("u-14").await,
        (0, rust_decimal::Decimal::ZERO),
        "the platform's side of the deposit went to the wallet that now has its old id"
    );
    assert_eq!(postings("").await, (1, rust_decimal::Decimal::from(-5)));
}
