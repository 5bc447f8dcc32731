//! The sagas: commands that ask a partner outside the platform (a game provider, a payment
//! provider) and wait for its answer. One description of each, read by everything that deals with
//! them: the sweeper (status queries and `stuck` events), the answer functions, the audit's
//! checks and `walletctl provider-sim`, so that a saga is described once.

/// What is known of one kind of saga.
#[derive(Debug)]
pub struct Saga {
    /// The `entity` of its events, and the name of its rows in logs.
    pub entity: &'static str,
    /// Its rows' table, and which of them are its (an SQL condition on the table's columns).
    pub table: &'static str,
    pub rows: &'static str,
    /// The column naming the partner, and the event field that carries it.
    pub partner: &'static str,
    /// The field naming the saga in every message exchanged with the partner.
    pub id_field: &'static str,
    /// `<prefix>.<partner>.<request>` asks the partner, `<prefix>.<partner>.status` asks again,
    /// both on the stream `requests`; `<prefix>.<partner>.ack` answers.
    pub prefix: &'static str,
    pub request: &'static str,
    pub requests: &'static str,
    /// Its answers' statuses: the positive one, the negative one.
    pub answers: (&'static str, &'static str),
    /// Its row's final status after each.
    pub ends: (&'static str, &'static str),
    /// The answer's field with the partner's own reference.
    pub ref_field: &'static str,
    /// Whether a positive answer says how much it returns (`amount`).
    pub returns: bool,
    /// The function that starts it, and the one that ends it on the answer.
    pub first: &'static str,
    pub answer: &'static str,
    /// The user wallet its money waits in until the answer (`None`: nothing moves before it).
    pub parked: Option<&'static str>,
    /// Counters: status queries published, sagas reported stuck.
    pub queries_metric: &'static str,
    pub stuck_metric: &'static str,
    /// The platform account its positive answers post to (`None`: only user wallets).
    pub platform: Option<&'static Platform>,
}

/// Platform accounts, one per partner and currency (`<purpose>:<partner>`), that a saga's
/// positive answers post to; the audit explains each by the saga's finished rows.
#[derive(Debug)]
pub struct Platform {
    pub purpose: &'static str,
    /// What one row that ended positively adds to its account: an SQL expression on the saga's
    /// table.
    pub per_row: &'static str,
    /// The audit's check, and how its breaches name what the rows say.
    pub check: &'static str,
    pub explained_by: &'static str,
}

impl Platform {
    /// The account's purpose for `partner` (a [`crate::wallet::WalletKey::platform`]).
    pub fn account(&self, partner: &str) -> String {
        format!("{}:{partner}", self.purpose)
    }
}

/// What players won (negative) or lost at a game provider: a transfer in's game wallet gives up
/// what it held, the provider returns what the player has left.
pub static GAME_RESULTS: Platform = Platform {
    purpose: "game-results",
    per_row: "taken - returned",
    check: "every provider's game-results account is what its completed transfers in took beyond what they returned",
    explained_by: "transfers in explain",
};

/// What left the platform through a payment provider.
pub static PAYOUTS: Platform = Platform {
    purpose: "payouts",
    per_row: "amount",
    check: "every payment provider's payouts account is what its paid withdrawals paid out",
    explained_by: "paid withdrawals",
};

/// Transfers to a game provider's wallet.
pub static TRANSFERS: Saga = TRANSFERS_OUT;

const TRANSFERS_OUT: Saga = Saga {
    entity: "transfer",
    table: "transfers",
    rows: "direction = 'out'",
    partner: "provider",
    id_field: "transfer_id",
    prefix: "provider",
    request: "transfer",
    requests: "PROVIDER_REQUESTS",
    answers: ("accepted", "rejected"),
    ends: ("completed", "failed"),
    ref_field: "provider_ref",
    returns: false,
    first: "transfer-out",
    answer: "provider-ack",
    parked: Some("in_transit"),
    queries_metric: "wallet_transfer_status_queries_total",
    stuck_metric: "wallet_transfers_stuck_total",
    platform: None,
};

/// Transfers back from a game provider: the same table, messages and answers as transfers out.
pub static TRANSFERS_IN: Saga = Saga {
    entity: "transfer_in",
    rows: "direction = 'in'",
    request: "withdraw",
    returns: true,
    first: "transfer-in",
    parked: None,
    queries_metric: "wallet_transfer_in_status_queries_total",
    stuck_metric: "wallet_transfers_in_stuck_total",
    platform: Some(&GAME_RESULTS),
    ..TRANSFERS_OUT
};

/// Withdrawals paid out by a payment provider.
pub static WITHDRAWALS: Saga = Saga {
    entity: "withdrawal",
    table: "withdrawals",
    rows: "true",
    partner: "psp",
    id_field: "withdraw_id",
    prefix: "payout",
    request: "request",
    requests: "PAYOUT_REQUESTS",
    answers: ("paid", "declined"),
    ends: ("paid", "declined"),
    ref_field: "psp_ref",
    returns: false,
    first: "withdraw",
    answer: "payout-ack",
    parked: Some("held"),
    queries_metric: "wallet_withdrawal_status_queries_total",
    stuck_metric: "wallet_withdrawals_stuck_total",
    platform: Some(&PAYOUTS),
};

/// Every saga.
pub static ALL: [&Saga; 3] = [&TRANSFERS, &TRANSFERS_IN, &WITHDRAWALS];
