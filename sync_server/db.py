"""The server's SQLite store: connections, PRAGMAs, transactions, and applying the migrations.

One SQLite file under the data directory, in WAL mode with `synchronous=FULL` (a commit that returned
survives power loss) and a busy timeout so concurrent server workers queue instead of failing.
Connections run in autocommit mode; writers open `BEGIN IMMEDIATE` through `transaction()` so that two
workers never both read-then-write the same rows (SQLite serialises writers; IMMEDIATE makes the wait
happen at the start, where it cannot deadlock).

Writers first queue on an flock(2) of a lock file beside the database (`<db>-writer.lock`). SQLite
alone makes a waiting writer poll with sleeps of 1, 2, 5, 10, 15... ms, so under a lunch rush the
write lock sat idle for milliseconds after every commit; the kernel lock hands it over at once. The
flock only orders writers that use `transaction()`; SQLite's own lock still guards everything else.

Schema changes are the numbered SQL files in sync_server/migrations/, applied once, in order, and
tracked in the `_migrations` table (through sqlite-utils). Never edit an applied migration: add the
next number.
"""
import contextlib
import fcntl
import os
import sqlite3
import threading
import time

import sqlite_utils

from sync_server import migrations, pg_store

BUSY_TIMEOUT_MS = 30000
DB_FILE_NAME = "ykt.sqlite3"

# System ledger accounts created by the first migration (migrations/0001_initial_schema.sql); their
# ids are fixed there so code can name them.
LEDGER_CASH_DESK = 1          # 服务大厅现金 cash recharge at the service hall
LEDGER_ONLINE_CHANNEL = 2     # 线上充值渠道 app / bank recharge channel
LEDGER_FEE_INCOME = 3         # 手续费收入 fee income
LEDGER_LEGACY_SOURCE = 4      # 旧系统迁移来源 balances moved over from old-system cards

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
    """A connection with the house PRAGMAs; autocommit (use transaction() to write). A postgresql://
    URL gives a connection to that database instead (sync_server/pg_store.py), with the same interface."""
    if pg_store.is_postgresql(path):
        return pg_store.connect(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False, factory=Connection)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=%d" % BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA foreign_keys=OFF")  # integrity is enforced by the ledger, not per-row checks
    return conn     # plain tuples: sqlite3.Row costs a microsecond a row on the hot path; see fetch_named


def fetch_named(conn, sql, parameters=()):
    """One row addressable by column name (for the few places that read a row by field)."""
    if type(conn) is pg_store.Connection:
        return conn.fetch_named(sql, parameters)
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(sql, parameters).fetchone()


