"""The one interface to a dorm meter system (电控系统): crediting a room's meter with a payment.

    MeterGateway           the protocol: credit(meter_id, amount_fen, payment_id, kind) -> gateway_ref
    HttpMeterGateway       JSON over HTTP(S), each request signed (HMAC-SHA256) or with a bearer key,
                           with a timeout and a bounded number of retries of the same request
    load_config(data_dir)  which gateway serves which building: <data_dir>/meter_gateways.json
    enqueue / deliver_due  the outbox that makes a payment reach its meter exactly once

Exactly once. A payment for a room whose building has an online meter system (dorm_buildings.
meter_system) writes a `meter_outbox` row in the same transaction as its ledger transfers
(sync_server/services/electricity.py): both commit or neither. `deliver_due` then sends each due row
with the payment id as the gateway's idempotency key and marks it delivered with the reference the
gateway answers. Sending is at least once (a crash, a timeout or a lost answer after the meter was
credited means the row is sent again); the gateway answers a payment id it already has with the
reference it gave the first time and credits nothing more, so the meter is credited once. A row is
claimed before it is sent (its attempt counted, leased for LEASE_MS), so two delivery loops never send
it at the same time, and a loop killed mid-send leaves it to be sent again after the lease.

Failures: a timeout, a dropped connection or a 5xx (after the client's own quick retries) puts the row
back with a growing pause (FIRST_RETRY_MS doubling up to MAX_RETRY_MS); after MAX_ATTEMPTS, or at once
when the gateway refuses the request (4xx: unknown meter, the same payment id with other details, a
bad key), the row is `failed`: flagged for staff (`ykt hall meter-pending`, `meter-retry`). The money
stays booked; what the meter was not given is the staff's to settle.

Configuration (mode 0600, like the channel secrets), re-read by each delivery pass:

    {"gateways": {"south": {"url": "https://meters.example.edu/api", "key": "...", "auth": "hmac",
                            "timeout_s": 5, "retries": 2}},
     "buildings": {"南1": "south", "南2": "south"},
     "default": "south"}

`auth` is "hmac" (headers X-Meter-Timestamp and X-Meter-Signature: hex HMAC-SHA256 of the key over
"<timestamp>\\n<body>") or "bearer" (Authorization: Bearer <key>). An online building without a gateway
keeps its rows pending (counted as `unconfigured`) until one is configured.

The wire: POST <url>/v1/credits {"payment_id", "meter_id", "kind", "amount_fen"} -> 200
{"payment_id", "ref"}; the same payment id again -> 200 with the same ref; other details under a
known payment id -> 409. simulators/meter_gateway.py is a meter system that speaks it.
"""
import hashlib
import hmac
import json
import logging
import os
import re
import time
import typing

from sync_server import db as dbmod

CONFIG_FILE_NAME = "meter_gateways.json"
CREDIT_PATH = "/v1/credits"
TIMESTAMP_HEADER = "X-Meter-Timestamp"
SIGNATURE_HEADER = "X-Meter-Signature"
AUTH_MODES = ("hmac", "bearer")
MAX_TIMEOUT_S = 30.0
MAX_CLIENT_RETRIES = 3
MAX_REF_CHARS = 64

MAX_ATTEMPTS = 10                   # claims of one row before it is flagged for staff
FIRST_RETRY_MS = 10 * 1000          # the pause after the first failed attempt, doubled after each
MAX_RETRY_MS = 30 * 60 * 1000       # ... up to this: ten attempts span about an hour and a quarter
LEASE_MS = 3 * 60 * 1000            # a claimed row is not sent again before this (a send takes at most
                                    # (retries + 1) x timeout plus pauses: under two minutes)
MAX_ROWS_PER_PASS = 200
MAX_ERROR_CHARS = 200
assert (MAX_CLIENT_RETRIES + 1) * (MAX_TIMEOUT_S + 2) * 1000 < LEASE_MS

