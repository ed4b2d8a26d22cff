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


def test_wrong_pins_tell_the_tries_left_then_how_long_the_lockout_lasts(site):
    conn, account_id = site["conn"], site["account_id"]
    now_ms = dbmod.now_ms()
    told = []
    for _ in range(pin_rules.MAX_PIN_FAILURES):
        with pytest.raises(services.ServiceError) as refused:
            pin_service.change_pin(conn, account_id, "000000", "802417", now_ms=now_ms)
        told.append(refused.value)
    assert [e.code for e in told] == ["pin_wrong"] * 4 + ["pin_locked"]
    assert [e.details for e in told[:4]] == [{"tries_left": n} for n in (4, 3, 2, 1)]
    assert told[0].zh == "密码错误，还可尝试 4 次" and told[0].en == "wrong PIN: 4 tries left"
    assert told[4].details == {"locked_until_ms": now_ms + pin_rules.PIN_LOCKOUT_MS, "retry_after_s": 1800}
    assert "请 30 分钟后" in told[4].zh and told[4].status == 423
    with pytest.raises(services.ServiceError) as refused:        # the right PIN ten minutes on: still locked
        pin_service.change_pin(conn, account_id, PIN, "802417", now_ms=now_ms + 600000)
    assert refused.value.details["retry_after_s"] == 1200 and "请 20 分钟后" in refused.value.zh
    assert pin_rules.check_pin(conn, account_id, PIN, now_ms + pin_rules.PIN_LOCKOUT_MS + 1) == "pin_ok"


def test_a_portal_sign_in_counts_down_alike_for_a_number_nobody_has(site):
    conn, now_ms = site["conn"], dbmod.now_ms()
    real = [auth.check_cardholder(conn, "P0001", "000000", now_ms) for _ in range(5)]
    unknown = [auth.check_cardholder(conn, "NOBODY", "000000", now_ms) for _ in range(5)]
    for outcomes in (real, unknown):
        assert [o.tries_left for o in outcomes[:4]] == [4, 3, 2, 1] and outcomes[4] == "pin_locked"
        assert outcomes[4].locked_until_ms == now_ms + pin_rules.PIN_LOCKOUT_MS
    for number in ("P0001", "NOBODY"):
        later = auth.check_cardholder(conn, number, "000000", now_ms + 60000)
        assert later == "pin_locked" and later.locked_until_ms == now_ms + pin_rules.PIN_LOCKOUT_MS
        after = auth.check_cardholder(conn, number, "000000", now_ms + pin_rules.PIN_LOCKOUT_MS + 1)
        assert after == "pin_wrong" and after.tries_left == 4
        assert auth.check_cardholder(conn, number, "12", now_ms) == "pin_format"
    assert binding.sign_in(conn, "kiosk-1", "P0001", PIN, now_ms=now_ms + pin_rules.PIN_LOCKOUT_MS + 2)
    with pytest.raises(services.ServiceError) as refused:      # the app's sign-in shares the count
        binding.sign_in(conn, "kiosk-1", "NOBODY", "000000", now_ms=now_ms + pin_rules.PIN_LOCKOUT_MS + 2)
    assert refused.value.details == {"tries_left": 3}


def test_the_counts_of_numbers_nobody_has_stay_bounded_and_leave_the_binding_throttle_alone(site, monkeypatch):
    conn, now_ms = site["conn"], dbmod.now_ms()
    monkeypatch.setattr(pin_rules, "MAX_UNKNOWN_NUMBERS", 5)
    monkeypatch.setattr(pin_rules, "hash_pin", lambda pin, salt: b"")        # the count, not the hashing
    with dbmod.transaction(conn):
        conn.execute("INSERT INTO bind_guessers (guesser, failures, locked_until_ms, updated_ms) "
                     "VALUES ('app:guesser', 3, 0, ?)", (now_ms - 1000,))
    for index in range(20):
        pin_rules.unknown_number(conn, "N%02d" % index, "000000", now_ms + index)
    rows = conn.execute("SELECT guesser FROM bind_guessers ORDER BY guesser").fetchall()
    assert [r[0] for r in rows] == ["app:guesser"] + ["pin-number:N%02d" % i for i in range(15, 20)]


@pytest.mark.parametrize("weak, code", [("222222", "pin_weak_same_digit"), ("456789", "pin_weak_run"),
                                        ("876543", "pin_weak_run"), ("900101", "pin_weak_birthday"),
                                        ("010190", "pin_weak_birthday"), ("199001", "pin_weak_birthday"),
                                        (PIN, "pin_weak_initial")])
def test_a_weak_new_pin_is_refused_and_nothing_changes(site, weak, code):
    conn, account_id = site["conn"], site["account_id"]
    pin_service.change_pin(conn, account_id, PIN, "802417")
    with pytest.raises(services.ServiceError) as refused:
        pin_service.change_pin(conn, account_id, "802417", weak)
    assert refused.value.code == code and refused.value.status == 400 and "另选" in refused.value.zh
    with pytest.raises(services.ServiceError) as refused:
        pin_service.change_pin(conn, account_id, "000000", weak)     # refused before the old PIN is checked
    assert refused.value.code == code
    assert conn.execute("SELECT pin_failures FROM accounts WHERE id = ?", (account_id,)).fetchone()[0] == 0
    assert pin_rules.check_pin(conn, account_id, "802417", dbmod.now_ms()) == "pin_ok"


def test_a_staff_reset_refuses_a_weak_chosen_pin_but_not_the_initial_one(site):
    conn, account_id = site["conn"], site["account_id"]
    pin_service.change_pin(conn, account_id, PIN, "802417")
    for weak in ("333333", "123456", "900101"):
        with pytest.raises(services.ServiceError) as refused:
            pin_service.reset_pin(conn, account_id, "clerk", weak)
        assert refused.value.code.startswith("pin_weak_")
    assert pin_rules.check_pin(conn, account_id, "802417", dbmod.now_ms()) == "pin_ok"
    assert pin_service.reset_pin(conn, account_id, "clerk", PIN) is True        # typed: the initial PIN
    assert pin_service.reset_pin(conn, account_id, "clerk", "802419") is False
    assert pin_service.reset_pin(conn, account_id, "clerk") is True              # back to the initial PIN
    assert pin_rules.check_pin(conn, account_id, PIN, dbmod.now_ms()) == "pin_ok"
