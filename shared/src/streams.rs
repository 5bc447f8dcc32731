//! The JetStream topology: every stream and consumer, as `streams.toml` describes them.
//!
//! The file is built into every binary (`STREAMS_FILE` may point at another). [`Topology::apply`]
//! is what `walletctl setup` runs: it creates what is missing, updates in place what JetStream
//! lets change, and reports — never forces — a change that would need a stream or consumer to be
//! deleted and recreated, since that would drop the messages it holds.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, consumer, stream};
use serde::Deserialize;

use crate::names::Names;
use crate::partition::Routing;
use crate::shards::{Shard, ShardMap};

/// The largest command the contract accepts.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// The largest message a command stream stores, headers included (its `max_msg_size` in
/// streams.toml): a command and 8 KiB of headers. Larger ones are refused at publish time.
pub const MAX_STORED_COMMAND_BYTES: usize = MAX_COMMAND_BYTES + 8 * 1024;

/// The `streams.toml` at the repository root, compiled in.
pub const BUILT_IN: &str = include_str!("../../streams.toml");

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid streams file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid streams file: {0}")]
    Invalid(String),
    #[error("JetStream: {0}")]
    Nats(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(rename = "stream")]
    pub streams: Vec<StreamDef>,
    #[serde(rename = "consumer", default)]
    pub consumers: Vec<ConsumerDef>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamDef {
    pub name: String,
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub discard: Discard,
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    #[serde(default, with = "humantime_serde")]
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_msg_size: i32,
    #[serde(default = "one")]
    pub replicas: usize,
    /// A command stream whose commands may carry their user's partition as one more, last token
    /// (`wallet.deposit.144`, docs/sharding.md): it takes each of its subjects bare and followed
    /// by `.*`. Its consumer reads it whole, unfiltered: nats-server 2.9 gives a consumer one
    /// filter, and none selects both `wallet.deposit` and `wallet.deposit.144`. With a shard map
    /// it takes each subject followed by each partition, spelled out; when a sharded consumer
    /// reads it, it is one stream per shard instead (see [`Topology::streams_in`]).
    #[serde(default)]
    pub partitioned: bool,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Limits,
    Workqueue,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    #[default]
    Old,
    New,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDef {
    /// The function (folder and binary name) that reads this consumer; also its durable name.
    pub function: String,
    pub stream: String,
    /// The subjects of its stream it reads; all of them when unset (a partitioned stream's).
    #[serde(default)]
    pub filter_subject: Option<String>,
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries a message gets before the runtime dead-letters it (`max_deliver`).
    pub dead_letter_after: i64,
    pub max_ack_pending: i64,
    /// It may run on each of several shards (docs/sharding.md): its stream carries the
    /// partition, every effect of its commands stays in the user's partition, and nothing it
    /// waits for comes back without the partition. Off, a shard map of several shards gives it no
    /// consumer at all, rather than one that would decide commands it cannot finish.
    #[serde(default)]
    pub sharded: bool,
}

impl Topology {
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let t: Topology = toml::from_str(text)?;
        for c in &t.consumers {
            if c.dead_letter_after < 1 {
                return Err(TopologyError::Invalid(format!(
                    "consumer `{}`: dead_letter_after must be at least 1",
                    c.function
                )));
            }
            let Some(stream) = t.streams.iter().find(|s| s.name == c.stream) else {
                return Err(TopologyError::Invalid(format!(
                    "consumer `{}` names unknown stream `{}`",
                    c.function, c.stream
                )));
            };
            if c.sharded && !stream.partitioned {
                return Err(TopologyError::Invalid(format!(
                    "consumer `{}` is sharded, but its stream `{}` is not partitioned",
                    c.function, c.stream
                )));
            }
            if !c.sharded
                && t.consumers
                    .iter()
                    .any(|other| other.sharded && other.stream == c.stream)
            {
                return Err(TopologyError::Invalid(format!(
                    "consumer `{}` is not sharded, but its stream `{}` is read by a sharded \
                     consumer: with a shard map that stream is one per shard",
                    c.function, c.stream
                )));
            }
            if stream.partitioned && c.filter_subject.is_some() {
                return Err(TopologyError::Invalid(format!(
                    "consumer `{}` filters the partitioned stream `{}`: it must read it whole \
                     (one filter cannot take both its bare and its partitioned subjects)",
                    c.function, c.stream
                )));
            }
        }
        // JetStream refuses a stream whose subjects overlap another's: said here, before setup.
        for (i, a) in t.streams.iter().enumerate() {
            for b in &t.streams[i + 1..] {
                if a.name == b.name {
                    return Err(TopologyError::Invalid(format!(
                        "stream `{}` is defined twice",
                        a.name
                    )));
                }
                let (a_subjects, b_subjects) = (a.taken(), b.taken());
                let overlapping = a_subjects.iter().find_map(|x| {
                    b_subjects
                        .iter()
                        .find(|y| subjects_overlap(x, y))
                        .map(|y| (x, y))
                });
                if let Some((x, y)) = overlapping {
                    return Err(TopologyError::Invalid(format!(
                        "subject {y} of stream `{}` overlaps {x}, which stream `{}` takes",
                        b.name, a.name
                    )));
                }
            }
        }
        Ok(t)
    }

    /// The built-in topology, or the file `STREAMS_FILE` names.
    pub fn load(file: Option<&Path>) -> Result<Self, TopologyError> {
        match file {
            None => Self::parse(BUILT_IN),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse(&text)
            }
        }
    }

    pub fn consumer(&self, function: &str) -> Option<&ConsumerDef> {
        self.consumers.iter().find(|c| c.function == function)
    }

    pub fn stream(&self, name: &str) -> Option<&StreamDef> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The subjects `consumer` reads (its filter, or all its stream takes), unprefixed.
    pub fn read_by(&self, consumer: &ConsumerDef) -> Vec<String> {
        match &consumer.filter_subject {
            Some(f) => vec![f.clone()],
            None => self
                .stream(&consumer.stream)
                .map(StreamDef::taken)
                .unwrap_or_default(),
        }
    }

    /// Every consumer as a deployment has it: each function's one, or with a shard map one
    /// per shard (`<function>-<shard>`); with several shards, only the `sharded` ones (see
    /// [`Topology::apply`]).
    pub fn consumers_in<'a>(
        &'a self,
        shards: Option<&'a ShardMap>,
    ) -> Vec<(&'a ConsumerDef, Option<&'a Shard>)> {
        let Some(map) = shards else {
            return self.consumers.iter().map(|c| (c, None)).collect();
        };
        self.consumers
            .iter()
            .filter(|c| map.shards().len() == 1 || c.sharded)
            .flat_map(|c| map.shards().iter().map(move |s| (c, Some(s))))
            .collect()
    }

    /// Every stream as a deployment has it. With a shard map, a partitioned stream that a
    /// sharded consumer reads is one stream per shard, `<stream>-<shard>`, taking that shard's
    /// partitions; each shard's consumer then reads its own stream whole. One stream with a
    /// consumer per shard filtering its partitions was the first design: nats-server walks every
    /// subject a consumer's filters match for each message it delivers (a 2-shard deposit-max
    /// cost it 3 times the CPU of one shard, bench/ANALYSIS.md), while a stream's subjects cost
    /// one lookup at publish.
    pub fn streams_in<'a>(
        &'a self,
        shards: Option<&'a ShardMap>,
    ) -> Vec<(&'a StreamDef, Option<&'a Shard>)> {
        self.streams
            .iter()
            .flat_map(|s| match shards {
                Some(map) if self.split(s) => map.shards().iter().map(|sh| (s, Some(sh))).collect(),
                _ => vec![(s, None)],
            })
            .collect()
    }

    /// True when `stream` is one per shard under a shard map: a sharded consumer reads it (parse
    /// checks that every consumer of it is sharded then).
    fn split(&self, stream: &StreamDef) -> bool {
        self.consumers
            .iter()
            .any(|c| c.sharded && c.stream == stream.name)
    }

    /// The routing of the stream that takes `subject` (unprefixed, as the stream lists it); none
    /// when no stream does.
    pub fn routing(&self, subject: &str) -> Routing {
        self.streams
            .iter()
            .find(|s| s.subjects.iter().any(|x| x == subject))
            .map(Routing::of)
            .unwrap_or_default()
    }

    /// Creates or updates every stream and consumer; returns one line per object saying what
    /// happened. Objects that would need recreation are reported with `NOT APPLIED`.
    ///
    /// With a shard map, a partitioned stream takes only its partitioned subjects (a command on
    /// the bare subject, which names no shard, is refused at the publisher: no stream takes it)
    /// and each shard gets its own consumer of it, reading that shard's partitions. With several
    /// shards a consumer not marked `sharded` gets none, reported `NOT APPLIED`.
    pub async fn apply(
        &self,
        js: &jetstream::Context,
        names: &Names,
        shards: Option<&ShardMap>,
    ) -> Result<Vec<String>, TopologyError> {
        let mut report = Vec::new();
        for (def, shard) in self.streams_in(shards) {
            let want = def.config(names, shards.is_some(), shard);
            report.push(apply_stream(js, want).await?);
        }
        let applied = self.consumers_in(shards);
        for def in &self.consumers {
            if !applied.iter().any(|(c, _)| c.function == def.function) {
                report.push(format!(
                    "consumer {}: NOT APPLIED: `{}` is not sharded in the streams file, so it \
                     runs on one shard only (docs/sharding.md)",
                    names.name(&def.function),
                    def.function,
                ));
            }
        }
        for (def, shard) in applied {
            let shard = shard.map(|s| s.name.as_str());
            let stream = names.name(&def.stream_on(shard));
            report.push(apply_consumer(js, &stream, def.config(names, shard)).await?);
        }
        Ok(report)
    }
}

