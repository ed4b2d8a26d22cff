"""The water dispenser's shell against the real server: a card image on the sim: reader, the valve and
the flow meter on gpiozero's mock pins with a simulated meter, a virtual clock, the real journal and
sync. Card sessions, a phone's grant through the radio's handler methods (the radio itself is
tests/test_dispenser_ble.py's), a stalled meter, a power cut, and the bad inputs a phone may send."""
import io
import json
import os

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from firmware.apps import card_io, dispenser_hw
from firmware.apps.dispenser_terminal import DispenserTerminal, VirtualRawClock
from firmware.core import card_layout, dispenser, messages, sam, wallets, water_grants as w
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from firmware.apps.dispenser_hw import SimFlowMeter
from simulators.phone import PhoneApp
from sync_server import ledger, pin_rules, registry, water_holds
from sync_server.ledger_store import SqliteStore

from field_cards import counter_on_image

VALVE_PIN, METER_PIN = 17, 27
UID = bytes.fromhex("0455aa01")


class Rig:
    def __init__(self, server, tmp_path, water_fen=100, legacy_fen=200, main_fen=1000):
        self.server = server
        self.tmp_path = tmp_path
        conn = server.connect()
        try:
            merchant = registry.add_merchant(conn, "三号楼开水房", "building 3 boiler room", wallets.CATEGORY_WATER)
            self.terminal_id = registry.register_terminal(conn, merchant)
            self.provisioning = registry.provisioning_document(conn, server.master_key(), self.terminal_id, server.url)
            staff_number = "D%06d" % self.terminal_id
            id_number = "11010119900303%04d" % self.terminal_id
            _person, self.account_id = registry.add_person(conn, "冯开水", card_layout.HOLDER_STUDENT,
                                                           id_number=id_number, staff_number=staff_number)
            for wallet, fen in (("water", water_fen), ("legacy", legacy_fen), ("main", main_fen)):
                if fen:
                    registry.recharge(conn, self.account_id, fen, wallet=wallet)
            self.identity, _name = registry.issue_card_record(conn, self.account_id, UID)
        finally:
            conn.close()
        self.card_path = self._card_image(server.master_key())
        self.phone = PhoneApp(server.url, "app-dispenser-%d" % self.terminal_id)
        self.phone.bind("冯开水", staff_number, pin_rules.initial_pin(id_number, staff_number))
        self.factory = MockFactory()
        self.previous_factory = Device.pin_factory
        Device.pin_factory = self.factory
        self.data_dir = str(tmp_path / "dispenser")
        self.out = io.StringIO()
        self.start()

    def _card_image(self, master_key):
        issuer = sam.SoftwareSAM(sam.site_purpose_keys(master_key, include_issuer=True))
        reader = open_reader("sim:")
        card = ClassicCard(UID)
        reader.field.place(card)
        card_io.issue_card(reader, issuer, reader.poll(100), self.identity, "冯开水")
        reader.field.pull()
        path = os.path.join(str(self.tmp_path), "%s.card" % UID.hex())
        card.save(path)
        return path

    def start(self):
        """Power the dispenser up (again): new pins, valve closed first, the same journal."""
        self.valve = dispenser_hw.Valve(VALVE_PIN)
        self.meter = dispenser_hw.FlowMeter(METER_PIN)
        self.sim = SimFlowMeter(self.factory.pin(METER_PIN), 450, lambda: self.valve.is_open)
        self.clock = VirtualRawClock()
        self.terminal = DispenserTerminal(self.provisioning, self.data_dir, open_reader("sim:"), self.valve,
                                          self.meter, out=self.out, raw_ms=self.clock, sim_meter=self.sim)

    def power_cut(self):
        """Everything stops at once: nothing is closed or flushed on the way out."""
        self.terminal.store.close()
        if self.terminal.sync_client is not None:
            self.terminal.sync_client.close()
            self.terminal._sync_store.close()
        self.valve.shut()
        self.meter.close()
        self.factory.reset()

    def close(self):
        self.terminal.close()
        self.valve.shut()
        self.meter.close()
        self.factory.reset()
        Device.pin_factory = self.previous_factory
        self.phone.close()

    def run(self, *lines):
        for line in lines:
            self.terminal.run_line(line)

    def lines(self, kind=None):
        parsed = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [line for line in parsed if kind is None or line["type"] == kind]

    def balances(self):
        conn = self.server.connect()
        try:
            return registry.balances_of(conn, self.account_id)
        finally:
            conn.close()


