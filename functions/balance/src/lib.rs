//! The balance query (CONTRACT §7).
//!
//! Read-your-writes: a function writes a wallet's new balance to the cache before it publishes
//! the event that reports it, and cache writes never replace a newer version; so whoever has
//! received an event and then asks here sees that effect, from the cache or, on a miss, from
//! PostgreSQL.

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::Serialize;
use wallet_runtime::interface::{Balance as BalanceString, CurrencyCode, Id, Interface, Provider};
use wallet_runtime::metrics as runtime_metrics;
use wallet_runtime::partition::{Partition, Routing};
use wallet_runtime::runtime::Responder;
use wallet_runtime::wallet::{Kind, WalletSnapshot, field};
use wallet_runtime::{Context, StepError, ids};

#[derive(Debug, Clone, Copy, Default)]
pub struct Balance;

/// `wallet.balance.get` (CONTRACT §7).
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `respond` reads the payload.
pub struct BalanceRequest {
    user_id: Id,
}

/// The answer to a balance request: the user's wallets, or an error.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum BalanceReply<'a> {
    Wallets {
        #[schemars(with = "Id")]
        user_id: &'a str,
        /// Every wallet of the user that has ever had a posting.
        wallets: Vec<Wallet>,
    },
    Error {
        error: ReplyError,
    },
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ReplyError {
    pub code: ErrorCode,
    /// For a person; `code` is for programs.
    pub message: &'static str,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object.
    InvalidRequest,
    /// `user_id` missing or not an id.
    InvalidUserId,
    /// PostgreSQL cannot answer now; retry.
    Unavailable,
    /// Asked on a partition's subject (`wallet.balance.get.<p>`) that is not the user's.
    WrongPartition,
}

#[derive(Debug, Serialize, PartialEq, Eq, JsonSchema)]
pub struct Wallet {
    /// `main`, `bonus`, `game`, `in_transit` or `held`.
    #[schemars(regex(pattern = "^(main|bonus|game|in_transit|held)$"))]
    pub kind: String,
    /// For `game` and `in_transit` the game provider, for `held` the payment provider; absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Provider>")]
    pub provider: Option<String>,
    #[schemars(with = "CurrencyCode")]
    pub currency: String,
    #[schemars(with = "BalanceString")]
    pub balance: String,
}

const WALLETS: &str = "
    SELECT kind, provider, currency, balance, version FROM accounts
    WHERE partition = $2 AND owner = $1 AND kind <> 'platform' AND version > 0";

impl Responder for Balance {
    const NAME: &'static str = "balance";
    const SUBJECT: &'static str = "wallet.balance.get";

    fn interface() -> Interface {
        Interface::new(Self::NAME).request_reply::<BalanceRequest, BalanceReply>(Self::SUBJECT)
    }

    async fn respond<'a>(
        &'a self,
        ctx: &'a Context,
        subject: &'a str,
        payload: &'a [u8],
    ) -> Vec<u8> {
        let request: Result<serde_json::Map<String, serde_json::Value>, _> =
            serde_json::from_slice(payload);
        let reply = match request {
            Err(_) => error(
                ErrorCode::InvalidRequest,
                "the request must be a JSON object {\"user_id\": …}",
            ),
            Ok(ref r) => match ids::from_value(r.get("user_id")) {
                None => error(
                    ErrorCode::InvalidUserId,
                    "user_id must be 1 to 128 characters from A-Z a-z 0-9 _ . : -",
                ),
                // On a shard, another shard's user is not in this database: an answer would
                // say they have no wallets.
                Some(user_id) if !Routing::of_subject(Self::SUBJECT).admits(subject, user_id) => {
                    error(
                        ErrorCode::WrongPartition,
                        "user_id is not in the partition the subject names",
                    )
                }
                Some(user_id) => match wallets(ctx, user_id).await {
                    Ok(wallets) => BalanceReply::Wallets { user_id, wallets },
                    Err(e) => {
                        tracing::warn!(error = %e, "balance unavailable");
                        error(
                            ErrorCode::Unavailable,
                            "balances are unavailable right now; retry",
                        )
                    }
                },
            },
        };
        serde_json::to_vec(&reply).unwrap_or_default()
    }
}

/// Balance errors by code, and cache hits and misses: what the runtime's request metrics cannot
/// tell.
const ERRORS: &str = "wallet_balance_errors_total";
const CACHE: &str = "wallet_balance_cache_total";

