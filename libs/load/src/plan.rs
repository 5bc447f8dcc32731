//! What a load run sends: command `i` of a run, and the outcome it must have.
//!
//! Everything about a command — its kind, user, amount, whether it is malformed or gets a
//! duplicate — is a pure function of the run's seed and the command's index, so the publisher
//! builds each payload when it sends it (nothing is held per command) and the verifier knows what
//! each command must become without being told.

use std::fmt;

use serde::{Deserialize, Serialize};
use wallet_client::Message;
use wallet_runtime::partition;

pub use crate::mix::{Kind, Mix};

/// How a command is broken, when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Well formed.
    No,
    /// Not JSON: dead-lettered `malformed`.
    NotJson,
    /// A valid id with an invalid field: rejected (`invalid_amount`; a grant `invalid_user_id`).
    InvalidField,
}

/// The outcome a command must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Failed,
    Granted,
    Rejected,
    DeadLettered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Granted => "granted",
            Outcome::Rejected => "rejected",
            Outcome::DeadLettered => "dead_lettered",
        }
    }

    pub const ALL: [Outcome; 5] = [
        Outcome::Completed,
        Outcome::Failed,
        Outcome::Granted,
        Outcome::Rejected,
        Outcome::DeadLettered,
    ];

    /// The outcome whose discriminant is `code`.
    pub fn from_code(code: u8) -> Self {
        Self::ALL[usize::from(code).min(Self::ALL.len() - 1)]
    }

    /// The terminal outcome an event status stands for; `None` for `pending` and `stuck`.
    pub fn from_status(status: &str) -> Option<Self> {
        Some(match status {
            // A withdrawal ends `paid` or `declined`: completed or failed, as a transfer.
            "completed" | "paid" => Outcome::Completed,
            "failed" | "declined" => Outcome::Failed,
            "granted" => Outcome::Granted,
            "rejected" => Outcome::Rejected,
            _ => return None,
        })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a command must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this outcome (and, for a rejection, this reason).
    Exactly(Outcome, Option<&'static str>),
    /// A provider other than this run decides: completed or failed.
    Final,
    /// A grant races for the budget: granted, or rejected `campaign_exhausted`.
    GrantedOrExhausted,
}

impl Expect {
    pub fn admits(self, outcome: Outcome, reason: Option<&str>) -> bool {
        match self {
            Expect::Exactly(o, r) => o == outcome && (r.is_none() || r == reason),
            Expect::Final => matches!(outcome, Outcome::Completed | Outcome::Failed),
            Expect::GrantedOrExhausted => {
                outcome == Outcome::Granted
                    || (outcome == Outcome::Rejected && reason == Some("campaign_exhausted"))
            }
        }
    }
}

/// The generator of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run: String,
    pub mix: Mix,
    pub users: usize,
    pub seed: u64,
    pub duplicates: f64,
    pub malformed: f64,
    pub campaign: String,
    /// The simulated providers' acceptance ratio when this run plays them; `None` when it does not.
    pub providers: Option<provider_sim::SimOptions>,
    pub names: wallet_runtime::names::Names,
}

/// The grant amount of a load campaign.
pub const GRANT_AMOUNT: &str = "1.00";
/// Each user's funding before transfers start: far more than any run transfers.
pub const FUNDING: &str = "1000000.00";

