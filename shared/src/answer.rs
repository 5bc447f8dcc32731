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

use crate::function::{Outcome, Payload};
use crate::text;

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
mod tests {
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
