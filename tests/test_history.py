"""The statement's water type (用水) against the real server (SQLite and PostgreSQL), over /api/v1.

A dispenser charge is listed under water whichever wallets paid it (one line per wallet drawn on),
a canteen tap is not, and a Bluetooth grant's hold and release are, netting to what the session
drew; a grant given up and charged late is a water purchase. Every row names its merchant's
category, and the other types list what they listed before.
"""
import itertools
import json

import pytest

from firmware.core import card_layout, sam, wallets as wallet_rules, water_grants as w
from simulators.phone import PhoneApp, PhoneError
from sync_server import pin_rules, registry
from sync_server.services import ServiceError, history

_serial = itertools.count(1)


class Holder:
    """A cardholder with a card, money in each wallet, and a phone app bound."""

    def __init__(self, server, water_fen=0, legacy_fen=0, main_fen=0):
        n = next(_serial)
        staff_number = "H%05d" % n
        id_number = "1101011990030%04dX" % n
        name = "流水%d号" % n
        conn = server.connect()
        try:
            _person, self.account_id = registry.add_person(conn, name, card_layout.HOLDER_STUDENT,
                                                           id_number=id_number, staff_number=staff_number)
            identity, _ = registry.issue_card_record(conn, self.account_id, bytes([0x30, n >> 8 & 0xFF, n & 0xFF, 1]))
            self.card_number = identity.card_number
            for wallet, fen in (("water", water_fen), ("legacy", legacy_fen), ("main", main_fen)):
                if fen:
                    registry.recharge(conn, self.account_id, fen, wallet=wallet)
        finally:
            conn.close()
        self.phone = PhoneApp(server.url, "app-history-%d" % n)
        self.phone.bind(name, staff_number, pin_rules.initial_pin(id_number, staff_number))

    def statement(self, kind):
        answer = self.phone._call("GET", "/accounts/%d/transactions?type=%s&page_size=100" % (self.account_id, kind))
        assert answer["kind"] == kind and answer["total_rows"] == len(answer["rows"])
        return answer["rows"]

    def lines(self, kind):
        """(ledger kind, wallet, signed fen, category) of each row, newest first."""
        return [(row["kind"], row["wallet"], row["amount_fen"], row["category"]) for row in self.statement(kind)]


class Dispenser:
    """A water dispenser: its sync client (card taps), and its water key for Bluetooth grants."""

    def __init__(self, server):
        self.client = server.add_terminal(category=wallet_rules.CATEGORY_WATER)
        self.id = self.client.terminal_id
        self.mac = w.grant_mac_fn(sam.water_key(server.master_key(), self.id))
        self.gate = w.GrantGate(self.id, self.mac, max_cap_fen=500, lifetime_ms=90000)
        self.challenges = itertools.count(1)

    def challenge(self):
        return self.gate.challenge(next(self.challenges).to_bytes(16, "big"), 0)

    def receipt(self, grant_id, fen, cap_fen):
        return w.encode_receipt(self.mac, w.Receipt(self.id, grant_id, 1, fen * 30, fen, cap_fen, 30000, w.END_BUTTON))


def _net(lines):
    net = {}
    for _kind, wallet, fen, _category in lines:
        net[wallet] = net.get(wallet, 0) + fen
    return net


def test_a_water_tap_is_listed_whatever_wallets_paid_and_a_canteen_tap_is_not(live_server):
    holder = Holder(live_server, water_fen=100, legacy_fen=150, main_fen=1000)
    canteen = live_server.add_terminal()
    canteen.sync([canteen.record(holder.account_id, holder.card_number, 450, tap_counter=1)])
    dispenser = Dispenser(live_server)
    dispenser.client.sync([dispenser.client.water_record(holder.account_id, 400, 13000, card_number=holder.card_number,
                                                         tap_counter=2)])
    assert holder.phone.balance()["wallets"] == {"water": 0, "legacy": 0, "main": 400}

    water = holder.lines("water")
    # the water wallet first, then the old card's balance, then main: one line per wallet drawn on
    assert sorted(water) == [("purchase", "legacy", -150, "water"), ("purchase", "main", -150, "water"),
                             ("purchase", "water", -100, "water")]
    assert {row["place_en"] for row in holder.statement("water")} == {"test window"}
    assert holder.statement("water")[0]["balance_fen_after"] == 400 == holder.phone.balance()["total_fen"]

    # the other types list what they did, each row with its category
    assert sorted(holder.lines("consumption")) == sorted(water + [("purchase", "main", -450, "canteen")])
    assert sorted(holder.lines("recharge")) == [("recharge", "legacy", 150, None), ("recharge", "main", 1000, None),
                                                ("recharge", "water", 100, None)]
    assert sorted(holder.lines("all")) == sorted(holder.lines("consumption") + holder.lines("recharge"))


def test_a_grants_hold_and_release_net_to_what_the_session_drew(live_server):
    holder = Holder(live_server, water_fen=100, legacy_fen=150, main_fen=1000)
    dispenser = Dispenser(live_server)
    granted = holder.phone.water_grant(dispenser.id, dispenser.challenge())
    assert granted["cap_fen"] == 500
    held = holder.lines("water")
    assert sorted(held) == [("hold", "legacy", -150, "water"), ("hold", "main", -250, "water"),
                            ("hold", "water", -100, "water")]
    state = holder.phone.water_receipt(dispenser.receipt(granted["grant_id"], 180, 500))
    assert state["outcome"] == "settled" and state["settled_fen"] == 180

    water = holder.lines("water")
    # the rest goes back in reverse order: what was spent came from water, then the old card's balance
    assert sorted(water[:2]) == [("release", "legacy", 70, "water"), ("release", "main", 250, "water")]
    assert water[2:] == held
    assert sum(line[2] for line in water) == -180
    assert _net(water) == {"water": -100, "legacy": -80, "main": 0}
    assert holder.phone.balance()["wallets"] == {"water": 0, "legacy": 70, "main": 1000}
    assert sorted(holder.lines("consumption")) == sorted(water)      # as before: holds and releases are spending


def test_a_grant_given_up_nets_to_nothing_and_its_late_receipt_is_a_water_purchase(live_server):
    holder = Holder(live_server, water_fen=50, main_fen=1000)
    dispenser = Dispenser(live_server)
    granted = holder.phone.water_grant(dispenser.id, dispenser.challenge())
    assert holder.phone.water_give_up(granted["grant_id"])["status"] == "released"
    assert _net(holder.lines("water")) == {"water": 0, "main": 0}
    state = holder.phone.water_receipt(dispenser.receipt(granted["grant_id"], 120, granted["cap_fen"]))
    assert state["outcome"] == "late"
    late = [line for line in holder.lines("water") if line[0] == "purchase"]
    assert sorted(late) == [("purchase", "main", -70, "water"), ("purchase", "water", -50, "water")]
    assert _net(holder.lines("water")) == {"water": -50, "main": -70}


def test_an_unknown_type_names_the_water_type(live_server):
    holder = Holder(live_server)
    with pytest.raises(PhoneError) as refused:
        holder.statement("gifts")
    body = json.loads(refused.value.body)
    assert refused.value.status == 400 and body["error"] == "bad_kind"
    assert "water" in body["message_en"] and "water" in body["message_zh"]
    conn = live_server.connect()
    try:
        with pytest.raises(ServiceError):
            history.query(conn, holder.account_id, "2026-01-01", "2026-01-31", "gifts")
        assert history.query(conn, holder.account_id, "2026-01-01", "2026-01-31", history.KIND_WATER)["rows"] == []
    finally:
        conn.close()
