//! The runtime under input and conditions that must never strand a command (issue 20), through
//! `deposit`: dead letters the DLQ refuses or would refuse, forged replays, fetches bounded by
//! bytes, and a message on its last allowed delivery.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::stream;
use serde_json::{Value, json};
use testkit::{TestEnv, eventually};

const T: Duration = Duration::from_secs(60);

fn deposit(id: &str, user: &str, amount: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({ "deposit_id": id, "user_id": user, "amount": amount, "currency": "USD" }),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_carries_no_header_the_dlq_would_act_on() {
    let env = TestEnv::new().await;
    let _deposit = env.spawn("deposit", &[]);
    // Passes the command stream's check, and would fail the DLQ's (another stream's name).
    let stream = env.config.names.name("DEPOSITS");
    env.publish_with(
        "wallet.deposit",
        &[
            ("Nats-Msg-Id", "h-1"),
            ("Nats-Expected-Stream", &stream),
            ("Wallet-Dlq-Subject", "elsewhere"),
            ("traceparent", "00-1-2-01"),
        ],
        b"not json".to_vec(),
    )
    .await;
    let mut dlq = env.dead_letters().await;
    let letter = &dlq.count(1, T).await[0];
    assert_eq!(letter.header("Wallet-Dlq-Msg-Id"), "h-1");
    assert_eq!(letter.header("Wallet-Dlq-Reason"), "malformed");
    assert_eq!(
        letter.header("Wallet-Dlq-Subject"),
        env.subject("wallet.deposit")
    );
    assert_eq!(letter.header("traceparent"), "00-1-2-01");
    assert!(letter.headers.get("Nats-Expected-Stream").is_none());
    // Terminated once its letter is stored, a moment after.
    env.emptied("DEPOSITS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_the_dlq_refuses_keeps_its_command_until_there_is_room() {
    let env = TestEnv::new().await;
    let mut dlq_stream = env
        .js
        .get_stream(env.config.names.name("DLQ"))
        .await
        .unwrap();
    let config = dlq_stream.info().await.unwrap().config.clone();
    // A full DLQ: one letter already, room for one.
    env.js
        .update_stream(stream::Config {
            max_messages: 1,
            ..config.clone()
        })
        .await
        .unwrap();
    env.publish_with("dlq.other", &[("Nats-Msg-Id", "filler")], b"{}".to_vec())
        .await;
    // Two deliveries allowed: a command that ran out of them while the DLQ refused its letter
    // would be lost if JetStream counted them.
    let streams = env.streams_file_dead_letter_after(2);
    let deposit_proc = env.spawn("deposit", &[("STREAMS_FILE", &streams)]);
    env.publish("wallet.deposit", "full-1", b"[]".to_vec())
        .await;
    // Refused on its first and second delivery, and again on its third, past its last.
    eventually(T, "three refused dead letters", || async {
        (deposit_proc
            .metric("wallet_dead_letters_refused_total")
            .await
            >= 3.0)
            .then_some(())
    })
    .await;
    assert_eq!(env.stored("DEPOSITS").await, 1, "the command is kept");

    env.js
        .update_stream(stream::Config {
            max_messages: -1,
            ..config
        })
        .await
        .unwrap();
    let mut dlq = env.dead_letters().await;
    let letters = dlq.count(2, T).await;
    let letter = letters.iter().find(|l| l.msg_id != "filler").unwrap();
    assert_eq!(letter.header("Wallet-Dlq-Msg-Id"), "full-1");
    // Past its last delivery it is not decided again: dead-lettered as such.
    assert_eq!(letter.header("Wallet-Dlq-Reason"), "max_deliver");
    assert!(
        letter
            .header("Wallet-Dlq-Deliveries")
            .parse::<i64>()
            .unwrap()
            > 3
    );
    env.emptied("DEPOSITS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_publishes_only_to_the_functions_own_subject() {
    let env = TestEnv::new().await;
    // A letter whose headers lie about where its command came from.
    env.publish_with(
        "dlq.deposit",
        &[
            ("Nats-Msg-Id", "dlq:deposit:1"),
            ("Wallet-Dlq-Function", "deposit"),
            ("Wallet-Dlq-Reason", "malformed"),
            ("Wallet-Dlq-Subject", &env.subject("wallet.transfer-out")),
            ("Wallet-Dlq-Msg-Id", "forged"),
        ],
        br#"{"transfer_id":"x-1"}"#.to_vec(),
    )
    .await;
    let done =
        wallet_ops::dlq::replay(&env.config, &testkit::topology(), "deposit", Some("forged"))
            .await
            .unwrap();
    assert_eq!((done.replayed, done.refused), (0, 1));
    assert_eq!(env.stored("TRANSFERS").await, 0);
    assert_eq!(
        env.stored("DLQ").await,
        1,
        "the letter stays for an operator"
    );

    let out = std::process::Command::new(testkit::binary("walletctl"))
        .args(["dlq", "replay", "--function", "deposit"])
        .envs(env.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not one deposit reads"));

    // The letter left, as a script reads it.
    let out = std::process::Command::new(testkit::binary("walletctl"))
        .args(["dlq", "list", "--function", "deposit", "--json"])
        .envs(env.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let letters: Value = serde_json::from_slice(&out.stdout).unwrap();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["function"], "deposit");
    assert_eq!(
        letters[0]["headers"]["Wallet-Dlq-Function"], "deposit",
        "{letters:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_takes_at_most_batch_max_bytes() {
    let env = TestEnv::new().await;
    // 150 commands of about 60 KiB each (9 MiB), all malformed (no id): fetched at most
    // 1 MiB at a time, that is 17 of them.
    let pad = "x".repeat(60 * 1024);
    for i in 0..150 {
        let payload = serde_json::to_vec(&json!({ "pad": pad })).unwrap();
        env.publish("wallet.deposit", &format!("big-{i}"), payload)
            .await;
    }
    let deposit_proc = env.spawn(
        "deposit",
        &[("BATCH_MAX_BYTES", "1048576"), ("BATCHES_IN_FLIGHT", "1")],
    );
    let mut dlq = env.dead_letters().await;
    dlq.count(150, T).await;
    let metrics = deposit_proc.metrics().await;
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    let batches = value("wallet_batch_size_count");
    assert_eq!(value("wallet_batch_size_sum"), 150.0);
    assert_eq!(
        value("wallet_batch_size_bucket{function=\"deposit\",le=\"20\"}"),
        batches,
        "{metrics}"
    );

    // A command larger than a command stream stores is refused at publish time.
    let huge =
        serde_json::to_vec(&json!({ "deposit_id": "huge", "pad": "x".repeat(80 * 1024) })).unwrap();
    let refused = env
        .js
        .publish(env.subject("wallet.deposit"), huge.into())
        .await
        .unwrap()
        .await;
    assert!(refused.is_err());

    // A byte bound no fetch could take the stream's largest message with: one line, exit 64.
    let out = std::process::Command::new(testkit::binary("deposit"))
        .envs(env.env())
        .env("BATCH_MAX_BYTES", "70000")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BATCH_MAX_BYTES"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_past_its_last_delivery_is_dead_lettered_without_being_tried() {
    let env = TestEnv::new().await;
    let streams = env.streams_file_dead_letter_after(1);
    // Delivered once to nobody: the test takes it and lets its ack wait lapse, as a process
    // that died holding it would.
    env.publish("wallet.deposit", "late-1", deposit("late-1", "u-1", "1"))
        .await;
    let consumer: async_nats::jetstream::consumer::PullConsumer = env
        .js
        .get_stream(env.config.names.name("DEPOSITS"))
        .await
        .unwrap()
        .get_consumer(&env.config.names.name("deposit"))
        .await
        .unwrap();
    let mut held = consumer.fetch().max_messages(1).messages().await.unwrap();
    use futures::StreamExt;
    let first = held.next().await.unwrap().unwrap();
    first
        .ack_with(async_nats::jetstream::AckKind::Nak(None))
        .await
        .unwrap();
    let _deposit = env.spawn("deposit", &[("STREAMS_FILE", &streams)]);
    let mut dlq = env.dead_letters().await;
    let letter = &dlq.count(1, T).await[0];
    assert_eq!(letter.header("Wallet-Dlq-Reason"), "max_deliver");
    assert_eq!(letter.header("Wallet-Dlq-Deliveries"), "2");
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::ZERO
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_that_would_take_a_balance_past_28_digits_is_rejected() {
    // 13 digits after the point: a wallet holds less than 10^15.
    let env = TestEnv::with_env(&[("WALLET_CURRENCIES", "USD:2,XTS:13")]).await;
    let _deposit = env.spawn("deposit", &[]);
    let mut events = env.events().await;
    let xts = |id: &str, amount: &str| {
        serde_json::to_vec(
            &json!({ "deposit_id": id, "user_id": "u-1", "amount": amount, "currency": "XTS" }),
        )
        .unwrap()
    };
    let most = "999999999999999.9999999999999";
    env.publish("wallet.deposit", "x-1", xts("x-1", most)).await;
    let e = events.by_id("deposit:x-1:completed", T).await;
    assert_eq!(e.body["balance"], most);
    // Eight of them would pass 2^96 units of 10^-13, where rust_decimal rounds.
    for i in 2..=8 {
        let id = format!("x-{i}");
        env.publish("wallet.deposit", &id, xts(&id, most)).await;
        let e = events.by_id(&format!("deposit:{id}:rejected"), T).await;
        assert_eq!(e.body["reason"], "balance_limit");
        assert_eq!(e.body["amount"], most);
    }
    assert_eq!(
        env.stored_balance("u-1", "main", "XTS").await,
        most.parse::<rust_decimal::Decimal>().unwrap()
    );
    assert!(env.audit().await.ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_a_function_whose_log_reader_is_gone() {
    let env = TestEnv::new().await;
    // bonus-grant too: its reconciler logs from a task of its own.
    for function in ["deposit", "bonus-grant"] {
        let http = testkit::free_port();
        let mut child = tokio::process::Command::new(testkit::binary(function))
            .envs(env.env())
            .env("RUST_LOG", "debug")
            .env("HTTP_ADDR", format!("127.0.0.1:{http}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
        eventually(T, "the function ready", || async {
            testkit::http_get(http, "/readyz")
                .await
                .filter(|(s, _)| *s == 200)
        })
        .await;
        // As `make run`'s prefixers after Ctrl-C: nobody reads the logs any more.
        drop(child.stdout.take());
        drop(child.stderr.take());
        env.publish("wallet.deposit", "late", deposit("late", "u-1", "1"))
            .await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{function} still running 20 s after SIGTERM"))
            .unwrap();
        assert_eq!(status.code(), Some(0), "{function}");
    }
}
