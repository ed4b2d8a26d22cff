"""Phone-app binding (绑卡), the holder's list of bound phones, and the bearer tokens of the JSON API.

    bind(conn, app_user_id, name, staff_number, pin, client_address) -> {token, person_id, account_id,
                                                                         expires_ms, phone_id}
    sign_in(conn, app_user_id, staff_number, pin)     -> the same (kiosks and re-installed apps)
    authenticate(conn, token)                         -> {app_user_id, person_id, account_id, phone_id}
    phones(conn, person_id, this_app_user_id)         -> the holder's bound phones
    remove_phone(conn, person_id, phone_id)           -> unbinds it; its tokens stop working at once
    sign_out(conn, token)

A phone account (the app's own user id, from its WeChat / QQ / Alipay / phone sign-in) binds to a
cardholder with name + staff/student number, as the new system's app does (manual: 输入姓名和学工号),
and the card PIN: a name and a number are known to classmates and colleagues, the PIN is not. The
PIN goes through the same check and lockout as everywhere else (services.with_pin), so a wrong PIN
counts towards the card's lockout. Wrong name / number pairs are counted against the guesser - its app
user id and its client address (table bind_guessers) - never against the cardholder asked about, so
a stranger's guesses cannot lock the real holder out; a throttled guesser is refused before its PIN
is looked at. An unknown number gets the same answer (and the same scrypt work) as a wrong name.
Rows of guessers that stopped guessing are deleted and the table is capped, so it cannot be grown
without bound. (The table also holds the wrong-PIN counts of numbers nobody has, see
pin_rules.unknown_number, capped apart.) Behind a reverse proxy, set YKT_PROXY_HOPS (sync_server/app.py) so the address is
the client's own; several people may still share one address (a NAT), so its limit is higher.

Every binding gets a random public id (`phone_id`); the holder lists bound phones with when each
was bound and last used (refreshed at most once a minute) and removes any of them, which deletes
its tokens. A holder may bind at most MAX_PHONES_PER_PERSON phones.

Tokens are 32 random bytes (URL-safe text); only their SHA-256 is stored, so a copy of the database
cannot be replayed as tokens. They expire, each app user keeps a bounded number, and binding the app
user to someone else revokes the old ones.
"""
import hashlib
import secrets

from sync_server import paycode, pin_rules
from sync_server.services import (ServiceError, account_of_person, holder_actions, now, pin_refused,
                                  register_messages, tx, with_pin)

TOKEN_TTL_MS = 30 * 24 * 3600 * 1000
MAX_TOKENS_PER_APP_USER = 5
MAX_BIND_FAILURES = 5                 # wrong name / number pairs per app user id before it waits
MAX_BIND_FAILURES_PER_ADDRESS = 20    # per client address (several people may share one)
BIND_LOCKOUT_MS = 30 * 60 * 1000      # the wait, and how long failures are remembered
MAX_GUESSER_ROWS = 10000
MAX_PHONES_PER_PERSON = 10
MAX_APP_USER_ID_CHARS = 64
MAX_PHONE_ID_CHARS = 64
LAST_USED_REFRESH_MS = 60 * 1000
_DUMMY_SALT = b"\0" * 16

