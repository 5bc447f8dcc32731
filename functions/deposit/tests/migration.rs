//! A ledger written before the partitions (migration V11) is migrated by `walletctl setup` and
//! deposits go on: its wallets and postings move to their owners' partitions, its platform
//! account becomes partition 0's, and the audit finds old and new entries consistent.

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

    let report = env.setup().await;
    assert!(
        report.iter().any(|l| l.contains("V11__ledger_partitions")),
        "{report:?}"
    );
    let partitions = |sql: &'static str| {
        let pg = &pg;
        async move {
            pg.query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i16>(1)))
                .collect::<Vec<_>>()
        }
    };
    // u-1 is in partition 2, u-7 in 144 (CONTRACT §3's vectors); the platform's account in 0.
    let accounts = "SELECT owner, partition FROM accounts ORDER BY owner";
    assert_eq!(
        partitions(accounts).await,
        [("".into(), 0), ("u-1".into(), 2), ("u-7".into(), 144)]
    );
    let postings = "SELECT a.owner, p.partition FROM postings p
                    JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
                    ORDER BY a.owner";
    assert_eq!(
        partitions(postings).await,
        [("".into(), 0), ("u-1".into(), 2), ("u-7".into(), 144)]
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
