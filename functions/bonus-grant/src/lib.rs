//! Red-envelope bonus grants: `{grant_id, campaign_id, user_id}` credits the user's `bonus`
//! wallet with the campaign's amount, within its window, its per-user limit and its budget.
//!
//! During a flash crowd most claims lose. Redis answers them: before any transaction,
//! [`Function::screen`] reserves each grant atomically in Redis ([`wallet_campaigns::reservations`]), and a
//! rejection (`campaign_inactive`, `limit_reached`, `campaign_exhausted`, `invalid_user_id`) is
//! published from there with no PostgreSQL transaction at all. Only reserved grants reach
//! PostgreSQL ([`commit`]), where one transaction per batch locks each campaign's row once, checks
//! the budget and the per-user limit again (the last line of defence), credits the wallets,
//! records the grants with their reservation's token and adds the batch's total to the campaign
//! (one update per campaign per batch, never per grant). A grant Redis decided afresh is checked
//! against what PostgreSQL committed ([`recognise`]).
//!
//! The reconciler ([`reconciler`], on every replica) turns reservations into committed ones or
//! gives back those that never committed; the loader ([`wallet_campaigns::loader`]) rebuilds a campaign in Redis
//! from PostgreSQL whenever Redis lost it.

mod commit;
mod recognise;
pub mod reconciler;

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use wallet_runtime::function::Transaction;
use wallet_runtime::interface::{Id, Interface};
use wallet_runtime::{
    CancellationToken, Command, Context, Event, Function, Invalid, Outcome, Payload, Reason,
    Screened, Status, StepError, dlq, ids,
};

use wallet_campaigns::loader::{self, Loaded};
use wallet_campaigns::reservations::{Claim, Record, Reservation, Reservations, Reserved};

const ENTITY: &str = "bonus";

/// `bonus.grant` (CONTRACT §3, §6): a claim of a campaign's red envelope by a user.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `validate` reads the payload.
pub struct BonusGrantCommand {
    /// The command's id: one grant, whatever its redeliveries.
    grant_id: Id,
    campaign_id: Id,
    user_id: Id,
}

/// What a bonus event adds to the common fields.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)]
pub struct CampaignField {
    /// The campaign; null when the command's `campaign_id` was not a valid id.
    campaign_id: Option<Id>,
}

/// The dead-letter reason of a grant whose reservation was still lost or given back on its last
/// allowed delivery (Redis kept losing it): reserved again by a replay.
pub const RESERVATION_UNRESOLVED: &str = "reservation_unresolved";

/// The dead-letter reason of a grant that waited for its shard's quota on its last allowed
/// delivery: no rebalancer moved quota to it (`walletctl campaign rebalance`, docs/sharding.md).
pub const QUOTA_UNAVAILABLE: &str = "quota_unavailable";

/// Test-only fail point: `WALLET_FAILPOINT=bonus-after-reserve` ends the process right after
/// Redis reserved a batch and before PostgreSQL commits it (a crash at the worst line).
const FAILPOINT: &str = "bonus-after-reserve";

/// Read once: the environment is not consulted on every batch.
static FAIL_AFTER_RESERVE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var("WALLET_FAILPOINT").is_ok_and(|f| f == FAILPOINT));

#[derive(Debug, Default)]
pub struct BonusGrant {
    reservations: OnceLock<Reservations>,
}

#[derive(Debug)]
pub struct GrantCommand {
    pub campaign_id: String,
    /// `None`: invalid, answered `invalid_user_id` once the campaign is known to exist.
    pub user_id: Option<String>,
    /// Set by the screen: what Redis reserved for this grant.
    reservation: OnceLock<Reservation>,
}

impl BonusGrant {
    fn reservations(&self, ctx: &Context) -> &Reservations {
        self.reservations.get_or_init(|| {
            Reservations::new(ctx.redis.clone(), &ctx.names, ctx.config.shard.as_deref())
        })
    }
}

fn rejection(id: &str, reason: Reason, campaign: Option<&str>, user: Option<&str>) -> Event {
    Event {
        user_id: user.map(str::to_owned),
        ..Event::rejected(ENTITY, id, reason)
    }
    .with("campaign_id", campaign)
}

/// The contract's reason a reservation script answered with.
fn reason(r: &str) -> Reason {
    match r {
        "unknown_campaign" => Reason::UNKNOWN_CAMPAIGN,
        "invalid_user_id" => Reason::INVALID_USER_ID,
        "campaign_inactive" => Reason::CAMPAIGN_INACTIVE,
        "limit_reached" => Reason::LIMIT_REACHED,
        _ => Reason::CAMPAIGN_EXHAUSTED,
    }
}

