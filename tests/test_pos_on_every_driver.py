"""The same canteen POS tests on every reader driver: sim:, pn532: (emulator on a pseudo-terminal),
pcsc: (the real pcscd with a virtual card behind vpcd) and nfcpy: when it is in the tree.

`--reader=...` picks the drivers (conftest.py); each runs its rig (tests/reader_rigs.py) once per
module. The terminal is the real shell (firmware/apps/pos_terminal.py) with its SQLite journal; card
images are issued once on the sim: field and placed in the rig's card slot by the scripted taps, so
the card's own tap counter is read back from the image after each tap.

What a cashier and a cardholder care about, on every driver: an accepted tap is journaled before it
is shown and counts once on the card; a lost card and a short balance are refused and leave no
record; a repeat tap needs the cashier; a card pulled at any point of the tap charges nothing
twice, tells the cardholder to tap again, and the tap again settles it exactly once.
"""
import contextlib
import io
import json
import os

import pytest

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.apps.store import TerminalStore
from firmware.core import card_layout, pos, protocol, records, sam
from reader_drivers.base import open_reader
from reader_drivers.sim.card_file import write_through
from reader_drivers.sim.classic_card import ClassicCard

from field_cards import counter_on_image

MASTER_KEY = bytes(range(100, 132))
TERMINAL_ID = 21
ACCOUNT_ID = 601
CARD_NUMBER = 3001
UID4 = bytes.fromhex("0badcafe")
UID7 = bytes.fromhex("04c1d2e3f4a5b6")
NAME = "李小龙"


def provisioning():
    keys = sam.site_purpose_keys(MASTER_KEY)
    keys[sam.TERMINAL] = sam.terminal_key(MASTER_KEY, TERMINAL_ID)
    return {"terminal_id": TERMINAL_ID, "merchant_id": 4, "category": 1, "server_url": None,
            "sam_keys": {purpose: key.hex() for purpose, key in keys.items()}}


def issue_card_image(directory, uid):
    issuer = sam.SoftwareSAM(sam.site_purpose_keys(MASTER_KEY, include_issuer=True))
    reader = open_reader("sim:")
    card = ClassicCard(uid)
    reader.field.place(card)
    identity = card_layout.Identity(CARD_NUMBER, ACCOUNT_ID, 1, card_layout.HOLDER_STUDENT, 20991231)
    card_io.issue_card(reader, issuer, reader.poll(100), identity, NAME)
    reader.field.pull()
    path = os.path.join(str(directory), "%s.card" % uid.hex())
    card.save(path)
    return path


def seed_cache(data_dir, main_fen, deny_entries=()):
    """What the terminal would hold after a sync: the account's balance and limits, the deny list."""
    store = TerminalStore(os.path.join(str(data_dir), "terminal.db"))
    answer = {"acked_seq": 0, "server_ms": 0, "config": None, "commands": [],
              "deny": {"version": 1, "entries": list(deny_entries), "more": False},
              "balances": {"version": 1, "more": False,
                           "rows": [[ACCOUNT_ID, "main", main_fen, 0, 5000, 30000]]}}
    store.apply_answer(answer, 20250310, TERMINAL_ID)
    store.close()


class Counter:
    """One POS terminal on the rig's reader, with its output and its card image."""

    def __init__(self, rig, directory, uid=UID4, main_fen=10000, deny_entries=()):
        data_dir = directory / "terminal"
        data_dir.mkdir()
        self.card_path = issue_card_image(directory, uid)
        seed_cache(data_dir, main_fen, deny_entries)
        self.out = io.StringIO()
        self.reader = rig.open_reader()
        self.terminal = PosTerminal(provisioning(), str(data_dir), self.reader, out=self.out, sync=False,
                                    card_slot=rig.slot)

    def tap(self, **line):
        self.terminal.run_line(dict(line, card=self.card_path))
        return self.decisions()[-1]

    def lines(self, kind):
        parsed = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [line for line in parsed if line["type"] == kind]

    def decisions(self):
        return self.lines("decision")

    def shown(self):
        return [line["code"] for line in self.lines("show")]

    def journal(self):
        return [records.decode(bytes(raw)) for _, raw, _ in self.terminal.store.journal()]

    def card_tap_counter(self):
        """The tap counter the card itself holds now (its image is written through on every write)."""
        return counter_on_image(self.card_path)

    def close(self):
        self.terminal.close()
        self.reader.close()