impl Plan {
    /// A number in [0, 1) fixed by the seed, the aspect and the index (splitmix64).
    fn draw(&self, aspect: u64, i: u64) -> f64 {
        let mut z = self
            .seed
            .wrapping_add(aspect.wrapping_mul(0xD1B5_4A32_D192_ED03))
            .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn kind(&self, i: u64) -> Kind {
        self.mix.pick(self.draw(1, i))
    }

    pub fn broken(&self, i: u64) -> Broken {
        if self.malformed > 0.0 && self.draw(2, i) < self.malformed {
            if i.is_multiple_of(2) {
                Broken::NotJson
            } else {
                Broken::InvalidField
            }
        } else {
            Broken::No
        }
    }

    /// Whether command `i` is sent a second time, under another `Nats-Msg-Id` (as a copy
    /// arriving after JetStream's duplicate window would be).
    pub fn duplicated(&self, i: u64) -> bool {
        self.duplicates > 0.0 && self.draw(3, i) < self.duplicates
    }

    /// Ids sort in the order they are sent (a zero-padded sequence, like a ULID or UUIDv7), so
    /// the dedup index grows at its right edge. Random ids would spread its inserts over the whole
    /// index: past `shared_buffers`, each would read and dirty a page of its own (measured: the
    /// peak profile's transactions took twice as long after 2.5 minutes).
    pub fn id(&self, kind: Kind, i: u64) -> String {
        format!("{}-{}{i:010}", self.run, kind.letter())
    }

    /// The index of a command id of this run.
    pub fn index(&self, id: &str) -> Option<(Kind, u64)> {
        let rest = id.strip_prefix(self.run.as_str())?.strip_prefix('-')?;
        let mut chars = rest.chars();
        let kind = Kind::from_letter(chars.next()?)?;
        Some((kind, chars.as_str().parse().ok()?))
    }

    pub fn user(&self, i: u64) -> String {
        format!(
            "{}-u{}",
            self.run,
            (self.draw(4, i) * self.users as f64) as usize
        )
    }

    /// The users transfers draw from (all of them: any may transfer).
    pub fn all_users(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.users).map(|u| format!("{}-u{u}", self.run))
    }

    /// A grant's user: each grant comes from its own user, as a crowd grabbing red envelopes.
    fn grant_user(&self, i: u64) -> String {
        format!("{}-g{i}", self.run)
    }

    /// A deposit's amount in cents: 1.00 to 9.99.
    pub fn deposit_cents(&self, i: u64) -> u64 {
        100 + (self.draw(5, i) * 900.0) as u64
    }

    /// A transfer's amount in cents: 0.01 to 5.00.
    pub fn transfer_cents(&self, i: u64) -> u64 {
        1 + (self.draw(5, i) * 500.0) as u64
    }

