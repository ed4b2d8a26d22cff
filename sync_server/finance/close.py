"""Closing a business day (日结): the day's reconciliation, computed once and stored for good.

A day is a Beijing calendar day. Days close in order, one after the other; the first close takes in
everything that came before it. Closing a day that is already closed returns the stored figures, so
closing twice gives the same report and a closed day's figures never change.

Which records a close takes. Every terminal record belongs to the day of its corrected time (or of
its arrival, when that time is impossible: after the record reached us, or before the terminal
existed). A close of day D takes every record not yet settled whose own day is D or earlier; since
the earlier days are closed, an earlier record is a late one: it is booked into D and keeps a
reference to its own day (finance_late_records). Records of days after D (taps after midnight,
before the close ran) stay for their own close. What is settled is kept per terminal as a
contiguous seq prefix plus ranges above holes, so a close reads only new rows, through the primary
key. Recharges, and sales with no terminal record (dorm electricity paid in the app or at the hall:
purchase transfers not named after a record), follow the same rule by their transfer's time, found
through the transfer rowid window since the last close (transfers are append-only, so rowids only
grow); those of a later day wait in finance_deferred_transfers.

Merchant check: per merchant, the movement of its ledger account over the transfer window equals
the net the settlement pays plus the change in money booked but left for a later close (records and
sales of a day not closed yet), so a sale the settlement misses makes the day unbalanced.

The close holds the write lock (BEGIN IMMEDIATE) from its first read to its commit: the records,
transfers and balances it sees are one consistent cut, and a sync that arrives meanwhile waits and
then lands in the next day. A million records take a few seconds (benchmarks/close_day.py).
Nothing under the lock reads all of history: `balanced` checks the accounts the close's transfer
window touched (cached balance == the balance derived at the previous close + the window's sums),
the per-kind sums of every cached balance, the trial balance and the merchant check. The full
ledger.check_balances runs after the commit on a read snapshot (verify_ledger) and is stored beside
the day as `ledger_check`, so the closed figures never change.

Side effects besides the report: a card whose tap counter repeats or runs backwards is suspected
cloned and denied (card status frozen, a deny entry terminals fetch on their next sync).

Card tap-counter gaps (DESIGN.md section 3). The ingest notes a gap when a card's counter skips
(counters expected..seen-1 never seen), and a late note when a lower counter arrives afterwards. A
gap belongs to the close that settles the record which revealed it; late notes up to the close fill
it (what they fill is not a gap any more). What stays missing gets a reason from what the server
knows at the close: when some active terminal may still hold the record (it has an open seq gap,
had more to send at its last sync, or has not synced since the gap was noticed) it is `pending`;
otherwise every terminal has sent everything it journaled before the revealing tap, so no record
exists: the card was counted but the tap never journaled (pulled after the count, the terminal said
请重新刷卡 and charged nothing), `torn_tap`. The revealing terminal itself has sent everything
older once its acked_seq reaches the revealing seq. Any active terminal counts as one the card could
have used (a card works at every window).

Limits: the clone check sees the records of the day being closed plus the repeats the ingest noted;
two copies of a card used on different days with no repeat noted are not caught here. A cached
balance changed without a transfer on an account the window did not touch, offset by another of the
same kind, shows only in `ledger_check`, after the commit. The ingest notes
no gap below the first counter it sees of a card, so a torn first tap (or one torn just before a
record that arrives late below that first counter) is not reported; a sync request in flight for
longer than the gap took to be noticed may count its terminal as having sent everything.
"""
import bisect
import json

from firmware.core import protocol, records as record_codec
from sync_server import db as dbmod, ingest, ledger
from sync_server.finance import (BEIJING_OFFSET_MS, DAY_MS, HOUR_MS, FinanceError, day_number, day_of_ms,
                                 day_start_ms, day_text, hour_of_ms)
from sync_server.ledger_store import SqliteStore, add_deny_entries

