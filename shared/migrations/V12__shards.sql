-- The shard map in every shard's database (docs/sharding.md, shared/src/shards.rs): which shard
-- this database is, and which shard holds each partition. `walletctl setup` writes both from
-- SHARDS_FILE and never moves a partition (a split does); on one PostgreSQL both stay empty.
--
-- A function started with SHARD=<name> refuses a database whose `shard_self` names another shard
-- (or none), and one started without SHARD refuses a shard's database: a Deployment pointed at
-- the wrong database would otherwise decide its shard's commands in another shard's ledger.
-- The audit checks every wallet's partition against the map.

CREATE TABLE shard_self (
    -- One row at most.
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    name TEXT NOT NULL
);

CREATE TABLE partition_map (
    partition SMALLINT PRIMARY KEY CHECK (partition BETWEEN 0 AND 255),
    shard TEXT NOT NULL
);
