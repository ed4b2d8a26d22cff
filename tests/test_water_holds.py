"""Bluetooth water money against the real server (SQLite and PostgreSQL): a grant holds money, is
settled once whichever copy of its usage arrives first (the phone's receipt over /api/v1, the
dispenser's record in a sync batch), gives back the rest, and an unused hold expires. Replayed,
forged and other people's receipts change nothing; money is conserved at every step."""
import itertools

import pytest

from firmware.core import card_layout, sam, water_grants as w
from simulators.phone import PhoneApp, PhoneError
from sync_server import db as dbmod, ledger, pin_rules, registry, water_holds
from sync_server.ledger_store import SqliteStore
from sync_server.services import ServiceError, water as water_service

_serial = itertools.count(1)


class Holder:
    def __init__(self, server, water_fen=0, legacy_fen=0, main_fen=0):
        n = next(_serial)
        staff_number = "W%05d" % n
        id_number = "1101011990020%04dX" % n
        name = "水%d号" % n
        conn = server.connect()
        try:
            _person, self.account_id = registry.add_person(conn, name, card_layout.HOLDER_STUDENT,
                                                           id_number=id_number, staff_number=staff_number)
            for wallet, fen in (("water", water_fen), ("legacy", legacy_fen), ("main", main_fen)):
                if fen:
                    registry.recharge(conn, self.account_id, fen, wallet=wallet)
        finally:
            conn.close()
        self.phone = PhoneApp(server.url, "app-water-%d" % n)
        self.phone.bind(name, staff_number, pin_rules.initial_pin(id_number, staff_number))


class Dispenser:
    """The dispenser's side, by its real key and its gate (the radio is tests/test_dispenser_ble.py's)."""

    def __init__(self, server):
        self.client = server.add_terminal(category=2)
        self.id = self.client.terminal_id
        self.mac = w.grant_mac_fn(sam.water_key(server.master_key(), self.id))
        self.gate = w.GrantGate(self.id, self.mac, max_cap_fen=500, lifetime_ms=90000)
        self.challenges = itertools.count(1)

    def challenge(self):
        return self.gate.challenge(next(self.challenges).to_bytes(16, "big"), 0)

    def receipt(self, grant_id, seq, ml, fen, cap_fen, end_reason=w.END_BUTTON):
        return w.encode_receipt(self.mac, w.Receipt(self.id, grant_id, seq, ml, fen, cap_fen, 30000, end_reason))


def balances(server, account_id):
    conn = server.connect()
    try:
        return registry.balances_of(conn, account_id)
    finally:
        conn.close()


def assert_sound(server):
    conn = server.connect()
    try:
        assert ledger.check_balances(SqliteStore(conn)) == []
        count, fen = water_holds.open_holds(conn)
        hold_balance = SqliteStore(conn).balances([water_holds.hold_ledger_id(conn)])
        assert list(hold_balance.values()) == [fen]
        return count, fen
    finally:
        conn.close()


