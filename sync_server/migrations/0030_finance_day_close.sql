-- Nightly reconciliation (sync_server/finance/close.py). A closed day keeps its figures as JSON; which
-- terminal records it settled is kept per terminal as a contiguous prefix plus ranges above holes,
-- so the next close reads only what is new. Channel statements are stored line by line.

CREATE TABLE finance_days (
    day_number INTEGER PRIMARY KEY,     -- Beijing calendar day, days since 1970-01-01
    day TEXT NOT NULL UNIQUE,           -- YYYY-MM-DD
    closed_ms INTEGER NOT NULL,
    transfer_watermark INTEGER NOT NULL,        -- max(transfers.rowid) at the close
    counter_anomaly_watermark INTEGER NOT NULL, -- max(counter_anomalies.id)
    deny_watermark INTEGER NOT NULL,            -- max(deny_entries.version)
    record_anomaly_watermark INTEGER NOT NULL,  -- max(record_anomalies.rowid)
    report TEXT NOT NULL                -- the closed figures (JSON), never rewritten
);
CREATE TABLE finance_settled_marks (
    terminal_id INTEGER PRIMARY KEY,
    settled_seq INTEGER NOT NULL        -- every seq <= this is settled into some closed day
);
CREATE TABLE finance_settled_ranges (
    terminal_id INTEGER NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,            -- settled seqs above a hole, merged when they touch
    PRIMARY KEY (terminal_id, from_seq)
) WITHOUT ROWID;
CREATE TABLE finance_late_records (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    booked_day_number INTEGER NOT NULL, -- the open day it was booked into
    own_day_number INTEGER NOT NULL,    -- the (closed) day it belongs to
    merchant_id INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, seq)
) WITHOUT ROWID;
CREATE INDEX finance_late_records_day ON finance_late_records(booked_day_number);
CREATE TABLE finance_deferred_transfers (
    transfer_rowid INTEGER PRIMARY KEY, -- a recharge seen by a close before its own day began
    own_day_number INTEGER NOT NULL
);
CREATE TABLE finance_recharge_lines (
    day_number INTEGER NOT NULL,        -- the day the recharge was booked into
    ledger_account_id INTEGER NOT NULL, -- the channel's ledger account
    order_ref TEXT NOT NULL,            -- our order id (商户订单号), else the transfer id
    transfer_id TEXT NOT NULL UNIQUE,
    amount_fen INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    own_day_number INTEGER NOT NULL
);
CREATE INDEX finance_recharge_lines_day ON finance_recharge_lines(day_number, ledger_account_id);
CREATE TABLE finance_statements (
    ledger_account_id INTEGER NOT NULL,
    day_number INTEGER NOT NULL,
    file_sha256 TEXT NOT NULL,
    line_count INTEGER NOT NULL,
    total_fen INTEGER NOT NULL,
    imported_ms INTEGER NOT NULL,
    match TEXT,                         -- JSON, once both sides are known (the day closed)
    PRIMARY KEY (ledger_account_id, day_number)
);
CREATE TABLE finance_statement_lines (
    ledger_account_id INTEGER NOT NULL,
    day_number INTEGER NOT NULL,
    line_number INTEGER NOT NULL,
    order_ref TEXT NOT NULL,
    channel_ref TEXT,
    amount_fen INTEGER NOT NULL,
    time_text TEXT,
    PRIMARY KEY (ledger_account_id, day_number, line_number)
) WITHOUT ROWID;
INSERT INTO settings (name, value) VALUES
    ('finance_close_after_minutes', 60)  -- the server closes yesterday after 01:00 Beijing time
    ON CONFLICT (name) DO NOTHING;
