//! The double-entry ledger.
//!
//! A batch opens a [`Book`] on the user wallets it touches: one statement creates the missing ones
//! (those this process has not yet seen exist), in key order, and another locks them all by id, in
//! id order, so that replicas never deadlock. The book
//! applies each command's postings in memory, in batch order, refusing any that would take a user
//! wallet below zero, and knows the running balance after every command (for its event). Then
//! [`Book::write`] stores all postings and the final balances in two set-based statements.
//!
//! Guarantees: the postings of every transaction (a journal entry, `postings.entry`) sum to zero
//! per currency; every user wallet's balance equals the sum of its postings and is never negative.
//! Platform accounts (the counterpart of deposits, grants, …) are never locked or updated: their
//! balance is the sum of their postings. A user wallet's posting names its command; a platform
//! account gets one posting per transaction, the sum of the batch's legs to it (measured: the
//! per-command platform postings, half of a deposit batch's rows, cost 13 % of PostgreSQL's CPU
//! in `deposit-max`).

use std::sync::Mutex;

use deadpool_postgres::Transaction;
use foldhash::{HashMap, HashMapExt, HashSet};
use rust_decimal::Decimal;

use crate::error::StepError;
use crate::events::Reason;
use crate::wallet::WalletKey;

mod book;

pub use book::Book;
use book::Slot;

/// Why a command could not be applied; nothing moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It would take a user wallet below zero.
    Overdraft,
    /// It would take a user wallet to its currency's [`Currency::balance_limit`].
    BalanceLimit,
}

impl Refused {
    /// The rejection reason of the contract.
    pub fn reason(self) -> Reason {
        match self {
            Refused::Overdraft => Reason::INSUFFICIENT_FUNDS,
            Refused::BalanceLimit => Reason::BALANCE_LIMIT,
        }
    }
}

/// Opens books; remembers the ids of the wallets known to exist (ids never change once committed,
/// and accounts are never deleted), so that a batch asks PostgreSQL to create only the wallets it
/// has not seen, and locks the rest by primary key: with them all known, a batch is one locking
/// statement on bigint keys, without four text columns per wallet to send, parse and compare.
#[derive(Debug, Default)]
pub struct Ledger {
    // std Mutexes: held only around map operations, never across an await.
    platform_ids: Mutex<HashMap<WalletKey, i64>>,
    known: Mutex<HashMap<WalletKey, i64>>,
}

/// Wallets remembered as existing, at most (about 100 bytes each); past it the set starts over.
const KNOWN_WALLETS: usize = 200_000;

/// Creates the wallets that do not exist yet. `DO NOTHING` neither locks nor rewrites the existing
/// rows; keys arrive sorted, so replicas creating the same new wallets wait for each other in one
/// order (the only rows a transaction holds before it locks are the ones it created). Returns
/// every key's id by position (`n`, from 1): once the INSERT is done, each key exists, committed
/// (a concurrent creator's row, waited for) or created here, and the SELECT, a second statement
/// with a new snapshot, sees them all.
const CREATE_WALLETS: &str = "
    INSERT INTO accounts (partition, owner, kind, provider, currency)
    SELECT * FROM unnest($1::smallint[], $2::text[], $3::text[], $4::text[], $5::text[])
    ON CONFLICT DO NOTHING
    RETURNING id";

const WALLET_IDS: &str = "
    SELECT a.id, k.n
    FROM accounts a
    JOIN unnest($1::smallint[], $2::text[], $3::text[], $4::text[], $5::text[])
      WITH ORDINALITY AS k (partition, owner, kind, provider, currency, n)
      ON (a.partition, a.owner, a.kind, a.provider, a.currency)
       = (k.partition, k.owner, k.kind, k.provider, k.currency)";

