"""Settlement: which records and transfers a close takes, and the merchant and terminal rows of its report.

Every terminal record belongs to the day of its corrected time (or of its arrival, when that time is
impossible: after the record reached us, or before the terminal existed). A close of day D takes
every record not yet settled whose own day is D or earlier; since the earlier days are closed, an
earlier record is a late one: it is booked into D and keeps a reference to its own day
(finance_late_records). Records of days after D (taps after midnight, before the close ran) stay for
their own close. What is settled is kept per terminal as a contiguous seq prefix plus ranges above
holes, so a close reads only new rows, through the primary key. Recharges, and sales with no
terminal record (dorm electricity paid in the app or at the hall: purchase transfers not named after
a record), follow the same rule by their transfer's time, found through the transfer rowid window
since the last close (transfers are append-only, so rowids only grow); those of a later day wait in
finance_deferred_transfers.
"""
import bisect
import json

from firmware.core import protocol, records as record_codec
from sync_server import db as dbmod, ingest, ledger
from sync_server.business_day import BEIJING_OFFSET_MS, DAY_MS, HOUR_MS, day_of_ms, hour_of_ms

MAX_OFFLINE_PERIODS_LISTED = 20    # per terminal
MAX_GAP_RANGES_LISTED = 20         # per terminal
MAX_GAP_SCAN_ROWS = 200000         # bound on the scan for holes above a terminal's acked_seq
_NO_END = 2 ** 62
# a terminal record's purchase transfers are named "p/<terminal>/<seq>/<part>" (ledger.purchase_transfer_id);
# any other purchase transfer (dorm electricity, sync_server/services/electricity.py) has no record
TERMINAL_PURCHASE_PREFIX = "p/"
assert ledger.purchase_transfer_id(1, 2, 0).startswith(TERMINAL_PURCHASE_PREFIX)
_LATE_INSERT_BATCH = 5000

SELECT_RECORDS_SQL = (
    "SELECT seq, corrected_time_ms, received_ms, merchant_id, amount_fen, flags, card_number, card_generation, "
    "tap_counter, booked, kind FROM terminal_records WHERE terminal_id = ? AND seq BETWEEN ? AND ? ORDER BY seq")
# A Bluetooth water session's money moves with its grant ("wp/<grant>/..." transfers, counted as sales
# without a record by their time, sync_server/water_holds.py); its record is settled like any other
# but adds nothing to the merchant's figures, so the sale counts once.
_GRANT_KIND = record_codec.KIND_WATER_GRANT
_PAYCODE_KIND = record_codec.KIND_PAYCODE      # card_number holds the phone credential: never a watched card
_ACTIVATION_KIND = record_codec.KIND_ACTIVATION  # an old card activated: its money moves in the migration


def terminals(window):
    rows = window.conn.execute(
        "SELECT t.id, t.merchant_id, t.status, t.acked_seq, t.max_seq, t.last_sync_ms, t.clock_offset_ms, "
        "t.created_ms, m.name_zh, m.name_en, t.health FROM terminals t LEFT JOIN merchants m ON m.id = t.merchant_id "
        "ORDER BY t.id").fetchall()
    revoked = {}
    for ref, created_ms in window.conn.execute(
            "SELECT ref, min(created_ms) FROM deny_entries WHERE kind = ? AND active = 1 GROUP BY ref",
            (protocol.DENY_TERMINAL,)):
        revoked[ref] = created_ms
    result = {}
    for row in rows:
        result[row[0]] = {"id": row[0], "merchant_id": row[1], "status": row[2], "acked_seq": row[3],
                          "max_seq": row[4], "last_sync_ms": row[5], "clock_offset_ms": row[6],
                          "created_ms": row[7], "name_zh": row[8], "name_en": row[9],
                          "revoked_ms": revoked.get(row[0]) if row[2] != "active" else None,
                          "journal_last_seq": _journal_last_seq(row[10])}
    return result


def merchants(window):
    return {row[0]: {"merchant_id": row[0], "name_zh": row[1], "name_en": row[2], "category": row[3],
                     "ledger_account_id": row[4]}
            for row in window.conn.execute(
                "SELECT id, name_zh, name_en, category, ledger_account_id FROM merchants ORDER BY id")}


