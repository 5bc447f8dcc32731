//! Campaigns: their parameters in PostgreSQL (the source of truth), created once by
//! `walletctl campaign create` and loaded into Redis (see [`crate::reservations`]).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use wallet_runtime::money::Currency;

/// The largest budget in minor units. Redis's Lua counts in doubles, exact to 2^53: with every
/// amount at most the budget, a budget of at most 2^52 keeps `reserved + amount` exact.
pub const MAX_MINOR: i64 = 1 << 52;

/// How much each grant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Fixed(Decimal),
    /// Drawn per grant from its id, in the currency's minor units, bounds included.
    Between(Decimal, Decimal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: String,
    pub currency: Currency,
    pub budget: Decimal,
    pub amount: Amount,
    pub per_user: i32,
    pub starts: Option<DateTime<Utc>>,
    pub ends: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("{0}")]
    Invalid(String),
    #[error("campaign `{id}` exists with other parameters: {differences}")]
    Conflict { id: String, differences: String },
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Step(#[from] wallet_runtime::StepError),
}

/// Minor units of `amount` in `currency` (exact: amounts have at most the currency's digits, and
/// a campaign's amounts are at most its budget, itself at most [`MAX_MINOR`]).
pub fn minor(amount: Decimal, currency: Currency) -> i64 {
    let scaled = amount * Decimal::from(10i64.pow(currency.minor_unit));
    i64::try_from(scaled.trunc()).unwrap_or(i64::MAX)
}

/// `minor` back to an amount of `currency`.
pub fn from_minor(minor: i64, currency: Currency) -> Decimal {
    Decimal::new(minor, currency.minor_unit)
}

impl Campaign {
    /// Refuses what the contract or the counters cannot hold.
    pub fn validate(&self) -> Result<(), CampaignError> {
        let invalid = |m: String| Err(CampaignError::Invalid(m));
        if !wallet_runtime::ids::is_valid(&self.id) {
            return invalid(format!(
                "campaign id `{}` must be 1 to 128 characters from A-Z a-z 0-9 _ . : -",
                self.id
            ));
        }
        if self.per_user < 1 {
            return invalid("--per-user must be at least 1".into());
        }
        if minor(self.budget, self.currency) > MAX_MINOR {
            return invalid(format!(
                "--budget is too large: at most {} {}",
                from_minor(MAX_MINOR, self.currency),
                self.currency.code()
            ));
        }
        if let Amount::Between(min, max) = self.amount
            && min > max
        {
            return invalid("--amount-min must not exceed --amount-max".into());
        }
        // Checked on the amounts themselves: in minor units one could pass i64 (10^15 BTC).
        let largest = match self.amount {
            Amount::Fixed(a) | Amount::Between(_, a) => a,
        };
        if largest > self.budget {
            return invalid(format!(
                "the amount {} is larger than the whole --budget {}",
                self.currency.format(largest),
                self.currency.format(self.budget)
            ));
        }
        if let (Some(s), Some(e)) = (self.starts, self.ends)
            && e <= s
        {
            return invalid(
                "--ends must be after --starts (--starts is inclusive, --ends exclusive)".into(),
            );
        }
        Ok(())
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let c = self.currency;
        let time = |t: Option<DateTime<Utc>>| t.map_or("none".into(), |t| t.to_rfc3339());
        vec![
            ("currency", c.code().to_owned()),
            ("budget", c.format(self.budget)),
            (
                "amount",
                match self.amount {
                    Amount::Fixed(a) => c.format(a),
                    Amount::Between(a, b) => format!("{} to {}", c.format(a), c.format(b)),
                },
            ),
            ("per-user", self.per_user.to_string()),
            ("starts", time(self.starts)),
            ("ends", time(self.ends)),
        ]
    }

    /// `key value` lines, for `walletctl campaign show`.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        self.describe()
    }
}

const INSERT: &str = "
    INSERT INTO campaigns (id, currency, budget, amount, amount_min, amount_max, per_user, starts_at, ends_at,
                           quota, spare_elsewhere)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $3::numeric - $10::numeric)
    ON CONFLICT (id) DO NOTHING";

/// The columns [`from_row`] reads, in its order.
macro_rules! columns {
    () => {
        "id, currency, budget, amount, amount_min, amount_max, per_user, starts_at, ends_at"
    };
}

pub const SELECT: &str = concat!("SELECT ", columns!(), " FROM campaigns");

/// Every campaign with its committed totals (columns 9 and 10).
pub const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    ", granted, grants FROM campaigns ORDER BY created_at, id"
);

