//! The interface documents (`asyncapi.yaml`, `schemas/`) against the code that generates them and
//! the contract that describes them (docs/CONTRACT.md).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn contract() -> String {
    std::fs::read_to_string(root().join("docs/CONTRACT.md")).unwrap()
}

/// Every `schemas/<function>/<message>.json`, by `<function>/<message>`.
fn schemas() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for dir in std::fs::read_dir(root().join("schemas")).unwrap() {
        let dir = dir.unwrap();
        for file in std::fs::read_dir(dir.path()).unwrap() {
            let path: PathBuf = file.unwrap().path();
            let key = format!(
                "{}/{}",
                dir.file_name().to_string_lossy(),
                path.file_stem().unwrap().to_string_lossy()
            );
            let schema = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            out.insert(key, schema);
        }
    }
    out
}

fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap();
    validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn asyncapi_and_schemas_are_what_the_function_binaries_say() {
    let bin_dir = testkit::binary("deposit").parent().unwrap().to_path_buf();
    let stale = walletctl::asyncapi::generate(root(), &bin_dir, true).unwrap();
    assert!(
        stale.is_empty(),
        "asyncapi.yaml or schemas/ is stale, run `make interface`: {stale:?}"
    );
    let doc: Value =
        serde_norway::from_str(&std::fs::read_to_string(root().join("asyncapi.yaml")).unwrap())
            .unwrap();
    // Valid AsyncAPI 3.0, by the specification's own JSON Schema.
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("vendor/schemas/asyncapi-3.0.0.json")).unwrap(),
    )
    .unwrap();
    let invalid = errors(&spec, &doc);
    assert!(
        invalid.is_empty(),
        "asyncapi.yaml is not AsyncAPI 3.0: {invalid:#?}"
    );
    let mut broken = doc.clone();
    broken["operations"]["deposit.receive"]["action"] = Value::from("consume");
    assert!(
        !errors(&spec, &broken).is_empty(),
        "the AsyncAPI schema checks operations"
    );
    // Every channel's parameters are its address's, and every reference resolves.
    for (id, channel) in doc["channels"].as_object().unwrap() {
        let address = channel["address"].as_str().unwrap_or("");
        let params: BTreeSet<&str> = address
            .split('.')
            .filter_map(|t| t.strip_prefix('{').and_then(|t| t.strip_suffix('}')))
            .collect();
        let declared: BTreeSet<&str> = channel
            .get("parameters")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(params, declared, "channel {id}");
    }
    let text = serde_json::to_string(&doc).unwrap();
    for r in text.split("\"$ref\":\"").skip(1) {
        let pointer = &r[..r.find('"').unwrap()];
        let pointer = pointer.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling $ref #{pointer}");
    }
    // The commands a client can send, with the stream that keeps them: what streams.toml's
    // consumers read (a `{parameter}` of the address is the filter's `*`), a partitioned
    // stream's commands on their partitions too.
    let consumed: BTreeMap<String, String> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| {
            let address = c["address"].as_str()?;
            let filter: Vec<&str> = address
                .split('.')
                .map(|t| if t.starts_with('{') { "*" } else { t })
                .collect();
            Some((
                filter.join("."),
                c.get("x-jetstream")?["stream"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let topology = wallet_runtime::streams::Topology::load(None).unwrap();
    let consumers: BTreeMap<String, String> = topology
        .consumers
        .iter()
        .flat_map(|c| {
            topology
                .read_by(c)
                .into_iter()
                .map(|s| (s, c.stream.clone()))
        })
        .collect();
    assert_eq!(consumed, consumers);
    for read in ["wallet.deposit", "wallet.deposit.*", "provider.*.ack"] {
        assert!(consumed.contains_key(read), "{read}");
    }
}

/// The contract's JSON examples satisfy the schemas: the event of §4 is a deposit event, the
/// reply of §7 a balance reply; and the schemas are strict enough to refuse a broken one.
#[test]
fn the_contracts_examples_satisfy_the_schemas() {
    let schemas = schemas();
    let contract = contract();
    let examples: Vec<Value> = contract
        .split("```json")
        .skip(1)
        .map(|b| serde_json::from_str(&b[..b.find("```").unwrap()]).unwrap())
        .collect();
    let wanted = [
        ("deposit/command", "deposit_id"),
        ("transfer-out/command", "transfer_id"),
        ("provider-ack/command", "status"),
        ("bonus-grant/command", "grant_id"),
        ("deposit/event", "entity"),
        ("balance/request", "user_id"),
        ("balance/reply", "wallets"),
    ];
    for (schema, field) in wanted {
        let example = examples
            .iter()
            .find(|e| e.get(field).is_some() && errors(&schemas[schema], e).is_empty())
            .unwrap_or_else(|| {
                panic!("no example in docs/CONTRACT.md satisfies schemas/{schema}.json")
            });
        // Without a field the schema requires, it fails.
        let required = strings(schemas[schema].get("required"));
        if let Some(first) = required.first() {
            let mut broken = example.clone();
            broken.as_object_mut().unwrap().remove(first);
            assert!(
                !errors(&schemas[schema], &broken).is_empty(),
                "{schema} without {first}"
            );
        }
    }
    let event = examples.iter().find(|e| e.get("entity").is_some()).unwrap();
    assert_eq!(event["schema_version"], 1);
    let mut rounded = event.clone();
    rounded["amount"] = Value::from(10.5);
    assert!(!errors(&schemas["deposit/event"], &rounded).is_empty());
    let mut unknown = event.clone();
    unknown["reason"] = Value::from("whatever");
    assert!(!errors(&schemas["deposit/event"], &unknown).is_empty());
}

/// §4's table: each entity's statuses and its rejections' reasons, in the contract's order (the
/// order rules are checked in), are exactly what its functions' event schemas allow; §8's
/// dead-letter reasons are exactly those the functions' dead-letter schemas allow.
#[test]
fn statuses_and_reasons_are_the_contracts() {
    let schemas = schemas();
    let contract = contract();
    let section = &contract[contract.find("## 4.").unwrap()..contract.find("## 5.").unwrap()];
    let ticked =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let mut rows = 0;
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let entity = ticked(cells[1]).remove(0);
        // The cell names which function publishes which status, too.
        let functions = wallet_ops::catalog::names();
        let statuses: BTreeSet<String> = ticked(cells[2])
            .into_iter()
            .filter(|s| !functions.contains(s))
            .collect();
        let reasons = ticked(cells[3]);
        let events: Vec<&Value> = schemas
            .iter()
            .filter(|(k, s)| {
                // A function's own entity's `event`; another's `<entity>-event`.
                (k.ends_with("/event") || k.ends_with("-event"))
                    && s["properties"]["entity"]["const"] == entity.as_str()
            })
            .map(|(_, s)| s)
            .collect();
        assert!(!events.is_empty(), "no event schema of {entity}");
        let allowed: BTreeSet<String> = events
            .iter()
            .flat_map(|s| strings(s.pointer("/properties/status/enum")))
            .collect();
        assert_eq!(allowed, statuses, "{entity}'s statuses");
        let rejecting: Vec<Vec<String>> = events
            .iter()
            .map(|s| strings(s.pointer("/properties/reason/enum")))
            .filter(|r| !r.is_empty())
            .collect();
        assert_eq!(rejecting, vec![reasons], "{entity}'s reasons, in order");
        rows += 1;
    }
    // Every entity with events has its row.
    let entities: BTreeSet<String> = schemas
        .iter()
        .filter(|(k, _)| k.ends_with("/event") || k.ends_with("-event"))
        .map(|(_, s)| s["properties"]["entity"]["const"].to_string())
        .collect();
    assert_eq!(rows, entities.len(), "{entities:?}");

    let section = &contract[contract.find("## 8.").unwrap()..];
    let listed = &section[section.find("Dead-letter reasons:").unwrap()..];
    let listed = &listed[..listed.find("`walletctl dlq list").unwrap()];
    let contract_reasons: BTreeSet<String> = ticked(listed)
        .into_iter()
        .filter(|r| r.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    // The dead-letter reasons are in the letters' headers, in asyncapi.yaml.
    let doc: Value =
        serde_norway::from_str(&std::fs::read_to_string(root().join("asyncapi.yaml")).unwrap())
            .unwrap();
    let from_headers: BTreeSet<String> = doc["components"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|m| strings(m.pointer("/headers/properties/Wallet-Dlq-Reason/enum")))
        .collect();
    assert_eq!(from_headers, contract_reasons);
}

/// What every test's reader does with an event: a valid one passes, a wrong one fails the test.
#[test]
fn the_readers_check_refuses_an_event_its_schema_does_not_allow() {
    let good = serde_json::json!({"schema_version": 1, "id": "t-1", "entity": "transfer",
        "status": "completed", "user_id": "u-1", "currency": "USD", "amount": "1.00",
        "balance": "1.00", "reason": null, "provider": "alpha", "at": "2026-12-04T10:00:00.000Z"});
    testkit::schemas::check("ns-1.wallet.events.transfer.completed", &good);
    for (field, value) in [
        ("provider", Value::Null.to_string()),
        ("amount", "1.5e3".to_owned()),
        ("at", "yesterday".to_owned()),
    ] {
        let mut bad = good.clone();
        bad[field] = serde_json::from_str(&value).unwrap_or(Value::from(value));
        let refused = std::panic::catch_unwind(|| {
            testkit::schemas::check("ns-1.wallet.events.transfer.completed", &bad)
        });
        // `provider` may be null (a rejection names no valid provider); the others may not.
        assert_eq!(refused.is_err(), field != "provider", "{field}: {bad}");
    }
    let mut stray = good.clone();
    stray["surprise"] = Value::from(1);
    assert!(
        std::panic::catch_unwind(|| testkit::schemas::check(
            "wallet.events.transfer.completed",
            &stray
        ))
        .is_err()
    );
}
