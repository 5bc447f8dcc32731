//! A run's verification: what the outcomes say against what the plan says, PostgreSQL against
//! the outcomes, and `walletctl audit` over the whole database (every shard's, on a shard map).

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use wallet_runtime::Config;

use crate::plan::{Broken, Kind, Outcome, Plan};
use crate::track::Tracker;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// What was found; a sample of the breaches when it failed.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub passed: bool,
    pub checks: Vec<Check>,
    /// Commands without a terminal outcome.
    #[serde(default)]
    pub lost: u64,
    /// Commands with two different outcomes.
    #[serde(default)]
    pub duplicated: u64,
}

fn check(name: impl Into<String>, breaches: u64, sample: &[String], ok_detail: String) -> Check {
    Check {
        name: name.into(),
        ok: breaches == 0,
        detail: if breaches == 0 {
            ok_detail
        } else {
            format!("{breaches}, e.g. {}", sample.join("; "))
        },
    }
}

/// The balance each wallet of the run holds in PostgreSQL, compared with the outcomes' booking.
const RUN_WALLETS: &str = "
    SELECT owner, kind, provider, balance FROM accounts
    WHERE kind <> 'platform' AND owner LIKE $1 || '-%'";

pub async fn verify(
    config: &Config,
    plan: &Plan,
    tracker: &Tracker,
    sent: u64,
    envelopes: u64,
    audit: bool,
) -> anyhow::Result<Verification> {
    let mut checks = Vec::new();
    let missing = tracker.missing(sent);
    let sample: Vec<String> = missing.iter().take(10).cloned().collect();
    checks.push(check(
        "every command reached a terminal outcome",
        missing.len() as u64,
        &sample,
        format!("{sent} of {sent}"),
    ));
    checks.push(check(
        "no command reached two different outcomes",
        tracker.conflicting.0,
        &tracker.conflicting.1,
        format!(
            "{} repeated outcome(s), each the same as the first",
            tracker.repeats
        ),
    ));
    checks.push(check(
        "every outcome is the one its command must have",
        tracker.unexpected.0,
        &tracker.unexpected.1,
        "deposits completed, transfers as the providers answered, broken commands refused".into(),
    ));
    if plan.mix.has(Kind::Bonus) {
        let valid = (0..sent)
            .filter(|&i| plan.kind(i) == Kind::Bonus && plan.broken(i) == Broken::No)
            .count() as u64;
        let granted = tracker
            .counts
            .get(&(Kind::Bonus, Outcome::Granted, None))
            .copied()
            .unwrap_or_default();
        let want = valid.min(envelopes);
        checks.push(check(
            "the campaign granted exactly min(envelopes, grants)",
            u64::from(granted != want),
            &[format!(
                "{granted} granted, {want} expected ({envelopes} envelopes, {valid} grants)"
            )],
            format!("{granted} of {envelopes} envelopes"),
        ));
    }
    // With a shard map, the run's wallets are spread over every shard's database.
    let mut rows = Vec::new();
    for database in &wallet_ops::databases(config)? {
        let pg = wallet_ops::postgres(database).await?;
        rows.extend(pg.query(RUN_WALLETS, &[&plan.run]).await?);
    }
    let mut expected: HashMap<(String, String, String), Decimal> = tracker
        .balances
        .iter()
        .map(|((o, k, p), d)| ((o.clone(), (*k).to_owned(), (*p).to_owned()), *d))
        .collect();
    // A transfer in takes from a game wallet what it holds when its answer is applied, which no
    // outcome tells: with transfers in, game wallets are left to the audit (its check of every
    // game wallet against the transfers' rows).
    let skip_game = plan.mix.has(Kind::TransferIn);
    expected.retain(|(_, kind, _), _| !(skip_game && kind == "game"));
    let mut wrong = Vec::new();
    let mut compared = 0;
    for row in &rows {
        let key: (String, String, String) = (row.get(0), row.get(1), row.get(2));
        if skip_game && key.1 == "game" {
            continue;
        }
        compared += 1;
        let balance: Decimal = row.get(3);
        let want = expected.remove(&key).unwrap_or_default();
        if balance != want {
            wrong.push(format!(
                "{} {} {}: {balance}, expected {want}",
                key.0, key.1, key.2
            ));
        }
    }
    for ((owner, kind, provider), d) in expected {
        if !d.is_zero() {
            wrong.push(format!(
                "{owner} {kind} {provider}: no wallet, expected {d}"
            ));
        }
    }
    let sample: Vec<String> = wrong.iter().take(10).cloned().collect();
    checks.push(check(
        "every wallet of the run holds what its accepted commands put there",
        wrong.len() as u64,
        &sample,
        if skip_game {
            format!("{compared} wallets (game wallets: by the audit)")
        } else {
            format!("{compared} wallets")
        },
    ));
    if audit {
        let audit = wallet_ops::audit::audit(config).await?;
        let breached: Vec<String> = audit
            .checks
            .iter()
            .filter(|c| !c.breaches.is_empty())
            .map(|c| format!("{}: {}", c.name, c.breaches[0]))
            .collect();
        checks.push(check(
            "walletctl audit is clean",
            breached.len() as u64,
            &breached,
            format!(
                "{} checks over {}",
                audit.checks.len(),
                if config.shards_file.is_some() {
                    "every shard's database"
                } else {
                    "the whole database"
                }
            ),
        ));
    }
    Ok(Verification {
        passed: checks.iter().all(|c| c.ok),
        checks,
        lost: missing.len() as u64,
        duplicated: tracker.conflicting.0,
    })
}
