"""Cardholder PINs: the initial PIN rule, salted scrypt hashes, and a lockout after wrong attempts.

The initial PIN is the last six characters of the holder's ID number with letters read as 0 (the
staff/student number when there is no ID number, left-padded with 0) - the rule the old system's
users know. It is hashed the first time it is needed (bulk population stays fast); from then on only
the salted hash is consulted. PINs are checked online only (a terminal never sees one at rest).

scrypt costs tens of milliseconds and anyone can make us run it (a sign-in with a guessed number), so
a check hashes before it takes the database's write lock (prepare_pin) and then records the outcome
in a short transaction that re-checks the lockout (record_pin), so sign-in attempts never make a
terminal sync wait. (check_pin called inside a caller's transaction still hashes under the lock.)
"""
import hashlib
import hmac
import os

from sync_server import db as dbmod

PIN_DIGITS = 6
MAX_PIN_FAILURES = 5
PIN_LOCKOUT_MS = 30 * 60 * 1000
SCRYPT_PARAMS = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}  # PINs and staff passwords
# check_pin codes that prove the PIN was right (it reports a blocked or indebted account only after the
# hash matched): such an account may still sign in to see its balance and recharge.
PIN_ACCEPTED = ("pin_ok", "account_blocked", "account_in_debt")


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
        return "pin_locked"
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
        return "pin_locked"
    matched = attempt.matched
    if pin_hash != attempt.pin_hash:
        matched = hmac.compare_digest(hash_pin(attempt.pin, salt), pin_hash)
    if not matched:
        failures += 1
        locked_until_ms = now_ms + PIN_LOCKOUT_MS if failures >= MAX_PIN_FAILURES else 0
        conn.execute("UPDATE accounts SET pin_failures = ?, pin_locked_until_ms = ? WHERE id = ?",
                     (0 if locked_until_ms else failures, locked_until_ms, account_id))
        return "pin_locked" if locked_until_ms else "pin_wrong"
    if failures:
        conn.execute("UPDATE accounts SET pin_failures = 0 WHERE id = ?", (account_id,))
    if blocked:
        return "account_blocked"
    if in_debt:
        return "account_in_debt"
    return "pin_ok"


def check_pin(conn, account_id, pin, now_ms):
    """Returns a messages code: pin_ok, pin_wrong, pin_locked, pin_format, account_unknown, ...

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
