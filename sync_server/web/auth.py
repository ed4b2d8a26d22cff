"""Who is signed in to the web pages, what they may do, and the staff action log.

Sessions are Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when the site says so) under a
secret derived from the site master key, so restarting the server keeps people signed in and no extra
secret has to be stored. A session is one of two kinds:
    cardholder  {"kind": "cardholder", "account_id", "person_id", "generation"} after staff/student
                number + card PIN; valid only while `generation` is the account's session_generation,
                which signing out and every PIN change or reset bump (migration 22).
    staff       {"kind": "staff", "staff_id", "generation"} after username + password; valid only
                while `generation` is the user's session_generation, which signing out, a password
                change or reset and disabling the user bump (migration 32). Roles are read from the
                database on every request, so removing a role acts at once.
So a copied cookie can be ended on the server: all sessions of the account or user end together.
Both kinds also carry when they started and when they were last used (`started_ms`, `seen_ms`, the
app clock `now_ms()`): a session idle for longer than its kind's idle timeout, or older than its
absolute lifetime, is refused (settings below; `seen_ms` is refreshed at most once a minute, so a
busy page does not rewrite the cookie on every request).

    STAFF_SESSION_IDLE_S    (YKT_STAFF_SESSION_IDLE_S)    default 1800: 30 minutes without a page
    STAFF_SESSION_MAX_S     (YKT_STAFF_SESSION_MAX_S)     default 43200: 12 hours after sign-in
    PORTAL_SESSION_IDLE_S   (YKT_PORTAL_SESSION_IDLE_S)   default 900: the portal shows money and is
                                                          often opened on shared computers
    PORTAL_SESSION_MAX_S    (YKT_PORTAL_SESSION_MAX_S)    default 43200

Every POST of the web blueprints carries the session's CSRF token (`csrf_token` form field); a
missing or wrong token is a 400 and the view never runs. Sign-in replaces the whole session (a
token or identity planted before sign-in does not survive it).

Lockout: a cardholder sign-in goes through `pin_rules.check_pin`, the same counter and lockout as the
terminals' online PIN check. Staff passwords have their own counter with the same limits.
"""
import functools
import hashlib
import hmac
import json
import os
import secrets

import itsdangerous
from flask import abort, current_app, flash, g, redirect, render_template, request, session, url_for

from firmware.core import crypto
from sync_server import db as dbmod, pin_rules
from sync_server.messages import BilingualError

ROLES = ("hall", "finance", "admin", "supervisor")   # supervisor: approves large cash recharges, reverses them
MIN_PASSWORD_CHARS = 10
MAX_USERNAME_CHARS = 64
MAX_LOG_ROWS_SHOWN = 200
_DUMMY_SALT = b"\0" * 16
CSRF_FIELD = "csrf_token"
FORM_KEY_FIELD = "form_key"
FORM_KEY_MAX_AGE_S = 24 * 3600
# (config key, environment variable, default seconds) of the session timeouts, per session kind
SESSION_TIMEOUTS_S = {
    "staff": (("STAFF_SESSION_IDLE_S", "YKT_STAFF_SESSION_IDLE_S", 30 * 60),
              ("STAFF_SESSION_MAX_S", "YKT_STAFF_SESSION_MAX_S", 12 * 3600)),
    "cardholder": (("PORTAL_SESSION_IDLE_S", "YKT_PORTAL_SESSION_IDLE_S", 15 * 60),
                   ("PORTAL_SESSION_MAX_S", "YKT_PORTAL_SESSION_MAX_S", 12 * 3600)),
}
SEEN_REFRESH_MS = 60 * 1000


class AuthError(BilingualError):
    """A sign-in or user-management refusal with a Chinese and an English text."""


def session_secret(master_key):
    """The cookie-signing secret: a purpose key of the site master key (never stored on its own)."""
    return crypto.derive(master_key, "session")


# --- staff users ---------------------------------------------------------------------------------

def _hash_password(password, salt):
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **pin_rules.SCRYPT_PARAMS)


