//! The PostgreSQL side of a batch of reserved grants: one transaction locks each campaign's row
//! once (in id order), checks the per-user limit and the shard's quota of the budget again (the
//! last line of defence; on one PostgreSQL the quota is the budget), credits the `bonus`
//! wallets, records the grants with their reservation's token and adds the batch's total to
//! each campaign, one update per campaign, never per grant.
//!
//! A grant past the quota that the other shards' spare could still pay (`spare_elsewhere`, an
//! upper bound: V14) waits for quota, redelivered, and leaves its amount in `wanted` for
//! `walletctl campaign rebalance`; one past that bound is `campaign_exhausted`, with certainty.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rust_decimal::Decimal;
use wallet_campaigns::campaign;
use wallet_runtime::function::Transaction;
use wallet_runtime::money::Currency;
use wallet_runtime::partition;
use wallet_runtime::wallet::{Kind, WalletKey};
use wallet_runtime::{Command, Context, Event, Function, Outcome, Reason, Status, StepError};

use crate::{
    BonusGrant, ENTITY, GrantCommand, QUOTA_UNAVAILABLE, RESERVATION_UNRESOLVED, rejection,
};

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
    quota: Decimal,
    spare_elsewhere: Decimal,
    per_user: i64,
    granted: Decimal,
    epoch: i64,
    /// Added by this batch.
    added: Decimal,
    count: i64,
    /// Grants of this batch that wait for quota.
    wanted: Decimal,
}

const LOCK: &str = "
    SELECT id, currency, quota, per_user, granted, redis_epoch, spare_elsewhere FROM campaigns
    WHERE id = ANY($1) ORDER BY id FOR UPDATE";

const RELEASED: &str = "SELECT grant_id, token FROM grant_releases WHERE grant_id = ANY($1)";

const USER_GRANTS: &str = "
    SELECT campaign_id, user_id, count(*) FROM grants
    WHERE campaign_id = ANY($1) AND user_id = ANY($2) GROUP BY 1, 2";

const RECORD: &str = "
    INSERT INTO grants (id, campaign_id, user_id, amount, token, partition)
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::smallint[]
    )";

const ADD: &str = "
    UPDATE campaigns c
    SET granted = c.granted + u.amount, grants = c.grants + u.n, wanted = c.wanted + u.wanted
    FROM unnest($1::text[], $2::numeric[], $3::bigint[], $4::numeric[]) AS u (id, amount, n, wanted)
    WHERE c.id = u.id";

/// How long a grant waits for quota before it is delivered again: a rebalancer's round at
/// first, then half of what it waited so far, up to 30 s, so that its 20 deliveries outlast a
/// shard's outage of minutes (the quota may be there) and a quiet wait costs few deliveries.
fn quota_wait(stored_at: std::time::SystemTime) -> Duration {
    let waited = stored_at.elapsed().unwrap_or_default();
    (waited / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Applies `commands` (grants Redis reserved) in the batch's transaction; one outcome each.
pub(crate) async fn apply(
    ctx: &Context,
    tx: &Transaction<'_>,
    commands: &[&Command<GrantCommand>],
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
            quota: row.get(2),
            per_user: i64::from(row.get::<_, i32>(3)),
            granted: row.get(4),
            epoch: row.get(5),
            spare_elsewhere: row.get(6),
            added: Decimal::ZERO,
            count: 0,
            wanted: Decimal::ZERO,
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
        if r.epoch != campaign.epoch || released.contains(&(command.id.clone(), r.token.clone())) {
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
        let rest = campaign.quota - campaign.granted - campaign.added;
        let refused = if *count + 1 > campaign.per_user {
            Some(Reason::LIMIT_REACHED)
        } else if amount > rest + campaign.spare_elsewhere {
            Some(Reason::CAMPAIGN_EXHAUSTED)
        } else if amount > rest {
            campaign.wanted += amount;
            outcomes.push(Some(Outcome::Retry {
                after: quota_wait(command.stored_at),
                reason: QUOTA_UNAVAILABLE,
            }));
            continue;
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
        let bonus = WalletKey::user(user, Kind::Bonus, "", currency);
        let counterpart = bonus.counterpart(&format!("bonus:{campaign}"));
        (bonus, counterpart)
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
            &format!("{}:{}", <BonusGrant as Function>::NAME, command.key),
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
        let partitions = partition::of_users(users.iter().copied());
        tx.execute(
            RECORD,
            &[&ids, &campaigns_of, &users, &amounts, &tokens, &partitions],
        )
        .await?;
    }
    let changed: Vec<(&String, &Locked)> = campaigns
        .iter()
        .filter(|(_, l)| l.count > 0 || l.wanted > Decimal::ZERO)
        .collect();
    if !changed.is_empty() {
        let ids: Vec<&str> = changed.iter().map(|(id, _)| id.as_str()).collect();
        let amounts: Vec<Decimal> = changed.iter().map(|(_, l)| l.added).collect();
        let counts: Vec<i64> = changed.iter().map(|(_, l)| l.count).collect();
        let wanted: Vec<Decimal> = changed.iter().map(|(_, l)| l.wanted).collect();
        tx.execute(ADD, &[&ids, &amounts, &counts, &wanted]).await?;
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Done(Vec::new())))
        .collect())
}