def scan_records(window, terminals, watched):
    """One pass over the unsettled records of every terminal, in seq order (module text). Taps of the
    `watched` cards (anomalies.watched_cards) are collected for the clone check."""
    conn, day = window.conn, window.day
    tolerance_ms = window.tolerance_ms
    marks = dict(conn.execute("SELECT terminal_id, settled_seq FROM finance_settled_marks"))
    old_ranges = {}
    for terminal_id, from_seq, to_seq in conn.execute(
            "SELECT terminal_id, from_seq, to_seq FROM finance_settled_ranges ORDER BY terminal_id, from_seq"):
        old_ranges.setdefault(terminal_id, []).append((from_seq, to_seq))
    offline_flag = record_codec.FLAG_OFFLINE
    by_merchant = {}       # merchant_id -> [count, gross, late_count, late_fen, hour counts, hour fen]
    pending = {}           # merchant_id -> fen of booked records left for a later close
    per_terminal = {}
    late_rows, unbooked, impossible, revoked_records, watched_taps = [], [], [], [], {}
    paycodes = {"count": 0, "fen": 0, "offline_count": 0, "records": []}   # pay-code sales settled now
    settled = {}           # terminal_id -> [[from, to], ...] settled by this close
    total = 0
    for terminal_id, terminal in terminals.items():
        mark = marks.get(terminal_id, 0)
        intervals, low = [], mark + 1
        for from_seq, to_seq in old_ranges.get(terminal_id, ()):
            if from_seq > low:
                intervals.append((low, from_seq - 1))
            low = max(low, to_seq + 1)
        intervals.append((low, _NO_END))
        created_ms = terminal["created_ms"] - tolerance_ms
        revoked_ms = terminal["revoked_ms"]
        stats = {"records": 0, "first_seq": None, "last_seq": None, "offline_records": 0, "periods": [],
                 "period": None}
        ranges = []
        for low, high in intervals:
            for seq, time_ms, received_ms, merchant_id, amount_fen, flags, card, generation, counter, booked, kind \
                    in conn.execute(SELECT_RECORDS_SQL, (terminal_id, low, high)):
                if time_ms > received_ms + tolerance_ms or time_ms < created_ms:
                    own = (received_ms + BEIJING_OFFSET_MS) // DAY_MS
                    if own <= day:
                        impossible.append((terminal_id, seq, time_ms, received_ms))
                else:
                    own = (time_ms + BEIJING_OFFSET_MS) // DAY_MS
                if own > day:
                    if booked and kind not in (_GRANT_KIND, _ACTIVATION_KIND):
                        pending[merchant_id] = pending.get(merchant_id, 0) + amount_fen
                    continue
                if ranges and ranges[-1][1] == seq - 1:
                    ranges[-1][1] = seq
                else:
                    ranges.append([seq, seq])
                stats["records"] += 1
                if stats["first_seq"] is None:
                    stats["first_seq"] = seq
                stats["last_seq"] = seq
                period = stats["period"]
                if flags & offline_flag:
                    stats["offline_records"] += 1
                    if period is None:
                        stats["period"] = [time_ms, time_ms, 1]
                    else:
                        period[0] = min(period[0], time_ms)
                        period[1] = max(period[1], time_ms)
                        period[2] += 1
                elif period is not None:
                    stats["periods"].append(period)
                    stats["period"] = None
                if revoked_ms is not None and time_ms >= revoked_ms:
                    revoked_records.append((terminal_id, seq, time_ms, revoked_ms))
                if card in watched and generation in watched[card] and kind not in (_PAYCODE_KIND, _ACTIVATION_KIND):
                    watched_taps.setdefault((card, generation), []).append((time_ms, counter, terminal_id, seq))
                if not booked:
                    unbooked.append((terminal_id, seq, amount_fen))
                    continue
                if kind in (_GRANT_KIND, _ACTIVATION_KIND):   # money moves by grant / by old serial
                    continue
                if kind == _PAYCODE_KIND:
                    paycodes["count"] += 1
                    paycodes["fen"] += amount_fen
                    paycodes["offline_count"] += 1 if flags & offline_flag else 0
                    paycodes["records"].append((terminal_id, seq))
                totals = by_merchant.get(merchant_id)
                if totals is None:
                    totals = by_merchant[merchant_id] = [0, 0, 0, 0, [0] * 24, [0] * 24]
                if own < day:
                    totals[2] += 1
                    totals[3] += amount_fen
                    late_rows.append((terminal_id, seq, day, own, merchant_id, amount_fen))
                else:
                    totals[0] += 1
                    totals[1] += amount_fen
                    hour = (time_ms + BEIJING_OFFSET_MS) % DAY_MS // HOUR_MS
                    totals[4][hour] += 1
                    totals[5][hour] += amount_fen
        if stats["period"] is not None:
            stats["periods"].append(stats["period"])
        total += stats["records"]
        per_terminal[terminal_id] = stats
        if ranges:
            settled[terminal_id] = ranges
    return {"records": total, "by_merchant": by_merchant, "per_terminal": per_terminal, "late": late_rows,
            "unbooked": unbooked, "impossible": impossible, "revoked": revoked_records,
            "watched_taps": watched_taps, "paycodes": paycodes,
            "settled": settled, "marks": marks, "old_ranges": old_ranges, "pending": pending}


