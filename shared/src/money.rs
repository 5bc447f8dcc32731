//! Money: currencies, the exact amount grammar of the contract, and printing.
//!
//! Amounts are `rust_decimal::Decimal` end to end and `NUMERIC` in PostgreSQL. Parsing is strict
//! and never rounds: an amount with more fraction digits than its currency's minor unit is
//! refused, not truncated. Printing always shows exactly the currency's minor-unit digits.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value;

/// The most digits an amount may have before the decimal point.
pub const MAX_INTEGER_DIGITS: usize = 15;

/// The most digits after the point a currency may have: with 15 before it, every amount has at
/// most 28 significant digits, which a `Decimal` always holds exactly.
pub const MAX_MINOR_UNIT: u32 = 13;

/// A configured currency: an ISO-4217-style code and its minor unit (digits after the point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    pub minor_unit: u32,
}

impl Currency {
    pub fn code(&self) -> &str {
        // Constructed only from three ASCII uppercase letters.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Prints `amount` with exactly this currency's minor-unit digits (`10` → `10.00` in USD).
    /// The amount is never rounded: every amount that reaches here was parsed or summed from
    /// amounts with at most `minor_unit` digits.
    pub fn format(&self, amount: Decimal) -> String {
        let mut a = amount;
        a.rescale(self.minor_unit);
        a.to_string()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The currencies a deployment accepts, from `WALLET_CURRENCIES` (`USD:2,EUR:2,VND:0,BTC:8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currencies(BTreeMap<String, Currency>);

impl Default for Currencies {
    fn default() -> Self {
        Self::from_str("USD:2,EUR:2,VND:0,BTC:8").expect("the built-in currencies parse")
    }
}

impl FromStr for Currencies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (code, minor) = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` is not CODE:MINOR_UNIT"))?;
            let bytes: [u8; 3] = code
                .as_bytes()
                .try_into()
                .ok()
                .filter(|b: &[u8; 3]| b.iter().all(u8::is_ascii_uppercase))
                .ok_or_else(|| format!("`{code}` is not a three-letter uppercase code"))?;
            let minor_unit: u32 = minor
                .parse()
                .ok()
                .filter(|m| *m <= MAX_MINOR_UNIT)
                .ok_or_else(|| {
                    format!("`{minor}` is not a minor unit from 0 to {MAX_MINOR_UNIT}")
                })?;
            map.insert(
                code.to_owned(),
                Currency {
                    code: bytes,
                    minor_unit,
                },
            );
        }
        if map.is_empty() {
            return Err("no currency configured".into());
        }
        Ok(Self(map))
    }
}

impl Currency {
    /// The first balance a wallet of this currency may not reach: 10^(28 − minor unit), so that
    /// every balance has at most 28 significant digits and a `Decimal` (96 bits, about 7.9e28)
    /// holds it, and the sum of a balance and an amount, exactly. At least 10^15 for every
    /// currency (the minor unit is at most 13), so no single amount reaches it.
    pub fn balance_limit(&self) -> Decimal {
        Decimal::from_i128_with_scale(10i128.pow(28), self.minor_unit)
    }
}

/// `a + b`, or `None` when the sum is not exact: past 28 digits `rust_decimal` rounds the
/// fraction away rather than failing, and money is never rounded.
pub fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    a.checked_add(b)
        .filter(|sum| sum.scale() >= a.scale().max(b.scale()))
}

impl Currencies {
    pub fn get(&self, code: &str) -> Option<Currency> {
        self.0.get(code).copied()
    }

    /// Every configured currency, by code.
    pub fn iter(&self) -> impl Iterator<Item = Currency> + '_ {
        self.0.values().copied()
    }
}

/// Why a JSON value is not an amount. Every variant is the contract's `invalid_amount`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("an amount must be a JSON string")]
    NotAString,
    #[error("an amount is digits with an optional fraction, like \"10.50\"")]
    Syntax,
    #[error("an amount must be positive")]
    NotPositive,
    #[error("an amount has at most {MAX_INTEGER_DIGITS} digits before the point")]
    TooLarge,
    #[error("{currency} has {minor_unit} digits after the point")]
    TooPrecise { currency: String, minor_unit: u32 },
}