    pub fn provider(&self, i: u64) -> &'static str {
        if i.is_multiple_of(2) { "alpha" } else { "beta" }
    }

    /// A withdrawal's payment provider (`PAYMENT_PROVIDERS`' default).
    pub fn psp(&self, i: u64) -> &'static str {
        if i.is_multiple_of(2) { "bank" } else { "card" }
    }

    /// A withdrawal's amount in cents: 0.01 to 1.00, far from the default daily limits.
    pub fn withdraw_cents(&self, i: u64) -> u64 {
        1 + (self.draw(5, i) * 100.0) as u64
    }

    /// What a transfer in asks back, in cents: one in four asks for an amount (0.01 to 5.00),
    /// the others for everything.
    pub fn transfer_in_cents(&self, i: u64) -> Option<u64> {
        (self.draw(6, i) < 0.25).then(|| self.transfer_cents(i))
    }

    /// Command `i`: its kind and message.
    pub fn message(&self, i: u64) -> (Kind, Message) {
        let kind = self.kind(i);
        let id = self.id(kind, i);
        let broken = self.broken(i);
        let user = match (kind, broken) {
            (Kind::Bonus, Broken::No) => self.grant_user(i),
            (Kind::Bonus, _) => "not a user id".into(),
            _ => self.user(i),
        };
        let body = match (kind, broken) {
            (_, Broken::NotJson) => format!(r#"{{"{}":"{id}", "#, kind.id_field()),
            (Kind::Deposit, _) => {
                let amount = amount_json(broken, self.deposit_cents(i));
                format!(
                    r#"{{"deposit_id":"{id}","user_id":"{user}","amount":{amount},"currency":"USD"}}"#
                )
            }
            (Kind::Transfer, _) => {
                let amount = amount_json(broken, self.transfer_cents(i));
                format!(
                    r#"{{"transfer_id":"{id}","user_id":"{user}","provider":"{}","amount":{amount},"currency":"USD"}}"#,
                    self.provider(i)
                )
            }
            (Kind::Withdraw, _) => {
                let amount = amount_json(broken, self.withdraw_cents(i));
                format!(
                    r#"{{"withdraw_id":"{id}","user_id":"{user}","psp":"{}","amount":{amount},"currency":"USD"}}"#,
                    self.psp(i)
                )
            }
            (Kind::TransferIn, _) => {
                let amount = match (broken, self.transfer_in_cents(i)) {
                    (Broken::No, None) => "null".into(),
                    (_, c) => amount_json(broken, c.unwrap_or(1)),
                };
                format!(
                    r#"{{"transfer_id":"{id}","user_id":"{user}","provider":"{}","currency":"USD","amount":{amount}}}"#,
                    self.provider(i)
                )
            }
            (Kind::Bonus, _) => {
                format!(
                    r#"{{"grant_id":"{id}","campaign_id":"{}","user_id":"{user}"}}"#,
                    self.campaign
                )
            }
        };
        (
            kind,
            Message {
                subject: self
                    .names
                    .subject(&partition::subject(kind.subject(), &user)),
                msg_id: id,
                payload: body.into_bytes().into(),
            },
        )
    }

    /// A deposit of `amount` to user `u`, outside the measured commands (funding).
    pub fn funding(&self, u: usize) -> Message {
        let id = format!("{}-f{u}", self.run);
        let user = format!("{}-u{u}", self.run);
        Message {
            subject: self
                .names
                .subject(&partition::subject("wallet.deposit", &user)),
            payload: format!(
                r#"{{"deposit_id":"{id}","user_id":"{user}","amount":"{FUNDING}","currency":"USD"}}"#
            )
            .into_bytes()
            .into(),
            msg_id: id,
        }
    }

    /// What command `i` must become.
    pub fn expect(&self, i: u64) -> Expect {
        let kind = self.kind(i);
        match (kind, self.broken(i)) {
            (_, Broken::NotJson) => Expect::Exactly(Outcome::DeadLettered, None),
            (Kind::Bonus, Broken::InvalidField) => {
                Expect::Exactly(Outcome::Rejected, Some("invalid_user_id"))
            }
            (_, Broken::InvalidField) => Expect::Exactly(Outcome::Rejected, Some("invalid_amount")),
            (Kind::Deposit, Broken::No) => Expect::Exactly(Outcome::Completed, None),
            (Kind::Transfer | Kind::Withdraw | Kind::TransferIn, Broken::No) => {
                match &self.providers {
                    Some(sim) if provider_sim::accepts(sim, &self.id(kind, i)) => {
                        Expect::Exactly(Outcome::Completed, None)
                    }
                    Some(_) => Expect::Exactly(Outcome::Failed, None),
                    None => Expect::Final,
                }
            }
            (Kind::Bonus, Broken::No) => Expect::GrantedOrExhausted,
        }
    }
}

/// An amount as a command carries it: a JSON string, or, broken, a JSON number (`invalid_amount`).
fn amount_json(broken: Broken, c: u64) -> String {
    match broken {
        Broken::No => format!("\"{}\"", cents(c)),
        _ => cents(c),
    }
}