def test_a_grant_holds_money_and_the_phone_receipt_settles_it_once(live_server):
    holder = Holder(live_server, water_fen=100, legacy_fen=150, main_fen=1000)
    dispenser = Dispenser(live_server)
    granted = holder.phone.water_grant(dispenser.id, dispenser.challenge())
    assert granted["cap_fen"] == 500
    grant = dispenser.gate.accept(granted["grant"], 1000)
    assert (grant.grant_id, grant.account_id, grant.cap_fen) == (granted["grant_id"], holder.account_id, 500)
    # held: water and legacy first, then main
    assert balances(live_server, holder.account_id) == {"water": 0, "legacy": 0, "main": 750}
    assert assert_sound(live_server)[1] >= 500
    receipt = dispenser.receipt(grant.grant_id, 1, 1200, 36, 500)
    state = holder.phone.water_receipt(receipt)
    assert state["outcome"] == "settled" and state["status"] == "settled" and state["settled_fen"] == 36
    # 36 fen drawn from water first: the rest goes back in reverse order
    assert balances(live_server, holder.account_id) == {"water": 64, "legacy": 150, "main": 1000}
    assert holder.phone.water_receipt(receipt)["outcome"] == "already"          # replayed receipt
    # the dispenser's own record of the same session comes later: stored, books nothing more
    answer = dispenser.client.sync([dispenser.client.water_record(holder.account_id, 36, 1200, grant_id=grant.grant_id,
                                                                  seq=1)])
    assert answer["acked_seq"] == 1
    assert balances(live_server, holder.account_id) == {"water": 64, "legacy": 150, "main": 1000}
    conn = live_server.connect()
    try:
        assert conn.execute("SELECT booked FROM terminal_records WHERE terminal_id = ?",
                            (dispenser.id,)).fetchall() == [(1,)]
        assert conn.execute("SELECT ml, amount_fen, grant_id FROM water_sessions WHERE terminal_id = ?",
                            (dispenser.id,)).fetchall() == [(1200, 36, grant.grant_id)]
        merchant_fen = conn.execute("SELECT sum(amount_fen) FROM transfers WHERE id LIKE ?",
                                    ("wp/%d/%%" % grant.grant_id,)).fetchone()[0]
        assert merchant_fen == 36
    finally:
        conn.close()
    assert_sound(live_server)


def test_the_dispenser_batch_settles_first_and_the_phone_copy_is_already_done(live_server):
    holder = Holder(live_server, water_fen=300)
    dispenser = Dispenser(live_server)
    granted = holder.phone.water_grant(dispenser.id, dispenser.challenge())
    assert granted["cap_fen"] == 300                   # all there is: the cap follows the balance
    dispenser.client.sync([dispenser.client.water_record(holder.account_id, 0, 0, grant_id=granted["grant_id"],
                                                         end_reason=w.END_LINK_LOST, seq=1)])
    assert balances(live_server, holder.account_id)["water"] == 300
    state = holder.phone.water_grant_state(granted["grant_id"])
    assert state["status"] == "settled" and state["settled_via"] == "dispenser" and state["settled_fen"] == 0
    late_copy = dispenser.receipt(granted["grant_id"], 1, 0, 0, 300, w.END_LINK_LOST)
    assert holder.phone.water_receipt(late_copy)["outcome"] == "already"
    assert_sound(live_server)


def test_two_dispensers_cannot_spend_the_same_money(live_server):
    holder = Holder(live_server, water_fen=400)
    first, second, third = Dispenser(live_server), Dispenser(live_server), Dispenser(live_server)
    assert holder.phone.water_grant(first.id, first.challenge())["cap_fen"] == 400
    with pytest.raises(PhoneError) as refused:
        holder.phone.water_grant(second.id, second.challenge())
    assert refused.value.status == 409 and "insufficient_funds" in refused.value.body
    registry_conn = live_server.connect()
    try:
        registry.recharge(registry_conn, holder.account_id, 100, wallet="water")
    finally:
        registry_conn.close()
    assert holder.phone.water_grant(second.id, second.challenge())["cap_fen"] == 100
    registry_conn = live_server.connect()
    try:
        registry.recharge(registry_conn, holder.account_id, 100, wallet="water")
    finally:
        registry_conn.close()
    with pytest.raises(PhoneError) as refused:          # two open sessions already
        holder.phone.water_grant(third.id, third.challenge())
    assert refused.value.status == 429
    assert_sound(live_server)


