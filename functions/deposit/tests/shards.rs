//! The ledger on two PostgreSQL servers (docs/sharding.md, steps 3 and 4): one map
//! (`SHARDS_FILE`), one process of each sharded function per shard (`SHARD`), each reading its
//! shard's partitions (commands and providers' answers) and committing to its shard's database;
//! a shard that is down holds up its own commands only.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use rust_decimal::Decimal;
use testkit::{PrivateNats, PrivatePostgres, TestEnv, commands, namespace, pinned_nats_server};
use wallet_runtime::partition::{self, Partition};

fn owner(pg: &PrivatePostgres, role: &str) -> String {
    format!("postgres://{role}@127.0.0.1:{}/wallet", pg.port)
}

/// Deposits of `amount` for `users`, on their partitions' subjects, with ids `<round>-<user>`.
fn deposits(round: &str, users: &[String], amount: &str) -> Vec<commands::Msg> {
    users
        .iter()
        .map(|u| {
            let (_, id, payload) = commands::deposit(&format!("{round}-{u}"), u, amount, "USD");
            (partition::subject("wallet.deposit", u), id, payload)
        })
        .collect()
}

/// Each user's `main` USD balance in the shard's database.
async fn mains(pg: &PrivatePostgres) -> Vec<(String, Decimal)> {
    let (client, conn) = tokio_postgres::connect(&pg.url("wallet"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT owner, balance FROM accounts WHERE kind = 'main' ORDER BY owner",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deposits_commit_in_their_users_shard_and_a_shard_down_holds_up_only_its_own() {
    // Several filter subjects per consumer: the pinned nats-server (2.10 or later).
    let nats = PrivateNats::of(pinned_nats_server(), |_| String::new());
    let (pg_a, pg_b) = (
        PrivatePostgres::start(&[], None),
        PrivatePostgres::start(&[], None),
    );
    let map = format!(
        "[[shard]]\nname = \"a\"\ndatabase_url = \"{}\"\npartitions = \"0-127\"\n\
         [[shard]]\nname = \"b\"\ndatabase_url = \"{}\"\npartitions = \"128-255\"\n",
        pg_a.url("wallet"),
        pg_b.url("wallet")
    );
    let file = pg_a.write_file("shards.toml", map.as_bytes(), 0o644);
    let file = file.to_str().unwrap();
    let env = TestEnv::in_namespace(
        namespace(),
        &[("NATS_URL", &nats.url()), ("SHARDS_FILE", file)],
    )
    .await;

    // A process pointed at the wrong database, or at a shard's without SHARD, refuses to start.
    for (vars, said) in [
        (
            vec![
                ("SHARD", "b".to_owned()),
                ("DATABASE_URL", owner(&pg_a, "wallet_deposit")),
            ],
            "SHARD=b, but DATABASE_URL is shard `a`'s database",
        ),
        (
            vec![("DATABASE_URL", owner(&pg_a, "wallet_deposit"))],
            "DATABASE_URL is shard `a`'s database: set SHARD=a",
        ),
    ] {
        let out = std::process::Command::new(testkit::binary("deposit"))
            .envs(env.env())
            .envs(vars)
            .env("HTTP_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(said), "{stderr}");
    }

    // Setup never moves a partition, nor turns one shard's database into another's.
    for (edited, said) in [
        (
            map.replace("0-127", "0-126").replace("128-255", "127-255"),
            "SHARDS_FILE moves 1 partition(s), the first 127 from shard `a` to `b`",
        ),
        (
            map.replace("name = \"a\"", "name = \"c\""),
            "is shard `a`'s database; SHARDS_FILE gives it to shard `c`",
        ),
    ] {
        let path = pg_b.write_file("edited.toml", edited.as_bytes(), 0o644);
        let mut config = env.config.clone();
        config.shards_file = Some(path);
        let refused = wallet_ops::setup::setup(&config, &testkit::topology())
            .await
            .expect_err("refused");
        assert!(format!("{refused:#}").contains(said), "{refused:#}");
    }

    // The bare subject names no shard: no stream takes it, and the publisher hears so.
    let bare = env
        .js
        .publish(env.subject("wallet.deposit"), "{}".into())
        .await
        .unwrap()
        .await;
    assert!(bare.is_err(), "{bare:?}");

    // Every function that may run sharded, once per shard, each as its own role.
    let functions = [
        "deposit",
        "transfer-out",
        "provider-ack",
        "transfer-in",
        "withdraw",
        "payout-ack",
    ];
    let procs: Vec<_> = [("a", &pg_a), ("b", &pg_b)]
        .into_iter()
        .flat_map(|(shard, pg)| {
            functions.map(|f| {
                let url = owner(pg, &wallet_ops::setup::role(f));
                env.spawn(f, &[("SHARD", shard), ("DATABASE_URL", &url)])
            })
        })
        .collect();
    for p in &procs {
        env.ready(p).await;
    }
    let status = wallet_ops::status::status(&env.config, &testkit::topology())
        .await
        .unwrap();
    let consumers: Vec<&str> = status.0.iter().map(|c| c.consumer.as_str()).collect();
    for f in functions {
        for shard in ["a", "b"] {
            let name = env.config.names.name(&format!("{f}-{shard}"));
            assert!(consumers.contains(&name.as_str()), "{consumers:?}");
        }
    }

    let users: Vec<String> = (0..200).map(|u| format!("u-{u}")).collect();
    let (in_a, in_b): (Vec<String>, Vec<String>) = users
        .iter()
        .cloned()
        .partition(|u| Partition::of(u).get() < 128);
    assert!(
        in_a.len() > 50 && in_b.len() > 50,
        "{} {}",
        in_a.len(),
        in_b.len()
    );

    let mut events = env.events().await;
    env.run_commands(&mut events, "deposit", deposits("d1", &users, "10.00"))
        .await;
    let holds = |users: &[String], amount: &str| -> Vec<(String, Decimal)> {
        let mut want: Vec<_> = users
            .iter()
            .map(|u| (u.clone(), amount.parse().unwrap()))
            .collect();
        want.sort();
        want
    };
    assert_eq!(mains(&pg_a).await, holds(&in_a, "10.00"));
    assert_eq!(mains(&pg_b).await, holds(&in_b, "10.00"));

    // Shard b's PostgreSQL crashes: its deposits wait in the stream while shard a's flow on.
    pg_b.stop();
    let mut round_a = env.events().await;
    let ids = |round: &str, users: &[String]| -> BTreeSet<String> {
        users
            .iter()
            .map(|u| format!("deposit:{round}-{u}"))
            .collect()
    };
    let (want_a, want_b) = (ids("d2", &in_a), ids("d2", &in_b));
    env.publish_many(deposits("d2", &users, "5.00")).await;
    let seen = round_a
        .until(Duration::from_secs(120), "shard a's deposits", |seen| {
            let done: BTreeSet<&str> = seen
                .iter()
                .filter_map(|r| Some(r.msg_id.rsplit_once(':')?.0))
                .collect();
            want_a.iter().all(|id| done.contains(id.as_str()))
        })
        .await;
    let decided_b = seen
        .iter()
        .filter(|r| {
            r.msg_id
                .rsplit_once(':')
                .is_some_and(|(id, _)| want_b.contains(id))
        })
        .count();
    assert_eq!(
        decided_b, 0,
        "shard b's deposits were decided without its database"
    );
    assert_eq!(mains(&pg_a).await, holds(&in_a, "15.00"));

    pg_b.start_again();
    round_a
        .until(Duration::from_secs(120), "shard b's deposits", |seen| {
            let done: BTreeSet<&str> = seen
                .iter()
                .filter_map(|r| Some(r.msg_id.rsplit_once(':')?.0))
                .collect();
            want_b.iter().all(|id| done.contains(id.as_str()))
        })
        .await;
    assert_eq!(mains(&pg_b).await, holds(&in_b, "15.00"));

    // The balance query: one process per shard, each answering its partitions' subjects from
    // its database; a request on a partition that is not its user's is refused.
    let balances: Vec<_> = [("a", &pg_a), ("b", &pg_b)]
        .into_iter()
        .map(|(shard, pg)| {
            env.spawn(
                "balance",
                &[
                    ("SHARD", shard),
                    ("DATABASE_URL", &owner(pg, "wallet_balance")),
                ],
            )
        })
        .collect();
    for p in &balances {
        env.ready(p).await;
    }
    for user in [&in_a[0], &in_b[0]] {
        env.uncache(user).await;
        let reply = env.balance(user).await;
        assert_eq!(
            reply["wallets"],
            serde_json::json!([{"kind": "main", "currency": "USD", "balance": "15.00"}]),
            "{user}: {reply}"
        );
    }
    let wrong = format!("wallet.balance.get.{}", Partition::of(&in_b[0]).get());
    let reply = env
        .nats
        .request(
            env.subject(&wrong),
            serde_json::to_vec(&serde_json::json!({"user_id": &in_a[0]}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["error"]["code"], "wrong_partition", "{reply}");

    // `walletctl load` over both shards, every sharded kind of command, the providers played
    // with their answers on the partition each request named: its verification (every outcome,
    // every wallet's balance, the audit) reads every shard.
    let out = std::process::Command::new(testkit::binary("walletctl"))
        .args([
            "load",
            "--mix",
            "deposit=40,transfer=20,withdraw=15,transfer_in=10",
            "--count",
            "1500",
            "--users",
            "200",
            "--rate",
            "1000",
            "--duplicates",
            "0.05",
            "--drain-timeout",
            "90s",
            "--json",
        ])
        .envs(env.env())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["verification"]["passed"], true, "{report:#}");
    assert!(
        report["lag"]["peak_by_function"]["deposit"]
            .as_u64()
            .is_some(),
        "the lag of both shards' consumers is sampled: {report:#}"
    );

    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    for shard in ["a", "b"] {
        let name = format!(
            "shard {shard}: the database is this shard's, and its partition map is SHARDS_FILE's"
        );
        assert!(audit.checks.iter().any(|c| c.name == name), "{audit}");
    }

    // A wallet of shard b's partition in shard a's database is a breach, named.
    let (client, conn) = tokio_postgres::connect(&pg_a.url("wallet"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let stray = &in_b[0];
    client
        .execute(
            "INSERT INTO accounts (partition, owner, kind, currency) VALUES ($1, $2, 'bonus', 'USD')",
            &[&Partition::of(stray).as_smallint(), stray],
        )
        .await
        .unwrap();
    let audit = env.audit().await;
    let check = audit
        .checks
        .iter()
        .find(|c| {
            c.name == "shard a: every wallet is in a partition the shard map gives this database"
        })
        .unwrap();
    assert_eq!(
        check.breaches,
        [format!(
            "{stray} bonus  USD: partition {}, which the map gives to b",
            Partition::of(stray).get()
        )],
        "{audit}"
    );
}
