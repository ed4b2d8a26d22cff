"""Terminal API: `POST /api/terminal/v1/sync` and `POST /api/terminal/v1/pin-check`.

Implements the protocol of firmware/core/protocol.py (shapes, signing string, headers) and the rules
of DESIGN.md section 3-4:

- Every request is authenticated (HMAC-SHA256 with the terminal key the server derives again from the
  master key), the request counter must strictly increase, and unknown or revoked terminals are
  refused. Errors are 4xx with a CBOR map {"error", "message"}.
- All-or-nothing per request: everything is checked before anything is written; then one
  `BEGIN IMMEDIATE` transaction stores the counter, the new records, their transfers, balances,
  account flags and tap-counter notes. A refused request leaves the database byte-for-byte unchanged.
- Each (terminal, seq) is stored at most once; `acked_seq` is the highest contiguous seq held and a
  hole above it becomes a `resend` command (bounded number of ranges).
- The answer carries deny and balance deltas since the versions the terminal sent (bounded pages with
  `more`), configuration when the terminal's is older, and `set_time` when its clock is off.

Speed matters (a campus lunch rush): per batch a fixed handful of statements, executemany for rows,
and involved balances loaded once. Per record, only decoding and dict arithmetic.
"""
import hashlib
import hmac
import json

import cbor2
from flask import Blueprint, current_app, request, Response

from firmware.core import protocol, records as record_codec, sam as sam_keys
from firmware.core import wallets as wallet_rules
from sync_server import db as dbmod, ledger, messages, pins
from sync_server.ledger_store import SqliteStore, add_deny_entries, REASON_NEGATIVE, REASON_FOUND

terminal_api = Blueprint("terminal_api", __name__, url_prefix="/api/terminal/v1")

PIN_CHECK_PATH = "/api/terminal/v1/pin-check"
DENY_PAGE_ENTRIES = 1000
BALANCE_PAGE_ACCOUNTS = 300          # three wallet rows each
MAX_RESEND_RANGES = 4
MAX_GAP_SCAN_ROWS = 20000            # bound on the scan for holes above acked_seq
MAX_HEALTH_BYTES = 4096
BEIJING_OFFSET_MS = 8 * 3600 * 1000
DAY_MS = 86400 * 1000

# record tuple indexes (records.FIELDS)
_KIND, _FLAGS, _TERMINAL, _SEQ, _TIME, _CARD, _ACCOUNT, _GENERATION, _CATEGORY, _COUNTER, _AMOUNT, \
    _MERCHANT = range(1, 13)


class ApiError(Exception):
    def __init__(self, status, code, detail=None):
        Exception.__init__(self, code)
        self.status = status
        self.code = code
        self.detail = detail


@terminal_api.errorhandler(ApiError)
def _api_error(error):
    message = messages.both(error.code)
    if error.detail:
        message = "%s: %s" % (message, error.detail)
    return _cbor_response({"error": error.code, "message": message}, error.status)


def _cbor_response(obj, status=200):
    return Response(cbor2.dumps(obj), status=status, mimetype=protocol.CONTENT_TYPE)


def beijing_day(time_ms):
    return (time_ms + BEIJING_OFFSET_MS) // DAY_MS


# --- authentication ------------------------------------------------------------------------------

def _terminal_key(terminal_id, key_version):
    state = current_app.extensions["ykt"]
    cache = state.terminal_keys
    key = cache.get((terminal_id, key_version))
    if key is None:
        if len(cache) >= state.MAX_CACHED_TERMINAL_KEYS:
            cache.clear()
        key = cache[(terminal_id, key_version)] = sam_keys.terminal_key(state.master_key, terminal_id,
                                                                          key_version)
    return key


def _read_body():
    length = request.content_length
    if length is None or length > protocol.MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", "limit %d bytes" % protocol.MAX_BODY_BYTES)
    body = request.stream.read(protocol.MAX_BODY_BYTES + 1)
    if len(body) > protocol.MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", "limit %d bytes" % protocol.MAX_BODY_BYTES)
    return body


