"""Closing a business day (日结): the day's reconciliation, computed once and stored for good.

A day is a Beijing calendar day. Days close in order, one after the other; the first close takes in
everything that came before it. Closing a day that is already closed returns the stored figures, so
closing twice gives the same report and a closed day's figures never change.

The close holds the write lock (BEGIN IMMEDIATE) from its first read to its commit: the records,
transfers and balances it sees are one consistent cut (close_window.CloseWindow), and a sync that
arrives meanwhile waits and then lands in the next day. A million records take a few seconds
(benchmarks/close_day.py). The full ledger check runs after the commit (ledger_check.verify_ledger).
The report's sections come from:

    settlement.py    which records and transfers the close takes; merchant and terminal rows
    anomalies.py     negative accounts, suspected clones (denied), impossible times, unbooked records
    counter_gaps.py  card tap-counter gaps still missing, each with its reason
    ledger_check.py  the invariants decided under the lock, and the full check after the commit
    unusual.py       recharge and cash totals far above the usual, cash recharges above the cap
"""
import json

from sync_server import db as dbmod
from sync_server.business_day import day_of_ms, day_start_ms, day_text
from sync_server.finance import (FinanceError, anomalies, channel_statements, counter_gaps, day_number, ledger_check,
                                 settlement, unusual)
from sync_server.finance.close_window import CloseWindow
from sync_server.finance import report as report_module
from sync_server.finance.ledger_check import stored_ledger_check, verify_ledger
from sync_server.services import cash_desk


def closed_days(conn):
    """[(day_number, day text, closed_ms)] of every closed day, oldest first."""
    return conn.execute("SELECT day_number, day, closed_ms FROM finance_days ORDER BY day_number").fetchall()


def last_closed_day(conn):
    row = conn.execute("SELECT max(day_number) FROM finance_days").fetchone()
    return row[0]


def stored_report(conn, day):
    """The closed figures of `day` (number or text) as stored, or None when the day is open."""
    number = day if isinstance(day, int) else day_number(day)
    row = conn.execute("SELECT report FROM finance_days WHERE day_number = ?", (number,)).fetchone()
    return None if row is None else json.loads(row[0])


def load_report(conn, day):
    """The report of a closed day: the stored figures plus the channel statements matched so far
    (a statement may be imported after the close; both sides are then frozen), the full ledger
    check run after the close (`ledger_check`, None until it has run) and the service hall clerks'
    shift closes of the day (`cash_desk`: each is stored once and never changes, but a clerk may close
    after the day close ran). None when open."""
    report = stored_report(conn, day)
    if report is None:
        return None
    report = channel_statements.with_matches(conn, report)
    report["ledger_check"] = stored_ledger_check(conn, day)
    number = day if isinstance(day, int) else day_number(day)
    report["cash_desk"] = report_module.cash_desk_section(cash_desk.closes_of_day(conn, number))
    return report


def close_day(conn, day, now_ms=None, before_day_end=False, check_ledger=True):
    """Close `day` (number or 'YYYY-MM-DD'); returns (report, newly_closed).

    FinanceError when the day cannot be closed: not over yet (Beijing time), or an earlier day still
    open. A day in progress closes only with `before_day_end` (an operator who must, the demo): every
    tap of that day made after the close is then booked as a late record into the next day.
    With `check_ledger`, the full ledger check runs after the commit when the day has none stored yet
    (verify_ledger); the report then carries it as `ledger_check`.
    """
    number = day if isinstance(day, int) else day_number(day)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    newly = False
    if stored_report(conn, number) is None:
        with dbmod.transaction(conn):
            if stored_report(conn, number) is None:      # another process may have just closed it
                _check_closable(conn, number, now_ms, before_day_end)
                _close(CloseWindow(conn, number, now_ms))
                newly = True
    if check_ledger and stored_ledger_check(conn, number) is None:
        verify_ledger(conn, number)
    return load_report(conn, number), newly


def days_due(conn, now_ms, close_after_ms):
    """Days the scheduler should close now: from the day after the last closed one through yesterday,
    once `close_after_ms` of today have passed. With no day closed yet it starts at yesterday, but
    never before the day the database was created (no business day before the system existed)."""
    today = day_of_ms(now_ms)
    if now_ms - day_start_ms(today) < close_after_ms:
        return []
    last = last_closed_day(conn)
    if last is None:
        created_ms = conn.execute("SELECT min(applied_ms) FROM _migrations").fetchone()[0] or now_ms
        first = max(today - 1, day_of_ms(created_ms))
    else:
        first = last + 1
    return list(range(first, today))


