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

ALTER TABLE transfers ADD COLUMN partition SMALLINT;
UPDATE transfers SET partition = wallet_partition(user_id);
ALTER TABLE transfers
    ALTER COLUMN partition SET NOT NULL,
    ADD CONSTRAINT transfers_partition_check CHECK (partition BETWEEN 0 AND 255);

ALTER TABLE withdrawals ADD COLUMN partition SMALLINT;
UPDATE withdrawals SET partition = wallet_partition(user_id);
ALTER TABLE withdrawals
    ALTER COLUMN partition SET NOT NULL,
    ADD CONSTRAINT withdrawals_partition_check CHECK (partition BETWEEN 0 AND 255);

ALTER TABLE withdrawal_days ADD COLUMN partition SMALLINT;
UPDATE withdrawal_days SET partition = wallet_partition(user_id);
ALTER TABLE withdrawal_days
    ALTER COLUMN partition SET NOT NULL,
    ADD CONSTRAINT withdrawal_days_partition_check CHECK (partition BETWEEN 0 AND 255);

ALTER TABLE grants ADD COLUMN partition SMALLINT;
UPDATE grants SET partition = wallet_partition(user_id);
ALTER TABLE grants
    ALTER COLUMN partition SET NOT NULL,
    ADD CONSTRAINT grants_partition_check CHECK (partition BETWEEN 0 AND 255);
