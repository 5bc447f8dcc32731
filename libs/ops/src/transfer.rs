//! `walletctl transfer show ID`: one transfer, out or in, and its history, from PostgreSQL (with
//! a shard map, from the shard that holds it).

use std::fmt;

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use wallet_runtime::Config;

const TRANSFER: &str = "
    SELECT user_id, provider, currency, amount, status, provider_ref, reason, created_at,
           finished_at, checks, last_check_at, next_check_at, stuck_at, direction, returned, taken
    FROM transfers WHERE id = $1";

/// The postings of a transfer out's debit and of the ack that finished a transfer (see
/// `provider-ack`).
const POSTINGS: &str = "
    SELECT p.command, a.kind, a.provider, p.amount, p.created_at
    FROM postings p JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
    WHERE p.command = ANY($1) ORDER BY p.id";

/// The transfer `id`, from the database that holds it (with a shard map, its user's shard's);
/// an error when there is none.
pub async fn show(config: &Config, id: &str) -> anyhow::Result<TransferView> {
    let mut found = None;
    for database in crate::databases(config)? {
        let pg = crate::postgres(&database).await?;
        if let Some(t) = pg.query_opt(TRANSFER, &[&id]).await? {
            found = Some((pg, t));
            break;
        }
    }
    let Some((pg, t)) = found else {
        bail!("no transfer `{id}` (a rejected transfer moves nothing and is not recorded)");
    };
    let (user, provider, currency, amount, status): (
        String,
        String,
        String,
        Option<Decimal>,
        String,
    ) = (t.get(0), t.get(1), t.get(2), t.get(3), t.get(4));
    let (direction, returned, taken): (String, Option<Decimal>, Option<Decimal>) =
        (t.get(13), t.get(14), t.get(15));
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
    if direction == "in" {
        let what = amount.map_or_else(|| "everything".to_owned(), money);
        history.push((created, format!("pending: provider asked to return {what}")));
    }
    for command in &commands {
        let legs: Vec<_> = postings
            .iter()
            .filter(|p| p.get::<_, String>(0) == *command)
            .collect();
        let Some(first) = legs.first() else { continue };
        let what = if command.starts_with("transfer-out:") {
            "pending"
        } else if command.ends_with(":accepted") {
            "completed"
        } else {
            "failed"
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
        history.push((first.get(4), format!("{what}: {}", legs.join(", "))));
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

    Ok(TransferView {
        id: id.to_owned(),
        direction,
        user_id: user,
        provider,
        amount: amount.map(money),
        returned: returned.map(money),
        taken: taken.map(money),
        currency,
        status,
        provider_ref,
        reason,
        created_at: created,
        finished_at: finished,
        next_check_at: if finished.is_none() { next_check } else { None },
        history: history
            .into_iter()
            .map(|(at, what)| HistoryEntry { at, what })
            .collect(),
    })
}

/// A transfer, its state and its history.
#[derive(Debug, Serialize)]
pub struct TransferView {
    pub id: String,
    /// `out` (to the provider's game wallet) or `in` (back to `main`).
    pub direction: String,
    pub user_id: String,
    pub provider: String,
    /// What was sent, or asked back (`None`: everything).
    pub amount: Option<String>,
    /// A completed transfer in: what came back to `main`, what the game wallet gave up.
    pub returned: Option<String>,
    pub taken: Option<String>,
    pub currency: String,
    pub status: String,
    pub provider_ref: Option<String>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub what: String,
}

impl fmt::Display for TransferView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        writeln!(f, "transfer  {} ({})", self.id, self.direction)?;
        writeln!(f, "user      {}", self.user_id)?;
        writeln!(f, "provider  {}", self.provider)?;
        match &self.amount {
            Some(a) => writeln!(f, "amount    {a} {}", self.currency)?,
            None => writeln!(f, "amount    everything ({})", self.currency)?,
        }
        if let (Some(r), Some(t)) = (&self.returned, &self.taken) {
            writeln!(f, "returned  {r} to main, {t} from game")?;
        }
        write!(f, "status    {}", self.status)?;
        if let Some(r) = &self.provider_ref {
            write!(f, " (provider_ref {r})")?;
        }
        if let Some(r) = &self.reason {
            write!(f, " (reason {r})")?;
        }
        writeln!(f)?;
        writeln!(f, "created   {}", time(&self.created_at))?;
        if let Some(t) = &self.finished_at {
            writeln!(f, "finished  {}", time(t))?;
        } else if let Some(t) = &self.next_check_at {
            writeln!(f, "next status query due {}", time(t))?;
        }
        writeln!(f, "history")?;
        for h in &self.history {
            writeln!(f, "  {}  {}", time(&h.at), h.what)?;
        }
        Ok(())
    }
}
