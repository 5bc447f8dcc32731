//! `walletctl` against the real NATS, PostgreSQL and Redis.

#![allow(clippy::unwrap_used)]

use async_nats::jetstream::stream::RetentionPolicy;
use testkit::TestEnv;
use wallet_runtime::shards::ShardMap;

#[tokio::test(flavor = "multi_thread")]
async fn setup_is_idempotent_updates_in_place_and_never_forces_a_recreation() {
    let env = TestEnv::new().await;
    let mut topology = testkit::topology();
    let again = wallet_ops::setup::setup(&env.config, &topology)
        .await
        .unwrap();
    assert_eq!(
        again[..3],
        [
            "database: exists",
            "migrations: up to date",
            "roles: one per function, with the grants of roles.sql"
        ]
    );
    assert!(
        again[3..].iter().all(|l| l.ends_with(": unchanged")),
        "{again:#?}"
    );
    assert_eq!(
        again.len(),
        3 + topology.streams.len() + topology.consumers.len()
    );

    // A change JetStream makes in place is applied and named.
    topology.consumers[0].max_ack_pending += 1;
    let changed = wallet_ops::setup::setup(&env.config, &topology)
        .await
        .unwrap();
    let consumer = env.config.names.name(&topology.consumers[0].function);
    assert!(
        changed.contains(&format!("consumer {consumer}: updated (max_ack_pending)")),
        "{changed:#?}"
    );

    // A deployment set up before the runtime counted deliveries itself (its consumers' limit,
    // max_deliver 20, and streams' message size, 1 MiB) and before commands carried their
    // user's partition (the stream took `wallet.deposit` alone, the consumer filtered on it): all
    // changed in place, the consumer left reading the whole stream.
    let stream = env
        .js
        .get_stream(env.config.names.name("DEPOSITS"))
        .await
        .unwrap();
    let bare = env.config.names.subject("wallet.deposit");
    let mut old_stream = topology.streams[0].config(&env.config.names, false, None);
    old_stream.max_message_size = 1_044_480;
    old_stream.subjects = vec![bare.clone()];
    env.js.update_stream(old_stream).await.unwrap();
    let mut old = topology.consumers[0].config(&env.config.names, None);
    old.max_deliver = 20;
    old.filter_subject = bare;
    stream.create_consumer(old).await.unwrap();
    let upgraded = wallet_ops::setup::setup(&env.config, &topology)
        .await
        .unwrap();
    let stream_name = env.config.names.name(&topology.streams[0].name);
    for line in [
        format!("consumer {consumer}: updated (filter_subject, max_deliver)"),
        format!("stream {stream_name}: updated (subjects, max_msg_size)"),
    ] {
        assert!(upgraded.contains(&line), "{upgraded:#?}");
    }
    let info = stream.consumer_info(&consumer).await.unwrap();
    assert_eq!(info.config.max_deliver, -1);
    assert_eq!(info.config.filter_subject, "");
    env.publish("wallet.deposit.144", "on-a-partition", b"{}".to_vec())
        .await;
    let info = stream.consumer_info(&consumer).await.unwrap();
    assert_eq!(
        info.num_pending, 1,
        "the consumer reads the partitioned subject"
    );

    // One that needs the stream recreated is reported, and the stream is left alone.
    let deposits = topology
        .streams
        .iter_mut()
        .find(|s| s.name == "DEPOSITS")
        .unwrap();
    deposits.retention = wallet_runtime::streams::Retention::Limits;
    env.publish("wallet.deposit", "kept", b"{}".to_vec()).await;
    let refused = wallet_ops::setup::setup(&env.config, &topology)
        .await
        .unwrap();
    let line = refused.iter().find(|l| l.contains("_DEPOSITS:")).unwrap();
    assert!(line.contains("NOT APPLIED"), "{line}");
    let mut stream = env
        .js
        .get_stream(env.config.names.name("DEPOSITS"))
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.retention, RetentionPolicy::WorkQueue);
    assert_eq!(info.state.messages, 2, "the stream's messages were lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_pending_commands_and_dead_letters_per_function() {
    let env = TestEnv::new().await;
    for id in ["s-1", "s-2", "s-3"] {
        env.publish("wallet.deposit", id, b"{}".to_vec()).await;
    }
    env.publish("dlq.deposit", "dlq:deposit:1", b"{}".to_vec())
        .await;
    let status = wallet_ops::status::status(&env.config, &testkit::topology())
        .await
        .unwrap();
    // What `--json` prints: the same numbers, named.
    let json = serde_json::to_value(&status).unwrap();
    let deposit = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["function"] == "deposit")
        .unwrap();
    assert_eq!(deposit["state"]["pending"], 3);
    assert_eq!(deposit["dead_letters"], 1);
    assert_eq!(
        deposit["state"]["keda_replicas"],
        serde_json::json!({"wanted": 1, "min": 0, "max": 20})
    );
    let out = status.to_string();
    let deposit = out.lines().find(|l| l.starts_with("deposit ")).unwrap();
    let columns: Vec<&str> = deposit.split_whitespace().collect();
    // FUNCTION CONSUMER PENDING ACK_PENDING REDELIVERED DEAD_LETTERS KEDA_LAG KEDA_REPLICAS
    assert_eq!(
        columns[2..],
        ["3", "0", "0", "1", "3", "1", "(0-20)"],
        "{out}"
    );
    let bonus = out.lines().find(|l| l.starts_with("bonus-grant ")).unwrap();
    assert_eq!(
        bonus.split_whitespace().collect::<Vec<_>>()[2..],
        ["0", "0", "0", "0", "0", "1", "(1-20)"],
        "{out}"
    );
}

