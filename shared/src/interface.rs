//! A function's public interface as data: the JSON Schema of every message it receives, sends
//! or replies, generated from the Rust types that read or write it.
//!
//! Why: the contract (docs/CONTRACT.md) is prose; clients in other languages need schemas, and
//! prose drifts from code. Each function describes itself ([`crate::Function::interface`]);
//! its binary prints that with `--interface`, and `walletctl interface` turns every function's
//! into `asyncapi.yaml` and `schemas/` (a test fails when those are stale). The tests validate
//! every event they capture against these schemas, so a schema that disagrees with what the
//! code publishes fails the build.
//!
//! What the schemas can say is said: ids and amounts by their grammar, an event's statuses and
//! reasons as closed enums built from the runtime's constants, the headers each message carries.
//! What they cannot (an amount's digits depend on its currency) is in their descriptions.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::dlq;
use crate::events::{Event, Reason, Status};
use crate::function::Function;

/// A schema-only type: a string with the contract's grammar, named once.
macro_rules! string_schema {
    ($(#[$doc:meta])* $name:ident, $schema:tt) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

string_schema!(
    /// An id of the contract (CONTRACT §2): 1 to 128 characters from `A-Z a-z 0-9 _ . : -`.
    Id,
    {
        "type": "string",
        "pattern": "^[A-Za-z0-9_.:-]{1,128}$",
        "description": "1 to 128 characters from A-Z a-z 0-9 _ . : -"
    }
);

string_schema!(
    /// An amount (CONTRACT §2): a JSON string holding a positive decimal, no exponent.
    Amount,
    {
        "type": "string",
        "pattern": "^[0-9]{1,15}(\\.[0-9]+)?$",
        "description": "a decimal as a string: at most 15 digits before the point and no more after it than the currency's minor unit; positive in commands",
        "examples": ["10.50"]
    }
);

string_schema!(
    /// A balance as reported (CONTRACT §4): exactly the currency's minor-unit digits.
    Balance,
    {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]+)?$",
        "description": "a decimal as a string with exactly the currency's minor-unit digits",
        "examples": ["110.50"]
    }
);

string_schema!(
    /// A configured currency code (CONTRACT §2).
    CurrencyCode,
    {
        "type": "string",
        "pattern": "^[A-Z0-9]{1,12}$",
        "description": "a configured currency code (default: USD, EUR, VND, BTC)",
        "examples": ["USD"]
    }
);

string_schema!(
    /// A provider's name (CONTRACT §2): `[a-z0-9-]{1,32}`.
    Provider,
    {
        "type": "string",
        "pattern": "^[a-z0-9-]{1,32}$",
        "description": "a configured provider (default: alpha, beta)"
    }
);

string_schema!(
    /// A point in time: RFC 3339 in UTC with milliseconds.
    Timestamp,
    {
        "type": "string",
        "format": "date-time",
        "examples": ["2026-11-22T10:00:00.123Z"]
    }
);

/// The field events about a provider's transfer add.
#[derive(Debug, JsonSchema)]
pub struct ProviderField {
    /// The transfer's provider; null when the command named none that is configured.
    pub provider: Option<Provider>,
}

/// No entity-specific event fields.
#[derive(Debug, JsonSchema)]
pub struct NoFields {}

/// What a message is to its function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// A command it consumes, or a request it answers.
    Receive,
    /// An event, a request to a provider, a dead letter.
    Send,
    /// The answer to a request it received.
    Reply,
}

/// One message of a function's interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    /// Its file name under `schemas/<function>/` and its name in `asyncapi.yaml`.
    pub name: String,
    /// The subject without the namespace; `{provider}`, `{status}` and `{function}` are
    /// parameters (`provider.{provider}.ack`). Empty for a reply (it goes to the request's inbox).
    pub subject: String,
    pub operation: Operation,
    pub summary: String,
    /// JSON Schema of the payload.
    pub payload: Value,
    /// JSON Schema of the NATS headers (an object of strings).
    pub headers: Value,
}

/// A function's interface: [`crate::Function::interface`], printed by its binary's
/// `--interface`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Interface {
    pub function: String,
    /// The command field that holds its id (JetStream function), the fields whose values
    /// dedup compares, and the entity of its events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandKeys>,
    pub messages: Vec<Message>,
}

/// How a JetStream function identifies a command ([`crate::Function`]'s constants).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandKeys {
    pub id_field: String,
    pub fields: Vec<String>,
    pub entity: String,
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
}

