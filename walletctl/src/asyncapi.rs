//! `walletctl interface`: `asyncapi.yaml` (AsyncAPI 3.0) and `schemas/<function>/<message>.json`
//! (JSON Schema 2020-12), generated from the function folders.
//!
//! Each function's binary prints its interface (`<function> --interface`: its messages, their
//! schemas generated from its payload types); its `function.toml` says which stream holds its
//! commands. This module checks that the two agree (the subject, the command's fields against
//! the function's dedup fields) and renders the documents; a test fails when the committed ones
//! are stale, so the interface a client reads is the one the code has.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;
use serde_json::{Map, Value, json};
use wallet_ops::catalog::{self, FunctionSpec, Kind};
use wallet_runtime::interface::{Interface, Message, Operation};
use wallet_runtime::streams::Topology;

const ASYNCAPI: &str = "asyncapi.yaml";
const SCHEMAS: &str = "schemas";
const JSON_SCHEMA: &str = "https://json-schema.org/draft/2020-12/schema";

/// Writes `asyncapi.yaml` and `schemas/` under `root` from the binaries in `bin_dir`, or with
/// `check` only compares; returns the paths that differ.
pub fn generate(root: &Path, bin_dir: &Path, check: bool) -> anyhow::Result<Vec<PathBuf>> {
    let specs = catalog::specs(root)?;
    let interfaces = specs
        .iter()
        .map(|s| interface(bin_dir, s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let topology = Topology::load(Some(&root.join("streams.toml")))?;
    let files = render(&specs, &topology, &interfaces)?;
    crate::generated::write_or_check(root, &files, &[SCHEMAS], check)
}

/// What `<bin_dir>/<function> --interface` prints, checked against its `function.toml`.
pub fn interface(bin_dir: &Path, spec: &FunctionSpec) -> anyhow::Result<Interface> {
    let bin = bin_dir.join(&spec.name);
    let out = Command::new(&bin)
        .arg("--interface")
        .output()
        .with_context(|| format!("running {} --interface (build it first)", bin.display()))?;
    ensure!(
        out.status.success(),
        "{} --interface failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let interface: Interface = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} --interface printed no interface", bin.display()))?;
    agree(spec, &interface)?;
    Ok(interface)
}

/// Every way a function's interface can disagree with its `function.toml` and its own keys.
fn agree(spec: &FunctionSpec, i: &Interface) -> anyhow::Result<()> {
    let name = &spec.name;
    ensure!(
        i.function == *name,
        "{name}: its binary says it is `{}`",
        i.function
    );
    let (received, wanted) = match spec.kind {
        Kind::Jetstream => ("command", "a command"),
        Kind::RequestReply => ("request", "a request"),
    };
    let Some(first) = i.message(received) else {
        bail!(
            "{name}: its interface has no {received}: a {:?} function receives {wanted}",
            spec.kind
        );
    };
    // `{provider}` in the interface is `*` in the consumer's filter.
    let filter = parameters_as_wildcards(&first.subject);
    ensure!(
        filter == spec.subject,
        "{name}: its interface receives `{}`, its function.toml says `{}`",
        first.subject,
        spec.subject
    );
    if let Some(keys) = &i.command {
        // Dedup fingerprints the required fields and any optional one the function counts as
        // part of the command (a missing one as null): a copy that differs in any of them is a
        // conflict, not a repeat.
        let fields: Vec<String> = i.command_fields().into_iter().map(|(f, _)| f).collect();
        let required = i.required_fields();
        ensure!(
            keys.fields.starts_with(&required) && keys.fields.iter().all(|f| fields.contains(f)),
            "{name}: its command schema requires {required:?} of {fields:?}, but the function deduplicates on {:?} (FIELDS): list the required ones first, in the schema's order, then any optional ones",
            keys.fields
        );
        ensure!(
            keys.fields.first() == Some(&keys.id_field),
            "{name}: its id field `{}` is not the first of FIELDS",
            keys.id_field
        );
    }
    Ok(())
}

fn parameters_as_wildcards(subject: &str) -> String {
    subject
        .split('.')
        .map(|t| if t.starts_with('{') { "*" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// The parameters of a subject (`provider` in `provider.{provider}.ack`).
fn parameters(subject: &str) -> Vec<&str> {
    subject
        .split('.')
        .filter_map(|t| t.strip_prefix('{').and_then(|t| t.strip_suffix('}')))
        .collect()
}

/// A channel's id: its address without braces, or `<function>.reply` for a reply.
fn channel_id(function: &str, m: &Message) -> String {
    if m.subject.is_empty() {
        format!("{function}.reply")
    } else {
        m.subject.replace(['{', '}'], "")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    asyncapi: &'static str,
    info: Value,
    servers: Value,
    default_content_type: &'static str,
    channels: BTreeMap<String, Value>,
    operations: BTreeMap<String, Value>,
    components: Value,
}

/// The generated files, by path under the repository root.
pub fn render(
    specs: &[FunctionSpec],
    topology: &Topology,
    interfaces: &[Interface],
) -> anyhow::Result<BTreeMap<PathBuf, String>> {
    let mut files = BTreeMap::new();
    let mut channels: BTreeMap<String, Value> = BTreeMap::new();
    let mut operations = BTreeMap::new();
    let mut messages = Map::new();
    for (spec, i) in specs.iter().zip(interfaces) {
        for m in &i.messages {
            let mut schema =
                json!({ "$schema": JSON_SCHEMA, "title": format!("{} {}", i.function, m.name) });
            if let (Some(s), Some(p)) = (schema.as_object_mut(), m.payload.as_object()) {
                s.extend(p.clone());
            }
            let path = PathBuf::from(format!("{SCHEMAS}/{}/{}.json", i.function, m.name));
            files.insert(
                path,
                format!("{}\n", serde_json::to_string_pretty(&schema)?),
            );

            let message_id = format!("{}.{}", i.function, m.name);
            messages.insert(
                message_id.clone(),
                json!({
                    "name": message_id,
                    "title": format!("{} {}", i.function, m.name),
                    "summary": m.summary,
                    "contentType": "application/json",
                    "headers": m.headers,
                    "payload": m.payload,
                }),
            );
            // A command of a partitioned stream, and a request, are received on their user's
            // partition too.
            let partitioned = m.operation == Operation::Receive
                && (spec.kind == Kind::RequestReply
                    || spec
                        .stream
                        .as_deref()
                        .and_then(|n| topology.stream(n))
                        .is_some_and(|d| d.partitioned));
            let on_partition = partitioned.then(|| Message {
                subject: format!("{}.{{partition}}", m.subject),
                ..m.clone()
            });
            add_channel(&mut channels, &mut operations, (spec, i), m, "receive");
            if let Some(m) = on_partition {
                add_channel(
                    &mut channels,
                    &mut operations,
                    (spec, i),
                    &m,
                    "receive.partitioned",
                );
            }
        }
    }
    let document = Document {
        asyncapi: "3.0.0",
        info: json!({
            "title": "Wallet Functions",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Commands, outcome events, provider requests and dead letters of the wallet functions, generated by `walletctl interface` from the function folders: edit those. The contract in prose is docs/CONTRACT.md. Every subject is prefixed with `<WALLET_NAMESPACE>.` when a namespace is set.",
            "license": { "name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0" },
        }),
        servers: json!({
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "NATS with JetStream (`NATS_URL`). Commands are published to JetStream with `Nats-Msg-Id`; the balance query is core NATS request-reply.",
            }
        }),
        default_content_type: "application/json",
        channels,
        operations,
        components: json!({ "messages": messages }),
    };
    let yaml = serde_norway::to_string(&document)?;
    files.insert(
        PathBuf::from(ASYNCAPI),
        format!(
            "# Generated by `walletctl interface` (make interface) from functions/*: edit those.\n{yaml}"
        ),
    );
    Ok(files)
}

/// `m`'s channel (shared with other functions' messages on its address) and its operation, added;
/// a message received is the operation `<function>.<receive>`.
fn add_channel(
    channels: &mut BTreeMap<String, Value>,
    operations: &mut BTreeMap<String, Value>,
    (spec, i): (&FunctionSpec, &Interface),
    m: &Message,
    receive: &str,
) {
    let message_id = format!("{}.{}", i.function, m.name);
    let id = channel_id(&i.function, m);
    let channel = channels.entry(id.clone()).or_insert_with(|| {
        let address = if m.subject.is_empty() {
            Value::Null
        } else {
            Value::from(m.subject.clone())
        };
        json!({ "address": address, "messages": {} })
    });
    let c = channel.as_object_mut().expect("a channel is an object");
    if let Some(Value::Object(ms)) = c.get_mut("messages") {
        ms.insert(
            message_id.clone(),
            json!({ "$ref": format!("#/components/messages/{message_id}") }),
        );
    }
    let params: Map<String, Value> = parameters(&m.subject)
        .into_iter()
        .map(|p| (p.to_owned(), parameter(p, m)))
        .collect();
    if !params.is_empty() {
        let existing = c.entry("parameters").or_insert_with(|| json!({}));
        merge_parameters(existing, params);
    }
    if let (Operation::Receive, Some(stream)) = (m.operation, &spec.stream) {
        c.insert(
            "x-jetstream".into(),
            json!({ "stream": stream, "consumer": spec.name }),
        );
    }
    let message_ref = json!({ "$ref": format!("#/channels/{id}/messages/{message_id}") });
    match m.operation {
        Operation::Receive => {
            // The NATS binding: a request-reply function answers in a queue group of
            // its name; a JetStream function reads through its durable consumer
            // (`x-jetstream` on the channel).
            let mut nats = json!({ "bindingVersion": "0.1.0" });
            if spec.kind == Kind::RequestReply {
                nats["queue"] = Value::from(spec.name.clone());
            }
            let mut op = json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{id}") },
                "summary": m.summary,
                "messages": [message_ref],
                "bindings": { "nats": nats },
            });
            if let Some(reply) = i.messages.iter().find(|r| r.operation == Operation::Reply) {
                let reply_id = channel_id(&i.function, reply);
                let reply_message = format!("{}.{}", i.function, reply.name);
                op["reply"] = json!({
                    "channel": { "$ref": format!("#/channels/{reply_id}") },
                    "messages": [{ "$ref": format!("#/channels/{reply_id}/messages/{reply_message}") }],
                });
            }
            operations.insert(format!("{}.{receive}", i.function), op);
        }
        Operation::Send => {
            operations.insert(
                format!("{}.send.{}", i.function, m.name),
                json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{id}") },
                    "summary": m.summary,
                    "messages": [message_ref],
                }),
            );
        }
        Operation::Reply => {}
    }
}

