//! Commands as (subject, `Nats-Msg-Id`, payload), for [`crate::TestEnv::publish_many`].

use serde_json::json;

pub type Msg = (String, String, Vec<u8>);

fn msg(subject: &str, id: &str, body: serde_json::Value) -> Msg {
    (
        subject.into(),
        id.into(),
        serde_json::to_vec(&body).unwrap(),
    )
}

pub fn deposit(id: &str, user: &str, amount: &str, currency: &str) -> Msg {
    msg(
        "wallet.deposit",
        id,
        json!({"deposit_id": id, "user_id": user, "amount": amount, "currency": currency}),
    )
}

pub fn transfer(id: &str, user: &str, provider: &str, amount: &str, currency: &str) -> Msg {
    msg(
        "wallet.transfer-out",
        id,
        json!({"transfer_id": id, "user_id": user, "provider": provider,
               "amount": amount, "currency": currency}),
    )
}

/// A transfer in: `amount` `None` asks for everything the player holds.
pub fn transfer_in(
    id: &str,
    user: &str,
    provider: &str,
    amount: Option<&str>,
    currency: &str,
) -> Msg {
    msg(
        "wallet.transfer-in",
        id,
        json!({"transfer_id": id, "user_id": user, "provider": provider,
               "currency": currency, "amount": amount}),
    )
}

/// A provider's `accepted` ack of a transfer in, with the amount it returned.
pub fn returned(provider: &str, transfer: &str, amount: &str) -> Msg {
    msg(
        &format!("provider.{provider}.ack"),
        &format!("{provider}:{transfer}:accepted"),
        json!({"transfer_id": transfer, "status": "accepted", "amount": amount,
               "provider_ref": format!("ref-{transfer}")}),
    )
}

pub fn grant(id: &str, campaign: &str, user: &str) -> Msg {
    msg(
        "bonus.grant",
        id,
        json!({"grant_id": id, "campaign_id": campaign, "user_id": user}),
    )
}

/// A provider's ack, with the adapters' `Nats-Msg-Id` (`<provider>:<transfer>:<status>`).
pub fn ack(provider: &str, transfer: &str, status: &str) -> Msg {
    msg(
        &format!("provider.{provider}.ack"),
        &format!("{provider}:{transfer}:{status}"),
        json!({"transfer_id": transfer, "status": status, "provider_ref": format!("ref-{transfer}")}),
    )
}
