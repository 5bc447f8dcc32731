//! What the bonus tests share: campaigns, outcomes and what PostgreSQL granted.

#![allow(dead_code)] // Each test binary uses some of them.

use std::time::Duration;

use rust_decimal::Decimal;
use testkit::{Proc, Reader, Received, TestEnv, eventually};
use wallet_ops::campaign::CreateArgs;

pub const T: Duration = Duration::from_secs(60);

pub fn args(id: &str, budget: &str, amount: &str, per_user: i32) -> CreateArgs {
    CreateArgs {
        id: id.into(),
        currency: "USD".into(),
        budget: budget.into(),
        amount: Some(amount.into()),
        amount_min: None,
        amount_max: None,
        per_user,
        starts: None,
        ends: None,
    }
}

pub async fn create(env: &TestEnv, a: &CreateArgs) -> String {
    wallet_ops::campaign::create(&env.config, a).await.unwrap()
}

pub fn outcomes<'a>(events: &'a Reader, status: &str) -> Vec<&'a Received> {
    events
        .seen
        .iter()
        .filter(|r| r.body["entity"] == "bonus" && r.body["status"] == status)
        .collect()
}

pub async fn granted_total(env: &TestEnv, campaign: &str) -> (Decimal, i64) {
    let row = env
        .pg()
        .await
        .query_one(
            "SELECT granted, grants FROM campaigns WHERE id = $1",
            &[&campaign],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The number of PostgreSQL transactions `bonus-grant` processes committed for batches.
pub async fn transactions(procs: &[&Proc]) -> f64 {
    let mut total = 0.0;
    for p in procs {
        total += p.metric("wallet_transactions_total").await;
    }
    total
}

pub async fn audit_clean(env: &TestEnv) {
    // Reservations settle within a reconciler pass or two.
    eventually(T, "a clean audit", || async {
        let report = env.audit().await;
        report.ok().then_some(())
    })
    .await;
}
