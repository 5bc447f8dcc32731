//! Hostile input, the fuzz run (issues 7 and 20): messages no client should send — random bytes,
//! truncated JSON, deeply nested JSON, huge numbers, wrong types, control characters, invalid
//! UTF-8, duplicate keys, payloads over 64 KiB, headers that lie — on every command subject, mixed
//! with valid deposits, while every function runs. Each hostile one must end as exactly one dead
//! letter or one rejection (or, over 72 KiB, be refused at publish time), every valid one
//! completes, no function crashes or grows past its memory bound, and no other balance moves.
//!
//! `HOSTILE_PER_SUBJECT` messages per command subject: 2,500 in `make test`, 10,000 in
//! `make fuzz`; `HOSTILE_SEED` replays a run. The counts are printed.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use testkit::{TestEnv, commands};

#[path = "hostile/generate.rs"]
mod generate;

use generate::*;

#[tokio::test(flavor = "multi_thread")]
async fn hostile_messages_end_as_dead_letters_or_rejections_and_move_nothing() {
    let count = per_subject() * TARGETS.len();
    let env = TestEnv::new().await;
    let mut procs: Vec<_> = ["deposit", "transfer-out", "provider-ack", "bonus-grant"]
        .into_iter()
        .map(|f| (f, env.spawn(f, &[])))
        .collect();
    for (_, p) in &procs {
        env.ready(p).await;
    }
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "deposit",
        vec![commands::deposit("d-rich", "u-rich", "100.00", "USD")],
    )
    .await;
    let pg = env.pg().await;
    // Every balance and every command's posting but the valid deposits' (and the platform's
    // sums, which name no command).
    let ledger = || async {
        pg.query_one(
            "SELECT coalesce(string_agg(id || ':' || balance || ':' || version, ',' ORDER BY id), ''),
                    (SELECT count(*) FROM postings
                     WHERE command IS NOT NULL AND NOT starts_with(command, 'deposit:v-'))
             FROM accounts WHERE owner NOT IN ('', 'u-valid')",
            &[],
        )
        .await
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .unwrap()
    };
    let before = ledger().await;

    let seed: u64 = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("hostile input: seed {seed} (HOSTILE_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut huge_left = 300;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut messages = Vec::with_capacity(count);
    let mut lying = Vec::new();
    // msg id → what it was, for a failure's message.
    let mut described: HashMap<String, String> = HashMap::new();
    // msg id → the rejection event's msg id, when the command's id is valid.
    let mut rejection_of: HashMap<String, Option<String>> = HashMap::new();
    let mut valid = 0;
    for i in 0..count {
        let t = &TARGETS[i % TARGETS.len()];
        let id = format!("h-{i}");
        let (mut kind, payload) = hostile(&mut rng, t, &id, &mut huge_left);
        rejection_of.insert(id.clone(), t.entity.map(|e| format!("{e}:{id}:rejected")));
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(160)]).into_owned();
        described.insert(id.clone(), format!("{kind} on {}: {shown}", t.subject));
        if rng.random_range(0..25) == 0 {
            kind = "headers that lie";
            lying.push((t.subject.to_owned(), id, payload));
        } else {
            messages.push((t.subject.to_owned(), id, payload));
        }
        *kinds.entry(kind).or_default() += 1;
        if i % VALID_EVERY == 0 {
            let v = format!("v-{i}");
            messages.push(commands::deposit(&v, "u-valid", "0.01", "USD"));
            valid += 1;
        }
    }
    env.publish_many(messages).await;
    // Headers a command may not dictate: an expectation the DLQ would fail, forged dead-letter
    // headers (the outcome is still found by the runtime's own).
    for (subject, id, payload) in lying {
        let stream = match subject.as_str() {
            "wallet.deposit" => "DEPOSITS",
            "wallet.transfer-out" => "TRANSFERS",
            "bonus.grant" => "BONUS",
            _ => "PROVIDER_ACKS",
        };
        let expected = env.config.names.name(stream);
        let headers = [
            ("Nats-Msg-Id", id.as_str()),
            ("Nats-Expected-Stream", expected.as_str()),
            ("Wallet-Dlq-Msg-Id", "forged"),
            ("Wallet-Dlq-Subject", "wallet.deposit"),
        ];
        env.publish_with(&subject, &headers, payload).await;
    }
    // Bodies of 1 MB: no command stream stores them.
    let mut refused_at_publish = 0;
    for t in &TARGETS {
        let mut cmd = base(t, "h-huge");
        cmd.insert("padding".into(), json!("x".repeat(1_000_000)));
        let payload = serde_json::to_vec(&cmd).unwrap();
        let stored = match env.js.publish(env.subject(t.subject), payload.into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!stored, "a 1 MB command was stored on {}", t.subject);
        refused_at_publish += 1;
    }

    // Wait until the DLQ and the events stream hold an outcome's worth of messages for each, and
    // every function is drained; then read both streams whole (direct gets: no consumer that
    // could fall behind).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // The events stream also holds d-rich's and the valid deposits'.
        let stored = env.stored("DLQ").await + env.stored("WALLET_EVENTS").await - 1 - valid;
        if stored >= count as u64 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let dead = stored_messages(&env, "DLQ").await;
            let events = stored_messages(&env, "WALLET_EVENTS").await;
            let outcomes = ended(&dead, &events);
            let missing: Vec<&String> = described
                .iter()
                .filter(|(id, _)| !outcomes.contains_key(*id))
                .map(|(_, what)| what)
                .take(10)
                .collect();
            panic!(
                "after {WAIT:?}, {stored} of {count} hostile messages have an outcome; without: {missing:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for f in ["deposit", "transfer-out", "provider-ack", "bonus-grant"] {
        env.drained(f).await;
    }
    let dead = stored_messages(&env, "DLQ").await;
    let events = stored_messages(&env, "WALLET_EVENTS").await;

    let outcomes = ended(&dead, &events);
    let repeated: Vec<_> = outcomes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "more than one outcome: {repeated:?}");
    let ours = |e: &&Stored| e.msg_id.contains(":h-");
    let rejected = events
        .iter()
        .filter(ours)
        .filter(|e| e.msg_id.ends_with(":rejected"))
        .count();
    let accepted: Vec<_> = events
        .iter()
        .filter(ours)
        .filter(|e| !e.msg_id.ends_with(":rejected"))
        .map(|e| e.msg_id.clone())
        .collect();
    assert!(
        accepted.is_empty(),
        "hostile commands were applied: {accepted:?}"
    );
    for (id, rejection) in &rejection_of {
        if rejection.is_none() {
            assert!(
                !events.iter().any(|e| e.msg_id.contains(&format!(":{id}:"))),
                "an ack got an event: {id}"
            );
        }
    }
    let dead_letters = dead.len();
    assert_eq!(dead_letters + rejected, count, "{kinds:?}");
    let completed = events
        .iter()
        .filter(|e| e.msg_id.starts_with("deposit:v-") && e.msg_id.ends_with(":completed"))
        .count();
    assert_eq!(completed as u64, valid, "every valid deposit completes");
    assert_eq!(
        env.stored_balance("u-valid", "main", "USD").await,
        rust_decimal::Decimal::new(i64::try_from(valid).unwrap(), 2)
    );

    let mut peaks = Vec::new();
    for (name, p) in &mut procs {
        let status = p.child.try_wait().unwrap();
        assert!(
            status.is_none(),
            "{name} crashed on hostile input: {status:?}"
        );
        env.ready(p).await;
        let peak = wallet_load::report::peak_rss_kib(p.child.id()).unwrap();
        assert!(peak < MEMORY_BOUND_KIB, "{name} peaked at {peak} KiB");
        peaks.push(format!("{name} {} MiB", peak / 1024));
    }
    assert_eq!(ledger().await, before, "a balance moved");
    assert!(env.audit().await.ok());
    eprintln!(
        "hostile input: {count} messages over {} subjects {kinds:?}, with {valid} valid deposits: \
         {dead_letters} dead-lettered, {rejected} rejected, {refused_at_publish} of 1 MB refused at \
         publish, 0 applied, every valid one completed, no crash, peak RSS {}, audit clean",
        TARGETS.len(),
        peaks.join(", ")
    );
}