MAX_LISTED = 200                   # rows listed per anomaly kind; counts stay exact
MAX_OFFLINE_PERIODS_LISTED = 20    # per terminal
MAX_GAP_RANGES_LISTED = 20         # per terminal
MAX_GAP_SCAN_ROWS = 200000         # bound on the scan for holes above a terminal's acked_seq
MAX_WATCHED_CARDS = 100000         # cards with counter notes followed through one close
MAX_GAP_NOTES = 200000             # gap and late counter notes read by one close
MAX_WAITING_LISTED = 10            # terminals named per pending card-counter gap
GAP_TORN_TAP = "torn_tap"          # counted on the card, never journaled: nothing charged
GAP_PENDING = "pending"            # a terminal has not sent everything yet
GAP_REASONS = (GAP_TORN_TAP, GAP_PENDING)
_NO_END = 2 ** 62
# a terminal record's purchase transfers are named "p/<terminal>/<seq>/<part>" (ledger.purchase_transfer_id);
# any other purchase transfer (dorm electricity, sync_server/services/electricity.py) has no record
TERMINAL_PURCHASE_PREFIX = "p/"
assert ledger.purchase_transfer_id(1, 2, 0).startswith(TERMINAL_PURCHASE_PREFIX)
_LATE_INSERT_BATCH = 5000
_IN_CHUNK = 900                    # keep IN (...) lists under SQLite's bound on variables
MAX_LEDGER_PROBLEMS_STORED = 200