STATUS_PENDING, STATUS_DELIVERED, STATUS_FAILED = "pending", "delivered", "failed"

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """The gateway could not be reached or did not answer usably: try again later."""


class GatewayRefused(GatewayError):
    """The gateway answered and refused the credit (4xx): sending it again will not help."""


class ConfigError(ValueError):
    """meter_gateways.json is unreadable, too open or malformed."""


class MeterGateway(typing.Protocol):
    """A dorm meter system: credit `amount_fen` to a meter, once per `payment_id`."""

    def credit(self, meter_id: str, amount_fen: int, payment_id: str, kind: str = "lighting") -> str:
        """Credit the meter and return the gateway's reference for the credit. A payment id the
        gateway has already credited returns the same reference and credits nothing. Raises
        GatewayRefused when the gateway refuses, GatewayError when it could not be asked."""
        ...


def sign(key, timestamp, body):
    """The hex HMAC-SHA256 a request carries in SIGNATURE_HEADER."""
    return hmac.new(key, timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()


class HttpMeterGateway:
    """A meter system over HTTP(S): one POST per credit, JSON both ways."""

    def __init__(self, url, key, auth="hmac", timeout_s=5.0, retries=2, retry_pause_s=0.5, name=None):
        self.url = url.rstrip("/")
        self.key = key.encode() if isinstance(key, str) else bytes(key)
        self.auth = auth
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.retry_pause_s = float(retry_pause_s)
        self.name = name or self.url

    def __repr__(self):                     # never show the key
        return "HttpMeterGateway(%r, auth=%r)" % (self.url, self.auth)

    def _headers(self, body):
        headers = {"Content-Type": "application/json"}
        if self.auth == "bearer":
            headers["Authorization"] = "Bearer " + self.key.decode()
        else:
            timestamp = str(int(time.time() * 1000))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self.key, timestamp, body)
        return headers

    def credit(self, meter_id, amount_fen, payment_id, kind="lighting"):
        import httpx
        body = json.dumps({"payment_id": payment_id, "meter_id": meter_id, "kind": kind, "amount_fen": amount_fen},
                          sort_keys=True, separators=(",", ":")).encode()
        problem = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_pause_s * attempt)
            try:
                response = httpx.post(self.url + CREDIT_PATH, content=body, headers=self._headers(body),
                                      timeout=self.timeout_s)
            except httpx.HTTPError as error:         # timeouts, refused or dropped connections
                problem = "%s: %s" % (type(error).__name__, error)
                continue
            if response.status_code >= 500 or response.status_code == 429:
                problem = "HTTP %d %s" % (response.status_code, response.text[:80])
                continue
            if response.status_code != 200:
                raise GatewayRefused("HTTP %d %s" % (response.status_code, response.text[:120]))
            try:
                answer = response.json()
            except ValueError:
                problem = "answer is not JSON"
                continue
            ref = answer.get("ref") if isinstance(answer, dict) else None
            if answer.get("payment_id") != payment_id or not isinstance(ref, str) or not 0 < len(ref) <= MAX_REF_CHARS:
                problem = "answer does not name the payment or carry a reference"
                continue
            return ref
        raise GatewayError(problem)


# --- configuration ---------------------------------------------------------------------------------

class GatewayConfig:
    """Which gateway serves which building (an empty config serves none)."""

    def __init__(self, gateways=None, buildings=None, default=None):
        self.gateways = gateways or {}
        self.buildings = buildings or {}
        self.default = default

    def gateway_for(self, building):
        name = self.buildings.get(building, self.default)
        return self.gateways.get(name) if name is not None else None


def config_path(data_dir):
    return os.path.join(data_dir, CONFIG_FILE_NAME)


