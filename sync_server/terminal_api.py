"""Terminal API: `POST /api/terminal/v1/sync`, `/pin-check`, `/paycode-claim` and the activation
units' `/activation-ticket` and `/activation-tickets`.

Implements the protocol of firmware/core/protocol.py (shapes, signing string, headers) and the rules
of DESIGN.md section 3-4:

- Every request is authenticated (HMAC-SHA256 with the terminal key the server derives again from the
  master key), the request counter must strictly increase, and unknown or revoked terminals are
  refused. Errors are 4xx with a CBOR map {"error", "message"}.
- All-or-nothing per request: everything is checked before anything is written; then one write
  transaction (`BEGIN IMMEDIATE`; on PostgreSQL see pg_store.transaction's `shared`) stores the
  counter, the new records, their transfers, balances,
  account flags and tap-counter notes. A refused request leaves the database byte-for-byte unchanged.
- Each (terminal, seq) is stored at most once; `acked_seq` is the highest contiguous seq held and a
  hole above it becomes a `resend` command (bounded number of ranges). A stored seq sent again with
  other bytes refuses the batch (409 journal_mismatch: the terminal must be provisioned again).
- The answer carries deny and balance deltas since the versions the terminal sent (bounded pages with
  `more`), configuration when the terminal's is older, and `set_time` when its clock is off.
- A POS that is online claims a payment code before it accepts it (`/paycode-claim`, {credential_id,
  cert_serial, time_step, counter, account_id, amount_fen} -> {"result": ok|used|revoked|blocked|
  unknown}): the first claim of a code wins on the whole campus (sync_server/paycode.py).
- Activation units (merchant category 4) upload only activation records, and ask for an old card's
  ticket (`/activation-ticket`) or page through the ticket cache (`/activation-tickets`); no other
  terminal may (sync_server/legacy_migration.py).

Speed matters (a campus lunch rush): storing a batch lives in `sync_server/ingest.py`, split into the
part done before the write lock and the part done under it; the answer is built after the commit
from a few set-based queries.
"""
import hashlib
import hmac
import json
import os

import cbor2
from flask import Blueprint, Response, current_app, g, request

from firmware.core import legacy_card, protocol, records as record_codec, sam as sam_keys
from firmware.core import wallets as wallet_rules
from sync_server import (db as dbmod, ingest, key_rotation, legacy_migration, messages, numbers, paycode, pin_rules,
                         releases, terminal_settings)
from sync_server.business_day import day_of_ms

terminal_api = Blueprint("terminal_api", __name__, url_prefix="/api/terminal/v1")

PIN_CHECK_PATH = "/api/terminal/v1/pin-check"
FIRMWARE_PATH = "/api/terminal/v1/firmware"     # a release's bundle (sync_server/releases.py)
PAYCODE_CLAIM_PATH = "/api/terminal/v1/paycode-claim"
ACTIVATION_TICKET_PATH = "/api/terminal/v1/activation-ticket"
ACTIVATION_TICKETS_PATH = "/api/terminal/v1/activation-tickets"
DENY_PAGE_ENTRIES = 1000
BALANCE_PAGE_ACCOUNTS = 300          # three wallet rows each
MAX_HEALTH_BYTES = 4096
# What a terminal reports in its health map (firmware/apps/store.py health(), sync_client.py): only
# these keys are kept, each bounded, so the stored JSON is always whole and small; the rest is dropped
# (health is advisory, it never refuses a sync).
HEALTH_COUNT_KEYS = ("journal_unacked", "journal_depth", "last_seq", "acked_seq", "seq_jumped_from",
                     "deny_entries", "balance_rows", "uptime_s", "water_sessions", "reader_errors")
# upload_refused: why our last records were refused; alarm: a message code while a terminal is out of
# order (a water dispenser whose meter stalled with the valve open); water_state: its machine's state
HEALTH_TEXT_KEYS = ("firmware", "upload_refused", "alarm", "water_state")
MAX_HEALTH_TEXT_CHARS = 200
# Record times: the 64-bit field must fit SQLite's signed INTEGER with room for the clock correction.
MAX_RECORD_TIME_MS = 2 ** 62
# firmware/core/clock.py stamps records from the clock it reports and never goes backwards, so a record
# is never later than the batch's clock_ms; a day of slack for anything else, beyond that it is corrupt.
MAX_RECORD_AHEAD_OF_CLOCK_MS = 86400 * 1000