fn repo_root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
}

#[test]
fn function_folders_streams_toml_and_k8s_agree() {
    let topology = wallet_runtime::streams::Topology::load(None).unwrap();
    let stale = walletctl::k8s::generate(repo_root(), &topology, true).unwrap();
    assert!(stale.is_empty(), "k8s/ is stale, run `make k8s`: {stale:?}");
    let specs = wallet_ops::catalog::specs(repo_root()).unwrap();
    for name in [
        "balance",
        "bonus-grant",
        "deposit",
        "provider-ack",
        "transfer-out",
    ] {
        assert!(
            specs.iter().any(|s| s.name == name),
            "{name} has a function.toml"
        );
    }
}

#[test]
fn a_function_disagreeing_with_streams_toml_fails_the_check() {
    use wallet_ops::catalog::check_agreement;
    let topology = wallet_runtime::streams::Topology::load(None).unwrap();
    let specs = wallet_ops::catalog::specs(repo_root()).unwrap();
    let broken = |change: &dyn Fn(&mut wallet_ops::catalog::FunctionSpec)| {
        let mut specs = specs.clone();
        change(specs.iter_mut().find(|s| s.name == "deposit").unwrap());
        check_agreement(&specs, &topology).unwrap_err().to_string()
    };
    assert!(broken(&|s| s.stream = Some("TRANSFERS".into())).contains("stream TRANSFERS"));
    assert!(
        broken(&|s| s.subject = "wallet.deposits".into())
            .contains("does not carry wallet.deposits")
    );
    // An unfiltered consumer reads its stream whole: the stream may carry nothing else.
    let mut wide = topology.clone();
    let deposits = wide.streams.iter_mut().find(|s| s.name == "DEPOSITS");
    deposits.unwrap().subjects.push("wallet.extra".into());
    let err = check_agreement(&specs, &wide).unwrap_err().to_string();
    assert!(err.contains("reads stream DEPOSITS whole"), "{err}");
    assert!(broken(&|s| s.name = "ghost".into()).contains("no [[consumer]]"));
    assert!(broken(&|s| s.scaling.lag_threshold = None).contains("lag_threshold"));
}