impl StreamDef {
    /// The subjects it takes, unprefixed: its own, and each followed by `.*` when partitioned.
    pub fn taken(&self) -> Vec<String> {
        let partitioned = self
            .partitioned
            .then(|| self.subjects.iter().map(|s| format!("{s}.*")));
        self.subjects
            .iter()
            .cloned()
            .chain(partitioned.into_iter().flatten())
            .collect()
    }

    /// Its name without the namespace, and on `shard` the shard's own (`DEPOSITS-a`,
    /// [`Topology::streams_in`]).
    pub fn name_on(&self, shard: Option<&Shard>) -> String {
        on_shard(&self.name, shard.map(|s| s.name.as_str()))
    }

    /// Its configuration. `sharded` (there is a shard map): a partitioned stream takes each of
    /// its subjects followed by each partition, spelled out, and neither the bare subject nor
    /// any other token. No shard's consumer could read a command on `wallet.deposit.x`: it would
    /// wait in the stream for good, so its publish is refused instead (no stream takes it).
    /// `shard`: it is that shard's stream, taking only the shard's partitions.
    pub fn config(&self, names: &Names, sharded: bool, shard: Option<&Shard>) -> stream::Config {
        let taken = match shard {
            Some(shard) => shard.subjects(&self.subjects),
            None if sharded && self.partitioned => self
                .subjects
                .iter()
                .flat_map(|s| (0..crate::partition::PARTITIONS).map(move |p| format!("{s}.{p}")))
                .collect(),
            None => self.taken(),
        };
        stream::Config {
            name: names.name(&self.name_on(shard)),
            subjects: taken.iter().map(|s| names.subject(s)).collect(),
            retention: match self.retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
            },
            discard: match self.discard {
                Discard::Old => stream::DiscardPolicy::Old,
                Discard::New => stream::DiscardPolicy::New,
            },
            storage: stream::StorageType::File,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_message_size: self.max_msg_size,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// `name` on `shard`: `<name>-<shard>` (a consumer `deposit-a`, a stream `DEPOSITS-a`).
fn on_shard(name: &str, shard: Option<&str>) -> String {
    match shard {
        Some(shard) => format!("{name}-{shard}"),
        None => name.to_owned(),
    }
}

impl ConsumerDef {
    /// Its durable name, without the namespace: the function's, and on a shard
    /// `<function>-<shard>`.
    pub fn durable(&self, shard: Option<&str>) -> String {
        on_shard(&self.function, shard)
    }

    /// The stream it reads on `shard`, without the namespace: a sharded consumer's is the
    /// shard's own (`DEPOSITS-a`, [`Topology::streams_in`]).
    pub fn stream_on(&self, shard: Option<&str>) -> String {
        on_shard(&self.stream, shard.filter(|_| self.sharded))
    }

    /// Its configuration, for `shard`'s process when there is a shard map. It never needs more
    /// than its own filter: a sharded consumer's stream holds only its shard's partitions.
    pub fn config(&self, names: &Names, shard: Option<&str>) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(names.name(&self.durable(shard))),
            filter_subject: self
                .filter_subject
                .as_deref()
                .map(|f| names.subject(f))
                .unwrap_or_default(),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_wait: self.ack_wait,
            // Unlimited: JetStream would drop a message silently after its last delivery, even
            // one whose dead letter the DLQ refused. The runtime counts instead.
            max_deliver: -1,
            // Never a backoff: see streams.toml.
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }
}

/// True when the literal `subject` is one that the filter `filter` (with NATS's `*` and `>`
/// wildcards) selects.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    if subject
        .split('.')
        .any(|t| t.is_empty() || t == "*" || t == ">")
    {
        return false;
    }
    let mut subject_tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// True when some subject matches both filters (`*` and `>` wildcards in either).
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) | (None, None) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            _ => return false,
        }
    }
}

