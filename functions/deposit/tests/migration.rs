//! A ledger written before the partitions (migration V11) is migrated by `walletctl setup` and
//! deposits go on: its wallets and postings move to their owners' partitions, its platform
//! account becomes partition 0's, and the audit finds old and new entries consistent. The rows
//! keyed by ids (V13) take their users' partitions where a row names its user.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rust_decimal::Decimal;
use testkit::TestEnv;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_written_before_partitions_is_partitioned_and_deposits_go_on() {
    let env = TestEnv::new().await;
    env.database_at(10).await;
    let pg = env.pg().await;
    // Two deposits of one transaction, as V6 to V10 wrote them: one posting per user, one to
    // the platform account for both.
    pg.batch_execute(
        "INSERT INTO accounts (owner, kind, provider, currency, balance, version) VALUES
             ('u-1', 'main', '', 'USD', 10, 1),
             ('u-7', 'main', '', 'USD', 5, 1),
             ('', 'platform', 'deposits', 'USD', 0, 0);
         INSERT INTO postings (account_id, amount, command, entry)
             SELECT id, balance, 'deposit:old-' || owner, 1 FROM accounts WHERE owner <> '';
         INSERT INTO postings (account_id, amount, entry)
             SELECT id, -15, 1 FROM accounts WHERE owner = '';
         INSERT INTO commands (function, id, fingerprint)
             VALUES ('deposit', 'old-u-1', '\\x00'), ('deposit', 'old-u-7', '\\x00');",
    )
    .await
    .unwrap();

    migrate(&env, "V11__ledger_partitions").await;
    let partitions = |sql| partitions(&pg, sql);
    // u-1 is in partition 2, u-7 in 144 (CONTRACT §3's vectors); the platform's account in 0.
    let accounts = "SELECT owner, partition FROM accounts ORDER BY owner";
    assert_eq!(
        partitions(accounts).await,
        [
            ("".into(), Some(0)),
            ("u-1".into(), Some(2)),
            ("u-7".into(), Some(144))
        ]
    );
    let postings = "SELECT a.owner, p.partition FROM postings p
                    JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
                    ORDER BY a.owner";
    assert_eq!(
        partitions(postings).await,
        [
            ("".into(), Some(0)),
            ("u-1".into(), Some(2)),
            ("u-7".into(), Some(144))
        ]
    );

    let _deposit = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    for (id, user, amount, balance) in [("d-1", "u-1", "2", "12.00"), ("d-2", "u-7", "3", "8.00")] {
        env.publish(
            "wallet.deposit",
            id,
            testkit::commands::deposit(id, user, amount, "USD").2,
        )
        .await;
        let e = events.by_id(&format!("deposit:{id}:completed"), T).await;
        assert_eq!(e.body["balance"], balance);
    }
    // The new deposits' platform side is in their users' partitions; the old account keeps its
    // one posting.
    let platform = pg
        .query(
            "SELECT a.partition, sum(p.amount)
             FROM accounts a JOIN postings p ON (p.partition, p.account_id) = (a.partition, a.id)
             WHERE a.kind = 'platform' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i16>(0), r.get::<_, Decimal>(1)))
        .collect::<Vec<_>>();
    assert_eq!(
        platform,
        [
            (0, Decimal::from(-15)),
            (2, Decimal::from(-2)),
            (144, Decimal::from(-3))
        ]
    );
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_keyed_by_ids_take_their_users_partitions() {
    let env = TestEnv::new().await;
    env.database_at(12).await;
    let pg = env.pg().await;
    // One row of each table as V12 left them, for u-1 (partition 2) and u-7 (144).
    pg.batch_execute(
        "INSERT INTO commands (function, id, fingerprint) VALUES ('deposit', 'd-1', '\\x00');
         INSERT INTO transfers (id, user_id, provider, currency, amount)
             VALUES ('t-1', 'u-1', 'alpha', 'USD', 1), ('t-7', 'u-7', 'alpha', 'USD', 1);
         INSERT INTO withdrawals (id, user_id, psp, currency, amount, day)
             VALUES ('w-7', 'u-7', 'bank', 'USD', 1, '2026-12-07');
         INSERT INTO withdrawal_days (user_id, currency, day, amount)
             VALUES ('u-7', 'USD', '2026-12-07', 1);
         INSERT INTO campaigns (id, currency, budget, amount, per_user)
             VALUES ('c-1', 'USD', 10, 1, 1);
         INSERT INTO grants (id, campaign_id, user_id, amount, token)
             VALUES ('g-1', 'c-1', 'u-1', 1, 'k');
         INSERT INTO grant_releases (grant_id, token) VALUES ('g-2', 'k');",
    )
    .await
    .unwrap();

    migrate(&env, "V13__id_partitions").await;
    let partitions = |sql| partitions(&pg, sql);
    let id = |id: &str, p| (id.to_owned(), p);
    assert_eq!(
        partitions("SELECT id, partition FROM transfers ORDER BY id").await,
        [id("t-1", Some(2)), id("t-7", Some(144))]
    );
    assert_eq!(
        partitions("SELECT id, partition FROM withdrawals").await,
        [id("w-7", Some(144))]
    );
    assert_eq!(
        partitions("SELECT user_id, partition FROM withdrawal_days").await,
        [id("u-7", Some(144))]
    );
    assert_eq!(
        partitions("SELECT id, partition FROM grants").await,
        [id("g-1", Some(2))]
    );
    // Neither names its user: no partition, and a split keeps such rows on every shard.
    assert_eq!(
        partitions("SELECT id, partition FROM commands").await,
        [id("d-1", None)]
    );
    assert_eq!(
        partitions("SELECT grant_id, partition FROM grant_releases").await,
        [id("g-2", None)]
    );
}

/// `walletctl setup`, which must have applied `migration`.
async fn migrate(env: &TestEnv, migration: &str) {
    let report = env.setup().await;
    assert!(report.iter().any(|l| l.contains(migration)), "{report:?}");
}

/// The rows of `sql`: a name and a partition (none where it is NULL).
async fn partitions(pg: &tokio_postgres::Client, sql: &str) -> Vec<(String, Option<i16>)> {
    pg.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}
