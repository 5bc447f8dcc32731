//! `walletctl k8s`: Kubernetes manifests generated from the function folders.
//!
//! Each `functions/<name>/function.toml` is the one description of a function (its subject,
//! stream, scaling, resources, extra environment). This module checks it against `streams.toml`
//! (a wrong stream or consumer name in a ScaledObject silently breaks autoscaling) and renders the
//! per-function manifests under `k8s/base/functions/`; `walletctl k8s --check` (run by a test)
//! fails when the committed files differ from what the folders say.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;
use wallet_runtime::streams::Topology;

/// Longer than the runtime's default `SHUTDOWN_GRACE` (25 s): a pod finishes its batch first.
const TERMINATION_GRACE_SECONDS: u32 = 35;
/// The NATS monitoring endpoint KEDA reads consumer lag from (the Helm chart's service).
const NATS_MONITORING: &str = "nats.nats.svc.cluster.local:8222";

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
                ensure!(
                    consumer.filter_subject == s.subject,
                    "{s_name}: function.toml says subject {}, streams.toml's consumer filters {}",
                    s.subject,
                    consumer.filter_subject
                );
                let Some(def) = topology.streams.iter().find(|d| d.name == *stream) else {
                    bail!("{s_name}: streams.toml has no stream {stream}");
                };
                ensure!(
                    def.subjects.contains(&s.subject),
                    "{s_name}: stream {stream} does not carry {}",
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

/// An object's metadata; `app.kubernetes.io/part-of` is added to every object by the base's
/// kustomization.
fn meta(n: &str) -> String {
    format!("metadata:\n  name: {n}\n  labels:\n    app.kubernetes.io/name: {n}\n")
}

const HEADER: &str = "# Generated by `walletctl k8s` from functions/<name>/function.toml: edit that file, not this one.\n";

fn deployment(s: &FunctionSpec) -> String {
    let n = &s.name;
    let r = &s.resources;
    let replicas = s.scaling.min_replicas.max(1);
    // Each function connects as its own PostgreSQL role (walletctl/src/roles.sql): its URL is
    // its own key of the Secret, `DATABASE_URL_DEPOSIT` for `deposit`.
    let database_url_key = secret_key("DATABASE_URL", n);
    // And as its own NATS user (`walletctl/src/nats_users.rs`, k8s/nats/authorization.conf).
    let nats_password_key = crate::nats_users::password_var(n);
    let mut env = String::new();
    for (k, v) in &s.env {
        let _ = write!(env, "\n            - name: {k}\n              value: {v:?}");
    }
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
{meta}spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app.kubernetes.io/name: {n}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {n}
        app.kubernetes.io/part-of: wallet-functions
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "8080"
        prometheus.io/path: /metrics
    spec:
      terminationGracePeriodSeconds: {TERMINATION_GRACE_SECONDS}
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: {n}
          image: wallet-functions
          command: ["/usr/local/bin/{n}"]
          ports:
            - name: http
              containerPort: 8080
          envFrom:
            - configMapRef:
                name: wallet-config
          env:
            - name: DATABASE_URL
              valueFrom:
                secretKeyRef:
                  name: wallet-secrets
                  key: {database_url_key}
            - name: REDIS_URL
              valueFrom:
                secretKeyRef:
                  name: wallet-secrets
                  key: REDIS_URL
            - name: NATS_USER
              value: {n}
            - name: NATS_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: wallet-secrets
                  key: {nats_password_key}{env}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 10
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: 5
          resources:
            requests:
              cpu: {cpu_req:?}
              memory: {mem_req:?}
            limits:
              cpu: {cpu_lim:?}
              memory: {mem_lim:?}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
"#,
        meta = meta(n),
        cpu_req = r.cpu_request,
        mem_req = r.memory_request,
        cpu_lim = r.cpu_limit,
        mem_lim = r.memory_limit,
    )
}

