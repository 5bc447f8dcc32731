-- The wallet ledger, command dedup and the transactional outbox.

-- One row per wallet. A user's wallets carry their balance, locked and updated by the commands
-- that post to them. The platform's own accounts (owner '') carry no balance: theirs is the sum of
-- their postings, so no command ever locks or updates a platform row (it would serialise every
-- replica of every function).
CREATE TABLE accounts (
    id        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner     TEXT    NOT NULL,                 -- the user id; '' for the platform's accounts
    kind      TEXT    NOT NULL CHECK (kind IN ('main', 'bonus', 'game', 'in_transit', 'platform')),
    provider  TEXT    NOT NULL DEFAULT '',      -- game and in_transit: the provider; platform: its purpose
    currency  TEXT    NOT NULL,
    balance   NUMERIC NOT NULL DEFAULT 0,
    version   BIGINT  NOT NULL DEFAULT 0,       -- postings applied so far; orders cache writes
    UNIQUE (owner, kind, provider, currency),
    CHECK (kind = 'platform' OR balance >= 0),
    CHECK ((kind = 'platform') = (owner = ''))
);

-- Double entry: the postings of one command sum to zero per currency, so the whole ledger does.
CREATE TABLE postings (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id BIGINT      NOT NULL REFERENCES accounts (id),
    amount     NUMERIC     NOT NULL CHECK (amount <> 0),
    command    TEXT        NOT NULL,            -- '<function>:<command id>'
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every command id a function has decided, forever, with a hash of its payload: the same id and
-- payload again has no effect; the same id with another payload is an id_conflict.
CREATE TABLE commands (
    function    TEXT        NOT NULL,
    id          TEXT        NOT NULL,
    fingerprint BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (function, id)
);

-- Messages committed with their effect and published after the commit. A row is deleted once
-- published; rows a crash left behind are published by the relay.
CREATE TABLE outbox (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject    TEXT        NOT NULL,            -- without the namespace prefix
    msg_id     TEXT        NOT NULL,
    payload    BYTEA       NOT NULL,
    wallets    TEXT        NOT NULL,            -- JSON: balances to write to the cache first
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
