-- One login role per function, with only the privileges its SQL needs. `walletctl setup` runs
-- this after the migrations, in every database it sets up (roles belong to the server; grants to
-- the database). The roles get no password here: give each one (ALTER ROLE … PASSWORD, or a
-- certificate in pg_hba.conf) and put it in that function's DATABASE_URL. Setup, migrations,
-- campaigns and the operator's commands (walletctl) keep the owner's role.
--
-- Every command function is one row of the list below: its role, the runtime's privileges, and
-- its rows of the tables every function shares (row-level security). `walletctl new-function`
-- adds its function's row; a function's own tables are granted after the list.
--
-- The runtime every command function links: dedup (claim with INSERT … RETURNING, look up,
-- release) and the outbox (insert, publish, delete; the relay claims rows with FOR UPDATE SKIP
-- LOCKED). A function that creates or moves wallets gets the ledger too: create, lock (FOR UPDATE
-- needs UPDATE) and update user wallets' balances, append postings; only a balance and its
-- version ever change.
--
-- Row-level security: each role reaches only its own dedup ids (a role that could delete another
-- function's would make that function apply a command twice), the wallets of the kinds it
-- creates and moves (deposit credits `main`, transfer-out moves `main` to `in_transit`,
-- provider-ack `in_transit` to `game` or back to `main` and `game` to `main` with its platform
-- account of the players' results, bonus-grant credits `bonus`, withdraw moves `main` to `held`,
-- payout-ack `held` to its platform account or back to `main`; deposit, bonus-grant, provider-ack
-- and payout-ack create their platform accounts; transfer-in moves no money), and the postings of
-- its own commands (or its transaction's platform sums, which name none). The owner (setup,
-- walletctl, the audit) is not subject to these policies. The outbox stays shared: every
-- function's relay publishes what any crash left behind.
--
-- Setup runs against a live system: grants are idempotent, a policy is created only when it is
-- missing, and row security is enabled only where it is off (both take the table's strongest
-- lock). A change to a policy drops the old one by name first, only where it is still the old one.
DO $$
DECLARE
    f record;
    r text;
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['commands', 'accounts', 'postings'] LOOP
        IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = t::regclass) THEN
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        END IF;
    END LOOP;
    -- V10: provider-ack creates its platform accounts (game-results:<provider>).
    IF EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'accounts'
               AND policyname = 'creates_provider-ack' AND with_check NOT LIKE '%platform%') THEN
        DROP POLICY "creates_provider-ack" ON accounts;
    END IF;
    FOR f IN SELECT * FROM (VALUES
            -- function      wallet kinds it creates                            kinds it moves
            ('deposit',      ARRAY['main', 'platform'],                         ARRAY['main']),
            ('transfer-out', ARRAY['main', 'in_transit'],                       ARRAY['main', 'in_transit']),
            ('provider-ack', ARRAY['main', 'in_transit', 'game', 'platform'],   ARRAY['main', 'in_transit', 'game']),
            ('bonus-grant',  ARRAY['bonus', 'platform'],                        ARRAY['bonus']),
            ('withdraw',     ARRAY['main', 'held'],                             ARRAY['main', 'held']),
            ('payout-ack',   ARRAY['main', 'held', 'platform'],                 ARRAY['main', 'held']),
            ('transfer-in',  ARRAY[]::text[],                                   ARRAY[]::text[])
            -- walletctl new-function: new functions above this line
        ) AS v (function, creates, moves) LOOP
        r := 'wallet_' || replace(f.function, '-', '_');
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        -- Another setup (another database on this server) created it meanwhile.
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
        EXECUTE format('GRANT SELECT ON shard_self, partition_map TO %I', r);
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON commands TO %I', r);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO %I', r);
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE policyname = 'own_commands_' || f.function) THEN
            EXECUTE format('CREATE POLICY %I ON commands TO %I USING (function = %L) WITH CHECK (function = %L)',
                'own_commands_' || f.function, r, f.function, f.function);
        END IF;
        CONTINUE WHEN cardinality(f.creates) = 0;
        EXECUTE format('REVOKE UPDATE ON accounts FROM %I', r);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE (balance, version) ON accounts TO %I', r);
        EXECUTE format('GRANT INSERT ON postings TO %I', r);
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE policyname IN ('read_wallets', 'reads_' || f.function)
                       AND r = ANY (roles::text[])) THEN
            EXECUTE format('CREATE POLICY %I ON accounts FOR SELECT TO %I USING (true)',
                'reads_' || f.function, r);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE policyname = 'creates_' || f.function) THEN
            EXECUTE format('CREATE POLICY %I ON accounts FOR INSERT TO %I WITH CHECK (kind = ANY (%L))',
                'creates_' || f.function, r, f.creates);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE policyname = 'moves_' || f.function) THEN
            EXECUTE format('CREATE POLICY %I ON accounts FOR UPDATE TO %I USING (kind = ANY (%L)) WITH CHECK (kind = ANY (%L))',
                'moves_' || f.function, r, f.moves, f.moves);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE policyname = 'posts_' || f.function) THEN
            EXECUTE format('CREATE POLICY %I ON postings FOR INSERT TO %I WITH CHECK (command IS NULL OR starts_with(command, %L))',
                'posts_' || f.function, r, f.function || ':');
        END IF;
    END LOOP;

    -- balance reads wallets when the cache misses.
    BEGIN
        CREATE ROLE wallet_balance LOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE policyname IN ('read_wallets', 'reads_balance')
                   AND 'wallet_balance' = ANY (roles::text[])) THEN
        CREATE POLICY reads_balance ON accounts FOR SELECT TO wallet_balance USING (true);
    END IF;