/// `T`'s schema, every subschema inline (each message's schema stands alone).
pub fn schema_of<T: JsonSchema>() -> Value {
    let mut value = generator().into_root_schema_for::<T>().to_value();
    if let Some(o) = value.as_object_mut() {
        o.remove("$schema");
    }
    value
}

fn headers(fields: &[(&str, Value)]) -> Value {
    let mut properties: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(name, schema)| ((*name).to_owned(), schema.clone()))
        .collect();
    let required: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    if !required.is_empty() {
        properties.insert(crate::trace::TRACEPARENT.to_owned(), traceparent());
    }
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
    })
}

/// The W3C Trace Context header ([`crate::trace`]): optional on a command (one without starts a
/// trace), on every message the functions publish.
fn traceparent() -> Value {
    json!({
        "type": "string",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": "W3C traceparent: the command's trace, continued by every message it causes"
    })
}

fn msg_id(description: &str) -> (&'static str, Value) {
    (
        "Nats-Msg-Id",
        json!({"type": "string", "description": description}),
    )
}

impl Interface {
    /// A request-reply function's.
    pub fn new(function: &str) -> Self {
        Self {
            function: function.to_owned(),
            command: None,
            messages: Vec::new(),
        }
    }

    /// A JetStream function's: `F`'s names and keys.
    pub fn of<F: Function>() -> Self {
        Self {
            command: Some(CommandKeys {
                id_field: F::ID_FIELD.to_owned(),
                fields: F::FIELDS.iter().map(|f| (*f).to_owned()).collect(),
                entity: F::ENTITY.to_owned(),
            }),
            ..Self::new(F::NAME)
        }
    }

    fn entity(&self) -> &str {
        self.command.as_ref().map_or("", |c| c.entity.as_str())
    }

    /// The command `T` on `subject`; the runtime's dead letters (`malformed`, `id_conflict`,
    /// `wrong_partition`, `max_deliver`) and `dead_letters` are its dead-letter reasons.
    pub fn command<T: JsonSchema>(mut self, subject: &str, dead_letters: &[&str]) -> Self {
        let id_field = self
            .command
            .as_ref()
            .map_or("id", |c| c.id_field.as_str())
            .to_owned();
        let name = "command";
        self.messages.push(Message {
            name: name.to_owned(),
            subject: subject.to_owned(),
            operation: Operation::Receive,
            summary: format!("A command for `{}`", self.function),
            payload: schema_of::<T>(),
            headers: headers(&[msg_id(&format!(
                "the command's `{id_field}`: JetStream drops a repeat inside its duplicate window"
            ))]),
        });
        let mut reasons = vec![
            dlq::MALFORMED,
            dlq::ID_CONFLICT,
            dlq::WRONG_PARTITION,
            dlq::MAX_DELIVER,
        ];
        reasons.extend_from_slice(dead_letters);
        let function = self.function.clone();
        self.messages
            .push(dead_letter(&function, subject, &reasons));
        self
    }

    /// Its outcome events (`wallet.events.<entity>.<status>`) with `statuses`, the `reasons`
    /// of its rejections and the entity's own fields `X`.
    pub fn events<X: JsonSchema>(self, statuses: &[Status], reasons: &[Reason]) -> Self {
        let entity = self.entity().to_owned();
        self.events_of::<X>(&entity, statuses, reasons)
    }

    /// The outcome events of another entity it ends (provider-ack: transfers in, besides its
    /// own transfers).
    pub fn events_of<X: JsonSchema>(
        mut self,
        entity: &str,
        statuses: &[Status],
        reasons: &[Reason],
    ) -> Self {
        let name = if entity == self.entity() {
            "event".to_owned()
        } else {
            format!("{entity}-event")
        };
        let mut payload = schema_of::<Event>();
        let extra = schema_of::<X>();
        let (Some(o), Some(x)) = (payload.as_object_mut(), extra.as_object()) else {
            unreachable!("a struct's schema is an object")
        };
        let strings =
            |v: Vec<&str>| Value::from(v.into_iter().map(Value::from).collect::<Vec<_>>());
        let props = o
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("properties is an object");
        props.insert("entity".into(), json!({ "const": entity }));
        props.insert(
            "status".into(),
            json!({ "enum": strings(statuses.iter().map(|s| s.as_str()).collect()) }),
        );
        let mut reason_enum = strings(reasons.iter().map(|r| r.as_str()).collect());
        if let Some(a) = reason_enum.as_array_mut() {
            a.push(Value::Null);
        }
        props.insert(
            "reason".into(),
            json!({ "enum": reason_enum, "description": "why, when `status` is `rejected`; null otherwise" }),
        );
        if let Some(Value::Object(extra)) = x.get("properties") {
            props.extend(extra.clone());
        }
        // Every field is always present: one that does not apply is null (CONTRACT §2).
        let required: Vec<Value> = props.keys().cloned().map(Value::from).collect();
        o.insert("required".into(), Value::Array(required));
        o.insert("additionalProperties".into(), Value::Bool(false));
        o.insert("title".into(), Value::from(format!("{entity} event")));
        self.messages.push(Message {
            name,
            subject: format!("wallet.events.{entity}.{{status}}"),
            operation: Operation::Send,
            summary: format!("An outcome of a `{entity}`, published after its effect committed"),
            payload,
            headers: headers(&[msg_id(&format!(
                "`{entity}:<id>:<status>`: a republished event is dropped inside the duplicate window"
            ))]),
        });
        self
    }

