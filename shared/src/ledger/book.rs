//! A [`Book`]: the wallets one transaction locked, the postings made to them so far in memory,
//! and [`Book::write`], which stores them all in two set-based statements.

use deadpool_postgres::Transaction;
use foldhash::HashMap;
use rust_decimal::Decimal;

use super::Refused;
use crate::error::StepError;
use crate::money::{Currency, exact_add};
use crate::partition::Partition;
use crate::wallet::{WalletKey, WalletSnapshot};

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) id: i64,
    pub(super) balance: Decimal,
    pub(super) version: i64,
    pub(super) dirty: bool,
}

/// The locked wallets of one transaction and the postings made to them so far.
#[derive(Debug)]
pub struct Book {
    pub(super) slots: HashMap<WalletKey, Slot>,
    /// User wallets' postings (partition, account, amount), each with its command; platform legs
    /// are summed in their slots.
    pub(super) postings: Vec<(Partition, i64, Decimal, Option<String>)>,
}

const INSERT_POSTINGS: &str = "
    INSERT INTO postings (partition, account_id, amount, command)
    SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::numeric[], $4::text[])";

const UPDATE_BALANCES: &str = "
    UPDATE accounts a SET balance = u.balance, version = u.version
    FROM unnest($1::smallint[], $2::bigint[], $3::numeric[], $4::bigint[])
      AS u (partition, id, balance, version)
    WHERE (a.partition, a.id) = (u.partition, u.id)";

impl Book {
    /// Applies one command's postings, all or none. Every key must have been opened, and the
    /// amounts must sum to zero per currency, within one partition (a bug otherwise:
    /// `Err(Permanent)`): what a partition's postings sum to never depends on another's, so a
    /// partition can move to another shard with its postings alone.
    pub fn post(
        &mut self,
        command: &str,
        legs: &[(&WalletKey, Decimal)],
    ) -> Result<Result<(), Refused>, StepError> {
        if legs
            .windows(2)
            .any(|w| w[0].0.partition != w[1].0.partition)
        {
            return Err(StepError::permanent(format!(
                "ledger: postings of {command} span partitions"
            )));
        }
        // A command has a few legs in one or two currencies: a list beats a map.
        let mut sums: Vec<(Currency, Decimal)> = Vec::with_capacity(legs.len());
        for (key, amount) in legs {
            let at = match sums.iter().position(|(c, _)| *c == key.currency) {
                Some(at) => at,
                None => {
                    sums.push((key.currency, Decimal::ZERO));
                    sums.len() - 1
                }
            };
            let sum = &mut sums[at].1;
            *sum = exact_add(*sum, *amount)
                .ok_or_else(|| StepError::permanent(format!("ledger: {command} overflows")))?;
            let slot = self.slots.get(*key).ok_or_else(|| {
                StepError::permanent(format!("ledger: wallet {key:?} was not opened"))
            })?;
            // A platform slot's balance is the transaction's sum to it (see `write`): it may
            // overflow but never overdraws.
            match exact_add(slot.balance, *amount) {
                Some(_) if key.is_platform() => {}
                Some(b) if b < Decimal::ZERO => return Ok(Err(Refused::Overdraft)),
                Some(b) if b >= key.currency.balance_limit() => {
                    return Ok(Err(Refused::BalanceLimit));
                }
                Some(_) => {}
                None => {
                    return Err(StepError::permanent(format!(
                        "ledger: {command} overflows a balance"
                    )));
                }
            }
        }
        if sums.iter().any(|(_, s)| !s.is_zero()) {
            return Err(StepError::permanent(format!(
                "ledger: postings of {command} do not balance"
            )));
        }
        for (key, amount) in legs {
            let slot = self.slots.get_mut(*key).expect("checked above");
            // Checked again: two legs to one wallet are checked one by one above.
            slot.balance = exact_add(slot.balance, *amount).ok_or_else(|| {
                StepError::permanent(format!("ledger: {command} overflows a balance"))
            })?;
            if !key.is_platform() {
                slot.version += 1;
                slot.dirty = true;
                self.postings
                    .push((key.partition, slot.id, *amount, Some(command.to_owned())));
            }
        }
        Ok(Ok(()))
    }

    /// A user wallet's balance as of the postings made so far.
    pub fn balance(&self, key: &WalletKey) -> Option<Decimal> {
        let slot = self.slots.get(key).filter(|_| !key.is_platform())?;
        Some(slot.balance)
    }

    /// A user wallet's balance and version as of the postings made so far, for the cache.
    pub fn snapshot(&self, key: &WalletKey) -> Option<WalletSnapshot> {
        let slot = self.slots.get(key).filter(|_| !key.is_platform())?;
        Some(WalletSnapshot::new(key, slot.version, slot.balance))
    }

