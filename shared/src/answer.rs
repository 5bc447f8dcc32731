//! Answers that finish a saga: a game provider's ack of a transfer, a payment provider's answer
//! to a payout. A saga's first step records a row and asks someone outside; its answer, arriving
//! any number of times and in any order, must finish it once.
//!
//! Guarantee: for each saga the first answer (of the row, or earlier in the same batch) decides.
//! An answer that agrees with it is a repeat with no effect; one that contradicts it is a
//! conflict, dead-lettered for an operator, never applied. An answer for a saga nobody has
//! recorded yet (it may still be committing) is retried with growing delays, then dead-lettered.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use rust_decimal::Decimal;

use crate::context::Context;
use crate::error::StepError;
use crate::events::{Event, Status};
use crate::function::{Command, Outcome, Payload, Transaction};
use crate::money::Currency;
use crate::text;
use crate::wallet::WalletKey;

/// Dead-letter reason: an answer contradicting how its saga already ended.
pub const ACK_CONFLICT: &str = "ack_conflict";
/// Dead-letter reason: an answer from another provider than the one the saga asked.
pub const PROVIDER_MISMATCH: &str = "provider_mismatch";

/// What an answer does to the saga it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The saga is still open: this answer finishes it.
    Settle,
    /// It ended as this answer says: nothing to do.
    Repeat,
    /// It ended the other way.
    Conflict,
}

/// The answers of one batch, judged in order: a later answer for the same saga sees what an
/// earlier one decided, though neither is committed yet.
#[derive(Debug, Default)]
pub struct Answers<'a> {
    settled: HashMap<&'a str, bool>,
}

impl<'a> Answers<'a> {
    /// `ended`: how the saga's row says it ended (`Some(true)` the positive way: accepted,
    /// paid), `None` while it is open; `positive`: what this answer says.
    pub fn judge(&mut self, id: &'a str, ended: Option<bool>, positive: bool) -> Verdict {
        match self.settled.get(id).copied().or(ended) {
            Some(ended) if ended == positive => Verdict::Repeat,
            Some(_) => Verdict::Conflict,
            None => {
                self.settled.insert(id, positive);
                Verdict::Settle
            }
        }
    }
}

/// A saga's row, as its answers see it.
pub trait SagaRow {
    /// The partner it asked.
    fn partner(&self) -> &str;
    /// How it ended: `Some(true)` the positive way (accepted, paid), `None` while it is open.
    fn ended(&self) -> Option<bool>;
}

/// An answer, as [`decide`] sees it.
pub trait Answer {
    /// The partner that sent it (its subject's token).
    fn partner(&self) -> &str;
    /// Whether it says the positive thing (accepted, paid).
    fn positive(&self) -> bool;
}

/// Decides a batch's answers in order, against their sagas' locked `rows` (by saga id): one for a
/// saga nobody knows is retried for `unknown_window`, then dead-lettered `unknown_reason`
/// ([`unknown`]); one from another
/// partner is dead-lettered [`PROVIDER_MISMATCH`]; a repeat is done; a conflict is dead-lettered
/// [`ACK_CONFLICT`]; `settle` ends each of the others, or gives the outcome that replaces its
/// ending (a dead letter for an answer it cannot apply). Returns the outcomes decided (`None`
/// where an ending will decide) and the endings, for [`end`].
#[allow(clippy::type_complexity)] // The two halves [`end`] takes.
pub fn decide<'a, A: Answer, R: SagaRow>(
    unknown_window: Duration,
    commands: &'a [&'a Command<A>],
    rows: &'a HashMap<String, R>,
    unknown_reason: &'static str,
    mut settle: impl FnMut(
        usize,
        &'a Command<A>,
        &'a R,
    ) -> Result<Result<Ending<'a>, Outcome>, StepError>,
) -> Result<(Vec<Option<Outcome>>, Vec<Ending<'a>>), StepError> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(commands.len());
    let mut endings = Vec::new();
    let mut answers = Answers::default();
    for (index, command) in commands.iter().enumerate() {
        let answer = &command.body;
        let Some(row) = rows.get(&command.id) else {
            outcomes.push(Some(unknown(
                command.stored_at,
                unknown_window,
                unknown_reason,
            )));
            continue;
        };
        if row.partner() != answer.partner() {
            outcomes.push(Some(Outcome::DeadLetter(PROVIDER_MISMATCH)));
            continue;
        }
        outcomes.push(
            match answers.judge(&command.id, row.ended(), answer.positive()) {
                // A repeat that dedup could not see (it was finished under this very key).
                Verdict::Repeat => Some(Outcome::Done(Vec::new())),
                Verdict::Conflict => Some(Outcome::DeadLetter(ACK_CONFLICT)),
                Verdict::Settle => match settle(index, command, row)? {
                    Ok(ending) => {
                        endings.push(ending);
                        None
                    }
                    // It settled nothing: a later answer in the batch still may.
                    Err(outcome) => {
                        answers.settled.remove(command.id.as_str());
                        Some(outcome)
                    }
                },
            },
        );
    }
    Ok((outcomes, endings))
}