register_messages({
    "bind_failed": (403, "绑卡失败：姓名与学工号不符；如确认无误，请持本人证件到服务大厅处理",
                    "binding failed: name and staff/student number do not match; if they are right, visit the "
                    "service hall with your ID"),
    "bind_locked": (423, "绑卡失败次数过多，请稍后再试", "too many failed bindings: try again later"),
    "too_many_phones": (409, "已绑定 %d 部手机，请先解除不用的绑定", "%d phones are bound already: remove one first"),
    "phone_unknown": (404, "没有这部已绑定的手机", "no such bound phone"),
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


def _issue_token(conn, app_user_id, person_id, now_ms):
    """Bind (revoking tokens for another person) and return a fresh token."""
    others = conn.execute("SELECT count(*) FROM app_users WHERE person_id = ? AND app_user_id != ?",
                          (person_id, app_user_id)).fetchone()[0]
    if others >= MAX_PHONES_PER_PERSON:
        raise ServiceError("too_many_phones", MAX_PHONES_PER_PERSON)
    conn.execute("DELETE FROM app_tokens WHERE app_user_id = ? AND (person_id != ? OR expires_ms <= ?)",
                 (app_user_id, person_id, now_ms))
    conn.execute("DELETE FROM app_tokens WHERE token_hash IN (SELECT token_hash FROM app_tokens WHERE app_user_id = ? "
                 "ORDER BY created_ms DESC LIMIT -1 OFFSET ?)", (app_user_id, MAX_TOKENS_PER_APP_USER - 1))
    before = conn.execute("SELECT person_id, binding_id FROM app_users WHERE app_user_id = ?", (app_user_id,)).fetchone()
    # SET expressions see the old row: an app user bound to this person already keeps its id and time
    conn.execute("UPDATE app_users SET bound_ms = coalesce(CASE WHEN person_id = ? THEN bound_ms END, ?), "
                 "binding_id = coalesce(CASE WHEN person_id = ? THEN binding_id END, ?), person_id = ?, "
                 "last_used_ms = ? WHERE app_user_id = ?",
                 (person_id, now_ms, person_id, secrets.token_urlsafe(12), person_id, now_ms, app_user_id))
    token = secrets.token_urlsafe(32)
    expires_ms = now_ms + TOKEN_TTL_MS
    conn.execute("INSERT INTO app_tokens (token_hash, app_user_id, person_id, created_ms, expires_ms) "
                 "VALUES (?, ?, ?, ?, ?)", (_hash(token), app_user_id, person_id, now_ms, expires_ms))
    phone_id = conn.execute("SELECT binding_id FROM app_users WHERE app_user_id = ?", (app_user_id,)).fetchone()[0]
    if before is None or before[0] != person_id:
        _record_binding(conn, before, person_id, phone_id, now_ms)
    return {"token": token, "person_id": person_id, "account_id": account_of_person(conn, person_id),
            "expires_ms": expires_ms, "phone_id": phone_id}


def _record_binding(conn, before, person_id, phone_id, now_ms):
    """The holder's action log: this phone bound to `person_id`, and removed from whoever it was bound
    to before (an app user holds one binding)."""
    if before is not None and before[0] is not None:
        holder_actions.record(conn, account_of_person(conn, before[0]), "phone_unbound", holder_actions.VIA_APP,
                              detail={"phone_id": before[1], "bound_to_another": True}, now_ms=now_ms)
    holder_actions.record(conn, account_of_person(conn, person_id), "phone_bound", holder_actions.VIA_APP,
                          detail={"phone_id": phone_id}, now_ms=now_ms)


def _guessers(app_user_id, client_address):
    """(guesser key, allowed failures) of whoever is binding."""
    keys = [("app:" + app_user_id, MAX_BIND_FAILURES)]
    if client_address:
        keys.append(("address:" + str(client_address)[:100], MAX_BIND_FAILURES_PER_ADDRESS))
    return keys


def _guesser_locked(conn, guessers, now_ms):
    marks = ",".join("?" * len(guessers))
    return conn.execute("SELECT 1 FROM bind_guessers WHERE guesser IN (%s) AND locked_until_ms > ?" % marks,
                        [key for key, _ in guessers] + [now_ms]).fetchone() is not None


def _count_guess(conn, guessers, now_ms):
    """One more wrong name / number pair for each guesser key; True when one of them is now locked."""
    locked = False
    with tx(conn):
        conn.execute("DELETE FROM bind_guessers WHERE updated_ms < ? AND locked_until_ms <= ?",
                     (now_ms - BIND_LOCKOUT_MS, now_ms))
        for key, allowed in guessers:
            failures = conn.execute(
                "INSERT INTO bind_guessers (guesser, failures, locked_until_ms, updated_ms) VALUES (?, 1, 0, ?) "
                "ON CONFLICT (guesser) DO UPDATE SET failures = bind_guessers.failures + 1, updated_ms = excluded.updated_ms "
                "RETURNING failures", (key, now_ms)).fetchone()[0]
            if failures >= allowed:
                conn.execute("UPDATE bind_guessers SET failures = 0, locked_until_ms = ? WHERE guesser = ?",
                             (now_ms + BIND_LOCKOUT_MS, key))
                locked = True
        # the cap keeps locked guessers and the most recent ones (pin_rules.unknown_number caps its own rows)
        conn.execute("DELETE FROM bind_guessers WHERE guesser IN (SELECT guesser FROM bind_guessers WHERE guesser "
                     "NOT LIKE ? ORDER BY locked_until_ms > ? DESC, updated_ms DESC LIMIT -1 OFFSET ?)",
                     (pin_rules.UNKNOWN_NUMBER_KEY + "%", now_ms, MAX_GUESSER_ROWS))
    return locked


def bind(conn, app_user_id, name, staff_number, pin, client_address=None, now_ms=None):
    """绑卡 with name + staff/student number + card PIN; returns a token. A wrong pair counts against
    the guesser, a wrong PIN against the card's PIN lockout."""
    _check_app_user(app_user_id)
    if not isinstance(pin, str) or not pin:
        raise ServiceError("pin_required")
    now_ms = now(now_ms)
    staff_number, name = str(staff_number or "").strip(), str(name or "").strip()
    assert not conn.in_transaction, "binding commits its failure count"
    guessers = _guessers(app_user_id, client_address)
    if _guesser_locked(conn, guessers, now_ms):
        raise ServiceError("bind_locked")
    person = conn.execute("SELECT p.id, p.name, a.id FROM persons p JOIN accounts a ON a.person_id = p.id "
                          "WHERE p.staff_number = ? ORDER BY a.id LIMIT 1", (staff_number,)).fetchone() \
        if staff_number else None
    if person is None or person[1] != name:
        pin_rules.hash_pin(pin, _DUMMY_SALT)     # the same work as a PIN check: wrong pairs are not told apart by time
        raise ServiceError("bind_locked" if _count_guess(conn, guessers, now_ms) else "bind_failed")
    person_id, _, account_id = person

    def operation():
        conn.execute("DELETE FROM bind_guessers WHERE guesser = ?", (guessers[0][0],))
        _ensure_app_user(conn, app_user_id, now_ms)
        return _issue_token(conn, app_user_id, person_id, now_ms)
    return with_pin(conn, account_id, pin, None, now_ms, operation)


def sign_in(conn, app_user_id, staff_number, pin, now_ms=None):
    """Sign in with staff/student number + card PIN (PIN lockout applies); binds the app user."""
    _check_app_user(app_user_id)
    now_ms = now(now_ms)
    row = conn.execute("SELECT a.id, p.id FROM persons p JOIN accounts a ON a.person_id = p.id "
                       "WHERE p.staff_number = ? ORDER BY a.id LIMIT 1", (str(staff_number or "").strip(),)).fetchone()
    if row is None:      # the same answers and the same work as a real account: numbers are not confirmed
        if pin is None or pin == "":
            raise ServiceError("pin_required")
        raise pin_refused(pin_rules.unknown_number(conn, staff_number, pin, now_ms), now_ms)
    account_id, person_id = row

    def operation():
        _ensure_app_user(conn, app_user_id, now_ms)
        return _issue_token(conn, app_user_id, person_id, now_ms)
    return with_pin(conn, account_id, pin, None, now_ms, operation)


def authenticate(conn, token, now_ms=None):
    """The app user and the cardholder a bearer token speaks for, or ServiceError bad_token."""
    if not isinstance(token, str) or not 20 <= len(token) <= 100:
        raise ServiceError("bad_token")
    now_ms = now(now_ms)
    row = conn.execute("SELECT t.app_user_id, t.person_id, t.expires_ms, u.person_id, u.binding_id, u.last_used_ms "
                       "FROM app_tokens t JOIN app_users u ON u.app_user_id = t.app_user_id WHERE t.token_hash = ?",
                       (_hash(token),)).fetchone()
    if row is None or row[2] <= now_ms or row[1] != row[3]:
        raise ServiceError("bad_token")
    if (row[5] or 0) < now_ms - LAST_USED_REFRESH_MS:
        with tx(conn):
            conn.execute("UPDATE app_users SET last_used_ms = ? WHERE app_user_id = ?", (now_ms, row[0]))
    return {"app_user_id": row[0], "person_id": row[1], "account_id": account_of_person(conn, row[1]),
            "phone_id": row[4]}


def _masked(app_user_id):
    """Enough of the app user id for the holder to tell phones apart, not enough to copy it."""
    return ("…" + app_user_id[-4:]) if len(app_user_id) > 6 else app_user_id[:2] + "…"


def phones(conn, person_id, this_app_user_id=None):
    """The holder's bound phones, first bound first: [{phone_id, app_user, bound_ms, last_used_ms,
    this_phone}] (at most MAX_PHONES_PER_PERSON)."""
    rows = conn.execute("SELECT binding_id, app_user_id, bound_ms, last_used_ms FROM app_users WHERE person_id = ? "
                        "ORDER BY bound_ms, binding_id LIMIT ?", (person_id, MAX_PHONES_PER_PERSON)).fetchall()
    return [{"phone_id": row[0], "app_user": _masked(row[1]), "bound_ms": row[2], "last_used_ms": row[3],
             "this_phone": row[1] == this_app_user_id} for row in rows]


def remove_phone(conn, person_id, phone_id, now_ms=None, via=None):
    """Unbind one of the holder's phones and delete its tokens (they stop working at once); its payment
    codes stop too (every terminal refuses them after its next sync). Another holder's phone id is
    phone_unknown like a made-up one, so ids do not leak. Recorded in the holder's action log (`via`)."""
    now_ms = now(now_ms)
    if not isinstance(phone_id, str) or not 0 < len(phone_id) <= MAX_PHONE_ID_CHARS:
        raise ServiceError("phone_unknown")
    with tx(conn):
        row = conn.execute("SELECT app_user_id FROM app_users WHERE binding_id = ? AND person_id = ?",
                           (phone_id, person_id)).fetchone()
        if row is None:
            raise ServiceError("phone_unknown")
        conn.execute("DELETE FROM app_tokens WHERE app_user_id = ?", (row[0],))
        for (credential_id,) in conn.execute("SELECT id FROM paycode_credentials WHERE app_user_id = ? AND status = ?",
                                             (row[0], paycode.ACTIVE)).fetchall():
            paycode.revoke_credential(conn, credential_id, paycode.REASON_REVOKED, now_ms)
        conn.execute("UPDATE app_users SET person_id = NULL, bound_ms = NULL, binding_id = NULL, last_used_ms = NULL "
                     "WHERE app_user_id = ?", (row[0],))
        holder_actions.record(conn, account_of_person(conn, person_id), "phone_unbound", via,
                              detail={"phone_id": phone_id}, now_ms=now_ms)


def sign_out(conn, token):
    with tx(conn):
        conn.execute("DELETE FROM app_tokens WHERE token_hash = ?", (_hash(token),))
