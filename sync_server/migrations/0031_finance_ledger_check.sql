-- The day close checks the ledger in two steps (sync_server/finance/close.py). Under the write lock
-- only the accounts the close's transfer window touched: cached balance == the balance derived at
-- the previous close plus the window's sums, that derived balance kept here per account (built from
-- transfers only, never copied from the cached balances). After the commit, the full
-- ledger.check_balances on a read snapshot, stored per closed day beside its figures.

CREATE TABLE finance_ledger_baseline (
    ledger_account_id INTEGER PRIMARY KEY,
    balance_fen INTEGER NOT NULL        -- credits - debits of the transfers up to the last close's watermark
);
CREATE TABLE finance_ledger_checks (
    day_number INTEGER PRIMARY KEY,     -- the closed day the check ran after
    checked_ms INTEGER NOT NULL,
    transfer_watermark INTEGER NOT NULL, -- max(transfers.rowid) in the snapshot checked
    problem_count INTEGER NOT NULL,
    problems TEXT NOT NULL              -- JSON list of the first problems found
);
INSERT INTO finance_ledger_baseline (ledger_account_id, balance_fen)
SELECT id, sum(fen) FROM (
    SELECT credit_id AS id, amount_fen AS fen FROM transfers
    WHERE rowid <= (SELECT coalesce(max(transfer_watermark), 0) FROM finance_days)
    UNION ALL
    SELECT debit_id AS id, -amount_fen AS fen FROM transfers
    WHERE rowid <= (SELECT coalesce(max(transfer_watermark), 0) FROM finance_days)
) GROUP BY id;