/// A campaign from a row of [`SELECT`]; `None` when its currency is no longer configured.
pub fn from_row(
    row: &tokio_postgres::Row,
    currencies: &wallet_runtime::money::Currencies,
) -> Option<Campaign> {
    let currency = currencies.get(row.get::<_, &str>(1))?;
    let amount = match (row.get(3), row.get(4), row.get(5)) {
        (Some(a), _, _) => Amount::Fixed(a),
        (None, Some(min), Some(max)) => Amount::Between(min, max),
        _ => return None,
    };
    Some(Campaign {
        id: row.get(0),
        currency,
        budget: row.get(2),
        amount,
        per_user: row.get(6),
        starts: row.get(7),
        ends: row.get(8),
    })
}

/// Whether `create` made the campaign or found it with the same parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    Unchanged,
}

/// Creates `c` in PostgreSQL, or finds it with the same parameters; another campaign with this
/// id is a [`CampaignError::Conflict`] naming what differs. `quota`: the part of the budget
/// this database may grant (the budget on one PostgreSQL; [`quotas`] on shards), the rest of
/// the budget being, at creation, all spare elsewhere.
pub async fn create(
    pg: &tokio_postgres::Client,
    currencies: &wallet_runtime::money::Currencies,
    c: &Campaign,
    quota: Decimal,
) -> Result<Created, CampaignError> {
    c.validate()?;
    let (fixed, min, max) = match c.amount {
        Amount::Fixed(a) => (Some(a), None, None),
        Amount::Between(a, b) => (None, Some(a), Some(b)),
    };
    let inserted = pg
        .execute(
            INSERT,
            &[
                &c.id,
                &c.currency.code(),
                &c.budget,
                &fixed,
                &min,
                &max,
                &c.per_user,
                &c.starts,
                &c.ends,
                &quota,
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Created::Created);
    }
    let row = pg
        .query_one(&format!("{SELECT} WHERE id = $1"), &[&c.id])
        .await?;
    let stored = from_row(&row, currencies).ok_or_else(|| {
        CampaignError::Invalid(format!(
            "campaign `{}` has a currency no longer configured",
            c.id
        ))
    })?;
    if stored == *c {
        return Ok(Created::Unchanged);
    }
    let differences = stored
        .describe()
        .into_iter()
        .zip(c.describe())
        .filter(|(a, b)| a.1 != b.1)
        .map(|((name, have), (_, want))| format!("{name} is {have}, not {want}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(CampaignError::Conflict {
        id: c.id.clone(),
        differences,
    })
}

/// The budget split into `shards` quotas, one per shard in order, in whole minor units: the
/// first shards take the remainder's units, so the quotas sum to the budget exactly.
pub fn quotas(budget: Decimal, currency: Currency, shards: usize) -> Vec<Decimal> {
    let n = i64::try_from(shards.max(1)).unwrap_or(i64::MAX);
    let units = minor(budget, currency);
    (0..n)
        .map(|i| from_minor(units / n + i64::from(i < units % n), currency))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_sum_to_the_budget_in_whole_minor_units() {
        let currencies: wallet_runtime::money::Currencies = "USD:2".parse().expect("currencies");
        let usd = currencies.get("USD").expect("USD");
        let d = |s: &str| s.parse::<Decimal>().expect("decimal");
        assert_eq!(quotas(d("10.00"), usd, 1), vec![d("10.00")]);
        assert_eq!(quotas(d("10.00"), usd, 2), vec![d("5.00"), d("5.00")]);
        assert_eq!(
            quotas(d("0.05"), usd, 4),
            vec![d("0.02"), d("0.01"), d("0.01"), d("0.01")]
        );
        assert_eq!(quotas(d("0.01"), usd, 2), vec![d("0.01"), d("0.00")]);
    }

    fn campaign(budget: &str, amount: Amount) -> Campaign {
        let currencies: wallet_runtime::money::Currencies = "BTC:8".parse().expect("currencies");
        Campaign {
            id: "c-1".into(),
            currency: currencies.get("BTC").expect("BTC"),
            budget: budget.parse().expect("budget"),
            amount,
            per_user: 1,
            starts: None,
            ends: None,
        }
    }

    #[test]
    fn amounts_the_scripts_cannot_carry_exactly_are_refused() {
        let d = |s: &str| s.parse::<Decimal>().expect("decimal");
        assert!(
            campaign("2000000", Amount::Fixed(d("1000000")))
                .validate()
                .is_ok()
        );
        // 2^52 satoshis and no more.
        assert!(
            campaign("45035996.27370496", Amount::Fixed(d("1")))
                .validate()
                .is_ok()
        );
        assert!(
            campaign("45035996.27370497", Amount::Fixed(d("1")))
                .validate()
                .is_err()
        );
        // 10^15 BTC is 10^23 satoshis, past i64: refused, never saturated.
        let huge = campaign("1", Amount::Fixed(d("999999999999999")));
        assert!(huge.validate().is_err());
        assert!(
            campaign("1", Amount::Between(d("0.5"), d("2")))
                .validate()
                .is_err()
        );
    }
}
