//! `walletctl status`: what each consumer has waiting, the dead letters per function, and the
//! replicas KEDA would ask for at that lag (from each function's built-in function.toml).

use std::fmt::Write;

use async_nats::jetstream;
use wallet_runtime::Config;
use wallet_runtime::streams::Topology;

pub async fn status(config: &Config, topology: &Topology) -> anyhow::Result<String> {
    let js = jetstream::new(crate::nats(config).await?);
    let names = &config.names;
    let dead = dead_letters_by_function(&js, config)
        .await
        .unwrap_or_default();
    let specs = crate::catalog::built_in();
    let mut out = String::new();
    writeln!(
        out,
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
    for def in &topology.consumers {
        let consumer = names.name(&def.function);
        let dead_letters = dead
            .iter()
            .find(|(f, _)| *f == def.function)
            .map_or(0, |(_, n)| *n);
        let info = match js.get_stream_no_info(names.name(&def.stream)).await {
            Ok(stream) => stream.consumer_info(&consumer).await.ok(),
            Err(_) => None,
        };
        match info {
            Some(i) => {
                // What KEDA's nats-jetstream scaler reads, and what it would ask for.
                let lag = i.num_pending + i.num_ack_pending as u64;
                let replicas =
                    specs
                        .iter()
                        .find(|s| s.name == def.function)
                        .map_or("-".to_owned(), |s| {
                            let sc = &s.scaling;
                            format!(
                                "{} ({}-{})",
                                sc.keda_replicas(lag),
                                sc.min_replicas,
                                sc.max_replicas
                            )
                        });
                writeln!(
                    out,
                    "{:<16} {:<28} {:>10} {:>12} {:>12} {:>12} {:>10} {:>14}",
                    def.function,
                    consumer,
                    i.num_pending,
                    i.num_ack_pending,
                    i.num_redelivered,
                    dead_letters,
                    lag,
                    replicas
                )?
            }
            None => writeln!(
                out,
                "{:<16} {:<28} {:>10}",
                def.function, consumer, "missing (run walletctl setup)"
            )?,
        }
    }
    Ok(out)
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
