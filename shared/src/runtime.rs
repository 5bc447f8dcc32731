//! Running a function: start-up, the consume loop, request-reply serving and shutdown.
//!
//! A binary's `main` is one call: [`run`] for a JetStream function, [`serve`] for a request-reply
//! one. Start-up reads the configuration (a bad value: one line on stderr, exit 64), starts
//! `/healthz`, `/readyz` and `/metrics`, connects (waiting out dependencies that are down), and
//! runs until SIGTERM or SIGINT. Then it stops fetching, finishes and acknowledges what it holds,
//! and exits 0 within `SHUTDOWN_GRACE`; a second signal ends it at once (exit 128 + signal).

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::{self, Disposition};
use crate::cache::BalanceCache;
use crate::config::{Config, EXIT_CONFIG};
use crate::context::Context;
use crate::dlq;
use crate::error::StepError;
use crate::function::Function;
use crate::ledger::Ledger;
use crate::outbox::{self, Publisher, Row};
use crate::streams::{ConsumerDef, Topology};
use crate::{db, http, telemetry};

/// A request-reply function (core NATS, queue group `<ns>_<NAME>`).
pub trait Responder: Send + Sync + 'static {
    const NAME: &'static str;
    /// The subject it answers, without the namespace prefix.
    const SUBJECT: &'static str;

    fn respond<'a>(
        &'a self,
        ctx: &'a Context,
        payload: &'a [u8],
    ) -> impl Future<Output = Vec<u8>> + Send + 'a;
}

/// Runs the JetStream function `f` until a signal; the whole `main` of its binary.
pub fn run<F: Function>(f: F) -> ExitCode {
    start(F::NAME, move |ctx, topology, shutdown| async move {
        let Some(def) = topology.consumer(F::NAME).cloned() else {
            return Err(format!(
                "no consumer for function `{}` in the streams file",
                F::NAME
            ));
        };
        let largest = topology
            .streams
            .iter()
            .find(|s| s.name == def.stream)
            .and_then(|s| usize::try_from(s.max_msg_size).ok())
            .filter(|&n| n > 0);
        if largest.is_none_or(|n| n > ctx.config.batch_max_bytes) {
            return Err(format!(
                "invalid BATCH_MAX_BYTES: {} bytes; stream {} may store larger messages (max_msg_size {largest:?}), which no fetch could take",
                ctx.config.batch_max_bytes, def.stream
            ));
        }
        let background = tokio::spawn(f.background(ctx.clone(), shutdown.clone()));
        consume(Arc::new(f), ctx, def, shutdown).await;
        let _ = background.await;
        Ok(())
    })
}

/// Runs the request-reply function `r` until a signal; the whole `main` of its binary.
pub fn serve<R: Responder>(r: R) -> ExitCode {
    start(R::NAME, move |ctx, _, shutdown| async move {
        respond_loop(Arc::new(r), ctx, shutdown).await;
        Ok(())
    })
}