#[test]
fn status_predicts_the_replicas_of_kedas_formula() {
    let specs = wallet_ops::catalog::built_in();
    let folders = wallet_ops::catalog::specs(repo_root()).unwrap();
    assert_eq!(
        specs.len(),
        folders.len(),
        "every function.toml is built in"
    );
    let scaling = |name: &str| {
        specs
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .scaling
            .clone()
    };
    let deposit = scaling("deposit");
    // Inactive up to the activation threshold (1), then ceil(lag / 5000) within 0..=20.
    assert_eq!(deposit.keda_replicas(0), 0);
    assert_eq!(deposit.keda_replicas(1), 0);
    assert_eq!(deposit.keda_replicas(2), 1);
    assert_eq!(deposit.keda_replicas(5000), 1);
    assert_eq!(deposit.keda_replicas(5001), 2);
    assert_eq!(deposit.keda_replicas(10_000_000), 20);
    // The sweeper's function never goes below one.
    assert_eq!(scaling("provider-ack").keda_replicas(0), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn new_function_scaffolds_a_folder_that_agrees_with_streams_toml_roles_and_k8s() {
    // A copy of what the scaffolder reads: streams.toml, roles.sql and the function folders'
    // descriptions.
    let tmp = std::env::temp_dir().join(format!("scaffold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("libs/ops/src")).unwrap();
    std::fs::copy(repo_root().join("streams.toml"), tmp.join("streams.toml")).unwrap();
    let roles = "libs/ops/src/roles.sql";
    std::fs::copy(repo_root().join(roles), tmp.join(roles)).unwrap();
    for spec in wallet_ops::catalog::specs(repo_root()).unwrap() {
        let dir = tmp.join("functions").join(&spec.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            repo_root()
                .join("functions")
                .join(&spec.name)
                .join("function.toml"),
            dir.join("function.toml"),
        )
        .unwrap();
    }
    let wrote = walletctl::scaffold::new_function(&tmp, "cash-back", None).unwrap();
    assert!(
        wrote.iter().any(|w| w == "functions/cash-back/src/lib.rs"),
        "{wrote:?}"
    );
    assert!(
        wrote
            .iter()
            .any(|w| w == "k8s/base/functions/cash-back.yaml"),
        "{wrote:?}"
    );
    let lib = std::fs::read_to_string(tmp.join("functions/cash-back/src/lib.rs")).unwrap();
    assert!(lib.contains("pub struct CashBack;") && lib.contains("\"cash_back_id\""));
    let topology =
        wallet_runtime::streams::Topology::load(Some(&tmp.join("streams.toml"))).unwrap();
    let consumer = topology.consumer("cash-back").unwrap();
    assert_eq!(consumer.stream, "CASH_BACK");
    assert_eq!(
        topology.read_by(consumer),
        ["wallet.cash-back", "wallet.cash-back.*"],
        "its commands on their users' partitions too"
    );
    let yaml = std::fs::read_to_string(tmp.join("k8s/base/functions/cash-back.yaml")).unwrap();
    assert!(
        yaml.contains("stream: CASH_BACK") && yaml.contains("consumer: cash-back"),
        "{yaml}"
    );
    assert!(
        walletctl::k8s::generate(&tmp, &topology, true)
            .unwrap()
            .is_empty()
    );
    // Its role, as setup applies roles.sql: it may claim its own dedup ids and credit `main`,
    // and no other function's ids.
    let roles = std::fs::read_to_string(tmp.join(roles)).unwrap();
    let env = TestEnv::new().await;
    let owner = env.pg().await;
    owner.batch_execute(&roles).await.unwrap();
    let url = env.database_url_as("wallet_cash_back");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO commands (function, id, fingerprint) VALUES ('cash-back', 'x', '')",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO accounts (partition, owner, kind, provider, currency) VALUES (wallet_partition('u-x'), 'u-x', 'main', '', 'USD')",
            &[],
        )
        .await
        .unwrap();
    let other = client
        .execute(
            "INSERT INTO commands (function, id, fingerprint) VALUES ('deposit', 'x', '')",
            &[],
        )
        .await;
    assert_eq!(
        other.unwrap_err().code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    drop(client);
    // Roles belong to the server: this one leaves with the test.
    owner
        .batch_execute("DROP OWNED BY wallet_cash_back; DROP ROLE wallet_cash_back")
        .await
        .unwrap();
    // Twice, or a bad name: refused, nothing written.
    assert!(walletctl::scaffold::new_function(&tmp, "cash-back", None).is_err());
    assert!(walletctl::scaffold::new_function(&tmp, "Cash_Back", None).is_err());
    // A function answering partners on a subject of theirs: refused where another stream takes
    // it, written to its stream, consumer, schema and manifests where none does; its test
    // publishes to one subject of the pattern.
    let refused = walletctl::scaffold::new_function(&tmp, "cash-out", Some("payout.*.ack"));
    assert!(
        refused.unwrap_err().to_string().contains("PAYOUT_ACKS"),
        "the overlap names the stream"
    );
    assert!(!tmp.join("functions/cash-out").exists());
    walletctl::scaffold::new_function(&tmp, "cash-out", Some("cashout.*.ack")).unwrap();
    let topology =
        wallet_runtime::streams::Topology::load(Some(&tmp.join("streams.toml"))).unwrap();
    assert_eq!(
        topology.read_by(topology.consumer("cash-out").unwrap()),
        ["cashout.*.ack"],
        "a party's subject carries no partition"
    );
    let stream = topology
        .streams
        .iter()
        .find(|s| s.name == "CASH_OUT")
        .unwrap();
    assert_eq!(stream.subjects, ["cashout.*.ack"]);
    assert!(!stream.partitioned);
    let read =
        |path: &str| std::fs::read_to_string(tmp.join("functions/cash-out").join(path)).unwrap();
    assert!(read("function.toml").contains("subject = \"cashout.*.ack\""));
    assert!(read("src/lib.rs").contains("(\"cashout.*.ack\""));
    assert!(read("tests/cash_out.rs").contains("\"cashout.example.ack\".into()"));
    assert!(
        walletctl::k8s::generate(&tmp, &topology, true)
            .unwrap()
            .is_empty()
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_function_role_can_do_only_what_its_sql_needs() {
    let env = TestEnv::new().await;
    let as_role = |role: &str| {
        let url = env.database_url_as(role);
        async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
        }
    };
    let refused = |r: Result<u64, tokio_postgres::Error>| {
        let e = r.expect_err("allowed");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{e}"
        );
    };
    // (role, statements it may run, statements it must be refused)
    let grants: [(&str, &[&str], &[&str]); 5] = [
        (
            "wallet_deposit",
            &["SELECT count(*) FROM accounts"],
            &[
                "DELETE FROM postings",
                "UPDATE postings SET amount = 1",
                "SELECT 1 FROM transfers",
                "UPDATE campaigns SET budget = 1",
                "DELETE FROM accounts",
                // Columns: only a balance and its version change.
                "UPDATE accounts SET owner = 'x'",
                // Rows (row-level security): another function's dedup ids, wallets it never
                // creates, postings of another function's commands.
                "INSERT INTO commands (function, id, fingerprint) VALUES ('transfer-out', 'x', '')",
                "INSERT INTO accounts (partition, owner, kind, provider, currency) VALUES (wallet_partition('u-x'), 'u-x', 'game', 'alpha', 'USD')",
                "INSERT INTO postings (partition, account_id, amount, command) VALUES (0, 1, 1, 'transfer-out:x')",
            ],
        ),
        (
            "wallet_balance",
            &["SELECT 1 FROM accounts"],
            &["UPDATE accounts SET balance = 0", "SELECT 1 FROM commands"],
        ),
        (
            "wallet_provider_ack",
            &[],
            &[
                "INSERT INTO transfers (id) VALUES ('x')",
                "SELECT 1 FROM campaigns",
                "UPDATE transfers SET amount = 1",
                "UPDATE transfers SET user_id = 'x'",
                "INSERT INTO accounts (partition, owner, kind, provider, currency) VALUES (wallet_partition('u-x'), 'u-x', 'bonus', '', 'USD')",
            ],
        ),
        (
            // It records transfers and asks providers; it moves no money.
            "wallet_transfer_in",
            &["SELECT count(*) FROM transfers"],
            &[
                "SELECT 1 FROM accounts",
                "INSERT INTO postings (partition, account_id, amount, command) VALUES (0, 1, 1, 'transfer-in:x')",
                "UPDATE transfers SET status = 'completed'",
                "INSERT INTO commands (function, id, fingerprint) VALUES ('transfer-out', 'x', '')",
            ],
        ),
        (
            "wallet_bonus_grant",
            &[],
            &[
                "DELETE FROM grants",
                "INSERT INTO campaigns (id) VALUES ('x')",
                "UPDATE campaigns SET budget = 1",
                "UPDATE campaigns SET per_user = 100",
                "INSERT INTO commands (function, id, fingerprint) VALUES ('deposit', 'x', '')",
            ],
        ),
    ];
    for (role, allowed, denied) in grants {
        let client = as_role(role).await;
        for sql in allowed {
            client.execute(*sql, &[]).await.unwrap();
        }
        for sql in denied {
            refused(client.execute(*sql, &[]).await);
        }
    }
    // Rows it may not reach are not there for it: another function's dedup ids cannot be
    // deleted (the command would be applied again), wallets of kinds it never moves cannot be
    // changed.
    let owner = env.pg().await;
    owner
        .batch_execute(
            "INSERT INTO commands (function, id, fingerprint) VALUES ('transfer-out', 't-1', '');
             INSERT INTO accounts (partition, owner, kind, provider, currency, balance)
                 VALUES (2, 'u-1', 'game', 'alpha', 'USD', 5), (2, 'u-1', 'main', '', 'USD', 5)",
        )
        .await
        .unwrap();
    let deposit = as_role("wallet_deposit").await;
    for (sql, changed) in [
        ("DELETE FROM commands WHERE function = 'transfer-out'", 0),
        ("UPDATE accounts SET balance = 1000 WHERE kind = 'game'", 0),
        ("UPDATE accounts SET balance = 6 WHERE kind = 'main'", 1),
    ] {
        assert_eq!(deposit.execute(sql, &[]).await.unwrap(), changed, "{sql}");
    }
    let left: i64 = owner
        .query_one(
            "SELECT count(*) FROM commands WHERE function = 'transfer-out'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);

    // None of them may change the schema.
    for role in [
        "wallet_deposit",
        "wallet_transfer_out",
        "wallet_bonus_grant",
    ] {
        let c = as_role(role).await;
        let e = c.batch_execute("DROP TABLE outbox").await.expect_err(role);
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
        );
    }

    // A database set up before transfers in (V10): provider-ack's old policy let it create no
    // platform account. Setup replaces it, and its answers to transfers in can post.
    let platform = "INSERT INTO accounts (partition, owner, kind, provider, currency)
                    VALUES (0, '', 'platform', 'game-results:alpha', 'USD')";
    owner
        .batch_execute(
            r#"DROP POLICY "creates_provider-ack" ON accounts;
               CREATE POLICY "creates_provider-ack" ON accounts FOR INSERT TO wallet_provider_ack
                   WITH CHECK (kind = ANY ('{main,in_transit,game}'))"#,
        )
        .await
        .unwrap();
    refused(
        as_role("wallet_provider_ack")
            .await
            .execute(platform, &[])
            .await,
    );
    owner.batch_execute(wallet_ops::setup::ROLES).await.unwrap();
    as_role("wallet_provider_ack")
        .await
        .execute(platform, &[])
        .await
        .unwrap();
}

/// `walletctl publish` and `walletctl balance`: what the README's "try it" uses instead of the
/// `nats` CLI, against running functions.
#[tokio::test(flavor = "multi_thread")]
async fn publish_sends_a_command_once_and_balance_reads_it_back() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    let balance = env.spawn("balance", &[]);
    env.ready(&balance).await;
    let mut events = env.events().await;
    let walletctl = |args: &[&str]| {
        std::process::Command::new(testkit::binary("walletctl"))
            .args(args)
            .envs(env.env())
            .output()
            .unwrap()
    };
    let deposit = r#"{"deposit_id":"d-1","user_id":"u-1","amount":"10","currency":"USD"}"#;
    let stored = walletctl(&["publish", "wallet.deposit", deposit, "--id", "d-1"]);
    let stdout = String::from_utf8_lossy(&stored.stdout);
    assert!(stored.status.success(), "{stored:?}");
    // On u-1's partition, 2 (docs/sharding.md's vector).
    let ns = env.config.names.namespace();
    assert_eq!(
        stdout.trim(),
        format!("stored in {ns}_DEPOSITS as message 1 on {ns}.wallet.deposit.2")
    );
    let again = walletctl(&["publish", "wallet.deposit", deposit, "--id", "d-1"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).starts_with("duplicate of d-1"),
        "{again:?}"
    );
    events
        .by_id("deposit:d-1:completed", std::time::Duration::from_secs(30))
        .await;

    let read = walletctl(&["balance", "u-1"]);
    assert!(read.status.success(), "{read:?}");
    let reply: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(
        reply["wallets"],
        serde_json::json!([{"kind": "main", "currency": "USD", "balance": "10.00"}])
    );

    let refused = walletctl(&["publish", "wallet.deposit", "{not json", "--id", "d-2"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "could not run: exit 2");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not JSON"), "{stderr}");
}

/// KEDA (or the HPA) owns a function's replica count: a Deployment that set one would reset it
/// to that number on every `kubectl apply`.
#[test]
fn generated_deployments_leave_the_replica_count_to_the_autoscaler() {
    let files = walletctl::k8s::render(
        &wallet_ops::catalog::built_in(),
        &wallet_runtime::streams::Topology::load(None).unwrap(),
        None,
        std::path::Path::new("k8s/base/functions"),
    );
    let functions: Vec<&String> = files
        .iter()
        .filter(|(path, _)| !path.ends_with("kustomization.yaml"))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(functions.len(), wallet_ops::catalog::names().len());
    for body in functions {
        let deployment = body.split("\n---\n").next().unwrap();
        assert!(deployment.contains("kind: Deployment"), "{deployment}");
        assert!(!deployment.contains("replicas:"), "{deployment}");
        assert!(
            body.contains("kind: ScaledObject") || body.contains("kind: HorizontalPodAutoscaler"),
            "{body}"
        );
    }
}

/// With a shard map, each shard of a function is its own Deployment, reading its shard's
/// consumer and database and scaled by that consumer's lag (a function not `sharded` in
/// streams.toml would run on none of two: `streams::tests` in the runtime).
#[test]
fn sharded_manifests_run_each_function_once_per_shard() {
    let dir = std::env::temp_dir().join(format!("shards-{}", testkit::namespace()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("shards.toml");
    // The map as an operator writes a first one: `walletctl shards even`.
    let even = std::process::Command::new(testkit::binary("walletctl"))
        .args(["shards", "even", "postgres://h/a", "postgres://h/b"])
        .output()
        .unwrap();
    assert!(even.status.success(), "{even:?}");
    let toml = String::from_utf8(even.stdout).unwrap();
    let urls = ["postgres://h/a".to_owned(), "postgres://h/b".to_owned()];
    assert_eq!(toml, ShardMap::even(&urls).to_toml());
    assert!(
        toml.contains("name = \"b\"\ndatabase_url = \"postgres://h/b\"\npartitions = \"128-255\""),
        "{toml}"
    );
    std::fs::write(&map, toml).unwrap();
    let out = dir.join("functions");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let run = std::process::Command::new(testkit::binary("walletctl"))
        .args(["k8s", "--root", root, "--shards"])
        .arg(&map)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut want: Vec<String> = [
        "balance",
        "bonus-grant",
        "deposit",
        "payout-ack",
        "provider-ack",
        "transfer-in",
        "transfer-out",
        "withdraw",
    ]
    .iter()
    .flat_map(|f| ["a", "b"].map(|s| format!("{f}-{s}.yaml")))
    .chain([
        "authorization.conf".to_owned(),
        "campaign-rebalance.yaml".to_owned(),
        "kustomization.yaml".to_owned(),
    ])
    .collect();
    want.sort();
    assert_eq!(written, want);
    let deposit = std::fs::read_to_string(out.join("deposit-b.yaml")).unwrap();
    for line in [
        "name: deposit-b",
        "key: DATABASE_URL_DEPOSIT_B",
        "- name: SHARD\n          value: b",
        "consumer: deposit-b",
        "stream: DEPOSITS-b",
        "app.kubernetes.io/name: deposit-b",
    ] {
        assert!(deposit.contains(line), "{line}: {deposit}");
    }
    let users = std::fs::read_to_string(out.join("authorization.conf")).unwrap();
    for consumer in ["DEPOSITS-a.deposit-a", "DEPOSITS-b.deposit-b"] {
        assert!(
            users.contains(&format!("$JS.API.CONSUMER.MSG.NEXT.{consumer}")),
            "{users}"
        );
    }
    assert!(
        users.contains("MSG.NEXT.PROVIDER_ACKS-b.provider-ack-b"),
        "{users}"
    );
    assert!(users.contains("MSG.NEXT.BONUS-b.bonus-grant-b"), "{users}");
    std::fs::remove_dir_all(&dir).unwrap();
}
