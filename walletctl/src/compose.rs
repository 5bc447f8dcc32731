//! `compose.yaml`: the whole system under Docker Compose, for those who have Docker — what
//! `make run` gives: NATS with JetStream and monitoring, PostgreSQL (its official image is built
//! with lz4, which the outbox needs), Redis, `walletctl setup`, every function and the provider
//! simulator. Generated with the Kubernetes manifests (`make k8s`) from the same function
//! folders, so a new function is in it without an edit; validated against the Compose
//! Specification's schema (vendor/schemas/compose-spec.json) by a test.

use std::collections::BTreeMap;

use serde::Serialize;
use wallet_ops::catalog::FunctionSpec;

#[derive(Debug, Serialize)]
struct Compose {
    name: &'static str,
    services: BTreeMap<String, Service>,
    volumes: BTreeMap<&'static str, BTreeMap<String, String>>,
}

#[derive(Debug, Default, Serialize)]
struct Service {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    depends_on: BTreeMap<&'static str, Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Healthcheck {
    test: Vec<&'static str>,
    interval: &'static str,
    retries: u32,
}

#[derive(Debug, Serialize)]
struct Condition {
    condition: &'static str,
}

/// The image `make image` builds (the Dockerfile); every service of ours runs a binary of it.
const IMAGE: &str = "wallet-functions:latest";

/// The environment every process of ours reads (CONTRACT §1), pointing at the services here.
fn environment() -> BTreeMap<String, String> {
    [
        ("NATS_URL", "nats://nats:4222"),
        ("DATABASE_URL", "postgres://postgres@postgres:5432/wallet"),
        ("REDIS_URL", "redis://redis:6379"),
        ("HTTP_ADDR", "0.0.0.0:8080"),
        ("RUST_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn ours(command: &[&str]) -> Service {
    Service {
        image: IMAGE.to_owned(),
        build: Some("."),
        command: command.iter().map(|c| (*c).to_owned()).collect(),
        environment: environment(),
        ..Service::default()
    }
}

/// Checked every 2 s, up to a minute.
fn health(test: &[&'static str]) -> Option<Healthcheck> {
    Some(Healthcheck {
        test: test.to_vec(),
        interval: "2s",
        retries: 30,
    })
}

fn healthy(names: &[&'static str], condition: &'static str) -> BTreeMap<&'static str, Condition> {
    names
        .iter()
        .map(|n| (*n, Condition { condition }))
        .collect()
}

/// `compose.yaml` for these functions.
pub fn render(specs: &[FunctionSpec]) -> String {
    let mut services = BTreeMap::new();
    services.insert(
        "nats".to_owned(),
        Service {
            image: "nats:2.10-alpine".to_owned(),
            command: ["--jetstream", "--store_dir", "/data", "--http_port", "8222"]
                .map(str::to_owned)
                .to_vec(),
            ports: vec!["4222:4222".to_owned(), "8222:8222".to_owned()],
            volumes: vec!["nats:/data"],
            healthcheck: health(&["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8222/healthz"]),
            ..Service::default()
        },
    );
    services.insert(
        "postgres".to_owned(),
        Service {
            image: "postgres:15".to_owned(),
            environment: BTreeMap::from([(
                "POSTGRES_HOST_AUTH_METHOD".to_owned(),
                "trust".to_owned(),
            )]),
            ports: vec!["5432:5432".to_owned()],
            volumes: vec!["postgres:/var/lib/postgresql/data"],
            healthcheck: health(&["CMD", "pg_isready", "-U", "postgres"]),
            ..Service::default()
        },
    );
    services.insert(
        "redis".to_owned(),
        Service {
            image: "redis:7".to_owned(),
            // Never the source of truth: nothing on disk, as on the development machine.
            command: ["redis-server", "--save", "", "--appendonly", "no"]
                .map(str::to_owned)
                .to_vec(),
            ports: vec!["6379:6379".to_owned()],
            healthcheck: health(&["CMD", "redis-cli", "ping"]),
            ..Service::default()
        },
    );
    services.insert(
        "setup".to_owned(),
        Service {
            depends_on: healthy(&["nats", "postgres", "redis"], "service_healthy"),
            ..ours(&["/usr/local/bin/walletctl", "setup"])
        },
    );
    let after_setup = || healthy(&["setup"], "service_completed_successfully");
    // Health and metrics on the host's 8081, 8082, … in the functions' order, as `make run`.
    for (i, s) in specs.iter().enumerate() {
        let mut service = ours(&[&format!("/usr/local/bin/{}", s.name)]);
        service.environment.extend(s.env.clone());
        service.ports = vec![format!("{}:8080", 8081 + i)];
        service.depends_on = after_setup();
        service.restart = Some("on-failure");
        services.insert(s.name.clone(), service);
    }
    services.insert(
        "provider-sim".to_owned(),
        Service {
            depends_on: after_setup(),
            restart: Some("on-failure"),
            ..ours(&["/usr/local/bin/walletctl", "provider-sim"])
        },
    );
    let compose = Compose {
        name: "wallet-functions",
        services,
        volumes: BTreeMap::from([("nats", BTreeMap::new()), ("postgres", BTreeMap::new())]),
    };
    let yaml =
        serde_norway::to_string(&compose).unwrap_or_else(|e| format!("# not serialisable: {e}\n"));
    format!(
        "# Generated by `walletctl k8s` from functions/*/function.toml: edit those.\n\
         # `docker compose up` runs what `make run` runs (needs Docker; the image builds from the\n\
         # Dockerfile on first use).\n{yaml}"
    )
}