@pytest.fixture
def counter_factory(reader_rig, tmp_path):
    opened = []

    def make(**options):
        directory = tmp_path / ("counter%d" % len(opened))
        directory.mkdir()
        opened.append(Counter(reader_rig, directory, **options))
        return opened[-1]
    yield make
    for counter in opened:
        counter.close()


@pytest.mark.parametrize("uid", [UID4, UID7], ids=["4-byte-uid", "7-byte-uid"])
def test_accepted_tap_is_journaled_counted_once_and_shown(counter_factory, uid):
    counter = counter_factory(uid=uid)
    decision = counter.tap(amount_fen=1200)
    assert (decision["accepted"], decision["seq"], decision["balance_after_fen"]) == (True, 1, 8800)
    assert [(r["seq"], r["amount_fen"], r["account_id"], r["tap_counter"]) for r in counter.journal()] == \
        [(1, 1200, ACCOUNT_ID, 1)]
    assert counter.card_tap_counter() == 1
    assert counter.lines("show")[-1]["text"] == "交易成功 消费12.00元 余额88.00元 李*龙"
    # A second payment: a fresh record, the card counts once more, the balance includes the first.
    decision = counter.tap(amount_fen=300)
    assert (decision["accepted"], decision["seq"], decision["balance_after_fen"]) == (True, 2, 8500)
    assert [r["tap_counter"] for r in counter.journal()] == [1, 2] and counter.card_tap_counter() == 2


def test_lost_card_is_refused_uncounted_and_unrecorded(counter_factory):
    lost = [protocol.DENY_CARD, protocol.card_deny_ref(CARD_NUMBER, 1), True, protocol.DENY_REASON_LOST]
    counter = counter_factory(deny_entries=[lost])
    decision = counter.tap(amount_fen=500)
    assert (decision["accepted"], decision["reason"]) == (False, "card_lost")
    assert counter.journal() == [] and counter.card_tap_counter() == 0


def test_short_balance_is_refused_uncounted_and_unrecorded(counter_factory):
    counter = counter_factory(main_fen=1000)
    decision = counter.tap(amount_fen=1200)
    assert (decision["accepted"], decision["reason"]) == (False, "insufficient_balance")
    assert counter.journal() == [] and counter.card_tap_counter() == 0
    assert counter.tap(amount_fen=1000)["accepted"]          # exactly the balance still pays


def test_repeat_tap_needs_the_cashier(counter_factory):
    counter = counter_factory()
    assert counter.tap(amount_fen=800)["accepted"]
    refused = counter.tap(amount_fen=800)                     # same card, same amount, at once
    assert (refused["accepted"], refused["reason"]) == (False, "cancelled")
    assert "repeat_tap" in counter.shown() and len(counter.journal()) == 1
    confirmed = counter.tap(amount_fen=800, confirm=True)
    stored = counter.journal()
    assert confirmed["accepted"] and len(stored) == 2
    assert stored[1]["flags"] & records.FLAG_CONFIRMED_REPEAT
    assert counter.card_tap_counter() == 2


# Card commands of one tap (firmware/apps/card_io.py): read_card = 1 authenticate sector 1, 2-4 read
# identity, MAC and name, 5 authenticate sector 2, 6 read the counter; count_tap goes on in the sector
# read_card left authenticated: 7 decrement, 8 transfer, 9 read back. "done" means the command took
# effect and its answer was lost. Every tap through pcscd waits for its poll of the reader (~0.4 s in,
# ~0.4 s out), so the points are a chosen few: before anything, during the read, and around each step
# of the count.
TAP_COMMANDS = ["authenticate", "read", "read", "read", "authenticate", "read", "decrement", "transfer", "read"]
PULL_POINTS = [(1, False), (2, True), (6, False), (7, True), (8, False), (8, True), (9, False)]