/// An answer for a saga nobody knows: retried with delays that double with its age (1 s to
/// 30 s), until `window` after its first delivery (`stored_at`); then dead-lettered `reason`.
pub fn unknown(stored_at: SystemTime, window: Duration, reason: &'static str) -> Outcome {
    let age = SystemTime::now()
        .duration_since(stored_at)
        .unwrap_or_default();
    let left = window.saturating_sub(age);
    if left < Duration::from_millis(100) {
        return Outcome::DeadLetter(reason);
    }
    let delay = age.clamp(Duration::from_secs(1), Duration::from_secs(30));
    Outcome::Retry {
        after: delay.min(left),
        reason,
    }
}

/// An answer that ends its saga: money leaves the parked wallet `from` (as `take` says) and
/// `amount` arrives at `to` (a user wallet, or a platform account when the money leaves the
/// platform).
#[derive(Debug)]
pub struct Ending<'a> {
    /// The answer's place in its batch.
    pub index: usize,
    /// Its posting's command: `<function>:<dedup key>`.
    pub posting: String,
    pub from: WalletKey,
    pub take: Take,
    pub to: WalletKey,
    pub amount: Decimal,
    /// Its outcome event; [`end`] sets the balance.
    pub event: Event,
    /// The saga's row: its id, its final status, the partner's reference and reason.
    pub id: &'a str,
    pub status: Status,
    pub reference: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// What leaves the parked wallet.
#[derive(Debug)]
pub enum Take {
    /// Exactly the ending's amount: the parked wallet holds it (a bug otherwise).
    Amount,
    /// What the parked wallet holds, at most `up_to` (`None`: all of it), however much that is;
    /// `difference`, a platform account, balances it against the amount (a transfer in: the
    /// provider returns what the player won or lost, the game wallet gives up what it held).
    Held {
        up_to: Option<Decimal>,
        difference: WalletKey,
    },
}