fn start<M, Fut>(name: &'static str, main: M) -> ExitCode
where
    M: FnOnce(Arc<Context>, Topology, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let setup = || -> Result<_, String> {
        let config = Config::from_env().map_err(|e| e.to_string())?;
        let topology = Topology::load(config.streams_file.as_deref())
            .map_err(|e| format!("invalid STREAMS_FILE: {e}"))?;
        let filter = telemetry::filter().map_err(|e| e.to_string())?;
        Ok((config, topology, filter))
    };
    let (config, topology, filter) = match setup() {
        Ok(s) => s,
        Err(e) => {
            telemetry::report(format_args!("{name}: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init_logs(filter, config.json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            telemetry::report(format_args!("{name}: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        watch_signals(name, shutdown.clone());
        let listener = match tokio::net::TcpListener::bind(config.http_addr).await {
            Ok(l) => l,
            Err(e) => {
                telemetry::report(format_args!("{name}: cannot listen on HTTP_ADDR {}: {e}", config.http_addr));
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let grace = config.shutdown_grace;
        let slot = Arc::new(OnceLock::new());
        let http = tokio::spawn(http::serve(listener, slot.clone(), telemetry::init_metrics(), shutdown.clone()));
        tracing::info!(function = name, config = ?config, "starting");
        let ctx = match connect(name, config, &shutdown).await {
            Ok(Some(ctx)) => ctx,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                telemetry::report(format_args!("{name}: {e}"));
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let _ = slot.set(ctx.clone());
        let relay = tokio::spawn(outbox::relay(ctx.publisher(), ctx.config.outbox_relay_interval, shutdown.clone()));
        let work = main(ctx.clone(), topology, shutdown.clone());
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            () = shutdown.cancelled() => match tokio::time::timeout(grace, &mut work).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(function = name, ?grace, "shutdown grace elapsed with work in flight; it will be redelivered");
                    return ExitCode::FAILURE;
                }
            },
        };
        shutdown.cancel();
        let _ = ctx.nats.flush().await;
        let _ = tokio::join!(relay, http);
        match result {
            Ok(()) => {
                tracing::info!(function = name, "stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                telemetry::report(format_args!("{name}: {e}"));
                ExitCode::from(EXIT_CONFIG)
            }
        }
    })
}

/// First SIGTERM/SIGINT: cancel `shutdown`. Second: exit at once with 128 + signal.
fn watch_signals(name: &'static str, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        // Before anything else, logging included: nothing may stand between a signal and the
        // shutdown it asks for.
        shutdown.cancel();
        tracing::info!(function = name, "signal received: finishing in-flight work");
        let code = tokio::select! { _ = term.recv() => 15, _ = int.recv() => 2 };
        tracing::warn!(function = name, "second signal: exiting now");
        std::process::exit(128 + code);
    });
}

/// Connects to NATS, PostgreSQL and Redis. NATS and PostgreSQL connect lazily and reconnect by
/// themselves; Redis is awaited here. `Ok(None)`: shut down while waiting.
async fn connect(
    name: &str,
    config: Config,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<Context>>, String> {
    let nats = config
        .nats_auth
        .options()
        .await
        .map_err(|e| format!("NATS_CREDS: {e}"))?
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(
            config
                .nats_url
                .split(',')
                .map(str::trim)
                .collect::<Vec<_>>()
                .as_slice(),
        )
        .await
        .map_err(|e| format!("NATS_URL: {e}"))?;
    let js = jetstream::new(nats.clone());
    let pool = db::pool(&config).map_err(|e| format!("DATABASE_URL: {e}"))?;
    let client = crate::cache::client(&config).map_err(|e| format!("REDIS_URL: {e}"))?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let mut backoff = Backoff::default();
    let redis = loop {
        match redis::aio::ConnectionManager::new_with_config(client.clone(), manager_config.clone())
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "redis unavailable; retrying");
                if !pause(backoff.next(), shutdown).await {
                    return Ok(None);
                }
            }
        }
    };
    let names = config.names.clone();
    Ok(Some(Arc::new(Context {
        cache: BalanceCache::new(redis.clone(), names.clone()),
        redis,
        ledger: Ledger::default(),
        names,
        nats,
        js,
        pool,
        config,
    })))
}

/// Exponential backoff from 100 ms to 5 s: short enough to keep held messages alive (progress
/// acks go out at every step), long enough not to hammer a dependency that is down.
#[derive(Debug, Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = Duration::from_millis(100 << self.0.min(6)).min(Duration::from_secs(5));
        self.0 += 1;
        d
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Sleeps `d`; false when `shutdown` came first.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn bind(
    ctx: &Context,
    def: &ConsumerDef,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let (stream, name) = (ctx.names.name(&def.stream), ctx.names.name(&def.function));
    let mut backoff = Backoff::default();
    loop {
        let found = async {
            ctx.js
                .get_stream_no_info(&stream)
                .await?
                .get_consumer::<pull::Config>(&name)
                .await
        };
        match found.await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(stream, consumer = name, error = %e, "consumer unavailable (has `walletctl setup` run?); retrying")
            }
        }
        if !pause(backoff.next(), shutdown).await {
            return None;
        }
    }
}