impl Function for BonusGrant {
    const NAME: &'static str = "bonus-grant";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "grant_id";
    const FIELDS: &'static [&'static str] = &["grant_id", "campaign_id", "user_id"];
    type Command = GrantCommand;

    fn interface() -> Interface {
        use Reason as R;
        Interface::of::<Self>()
            .command::<BonusGrantCommand>(
                "bonus.grant",
                &[RESERVATION_UNRESOLVED, QUOTA_UNAVAILABLE],
            )
            .events::<CampaignField>(
                &[Status::GRANTED, Status::REJECTED],
                &[
                    R::UNKNOWN_CAMPAIGN,
                    R::INVALID_USER_ID,
                    R::CAMPAIGN_INACTIVE,
                    R::LIMIT_REACHED,
                    R::CAMPAIGN_EXHAUSTED,
                ],
            )
    }

    fn validate(
        &self,
        _ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<GrantCommand, Invalid> {
        let Some(campaign) = ids::from_value(p.get("campaign_id")) else {
            return Err(rejection(id, Reason::UNKNOWN_CAMPAIGN, None, None).into());
        };
        Ok(GrantCommand {
            campaign_id: campaign.to_owned(),
            user_id: ids::from_value(p.get("user_id")).map(str::to_owned),
            reservation: OnceLock::new(),
        })
    }

    async fn screen<'a>(
        &'a self,
        ctx: &'a Context,
        commands: &'a [&'a Command<GrantCommand>],
    ) -> Result<Vec<Screened>, StepError> {
        let reservations = self.reservations(ctx);
        let claims: Vec<Claim> = commands
            .iter()
            .map(|c| Claim {
                grant: &c.id,
                campaign: &c.body.campaign_id,
                user: c.body.user_id.as_deref(),
            })
            .collect();
        let now = || chrono::Utc::now().timestamp_millis();
        let mut results = reservations.reserve(&claims, now()).await?;

        // Campaigns Redis does not hold: load them from PostgreSQL, then ask again.
        let missing: HashSet<&str> = claims
            .iter()
            .zip(&results)
            .filter(|(_, r)| **r == Reserved::Missing)
            .map(|(c, _)| c.campaign)
            .collect();
        let mut unknown: HashSet<&str> = HashSet::new();
        if !missing.is_empty() {
            let mut client = ctx.pool.get().await?;
            for campaign in missing {
                let loaded =
                    loader::load(&mut client, &ctx.config.currencies, reservations, campaign)
                        .await?;
                if loaded == Loaded::Unknown {
                    unknown.insert(campaign);
                }
            }
            let again: Vec<usize> = (0..claims.len())
                .filter(|&i| {
                    results[i] == Reserved::Missing && !unknown.contains(claims[i].campaign)
                })
                .collect();
            let retried = reservations
                .reserve(
                    &again.iter().map(|&i| claims[i].clone()).collect::<Vec<_>>(),
                    now(),
                )
                .await?;
            for (i, r) in again.into_iter().zip(retried) {
                results[i] = r;
            }
        }

        recognise::committed(ctx, reservations, &claims, &mut results).await?;

        let mut screened = Vec::with_capacity(commands.len());
        for (command, result) in commands.iter().zip(results) {
            let c = &command.body;
            let user = c.user_id.as_deref();
            let same =
                |campaign: &str, u: &str| campaign == c.campaign_id && u == user.unwrap_or("");
            screened.push(match result {
                Reserved::Missing if unknown.contains(c.campaign_id.as_str()) => {
                    reservations
                        .reject(
                            &command.id,
                            "unknown_campaign",
                            &c.campaign_id,
                            user.unwrap_or(""),
                        )
                        .await?;
                    Screened::Answered(rejection(&command.id, Reason::UNKNOWN_CAMPAIGN, None, None))
                }
                Reserved::Missing => {
                    // Lost again right after loading (Redis restarting): retry the batch.
                    return Err(StepError::transient(format!(
                        "campaign {} is not in Redis after loading it",
                        c.campaign_id
                    )));
                }
                Reserved::Record { record, .. } => match record {
                    Record::Rejected {
                        reason: r,
                        campaign,
                        user: u,
                    } if same(&campaign, &u) => {
                        let r = reason(&r);
                        let known_user = if r == Reason::INVALID_USER_ID {
                            None
                        } else {
                            user
                        };
                        let campaign =
                            (r != Reason::UNKNOWN_CAMPAIGN).then_some(c.campaign_id.as_str());
                        Screened::Answered(rejection(&command.id, r, campaign, known_user))
                    }
                    Record::Reserved(r) | Record::Committed(r) if same(&r.campaign, &r.user) => {
                        let _ = c.reservation.set(r);
                        Screened::Proceed
                    }
                    _ => Screened::DeadLetter(dlq::ID_CONFLICT),
                },
            });
        }
        if *FAIL_AFTER_RESERVE {
            tracing::error!(
                "fail point {FAILPOINT}: exiting between the reservation and the commit"
            );
            std::process::exit(70);
        }
        Ok(screened)
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<GrantCommand>],
    ) -> Result<Vec<Outcome>, StepError> {
        commit::apply(ctx, tx, commands).await
    }

    fn background(
        &self,
        ctx: Arc<Context>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let reservations = self.reservations(&ctx).clone();
        reconciler::run(ctx, reservations, shutdown)
    }
}
