"""Cardholder and service-hall operations (issue 4), as plain functions on a database connection.

The phone/kiosk JSON API (sync_server/cardholder_api.py), the web pages (sync_server/web/) and the
`ykt hall` commands are thin layers over these modules; none of them holds business rules of its own.

    recharge      orders through Alipay / WeChat Pay / CCB, signed channel notifications, cash desk
    history       balance and transaction history by date range and type, paged
    cards         report loss (挂失), unfreeze (解挂), reissue (补办) with its fee
    pins          change with the old PIN, staff reset
    limits        per-transaction and per-day consumption limits (消费限额)
    electricity   dorm electricity (电费) for a building / floor / room
    people_import HR and student registry CSV import, repeatable
    binding       phone-app binding (绑卡) and bearer tokens

A refused operation raises `ServiceError` (a `registry.HallError`, so one `except` serves both) with a
stable `code`, an HTTP `status` for the API, and the message in Chinese and English; it changes
nothing, except that a wrong PIN is counted towards the lockout (that is the point of the lockout).
Money moves only through `ledger.post` with transfer ids derived from the order or payment id, so a
retried call books once when it carries the same id. Order and payment ids are random unless the
caller passes an idempotency key (the web forms' one-time key, or the app's `idempotency_key`): then
the id is derived from the account and the key, and a repeat of the same submission books nothing
and returns the first one's receipt; the same key with different details is refused.
"""
import hashlib
import re

from sync_server import db as dbmod, messages, registry
from sync_server import pin_rules

# code: (HTTP status, Chinese, English). Messages may carry %-parameters filled by ServiceError.
MESSAGES = {
    "pin_wrong": (403,) + messages.MESSAGES["pin_wrong"],
    "pin_locked": (423,) + messages.MESSAGES["pin_locked"],
    "pin_format": (400,) + messages.MESSAGES["pin_format"],
    "pin_required": (400, "请输入交易密码", "the card PIN is required"),
    "account_unknown": (404,) + messages.MESSAGES["account_unknown"],
    "account_blocked": (409,) + messages.MESSAGES["account_blocked"],
    "account_in_debt": (409,) + messages.MESSAGES["account_in_debt"],
    "no_wallet": (409, "身份卡没有电子钱包", "an identity-only card has no wallet"),
    "bad_amount": (400, "金额无效（应为 1 至 %d 分）", "invalid amount (1 to %d fen)"),
    "insufficient_funds": (409, "余额不足", "insufficient balance"),
    "bad_request": (400, "请求格式错误：%s", "malformed request: %s"),
    "bad_idempotency_key": (400, "提交标识无效（应为 8 至 100 个字母、数字、- 或 _）",
                            "invalid idempotency key (8 to 100 letters, digits, - or _)"),
    "idempotency_conflict": (409, "该提交标识已用于另一笔不同的业务", "this idempotency key was used for a different request"),
}
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{8,100}$")


class ServiceError(registry.HallError):
    """A refused operation: `code` (stable, for programs), `status` (HTTP), zh / en texts, and
    `details`: more fields for a program (a wrong PIN's tries_left), which `texts` words for people."""

    def __init__(self, code, *parameters, status=None, details=None, texts=None):
        known_status, zh, en = MESSAGES[code]
        if texts is not None:
            zh, en = texts
        elif parameters:
            zh, en = zh % parameters, en % parameters
        registry.HallError.__init__(self, zh, en)
        self.code = code
        self.status = status or known_status
        self.details = dict(details or {})


def csv_columns(header, columns):
    """{field: column index} of a CSV header row, by the accepted titles of each field (`columns`:
    {field: titles, lowercase}); a byte-order mark and case are ignored, the first match wins."""
    found = {}
    for index, title in enumerate(header):
        title = title.strip().lstrip("\ufeff").lower()
        for field, names in columns.items():
            if title in names and field not in found:
                found[field] = index
    return found


def register_messages(table):
    """Modules add their own codes at import time; a code means one thing only."""
    for code, entry in table.items():
        assert code not in MESSAGES or MESSAGES[code] == entry, "message code %s defined twice" % code
        assert len(entry) == 3 and 400 <= entry[0] < 500
        MESSAGES[code] = entry


tx = dbmod.joined_transaction


def now(now_ms):
    return dbmod.now_ms() if now_ms is None else now_ms


def person_row(conn, account_id):
    """The person behind an account as a sqlite3.Row (id, name, id_number, staff_number, category,
    department, expiry_yyyymmdd, blocked, in_debt), or ServiceError account_unknown."""
    row = dbmod.fetch_named(conn, "SELECT p.id, p.name, p.id_number, p.staff_number, p.category, p.department, "
                            "p.expiry_yyyymmdd, a.blocked, a.in_debt FROM accounts a JOIN persons p "
                            "ON p.id = a.person_id WHERE a.id = ?", (account_id,))
    if row is None:
        raise ServiceError("account_unknown")
    return row


def account_of_person(conn, person_id):
    row = conn.execute("SELECT id FROM accounts WHERE person_id = ? ORDER BY id LIMIT 1", (person_id,)).fetchone()
    if row is None:
        raise ServiceError("account_unknown")
    return row[0]


def idempotent_id(prefix, account_id, key):
    """The order / payment id for a caller's idempotency key: derived from the account and the key, so
    one account's key never names another account's order, and the id shows nothing of the key."""
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.match(key):
        raise ServiceError("bad_idempotency_key")
    return prefix + hashlib.sha256(("%d/%s" % (account_id, key)).encode()).hexdigest()[:24]


def check_amount(amount_fen, maximum_fen):
    if type(amount_fen) is not int or not 0 < amount_fen <= maximum_fen:
        raise ServiceError("bad_amount", maximum_fen)


def with_pin(conn, account_id, pin, operator, now_ms, operation):
    """Run operation() in one transaction after the cardholder's PIN was accepted.

    Staff at the service hall (`operator` names them) act on the holder's ID card instead of the PIN,
    so no PIN is asked then. The PIN is hashed before the transaction (the write lock is not held
    during scrypt); the transaction then re-checks the lockout and records the outcome. A wrong PIN
    is committed (the failure counts towards the lockout) and the operation does not run. The
    transaction is our own: a caller's would roll the count back.
    """
    assert not conn.in_transaction, "PIN-checked operations own their transaction"
    attempt = None
    if operator is None:
        if pin is None or pin == "":
            raise ServiceError("pin_required")
        attempt = pin_rules.prepare_pin(conn, account_id, pin, now_ms)
        if isinstance(attempt, str) and attempt not in pin_rules.PIN_ACCEPTED:
            raise pin_refused(attempt, now_ms)     # known without writing anything: format, unknown, locked
    refusal = None
    with dbmod.transaction(conn):
        person_row(conn, account_id)
        if attempt is not None:
            code = pin_rules.record_pin(conn, account_id, attempt, now_ms)
            if code not in pin_rules.PIN_ACCEPTED:
                refusal = code
        if refusal is None:
            return operation()
    raise pin_refused(refusal, now_ms)


def pin_refused(outcome, now_ms):
    """The ServiceError of a refused PIN check: its code, and after a wrong PIN or in a lockout the
    tries left or the lockout's end, in the text and in `details` (the JSON API's error body)."""
    details = pin_rules.feedback(outcome, now_ms)
    return ServiceError(str(outcome), details=details,
                        texts=pin_rules.refusal_texts(outcome, now_ms) if details else None)
