//! Request-reply functions: core NATS requests answered in a queue group, a bounded number at
//! once, the ones in flight finished at shutdown.
//!
//! A request may name its user's partition as one more token (`wallet.balance.get.144`), as a
//! command may (docs/sharding.md). On one PostgreSQL a process answers the bare subject and every
//! partition's; on a shard (`SHARD`), only its partitions', in a queue group of its shard, so
//! that a request reaches a process whose database holds the user; the partitions a split gives
//! to a new shard it stops answering within [`MAP_REFRESH`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::connect::{self, Backoff, pause};
use crate::context::Context;
use crate::interface::Interface;
use crate::shards::ranges;

/// A request-reply function (core NATS, queue group `<ns>_<NAME>`, or `<ns>_<NAME>-<shard>`).
pub trait Responder: Send + Sync + 'static {
    const NAME: &'static str;
    /// The subject it answers, without the namespace prefix.
    const SUBJECT: &'static str;

    /// Its request and reply, with their schemas ([`Interface::request_reply`]).
    fn interface() -> Interface;

    /// Answers `payload`, received on `subject` (without the namespace): [`Self::SUBJECT`] or
    /// it followed by a partition.
    fn respond<'a>(
        &'a self,
        ctx: &'a Context,
        subject: &'a str,
        payload: &'a [u8],
    ) -> impl Future<Output = Vec<u8>> + Send + 'a;
}

/// How often a shard's process reads which partitions its shard holds: a split gives some of
/// them to a new shard (`walletctl shards split`), whose processes answer their requests from
/// then on. A process that went on answering them would read a database that no longer holds
/// their users.
const MAP_REFRESH: Duration = Duration::from_secs(1);

/// Answers requests until `shutdown`, then finishes the requests in flight: on `<ns>.<SUBJECT>`
/// and `<ns>.<SUBJECT>.*` in the queue group `<ns>_<NAME>`, or with `SHARD` on
/// `<ns>.<SUBJECT>.<p>` for each of the shard's `partitions` in `<ns>_<NAME>-<shard>`, which it
/// reads again every [`MAP_REFRESH`].
pub(super) async fn respond_loop<R: Responder>(
    r: Arc<R>,
    ctx: Arc<Context>,
    mut partitions: Vec<u16>,
    shutdown: CancellationToken,
) {
    const IN_FLIGHT: u32 = 256;
    let Some(mut sub) = subscribe::<R>(&ctx, &partitions, &shutdown).await else {
        return;
    };
    let mut refresh = tokio::time::interval(MAP_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT as usize));
    // The subscriptions replaced last, unsubscribed: what they had received is still answered.
    let mut retiring: Option<Subscriptions> = None;
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => break,
            m = next(&mut retiring), if retiring.is_some() => match m {
                Some(m) => m,
                None => {
                    retiring = None;
                    continue;
                }
            },
            _ = refresh.tick(), if ctx.config.shard.is_some() => {
                match connect::shard_of_database(&ctx).await {
                    Ok(Some((_, now))) if now != partitions && !now.is_empty() => {
                        // The new subjects first: a partition kept is never left unanswered.
                        let Some(new) = subscribe::<R>(&ctx, &now, &shutdown).await else {
                            break;
                        };
                        tracing::info!(
                            function = R::NAME,
                            from = %ranges(&partitions),
                            to = %ranges(&now),
                            "the shard's partitions changed (a split): answering its own only"
                        );
                        let mut old = std::mem::replace(&mut sub, new);
                        unsubscribe(&mut old).await;
                        retiring = Some(old);
                        partitions = now;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "shard map not read; next time"),
                }
                continue;
            }
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
            let started = std::time::Instant::now();
            let subject = ctx.names.strip(&msg.subject);
            let answer = r.respond(&ctx, subject, &msg.payload).await;
            if let Err(e) = ctx.nats.publish(reply, answer.into()).await {
                tracing::debug!(error = %e, "reply not sent");
            }
            crate::metrics::answered(R::NAME, started.elapsed().as_secs_f64());
            drop(permit);
        });
    }
    unsubscribe(&mut sub).await;
    // Every permit back: every request in flight answered.
    let _ = slots.acquire_many(IN_FLIGHT).await;
}

type Subscriptions = futures::stream::SelectAll<async_nats::Subscriber>;

/// Subscribes `R` to its subjects (of `partitions` on a shard), retrying until `shutdown`
/// (`None`).
async fn subscribe<R: Responder>(
    ctx: &Context,
    partitions: &[u16],
    shutdown: &CancellationToken,
) -> Option<Subscriptions> {
    let (subjects, group) = match ctx.config.shard.as_deref() {
        None => (
            vec![R::SUBJECT.to_owned(), format!("{}.*", R::SUBJECT)],
            R::NAME.to_owned(),
        ),
        Some(shard) => (
            partitions
                .iter()
                .map(|p| format!("{}.{p}", R::SUBJECT))
                .collect(),
            format!("{}-{shard}", R::NAME),
        ),
    };
    let group = ctx.names.name(&group);
    let mut subs = Vec::with_capacity(subjects.len());
    for subject in &subjects {
        let subject = ctx.names.subject(subject);
        let mut backoff = Backoff::default();
        loop {
            match ctx
                .nats
                .queue_subscribe(subject.clone(), group.clone())
                .await
            {
                Ok(s) => break subs.push(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe; retrying");
                    if !pause(backoff.delay(), shutdown).await {
                        return None;
                    }
                }
            }
        }
    }
    tracing::info!(
        function = R::NAME,
        subjects = subjects.len(),
        group,
        "serving"
    );
    Some(futures::stream::select_all(subs))
}

async fn unsubscribe(subs: &mut Subscriptions) {
    for s in subs.iter_mut() {
        let _ = s.unsubscribe().await;
    }
}

/// The next request `retiring` holds; never, without it.
async fn next(retiring: &mut Option<Subscriptions>) -> Option<async_nats::Message> {
    match retiring {
        Some(subs) => subs.next().await,
        None => std::future::pending().await,
    }
}
