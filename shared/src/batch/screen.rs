//! Answers decided before the transaction ([`Function::screen`]) and their direct publication,
//! each isolated per command when the batch as a whole fails for a reason that is not an outage.

use crate::context::Context;
use crate::error::StepError;
use crate::function::{Command, Function, Screened};
use crate::outbox::OutboxMessage;

use super::Unit;

/// [`Function::screen`] for `units`, one result per unit. When the whole batch's screen fails
/// for a reason that is not an outage, each command is screened alone, so that one poison
/// command (a record Redis cannot answer for) fails alone instead of holding the batch.
pub(super) async fn screen<F: Function>(
    f: &F,
    ctx: &Context,
    units: &[&Unit<F::Command>],
) -> Result<Vec<Result<Screened, StepError>>, StepError> {
    let commands: Vec<&Command<F::Command>> = units
        .iter()
        .filter_map(|u| u.command.as_ref().ok())
        .collect();
    match f.screen(ctx, &commands).await {
        Ok(s) if s.len() == commands.len() => return Ok(s.into_iter().map(Ok).collect()),
        Ok(s) => {
            return Err(StepError::permanent(format!(
                "{}: screen answered {} of {} commands",
                F::NAME,
                s.len(),
                commands.len()
            )));
        }
        Err(e) if e.is_transient() => return Err(e),
        Err(e) if commands.len() == 1 => return Ok(vec![Err(e)]),
        Err(_) => {}
    }
    let mut results = Vec::with_capacity(commands.len());
    for command in &commands {
        results.push(match f.screen(ctx, std::slice::from_ref(command)).await {
            Ok(mut s) if s.len() == 1 => Ok(s.remove(0)),
            Ok(_) => Err(StepError::permanent("screen answered no command")),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => Err(e),
        });
    }
    Ok(results)
}

/// Publishes answers decided without a transaction, waiting until JetStream stored them all.
/// `Err` for an outage; otherwise the messages (by index) that JetStream refused for a reason of
/// their own, each published alone to tell which.
pub(super) async fn publish_direct(
    ctx: &Context,
    direct: Vec<(usize, OutboxMessage)>,
) -> Result<Vec<(usize, StepError)>, StepError> {
    let publisher = ctx.publisher();
    match publisher
        .publish_direct(direct.iter().map(|(_, m)| m))
        .await
    {
        Ok(()) => return Ok(Vec::new()),
        Err(e) if e.is_transient() => return Err(e),
        Err(_) => {}
    }
    let mut refused = Vec::new();
    for (index, message) in direct {
        match publisher.publish_direct(std::iter::once(&message)).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => refused.push((index, e)),
        }
    }
    Ok(refused)
}
