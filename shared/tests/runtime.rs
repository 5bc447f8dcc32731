//! The runtime against real servers, through its own test function, `probe`
//! (`shared/tests/probe`): batches, poison isolation, retries and dead letters, the linger, the
//! outbox relay, supervised tasks, shutdown and exit codes. The functions' tests check their
//! rules; these check what every function gets from the runtime.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use testkit::{TestEnv, completed, eventually};
use wallet_runtime::wallet::WalletKey;

const T: Duration = Duration::from_secs(60);

fn probe(id: &str, user: &str, amount: &str, currency: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({ "probe_id": id, "user_id": user, "amount": amount, "currency": currency }),
    )
    .unwrap()
}

/// A probe command that asks for `act` (`poison`, `retry`).
fn act(id: &str, act: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({ "probe_id": id, "user_id": "u-1", "amount": "1", "currency": "USD", "act": act }),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_0_bad_config_and_arguments_exit_64_with_one_line_and_help_exits_0() {
    let env = TestEnv::new().await;
    let mut p = env.spawn("probe", &[]);
    env.ready(&p).await;
    let status = p
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20))
        .await;
    assert_eq!(status.code(), Some(0));

    let out = std::process::Command::new(testkit::binary("probe"))
        .env("BATCH_MAX", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("BATCH_MAX"), "{stderr}");

    // Arguments: --help says what it is without starting; anything else is refused in one line.
    let help = std::process::Command::new(testkit::binary("probe"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    let usage = String::from_utf8_lossy(&help.stdout);
    assert!(usage.starts_with("probe: a wallet function"), "{usage}");
    assert!(usage.contains("DATABASE_URL"), "{usage}");
    let bogus = std::process::Command::new(testkit::binary("probe"))
        .arg("--listen")
        .output()
        .unwrap();
    assert_eq!(bogus.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&bogus.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("takes no arguments"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_is_isolated_then_dead_lettered_on_its_last_delivery() {
    let env = TestEnv::new().await;
    // Published before the function starts, so that they arrive in one batch.
    for id in ["p-1", "p-2", "p-3", "p-4"] {
        env.publish("wallet.probe", id, probe(id, "u-1", "1", "USD"))
            .await;
        if id == "p-2" {
            env.publish("wallet.probe", "poison", act("poison", "poison"))
                .await;
        }
    }
    let streams = env.streams_file_dead_letter_after(3);
    let probe_proc = env.spawn("probe", &[("STREAMS_FILE", &streams)]);
    let mut events = env.events().await;
    for id in ["p-1", "p-2", "p-3", "p-4"] {
        events.by_id(&format!("probe:{id}:completed"), T).await;
    }
    let mut dlq = env.dead_letters().await;
    dlq.count(1, T).await;
    let letter = &dlq.seen[0];
    assert_eq!(letter.header("Wallet-Dlq-Msg-Id"), "poison");
    assert_eq!(letter.header("Wallet-Dlq-Reason"), "max_deliver");
    assert_eq!(letter.header("Wallet-Dlq-Deliveries"), "3");
    assert!(probe_proc.metric("wallet_batch_fallbacks_total").await >= 1.0);
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(4)
    );
    let remembered: i64 = env
        .pg()
        .await
        .query_one("SELECT count(*) FROM commands WHERE id = 'poison'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        remembered, 0,
        "a command that never took effect must not be remembered"
    );
    assert!(env.audit().await.ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_pooled_connection_is_enough() {
    // A task that held one connection and asked the pool for another would wait on itself.
    let env = TestEnv::new().await;
    let _probe = env.spawn("probe", &[("PG_POOL_SIZE", "1")]);
    let mut events = env.events().await;
    // A currency nobody deposited yet: its platform account is created in the batch.
    env.publish("wallet.probe", "c-1", probe("c-1", "u-1", "0.5", "EUR"))
        .await;
    env.publish("wallet.probe", "c-2", probe("c-2", "u-1", "0.25", "EUR"))
        .await;
    // Two consume loops (BATCHES_IN_FLIGHT) may take them in either order: whichever commits
    // second reports both.
    let mut balances = Vec::new();
    for id in ["probe:c-1:completed", "probe:c-2:completed"] {
        let e = events.by_id(id, Duration::from_secs(20)).await;
        balances.push(e.body["balance"].as_str().unwrap().to_owned());
    }
    balances.sort();
    assert!(
        balances == ["0.50", "0.75"] || balances == ["0.25", "0.75"],
        "{balances:?}"
    );
    assert!(env.audit().await.ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_of_one_id_inside_one_batch_have_one_effect() {
    let d1 = || probe("d-1", "u-1", "10", "USD");
    let (env, probe_proc, events) = queued_as_one_batch(
        &[
            ("a", d1()),
            ("b", d1()),
            ("c", probe("d-1", "u-1", "99", "USD")),
            ("d", probe("d-2", "u-1", "1", "USD")),
        ],
        "probe:d-2:completed",
        &[],
    )
    .await;
    let mut dlq = env.dead_letters().await;
    let letters = dlq.count(1, T).await;
    assert_eq!(letters[0].header("Wallet-Dlq-Msg-Id"), "c");
    assert_eq!(letters[0].header("Wallet-Dlq-Reason"), "id_conflict");
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(11)
    );
    assert_eq!(
        events.seen.iter().filter(|r| r.body["id"] == "d-1").count(),
        1
    );
    assert_eq!(
        probe_proc.metric("wallet_commands_duplicate_total").await,
        1.0
    );
    assert!(env.audit().await.ok());
}

/// A probe function (one consume loop, and `vars`) that took `commands` (message id, payload),
/// published before it started, as one batch, once the event `last` is out; with its namespace
/// and a reader of its events.
///
/// Messages published before a function starts land in one batch only if the client has read
/// them all when the first is taken, and on a busy host it sometimes has not: each of up to three
/// tries takes a namespace of its own, and a test about one batch never goes on with two.
async fn queued_as_one_batch(
    commands: &[(&str, Vec<u8>)],
    last: &str,
    vars: &[(&str, &str)],
) -> (TestEnv, testkit::Proc, testkit::Reader) {
    for _ in 0..3 {
        let env = TestEnv::new().await;
        for (id, payload) in commands {
            env.publish("wallet.probe", id, payload.clone()).await;
        }
        // One consume loop: JetStream shares messages round-robin between pulls waiting at once.
        let mut vars = vars.to_vec();
        vars.push(("BATCHES_IN_FLIGHT", "1"));
        let probe_proc = env.spawn("probe", &vars);
        let mut events = env.events().await;
        events.by_id(last, T).await;
        if probe_proc.metric("wallet_batch_size_count").await == 1.0 {
            return (env, probe_proc, events);
        }
    }
    panic!("never one batch in three tries: the test proves less than it says");
}

/// Leaves `rows` outbox rows of `per_row` probe events each, a minute old, as a crash would.
async fn left_in_outbox(pg: &tokio_postgres::Client, rows: i32, per_row: i32) {
    pg.execute(
        "INSERT INTO outbox (subjects, msg_ids, payloads, wallets, created_at)
         SELECT array_fill('wallet.events.probe.completed'::text, ARRAY[$2::int]),
                ARRAY(SELECT format('probe:many-%s-%s:completed', r, i) FROM generate_series(1, $2) i),
                ARRAY(SELECT convert_to(format('{\"id\": \"many-%s-%s\", \"entity\": \"probe\", \"status\": \"completed\"}', r, i), 'UTF8')
                      FROM generate_series(1, $2) i),
                array_fill('[]'::text, ARRAY[$2::int]), now() - interval '1 minute'
         FROM generate_series(1, $1) r",
        &[&rows, &per_row],
    )
    .await
    .unwrap();
}

/// Waits until the relay has published and deleted every outbox row.
async fn outbox_empties(pg: &tokio_postgres::Client) {
    eventually(T, "the outbox to empty", || async {
        let left: i64 = pg
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_publishes_what_a_crash_left_in_the_outbox_and_never_caches_an_older_balance() {
    let env = TestEnv::new().await;
    // Two rows as a crash between commit and publish leaves them, the newer balance first.
    let row = |id: &str, version: i64, balance: &str| {
        let wallets =
            json!([{"owner": "u-9", "field": "main:USD", "version": version, "balance": balance}]);
        let event = json!({"id": id, "entity": "probe", "status": "completed", "balance": balance});
        (
            format!("probe:{id}:completed"),
            serde_json::to_vec(&event).unwrap(),
            wallets.to_string(),
        )
    };
    let pg = env.pg().await;
    for (msg_id, payload, wallets) in [row("late-5", 5, "50.00"), row("late-3", 3, "30.00")] {
        pg.execute(
            "INSERT INTO outbox (subjects, msg_ids, payloads, wallets, created_at)
             VALUES (ARRAY['wallet.events.probe.completed'], ARRAY[$1], ARRAY[$2::bytea],
                     ARRAY[$3], now() - interval '1 minute')",
            &[&msg_id, &payload, &wallets],
        )
        .await
        .unwrap();
    }
    // A batch-sized row is stored compressed with lz4 (V7), and read back as it was written.
    let bulk: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| {
            let id = format!("bulk-{i:03}");
            let event = json!({"id": id, "entity": "probe", "status": "completed"});
            (
                format!("probe:{id}:completed"),
                serde_json::to_vec(&event).unwrap(),
            )
        })
        .collect();
    let (ids, payloads): (Vec<&str>, Vec<&[u8]>) =
        bulk.iter().map(|(i, p)| (i.as_str(), p.as_slice())).unzip();
    pg.execute(
        "INSERT INTO outbox (subjects, msg_ids, payloads, wallets, created_at)
         SELECT array_fill('wallet.events.probe.completed'::text, ARRAY[300]), $1, $2,
                array_fill('[]'::text, ARRAY[300]), now() - interval '1 minute'",
        &[&ids, &payloads],
    )
    .await
    .unwrap();
    let compression: Option<String> = pg
        .query_one(
            "SELECT pg_column_compression(payloads) FROM outbox WHERE cardinality(payloads) = 300",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(compression.as_deref(), Some("lz4"));
    env.cache_holds("u-9").await;
    let _probe = env.spawn("probe", &[("OUTBOX_RELAY_INTERVAL", "100ms")]);
    let mut events = env.events().await;
    events.by_id("probe:late-5:completed", T).await;
    events.by_id("probe:late-3:completed", T).await;
    let last = events.by_id("probe:bulk-299:completed", T).await;
    assert_eq!(last.body["id"], "bulk-299");
    outbox_empties(&pg).await;
    assert_eq!(
        env.cached("u-9", "main:USD").await.as_deref(),
        Some("5|50.00"),
        "an older version overwrote a newer one"
    );
}

/// A backlog bigger than the publish acks a process may await at once (the relay claims 8 rows of
/// up to `BATCH_MAX` events each): it is published in rounds. Published in one go, the sweep
/// waited for ack permits its own unawaited acks held, and its process published nothing again
/// (found by `make chaos CLUSTER=3`: 5,489 events against async-nats's default of 5,000).
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_publishes_a_backlog_larger_than_the_acks_a_process_may_await() {
    let env = TestEnv::new().await;
    let pg = env.pg().await;
    left_in_outbox(&pg, 8, 1000).await;
    let _probe = env.spawn(
        "probe",
        &[
            ("OUTBOX_RELAY_INTERVAL", "100ms"),
            ("BATCHES_IN_FLIGHT", "1"),
        ],
    );
    outbox_empties(&pg).await;
    let mut stream = env
        .js
        .get_stream(env.config.names.name("WALLET_EVENTS"))
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 8000);
}

/// A process's relay never re-publishes a row the process is still publishing, and takes another
/// replica's rows only once they are older than twice the oldest it holds itself: when
/// publishing is slow, it is slow for every replica. With a fixed age of 2 s, relays re-published
/// what their committers were about to publish (`make chaos CLUSTER=3` at 400 commands/s:
/// 43,898 repeated outcomes).
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_leaves_alone_the_rows_a_process_is_still_publishing() {
    use wallet_runtime::outbox::{InHand, Publisher, Row};
    let env = TestEnv::new().await;
    let pg = env.pg().await;
    let redis = wallet_runtime::cache::client(&env.config)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let process = || Publisher {
        pool: wallet_runtime::db::pool(&env.config).unwrap(),
        js: env.js.clone(),
        cache: wallet_runtime::cache::BalanceCache::new(redis.clone(), env.config.names.clone()),
        names: env.config.names.clone(),
        in_hand: InHand::default(),
    };
    let committed = |id: &'static str, age: &'static str| {
        let pg = &pg;
        async move {
            let event =
                serde_json::to_vec(&json!({"id": id, "entity": "probe", "status": "completed"}))
                    .unwrap();
            let row: i64 = pg
                .query_one(
                    "INSERT INTO outbox (subjects, msg_ids, payloads, wallets, created_at)
                     VALUES (ARRAY['wallet.events.probe.completed'], ARRAY[$1], ARRAY[$2::bytea],
                             ARRAY['[]'], now() - $3::text::interval)
                     RETURNING id",
                    &[&format!("probe:{id}:completed"), &event, &age],
                )
                .await
                .unwrap()
                .get(0);
            row
        }
    };
    let relay_age = Duration::from_secs(2);
    let slow = process();
    let mine = committed("mine", "1 minute").await;
    slow.in_hand.take(&[Row {
        id: mine,
        messages: Vec::new(),
    }]);
    // Held for 3 s, so another replica's rows are left to their committer for 6 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    committed("theirs", "4 seconds").await;
    assert_eq!(
        slow.sweep(relay_age, 8).await.unwrap(),
        0,
        "a row still being published was re-published"
    );

    // A replica holding nothing takes both: a minute and 4 s are past any committer's publishing.
    let mut events = env.events().await;
    assert_eq!(process().sweep(relay_age, 8).await.unwrap(), 2);
    events.by_id("probe:mine:completed", T).await;
    events.by_id("probe:theirs:completed", T).await;
    outbox_empties(&pg).await;
}

/// When it is quiet a command is decided as soon as it arrives: the linger is for loads that
/// fill batches, and a lone command never waits for it (with a 3 s linger, five commands 100 ms
/// apart were one transaction, the last one 3 s late).
#[tokio::test(flavor = "multi_thread")]
async fn a_command_arriving_when_it_is_quiet_does_not_wait_for_the_linger() {
    let env = TestEnv::new().await;
    let probe_proc = env.spawn(
        "probe",
        &[("BATCH_LINGER", "3s"), ("BATCHES_IN_FLIGHT", "1")],
    );
    env.ready(&probe_proc).await;
    let mut events = env.events().await;
    for i in 0..5 {
        let id = format!("l-{i}");
        env.publish("wallet.probe", &id, probe(&id, "u-1", "1", "USD"))
            .await;
        // Each is decided before the next is sent, well inside the linger.
        events
            .by_id(&format!("probe:{id}:completed"), Duration::from_secs(2))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probe_proc.metric("wallet_transactions_total").await, 5.0);
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(5)
    );
}

/// Behind a batch of several a loop lingers as long as that batch took to decide, not the whole
/// `BATCH_LINGER`: a lone command sent right after it is decided well inside a 5 s cap.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_batch_of_several_a_command_lingers_for_the_last_decision_not_the_cap() {
    let took = lone_command_after_a_batch_of_four(Duration::ZERO, &[]).await;
    assert!(took < Duration::from_millis(2500), "decided in {took:?}");
}

/// A loop whose wait for a message timed out is quiet, however busy it was before: the first
/// command after a 3 s pause (`FETCH_WAIT` 200 ms) is decided at once, not after as long as the
/// pause (up to the 5 s cap), as it would be if the linger were measured from the last batch.
#[tokio::test(flavor = "multi_thread")]
async fn after_an_idle_wait_a_command_does_not_linger_for_the_pause() {
    let took =
        lone_command_after_a_batch_of_four(Duration::from_secs(3), &[("FETCH_WAIT", "200ms")])
            .await;
    assert!(took < Duration::from_millis(2500), "decided in {took:?}");
}

/// Four commands taken as one batch (`BATCH_LINGER` 5 s), then `pause`, then one more: how long
/// that one took from publish to its event.
async fn lone_command_after_a_batch_of_four(pause: Duration, extra: &[(&str, &str)]) -> Duration {
    let ids = ["b-0", "b-1", "b-2", "b-3"];
    let commands: Vec<_> = ids
        .iter()
        .map(|id| (*id, probe(id, "u-1", "1", "USD")))
        .collect();
    let mut vars = vec![("BATCH_LINGER", "5s")];
    vars.extend_from_slice(extra);
    let (env, probe_proc, mut events) =
        queued_as_one_batch(&commands, "probe:b-3:completed", &vars).await;
    for id in ids {
        events.by_id(&format!("probe:{id}:completed"), T).await;
    }
    // The pause is the scenario (a loop left idle), not a wait for something to happen.
    tokio::time::sleep(pause).await;
    let sent = std::time::Instant::now();
    env.publish("wallet.probe", "lone", probe("lone", "u-1", "1", "USD"))
        .await;
    events.by_id("probe:lone:completed", T).await;
    let took = sent.elapsed();
    assert_eq!(probe_proc.metric("wallet_batch_size_count").await, 2.0);
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(5)
    );
    took
}

/// Two batches that both meet a platform account that does not exist yet: one creates it, the
/// other waits for that and must then find it, not fail as if PostgreSQL were down (the first
/// batches of every fresh `make bench` run did, and waited out a retry).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_batches_creating_the_platform_account_both_commit() {
    let env = TestEnv::new().await;
    let msgs: Vec<_> = (0..1000)
        .map(|i| {
            let id = format!("p-{i}");
            let body = probe(&id, &format!("u-{i}"), "1", "USD");
            ("wallet.probe".to_owned(), id, body)
        })
        .collect();
    // Queued before the process starts, so that its loops begin at once, each with a batch.
    env.publish_many(msgs).await;
    let mut events = env.events().await;
    let probe_proc = env.spawn("probe", &[("BATCH_MAX", "100"), ("BATCHES_IN_FLIGHT", "4")]);
    events
        .until(T * 2, "1000 completed probes", |s| completed(s) >= 1000)
        .await;
    assert_eq!(
        probe_proc.metric("wallet_transient_errors_total").await,
        0.0,
        "a batch failed as if a dependency were down"
    );
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_still_undecidable_on_its_last_delivery_is_dead_lettered_with_its_reason() {
    let env = TestEnv::new().await;
    let _probe = env.spawn("probe", &[]);
    let mut events = env.events().await;
    env.publish("wallet.probe", "r-1", act("r-1", "retry"))
        .await;
    env.publish("wallet.probe", "c-1", probe("c-1", "u-2", "2", "USD"))
        .await;
    events.by_id("probe:c-1:completed", T).await;
    let mut dlq = env.dead_letters().await;
    let letter = dlq.count(1, T).await[0].clone();
    assert_eq!(letter.header("Wallet-Dlq-Msg-Id"), "r-1");
    assert_eq!(letter.header("Wallet-Dlq-Reason"), probe::PROBE_RETRY);
    // streams.toml of these tests: dead_letter_after = 5 for the probe.
    assert_eq!(letter.header("Wallet-Dlq-Deliveries"), "5");
    assert!(events.seen.iter().all(|e| e.body["id"] != "r-1"));
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::ZERO
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_task_that_panics_stops_the_process_with_a_failure() {
    let env = TestEnv::new().await;
    let log = std::env::temp_dir().join(format!("{}.probe.log", env.config.names.namespace()));
    let mut p = env.spawn_logged("probe", &[("PROBE_BACKGROUND", "panic")], &log);
    let status = p.wait(T).await;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("task panicked"), "{output}");
    assert!(output.contains("background"), "{output}");
}

/// A backlog found at start is decided in batches, not one transaction per command. The pull
/// stream delivers the queued messages as they come off the socket, and a batch takes what has
/// arrived when its first message is taken, so the 50 may come as one batch or a few (two, once,
/// on a loaded CI host); one per command would be 50.
#[tokio::test(flavor = "multi_thread")]
async fn commands_queued_before_a_start_are_decided_in_a_few_batches() {
    let env = TestEnv::new().await;
    let msgs: Vec<_> = (0..50)
        .map(|i| {
            let id = format!("b-{i:02}");
            let body = probe(&id, "u-1", "1", "USD");
            ("wallet.probe".to_owned(), id, body)
        })
        .collect();
    // Queued before the process starts, and one consume loop.
    env.publish_many(msgs).await;
    let mut events = env.events().await;
    let probe_proc = env.spawn("probe", &[("BATCHES_IN_FLIGHT", "1")]);
    let seen = events
        .until(T, "50 completed probes", |s| completed(s) >= 50)
        .await;
    assert_eq!(seen.len(), 50);
    let batches = probe_proc.metric("wallet_batch_size_count").await;
    assert!(
        (1.0..=5.0).contains(&batches),
        "{batches} batches for 50 queued commands"
    );
    assert_eq!(probe_proc.metric("wallet_batch_size_sum").await, 50.0);
    assert_eq!(
        probe_proc.metric("wallet_transactions_total").await,
        batches
    );
    assert_eq!(probe_proc.metric("wallet_build_info").await, 1.0);
    assert!(
        probe_proc.metrics().await.contains(&format!(
            "wallet_build_info{{function=\"probe\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        probe_proc.counters().await
    );
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(50)
    );
    let report = env.audit().await;
    assert!(report.ok(), "{report}");
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a function exports its spans over OTLP/HTTP: a
/// command's span, in the trace its `traceparent` named, reaches the collector (here a listener
/// that records what is POSTed to it).
#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::new().await;
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let (tx, mut received) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = collector.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Head, then as many body bytes as Content-Length says.
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        let line = head.lines().next().unwrap_or_default().to_owned();
                        let _ = tx.send((line, buf[end + 4..end + 4 + length].to_vec()));
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                }
            });
        }
    });
    let _probe = env.spawn(
        "probe",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = format!("00-{trace}-b7ad6b7169203331-01");
    let mut events = env.events().await;
    env.publish_with(
        "wallet.probe",
        &[("Nats-Msg-Id", "o-1"), ("traceparent", parent.as_str())],
        probe("o-1", "u-1", "1", "USD"),
    )
    .await;
    let event = events.by_id("probe:o-1:completed", T).await;
    assert!(event.header("traceparent").contains(trace));
    // The trace id's 16 bytes, as the protobuf body carries them.
    let id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (line, body) = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("no span exported within the limit")
            .unwrap();
        assert_eq!(line, "post /v1/traces http/1.1");
        if body.windows(16).any(|w| w == id.as_slice()) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_sessions_commit_synchronously_and_keep_their_plans_on_the_indexes() {
    let env = TestEnv::new().await;
    let pool = wallet_runtime::db::pool(&env.config).unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('enable_seqscan'),
                    current_setting('enable_mergejoin'), current_setting('enable_hashjoin'),
                    current_setting('jit')",
            &[],
        )
        .await
        .unwrap();
    let settings: Vec<String> = (0..5).map(|i| row.get(i)).collect();
    assert_eq!(settings, ["on", "off", "off", "off", "off"]);

    // A batch's lock of its wallets probes the accounts' key for each, on a table small enough
    // that walking the whole index looks cheaper (without the join settings every batch read
    // every wallet: 12,000 entries for 1,000 wallets).
    let pg = env.pg().await;
    pg.batch_execute(
        "INSERT INTO accounts (partition, owner, kind, currency)
             SELECT wallet_partition('w-' || i), 'w-' || i, 'main', 'USD'
             FROM generate_series(1, 10000) i;
         ANALYZE accounts;",
    )
    .await
    .unwrap();
    let usd = env.config.currencies.get("USD").unwrap();
    let keys: Vec<WalletKey> = (1..=1000)
        .map(|i| WalletKey::main(&format!("w-{}", i * 10), usd))
        .collect();
    let reads = || async {
        pg.batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        let row = pg
            .query_one(
                "SELECT coalesce(sum(idx_tup_read), 0)::bigint FROM pg_stat_user_indexes
                 WHERE relname = 'accounts'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let ledger = wallet_runtime::ledger::Ledger::default();
    let mut client = pool.get().await.unwrap();
    // Its generic plan, as a pooled session runs it from the sixth time on.
    for _ in 0..7 {
        let before = reads().await;
        let tx = client.transaction().await.unwrap();
        ledger.open(&tx, keys.iter().cloned()).await.unwrap();
        tx.commit().await.unwrap();
        client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        let read = eventually(T, "the lock's index reads", || async {
            let after = reads().await;
            (after > before).then_some(after - before)
        })
        .await;
        // The first batch also finds the wallets' ids by their keys: 3,000. A walk of the
        // index read 12,000.
        assert!(
            read <= 3_000,
            "{read} index entries read to lock 1,000 wallets of 10,000"
        );
    }
}

/// The outbox backlog gauge, measured every relay interval in every process, finds the few rows
/// waiting among the many published since the last VACUUM by walking the primary key, never by
/// reading the table's pages: a sequential scan reads every deleted row until VACUUM (8.5 ms a
/// measure after 3 minutes of mixed-all-peak without autovacuum, and growing).
#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_backlog_is_measured_through_its_index_past_the_published_rows() {
    let env = TestEnv::new().await;
    let pg = env.pg().await;
    left_in_outbox(&pg, 20_000, 1).await;
    pg.batch_execute(
        "DELETE FROM outbox WHERE id <= (SELECT max(id) - 2 FROM outbox);
         SELECT pg_stat_force_next_flush();",
    )
    .await
    .unwrap();
    // (sequential scans, index scans) of the outbox, once this session's counts have arrived.
    let scans = || async {
        let row = pg
            .query_one(
                "SELECT seq_scan, idx_scan, n_tup_del FROM pg_stat_user_tables WHERE relname = 'outbox'",
                &[],
            )
            .await
            .unwrap();
        let deleted: i64 = row.get(2);
        (deleted >= 19_998).then(|| (row.get::<_, i64>(0), row.get::<_, i64>(1)))
    };
    let (seq_before, idx_before) = eventually(T, "the setup's statistics", scans).await;

    let pool = wallet_runtime::db::pool(&env.config).unwrap();
    let publisher = wallet_runtime::outbox::Publisher {
        pool: pool.clone(),
        js: env.js.clone(),
        cache: env.cache().await,
        names: env.config.names.clone(),
        in_hand: wallet_runtime::outbox::InHand::default(),
    };
    let (rows, oldest) = publisher.backlog().await.unwrap();
    assert_eq!(rows, 2);
    assert!((60.0..120.0).contains(&oldest), "oldest {oldest} s");
    // The pool opened one connection and hands it out again: its counts are the measure's.
    pool.get()
        .await
        .unwrap()
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let (seq_after, idx_after) = eventually(T, "the measure's statistics", || async {
        let (seq, idx) = scans().await.unwrap();
        (seq + idx > seq_before + idx_before).then_some((seq, idx))
    })
    .await;
    assert_eq!(
        (seq_after - seq_before, idx_after - idx_before),
        (0, 1),
        "(sequential, index) scans of the outbox to measure its backlog"
    );
}

/// A test's env removes every stream of its namespace when it ends, the crate's own (`PROBES`,
/// from `tests/streams.toml`) with the built-in ones: the shared nats-server keeps no leftovers.
#[tokio::test(flavor = "multi_thread")]
async fn an_env_leaves_no_stream_of_its_namespace_behind() {
    use futures::TryStreamExt;
    let env = TestEnv::new().await;
    let js = async_nats::jetstream::new(async_nats::connect(testkit::nats_url()).await.unwrap());
    let prefix = env.config.names.name("");
    let streams = || async {
        let mut names: Vec<String> = js
            .stream_names()
            .try_filter(|n| std::future::ready(n.starts_with(&prefix)))
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    };
    let before = streams().await;
    assert!(
        before.contains(&env.config.names.name("PROBES"))
            && before.contains(&env.config.names.name("DEPOSITS")),
        "{before:?}"
    );
    drop(env);
    assert_eq!(streams().await, Vec::<String>::new());
}
