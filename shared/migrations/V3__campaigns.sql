-- Bonus campaigns (red envelopes, CONTRACT §6). PostgreSQL is the source of truth; Redis holds
-- each campaign's counters and reservations so that a flash crowd's losing claims never reach here.

CREATE TABLE campaigns (
    id          TEXT        PRIMARY KEY,
    currency    TEXT        NOT NULL,
    budget      NUMERIC     NOT NULL CHECK (budget > 0),
    amount      NUMERIC     CHECK (amount > 0),              -- a fixed amount per grant, or
    amount_min  NUMERIC     CHECK (amount_min > 0),          -- a range drawn from the grant id
    amount_max  NUMERIC,
    per_user    INTEGER     NOT NULL CHECK (per_user > 0),
    starts_at   TIMESTAMPTZ,                                 -- inclusive
    ends_at     TIMESTAMPTZ,                                 -- exclusive
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Committed grants, updated once per batch (never per grant), under this row's lock: the last
    -- line of defence of the budget whatever Redis says.
    granted     NUMERIC     NOT NULL DEFAULT 0,
    grants      BIGINT      NOT NULL DEFAULT 0,
    -- Changed each time Redis is (re)loaded from here; a reservation made under another epoch was
    -- lost with Redis's data and must be made again.
    redis_epoch BIGINT      NOT NULL DEFAULT 0,
    CHECK ((amount IS NULL) = (amount_min IS NOT NULL AND amount_max IS NOT NULL)),
    CHECK (amount_max >= amount_min),
    CHECK (ends_at > starts_at),
    CHECK (granted <= budget)
);

-- One row per committed grant, with the token of the Redis reservation it consumed.
CREATE TABLE grants (
    id          TEXT        PRIMARY KEY,
    campaign_id TEXT        NOT NULL REFERENCES campaigns (id),
    user_id     TEXT        NOT NULL,
    amount      NUMERIC     NOT NULL CHECK (amount > 0),
    token       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX grants_by_user ON grants (campaign_id, user_id);

-- Reservations the reconciler gave back (never committed in time). Written under the campaign's
-- lock, so a grant transaction that takes the lock afterwards sees that its reservation is gone
-- and reserves again instead of committing a grant Redis no longer counts.
CREATE TABLE grant_releases (
    grant_id    TEXT        NOT NULL,
    token       TEXT        NOT NULL,
    released_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (grant_id, token)
);
