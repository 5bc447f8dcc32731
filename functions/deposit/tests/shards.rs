//! The ledger on two and four PostgreSQL servers (docs/sharding.md, steps 3 and 4): one map
//! (`SHARDS_FILE`), one process of each sharded function per shard (`SHARD`), each reading its
//! shard's partitions (commands and providers' answers) and committing to its shard's database;
//! a shard that is down holds up its own commands only.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use rust_decimal::Decimal;
use testkit::{
    PrivateNats, PrivatePostgres, Proc, TestEnv, commands, namespace, pinned_nats_server,
};
use wallet_runtime::partition::{self, Partition};
use wallet_runtime::shards::ShardMap;

fn owner(pg: &PrivatePostgres, role: &str) -> String {
    format!("postgres://{role}@127.0.0.1:{}/wallet", pg.port)
}

/// Every function that may run on several shards (`sharded` in streams.toml).
const SHARDED: [&str; 6] = [
    "deposit",
    "transfer-out",
    "provider-ack",
    "transfer-in",
    "withdraw",
    "payout-ack",
];

/// `n` PostgreSQL servers, one shard each (`a`, `b`, …, the partitions split evenly), a private
/// `nats`, and an env set up on them. Its fields drop in order: the env's teardown needs the servers and the map.
struct Sharded {
    env: TestEnv,
    pgs: Vec<PrivatePostgres>,
    _nats: PrivateNats,
    map: String,
    shards: ShardMap,
}

impl Sharded {
    async fn start(n: usize, nats: PrivateNats) -> Self {
        let pgs: Vec<_> = (0..n).map(|_| PrivatePostgres::start(&[], None)).collect();
        let urls: Vec<String> = pgs.iter().map(|pg| pg.url("wallet")).collect();
        let shards = ShardMap::even(&urls);
        let map = shards.to_toml();
        let file = pgs[0].write_file("shards.toml", map.as_bytes(), 0o644);
        let vars = [
            ("NATS_URL", nats.url()),
            ("SHARDS_FILE", file.to_str().unwrap().to_owned()),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let env = TestEnv::in_namespace(namespace(), &vars).await;
        Self {
            env,
            pgs,
            _nats: nats,
            map,
            shards,
        }
    }

    /// Each of `functions` once per shard, as its own role on its shard's database; ready.
    async fn spawn(&self, functions: &[&str]) -> Vec<Proc> {
        let procs: Vec<Proc> = self
            .pgs
            .iter()
            .zip(self.shards.shards())
            .flat_map(|(pg, shard)| {
                functions.iter().map(move |f| {
                    let url = owner(pg, &wallet_ops::setup::role(f));
                    self.env
                        .spawn(f, &[("SHARD", &shard.name), ("DATABASE_URL", &url)])
                })
            })
            .collect();
        for p in &procs {
            self.env.ready(p).await;
        }
        procs
    }

    /// `walletctl load` with `args` (and `--json`): its report, once it passed its verification
    /// (every outcome, every wallet's balance in every shard's database, the audit).
    fn load(&self, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new(testkit::binary("walletctl"))
            .arg("load")
            .args(args)
            .arg("--json")
            .envs(self.env.env())
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(0), "{report:#}");
        assert_eq!(report["verification"]["passed"], true, "{report:#}");
        report
    }
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

/// True once events of every command of `want` (`deposit:<id>`) have been seen.
fn decided(want: &BTreeSet<String>) -> impl Fn(&[testkit::Received]) -> bool + '_ {
    move |seen| {
        let done: BTreeSet<&str> = seen
            .iter()
            .filter_map(|r| Some(r.msg_id.rsplit_once(':')?.0))
            .collect();
        want.iter().all(|id| done.contains(id.as_str()))
    }
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
    let s = Sharded::start(2, PrivateNats::of(pinned_nats_server(), |_| String::new())).await;
    let (env, pg_a, pg_b, map) = (&s.env, &s.pgs[0], &s.pgs[1], &s.map);

