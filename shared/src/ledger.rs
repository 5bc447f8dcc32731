//! The double-entry ledger.
//!
//! A batch opens a [`Book`] on the user wallets it touches: one statement creates the missing ones
//! (those this process has not yet seen exist) and another locks them all, both in one fixed
//! order, so that replicas never deadlock. The book
//! applies each command's postings in memory, in batch order, refusing any that would take a user
//! wallet below zero, and knows the running balance after every command (for its event). Then
//! [`Book::write`] stores all postings and the final balances in two set-based statements.
//!
//! Guarantees: the postings of every command sum to zero per currency; every user wallet's balance
//! equals the sum of its postings and is never negative. Platform accounts (the counterpart of
//! deposits, grants, …) are never locked or updated: their balance is the sum of their postings.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use deadpool_postgres::Transaction;
use rust_decimal::Decimal;

use crate::cache::WalletSnapshot;
use crate::error::StepError;
use crate::money::Currency;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Main,
    Bonus,
    Game,
    InTransit,
    Platform,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Bonus => "bonus",
            Kind::Game => "game",
            Kind::InTransit => "in_transit",
            Kind::Platform => "platform",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "main" => Kind::Main,
            "bonus" => Kind::Bonus,
            "game" => Kind::Game,
            "in_transit" => Kind::InTransit,
            "platform" => Kind::Platform,
            _ => return None,
        })
    }
}

/// A wallet: its owner, kind, provider (game and in_transit; a platform account's purpose) and
/// currency. The derived order is the lock order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletKey {
    pub owner: String,
    pub kind: Kind,
    pub provider: String,
    pub currency: Currency,
}

impl WalletKey {
    pub fn user(owner: &str, kind: Kind, provider: &str, currency: Currency) -> Self {
        Self {
            owner: owner.to_owned(),
            kind,
            provider: provider.to_owned(),
            currency,
        }
    }

    pub fn main(owner: &str, currency: Currency) -> Self {
        Self::user(owner, Kind::Main, "", currency)
    }

    /// A platform account, named by what it counts (`deposits`, `bonus:<campaign>`, …).
    pub fn platform(purpose: &str, currency: Currency) -> Self {
        Self {
            owner: String::new(),
            kind: Kind::Platform,
            provider: purpose.to_owned(),
            currency,
        }
    }

    pub fn is_platform(&self) -> bool {
        self.kind == Kind::Platform
    }
}

/// The command could not be applied: it would take a user wallet below zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overdraft;

/// Opens books; remembers platform account ids, which never change once committed, and which
/// user wallets exist (accounts are never deleted), so that a batch asks PostgreSQL to create only
/// the wallets it has not seen: with them all known, a batch skips the statement and its index
/// probes.
#[derive(Debug, Default)]
pub struct Ledger {
    // std Mutexes: held only around map operations, never across an await.
    platform_ids: Mutex<HashMap<WalletKey, i64>>,
    known: Mutex<HashSet<WalletKey>>,
}

/// Wallets remembered as existing, at most (about 100 bytes each); past it the set starts over.
const KNOWN_WALLETS: usize = 200_000;

#[derive(Debug)]
struct Slot {
    id: i64,
    balance: Decimal,
    version: i64,
    dirty: bool,
}

/// The locked wallets of one transaction and the postings made to them so far.
#[derive(Debug)]
pub struct Book {
    slots: HashMap<WalletKey, Slot>,
    postings: Vec<(i64, Decimal, String)>,
}

/// Creates the wallets that do not exist yet. `DO NOTHING` neither locks nor rewrites the existing
/// rows; keys arrive sorted, so replicas creating the same new wallets wait for each other in one
/// order. Returns the ones this transaction created.
const CREATE_WALLETS: &str = "
    INSERT INTO accounts (owner, kind, provider, currency)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    ON CONFLICT DO NOTHING
    RETURNING owner, kind, provider, currency";

/// Locks the wallets in one fixed order (LockRows runs above the sort). A lock only marks the row:
/// unlike `ON CONFLICT DO UPDATE`, it writes no new row version, so the balance update that follows
/// is the only one per wallet and batch, and fits on its page (fillfactor, V4) as a HOT update.
/// Each row names its key by position (`n`, from 1) rather than by its four texts.
const LOCK_WALLETS: &str = "
    SELECT a.id, k.n, a.balance, a.version
    FROM accounts a
    JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[])
      WITH ORDINALITY AS k (owner, kind, provider, currency, n)
      ON (a.owner, a.kind, a.provider, a.currency) = (k.owner, k.kind, k.provider, k.currency)
    ORDER BY a.owner, a.kind, a.provider, a.currency
    FOR UPDATE OF a";