def authenticate(conn, path, body):
    """Check headers, MAC, terminal status and counter; returns (terminal row, counter)."""
    try:
        terminal_id = int(request.headers[protocol.HEADER_TERMINAL])
        counter = int(request.headers[protocol.HEADER_COUNTER])
        mac = bytes.fromhex(request.headers[protocol.HEADER_MAC])
    except (KeyError, ValueError):
        raise ApiError(401, "bad_auth")
    if not (0 < terminal_id <= 0xFFFFFFFF and 0 <= counter < 2 ** 63):
        raise ApiError(401, "bad_auth")
    terminal = dbmod.fetch_named(conn, "SELECT id, merchant_id, key_version, status FROM terminals WHERE id = ?",
                                 (terminal_id,))
    if terminal is None:
        raise ApiError(401, "unknown_terminal")
    signing = protocol.signing_string("POST", path, terminal_id, counter, body)
    expected = hmac.new(_terminal_key(terminal_id, terminal["key_version"]), signing, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise ApiError(401, "bad_mac")
    if terminal["status"] != "active":
        raise ApiError(403, "terminal_revoked")
    _check_counter(conn, terminal_id, counter)
    return terminal, counter


def _check_counter(conn, terminal_id, counter):
    row = conn.execute("SELECT last_counter FROM request_counters WHERE terminal_id = ?",
                       (terminal_id,)).fetchone()
    if row is not None and counter <= row[0]:
        raise ApiError(409, "replayed_counter", "last %d" % row[0])


def _store_counter(conn, terminal_id, counter, now_ms):
    """Inside the write transaction: check again (another worker may have raced us) and store."""
    _check_counter(conn, terminal_id, counter)
    conn.execute("INSERT INTO request_counters (terminal_id, last_counter, updated_ms) VALUES (?, ?, ?) "
                 "ON CONFLICT (terminal_id) DO UPDATE SET last_counter = excluded.last_counter, "
                 "updated_ms = excluded.updated_ms", (terminal_id, counter, now_ms))


def _decode_map(body):
    try:
        message = cbor2.loads(body)
    except Exception:  # cbor2 raises several types for broken input; all mean the same to us
        raise ApiError(400, "malformed_cbor")
    if not isinstance(message, dict):
        raise ApiError(400, "bad_request", "body must be a CBOR map")
    return message


def _int_field(message, name, default=None, minimum=0):
    value = message.get(name, default)
    if type(value) is not int or value < minimum or value >= 2 ** 63:
        raise ApiError(400, "bad_request", "field %s must be an integer >= %d" % (name, minimum))
    return value


# --- sync ----------------------------------------------------------------------------------------

def _validate_records(raw_records, terminal):
    """Decode and check every record; returns {seq: (raw, values)}. Raises ApiError on the first bad one."""
    if not isinstance(raw_records, list):
        raise ApiError(400, "bad_request", "records must be a list")
    if len(raw_records) > protocol.MAX_BATCH_RECORDS:
        raise ApiError(413, "batch_too_large", "limit %d records" % protocol.MAX_BATCH_RECORDS)
    terminal_id = terminal["id"]
    merchant_id = terminal["merchant_id"]
    decode = record_codec.decode_tuple
    by_seq = {}
    for index, raw in enumerate(raw_records):
        if type(raw) is not bytes:
            raise ApiError(400, "bad_request", "record %d is not a byte string" % index)
        try:
            values = decode(raw)
        except record_codec.RecordError as error:
            raise ApiError(422, "bad_record", "record %d: %s" % (index, error))
        if values[_TERMINAL] != terminal_id:
            raise ApiError(422, "wrong_terminal", "record %d" % index)
        if values[_MERCHANT] != merchant_id:
            raise ApiError(422, "wrong_merchant", "record %d" % index)
        if values[_CATEGORY] not in wallet_rules.WALLET_ORDER:
            raise ApiError(422, "bad_record", "record %d: unknown category %d" % (index, values[_CATEGORY]))
        earlier = by_seq.get(values[_SEQ])
        if earlier is not None and earlier[0] != raw:
            raise ApiError(422, "conflicting_records", "seq %d" % values[_SEQ])
        by_seq[values[_SEQ]] = (raw, values)
    return by_seq


def _new_seqs(conn, terminal_id, acked_seq, max_seq, seqs):
    """Which of `seqs` are not stored yet. Anything <= acked_seq is stored; above it, ask only when
    an earlier out-of-order upload left rows there (max_seq > acked_seq)."""
    candidates = [seq for seq in seqs if seq > acked_seq]
    if not candidates or max_seq <= acked_seq:
        return candidates
    low, high = min(candidates), max(candidates)
    stored = {row[0] for row in conn.execute(
        "SELECT seq FROM terminal_records WHERE terminal_id = ? AND seq BETWEEN ? AND ?",
        (terminal_id, low, high))}
    return [seq for seq in candidates if seq not in stored]


def _advance_acked(conn, terminal_id, acked_seq, max_seq):
    """Highest contiguous seq and the holes above it (at most MAX_RESEND_RANGES ranges)."""
    if max_seq <= acked_seq:
        return acked_seq, []
    rows = conn.execute("SELECT seq FROM terminal_records WHERE terminal_id = ? AND seq > ? ORDER BY seq "
                        "LIMIT ?", (terminal_id, acked_seq, MAX_GAP_SCAN_ROWS))
    expected = acked_seq + 1
    contiguous = True
    holes = []
    for (seq,) in rows:
        if seq != expected:
            contiguous = False
            if len(holes) < MAX_RESEND_RANGES:
                holes.append((expected, seq - 1))
        if contiguous:
            acked_seq = seq
        expected = seq + 1
    return acked_seq, holes


def _note_tap_counters(conn, new_rows, now_ms):
    """Remember the highest tap counter per card; note repeats, gaps and late arrivals."""
    refs = {}
    for values in new_rows:
        refs.setdefault(values[_CARD] * 256 + values[_GENERATION], []).append(values)
    ref_list = list(refs)
    known = {}
    for start in range(0, len(ref_list), 900):
        chunk = ref_list[start:start + 900]
        for ref, max_counter, seen in conn.execute(
                "SELECT card_ref, max_tap_counter, taps_seen FROM card_counters WHERE card_ref IN (%s)"
                % ",".join("?" * len(chunk)), chunk):
            known[ref] = [max_counter, seen]
    anomalies = []
    for ref, taps in refs.items():
        state = known.get(ref)
        for values in taps:
            counter = values[_COUNTER]
            if state is None:
                state = known[ref] = [counter, 1]
                continue
            expected = state[0] + 1
            if counter == state[0]:
                kind = "repeat"
            elif counter > expected:
                kind = "gap"
            elif counter < state[0]:
                kind = "late"
            else:
                kind = None
            if kind is not None:
                anomalies.append((values[_CARD], values[_GENERATION], kind, expected, counter,
                                  values[_TERMINAL], values[_SEQ], now_ms))
            if counter > state[0]:
                state[0] = counter
            state[1] += 1
    conn.executemany("INSERT INTO card_counters (card_ref, max_tap_counter, taps_seen) VALUES (?, ?, ?) "
                     "ON CONFLICT (card_ref) DO UPDATE SET max_tap_counter = excluded.max_tap_counter, "
                     "taps_seen = excluded.taps_seen", [(ref, known[ref][0], known[ref][1]) for ref in refs])
    if anomalies:
        conn.executemany("INSERT INTO counter_anomalies (card_number, generation, kind, expected, seen, "
                         "terminal_id, seq, noticed_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", anomalies)


def _book(conn, new_rows, offset_ms, merchant_ledger_id, now_ms):
    """Post purchases of new records; update spending, debt flags and balance versions of accounts."""
    account_ids = sorted({values[_ACCOUNT] for values in new_rows})
    accounts = {}
    for start in range(0, len(account_ids), 900):
        chunk = account_ids[start:start + 900]
        for row in conn.execute("SELECT id, in_debt, spent_day, spent_today_fen FROM accounts WHERE id IN (%s)"
                                % ",".join("?" * len(chunk)), chunk):
            accounts[row[0]] = [row[1], row[2], row[3]]
    purchases = []
    unbooked = []
    today = beijing_day(now_ms)
    for values in new_rows:
        account = accounts.get(values[_ACCOUNT])
        if account is None:
            unbooked.append((values[_TERMINAL], values[_SEQ], "unknown_account", now_ms))
            continue
        time_ms = values[_TIME] + offset_ms
        purchases.append(ledger.Purchase(values[_TERMINAL], values[_SEQ], time_ms, values[_ACCOUNT],
                                         values[_CATEGORY], values[_AMOUNT], merchant_ledger_id))
        day = beijing_day(time_ms)
        if day == today:
            if account[1] != today:
                account[1], account[2] = today, 0
            account[2] += values[_AMOUNT]
    if unbooked:
        conn.executemany("INSERT INTO record_anomalies (terminal_id, seq, reason, noticed_ms) VALUES (?, ?, ?, ?)",
                         unbooked)
    _transfers, balances, wallet_ids = ledger.book_purchases(SqliteStore(conn), purchases)
    in_debt, clear = ledger.accounts_in_debt(balances, wallet_ids)
    deny = []
    for account_id in in_debt:
        if not accounts[account_id][0]:
            accounts[account_id][0] = 1
            deny.append((protocol.DENY_ACCOUNT, account_id, 1, REASON_NEGATIVE))
    for account_id in clear:
        if accounts[account_id][0]:   # cannot happen through purchases alone, kept for symmetry
            accounts[account_id][0] = 0
            deny.append((protocol.DENY_ACCOUNT, account_id, 0, REASON_FOUND))
    if deny:
        add_deny_entries(conn, deny, now_ms)
    booked_accounts = sorted(accounts)
    if booked_accounts:
        first_version = dbmod.next_counter(conn, "balance_version", len(booked_accounts))
        conn.executemany("UPDATE accounts SET in_debt = ?, spent_day = ?, spent_today_fen = ?, balance_version = ? "
                         "WHERE id = ?",
                         [(accounts[a][0], accounts[a][1], accounts[a][2], first_version + i, a)
                          for i, a in enumerate(booked_accounts)])
    return {(t, s) for t, s, _r, _n in unbooked}


def _deny_delta(conn, since_version):
    rows = conn.execute("SELECT version, kind, ref, active, reason FROM deny_entries WHERE version > ? "
                        "ORDER BY version LIMIT ?", (since_version, DENY_PAGE_ENTRIES + 1)).fetchall()
    more = len(rows) > DENY_PAGE_ENTRIES
    rows = rows[:DENY_PAGE_ENTRIES]
    if rows:
        version = rows[-1][0]
    else:
        version = conn.execute("SELECT coalesce(max(version), 0) FROM deny_entries").fetchone()[0]
    return {"version": version, "entries": [[r[1], r[2], bool(r[3]), r[4]] for r in rows], "more": more}


def _balance_delta(conn, since_version, now_ms):
    accounts = conn.execute("SELECT id, balance_version, single_limit_fen, daily_limit_fen, spent_day, "
                            "spent_today_fen FROM accounts WHERE balance_version > ? ORDER BY balance_version "
                            "LIMIT ?", (since_version, BALANCE_PAGE_ACCOUNTS + 1)).fetchall()
    more = len(accounts) > BALANCE_PAGE_ACCOUNTS
    accounts = accounts[:BALANCE_PAGE_ACCOUNTS]
    if not accounts:
        return {"version": dbmod.counter_value(conn, "balance_version"), "rows": [], "more": False}
    ids = [row[0] for row in accounts]
    wallet_rows = conn.execute(
        "SELECT la.account_id, la.wallet, coalesce(b.balance_fen, 0) FROM ledger_accounts la "
        "LEFT JOIN balances b ON b.ledger_account_id = la.id WHERE la.account_id IN (%s) "
        "ORDER BY la.account_id, la.id" % ",".join("?" * len(ids)), ids).fetchall()
    today = beijing_day(now_ms)
    info = {row[0]: (row[5] if row[4] == today else 0, row[2], row[3]) for row in accounts}
    rows = [[account_id, wallet, balance_fen, info[account_id][0], info[account_id][1], info[account_id][2]]
            for account_id, wallet, balance_fen in wallet_rows]
    return {"version": accounts[-1][1], "rows": rows, "more": more}


def current_config(conn):
    return {
        "version": dbmod.counter_value(conn, "config_version"),
        "sync_interval_ms": dbmod.setting(conn, "sync_interval_ms"),
        "offline_cap_count": dbmod.setting(conn, "offline_cap_count"),
        "offline_cap_amount_fen": dbmod.setting(conn, "offline_cap_amount_fen"),
        "double_tap_window_ms": dbmod.setting(conn, "double_tap_window_ms"),
    }


@terminal_api.post("/sync")
def sync():
    received_ms = dbmod.now_ms()
    conn = dbmod.get_db()
    body = _read_body()
    terminal, counter = authenticate(conn, protocol.SYNC_PATH, body)
    message = _decode_map(body)
    terminal_id = terminal["id"]
    if message.get("terminal_id") != terminal_id:
        raise ApiError(400, "bad_request", "terminal_id differs from the authenticated terminal")
    clock_ms = _int_field(message, "clock_ms")
    deny_version = _int_field(message, "deny_version", 0)
    balance_version = _int_field(message, "balance_version", 0)
    config_version = _int_field(message, "config_version", 0)
    health = message.get("health") or {}
    if not isinstance(health, dict):
        raise ApiError(400, "bad_request", "health must be a map")
    health_json = json.dumps(health, ensure_ascii=False, default=str)[:MAX_HEALTH_BYTES]
    by_seq = _validate_records(message.get("records", []), terminal)
    offset_ms = received_ms - clock_ms
    merchant_ledger_id = conn.execute("SELECT ledger_account_id FROM merchants WHERE id = ?",
                                      (terminal["merchant_id"],)).fetchone()[0]

    with dbmod.transaction(conn):
        _store_counter(conn, terminal_id, counter, received_ms)
        state = dbmod.fetch_named(conn, "SELECT acked_seq, max_seq, status FROM terminals WHERE id = ?",
                                  (terminal_id,))
        if state["status"] != "active":
            raise ApiError(403, "terminal_revoked")
        new = sorted(_new_seqs(conn, terminal_id, state["acked_seq"], state["max_seq"], by_seq))
        new_rows = [by_seq[seq][1] for seq in new]
        unbooked = _book(conn, new_rows, offset_ms, merchant_ledger_id, received_ms) if new else set()
        conn.executemany(
            "INSERT INTO terminal_records (terminal_id, seq, raw, kind, flags, time_ms, corrected_time_ms, "
            "card_number, account_id, card_generation, category, tap_counter, amount_fen, merchant_id, "
            "received_ms, booked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(terminal_id, v[_SEQ], by_seq[v[_SEQ]][0], v[_KIND], v[_FLAGS], v[_TIME], v[_TIME] + offset_ms,
              v[_CARD], v[_ACCOUNT], v[_GENERATION], v[_CATEGORY], v[_COUNTER], v[_AMOUNT], v[_MERCHANT],
              received_ms, 0 if (terminal_id, v[_SEQ]) in unbooked else 1) for v in new_rows])
        if new:
            _note_tap_counters(conn, new_rows, received_ms)
        max_seq = max([state["max_seq"]] + new)
        acked_seq, holes = _advance_acked(conn, terminal_id, state["acked_seq"], max_seq)
        conn.execute("UPDATE terminals SET acked_seq = ?, max_seq = ?, last_sync_ms = ?, clock_offset_ms = ?, "
                     "health = ? WHERE id = ?",
                     (acked_seq, max_seq, received_ms, offset_ms, health_json, terminal_id))

    answer_ms = dbmod.now_ms()
    commands = [{"op": "resend", "from_seq": low, "to_seq": high} for low, high in holes]
    if abs(offset_ms) > dbmod.setting(conn, "clock_tolerance_ms"):
        commands.append({"op": "set_time", "server_ms": answer_ms})
    config = current_config(conn)
    answer = {
        "acked_seq": acked_seq,
        "server_ms": answer_ms,
        "deny": _deny_delta(conn, deny_version),
        "balances": _balance_delta(conn, balance_version, answer_ms),
        "config": config if config_version < config["version"] else None,
        "commands": commands,
    }
    return _cbor_response(answer)


@terminal_api.post("/pin-check")
def pin_check():
    now_ms = dbmod.now_ms()
    conn = dbmod.get_db()
    body = _read_body()
    terminal, counter = authenticate(conn, PIN_CHECK_PATH, body)
    message = _decode_map(body)
    account_id = _int_field(message, "account_id", minimum=1)
    _int_field(message, "amount_fen", minimum=1)
    pin = message.get("pin")
    if not isinstance(pin, str):
        raise ApiError(400, "bad_request", "pin must be a string")
    with dbmod.transaction(conn):
        _store_counter(conn, terminal["id"], counter, now_ms)
        code = pins.check_pin(conn, account_id, pin, now_ms)
    return _cbor_response({"ok": code == "pin_ok", "code": code, "message": messages.both(code)})
