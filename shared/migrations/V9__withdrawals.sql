-- Withdrawals to payment providers (CONTRACT §5): the `held` wallet, the withdrawal a payout
-- answer settles, and the daily amounts a user's limit counts.

-- `held`: money on its way to a payment provider, per user, provider and currency. Added as NOT
-- VALID then validated, so that the table is scanned without blocking its writers.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('main', 'bonus', 'game', 'in_transit', 'held', 'platform')) NOT VALID;
ALTER TABLE accounts VALIDATE CONSTRAINT accounts_kind_check;

-- One row per withdrawal that moved money from `main` to `held`, written in that transaction;
-- `payout-ack` locks it to settle it (`paid` or `declined`), and its sweeper queries the provider
-- about a pending one whose `next_check_at` has come, as for transfers.
CREATE TABLE withdrawals (
    id          TEXT        PRIMARY KEY,
    user_id     TEXT        NOT NULL,
    psp         TEXT        NOT NULL,           -- the payment provider asked to pay
    currency    TEXT        NOT NULL,
    amount      NUMERIC     NOT NULL CHECK (amount > 0),
    day         DATE        NOT NULL,           -- the UTC day whose limit it counts against
    status      TEXT        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'paid', 'declined')),
    psp_ref     TEXT,
    reason      TEXT,                           -- the provider's, for a `declined` answer
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    -- The sweeper's state (src/sweeper.rs): survives restarts, shared by every replica.
    next_check_at TIMESTAMPTZ,                  -- the next status query; null once settled
    checks        INTEGER     NOT NULL DEFAULT 0,
    last_check_at TIMESTAMPTZ,
    stuck_at      TIMESTAMPTZ,                  -- when the one `stuck` event was committed
    CHECK ((status = 'pending') = (finished_at IS NULL))
);

-- The sweeper's scan: only pending withdrawals, by when they are due.
CREATE INDEX withdrawals_due ON withdrawals (next_check_at) WHERE status = 'pending';

-- What each user has withdrawn per currency and UTC day, pending or paid (a declined withdrawal
-- gives its amount back). The row is the lock that makes the daily limit exact on any number of
-- replicas: `withdraw` takes the rows of a batch in key order before any wallet.
CREATE TABLE withdrawal_days (
    user_id  TEXT    NOT NULL,
    currency TEXT    NOT NULL,
    day      DATE    NOT NULL,
    amount   NUMERIC NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (user_id, currency, day)
);