@pytest.fixture
def rig(live_server, tmp_path):
    rig = Rig(live_server, tmp_path)
    yield rig
    rig.close()


def assert_ledger_sound(server):
    conn = server.connect()
    try:
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()


def test_tap_to_start_tap_again_to_stop_charged_by_volume(rig):
    rig.run({"card": rig.card_path})
    (refused,) = rig.lines("show")[-1:]
    assert refused["code"] == messages.TERMINAL_NOT_SYNCED and not rig.valve.is_open
    assert counter_on_image(rig.card_path) == 0           # a refused tap counts nothing on the card
    rig.run({"sync": True}, {"flow_ml_per_s": 50}, {"card": rig.card_path})
    assert rig.valve.is_open
    authorised = [line for line in rig.lines("show") if line["code"] == messages.WATER_AUTHORISED]
    assert authorised and "2.00" in authorised[-1]["text"]          # the legacy (old system) balance
    rig.run({"advance_ms": 4000}, {"card": rig.card_path})
    assert not rig.valve.is_open
    (session,) = rig.lines("session")
    assert session["source"] == "card" and session["ml"] == 200 and session["fen"] == 6
    assert counter_on_image(rig.card_path) == 1
    rig.run({"sync": True})
    assert rig.balances() == {"water": 94, "legacy": 200, "main": 1000}
    conn = rig.server.connect()
    try:
        assert conn.execute("SELECT kind, ml, amount_fen, end_reason FROM water_sessions WHERE terminal_id = ?",
                            (rig.terminal_id,)).fetchall() == [(2, 200, 6, w.END_BUTTON)]
    finally:
        conn.close()
    assert_ledger_sound(rig.server)


def test_a_phone_grant_starts_meters_ends_and_settles_once(rig):
    rig.run({"sync": True}, {"flow_ml_per_s": 100})
    terminal = rig.terminal
    challenge = terminal.read_challenge("phone-1")
    granted = rig.phone.water_grant(rig.terminal_id, challenge)
    assert granted["cap_fen"] == 500
    terminal.write_grant("phone-1", granted["grant"] + bytes([w.CONTROL_START]))
    assert rig.valve.is_open and terminal.machine.state == dispenser.DISPENSING
    rig.run({"advance_ms": 5000})
    progress = w.decode_progress(terminal.read_progress("phone-1"))
    assert progress.state == w.PROGRESS_DISPENSING and progress.ml == 500 and progress.fen == 15
    with pytest.raises(w.WaterMessageError) as refused:            # a second Start while dispensing
        terminal.write_control("phone-1", bytes([w.CONTROL_START]))
    assert refused.value.code == w.REFUSED_BUSY
    with pytest.raises(w.WaterMessageError) as refused:            # someone else's phone cannot stop it
        terminal.write_control("phone-2", bytes([w.CONTROL_END]))
    assert refused.value.code == w.REFUSED_NOT_YOURS and rig.valve.is_open
    terminal.write_control("phone-1", bytes([w.CONTROL_END]))
    assert not rig.valve.is_open
    with pytest.raises(w.WaterMessageError):
        terminal.read_receipt("phone-2")
    receipt = w.decode_receipt(terminal.read_receipt("phone-1"))
    assert (receipt.grant_id, receipt.ml, receipt.fen, receipt.end_reason) == (granted["grant_id"], 500, 15, w.END_BUTTON)
    assert rig.phone.water_receipt(terminal.read_receipt("phone-1"))["outcome"] == "settled"
    rig.run({"sync": True})
    assert rig.phone.water_grant_state(granted["grant_id"])["settled_via"] == "phone"
    assert rig.balances() == {"water": 85, "legacy": 200, "main": 1000}
    assert_ledger_sound(rig.server)