END $$;

GRANT SELECT ON accounts TO wallet_balance;

-- Every function checks at start that its database is its SHARD's (V12).
GRANT SELECT ON shard_self, partition_map TO wallet_balance;

-- transfer-out and transfer-in record each transfer; provider-ack finishes it (for a transfer in,
-- with what came back) and its sweeper queries providers. provider-ack changes a transfer's
-- outcome and the sweeper's state, never what was asked.
GRANT SELECT, INSERT ON transfers TO wallet_transfer_out, wallet_transfer_in;
REVOKE UPDATE ON transfers FROM wallet_provider_ack;
GRANT SELECT, UPDATE (status, provider_ref, reason, returned, taken, finished_at, next_check_at,
                      checks, last_check_at, stuck_at) ON transfers TO wallet_provider_ack;

-- bonus-grant: campaigns are created by walletctl; the function locks and counts them, records
-- grants, and gives back reservations that never committed.
-- (its counters and its Redis epoch; never its budget or rules).
REVOKE UPDATE ON campaigns FROM wallet_bonus_grant;
GRANT SELECT, UPDATE (granted, grants, redis_epoch, wanted) ON campaigns TO wallet_bonus_grant;
GRANT SELECT, INSERT ON grants TO wallet_bonus_grant;
GRANT SELECT, INSERT ON grant_releases TO wallet_bonus_grant;

-- withdraw records each withdrawal and counts it against the day's limit; payout-ack settles it,
-- gives a declined one's amount back to the day, and its sweeper queries payment providers.
-- Neither changes what was asked for.
GRANT SELECT, INSERT ON withdrawals TO wallet_withdraw;
REVOKE UPDATE ON withdrawals FROM wallet_payout_ack;
GRANT SELECT, UPDATE (status, psp_ref, reason, finished_at, next_check_at, checks,
                      last_check_at, stuck_at) ON withdrawals TO wallet_payout_ack;
REVOKE UPDATE ON withdrawal_days FROM wallet_withdraw, wallet_payout_ack;
GRANT SELECT, INSERT, UPDATE (amount) ON withdrawal_days TO wallet_withdraw;
GRANT SELECT, UPDATE (amount) ON withdrawal_days TO wallet_payout_ack;