def _check_closable(conn, number, now_ms, before_day_end=False):
    today = day_of_ms(now_ms)
    if number > today:
        raise FinanceError("%s 尚未开始，不能结算" % day_text(number), "%s has not begun: it cannot be closed"
                           % day_text(number))
    if number == today and not before_day_end:
        raise FinanceError("%s 尚未结束（北京时间），不能结算" % day_text(number),
                           "%s has not ended yet (Beijing time): it cannot be closed" % day_text(number))
    last = last_closed_day(conn)
    if last is not None and number < last:
        raise FinanceError("%s 早于首个结算日，其记录已并入后续结算日" % day_text(number),
                           "%s precedes the first closed day; its records went into a later close" % day_text(number))
    if last is not None and number > last + 1:
        raise FinanceError("请先结算 %s" % day_text(last + 1), "close %s first" % day_text(last + 1))


def _close(window):
    """The day's report, computed under the caller's write lock; stores it and what it settled."""
    terminals = settlement.terminals(window)
    merchants = settlement.merchants(window)
    watched, repeats = anomalies.watched_cards(window)
    scan = settlement.scan_records(window, terminals, watched)
    scan["clones"] = anomalies.find_clones(window, scan.pop("watched_taps"), repeats, scan["settled"])
    transfers = settlement.window_transfers(window, merchants)
    report = {
        "day": day_text(window.day),
        "closed_ms": window.now_ms,
        "totals": {},
        "merchants": settlement.merchant_rows(merchants, scan, transfers),
        "terminals": settlement.terminal_rows(window, terminals, scan),
        "terminals_silent": [],
        "channels": transfers["channels"],
        "anomalies": anomalies.report_section(window, scan),
        "card_counter_gaps": counter_gaps.report_section(window, terminals, scan["settled"]),
        "paycode": {name: scan["paycodes"][name] for name in ("count", "fen", "offline_count")},
        "unusual": unusual.report_section(window, transfers["channels"]),
    }
    report["invariants"] = ledger_check.invariants(window, transfers, merchants, report["merchants"], scan)
    report["terminals_silent"] = [row["terminal_id"] for row in report["terminals"] if row["silent"]]
    merchant_rows = report["merchants"]
    report["totals"] = {
        "records": scan["records"],
        "sales_count": sum(row["count"] for row in merchant_rows),
        "gross_fen": sum(row["gross_fen"] for row in merchant_rows),
        "refunds_fen": sum(row["refunds_fen"] for row in merchant_rows),
        "net_fen": sum(row["net_fen"] for row in merchant_rows),
        "late_records": sum(row["late_count"] for row in merchant_rows),
        "late_fen": sum(row["late_fen"] for row in merchant_rows),
        "unbooked_records": len(scan["unbooked"]),
        "recharges_count": sum(row["count"] for row in transfers["channels"]),
        "recharges_fen": sum(row["total_fen"] for row in transfers["channels"]),
        "fees_fen": transfers["fees_fen"],
        "open_gaps": sum(row["open_gap_count"] for row in report["terminals"]),
        "missing_seqs": sum(row["missing_seqs"] for row in report["terminals"]),
        "card_counter_gaps": report["card_counter_gaps"]["count"],
        "paycode_sales_count": scan["paycodes"]["count"],
        "paycode_sales_fen": scan["paycodes"]["fen"],
    }
    settlement.store_settlement(window, scan)
    _store_day(window, report)
    return report


def _store_day(window, report):
    """The closed figures, for good, with this close's watermarks; then the channel statements
    already imported for the day are matched."""
    conn = window.conn
    conn.execute("INSERT INTO finance_days (day_number, day, closed_ms, transfer_watermark, counter_anomaly_watermark, "
                 "deny_watermark, record_anomaly_watermark, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (window.day, day_text(window.day), window.now_ms) + window.watermarks
                 + (json.dumps(report, ensure_ascii=False, sort_keys=True),))
    channel_statements.match_pending(conn, window.day)