def window_transfers(window, merchants):
    """Recharges per channel, refunds per merchant, sales without a terminal record (dorm electricity
    paid in the app or at the hall) per merchant, fees, and the window's movements per kind and
    per ledger account."""
    conn, day = window.conn, window.day
    low, high = window.previous[0], window.watermarks[0]
    kinds = {}
    names = {}
    for ledger_id, kind, name_zh, name_en in conn.execute(
            "SELECT id, kind, name_zh, name_en FROM ledger_accounts WHERE kind != 'wallet'"):
        kinds[ledger_id] = kind
        names[ledger_id] = (name_zh, name_en)
    merchant_of_ledger = {m["ledger_account_id"]: merchant_id for merchant_id, m in merchants.items()}
    deferred = conn.execute("SELECT transfer_rowid FROM finance_deferred_transfers WHERE own_day_number <= ?",
                            (day,)).fetchall()
    # terminal purchases are settled from their records (_scan_records); every other transfer here
    rows = conn.execute("SELECT rowid, id, debit_id, credit_id, amount_fen, kind, reference, time_ms FROM transfers "
                        "WHERE rowid > ? AND rowid <= ? AND (kind != 'purchase' OR substr(id, 1, ?) != ?)",
                        (low, high, len(TERMINAL_PURCHASE_PREFIX), TERMINAL_PURCHASE_PREFIX)).fetchall()
    for (rowid,) in deferred:
        rows.extend(conn.execute("SELECT rowid, id, debit_id, credit_id, amount_fen, kind, reference, time_ms "
                                 "FROM transfers WHERE rowid = ?", (rowid,)))
    conn.execute("DELETE FROM finance_deferred_transfers WHERE own_day_number <= ?", (day,))
    channels, refunds, lines, newly_deferred = {}, {}, [], []
    sales, sale_ids = {}, set()     # merchant_id -> [count, gross, late_count, late_fen, hour counts, hour fen]
    fees_fen = 0
    for rowid, transfer_id, debit_id, credit_id, amount_fen, kind, reference, time_ms in rows:
        own = day_of_ms(time_ms)
        if kind == "recharge":
            if own > day:
                newly_deferred.append((rowid, own))
                continue
            channel = channels.get(debit_id)
            if channel is None:
                channel = channels[debit_id] = {"ledger_account_id": debit_id, "kind": kinds.get(debit_id, "?"),
                                                "name_zh": names.get(debit_id, ("", ""))[0] or "",
                                                "name_en": names.get(debit_id, ("", ""))[1] or "",
                                                "count": 0, "total_fen": 0, "late_count": 0, "late_fen": 0}
            channel["count"] += 1
            channel["total_fen"] += amount_fen
            if own < day:
                channel["late_count"] += 1
                channel["late_fen"] += amount_fen
            if channel["kind"] == "channel":
                lines.append([day, debit_id, reference or transfer_id, transfer_id, amount_fen, time_ms, own])
        elif kind == "purchase" and credit_id in merchant_of_ledger:
            if own > day:
                newly_deferred.append((rowid, own))
                continue
            totals = sales.get(merchant_of_ledger[credit_id])
            if totals is None:
                totals = sales[merchant_of_ledger[credit_id]] = [0, 0, 0, 0, [0] * 24, [0] * 24]
            # one sale, one transfer per wallet drawn on: "<prefix>/<sale>/<part>" counts once
            sale_id = transfer_id.rsplit("/", 1)[0]
            first_part = sale_id not in sale_ids
            sale_ids.add(sale_id)
            if own < day:
                totals[2] += first_part
                totals[3] += amount_fen
            else:
                totals[0] += first_part
                totals[1] += amount_fen
                hour = hour_of_ms(time_ms)
                totals[4][hour] += first_part
                totals[5][hour] += amount_fen
        elif kind == "correction" and debit_id in merchant_of_ledger:
            refund = refunds.setdefault(merchant_of_ledger[debit_id], [0, 0])
            refund[0] += 1
            refund[1] += amount_fen
        elif kind == "fee":
            fees_fen += amount_fen
    conn.executemany("INSERT INTO finance_deferred_transfers (transfer_rowid, own_day_number) VALUES (?, ?)",
                     newly_deferred)
    deferred_sales = _deferred_sales(conn, merchant_of_ledger)
    orders = _order_refs(conn, [line[3] for line in lines])
    for line in lines:
        line[2] = orders.get(line[3], line[2])
    conn.executemany("INSERT INTO finance_recharge_lines (day_number, ledger_account_id, order_ref, transfer_id, "
                     "amount_fen, time_ms, own_day_number) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", lines)
    movements, changes = _window_movements(conn, kinds, low, high)
    return {"channels": [channels[key] for key in sorted(channels)], "refunds": refunds, "fees_fen": fees_fen,
            "sales": sales, "deferred_sales": deferred_sales, "movements": movements, "changes": changes}