def parse_config(document):
    """A GatewayConfig from the parsed JSON document, or ConfigError naming what is wrong."""
    if not isinstance(document, dict):
        raise ConfigError("the file must hold a JSON object")
    gateways = {}
    for name, entry in (document.get("gateways") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) \
                or not re.match(r"^https?://", entry["url"]):
            raise ConfigError("gateway %s: url must be http(s)://..." % name)
        key = entry.get("key")
        if not isinstance(key, str) or len(key) < 16:
            raise ConfigError("gateway %s: key must be a string of at least 16 characters" % name)
        auth = entry.get("auth", "hmac")
        timeout_s = entry.get("timeout_s", 5)
        retries = entry.get("retries", 2)
        if auth not in AUTH_MODES:
            raise ConfigError("gateway %s: auth must be hmac or bearer" % name)
        if not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise ConfigError("gateway %s: timeout_s must be above 0 and at most %d" % (name, MAX_TIMEOUT_S))
        if type(retries) is not int or not 0 <= retries <= MAX_CLIENT_RETRIES:
            raise ConfigError("gateway %s: retries must be 0 to %d" % (name, MAX_CLIENT_RETRIES))
        gateways[name] = HttpMeterGateway(entry["url"], key, auth, timeout_s, retries, name=name)
    buildings = document.get("buildings") or {}
    default = document.get("default")
    if not isinstance(buildings, dict):
        raise ConfigError("buildings must map building codes to gateway names")
    for building, name in list(buildings.items()) + [("default", default)] * (default is not None):
        if name not in gateways:
            raise ConfigError("%s: no gateway named %r" % (building, name))
    return GatewayConfig(gateways, buildings, default)


def load_config(data_dir):
    """The data directory's gateway configuration; an empty one when the file is absent."""
    path = config_path(data_dir)
    if not os.path.exists(path):
        return GatewayConfig()
    if os.stat(path).st_mode & 0o077:
        raise ConfigError("电控网关配置文件权限过宽 / meter gateway file is readable by others; chmod 600 %s" % path)
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError("%s: %s" % (path, error))
    return parse_config(document)


# --- the outbox ------------------------------------------------------------------------------------

