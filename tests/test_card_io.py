"""Issuing, reading and counting taps on the `sim:` reader, including cards pulled mid-tap."""
import pytest
from hypothesis import given, settings, strategies as st

from firmware.apps import card_io
from firmware.core import card_layout, mifare, sam as sam_module
from reader_drivers.base import AuthenticationError, CardGone, CardNak, open_reader
from reader_drivers.sim.classic_card import ClassicCard

MASTER_KEY = bytes(range(100, 132))
ISSUER = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY, include_issuer=True))
TERMINAL = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY))
UID = bytes.fromhex("c0ffee01")
IDENTITY = card_layout.Identity(20240001, 880001, 1, card_layout.HOLDER_STUDENT, 20280630)
NAME = "李小明"


def place(card):
    reader = open_reader("sim:")
    reader.field.place(card)
    return reader, reader.poll(0)


def issued_card(uid=UID):
    card = ClassicCard(uid)
    reader, target = place(card)
    card_io.issue_card(reader, ISSUER, target, IDENTITY, NAME)
    return card


def read(reader):
    return card_io.read_card(reader, TERMINAL, reader.poll(0))


def tap_counter_on(card):
    reader, _target = place(ClassicCard.from_bytes(card.to_bytes()))
    return read(reader).tap_counter


def test_issue_then_read_back():
    reader, target = place(ClassicCard(UID))
    card_io.issue_card(reader, ISSUER, target, IDENTITY, NAME)
    view = read(reader)
    assert view == card_io.CardView(UID, IDENTITY, NAME, 0)


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=7, max_size=7)),
       st.integers(1, 0xFFFFFFFF), st.sampled_from(card_layout.HOLDER_CATEGORIES),
       st.text(alphabet="张王李赵明芳华伟abcXYZ ", max_size=5))
def test_any_issued_card_reads_back_as_issued(uid, card_number, category, name):
    identity = card_layout.Identity(card_number, 42, 3, category, 20991231)
    reader, target = place(ClassicCard(uid))
    card_io.issue_card(reader, ISSUER, target, identity, name)
    view = read(reader)
    assert (view.uid, view.identity, view.name, view.tap_counter) == (uid, identity, name, 0)


def test_a_second_issue_is_refused_and_changes_nothing():
    card = issued_card()
    before = card.to_bytes()
    reader, target = place(card)
    with pytest.raises(card_io.CardNotBlank, match="不是空白卡"):
        card_io.issue_card(reader, ISSUER, target, card_layout.Identity(5, 6, 2, card_layout.HOLDER_STAFF, 20300101), "王")
    assert card.to_bytes() == before
    assert read(reader).identity == IDENTITY


def test_a_card_with_transport_keys_but_data_is_not_blank():
    card = ClassicCard(UID)
    reader, target = place(card)
    reader.authenticate(8, "A", mifare.TRANSPORT_KEY)
    reader.write_block(9, b"someone's data!!")
    before = card.to_bytes()
    with pytest.raises(card_io.CardNotBlank):
        card_io.issue_card(reader, ISSUER, reader.poll(0), IDENTITY, NAME)
    assert card.to_bytes() == before


def test_a_terminal_key_holder_cannot_issue():
    reader, target = place(ClassicCard(UID))
    with pytest.raises(sam_module.KeyMissing):
        card_io.issue_card(reader, TERMINAL, target, IDENTITY, NAME)


def test_count_tap_increments_the_counter_each_tap():
    card = issued_card()
    reader, target = place(card)
    view = card_io.read_card(reader, TERMINAL, target)
    counter = view.tap_counter
    for _ in range(3):
        counter = card_io.count_tap(reader, TERMINAL, target, counter)
    assert counter == 3
    assert read(reader).tap_counter == 3


def test_count_tap_goes_on_from_read_card_without_a_second_authentication():
    card = issued_card()
    reader, target = place(card)
    view = card_io.read_card(reader, TERMINAL, target)
    sent = []
    reader.field.on_operation(lambda _field, _number, name, phase: sent.append(name) if phase == "before" else None)
    assert card_io.count_tap(reader, TERMINAL, target, view.tap_counter, authenticated=True) == 1
    assert sent == ["decrement", "transfer", "read"]
    # Selected anew, the card has forgotten the authentication: it refuses, and nothing is counted.
    with pytest.raises(CardNak):
        card_io.count_tap(reader, TERMINAL, reader.poll(0), 1, authenticated=True)
    assert tap_counter_on(card) == 1