SELECT_RECORDS_SQL = (
    "SELECT seq, corrected_time_ms, received_ms, merchant_id, amount_fen, flags, card_number, card_generation, "
    "tap_counter, booked FROM terminal_records WHERE terminal_id = ? AND seq BETWEEN ? AND ? ORDER BY seq")


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
    (a statement may be imported after the close; both sides are then frozen) and the full ledger
    check run after the close (`ledger_check`, None until it has run). None when open."""
    from sync_server.finance import channel_statements
    report = stored_report(conn, day)
    if report is None:
        return None
    report = channel_statements.with_matches(conn, report)
    report["ledger_check"] = stored_ledger_check(conn, day)
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
                _Close(conn, number, now_ms).run()
                newly = True
    if check_ledger and stored_ledger_check(conn, number) is None:
        verify_ledger(conn, number)
    return load_report(conn, number), newly


def verify_ledger(conn, day, now_ms=None):
    """The full ledger check of a closed day, outside the write lock: ledger.check_balances (every
    balance derived from every transfer, sum zero) on one read snapshot taken after the close
    committed, so syncs go on meanwhile. Stored once per day beside the day's figures, which stay as
    they were closed; returns the stored check."""
    number = day if isinstance(day, int) else day_number(day)
    assert not conn.in_transaction, "the full check must not run under the close's write lock"
    with dbmod.read_snapshot(conn):
        if stored_report(conn, number) is None:
            raise FinanceError("%s 尚未结算" % day_text(number), "%s is not closed yet" % day_text(number))
        watermark = _max(conn, "SELECT max(rowid) FROM transfers")
        problems = ledger.check_balances(SqliteStore(conn))
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.transaction(conn):
        conn.execute("INSERT OR IGNORE INTO finance_ledger_checks (day_number, checked_ms, transfer_watermark, "
                     "problem_count, problems) VALUES (?, ?, ?, ?, ?)",
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


def _max(conn, sql):
    return conn.execute(sql).fetchone()[0] or 0


class _Close:
    """One close: reads under the caller's write transaction, stores the report and settlement."""

    def __init__(self, conn, number, now_ms):
        assert conn.in_transaction
        self.conn = conn
        self.day = number
        self.now_ms = now_ms
        self.start_ms = day_start_ms(number)
        self.tolerance_ms = dbmod.setting(conn, "clock_tolerance_ms")
        previous = conn.execute(
            "SELECT transfer_watermark, counter_anomaly_watermark, deny_watermark, record_anomaly_watermark, report "
            "FROM finance_days WHERE day_number < ? ORDER BY day_number DESC LIMIT 2", (number,)).fetchall()
        self.previous = previous[0] if previous else (0, 0, 0, 0, None)
        # counter notes of the close before the previous one too: a record seen then but belonging to
        # this day was deferred, and its note must come along with it
        self.counter_floor = previous[1][1] if len(previous) > 1 else 0
        self.watermarks = (
            _max(conn, "SELECT max(rowid) FROM transfers"),
            _max(conn, "SELECT max(id) FROM counter_anomalies"),
            _max(conn, "SELECT max(version) FROM deny_entries"),
            _max(conn, "SELECT max(rowid) FROM record_anomalies"),
        )

    def run(self):
        terminals = self._terminals()
        merchants = self._merchants()
        scan = self._scan_records(terminals)
        transfers = self._transfers(merchants)
        report = {
            "day": day_text(self.day),
            "closed_ms": self.now_ms,
            "totals": {},
            "merchants": self._merchant_rows(merchants, scan, transfers),
            "terminals": self._terminal_rows(terminals, scan),
            "terminals_silent": [],
            "channels": transfers["channels"],
            "anomalies": self._anomalies(scan, terminals),
            "card_counter_gaps": self._card_counter_gaps(terminals, scan["settled"]),
        }
        report["invariants"] = self._invariants(transfers, merchants, report["merchants"], scan)
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
        }
        self._store(report, scan)
        return report

    # -- reference data ---------------------------------------------------------------------------

    def _terminals(self):
        rows = self.conn.execute(
            "SELECT t.id, t.merchant_id, t.status, t.acked_seq, t.max_seq, t.last_sync_ms, t.clock_offset_ms, "
            "t.created_ms, m.name_zh, m.name_en, t.health FROM terminals t LEFT JOIN merchants m ON m.id = t.merchant_id "
            "ORDER BY t.id").fetchall()
        revoked = {}
        for ref, created_ms in self.conn.execute(
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

    def _merchants(self):
        return {row[0]: {"merchant_id": row[0], "name_zh": row[1], "name_en": row[2], "category": row[3],
                         "ledger_account_id": row[4]}
                for row in self.conn.execute(
                    "SELECT id, name_zh, name_en, category, ledger_account_id FROM merchants ORDER BY id")}

    def _watched_cards(self):
        """Cards with repeat or backwards tap-counter notes since the floor: {card_number: kinds},
        and the (terminal, seq) of the repeats."""
        watched, repeats = {}, {}
        for card, generation, kind, terminal_id, seq in self.conn.execute(
                "SELECT card_number, generation, kind, terminal_id, seq FROM counter_anomalies WHERE id > ? "
                "AND id <= ? AND kind IN ('repeat', 'late') ORDER BY id LIMIT ?",
                (self.counter_floor, self.watermarks[1], MAX_WATCHED_CARDS)):
            watched.setdefault(card, set()).add(generation)
            if kind == "repeat":
                repeats[(terminal_id, seq)] = (card, generation)
        return watched, repeats

    # -- records ----------------------------------------------------------------------------------

    def _scan_records(self, terminals):
        """One pass over the unsettled records of every terminal, in seq order (module text)."""
        conn, day = self.conn, self.day
        tolerance_ms = self.tolerance_ms
        marks = dict(conn.execute("SELECT terminal_id, settled_seq FROM finance_settled_marks"))
        old_ranges = {}
        for terminal_id, from_seq, to_seq in conn.execute(
                "SELECT terminal_id, from_seq, to_seq FROM finance_settled_ranges ORDER BY terminal_id, from_seq"):
            old_ranges.setdefault(terminal_id, []).append((from_seq, to_seq))
        watched, repeats = self._watched_cards()
        offline_flag = record_codec.FLAG_OFFLINE
        by_merchant = {}       # merchant_id -> [count, gross, late_count, late_fen, hour counts, hour fen]
        pending = {}           # merchant_id -> fen of booked records left for a later close
        per_terminal = {}
        late_rows, unbooked, impossible, revoked_records, watched_taps = [], [], [], [], {}
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
                for seq, time_ms, received_ms, merchant_id, amount_fen, flags, card, generation, counter, booked \
                        in conn.execute(SELECT_RECORDS_SQL, (terminal_id, low, high)):
                    if time_ms > received_ms + tolerance_ms or time_ms < created_ms:
                        own = (received_ms + BEIJING_OFFSET_MS) // DAY_MS
                        if own <= day:
                            impossible.append((terminal_id, seq, time_ms, received_ms))
                    else:
                        own = (time_ms + BEIJING_OFFSET_MS) // DAY_MS
                    if own > day:
                        if booked:
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
                    if card in watched and generation in watched[card]:
                        watched_taps.setdefault((card, generation), []).append((time_ms, counter, terminal_id, seq))
                    if not booked:
                        unbooked.append((terminal_id, seq, amount_fen))
                        continue
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
        clones = self._clones(watched_taps, repeats, settled)
        return {"records": total, "by_merchant": by_merchant, "per_terminal": per_terminal, "late": late_rows,
                "unbooked": unbooked, "impossible": impossible, "revoked": revoked_records, "clones": clones,
                "settled": settled, "marks": marks, "old_ranges": old_ranges, "pending": pending}

    def _clones(self, watched_taps, repeats, settled):
        """Cards whose tap counter repeats or runs backwards in time: {(card, generation): finding}."""
        found = {}
        for (terminal_id, seq), card_ref in repeats.items():
            if _in_ranges(settled.get(terminal_id, ()), seq):
                found.setdefault(card_ref, {"kinds": set(), "taps": []})["kinds"].add("repeat")
        for card_ref, taps in watched_taps.items():
            taps.sort()
            counters = {}
            highest = None
            for time_ms, counter, terminal_id, seq in taps:
                if counter in counters:
                    found.setdefault(card_ref, {"kinds": set(), "taps": []})["kinds"].add("repeat")
                counters[counter] = (terminal_id, seq)
                if highest is not None and counter < highest[1] and time_ms - highest[0] > self.tolerance_ms:
                    found.setdefault(card_ref, {"kinds": set(), "taps": []})["kinds"].add("backwards")
                if highest is None or counter > highest[1]:
                    highest = (time_ms, counter)
            if card_ref in found:
                found[card_ref]["taps"] = [[t, c, term, s] for t, c, term, s in taps[:MAX_LISTED]]
        return found

    # -- transfers --------------------------------------------------------------------------------

    def _transfers(self, merchants):
        """Recharges per channel, refunds per merchant, sales without a terminal record (dorm electricity
        paid in the app or at the hall) per merchant, fees, and the window's movements per kind and
        per ledger account."""
        conn, day = self.conn, self.day
        low, high = self.previous[0], self.watermarks[0]
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
        deferred_sales = {}         # merchant_id -> fen of sales without a record left for a later close
        for credit_id, amount_fen in conn.execute(
                "SELECT t.credit_id, sum(t.amount_fen) FROM finance_deferred_transfers d JOIN transfers t "
                "ON t.rowid = d.transfer_rowid WHERE t.kind = 'purchase' GROUP BY t.credit_id"):
            if credit_id in merchant_of_ledger:
                deferred_sales[merchant_of_ledger[credit_id]] = amount_fen
        orders = _order_refs(conn, [line[3] for line in lines])
        for line in lines:
            line[2] = orders.get(line[3], line[2])
        conn.executemany("INSERT OR IGNORE INTO finance_recharge_lines (day_number, ledger_account_id, order_ref, "
                         "transfer_id, amount_fen, time_ms, own_day_number) VALUES (?, ?, ?, ?, ?, ?, ?)", lines)
        movements, changes = {}, {}
        for column, sign in (("debit_id", -1), ("credit_id", 1)):
            for ledger_id, amount_fen in conn.execute(
                    "SELECT %s, sum(amount_fen) FROM transfers WHERE rowid > ? AND rowid <= ? GROUP BY %s"
                    % (column, column), (low, high)):
                kind = kinds.get(ledger_id, "wallet")
                movements[kind] = movements.get(kind, 0) + sign * amount_fen
                changes[ledger_id] = changes.get(ledger_id, 0) + sign * amount_fen
        return {"channels": [channels[key] for key in sorted(channels)], "refunds": refunds, "fees_fen": fees_fen,
                "sales": sales, "deferred_sales": deferred_sales, "movements": movements, "changes": changes}

    # -- report sections --------------------------------------------------------------------------

    def _merchant_rows(self, merchants, scan, transfers):
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

    def _terminal_rows(self, terminals, scan):
        rows = []
        for terminal_id, terminal in terminals.items():
            stats = scan["per_terminal"][terminal_id]
            holes = _holes(self.conn, terminal_id, terminal["acked_seq"], terminal["max_seq"])
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
                "since_last_sync_ms": None if last_sync_ms is None else self.now_ms - last_sync_ms,
                "clock_offset_ms": terminal["clock_offset_ms"],
                "offline_records": stats["offline_records"],
                "offline_periods": [list(p) for p in stats["periods"][:MAX_OFFLINE_PERIODS_LISTED]],
                "offline_period_count": len(stats["periods"]),
                "silent": terminal["status"] == "active" and stats["records"] == 0
                and (last_sync_ms is None or last_sync_ms < self.start_ms),
            })
        return rows

    def _anomalies(self, scan, terminals):
        conn = self.conn
        negative = []
        for (account_id,) in conn.execute(
                "SELECT DISTINCT ref FROM deny_entries WHERE version > ? AND version <= ? AND kind = ? AND active = 1 "
                "AND reason = ? ORDER BY ref", (self.previous[2], self.watermarks[2], protocol.DENY_ACCOUNT,
                                                protocol.DENY_REASON_NEGATIVE)):
            wallets = dict(conn.execute(
                "SELECT la.wallet, b.balance_fen FROM ledger_accounts la JOIN balances b ON b.ledger_account_id = la.id "
                "WHERE la.account_id = ?", (account_id,)))
            flag = conn.execute("SELECT in_debt FROM accounts WHERE id = ?", (account_id,)).fetchone()
            negative.append({"account_id": account_id, "wallets_fen": wallets,
                             "blocked": bool(flag and flag[0])})
        clones = []
        for (card, generation), finding in sorted(scan["clones"].items()):
            clones.append(self._deny_clone(card, generation, finding))
        reasons = {}
        for terminal_id, seq, _amount in scan["unbooked"][:MAX_LISTED]:
            row = conn.execute("SELECT reason FROM record_anomalies WHERE terminal_id = ? AND seq = ?",
                               (terminal_id, seq)).fetchone()
            reasons[(terminal_id, seq)] = row[0] if row else "unbooked"
        return {
            "negative_accounts": negative[:MAX_LISTED],
            "negative_account_count": len(negative),
            "cloned_cards": clones[:MAX_LISTED],
            "cloned_card_count": len(clones),
            "revoked_terminal_records": [{"terminal_id": t, "seq": s, "time_ms": tm, "revoked_ms": r}
                                         for t, s, tm, r in scan["revoked"][:MAX_LISTED]],
            "revoked_terminal_record_count": len(scan["revoked"]),
            "impossible_times": [{"terminal_id": t, "seq": s, "time_ms": tm, "received_ms": r}
                                 for t, s, tm, r in scan["impossible"][:MAX_LISTED]],
            "impossible_time_count": len(scan["impossible"]),
            "unbooked_records": [{"terminal_id": t, "seq": s, "amount_fen": a, "reason": reasons.get((t, s))}
                                 for t, s, a in scan["unbooked"][:MAX_LISTED]],
            "unbooked_record_count": len(scan["unbooked"]),
            "late_records": [{"terminal_id": t, "seq": s, "own_day": day_text(own), "merchant_id": m,
                              "amount_fen": a} for t, s, _d, own, m, a in scan["late"][:MAX_LISTED]],
        }

    def _card_counter_gaps(self, terminals, settled):
        """Tap counters cards skipped, still missing at this close, each with its reason (module text)."""
        notes = self.conn.execute(
            "SELECT card_number, generation, kind, expected, seen, terminal_id, seq, noticed_ms FROM counter_anomalies "
            "WHERE id > ? AND id <= ? AND kind IN ('gap', 'late') ORDER BY id LIMIT ?",
            (self.counter_floor, self.watermarks[1], MAX_GAP_NOTES + 1)).fetchall()
        truncated = len(notes) > MAX_GAP_NOTES
        filled = {}             # (card, generation) -> counters that arrived late
        for card, generation, kind, _expected, seen, _terminal_id, _seq, _noticed_ms in notes[:MAX_GAP_NOTES]:
            if kind == "late":
                filled.setdefault((card, generation), set()).add(seen)
        readiness = _readiness(terminals)
        gaps = []
        for card, generation, kind, expected, seen, terminal_id, seq, noticed_ms in notes[:MAX_GAP_NOTES]:
            if kind != "gap" or not _in_ranges(settled.get(terminal_id, ()), seq):
                continue         # not revealed by a record this close settles: an earlier or later close's
            runs = _missing_runs(expected, seen - 1, filled.get((card, generation), ()))
            if not runs:
                continue
            waiting = _waiting_terminals(readiness, terminals, terminal_id, seq, noticed_ms)
            reason = GAP_PENDING if waiting else GAP_TORN_TAP
            for low, high in runs:
                gaps.append((card, generation, low, high, terminal_id, seq, noticed_ms, reason, waiting))
        by_reason = {reason: 0 for reason in GAP_REASONS}
        for gap in gaps:
            by_reason[gap[7]] += 1
        # pending first: those are the ones someone has to chase
        gaps.sort(key=lambda gap: (gap[7] != GAP_PENDING, gap[0], gap[1], gap[2]))
        rows = []
        for card, generation, low, high, terminal_id, seq, noticed_ms, reason, waiting in gaps[:MAX_LISTED]:
            account = self.conn.execute("SELECT account_id FROM cards WHERE card_number = ? AND generation = ?",
                                        (card, generation)).fetchone()
            rows.append({"card_number": card, "generation": generation,
                         "account_id": account[0] if account else None, "from_counter": low, "to_counter": high,
                         "missing": high - low + 1, "terminal_id": terminal_id, "seq": seq,
                         "noticed_ms": noticed_ms, "reason": reason, "waiting_terminals": waiting})
        return {"count": len(gaps), "missing_taps": sum(gap[3] - gap[2] + 1 for gap in gaps),
                "by_reason": by_reason, "rows": rows, "notes_truncated": truncated}

    def _deny_clone(self, card, generation, finding):
        """Deny a card suspected cloned (once); returns its report row."""
        conn = self.conn
        row = conn.execute("SELECT account_id, status FROM cards WHERE card_number = ? AND generation = ?",
                           (card, generation)).fetchone()
        account_id, status = (row[0], row[1]) if row else (None, None)
        denied_now = status == "active"
        if denied_now:
            conn.execute("UPDATE cards SET status = 'frozen' WHERE card_number = ? AND generation = ?",
                         (card, generation))
            add_deny_entries(conn, [(protocol.DENY_CARD, protocol.card_deny_ref(card, generation), 1,
                                     protocol.DENY_REASON_FROZEN)], self.now_ms)
        return {"card_number": card, "generation": generation, "account_id": account_id,
                "kinds": sorted(finding["kinds"]), "taps": finding["taps"], "denied": status != "active" or denied_now,
                "card_status_before": status}

    def _invariants(self, transfers, merchants, merchant_rows, scan):
        conn = self.conn
        closing = {}
        for kind, balance_fen in conn.execute(
                "SELECT la.kind, sum(b.balance_fen) FROM balances b JOIN ledger_accounts la ON la.id = b.ledger_account_id "
                "GROUP BY la.kind"):
            closing[kind] = balance_fen
        previous_report = json.loads(self.previous[4]) if self.previous[4] else None
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
        mismatches = self._window_balance_check(transfers["changes"])
        trial_fen = _max(conn, "SELECT sum(balance_fen) FROM balances")
        merchant_checks = self._merchant_checks(transfers, merchants, merchant_rows, scan, previous_report)
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

    def _window_balance_check(self, changes):
        """The accounts this close's transfer window touched (`changes` {ledger_id: signed fen}): the
        cached balance must be the balance derived at the previous close (finance_ledger_baseline,
        built from transfers only) plus the window's sums. Costs what the window touched, not all of
        history; every other cached balance is covered by the per-kind sums here and by the full
        check after the commit (verify_ledger). Moves the baseline on to this close's watermark.
        Returns [(ledger_id, kind, cached_fen, derived_fen)] of the accounts that disagree."""
        conn = self.conn
        touched = sorted(changes)
        baseline, cached = {}, {}
        for start in range(0, len(touched), _IN_CHUNK):
            chunk = touched[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            baseline.update(conn.execute("SELECT ledger_account_id, balance_fen FROM finance_ledger_baseline "
                                         "WHERE ledger_account_id IN (%s)" % marks, chunk))
            cached.update(conn.execute("SELECT ledger_account_id, balance_fen FROM balances "
                                       "WHERE ledger_account_id IN (%s)" % marks, chunk))
        derived = {ledger_id: baseline.get(ledger_id, 0) + changes[ledger_id] for ledger_id in touched}
        conn.executemany("INSERT INTO finance_ledger_baseline (ledger_account_id, balance_fen) VALUES (?, ?) "
                         "ON CONFLICT (ledger_account_id) DO UPDATE SET balance_fen = excluded.balance_fen",
                         derived.items())
        wrong = [ledger_id for ledger_id in touched if cached.get(ledger_id, 0) != derived[ledger_id]]
        kinds = {}
        for start in range(0, len(wrong), _IN_CHUNK):
            chunk = wrong[start:start + _IN_CHUNK]
            kinds.update(conn.execute("SELECT id, kind FROM ledger_accounts WHERE id IN (%s)"
                                      % ",".join("?" * len(chunk)), chunk))
        return [(ledger_id, kinds.get(ledger_id, "?"), cached.get(ledger_id, 0), derived[ledger_id])
                for ledger_id in wrong]

    def _merchant_checks(self, transfers, merchants, merchant_rows, scan, previous_report):
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

    # -- storing ----------------------------------------------------------------------------------

    def _store(self, report, scan):
        conn = self.conn
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
        conn.execute("INSERT INTO finance_days (day_number, day, closed_ms, transfer_watermark, counter_anomaly_watermark, "
                     "deny_watermark, record_anomaly_watermark, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (self.day, day_text(self.day), self.now_ms) + self.watermarks
                     + (json.dumps(report, ensure_ascii=False, sort_keys=True),))
        from sync_server.finance import channel_statements
        channel_statements.match_pending(conn, self.day)


def _add_sales(records, sales):
    """Per-merchant figures of the terminal records plus those of the sales without a record."""
    parts = [part for part in (records, sales) if part is not None]
    if not parts:
        return 0, 0, 0, 0, [0] * 24, [0] * 24
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts), sum(p[3] for p in parts),
            [sum(p[4][h] for p in parts) for h in range(24)], [sum(p[5][h] for p in parts) for h in range(24)])


