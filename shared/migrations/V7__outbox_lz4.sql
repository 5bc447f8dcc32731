-- The outbox's arrays compressed with lz4 (V5 stored them uncompressed).
--
-- V5 kept a row of 1,000 events uncompressed out of line because pglz cost PostgreSQL about 3 %
-- of its CPU in `deposit-max`. lz4 compresses the same JSON several-fold for a fraction of
-- pglz's CPU, and every byte it saves is a byte the row does not write to TOAST pages and to
-- the WAL, and a TOAST chunk it does not insert, index and delete. Measured in `deposit-max`
-- (bench/ANALYSIS.md): PostgreSQL used 6–7 % less CPU. Rows written before this migration stay
-- as they are; PostgreSQL reads both.
ALTER TABLE outbox
    ALTER COLUMN subjects SET STORAGE EXTENDED,
    ALTER COLUMN msg_ids  SET STORAGE EXTENDED,
    ALTER COLUMN payloads SET STORAGE EXTENDED,
    ALTER COLUMN wallets  SET STORAGE EXTENDED,
    ALTER COLUMN subjects SET COMPRESSION lz4,
    ALTER COLUMN msg_ids  SET COMPRESSION lz4,
    ALTER COLUMN payloads SET COMPRESSION lz4,
    ALTER COLUMN wallets  SET COMPRESSION lz4;