fn nats_err(e: impl std::fmt::Display) -> TopologyError {
    TopologyError::Nats(e.to_string())
}

async fn apply_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<String, TopologyError> {
    let name = want.name.clone();
    let mut existing = match js.get_stream(&name).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(want).await.map_err(nats_err)?;
            return Ok(format!("stream {name}: created"));
        }
        Err(e) => return Err(nats_err(e)),
    };
    let have = existing.info().await.map_err(nats_err)?.config.clone();
    if have.retention != want.retention || have.storage != want.storage {
        return Ok(format!(
            "stream {name}: NOT APPLIED: retention or storage differs ({:?}/{:?} on the server, {:?}/{:?} wanted); \
             that needs the stream recreated, which setup never does to a stream that may hold messages",
            have.retention, have.storage, want.retention, want.storage
        ));
    }
    let changed = differing([
        ("subjects", have.subjects != want.subjects),
        ("discard", have.discard != want.discard),
        (
            "duplicate_window",
            have.duplicate_window != want.duplicate_window,
        ),
        ("max_age", have.max_age != want.max_age),
        ("max_bytes", have.max_bytes != want.max_bytes),
        (
            "max_msg_size",
            have.max_message_size != want.max_message_size,
        ),
        ("replicas", have.num_replicas != want.num_replicas),
    ]);
    if changed.is_empty() {
        return Ok(format!("stream {name}: unchanged"));
    }
    // Update from the server's own config so that fields this file does not manage survive.
    let update = stream::Config {
        subjects: want.subjects,
        discard: want.discard,
        duplicate_window: want.duplicate_window,
        max_age: want.max_age,
        max_bytes: want.max_bytes,
        max_message_size: want.max_message_size,
        num_replicas: want.num_replicas,
        ..have
    };
    let result = js.update_stream(update).await;
    Ok(updated(&format!("stream {name}"), &changed, result))
}