def test_count_tap_refuses_a_wrong_expectation_after_counting():
    card = issued_card()
    reader, target = place(card)
    with pytest.raises(card_io.TapNotCounted):
        card_io.count_tap(reader, TERMINAL, target, 5)
    assert read(reader).tap_counter == 1      # counted anyway: the server sees the real counter


# count_tap sends: 1 authenticate, 2 decrement, 3 transfer, 4 read.
@pytest.mark.parametrize("command, done, counted", [
    (1, False, False),
    (2, False, False),
    (2, True, False),     # decrement landed in the transfer buffer only; pulling the card loses it
    (3, False, False),
    (3, True, True),      # transfer done, answer lost: the counter moved
    (4, False, True),
    (4, True, True),
])
def test_a_card_pulled_mid_tap_raises_card_gone_and_the_counter_tells_what_happened(command, done, counted):
    card = issued_card()
    reader, target = place(card)
    reader.field.pull_after(command, done=done)
    with pytest.raises(CardGone):
        card_io.count_tap(reader, TERMINAL, target, 0)
    assert tap_counter_on(card) == (1 if counted else 0)


def test_the_cardholder_taps_again_after_a_torn_tap_and_the_server_sees_a_gap():
    card = issued_card()
    reader, target = place(card)
    reader.field.pull_after(3, done=True)
    with pytest.raises(CardGone):
        card_io.count_tap(reader, TERMINAL, target, 0)
    reader.field.place(card)
    view = read(reader)
    assert view.tap_counter == 1
    assert card_io.count_tap(reader, TERMINAL, reader.poll(0), view.tap_counter) == 2


def test_a_blank_card_is_reported_as_not_issued():
    reader, _target = place(ClassicCard(UID))
    with pytest.raises(card_layout.CardFormatError, match="空白卡"):
        read(reader)


def test_a_card_of_another_site_is_refused_by_its_keys():
    other_site = sam_module.SoftwareSAM(sam_module.site_purpose_keys(b"\x07" * 32, include_issuer=True))
    reader, target = place(ClassicCard(UID))
    card_io.issue_card(reader, other_site, target, IDENTITY, NAME)
    with pytest.raises(AuthenticationError):
        read(reader)


def test_a_clone_on_another_uid_is_refused():
    original = issued_card()
    other_uid = bytes.fromhex("0badcafe")
    image = bytearray(original.to_bytes()[4:])
    image[0:16] = ClassicCard(other_uid).dump_block(0)   # a "magic" card copies all but its UID
    reader, _target = place(ClassicCard(other_uid, image))
    with pytest.raises(AuthenticationError):
        read(reader)


def test_a_tampered_identity_fails_its_mac():
    card = issued_card()
    reader, target = place(card)
    # Even with the issuer's key B (write access to the identity), changing a byte breaks the MAC.
    reader.authenticate(4, "B", ISSUER.card_sector_key(UID, 1, "B"))
    block = bytearray(reader.read_block(4))
    block[8] ^= 0x01    # account id
    reader.write_block(4, bytes(block))
    with pytest.raises(card_layout.CardFormatError, match="MAC"):
        read(reader)


def test_nobody_with_key_a_can_roll_the_counter_back():
    card = issued_card()
    reader, target = place(card)
    card_io.count_tap(reader, TERMINAL, target, 0)
    key_a = TERMINAL.card_sector_key(UID, card_layout.COUNTER_SECTOR, "A")
    for attempt in (lambda: reader.increment(8, 1),
                    lambda: reader.write_block(8, mifare.encode_value_block(card_layout.COUNTER_START, 8))):
        reader.poll(0)
        reader.authenticate(8, "A", key_a)
        with pytest.raises(CardNak):
            attempt()
    assert read(reader).tap_counter == 1


def test_a_corrupted_counter_block_is_a_format_error():
    card = issued_card()
    image = bytearray(card.to_bytes())
    image[4 + 8 * 16 + 1] ^= 0x10     # value copy 1 of block 8
    reader, _target = place(ClassicCard.from_bytes(bytes(image)))
    with pytest.raises(card_layout.CardFormatError, match="corrupted"):
        read(reader)
