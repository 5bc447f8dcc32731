-- Per-shard campaign quotas (docs/sharding.md, step 5). A campaign's budget is counted in no
-- one database once grants run on several shards, so each shard's row holds the part of the
-- budget that shard may grant, `quota`, and grants there never take it past that (the last line
-- of defence, under the row's lock, as the budget was). The quotas of every shard, plus what
-- `walletctl campaign rebalance` is moving between two of them, sum to the budget: the budget
-- holds although no transaction sees more than one shard. On one PostgreSQL the quota is the
-- budget and nothing moves.
--
-- `spare_elsewhere`: what the other shards had left of their quotas when the rebalancer last
-- looked, plus what it moved out of this one since. What is left anywhere only shrinks (grants
-- are never undone; a move only shifts it), so it is an upper bound, and a grant larger than
-- this shard's rest plus it can be refused `campaign_exhausted` with certainty. A grant that
-- fits that bound but not the quota waits for quota instead, and adds its amount to `wanted`,
-- which tells the rebalancer where quota is short.

ALTER TABLE campaigns
    ADD COLUMN quota NUMERIC,
    ADD COLUMN spare_elsewhere NUMERIC NOT NULL DEFAULT 0 CHECK (spare_elsewhere >= 0),
    ADD COLUMN wanted NUMERIC NOT NULL DEFAULT 0;
UPDATE campaigns SET quota = budget;
ALTER TABLE campaigns
    ALTER COLUMN quota SET NOT NULL,
    ADD CHECK (quota >= 0 AND quota <= budget),
    ADD CHECK (granted <= quota);

-- One quota move, written on both shards by its id: the source's row (`outgoing`) in the
-- transaction that takes the quota, the destination's in the one that adds it. A source row
-- that is not `credited` is in transit; the rebalancer finishes it before anything else.
CREATE TABLE quota_moves (
    id          TEXT        PRIMARY KEY,
    campaign_id TEXT        NOT NULL REFERENCES campaigns (id),
    amount      NUMERIC     NOT NULL CHECK (amount > 0),
    from_shard  TEXT        NOT NULL,
    to_shard    TEXT        NOT NULL,
    outgoing    BOOLEAN     NOT NULL,
    credited    BOOLEAN     NOT NULL DEFAULT false,
    moved_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX quota_moves_in_transit ON quota_moves (id) WHERE outgoing AND NOT credited;
