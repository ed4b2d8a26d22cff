"""Card tap-counter gaps (DESIGN.md section 3) still missing at a close, each with its reason.

The ingest notes a gap when a card's counter skips (counters expected..seen-1 never seen), and a late
note when a lower counter arrives afterwards. A gap belongs to the close that settles the record
which revealed it; late notes up to the close fill it (what they fill is not a gap any more). What
stays missing gets a reason from what the server knows at the close: when some active terminal may
still hold the record (it has an open seq gap, had more to send at its last sync, or has not synced
since the gap was noticed) it is `pending`; otherwise every terminal has sent everything it journaled
before the revealing tap, so no record exists: the card was counted but the tap never journaled
(pulled after the count, the terminal said 请重新刷卡 and charged nothing), `torn_tap`. The revealing
terminal itself has sent everything older once its acked_seq reaches the revealing seq. Any active
terminal counts as one the card could have used (a card works at every window).

Limits: the ingest notes no gap below the first counter it sees of a card, so a torn first tap (or
one torn just before a record that arrives late below that first counter) is not reported; a sync
request in flight for longer than the gap took to be noticed may count its terminal as having sent
everything.
"""
from sync_server.finance import settlement
from sync_server.finance.close_window import MAX_LISTED

MAX_GAP_NOTES = 200000             # gap and late counter notes read by one close
MAX_WAITING_LISTED = 10            # terminals named per pending card-counter gap
GAP_TORN_TAP = "torn_tap"          # counted on the card, never journaled: nothing charged
GAP_PENDING = "pending"            # a terminal has not sent everything yet
GAP_REASONS = (GAP_TORN_TAP, GAP_PENDING)


def report_section(window, terminals, settled):
    """Tap counters cards skipped, still missing at this close, each with its reason (module text)."""
    notes = window.conn.execute(
        "SELECT card_number, generation, kind, expected, seen, terminal_id, seq, noticed_ms FROM counter_anomalies "
        "WHERE id > ? AND id <= ? AND kind IN ('gap', 'late') ORDER BY id LIMIT ?",
        (window.counter_floor, window.watermarks[1], MAX_GAP_NOTES + 1)).fetchall()
    truncated = len(notes) > MAX_GAP_NOTES
    filled = {}             # (card, generation) -> counters that arrived late
    for card, generation, kind, _expected, seen, _terminal_id, _seq, _noticed_ms in notes[:MAX_GAP_NOTES]:
        if kind == "late":
            filled.setdefault((card, generation), set()).add(seen)
    readiness = _readiness(terminals)
    gaps = []
    for card, generation, kind, expected, seen, terminal_id, seq, noticed_ms in notes[:MAX_GAP_NOTES]:
        if kind != "gap" or not settlement.in_ranges(settled.get(terminal_id, ()), seq):
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
        account = window.conn.execute("SELECT account_id FROM cards WHERE card_number = ? AND generation = ?",
                                    (card, generation)).fetchone()
        rows.append({"card_number": card, "generation": generation,
                     "account_id": account[0] if account else None, "from_counter": low, "to_counter": high,
                     "missing": high - low + 1, "terminal_id": terminal_id, "seq": seq,
                     "noticed_ms": noticed_ms, "reason": reason, "waiting_terminals": waiting})
    return {"count": len(gaps), "missing_taps": sum(gap[3] - gap[2] + 1 for gap in gaps),
            "by_reason": by_reason, "rows": rows, "notes_truncated": truncated}


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
