//! Following a run's commands to their outcomes.
//!
//! The publisher stamps each command's send time in [`SendTimes`]; the [`Tracker`] reads the
//! outcome events (`wallet.events.>`) and the dead letters (`dlq.>`) of the namespace, keeps the
//! first terminal outcome of each command of the run, checks it against what the [`Plan`] says it
//! must be, records its publish-to-outcome latency, and books the money each accepted command
//! moves, so that the verifier can compare PostgreSQL with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::plan::{Expect, FUNDING, Kind, Outcome, Plan, cents};

/// Send times in units of 10 µs since the run's start, plus one (0: not sent); a fixed array so
/// that the publisher and the tracker share it without a lock.
#[derive(Debug)]
pub struct SendTimes {
    start: Instant,
    times: Box<[AtomicU32]>,
}

impl SendTimes {
    pub fn new(capacity: usize) -> Self {
        Self {
            start: Instant::now(),
            times: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.times.len()
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn now(&self) -> u32 {
        (self.start.elapsed().as_micros() / 10) as u32 + 1
    }

    pub fn stamp(&self, i: u64) {
        self.times[i as usize].store(self.now(), Ordering::Relaxed);
    }

    /// Microseconds since command `i` was sent; `None` if it was not.
    fn since(&self, i: u64) -> Option<u64> {
        let t = self.times.get(i as usize)?.load(Ordering::Relaxed);
        (t > 0).then(|| u64::from(self.now().saturating_sub(t)) * 10)
    }
}

/// Counters the progress bar reads while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub finished: AtomicU64,
    pub lag: AtomicU64,
}

/// A wallet of the run: owner, kind, provider.
pub type WalletKey = (String, &'static str, &'static str);

/// What the run's outcomes said.
#[derive(Debug)]
pub struct Tracker {
    plan: Arc<Plan>,
    times: Arc<SendTimes>,
    live: Arc<Live>,
    outcomes: Vec<u8>,
    pub latency: BTreeMap<Kind, Histogram<u64>>,
    /// Terminal outcomes by kind, outcome and reason (rejections only).
    pub counts: BTreeMap<(Kind, Outcome, Option<String>), u64>,
    /// Outcomes that are not the one the plan expects (a sample, with the total).
    pub unexpected: (u64, Vec<String>),
    /// Commands that reached two different terminal outcomes.
    pub conflicting: (u64, Vec<String>),
    /// The same terminal outcome seen again, and dead letters of duplicate copies.
    pub repeats: u64,
    /// Microseconds from the start to the last first outcome.
    pub last_outcome: u64,
    /// The balance each wallet of the run must have, from the outcomes.
    pub balances: HashMap<WalletKey, Decimal>,
}

const SAMPLE: usize = 10;

fn note(slot: &mut (u64, Vec<String>), what: String) {
    slot.0 += 1;
    if slot.1.len() < SAMPLE {
        slot.1.push(what);
    }
}

impl Tracker {
    pub fn new(plan: Arc<Plan>, times: Arc<SendTimes>, live: Arc<Live>) -> Self {
        let latency = plan
            .mix
            .kinds()
            .map(|k| {
                (
                    k,
                    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
                )
            })
            .collect();
        let mut balances = HashMap::new();
        if plan.mix.kinds().any(Kind::spends) {
            for user in plan.all_users() {
                balances.insert((user, "main", ""), FUNDING.parse().expect("a decimal"));
            }
        }
        Self {
            outcomes: vec![0; times.capacity()],
            plan,
            times,
            live,
            latency,
            counts: BTreeMap::new(),
            unexpected: (0, Vec::new()),
            conflicting: (0, Vec::new()),
            repeats: 0,
            last_outcome: 0,
            balances,
        }
    }