/// Registers this function's metrics' help texts.
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        runtime_metrics::describe_counter(
            ERRORS,
            "Balance requests answered with an error, by code",
        );
        runtime_metrics::describe_counter(
            CACHE,
            "Balance reads by where they were answered: result=hit (Redis) or miss (PostgreSQL)",
        );
    });
}

fn error(code: ErrorCode, message: &'static str) -> BalanceReply<'static> {
    describe();
    let label = match code {
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::InvalidUserId => "invalid_user_id",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::WrongPartition => "wrong_partition",
    };
    metrics::counter!(ERRORS, "code" => label).increment(1);
    BalanceReply::Error {
        error: ReplyError { code, message },
    }
}

/// The user's wallets, from the cache when it holds them all, else from PostgreSQL.
pub async fn wallets(ctx: &Context, user: &str) -> Result<Vec<Wallet>, StepError> {
    // A cache that cannot answer is a miss: PostgreSQL is the source of truth.
    let cached = ctx.cache.read(user).await.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cache unavailable");
        None
    });
    describe();
    let result = if cached.is_some() { "hit" } else { "miss" };
    metrics::counter!(CACHE, "result" => result).increment(1);
    let mut wallets: Vec<Wallet> = match cached {
        Some(fields) => fields
            .into_iter()
            .filter_map(|(f, balance)| parse_field(&f, balance))
            .collect(),
        None => {
            // Begun before the read, so that a hash lost meanwhile is not marked complete.
            let ticket = ctx
                .cache
                .begin_fill(user)
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "cache fill not begun"))
                .ok();
            let rows = ctx
                .pool
                .get()
                .await?
                .query(WALLETS, &[&user, &Partition::of(user).as_smallint()])
                .await?;
            let mut snapshots = Vec::with_capacity(rows.len());
            let mut wallets = Vec::with_capacity(rows.len());
            for row in rows {
                let (kind, provider, code): (String, String, String) =
                    (row.get(0), row.get(1), row.get(2));
                let (amount, version): (Decimal, i64) = (row.get(3), row.get(4));
                let balance = match ctx.config.currencies.get(&code) {
                    Some(c) => c.format(amount),
                    None => amount.to_string(),
                };
                snapshots.push(WalletSnapshot {
                    owner: user.to_owned(),
                    field: field(&kind, &provider, &code),
                    version,
                    balance: balance.clone(),
                });
                wallets.push(Wallet {
                    kind,
                    provider: Some(provider).filter(|p| !p.is_empty()),
                    currency: code,
                    balance,
                });
            }
            if let Some(ticket) = ticket {
                match ctx.cache.fill(user, &ticket, &snapshots).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(
                        user,
                        "cache not filled: its hash was lost, or a later fill began"
                    ),
                    Err(e) => tracing::debug!(error = %e, "cache not filled"),
                }
            }
            wallets
        }
    };
    wallets.sort_by(|a, b| {
        let rank = |w: &Wallet| Kind::parse(&w.kind).map(|k| k as u8).unwrap_or(u8::MAX);
        (&a.currency, rank(a), &a.provider).cmp(&(&b.currency, rank(b), &b.provider))
    });
    Ok(wallets)
}

/// `main:USD` or `game:alpha:USD` back into a wallet.
fn parse_field(f: &str, balance: String) -> Option<Wallet> {
    let parts: Vec<&str> = f.split(':').collect();
    let (kind, provider, currency) = match parts.as_slice() {
        [kind, currency] => (*kind, None, *currency),
        [kind, provider, currency] => (*kind, Some((*provider).to_owned()), *currency),
        _ => return None,
    };
    Some(Wallet {
        kind: kind.to_owned(),
        provider,
        currency: currency.to_owned(),
        balance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_fields_round_trip() {
        let w = parse_field("game:alpha:USD", "20.00".into()).expect("field");
        assert_eq!(w.provider.as_deref(), Some("alpha"));
        assert_eq!(
            field(&w.kind, w.provider.as_deref().unwrap_or(""), &w.currency),
            "game:alpha:USD"
        );
        let m = parse_field("main:USD", "1.00".into()).expect("field");
        assert_eq!(
            (m.kind.as_str(), m.provider, m.currency.as_str()),
            ("main", None, "USD")
        );
        assert!(parse_field("nonsense", "1".into()).is_none());
    }
}
