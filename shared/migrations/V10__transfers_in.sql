-- Transfers in (issue 24): a game provider returns a player's money to `main`.
--
-- They share `transfers` with the transfers out: one id space, so that a provider's ack, which
-- names only the transfer (`provider.<provider>.ack`), finds exactly one transfer whichever way
-- it goes, and the sweeper's status queries and the provider-ack function serve both.
--
-- A transfer in asks for an amount, or for everything the player holds at the provider (`amount`
-- NULL). The provider decides what comes back: `returned` is what it credited to `main`, `taken`
-- what the user's game wallet gave up for it (what it held, at most `returned` when an amount was
-- asked); the difference, the player's result at the provider, is posted against the platform
-- account `game-results:<provider>`.
--
-- Adding columns with constant defaults rewrites nothing; the checks read the table once.
ALTER TABLE transfers
    ADD COLUMN direction TEXT NOT NULL DEFAULT 'out' CHECK (direction IN ('out', 'in')),
    ADD COLUMN returned  NUMERIC CHECK (returned >= 0),
    ADD COLUMN taken     NUMERIC CHECK (taken >= 0),
    ALTER COLUMN amount DROP NOT NULL,
    ADD CHECK (direction = 'in' OR amount IS NOT NULL),
    ADD CHECK ((direction = 'in' AND status = 'completed') = (returned IS NOT NULL AND taken IS NOT NULL));