/// The names of the settings that differ between the server and the file.
fn differing<const N: usize>(settings: [(&'static str, bool); N]) -> Vec<&'static str> {
    settings
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
}

/// The line that reports an update of `what` (`stream X`, `consumer Y`) changing `changed`.
fn updated<T, E: std::fmt::Display>(what: &str, changed: &[&str], result: Result<T, E>) -> String {
    let changed = changed.join(", ");
    match result {
        Ok(_) => format!("{what}: updated ({changed})"),
        Err(e) => {
            format!("{what}: NOT APPLIED: the server refused to change {changed} in place: {e}")
        }
    }
}

async fn apply_consumer(
    js: &jetstream::Context,
    stream: &str,
    want: consumer::pull::Config,
) -> Result<String, TopologyError> {
    let name = want.durable_name.clone().expect("a durable consumer");
    let stream = js.get_stream_no_info(stream).await.map_err(nats_err)?;
    let have = match stream.consumer_info(&name).await {
        Ok(info) => Some(info.config),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
        Err(e) => return Err(nats_err(e)),
    };
    let Some(have) = have else {
        stream.create_consumer(want).await.map_err(nats_err)?;
        return Ok(format!("consumer {name}: created"));
    };
    let changed = differing([
        ("filter_subject", have.filter_subject != want.filter_subject),
        (
            "filter_subjects",
            have.filter_subjects != want.filter_subjects,
        ),
        ("ack_wait", have.ack_wait != want.ack_wait),
        ("max_deliver", have.max_deliver != want.max_deliver),
        ("backoff", have.backoff != want.backoff),
        (
            "max_ack_pending",
            have.max_ack_pending != want.max_ack_pending,
        ),
    ]);
    if changed.is_empty() {
        return Ok(format!("consumer {name}: unchanged"));
    }
    let result = stream.create_consumer(want).await;
    Ok(updated(&format!("consumer {name}"), &changed, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_file_describes_every_stream_of_the_contract() {
        let t = Topology::parse(BUILT_IN).expect("built-in streams.toml");
        let names: Vec<_> = t.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "DEPOSITS",
                "TRANSFERS",
                "PROVIDER_ACKS",
                "BONUS",
                "PROVIDER_REQUESTS",
                "WALLET_EVENTS",
                "DLQ",
                "WITHDRAW",
                "PAYOUT_REQUESTS",
                "PAYOUT_ACKS",
                "TRANSFER_IN"
            ]
        );
        let deposit = t.consumer("deposit").expect("deposit consumer");
        assert_eq!(deposit.stream, "DEPOSITS");
        let deposits = t.stream("DEPOSITS").expect("deposits");
        let c = deposit.config(&Names::new("t").expect("ns"), None);
        assert_eq!(c.durable_name.as_deref(), Some("t_deposit"));
        assert_eq!(c.filter_subject, "", "reads its partitioned stream whole");
        let stream = deposits.config(&Names::new("t").expect("ns"), false, None);
        assert_eq!(stream.subjects, ["t.wallet.deposit", "t.wallet.deposit.*"]);
        // Sharded: the bare subject names no shard, so no stream takes it.
        let sharded = deposits.config(&Names::new("t").expect("ns"), true, None);
        assert_eq!(sharded.subjects.len(), 256);
        assert_eq!(sharded.subjects[0], "t.wallet.deposit.0");
        assert_eq!(sharded.subjects[255], "t.wallet.deposit.255");
        let map = ShardMap::parse(
            "[[shard]]\nname = \"a\"\ndatabase_url = \"postgres://h/a\"\npartitions = \"0-1\"\n\
             [[shard]]\nname = \"b\"\ndatabase_url = \"postgres://h/b\"\npartitions = \"2-255\"\n",
        )
        .expect("a map");
        // Each shard's consumer reads its own stream, which takes the shard's partitions.
        let a = deposit.config(&Names::new("t").expect("ns"), Some("a"));
        assert_eq!(a.durable_name.as_deref(), Some("t_deposit-a"));
        assert_eq!(
            (a.filter_subject.as_str(), a.filter_subjects.len()),
            ("", 0)
        );
        assert_eq!(deposit.stream_on(Some("a")), "DEPOSITS-a");
        assert_eq!(deposit.stream_on(None), "DEPOSITS");
        let on_a = deposits.config(&Names::new("t").expect("ns"), true, map.get("a"));
        assert_eq!(on_a.name, "t_DEPOSITS-a");
        assert_eq!(on_a.subjects, ["t.wallet.deposit.0", "t.wallet.deposit.1"]);
        assert_eq!(t.read_by(deposit), ["wallet.deposit", "wallet.deposit.*"]);
        assert_eq!(
            t.routing("wallet.deposit").publish("wallet.deposit", "u-7"),
            "wallet.deposit.144"
        );
        let acks = t.consumer("provider-ack").expect("provider-ack");
        assert_eq!(t.read_by(acks), ["provider.*.ack", "provider.*.ack.*"]);
        assert_eq!(
            t.routing("provider.alpha.ack")
                .publish("provider.alpha.ack", "u-7"),
            "provider.alpha.ack"
        );
    }

    #[test]
    fn a_partitioned_stream_is_read_whole() {
        let file = |filter: &str| {
            format!(
                "[[stream]]\nname = \"S\"\nsubjects = [\"a.b\"]\npartitioned = true\n\
                 duplicate_window = \"30s\"\nmax_bytes = 1\nmax_msg_size = 1\n\
                 [[consumer]]\nfunction = \"f\"\nstream = \"S\"\n{filter}\
                 ack_wait = \"30s\"\ndead_letter_after = 1\nmax_ack_pending = 1\n"
            )
        };
        assert!(Topology::parse(&file("")).is_ok());
        let err = Topology::parse(&file("filter_subject = \"a.b\"\n"))
            .expect_err("a filter on a partitioned stream");
        assert!(
            err.to_string()
                .contains("filters the partitioned stream `S`"),
            "{err}"
        );
    }

    #[test]
    fn several_shards_run_only_the_sharded_consumers() {
        let mut t = Topology::parse(BUILT_IN).expect("built-in streams.toml");
        // As a function added without `sharded` is deployed.
        t.consumers
            .iter_mut()
            .filter(|c| c.function == "bonus-grant")
            .for_each(|c| c.sharded = false);
        let url = |name: &str| format!("postgres://h/{name}");
        let one = ShardMap::even(&[url("a")]);
        let two = ShardMap::even(&[url("a"), url("b")]);
        let names = |map| -> Vec<String> {
            t.consumers_in(Some(map))
                .iter()
                .map(|(c, s)| c.durable(s.map(|s| s.name.as_str())))
                .collect()
        };
        assert_eq!(names(&one).len(), t.consumers.len());
        assert!(names(&one).contains(&"provider-ack-a".to_owned()));
        // Every consumer but the one not sharded.
        let sharded: Vec<String> = t
            .consumers
            .iter()
            .filter(|c| c.function != "bonus-grant")
            .flat_map(|c| [format!("{}-a", c.function), format!("{}-b", c.function)])
            .collect();
        assert_eq!(names(&two), sharded);
        // A stream a sharded consumer reads is one per shard; the others stay one stream.
        let streams: Vec<(String, usize, String)> = t
            .streams_in(Some(&two))
            .iter()
            .map(|(s, shard)| {
                let c = s.config(&Names::default(), true, *shard);
                (c.name, c.subjects.len(), c.subjects[0].clone())
            })
            .collect();
        let stream = |name: &str| streams.iter().find(|s| s.0 == name).cloned();
        assert_eq!(
            stream("PROVIDER_ACKS-b"),
            Some(("PROVIDER_ACKS-b".into(), 128, "provider.*.ack.128".into()))
        );
        assert_eq!(stream("PROVIDER_ACKS"), None);
        assert_eq!(
            stream("PROVIDER_REQUESTS"),
            Some((
                "PROVIDER_REQUESTS".into(),
                768,
                "provider.*.transfer.0".into()
            ))
        );
        assert_eq!(stream("BONUS").map(|s| s.1), Some(256));
        assert_eq!(stream("WALLET_EVENTS").map(|s| s.1), Some(1));
        assert_eq!(streams.len(), t.streams.len() + 6);

        let unpartitioned = "[[stream]]\nname = \"S\"\nsubjects = [\"a.b\"]\n\
                             duplicate_window = \"30s\"\nmax_bytes = 1\nmax_msg_size = 1\n\
                             [[consumer]]\nfunction = \"f\"\nstream = \"S\"\nsharded = true\n\
                             ack_wait = \"30s\"\ndead_letter_after = 1\nmax_ack_pending = 1\n";
        let err = Topology::parse(unpartitioned).expect_err("refused");
        assert!(
            err.to_string()
                .contains("is sharded, but its stream `S` is not partitioned"),
            "{err}"
        );
        let consumer = |f: &str, sharded: bool| {
            format!(
                "[[consumer]]\nfunction = \"{f}\"\nstream = \"S\"\nsharded = {sharded}\n\
                 ack_wait = \"30s\"\ndead_letter_after = 1\nmax_ack_pending = 1\n"
            )
        };
        let stream = "[[stream]]\nname = \"S\"\nsubjects = [\"a.b\"]\npartitioned = true\n\
                      duplicate_window = \"30s\"\nmax_bytes = 1\nmax_msg_size = 1\n";
        let mixed = format!("{stream}{}{}", consumer("f", true), consumer("g", false));
        let err = Topology::parse(&mixed).expect_err("refused");
        assert!(
            err.to_string()
                .contains("`g` is not sharded, but its stream `S` is read by a sharded consumer"),
            "{err}"
        );
    }

    #[test]
    fn subjects_match_filters_as_nats_does() {
        assert!(subject_matches("t.provider.*.ack", "t.provider.alpha.ack"));
        assert!(subject_matches("wallet.deposit", "wallet.deposit"));
        assert!(subject_matches("dlq.>", "dlq.deposit"));
        assert!(!subject_matches(
            "t.provider.*.ack",
            "t.provider.alpha.transfer"
        ));
        assert!(!subject_matches("t.provider.*.ack", "t.provider.ack"));
        assert!(!subject_matches("wallet.deposit", "wallet.deposit.x"));
        assert!(!subject_matches(
            "wallet.deposit",
            "wallet.events.deposit.completed"
        ));
        assert!(!subject_matches("t.provider.*.ack", "t.provider.*.ack"));
        assert!(subjects_overlap("payout.*.ack", "payout.psp-1.ack"));
        assert!(subjects_overlap("payout.*.ack", "payout.>"));
        assert!(subjects_overlap("wallet.>", "wallet.a.b"));
        assert!(subjects_overlap("a.*", "*.b"));
        assert!(!subjects_overlap("payout.*.ack", "payout.*.request"));
        assert!(!subjects_overlap("wallet.deposit", "wallet.deposit.x"));
        assert!(!subjects_overlap("wallet.>", "wallet"));
        assert!(!subjects_overlap("provider.*.ack", "payout.*.ack"));
    }

    #[test]
    fn a_consumer_on_an_unknown_stream_is_refused() {
        let text = BUILT_IN.replace("stream = \"DEPOSITS\"", "stream = \"NOPE\"");
        assert!(Topology::parse(&text).is_err());
    }
}
