-- Portal sessions are signed cookies; each carries its account's session generation, and a page
-- opens only while it is still the account's current one (sync_server/web/auth.py). Signing out
-- and every PIN change or reset bump it, which ends every session of that account at once.

ALTER TABLE accounts ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0;