/// Locks the user wallets (`$1`, `$2`: partitions and ids) in id order, the one order every
/// function uses (LockRows runs above the sort). A lock only marks the row: unlike `ON CONFLICT
/// DO UPDATE`, it writes no new row version, so the balance update that follows is the only one
/// per wallet and batch, and fits on its page (fillfactor, V4) as a HOT update. The remembered
/// platform accounts (`$3`, `$4`) are read, not locked: every replica posts to them. Each row
/// comes back with its key: an id is checked against the wallet this process knew by it.
const LOCK_WALLETS: &str = "
    WITH locked AS (
        SELECT a.id, a.balance, a.version, a.partition, a.owner, a.kind, a.provider, a.currency
        FROM accounts a
        JOIN unnest($1::smallint[], $2::bigint[]) AS k (partition, id)
          ON (a.partition, a.id) = (k.partition, k.id)
        ORDER BY a.id FOR UPDATE OF a)
    SELECT * FROM locked
    UNION ALL
    SELECT a.id, a.balance, a.version, a.partition, a.owner, a.kind, a.provider, a.currency
    FROM accounts a
    JOIN unnest($3::smallint[], $4::bigint[]) AS k (partition, id)
      ON (a.partition, a.id) = (k.partition, k.id)";

/// The platform account's id, and whether this transaction created it. `ON CONFLICT DO NOTHING`
/// takes no lock on an existing row, so replicas never wait for each other here.
const PLATFORM_ACCOUNT: &str = "
    WITH created AS (
        INSERT INTO accounts (partition, owner, kind, provider, currency)
        VALUES ($1, '', 'platform', $2, $3)
        ON CONFLICT DO NOTHING RETURNING id)
    SELECT id, true FROM created
    UNION ALL
    SELECT id, false FROM accounts
    WHERE partition = $1 AND owner = '' AND kind = 'platform' AND provider = $2 AND currency = $3";

