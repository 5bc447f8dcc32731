-- One outbox row per transaction instead of one per message.
--
-- A batch of 1,000 deposits inserted 1,000 outbox rows and deleted them once published: 1,000
-- heap tuples, primary-key entries and dead tuples for vacuum, per batch. Measured in
-- `deposit-max` (bench/ANALYSIS.md): without those rows PostgreSQL used 22 % less CPU and the run
-- took 12 % less time. Now a transaction's messages are one row of parallel arrays, in publishing
-- order, inserted, published and deleted together. Rows written before this migration become
-- one-message rows.
--
-- A row of 1,000 events is about 400 kB, stored out of line (TOAST). Uncompressed: a row lives
-- for milliseconds, written once and read at most once (by the relay), so compressing it is
-- CPU spent for nothing (pglz cost PostgreSQL about 3 % of its CPU in `deposit-max`).
ALTER TABLE outbox
    ALTER COLUMN subject TYPE TEXT[]  USING ARRAY[subject],
    ALTER COLUMN msg_id  TYPE TEXT[]  USING ARRAY[msg_id],
    ALTER COLUMN payload TYPE BYTEA[] USING ARRAY[payload],
    ALTER COLUMN wallets TYPE TEXT[]  USING ARRAY[wallets];
ALTER TABLE outbox RENAME COLUMN subject TO subjects;
ALTER TABLE outbox RENAME COLUMN msg_id TO msg_ids;
ALTER TABLE outbox RENAME COLUMN payload TO payloads;
ALTER TABLE outbox ADD CONSTRAINT outbox_one_entry_per_message CHECK (
    cardinality(subjects) > 0
    AND cardinality(msg_ids) = cardinality(subjects)
    AND cardinality(payloads) = cardinality(subjects)
    AND cardinality(wallets) = cardinality(subjects));
ALTER TABLE outbox
    ALTER COLUMN subjects SET STORAGE EXTERNAL,
    ALTER COLUMN msg_ids  SET STORAGE EXTERNAL,
    ALTER COLUMN payloads SET STORAGE EXTERNAL,
    ALTER COLUMN wallets  SET STORAGE EXTERNAL;