/// Takes what is ready, up to `max`; when nothing is, waits up to `wait` for one message and
/// then takes what else is ready. A batch still short of `max` then waits up to `linger` for
/// more: under a steady load that is not enough to fill batches, it turns many small batches,
/// each paying its round trips and two commits, into fewer larger ones (what keeps the peak
/// profile from saturating the machine). A shutdown strands at most the deliveries of the
/// requests in flight, which come back after their ack wait.
///
/// Every pull is also bounded here: a pull request dies with the server that held it (a
/// nats-server restart, a cut connection), and then no end-of-request status ever comes, so
/// without a deadline of its own the loop would wait forever (`make chaos` found it).
async fn fetch(
    consumer: &PullConsumer,
    (max, max_bytes): (usize, usize),
    wait: Duration,
    linger: Duration,
) -> Result<Vec<Message>, StepError> {
    let deadline = tokio::time::Instant::now() + wait + PULL_MARGIN;
    let drain = |s| drain_until(s, deadline);
    async fn drain_until(
        mut s: impl futures::Stream<Item = Result<Message, impl std::fmt::Display>> + Unpin,
        deadline: tokio::time::Instant,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, s.next()).await {
            match m {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::debug!(error = %e, "fetch ended early");
                    break;
                }
            }
        }
        out
    }
    // What is ready now, up to `n` messages and `bytes` (a no-wait pull).
    let ready = |n: usize, bytes: usize| async move {
        let s = consumer
            .fetch()
            .max_messages(n)
            .max_bytes(bytes)
            .messages()
            .await
            .map_err(StepError::transient)?;
        Ok::<_, StepError>(drain(s).await)
    };
    let size = |msgs: &[Message]| msgs.iter().map(|m| m.length).sum::<usize>();
    let mut msgs = ready(max, max_bytes).await?;
    if msgs.is_empty() {
        msgs = drain(
            consumer
                .batch()
                .max_messages(1)
                .max_bytes(max_bytes)
                .expires(wait)
                .messages()
                .await
                .map_err(StepError::transient)?,
        )
        .await;
        let left = max_bytes.saturating_sub(size(&msgs));
        if !msgs.is_empty() && max > 1 && left > 0 {
            msgs.extend(ready(max - 1, left).await?);
        }
    }
    if !msgs.is_empty() && msgs.len() < max && !linger.is_zero() {
        // Waited out here, then what is ready is taken: a pull request with a short expiry is
        // not reliable, nats-server 2.9 sometimes lets one lapse without its end-of-request
        // status. A failed request costs only the extra messages: what is held is decided.
        tokio::time::sleep(linger).await;
        let left = max_bytes.saturating_sub(size(&msgs));
        if left > 0 {
            msgs.extend(ready(max - msgs.len(), left).await.unwrap_or_default());
        }
    }
    Ok(msgs)
}

/// How long past its own expiry a pull may take before the runtime gives up on it.
const PULL_MARGIN: Duration = Duration::from_secs(5);

/// Runs `BATCHES_IN_FLIGHT` consume loops on one consumer, so that one batch's transaction
/// overlaps another's fetch, acknowledgements and publishing (row locks, taken in one order,
/// keep concurrent batches as safe as replicas); one publisher serves them all.
async fn consume<F: Function>(
    f: Arc<F>,
    ctx: Arc<Context>,
    def: ConsumerDef,
    shutdown: CancellationToken,
) {
    let Some(consumer) = bind(&ctx, &def, &shutdown).await else {
        return;
    };
    // JetStream itself never stops delivering (the consumer's max_deliver is -1): the runtime
    // dead-letters a message on its last allowed delivery, so none is ever left behind.
    let dead_letter_after = def.dead_letter_after;
    let loops = ctx.config.batches_in_flight;
    tracing::info!(function = F::NAME, consumer = %ctx.names.name(&def.function), dead_letter_after, loops, "consuming");
    tokio::spawn(watch_lag(F::NAME, consumer.clone(), shutdown.clone()));
    // Publishing runs beside the next batches' transactions; a small bound keeps memory flat.
    let (events, pending) = mpsc::channel::<Vec<Row>>(2 * loops);
    let publisher = tokio::spawn(publish_committed(ctx.publisher(), pending, loops));
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..loops {
        running.spawn(consume_loop(
            f.clone(),
            ctx.clone(),
            consumer.clone(),
            dead_letter_after,
            events.clone(),
            shutdown.clone(),
        ));
    }
    drop(events);
    while running.join_next().await.is_some() {}
    let _ = publisher.await;
}

