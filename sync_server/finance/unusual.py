"""Day totals far above the usual, flagged at the close: a ¥500,000 cash recharge typed by mistake,
or a channel suddenly taking ten times its usual, is seen the morning after, not at the month's end.

The rule (decided at the close, stored with the day's figures like everything else in the report):

    lines      each recharge channel's total of the day (现金, 支付宝, 微信支付, 建行龙支付: the report's
               channel rows, so the same figures finance reconciles) and the cash desk's takings (every
               transfer out of the cash desk account in the close's window: cash recharges and fees
               paid in cash at the hall)
    usual      the median of the line's totals on the last HISTORY_DAYS closed days on which it had
               any (days without traffic are left out, so a holiday does not make the first day back
               look unusual), but never below FLOOR_FEN: a young site with little history, or a quiet
               channel, is not flagged over a few thousand yuan
    flagged    a total above FACTOR x usual (with no history: above FACTOR x FLOOR_FEN, ¥10,000)

Also flagged, whatever the history: each cash recharge in the close's window above the cash desk's
per-transaction cap (services/cash_desk.py CAP_SETTING), with who booked it. Above the cap a second
staff member approved it, so it is allowed, but it is exactly the kind finance wants to look at.

Days closed before this check have no section; their channel rows still count as history (the cash
desk line then takes the cash channel's total). Flags are for people to look at: they change neither
`balanced` nor the exit status of `ykt finance close`.
"""
import json
import statistics

from sync_server import db as dbmod
from sync_server.finance.close_window import MAX_LISTED
from sync_server.services.cash_desk import CAP_SETTING

FACTOR = 5
HISTORY_DAYS = 28                 # four weeks: every weekday four times
FLOOR_FEN = 200000                # ¥2,000
CASH_CHANNEL = "cash"
CASH_DESK_LINE = "cash_desk"


def channel_keys(conn):
    """{ledger account id: recharge channel name (cash, alipay, wechat, ccb)}."""
    return dict(conn.execute("SELECT ledger_account_id, name FROM recharge_channels ORDER BY name").fetchall())


def _line_key(keys, ledger_account_id):
    return keys.get(ledger_account_id, "ledger/%d" % ledger_account_id)


def day_totals(report, keys):
    """{line key: total fen} of a closed day's report (older reports: from their channel rows)."""
    section = report.get("unusual")
    if section is not None:
        return {line["key"]: line["total_fen"] for line in section["lines"]}
    totals = {_line_key(keys, row["ledger_account_id"]): row["total_fen"] for row in report.get("channels", ())}
    totals[CASH_DESK_LINE] = totals.get(CASH_CHANNEL, 0)
    return totals


def history(conn, day, keys):
    """[{line key: total fen}] of the last HISTORY_DAYS closed days before `day`, newest first."""
    rows = conn.execute("SELECT report FROM finance_days WHERE day_number < ? ORDER BY day_number DESC LIMIT ?",
                        (day, HISTORY_DAYS)).fetchall()
    return [day_totals(json.loads(text), keys) for (text,) in rows]


def usual_fen(past_totals):
    """The usual of a line from its past totals (zeros left out), at least FLOOR_FEN."""
    used = [total for total in past_totals if total > 0]
    return max(FLOOR_FEN, statistics.median_low(used) if used else 0)


def check_line(key, total_fen, count, past, names=("", "")):
    """One checked line: today's total against the usual of its past totals."""
    usual = usual_fen(past)
    return {"key": key, "name_zh": names[0], "name_en": names[1], "count": count, "total_fen": total_fen,
            "usual_fen": usual, "history_days": sum(1 for total in past if total > 0),
            "flagged": total_fen > FACTOR * usual}


def _cash_desk_takings(window):
    low, high = window.previous[0], window.watermarks[0]
    return window.conn.execute("SELECT count(*), coalesce(sum(amount_fen), 0) FROM transfers "
                               "WHERE rowid > ? AND rowid <= ? AND debit_id = ?",
                               (low, high, dbmod.LEDGER_CASH_DESK)).fetchone()


def large_cash_recharges(window, cap_fen):
    """The cash recharges of the close's window above the cap, with who booked them and for whom."""
    low, high = window.previous[0], window.watermarks[0]
    rows = window.conn.execute(
        "SELECT t.id, t.amount_fen, t.time_ms, o.order_id, o.operator, p.staff_number, p.name FROM transfers t "
        "LEFT JOIN recharge_orders o ON o.transfer_id = t.id "
        "LEFT JOIN ledger_accounts la ON la.id = t.credit_id LEFT JOIN accounts a ON a.id = la.account_id "
        "LEFT JOIN persons p ON p.id = a.person_id "
        "WHERE t.rowid > ? AND t.rowid <= ? AND t.debit_id = ? AND t.kind = 'recharge' AND t.amount_fen > ? "
        "ORDER BY t.rowid LIMIT ?", (low, high, dbmod.LEDGER_CASH_DESK, cap_fen, MAX_LISTED)).fetchall()
    return [{"transfer_id": r[0], "amount_fen": r[1], "time_ms": r[2], "order_id": r[3], "clerk": r[4],
             "staff_number": r[5], "person_name": r[6]} for r in rows]


def report_section(window, channel_rows):
    """The close's `unusual` section: every checked line with its usual, the flagged count and the
    cash recharges above the cap."""
    conn = window.conn
    keys = channel_keys(conn)
    past = history(conn, window.day, keys)
    today = {_line_key(keys, row["ledger_account_id"]): row for row in channel_rows}
    lines = []
    for _ledger_account_id, key in sorted(keys.items()):
        row = today.pop(key, None)
        lines.append(check_line(key, row["total_fen"] if row else 0, row["count"] if row else 0,
                                [totals.get(key, 0) for totals in past]))
    for key, row in sorted(today.items()):            # a channel with no recharge_channels entry
        lines.append(check_line(key, row["total_fen"], row["count"], [totals.get(key, 0) for totals in past],
                                (row.get("name_zh", ""), row.get("name_en", ""))))
    count, total_fen = _cash_desk_takings(window)
    lines.append(check_line(CASH_DESK_LINE, total_fen, count, [totals.get(CASH_DESK_LINE, 0) for totals in past]))
    cap_fen = dbmod.setting(conn, CAP_SETTING)
    large = large_cash_recharges(window, cap_fen)
    return {"rule": {"factor": FACTOR, "history_days": HISTORY_DAYS, "floor_fen": FLOOR_FEN},
            "lines": lines, "cash_cap_fen": cap_fen, "large_cash_recharges": large,
            "flagged_count": sum(1 for line in lines if line["flagged"]) + len(large)}


def flagged_count(report):
    """How many flags the day has (0 for a day closed before the check)."""
    section = report.get("unusual")
    return 0 if section is None else section["flagged_count"]
