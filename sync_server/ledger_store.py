"""The ledger's store on SQLite, plus the account flags and versions that follow a posting.

Every method runs inside the caller's transaction (db.transaction), so a sync batch's records, its
transfers and the new balances commit together or not at all. Queries are batched (IN lists or arrays: db.in_lists,
executemany, or one statement over arrays on PostgreSQL: db.ManyRows) because a 500-record sync must cost a handful of statements, not thousands.
"""
from firmware.core import protocol

from sync_server import db as dbmod
from sync_server.ledger import Transfer

# The two writes every posting makes; named so benchmarks/ingest.py can time the very same statements.
INSERT_TRANSFERS_SQL = ("INSERT INTO transfers (id, debit_id, credit_id, amount_fen, kind, reference, time_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)")
# (fen, ledger_account_id) rows; the ids are distinct (one row per account: balance_changes())
ADD_TO_BALANCES = dbmod.ManyRows(
    "UPDATE balances SET balance_fen = balance_fen + ? WHERE ledger_account_id = ?",
    "UPDATE balances SET balance_fen = balance_fen + u.fen FROM unnest(?::bigint[], ?::bigint[]) AS u(fen, id) "
    "WHERE ledger_account_id = u.id")
UPSERT_BALANCES = dbmod.ManyRows(
    "INSERT INTO balances (ledger_account_id, balance_fen) VALUES (?, ?) "
    "ON CONFLICT (ledger_account_id) DO UPDATE SET balance_fen = excluded.balance_fen",
    "INSERT INTO balances (ledger_account_id, balance_fen) SELECT * FROM unnest(?::bigint[], ?::bigint[]) "
    "ON CONFLICT (ledger_account_id) DO UPDATE SET balance_fen = excluded.balance_fen")
SET_BALANCE_VERSIONS = dbmod.ManyRows(
    "UPDATE accounts SET balance_version = ? WHERE id = ?",
    "UPDATE accounts SET balance_version = u.version FROM unnest(?::bigint[], ?::bigint[]) AS u(version, id) "
    "WHERE accounts.id = u.id")

# Deny reasons (reason_code in deny entries; shown by terminals and on reports)
REASON_LOST = 1
REASON_REPLACED = 2
REASON_FROZEN = 3
REASON_NEGATIVE = 4
REASON_REVOKED = 5
REASON_FOUND = 6       # lifting entry: card found again / account unblocked
REASON_DOUBLE_USE = protocol.DENY_REASON_DOUBLE_USE   # a pay code used twice offline: credential revoked


class SqliteStore:
    def __init__(self, conn):
        self.conn = conn

    def existing_ids(self, ids):
        found = {}
        for condition, values in dbmod.in_lists(self.conn, ids):
            rows = self.conn.execute(
                "SELECT id, debit_id, credit_id, amount_fen, kind, reference, time_ms FROM transfers "
                "WHERE id %s" % condition, values).fetchall()
            for row in rows:
                found[row[0]] = Transfer(*row)
        return found

    def insert_transfers(self, transfers):
        assert self.conn.in_transaction
        self.conn.executemany(INSERT_TRANSFERS_SQL, transfers)

    def balances(self, ledger_ids):
        result = {ledger_id: 0 for ledger_id in ledger_ids}
        for condition, values in dbmod.in_lists(self.conn, ledger_ids):
            rows = self.conn.execute(
                "SELECT ledger_account_id, balance_fen FROM balances WHERE ledger_account_id %s" % condition,
                values).fetchall()
            for ledger_id, balance_fen in rows:
                result[ledger_id] = balance_fen
        return result

    def set_balances(self, balances):
        assert self.conn.in_transaction
        dbmod.write_rows(self.conn, UPSERT_BALANCES, balances.items())

    def add_to_balances(self, changes):
        """Add {ledger_id: signed fen} to balances without reading them (every wallet and merchant
        gets its balances row when it is created)."""
        assert self.conn.in_transaction
        changed = dbmod.write_rows(self.conn, ADD_TO_BALANCES, [(fen, ledger_id) for ledger_id, fen in changes.items()])
        assert changed == len(changes), "a ledger account without its balances row"

    def wallet_ids(self, account_ids, wallets=None):
        """{account_id: {wallet: ledger_id}}, all wallets or only those named in `wallets`."""
        result = {}
        wallet_filter = ""
        if wallets is not None:
            assert wallets and all(wallet in protocol.WALLETS for wallet in wallets)
            wallet_filter = " AND wallet IN (%s)" % ",".join("'%s'" % wallet for wallet in sorted(wallets))
        for condition, values in dbmod.in_lists(self.conn, account_ids):
            rows = self.conn.execute(
                "SELECT account_id, wallet, id FROM ledger_accounts WHERE account_id %s%s" % (condition, wallet_filter),
                values).fetchall()
            for account_id, wallet, ledger_id in rows:
                wallet_ids = result.get(account_id)
                if wallet_ids is None:
                    wallet_ids = result[account_id] = {}
                wallet_ids[wallet] = ledger_id
        return result

    def all_transfers(self):
        rows = self.conn.execute(
            "SELECT id, debit_id, credit_id, amount_fen, kind, reference, time_ms FROM transfers")
        return (Transfer(*row) for row in rows)

    def all_balances(self):
        return dict(self.conn.execute("SELECT ledger_account_id, balance_fen FROM balances"))


def add_deny_entries(conn, entries, now_ms):
    """Append deny entries [(kind, ref, active, reason)]; each gets the next version."""
    assert conn.in_transaction
    for kind, _ref, active, _reason in entries:
        assert kind in (protocol.DENY_CARD, protocol.DENY_CARD_NUMBER, protocol.DENY_ACCOUNT,
                        protocol.DENY_TERMINAL, protocol.DENY_CREDENTIAL, protocol.DENY_CERTIFICATE) \
            and active in (0, 1)
    conn.executemany("INSERT INTO deny_entries (kind, ref, active, reason, created_ms) VALUES (?, ?, ?, ?, ?)",
                     [(kind, ref, active, reason, now_ms) for kind, ref, active, reason in entries])


def touch_accounts(conn, account_ids):
    """Give each account a fresh balance version so terminals fetch its rows in the next delta."""
    account_ids = sorted(account_ids)
    if not account_ids:
        return
    first = dbmod.next_counter(conn, "balance_version", len(account_ids))
    dbmod.write_rows(conn, SET_BALANCE_VERSIONS,
                     [(first + index, account_id) for index, account_id in enumerate(account_ids)])


def update_debt_flags(conn, in_debt, clear, now_ms):
    """Block accounts a posting drove negative, lift the block for those topped up again.

    Only changes of state write anything: an account already flagged stays as it is.
    """
    changed = []
    for condition, values in dbmod.in_lists(conn, sorted(in_debt | clear)):
        rows = conn.execute("SELECT id, in_debt FROM accounts WHERE id %s" % condition, values).fetchall()
        for account_id, flagged in rows:
            if account_id in in_debt and not flagged:
                changed.append((1, account_id))
            elif account_id in clear and flagged:
                changed.append((0, account_id))
    if not changed:
        return []
    conn.executemany("UPDATE accounts SET in_debt = ? WHERE id = ?", changed)
    add_deny_entries(conn, [(protocol.DENY_ACCOUNT, account_id, flag,
                             REASON_NEGATIVE if flag else REASON_FOUND) for flag, account_id in changed], now_ms)
    return changed