/// One consume loop: fetch, decide, acknowledge, hand committed events to the publisher.
async fn consume_loop<F: Function>(
    f: Arc<F>,
    ctx: Arc<Context>,
    consumer: PullConsumer,
    dead_letter_after: i64,
    events: mpsc::Sender<Vec<Row>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    // Under a backlog (a full batch) the next batch is fetched while this one is decided: a fetch
    // of 1,000 messages takes tens of milliseconds the loop would otherwise spend waiting. A short
    // batch means the consumer has caught up: the next fetch then starts after this batch, and
    // takes everything that arrived meanwhile (fewer, larger transactions at a steady rate).
    let (max, wait, linger) = (
        (ctx.config.batch_max, ctx.config.batch_max_bytes),
        ctx.config.fetch_wait,
        ctx.config.batch_linger,
    );
    let fetch_now = || {
        let consumer = consumer.clone();
        tokio::spawn(async move { fetch(&consumer, max, wait, linger).await })
    };
    let mut next = None;
    loop {
        let mut fetching = match next.take() {
            Some(f) => f,
            None if shutdown.is_cancelled() => break,
            None => fetch_now(),
        };
        let fetched = tokio::select! {
            biased;
            // A batch already fetched is decided before stopping; one still arriving is dropped
            // (its messages come back after their ack wait).
            () = shutdown.cancelled(), if !fetching.is_finished() => {
                fetching.abort();
                break;
            }
            r = &mut fetching => r.unwrap_or_else(|e| Err(StepError::transient(e))),
        };
        if fetched.as_ref().is_ok_and(|m| m.len() >= max.0) && !shutdown.is_cancelled() {
            next = Some(fetch_now());
        }
        let msgs = match fetched {
            Ok(m) if m.is_empty() => continue,
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed; retrying");
                pause(backoff.next(), &shutdown).await;
                continue;
            }
        };
        backoff.reset();
        tracing::debug!(function = F::NAME, size = msgs.len(), "fetched");
        let redelivered = msgs
            .iter()
            .filter(|m| m.info().is_ok_and(|i| i.delivered > 1))
            .count();
        metrics::counter!("wallet_redeliveries_total", "function" => F::NAME)
            .increment(redelivered as u64);
        metrics::histogram!("wallet_batch_size", "function" => F::NAME).record(msgs.len() as f64);
        let span = tracing::info_span!("batch", function = F::NAME, size = msgs.len());
        let processed = loop {
            let attempt = async {
                // Redis first: no effect is committed while its events could not be published.
                ctx.cache.ping().await?;
                batch::process(&*f, &ctx, dead_letter_after, &msgs).await
            };
            match attempt.instrument(span.clone()).await {
                Ok(p) => break Some(p),
                Err(e) => {
                    metrics::counter!("wallet_transient_errors_total", "function" => F::NAME)
                        .increment(1);
                    tracing::warn!(function = F::NAME, error = %e, held = msgs.len(), "dependency unavailable; holding the batch and retrying");
                    // Keep the held deliveries from expiring while we wait.
                    for m in &msgs {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                    if !pause(backoff.next(), &shutdown).await {
                        break None;
                    }
                }
            }
        };
        // Shut down during an outage: what we hold is redelivered after its ack wait.
        let Some(processed) = processed else { break };
        backoff.reset();
        settle(&ctx, F::NAME, &msgs, &processed.dispositions)
            .instrument(span)
            .await;

        metrics::counter!("wallet_commands_processed_total", "function" => F::NAME)
            .increment(processed.tally.completed as u64);
        metrics::counter!("wallet_commands_rejected_total", "function" => F::NAME)
            .increment(processed.tally.rejected as u64);
        metrics::counter!("wallet_commands_duplicate_total", "function" => F::NAME)
            .increment(processed.tally.duplicates as u64);
        if events.send(processed.rows).await.is_err() {
            break;
        }
    }
}

/// Acknowledges each message as decided; everything here runs after the commit. A plain ack
/// only queues a publish on the connection, so those are sent in a loop; naks and dead letters
/// settle concurrently: a batch of malformed messages waits for its dead letters' acks all at
/// once, not one round trip after another.
async fn settle(ctx: &Context, function: &str, msgs: &[Message], dispositions: &[Disposition]) {
    let mut others = Vec::new();
    for (m, d) in msgs.iter().zip(dispositions) {
        match d {
            Disposition::Ack => settle_one(ctx, function, m, *d).await,
            _ => others.push(settle_one(ctx, function, m, *d)),
        }
    }
    futures::stream::iter(others)
        .buffer_unordered(SETTLING_AT_ONCE)
        .collect::<()>()
        .await;
}