def enqueue(conn, payment_id, building, meter_id, kind, amount_fen, now_ms):
    """The payment's row for its meter, inside the payment's own transaction."""
    assert conn.in_transaction, "the outbox row commits with the payment or not at all"
    conn.execute("INSERT INTO meter_outbox (payment_id, building, meter_id, kind, amount_fen, status, attempts, "
                 "next_attempt_ms, created_ms) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                 (payment_id, building, meter_id, kind, amount_fen, STATUS_PENDING, now_ms, now_ms))


def retry_pause_ms(attempts):
    """The pause after the `attempts`-th failed attempt."""
    return min(FIRST_RETRY_MS * 2 ** max(attempts - 1, 0), MAX_RETRY_MS)


def _claim(conn, payment_id, now_ms):
    """Take a due row for one send: its attempt counted, leased; None when another loop has it."""
    with dbmod.transaction(conn):
        row = conn.execute("UPDATE meter_outbox SET attempts = attempts + 1, next_attempt_ms = ? WHERE payment_id = ? "
                           "AND status = ? AND next_attempt_ms <= ? RETURNING building, meter_id, kind, amount_fen, "
                           "attempts", (now_ms + LEASE_MS, payment_id, STATUS_PENDING, now_ms)).fetchone()
    return row


def _finish(conn, payment_id, sql, parameters):
    with dbmod.transaction(conn):
        conn.execute("UPDATE meter_outbox SET %s WHERE payment_id = ? AND status = ?" % sql,
                     tuple(parameters) + (payment_id, STATUS_PENDING))


def deliver_due(conn, gateway_for, now_ms=None, limit=MAX_ROWS_PER_PASS):
    """One delivery pass: send every due row (oldest first, at most `limit`) through the gateway
    `gateway_for(building)` names (a GatewayConfig's method, or any callable; None: not configured).
    Returns counts {delivered, retrying, failed, unconfigured}. `now_ms` fixes the clock (tests)."""
    clock = (lambda: now_ms) if now_ms is not None else dbmod.now_ms
    counts = {"delivered": 0, "retrying": 0, "failed": 0, "unconfigured": 0}
    due = conn.execute("SELECT payment_id, building FROM meter_outbox WHERE status = ? AND next_attempt_ms <= ? "
                       "ORDER BY next_attempt_ms, payment_id LIMIT ?", (STATUS_PENDING, clock(), limit)).fetchall()
    for payment_id, building in due:
        gateway = gateway_for(building)
        if gateway is None:
            counts["unconfigured"] += 1
            continue
        claimed = _claim(conn, payment_id, clock())
        if claimed is None:
            continue
        _building, meter_id, kind, amount_fen, attempts = claimed
        try:
            ref = gateway.credit(meter_id, amount_fen, payment_id, kind)
        except GatewayRefused as error:
            _finish(conn, payment_id, "status = ?, last_error = ?", (STATUS_FAILED, _error_text(error)))
            counts["failed"] += 1
            log.warning("meter payment %s refused by the gateway: %s", payment_id, error)
        except GatewayError as error:
            if attempts >= MAX_ATTEMPTS:
                _finish(conn, payment_id, "status = ?, last_error = ?", (STATUS_FAILED, _error_text(error)))
                counts["failed"] += 1
                log.warning("meter payment %s flagged after %d attempts: %s", payment_id, attempts, error)
            else:
                _finish(conn, payment_id, "next_attempt_ms = ?, last_error = ?",
                        (clock() + retry_pause_ms(attempts), _error_text(error)))
                counts["retrying"] += 1
        else:
            _finish(conn, payment_id, "status = ?, gateway_ref = ?, delivered_ms = ?, last_error = NULL",
                    (STATUS_DELIVERED, ref, clock()))
            counts["delivered"] += 1
    return counts


def _error_text(error):
    return ("%s: %s" % (type(error).__name__, error))[:MAX_ERROR_CHARS]


def deliver_from_config(conn, data_dir, now_ms=None):
    """One pass with the data directory's configuration (the server's scheduler, `ykt hall meter-deliver`)."""
    return deliver_due(conn, load_config(data_dir).gateway_for, now_ms)


def undelivered(conn, limit=1000):
    """Rows still owed to a meter (pending, or failed and flagged), oldest first, with their room."""
    rows = conn.execute(
        "SELECT o.payment_id, o.building, p.floor, p.room, o.meter_id, o.kind, o.amount_fen, o.status, o.attempts, "
        "o.next_attempt_ms, o.last_error, o.created_ms FROM meter_outbox o LEFT JOIN electricity_payments p "
        "ON p.payment_id = o.payment_id WHERE o.status <> ? ORDER BY o.created_ms, o.payment_id LIMIT ?",
        (STATUS_DELIVERED, limit)).fetchall()
    names = ("payment_id", "building", "floor", "room", "meter_id", "kind", "amount_fen", "status", "attempts",
             "next_attempt_ms", "last_error", "created_ms")
    return [dict(zip(names, row)) for row in rows]


def requeue(conn, payment_id=None, now_ms=None):
    """Staff: send flagged (failed) rows again from a fresh count (one, or every one); returns how many."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.transaction(conn):
        if payment_id is None:
            cursor = conn.execute("UPDATE meter_outbox SET status = ?, attempts = 0, next_attempt_ms = ? "
                                  "WHERE status = ?", (STATUS_PENDING, now_ms, STATUS_FAILED))
        else:
            cursor = conn.execute("UPDATE meter_outbox SET status = ?, attempts = 0, next_attempt_ms = ? "
                                  "WHERE status = ? AND payment_id = ?",
                                  (STATUS_PENDING, now_ms, STATUS_FAILED, payment_id))
        return cursor.rowcount


def statuses(conn, payment_ids):
    """{payment_id: status} of those payments that have an outbox row."""
    found = {}
    for condition, parameters in dbmod.in_lists(conn, payment_ids):
        for payment_id, status in conn.execute("SELECT payment_id, status FROM meter_outbox WHERE payment_id %s"
                                               % condition, parameters):
            found[payment_id] = status
    return found
