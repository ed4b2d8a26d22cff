"""Channel settlement statements (渠道对账单): a CSV per channel and day, matched line by line.

A payment channel (Alipay, WeChat Pay, CCB...) sends a daily statement of what it took for us. We
match it against the recharges booked into that day from the channel's ledger account, by our order
number (商户订单号, the one we gave the channel):

    matched          on both sides with the same amount
    amount_mismatch  on both sides, amounts differ
    missing_ours     on the statement, not in our ledger that day (a notification we never booked)
    missing_theirs   in our ledger, not on the statement
    late_ours        booked into this day but belonging to an earlier, closed day: listed, not missing

The CSV needs a header row. Accepted column names (first match wins):
    order        order_ref, order_id, out_trade_no, 商户订单号
    channel no.  channel_ref, trade_no, 交易号, 渠道流水号, 交易流水号   (optional)
    amount       amount_fen, 金额(分)  in fen; or amount_yuan, amount, 金额(元), 金额  in yuan (two decimals)
    time         time, 交易时间   (optional, kept as text)
UTF-8 (with or without BOM) or GB18030, as banks still send. One statement per channel and day: the
same file again changes nothing, a different one is refused (the first stays the record).

Matching happens when both sides are known: at import for a closed day, else when the day closes.
The result is stored and never recomputed, like the day's own figures.
"""
import csv
import decimal
import hashlib
import io
import json

from sync_server import db as dbmod
from sync_server.finance import FinanceError, MalformedFinanceInput, day_number, day_text

MAX_STATEMENT_BYTES = 64 * 1024 * 1024
MAX_STATEMENT_LINES = 500000
MAX_LISTED = 200

_ORDER_COLUMNS = ("order_ref", "order_id", "out_trade_no", "商户订单号")
_CHANNEL_COLUMNS = ("channel_ref", "trade_no", "交易号", "渠道流水号", "交易流水号")
_FEN_COLUMNS = ("amount_fen", "金额(分)", "金额（分）")
_YUAN_COLUMNS = ("amount_yuan", "amount", "金额(元)", "金额（元）", "金额")
_TIME_COLUMNS = ("time", "交易时间")


def _decode(data):
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise MalformedFinanceInput("对账单编码无法识别（应为 UTF-8 或 GB18030）", "statement is neither UTF-8 nor GB18030")


def _column(header, names):
    for name in names:
        if name in header:
            return header.index(name)
    return None


def parse_statement(data):
    """CSV bytes -> [(line_number, order_ref, channel_ref, amount_fen, time_text)]; FinanceError on the
    first line that is not right (with its number)."""
    if len(data) > MAX_STATEMENT_BYTES:
        raise FinanceError("对账单文件过大", "statement file too large")
    rows = csv.reader(io.StringIO(_decode(data)))
    header = [cell.strip().lower() if cell.strip().isascii() else cell.strip() for cell in next(rows, [])]
    order_at = _column(header, _ORDER_COLUMNS)
    fen_at, yuan_at = _column(header, _FEN_COLUMNS), _column(header, _YUAN_COLUMNS)
    if order_at is None or (fen_at is None and yuan_at is None):
        raise MalformedFinanceInput("对账单缺少“商户订单号”或“金额”列", "statement needs an order column and an amount column")
    channel_at, time_at = _column(header, _CHANNEL_COLUMNS), _column(header, _TIME_COLUMNS)
    lines = []
    for number, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(lines) >= MAX_STATEMENT_LINES:
            raise FinanceError("对账单超过 %d 行" % MAX_STATEMENT_LINES, "statement over %d lines" % MAX_STATEMENT_LINES)
        try:
            order_ref = row[order_at].strip()
            if fen_at is not None:
                amount_fen = int(row[fen_at].strip())
            else:
                yuan = decimal.Decimal(row[yuan_at].strip().replace(",", ""))
                if yuan != yuan.quantize(decimal.Decimal("0.01")):
                    raise ValueError("more than two decimals")
                amount_fen = int(yuan * 100)
            if not order_ref or amount_fen <= 0:
                raise ValueError("empty order or amount not positive")
        except (IndexError, ValueError, decimal.InvalidOperation) as error:
            raise MalformedFinanceInput("对账单第 %d 行无法识别：%s" % (number, error), "statement line %d: %s" % (number, error))
        channel_ref = row[channel_at].strip() if channel_at is not None and channel_at < len(row) else None
        time_text = row[time_at].strip() if time_at is not None and time_at < len(row) else None
        lines.append((number, order_ref, channel_ref, amount_fen, time_text))
    return lines