/// Posts every ending in one book, then runs `finish` over their rows (`$1` ids, `$2` statuses,
/// `$3` references, `$4` reasons, `$5` the amounts that arrived, `$6` the amounts taken from the
/// parked wallets; it may leave out those it has no use for), in the batch's transaction. Returns the batch's outcomes: each ending's at
/// its index, `decided` for the others (a repeat without an outcome of its own is done). An
/// event's balance is the wallet the money went to, or the parked wallet when it left the
/// platform. A leg of zero is not posted.
pub async fn end(
    ctx: &Context,
    tx: &Transaction<'_>,
    endings: Vec<Ending<'_>>,
    finish: &str,
    mut decided: Vec<Option<Outcome>>,
) -> Result<Vec<Outcome>, StepError> {
    let keys = endings.iter().flat_map(|e| {
        let difference = match &e.take {
            Take::Amount => None,
            Take::Held { difference, .. } => Some(difference.clone()),
        };
        [Some(e.from.clone()), Some(e.to.clone()), difference]
            .into_iter()
            .flatten()
    });
    let mut book = ctx.ledger.open(tx, keys).await?;
    let mut rows = Finished::default();
    for e in endings {
        let taken = match &e.take {
            Take::Amount => e.amount,
            Take::Held { up_to, .. } => {
                let held = book.balance(&e.from).ok_or_else(|| {
                    StepError::permanent(format!("{}: wallet not opened", e.posting))
                })?;
                up_to.map_or(held, |cap| held.min(cap))
            }
        };
        let mut legs = vec![(&e.from, -taken), (&e.to, e.amount)];
        if let Take::Held { difference, .. } = &e.take {
            legs.push((difference, taken - e.amount));
        }
        legs.retain(|(_, amount)| !amount.is_zero());
        // Refused only by a bug (a parked wallet below its saga's amount) or by a wallet at its
        // currency's limit: the answer waits in the dead letters for an operator.
        book.post(&e.posting, &legs)?.map_err(|refused| {
            StepError::permanent(format!(
                "{}: refused by the ledger ({})",
                e.posting,
                refused.reason().as_str()
            ))
        })?;
        let snapshot = |key: &WalletKey| {
            book.snapshot(key)
                .ok_or_else(|| StepError::permanent(format!("{}: wallet not opened", e.posting)))
        };
        let mut wallets = vec![snapshot(&e.from)?];
        if !e.to.is_platform() {
            wallets.push(snapshot(&e.to)?);
        }
        let balance = wallets.last().map(|w| w.balance.clone());
        let event = Event { balance, ..e.event };
        decided[e.index] = Some(Outcome::Done(vec![event.into_outbox(wallets)]));
        rows.ids.push(e.id);
        rows.statuses.push(e.status.as_str());
        rows.references.push(e.reference);
        rows.reasons.push(e.reason);
        rows.amounts.push(e.amount);
        rows.taken.push(taken);
    }
    book.write(tx).await?;
    if !rows.ids.is_empty() {
        let Finished {
            ids,
            statuses,
            references,
            reasons,
            amounts,
            taken,
        } = &rows;
        // Typed, so that a finish may leave out the columns its table has no place for.
        use tokio_postgres::types::Type;
        let (text, numeric) = (Type::TEXT_ARRAY, Type::NUMERIC_ARRAY);
        let finish = tx
            .prepare_typed_cached(
                finish,
                &[
                    text.clone(),
                    text.clone(),
                    text.clone(),
                    text,
                    numeric.clone(),
                    numeric,
                ],
            )
            .await?;
        tx.execute(
            &finish,
            &[ids, statuses, references, reasons, amounts, taken],
        )
        .await?;
    }
    Ok(decided
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Done(Vec::new())))
        .collect())
}

/// The columns of the rows [`end`] finishes.
#[derive(Debug, Default)]
struct Finished<'a> {
    ids: Vec<&'a str>,
    statuses: Vec<&'static str>,
    references: Vec<Option<&'a str>>,
    reasons: Vec<Option<&'a str>>,
    amounts: Vec<Decimal>,
    taken: Vec<Decimal>,
}

/// The currency of a saga's row, which must still be configured (a row in a currency taken out
/// of `WALLET_CURRENCIES` cannot be settled: a bug of the deployment, not of the answer).
pub fn currency(ctx: &Context, id: &str, code: &str) -> Result<Currency, StepError> {
    ctx.config.currencies.get(code).ok_or_else(|| {
        StepError::permanent(format!("{id}: currency {code} is no longer configured"))
    })
}

/// Who answered on `subject` (unprefixed): `alpha` for `provider.alpha.ack` under `provider`,
/// bare or on the partition its request named (`provider.alpha.ack.144`, CONTRACT §3); `None`
/// for any other subject.
pub fn answerer<'s>(subject: &'s str, prefix: &str) -> Option<&'s str> {
    match subject.split('.').collect::<Vec<_>>()[..] {
        [p, who, "ack"] | [p, who, "ack", _] if p == prefix => Some(who),
        _ => None,
    }
}

