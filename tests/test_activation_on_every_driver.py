"""The activation unit on every reader driver: sim:, pn532: (emulator on a pseudo-terminal), pcsc: (the
real pcscd, a virtual card behind vpcd) and nfcpy: when it is in the tree (`--reader`, conftest.py).

The unit is the real shell (firmware/apps/activation_terminal.py) with its SQLite journal and its
ticket cache, offline (the server's part is tests/test_activation_terminal.py); the old cards come
from the seeded campus generator (simulators/legacy_campus.py) and are placed in the rig's card slot.

What a cardholder at the canteen door and finance care about, on every driver: an old card is
activated in one tap with its old amounts recorded once; a card pulled at any point of the tap is
told to tap again and the next tap finishes it, its purses locked with the same amounts, one record
for the serial whatever happened; a finished card tapped again records nothing; an old card the
offline unit's ticket cache lacks is told to tap again later, and nothing is written to it.
"""
import io
import json
import os
import shutil

import pytest

from firmware.apps import card_io
from firmware.apps.activation_terminal import ActivationTerminal
from firmware.apps.store import TerminalStore
from firmware.core import legacy_card, records, sam
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from simulators import legacy_campus

MASTER_KEY = bytes(range(40, 72))
TERMINAL_ID = 31
SEED = 8


def provisioning():
    keys = sam.site_purpose_keys(MASTER_KEY, include_issuer=True)
    keys[sam.TERMINAL] = sam.terminal_key(MASTER_KEY, TERMINAL_ID)
    keys["legacy_master"] = legacy_campus.old_master_key(SEED)
    return {"terminal_id": TERMINAL_ID, "merchant_id": 9, "category": 4, "server_url": None,
            "sam_keys": {purpose: key.hex() for purpose, key in keys.items()}}


@pytest.fixture(scope="module")
def campus(tmp_path_factory):
    out = tmp_path_factory.mktemp("old") / "campus"
    legacy_campus.generate(str(out), 20, SEED)
    with open(out / legacy_campus.TRUTH_JSON, encoding="utf-8") as stream:
        truth = json.load(stream)["cards"]
    return out, truth


def _tickets(truth):
    """A ticket per readable old card, as the server's cache pages give them."""
    holder = {"teacher": 1, "student": 2, "temporary": 4}
    category = {"teacher": legacy_card.TEACHER, "student": legacy_card.STUDENT, "temporary": legacy_card.TEMPORARY}
    return [{"serial": card["serial"], "category": category[card["category"]], "card_number": 5000 + index,
             "generation": 1, "account_id": 700 + index, "holder_category": holder[card["category"]],
             "expiry_yyyymmdd": 20301231, "name": card["name"]}
            for index, card in enumerate(truth) if card["main_state"] != legacy_card.UNREADABLE]


def _pick(truth, oddity=None):
    for card in truth:
        if card["main_state"] == legacy_card.UNREADABLE or card["lost"]:
            continue
        if (oddity is None and not card["oddities"]) or oddity in card["oddities"]:
            return card
    raise AssertionError("the seeded campus has no such card")


class Unit:
    """One activation unit on the rig's reader, its output, and copies of the old cards it taps."""

    def __init__(self, rig, directory, campus, tickets):
        self.campus_dir, self.truth = campus
        data_dir = directory / "unit"
        data_dir.mkdir()
        store = TerminalStore(str(data_dir / "terminal.db"))
        store.apply_answer({"acked_seq": 0, "server_ms": 0, "config": None, "commands": [],
                            "deny": {"version": 1, "entries": [], "more": False},
                            "balances": {"version": 1, "more": False, "rows": []}}, 20260223, TERMINAL_ID)
        store.save_tickets(tickets, 1)
        store.close()
        self.cards = directory / "cards"
        self.cards.mkdir()
        self.out = io.StringIO()
        self.reader = rig.open_reader()
        self.terminal = ActivationTerminal(provisioning(), str(data_dir), self.reader, out=self.out, sync=False,
                                           card_slot=rig.slot)

    def card(self, truth_card):
        """A private copy of an old card's image (the campus's stays as generated)."""
        path = self.cards / os.path.basename(truth_card["file"])
        if not path.exists():
            shutil.copy(self.campus_dir / truth_card["file"], path)
        return str(path)

    def tap(self, path, **line):
        self.terminal.run_line(dict(line, card=path))
        return self.lines("decision")[-1]

    def lines(self, kind):
        parsed = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [line for line in parsed if line["type"] == kind]

    def journal(self):
        return [records.decode(bytes(raw)) for _, raw, _ in self.terminal.store.journal()]

    def close(self):
        self.terminal.close()
        self.reader.close()


@pytest.fixture
def unit_factory(reader_rig, tmp_path, campus):
    opened = []
    tickets = _tickets(campus[1])

    def make():
        directory = tmp_path / ("unit%d" % len(opened))
        directory.mkdir()
        opened.append(Unit(reader_rig, directory, campus, tickets))
        return opened[-1]
    yield make
    for unit in opened:
        unit.close()