/// The platform account's id, and whether this transaction created it. `ON CONFLICT DO NOTHING`
/// takes no lock on an existing row, so replicas never wait for each other here.
const PLATFORM_ACCOUNT: &str = "
    WITH created AS (
        INSERT INTO accounts (owner, kind, provider, currency) VALUES ('', 'platform', $1, $2)
        ON CONFLICT DO NOTHING RETURNING id)
    SELECT id, true FROM created
    UNION ALL
    SELECT id, false FROM accounts WHERE owner = '' AND kind = 'platform' AND provider = $1 AND currency = $2";

const INSERT_POSTINGS: &str = "
    INSERT INTO postings (account_id, amount, command)
    SELECT * FROM unnest($1::bigint[], $2::numeric[], $3::text[])";

const UPDATE_BALANCES: &str = "
    UPDATE accounts a SET balance = u.balance, version = u.version
    FROM unnest($1::bigint[], $2::numeric[], $3::bigint[]) AS u (id, balance, version)
    WHERE a.id = u.id";

impl Ledger {
    /// Resolved in the caller's transaction (a second connection could wait on a pool the
    /// transaction itself exhausts). Only an id that was already committed is remembered: one
    /// this transaction created vanishes if it rolls back.
    async fn platform_id(&self, tx: &Transaction<'_>, key: &WalletKey) -> Result<i64, StepError> {
        if let Some(id) = self
            .platform_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(*id);
        }
        let statement = tx.prepare_cached(PLATFORM_ACCOUNT).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&key.provider, &key.currency.code()];
        // When a concurrent transaction creates the account first, this INSERT waits for it and
        // does nothing, and the SELECT, reading the statement's snapshot, does not see it either:
        // no row. The second run has a new snapshot that does.
        let mut row = tx.query_opt(&statement, &params).await?;
        if row.is_none() {
            row = tx.query_opt(&statement, &params).await?;
        }
        let row = row.ok_or_else(|| {
            StepError::transient(format!("ledger: platform account {key:?} not found"))
        })?;
        let (id, created): (i64, bool) = (row.get(0), row.get(1));
        if !created {
            self.platform_ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), id);
        }
        Ok(id)
    }

    /// Creates the missing wallets among `keys` and locks the user wallets, in key order.
    pub async fn open(
        &self,
        tx: &Transaction<'_>,
        keys: impl IntoIterator<Item = WalletKey>,
    ) -> Result<Book, StepError> {
        let mut keys: Vec<WalletKey> = keys.into_iter().collect();
        keys.sort();
        keys.dedup();
        let mut slots = HashMap::with_capacity(keys.len());
        let (platform, users): (Vec<_>, Vec<_>) =
            keys.into_iter().partition(WalletKey::is_platform);
        for key in platform {
            let id = self.platform_id(tx, &key).await?;
            slots.insert(
                key,
                Slot {
                    id,
                    balance: Decimal::ZERO,
                    version: 0,
                    dirty: false,
                },
            );
        }
        if !users.is_empty() {
            fn columns<'k>(keys: &[&'k WalletKey]) -> [Vec<&'k str>; 4] {
                let mut c: [Vec<&str>; 4] = Default::default();
                for k in keys {
                    c[0].push(k.owner.as_str());
                    c[1].push(k.kind.as_str());
                    c[2].push(k.provider.as_str());
                    c[3].push(k.currency.code());
                }
                c
            }
            let unknown: Vec<&WalletKey> = {
                let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                users.iter().filter(|k| !known.contains(*k)).collect()
            };
            let mut created: HashSet<(String, String, String, String)> = HashSet::new();
            if !unknown.is_empty() {
                let [o, k, p, c] = columns(&unknown);
                created = tx
                    .query(&tx.prepare_cached(CREATE_WALLETS).await?, &[&o, &k, &p, &c])
                    .await?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                    .collect();
            }
            let all: Vec<&WalletKey> = users.iter().collect();
            let [o, k, p, c] = columns(&all);
            let rows = tx
                .query(&tx.prepare_cached(LOCK_WALLETS).await?, &[&o, &k, &p, &c])
                .await?;
            if rows.len() != users.len() {
                // Only a wallet believed to exist can be missing: the database was reset under
                // this process. Forget what it believed and let the batch be retried.
                self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
                return Err(StepError::transient(format!(
                    "ledger: {} of {} wallets not found",
                    users.len() - rows.len(),
                    users.len()
                )));
            }
            {
                // Existing before this transaction, so existing whatever becomes of it.
                let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                if known.len() + unknown.len() > KNOWN_WALLETS {
                    known.clear();
                }
                known.extend(
                    unknown
                        .iter()
                        .filter(|k| {
                            !created.contains(&(
                                k.owner.clone(),
                                k.kind.as_str().to_owned(),
                                k.provider.clone(),
                                k.currency.code().to_owned(),
                            ))
                        })
                        .map(|k| (*k).clone()),
                );
            }
            let mut keys: Vec<Option<WalletKey>> = users.into_iter().map(Some).collect();
            for row in rows {
                let n: i64 = row.get(1);
                let key = usize::try_from(n - 1)
                    .ok()
                    .and_then(|i| keys.get_mut(i))
                    .and_then(Option::take)
                    .ok_or_else(|| StepError::permanent(format!("ledger: unexpected row {n}")))?;
                slots.insert(
                    key,
                    Slot {
                        id: row.get(0),
                        balance: row.get(2),
                        version: row.get(3),
                        dirty: false,
                    },
                );
            }
        }
        Ok(Book {
            slots,
            postings: Vec::new(),
        })
    }
}

