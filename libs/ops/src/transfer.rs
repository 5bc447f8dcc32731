//! `walletctl transfer show ID`: one transfer and its history, from PostgreSQL.

use std::fmt::Write as _;

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use wallet_runtime::Config;

const TRANSFER: &str = "
    SELECT user_id, provider, currency, amount, status, provider_ref, reason, created_at,
           finished_at, checks, last_check_at, next_check_at, stuck_at
    FROM transfers WHERE id = $1";

/// The postings of the transfer's debit and of the ack that finished it (see `provider-ack`).
const POSTINGS: &str = "
    SELECT p.command, a.kind, a.provider, p.amount, p.created_at
    FROM postings p JOIN accounts a ON a.id = p.account_id
    WHERE p.command = ANY($1) ORDER BY p.id";

/// The transfer `id`, rendered for a terminal; an error when there is none.
pub async fn show(config: &Config, id: &str) -> anyhow::Result<String> {
    let pg = crate::postgres(config).await?;
    let Some(t) = pg.query_opt(TRANSFER, &[&id]).await? else {
        bail!("no transfer `{id}` (a rejected transfer moves nothing and is not recorded)");
    };
    let (user, provider, currency, amount, status): (String, String, String, Decimal, String) =
        (t.get(0), t.get(1), t.get(2), t.get(3), t.get(4));
    let (provider_ref, reason): (Option<String>, Option<String>) = (t.get(5), t.get(6));
    let (created, finished): (DateTime<Utc>, Option<DateTime<Utc>>) = (t.get(7), t.get(8));
    let checks: i32 = t.get(9);
    let [last_check, next_check, stuck]: [Option<DateTime<Utc>>; 3] =
        [t.get(10), t.get(11), t.get(12)];
    let money = |d: Decimal| match config.currencies.get(&currency) {
        Some(c) => c.format(d),
        None => d.to_string(),
    };
    let commands: Vec<String> = [
        format!("transfer-out:{id}"),
        format!("provider-ack:{provider}:{id}:accepted"),
        format!("provider-ack:{provider}:{id}:rejected"),
    ]
    .into();
    let postings = pg.query(POSTINGS, &[&commands]).await?;

    let mut history: Vec<(DateTime<Utc>, String)> = Vec::new();
    for command in &commands {
        let legs: Vec<_> = postings
            .iter()
            .filter(|p| p.get::<_, String>(0) == *command)
            .collect();
        let Some(first) = legs.first() else { continue };
        let what = if command.starts_with("transfer-out:") {
            "pending  "
        } else if command.ends_with(":accepted") {
            "completed"
        } else {
            "failed   "
        };
        let legs: Vec<String> = legs
            .iter()
            .map(|p| {
                let (kind, wallet_provider, amount): (String, String, Decimal) =
                    (p.get(1), p.get(2), p.get(3));
                let wallet = if wallet_provider.is_empty() {
                    kind
                } else {
                    format!("{kind}:{wallet_provider}")
                };
                format!(
                    "{wallet} {}{}",
                    if amount > Decimal::ZERO { "+" } else { "" },
                    money(amount)
                )
            })
            .collect();
        history.push((first.get(4), format!("{what}  {}", legs.join(", "))));
    }
    if let Some(at) = last_check {
        history.push((
            at,
            format!("status query #{checks} published (the last so far)"),
        ));
    }
    if let Some(at) = stuck {
        history.push((at, "stuck event published".to_owned()));
    }
    history.sort_by_key(|(at, _)| *at);

    let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut out = String::new();
    writeln!(out, "transfer  {id}")?;
    writeln!(out, "user      {user}")?;
    writeln!(out, "provider  {provider}")?;
    writeln!(out, "amount    {} {currency}", money(amount))?;
    let mut line = format!("status    {status}");
    if let Some(r) = &provider_ref {
        write!(line, " (provider_ref {r})")?;
    }
    if let Some(r) = &reason {
        write!(line, " (reason {r})")?;
    }
    writeln!(out, "{line}")?;
    writeln!(out, "created   {}", time(&created))?;
    if let Some(f) = finished {
        writeln!(out, "finished  {}", time(&f))?;
    } else if let Some(n) = next_check {
        writeln!(out, "next status query due {}", time(&n))?;
    }
    writeln!(out, "history")?;
    for (at, what) in history {
        writeln!(out, "  {}  {what}", time(&at))?;
    }
    Ok(out)
}
