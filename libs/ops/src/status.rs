//! `walletctl status`: what each consumer has waiting, the dead letters per function, and the
//! replicas KEDA would ask for at that lag (from each function's built-in function.toml).

use std::fmt;

use serde::Serialize;

use async_nats::jetstream;
use wallet_runtime::Config;
use wallet_runtime::streams::Topology;

/// One consumer as `walletctl status` reports it.
#[derive(Debug, Serialize)]
pub struct ConsumerStatus {
    pub function: String,
    pub consumer: String,
    /// `None`: the consumer does not exist (run `walletctl setup`).
    pub state: Option<ConsumerState>,
    pub dead_letters: u64,
}

#[derive(Debug, Serialize)]
pub struct ConsumerState {
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    /// What KEDA's nats-jetstream scaler reads: pending plus unacknowledged.
    pub keda_lag: u64,
    /// The replicas KEDA would ask for at that lag, within the function's min and max.
    pub keda_replicas: Option<KedaReplicas>,
}

#[derive(Debug, Serialize)]
pub struct KedaReplicas {
    pub wanted: u32,
    pub min: u32,
    pub max: u32,
}

/// Every consumer of the topology; `Display` is the table `walletctl status` prints.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Status(pub Vec<ConsumerStatus>);

pub async fn status(config: &Config, topology: &Topology) -> anyhow::Result<Status> {
    let js = jetstream::new(crate::nats(config).await?);
    let names = &config.names;
    let dead = dead_letters_by_function(&js, config)
        .await
        .unwrap_or_default();
    let specs = crate::catalog::built_in();
    let mut out = Vec::new();
    let shards = config.shard_map()?;
    for (def, shard) in topology.consumers_in(shards.as_ref()) {
        let shard = shard.map(|s| s.name.as_str());
        let consumer = names.name(&def.durable(shard));
        let dead_letters = dead
            .iter()
            .find(|(f, _)| *f == def.function)
            .map_or(0, |(_, n)| *n);
        let info = match js
            .get_stream_no_info(names.name(&def.stream_on(shard)))
            .await
        {
            Ok(stream) => stream.consumer_info(&consumer).await.ok(),
            Err(_) => None,
        };
        let state = info.map(|i| {
            let keda_lag = i.num_pending + i.num_ack_pending as u64;
            ConsumerState {
                pending: i.num_pending,
                ack_pending: i.num_ack_pending as u64,
                redelivered: i.num_redelivered as u64,
                keda_lag,
                keda_replicas: specs.iter().find(|s| s.name == def.function).map(|s| {
                    KedaReplicas {
                        wanted: s.scaling.keda_replicas(keda_lag),
                        min: s.scaling.min_replicas,
                        max: s.scaling.max_replicas,
                    }
                }),
            }
        });
        out.push(ConsumerStatus {
            function: def.function.clone(),
            consumer,
            state,
            dead_letters,
        });
    }
    Ok(Status(out))
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:<28} {:>10} {:>12} {:>12} {:>12} {:>10} {:>14}",
            "FUNCTION",
            "CONSUMER",
            "PENDING",
            "ACK_PENDING",
            "REDELIVERED",
            "DEAD_LETTERS",
            "KEDA_LAG",
            "KEDA_REPLICAS"
        )?;
        for c in &self.0 {
            let Some(s) = &c.state else {
                writeln!(
                    f,
                    "{:<16} {:<28} {:>10}",
                    c.function, c.consumer, "missing (run walletctl setup)"
                )?;
                continue;
            };
            let replicas = s.keda_replicas.as_ref().map_or("-".to_owned(), |r| {
                format!("{} ({}-{})", r.wanted, r.min, r.max)
            });
            writeln!(
                f,
                "{:<16} {:<28} {:>10} {:>12} {:>12} {:>12} {:>10} {:>14}",
                c.function,
                c.consumer,
                s.pending,
                s.ack_pending,
                s.redelivered,
                c.dead_letters,
                s.keda_lag,
                replicas
            )?;
        }
        Ok(())
    }
}

/// Dead letters stored per function, from the DLQ stream's per-subject counts.
pub async fn dead_letters_by_function(
    js: &jetstream::Context,
    config: &Config,
) -> anyhow::Result<Vec<(String, u64)>> {
    use futures::TryStreamExt;
    let stream = js.get_stream(config.names.name("DLQ")).await?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(config.names.subject("dlq.>"))
        .await?
        .try_collect()
        .await?;
    Ok(subjects
        .into_iter()
        .filter_map(|(subject, n)| {
            config
                .names
                .strip(&subject)
                .strip_prefix("dlq.")
                .map(|f| (f.to_owned(), n as u64))
        })
        .collect())
}
