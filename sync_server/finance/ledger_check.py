"""The ledger checks of a close: the invariants decided under its write lock, and the full check after.

Nothing under the lock reads all of history: `balanced` checks the accounts the close's transfer
window touched (cached balance == the balance derived at the previous close + the window's sums),
the per-kind sums of every cached balance, the trial balance and the merchant check. Merchant check:
per merchant, the movement of its ledger account over the transfer window equals the net the
settlement pays plus the change in money booked but left for a later close (records and sales of a
day not closed yet), so a sale the settlement misses makes the day unbalanced. The full
ledger.check_balances runs after the commit on a read snapshot (verify_ledger) and is stored beside
the day as `ledger_check`, so the closed figures never change.

Limits: a cached balance changed without a transfer on an account the window did not touch, offset
by another of the same kind, shows only in `ledger_check`, after the commit.
"""
import json

from sync_server import db as dbmod, ledger
from sync_server.business_day import day_text
from sync_server.finance import FinanceError, day_number
from sync_server.finance.close_window import MAX_LISTED, scalar
from sync_server.ledger_store import SqliteStore

MAX_LEDGER_PROBLEMS_STORED = 200


def invariants(window, transfers, merchants, merchant_rows, scan):
    """The invariants section, decided under the write lock: each kind of account moved as the window
    says, the trial balance is zero, the accounts the window touched agree, and the merchant check."""
    conn = window.conn
    closing = {}
    for kind, balance_fen in conn.execute(
            "SELECT la.kind, sum(b.balance_fen) FROM balances b JOIN ledger_accounts la ON la.id = b.ledger_account_id "
            "GROUP BY la.kind"):
        closing[kind] = balance_fen
    previous_report = json.loads(window.previous[4]) if window.previous[4] else None
    opening = {}
    if previous_report is not None:
        opening = {kind: row["closing_fen"] for kind, row in previous_report["invariants"]["kinds"].items()}
    movements = transfers["movements"]
    kinds = {}
    for kind in sorted(set(closing) | set(opening) | set(movements)):
        row = {"opening_fen": opening.get(kind, 0), "movements_fen": movements.get(kind, 0),
               "closing_fen": closing.get(kind, 0)}
        row["ok"] = row["opening_fen"] + row["movements_fen"] == row["closing_fen"]
        kinds[kind] = row
    mismatches = _window_balance_check(window, transfers["changes"])
    trial_fen = scalar(conn, "SELECT sum(balance_fen) FROM balances")
    merchant_checks = _merchant_checks(transfers, merchants, merchant_rows, scan, previous_report)
    merchant_mismatches = sum(1 for row in merchant_checks if row["ok"] is False)
    balanced = (trial_fen == 0 and not mismatches and all(row["ok"] for row in kinds.values())
                and not merchant_mismatches)
    return {"trial_balance_fen": trial_fen,
            "balance_mismatch_count": len(mismatches),
            "wallet_mismatch_count": sum(1 for row in mismatches if row[1] == "wallet"),
            "balance_mismatches": [{"ledger_account_id": r[0], "kind": r[1], "cached_fen": r[2], "derived_fen": r[3]}
                                   for r in mismatches[:MAX_LISTED]],
            "balance_check": "window", "accounts_checked": len(transfers["changes"]),
            "kinds": kinds, "merchants": merchant_checks, "merchant_mismatch_count": merchant_mismatches,
            "balanced": balanced}