@pytest.mark.parametrize("step_ms", [-5000, 3 * 60 * 1000])
def test_a_clock_correction_between_read_and_write_does_not_expire_a_fresh_grant(rig, step_ms):
    """A sync that steps the terminal clock back (or far ahead) while a phone fetches its grant: the
    challenge's age is elapsed time, so the grant opens the valve; a challenge really left waiting
    longer than the grant allows is still refused."""
    rig.run({"sync": True}, {"flow_ml_per_s": 100})
    terminal = rig.terminal
    granted = rig.phone.water_grant(rig.terminal_id, terminal.read_challenge("phone-3"))
    raw_ms = rig.clock()
    terminal.clock.correct(terminal.clock.peek_ms() + step_ms, raw_ms)      # what the sync thread does
    terminal.write_grant("phone-3", granted["grant"] + bytes([w.CONTROL_START]))
    assert rig.valve.is_open and terminal.machine.state == dispenser.DISPENSING
    terminal.write_control("phone-3", bytes([w.CONTROL_END]))
    assert not rig.valve.is_open
    stale = rig.phone.water_grant(rig.terminal_id, terminal.read_challenge("phone-3"))
    rig.run({"advance_ms": w.decode_grant(stale["grant"]).valid_ms + 1000})
    with pytest.raises(w.WaterMessageError) as refused:
        terminal.write_grant("phone-3", stale["grant"])
    assert refused.value.code == w.REFUSED_EXPIRED and not rig.valve.is_open


def test_a_phone_that_walks_away_ends_the_session_and_the_batch_settles_it(rig):
    rig.run({"sync": True}, {"flow_ml_per_s": 40})
    terminal = rig.terminal
    granted = rig.phone.water_grant(rig.terminal_id, terminal.read_challenge("phone-9"))
    terminal.write_grant("phone-9", granted["grant"])                # authorised; Start on the machine
    assert not rig.valve.is_open and terminal.machine.state == dispenser.AUTHORISED
    rig.run({"start": True}, {"advance_ms": 2500})
    terminal.link_lost("phone-9")
    assert not rig.valve.is_open
    (session,) = rig.lines("session")
    assert session["end_reason"] == w.END_LINK_LOST and session["ml"] == 100
    rig.run({"sync": True})
    state = rig.phone.water_grant_state(granted["grant_id"])
    assert state["status"] == "settled" and state["settled_via"] == "dispenser" and state["settled_fen"] == 3
    assert rig.balances() == {"water": 97, "legacy": 200, "main": 1000}
    conn = rig.server.connect()
    try:
        assert water_holds.open_holds(conn)[0] >= 0
    finally:
        conn.close()


def test_bad_grants_never_open_the_valve(rig):
    rig.run({"sync": True})
    terminal = rig.terminal
    garbage = [b"", b"\x00", os.urandom(53), os.urandom(54), b"\xff" * 500]
    for data in garbage:
        terminal.read_challenge("x")
        with pytest.raises(w.WaterMessageError):
            terminal.write_grant("x", data)
    challenge = terminal.read_challenge("x")
    granted = rig.phone.water_grant(rig.terminal_id, challenge)
    other_key = w.grant_mac_fn(sam.water_key(b"\x01" * 32, rig.terminal_id))
    forged = w.encode_grant(other_key, w.decode_grant(granted["grant"])._replace(cap_fen=400))
    with pytest.raises(w.WaterMessageError) as refused:
        terminal.write_grant("x", forged)
    assert refused.value.code == w.REFUSED_FORGED
    with pytest.raises(w.WaterMessageError) as refused:            # the challenge went with the forgery
        terminal.write_grant("x", granted["grant"])
    assert refused.value.code == w.REFUSED_NO_CHALLENGE
    with pytest.raises(w.WaterMessageError):
        terminal.write_control("x", b"\x07")
    assert not rig.valve.is_open and terminal.machine.state == dispenser.IDLE
    assert rig.lines("session") == []


