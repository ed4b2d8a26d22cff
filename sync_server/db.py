"""The server's SQLite store: connections, PRAGMAs, and numbered migrations.

One SQLite file under the data directory, in WAL mode with `synchronous=FULL` (a commit that returned
survives power loss) and a busy timeout so concurrent gunicorn workers queue instead of failing.
Connections run in autocommit mode; writers open `BEGIN IMMEDIATE` through `transaction()` so that two
workers never both read-then-write the same rows (SQLite serialises writers; IMMEDIATE makes the wait
happen at the start, where it cannot deadlock).

Writers first queue on an flock(2) of a lock file beside the database (`<db>-writer.lock`). SQLite
alone makes a waiting writer poll with sleeps of 1, 2, 5, 10, 15... ms, so under a lunch rush the
write lock sat idle for milliseconds after every commit; the kernel lock hands it over at once. The
flock only orders writers that use `transaction()`; SQLite's own lock still guards everything else.

Schema changes are numbered migration functions applied once, in order, and tracked in the
`_migrations` table (through sqlite-utils). Never edit an applied migration: add the next number.
"""
import contextlib
import fcntl
import os
import sqlite3
import threading
import time

import sqlite_utils

BUSY_TIMEOUT_MS = 30000
DB_FILE_NAME = "ykt.sqlite3"

# System ledger accounts created by the first migration; their ids are fixed so code can name them.
LEDGER_CASH_DESK = 1          # 服务大厅现金 cash recharge at the service hall
LEDGER_ONLINE_CHANNEL = 2     # 线上充值渠道 app / bank recharge channel
LEDGER_FEE_INCOME = 3         # 手续费收入 fee income
LEDGER_LEGACY_SOURCE = 4      # 旧系统迁移来源 balances moved over from old-system cards
SYSTEM_LEDGER_ACCOUNTS = (
    (LEDGER_CASH_DESK, "cash_desk", "服务大厅现金", "service hall cash desk"),
    (LEDGER_ONLINE_CHANNEL, "channel", "线上充值", "online recharge channel"),
    (LEDGER_FEE_INCOME, "fee_income", "手续费收入", "fee income"),
    (LEDGER_LEGACY_SOURCE, "legacy_source", "旧系统余额迁移", "legacy card migration source"),
)

FIRST_CARD_NUMBER = 100001


WRITER_LOCK_SUFFIX = "-writer.lock"


class Connection(sqlite3.Connection):
    """A sqlite3 connection that also holds the writer lock file of its database (see transaction())."""

    def __init__(self, path, *args, **kwargs):
        sqlite3.Connection.__init__(self, path, *args, **kwargs)
        self.writer_lock_fd = None
        if isinstance(path, str) and path != ":memory:" and not path.startswith("file:"):
            self.writer_lock_fd = os.open(path + WRITER_LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self):
        sqlite3.Connection.close(self)
        self._close_lock_file()

    def __del__(self):      # a connection dropped without close() must not leak its descriptor
        self._close_lock_file()

    def _close_lock_file(self):
        fd, self.writer_lock_fd = getattr(self, "writer_lock_fd", None), None
        if fd is not None:
            os.close(fd)


def connect(path):
    """A connection with the house PRAGMAs; autocommit (use transaction() to write)."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False, factory=Connection)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=%d" % BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA foreign_keys=OFF")  # integrity is enforced by the ledger, not per-row checks
    return conn     # plain tuples: sqlite3.Row costs a microsecond a row on the hot path; see fetch_named


def fetch_named(conn, sql, parameters=()):
    """One row addressable by column name (for the few places that read a row by field)."""
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(sql, parameters).fetchone()


@contextlib.contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. Not re-entrant on purpose."""
    assert not conn.in_transaction, "nested transaction"
    lock_fd = getattr(conn, "writer_lock_fd", None)
    if lock_fd is not None:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        if lock_fd is not None:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def joined_transaction(conn):
    """Join the caller's open transaction, or open one for this block: for operations that callers
    may compose into a bigger atomic step (a hall action and its staff log line)."""
    if conn.in_transaction:
        yield conn
    else:
        with transaction(conn):
            yield conn


@contextlib.contextmanager
def read_snapshot(conn):
    """Several reads that must agree with each other: one deferred transaction, so every statement in
    the block sees the same committed state (WAL: writers go on meanwhile, unseen). Joins a
    transaction already open. Takes no writer lock; do not write inside it."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")     # a read-only transaction: COMMIT only ends the snapshot


def now_ms():
    return int(time.time() * 1000)


def next_counter(conn, name, step=1):
    """Reserve `step` values of a named counter; returns the first. Call inside a transaction."""
    assert conn.in_transaction and step >= 1
    row = conn.execute("UPDATE counters SET value = value + ? WHERE name = ? RETURNING value",
                       (step, name)).fetchone()
    assert row is not None, "unknown counter %s" % name
    return row[0] - step + 1


def counter_value(conn, name):
    return conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]


# --- migrations -----------------------------------------------------------------------------------

def _execute_script(conn, script):
    """Run statements one by one: sqlite3's executescript() would COMMIT our open transaction."""
    for statement in script.split(";"):
        code = "\n".join(line for line in statement.splitlines() if not line.strip().startswith("--"))
        if code.strip():
            conn.execute(statement)


