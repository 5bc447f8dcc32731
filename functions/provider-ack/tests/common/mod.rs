//! What the provider-ack tests share: funded users, and the transfers' outcomes as events say.

#![allow(dead_code)] // Each test binary uses some of them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use testkit::{Proc, Reader, Received, TestEnv};

pub const T: Duration = Duration::from_secs(60);

/// An env with `deposit` and `transfer-out` running, `users` funded with `funds` USD each.
pub async fn funded(
    extra: &[(&str, &str)],
    users: usize,
    funds: &str,
) -> (TestEnv, Reader, Vec<Proc>) {
    TestEnv::funded(&["transfer-out"], extra, users, funds).await
}

pub fn pending_ids(events: &Reader) -> HashSet<String> {
    events
        .seen
        .iter()
        .filter(|r| r.msg_id.ends_with(":pending"))
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The final event (`completed` or `failed`) of every transfer, checking there is one per id.
pub fn finals(events: &Reader) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for r in &events.seen {
        let status = r.body["status"].as_str().unwrap_or_default();
        if r.body["entity"] == "transfer" && (status == "completed" || status == "failed") {
            let previous = out.insert(r.body["id"].as_str().unwrap().to_owned(), status.to_owned());
            assert!(
                previous.is_none() || previous.as_deref() == Some(status),
                "two different final events for {}",
                r.body["id"]
            );
        }
    }
    out
}

/// Distinct transfers with a final event.
pub fn final_count(seen: &[Received]) -> usize {
    seen.iter()
        .filter(|r| {
            r.msg_id.starts_with("transfer:")
                && (r.msg_id.ends_with(":completed") || r.msg_id.ends_with(":failed"))
        })
        .map(|r| r.msg_id.as_str())
        .collect::<HashSet<_>>()
        .len()
}

pub async fn dlq_reasons(env: &TestEnv, n: usize) -> Vec<(String, String)> {
    let mut dlq = env.dead_letters().await;
    dlq.count(n, T).await;
    dlq.seen
        .iter()
        .map(|r| (r.header("Wallet-Dlq-Msg-Id"), r.header("Wallet-Dlq-Reason")))
        .collect()
}
