-- One login role per function, with only the privileges its SQL needs. `walletctl setup` runs
-- this after the migrations, in every database it sets up (roles belong to the server; grants to
-- the database). The roles get no password here: give each one (ALTER ROLE … PASSWORD, or a
-- certificate in pg_hba.conf) and put it in that function's DATABASE_URL. Setup, migrations,
-- campaigns and the operator's commands (walletctl) keep the owner's role.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['wallet_deposit', 'wallet_transfer_out', 'wallet_provider_ack',
                             'wallet_bonus_grant', 'wallet_withdraw', 'wallet_payout_ack',
                             'wallet_balance'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        -- Another setup (another database on this server) created it meanwhile.
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
END $$;

-- The runtime every command function links. dedup: claim (INSERT … RETURNING), look up, release.
GRANT SELECT, INSERT, DELETE ON commands
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant,
      wallet_withdraw, wallet_payout_ack;
-- The ledger: create, lock (FOR UPDATE needs UPDATE) and update user wallets' balances; append
-- postings. Only a balance and its version ever change.
REVOKE UPDATE ON accounts FROM wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant,
    wallet_withdraw, wallet_payout_ack;
GRANT SELECT, INSERT, UPDATE (balance, version) ON accounts
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant,
      wallet_withdraw, wallet_payout_ack;
GRANT INSERT ON postings
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant,
      wallet_withdraw, wallet_payout_ack;
-- The outbox: insert, publish, delete; the relay claims rows with FOR UPDATE SKIP LOCKED.
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant,
      wallet_withdraw, wallet_payout_ack;

-- transfer-out records each transfer; provider-ack finishes it and its sweeper queries providers.
-- provider-ack changes a transfer's outcome and the sweeper's state, never what was sent.
GRANT SELECT, INSERT ON transfers TO wallet_transfer_out;
REVOKE UPDATE ON transfers FROM wallet_provider_ack;
GRANT SELECT, UPDATE (status, provider_ref, reason, finished_at, next_check_at, checks,
                      last_check_at, stuck_at) ON transfers TO wallet_provider_ack;

-- bonus-grant: campaigns are created by walletctl; the function locks and counts them, records
-- grants, and gives back reservations that never committed.
-- (its counters and its Redis epoch; never its budget or rules).
REVOKE UPDATE ON campaigns FROM wallet_bonus_grant;
GRANT SELECT, UPDATE (granted, grants, redis_epoch) ON campaigns TO wallet_bonus_grant;
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

-- balance reads wallets when the cache misses.
GRANT SELECT ON accounts TO wallet_balance;

-- Row-level security: each function's role reaches only its own rows of the tables every
-- function shares. Its dedup ids (a role that could delete another function's would make that
-- function apply a command twice); the wallets it creates and moves, by kind (deposit credits
-- `main`, transfer-out moves `main` to `in_transit`, provider-ack `in_transit` to `game` or back
-- to `main`, bonus-grant credits `bonus`, withdraw moves `main` to `held`, payout-ack `held` to
-- its platform account or back to `main`; deposit, bonus-grant and payout-ack also create their
-- platform accounts); the postings of its own commands (or its transaction's platform sums, which name
-- none). The owner (setup, walletctl, the audit) is not subject to these policies. The outbox
-- stays shared: every function's relay publishes what any crash left behind.
--
-- Setup runs against a live system: a function's policies are created only when they are
-- missing, and row security is enabled only where it is off (both take the table's strongest
-- lock). A change to a policy below must drop the old one by name first.
DO $$
DECLARE
    f record;
    t text;
    r text;
BEGIN
    FOREACH t IN ARRAY ARRAY['commands', 'accounts', 'postings'] LOOP
        IF NOT (SELECT relrowsecurity FROM pg_class WHERE oid = t::regclass) THEN
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE tablename = 'accounts' AND policyname = 'read_wallets') THEN
        CREATE POLICY read_wallets ON accounts FOR SELECT
            TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant,
               wallet_withdraw, wallet_payout_ack, wallet_balance
            USING (true);
    END IF;
    FOR f IN SELECT * FROM (VALUES
            ('deposit',      ARRAY['main', 'platform'],           ARRAY['main']),
            ('transfer-out', ARRAY['main', 'in_transit'],         ARRAY['main', 'in_transit']),
            ('provider-ack', ARRAY['main', 'in_transit', 'game'], ARRAY['main', 'in_transit', 'game']),
            ('bonus-grant',  ARRAY['bonus', 'platform'],          ARRAY['bonus']),
            ('withdraw',     ARRAY['main', 'held'],               ARRAY['main', 'held']),
            ('payout-ack',   ARRAY['main', 'held', 'platform'],   ARRAY['main', 'held'])
        ) AS v (function, creates, moves) LOOP
        IF EXISTS (SELECT 1 FROM pg_policies WHERE policyname = 'own_commands_' || f.function) THEN
            CONTINUE;
        END IF;
        r := 'wallet_' || replace(f.function, '-', '_');
        EXECUTE format('CREATE POLICY %I ON commands TO %I USING (function = %L) WITH CHECK (function = %L)',
            'own_commands_' || f.function, r, f.function, f.function);
        EXECUTE format('CREATE POLICY %I ON accounts FOR INSERT TO %I WITH CHECK (kind = ANY (%L))',
            'creates_' || f.function, r, f.creates);
        EXECUTE format('CREATE POLICY %I ON accounts FOR UPDATE TO %I USING (kind = ANY (%L)) WITH CHECK (kind = ANY (%L))',
            'moves_' || f.function, r, f.moves, f.moves);
        EXECUTE format('CREATE POLICY %I ON postings FOR INSERT TO %I WITH CHECK (command IS NULL OR starts_with(command, %L))',
            'posts_' || f.function, r, f.function || ':');
    END LOOP;
END $$;
