"""The `sim:` driver and its virtual field: selection, pulling cards at any point, threads."""
import threading

import pytest

from firmware.core import mifare
from reader_drivers.base import AuthenticationError, CardGone, Reader, open_reader
from reader_drivers.sim.classic_card import CardHalted, ClassicCard
from reader_drivers.sim.field import AFTER, BEFORE, VirtualField

UID = bytes.fromhex("0a0b0c0d")
DATA = bytes(range(16))


@pytest.fixture
def reader():
    reader = open_reader("sim:")
    reader.field.place(ClassicCard(UID))
    return reader


def select_sector_1(reader):
    target = reader.poll(0)
    assert target is not None
    reader.authenticate(4, "A", mifare.TRANSPORT_KEY)
    return target


def test_open_reader_gives_a_reader_on_a_fresh_or_shared_field():
    first = open_reader("sim:")
    second = open_reader("sim:")
    assert isinstance(first, Reader) and first.field is not second.field
    shared = VirtualField()
    a = open_reader("sim:", field=shared)
    b = open_reader("sim:", field=shared)
    shared.place(ClassicCard(UID))
    assert a.poll(0).uid == b.poll(0).uid == UID
    assert {"authenticate", "read", "write", "decrement", "transfer"} <= first.supports


def test_poll_selects_the_card_and_reports_what_a_reader_sees(reader):
    target = reader.poll(0)
    assert (target.uid, target.atqa, target.sak) == (UID, 0x0004, 0x08)
    assert target.is_mifare_classic_1k
    reader.field.pull()
    assert reader.poll(0) is None


def test_poll_waits_for_a_card_placed_from_another_thread():
    reader = open_reader("sim:")
    placed = threading.Event()

    def place_later():
        placed.wait()
        reader.field.place(ClassicCard(UID))
    thread = threading.Thread(target=place_later)
    thread.start()
    placed.set()
    target = reader.poll(60_000)     # returns as soon as the card arrives
    thread.join()
    assert target is not None and target.uid == UID


def test_write_then_read_through_the_reader(reader):
    select_sector_1(reader)
    reader.write_block(4, DATA)
    assert reader.read_block(4) == DATA


def test_a_failed_authentication_needs_a_new_poll(reader):
    select_sector_1(reader)
    with pytest.raises(AuthenticationError):
        reader.authenticate(8, "A", b"\x00" * 6)
    with pytest.raises(CardGone):
        reader.read_block(4)
    select_sector_1(reader)
    assert reader.read_block(4) == bytes(16)


def test_operations_without_a_card_raise_card_gone(reader):
    reader.field.pull()
    for call in (lambda: reader.authenticate(4, "A", mifare.TRANSPORT_KEY), lambda: reader.read_block(4),
                 lambda: reader.write_block(4, DATA), lambda: reader.decrement(4, 1), lambda: reader.transfer(4)):
        with pytest.raises(CardGone):
            call()


def test_a_card_placed_again_must_be_polled_again(reader):
    select_sector_1(reader)
    card = reader.field.pull()
    reader.field.place(card)
    with pytest.raises(CardHalted):
        reader.read_block(4)
    select_sector_1(reader)
    reader.read_block(4)


def test_release_halts_the_card(reader):
    select_sector_1(reader)
    reader.release()
    with pytest.raises(CardGone):
        reader.read_block(4)


def test_pulled_before_a_write_takes_effect_leaves_the_block_unchanged(reader):
    select_sector_1(reader)
    reader.field.pull_after(1, done=False)
    card = reader.field.card
    with pytest.raises(CardGone):
        reader.write_block(4, DATA)
    assert reader.field.card is None
    assert card.dump_block(4) == bytes(16)


def test_pulled_after_a_write_took_effect_the_answer_is_lost(reader):
    select_sector_1(reader)
    reader.field.pull_after(1, done=True)
    card = reader.field.card
    with pytest.raises(CardGone):
        reader.write_block(4, DATA)
    assert card.dump_block(4) == DATA


def test_pull_after_counts_commands_from_now(reader):
    select_sector_1(reader)
    reader.field.pull_after(3, done=True)
    reader.read_block(4)
    reader.write_block(4, DATA)
    with pytest.raises(CardGone):
        reader.read_block(4)
    with pytest.raises(CardGone):
        reader.read_block(4)


def test_on_operation_sees_every_command_before_and_after(reader):
    seen = []
    remove = reader.field.on_operation(lambda field, number, name, phase: seen.append((name, phase)))
    select_sector_1(reader)
    reader.read_block(4)
    remove()
    reader.read_block(4)
    assert seen == [("authenticate", BEFORE), ("authenticate", AFTER), ("read", BEFORE), ("read", AFTER)]


def test_a_card_image_moves_between_fields_like_a_card_between_readers(reader, tmp_path):
    select_sector_1(reader)
    reader.write_block(5, DATA)
    path = str(tmp_path / "card.bin")
    reader.field.pull().save(path)
    other = open_reader("sim:")
    other.field.place(ClassicCard.load(path))
    select_sector_1(other)
    assert other.read_block(5) == DATA


def test_pulling_and_placing_from_another_thread_never_corrupts_the_card(reader):
    """A cardholder waving a card in and out while the terminal writes: the reader only ever sees
    CardGone, and the block holds one whole write, never a mix."""
    card = reader.field.card
    stop = threading.Event()

    def wave():
        while not stop.is_set():
            reader.field.pull()
            reader.field.place(card)
    thread = threading.Thread(target=wave)
    thread.start()
    attempted = {bytes(16)}
    try:
        for round_number in range(300):
            data = bytes([round_number % 256]) * 16
            try:
                reader.poll(1000)
                reader.authenticate(4, "A", mifare.TRANSPORT_KEY)
                attempted.add(data)
                reader.write_block(4, data)
            except CardGone:
                pass
    finally:
        stop.set()
        thread.join()
    assert card.dump_block(4) in attempted, "a torn or invented block"