impl Book {
    /// Applies one command's postings, all or none. Every key must have been opened, and the
    /// amounts must sum to zero per currency (a bug otherwise: `Err(Permanent)`).
    pub fn post(
        &mut self,
        command: &str,
        legs: &[(&WalletKey, Decimal)],
    ) -> Result<Result<(), Overdraft>, StepError> {
        let mut sums: HashMap<Currency, Decimal> = HashMap::new();
        for (key, amount) in legs {
            let sum = sums.entry(key.currency).or_default();
            *sum = sum
                .checked_add(*amount)
                .ok_or_else(|| StepError::permanent(format!("ledger: {command} overflows")))?;
            let slot = self.slots.get(*key).ok_or_else(|| {
                StepError::permanent(format!("ledger: wallet {key:?} was not opened"))
            })?;
            if key.is_platform() {
                continue;
            }
            match slot.balance.checked_add(*amount) {
                Some(b) if b < Decimal::ZERO => return Ok(Err(Overdraft)),
                Some(_) => {}
                None => {
                    return Err(StepError::permanent(format!(
                        "ledger: {command} overflows a balance"
                    )));
                }
            }
        }
        if sums.values().any(|s| !s.is_zero()) {
            return Err(StepError::permanent(format!(
                "ledger: postings of {command} do not balance"
            )));
        }
        for (key, amount) in legs {
            let slot = self.slots.get_mut(*key).expect("checked above");
            if !key.is_platform() {
                slot.balance += *amount;
                slot.version += 1;
                slot.dirty = true;
            }
            self.postings.push((slot.id, *amount, command.to_owned()));
        }
        Ok(Ok(()))
    }

    /// A user wallet's balance and version as of the postings made so far, for the cache.
    pub fn snapshot(&self, key: &WalletKey) -> Option<WalletSnapshot> {
        let slot = self.slots.get(key).filter(|_| !key.is_platform())?;
        Some(WalletSnapshot::new(key, slot.version, slot.balance))
    }

    /// Stores the postings and the new balances.
    pub async fn write(self, tx: &Transaction<'_>) -> Result<(), StepError> {
        if self.postings.is_empty() {
            return Ok(());
        }
        let (ids, amounts, commands): (Vec<i64>, Vec<Decimal>, Vec<String>) =
            self.postings.into_iter().fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |(mut a, mut b, mut c), (id, amount, command)| {
                    a.push(id);
                    b.push(amount);
                    c.push(command);
                    (a, b, c)
                },
            );
        let mut dirty: Vec<&Slot> = self.slots.values().filter(|s| s.dirty).collect();
        dirty.sort_by_key(|s| s.id);
        let slot_ids: Vec<i64> = dirty.iter().map(|s| s.id).collect();
        let balances: Vec<Decimal> = dirty.iter().map(|s| s.balance).collect();
        let versions: Vec<i64> = dirty.iter().map(|s| s.version).collect();
        // Independent statements: tokio-postgres pipelines them in one round trip.
        let posting_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&ids, &amounts, &commands];
        let balance_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&slot_ids, &balances, &versions];
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