async fn settle_one(ctx: &Context, function: &str, m: &Message, d: Disposition) {
    let result = match d {
        Disposition::Ack => m.ack().await,
        Disposition::Nak(delay) => m.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::DeadLetter(reason) => {
            match dlq::publish(&ctx.js, &ctx.names, function, m, reason).await {
                Ok(()) => m.ack_with(AckKind::Term).await,
                // Not stored (the DLQ full, or refusing the letter): the command is kept, and
                // comes back to be dead-lettered again; JetStream never runs out of deliveries.
                Err(e) => {
                    metrics::counter!("wallet_dead_letters_refused_total", "function" => function.to_owned())
                        .increment(1);
                    tracing::error!(function, reason, error = %e, "dead letter refused by the DLQ; the command is kept and tried again");
                    m.ack_with(AckKind::Nak(Some(DEAD_LETTER_AGAIN))).await
                }
            }
        }
    };
    if let Err(e) = result {
        // The effect is committed; a lost ack only means a redelivery that dedup absorbs.
        tracing::debug!(error = %e, "acknowledgement not sent");
    }
}

/// How long a command whose dead letter was refused waits before it is dead-lettered again.
const DEAD_LETTER_AGAIN: Duration = Duration::from_secs(10);

/// Acknowledgements and dead letters of one batch in flight at once.
const SETTLING_AT_ONCE: usize = 256;

/// Publishes committed batches' events, up to `at_once` batches at a time.
async fn publish_committed(
    publisher: Publisher,
    mut pending: mpsc::Receiver<Vec<Row>>,
    at_once: usize,
) {
    futures::stream::poll_fn(|cx| pending.poll_recv(cx))
        .for_each_concurrent(at_once, |rows| {
            let publisher = &publisher;
            async move {
                let count: usize = rows.iter().map(|r| r.messages.len()).sum();
                if let Err(e) = publisher.publish(rows).await {
                    tracing::warn!(error = %e, messages = count, "events not published yet; the outbox relay will retry");
                }
            }
        })
        .await;
}

/// Exports the consumer's backlog (what KEDA scales on) every few seconds.
async fn watch_lag(function: &'static str, consumer: PullConsumer, shutdown: CancellationToken) {
    loop {
        if let Ok(info) = consumer.get_info().await {
            metrics::gauge!("wallet_consumer_pending", "function" => function)
                .set(info.num_pending as f64);
            metrics::gauge!("wallet_consumer_ack_pending", "function" => function)
                .set(info.num_ack_pending as f64);
            metrics::gauge!("wallet_consumer_redelivered", "function" => function)
                .set(info.num_redelivered as f64);
        }
        if !pause(Duration::from_secs(5), &shutdown).await {
            return;
        }
    }
}

/// Answers requests on `<ns>.<SUBJECT>` in the queue group `<ns>_<NAME>` until `shutdown`, then
/// finishes the requests in flight.
async fn respond_loop<R: Responder>(r: Arc<R>, ctx: Arc<Context>, shutdown: CancellationToken) {
    const IN_FLIGHT: u32 = 256;
    let subject = ctx.names.subject(R::SUBJECT);
    let mut backoff = Backoff::default();
    let mut sub = loop {
        match ctx
            .nats
            .queue_subscribe(subject.clone(), ctx.names.name(R::NAME))
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe; retrying");
                if !pause(backoff.next(), &shutdown).await {
                    return;
                }
            }
        }
    };
    tracing::info!(function = R::NAME, subject, "serving");
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT as usize));
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (r, ctx) = (r.clone(), ctx.clone());
        tokio::spawn(async move {
            let answer = r.respond(&ctx, &msg.payload).await;
            if let Err(e) = ctx.nats.publish(reply, answer.into()).await {
                tracing::debug!(error = %e, "reply not sent");
            }
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    // Every permit back: every request in flight answered.
    let _ = slots.acquire_many(IN_FLIGHT).await;
}
