"""Cardholder PINs: the initial PIN rule, salted scrypt hashes, and a lockout after wrong attempts.

The initial PIN is the last six characters of the holder's ID number with letters read as 0 (the
staff/student number when there is no ID number, left-padded with 0) - the rule the old system's
users know. It is hashed the first time it is needed (bulk population stays fast); from then on only
the salted hash is consulted. PINs are checked online only (a terminal never sees one at rest).

scrypt costs tens of milliseconds and anyone can make us run it (a sign-in with a guessed number), so
a check hashes before it takes the database's write lock (prepare_pin) and then records the outcome
in a short transaction that re-checks the lockout (record_pin), so sign-in attempts never make a
terminal sync wait. (check_pin called inside a caller's transaction still hashes under the lock.)

What a person is told: a refused check's code is a PinOutcome that also carries the tries left after
a wrong PIN or the end of a lockout; refusal_texts words it ("密码错误，还可尝试 3 次", "已锁定，请 30
分钟后再试") and feedback gives the same as fields for the JSON API. A number nobody has is answered
like a real one (a countdown, then a lockout; unknown_number), so the answers do not tell which
numbers exist.

Weak PINs (weak_pin_reason) are refused whenever a PIN is chosen: one digit six times, a straight
run up or down (wrapping 9 -> 0, as 789012), the initial PIN, and the birth date of an 18-digit (or
old 15-digit) ID number: any PIN holding its month and day as MMDD or DDMM (so YYMMDD, MMDDYY,
DDMMYY and the like), or its year and month as YYYYMM or MMYYYY. A staff reset back to the initial
PIN is not a choice and stays allowed.
"""
import datetime
import hashlib
import hmac
import math
import os

from sync_server import db as dbmod, messages

PIN_DIGITS = 6
MAX_PIN_FAILURES = 5
PIN_LOCKOUT_MS = 30 * 60 * 1000
SCRYPT_PARAMS = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}  # PINs and staff passwords
# check_pin codes that prove the PIN was right (it reports a blocked or indebted account only after the
# hash matched): such an account may still sign in to see its balance and recharge.
PIN_ACCEPTED = ("pin_ok", "account_blocked", "account_in_debt")
MAX_UNKNOWN_NUMBERS = 10000     # numbers nobody has whose wrong PINs are counted (the newest kept)
UNKNOWN_NUMBER_KEY = "pin-number:"  # their rows in bind_guessers, apart from the binding throttle's own
_RUNS = "0123456789012345"
_BEIJING = datetime.timezone(datetime.timedelta(hours=8))


class PinOutcome(str):
    """A check's messages code - it is that string, so `== "pin_wrong"` holds - with what the person
    is told about the lockout: `tries_left` after a wrong PIN, `locked_until_ms` while locked."""

    def __new__(cls, code, tries_left=None, locked_until_ms=None):
        outcome = str.__new__(cls, code)
        outcome.tries_left, outcome.locked_until_ms = tries_left, locked_until_ms
        return outcome

    def __repr__(self):
        return "PinOutcome(%s, tries_left=%r, locked_until_ms=%r)" % (str(self), self.tries_left, self.locked_until_ms)


def _wrong(failures, now_ms):
    """The outcome of a wrong PIN that made `failures` in a row: tries left, or the new lockout."""
    if failures >= MAX_PIN_FAILURES:
        return PinOutcome("pin_locked", locked_until_ms=now_ms + PIN_LOCKOUT_MS)
    return PinOutcome("pin_wrong", tries_left=MAX_PIN_FAILURES - failures)


class PinAttempt:
    """What prepare_pin learnt without the write lock: the stored hash it compared against, whether the
    PIN matched it, and the salt when it hashed the initial PIN itself (record_pin stores that hash).
    Keeps the PIN for a re-check if the hash changed meanwhile; never shows it."""
    __slots__ = ("pin_hash", "matched", "seed_salt", "pin")

    def __init__(self, pin_hash, matched, seed_salt, pin):
        self.pin_hash, self.matched, self.seed_salt, self.pin = pin_hash, matched, seed_salt, pin

    def __repr__(self):
        return "PinAttempt(matched=%s)" % self.matched


