-- `make bench`'s history profile: months of remembered deposits, written in bulk.
--
--   psql "$DATABASE_URL" -v commands=50000000 -v users=1000000 -f scripts/seed-history.sql
--
-- Seeds a set-up, empty namespace database with :commands deposits of :users other users (ids
-- `h<day>-d<sequence>`, 1,000,000 a day, ordered within their day as UUIDv7s or the load's own
-- ids are), each with what the deposit function would have written: its remembered id
-- (`commands`), its user's posting, one platform posting per 1,000 and partition (a batch's
-- journal entry), and the wallets' balances and versions. `walletctl audit` finds it consistent. Journal
-- entries are negative numbers, so that they never meet a real transaction's id.
\set ON_ERROR_STOP on
-- Only this session's commits are asynchronous: a crash loses the seed, which is rebuilt.
SET synchronous_commit = off;
SET maintenance_work_mem = '1GB';
SET work_mem = '256MB';

\timing on

-- The platform's deposits account of every partition (V11).
INSERT INTO accounts (partition, owner, kind, provider, currency)
    SELECT p, '', 'platform', 'deposits', 'USD' FROM generate_series(0, 255) p
    ON CONFLICT DO NOTHING;
CREATE TEMPORARY TABLE platform AS
    SELECT partition, id FROM accounts
    WHERE owner = '' AND kind = 'platform' AND provider = 'deposits' AND currency = 'USD';

\echo wallets
INSERT INTO accounts (partition, owner, kind, currency)
    SELECT wallet_partition(owner), owner, 'main', 'USD'
    FROM (SELECT 'h-u' || lpad(u::text, 7, '0') AS owner FROM generate_series(1, :users) u) u;
-- The accounts' key leads with the partition: the seed finds its users' by id here.
CREATE TEMPORARY TABLE users AS
    SELECT row_number() OVER (ORDER BY owner) - 1 AS n, partition, id FROM accounts
    WHERE owner LIKE 'h-u%';
CREATE UNIQUE INDEX ON users (n);
ANALYZE users;

-- The seed's deposits, as a view over the sequence: every statement below reads the same rows.
CREATE TEMPORARY VIEW seed AS
    SELECT 'h' || lpad((i / 1000000)::text, 4, '0') || '-d' || lpad(i::text, 10, '0') AS id,
           u.partition,
           u.id AS account_id,
           ((i % 9900) + 100) * 0.01 AS amount,
           -(i / 1000) - 1 AS entry,
           now() - interval '90 days' + i * interval '100 microseconds' AS created_at,
           i
    FROM generate_series(1, :commands) i JOIN users u ON u.n = i % :users;

\echo remembered ids (commands)
INSERT INTO commands (function, id, fingerprint, partition, created_at)
    SELECT 'deposit', id, sha256(int8send(i)), partition, created_at FROM seed;

\echo postings of the users
INSERT INTO postings (partition, account_id, amount, command, entry, created_at)
    SELECT partition, account_id, amount, 'deposit:' || id, entry, created_at FROM seed;

\echo postings of the platform, one per journal entry and partition
INSERT INTO postings (partition, account_id, amount, entry, created_at)
    SELECT s.partition, p.id, -sum(s.amount), s.entry, max(s.created_at)
    FROM seed s JOIN platform p USING (partition) GROUP BY s.partition, p.id, s.entry;

\echo balances
UPDATE accounts a SET balance = s.total, version = s.n
    FROM (SELECT partition, account_id, sum(amount) AS total, count(*) AS n
          FROM seed GROUP BY 1, 2) s
    WHERE (a.partition, a.id) = (s.partition, s.account_id);

-- As autovacuum would have left months of history: hint bits set, visibility map, statistics.
\echo vacuum, checkpoint
VACUUM ANALYZE commands, postings, accounts;
-- The runs that follow do not pay for the seed's dirty pages.
CHECKPOINT;

\timing off
SELECT c.relname AS "table",
       pg_size_pretty(pg_total_relation_size(c.oid)) AS "on disk",
       pg_size_pretty(pg_total_relation_size(c.oid) * 1000000 / :commands) AS "per million commands"
FROM pg_class c WHERE c.relname IN ('commands', 'postings', 'accounts') ORDER BY 1;
