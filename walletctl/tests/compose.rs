//! `compose.yaml` against the Compose Specification's own schema (this machine has no Docker to
//! run `docker compose config`) and against what `make run` runs.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).unwrap();
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

#[test]
fn compose_yaml_is_valid_compose_and_runs_what_make_run_runs() {
    let spec: Value = serde_json::from_str(&read("vendor/schemas/compose-spec.json")).unwrap();
    let compose: Value = serde_norway::from_str(&read("compose.yaml")).unwrap();
    let invalid = errors(&spec, &compose);
    assert!(invalid.is_empty(), "compose.yaml: {invalid:#?}");
    let mut broken = compose.clone();
    broken["services"]["deposit"]["depends_on"]["setup"]["condition"] = Value::from("whenever");
    assert!(
        !errors(&spec, &broken).is_empty(),
        "the schema checks conditions"
    );

    let services = compose["services"].as_object().unwrap();
    for server in ["nats", "postgres", "redis"] {
        assert!(services[server]["healthcheck"].is_object(), "{server}");
    }
    assert_eq!(services["setup"]["command"][1], "setup");
    for function in wallet_ops::catalog::names() {
        let s = &services[&function];
        assert_eq!(s["command"][0], format!("/usr/local/bin/{function}"));
        assert_eq!(
            s["depends_on"]["setup"]["condition"], "service_completed_successfully",
            "{function} starts after setup"
        );
        assert_eq!(s["environment"]["NATS_URL"], "nats://nats:4222");
        assert_eq!(
            s["environment"]["DATABASE_URL"],
            "postgres://postgres@postgres:5432/wallet"
        );
    }
    assert_eq!(services["provider-sim"]["command"][1], "provider-sim");
}