def _m001_initial(conn):
    _execute_script(conn, """
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
    """)
    conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?)", [
        ("balance_version", 0), ("card_number", FIRST_CARD_NUMBER - 1), ("config_version", 1),
    ])
    conn.executemany("INSERT INTO settings (name, value) VALUES (?, ?)", [
        ("sync_interval_ms", 5000),
        ("offline_cap_count", 5),            # taps per account per terminal while offline
        ("offline_cap_amount_fen", 10000),   # fen per account per terminal while offline
        ("double_tap_window_ms", 3000),
        ("default_single_limit_fen", 5000),
        ("default_daily_limit_fen", 30000),
        ("clock_tolerance_ms", 5000),
    ])
    conn.executemany("INSERT INTO ledger_accounts (id, kind, name_zh, name_en) VALUES (?, ?, ?, ?)",
                     SYSTEM_LEDGER_ACCOUNTS)
    conn.executemany("INSERT INTO balances (ledger_account_id, balance_fen) VALUES (?, 0)",
                     [(row[0],) for row in SYSTEM_LEDGER_ACCOUNTS])


# Recharge channels with their own ledger accounts (so finance matches each against its statement).
# The cash desk keeps the system account LEDGER_CASH_DESK; online channels get new ones.
RECHARGE_CHANNELS = (
    ("alipay", "支付宝", "Alipay", 1),
    ("wechat", "微信支付", "WeChat Pay", 1),
    ("ccb", "建行龙支付", "CCB Long Pay", 1),
    ("cash", "服务大厅现金", "service hall cash desk", 0),
)


def _m010_cardholder_services(conn):
    # Cardholder and service-hall operations (sync_server/services/): recharge orders and channel
    # notifications, reissues with their fee, dorm electricity payments, phone-app binding and
    # tokens, and the person fields the HR / student registry import carries.
    _execute_script(conn, """
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
    ALTER TABLE persons ADD COLUMN updated_ms INTEGER
    """)
    for name, name_zh, name_en, online in RECHARGE_CHANNELS:
        if name == "cash":
            ledger_id = LEDGER_CASH_DESK
        else:
            ledger_id = conn.execute("INSERT INTO ledger_accounts (kind, name_zh, name_en) VALUES ('channel', ?, ?)",
                                     (name_zh, name_en)).lastrowid
            conn.execute("INSERT INTO balances (ledger_account_id, balance_fen) VALUES (?, 0)", (ledger_id,))
        conn.execute("INSERT INTO recharge_channels (name, ledger_account_id, name_zh, name_en, online) "
                     "VALUES (?, ?, ?, ?, ?)", (name, ledger_id, name_zh, name_en, online))
    conn.executemany("INSERT INTO settings (name, value) VALUES (?, ?)", [
        ("reissue_fee_fen", 1000),               # 补卡费 ¥10
        ("electricity_merchant_id", 0),          # created on the first payment (ids of merchants
                                                 # added by the hall stay as they were)
    ])


def _m011_bind_failures(conn):
    # Failed phone-app bindings counted per cardholder (the staff/student number asked about), so a
    # new app user id per guess cannot escape the lockout (sync_server/services/binding.py). One row
    # per person at most: unknown numbers are not counted, so the table cannot grow without bound.
    _execute_script(conn, """
    CREATE TABLE bind_failures (
        person_id INTEGER PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked_until_ms INTEGER NOT NULL
    )
    """)


def _m020_web_staff_users(conn):
    # Service-hall, finance and admin staff who sign in to the web pages (sync_server/web/auth.py).
    # Passwords are salted scrypt hashes; failures lock the user out for a while like card PINs do.
    _execute_script(conn, """
    CREATE TABLE web_staff_users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        roles TEXT NOT NULL,                -- space-separated: hall finance admin
        password_hash BLOB NOT NULL,
        password_salt BLOB NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        locked_until_ms INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
    )
    """)


def _m021_staff_actions(conn):
    # Who did what, when, to whom: every staff action on a web page; the id is the receipt number.
    _execute_script(conn, """
    CREATE TABLE staff_actions (
        id INTEGER PRIMARY KEY,
        staff_user_id INTEGER NOT NULL,
        username TEXT NOT NULL,
        action TEXT NOT NULL,               -- recharge, reissue, unfreeze, report_loss
        person_id INTEGER,
        account_id INTEGER,
        card_number INTEGER,
        amount_fen INTEGER,
        detail TEXT,                        -- JSON
        time_ms INTEGER NOT NULL
    );
    CREATE INDEX staff_actions_person ON staff_actions(person_id);
    CREATE INDEX staff_actions_staff ON staff_actions(staff_user_id)
    """)


def _m022_cardholder_session_generation(conn):
    # Portal sessions are signed cookies; each carries its account's session generation, and a page
    # opens only while it is still the account's current one (sync_server/web/auth.py). Signing out
    # and every PIN change or reset bump it, which ends every session of that account at once.
    _execute_script(conn, """
    ALTER TABLE accounts ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0
    """)


