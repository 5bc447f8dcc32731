//! The monitoring pack (k8s/monitoring/) against the code: every metric its dashboard and alerts
//! query is one the code exports, and every alert has its runbook.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

/// Every `"wallet_…"` name in the sources of the runtime and the functions: what they export.
fn exported() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.extend(metric_names(&text.replace('"', " ")));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&root().join("shared/src"), &mut out);
    for f in std::fs::read_dir(root().join("functions")).unwrap() {
        walk(&f.unwrap().path().join("src"), &mut out);
    }
    out
}

/// The `wallet_…` metric names in `text`, a histogram's series by the histogram's name.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("wallet_") && w.len() > "wallet_".len())
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_owned()
        })
        .collect()
}

/// The PromQL expressions of the dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&read("k8s/monitoring/dashboard.json")).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        out.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned()),
        );
    }
    out
}

#[test]
fn every_metric_the_dashboard_and_alerts_query_is_exported() {
    let exported = exported();
    // The names the code defines include the ones the pack must show.
    for name in [
        "wallet_command_age_seconds",
        "wallet_outbox_backlog",
        "wallet_balance_cache_total",
        "wallet_build_info",
    ] {
        assert!(exported.contains(name), "{name} is not exported");
    }
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{} queries", queries.len());
    let rules: Value = serde_norway::from_str(&read("k8s/monitoring/prometheusrule.yaml")).unwrap();
    let alerts = rules["spec"]["groups"][0]["rules"].as_array().unwrap();
    let all = queries.iter().cloned().chain(
        alerts
            .iter()
            .map(|a| a["expr"].as_str().unwrap().to_owned()),
    );
    let mut queried = BTreeSet::new();
    for q in all {
        let names = metric_names(&q);
        let unknown: Vec<_> = names.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "`{q}` queries {unknown:?}, which nothing exports"
        );
        queried.extend(names);
    }
    // What the issue asked the dashboard to show is there.
    for name in [
        "wallet_commands_processed_total",
        "wallet_commands_rejected_total",
        "wallet_command_age_seconds",
        "wallet_consumer_pending",
        "wallet_batch_size",
        "wallet_transactions_total",
        "wallet_dead_letters_total",
        "wallet_build_info",
    ] {
        assert!(queried.contains(name), "nothing shows {name}");
    }
    // A query naming a metric nothing exports would be caught.
    assert!(!exported.contains("wallet_commands_lost_total"));
}

#[test]
fn every_alert_has_a_runbook_and_the_ones_operators_need_are_there() {
    let rules: Value = serde_norway::from_str(&read("k8s/monitoring/prometheusrule.yaml")).unwrap();
    let runbooks = read("docs/runbooks.md");
    let alerts = rules["spec"]["groups"][0]["rules"].as_array().unwrap();
    let names: BTreeSet<&str> = alerts
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "WalletAuditFailed",
            "WalletBalanceErrors",
            "WalletConsumerLagGrowing",
            "WalletDeadLetterRefused",
            "WalletDeadLetters",
            "WalletFunctionNotReady",
            "WalletOutboxStale",
            "WalletTransfersStuck",
            "WalletWithdrawalsStuck",
            "WalletTransientErrors",
        ])
    );
    for a in alerts {
        let name = a["alert"].as_str().unwrap();
        let url = a["annotations"]["runbook_url"].as_str().unwrap();
        assert_eq!(url, format!("docs/runbooks.md#{}", name.to_lowercase()));
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "docs/runbooks.md has no section for {name}"
        );
        assert!(
            a["annotations"]["summary"].is_string(),
            "{name} has no summary"
        );
    }
    // The readiness alert names every function's pods.
    let not_ready = alerts
        .iter()
        .find(|a| a["alert"] == "WalletFunctionNotReady")
        .unwrap();
    for function in wallet_ops::catalog::names() {
        assert!(
            not_ready["expr"].as_str().unwrap().contains(&function),
            "WalletFunctionNotReady misses {function}"
        );
    }
}