/// A stored message: its `Nats-Msg-Id` and, for a dead letter, the original's.
struct Stored {
    msg_id: String,
    original: Option<String>,
}

/// Every message of one of the test's streams, read by sequence.
async fn stored_messages(env: &TestEnv, stream: &str) -> Vec<Stored> {
    use futures::StreamExt;
    let mut stream = env
        .js
        .get_stream(env.config.names.name(stream))
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let stream = &stream;
    futures::stream::iter(state.first_sequence..=state.last_sequence)
        .map(|seq| async move {
            let m = stream.get_raw_message(seq).await.ok()?;
            let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
            Some(Stored {
                msg_id: header("Nats-Msg-Id").unwrap_or_default(),
                original: header("Wallet-Dlq-Msg-Id"),
            })
        })
        .buffer_unordered(64)
        .filter_map(|m| async move { m })
        .collect()
        .await
}

/// How many outcomes each hostile message id has: dead letters by their original id,
/// rejections by the command id in their event's id.
fn ended(dead: &[Stored], events: &[Stored]) -> HashMap<String, usize> {
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for id in dead.iter().filter_map(|d| d.original.clone()) {
        *outcomes.entry(id).or_default() += 1;
    }
    for e in events {
        if let Some((_, id)) = e
            .msg_id
            .strip_suffix(":rejected")
            .and_then(|m| m.split_once(':'))
        {
            *outcomes.entry(id.to_owned()).or_default() += 1;
        }
    }
    outcomes
}
