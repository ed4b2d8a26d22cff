"""Phone-app binding (绑卡) and the bearer tokens of the JSON API.

    bind(conn, app_user_id, name, staff_number)       -> {token, person_id, account_id, expires_ms}
    sign_in(conn, app_user_id, staff_number, pin)     -> the same (kiosks and re-installed apps)
    authenticate(conn, token)                         -> {app_user_id, person_id, account_id}
    sign_out(conn, token)

A phone account (the app's own user id, from its WeChat / QQ / Alipay / phone sign-in) binds to a
cardholder with name + staff/student number, as the new system's app does (manual: 输入姓名和学工号).
Wrong pairs are counted per staff/student number (table bind_failures, one row per person) and lock
that number for a while, whichever app user id asks, so choosing a new id per guess gains nothing;
an app user that already exists is counted and locked as well. An unknown number gets the same
answer as a wrong name and is counted nowhere, so the table cannot be grown by made-up numbers.
An app user row is created only when a binding or sign-in succeeds. Money-moving operations still
ask for the card PIN.

Tokens are 32 random bytes (URL-safe text); only their SHA-256 is stored, so a copy of the database
cannot be replayed as tokens. They expire, each app user keeps a bounded number, and binding the app
user to someone else revokes the old ones.
"""
import hashlib
import secrets

from sync_server import pins
from sync_server.services import (ServiceError, account_of_person, now, register_messages, tx, with_pin)

TOKEN_TTL_MS = 30 * 24 * 3600 * 1000
MAX_TOKENS_PER_APP_USER = 5
MAX_BIND_FAILURES = 5
BIND_LOCKOUT_MS = 30 * 60 * 1000
MAX_APP_USER_ID_CHARS = 64

register_messages({
    "bind_failed": (403, "绑卡失败：姓名与学工号不符；如确认无误，请持本人证件到服务大厅处理",
                    "binding failed: name and staff/student number do not match; if they are right, visit the "
                    "service hall with your ID"),
    "bind_locked": (423, "绑卡失败次数过多，请稍后再试", "too many failed bindings: try again later"),
    "bad_app_user": (400, "应用用户标识无效", "invalid app user id"),
    "bad_token": (401, "未登录或登录已过期", "not signed in, or the sign-in expired"),
    "not_bound": (403, "尚未绑定校园卡", "no campus card bound yet"),
})


def _hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def _check_app_user(app_user_id):
    if not isinstance(app_user_id, str) or not 0 < len(app_user_id) <= MAX_APP_USER_ID_CHARS:
        raise ServiceError("bad_app_user")


def _ensure_app_user(conn, app_user_id, now_ms):
    conn.execute("INSERT INTO app_users (app_user_id, created_ms) VALUES (?, ?) ON CONFLICT (app_user_id) DO NOTHING",
                 (app_user_id, now_ms))
    return conn.execute("SELECT person_id, failures, locked_until_ms FROM app_users WHERE app_user_id = ?",
                        (app_user_id,)).fetchone()


def _issue_token(conn, app_user_id, person_id, now_ms):
    """Bind (revoking tokens for another person) and return a fresh token."""
    conn.execute("DELETE FROM app_tokens WHERE app_user_id = ? AND (person_id != ? OR expires_ms <= ?)",
                 (app_user_id, person_id, now_ms))
    conn.execute("DELETE FROM app_tokens WHERE token_hash IN (SELECT token_hash FROM app_tokens WHERE app_user_id = ? "
                 "ORDER BY created_ms DESC LIMIT -1 OFFSET ?)", (app_user_id, MAX_TOKENS_PER_APP_USER - 1))
    conn.execute("UPDATE app_users SET person_id = ?, bound_ms = coalesce(CASE WHEN person_id = ? THEN bound_ms END, ?), "
                 "failures = 0, locked_until_ms = 0 WHERE app_user_id = ?", (person_id, person_id, now_ms, app_user_id))
    token = secrets.token_urlsafe(32)
    expires_ms = now_ms + TOKEN_TTL_MS
    conn.execute("INSERT INTO app_tokens (token_hash, app_user_id, person_id, created_ms, expires_ms) "
                 "VALUES (?, ?, ?, ?, ?)", (_hash(token), app_user_id, person_id, now_ms, expires_ms))
    return {"token": token, "person_id": person_id, "account_id": account_of_person(conn, person_id),
            "expires_ms": expires_ms}