def _window_balance_check(window, changes):
    """The accounts this close's transfer window touched (`changes` {ledger_id: signed fen}): the
    cached balance must be the balance derived at the previous close (finance_ledger_baseline,
    built from transfers only) plus the window's sums. Costs what the window touched, not all of
    history; every other cached balance is covered by the per-kind sums here and by the full
    check after the commit (verify_ledger). Moves the baseline on to this close's watermark.
    Returns [(ledger_id, kind, cached_fen, derived_fen)] of the accounts that disagree."""
    conn = window.conn
    touched = sorted(changes)
    baseline, cached = {}, {}
    for condition, values in dbmod.in_lists(conn, touched):
        baseline.update(conn.execute("SELECT ledger_account_id, balance_fen FROM finance_ledger_baseline "
                                     "WHERE ledger_account_id %s" % condition, values).fetchall())
        cached.update(conn.execute("SELECT ledger_account_id, balance_fen FROM balances "
                                   "WHERE ledger_account_id %s" % condition, values).fetchall())
    derived = {ledger_id: baseline.get(ledger_id, 0) + changes[ledger_id] for ledger_id in touched}
    conn.executemany("INSERT INTO finance_ledger_baseline (ledger_account_id, balance_fen) VALUES (?, ?) "
                     "ON CONFLICT (ledger_account_id) DO UPDATE SET balance_fen = excluded.balance_fen",
                     derived.items())
    wrong = [ledger_id for ledger_id in touched if cached.get(ledger_id, 0) != derived[ledger_id]]
    kinds = {}
    for condition, values in dbmod.in_lists(conn, wrong):
        kinds.update(conn.execute("SELECT id, kind FROM ledger_accounts WHERE id %s" % condition, values).fetchall())
    return [(ledger_id, kinds.get(ledger_id, "?"), cached.get(ledger_id, 0), derived[ledger_id])
            for ledger_id in wrong]


def _merchant_checks(transfers, merchants, merchant_rows, scan, previous_report):
    """Per merchant: what its ledger account moved in this close's transfer window equals what the
    settlement pays out, once the money booked but left for a later close (records and sales of
    a day not closed yet) is carried from one close to the next:

        opening pending + ledger movement == net settled + closing pending

    so money on a merchant's account that no settlement line accounts for makes the day
    unbalanced. ok is None when the previous close predates this check (its pending unknown)."""
    if previous_report is None:
        opening = {}
    elif "merchants" in previous_report["invariants"]:
        opening = {row["merchant_id"]: row["closing_pending_fen"]
                   for row in previous_report["invariants"]["merchants"]}
    else:
        opening = None
    net = {row["merchant_id"]: row["net_fen"] for row in merchant_rows}
    rows = []
    for merchant_id, merchant in sorted(merchants.items()):
        row = {"merchant_id": merchant_id,
               "opening_pending_fen": None if opening is None else opening.get(merchant_id, 0),
               "movement_fen": transfers["changes"].get(merchant["ledger_account_id"], 0),
               "net_fen": net.get(merchant_id, 0),
               "closing_pending_fen": scan["pending"].get(merchant_id, 0)
               + transfers["deferred_sales"].get(merchant_id, 0)}
        row["ok"] = None if opening is None else (
            row["opening_pending_fen"] + row["movement_fen"] == row["net_fen"] + row["closing_pending_fen"])
        rows.append(row)
    return rows


def verify_ledger(conn, day, now_ms=None):
    """The full ledger check of a closed day, outside the write lock: ledger.check_balances (every
    balance derived from every transfer, sum zero) on one read snapshot taken after the close
    committed, so syncs go on meanwhile. Stored once per day beside the day's figures, which stay as
    they were closed; returns the stored check."""
    number = day if isinstance(day, int) else day_number(day)
    assert not conn.in_transaction, "the full check must not run under the close's write lock"
    with dbmod.read_snapshot(conn):
        if conn.execute("SELECT 1 FROM finance_days WHERE day_number = ?", (number,)).fetchone() is None:
            raise FinanceError("%s 尚未结算" % day_text(number), "%s is not closed yet" % day_text(number))
        watermark = scalar(conn, "SELECT max(rowid) FROM transfers")
        problems = ledger.check_balances(SqliteStore(conn))
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.transaction(conn):
        conn.execute("INSERT INTO finance_ledger_checks (day_number, checked_ms, transfer_watermark, "
                     "problem_count, problems) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (number, now_ms, watermark, len(problems),
                      json.dumps(problems[:MAX_LEDGER_PROBLEMS_STORED], ensure_ascii=False)))
    return stored_ledger_check(conn, number)


def stored_ledger_check(conn, day):
    """The full ledger check run after `day` closed: {checked_ms, transfer_watermark, problem_count,
    problems, ok}, or None when it has not run (yet)."""
    number = day if isinstance(day, int) else day_number(day)
    row = conn.execute("SELECT checked_ms, transfer_watermark, problem_count, problems FROM finance_ledger_checks "
                       "WHERE day_number = ?", (number,)).fetchone()
    if row is None:
        return None
    return {"checked_ms": row[0], "transfer_watermark": row[1], "problem_count": row[2],
            "problems": json.loads(row[3]), "ok": row[2] == 0}
