//! The generated JSON Schemas (`schemas/`, `walletctl interface`) applied to what tests capture:
//! every event and provider request a [`crate::Reader`] reads is validated against the schema
//! of the function that published it, so a schema that disagrees with the code fails a test.

use std::path::PathBuf;
use std::sync::LazyLock;

use serde_json::Value;

/// One message's schema: the subject tokens it matches (`None` for a parameter) and, for an
/// event, its statuses.
struct Known {
    file: PathBuf,
    subject: Vec<Option<String>>,
    statuses: Vec<String>,
    validator: jsonschema::Validator,
}

static KNOWN: LazyLock<Vec<Known>> = LazyLock::new(load);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load() -> Vec<Known> {
    let mut out = Vec::new();
    let asyncapi: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("asyncapi.yaml"))
            .expect("asyncapi.yaml: run `make interface`"),
    )
    .expect("asyncapi.yaml is YAML");
    // A schema's subject is its channel's address; the files name the message.
    let dirs = std::fs::read_dir(root().join("schemas")).expect("schemas/: run `make interface`");
    for dir in dirs.flatten() {
        let function = dir.file_name().to_string_lossy().into_owned();
        for file in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            let message = path.file_stem().unwrap().to_string_lossy().into_owned();
            let Some(address) = address_of(&asyncapi, &format!("{function}.{message}")) else {
                continue;
            };
            let schema: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let statuses = schema
                .pointer("/properties/status/enum")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{}: not a valid JSON Schema: {e}", path.display()));
            out.push(Known {
                file: path,
                subject: address
                    .split('.')
                    .map(|t| (!t.starts_with('{')).then(|| t.to_owned()))
                    .collect(),
                statuses,
                validator,
            });
        }
    }
    out
}

/// The address of the channel that carries `message` (`<function>.<message>`) in asyncapi.yaml.
fn address_of(asyncapi: &Value, message: &str) -> Option<String> {
    asyncapi["channels"]
        .as_object()?
        .values()
        .find(|c| c["messages"].get(message).is_some())
        .and_then(|c| c["address"].as_str().map(str::to_owned))
}

/// Panics when `body`, published on `subject` (namespace included), is an event or provider
/// request whose schema it does not satisfy. Messages with no schema (a test function's) pass.
pub fn check(subject: &str, body: &Value) {
    let tokens: Vec<&str> = subject.split('.').collect();
    let status = body.get("status").and_then(Value::as_str);
    for k in KNOWN.iter() {
        // The namespace, when there is one, is the first token.
        let Some(tail) = tokens
            .len()
            .checked_sub(k.subject.len())
            .map(|n| &tokens[n..])
        else {
            continue;
        };
        let matches = tail
            .iter()
            .zip(&k.subject)
            .all(|(t, want)| want.as_deref().is_none_or(|w| w == *t));
        if !matches
            || (!k.statuses.is_empty()
                && !status.is_some_and(|s| k.statuses.iter().any(|k| k == s)))
        {
            continue;
        }
        let errors: Vec<String> = k
            .validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{subject}: {body} does not satisfy {}: {}",
            k.file.display(),
            errors.join("; ")
        );
        return;
    }
}