def initial_pin(id_number, staff_number):
    source = id_number or staff_number or ""
    assert source, "a person needs an ID number or a staff/student number"
    tail = "".join(ch if ch.isdigit() else "0" for ch in source[-PIN_DIGITS:])
    return tail.rjust(PIN_DIGITS, "0")


def hash_pin(pin, salt):
    return hashlib.scrypt(pin.encode(), salt=salt, **SCRYPT_PARAMS)


def valid_pin_format(pin):
    return isinstance(pin, str) and len(pin) == PIN_DIGITS and pin.isdigit()


def new_pin_hash(pin):
    """(salt, hash) of a new PIN: compute it before the transaction that stores it (store_pin)."""
    assert valid_pin_format(pin)
    salt = os.urandom(16)
    return salt, hash_pin(pin, salt)


def store_pin(conn, account_id, salted_hash):
    """Set the PIN; this also ends every web session of the account (a new session generation)."""
    salt, pin_hash = salted_hash
    conn.execute("UPDATE accounts SET pin_hash = ?, pin_salt = ?, pin_failures = 0, pin_locked_until_ms = 0, "
                 "session_generation = session_generation + 1 WHERE id = ?", (pin_hash, salt, account_id))


def set_pin(conn, account_id, pin):
    store_pin(conn, account_id, new_pin_hash(pin))


def ensure_pin(conn, account_id):
    """Store the hash of the initial PIN if this account has none yet."""
    row = conn.execute("SELECT a.pin_hash, p.id_number, p.staff_number FROM accounts a "
                       "JOIN persons p ON p.id = a.person_id WHERE a.id = ?", (account_id,)).fetchone()
    if row is not None and row[0] is None:
        set_pin(conn, account_id, initial_pin(row[1], row[2]))


def _read(conn, account_id):
    return conn.execute("SELECT a.pin_hash, a.pin_salt, a.pin_failures, a.pin_locked_until_ms, a.blocked, a.in_debt, "
                        "p.id_number, p.staff_number FROM accounts a JOIN persons p ON p.id = a.person_id "
                        "WHERE a.id = ?", (account_id,)).fetchone()


def prepare_pin(conn, account_id, pin, now_ms):
    """The slow half of a PIN check, to run OUTSIDE any transaction: read the stored hash and the
    lockout, hash the PIN (scrypt, tens of ms). Returns a messages code when the answer is already
    known without writing (pin_format, account_unknown, pin_locked), else a PinAttempt for record_pin.
    Nothing is written, so the database's write lock is free while scrypt runs."""
    if not valid_pin_format(pin):
        return "pin_format"
    row = _read(conn, account_id)
    if row is None:
        return "account_unknown"
    pin_hash, salt, _, locked_until_ms, _, _, id_number, staff_number = row
    if locked_until_ms > now_ms:
        return PinOutcome("pin_locked", locked_until_ms=locked_until_ms)
    seed = None
    if pin_hash is None:        # the initial PIN is hashed on first use (see the module text)
        salt = os.urandom(16)
        pin_hash = hash_pin(initial_pin(id_number, staff_number), salt)
        seed = salt
    return PinAttempt(pin_hash, hmac.compare_digest(hash_pin(pin, salt), pin_hash), seed, pin)


