-- Bluetooth water (sync_server/water_holds.py): grants held against the cardholder's wallets, and
-- the volume of every water session a dispenser journals.

-- The money of open grants sits here, moved from the wallets by `hold` transfers and out again by
-- the settlement (`purchase` to the water merchant, `release` of the rest back to the wallets).
INSERT INTO ledger_accounts (kind, name_zh, name_en) VALUES ('hold', '蓝牙用水授权冻结', 'Bluetooth water grant holds');
INSERT INTO balances (ledger_account_id, balance_fen) SELECT id, 0 FROM ledger_accounts WHERE kind = 'hold';

CREATE TABLE water_grants (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    dispenser_id INTEGER NOT NULL REFERENCES terminals(id),
    challenge BLOB NOT NULL,            -- the dispenser's single-use challenge the grant answers
    cap_fen INTEGER NOT NULL CHECK (cap_fen > 0),   -- held from the wallets at issue
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,        -- server clock: no session can start after this
    hold_until_ms INTEGER NOT NULL,     -- an unsettled hold is released after this
    status TEXT NOT NULL,               -- held, settled, released (hold given back, not settled yet)
    settled_fen INTEGER,
    settled_ml INTEGER,
    settled_ms INTEGER,
    settled_via TEXT,                   -- phone (its receipt) or dispenser (its batch), whichever came first
    end_reason INTEGER,                 -- water_grants.END_*
    session_seq INTEGER                 -- the dispenser's journal seq of the session
);
CREATE UNIQUE INDEX water_grants_challenge ON water_grants(dispenser_id, challenge);
CREATE INDEX water_grants_status ON water_grants(status, hold_until_ms);
CREATE INDEX water_grants_account ON water_grants(account_id, status);

-- One row per water record (card or grant session) stored from a dispenser's batches.
CREATE TABLE water_sessions (
    terminal_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,              -- records.KIND_WATER (card) or KIND_WATER_GRANT
    account_id INTEGER NOT NULL,
    grant_id INTEGER,                   -- grant sessions
    ml INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,
    duration_s INTEGER NOT NULL,
    end_reason INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,            -- corrected time of the session's end
    PRIMARY KEY (terminal_id, seq)
);

INSERT INTO settings (name, value) VALUES
    ('water_price_fen_per_litre', 30),  -- what one litre costs, sent to dispensers in their config
    ('water_max_grant_fen', 500),       -- the most one Bluetooth session may draw (and hold)
    ('water_max_session_fen', 500),     -- the most one card session may draw
    ('water_grant_valid_ms', 60000),    -- from the challenge: a grant unused by then opens nothing
    ('water_max_session_ms', 600000),   -- a session closes the valve after this long
    ('water_hold_grace_ms', 900000),    -- after expiry + max session: time for the receipt to arrive
    ('water_open_grants_per_account', 2);
