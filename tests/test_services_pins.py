"""Card PIN checks on each store: the slow hash never runs while the database's write lock is held.

scrypt takes tens of milliseconds; anyone can trigger it (a portal sign-in, an app sign-in with a
guessed number). While it runs, a terminal sync must still be able to write. Each test replaces the
hash with one that first tries to take the write lock the way a terminal sync would without waiting
(SQLite: the writer flock, then BEGIN IMMEDIATE; PostgreSQL: the writer advisory lock, exclusively),
and records whether it could.
"""
import fcntl
import os
import sqlite3

import pytest

from firmware.core import card_layout
from sync_server import db as dbmod, pg_store, pin_rules, registry, services
from sync_server.services import binding, electricity, pins as pin_service
from sync_server.web import auth

PIN = pin_rules.initial_pin("110101199001011234", None)


@pytest.fixture
def site(database_location, monkeypatch):
    path = database_location
    conn = dbmod.init_db(path)
    _, account_id = registry.add_person(conn, "钱测试", card_layout.HOLDER_STUDENT, id_number="110101199001011234",
                                        staff_number="P0001", set_initial_pin=False)
    registry.recharge(conn, account_id, 5000)
    writer_blocked = []
    real_hash = pin_rules.hash_pin

    def hash_while_a_terminal_writes(pin, salt):
        writer_blocked.append(not _a_terminal_can_write(path))
        return real_hash(pin, salt)
    monkeypatch.setattr(pin_rules, "hash_pin", hash_while_a_terminal_writes)
    yield {"conn": conn, "account_id": account_id, "writer_blocked": writer_blocked, "location": path}
    conn.close()


def _a_terminal_can_write(path):
    """Take and release the write lock as a terminal sync does, without waiting for it."""
    if pg_store.is_postgresql(path):
        other = dbmod.connect(path)
        try:
            with pg_store.read_snapshot(other):
                return other.execute("SELECT pg_try_advisory_xact_lock(?)", (pg_store.WRITER_LOCK_KEY,)).fetchone()[0]
        finally:
            other.close()
    fd = os.open(path + dbmod.WRITER_LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            other.close()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_portal_sign_in_hashes_outside_the_write_lock(site):
    conn = site["conn"]
    assert auth.check_cardholder(conn, "P0001", "000000", dbmod.now_ms()) == "pin_wrong"
    assert isinstance(auth.check_cardholder(conn, "P0001", PIN, dbmod.now_ms()), tuple)
    assert auth.check_cardholder(conn, "NOBODY", PIN, dbmod.now_ms()) == "pin_wrong"
    assert site["writer_blocked"] and not any(site["writer_blocked"])


def test_pin_checked_operations_hash_outside_the_write_lock(site):
    conn, account_id = site["conn"], site["account_id"]
    electricity.import_rooms(conn, "楼栋,楼层,房间,电表号\n南1,2,201,\n")     # the hall's room list
    with pytest.raises(services.ServiceError) as refused:
        electricity.pay(conn, account_id, "南1", 2, "201", 100, pin="000000")
    assert refused.value.code == "pin_wrong"
    assert electricity.pay(conn, account_id, "南1", 2, "201", 100, pin=PIN)["parts"]
    pin_service.change_pin(conn, account_id, PIN, "135790")
    assert binding.sign_in(conn, "phone-1", "P0001", "135790")["account_id"] == account_id
    assert site["writer_blocked"] and not any(site["writer_blocked"])


def test_the_lockout_still_holds_and_counts_every_failure(site):
    conn, account_id = site["conn"], site["account_id"]
    for _ in range(pin_rules.MAX_PIN_FAILURES - 1):
        assert pin_rules.check_pin(conn, account_id, "000000", dbmod.now_ms()) == "pin_wrong"
    assert pin_rules.check_pin(conn, account_id, "000000", dbmod.now_ms()) == "pin_locked"
    assert pin_rules.check_pin(conn, account_id, PIN, dbmod.now_ms()) == "pin_locked"   # right, but locked
    assert pin_rules.check_pin(conn, account_id, PIN, dbmod.now_ms() + pin_rules.PIN_LOCKOUT_MS + 1) == "pin_ok"


def test_a_pin_changed_while_a_check_was_hashing_is_checked_against_the_new_one(site, monkeypatch):
    """The hash read before the lock may be stale by the time the outcome is recorded."""
    conn, account_id = site["conn"], site["account_id"]
    pin_rules.check_pin(conn, account_id, PIN, dbmod.now_ms())          # the initial PIN is stored
    hashing = pin_rules.hash_pin
    changed = []

    def hash_then_change(pin, salt):
        digest = hashing(pin, salt)
        if not changed:
            changed.append(True)
            other = dbmod.connect(site["location"])
            with dbmod.transaction(other):
                pin_rules.set_pin(other, account_id, "246802")
            other.close()
        return digest
    monkeypatch.setattr(pin_rules, "hash_pin", hash_then_change)
    assert pin_rules.check_pin(conn, account_id, PIN, dbmod.now_ms()) == "pin_wrong"
    assert pin_rules.check_pin(conn, account_id, "246802", dbmod.now_ms()) == "pin_ok"
