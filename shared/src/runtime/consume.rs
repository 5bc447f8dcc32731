//! The consume loop: fetch, decide in one transaction, acknowledge, publish; `BATCHES_IN_FLIGHT`
//! of them per replica on one consumer.

use std::sync::Arc;
use std::time::SystemTime;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::connect::{Backoff, bind, pause};
use super::fetch::Batches;
use super::lag::watch_lag;
use super::settle::{publish_committed, settle};
use super::tasks::Tasks;
use crate::batch;
use crate::context::Context;
use crate::function::Function;
use crate::metrics;
use crate::outbox::Row;
use crate::partition::Routing;
use crate::streams::ConsumerDef;

/// Runs `BATCHES_IN_FLIGHT` consume loops on one consumer, so that one batch's transaction
/// overlaps another's fetch, acknowledgements and publishing (row locks, taken in one order,
/// keep concurrent batches as safe as replicas); one publisher serves them all.
pub(super) async fn consume<F: Function>(
    f: Arc<F>,
    ctx: Arc<Context>,
    def: ConsumerDef,
    routing: Routing,
    tasks: Tasks,
) {
    let shutdown = tasks.shutdown();
    let Some(consumer) = bind(&ctx, &def, &shutdown).await else {
        return;
    };
    // JetStream itself never stops delivering (the consumer's max_deliver is -1): the runtime
    // dead-letters a message on its last allowed delivery, so none is ever left behind.
    let source = Arc::new(batch::Source {
        routing,
        dead_letter_after: def.dead_letter_after,
        reads_map: ctx.config.shard.is_some() && !def.sharded,
    });
    let loops = ctx.config.batches_in_flight;
    tracing::info!(function = F::NAME, consumer = %ctx.names.name(&def.durable(ctx.config.shard.as_deref())), dead_letter_after = source.dead_letter_after, loops, "consuming");
    tasks.spawn(
        "lag watcher",
        watch_lag(F::NAME, consumer.clone(), shutdown.clone()),
    );
    // Publishing runs beside the next batches' transactions; a small bound keeps memory flat.
    let (events, pending) = mpsc::channel::<Vec<Row>>(2 * loops);
    // Supervised: the shutdown waits for it to publish what the last batches committed.
    tasks.spawn(
        "event publisher",
        publish_committed(ctx.publisher(), pending, loops),
    );
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..loops {
        running.spawn(consume_loop(
            f.clone(),
            ctx.clone(),
            consumer.clone(),
            source.clone(),
            events.clone(),
            shutdown.clone(),
        ));
    }
    drop(events);
    while let Some(ended) = running.join_next().await {
        if let Err(e) = ended {
            tasks.failed("consume loop", &e);
        }
    }
}

/// One consume loop: fetch, decide, acknowledge, hand committed events to the publisher.
async fn consume_loop<F: Function>(
    f: Arc<F>,
    ctx: Arc<Context>,
    consumer: PullConsumer,
    source: Arc<batch::Source>,
    events: mpsc::Sender<Vec<Row>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut batches = Batches::new(
        consumer,
        (ctx.config.batch_max, ctx.config.batch_max_bytes),
        ctx.config.fetch_wait,
        ctx.config.batch_linger,
    );
    loop {
        let msgs = match batches.next(&shutdown).await {
            Ok(None) => break,
            Ok(Some(m)) if m.is_empty() => continue,
            Ok(Some(m)) => m,
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed; retrying");
                pause(backoff.delay(), &shutdown).await;
                continue;
            }
        };
        backoff.reset();
        tracing::debug!(function = F::NAME, size = msgs.len(), "fetched");
        let redelivered = msgs
            .iter()
            .filter(|m| m.info().is_ok_and(|i| i.delivered > 1))
            .count();
        metrics::fetched(F::NAME, msgs.len(), redelivered);
        let span = tracing::info_span!("batch", function = F::NAME, size = msgs.len());
        let processed = loop {
            let attempt = async {
                // Redis first: no effect is committed while its events could not be published.
                ctx.cache.ping().await?;
                batch::process(&*f, &ctx, &source, &msgs).await
            };
            match attempt.instrument(span.clone()).await {
                Ok(p) => break Some(p),
                Err(e) => {
                    metrics::transient_error(F::NAME);
                    tracing::warn!(function = F::NAME, error = %e, held = msgs.len(), "dependency unavailable; holding the batch and retrying");
                    // Keep the held deliveries from expiring while we wait.
                    for m in &msgs {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                    if !pause(backoff.delay(), &shutdown).await {
                        break None;
                    }
                }
            }
        };
        // Shut down during an outage: what we hold is redelivered after its ack wait.
        let Some(processed) = processed else { break };
        backoff.reset();
        ctx.in_hand.take(&processed.rows);
        // Decided (effect, rejection or duplicate committed); not those put back for later.
        metrics::committed_commands(
            F::NAME,
            msgs.iter()
                .zip(&processed.dispositions)
                .filter(|(_, d)| matches!(d, batch::Disposition::Ack))
                .filter_map(|(m, _)| m.info().ok().map(|i| SystemTime::from(i.published))),
        );
        settle(&ctx, F::NAME, &msgs, &processed.dispositions)
            .instrument(span)
            .await;

        let t = &processed.tally;
        metrics::settled(F::NAME, t.completed, &t.rejected, t.duplicates);
        if events.send(processed.rows).await.is_err() {
            break;
        }
    }
    batches.release().await;
}
