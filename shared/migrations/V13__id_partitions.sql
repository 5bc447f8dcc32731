-- Every row keyed by an id carries its user's partition (docs/sharding.md, step 4), as the
-- ledger's rows have since V11: a split moves a partition's remembered ids, transfers,
-- withdrawals, daily amounts and grants with its wallets, selecting them by this column (a
-- publication's row filter can only read the row's own columns).
--
-- The keys do not change: an id stays unique per database, so one PostgreSQL answers a reused
-- id exactly as before (`id_conflict`, `transfer_exists`).
--
-- `commands` and `grant_releases` cannot be traced to a user for the rows written before this
-- migration (a command's row holds no user; a release is of a grant that was never committed),
-- nor can a command whose user id is missing and whose subject named no partition: those rows
-- have no partition (NULL), and a split keeps them on every shard. Adding a column that is
-- NULL rewrites nothing; the other four tables are rewritten once, each row's partition
-- computed from its user id.
--
-- The functions of an earlier version do not write the column: stop them before this
-- migration runs.

ALTER TABLE commands ADD COLUMN partition SMALLINT CHECK (partition BETWEEN 0 AND 255);
ALTER TABLE grant_releases ADD COLUMN partition SMALLINT CHECK (partition BETWEEN 0 AND 255);

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['transfers', 'withdrawals', 'withdrawal_days', 'grants'] LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN partition SMALLINT', t);
        EXECUTE format('UPDATE %I SET partition = wallet_partition(user_id)', t);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN partition SET NOT NULL,
                            ADD CONSTRAINT %I CHECK (partition BETWEEN 0 AND 255)',
                       t, t || '_partition_check');
    END LOOP;
END $$;
