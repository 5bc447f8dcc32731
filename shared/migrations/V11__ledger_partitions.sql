-- The partition leads the ledger's keys (docs/sharding.md, step 2; src/partition.rs).
--
-- A user's wallets and their postings carry the user's partition, in every key, so that
-- a partition's rows can move to another shard together and a Citus cluster can distribute
-- both tables by it. The platform's accounts are one per partition (a deposit posts against
-- the `deposits` account of its user's partition): each transaction's postings sum to zero
-- within each partition, so a partition's postings balance on their own wherever they are
-- stored. The accounts that existed before this migration, platform ones included, are in
-- partition 0 if they are the platform's and in their owner's otherwise; their postings in
-- their account's.
--
-- The statements of the functions name the partition of every row they lock, update or read
-- by key. The functions of an earlier version do not: stop them before this migration runs.
--
-- The partition leads the unique key that wallets are found by (owner, kind, provider,
-- currency), and follows the identity in the primary keys: (id, partition) serves a lookup by
-- both as well, a distributed table's primary key only has to contain its distribution column,
-- and new rows keep appending at the index's right edge instead of going to some 250 places a
-- batch. Measured in `deposit-max` (bench/ANALYSIS.md): PostgreSQL's CPU per deposit grew by
-- 16-18 % over V10 with these keys, 25-31 % with the partition leading them.
--
-- The rows are rewritten once (a new column filled from the others); the keys' indexes are
-- built again.

-- The partition of `user_id`: FNV-1a, 32-bit, of its UTF-8 bytes, modulo 256, as
-- `wallet_runtime::partition::Partition::of` and nats-server's `{{partition(256,n)}}` compute
-- it. For this migration and for `walletctl audit`: the functions compute it themselves.
CREATE FUNCTION wallet_partition(user_id TEXT) RETURNS SMALLINT
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    bytes BYTEA  := convert_to(user_id, 'UTF8');
    hash  BIGINT := 2166136261;
BEGIN
    FOR i IN 0 .. length(bytes) - 1 LOOP
        hash := ((hash # get_byte(bytes, i)) * 16777619) % 4294967296;
    END LOOP;
    RETURN hash % 256;
END $$;

ALTER TABLE accounts ADD COLUMN partition SMALLINT;
UPDATE accounts SET partition = CASE WHEN owner = '' THEN 0 ELSE wallet_partition(owner) END;
ALTER TABLE accounts
    ALTER COLUMN partition SET NOT NULL,
    ADD CONSTRAINT accounts_partition_check CHECK (partition BETWEEN 0 AND 255),
    DROP CONSTRAINT accounts_pkey,
    ADD PRIMARY KEY (id, partition),
    DROP CONSTRAINT accounts_owner_kind_provider_currency_key,
    ADD UNIQUE (partition, owner, kind, provider, currency);

ALTER TABLE postings ADD COLUMN partition SMALLINT;
UPDATE postings p SET partition = a.partition FROM accounts a WHERE a.id = p.account_id;
ALTER TABLE postings
    ALTER COLUMN partition SET NOT NULL,
    DROP CONSTRAINT postings_pkey,
    ADD PRIMARY KEY (id, partition);

-- Where the balance per partition begins: every transaction after this one (a `postings.entry`
-- above it) sums to zero within each partition, which `walletctl audit` checks. The entries
-- before it sum to zero as a whole: their platform postings are partition 0's.
CREATE TABLE partitioned_since (entry BIGINT NOT NULL);
INSERT INTO partitioned_since VALUES (txid_current());