# record tuple indexes (records.FIELDS)
_TERMINAL, _SEQ, _TIME, _CATEGORY, _MERCHANT = 3, 4, 5, 9, 12


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


@terminal_api.after_request
def _sign_answer(response):
    """X-Ykt-Answer-Mac: the terminal applies nothing from an answer it cannot authenticate."""
    signing = g.get("answer_signing")
    if signing is not None:
        path, terminal_id, key_version, counter = signing
        message = protocol.answer_signing_string(path, terminal_id, counter, response.status_code,
                                                 response.get_data())
        mac = hmac.new(_terminal_key(terminal_id, key_version), message, hashlib.sha256).hexdigest()
        response.headers[protocol.HEADER_ANSWER_MAC] = mac
    return response


def _cbor_response(obj, status=200):
    return Response(cbor2.dumps(obj), status=status, mimetype=protocol.CONTENT_TYPE)


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
    terminal_id = numbers.parse_int(request.headers.get(protocol.HEADER_TERMINAL), 1, 0xFFFFFFFF)
    counter = numbers.parse_int(request.headers.get(protocol.HEADER_COUNTER), 0, numbers.MAX_ID)
    try:
        mac = bytes.fromhex(request.headers.get(protocol.HEADER_MAC, ""))
    except ValueError:
        mac = None
    if terminal_id is None or counter is None or mac is None:
        raise ApiError(401, "bad_auth")
    # the merchant comes along: its category bounds the records, its ledger account takes the money
    terminal = dbmod.fetch_named(
        conn, "SELECT t.id, t.merchant_id, t.key_version, t.next_key_version, t.status, "
        "m.category AS merchant_category, m.ledger_account_id AS merchant_ledger_id "
        "FROM terminals t JOIN merchants m ON m.id = t.merchant_id WHERE t.id = ?", (terminal_id,))
    if terminal is None:
        raise ApiError(401, "unknown_terminal")
    # The key the terminal says it signed with: the current one, or the next during a rotation
    # (sync_server/key_rotation.py). No header: the current one (terminals before rotation existed).
    version = terminal["key_version"]
    if request.headers.get(protocol.HEADER_KEY_VERSION) is not None:
        version = numbers.parse_int(request.headers.get(protocol.HEADER_KEY_VERSION), 1, 0xFFFF)
        if version is None:
            raise ApiError(401, "bad_auth")
    retired = version < terminal["key_version"]
    never_given = version > terminal["key_version"] and version != terminal["next_key_version"]
    # From here on every answer, refusals included, is signed for this terminal (see _sign_answer) with
    # the key it used, so a terminal holding a retired key can still tell the refusal is real.
    g.answer_signing = (path, terminal_id, terminal["key_version"] if never_given else version, counter)
    if never_given:
        raise ApiError(401, "bad_auth", "key version %d was never given out" % version)
    g.key_version = version
    signing = protocol.signing_string("POST", path, terminal_id, counter, body)
    expected = hmac.new(_terminal_key(terminal_id, version), signing, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise ApiError(401, "bad_mac")
    if retired:
        raise ApiError(401, "key_retired", "key version %d" % version)
    if terminal["status"] != "active":
        raise ApiError(403, "terminal_revoked")
    _check_counter(conn, terminal_id, counter)
    return terminal, counter


def _check_counter(conn, terminal_id, counter):
    row = conn.execute("SELECT last_counter FROM request_counters WHERE terminal_id = ?",
                       (terminal_id,)).fetchone()
    if row is not None and counter <= row[0]:
        raise ApiError(409, "replayed_counter", "last %d" % row[0])


UPSERT_REQUEST_COUNTER_SQL = (
    "INSERT INTO request_counters (terminal_id, last_counter, updated_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (terminal_id) DO UPDATE SET last_counter = excluded.last_counter, updated_ms = excluded.updated_ms")
UPDATE_TERMINAL_SQL = ("UPDATE terminals SET acked_seq = ?, max_seq = ?, last_sync_ms = ?, clock_offset_ms = ?, "
                       "health = ? WHERE id = ?")


def _store_counter(conn, terminal_id, counter, now_ms):
    """Inside the write transaction: check again (another worker may have raced us) and store."""
    _check_counter(conn, terminal_id, counter)
    conn.execute(UPSERT_REQUEST_COUNTER_SQL, (terminal_id, counter, now_ms))


def _decode_map(body):
    try:
        message = cbor2.loads(body)
    except Exception:  # cbor2 raises several types for broken input; all mean the same to us
        raise ApiError(400, "malformed_cbor")
    if not isinstance(message, dict):
        raise ApiError(400, "bad_request", "body must be a CBOR map")
    return message


def _int_field(message, name, default=None, minimum=0, maximum=2 ** 63 - 1):
    value = message.get(name, default)
    if type(value) is not int or value < minimum or value > maximum:
        raise ApiError(400, "bad_request", "field %s must be an integer from %d to %d" % (name, minimum, maximum))
    return value


# --- sync ----------------------------------------------------------------------------------------

def _health_json(health):
    """The known keys of a health map with plausible values, as JSON (see HEALTH_COUNT_KEYS)."""
    kept = {}
    for key in HEALTH_COUNT_KEYS:
        value = health.get(key)
        if type(value) is int and 0 <= value < 2 ** 63:
            kept[key] = value
    for key in HEALTH_TEXT_KEYS:
        value = health.get(key)
        if isinstance(value, str):
            kept[key] = value[:MAX_HEALTH_TEXT_CHARS]
    result = json.dumps(kept, ensure_ascii=False, sort_keys=True)
    assert len(result) <= MAX_HEALTH_BYTES
    return result


def _validate_records(raw_records, terminal, clock_ms, offset_ms):
    """Decode and check every record; returns {seq: (raw, values)}. Raises ApiError on the first bad one.

    A record time must be plausible (see MAX_RECORD_*) before and after the clock correction
    `offset_ms`: anything else would be corrupt, and would not fit the database.
    """
    if not isinstance(raw_records, list):
        raise ApiError(400, "bad_request", "records must be a list")
    if len(raw_records) > protocol.MAX_BATCH_RECORDS:
        raise ApiError(413, "batch_too_large", "limit %d records" % protocol.MAX_BATCH_RECORDS)
    terminal_id = terminal["id"]
    merchant_id = terminal["merchant_id"]
    category = terminal["merchant_category"]
    activation_unit = category == wallet_rules.CATEGORY_ACTIVATION
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
        if (values[1] == record_codec.KIND_ACTIVATION) != activation_unit:
            # an old card's activation moves its money by serial in the migration: only activation
            # units write them, and they write nothing else
            raise ApiError(422, "wrong_category", "record %d: kind %d is not taken from this terminal" % (index, values[1]))
        if activation_unit:
            # the category is the old card's (legacy_card.CATEGORIES) and the merchant field carries the
            # main purse's counter (records.py): checked by decode_tuple and by the migration's booking
            if values[_CATEGORY] not in legacy_card.CATEGORIES:
                raise ApiError(422, "bad_record", "record %d: unknown old card category %d" % (index, values[_CATEGORY]))
        elif values[_MERCHANT] != merchant_id:
            raise ApiError(422, "wrong_merchant", "record %d" % index)
        elif values[_CATEGORY] not in wallet_rules.WALLET_ORDER:
            raise ApiError(422, "bad_record", "record %d: unknown category %d" % (index, values[_CATEGORY]))
        elif values[_CATEGORY] != category:     # else a canteen could spend the wallets kept for utilities
            raise ApiError(422, "wrong_category", "record %d: category %d, the merchant's is %d"
                           % (index, values[_CATEGORY], category))
        time_ms = values[_TIME]
        if time_ms > MAX_RECORD_TIME_MS or time_ms > clock_ms + MAX_RECORD_AHEAD_OF_CLOCK_MS:
            raise ApiError(422, "bad_record", "record %d: time_ms %d is after the terminal clock %d"
                           % (index, time_ms, clock_ms))
        if not 0 <= time_ms + offset_ms <= MAX_RECORD_TIME_MS:
            raise ApiError(422, "bad_record", "record %d: time_ms %d corrected by %d ms is out of range"
                           % (index, time_ms, offset_ms))
        earlier = by_seq.get(values[_SEQ])
        if earlier is not None and earlier[0] != raw:
            raise ApiError(422, "conflicting_records", "seq %d" % values[_SEQ])
        by_seq[values[_SEQ]] = (raw, values)
    return by_seq


def _deny_delta(conn, since_version):
    """Deny entries after `since_version`, one page, and the version the terminal then holds.

    The page and the version come from one read snapshot: read apart, a loss committed between them
    would get a version the terminal is told it already has, and that card would never be denied there.
    """
    with dbmod.read_snapshot(conn):
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
    """Wallet rows of the accounts changed since `since_version`, oldest change first, one page.

    One query: the page of accounts (one extra row tells whether there is more) joined to their wallets;
    when it is empty, the version comes from the same read snapshot (see _deny_delta).
    """
    today = day_of_ms(now_ms)
    with dbmod.read_snapshot(conn):
        rows = conn.execute(
            "SELECT a.id, la.wallet, coalesce(b.balance_fen, 0), "
            "CASE WHEN a.spent_day = ? THEN a.spent_today_fen ELSE 0 END, a.single_limit_fen, a.daily_limit_fen, "
            "a.balance_version FROM (SELECT id, balance_version, single_limit_fen, daily_limit_fen, spent_day, "
            "spent_today_fen FROM accounts WHERE balance_version > ? ORDER BY balance_version LIMIT ?) a "
            "JOIN ledger_accounts la ON la.account_id = a.id LEFT JOIN balances b ON b.ledger_account_id = la.id "
            "ORDER BY a.balance_version, la.id", (today, since_version, BALANCE_PAGE_ACCOUNTS + 1)).fetchall()
        if not rows:
            return {"version": dbmod.counter_value(conn, "balance_version"), "rows": [], "more": False}
    more = False
    if len({row[0] for row in rows}) > BALANCE_PAGE_ACCOUNTS:   # the extra account: drop its rows
        more = True
        extra = rows[-1][0]
        rows = [row for row in rows if row[0] != extra]
    return {"version": rows[-1][6], "rows": [list(row[:6]) for row in rows], "more": more}


def current_config(conn, known_version=None, master_key=None, now_ms=None, terminal_id=None):
    """The configuration terminals run, or None when `known_version` is current already (the common
    case: one counter read per sync instead of every setting). With the master key it carries the
    pay-code public keys a POS verifies certificates with ([[key_id, hex], ...]). With a terminal,
    its own settings (sync_server/terminal_settings.py) over the site's, and its dish menu ("dishes",
    {} when it has none); changing them moves the one counter, so the fast path stays one read."""
    version = dbmod.counter_value(conn, "config_version")
    if known_version is not None and known_version >= version:
        return None
    keys = paycode.terminal_keys(conn, master_key, now_ms if now_ms is not None else dbmod.now_ms()) \
        if master_key is not None else {}
    config = {
        "paycode_keys": [[key_id, public.hex()] for key_id, public in sorted(keys.items())],
        "paycode_skew_ms": dbmod.setting(conn, "paycode_skew_ms"),
        "version": version,
        "sync_interval_ms": dbmod.setting(conn, "sync_interval_ms"),
        "offline_cap_count": dbmod.setting(conn, "offline_cap_count"),
        "offline_cap_amount_fen": dbmod.setting(conn, "offline_cap_amount_fen"),
        "double_tap_window_ms": dbmod.setting(conn, "double_tap_window_ms"),
        # water dispensers (firmware/apps/dispenser_terminal.py); other terminals ignore them
        "water_price_fen_per_litre": dbmod.setting(conn, "water_price_fen_per_litre"),
        "water_max_session_fen": dbmod.setting(conn, "water_max_session_fen"),
        "water_max_grant_fen": dbmod.setting(conn, "water_max_grant_fen"),
        "water_grant_valid_ms": dbmod.setting(conn, "water_grant_valid_ms"),
        "water_max_session_ms": dbmod.setting(conn, "water_max_session_ms"),
        terminal_settings.DISHES: {},
    }
    if terminal_id is not None:
        config.update(terminal_settings.settings_of(conn, terminal_id))
    return config


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
    health_json = _health_json(health)
    offset_ms = received_ms - clock_ms
    by_seq = _validate_records(message.get("records", []), terminal, clock_ms, offset_ms)
    batch = ingest.prepare(conn, terminal_id, terminal["merchant_ledger_id"], by_seq, offset_ms, received_ms)

    # shared: syncs of different terminals store their own rows side by side (pg_store.transaction)
    with dbmod.transaction(conn, shared=True):
        state = conn.execute("SELECT acked_seq, max_seq, status, key_version, next_key_version FROM terminals "
                             "WHERE id = ?" + dbmod.for_update(conn), (terminal_id,)).fetchone()
        _store_counter(conn, terminal_id, counter, received_ms)
        if state[2] != "active":
            raise ApiError(403, "terminal_revoked")
        if g.key_version == state[4]:           # the first sync with the new key: the old one retires
            conn.execute(key_rotation.PROMOTE_SQL, (received_ms, terminal_id, state[4]))
        elif g.key_version != state[3]:         # promoted by a sync that committed since we looked
            raise ApiError(401, "key_retired", "key version %d" % g.key_version)
        try:
            acked_seq, max_seq, holes = ingest.store(conn, batch, state[0], state[1])
        except ingest.JournalMismatch as mismatch:   # rolls back: nothing of the batch is kept
            raise ApiError(409, "journal_mismatch", "seq %d" % mismatch.seq)
        conn.execute(UPDATE_TERMINAL_SQL, (acked_seq, max_seq, received_ms, offset_ms, health_json, terminal_id))
    if batch.stored_mismatches:
        _log_card_mismatches(terminal_id, batch.stored_mismatches)

    answer_ms = dbmod.now_ms()
    commands = [{"op": "resend", "from_seq": low, "to_seq": high} for low, high in holes]
    if abs(offset_ms) > dbmod.setting(conn, "clock_tolerance_ms"):
        commands.append({"op": "set_time", "server_ms": answer_ms})
    firmware = health.get("firmware")
    offer = releases.offer_for(conn, terminal_id, terminal["merchant_category"], firmware) \
        if isinstance(firmware, str) else None
    if offer is not None:
        commands.append(offer)
    rekey_public = message.get("rekey_public")
    if state[4] is not None and g.key_version == state[3] and isinstance(rekey_public, bytes) \
            and len(rekey_public) == protocol.REKEY_PUBLIC_BYTES:
        commands.append(key_rotation.seal_command(current_app.extensions["ykt"].master_key, terminal_id, state[4],
                                                  terminal["merchant_category"], rekey_public))
    with dbmod.read_snapshot(conn):          # the deltas and versions of one committed state
        config = current_config(conn, config_version, current_app.extensions["ykt"].master_key, answer_ms,
                                terminal_id)
        answer = {
            "acked_seq": acked_seq,
            "server_ms": answer_ms,
            "deny": _deny_delta(conn, deny_version),
            "balances": _balance_delta(conn, balance_version, answer_ms),
            "config": config,
            "commands": commands,
        }
    return _cbor_response(answer)


MAX_LOGGED_MISMATCHES = 5


def _log_card_mismatches(terminal_id, mismatches):
    """One warning per batch: a signed record whose card is not the named account's (ingest.py)."""
    listed = ", ".join("seq %d card %d account %d owner %s %d fen" % (seq, card, named, owner, amount_fen)
                       for seq, card, _generation, named, owner, amount_fen in mismatches[:MAX_LOGGED_MISMATCHES])
    current_app.logger.warning("terminal %d flagged: %d records whose card is not the named account's, stored and "
                               "not booked: %s%s", terminal_id, len(mismatches), listed,
                               " ..." if len(mismatches) > MAX_LOGGED_MISMATCHES else "")


@terminal_api.post("/firmware")
def firmware_bundle():
    """The bundle of a release this terminal is offered (the sync answer's update command); the
    terminal checks its signature itself, so this only hands the file over."""
    conn = dbmod.get_db()
    body = _read_body()
    terminal, counter = authenticate(conn, FIRMWARE_PATH, body)
    release_id = _int_field(_decode_map(body), "release_id", minimum=1)
    with dbmod.transaction(conn):
        _store_counter(conn, terminal["id"], counter, dbmod.now_ms())
    path = releases.release_file(conn, current_app.config["DATA_DIR"], terminal["id"], terminal["merchant_category"],
                                 release_id)
    if path is None or not os.path.isfile(path):
        raise ApiError(404, "no_release", "release %d is not offered to this terminal" % release_id)
    with open(path, "rb") as handle:
        return Response(handle.read(), mimetype="application/zip")


@terminal_api.post("/pin-check")
def pin_check():
    now_ms = dbmod.now_ms()
    conn = dbmod.get_db()
    body = _read_body()
    terminal, counter = authenticate(conn, PIN_CHECK_PATH, body)
    message = _decode_map(body)
    account_id = _int_field(message, "account_id", minimum=1)
    # Part of the pin-check message; validated so a malformed request is refused, though the PIN
    # check itself does not depend on the amount.
    _int_field(message, "amount_fen", minimum=1)
    pin = message.get("pin")
    if not isinstance(pin, str):
        raise ApiError(400, "bad_request", "pin must be a string")
    attempt = pin_rules.prepare_pin(conn, account_id, pin, now_ms)    # scrypt, outside the write lock
    with dbmod.transaction(conn):
        _store_counter(conn, terminal["id"], counter, now_ms)
        code = pin_rules.record_pin(conn, account_id, attempt, now_ms)
    answer = {"ok": code == "pin_ok", "code": str(code), "message": "%s / %s" % pin_rules.refusal_texts(code, now_ms)}
    answer.update(pin_rules.feedback(code, now_ms))      # tries_left, or locked_until_ms and retry_after_s
    return _cbor_response(answer)


@terminal_api.post("/paycode-claim")
def paycode_claim():
    """An online POS asks before accepting a payment code: the first claim anywhere wins (module text)."""
    now_ms = dbmod.now_ms()
    conn = dbmod.get_db()
    body = _read_body()
    terminal, counter = authenticate(conn, PAYCODE_CLAIM_PATH, body)
    message = _decode_map(body)
    fields = [_int_field(message, name, minimum=minimum, maximum=0xFFFFFFFF) for name, minimum in (
        ("credential_id", 1), ("cert_serial", 1), ("time_step", 0), ("counter", 0), ("account_id", 1))]
    amount_fen = _int_field(message, "amount_fen", minimum=1, maximum=record_codec.MAX_AMOUNT_FEN)
    with dbmod.transaction(conn):
        _store_counter(conn, terminal["id"], counter, now_ms)
        result = paycode.claim(conn, terminal["id"], *fields, amount_fen=amount_fen, now_ms=now_ms)
    return _cbor_response({"result": result})


def _activation_unit(terminal):
    if terminal["merchant_category"] != wallet_rules.CATEGORY_ACTIVATION:
        raise ApiError(403, "not_activation_unit")


@terminal_api.post("/activation-ticket")
def activation_ticket():
    """An activation unit online asks at a tap: the old serial's new card, and whether a record of
    this serial is booked already ({serial, uid} -> {ticket: {...} or None, recorded}); the card's
    UID is kept the first time (sync_server/legacy_migration.py)."""
    now_ms = dbmod.now_ms()
    conn = dbmod.get_db()
    body = _read_body()
    terminal, counter = authenticate(conn, ACTIVATION_TICKET_PATH, body)
    _activation_unit(terminal)
    message = _decode_map(body)
    serial = _int_field(message, "serial", minimum=1, maximum=legacy_card.SERIAL_MAX)
    uid = message.get("uid")
    if type(uid) is not bytes or len(uid) not in (4, 7):
        raise ApiError(400, "bad_request", "uid must be 4 or 7 bytes")
    with dbmod.transaction(conn):
        _store_counter(conn, terminal["id"], counter, now_ms)
        answer = legacy_migration.ticket(conn, serial, uid, now_ms)
    return _cbor_response(answer)


@terminal_api.post("/activation-tickets")
def activation_tickets():
    """One page of the ticket cache an activation unit keeps for its offline taps ({after_version,
    limit} -> {tickets, version, more})."""
    now_ms = dbmod.now_ms()
    conn = dbmod.get_db()
    body = _read_body()
    terminal, counter = authenticate(conn, ACTIVATION_TICKETS_PATH, body)
    _activation_unit(terminal)
    message = _decode_map(body)
    after = _int_field(message, "after_version", minimum=0)
    limit = _int_field(message, "limit", default=legacy_migration.TICKET_PAGE, minimum=1,
                       maximum=legacy_migration.TICKET_PAGE)
    with dbmod.transaction(conn):
        _store_counter(conn, terminal["id"], counter, now_ms)
    tickets, version, more = legacy_migration.tickets_since(conn, after, limit)
    return _cbor_response({"tickets": tickets, "version": version, "more": more})