def _count_failure(conn, table, key_column, key, failures, now_ms):
    """One more wrong pair on this row; returns True when it now locks."""
    failures += 1
    locked = failures >= MAX_BIND_FAILURES
    conn.execute("UPDATE %s SET failures = ?, locked_until_ms = ? WHERE %s = ?" % (table, key_column),
                 (0 if locked else failures, now_ms + BIND_LOCKOUT_MS if locked else 0, key))
    return locked


def bind(conn, app_user_id, name, staff_number, now_ms=None):
    """绑卡 with name + staff/student number; returns a token. Wrong pairs count towards a lockout of
    the number asked about (and of the app user, when it exists)."""
    _check_app_user(app_user_id)
    now_ms = now(now_ms)
    staff_number, name = str(staff_number or "").strip(), str(name or "").strip()
    refusal = None
    assert not conn.in_transaction, "binding commits its failure count"
    with tx(conn):
        app_user = conn.execute("SELECT failures, locked_until_ms FROM app_users WHERE app_user_id = ?",
                                (app_user_id,)).fetchone()
        person = conn.execute("SELECT id, name FROM persons WHERE staff_number = ?", (staff_number,)).fetchone() \
            if staff_number else None
        number = None
        if person is not None:
            conn.execute("INSERT INTO bind_failures (person_id, failures, locked_until_ms) VALUES (?, 0, 0) "
                         "ON CONFLICT (person_id) DO NOTHING", (person[0],))
            number = conn.execute("SELECT failures, locked_until_ms FROM bind_failures WHERE person_id = ?",
                                  (person[0],)).fetchone()
        if (app_user is not None and app_user[1] > now_ms) or (number is not None and number[1] > now_ms):
            refusal = "bind_locked"
        elif person is None or person[1] != name:
            locked = False
            if app_user is not None:
                locked |= _count_failure(conn, "app_users", "app_user_id", app_user_id, app_user[0], now_ms)
            if number is not None:
                locked |= _count_failure(conn, "bind_failures", "person_id", person[0], number[0], now_ms)
            refusal = "bind_locked" if locked else "bind_failed"
        else:
            conn.execute("DELETE FROM bind_failures WHERE person_id = ?", (person[0],))
            _ensure_app_user(conn, app_user_id, now_ms)
            return _issue_token(conn, app_user_id, person[0], now_ms)
    raise ServiceError(refusal)


def sign_in(conn, app_user_id, staff_number, pin, now_ms=None):
    """Sign in with staff/student number + card PIN (PIN lockout applies); binds the app user."""
    _check_app_user(app_user_id)
    now_ms = now(now_ms)
    row = conn.execute("SELECT a.id, p.id FROM persons p JOIN accounts a ON a.person_id = p.id "
                       "WHERE p.staff_number = ? ORDER BY a.id LIMIT 1", (str(staff_number or "").strip(),)).fetchone()
    if row is None:
        pins.hash_pin(str(pin), b"\0" * 16)  # same answer, same work as a wrong PIN: numbers are not confirmed
        raise ServiceError("pin_wrong")
    account_id, person_id = row

    def operation():
        _ensure_app_user(conn, app_user_id, now_ms)
        return _issue_token(conn, app_user_id, person_id, now_ms)
    return with_pin(conn, account_id, pin, None, now_ms, operation)


def authenticate(conn, token, now_ms=None):
    """The app user and the cardholder a bearer token speaks for, or ServiceError bad_token."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        raise ServiceError("bad_token")
    row = conn.execute("SELECT t.app_user_id, t.person_id, t.expires_ms, u.person_id FROM app_tokens t "
                       "JOIN app_users u ON u.app_user_id = t.app_user_id WHERE t.token_hash = ?",
                       (_hash(token),)).fetchone()
    if row is None or row[2] <= now(now_ms) or row[1] != row[3]:
        raise ServiceError("bad_token")
    return {"app_user_id": row[0], "person_id": row[1], "account_id": account_of_person(conn, row[1])}


def sign_out(conn, token):
    with tx(conn):
        conn.execute("DELETE FROM app_tokens WHERE token_hash = ?", (_hash(token),))