@pytest.mark.parametrize("command, done", PULL_POINTS,
                         ids=["%s-%d" % ("after" if done else "before", command) for command, done in PULL_POINTS])
def test_card_pulled_mid_tap_charges_once_after_tapping_again(counter_factory, command, done):
    counter = counter_factory()
    decision = counter.tap(amount_fen=500, pull_after=command, pull_done=done)
    assert (decision["accepted"], decision["reason"]) == (False, "tap_again")
    assert counter.lines("show")[-1]["text"] == "请重新刷卡（应付5.00元）"    # told in Chinese first, the amount still due
    assert counter.journal() == []
    # The counter moved only if the transfer reached the card; either way nothing was charged.
    assert counter.card_tap_counter() == (1 if command == 8 and done or command == 9 else 0)
    again = counter.tap()                                     # the same payment, tapped again
    assert (again["accepted"], again["amount_fen"], again["balance_after_fen"]) == (True, 500, 9500)
    stored = counter.journal()
    assert [(r["seq"], r["amount_fen"]) for r in stored] == [(1, 500)]
    assert stored[0]["tap_counter"] == counter.card_tap_counter()


def test_a_tap_authenticates_the_counter_sector_once(counter_factory):
    counter = counter_factory()
    sent = []
    stop = counter.terminal.card_slot.on_operation(
        lambda _field, _number, name, phase: sent.append(name) if phase == "before" else None)
    try:
        assert counter.tap(amount_fen=500)["accepted"]
    finally:
        stop()
    assert sent == TAP_COMMANDS


@contextlib.contextmanager
def _waiting_for_the_cashier(counter, amount_fen):
    """The counter's card in the rig's slot (saved back to its image as it changes), `amount_fen`
    keyed and the card read: yields the terminal waiting for the cashier; the card is pulled after."""
    card = ClassicCard.load(counter.card_path)
    slot = counter.terminal.card_slot
    stop_write_through = write_through(slot, card, counter.card_path)
    slot.place(card)
    try:
        terminal = counter.terminal
        terminal.feed(pos.AmountKeyed(amount_fen))
        assert terminal.present_card() and terminal.machine.state == pos.WAIT_CONFIRM
        yield terminal
    finally:
        slot.pull()
        stop_write_through()


def test_a_card_selected_again_while_the_cashier_decides_is_authenticated_again(counter_factory):
    counter = counter_factory()
    assert counter.tap(amount_fen=800)["accepted"]
    with _waiting_for_the_cashier(counter, 800) as terminal:
        assert terminal.present_card()            # the reader polls again meanwhile: a new selection
        terminal.feed(pos.CashierConfirmed())
    assert counter.decisions()[-1]["accepted"] and len(counter.journal()) == 2
    assert counter.card_tap_counter() == 2


def test_a_card_pulled_and_put_back_while_the_cashier_decides_is_tapped_again(counter_factory):
    counter = counter_factory()
    assert counter.tap(amount_fen=800)["accepted"]
    with _waiting_for_the_cashier(counter, 800) as terminal:
        slot = terminal.card_slot
        slot.place(slot.pull())                   # out and back in: the card lost its authentication
        terminal.feed(pos.CashierConfirmed())
    refused = counter.decisions()[-1]
    assert (refused["accepted"], refused["reason"]) == (False, "tap_again")
    assert len(counter.journal()) == 1 and counter.card_tap_counter() == 1
    again = counter.tap(confirm=True)             # tapped again (a repeat: the cashier confirms)
    assert (again["accepted"], again["amount_fen"]) == (True, 800) and counter.card_tap_counter() == 2
