-- The initial schema: people, accounts, cards, terminals, their records, the ledger, deny list.

CREATE TABLE persons (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    id_number TEXT,                 -- national ID number (身份证号), may be absent
    staff_number TEXT,              -- staff or student number (工号/学号)
    category INTEGER NOT NULL,      -- card_layout.HOLDER_*
    created_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX persons_staff_number ON persons(staff_number) WHERE staff_number IS NOT NULL;

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES persons(id),
    single_limit_fen INTEGER NOT NULL CHECK (single_limit_fen > 0),
    daily_limit_fen INTEGER NOT NULL CHECK (daily_limit_fen > 0),
    blocked INTEGER NOT NULL DEFAULT 0,     -- frozen by the service hall
    in_debt INTEGER NOT NULL DEFAULT 0,     -- a wallet went negative (offline double spend)
    spent_day INTEGER NOT NULL DEFAULT 0,   -- day number (Beijing time) of spent_today_fen
    spent_today_fen INTEGER NOT NULL DEFAULT 0,
    balance_version INTEGER NOT NULL DEFAULT 0,  -- counters.balance_version when last changed
    pin_hash BLOB,
    pin_salt BLOB,
    pin_failures INTEGER NOT NULL DEFAULT 0,
    pin_locked_until_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE INDEX accounts_person ON accounts(person_id);
CREATE INDEX accounts_balance_version ON accounts(balance_version);

-- Ledger accounts: every party money moves between. Balances are derived from transfers.
CREATE TABLE ledger_accounts (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,            -- wallet, merchant, cash_desk, channel, fee_income, legacy_source
    account_id INTEGER,            -- for wallets
    wallet TEXT,                   -- main, water, legacy (wallets only)
    merchant_id INTEGER,           -- for merchant accounts
    name_zh TEXT,
    name_en TEXT
);
CREATE UNIQUE INDEX ledger_accounts_wallet ON ledger_accounts(account_id, wallet) WHERE account_id IS NOT NULL;

CREATE TABLE merchants (
    id INTEGER PRIMARY KEY,
    name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL,
    category INTEGER NOT NULL,      -- wallets.CATEGORY_*
    ledger_account_id INTEGER NOT NULL REFERENCES ledger_accounts(id)
);

CREATE TABLE cards (
    card_number INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    uid BLOB NOT NULL,
    status TEXT NOT NULL,           -- active, lost, replaced, frozen
    holder_category INTEGER NOT NULL,
    expiry_yyyymmdd INTEGER NOT NULL,
    issued_ms INTEGER NOT NULL,
    PRIMARY KEY (card_number, generation)
);
CREATE INDEX cards_account ON cards(account_id);

CREATE TABLE terminals (
    id INTEGER PRIMARY KEY,
    merchant_id INTEGER NOT NULL REFERENCES merchants(id),
    key_version INTEGER NOT NULL DEFAULT 1,
    status TEXT NOT NULL,           -- active, revoked
    acked_seq INTEGER NOT NULL DEFAULT 0,   -- highest contiguous seq stored
    max_seq INTEGER NOT NULL DEFAULT 0,     -- highest seq stored (> acked_seq means gaps)
    last_sync_ms INTEGER,
    clock_offset_ms INTEGER,        -- server clock minus terminal clock at the last sync
    health TEXT,                    -- JSON of the last health map
    created_ms INTEGER NOT NULL
);

CREATE TABLE request_counters (
    terminal_id INTEGER PRIMARY KEY,
    last_counter INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);

CREATE TABLE terminal_records (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    raw BLOB NOT NULL,
    kind INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,           -- terminal clock, as sent
    corrected_time_ms INTEGER NOT NULL, -- time_ms + the clock offset seen at this sync
    card_number INTEGER NOT NULL,
    account_id INTEGER NOT NULL,
    card_generation INTEGER NOT NULL,
    category INTEGER NOT NULL,
    tap_counter INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    merchant_id INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    booked INTEGER NOT NULL,            -- 1 when posted to the ledger, 0 see record_anomalies
    PRIMARY KEY (terminal_id, seq)
) WITHOUT ROWID;

-- Immutable transfers. Sign convention in ledger.py: debit decreases, credit increases.
CREATE TABLE transfers (
    id TEXT NOT NULL UNIQUE,
    debit_id INTEGER NOT NULL,
    credit_id INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    kind TEXT NOT NULL,
    reference TEXT,
    time_ms INTEGER NOT NULL,
    CHECK (debit_id != credit_id)
);
CREATE INDEX transfers_debit ON transfers(debit_id);
CREATE INDEX transfers_credit ON transfers(credit_id);

-- Derived cache of sum(credits) - sum(debits) per ledger account, proved by ledger.check_balances
CREATE TABLE balances (
    ledger_account_id INTEGER PRIMARY KEY,
    balance_fen INTEGER NOT NULL
);

-- Append-only deny log: a later entry with active = 0 lifts an earlier one, version = id
CREATE TABLE deny_entries (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    ref INTEGER NOT NULL,
    active INTEGER NOT NULL,
    reason INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX deny_entries_ref ON deny_entries(kind, ref);

-- Last tap counter seen per card (card_ref = card_number * 256 + generation, as in deny refs).
CREATE TABLE card_counters (
    card_ref INTEGER PRIMARY KEY,
    max_tap_counter INTEGER NOT NULL,
    taps_seen INTEGER NOT NULL
);

CREATE TABLE counter_anomalies (
    id INTEGER PRIMARY KEY,
    card_number INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    kind TEXT NOT NULL,             -- gap, repeat, late
    expected INTEGER NOT NULL,      -- the counter that would have been next
    seen INTEGER NOT NULL,
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    noticed_ms INTEGER NOT NULL
);

CREATE TABLE record_anomalies (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,           -- unknown_account, ...
    noticed_ms INTEGER NOT NULL,
    PRIMARY KEY (terminal_id, seq)
);

CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);

CREATE TABLE settings (name TEXT PRIMARY KEY, value INTEGER NOT NULL);

-- Seed rows. The system ledger accounts have fixed ids that code names (sync_server/db.py LEDGER_*).
INSERT INTO counters (name, value) VALUES
    ('balance_version', 0),
    ('card_number', 100000),            -- the first card issued is number 100001
    ('config_version', 1);
INSERT INTO settings (name, value) VALUES
    ('sync_interval_ms', 5000),
    ('offline_cap_count', 5),           -- taps per account per terminal while offline
    ('offline_cap_amount_fen', 10000),  -- fen per account per terminal while offline
    ('double_tap_window_ms', 3000),
    ('default_single_limit_fen', 5000),
    ('default_daily_limit_fen', 30000),
    ('clock_tolerance_ms', 5000);
INSERT INTO ledger_accounts (id, kind, name_zh, name_en) VALUES
    (1, 'cash_desk', '服务大厅现金', 'service hall cash desk'),        -- LEDGER_CASH_DESK
    (2, 'channel', '线上充值', 'online recharge channel'),            -- LEDGER_ONLINE_CHANNEL
    (3, 'fee_income', '手续费收入', 'fee income'),                    -- LEDGER_FEE_INCOME
    (4, 'legacy_source', '旧系统余额迁移', 'legacy card migration source');  -- LEDGER_LEGACY_SOURCE
INSERT INTO balances (ledger_account_id, balance_fen) VALUES (1, 0), (2, 0), (3, 0), (4, 0);