def test_bad_requests_are_refused_and_change_nothing(live_server):
    holder = Holder(live_server, water_fen=300)
    other = Holder(live_server, water_fen=300)
    dispenser = Dispenser(live_server)
    canteen = live_server.add_terminal()
    challenge = dispenser.challenge()
    before = balances(live_server, holder.account_id)
    for dispenser_id, text, status in ((canteen.terminal_id, w.encode_challenge(canteen.terminal_id, bytes(16)), 404),
                                       (dispenser.id, b"\x01\x02", 400),
                                       (dispenser.id + 1, challenge, 400),      # the challenge names another
                                       (99999999, w.encode_challenge(99999999, bytes(16)), 404)):
        with pytest.raises(PhoneError) as refused:
            holder.phone.water_grant(dispenser_id, text)
        assert refused.value.status == status, refused.value.body
    for body in ({"dispenser_id": dispenser.id, "challenge": "zz"}, {"dispenser_id": "7", "challenge": challenge.hex()},
                 {"dispenser_id": 10 ** 30, "challenge": challenge.hex()}, {"challenge": "00" * 5000}):
        with pytest.raises(PhoneError) as refused:
            holder.phone._call("POST", "/water/grants", body)
        assert refused.value.status in (400, 413)
    assert balances(live_server, holder.account_id) == before
    granted = holder.phone.water_grant(dispenser.id, challenge)
    assert holder.phone.water_grant(dispenser.id, challenge)["grant_id"] == granted["grant_id"]   # a double tap
    with pytest.raises(PhoneError) as refused:                     # someone else's phone, same challenge
        other.phone.water_grant(dispenser.id, challenge)
    assert refused.value.status == 409
    receipt = dispenser.receipt(granted["grant_id"], 1, 100, 3, granted["cap_fen"])
    with pytest.raises(PhoneError) as refused:
        other.phone.water_receipt(receipt)
    assert refused.value.status == 403
    forged = bytearray(receipt)
    forged[20] ^= 0x7F                                             # fen raised after the MAC
    other_key = w.encode_receipt(w.grant_mac_fn(b"x" * 32), w.decode_receipt(receipt))
    for bad in (bytes(forged), other_key, b"\x01" * 10):
        with pytest.raises(PhoneError) as refused:
            holder.phone.water_receipt(bad)
        assert refused.value.status == 400
    with pytest.raises(PhoneError) as refused:
        holder.phone.water_grant_state(granted["grant_id"] + 1000)
    assert refused.value.status == 404
    with pytest.raises(PhoneError) as refused:
        other.phone.water_grant_state(granted["grant_id"])
    assert refused.value.status == 403
    assert holder.phone.water_grant_state(granted["grant_id"])["status"] == "held"
    assert holder.phone.water_receipt(receipt)["settled_fen"] == 3
    assert_sound(live_server)


def test_an_unused_hold_expires_and_a_late_receipt_is_charged_once(live_server):
    holder = Holder(live_server, water_fen=200, main_fen=100)
    dispenser = Dispenser(live_server)
    master_key = live_server.master_key()
    conn = live_server.connect()
    try:
        issued = water_service.issue_grant(conn, master_key, holder.account_id, dispenser.id, dispenser.challenge().hex(),
                                           now_ms=1000000)
        assert issued["cap_fen"] == 300 and registry.balances_of(conn, holder.account_id)["main"] == 0
        with pytest.raises(ServiceError) as refused:          # nothing left to hold
            water_service.issue_grant(conn, master_key, holder.account_id, dispenser.id, dispenser.challenge().hex(),
                                      now_ms=1000001)
        assert refused.value.code == "insufficient_funds"
        row = water_holds.grant_row(conn, issued["grant_id"])
        with dbmod.transaction(conn):
            assert water_holds.release_expired(conn, row["hold_until_ms"] - 1) == 0
            assert water_holds.release_expired(conn, row["hold_until_ms"] + 1) == 1
            assert water_holds.release_expired(conn, row["hold_until_ms"] + 2) == 0
        assert registry.balances_of(conn, holder.account_id) == {"water": 200, "legacy": 0, "main": 100}
    finally:
        conn.close()
    assert holder.phone.water_grant_state(issued["grant_id"])["status"] == "released"
    receipt = dispenser.receipt(issued["grant_id"], 3, 9000, 250, 300, w.END_CAP)
    assert holder.phone.water_receipt(receipt)["outcome"] == "late"
    assert balances(live_server, holder.account_id) == {"water": 0, "legacy": 0, "main": 50}
    assert holder.phone.water_receipt(receipt)["outcome"] == "already"
    dispenser.client.sync([dispenser.client.water_record(holder.account_id, 250, 9000, grant_id=issued["grant_id"],
                                                         seq=1)])
    assert balances(live_server, holder.account_id) == {"water": 0, "legacy": 0, "main": 50}
    assert assert_sound(live_server)[0] >= 0