def _card_state(path):
    """(main, water) purses as the card image holds them now, and the new identity a POS reads."""
    card = ClassicCard.load(path)
    main = legacy_campus.card_reading(card, legacy_card.MAIN_PURSE)
    water = legacy_campus.card_reading(card, legacy_card.WATER_PURSE)
    reader = open_reader("sim:")
    reader.field.place(card)
    try:
        pos_sam = sam.SoftwareSAM(sam.site_purpose_keys(MASTER_KEY))
        view = card_io.read_card(reader, pos_sam, reader.poll(100))
        identity = view.identity
    except Exception:       # not written (yet): a POS refuses the card
        identity = None
    finally:
        reader.field.pull()
    return main, water, identity


def test_an_old_card_is_activated_in_one_tap_and_recorded_once(unit_factory, campus):
    unit = unit_factory()
    card = _pick(campus[1])
    path = unit.card(card)
    sent = []
    stop = unit.terminal.card_slot.on_operation(
        lambda _field, _number, name, phase: sent.append(name) if phase == "before" else None)
    try:
        decision = unit.tap(path)
    finally:
        stop()
    assert len(sent) == 59            # the commands PULL_POINTS below are numbered by
    assert (decision["accepted"], decision["reason"], decision["seq"]) == (True, "activated", 1)
    assert (decision["serial"], decision["main_fen"], decision["water_fen"]) == \
        (card["serial"], card["card_main_fen"], card["card_water_fen"])
    shown = [line["text"] for line in unit.lines("show")]
    assert shown[0] == "卡片激活中，请勿移开卡片" and shown[-1].startswith("卡片激活成功")
    assert [line["text"] for line in unit.lines("speak")] == ["卡片激活中，请勿移开卡片", "卡片激活成功"]
    [record] = unit.journal()
    assert (record["kind"], record["card_number"]) == (records.KIND_ACTIVATION, decision["card_number"])
    main, water, identity = _card_state(path)
    assert main.locked and water.locked and main.balance_fen == card["card_main_fen"]
    assert identity is not None and identity.card_number == decision["card_number"]
    # old terminals can no longer spend it
    with pytest.raises(legacy_card.LegacyCardError):
        legacy_card.write_plan(*[ClassicCard.load(path).dump_block(b) for b in legacy_card.PURSES[1].blocks()], 0)
    again = unit.tap(path)
    assert (again["accepted"], again["reason"], again["seq"]) == (True, "already_activated", None)
    assert len(unit.journal()) == 1


# Commands of one activation (firmware/apps/legacy_card_io.py): read 1-19 (sector 3, the four purse
# sectors, the new layout's sector 1), lock 20-49 (the purses read again with key B, then each
# purse's flags and trailers), write identity 50-59. "done": the command took effect, its answer lost.
# Through pcscd every tap waits for the reader's poll, so the points are a chosen few around the
# steps that change the card: before anything, the read, the first lock write, the last trailer of
# the lock, the identity's first and last writes.
PULL_POINTS = [(1, False), (12, True), (36, False), (36, True), (49, True), (52, False), (59, False), (59, True)]


@pytest.mark.parametrize("command, done", PULL_POINTS,
                         ids=["%s-%d" % ("after" if done else "before", command) for command, done in PULL_POINTS])
def test_a_card_pulled_mid_activation_is_finished_by_the_next_tap_with_one_record(unit_factory, campus, command,
                                                                                   done):
    unit = unit_factory()
    card = _pick(campus[1], "torn") if command == 36 else _pick(campus[1])
    path = unit.card(card)
    decision = unit.tap(path, pull_after=command, pull_done=done)
    assert (decision["accepted"], decision["reason"]) == (False, "tap_again")
    assert unit.lines("show")[-1]["text"] == "请重新刷卡"
    again = unit.tap(path)
    assert again["accepted"] and again["reason"] in ("activated", "already_activated")
    assert again["main_fen"] == card["true_main_fen"] and again["water_fen"] == card["card_water_fen"]
    raws = [bytes(raw) for _, raw, _ in unit.terminal.store.journal()]
    assert len(raws) == 1                                   # one record per serial, whatever happened
    serial, main_fen, _counter, water_fen, _water_counter = records.activation_fields(raws[0])
    assert (serial, main_fen, water_fen) == (card["serial"], card["true_main_fen"], card["card_water_fen"])
    main, water, identity = _card_state(path)
    assert main.locked and water.locked and identity is not None
    assert (main.balance_fen, water.balance_fen) == (card["true_main_fen"], card["card_water_fen"])


def test_an_old_card_the_offline_cache_lacks_is_told_to_tap_again_later(unit_factory, campus):
    unit = unit_factory()
    card = _pick(campus[1])
    unit.terminal.store._db.execute("DELETE FROM ticket WHERE serial = ?", (card["serial"],))
    unit.terminal.store._db.commit()
    path = unit.card(card)
    decision = unit.tap(path)
    # offline and not in the cache: maybe the server knows it, so «tap again later», nothing written
    assert (decision["accepted"], decision["reason"]) == (False, "activation_unavailable")
    main, _water, identity = _card_state(path)
    assert not main.locked and identity is None and unit.journal() == []