def record_pin(conn, account_id, attempt, now_ms):
    """The short half, INSIDE the caller's transaction: re-check the lockout (another worker may have
    locked the account meanwhile), count the failure or clear the count. Returns a messages code.

    If the PIN changed between prepare_pin and now, the attempt is checked again here against the
    new hash (rare: only a PIN change racing the check pays for scrypt under the lock)."""
    assert conn.in_transaction
    if isinstance(attempt, str):
        return attempt
    if attempt.seed_salt is not None:
        conn.execute("UPDATE accounts SET pin_hash = ?, pin_salt = ? WHERE id = ? AND pin_hash IS NULL",
                     (attempt.pin_hash, attempt.seed_salt, account_id))
    row = _read(conn, account_id)
    if row is None:
        return "account_unknown"
    pin_hash, salt, failures, locked_until_ms, blocked, in_debt, _, _ = row
    if locked_until_ms > now_ms:
        return PinOutcome("pin_locked", locked_until_ms=locked_until_ms)
    matched = attempt.matched
    if pin_hash != attempt.pin_hash:
        matched = hmac.compare_digest(hash_pin(attempt.pin, salt), pin_hash)
    if not matched:
        outcome = _wrong(failures + 1, now_ms)
        locked_until_ms = outcome.locked_until_ms or 0
        conn.execute("UPDATE accounts SET pin_failures = ?, pin_locked_until_ms = ? WHERE id = ?",
                     (0 if locked_until_ms else failures + 1, locked_until_ms, account_id))
        return outcome
    if failures:
        conn.execute("UPDATE accounts SET pin_failures = 0 WHERE id = ?", (account_id,))
    if blocked:
        return "account_blocked"
    if in_debt:
        return "account_in_debt"
    return "pin_ok"


def check_pin(conn, account_id, pin, now_ms):
    """Returns a messages code: pin_ok, pin_wrong, pin_locked, pin_format, account_unknown, ...
    (pin_wrong and pin_locked as a PinOutcome: tries left, the end of the lockout).

    Failures and lockouts are written. Called outside a transaction, the hash runs without the write
    lock and the outcome is committed in a short transaction of its own. Called inside the caller's
    transaction, everything runs in it (the hash then holds the lock: prefer calling it outside).
    """
    if conn.in_transaction:
        return record_pin(conn, account_id, prepare_pin(conn, account_id, pin, now_ms), now_ms)
    attempt = prepare_pin(conn, account_id, pin, now_ms)
    if isinstance(attempt, str):
        return attempt
    with dbmod.transaction(conn):
        return record_pin(conn, account_id, attempt, now_ms)


# --- what a person is told -----------------------------------------------------------------------

def lockout_minutes(locked_until_ms, now_ms):
    """Whole minutes until the lockout ends, rounded up (never 0 while it lasts)."""
    return max(1, math.ceil((locked_until_ms - now_ms) / 60000))


def feedback(outcome, now_ms):
    """The fields a refused check adds to what a program is told: {"tries_left"} after a wrong PIN,
    {"locked_until_ms", "retry_after_s"} while locked; {} for any other code."""
    tries_left = getattr(outcome, "tries_left", None)
    locked_until_ms = getattr(outcome, "locked_until_ms", None)
    if outcome == "pin_wrong" and tries_left is not None:
        return {"tries_left": tries_left}
    if outcome == "pin_locked" and locked_until_ms is not None:
        return {"locked_until_ms": locked_until_ms,
                "retry_after_s": max(1, math.ceil((locked_until_ms - now_ms) / 1000))}
    return {}


