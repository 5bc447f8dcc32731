//! What JetStream holds during a run: the consumers' lag, sampled every second, per function
//! and per partition, and the messages stored across every stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;
use wallet_runtime::names::Names;
use wallet_runtime::partition::PARTITIONS;
use wallet_runtime::shards::ShardMap;
use wallet_runtime::streams::{Retention, Topology};

use crate::track::Live;

/// The consumers' lag over a run.
#[derive(Debug, Default, Clone)]
pub struct LagSeries {
    /// Seconds since the sampling started, and the summed lag of the run's consumers then.
    pub samples: Vec<(f64, u64)>,
    /// The highest lag each consumer showed.
    pub peak_by_function: BTreeMap<String, u64>,
    /// The most commands each partition held at once in the run's partitioned command streams
    /// (work queues: a command stays until its function acknowledges it, so this is the
    /// partition's share of the lag).
    pub peak_by_partition: BTreeMap<u16, u64>,
}

/// Samples, every second until `stop`, each function's lag as KEDA reads it (messages not yet
/// delivered plus delivered but not acknowledged), and publishes the sum to `live`. With a shard
/// map a function's lag is the sum over its shards' consumers.
pub async fn sample(
    js: jetstream::Context,
    names: Names,
    topology: Topology,
    shards: Option<ShardMap>,
    functions: Vec<&'static str>,
    live: Arc<Live>,
    stop: CancellationToken,
) -> LagSeries {
    let started = Instant::now();
    let mut series = LagSeries::default();
    // Each consumer's stream, looked up once: a sample is then one request per consumer, and
    // one per partitioned command stream for its subjects' counts.
    let mut consumers = Vec::new();
    for (def, shard) in topology.consumers_in(shards.as_ref()) {
        let shard = shard.map(|s| s.name.as_str());
        let per_partition = topology
            .stream(&def.stream)
            .is_some_and(|s| s.partitioned && s.retention == Retention::Workqueue);
        if let Some(f) = functions.iter().find(|f| **f == def.function)
            && let Ok(stream) = js
                .get_stream_no_info(names.name(&def.stream_on(shard)))
                .await
        {
            consumers.push((*f, stream, names.name(&def.durable(shard)), per_partition));
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return series,
            _ = tick.tick() => {}
        }
        let mut total = 0;
        let mut by_function: BTreeMap<&str, u64> = BTreeMap::new();
        let mut by_partition: BTreeMap<u16, u64> = BTreeMap::new();
        for (f, stream, name, per_partition) in &consumers {
            if let Ok(info) = stream.consumer_info(name.as_str()).await {
                let lag = info.num_pending + info.num_ack_pending as u64;
                total += lag;
                *by_function.entry(f).or_default() += lag;
            }
            if *per_partition {
                held_by_partition(stream, &mut by_partition).await;
            }
        }
        for (p, held) in by_partition {
            let peak = series.peak_by_partition.entry(p).or_default();
            *peak = (*peak).max(held);
        }
        for (f, lag) in by_function {
            let peak = series.peak_by_function.entry(f.to_owned()).or_default();
            *peak = (*peak).max(lag);
        }
        live.lag.store(total, Ordering::Relaxed);
        series
            .samples
            .push((started.elapsed().as_secs_f64(), total));
    }
}

/// Adds what `stream` holds on each partition's subjects (`….deposit.144`) to `into`; a sample
/// the server does not answer is skipped.
async fn held_by_partition<I>(
    stream: &jetstream::stream::Stream<I>,
    into: &mut BTreeMap<u16, u64>,
) {
    let Ok(mut subjects) = stream.info_with_subjects(">").await else {
        return;
    };
    while let Ok(Some((subject, held))) = subjects.try_next().await {
        if let Some(p) = subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u16>().ok())
            .filter(|p| *p < PARTITIONS)
        {
            *into.entry(p).or_default() += held as u64;
        }
    }
}

/// The sum of every stream's last sequence (each shard's, with a shard map): the messages
/// JetStream stored so far.
pub async fn stream_sequences(
    js: &jetstream::Context,
    names: &Names,
    topology: &Topology,
    shards: Option<&ShardMap>,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for (def, shard) in topology.streams_in(shards) {
        let mut stream = js.get_stream(names.name(&def.name_on(shard))).await?;
        total += stream.info().await?.state.last_sequence;
    }
    Ok(total)
}