/// Parses an amount per CONTRACT §2: a JSON string of digits with an optional `.` and fraction,
/// positive, at most 15 integer digits and at most the currency's minor-unit fraction digits.
/// No sign, no exponent, no whitespace, nothing rounded.
pub fn parse_amount(value: Option<&Value>, currency: Currency) -> Result<Decimal, AmountError> {
    let s = value
        .and_then(Value::as_str)
        .ok_or(AmountError::NotAString)?;
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err(AmountError::Syntax);
    }
    if int.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
        return Err(AmountError::TooLarge);
    }
    let frac = frac.unwrap_or("");
    if frac.len() > currency.minor_unit as usize {
        return Err(AmountError::TooPrecise {
            currency: currency.code().to_owned(),
            minor_unit: currency.minor_unit,
        });
    }
    // At most 15 + 13 significant digits (leading zeros aside): always within Decimal's 28.
    let amount = Decimal::from_str_exact(s).map_err(|_| AmountError::Syntax)?;
    if amount <= Decimal::ZERO {
        return Err(AmountError::NotPositive);
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {

    #[test]
    fn sums_past_28_digits_are_refused_not_rounded() {
        // Just under 2^96 - 1 = 79,228,162,514,264,337,593,543,950,335 units of 10^-13.
        let big = Decimal::from_i128_with_scale(79_228_162_514_264_337_593_543_950_000, 13);
        let tiny = Decimal::from_i128_with_scale(999, 13);
        // rust_decimal itself rounds this sum to 12 digits after the point.
        assert!(big.checked_add(tiny).is_some_and(|s| s.scale() < 13));
        assert_eq!(exact_add(big, tiny), None);
        assert_eq!(
            exact_add(Decimal::new(1050, 2), Decimal::new(5, 1)),
            Some(Decimal::new(1100, 2))
        );
    }

    #[test]
    fn the_balance_limit_keeps_28_digits() {
        let c = |s: &str| {
            s.parse::<Currencies>()
                .expect("currency")
                .get(&s[..3])
                .expect("configured")
        };
        assert_eq!(c("USD:2").balance_limit(), Decimal::from(10i128.pow(26)));
        assert_eq!(c("XTS:13").balance_limit(), Decimal::from(10i64.pow(15)));
        let below = c("XTS:13").balance_limit() - Decimal::from_i128_with_scale(1, 13);
        assert_eq!(below.mantissa(), 10i128.pow(28) - 1);
    }
    use super::*;
    use serde_json::json;

    fn usd() -> Currency {
        Currencies::default().get("USD").expect("USD")
    }

    #[test]
    fn contract_examples_parse_exactly() {
        for (input, expected) in [("10", "10"), ("10.5", "10.5"), ("10.50", "10.50")] {
            let got = parse_amount(Some(&json!(input)), usd()).expect(input);
            assert_eq!(got, Decimal::from_str_exact(expected).expect("decimal"));
        }
    }

    #[test]
    fn the_largest_amount_has_fifteen_integer_digits() {
        assert!(parse_amount(Some(&json!("999999999999999.99")), usd()).is_ok());
        assert_eq!(
            parse_amount(Some(&json!("1000000000000000")), usd()),
            Err(AmountError::TooLarge)
        );
        // Leading zeros are not digits of magnitude.
        assert!(parse_amount(Some(&json!("0000000000000001")), usd()).is_ok());
    }

    #[test]
    fn everything_else_is_invalid_amount() {
        let cases = [
            json!(10),
            json!(10.5),
            json!("-10"),
            json!("+10"),
            json!("0"),
            json!("0.00"),
            json!("1e3"),
            json!("1E3"),
            json!("10.505"),
            json!(""),
            json!("."),
            json!("10."),
            json!(".5"),
            json!(" 10"),
            json!("10 "),
            json!("1,000"),
            json!("NaN"),
            json!("١٠"),
            json!(null),
            json!(["10"]),
        ];
        for case in cases {
            assert!(
                parse_amount(Some(&case), usd()).is_err(),
                "{case} must be invalid"
            );
        }
    }

    #[test]
    fn digits_depend_on_the_currency() {
        let c = Currencies::default();
        let vnd = c.get("VND").expect("VND");
        let btc = c.get("BTC").expect("BTC");
        assert!(parse_amount(Some(&json!("1000")), vnd).is_ok());
        assert!(parse_amount(Some(&json!("1000.5")), vnd).is_err());
        assert!(parse_amount(Some(&json!("0.00000001")), btc).is_ok());
        assert!(parse_amount(Some(&json!("0.000000001")), btc).is_err());
    }

    #[test]
    fn printing_shows_the_minor_unit() {
        let c = Currencies::default();
        let d = |s: &str| Decimal::from_str_exact(s).expect("decimal");
        assert_eq!(usd().format(d("10")), "10.00");
        assert_eq!(usd().format(d("10.5")), "10.50");
        assert_eq!(c.get("VND").expect("VND").format(d("1000")), "1000");
        assert_eq!(c.get("BTC").expect("BTC").format(d("1.5")), "1.50000000");
        assert_eq!(usd().format(Decimal::ZERO), "0.00");
    }

    #[test]
    fn unknown_codes_are_absent_and_bad_config_is_refused() {
        assert!(Currencies::default().get("GBP").is_none());
        assert!(Currencies::default().get("usd").is_none());
        assert!("USD".parse::<Currencies>().is_err());
        assert!("US:2".parse::<Currencies>().is_err());
        assert!("USD:x".parse::<Currencies>().is_err());
        assert!("ETH:18".parse::<Currencies>().is_err());
        assert!("XXX:13".parse::<Currencies>().is_ok());
        assert!("".parse::<Currencies>().is_err());
    }
}

/// Properties over arbitrary input: nothing panics, and whatever parses is exact.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties {
    use super::*;
    use crate::arbitrary::json_value;
    use proptest::prelude::*;
    use serde_json::json;

    fn currency() -> impl Strategy<Value = Currency> {
        (0..=MAX_MINOR_UNIT).prop_map(|m| {
            let c: Currencies = format!("XXX:{m}").parse().unwrap();
            c.get("XXX").unwrap()
        })
    }

    /// What every accepted amount must be.
    fn accepted(s: &str, currency: Currency) -> Result<(), TestCaseError> {
        if let Ok(amount) = parse_amount(Some(&json!(s)), currency) {
            prop_assert!(amount > Decimal::ZERO);
            prop_assert!(amount.scale() <= currency.minor_unit);
            prop_assert!(amount.trunc().to_string().len() <= MAX_INTEGER_DIGITS);
            prop_assert_eq!(amount, Decimal::from_str_exact(s).unwrap());
            // Printing pads to the minor unit and never rounds.
            let printed = currency.format(amount);
            prop_assert_eq!(Decimal::from_str_exact(&printed).unwrap(), amount);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_string_is_an_exact_amount_or_refused(s in any::<String>(), c in currency()) {
            accepted(&s, c)?;
        }

        #[test]
        fn digit_strings_are_exact_amounts_or_refused(
            s in "0{0,30}[0-9]{0,20}(\\.[0-9]{0,20})?",
            c in currency(),
        ) {
            accepted(&s, c)?;
        }

        #[test]
        fn every_amount_of_the_grammar_parses_exactly(
            int in "0{0,20}[1-9][0-9]{0,14}",
            frac in "[0-9]{0,13}",
            c in currency(),
        ) {
            let frac = &frac[..frac.len().min(c.minor_unit as usize)];
            let s = if frac.is_empty() { int.clone() } else { format!("{int}.{frac}") };
            prop_assert!(parse_amount(Some(&json!(s)), c).is_ok(), "{} refused", s);
            accepted(&s, c)?;
        }

        #[test]
        fn any_json_value_is_an_amount_or_refused(v in json_value(), c in currency()) {
            if let Ok(amount) = parse_amount(Some(&v), c) {
                prop_assert!(v.is_string());
                prop_assert!(amount > Decimal::ZERO);
            }
        }
    }
}