def refusal_texts(outcome, now_ms):
    """(zh, en) a person reads for a check's code: the tries left after a wrong PIN (and a warning
    before the last one), the minutes and the Beijing time a lockout ends; the plain message else."""
    details = feedback(outcome, now_ms)
    if "tries_left" in details:
        if details["tries_left"] == 1:
            return _texts("pin_wrong_last_try", PIN_LOCKOUT_MS // 60000)
        return _texts("pin_wrong_tries", details["tries_left"])
    if "locked_until_ms" in details:
        until = datetime.datetime.fromtimestamp(details["locked_until_ms"] / 1000, _BEIJING).strftime("%H:%M")
        return _texts("pin_locked_until", lockout_minutes(details["locked_until_ms"], now_ms), until)
    return messages.MESSAGES[str(outcome)]


def _texts(code, *parameters):
    zh, en = messages.MESSAGES[code]
    return zh % parameters, en % parameters


def unknown_number(conn, number, pin, now_ms):
    """The answer to a PIN for a staff/student number nobody has: the same work (scrypt, a short write)
    and the same answers as a wrong PIN on a real account - a countdown, then a lockout - so they do
    not tell whether a number exists. Counted in the guessers' table (the binding throttle's) under
    UNKNOWN_NUMBER_KEY + number, shared by every server process; quiet rows go (the binding throttle's
    clean-up), and these rows are capped on their own."""
    if not valid_pin_format(pin):
        return "pin_format"         # what a real account answers, before any hashing
    hash_pin(pin, b"\0" * 16)
    key = UNKNOWN_NUMBER_KEY + str(number or "").strip()[:100]
    with dbmod.transaction(conn):
        row = conn.execute("SELECT failures, locked_until_ms FROM bind_guessers WHERE guesser = ?", (key,)).fetchone()
        failures, locked_until_ms = row if row is not None else (0, 0)
        if locked_until_ms > now_ms:
            return PinOutcome("pin_locked", locked_until_ms=locked_until_ms)
        outcome = _wrong(failures + 1, now_ms)
        conn.execute("INSERT INTO bind_guessers (guesser, failures, locked_until_ms, updated_ms) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (guesser) DO UPDATE SET failures = excluded.failures, "
                     "locked_until_ms = excluded.locked_until_ms, updated_ms = excluded.updated_ms",
                     (key, 0 if outcome.locked_until_ms else failures + 1, outcome.locked_until_ms or 0, now_ms))
        conn.execute("DELETE FROM bind_guessers WHERE guesser IN (SELECT guesser FROM bind_guessers WHERE guesser "
                     "LIKE ? ORDER BY locked_until_ms > ? DESC, updated_ms DESC LIMIT -1 OFFSET ?)",
                     (UNKNOWN_NUMBER_KEY + "%", now_ms, MAX_UNKNOWN_NUMBERS))
    return outcome


# --- weak PINs -----------------------------------------------------------------------------------

def birth_date(id_number):
    """The birth date in an 18-digit ID number (YYYYMMDD at positions 7-14) or an old 15-digit one
    (YYMMDD at 7-12, 19YY), as a date; None when there is none or it is not a real date."""
    id_number = (id_number or "").strip()
    if len(id_number) == 18 and id_number[:17].isdigit():
        digits = id_number[6:14]
    elif len(id_number) == 15 and id_number.isdigit():
        digits = "19" + id_number[6:12]
    else:
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def birthday_pins(born):
    """(substrings, whole PINs) a PIN must not hold for a birth date: MMDD and DDMM anywhere in it
    (YYMMDD, MMDDYY, DDMMYY, ...), and YYYYMM or MMYYYY as the whole PIN."""
    year, month, day = "%04d" % born.year, "%02d" % born.month, "%02d" % born.day
    return (month + day, day + month), (year + month, month + year)


def weak_pin_reason(pin, id_number, staff_number=None):
    """The messages code saying why a chosen 6-digit PIN is too easy to guess, or None: the initial
    PIN (from the ID number, else the staff/student number), one digit six times, a straight run,
    the ID number's birth date (see the module text). A PIN not of 6 digits is pin_format's business:
    None here."""
    if not valid_pin_format(pin):
        return None
    if (id_number or staff_number) and pin == initial_pin(id_number, staff_number):
        return "pin_weak_initial"
    if len(set(pin)) == 1:
        return "pin_weak_same_digit"
    if pin in _RUNS or pin[::-1] in _RUNS:
        return "pin_weak_run"
    born = birth_date(id_number)
    if born is not None:
        parts, wholes = birthday_pins(born)
        if pin in wholes or any(part in pin for part in parts):
            return "pin_weak_birthday"
    return None
