//! NATS users with least privilege (`walletctl/src/nats_users.rs`) on a private server: every
//! function, an adapter and a platform client do their whole job as their own user, and a
//! function or adapter publishing outside its rights is refused.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use testkit::commands::{ack, deposit, grant, transfer, transfer_in};
use testkit::{PrivateNats, TestEnv};
use wallet_runtime::names::Names;
use wallet_runtime::partition;
use wallet_runtime::streams::Topology;

const T: Duration = Duration::from_secs(60);

fn password(user: &str) -> String {
    format!("pw-{user}")
}

/// A JetStream context as `user`, whose publishes give up after `timeout` without an ack.
async fn as_user(
    url: &str,
    user: &str,
    timeout: Duration,
) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .connect(url)
        .await
        .unwrap();
    let mut js = jetstream::new(client.clone());
    js.set_timeout(timeout);
    (client, js)
}

async fn publish(js: &jetstream::Context, subject: String, msg_id: &str, payload: Vec<u8>) -> bool {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", msg_id);
    match js.publish_with_headers(subject, h, payload.into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_works_as_its_own_user_and_is_refused_the_rest() {
    let ns = testkit::namespace();
    let names = Names::new(&ns).unwrap();
    let specs = wallet_ops::catalog::built_in();
    let users = walletctl::nats_users::users(
        &specs,
        &Topology::load(None).unwrap(),
        None,
        &["alpha".into(), "beta".into()],
        &names,
    );
    let nats = PrivateNats::with_config(|_| {
        walletctl::nats_users::conf(&users, |u| format!("{:?}", password(&u.name)))
    });
    let url = nats.url();
    let operator = password("walletctl");
    let env = TestEnv::in_namespace(
        ns.clone(),
        &[
            ("NATS_URL", &url),
            ("NATS_USER", "walletctl"),
            ("NATS_PASSWORD", &operator),
        ],
    )
    .await;
    let mut procs = Vec::new();
    for f in [
        "deposit",
        "transfer-out",
        "provider-ack",
        "bonus-grant",
        "balance",
    ] {
        let pw = password(f);
        procs.push(env.spawn(f, &[("NATS_USER", f), ("NATS_PASSWORD", &pw)]));
    }
    for p in &procs {
        env.ready(p).await;
    }
    wallet_ops::campaign::create(
        &env.config,
        &wallet_ops::campaign::CreateArgs {
            id: "c-1".into(),
            currency: "USD".into(),
            budget: "10".into(),
            amount: Some("5".into()),
            amount_min: None,
            amount_max: None,
            per_user: 1,
            starts: None,
            ends: None,
        },
    )
    .await
    .unwrap();

    // The platform's client sends commands and asks balances; the adapter answers.
    let (platform, platform_js) = as_user(&url, "platform", Duration::from_secs(10)).await;
    let mut events = env.events().await;
    let send = |(subject, id, payload): (String, String, Vec<u8>)| {
        let js = platform_js.clone();
        let subject = names.subject(&subject);
        async move {
            assert!(
                publish(&js, subject, &id, payload).await,
                "platform refused {id}"
            )
        }
    };
    send(deposit("d-1", "u-1", "50", "USD")).await;
    events.by_id("deposit:d-1:completed", T).await;
    // On its user's partition too, and every other command: stored (their functions are not
    // running here; the streams' counts below say they were accepted).
    let (subject, id, payload) = deposit("d-2", "u-7", "1", "USD");
    send((partition::subject(&subject, "u-7"), id, payload)).await;
    events.by_id("deposit:d-2:completed", T).await;
    let withdraw = json!({"withdraw_id": "w-1", "user_id": "u-1", "psp": "acme",
                          "amount": "1", "currency": "USD"});
    let (transfer_in_subject, id, payload) = transfer_in("ti-1", "u-1", "alpha", None, "USD");
    for (subject, id, payload) in [
        (
            "wallet.withdraw".to_owned(),
            "w-1".to_owned(),
            serde_json::to_vec(&withdraw).unwrap(),
        ),
        (transfer_in_subject, id, payload),
    ] {
        send((
            partition::subject(&subject, "u-1"),
            id.clone(),
            payload.clone(),
        ))
        .await;
        send((subject, format!("{id}-bare"), payload)).await;
    }
    send(transfer("t-1", "u-1", "alpha", "20", "USD")).await;
    events.by_id("transfer:t-1:pending", T).await;
    let (_, alpha_js) = as_user(&url, "provider-alpha", Duration::from_secs(10)).await;
    let (subject, id, payload) = ack("alpha", "t-1", "accepted");
    assert!(publish(&alpha_js, names.subject(&subject), &id, payload).await);
    events.by_id("transfer:t-1:completed", T).await;
    send(grant("g-1", "c-1", "u-1")).await;
    events.by_id("bonus:g-1:granted", T).await;
    let reply = platform
        .request(
            names.subject("wallet.balance.get"),
            serde_json::to_vec(&json!({"user_id": "u-1"}))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let balance: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        balance["wallets"][0],
        json!({"kind": "main", "currency": "USD", "balance": "30.00"})
    );

    // Outside their rights: minting money, forging acks, writing another's dead letters.
    let short = Duration::from_secs(2);
    let (_, deposit_js) = as_user(&url, "deposit", short).await;
    let (_, alpha_js) = as_user(&url, "provider-alpha", short).await;
    let (_, platform_js) = as_user(&url, "platform", short).await;
    let refused = [
        (&deposit_js, deposit("d-mint", "u-1", "1000", "USD")),
        (&deposit_js, ack("alpha", "t-1", "rejected")),
        (&alpha_js, ack("beta", "t-1", "accepted")),
        (&alpha_js, deposit("d-alpha", "u-1", "1000", "USD")),
        (&platform_js, ack("alpha", "t-1", "rejected")),
        (
            &platform_js,
            ("dlq.deposit".into(), "forged".into(), b"{}".to_vec()),
        ),
    ];
    for (js, (subject, id, payload)) in refused {
        assert!(
            !publish(js, names.subject(&subject), &id, payload).await,
            "{id} on {subject} was stored"
        );
    }
    for stream in ["DEPOSITS", "PROVIDER_ACKS"] {
        assert_eq!(env.stored(stream).await, 0, "{stream}");
    }
    for stream in ["WITHDRAW", "TRANSFER_IN"] {
        assert_eq!(env.stored(stream).await, 2, "{stream}");
    }
    assert_eq!(env.stored("DLQ").await, 0);
    assert!(env.audit().await.ok());
}