    /// Subscribes to the namespace's events and dead letters (only what is stored from now on)
    /// and returns a task that records outcomes until `stop`.
    pub async fn start(
        mut self,
        js: &jetstream::Context,
        stop: CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Self>>> {
        let names = &self.plan.names;
        let new = || consumer::DeliverPolicy::New;
        let mut events =
            wallet_client::follow(js, names, "WALLET_EVENTS", "wallet.events.>", new()).await?;
        let mut dead = wallet_client::follow(js, names, "DLQ", "dlq.>", new()).await?;
        // The followers wait out lost connections and restarted servers themselves; what they
        // could never deliver shows as missing outcomes in the verification.
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(self),
                    m = events.next() => match m {
                        Some(m) => self.event(&m),
                        None => anyhow::bail!("the events follower ended"),
                    },
                    m = dead.next() => match m {
                        Some(m) => self.dead_letter(&m),
                        None => anyhow::bail!("the dead-letter follower ended"),
                    },
                }
            }
        }))
    }

    /// An event: `Nats-Msg-Id` is `<entity>:<id>:<status>`, so only a rejection (for its
    /// reason), a grant and a completed transfer in (for their amounts) are parsed.
    fn event(&mut self, m: &async_nats::jetstream::Message) {
        let Some(msg_id) = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) else {
            return;
        };
        let msg_id = msg_id.as_str();
        let (Some((_, rest)), Some((_, status))) =
            (msg_id.split_once(':'), msg_id.rsplit_once(':'))
        else {
            return;
        };
        let id = &rest[..rest.len() - status.len() - 1];
        let Some((kind, i)) = self.plan.index(id) else {
            return;
        };
        let Some(outcome) = Outcome::from_status(status) else {
            return;
        };
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            reason: Option<&'a str>,
            #[serde(borrow)]
            amount: Option<&'a str>,
        }
        let body = match (kind, outcome) {
            (_, Outcome::Rejected | Outcome::Granted) | (Kind::TransferIn, Outcome::Completed) => {
                serde_json::from_slice::<Body>(&m.payload).ok()
            }
            _ => None,
        };
        let reason = body.as_ref().and_then(|b| b.reason);
        let amount = body
            .as_ref()
            .and_then(|b| b.amount)
            .and_then(|a| a.parse().ok());
        self.record(kind, i, outcome, reason, amount);
    }

    fn dead_letter(&mut self, m: &async_nats::jetstream::Message) {
        let Some(id) = m.headers.as_ref().and_then(|h| h.get("Wallet-Dlq-Msg-Id")) else {
            return;
        };
        let id = id.as_str();
        if let Some(original) = id.strip_suffix(crate::DUPLICATE_SUFFIX) {
            if self.plan.index(original).is_some() {
                self.repeats += 1;
            }
            return;
        }
        if let Some((kind, i)) = self.plan.index(id) {
            self.record(kind, i, Outcome::DeadLettered, Some("malformed"), None);
        }
    }

    fn record(
        &mut self,
        kind: Kind,
        i: u64,
        outcome: Outcome,
        reason: Option<&str>,
        amount: Option<Decimal>,
    ) {
        let Some(slot) = self.outcomes.get_mut(i as usize) else {
            return;
        };
        let code = outcome as u8 + 1;
        if *slot != 0 {
            if *slot == code {
                self.repeats += 1;
            } else {
                let id = self.plan.id(kind, i);
                let first = Outcome::from_code(*slot - 1);
                note(
                    &mut self.conflicting,
                    format!("{id}: {first} then {outcome}"),
                );
            }
            return;
        }
        *slot = code;
        self.live.finished.fetch_add(1, Ordering::Relaxed);
        if let Some(us) = self.times.since(i)
            && let Some(h) = self.latency.get_mut(&kind)
        {
            let _ = h.record(us.max(1));
        }
        self.last_outcome = self.times.start().elapsed().as_micros() as u64;
        let expect = self.plan.expect(i);
        if !expect.admits(outcome, reason) {
            let want = match expect {
                Expect::Exactly(o, r) => format!("{} {}", o.as_str(), r.unwrap_or_default()),
                Expect::Final => "completed or failed".into(),
                Expect::GrantedOrExhausted => "granted or campaign_exhausted".into(),
            };
            let id = self.plan.id(kind, i);
            note(
                &mut self.unexpected,
                format!(
                    "{id}: {} {}, expected {want}",
                    outcome.as_str(),
                    reason.unwrap_or_default()
                ),
            );
        }
        let reason = (outcome == Outcome::Rejected).then(|| reason.unwrap_or_default().to_owned());
        *self.counts.entry((kind, outcome, reason)).or_default() += 1;
        self.book(kind, i, outcome, amount);
    }

    /// The money an accepted command moves.
    fn book(&mut self, kind: Kind, i: u64, outcome: Outcome, amount: Option<Decimal>) {
        let cents = |c: u64| -> Decimal { cents(c).parse().expect("a decimal") };
        let mut add = |key: WalletKey, d: Decimal| *self.balances.entry(key).or_default() += d;
        match (kind, outcome) {
            (Kind::Deposit, Outcome::Completed) => add(
                (self.plan.user(i), "main", ""),
                cents(self.plan.deposit_cents(i)),
            ),
            (Kind::Transfer, Outcome::Completed) => {
                let amount = cents(self.plan.transfer_cents(i));
                add((self.plan.user(i), "main", ""), -amount);
                add((self.plan.user(i), "game", self.plan.provider(i)), amount);
            }
            (Kind::Bonus, Outcome::Granted) => {
                let user = format!("{}-g{i}", self.plan.run);
                add((user, "bonus", ""), amount.unwrap_or_default());
            }
            (Kind::Withdraw, Outcome::Completed) => add(
                (self.plan.user(i), "main", ""),
                -cents(self.plan.withdraw_cents(i)),
            ),
            // What the game wallet gave up depends on when the answer was applied: the audit
            // checks game wallets against the transfers' rows.
            (Kind::TransferIn, Outcome::Completed) => {
                add((self.plan.user(i), "main", ""), amount.unwrap_or_default())
            }
            _ => {}
        }
    }

    /// Commands sent (of the first `sent`) with no outcome yet.
    pub fn missing(&self, sent: u64) -> Vec<String> {
        (0..sent)
            .filter(|&i| self.outcomes.get(i as usize) == Some(&0))
            .map(|i| self.plan.id(self.plan.kind(i), i))
            .collect()
    }

    /// Every outcome of the run, one histogram.
    pub fn all_latency(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        for h in self.latency.values() {
            let _ = all.add(h);
        }
        all
    }
}
