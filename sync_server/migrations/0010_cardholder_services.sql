-- Cardholder and service-hall operations (sync_server/services/): recharge orders and channel
-- notifications, reissues with their fee, dorm electricity payments, phone-app binding and
-- tokens, and the person fields the HR / student registry import carries.

CREATE TABLE recharge_channels (
    name TEXT PRIMARY KEY,              -- alipay, wechat, ccb, cash
    ledger_account_id INTEGER NOT NULL UNIQUE,
    name_zh TEXT NOT NULL,
    name_en TEXT NOT NULL,
    online INTEGER NOT NULL             -- 1: paid through asynchronous signed notifications
);
CREATE TABLE recharge_orders (
    order_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL,
    wallet TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    channel TEXT NOT NULL,
    status TEXT NOT NULL,               -- pending, paid, closed
    channel_trade_no TEXT,              -- the channel's own number, for statement matching
    transfer_id TEXT UNIQUE,            -- the credit, once paid
    operator TEXT,                      -- staff user at the cash desk
    created_ms INTEGER NOT NULL,
    paid_ms INTEGER,
    closed_ms INTEGER
);
CREATE INDEX recharge_orders_account ON recharge_orders(account_id, created_ms);
CREATE INDEX recharge_orders_channel ON recharge_orders(channel, paid_ms);
CREATE TABLE channel_notifications (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    order_id TEXT,
    status TEXT,
    outcome TEXT NOT NULL,              -- credited, duplicate, closed, ignored, bad_signature, ...
    received_ms INTEGER NOT NULL,
    body TEXT                           -- first bytes of the body, for the audit
);
CREATE INDEX channel_notifications_order ON channel_notifications(order_id);
CREATE TABLE card_reissues (
    card_number INTEGER NOT NULL,
    generation INTEGER NOT NULL,        -- the new card's generation
    account_id INTEGER NOT NULL,
    fee_fen INTEGER NOT NULL,
    fee_source TEXT NOT NULL,           -- balance, cash, none
    fee_transfer_id TEXT,
    operator TEXT,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (card_number, generation)
);
CREATE TABLE electricity_payments (
    payment_id TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL,
    building TEXT NOT NULL,
    floor INTEGER NOT NULL,
    room TEXT NOT NULL,
    amount_fen INTEGER NOT NULL CHECK (amount_fen > 0),
    operator TEXT,
    time_ms INTEGER NOT NULL
);
CREATE INDEX electricity_payments_account ON electricity_payments(account_id);
CREATE TABLE app_users (
    app_user_id TEXT PRIMARY KEY,       -- the phone account (WeChat / QQ / Alipay / phone sign-in)
    person_id INTEGER,                  -- bound cardholder, NULL until bound
    bound_ms INTEGER,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE INDEX app_users_person ON app_users(person_id);
CREATE TABLE app_tokens (
    token_hash TEXT PRIMARY KEY,        -- sha256 of the bearer token (the token itself is never stored)
    app_user_id TEXT NOT NULL,
    person_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX app_tokens_user ON app_tokens(app_user_id);
ALTER TABLE persons ADD COLUMN department TEXT;
ALTER TABLE persons ADD COLUMN expiry_yyyymmdd INTEGER;
ALTER TABLE persons ADD COLUMN updated_ms INTEGER;

-- Recharge channels with their own ledger accounts (so finance matches each against its statement).
-- The cash desk keeps the system account 1 (LEDGER_CASH_DESK); online channels get new ones.
INSERT INTO ledger_accounts (kind, name_zh, name_en) VALUES
    ('channel', '支付宝', 'Alipay'),
    ('channel', '微信支付', 'WeChat Pay'),
    ('channel', '建行龙支付', 'CCB Long Pay');
INSERT INTO balances (ledger_account_id, balance_fen)
    SELECT id, 0 FROM ledger_accounts
    WHERE kind = 'channel' AND name_en IN ('Alipay', 'WeChat Pay', 'CCB Long Pay') ORDER BY id;
INSERT INTO recharge_channels (name, ledger_account_id, name_zh, name_en, online)
    SELECT 'alipay', id, name_zh, name_en, 1 FROM ledger_accounts WHERE kind = 'channel' AND name_en = 'Alipay';
INSERT INTO recharge_channels (name, ledger_account_id, name_zh, name_en, online)
    SELECT 'wechat', id, name_zh, name_en, 1 FROM ledger_accounts WHERE kind = 'channel' AND name_en = 'WeChat Pay';
INSERT INTO recharge_channels (name, ledger_account_id, name_zh, name_en, online)
    SELECT 'ccb', id, name_zh, name_en, 1 FROM ledger_accounts WHERE kind = 'channel' AND name_en = 'CCB Long Pay';
INSERT INTO recharge_channels (name, ledger_account_id, name_zh, name_en, online)
    VALUES ('cash', 1, '服务大厅现金', 'service hall cash desk', 0);
INSERT INTO settings (name, value) VALUES
    ('reissue_fee_fen', 1000),          -- 补卡费 ¥10
    ('electricity_merchant_id', 0);     -- created on the first payment (ids of merchants added by the
                                        -- hall stay as they were)