/// An answer's free-text field (the provider's reference, its reason), kept as the provider sent
/// it but for control characters ([`text::printable`]); a value that is not a string is kept as
/// JSON text; null or missing is `None`.
pub fn free_text(p: &Payload, field: &str) -> Option<String> {
    p.get(field)
        .filter(|v| !v.is_null())
        .map(|v| match v.as_str() {
            Some(s) => text::printable(s).into_owned(),
            None => text::printable(&v.to_string()).into_owned(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn an_answer_names_who_answered_bare_or_on_its_partition() {
        use super::answerer;
        assert_eq!(answerer("provider.alpha.ack", "provider"), Some("alpha"));
        assert_eq!(
            answerer("provider.alpha.ack.144", "provider"),
            Some("alpha")
        );
        assert_eq!(answerer("payout.bank.ack.7", "payout"), Some("bank"));
        assert_eq!(answerer("payout.bank.ack", "provider"), None);
        assert_eq!(answerer("provider.alpha.transfer", "provider"), None);
        assert_eq!(answerer("provider.alpha.ack.1.2", "provider"), None);
    }

    use super::*;

    #[test]
    fn the_first_answer_decides_and_later_ones_repeat_or_conflict() {
        let mut a = Answers::default();
        assert_eq!(a.judge("t1", None, true), Verdict::Settle);
        assert_eq!(a.judge("t1", None, true), Verdict::Repeat, "same batch");
        assert_eq!(a.judge("t1", None, false), Verdict::Conflict, "same batch");
        assert_eq!(a.judge("t2", Some(false), false), Verdict::Repeat);
        assert_eq!(a.judge("t2", Some(false), true), Verdict::Conflict);
        assert_eq!(a.judge("t3", None, false), Verdict::Settle);
    }

    struct Row(&'static str, Option<bool>);
    impl SagaRow for Row {
        fn partner(&self) -> &str {
            self.0
        }
        fn ended(&self) -> Option<bool> {
            self.1
        }
    }
    struct Said(&'static str, bool);
    impl Answer for Said {
        fn partner(&self) -> &str {
            self.0
        }
        fn positive(&self) -> bool {
            self.1
        }
    }

    /// Every way an answer ends, in one batch; an answer `settle` refuses settles nothing, so the
    /// next one for its saga still does.
    #[test]
    fn a_batch_of_answers_is_decided_in_order() {
        let rows: HashMap<String, Row> = [
            ("open", Row("alpha", None)),
            ("done", Row("alpha", Some(true))),
            ("other", Row("beta", None)),
        ]
        .into_iter()
        .map(|(id, r)| (id.to_owned(), r))
        .collect();
        let commands: Vec<Command<Said>> = [
            ("nobody", Said("alpha", true)),
            ("other", Said("alpha", true)),
            ("done", Said("alpha", true)),
            ("done", Said("alpha", false)),
            ("open", Said("alpha", true)),
            ("open", Said("alpha", true)),
            ("open", Said("alpha", false)),
        ]
        .into_iter()
        .map(|(id, body)| Command {
            id: id.to_owned(),
            key: id.to_owned(),
            body,
            stored_at: SystemTime::now(),
        })
        .collect();
        let commands: Vec<&Command<Said>> = commands.iter().collect();
        let mut settled = Vec::new();
        let mut refused_once = false;
        let (outcomes, endings) = decide(
            Duration::from_secs(60),
            &commands,
            &rows,
            "unknown_x",
            |index, command, _| {
                if !refused_once {
                    refused_once = true;
                    return Ok(Err(Outcome::DeadLetter("refused")));
                }
                settled.push(index);
                let usd = crate::money::Currencies::default().get("USD").unwrap();
                let wallet = WalletKey::main("u-1", usd);
                Ok(Ok(Ending {
                    index,
                    posting: format!("test:{}", command.key),
                    from: wallet.clone(),
                    take: Take::Amount,
                    to: wallet,
                    amount: Decimal::ONE,
                    event: Event::new("x", &command.id, Status::COMPLETED),
                    id: &command.id,
                    status: Status::COMPLETED,
                    reference: None,
                    reason: None,
                }))
            },
        )
        .unwrap();
        assert_eq!(endings.len(), 1);
        let shown: Vec<String> = outcomes
            .iter()
            .map(|o| match o {
                Some(Outcome::Retry { reason, .. }) => format!("retry {reason}"),
                Some(Outcome::DeadLetter(r)) => format!("dead letter {r}"),
                Some(Outcome::Done(m)) => format!("done {}", m.len()),
                None => "ending".into(),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "retry unknown_x",
                "dead letter provider_mismatch",
                "done 0",
                "dead letter ack_conflict",
                "dead letter refused",
                "ending",
                "dead letter ack_conflict",
            ]
        );
        // The refused answer settled nothing: the next one settled, and the last, its
        // contradiction, was judged by it.
        assert_eq!(settled, [5]);
    }

    #[test]
    fn an_unknown_saga_is_retried_then_dead_lettered() {
        let window = Duration::from_secs(120);
        let now = SystemTime::now();
        match unknown(now, window, "unknown_x") {
            Outcome::Retry { after, reason } => {
                assert_eq!((after, reason), (Duration::from_secs(1), "unknown_x"));
            }
            o => panic!("{o:?}"),
        }
        match unknown(now - Duration::from_secs(110), window, "unknown_x") {
            Outcome::Retry { after, .. } => assert!(after <= Duration::from_secs(10), "{after:?}"),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            unknown(now - window, window, "unknown_x"),
            Outcome::DeadLetter("unknown_x")
        ));
    }
}
