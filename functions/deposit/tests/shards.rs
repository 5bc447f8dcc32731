//! The ledger on two and four PostgreSQL servers (docs/sharding.md, steps 3 and 4): one map
//! (`SHARDS_FILE`), one process of each sharded function per shard (`SHARD`), each reading its
//! shard's partitions (commands and providers' answers) and committing to its shard's database;
//! a shard that is down holds up its own commands only; a split moves partitions to a new
//! shard under load.

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
const SHARDED: [&str; 7] = [
    "deposit",
    "transfer-out",
    "provider-ack",
    "transfer-in",
    "withdraw",
    "payout-ack",
    "bonus-grant",
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
        Self::start_with(n, nats, None).await
    }

    /// With `unsharded` a function whose consumer is not `sharded`, as a function added
    /// without proof that it may run on several shards is deployed.
    async fn start_with(n: usize, nats: PrivateNats, unsharded: Option<&str>) -> Self {
        let pgs: Vec<_> = (0..n).map(|_| PrivatePostgres::start(&[], None)).collect();
        let urls: Vec<String> = pgs.iter().map(|pg| pg.url("wallet")).collect();
        let shards = ShardMap::even(&urls);
        let map = shards.to_toml();
        let file = pgs[0].write_file("shards.toml", map.as_bytes(), 0o644);
        let mut vars = vec![
            ("NATS_URL", nats.url()),
            ("SHARDS_FILE", file.to_str().unwrap().to_owned()),
        ];
        if let Some(function) = unsharded {
            let text = testkit::unsharded(&testkit::streams_text(), function);
            let streams = pgs[0].write_file("streams.toml", text.as_bytes(), 0o644);
            vars.push(("STREAMS_FILE", streams.to_str().unwrap().to_owned()));
        }
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

/// Shard `shard`'s stream of deposits (`DEPOSITS-a`), as it is now.
async fn deposits_of(env: &TestEnv, shard: &str) -> async_nats::jetstream::stream::Info {
    env.js
        .get_stream(env.config.names.name(&format!("DEPOSITS-{shard}")))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

/// `users` sorted, each with `amount`: what [`mains`] reads when each holds it.
fn holds(users: &[String], amount: &str) -> Vec<(String, Decimal)> {
    let mut want: Vec<_> = users
        .iter()
        .map(|u| (u.clone(), amount.parse().unwrap()))
        .collect();
    want.sort();
    want
}

/// A connection to the shard's database, as its owner.
async fn client(pg: &PrivatePostgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url("wallet"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// `walletctl shards split MAP` with `args` in `env`, creating testkit's small streams.
/// `walletctl` with `args` in `env`: its stdout, once it succeeded.
fn walletctl(env: &TestEnv, args: &[&str]) -> String {
    let out = std::process::Command::new(testkit::binary("walletctl"))
        .args(args)
        .envs(env.env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Campaign c1: a budget of 10.00 in grants of `amount`, one per user.
fn create_c1(env: &TestEnv, amount: &str) -> String {
    walletctl(
        env,
        &[
            "campaign",
            "create",
            "--id",
            "c1",
            "--currency",
            "USD",
            "--budget",
            "10.00",
            "--amount",
            amount,
            "--per-user",
            "1",
        ],
    )
}

fn split(env: &TestEnv, map: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(testkit::binary("walletctl"))
        .args(["shards", "split"])
        .args(args)
        .arg(map)
        .envs(env.env())
        .env("STREAMS_FILE", env.streams_file_small())
        .output()
        .unwrap()
}

/// Each user's `main` USD balance in the shard's database.
async fn mains(pg: &PrivatePostgres) -> Vec<(String, Decimal)> {
    client(pg)
        .await
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
    let s = Sharded::start_with(
        2,
        PrivateNats::of(pinned_nats_server(), |_| String::new()),
        Some("bonus-grant"),
    )
    .await;
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
        let subjects = deposits_of(env, shard).await.config.subjects;
        assert_eq!(subjects.len(), 128);
        assert_eq!(subjects[0], env.subject(&format!("wallet.deposit.{first}")));
        let consumer = env
            .js
            .get_stream(env.config.names.name(&format!("DEPOSITS-{shard}")))
            .await
            .unwrap()
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
    let waiting = deposits_of(env, "b").await.state.messages;
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

    // A function that is not sharded (here bonus-grant, made so in this test's streams file)
    // runs on no shard of two: a load of its commands is refused before it sends anything,
    // rather than waiting out its drain.
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
    let stray = &in_b[0];
    client(pg_a)
        .await
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
    // Bonus grants too: the campaign's budget is four quotas, and its grants exhaust every
    // shard's. The load's verification counts exactly as many grants as envelopes, so the
    // quotas the rebalancer moved to where the grants were reached the whole budget, and no
    // more.
    let _rebalancer = s.env.spawn_args(
        "walletctl",
        &["campaign", "rebalance", "--every", "200ms"],
        &[],
    );
    s.load(&[
        "--mix",
        "deposit=35,transfer=20,withdraw=15,transfer_in=10,bonus=20",
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

/// `walletctl shards split` (docs/sharding.md, "Splitting a shard"): shard a, every partition on
/// one PostgreSQL, gives its upper half to a new shard b on another. The moved users' wallets,
/// remembered ids and pending transfers go with them: b answers a deposit already decided on a
/// as a duplicate, settles a transfer a left pending, and the audit of both is clean.
#[tokio::test(flavor = "multi_thread")]
async fn a_split_moves_partitions_with_their_wallets_ids_and_sagas() {
    // Before the env, which drops every shard's database when it goes.
    let pg_b = PrivatePostgres::start(&[], None);
    let s = Sharded::start_with(
        1,
        PrivateNats::of(pinned_nats_server(), |_| String::new()),
        Some("bonus-grant"),
    )
    .await;
    let (env, pg_a) = (&s.env, &s.pgs[0]);
    let functions = ["deposit", "transfer-out", "provider-ack", "balance"];
    let _on_a = s.spawn(&functions).await;

    let users: Vec<String> = (0..60).map(|u| format!("u-{u}")).collect();
    let (in_a, in_b): (Vec<String>, Vec<String>) = users
        .iter()
        .cloned()
        .partition(|u| Partition::of(u).get() < 128);
    assert!(in_a.len() > 15 && in_b.len() > 15, "{in_a:?} {in_b:?}");
    let on_partition = |(subject, id, payload): commands::Msg, user: &str| {
        (partition::subject(&subject, user), id, payload)
    };
    let transfers = |users: &[String]| -> Vec<commands::Msg> {
        users
            .iter()
            .map(|u| {
                on_partition(
                    commands::transfer(&format!("t-{u}"), u, "alpha", "4", "USD"),
                    u,
                )
            })
            .collect()
    };
    let acks = |users: &[String]| -> Vec<commands::Msg> {
        users
            .iter()
            .map(|u| on_partition(commands::ack("alpha", &format!("t-{u}"), "accepted"), u))
            .collect()
    };
    let mut events = env.events().await;
    env.run_commands(&mut events, "deposit", deposits("d1", &users, "10.00"))
        .await;

    // A function that is not sharded (bonus-grant in this test's streams file: a function
    // added without proof that it may run on several shards), on a map of one shard, reads the map in
    // each batch's transaction: with one of b's partitions given away (as a split's fence
    // does), a grant of that partition is not decided on a, and one of another partition is;
    // given back, the first is decided on its next delivery. Both grants stay in the campaign
    // over the split, each in its user's shard. (Users of their own: the balances checked
    // below are the u-* users'.)
    let user_in = |half: std::ops::Range<u16>| {
        (0..)
            .map(|i| format!("f-{i}"))
            .find(|u| half.contains(&Partition::of(u).get()))
            .unwrap()
    };
    let (away, stays) = (&user_in(128..256), &user_in(0..128));
    env.run_commands(
        &mut events,
        "deposit",
        deposits("fund", &[away.clone(), stays.clone()], "1.00"),
    )
    .await;
    let _bonus_on_a = s.spawn(&["bonus-grant"]).await;
    // Created where the map says (shard a's database), not in DATABASE_URL's.
    let walletctl = |args: &[&str]| walletctl(env, args);
    create_c1(env, "2.00");
    let given = |to: &'static str| {
        let p = Partition::of(away).as_smallint();
        async move {
            client(pg_a)
                .await
                .execute(
                    "UPDATE partition_map SET shard = $1 WHERE partition = $2",
                    &[&to, &p],
                )
                .await
                .unwrap();
        }
    };
    given("b").await;
    let grant = |u: &str| on_partition(commands::grant(&format!("g-{u}"), "c1", u), u);
    env.run_commands(&mut events, "bonus", vec![grant(stays)])
        .await;
    env.publish_many(vec![grant(away)]).await;
    let fenced_away = format!("bonus:g-{away}:granted");
    let redelivered = || async {
        env.js
            .get_stream(env.config.names.name("BONUS"))
            .await
            .unwrap()
            .consumer_info(env.config.names.name("bonus-grant-a"))
            .await
            .unwrap()
            .num_redelivered
    };
    let before = redelivered().await;
    testkit::eventually(
        Duration::from_secs(30),
        "the fenced grant redelivered",
        || async { (redelivered().await > before).then_some(()) },
    )
    .await;
    assert!(
        !events.seen.iter().any(|r| r.msg_id == fenced_away),
        "decided on a shard that gave its partition away"
    );
    given("a").await;
    events.by_id(&fenced_away, Duration::from_secs(30)).await;
    assert!(
        events
            .seen
            .iter()
            .any(|r| r.msg_id == format!("bonus:g-{stays}:granted"))
    );

    // The sagas' sweeper leaves alone a pending transfer of a partition given away (the split
    // is copying it), and goes on asking about the others.
    let sagas = [away.clone(), stays.clone()];
    let ids: Vec<String> = sagas.iter().map(|u| format!("t-{u}")).collect();
    let pending_transfers: Vec<commands::Msg> = sagas
        .iter()
        .map(|u| {
            on_partition(
                commands::transfer(&format!("t-{u}"), u, "alpha", "0.50", "USD"),
                u,
            )
        })
        .collect();
    env.run_commands(&mut events, "transfer", pending_transfers)
        .await;
    let pg = client(pg_a).await;
    let due = |when: &'static str| {
        let (pg, ids) = (&pg, &ids);
        async move {
            pg.execute(
                &format!("UPDATE transfers SET next_check_at = {when} WHERE id = ANY($1)"),
                &[ids],
            )
            .await
            .unwrap();
        }
    };
    let checks = || async {
        let rows = pg
            .query(
                "SELECT checks FROM transfers WHERE id = ANY($1) ORDER BY id = $2",
                &[&ids, &ids[1]],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<i32>>()
    };
    // Not due while the map changes, so that no sweep under way can take the row after.
    due("now() + interval '1 hour'").await;
    given("b").await;
    let before = checks().await;
    due("now() - interval '1 second'").await;
    testkit::eventually(
        Duration::from_secs(30),
        "the transfer that stays asked about",
        || async { (checks().await[1] > before[1]).then_some(()) },
    )
    .await;
    assert_eq!(checks().await[0], before[0], "swept a partition given away");
    given("a").await;

    env.run_commands(&mut events, "transfer", transfers(&users))
        .await;
    // Half of each side's transfers complete before the split; the rest stay pending over it.
    let (done_before, pending): (Vec<String>, Vec<String>) = users
        .iter()
        .cloned()
        .partition(|u| u.ends_with(['0', '2', '4', '6', '8']));
    let completed = |users: &[String]| -> BTreeSet<String> {
        users
            .iter()
            .map(|u| format!("transfer:t-{u}:completed"))
            .collect()
    };
    env.publish_many(acks(&done_before)).await;
    let want = completed(&done_before);
    events
        .until(Duration::from_secs(60), "the first acks", |seen| {
            want.iter().all(|w| seen.iter().any(|r| &r.msg_id == w))
        })
        .await;

    let target = ShardMap::parse(&format!(
        "[[shard]]\nname = \"a\"\ndatabase_url = \"{}\"\npartitions = \"0-127\"\n\
         [[shard]]\nname = \"b\"\ndatabase_url = \"{}\"\npartitions = \"128-255\"\n",
        pg_a.url("wallet"),
        pg_b.url("wallet")
    ))
    .unwrap();
    let target_file = pg_b.write_file("target.toml", target.to_toml().as_bytes(), 0o644);

    // A load of deposits runs over the split: its commands of the moved partitions are refused
    // at the publisher while they move (it tries again), then decided on b.
    let before = deposits_of(env, "a").await.state.last_sequence;
    let load = std::process::Command::new(testkit::binary("walletctl"))
        .args([
            "load",
            "--mix",
            "deposit=100",
            "--count",
            "3000",
            "--users",
            "100",
        ])
        .args(["--rate", "200", "--drain-timeout", "90s", "--json"])
        .envs(env.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    testkit::eventually(Duration::from_secs(30), "the load publishing", || async {
        (deposits_of(env, "a").await.state.last_sequence >= before + 200).then_some(())
    })
    .await;
    let done = split(env, &target_file, &[]);
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        stdout.contains("shard a: its streams no longer take partitions 128-255"),
        "{stdout}"
    );
    assert!(stdout.contains("shard a: deleted"), "{stdout}");
    // The unsharded bonus-grant ran on the map of one shard; on two it runs nowhere, and its
    // grants wait in their stream.
    assert!(stdout.contains("bonus-grant-a: deleted"), "{stdout}");
    let bonus = env.config.names.name("BONUS");
    assert!(
        env.js
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                env.config.names.name("bonus-grant-a"),
                bonus,
            )
            .await
            .is_err()
    );

    // Each user's wallets are in their shard's database only, as they were (the load's users
    // are its verification's).
    let ours = |pg| async move {
        let mut all = mains(pg).await;
        all.retain(|(owner, _)| owner.starts_with("u-"));
        all
    };
    assert_eq!(ours(pg_a).await, holds(&in_a, "6.00"));
    assert_eq!(ours(&pg_b).await, holds(&in_b, "6.00"));
    // The campaign's grants went with their users, and each shard counts its own. Its quotas
    // still sum to the budget (10.00): b's is the grant it received, a keeps what was left
    // (6.00), which b knows is elsewhere.
    for (pg, quota, elsewhere) in [(pg_a, 8, 0), (&pg_b, 2, 6)] {
        let row = client(pg)
            .await
            .query_one(
                "SELECT granted, grants, quota, spare_elsewhere FROM campaigns WHERE id = 'c1'",
                &[],
            )
            .await
            .unwrap();
        let counted: (Decimal, i64, Decimal, Decimal) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let d = |n: i64| Decimal::new(n, 0);
        assert_eq!(
            counted,
            (d(2), 1, d(quota), d(elsewhere)),
            "shard on port {}",
            pg.port
        );
    }
    // a's balance process answers a's users and leaves the moved partitions' requests alone:
    // none is answered until b's runs.
    let main_of = |reply: serde_json::Value| {
        reply["wallets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["kind"] == "main")
            .map(|w| w["balance"].clone())
    };
    env.uncache(&in_a[0]).await;
    assert_eq!(main_of(env.balance(&in_a[0]).await), Some("6.00".into()));
    let moved = env.subject(&partition::subject("wallet.balance.get", &in_b[0]));
    let request = serde_json::json!({"user_id": &in_b[0]}).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Short: one request lost between a's two subscriptions must not take the whole wait.
        let ask = async_nats::Request::new()
            .payload(request.clone().into())
            .timeout(Some(Duration::from_secs(2)));
        let answer = env.nats.send_request(moved.clone(), ask).await;
        if matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a moved partition is still answered: {:?}",
            answer.map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Shard a's stream of deposits takes its half; b's is made by the split.
    for (shard, first, n) in [("a", 0, 128), ("b", 128, 128)] {
        let subjects = deposits_of(env, shard).await.config.subjects;
        assert_eq!(subjects.len(), n, "{shard}");
        assert_eq!(subjects[0], env.subject(&format!("wallet.deposit.{first}")));
    }

    // SHARDS_FILE is the new map from now on (the load's verification reads it), and shard
    // b's functions start on it.
    let current = env
        .env()
        .into_iter()
        .find_map(|(k, v)| (k == "SHARDS_FILE").then_some(v))
        .unwrap();
    std::fs::copy(&target_file, &current).unwrap();
    // The campaign's totals are the sums over both shards.
    let shown: serde_json::Value =
        serde_json::from_str(&walletctl(&["campaign", "show", "c1", "--json"])).unwrap();
    assert_eq!(
        (&shown["granted"], &shown["grants"], &shown["users"]),
        (
            &serde_json::json!("4.00"),
            &serde_json::json!(2),
            &serde_json::json!(2)
        ),
        "{shown}"
    );
    let listed = walletctl(&["campaign", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("c1 ") && l.contains(" 4.00 ")),
        "{listed}"
    );
    let target_path = target_file.to_str().unwrap().to_owned();
    let mut on_b = Vec::new();
    for f in functions {
        let url = owner(&pg_b, &wallet_ops::setup::role(f));
        let p = env.spawn(
            f,
            &[
                ("SHARD", "b"),
                ("DATABASE_URL", &url),
                ("SHARDS_FILE", &target_path),
            ],
        );
        env.ready(&p).await;
        on_b.push(p);
    }

    // d1 again under new Nats-Msg-Ids: each shard remembers its users' ids, so nothing moves.
    // Then the pending transfers' acks and one more deposit each, on both shards.
    let again: Vec<commands::Msg> = deposits("d1", &users, "10.00")
        .into_iter()
        .map(|(subject, id, payload)| (subject, format!("{id}-again"), payload))
        .collect();
    env.publish_many(again).await;
    env.publish_many(acks(&pending)).await;
    env.run_commands(&mut events, "deposit", deposits("d2", &users, "1.00"))
        .await;
    let want = completed(&pending);
    events
        .until(
            Duration::from_secs(60),
            "the acks after the split",
            |seen| want.iter().all(|w| seen.iter().any(|r| &r.msg_id == w)),
        )
        .await;
    assert_eq!(ours(pg_a).await, holds(&in_a, "7.00"));
    assert_eq!(ours(&pg_b).await, holds(&in_b, "7.00"));
    // walletctl finds a transfer in its user's shard, whichever that is.
    for user in [&in_a[0], &in_b[0]] {
        let shown: serde_json::Value = serde_json::from_str(&walletctl(&[
            "transfer",
            "show",
            &format!("t-{user}"),
            "--json",
        ]))
        .unwrap();
        assert_eq!(shown["status"], "completed", "{shown}");
    }
    env.uncache(&in_b[0]).await;
    assert_eq!(main_of(env.balance(&in_b[0]).await), Some("7.00".into()));
    let d1 = events
        .seen
        .iter()
        .filter(|r| r.msg_id.starts_with("deposit:d1-"))
        .map(|r| r.msg_id.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    assert_eq!(d1, users.len(), "one outcome per deposit");

    // Every command of the load, sent before, during and after the split, decided once, and
    // every balance as its outcomes say, in both databases.
    let out = load.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["verification"]["passed"], true, "{report:#}");
    assert_eq!(report["verification"]["lost"], 0, "{report:#}");

    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    assert!(
        audit.checks.iter().any(|c| c.name.starts_with("shard b: ")),
        "{audit}"
    );

    // A split to a database that is already a shard's (a's, under another URL) is refused
    // before anything stops: b's streams still take all of b's partitions.
    let again = ShardMap::parse(&format!(
        "{}[[shard]]\nname = \"c\"\ndatabase_url = \"{}?application_name=c\"\npartitions = \"192-255\"\n",
        target.to_toml().replace("128-255", "128-191"),
        pg_a.url("wallet")
    ))
    .unwrap();
    let again_file = pg_b.write_file("again.toml", again.to_toml().as_bytes(), 0o644);
    let refused = split(env, &again_file, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is shard `a`'s database"), "{stderr}");
    assert_eq!(deposits_of(env, "b").await.config.subjects.len(), 128);
}

/// A split waits for the old shard's outbox to publish what it held when the map changed (the
/// copy takes no outbox row), gives up after `--drain-timeout` saying so, and, run again once
/// that is published, goes on from where it stopped.
#[tokio::test(flavor = "multi_thread")]
async fn a_split_waits_for_the_old_shards_outbox_and_goes_on_when_run_again() {
    let pg_b = PrivatePostgres::start(&[], None);
    let s = Sharded::start(1, PrivateNats::of(pinned_nats_server(), |_| String::new())).await;
    let (env, pg_a) = (&s.env, &s.pgs[0]);
    // A transaction's messages that no relay has published yet (no function runs here).
    let pg = client(pg_a).await;
    pg.execute(
        "INSERT INTO outbox (subjects, msg_ids, payloads, wallets)
         VALUES ('{wallet.events.deposit.completed}', '{deposit:held:completed}', '{\\x7b7d}', '{[]}')",
        &[],
    )
    .await
    .unwrap();

    let target = format!(
        "{}[[shard]]\nname = \"b\"\ndatabase_url = \"{}\"\npartitions = \"128-255\"\n",
        s.map.replace("0-255", "0-127"),
        pg_b.url("wallet")
    );
    let target = pg_b.write_file("target.toml", target.as_bytes(), 0o644);
    let first = split(env, &target, &["--drain-timeout", "2s"]);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the old shard's outbox still holds 1 row(s)"),
        "{stderr}"
    );
    // It stopped after the fence: a gives the partitions to b, and b has no stream yet.
    let given: i64 = pg
        .query_one(
            "SELECT count(*) FROM partition_map WHERE shard = 'b' AND partition >= 128",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(given, 128);
    assert!(
        env.js
            .get_stream(env.config.names.name("DEPOSITS-b"))
            .await
            .is_err()
    );

    // Published (the relay deletes the row): run again, it completes.
    pg.execute("DELETE FROM outbox", &[]).await.unwrap();
    let second = split(env, &target, &["--drain-timeout", "2s"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(stdout.contains("shard a: deleted"), "{stdout}");
    assert_eq!(deposits_of(env, "b").await.config.subjects.len(), 128);
    assert_eq!(deposits_of(env, "a").await.config.subjects.len(), 128);
}

/// Campaign c1's quota, granted and wanted in `pg`'s shard.
async fn quota(pg: &PrivatePostgres) -> (Decimal, Decimal, Decimal) {
    let row = client(pg)
        .await
        .query_one(
            "SELECT quota, granted, wanted FROM campaigns WHERE id = 'c1'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A campaign on two shards (docs/sharding.md, step 5): each shard grants within its quota of
/// the budget, grants past it wait, `walletctl campaign rebalance` moves quota to them from the
/// other shard, and the whole budget is granted, never more: then both shards refuse
/// `campaign_exhausted`. The audit checks that the quotas sum to the budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_campaigns_budget_is_granted_whole_over_two_shards_through_their_quotas() {
    let s = Sharded::start(2, PrivateNats::start()).await;
    let env = &s.env;
    let _procs = s.spawn(&["bonus-grant"]).await;
    let walletctl = |args: &[&str]| walletctl(env, args);
    let created = create_c1(env, "1.00");
    assert!(created.contains("created on 2 shards"), "{created}");
    let d = |n: i64| Decimal::new(n, 0);
    assert_eq!(quota(&s.pgs[0]).await, (d(5), d(0), d(0)));
    assert_eq!(quota(&s.pgs[1]).await, (d(5), d(0), d(0)));

    // Users of shard a only (partitions 0 to 127).
    let mut users = (0..)
        .map(|i| format!("q-{i}"))
        .filter(|u| Partition::of(u).get() < 128);
    let grant = |u: &str| {
        let (subject, id, payload) = commands::grant(&format!("g-{u}"), "c1", u);
        (partition::subject(&subject, u), id, payload)
    };
    let mut events = env.events().await;
    let outcome = |seen: &[testkit::Received], u: &str| {
        let prefix = format!("bonus:g-{u}:");
        seen.iter()
            .find(|r| r.msg_id.starts_with(&prefix))
            .map(|r| r.msg_id[prefix.len()..].to_owned())
    };
    let first: Vec<String> = users.by_ref().take(8).collect();
    env.publish_many(first.iter().map(|u| grant(u)).collect())
        .await;
    // Five fit a's quota. Three wait for quota, and shard a's row says it wants it; without
    // a rebalancer they would wait until they were dead-lettered.
    events
        .until(Duration::from_secs(30), "five grants", |seen| {
            first.iter().filter(|u| outcome(seen, u).is_some()).count() == 5
        })
        .await;
    testkit::eventually(
        Duration::from_secs(30),
        "three grants' amounts wanted on shard a",
        || async { (quota(&s.pgs[0]).await.2 >= d(3)).then_some(()) },
    )
    .await;
    assert_eq!(quota(&s.pgs[0]).await.1, d(5));
    let _rebalancer = env.spawn_args(
        "walletctl",
        &["campaign", "rebalance", "--every", "200ms"],
        &[],
    );
    // Four more on a: b has two left to give, then the budget is spent.
    let more: Vec<String> = users.by_ref().take(4).collect();
    env.publish_many(more.iter().map(|u| grant(u)).collect())
        .await;
    // And one on b, which gave its quota away.
    let on_b = (0..)
        .map(|i| format!("q-{i}"))
        .find(|u| Partition::of(u).get() >= 128)
        .unwrap();
    let all: Vec<String> = first.iter().chain(&more).cloned().collect();
    events
        .until(
            Duration::from_secs(60),
            "the first twelve grants decided",
            |seen| all.iter().all(|u| outcome(seen, u).is_some()),
        )
        .await;
    env.publish_many(vec![grant(&on_b)]).await;
    events
        .until(Duration::from_secs(30), "b's grant decided", |seen| {
            outcome(seen, &on_b).is_some()
        })
        .await;
    let decided = |us: &[String]| -> Vec<String> {
        us.iter()
            .map(|u| outcome(&events.seen, u).unwrap())
            .collect()
    };
    assert_eq!(decided(&first), vec!["granted"; 8]);
    let mut later = decided(&more);
    later.sort();
    assert_eq!(
        later,
        ["granted", "granted", "rejected", "rejected"],
        "{more:?}"
    );
    assert_eq!(decided(std::slice::from_ref(&on_b)), vec!["rejected"]);
    for r in events
        .seen
        .iter()
        .filter(|r| r.msg_id.ends_with(":rejected"))
    {
        assert_eq!(r.body["reason"], "campaign_exhausted", "{:?}", r.body);
    }
    // Each shard's Redis state was loaded with its quota plus the other's (10.00). b's comes
    // down to what b may still grant, nothing, so that the spent campaign's next grants are
    // refused there, without PostgreSQL; a's stays at a's quota.
    let redis = redis::Client::open(testkit::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (shard, bound) in [("b", 0), ("a", 1000)] {
        let key = env.config.names.redis_key(&format!("bonus:{shard}:c:c1"));
        testkit::eventually(
            Duration::from_secs(30),
            "Redis's budget lowered to the shard's bound",
            || {
                let (key, mut redis) = (key.clone(), redis.clone());
                async move {
                    let budget: i64 = redis::cmd("HGET")
                        .arg(&key)
                        .arg("budget")
                        .query_async(&mut redis)
                        .await
                        .unwrap();
                    (budget == bound).then_some(())
                }
            },
        )
        .await;
    }
    // The whole budget, on a: b's quota moved there.
    assert_eq!(quota(&s.pgs[0]).await.0, d(10));
    assert_eq!(quota(&s.pgs[0]).await.1, d(10));
    assert_eq!(quota(&s.pgs[1]).await.0, d(0));
    let shown: serde_json::Value =
        serde_json::from_str(&walletctl(&["campaign", "show", "c1", "--json"])).unwrap();
    assert_eq!(shown["granted"], "10.00", "{shown}");
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
    assert!(
        audit.checks.iter().any(|c| c.name
            == "every shard: every campaign's quotas and quota moves in transit sum to its budget"),
        "{audit}"
    );
    // A quota that appears from nowhere is a breach.
    client(&s.pgs[1])
        .await
        .execute("UPDATE campaigns SET quota = 1 WHERE id = 'c1'", &[])
        .await
        .unwrap();
    let audit = env.audit().await;
    let breach = "c1: quotas and moves in transit sum to 11.00, granted 10.00, budget 10.00";
    assert!(
        audit
            .checks
            .iter()
            .any(|c| c.breaches.iter().any(|b| b == breach)),
        "{audit}"
    );
}
