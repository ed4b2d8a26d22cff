-- The service hall's cash desk (sync_server/services/cash_desk.py): the per-transaction cap and the
-- absolute maximum of a cash recharge, the requests waiting for a second staff member's approval,
-- reversals (冲正) of mistaken cash recharges, and each clerk's shift close (结账).

-- ¥1000: the online channels' per-order ceiling (services/recharge.py MAX_ORDER_FEN), so the desk alone
-- takes no more at once than the app would; above it a slipped digit costs the most.
-- ¥10000: more cash than that is not taken over a desk at all (a typo of ¥500,000 is refused outright).
INSERT INTO settings (name, value) VALUES
    ('cash_recharge_cap_fen', 100000),
    ('cash_recharge_max_fen', 1000000);

-- The receipt (staff action log line) of each cash order booked by the desk.
ALTER TABLE recharge_orders ADD COLUMN staff_action_id INTEGER;
CREATE INDEX recharge_orders_operator ON recharge_orders(operator, paid_ms);
CREATE INDEX card_reissues_operator ON card_reissues(operator, time_ms);

-- A cash recharge above the cap, waiting for (or decided by) a second staff member.
CREATE TABLE cash_recharge_requests (
    request_id TEXT PRIMARY KEY,        -- Q + 24 hex (from the form's one-time key) or Q<ms><12 hex>
    account_id INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    wallet TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    clerk TEXT NOT NULL,                -- who takes the cash (staff user name)
    clerk_user_id INTEGER NOT NULL,     -- 0: a name that is no web staff user
    requested_ms INTEGER NOT NULL,
    status TEXT NOT NULL,               -- pending, approved, refused
    decided_by TEXT,
    decided_user_id INTEGER,
    decided_ms INTEGER,
    order_id TEXT UNIQUE,               -- the cash order booked when approved
    staff_action_id INTEGER             -- the request's line in the staff action log
);
CREATE INDEX cash_recharge_requests_status ON cash_recharge_requests(status, requested_ms);

-- A cash recharge taken back: at most one per order; the ledger transfer "rv/<original transfer>".
CREATE TABLE cash_reversals (
    order_id TEXT PRIMARY KEY,
    transfer_id TEXT NOT NULL UNIQUE,
    account_id INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    wallet TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    clerk TEXT NOT NULL,                -- who booked the original (the cash goes back from their drawer)
    supervisor TEXT NOT NULL,
    supervisor_user_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    staff_action_id INTEGER,
    time_ms INTEGER NOT NULL
);
CREATE INDEX cash_reversals_clerk ON cash_reversals(clerk, time_ms);

-- A clerk's shift close: written once, never changed.
CREATE TABLE cash_closes (
    id INTEGER PRIMARY KEY,
    clerk TEXT NOT NULL,
    clerk_user_id INTEGER NOT NULL,
    request_key TEXT UNIQUE,            -- from the form's one-time key: the same form twice is one close
    from_ms INTEGER,                    -- the shift's start: the previous close, else the first item
    closed_ms INTEGER NOT NULL,
    day_number INTEGER NOT NULL,        -- the Beijing business day of closed_ms
    expected_fen INTEGER NOT NULL,
    counted_fen INTEGER NOT NULL,
    difference_fen INTEGER NOT NULL,    -- counted - expected: below 0 短款 (short), above 0 长款 (over)
    item_count INTEGER NOT NULL,
    lines TEXT NOT NULL,                -- JSON [{kind, wallet, count, fen}], fen signed (reversals < 0)
    note TEXT,
    staff_action_id INTEGER
);
CREATE INDEX cash_closes_clerk ON cash_closes(clerk, closed_ms);
CREATE INDEX cash_closes_day ON cash_closes(day_number);

-- What each close counted: an item belongs to one close only.
CREATE TABLE cash_close_items (
    kind TEXT NOT NULL,                 -- recharge (order id), fee (transfer id), reversal (order id)
    ref TEXT NOT NULL,
    close_id INTEGER NOT NULL,
    amount_fen INTEGER NOT NULL,        -- signed: + taken in, - paid out
    PRIMARY KEY (kind, ref)
);
CREATE INDEX cash_close_items_close ON cash_close_items(close_id);
