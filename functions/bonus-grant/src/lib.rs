//! Red-envelope bonus grants: `{grant_id, campaign_id, user_id}` credits the user's `bonus`
//! wallet with the campaign's amount, within its window, its per-user limit and its budget.
//!
//! During a flash crowd most claims lose. Redis answers them: before any transaction,
//! [`Function::screen`] reserves each grant atomically in Redis ([`reservations`]), and a
//! rejection (`campaign_inactive`, `limit_reached`, `campaign_exhausted`, `invalid_user_id`) is
//! published from there with no PostgreSQL transaction at all. Only reserved grants reach
//! PostgreSQL, where one transaction per batch locks each campaign's row once, checks the budget
//! and the per-user limit again (the last line of defence), credits the wallets, records the
//! grants with their reservation's token and adds the batch's total to the campaign (one update
//! per campaign per batch, never per grant).
//!
//! The reconciler ([`reconciler`], on every replica) turns reservations into committed ones or
//! gives back those that never committed; the loader ([`loader`]) rebuilds a campaign in Redis
//! from PostgreSQL whenever Redis lost it.

pub mod reconciler;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rust_decimal::Decimal;
use wallet_runtime::function::Transaction;
use wallet_runtime::money::Currency;
use wallet_runtime::wallet::{Kind, WalletKey};
use wallet_runtime::{
    CancellationToken, Command, Context, Event, Function, Invalid, Outcome, Payload, Reason,
    Screened, Status, StepError, dlq, ids,
};

use wallet_campaigns::campaign;
use wallet_campaigns::loader::{self, Loaded};
use wallet_campaigns::reservations::{Action, Claim, Record, Reservation, Reservations, Reserved};

const ENTITY: &str = "bonus";

/// The dead-letter reason of a grant whose reservation was still lost or given back on its last
/// allowed delivery (Redis kept losing it): reserved again by a replay.
pub const RESERVATION_UNRESOLVED: &str = "reservation_unresolved";

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
        self.reservations
            .get_or_init(|| Reservations::new(ctx.redis.clone(), ctx.names.clone()))
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

/// A grant the transaction credits.
struct Granted<'a> {
    index: usize,
    command: &'a Command<GrantCommand>,
    user: &'a str,
    currency: Currency,
    amount: Decimal,
    token: &'a str,
}

/// A campaign as a grant transaction finds it, locked.
struct Locked {
    currency: Currency,
    budget: Decimal,
    per_user: i64,
    granted: Decimal,
    epoch: i64,
    /// Added by this batch.
    added: Decimal,
    count: i64,
}

const LOCK: &str = "
    SELECT id, currency, budget, per_user, granted, redis_epoch FROM campaigns
    WHERE id = ANY($1) ORDER BY id FOR UPDATE";

const RELEASED: &str = "SELECT grant_id, token FROM grant_releases WHERE grant_id = ANY($1)";

const USER_GRANTS: &str = "
    SELECT campaign_id, user_id, count(*) FROM grants
    WHERE campaign_id = ANY($1) AND user_id = ANY($2) GROUP BY 1, 2";

const RECORD: &str = "
    INSERT INTO grants (id, campaign_id, user_id, amount, token)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[])";

const ADD: &str = "
    UPDATE campaigns c SET granted = c.granted + u.amount, grants = c.grants + u.n
    FROM unnest($1::text[], $2::numeric[], $3::bigint[]) AS u (id, amount, n)
    WHERE c.id = u.id";

/// Committed grants among `ids`, with what their Redis record needs.
const COMMITTED: &str = "
    SELECT g.id, g.user_id, g.campaign_id, g.amount, g.token, c.currency, c.redis_epoch
    FROM grants g JOIN campaigns c ON c.id = g.campaign_id
    WHERE g.id = ANY($1)";