def _deferred_sales(conn, merchant_of_ledger):
    """{merchant_id: fen} of the sales without a record left for a later close."""
    deferred_sales = {}
    for credit_id, amount_fen in conn.execute(
            "SELECT t.credit_id, sum(t.amount_fen) FROM finance_deferred_transfers d JOIN transfers t "
            "ON t.rowid = d.transfer_rowid WHERE t.kind = 'purchase' GROUP BY t.credit_id"):
        if credit_id in merchant_of_ledger:
            deferred_sales[merchant_of_ledger[credit_id]] = amount_fen
    return deferred_sales


def _window_movements(conn, kinds, low, high):
    """The transfer window's signed sums: per kind of ledger account, and per ledger account."""
    movements, changes = {}, {}
    for column, sign in (("debit_id", -1), ("credit_id", 1)):
        for ledger_id, amount_fen in conn.execute(
                "SELECT %s, sum(amount_fen) FROM transfers WHERE rowid > ? AND rowid <= ? GROUP BY %s"
                % (column, column), (low, high)):
            kind = kinds.get(ledger_id, "wallet")
            movements[kind] = movements.get(kind, 0) + sign * amount_fen
            changes[ledger_id] = changes.get(ledger_id, 0) + sign * amount_fen
    return movements, changes


def merchant_rows(merchants, scan, transfers):
    rows = []
    for merchant_id in sorted(set(merchants) | set(scan["by_merchant"]) | set(transfers["refunds"])
                              | set(transfers["sales"])):
        count, gross, late_count, late_fen, hour_counts, hour_fen = _add_sales(
            scan["by_merchant"].get(merchant_id), transfers["sales"].get(merchant_id))
        refund_count, refunds_fen = transfers["refunds"].get(merchant_id, (0, 0))
        info = merchants.get(merchant_id, {"name_zh": "未知商户 %d" % merchant_id,
                                           "name_en": "unknown merchant %d" % merchant_id, "category": 0})
        rows.append({"merchant_id": merchant_id, "name_zh": info["name_zh"], "name_en": info["name_en"],
                     "category": info["category"], "count": count + late_count, "gross_fen": gross + late_fen,
                     "refund_count": refund_count, "refunds_fen": refunds_fen,
                     "net_fen": gross + late_fen - refunds_fen, "late_count": late_count, "late_fen": late_fen,
                     "by_hour": [[hour_counts[h], hour_fen[h]] for h in range(24)]})
    return rows