/// A subject parameter's description; `status` lists the event's statuses.
fn parameter(name: &str, m: &Message) -> Value {
    match name {
        "status" => {
            let statuses = m
                .payload
                .pointer("/properties/status/enum")
                .cloned()
                .unwrap_or(Value::Null);
            json!({ "description": "the event's status", "enum": statuses })
        }
        "provider" => json!({ "description": "a configured provider (`[a-z0-9-]{1,32}`)" }),
        "partition" => json!({
            "description": "the partition of the command's or request's `user_id`, 0 to 255: FNV-1a (32-bit) of its UTF-8 bytes, modulo 256 (docs/CONTRACT.md §3)",
        }),
        _ => json!({ "description": name }),
    }
}

/// Two functions publish on one channel (transfer events): its `status` takes both's statuses.
fn merge_parameters(existing: &mut Value, new: Map<String, Value>) {
    let Some(existing) = existing.as_object_mut() else {
        return;
    };
    for (name, param) in new {
        match (existing.get_mut(&name), param.get("enum")) {
            (Some(old), Some(Value::Array(more))) => {
                if let Some(Value::Array(values)) = old.get_mut("enum") {
                    for v in more {
                        if !values.contains(v) {
                            values.push(v.clone());
                        }
                    }
                }
            }
            (Some(_), _) => {}
            (None, _) => {
                existing.insert(name, param);
            }
        }
    }
}
