-- Journal entries: a platform account gets one posting per transaction instead of one per command.
--
-- Every deposit and grant also posted its counterpart to a platform account (`deposits`,
-- `bonus:<campaign>`): half of a batch's postings, all to the same account. Measured in
-- `deposit-max` (bench/ANALYSIS.md): without them PostgreSQL used 13 % less CPU. Now the ledger
-- writes, per transaction, one posting per platform account with the sum of the transaction's
-- legs to it, and no command (a user wallet's posting still names its command). The unit that
-- balances is the transaction: `entry` is its id, and `walletctl audit` checks that every entry
-- sums to zero per currency. Postings written before this migration have no entry; for them the
-- unit is still their command.
ALTER TABLE postings ADD COLUMN entry BIGINT;
ALTER TABLE postings ALTER COLUMN entry SET DEFAULT txid_current();
ALTER TABLE postings ALTER COLUMN command DROP NOT NULL;
ALTER TABLE postings ADD CONSTRAINT postings_entry_or_command CHECK (entry IS NOT NULL OR command IS NOT NULL);