def terminal_rows(window, terminals, scan):
    rows = []
    for terminal_id, terminal in terminals.items():
        stats = scan["per_terminal"][terminal_id]
        holes = _holes(window.conn, terminal_id, terminal["acked_seq"], terminal["max_seq"])
        last_sync_ms = terminal["last_sync_ms"]
        rows.append({
            "terminal_id": terminal_id, "merchant_id": terminal["merchant_id"],
            "name_zh": terminal["name_zh"] or "", "name_en": terminal["name_en"] or "",
            "status": terminal["status"], "records": stats["records"],
            "first_seq": stats["first_seq"], "last_seq": stats["last_seq"],
            "acked_seq": terminal["acked_seq"], "max_seq": terminal["max_seq"],
            "open_gaps": holes[:MAX_GAP_RANGES_LISTED], "open_gap_count": len(holes),
            "missing_seqs": sum(high - low + 1 for low, high in holes),
            "last_sync_ms": last_sync_ms,
            "since_last_sync_ms": None if last_sync_ms is None else window.now_ms - last_sync_ms,
            "clock_offset_ms": terminal["clock_offset_ms"],
            "offline_records": stats["offline_records"],
            "offline_periods": [list(p) for p in stats["periods"][:MAX_OFFLINE_PERIODS_LISTED]],
            "offline_period_count": len(stats["periods"]),
            "silent": terminal["status"] == "active" and stats["records"] == 0
            and (last_sync_ms is None or last_sync_ms < window.start_ms),
        })
    return rows


def store_settlement(window, scan):
    """What this close settled: its late records, and per terminal the settled prefix and ranges."""
    conn = window.conn
    for start in range(0, len(scan["late"]), _LATE_INSERT_BATCH):
        conn.executemany("INSERT INTO finance_late_records (terminal_id, seq, booked_day_number, own_day_number, "
                         "merchant_id, amount_fen) VALUES (?, ?, ?, ?, ?, ?)",
                         scan["late"][start:start + _LATE_INSERT_BATCH])
    for terminal_id, ranges in scan["settled"].items():
        mark = scan["marks"].get(terminal_id, 0)
        merged = _merge(scan["old_ranges"].get(terminal_id, []) + [tuple(r) for r in ranges])
        while merged and merged[0][0] <= mark + 1:
            mark = max(mark, merged.pop(0)[1])
        conn.execute("INSERT INTO finance_settled_marks (terminal_id, settled_seq) VALUES (?, ?) "
                     "ON CONFLICT (terminal_id) DO UPDATE SET settled_seq = excluded.settled_seq",
                     (terminal_id, mark))
        conn.execute("DELETE FROM finance_settled_ranges WHERE terminal_id = ?", (terminal_id,))
        conn.executemany("INSERT INTO finance_settled_ranges (terminal_id, from_seq, to_seq) VALUES (?, ?, ?)",
                         [(terminal_id, low, high) for low, high in merged])


def _add_sales(records, sales):
    """Per-merchant figures of the terminal records plus those of the sales without a record."""
    parts = [part for part in (records, sales) if part is not None]
    if not parts:
        return 0, 0, 0, 0, [0] * 24, [0] * 24
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts), sum(p[3] for p in parts),
            [sum(p[4][h] for p in parts) for h in range(24)], [sum(p[5][h] for p in parts) for h in range(24)])


def in_ranges(ranges, seq):
    starts = [r[0] for r in ranges]
    index = bisect.bisect_right(starts, seq) - 1
    return index >= 0 and ranges[index][0] <= seq <= ranges[index][1]


def _journal_last_seq(health_json):
    """The journal head a terminal reported in its last sync's health map (None when it did not say)."""
    try:
        value = json.loads(health_json).get("last_seq") if health_json else None
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _merge(ranges):
    merged = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _holes(conn, terminal_id, acked_seq, max_seq):
    """Seq ranges still missing between the terminal's acked_seq and max_seq (asked for at every sync)."""
    _contiguous, holes = ingest.scan_holes(conn, terminal_id, acked_seq, max_seq, MAX_GAP_SCAN_ROWS, None)
    return [[low, high] for low, high in holes]


def _order_refs(conn, transfer_ids):
    """{transfer_id: order id (商户订单号)} of the channel orders behind these transfers
    (sync_server/services/recharge.py)."""
    found = {}
    for condition, values in dbmod.in_lists(conn, transfer_ids):
        found.update(conn.execute("SELECT transfer_id, order_id FROM recharge_orders WHERE transfer_id %s"
                                  % condition, values).fetchall())
    return found