def add_staff_user(conn, username, display_name, roles, password, now_ms=None):
    """Create a staff user; returns its id. Roles from ROLES; the password is stored only as scrypt."""
    username = (username or "").strip()
    roles = sorted(set(roles))
    if not username or len(username) > MAX_USERNAME_CHARS or not username.isprintable() or " " in username:
        raise AuthError("用户名无效", "invalid username")
    if not roles or any(role not in ROLES for role in roles):
        raise AuthError("角色应为 %s" % "、".join(ROLES), "roles must be among %s" % ", ".join(ROLES))
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError("密码至少 %d 个字符" % MIN_PASSWORD_CHARS,
                        "the password needs at least %d characters" % MIN_PASSWORD_CHARS)
    salt = os.urandom(16)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.transaction(conn):
        if conn.execute("SELECT 1 FROM web_staff_users WHERE username = ?", (username,)).fetchone():
            raise AuthError("用户 %s 已存在" % username, "user %s exists" % username)
        return conn.execute(
            "INSERT INTO web_staff_users (username, display_name, roles, password_hash, password_salt, created_ms) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (username, display_name or username, " ".join(roles), _hash_password(password, salt), salt, now_ms)).fetchone()[0]


def check_staff_password(conn, username, password, now_ms):
    """The staff user's id when the password is right; raises AuthError otherwise (counting failures)."""
    with dbmod.transaction(conn):   # commits the failure count; the refusal is raised after the commit
        outcome = _check_staff_password(conn, username, password, now_ms)
    if isinstance(outcome, AuthError):
        raise outcome
    return outcome


def _check_staff_password(conn, username, password, now_ms):
    wrong = AuthError("用户名或密码错误", "wrong username or password")
    locked = AuthError("错误次数过多，已锁定，请稍后再试", "too many failures: locked, try again later")
    row = conn.execute("SELECT id, password_hash, password_salt, failures, locked_until_ms, disabled "
                       "FROM web_staff_users WHERE username = ?", (username,)).fetchone()
    if row is None:
        _hash_password(password, _DUMMY_SALT)   # same work as a real check: no user enumeration by timing
        return wrong
    staff_id, password_hash, salt, failures, locked_until_ms, disabled = row
    if disabled:
        return AuthError("该用户已停用", "this user is disabled")
    if locked_until_ms > now_ms:
        return locked
    if not hmac.compare_digest(_hash_password(password, salt), password_hash):
        failures += 1
        locked_until_ms = now_ms + pin_rules.PIN_LOCKOUT_MS if failures >= pin_rules.MAX_PIN_FAILURES else 0
        conn.execute("UPDATE web_staff_users SET failures = ?, locked_until_ms = ? WHERE id = ?",
                     (0 if locked_until_ms else failures, locked_until_ms, staff_id))
        return locked if locked_until_ms else wrong
    if failures:
        conn.execute("UPDATE web_staff_users SET failures = 0 WHERE id = ?", (staff_id,))
    return staff_id


def set_staff_password(conn, username, password):
    """Change or reset a staff user's password; ends every session of that user and clears a lockout."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError("密码至少 %d 个字符" % MIN_PASSWORD_CHARS,
                        "the password needs at least %d characters" % MIN_PASSWORD_CHARS)
    salt = os.urandom(16)
    password_hash = _hash_password(password, salt)
    with dbmod.transaction(conn):
        changed = conn.execute(
            "UPDATE web_staff_users SET password_hash = ?, password_salt = ?, failures = 0, locked_until_ms = 0, "
            "session_generation = session_generation + 1 WHERE username = ?", (password_hash, salt, username)).rowcount
    if not changed:
        raise AuthError("没有用户 %s" % username, "no user %s" % username)


def set_staff_disabled(conn, username, disabled=True):
    """Disable (or enable again) a staff user; either way every session of that user ends, so a cookie
    from before the user was disabled never comes back to life."""
    with dbmod.transaction(conn):
        changed = conn.execute("UPDATE web_staff_users SET disabled = ?, session_generation = session_generation + 1 "
                               "WHERE username = ?", (1 if disabled else 0, username)).rowcount
    if not changed:
        raise AuthError("没有用户 %s" % username, "no user %s" % username)


def staff_user(conn, staff_id):
    """{id, username, display_name, roles} of an enabled staff user, or None."""
    row = conn.execute("SELECT id, username, display_name, roles, session_generation FROM web_staff_users "
                       "WHERE id = ? AND disabled = 0", (staff_id,)).fetchone()
    if row is None:
        return None
    return {"id": row[0], "username": row[1], "display_name": row[2], "roles": set(row[3].split()),
            "session_generation": row[4]}


# --- cardholders ---------------------------------------------------------------------------------

def check_cardholder(conn, staff_number, pin, now_ms):
    """(person_id, account_id) when the staff/student number and card PIN match; a messages code
    string otherwise (pin_rules.refusal_texts words it; an unknown number gets the same countdown as
    a real one, so numbers cannot be probed)."""
    staff_number = (staff_number or "").strip()
    row = conn.execute("SELECT p.id, a.id FROM persons p JOIN accounts a ON a.person_id = p.id "
                       "WHERE p.staff_number = ? ORDER BY a.id LIMIT 1", (staff_number,)).fetchone()
    if row is None or not staff_number:
        return pin_rules.unknown_number(conn, staff_number, pin, now_ms)
    code = pin_rules.check_pin(conn, row[1], pin, now_ms)     # hashes before taking the write lock
    return (row[0], row[1]) if code in pin_rules.PIN_ACCEPTED else code


# --- the session ---------------------------------------------------------------------------------

def now_ms():
    """The app's clock for sessions: `NOW_MS` in the app config (a function) when set, else the
    system clock. Tests move time with it instead of sleeping."""
    clock = current_app.config.get("NOW_MS")
    return clock() if clock is not None else dbmod.now_ms()


def session_timeouts_ms(app, kind):
    """(idle, absolute) limits of a session kind in ms, from the app config or its defaults."""
    return tuple(int(app.config.get(key, default)) * 1000 for key, _, default in SESSION_TIMEOUTS_S[kind])


def configure_session_timeouts(app):
    """Fill the timeout settings from the environment (YKT_...), unless the config already has them."""
    for settings in SESSION_TIMEOUTS_S.values():
        for key, variable, default in settings:
            value = app.config.get(key, os.environ.get(variable, default))
            try:
                value = int(value)
            except (TypeError, ValueError):
                value = -1
            if value <= 0:
                raise ValueError("会话时限 %s 应为正整数秒 / %s must be a positive number of seconds" % (variable, variable))
            app.config[key] = value


def start_session(kind, **identity):
    """Replace the session with a fresh one for this identity (new CSRF token)."""
    session.clear()
    session["kind"] = kind
    session.update(identity)
    session["started_ms"] = session["seen_ms"] = now_ms()
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def end_session():
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang


def _session_current(kind, generation):
    """True when the session of this kind is still its account's / user's current generation and is
    neither idle too long nor too old; refreshes `seen_ms`."""
    if session.get("kind") != kind or generation is None or session.get("generation") != generation:
        return False
    idle_ms, max_ms = session_timeouts_ms(current_app, kind)
    now = now_ms()
    started_ms, seen_ms = session.get("started_ms"), session.get("seen_ms")
    if type(started_ms) is not int or type(seen_ms) is not int:
        return False
    if now - seen_ms > idle_ms or now - started_ms > max_ms:
        return False
    if now - seen_ms >= SEEN_REFRESH_MS:
        session["seen_ms"] = now
    return True


def _session_generation(conn, account_id):
    row = conn.execute("SELECT session_generation FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return None if row is None else row[0]


def start_cardholder_session(conn, person_id, account_id):
    """A fresh cardholder session, valid until the account's session generation moves on."""
    start_session("cardholder", person_id=person_id, account_id=account_id,
                  generation=_session_generation(conn, account_id))


def renew_cardholder_session(conn):
    """Keep this browser signed in after its own PIN change ended the account's other sessions."""
    if session.get("kind") == "cardholder":
        session["generation"] = _session_generation(conn, session["account_id"])


def end_cardholder_sessions(conn):
    """Sign out: end this session and every other session of the same account (other browsers, a
    copied cookie). A cookie that is no longer current ends only itself."""
    if session.get("kind") == "cardholder":
        with dbmod.transaction(conn):
            conn.execute("UPDATE accounts SET session_generation = session_generation + 1 "
                         "WHERE id = ? AND session_generation = ?", (session["account_id"], session.get("generation")))
    end_session()


def start_staff_session(conn, staff_id):
    """A fresh staff session, valid until the user's session generation moves on."""
    row = conn.execute("SELECT session_generation FROM web_staff_users WHERE id = ?", (staff_id,)).fetchone()
    assert row is not None, "a staff user that just signed in exists"
    start_session("staff", staff_id=staff_id, generation=row[0])


def end_staff_sessions(conn):
    """Sign out: end this session and every other session of the same staff user (a copied cookie
    included). A cookie that is no longer current ends only itself."""
    if session.get("kind") == "staff":
        with dbmod.transaction(conn):
            conn.execute("UPDATE web_staff_users SET session_generation = session_generation + 1 "
                         "WHERE id = ? AND session_generation = ?", (session.get("staff_id"), session.get("generation")))
    end_session()


def csrf_token():
    """The session's CSRF token, created on first use (the sign-in forms need one too)."""
    token = session.get(CSRF_FIELD)
    if not token:
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def form_key():
    """A one-time key for a form that books money, issued with the page (template global). The
    service derives the order / payment id from it, so submitting the same form twice (a double
    click, a resent POST) books once and shows the first receipt. Signed, so only keys we issued
    count, and they expire."""
    return _form_key_signer().dumps(secrets.token_urlsafe(16))


def submitted_form_key():
    """The form's one-time key, or None when it is missing, forged or expired (the page is stale)."""
    try:
        return _form_key_signer().loads(request.form.get(FORM_KEY_FIELD, ""), max_age=FORM_KEY_MAX_AGE_S)
    except itsdangerous.BadData:
        return None


def _form_key_signer():
    return itsdangerous.URLSafeTimedSerializer(current_app.secret_key, salt="ykt-form-key")


def check_csrf():
    """before_request of the web blueprints: every state-changing request must carry the token."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    expected = session.get(CSRF_FIELD)
    sent = request.form.get(CSRF_FIELD, "")
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        current_app.logger.warning("CSRF token missing or wrong: %s %s", request.method, request.path)
        abort(400)


def cardholder_required(view):
    """The view runs only for a signed-in cardholder; g.account_id / g.person_id come from the session
    (never from the URL or the form)."""
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if session.get("kind") != "cardholder":
            return redirect(url_for("portal.sign_in", next=request.path))
        current = _session_generation(dbmod.get_db(), session["account_id"])
        if not _session_current("cardholder", current):    # signed out, PIN changed, idle or too old
            end_session()
            return redirect(url_for("portal.sign_in", next=request.path))
        g.account_id = session["account_id"]
        g.person_id = session["person_id"]
        assert type(g.account_id) is int and type(g.person_id) is int
        return view(*args, **kwargs)
    return wrapped


# The staff areas of the pages: (role, home endpoint, sign-in endpoint, path prefix), in the order a
# user with several roles lands on them. Each area has its own front door (sign-in page).
STAFF_AREAS = (("hall", "hall_pages.search", "hall_pages.sign_in", "/hall/"),
               ("finance", "finance_pages.index", "finance_pages.sign_in", "/finance/"),
               ("admin", "admin_pages.fleet", "admin_pages.sign_in", "/admin/"))


def safe_next(target):
    """`target` when it is a path of a staff area of this site ("/finance/2024-05-01"), else None: a
    sign-in never sends anyone to another site ("//evil.example", "https://...", "/\\evil") nor
    to a path outside the staff pages."""
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(char) < 0x20 or ord(char) == 0x7f for char in target):
        return None
    if not any(target == prefix[:-1] or target.startswith(prefix) for _r, _h, _s, prefix in STAFF_AREAS):
        return None
    return target


def staff_landing(roles, area=None):
    """Where a signed-in staff user goes: the home of `area` ("hall", "finance") when they have its
    role, else the first area they have a role for; None when their roles open no page."""
    homes = [(role, home) for role, home, _sign_in, _prefix in STAFF_AREAS if role in roles]
    for role, home in homes:
        if role == area:
            return url_for(home)
    return url_for(homes[0][1]) if homes else None


def after_staff_sign_in(conn, staff_id, area):
    """Where a staff sign-in at `area`'s front door goes: the `next` page asked for (a staff page of
    this site only), else the user's landing by role; an area home when their roles open no page
    (its 403 page then says which role is needed)."""
    asked = safe_next(request.values.get("next"))
    if asked:
        return asked
    user = staff_user(conn, staff_id)
    landing = staff_landing(user["roles"] if user else (), area)
    return landing or url_for(next(home for role, home, _s, _p in STAFF_AREAS if role == area))


def staff_sign_in(area, template):
    """The sign-in view of a staff area's front door (GET the form, POST username + password; the
    CSRF token is checked first). The form carries `next` (safe_next) through the POST."""
    username = ""
    if request.method == "POST":
        check_csrf()
        conn = dbmod.get_db()
        username = request.form.get("username", "").strip()
        try:
            staff_id = check_staff_password(conn, username, request.form.get("password", ""), dbmod.now_ms())
        except AuthError as error:
            flash(error.text(g.lang), "error")
            return render_template(template, username=username, next=safe_next(request.values.get("next"))), 401
        start_staff_session(conn, staff_id)
        return redirect(after_staff_sign_in(conn, staff_id, area))
    return render_template(template, username=username, next=safe_next(request.args.get("next")))


def staff_sign_in_url(role, next_path=None):
    """The sign-in page of the area that needs `role` (the hall's for roles without pages of their own)."""
    endpoint = next((sign_in for area, _home, sign_in, _p in STAFF_AREAS if area == role), "hall_pages.sign_in")
    return url_for(endpoint, next=next_path) if next_path else url_for(endpoint)


def _asked_path():
    """The page to come back to after signing in: only a page (GET), never a form's target, and its
    path only (a search's query string is not echoed on the sign-in page)."""
    return request.path if request.method == "GET" else None


def staff_required(role):
    """The view runs only for a signed-in staff user with `role` (g.staff). Not signed in, or the
    session has ended: to the area's sign-in page with `next` back here. Signed in without the
    role: 403, the error page says which role is needed (g.needed_role) and where the user can go."""
    assert role in ROLES

    def decorate(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if session.get("kind") != "staff":
                return redirect(staff_sign_in_url(role, _asked_path()))
            user = staff_user(dbmod.get_db(), session.get("staff_id"))
            if user is None or not _session_current("staff", user["session_generation"]):
                end_session()     # disabled, signed out, password changed, idle or too old
                return redirect(staff_sign_in_url(role, _asked_path()))
            g.staff = user
            if role not in user["roles"]:
                g.needed_role = role
                abort(403)
            return view(*args, **kwargs)
        return wrapped
    return decorate


# --- staff action log ----------------------------------------------------------------------------

def log_action(conn, staff, action, person_id=None, account_id=None, card_number=None, amount_fen=None,
               detail=None, now_ms=None):
    """Record who did what to whom; call inside the transaction of the action itself so the log and
    the change commit together. Returns the action id (the receipt number)."""
    assert conn.in_transaction, "log the action in the transaction that does it"
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    return conn.execute(
        "INSERT INTO staff_actions (staff_user_id, username, action, person_id, account_id, card_number, "
        "amount_fen, detail, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (staff["id"], staff["username"], action, person_id, account_id, card_number, amount_fen,
         json.dumps(detail or {}, ensure_ascii=False, sort_keys=True), now_ms)).fetchone()[0]


_ACTION_FIELDS = ("source", "id", "username", "display_name", "via", "action", "card_number", "amount_fen",
                  "detail", "time_ms")


def actions_for_person(conn, person_id, limit=50, offset=0):
    """Everything done on a person, newest first: the staff action log (`source` staff: `id` is the
    receipt number, `username` / `display_name` the clerk) and the holder's own actions in the portal
    or the app (`source` holder, `via` where; services/holder_actions.py). At most MAX_LOG_ROWS_SHOWN
    rows from `offset`; count_actions_for_person gives the total for paging."""
    limit = max(1, min(limit, MAX_LOG_ROWS_SHOWN))
    rows = conn.execute(
        "SELECT 'staff' AS source, s.id, s.username, u.display_name, NULL AS via, s.action, s.card_number, "
        "s.amount_fen, s.detail, s.time_ms FROM staff_actions s LEFT JOIN web_staff_users u ON u.id = s.staff_user_id "
        "WHERE s.person_id = ? UNION ALL "
        "SELECT 'holder', h.id, NULL, NULL, h.via, h.action, h.card_number, h.amount_fen, h.detail, h.time_ms "
        "FROM holder_actions h WHERE h.person_id = ? "
        "ORDER BY time_ms DESC, source DESC, id DESC LIMIT ? OFFSET ?",
        (person_id, person_id, limit, max(0, offset))).fetchall()
    actions = [dict(zip(_ACTION_FIELDS, row)) for row in rows]
    for entry in actions:
        entry["detail"] = json.loads(entry["detail"] or "{}")
    return actions


def count_actions_for_person(conn, person_id):
    """How many lines actions_for_person has for the person, staff and holder together."""
    return conn.execute("SELECT (SELECT count(*) FROM staff_actions WHERE person_id = ?) + "
                        "(SELECT count(*) FROM holder_actions WHERE person_id = ?)", (person_id, person_id)).fetchone()[0]


def action(conn, action_id):
    row = conn.execute("SELECT id, staff_user_id, username, action, person_id, account_id, card_number, amount_fen, "
                       "detail, time_ms FROM staff_actions WHERE id = ?", (action_id,)).fetchone()
    if row is None:
        return None
    keys = ("id", "staff_user_id", "username", "action", "person_id", "account_id", "card_number", "amount_fen",
            "detail", "time_ms")
    result = dict(zip(keys, row))
    result["detail"] = json.loads(result["detail"] or "{}")
    return result