impl BonusGrant {
    /// Redis keeps a grant's record for 25 hours, and loses everything with its data: a grant
    /// decided afresh may be a copy of one committed long ago. PostgreSQL says which (one indexed
    /// read per batch that decided anything afresh): a fresh reservation of one is given back at
    /// once, a fresh rejection replaced, and both become its committed record, so that the copy
    /// proceeds to dedup (a duplicate: nothing new) instead of being refused or holding budget.
    async fn recognise_committed(
        &self,
        ctx: &Context,
        claims: &[Claim<'_>],
        results: &mut [Reserved],
    ) -> Result<(), StepError> {
        let fresh: Vec<&str> = claims
            .iter()
            .zip(results.iter())
            .filter(|(_, r)| matches!(r, Reserved::Record { fresh: true, .. }))
            .map(|(c, _)| c.grant)
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let rows = ctx.pool.get().await?.query(COMMITTED, &[&fresh]).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut committed: HashMap<String, Reservation> = HashMap::new();
        for row in rows {
            let currency = ctx
                .config
                .currencies
                .get(row.get::<_, &str>(5))
                .ok_or_else(|| {
                    StepError::permanent(format!(
                        "grant {}: its campaign's currency is no longer configured",
                        row.get::<_, &str>(0)
                    ))
                })?;
            let r = Reservation {
                amount_minor: campaign::minor(row.get(3), currency),
                token: row.get(4),
                epoch: row.get(6),
                user: row.get(1),
                campaign: row.get(2),
            };
            committed.insert(row.get(0), r);
        }
        let reservations = self.reservations(ctx);
        for (claim, result) in claims.iter().zip(results.iter_mut()) {
            let (
                Reserved::Record {
                    record,
                    fresh: true,
                },
                Some(c),
            ) = (&mut *result, committed.get(claim.grant))
            else {
                continue;
            };
            match record {
                Record::Reserved(r) => {
                    let decision = (
                        claim.grant.to_owned(),
                        r.token.clone(),
                        Action::Duplicate,
                        c.token.clone(),
                    );
                    reservations.reconcile(&r.campaign, &[decision]).await?;
                }
                _ => {
                    reservations
                        .remember_committed(claim.grant, &c.committed_record())
                        .await?
                }
            }
            tracing::info!(
                grant = claim.grant,
                "a copy of a committed grant, recognised in PostgreSQL"
            );
            *record = Record::Committed(c.clone());
        }
        Ok(())
    }
}

impl Function for BonusGrant {
    const NAME: &'static str = "bonus-grant";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "grant_id";
    const FIELDS: &'static [&'static str] = &["grant_id", "campaign_id", "user_id"];
    type Command = GrantCommand;

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