def _m030_finance_day_close(conn):
    # Nightly reconciliation (sync_server/finance/close.py). A closed day keeps its figures as JSON; which
    # terminal records it settled is kept per terminal as a contiguous prefix plus ranges above holes,
    # so the next close reads only what is new. Channel statements are stored line by line.
    _execute_script(conn, """
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
    ) WITHOUT ROWID
    """)
    conn.executemany("INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)", [
        ("finance_close_after_minutes", 60),     # the server closes yesterday after 01:00 Beijing time
    ])


def _m031_finance_ledger_check(conn):
    # The day close checks the ledger in two steps (sync_server/finance/close.py). Under the write lock
    # only the accounts the close's transfer window touched: cached balance == the balance derived at
    # the previous close plus the window's sums, that derived balance kept here per account (built from
    # transfers only, never copied from the cached balances). After the commit, the full
    # ledger.check_balances on a read snapshot, stored per closed day beside its figures.
    _execute_script(conn, """
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
    ) GROUP BY id
    """)


def _m032_staff_session_generation(conn):
    # Staff sessions end on the server like cardholder ones (migration 22): each staff cookie carries
    # its user's session generation, and signing out, a password change or reset and disabling the
    # user bump it, which ends every session of that user at once (sync_server/web/auth.py).
    _execute_script(conn, """
    ALTER TABLE web_staff_users ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0
    """)


def _m033_bind_guessers(conn):
    # Binding a phone needs the card PIN, and wrong name / number guesses throttle the guesser (its
    # app user id and its client address), never the cardholder asked about: bind_failures goes,
    # bind_guessers comes (sync_server/services/binding.py).
    _execute_script(conn, """
    DROP TABLE bind_failures;
    CREATE TABLE bind_guessers (
        guesser TEXT PRIMARY KEY,           -- "app:<app user id>" or "address:<client address>"
        failures INTEGER NOT NULL,
        locked_until_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE INDEX bind_guessers_updated ON bind_guessers(updated_ms)
    """)


def _m034_phone_binding_ids(conn):
    # Each binding gets a random public id, so the holder can list and remove bound phones without
    # app user ids showing up in URLs; last_used_ms shows when each was last used.
    _execute_script(conn, """
    ALTER TABLE app_users ADD COLUMN binding_id TEXT;
    ALTER TABLE app_users ADD COLUMN last_used_ms INTEGER;
    UPDATE app_users SET binding_id = lower(hex(randomblob(12))) WHERE person_id IS NOT NULL;
    CREATE UNIQUE INDEX app_users_binding ON app_users(binding_id)
    """)


MIGRATIONS = (
    (1, "initial schema", _m001_initial),
    (10, "cardholder services", _m010_cardholder_services),
    (11, "binding failures per number", _m011_bind_failures),
    (20, "web staff users", _m020_web_staff_users),
    (21, "staff action log", _m021_staff_actions),
    (22, "cardholder session generation", _m022_cardholder_session_generation),
    (30, "finance day close", _m030_finance_day_close),
    (31, "finance ledger check", _m031_finance_ledger_check),
    (32, "staff session generation", _m032_staff_session_generation),
    (33, "binding guesses per guesser", _m033_bind_guessers),
    (34, "phone binding ids", _m034_phone_binding_ids),
)


def migrate(conn):
    """Apply every migration not yet recorded in `_migrations`, in order, each in its own transaction."""
    database = sqlite_utils.Database(conn)
    with transaction(conn):
        if "_migrations" not in database.table_names():
            database["_migrations"].create({"number": int, "name": str, "applied_ms": int}, pk="number")
    applied = {row["number"] for row in database["_migrations"].rows}  # sqlite-utils gives dicts
    for number, name, function in MIGRATIONS:
        if number in applied:
            continue
        with transaction(conn):
            # re-check under the write lock: another worker may have just applied it
            if conn.execute("SELECT 1 FROM _migrations WHERE number = ?", (number,)).fetchone():
                continue
            function(conn)
            database["_migrations"].insert({"number": number, "name": name, "applied_ms": now_ms()})
    return [row["number"] for row in database["_migrations"].rows]


def db_path(data_dir):
    return os.path.join(data_dir, DB_FILE_NAME)


def init_db(path):
    """Create or upgrade the database file at `path`; returns an open connection."""
    conn = connect(path)
    migrate(conn)
    return conn


# --- per-app connection ---------------------------------------------------------------------------

_local = threading.local()


def get_db():
    """The calling thread's connection to the current Flask app's database (kept open between
    requests: gunicorn sync workers serve one request at a time per thread)."""
    from flask import current_app
    path = current_app.config["DATABASE"]
    cache = getattr(_local, "connections", None)
    if cache is None:
        cache = _local.connections = {}
    conn = cache.get(path)
    if conn is None:
        conn = cache[path] = connect(path)
    if conn.in_transaction:      # a request died mid-transaction; never let it leak into the next
        conn.execute("ROLLBACK")
    return conn


def setting(conn, name):
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
    assert row is not None, "unknown setting %s" % name
    return row[0]