impl Ledger {
    /// Resolved in the caller's transaction (a second connection could wait on a pool the
    /// transaction itself exhausts), and whether it was remembered (to be checked when the user
    /// wallets are locked). Only an id that was already committed is remembered: one this
    /// transaction created vanishes if it rolls back.
    async fn platform_id(
        &self,
        tx: &Transaction<'_>,
        key: &WalletKey,
    ) -> Result<(i64, bool), StepError> {
        if let Some(id) = self
            .platform_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok((*id, true));
        }
        let statement = tx.prepare_cached(PLATFORM_ACCOUNT).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [
            &key.partition.as_smallint(),
            &key.provider,
            &key.currency.code(),
        ];
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
        Ok((id, false))
    }

    /// The database was reset, restored or recreated under this process: what it remembers of the
    /// wallets is forgotten, and the batch is retried (transient) against what is there now.
    fn forget(&self, what: String) -> StepError {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.platform_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        StepError::transient(format!("ledger: {what}"))
    }

    /// Creates the missing wallets among `keys` (in key order) and locks the user wallets (in id
    /// order).
    pub async fn open(
        &self,
        tx: &Transaction<'_>,
        keys: impl IntoIterator<Item = WalletKey>,
    ) -> Result<Book, StepError> {
        let (platform, users): (HashSet<WalletKey>, HashSet<WalletKey>) =
            keys.into_iter().partition(WalletKey::is_platform);
        let mut slots = HashMap::with_capacity(platform.len() + users.len());
        // Created in key order too: two transactions creating the same new platform accounts
        // must not wait for each other in opposite orders.
        let mut platform: Vec<WalletKey> = platform.into_iter().collect();
        platform.sort();
        // Remembered platform ids, checked with the lock below like the user wallets' ids.
        let mut remembered: HashMap<i64, WalletKey> = HashMap::default();
        for key in platform {
            let (id, was_remembered) = self.platform_id(tx, &key).await?;
            if was_remembered {
                remembered.insert(id, key.clone());
            }
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
        if users.is_empty() && remembered.is_empty() {
            return Ok(Book {
                slots,
                postings: Vec::new(),
            });
        }
        let mut ids: HashMap<i64, WalletKey> = HashMap::with_capacity(users.len());
        let mut unknown: Vec<WalletKey> = Vec::new();
        {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for key in users {
                match known.get(&key) {
                    Some(id) => {
                        ids.insert(*id, key);
                    }
                    None => unknown.push(key),
                }
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            let partitions: Vec<i16> = unknown.iter().map(|k| k.partition.as_smallint()).collect();
            let mut c: [Vec<&str>; 4] = Default::default();
            for k in &unknown {
                c[0].push(k.owner.as_str());
                c[1].push(k.kind.as_str());
                c[2].push(k.provider.as_str());
                c[3].push(k.currency.code());
            }
            let [o, k, p, c] = &c;
            let columns: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&partitions, o, k, p, c];
            let created: HashSet<i64> = tx
                .query(&tx.prepare_cached(CREATE_WALLETS).await?, &columns)
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let rows = tx
                .query(&tx.prepare_cached(WALLET_IDS).await?, &columns)
                .await?;
            if rows.len() != unknown.len() {
                return Err(StepError::transient(format!(
                    "ledger: {} of {} new wallets not found after creating them",
                    unknown.len() - rows.len(),
                    unknown.len()
                )));
            }
            let mut unknown: Vec<Option<WalletKey>> = unknown.into_iter().map(Some).collect();
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() + rows.len() > KNOWN_WALLETS {
                known.clear();
            }
            for row in rows {
                let (id, n): (i64, i64) = (row.get(0), row.get(1));
                let key = usize::try_from(n - 1)
                    .ok()
                    .and_then(|i| unknown.get_mut(i))
                    .and_then(Option::take)
                    .ok_or_else(|| StepError::permanent(format!("ledger: unexpected row {n}")))?;
                // Only a wallet that existed before this transaction is remembered: one created
                // here vanishes if the transaction rolls back.
                if !created.contains(&id) {
                    known.insert(key.clone(), id);
                }
                ids.insert(id, key);
            }
        }
        let (users, platform) = (by_id(&ids), by_id(&remembered));
        let rows = tx
            .query(
                &tx.prepare_cached(LOCK_WALLETS).await?,
                &[&users.0, &users.1, &platform.0, &platform.1],
            )
            .await?;
        let expected = users.1.len() + platform.1.len();
        if rows.len() != expected {
            // Only a wallet believed to exist can be missing.
            return Err(self.forget(format!(
                "{} of {expected} wallets not found",
                expected - rows.len(),
            )));
        }
        for row in rows {
            let id: i64 = row.get(0);
            let (key, user) = match ids.remove(&id) {
                Some(key) => (key, true),
                None => (
                    remembered.remove(&id).ok_or_else(|| {
                        StepError::permanent(format!("ledger: unexpected wallet {id}"))
                    })?,
                    false,
                ),
            };
            let (partition, owner, kind, provider, currency): (i16, &str, &str, &str, &str) =
                (row.get(3), row.get(4), row.get(5), row.get(6), row.get(7));
            if (partition, owner, kind, provider, currency)
                != (
                    key.partition.as_smallint(),
                    key.owner.as_str(),
                    key.kind.as_str(),
                    key.provider.as_str(),
                    key.currency.code(),
                )
            {
                return Err(self.forget(format!("wallet {id} is no longer {key:?}")));
            }
            if !user {
                // A platform slot's balance is the transaction's sum to it, already there.
                continue;
            }
            slots.insert(
                key,
                Slot {
                    id,
                    balance: row.get(1),
                    version: row.get(2),
                    dirty: false,
                },
            );
        }
        Ok(Book {
            slots,
            postings: Vec::new(),
        })
    }
}

/// The wallets' partitions and ids, in id order, as [`LOCK_WALLETS`] takes them.
fn by_id(wallets: &HashMap<i64, WalletKey>) -> (Vec<i16>, Vec<i64>) {
    let mut ids: Vec<(i64, i16)> = wallets
        .iter()
        .map(|(id, key)| (*id, key.partition.as_smallint()))
        .collect();
    ids.sort_unstable();
    ids.into_iter().map(|(id, p)| (p, id)).unzip()
}
