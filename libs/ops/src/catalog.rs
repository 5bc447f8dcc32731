//! The functions' catalogue: each `functions/<name>/function.toml` is the one description of a
//! function (its subject, stream, scaling, resources, extra environment, what it publishes).
//!
//! Everything that needs the list of functions reads it here: `walletctl k8s` renders manifests
//! from it, `walletctl status` shows each function's scaling, the NATS users and PostgreSQL roles
//! are made per function, and the test kit and `chaos` start each one. The files are built into
//! this crate (`build.rs`), so the catalogue is known from any working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;
use wallet_runtime::streams::Topology;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Jetstream,
    RequestReply,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub lag_threshold: Option<u64>,
    pub activation_lag_threshold: Option<u64>,
    pub cooldown_seconds: Option<u32>,
    /// KEDA: how often it reads the consumer's lag (its default, 30 s, is slow for a flash crowd).
    pub polling_interval_seconds: Option<u32>,
    pub cpu_utilization: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

/// A function's `function.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    pub kind: Kind,
    pub subject: String,
    pub stream: Option<String>,
    /// Subjects it publishes besides its acknowledgements and its dead letters: its NATS
    /// user may publish these and no other ([`crate::nats_users`]).
    #[serde(default)]
    pub publishes: Vec<String>,
    pub scaling: Scaling,
    pub resources: Resources,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

include!(concat!(env!("OUT_DIR"), "/function_specs.rs"));

/// The function.toml files built into this binary.
pub fn built_in() -> Vec<FunctionSpec> {
    FUNCTION_SPECS
        .iter()
        .filter_map(|text| toml::from_str(text).ok())
        .collect()
}

/// Every function's name, as the catalogue built into this crate has them (sorted).
pub fn names() -> Vec<String> {
    built_in().into_iter().map(|s| s.name).collect()
}

impl Scaling {
    /// The replicas KEDA's `nats-jetstream` scaler asks for at this consumer lag (its lag is
    /// pending plus unacknowledged): none beyond `min_replicas` until the lag passes
    /// `activation_lag_threshold`, then ceil(lag / `lag_threshold`) within min and max.
    pub fn keda_replicas(&self, lag: u64) -> u32 {
        let (Some(threshold), Some(activation)) =
            (self.lag_threshold, self.activation_lag_threshold)
        else {
            return self.min_replicas;
        };
        if lag <= activation {
            return self.min_replicas;
        }
        let wanted = lag.div_ceil(threshold.max(1));
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        wanted.clamp(self.min_replicas.max(1), self.max_replicas.max(1))
    }
}

/// Reads every `functions/*/function.toml` under `root`, sorted by name.
pub fn specs(root: &Path) -> anyhow::Result<Vec<FunctionSpec>> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("functions"))
        .with_context(|| format!("reading {}/functions", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let file = dir.join("function.toml");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("{}: every function folder needs one", file.display()))?;
        let spec: FunctionSpec =
            toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
        let folder = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        ensure!(
            spec.name == folder,
            "{}: name `{}` is not its folder `{folder}`",
            file.display(),
            spec.name
        );
        out.push(spec);
    }
    Ok(out)
}

/// Every way a function's description can disagree with `streams.toml`.
pub fn check_agreement(specs: &[FunctionSpec], topology: &Topology) -> anyhow::Result<()> {
    for s in specs {
        let s_name = &s.name;
        match s.kind {
            Kind::Jetstream => {
                let Some(stream) = &s.stream else {
                    bail!("{s_name}: a jetstream function names its stream");
                };
                let Some(consumer) = topology.consumer(s_name) else {
                    bail!(
                        "{s_name}: streams.toml has no [[consumer]] with function = \"{s_name}\""
                    );
                };
                ensure!(
                    consumer.stream == *stream,
                    "{s_name}: function.toml says stream {stream}, streams.toml's consumer reads {}",
                    consumer.stream
                );
                if let Some(filter) = &consumer.filter_subject {
                    ensure!(
                        *filter == s.subject,
                        "{s_name}: function.toml says subject {}, streams.toml's consumer filters {filter}",
                        s.subject,
                    );
                }
                let Some(def) = topology.stream(stream) else {
                    bail!("{s_name}: streams.toml has no stream {stream}");
                };
                ensure!(
                    def.subjects.contains(&s.subject),
                    "{s_name}: stream {stream} does not carry {}",
                    s.subject
                );
                // An unfiltered consumer reads its whole stream: the stream must hold nothing else.
                ensure!(
                    consumer.filter_subject.is_some()
                        || def.subjects == std::slice::from_ref(&s.subject),
                    "{s_name}: its consumer reads stream {stream} whole, which carries {} besides {}",
                    def.subjects.join(", "),
                    s.subject
                );
                ensure!(
                    s.scaling.lag_threshold.is_some()
                        && s.scaling.activation_lag_threshold.is_some(),
                    "{s_name}: [scaling] needs lag_threshold and activation_lag_threshold"
                );
            }
            Kind::RequestReply => {
                ensure!(
                    s.stream.is_none(),
                    "{s_name}: a request-reply function reads no stream"
                );
                ensure!(
                    s.scaling.cpu_utilization.is_some(),
                    "{s_name}: [scaling] needs cpu_utilization (it scales on CPU)"
                );
            }
        }
        ensure!(
            s.scaling.min_replicas <= s.scaling.max_replicas && s.scaling.max_replicas > 0,
            "{s_name}: min_replicas must not exceed max_replicas"
        );
    }
    Ok(())
}

/// The Secret key (and environment variable) of `prefix` for `name`: `DATABASE_URL_PROVIDER_ACK`
/// for `provider-ack`.
pub fn secret_key(prefix: &str, name: &str) -> String {
    format!("{prefix}_{}", name.to_uppercase().replace('-', "_"))
}