    /// Stores the postings, one per platform account touched, and the new balances.
    pub async fn write(mut self, tx: &Transaction<'_>) -> Result<(), StepError> {
        let mut platform: Vec<(Partition, &Slot)> = self
            .slots
            .iter()
            .filter(|(k, s)| k.is_platform() && !s.balance.is_zero())
            .map(|(k, s)| (k.partition, s))
            .collect();
        platform.sort_by_key(|(_, s)| s.id);
        self.postings
            .extend(platform.iter().map(|(p, s)| (*p, s.id, s.balance, None)));
        if self.postings.is_empty() {
            return Ok(());
        }
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (partition, id, amount, command) in self.postings {
            columns.0.push(partition.as_smallint());
            columns.1.push(id);
            columns.2.push(amount);
            columns.3.push(command);
        }
        let (partitions, ids, amounts, commands): (Vec<i16>, Vec<i64>, Vec<Decimal>, Vec<_>) =
            columns;
        let mut dirty: Vec<(&WalletKey, &Slot)> =
            self.slots.iter().filter(|(_, s)| s.dirty).collect();
        dirty.sort_by_key(|(_, s)| s.id);
        let slot_partitions: Vec<i16> = dirty
            .iter()
            .map(|(k, _)| k.partition.as_smallint())
            .collect();
        let slot_ids: Vec<i64> = dirty.iter().map(|(_, s)| s.id).collect();
        let balances: Vec<Decimal> = dirty.iter().map(|(_, s)| s.balance).collect();
        let versions: Vec<i64> = dirty.iter().map(|(_, s)| s.version).collect();
        // Independent statements: tokio-postgres pipelines them in one round trip.
        let posting_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&partitions, &ids, &amounts, &commands];
        let balance_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&slot_partitions, &slot_ids, &balances, &versions];
        let (insert, update) = futures::try_join!(
            tx.prepare_cached(INSERT_POSTINGS),
            tx.prepare_cached(UPDATE_BALANCES),
        )?;
        let (postings, balances) = futures::join!(
            tx.execute(&insert, &posting_params),
            tx.execute(&update, &balance_params),
        );
        postings?;
        balances?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::money::Currencies;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    /// A book as `Ledger::open` leaves it: these wallets locked, at these balances.
    fn book(wallets: &[(&WalletKey, &str)]) -> Book {
        Book {
            slots: wallets
                .iter()
                .zip(1..)
                .map(|((key, balance), id)| {
                    let slot = Slot {
                        id,
                        balance: if key.is_platform() {
                            Decimal::ZERO
                        } else {
                            dec(balance)
                        },
                        version: 0,
                        dirty: false,
                    };
                    ((*key).clone(), slot)
                })
                .collect(),
            postings: Vec::new(),
        }
    }

    #[test]
    fn legs_are_summed_per_currency_and_an_unbalanced_command_changes_nothing() {
        let currencies = Currencies::default();
        let (usd, eur) = (
            currencies.get("USD").unwrap(),
            currencies.get("EUR").unwrap(),
        );
        let (main_usd, main_eur) = (WalletKey::main("u-1", usd), WalletKey::main("u-1", eur));
        let (fx_usd, fx_eur) = (
            WalletKey::platform("fx", main_usd.partition, usd),
            WalletKey::platform("fx", main_usd.partition, eur),
        );
        let mut b = book(&[
            (&main_usd, "10.00"),
            (&main_eur, "0"),
            (&fx_usd, ""),
            (&fx_eur, ""),
        ]);

        // 5 USD for 4 EUR: each currency's legs sum to zero, though the four amounts do not.
        let exchange = [
            (&main_usd, dec("-5")),
            (&fx_usd, dec("5")),
            (&fx_eur, dec("-4")),
            (&main_eur, dec("4")),
        ];
        assert_eq!(b.post("fx:1", &exchange).unwrap(), Ok(()));
        assert_eq!(b.snapshot(&main_usd).unwrap().balance, "5.00");
        assert_eq!(b.snapshot(&main_eur).unwrap().balance, "4.00");

        // Balanced in total (−5 + 5) but not per currency: refused, and nothing moved.
        let crossed = [(&main_usd, dec("-5")), (&main_eur, dec("5"))];
        let e = b.post("fx:2", &crossed).unwrap_err();
        assert!(e.to_string().contains("do not balance"), "{e}");
        assert_eq!(b.snapshot(&main_usd).unwrap().balance, "5.00");
        assert_eq!(b.snapshot(&main_eur).unwrap().balance, "4.00");
        assert_eq!(b.postings.len(), 2);

        // Below zero: an overdraft, not an error, and nothing moved either.
        let too_much = [(&main_usd, dec("-6")), (&fx_usd, dec("6"))];
        assert_eq!(b.post("fx:3", &too_much).unwrap(), Err(Refused::Overdraft));
        assert_eq!(b.snapshot(&main_usd).unwrap().balance, "5.00");
        assert_eq!(b.postings.len(), 2);
    }

    #[test]
    fn a_command_posts_within_one_partition() {
        let usd = Currencies::default().get("USD").unwrap();
        let (u1, u7) = (WalletKey::main("u-1", usd), WalletKey::main("u-7", usd));
        assert_ne!(u1.partition, u7.partition);
        let (deposits_u1, deposits_u7) = (
            WalletKey::platform("deposits", u1.partition, usd),
            WalletKey::platform("deposits", u7.partition, usd),
        );
        let mut b = book(&[
            (&u1, "0"),
            (&u7, "0"),
            (&deposits_u1, ""),
            (&deposits_u7, ""),
        ]);

        assert_eq!(
            b.post("deposit:1", &[(&u1, dec("3")), (&deposits_u1, dec("-3"))])
                .unwrap(),
            Ok(())
        );
        // Balanced, but the counterpart is another partition's account: a bug, and nothing moved.
        let e = b
            .post("deposit:2", &[(&u7, dec("2")), (&deposits_u1, dec("-2"))])
            .unwrap_err();
        assert!(e.to_string().contains("span partitions"), "{e}");
        assert_eq!(b.balance(&u7), Some(dec("0")));
        assert_eq!(b.postings.len(), 1);
        assert_eq!(b.postings[0].0, u1.partition);
    }
}