fn scaled_object(s: &FunctionSpec) -> String {
    let n = &s.name;
    let sc = &s.scaling;
    format!(
        r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
{meta}spec:
  scaleTargetRef:
    name: {n}
  minReplicaCount: {min}
  maxReplicaCount: {max}
  cooldownPeriod: {cooldown}
  triggers:
    - type: nats-jetstream
      metadata:
        natsServerMonitoringEndpoint: {NATS_MONITORING:?}
        account: "$G"
        stream: {stream:?}
        consumer: {n:?}
        lagThreshold: "{lag}"
        activationLagThreshold: "{activation}"
"#,
        meta = meta(n),
        min = sc.min_replicas,
        max = sc.max_replicas,
        cooldown = sc.cooldown_seconds.unwrap_or(300),
        stream = s.stream.as_deref().unwrap_or_default(),
        lag = sc.lag_threshold.unwrap_or_default(),
        activation = sc.activation_lag_threshold.unwrap_or_default(),
    )
}

fn service_and_hpa(s: &FunctionSpec) -> String {
    let n = &s.name;
    let sc = &s.scaling;
    format!(
        r#"apiVersion: v1
kind: Service
{meta}spec:
  selector:
    app.kubernetes.io/name: {n}
  ports:
    - name: http
      port: 8080
      targetPort: http
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
{meta}spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {n}
  minReplicas: {min}
  maxReplicas: {max}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {cpu}
"#,
        meta = meta(n),
        min = sc.min_replicas.max(1),
        max = sc.max_replicas,
        cpu = sc.cpu_utilization.unwrap_or(70),
    )
}

/// The generated files, by path under the repository root.
pub fn render(specs: &[FunctionSpec]) -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    let mut resources = String::new();
    for s in specs {
        let scaling = match s.kind {
            Kind::Jetstream => scaled_object(s),
            Kind::RequestReply => service_and_hpa(s),
        };
        let body = format!("{HEADER}{}---\n{scaling}", deployment(s));
        files.insert(
            PathBuf::from(format!("k8s/base/functions/{}.yaml", s.name)),
            body,
        );
        let _ = writeln!(resources, "  - {}.yaml", s.name);
    }
    files.insert(
        PathBuf::from("k8s/base/functions/kustomization.yaml"),
        format!("{HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n{resources}"),
    );
    files
}

/// The NATS users of a deployment without namespace, for nats-server (k8s/nats/values.yaml).
const NATS_AUTHORIZATION: &str = "k8s/nats/authorization.conf";

/// The `authorization` block of every user: the functions, one adapter per default provider, the
/// platform's clients and the operator; passwords from nats-server's environment.
fn nats_authorization(specs: &[FunctionSpec], topology: &Topology) -> String {
    let config = wallet_runtime::Config::from_lookup(|_| None).ok();
    let providers = config.map(|c| c.providers).unwrap_or_default();
    let names = wallet_runtime::names::Names::new("").unwrap_or_default();
    let users = crate::nats_users::users(specs, topology, &providers, &names);
    let body = crate::nats_users::conf(&users, |u| {
        format!("${}", crate::nats_users::password_var(&u.name))
    });
    format!(
        "# Generated by `walletctl k8s` from functions/*/function.toml and streams.toml: edit those.\n\
         # Each password is read from nats-server's environment (the Secret `nats-users`).\n{body}"
    )
}

/// Writes the generated files under `root`, or with `check` only compares them; returns the
/// paths that differ (written, or found stale).
pub fn generate(root: &Path, topology: &Topology, check: bool) -> anyhow::Result<Vec<PathBuf>> {
    let specs = specs(root)?;
    check_agreement(&specs, topology)?;
    let mut differ = Vec::new();
    let mut files = render(&specs);
    files.insert(
        PathBuf::from(NATS_AUTHORIZATION),
        nats_authorization(&specs, topology),
    );
    for (path, body) in files {
        let full = root.join(&path);
        if std::fs::read_to_string(&full).ok().as_deref() == Some(body.as_str()) {
            continue;
        }
        if !check {
            if let Some(dir) = full.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&full, body)?;
        }
        differ.push(path);
    }
    Ok(differ)
}