        self.recognise_committed(ctx, &claims, &mut results).await?;

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
        let mut campaign_ids: Vec<&str> = commands
            .iter()
            .map(|c| c.body.campaign_id.as_str())
            .collect();
        campaign_ids.sort_unstable();
        campaign_ids.dedup();
        let mut campaigns: HashMap<String, Locked> = HashMap::new();
        for row in tx.query(LOCK, &[&campaign_ids]).await? {
            let Some(currency) = ctx.config.currencies.get(row.get::<_, &str>(1)) else {
                continue;
            };
            let locked = Locked {
                currency,
                budget: row.get(2),
                per_user: i64::from(row.get::<_, i32>(3)),
                granted: row.get(4),
                epoch: row.get(5),
                added: Decimal::ZERO,
                count: 0,
            };
            campaigns.insert(row.get(0), locked);
        }
        let grant_ids: Vec<&str> = commands.iter().map(|c| c.id.as_str()).collect();
        let released: HashSet<(String, String)> = tx
            .query(RELEASED, &[&grant_ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let users: Vec<&str> = commands
            .iter()
            .filter_map(|c| c.body.user_id.as_deref())
            .collect();
        let mut per_user: HashMap<(String, String), i64> = tx
            .query(USER_GRANTS, &[&campaign_ids, &users])
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();

        // Decide each grant in order; then credit only those granted.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(commands.len());
        let mut granted: Vec<Granted> = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            let c = &command.body;
            let (Some(r), Some(user)) = (c.reservation.get(), c.user_id.as_deref()) else {
                return Err(StepError::permanent(format!(
                    "grant {} reached the transaction unreserved",
                    command.id
                )));
            };
            let Some(campaign) = campaigns.get_mut(&c.campaign_id) else {
                outcomes.push(Some(Outcome::Done(vec![
                    rejection(&command.id, Reason::UNKNOWN_CAMPAIGN, None, None)
                        .into_outbox(Vec::new()),
                ])));
                continue;
            };
            if r.epoch != campaign.epoch
                || released.contains(&(command.id.clone(), r.token.clone()))
            {
                // Its reservation was lost with Redis's data or given back: reserve again.
                outcomes.push(Some(Outcome::Retry {
                    after: Duration::from_millis(200),
                    reason: RESERVATION_UNRESOLVED,
                }));
                continue;
            }
            let amount = campaign::from_minor(r.amount_minor, campaign.currency);
            let count = per_user
                .entry((c.campaign_id.clone(), user.to_owned()))
                .or_default();
            let refused = if *count + 1 > campaign.per_user {
                Some(Reason::LIMIT_REACHED)
            } else if campaign.granted + campaign.added + amount > campaign.budget {
                Some(Reason::CAMPAIGN_EXHAUSTED)
            } else {
                None
            };
            if let Some(reason) = refused {
                tracing::warn!(grant = %command.id, reason = reason.as_str(), "PostgreSQL refused a grant Redis reserved");
                outcomes.push(Some(Outcome::Done(vec![
                    rejection(&command.id, reason, Some(&c.campaign_id), Some(user))
                        .into_outbox(Vec::new()),
                ])));
                continue;
            }
            *count += 1;
            campaign.added += amount;
            campaign.count += 1;
            granted.push(Granted {
                index,
                command,
                user,
                currency: campaign.currency,
                amount,
                token: &r.token,
            });
            outcomes.push(None);
        }

        let wallets = |user: &str, currency: Currency, campaign: &str| {
            (
                WalletKey::user(user, Kind::Bonus, "", currency),
                WalletKey::platform(&format!("bonus:{campaign}"), currency),
            )
        };
        let keys = granted.iter().flat_map(|g| {
            let (bonus, platform) = wallets(g.user, g.currency, &g.command.body.campaign_id);
            [bonus, platform]
        });
        let mut book = ctx.ledger.open(tx, keys).await?;
        for &Granted {
            index,
            command,
            user,
            currency,
            amount,
            ..
        } in &granted
        {
            let campaign = &command.body.campaign_id;
            let (bonus, platform) = wallets(user, currency, campaign);
            book.post(
                &format!("{}:{}", Self::NAME, command.key),
                &[(&bonus, amount), (&platform, -amount)],
            )?
            .map_err(|_| StepError::permanent("a grant cannot overdraw"))?;
            let snapshot = book
                .snapshot(&bonus)
                .ok_or_else(|| StepError::permanent("bonus wallet not opened"))?;
            let event = Event {
                user_id: Some(user.to_owned()),
                currency: Some(currency.code().to_owned()),
                amount: Some(currency.format(amount)),
                balance: Some(snapshot.balance.clone()),
                ..Event::new(ENTITY, &command.id, Status::GRANTED)
            }
            .with("campaign_id", Some(campaign));
            outcomes[index] = Some(Outcome::Done(vec![event.into_outbox(vec![snapshot])]));
        }
        book.write(tx).await?;
        if !granted.is_empty() {
            let ids: Vec<&str> = granted.iter().map(|g| g.command.id.as_str()).collect();
            let campaigns_of: Vec<&str> = granted
                .iter()
                .map(|g| g.command.body.campaign_id.as_str())
                .collect();
            let users: Vec<&str> = granted.iter().map(|g| g.user).collect();
            let amounts: Vec<Decimal> = granted.iter().map(|g| g.amount).collect();
            let tokens: Vec<&str> = granted.iter().map(|g| g.token).collect();
            tx.execute(RECORD, &[&ids, &campaigns_of, &users, &amounts, &tokens])
                .await?;
            let changed: Vec<(&String, &Locked)> =
                campaigns.iter().filter(|(_, l)| l.count > 0).collect();
            let ids: Vec<&str> = changed.iter().map(|(id, _)| id.as_str()).collect();
            let amounts: Vec<Decimal> = changed.iter().map(|(_, l)| l.added).collect();
            let counts: Vec<i64> = changed.iter().map(|(_, l)| l.count).collect();
            tx.execute(ADD, &[&ids, &amounts, &counts]).await?;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Done(Vec::new())))
            .collect())
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
