//! `scaffold-example` against the real NATS, PostgreSQL and Redis.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use testkit::TestEnv;

fn command(id: &str, amount: &str) -> (String, String, Vec<u8>) {
    let body =
        json!({"scaffold_example_id": id, "user_id": "u-1", "amount": amount, "currency": "USD"});
    (
        "wallet.scaffold-example".into(),
        id.into(),
        serde_json::to_vec(&body).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_main_and_rejects_over_the_limit() {
    let env = TestEnv::new().await;
    let _f = env.spawn("scaffold-example", &[]);
    let mut events = env.events().await;
    env.run_commands(
        &mut events,
        "scaffold_example",
        vec![command("x-1", "10"), command("x-2", "1000.01")],
    )
    .await;
    let done = events
        .by_id("scaffold_example:x-1:completed", Duration::from_secs(30))
        .await;
    assert_eq!(done.body["balance"], "10.00");
    let over = events
        .by_id("scaffold_example:x-2:rejected", Duration::from_secs(30))
        .await;
    assert_eq!(over.body["reason"], "over_limit");
    assert_eq!(
        env.stored_balance("u-1", "main", "USD").await,
        rust_decimal::Decimal::from(10)
    );
    let audit = env.audit().await;
    assert!(audit.ok(), "{audit}");
}