def test_card_sessions_book_like_taps_and_a_foreign_grant_record_books_nothing(live_server):
    holder = Holder(live_server, water_fen=20, legacy_fen=30, main_fen=100)
    conn = live_server.connect()
    try:
        identity, _ = registry.issue_card_record(conn, holder.account_id, b"\x05\x06\x07\x08")
    finally:
        conn.close()
    dispenser, elsewhere = Dispenser(live_server), Dispenser(live_server)
    granted = holder.phone.water_grant(elsewhere.id, elsewhere.challenge())
    client = dispenser.client
    answer = client.sync([client.water_record(holder.account_id, 45, 1500, card_number=identity.card_number,
                                              tap_counter=1),
                          client.water_record(holder.account_id, 0, 0, card_number=identity.card_number, tap_counter=2),
                          client.water_record(holder.account_id, 30, 1000, grant_id=granted["grant_id"])])
    assert answer["acked_seq"] == 3
    conn = live_server.connect()
    try:
        assert conn.execute("SELECT seq, booked FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                            (dispenser.id,)).fetchall() == [(1, 1), (2, 1), (3, 0)]
        assert conn.execute("SELECT seq, reason FROM record_anomalies WHERE terminal_id = ?",
                            (dispenser.id,)).fetchall() == [(3, "unknown_grant")]
        assert conn.execute("SELECT count(*) FROM water_sessions WHERE terminal_id = ?", (dispenser.id,)).fetchone() == (3,)
    finally:
        conn.close()
    # the card session drew 45 fen: water 20, legacy 25 (the grant elsewhere holds the rest)
    assert holder.phone.water_grant_state(granted["grant_id"])["status"] == "held"
    assert_sound(live_server)


def test_a_grant_the_dispenser_refused_is_given_up_and_its_money_comes_back(live_server):
    holder = Holder(live_server, water_fen=300)
    other = Holder(live_server, water_fen=300)
    dispenser = Dispenser(live_server)
    granted = holder.phone.water_grant(dispenser.id, dispenser.challenge())
    assert balances(live_server, holder.account_id)["water"] == 0
    with pytest.raises(PhoneError) as refused:
        other.phone.water_give_up(granted["grant_id"])
    assert refused.value.status == 403
    assert holder.phone.water_give_up(granted["grant_id"])["status"] == "released"
    assert holder.phone.water_give_up(granted["grant_id"])["status"] == "released"      # twice: nothing more
    assert balances(live_server, holder.account_id)["water"] == 300
    # the dispenser had started after all: its receipt is charged once, from the wallets
    receipt = dispenser.receipt(granted["grant_id"], 1, 500, 15, granted["cap_fen"])
    assert holder.phone.water_receipt(receipt)["outcome"] == "late"
    assert balances(live_server, holder.account_id)["water"] == 285
    assert_sound(live_server)


def test_the_servers_scheduler_releases_expired_holds(live_server):
    from sync_server.finance import scheduler
    holder = Holder(live_server, water_fen=300)
    dispenser = Dispenser(live_server)
    granted = holder.phone.water_grant(dispenser.id, dispenser.challenge())
    conn = live_server.connect()
    try:
        until_ms = water_holds.grant_row(conn, granted["grant_id"])["hold_until_ms"]
        assert scheduler.release_holds(conn, until_ms - 1) >= 0
        assert water_holds.grant_row(conn, granted["grant_id"])["status"] == "held"
        assert scheduler.release_holds(conn, until_ms + 1) >= 1
        assert water_holds.grant_row(conn, granted["grant_id"])["status"] == "released"
    finally:
        conn.close()
    assert balances(live_server, holder.account_id)["water"] == 300
