-- Transfers to game providers (CONTRACT §5): the state a transfer's ack and the sweeper act on.

-- One row per transfer that moved money to in_transit, written in the transaction that debited
-- `main`. `provider-ack` finishes it (locking the row) in the transaction that posts the final
-- legs; the sweeper queries the provider for a pending one whose `next_check_at` has come.
CREATE TABLE transfers (
    id            TEXT        PRIMARY KEY,
    user_id       TEXT        NOT NULL,
    provider      TEXT        NOT NULL,
    currency      TEXT        NOT NULL,
    amount        NUMERIC     NOT NULL CHECK (amount > 0),
    status        TEXT        NOT NULL DEFAULT 'pending'
                              CHECK (status IN ('pending', 'completed', 'failed')),
    provider_ref  TEXT,
    reason        TEXT,                        -- the provider's, for a `rejected` ack
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    -- The sweeper's state: survives restarts, shared by every replica.
    next_check_at TIMESTAMPTZ,                 -- the next status query; null once finished
    checks        INTEGER     NOT NULL DEFAULT 0,  -- status queries published so far
    last_check_at TIMESTAMPTZ,
    stuck_at      TIMESTAMPTZ,                 -- when the one `stuck` event was committed
    CHECK ((status = 'pending') = (finished_at IS NULL))
);

-- The sweeper's scan: only pending transfers, by when they are due.
CREATE INDEX transfers_due ON transfers (next_check_at) WHERE status = 'pending';