@contextlib.contextmanager
def transaction(conn, shared=False):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception. Not re-entrant on purpose.
    A PostgreSQL connection gets pg_store.transaction (the same one writer, by an advisory lock);
    there `shared` lets terminals' syncs store their own rows side by side until each takes
    booking_turn() (pg_store.transaction says how). On SQLite every writer is alone, `shared` or not."""
    if type(conn) is pg_store.Connection:
        with pg_store.transaction(conn, shared):
            yield conn
        return
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


def booking_turn(conn):
    """In a transaction(shared=True): wait here for the other syncs before touching rows every terminal
    shares (PostgreSQL's booking lock); on SQLite the writer is alone already."""
    if type(conn) is pg_store.Connection:
        pg_store.booking_turn(conn)


def for_update(conn):
    """` FOR UPDATE` to lock the rows a SELECT reads on PostgreSQL; nothing on SQLite, whose writer
    holds the whole database."""
    return " FOR UPDATE" if type(conn) is pg_store.Connection else ""


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
    if type(conn) is pg_store.Connection:
        with pg_store.read_snapshot(conn):
            yield conn
        return
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")     # a read-only transaction: COMMIT only ends the snapshot


IN_LIST_MAX = 900      # values in one SQLite `IN (...)` list: well under its bound on variables


def in_lists(conn, values):
    """[(condition, parameters)] that together select `values`: on SQLite `IN (?, ...)` lists of at most
    IN_LIST_MAX values; on PostgreSQL one `= ANY(?)` taking them all as one array (one short statement
    psycopg parses once, instead of one with hundreds of placeholders of a new length each time).
    Use as `"... WHERE id %s" % condition` with `parameters` (plus any others, in order)."""
    values = list(values)
    if not values:
        return []
    if type(conn) is pg_store.Connection:
        return [("= ANY(?)", [values])]
    chunks = [values[start:start + IN_LIST_MAX] for start in range(0, len(values), IN_LIST_MAX)]
    return [("IN (%s)" % ",".join("?" * len(chunk)), chunk) for chunk in chunks]


class ManyRows:
    """One write made for many rows: `sql` (the house dialect, one row's `?`s) run by executemany on
    SQLite, where a statement is a C call; on PostgreSQL `columns_sql`, ONE statement taking each
    column as an array (`unnest(?::bigint[], ...)`), because there each execution is a round trip and
    a 500-record sync would otherwise pay 500 of them per table inside the writer lock."""
    __slots__ = ("sql", "columns_sql")

    def __init__(self, sql, columns_sql):
        self.sql = sql
        self.columns_sql = columns_sql


def write_rows(conn, write, rows):
    """Run `write` (a ManyRows) for each of `rows` (same-length tuples); returns the rows changed."""
    rows = list(rows)
    if not rows:
        return 0
    if type(conn) is pg_store.Connection:
        return conn.execute(write.columns_sql, [list(column) for column in zip(*rows)]).rowcount
    return conn.executemany(write.sql, rows).rowcount


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

def migrate(conn, through=None):
    """Apply every migration (sync_server/migrations/) not yet recorded in `_migrations`, in order, each
    in its own transaction; returns the numbers applied so far. `through` stops after that number
    (tests that build the database of an older release)."""
    database = sqlite_utils.Database(conn)
    with transaction(conn):
        if "_migrations" not in database.table_names():
            database["_migrations"].create({"number": int, "name": str, "applied_ms": int}, pk="number")
    applied = {row["number"] for row in database["_migrations"].rows}  # sqlite-utils gives dicts
    for migration in migrations.load():
        if migration.number in applied or (through is not None and migration.number > through):
            continue
        with transaction(conn):
            # re-check under the write lock: another worker may have just applied it
            if conn.execute("SELECT 1 FROM _migrations WHERE number = ?", (migration.number,)).fetchone():
                continue
            for statement in migration.statements:
                conn.execute(statement)     # one by one: executescript() would COMMIT our transaction
            if migration.python_step is not None:
                migration.python_step(conn)
            database["_migrations"].insert({"number": migration.number, "name": migration.name,
                                            "applied_ms": now_ms()})
    return [row["number"] for row in database["_migrations"].rows]


def db_path(data_dir):
    return os.path.join(data_dir, DB_FILE_NAME)


def store_location(data_dir, database=None):
    """Where the server's data lives: `database` (a --database option) or $YKT_DATABASE_URL when set
    (a postgresql:// URL, checked by pg_store.database_setting), else the SQLite file in `data_dir`."""
    store, url = pg_store.database_setting(database)
    return url if store == "postgresql" else db_path(data_dir)


def init_db(path):
    """Create or upgrade the database file at `path` (or the PostgreSQL database of a postgresql://
    URL, sync_server/pg_store.py); returns an open connection."""
    if pg_store.is_postgresql(path):
        conn = pg_store.connect(path)
        pg_store.migrate(conn)
        return conn
    conn = connect(path)
    migrate(conn)
    return conn


# --- per-app connection ---------------------------------------------------------------------------

_local = threading.local()


def get_db():
    """The calling thread's connection to the current Flask app's database (kept open between
    requests: each server thread serves one request at a time)."""
    from flask import current_app
    path = current_app.config["DATABASE"]
    cache = getattr(_local, "connections", None)
    if cache is None:
        cache = _local.connections = {}
    conn = cache.get(path)
    if type(conn) is pg_store.Connection and conn.broken:
        conn.close()                    # the database went away (a failover): back to the pool, which
        conn = cache[path] = None       # drops it and checks the next one it hands out
    if conn is None:
        conn = cache[path] = pg_store.pooled(path) if pg_store.is_postgresql(path) else connect(path)
    if conn.in_transaction:      # a request died mid-transaction; never let it leak into the next
        conn.execute("ROLLBACK")
    return conn


def setting(conn, name):
    row = conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
    assert row is not None, "unknown setting %s" % name
    return row[0]
