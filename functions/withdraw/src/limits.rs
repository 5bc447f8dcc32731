//! `WITHDRAW_DAILY_LIMITS`: how much a user may withdraw per currency and UTC day, pending and
//! paid withdrawals together. Every configured currency must have one, so that adding a currency
//! to `WALLET_CURRENCIES` never opens withdrawals without a limit.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde_json::Value;
use wallet_runtime::money::{Currencies, Currency, parse_amount};

pub const DEFAULT: &str = "USD:10000,EUR:10000,VND:250000000,BTC:1";

#[derive(Debug, Clone, Default)]
pub struct Limits(HashMap<Currency, Decimal>);

impl Limits {
    /// `USD:10000,EUR:9000.50`: each amount valid for its currency (CONTRACT §2), every
    /// configured currency listed once, no other.
    pub fn parse(text: &str, currencies: &Currencies) -> Result<Self, String> {
        let mut limits = HashMap::new();
        for item in text.split(',').map(str::trim) {
            let (code, amount) = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` is not CODE:AMOUNT"))?;
            let currency = currencies
                .get(code)
                .ok_or_else(|| format!("{code} is not in WALLET_CURRENCIES"))?;
            let amount = parse_amount(Some(&Value::from(amount)), currency)
                .map_err(|e| format!("{code}: {e}"))?;
            if limits.insert(currency, amount).is_some() {
                return Err(format!("{code} is listed twice"));
            }
        }
        if let Some(missing) = currencies.iter().find(|c| !limits.contains_key(c)) {
            return Err(format!("no limit for {missing}"));
        }
        Ok(Self(limits))
    }

    /// The currency's limit; zero (nothing may be withdrawn) for one [`Limits::parse`] was not
    /// given, which a started function never meets.
    pub fn of(&self, currency: Currency) -> Decimal {
        self.0.get(&currency).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configured_currency_needs_one_valid_limit() {
        let currencies: Currencies = "USD:2,VND:0".parse().expect("currencies");
        let usd = currencies.get("USD").expect("USD");
        let limits = Limits::parse("USD:100.50, VND:5000000", &currencies).expect("limits");
        assert_eq!(limits.of(usd), Decimal::new(10050, 2));
        for (text, error) in [
            ("USD:100", "no limit for VND"),
            ("USD:100,VND:1,EUR:5", "EUR is not in WALLET_CURRENCIES"),
            ("USD:100,VND:1.5", "VND: VND has 0 digits after the point"),
            ("USD:100,VND:0", "VND: an amount must be positive"),
            ("USD:100,USD:5,VND:1", "USD is listed twice"),
            ("USD=100,VND:1", "`USD=100` is not CODE:AMOUNT"),
        ] {
            assert_eq!(
                Limits::parse(text, &currencies).expect_err(text),
                error,
                "{text}"
            );
        }
    }
}
