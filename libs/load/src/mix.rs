//! What a load sends: the kinds of commands and their shares.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of command a run mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Deposit,
    Transfer,
    Bonus,
    Withdraw,
    TransferIn,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Deposit,
        Kind::Transfer,
        Kind::Bonus,
        Kind::Withdraw,
        Kind::TransferIn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Transfer => "transfer",
            Kind::Bonus => "bonus",
            Kind::Withdraw => "withdraw",
            Kind::TransferIn => "transfer_in",
        }
    }

    /// The function that consumes this kind's commands.
    pub fn function(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Transfer => "transfer-out",
            Kind::Bonus => "bonus-grant",
            Kind::Withdraw => "withdraw",
            Kind::TransferIn => "transfer-in",
        }
    }

    /// The function that finishes this kind's sagas on a partner's answer.
    pub fn answered_by(self) -> Option<&'static str> {
        match self {
            Kind::Transfer | Kind::TransferIn => Some("provider-ack"),
            Kind::Withdraw => Some("payout-ack"),
            Kind::Deposit | Kind::Bonus => None,
        }
    }

    /// Whether its commands spend from `main`: the run funds its users first.
    pub fn spends(self) -> bool {
        matches!(self, Kind::Transfer | Kind::Withdraw)
    }

    /// The subject of its commands.
    pub fn subject(self) -> &'static str {
        match self {
            Kind::Deposit => "wallet.deposit",
            Kind::Transfer => "wallet.transfer-out",
            Kind::Bonus => "bonus.grant",
            Kind::Withdraw => "wallet.withdraw",
            Kind::TransferIn => "wallet.transfer-in",
        }
    }

    /// The field of its commands that holds the id.
    pub fn id_field(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit_id",
            Kind::Transfer | Kind::TransferIn => "transfer_id",
            Kind::Bonus => "grant_id",
            Kind::Withdraw => "withdraw_id",
        }
    }

    /// The letter in a command id (`<run>-d42`).
    pub(crate) fn letter(self) -> char {
        match self {
            Kind::Deposit => 'd',
            Kind::Transfer => 't',
            Kind::Bonus => 'g',
            Kind::Withdraw => 'w',
            Kind::TransferIn => 'i',
        }
    }

    /// The kind whose [`Kind::letter`] is `c`.
    pub(crate) fn from_letter(c: char) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.letter() == c)
    }

    /// JetStream messages one command of this kind makes when it succeeds: the command and its
    /// event; a saga (a transfer, a withdrawal) adds its pending event, the partner's request and
    /// its answer.
    pub fn messages(self) -> u32 {
        match self.answered_by() {
            None => 2,
            Some(_) => 5,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shares of each kind, e.g. `deposit=60,transfer=25,bonus=15` (weights, not necessarily
/// summing to 100).
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    weights: Vec<(Kind, u32)>,
}

impl Mix {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut weights: Vec<(Kind, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected kind=weight, e.g. deposit=60"))?;
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == name.trim())
                .ok_or_else(|| {
                    format!(
                        "`{name}`: unknown kind (deposit, transfer, bonus, withdraw or transfer_in)"
                    )
                })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            if weights.iter().any(|(k, _)| *k == kind) {
                return Err(format!("`{name}` is given twice"));
            }
            if weight > 0 {
                weights.push((kind, weight));
            }
        }
        if weights.is_empty() {
            return Err("the mix needs at least one kind with a weight above 0".into());
        }
        weights.sort();
        Ok(Self { weights })
    }

    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.weights.iter().map(|(k, _)| *k)
    }

    pub fn has(&self, kind: Kind) -> bool {
        self.kinds().any(|k| k == kind)
    }

    /// The share of `kind`, from 0 to 1.
    pub fn share(&self, kind: Kind) -> f64 {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        let w = self
            .weights
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, w)| *w);
        f64::from(w) / f64::from(total)
    }

    /// JetStream messages per command, on average, when every command succeeds.
    pub fn messages_per_command(&self) -> f64 {
        self.kinds()
            .map(|k| self.share(k) * f64::from(k.messages()))
            .sum()
    }

    /// The kind of the command whose draw is `r` in [0, 1).
    pub(crate) fn pick(&self, r: f64) -> Kind {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        let mut point = r * f64::from(total);
        for (kind, w) in &self.weights {
            if point < f64::from(*w) {
                return *kind;
            }
            point -= f64::from(*w);
        }
        self.weights[self.weights.len() - 1].0
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(k, w)| format!("{k}={w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}
