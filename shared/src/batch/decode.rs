//! Decoding a delivered message before any transaction: a JSON object of at most 64 KiB with a
//! valid id, on its user's partition if its subject names one, then the function's validation.
//! What fails the first step is malformed.

use std::time::SystemTime;

use async_nats::jetstream::Message;

use crate::context::Context;
use crate::dedup::{self, Fingerprint};
use crate::events::Event;
use crate::function::{Command, Function, Invalid, Payload};
use crate::partition::{Partition, Routing};
use crate::streams::MAX_COMMAND_BYTES;

/// A message as the runtime sees it before any transaction.
#[allow(clippy::large_enum_variant)] // Short-lived, one per message of a batch.
pub(super) enum Decoded<C> {
    Malformed,
    /// On a partition that is not its user's.
    WrongPartition,
    Command {
        key: String,
        print: Fingerprint,
        /// Its user's, or the one its subject names; none if neither is known.
        partition: Option<Partition>,
        /// `Ok`: valid; `Err`: its rejection event.
        command: Result<Command<C>, Event>,
    },
}

/// The first step of decoding, before any function's rules: a JSON object of at most 64 KiB
/// whose `id_field` holds a valid id. `None`: the message is malformed.
fn parse(payload: &[u8], id_field: &str) -> Option<(Payload, String)> {
    if payload.len() > MAX_COMMAND_BYTES {
        return None;
    }
    let object = serde_json::from_slice::<Payload>(payload).ok()?;
    let id = crate::ids::from_value(object.get(id_field))?.to_owned();
    Some((object, id))
}

/// Decodes one message: [`parse`], the partition its subject names, then the function's
/// validation.
pub(super) fn decode<F: Function>(
    f: &F,
    ctx: &Context,
    routing: &Routing,
    message: &Message,
) -> Decoded<F::Command> {
    let Some((object, id)) = parse(&message.payload, F::ID_FIELD) else {
        return Decoded::Malformed;
    };
    let id = id.as_str();
    let subject = ctx.names.strip(&message.subject);
    // Without a user id there is no partition to check: the function's validation rejects it.
    let user = object.get("user_id").and_then(|u| u.as_str());
    if let Some(user) = user
        && !routing.admits(subject, user)
    {
        return Decoded::WrongPartition;
    }
    let partition = user.map(Partition::of).or_else(|| routing.named(subject));
    let stored_at = message
        .info()
        .map(|i| SystemTime::from(i.published))
        .unwrap_or_else(|_| SystemTime::now());
    match f.validate(ctx, subject, id, &object) {
        Err(Invalid::Malformed) => Decoded::Malformed,
        Err(Invalid::Rejected(event)) => Decoded::Command {
            key: id.to_owned(),
            print: dedup::fingerprint(&object, F::FIELDS),
            partition,
            command: Err(event),
        },
        Ok(body) => Decoded::Command {
            key: F::key(id, &body),
            print: dedup::fingerprint(&object, F::FIELDS),
            partition,
            command: Ok(Command {
                id: id.to_owned(),
                key: F::key(id, &body),
                body,
                stored_at,
            }),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::arbitrary::json_value;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    proptest! {
        #[test]
        fn any_bytes_are_a_command_or_malformed(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Some((object, id)) = parse(&bytes, "deposit_id") {
                prop_assert!(crate::ids::is_valid(&id));
                prop_assert_eq!(object.get("deposit_id").and_then(Value::as_str), Some(id.as_str()));
            }
        }

        #[test]
        fn any_json_is_a_command_only_with_a_valid_id(v in json_value()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let id = v.get("deposit_id").and_then(Value::as_str).filter(|i| crate::ids::is_valid(i));
            let parsed = parse(&bytes, "deposit_id");
            prop_assert_eq!(
                parsed.as_ref().map(|(_, id)| id.as_str()),
                id.filter(|_| v.is_object() && bytes.len() <= MAX_COMMAND_BYTES)
            );
        }

        #[test]
        fn the_fingerprint_ignores_key_order_spacing_and_unknown_fields(
            id in "[a-z0-9-]{1,20}",
            user in any::<String>(),
            amount in any::<String>(),
            extra in any::<i64>(),
        ) {
            let fields = &["deposit_id", "user_id", "amount"];
            let a = format!(
                r#"{{"deposit_id":{},"user_id":{},"amount":{}}}"#,
                json!(id), json!(user), json!(amount)
            );
            let b = format!(
                r#"{{ "amount" : {}, "x": {extra}, "user_id": {}, "deposit_id": {} }}"#,
                json!(amount), json!(user), json!(id)
            );
            let (pa, _) = parse(a.as_bytes(), "deposit_id").unwrap();
            let (pb, _) = parse(b.as_bytes(), "deposit_id").unwrap();
            prop_assert_eq!(dedup::fingerprint(&pa, fields), dedup::fingerprint(&pb, fields));
            let other = json!({"deposit_id": id, "user_id": user, "amount": format!("{amount}0")});
            let (pc, _) = parse(&serde_json::to_vec(&other).unwrap(), "deposit_id").unwrap();
            prop_assert_ne!(dedup::fingerprint(&pa, fields), dedup::fingerprint(&pc, fields));
        }
    }

    #[test]
    fn a_command_over_64_kib_is_malformed() {
        let big = json!({"deposit_id": "d-1", "pad": "x".repeat(MAX_COMMAND_BYTES)});
        assert!(parse(&serde_json::to_vec(&big).unwrap(), "deposit_id").is_none());
        assert!(parse(br#"{"deposit_id":"d-1"}"#, "deposit_id").is_some());
        assert!(parse(br#"["deposit_id","d-1"]"#, "deposit_id").is_none());
    }
}