/// `cents` as a decimal string with two places: 125 → `1.25`.
pub fn cents(c: u64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan(mix: &str, malformed: f64) -> Plan {
        Plan {
            run: "r1".into(),
            mix: Mix::parse(mix).unwrap(),
            users: 10,
            seed: 7,
            duplicates: 0.1,
            malformed,
            campaign: "r1-red".into(),
            providers: None,
            names: wallet_runtime::names::Names::new("ns").unwrap(),
        }
    }

    #[test]
    fn mix_parses_and_refuses() {
        let m = Mix::parse("deposit=60,transfer=25,bonus=15").unwrap();
        assert_eq!(m.to_string(), "deposit=60,transfer=25,bonus=15");
        assert!((m.share(Kind::Transfer) - 0.25).abs() < 1e-9);
        assert!((m.messages_per_command() - 2.75).abs() < 1e-9);
        assert!(Mix::parse("deposit").unwrap_err().contains("kind=weight"));
        assert!(Mix::parse("refund=1").unwrap_err().contains("unknown kind"));
        assert!(Mix::parse("withdraw=1,transfer_in=2").is_ok());
        assert!(
            Mix::parse("deposit=1,deposit=2")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            Mix::parse("deposit=0")
                .unwrap_err()
                .contains("at least one")
        );
        assert!(
            Mix::parse("deposit=x")
                .unwrap_err()
                .contains("whole number")
        );
    }

    #[test]
    fn commands_follow_the_mix_and_ratios() {
        let p = plan("deposit=60,transfer=25,bonus=15", 0.02);
        let n = 100_000;
        let count = |k| (0..n).filter(|&i| p.kind(i) == k).count() as f64 / n as f64;
        assert!((count(Kind::Deposit) - 0.60).abs() < 0.01);
        assert!((count(Kind::Transfer) - 0.25).abs() < 0.01);
        assert!((count(Kind::Bonus) - 0.15).abs() < 0.01);
        let broken = (0..n).filter(|&i| p.broken(i) != Broken::No).count() as f64 / n as f64;
        assert!((broken - 0.02).abs() < 0.003, "{broken}");
        let dups = (0..n).filter(|&i| p.duplicated(i)).count() as f64 / n as f64;
        assert!((dups - 0.1).abs() < 0.01, "{dups}");
    }

    /// Where a command of the payload `v` goes: its user's partition, written out by hand.
    fn subject(base: &str, v: &serde_json::Value) -> String {
        let p = wallet_runtime::partition::Partition::of(v["user_id"].as_str().unwrap());
        format!("ns.{base}.{}", p.get())
    }

    #[test]
    fn ids_round_trip_and_payloads_are_what_the_contract_expects() {
        let p = plan("deposit=1,transfer=1,bonus=1,withdraw=1,transfer_in=1", 0.0);
        for i in 0..50 {
            let (kind, m) = p.message(i);
            assert_eq!(p.index(&m.msg_id), Some((kind, i)));
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            match kind {
                Kind::Deposit => {
                    assert_eq!(m.subject, subject("wallet.deposit", &v));
                    assert_eq!(v["amount"], cents(p.deposit_cents(i)));
                }
                Kind::Transfer => {
                    assert_eq!(m.subject, subject("wallet.transfer-out", &v));
                    assert_eq!(v["provider"], p.provider(i));
                }
                Kind::Bonus => {
                    assert_eq!(m.subject, subject("bonus.grant", &v));
                    assert_eq!(v["campaign_id"], "r1-red");
                }
                Kind::Withdraw => {
                    assert_eq!(m.subject, subject("wallet.withdraw", &v));
                    assert_eq!(v["withdraw_id"], m.msg_id);
                    assert_eq!(v["amount"], cents(p.withdraw_cents(i)));
                }
                Kind::TransferIn => {
                    assert_eq!(m.subject, subject("wallet.transfer-in", &v));
                    assert_eq!(v["transfer_id"], m.msg_id);
                    match p.transfer_in_cents(i) {
                        Some(c) => assert_eq!(v["amount"], cents(c)),
                        None => assert_eq!(v["amount"], serde_json::Value::Null),
                    }
                }
            }
        }
        assert_eq!(p.index("r1-x3"), None);
        assert_eq!(p.index("r2-d3"), None);
        assert_eq!(cents(5), "0.05");
        assert_eq!(cents(100_000_000), "1000000.00");
    }

    #[test]
    fn broken_commands_expect_their_failure() {
        let p = plan("deposit=1,bonus=1,withdraw=1,transfer_in=1", 0.5);
        for i in 0..200 {
            let (kind, m) = p.message(i);
            let parsed = serde_json::from_slice::<serde_json::Value>(&m.payload);
            match (p.broken(i), p.expect(i)) {
                (Broken::NotJson, Expect::Exactly(Outcome::DeadLettered, None)) => {
                    assert!(parsed.is_err())
                }
                (Broken::InvalidField, Expect::Exactly(Outcome::Rejected, Some(r))) => {
                    assert!(parsed.is_ok());
                    assert_eq!(
                        r,
                        if kind == Kind::Bonus {
                            "invalid_user_id"
                        } else {
                            "invalid_amount"
                        }
                    );
                }
                (Broken::No, e) => {
                    assert!(parsed.is_ok() && e != Expect::Exactly(Outcome::Rejected, None))
                }
                other => panic!("{i}: {other:?}"),
            }
        }
    }
}
