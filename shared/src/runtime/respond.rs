//! Request-reply functions: core NATS requests answered in a queue group, a bounded number at
//! once, the ones in flight finished at shutdown.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::connect::{Backoff, pause};
use crate::context::Context;
use crate::interface::Interface;

/// A request-reply function (core NATS, queue group `<ns>_<NAME>`).
pub trait Responder: Send + Sync + 'static {
    const NAME: &'static str;
    /// The subject it answers, without the namespace prefix.
    const SUBJECT: &'static str;

    /// Its request and reply, with their schemas ([`Interface::request_reply`]).
    fn interface() -> Interface;

    fn respond<'a>(
        &'a self,
        ctx: &'a Context,
        payload: &'a [u8],
    ) -> impl Future<Output = Vec<u8>> + Send + 'a;
}

/// Answers requests on `<ns>.<SUBJECT>` in the queue group `<ns>_<NAME>` until `shutdown`, then
/// finishes the requests in flight.
pub(super) async fn respond_loop<R: Responder>(
    r: Arc<R>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
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
                if !pause(backoff.delay(), &shutdown).await {
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
            let started = std::time::Instant::now();
            let answer = r.respond(&ctx, &msg.payload).await;
            if let Err(e) = ctx.nats.publish(reply, answer.into()).await {
                tracing::debug!(error = %e, "reply not sent");
            }
            crate::metrics::answered(R::NAME, started.elapsed().as_secs_f64());
            drop(permit);
        });
    }
    let _ = sub.unsubscribe().await;
    // Every permit back: every request in flight answered.
    let _ = slots.acquire_many(IN_FLIGHT).await;
}