    /// Another message it publishes (a request to a provider).
    pub fn sends<T: JsonSchema>(
        mut self,
        name: &str,
        subject: &str,
        summary: &str,
        msg_id_is: &str,
    ) -> Self {
        self.messages.push(Message {
            name: name.to_owned(),
            subject: subject.to_owned(),
            operation: Operation::Send,
            summary: summary.to_owned(),
            payload: schema_of::<T>(),
            headers: headers(&[msg_id(msg_id_is)]),
        });
        self
    }

    /// A request-reply function: the request `Q` on `subject` and its reply `R`.
    pub fn request_reply<Q: JsonSchema, R: JsonSchema>(mut self, subject: &str) -> Self {
        self.messages.push(Message {
            name: "request".to_owned(),
            subject: subject.to_owned(),
            operation: Operation::Receive,
            summary: format!("A request to `{}` (core NATS, queue group)", self.function),
            payload: schema_of::<Q>(),
            headers: headers(&[]),
        });
        self.messages.push(Message {
            name: "reply".to_owned(),
            subject: String::new(),
            operation: Operation::Reply,
            summary: format!(
                "`{}`'s answer, sent to the request's reply subject",
                self.function
            ),
            payload: schema_of::<R>(),
            headers: headers(&[]),
        });
        self
    }

    /// The message named `name`.
    pub fn message(&self, name: &str) -> Option<&Message> {
        self.messages.iter().find(|m| m.name == name)
    }

    /// The fields of the command's schema (by name), each with whether it is required.
    pub fn command_fields(&self) -> Vec<(String, bool)> {
        let required = self.required_fields();
        self.message("command")
            .and_then(|m| m.payload.get("properties"))
            .and_then(Value::as_object)
            .map(|o| {
                o.keys()
                    .map(|k| (k.clone(), required.contains(k)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The fields the command's schema requires, in its order.
    pub fn required_fields(&self) -> Vec<String> {
        self.message("command")
            .and_then(|m| m.payload.get("required"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `dlq.<function>`: a command it could not process, with its reason in `Wallet-Dlq-Reason`.
fn dead_letter(function: &str, subject: &str, reasons: &[&str]) -> Message {
    let string = |d: &str| json!({"type": "string", "description": d});
    Message {
        name: "dead-letter".to_owned(),
        subject: format!("dlq.{function}"),
        operation: Operation::Send,
        summary: format!(
            "A message `{function}` gave up on: the original payload and headers (CONTRACT §8)"
        ),
        payload: json!({"description": format!("the original payload of `{subject}`, unchanged")}),
        headers: headers(&[
            ("Wallet-Dlq-Reason", json!({"enum": reasons})),
            ("Wallet-Dlq-Function", json!({"const": function})),
            (
                "Wallet-Dlq-Subject",
                string("the subject it arrived on, namespace included"),
            ),
            (
                "Wallet-Dlq-Deliveries",
                json!({"type": "string", "pattern": "^[0-9]+$"}),
            ),
            (
                "Wallet-Dlq-Stream-Seq",
                json!({"type": "string", "pattern": "^[0-9]+$", "description": "its sequence in its stream"}),
            ),
            ("Wallet-Dlq-Msg-Id", string("its original Nats-Msg-Id")),
            msg_id(
                "`dlq:<function>:<stream sequence>`; on a shard `dlq:<function>:<shard>:<stream sequence>`",
            ),
        ]),
    }
}