def _in_ranges(ranges, seq):
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


def _readiness(terminals):
    """[(ready_ms, terminal_id)] of the active terminals, ascending: ready_ms is the last sync after
    which the server held everything the terminal had journaled (no open seq gap, nothing more to
    send), -1 when that is not so now."""
    order = []
    for terminal_id, terminal in terminals.items():
        if terminal["status"] != "active":
            continue     # a revoked terminal's uploads are refused: nothing more can come from it
        behind = terminal["max_seq"] > terminal["acked_seq"] or (
            terminal["journal_last_seq"] is not None and terminal["journal_last_seq"] > terminal["acked_seq"])
        last_sync_ms = terminal["last_sync_ms"]
        order.append((-1 if behind or last_sync_ms is None else last_sync_ms, terminal_id))
    order.sort()
    return order


def _waiting_terminals(readiness, terminals, revealed_by, revealed_seq, noticed_ms):
    """Terminals that may still hold a tap made before the one at (revealed_by, revealed_seq),
    noticed at noticed_ms: ids, at most MAX_WAITING_LISTED (empty: every terminal sent all)."""
    waiting = []
    for ready_ms, terminal_id in readiness:
        if ready_ms > noticed_ms:
            break        # ascending: every terminal from here on synced fully after the gap was seen
        terminal = terminals[terminal_id]
        if terminal_id == revealed_by:
            if terminal["acked_seq"] >= revealed_seq:
                continue     # it sent everything older than the revealing record
        elif terminal["created_ms"] > noticed_ms:
            continue         # registered after the tap: it cannot hold it
        waiting.append(terminal_id)
        if len(waiting) >= MAX_WAITING_LISTED:
            break
    return waiting


def _missing_runs(low, high, filled):
    """Contiguous runs of low..high without the counters in `filled` (iterates `filled`, not the range)."""
    runs = []
    for counter in sorted(c for c in filled if low <= c <= high):
        if counter > low:
            runs.append((low, counter - 1))
        low = counter + 1
    if low <= high:
        runs.append((low, high))
    return runs


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
    for start in range(0, len(transfer_ids), _IN_CHUNK):
        chunk = transfer_ids[start:start + _IN_CHUNK]
        found.update(conn.execute("SELECT transfer_id, order_id FROM recharge_orders WHERE transfer_id IN (%s)"
                                  % ",".join("?" * len(chunk)), chunk))
    return found