    // A process pointed at the wrong database, or at a shard's without SHARD, refuses to start.
    for (vars, said) in [
        (
            vec![
                ("SHARD", "b".to_owned()),
                ("DATABASE_URL", owner(pg_a, "wallet_deposit")),
            ],
            "SHARD=b, but DATABASE_URL is shard `a`'s database",
        ),
        (
            vec![("DATABASE_URL", owner(pg_a, "wallet_deposit"))],
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

    // The bare subject names no shard, and `x` or `256` no partition: no stream takes them, and
    // the publisher hears so (no shard's consumer would ever read them).
    for subject in ["wallet.deposit", "wallet.deposit.x", "wallet.deposit.256"] {
        let refused = env
            .js
            .publish(env.subject(subject), "{}".into())
            .await
            .unwrap()
            .await;
        assert!(refused.is_err(), "{subject}: {refused:?}");
    }

    // Every function that may run sharded, once per shard, each as its own role.
    let _procs = s.spawn(&SHARDED).await;
    let status = wallet_ops::status::status(&env.config, &testkit::topology())
        .await
        .unwrap();
    let consumers: Vec<&str> = status.0.iter().map(|c| c.consumer.as_str()).collect();
    for f in SHARDED {
        for shard in ["a", "b"] {
            let name = env.config.names.name(&format!("{f}-{shard}"));
            assert!(consumers.contains(&name.as_str()), "{consumers:?}");
        }
    }
    // Each shard's consumer reads its own stream, which takes its partitions, unfiltered.
    for (shard, first) in [("a", 0), ("b", 128)] {
        let mut stream = env
            .js
            .get_stream(env.config.names.name(&format!("DEPOSITS-{shard}")))
            .await
            .unwrap();
        let subjects = stream.info().await.unwrap().config.subjects.clone();
        assert_eq!(subjects.len(), 128);
        assert_eq!(subjects[0], env.subject(&format!("wallet.deposit.{first}")));
        let consumer = stream
            .consumer_info(env.config.names.name(&format!("deposit-{shard}")))
            .await
            .unwrap();
        assert_eq!(consumer.config.filter_subject, "");
        assert!(consumer.config.filter_subjects.is_empty());
    }
    assert!(
        env.js
            .get_stream(env.config.names.name("DEPOSITS"))
            .await
            .is_err()
    );

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
    assert_eq!(mains(pg_a).await, holds(&in_a, "10.00"));
    assert_eq!(mains(pg_b).await, holds(&in_b, "10.00"));

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
        .until(
            Duration::from_secs(120),
            "shard a's deposits",
            decided(&want_a),
        )
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
    let waiting = env
        .js
        .get_stream(env.config.names.name("DEPOSITS-b"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        waiting,
        in_b.len() as u64,
        "shard b's deposits wait in its stream"
    );
    assert_eq!(mains(pg_a).await, holds(&in_a, "15.00"));

    pg_b.start_again();
    round_a
        .until(
            Duration::from_secs(120),
            "shard b's deposits",
            decided(&want_b),
        )
        .await;
    assert_eq!(mains(pg_b).await, holds(&in_b, "15.00"));

    // The balance query: one process per shard, each answering its partitions' subjects from
    // its database; a request on a partition that is not its user's is refused.
    let _balances = s.spawn(&["balance"]).await;
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
    let report = s.load(&[
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
    ]);
    assert!(
        report["lag"]["peak_by_function"]["deposit"]
            .as_u64()
            .is_some(),
        "the lag of both shards' consumers is sampled: {report:#}"
    );

    // Bonus grants run on no shard of two (until quotas per shard): a load of them is refused
    // before it sends anything, rather than waiting out its drain.
    let refused = std::process::Command::new(testkit::binary("walletctl"))
        .args(["load", "--mix", "deposit=50,bonus=50", "--count", "10"])
        .envs(s.env.env())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("--mix bonus: bonus-grant runs on no shard of a map of 2 shards"),
        "{stderr}"
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

/// Four shards, each on its own PostgreSQL, on nats-server 2.9 (Debian's: a shard's stream is
/// plain subjects, no consumer filters): every sharded function once per shard, a mixed load
/// verified over all four (every outcome, every balance, the audit), and each database holding
/// wallets of its own partitions only, every one of them some.
#[tokio::test(flavor = "multi_thread")]
async fn every_sharded_function_runs_on_four_shards_on_nats_server_2_9() {
    let s = Sharded::start(4, PrivateNats::start()).await;
    let version = s.env.js.client().server_info().version;
    assert!(version.starts_with("2.9."), "{version}");
    let _procs = s.spawn(&SHARDED).await;

    // A malformed deposit first on each shard's stream: the four dead letters share the stream
    // sequence 1, and each is stored, its id naming its shard (the DLQ's duplicate window once
    // took the second for a copy of the first, and its command was terminated unrecorded).
    let mut dlq = s.env.dead_letters().await;
    for shard in s.shards.shards() {
        let subject = format!("wallet.deposit.{}", shard.partitions()[0]);
        let id = format!("broken-{}", shard.name);
        s.env.publish(&subject, &id, b"{not json".to_vec()).await;
    }
    for shard in s.shards.shards() {
        let letter = dlq
            .by_id(
                &format!("dlq:deposit:{}:1", shard.name),
                Duration::from_secs(30),
            )
            .await;
        let header = |h: &str| letter.headers.get(h).map(|v| v.as_str().to_owned());
        assert_eq!(header("Wallet-Dlq-Reason").as_deref(), Some("malformed"));
        assert_eq!(
            header("Wallet-Dlq-Msg-Id"),
            Some(format!("broken-{}", shard.name))
        );
    }
    s.load(&[
        "--mix",
        "deposit=40,transfer=20,withdraw=15,transfer_in=10",
        "--count",
        "1000",
        "--users",
        "200",
        "--rate",
        "1000",
        "--drain-timeout",
        "90s",
    ]);
    for (i, pg) in s.pgs.iter().enumerate() {
        let owners = mains(pg).await;
        assert!(!owners.is_empty(), "shard {i} holds no wallet");
        for (owner, _) in owners {
            let p = Partition::of(&owner).get();
            assert_eq!(
                usize::from(p) / 64,
                i,
                "{owner} (partition {p}) in shard {i}"
            );
        }
    }
    let audit = s.env.audit().await;
    assert!(audit.ok(), "{audit}");
    assert_eq!(
        audit
            .checks
            .iter()
            .filter(|c| c.name.ends_with("its partition map is SHARDS_FILE's"))
            .count(),
        4
    );
    // teardown drops every shard's database (the env's drop runs it again, finding none).
    drop(_procs);
    let removed = wallet_ops::teardown::teardown(&s.env.config, &testkit::topology())
        .await
        .unwrap();
    for shard in ["a", "b", "c", "d"] {
        let line = format!("shard {shard}: database dropped");
        assert!(removed.contains(&line), "{removed:?}");
    }
}
