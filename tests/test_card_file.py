"""Write-through card images (reader_drivers/sim/card_file.py): the file follows the card after every
memory-changing command, so a terminal that dies mid-tap never leaves the image behind the card."""
import os

import pytest

from firmware.apps import card_io
from firmware.core import card_layout, sam as sam_module
from reader_drivers.base import CardGone, open_reader
from reader_drivers.sim.card_file import write_through
from reader_drivers.sim.classic_card import ClassicCard

MASTER_KEY = bytes(range(7, 39))
ISSUER = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY, include_issuer=True))
TERMINAL = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY))
IDENTITY = card_layout.Identity(20240077, 880077, 1, card_layout.HOLDER_STUDENT, 20280630)


def tap_counter_in_file(path):
    reader = open_reader("sim:")
    reader.field.place(ClassicCard.load(path))
    return card_io.read_card(reader, TERMINAL, reader.poll(0)).tap_counter


@pytest.fixture
def card_file(tmp_path):
    card = ClassicCard(bytes.fromhex("5a17c0de"))
    reader = open_reader("sim:")
    reader.field.place(card)
    card_io.issue_card(reader, ISSUER, reader.poll(0), IDENTITY, "周杰")
    path = str(tmp_path / "card.card")
    card.save(path)
    return path


def start_tap(path):
    """Load the image as the terminal does, with write-through on; returns (reader, card, stop)."""
    reader = open_reader("sim:")
    card = ClassicCard.load(path)
    stop = write_through(reader.field, card, path)
    reader.field.place(card)
    return reader, card, stop


def test_counted_tap_is_in_the_file_before_the_tap_ends(card_file):
    reader, _card, stop = start_tap(card_file)
    target = reader.poll(0)
    assert card_io.count_tap(reader, TERMINAL, target, 0) == 1
    # No save by the terminal: the file already holds what the card holds.
    assert tap_counter_in_file(card_file) == 1
    stop()


@pytest.mark.parametrize("done", (True, False))
def test_card_pulled_at_the_transfer_keeps_exactly_what_the_card_did(card_file, done):
    reader, card, stop = start_tap(card_file)
    target = reader.poll(0)
    # count_tap: authenticate, decrement, transfer: the 3rd command is the one that writes.
    reader.field.pull_after(3, done=done)
    with pytest.raises(CardGone):
        card_io.count_tap(reader, TERMINAL, target, 0)
    stop()
    assert tap_counter_in_file(card_file) == (1 if done else 0)
    assert ClassicCard.load(card_file).to_bytes() == card.to_bytes()


def test_reads_leave_the_file_alone_and_stop_ends_the_saves(card_file):
    with open(card_file, "rb") as handle:
        image_before = handle.read()
    reader, _card, stop = start_tap(card_file)
    card_io.read_card(reader, TERMINAL, reader.poll(0))
    os.utime(card_file, ns=(1, 1))           # a marker a save would replace
    card_io.read_card(reader, TERMINAL, reader.poll(0))
    assert os.stat(card_file).st_mtime_ns == 1
    stop()
    card_io.count_tap(reader, TERMINAL, reader.poll(0), 0)
    assert os.stat(card_file).st_mtime_ns == 1
    assert ClassicCard.load(card_file).to_bytes() == image_before