def test_a_stalled_meter_closes_the_valve_and_alarms_in_health(rig):
    rig.run({"sync": True}, {"flow_ml_per_s": 50}, {"card": rig.card_path}, {"advance_ms": 1000})
    assert rig.valve.is_open
    rig.run({"flow_ml_per_s": 0}, {"advance_ms": 6000})
    assert not rig.valve.is_open and rig.terminal.machine.state == dispenser.FAULT
    (alarm,) = rig.lines("alarm")
    assert alarm["code"] == messages.WATER_METER_STALLED
    (session,) = rig.lines("session")
    assert 40 <= session["ml"] <= 50 and session["end_reason"] == w.END_STALLED
    rig.run({"card": rig.card_path})
    assert not rig.valve.is_open                                   # out of order until staff restart it
    rig.run({"sync": True})
    conn = rig.server.connect()
    try:
        health = json.loads(conn.execute("SELECT health FROM terminals WHERE id = ?", (rig.terminal_id,)).fetchone()[0])
    finally:
        conn.close()
    assert health["alarm"] == messages.WATER_METER_STALLED


def test_a_power_cut_mid_dispense_is_settled_once_from_the_persisted_volume(rig):
    rig.run({"sync": True}, {"flow_ml_per_s": 60}, {"card": rig.card_path}, {"advance_ms": 2100})
    assert rig.valve.is_open
    metered = rig.sim.pulses_driven * 1000 // 450
    rig.power_cut()
    rig.start()
    assert not rig.valve.is_open
    sessions = rig.lines("session")
    assert len(sessions) == 1 and sessions[0]["end_reason"] == w.END_POWER_CUT
    assert metered - 50 < sessions[0]["ml"] <= metered                  # at most 50 ml went free
    rig.power_cut()
    rig.start()
    assert len(rig.lines("session")) == 1                          # the second start settles nothing again
    rig.run({"sync": True})
    assert rig.balances()["water"] == 100 - sessions[0]["fen"]
    assert_ledger_sound(rig.server)


def test_an_installed_update_waits_until_the_water_stops(rig):
    """An update taken through sync (restart_wanted) ends the serve loop only between sessions."""
    rig.run({"sync": True}, {"flow_ml_per_s": 50}, {"card": rig.card_path})
    assert rig.valve.is_open
    rig.terminal.restart_wanted.set()
    assert not rig.terminal.leaving_for_update()          # mid-session: the water keeps running
    rig.run({"advance_ms": 2000}, {"card": rig.card_path})
    assert not rig.valve.is_open and len(rig.lines("session")) == 1
    assert rig.terminal.leaving_for_update()
    assert rig.lines("restart") == [{"type": "restart", "why": "firmware update installed"}]


def test_a_key_rotation_keeps_phone_water_running(rig):
    """ykt fleet rotate-key on a dispenser: its next sync brings the new keys, yet the grant the server
    makes right after (still under the old water key: it has not seen the dispenser use the new one)
    opens the valve, and its receipt settles; after the sync that retires the old key, grants are under
    the new key and work too."""
    rig.run({"sync": True}, {"flow_ml_per_s": 100})
    done = rig.server.ykt("fleet", "rotate-key", "--terminal", str(rig.terminal_id))
    assert done.returncode == 0, done.stderr
    rig.run({"sync": True})
    assert rig.terminal.sync_client.key_version == 2
    for phone in ("phone-1", "phone-2"):
        terminal = rig.terminal
        granted = rig.phone.water_grant(rig.terminal_id, terminal.read_challenge(phone))
        terminal.write_grant(phone, granted["grant"] + bytes([w.CONTROL_START]))
        assert rig.valve.is_open, phone
        rig.run({"advance_ms": 1000})
        terminal.write_control(phone, bytes([w.CONTROL_END]))
        assert rig.phone.water_receipt(terminal.read_receipt(phone))["outcome"] == "settled"
        rig.run({"sync": True})                 # the first one retires the old key
    conn = rig.server.connect()
    try:
        assert conn.execute("SELECT key_version, next_key_version FROM terminals WHERE id = ?",
                            (rig.terminal_id,)).fetchone() == (2, None)
    finally:
        conn.close()
    assert_ledger_sound(rig.server)