def channel_ledger_id(conn, channel):
    """A channel by name (alipay, wechat...) or ledger account id -> its ledger account id."""
    channel = str(channel).strip()
    if channel.isdigit():
        row = conn.execute("SELECT id FROM ledger_accounts WHERE id = ? AND kind = 'channel'", (int(channel),)).fetchone()
    else:
        row = conn.execute("SELECT c.ledger_account_id FROM recharge_channels c JOIN ledger_accounts la "
                           "ON la.id = c.ledger_account_id WHERE c.name = ? AND la.kind = 'channel'", (channel,)).fetchone()
    if row is None:
        raise FinanceError("未知的充值渠道：%s" % channel, "unknown recharge channel: %s" % channel)
    return row[0]


def import_statement(conn, channel, day, data, now_ms=None):
    """Store a channel's statement of `day`; returns (summary dict, newly_imported)."""
    ledger_id = channel_ledger_id(conn, channel)
    number = day if isinstance(day, int) else day_number(day)
    digest = hashlib.sha256(data).hexdigest()
    lines = parse_statement(data)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.transaction(conn):
        existing = conn.execute("SELECT file_sha256 FROM finance_statements WHERE ledger_account_id = ? AND "
                                "day_number = ?", (ledger_id, number)).fetchone()
        if existing is not None and existing[0] != digest:
            raise FinanceError("该渠道 %s 的对账单已导入过另一份文件" % day_text(number),
                               "a different statement of %s is already imported for this channel" % day_text(number))
        newly = existing is None
        if newly:
            conn.execute("INSERT INTO finance_statements (ledger_account_id, day_number, file_sha256, line_count, "
                         "total_fen, imported_ms) VALUES (?, ?, ?, ?, ?, ?)",
                         (ledger_id, number, digest, len(lines), sum(line[3] for line in lines), now_ms))
            conn.executemany("INSERT INTO finance_statement_lines (ledger_account_id, day_number, line_number, "
                             "order_ref, channel_ref, amount_fen, time_text) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(ledger_id, number) + line for line in lines])
            if conn.execute("SELECT 1 FROM finance_days WHERE day_number = ?", (number,)).fetchone():
                _store_match(conn, ledger_id, number)
    return statement_summary(conn, ledger_id, number), newly


def statement_summary(conn, ledger_id, number):
    row = conn.execute("SELECT line_count, total_fen, match FROM finance_statements WHERE ledger_account_id = ? AND "
                       "day_number = ?", (ledger_id, number)).fetchone()
    summary = {"ledger_account_id": ledger_id, "day": day_text(number), "lines": row[0], "total_fen": row[1],
               "matched": None}
    if row[2]:
        summary["matched"] = json.loads(row[2])
    return summary


def match_lines(ours, theirs, number):
    """Line-by-line match. `ours`: [(order_ref, transfer_id, amount_fen, own_day_number)] booked into day
    `number`; `theirs`: [(line_number, order_ref, channel_ref, amount_fen, time_text)] of its statement."""
    our_by_ref, late = {}, []
    for order_ref, transfer_id, amount_fen, own in ours:
        if own < number:
            late.append({"order_ref": order_ref, "amount_fen": amount_fen, "own_day": day_text(own)})
        else:
            our_by_ref.setdefault(order_ref, []).append((transfer_id, amount_fen))
    matched, matched_fen, mismatched, missing_ours, duplicates = 0, 0, [], [], []
    seen = set()
    for line_number, order_ref, channel_ref, amount_fen, _time in theirs:
        if order_ref in seen:
            duplicates.append({"line": line_number, "order_ref": order_ref, "amount_fen": amount_fen})
            continue
        seen.add(order_ref)
        mine = our_by_ref.get(order_ref)
        if not mine:
            missing_ours.append({"line": line_number, "order_ref": order_ref, "channel_ref": channel_ref,
                                 "amount_fen": amount_fen})
            continue
        our_fen = sum(fen for _id, fen in mine)
        if our_fen == amount_fen:
            matched += 1
            matched_fen += amount_fen
        else:
            mismatched.append({"line": line_number, "order_ref": order_ref, "ours_fen": our_fen,
                               "theirs_fen": amount_fen})
    missing_theirs = [{"order_ref": ref, "amount_fen": sum(fen for _id, fen in mine)}
                      for ref, mine in sorted(our_by_ref.items()) if ref not in seen]
    return {
        "matched": matched, "matched_fen": matched_fen,
        "amount_mismatch_count": len(mismatched), "amount_mismatch": mismatched[:MAX_LISTED],
        "missing_ours_count": len(missing_ours), "missing_ours": missing_ours[:MAX_LISTED],
        "missing_theirs_count": len(missing_theirs), "missing_theirs": missing_theirs[:MAX_LISTED],
        "duplicate_line_count": len(duplicates), "duplicate_lines": duplicates[:MAX_LISTED],
        "late_ours_count": len(late), "late_ours": late[:MAX_LISTED],
        "statement_lines": len(theirs), "statement_total_fen": sum(line[3] for line in theirs),
        "our_total_fen": sum(fen for mine in our_by_ref.values() for _id, fen in mine),
    }


def mismatch_count(result):
    return (result["amount_mismatch_count"] + result["missing_ours_count"] + result["missing_theirs_count"]
            + result["duplicate_line_count"])


def _store_match(conn, ledger_id, number):
    assert conn.in_transaction
    ours = conn.execute("SELECT order_ref, transfer_id, amount_fen, own_day_number FROM finance_recharge_lines "
                        "WHERE day_number = ? AND ledger_account_id = ? ORDER BY rowid", (number, ledger_id)).fetchall()
    theirs = conn.execute("SELECT line_number, order_ref, channel_ref, amount_fen, time_text FROM finance_statement_lines "
                          "WHERE ledger_account_id = ? AND day_number = ? ORDER BY line_number",
                          (ledger_id, number)).fetchall()
    result = match_lines(ours, theirs, number)
    conn.execute("UPDATE finance_statements SET match = ? WHERE ledger_account_id = ? AND day_number = ?",
                 (json.dumps(result, ensure_ascii=False, sort_keys=True), ledger_id, number))
    return result


def match_pending(conn, number):
    """At the close of `number`: match the statements already imported for it."""
    for (ledger_id,) in conn.execute("SELECT ledger_account_id FROM finance_statements WHERE day_number = ? AND "
                                     "match IS NULL", (number,)).fetchall():
        _store_match(conn, ledger_id, number)


def with_matches(conn, report):
    """The stored report with each channel's statement match (None where no statement came yet)."""
    number = day_number(report["day"])
    matches = {ledger_id: json.loads(text) for ledger_id, text in conn.execute(
        "SELECT ledger_account_id, match FROM finance_statements WHERE day_number = ? AND match IS NOT NULL", (number,))}
    channels = [dict(row, statement=matches.get(row["ledger_account_id"])) for row in report["channels"]]
    known = {row["ledger_account_id"] for row in channels}
    for ledger_id in sorted(set(matches) - known):
        name = conn.execute("SELECT name_zh, name_en, kind FROM ledger_accounts WHERE id = ?", (ledger_id,)).fetchone()
        channels.append({"ledger_account_id": ledger_id, "kind": name[2], "name_zh": name[0] or "",
                         "name_en": name[1] or "", "count": 0, "total_fen": 0, "late_count": 0, "late_fen": 0,
                         "statement": matches[ledger_id]})
    report = dict(report, channels=channels)
    report["totals"] = dict(report["totals"], statement_mismatches=sum(
        mismatch_count(row["statement"]) for row in channels if row["statement"]))
    return report
