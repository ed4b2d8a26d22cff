"""Cardholder PINs: the initial PIN rule, salted scrypt hashes, and a lockout after wrong attempts.

The initial PIN is the last six characters of the holder's ID number with letters read as 0 (the
staff/student number when there is no ID number, left-padded with 0) - the rule the old system's
users know. It is hashed the first time it is needed (bulk population stays fast); from then on only
the salted hash is consulted. PINs are checked online only (a terminal never sees one at rest).
"""
import hashlib
import hmac
import os

PIN_DIGITS = 6
MAX_PIN_FAILURES = 5
PIN_LOCKOUT_MS = 30 * 60 * 1000
_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def initial_pin(id_number, staff_number):
    source = id_number or staff_number or ""
    assert source, "a person needs an ID number or a staff/student number"
    tail = "".join(ch if ch.isdigit() else "0" for ch in source[-PIN_DIGITS:])
    return tail.rjust(PIN_DIGITS, "0")


def hash_pin(pin, salt):
    return hashlib.scrypt(pin.encode(), salt=salt, **_SCRYPT)


def valid_pin_format(pin):
    return isinstance(pin, str) and len(pin) == PIN_DIGITS and pin.isdigit()


def set_pin(conn, account_id, pin):
    assert valid_pin_format(pin)
    salt = os.urandom(16)
    conn.execute("UPDATE accounts SET pin_hash = ?, pin_salt = ?, pin_failures = 0, pin_locked_until_ms = 0 "
                 "WHERE id = ?", (hash_pin(pin, salt), salt, account_id))


def ensure_pin(conn, account_id):
    """Store the hash of the initial PIN if this account has none yet."""
    row = conn.execute("SELECT a.pin_hash, p.id_number, p.staff_number FROM accounts a "
                       "JOIN persons p ON p.id = a.person_id WHERE a.id = ?", (account_id,)).fetchone()
    if row is not None and row[0] is None:
        set_pin(conn, account_id, initial_pin(row[1], row[2]))


def check_pin(conn, account_id, pin, now_ms):
    """Returns a messages code: pin_ok, pin_wrong, pin_locked, pin_format, account_unknown, ...

    Call inside a transaction: failures and lockouts are written.
    """
    assert conn.in_transaction
    if not valid_pin_format(pin):
        return "pin_format"
    ensure_pin(conn, account_id)
    row = conn.execute("SELECT pin_hash, pin_salt, pin_failures, pin_locked_until_ms, blocked, in_debt "
                       "FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        return "account_unknown"
    pin_hash, salt, failures, locked_until_ms, blocked, in_debt = row
    if locked_until_ms > now_ms:
        return "pin_locked"
    if not hmac.compare_digest(hash_pin(pin, salt), pin_hash):
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
