-- PostgreSQL's form of ../0031_finance_ledger_check.sql (see sync_server/pg_store.py): the same two
-- tables (translated from that file); the backfill gives the derived table the alias PostgreSQL
-- requires and casts sum() (numeric on PostgreSQL) back to bigint.

CREATE TABLE finance_ledger_baseline (
    ledger_account_id INTEGER PRIMARY KEY,
    balance_fen INTEGER NOT NULL
);
CREATE TABLE finance_ledger_checks (
    day_number INTEGER PRIMARY KEY,
    checked_ms INTEGER NOT NULL,
    transfer_watermark INTEGER NOT NULL,
    problem_count INTEGER NOT NULL,
    problems TEXT NOT NULL
);
INSERT INTO finance_ledger_baseline (ledger_account_id, balance_fen)
SELECT id, sum(fen)::bigint FROM (
    SELECT credit_id AS id, amount_fen AS fen FROM transfers
    WHERE rowid <= (SELECT coalesce(max(transfer_watermark), 0) FROM finance_days)
    UNION ALL
    SELECT debit_id AS id, -amount_fen AS fen FROM transfers
    WHERE rowid <= (SELECT coalesce(max(transfer_watermark), 0) FROM finance_days)
) AS moves GROUP BY id;
