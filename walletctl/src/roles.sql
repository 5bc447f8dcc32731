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
                             'wallet_bonus_grant', 'wallet_balance'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        -- Another setup (another database on this server) created it meanwhile.
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END LOOP;
END $$;

-- The runtime every command function links. dedup: claim (INSERT … RETURNING), look up, release.
GRANT SELECT, INSERT, DELETE ON commands
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant;
-- The ledger: create, lock (FOR UPDATE needs UPDATE) and update user wallets; append postings.
GRANT SELECT, INSERT, UPDATE ON accounts
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant;
GRANT INSERT ON postings
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant;
-- The outbox: insert, publish, delete; the relay claims rows with FOR UPDATE SKIP LOCKED.
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox
    TO wallet_deposit, wallet_transfer_out, wallet_provider_ack, wallet_bonus_grant;

-- transfer-out records each transfer; provider-ack finishes it and its sweeper queries providers.
GRANT SELECT, INSERT ON transfers TO wallet_transfer_out;
GRANT SELECT, UPDATE ON transfers TO wallet_provider_ack;

-- bonus-grant: campaigns are created by walletctl; the function locks and counts them, records
-- grants, and gives back reservations that never committed.
GRANT SELECT, UPDATE ON campaigns TO wallet_bonus_grant;
GRANT SELECT, INSERT ON grants TO wallet_bonus_grant;
GRANT SELECT, INSERT ON grant_releases TO wallet_bonus_grant;

-- balance reads wallets when the cache misses.
GRANT SELECT ON accounts TO wallet_balance;
