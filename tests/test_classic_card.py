"""The MIFARE Classic 1K model against the datasheet (MF1S50yyX/V1): access conditions, states, values.

The expected permissions below are transcribed from the datasheet's tables 7 and 8 on their own,
not read from firmware.core.mifare, so a slip in either copy shows up here.
"""
import random

import pytest

from firmware.core import mifare
from reader_drivers.base import AuthenticationError, CardGone
from reader_drivers.sim.classic_card import CardHalted, CardNak, ClassicCard, blank_memory, random_nuid

UID = bytes.fromhex("a1b2c3d4")
KEY_A = bytes.fromhex("a0a1a2a3a4a5")
KEY_B = bytes.fromhex("b0b1b2b3b4b5")
SECTOR = 1
BLOCK = 4               # first data block of sector 1
TRAILER = 7

# Datasheet table 8: C1C2C3 -> read, write, increment, decrement/transfer/restore ("-" = never).
TABLE_8 = """
000 AB AB AB AB
010 AB -  -  -
100 AB B  -  -
110 AB B  B  AB
001 AB -  -  AB
011 B  B  -  -
101 B  -  -  -
111 -  -  -  -
"""
# Datasheet table 7: C1C2C3 -> key A write, access read, access write, key B read, key B write.
TABLE_7 = """
000 A  A  -  A  A
010 -  A  -  A  -
100 B  AB -  -  B
110 -  AB -  -  -
001 A  A  A  A  A
011 B  AB B  -  B
101 -  AB B  -  -
111 -  AB -  -  -
"""


def parse_table(text):
    rows = {}
    for line in text.strip().splitlines():
        bits, *rules = line.split()
        rows[tuple(int(bit) for bit in bits)] = tuple("" if rule == "-" else rule for rule in rules)
    assert len(rows) == 8
    return rows


DATA_RULES = parse_table(TABLE_8)
TRAILER_RULES = parse_table(TABLE_7)
DATA_OPERATIONS = ("read", "write", "increment", "decrement")


def card_with_sector(data_conditions, trailer_conditions=(0, 1, 1), blocks=None):
    """A card whose sector 1 has keys KEY_A/KEY_B and the given access conditions for all three data
    blocks; blocks maps block -> 16 bytes (default: value blocks holding 100)."""
    memory = blank_memory(UID)
    access = (data_conditions,) * 3 + (trailer_conditions,)
    memory[TRAILER * 16:TRAILER * 16 + 16] = mifare.encode_trailer(KEY_A, access, KEY_B)
    blocks = blocks or {block: mifare.encode_value_block(100, block) for block in (4, 5, 6)}
    for block, data in blocks.items():
        memory[block * 16:block * 16 + 16] = data
    card = ClassicCard(UID, memory)
    card.select()
    return card


def key_of(key_type):
    return KEY_A if key_type == "A" else KEY_B


def attempt(card, operation):
    if operation == "read":
        return card.read(BLOCK)
    if operation == "write":
        return card.write(BLOCK, bytes(range(16)))
    if operation == "increment":
        return card.increment(BLOCK, 1)
    return card.decrement(BLOCK, 1)


@pytest.mark.parametrize("conditions", sorted(DATA_RULES))
@pytest.mark.parametrize("key_type", ["A", "B"])
@pytest.mark.parametrize("operation", DATA_OPERATIONS)
def test_every_data_block_access_condition_is_enforced(conditions, key_type, operation):
    allowed = key_type in DATA_RULES[conditions][DATA_OPERATIONS.index(operation)]
    card = card_with_sector(conditions)     # trailer 011: key B not readable, so usable
    card.authenticate(BLOCK, key_type, key_of(key_type))
    if allowed:
        attempt(card, operation)
        assert card.selected
    else:
        with pytest.raises(CardNak):
            attempt(card, operation)
        assert not card.selected, "a NAK halts the card"
        assert card.dump_block(BLOCK) == mifare.encode_value_block(100, BLOCK), "a refused write changed data"


@pytest.mark.parametrize("conditions", sorted(DATA_RULES))
@pytest.mark.parametrize("key_type", ["A", "B"])
def test_transfer_and_restore_follow_the_decrement_column(conditions, key_type):
    # Source block 5 is fully open; target block 4 carries the condition under test.
    access = (conditions, (0, 0, 0), (0, 0, 0), (0, 1, 1))
    memory = blank_memory(UID)
    memory[TRAILER * 16:TRAILER * 16 + 16] = mifare.encode_trailer(KEY_A, access, KEY_B)
    memory[4 * 16:5 * 16] = mifare.encode_value_block(100, 4)
    memory[5 * 16:6 * 16] = mifare.encode_value_block(7, 5)
    card = ClassicCard(UID, memory)
    card.select()
    card.authenticate(BLOCK, key_type, key_of(key_type))
    allowed = key_type in DATA_RULES[conditions][3]
    card.restore(5)
    if allowed:
        card.transfer(4)
        assert mifare.decode_value_block(card.dump_block(4)) == (7, 5)
        card.restore(4)
    else:
        with pytest.raises(CardNak):
            card.transfer(4)
        assert mifare.decode_value_block(card.dump_block(4)) == (100, 4)


@pytest.mark.parametrize("conditions", sorted(TRAILER_RULES))
@pytest.mark.parametrize("key_type", ["A", "B"])
def test_every_trailer_access_condition_is_enforced(conditions, key_type):
    key_a_write, access_read, access_write, key_b_read, key_b_write = TRAILER_RULES[conditions]
    card = card_with_sector((1, 0, 0), conditions)
    stored = card.dump_block(TRAILER)
    card.authenticate(TRAILER, key_type, key_of(key_type))
    if key_type == "B" and key_b_read:
        # Grey rows of table 7: a readable key B cannot serve; every access after it is refused.
        with pytest.raises(CardNak):
            card.read(TRAILER)
        return
    seen = card.read(TRAILER)
    assert seen[0:6] == bytes(6), "key A must never be readable"
    assert seen[6:10] == (stored[6:10] if key_type in access_read else bytes(4))
    assert seen[10:16] == (KEY_B if key_type in key_b_read else bytes(6))

    new_access = mifare.encode_access_bits(((0, 1, 0),) * 3 + (conditions,))
    new_trailer = b"\x11" * 6 + new_access + b"\x42" + b"\x22" * 6
    if not (key_type in key_a_write or key_type in access_write or key_type in key_b_write):
        with pytest.raises(CardNak):
            card.write(TRAILER, new_trailer)
        assert card.dump_block(TRAILER) == stored
        return
    card.write(TRAILER, new_trailer)
    after = card.dump_block(TRAILER)
    assert after[0:6] == (b"\x11" * 6 if key_type in key_a_write else KEY_A)
    assert after[6:10] == (new_access + b"\x42" if key_type in access_write else stored[6:10])
    assert after[10:16] == (b"\x22" * 6 if key_type in key_b_write else KEY_B)


def test_a_readable_key_b_opens_nothing_even_data_blocks():
    card = card_with_sector((0, 0, 0), (0, 0, 1))     # transport-like: key B readable
    card.authenticate(BLOCK, "B", KEY_B)
    with pytest.raises(CardNak):
        card.read(BLOCK)


def test_inconsistent_access_bits_are_refused_and_the_sector_stays_usable():
    card = ClassicCard(UID)
    card.select()
    card.authenticate(TRAILER, "A", mifare.TRANSPORT_KEY)
    bad = KEY_A + b"\xff\x0f\x80\x69" + KEY_B      # byte 7 low nibble no longer inverts C3
    with pytest.raises(CardNak, match="inconsistent access bits"):
        card.write(TRAILER, bad)
    assert card.dump_block(TRAILER)[6:9] == mifare.TRANSPORT_ACCESS
    card.select()
    card.authenticate(BLOCK, "A", mifare.TRANSPORT_KEY)
    card.write(BLOCK, b"\x01" * 16)


def test_new_card_has_transport_configuration_and_manufacturer_block():
    card = ClassicCard(UID)
    card.select()
    for sector in range(mifare.SECTORS):
        trailer = card.dump_block(mifare.trailer_block(sector))
        assert trailer[0:6] == trailer[10:16] == b"\xff" * 6
        assert trailer[6:9] == b"\xff\x07\x80"
    block0 = card.dump_block(0)
    assert block0[0:4] == UID
    assert block0[4] == UID[0] ^ UID[1] ^ UID[2] ^ UID[3]
    assert block0[5] == 0x08 and block0[6:8] == b"\x04\x00"
    assert (card.atqa, card.sak) == (0x0004, 0x08)
    seven = ClassicCard(bytes.fromhex("04112233445566"))
    assert (seven.atqa, seven.sak) == (0x0044, 0x08)
    assert seven.dump_block(0)[0:7] == bytes.fromhex("04112233445566")


def test_manufacturer_block_is_read_only_even_in_transport_configuration():
    card = ClassicCard(UID)
    card.select()
    card.authenticate(0, "A", mifare.TRANSPORT_KEY)
    assert card.read(0)[0:4] == UID
    with pytest.raises(CardNak):
        card.write(0, bytes(16))
    assert card.dump_block(0)[0:4] == UID


def test_failed_authentication_halts_until_selected_again():
    card = card_with_sector((0, 0, 0))
    card.authenticate(BLOCK, "A", KEY_A)
    with pytest.raises(AuthenticationError):
        card.authenticate(BLOCK, "A", b"\x00" * 6)
    with pytest.raises(CardHalted):
        card.read(BLOCK)
    assert isinstance(CardHalted("x"), CardGone)
    with pytest.raises(CardHalted):
        card.authenticate(BLOCK, "A", KEY_A)     # even the right key: it must be selected first
    card.select()
    card.authenticate(BLOCK, "A", KEY_A)
    assert card.read(BLOCK) == mifare.encode_value_block(100, BLOCK)


def test_authenticating_a_sector_drops_the_previous_one():
    card = card_with_sector((0, 0, 0))
    card.authenticate(BLOCK, "A", KEY_A)
    card.authenticate(8, "A", mifare.TRANSPORT_KEY)
    card.read(8)
    with pytest.raises(CardNak, match="not authenticated"):
        card.read(BLOCK)


def test_a_fresh_selection_is_not_authenticated():
    card = card_with_sector((0, 0, 0))
    card.authenticate(BLOCK, "A", KEY_A)
    card.select()
    with pytest.raises(CardNak):
        card.read(BLOCK)


def test_value_operations_change_the_block_only_on_transfer():
    card = card_with_sector((0, 0, 0))
    card.authenticate(BLOCK, "A", KEY_A)
    card.increment(BLOCK, 50)
    assert mifare.decode_value_block(card.read(BLOCK)) == (100, BLOCK)
    card.transfer(BLOCK)
    assert mifare.decode_value_block(card.read(BLOCK)) == (150, BLOCK)
    card.decrement(BLOCK, 170)
    card.transfer(BLOCK)
    assert mifare.decode_value_block(card.read(BLOCK)) == (-20, BLOCK)


def test_restore_and_transfer_copy_a_value_to_a_backup_block():
    card = card_with_sector((0, 0, 0))
    card.authenticate(BLOCK, "A", KEY_A)
    card.decrement(BLOCK, 1)
    card.transfer(BLOCK)
    card.restore(BLOCK)
    card.transfer(6)
    assert mifare.decode_value_block(card.read(6)) == (99, BLOCK)   # the source's address travels


def test_transfer_needs_a_loaded_buffer_and_the_authenticated_sector():
    card = card_with_sector((0, 0, 0))
    card.authenticate(BLOCK, "A", KEY_A)
    with pytest.raises(CardNak, match="nothing to transfer"):
        card.transfer(BLOCK)
    card.select()
    card.authenticate(BLOCK, "A", KEY_A)
    card.increment(BLOCK, 1)
    with pytest.raises(CardNak):
        card.transfer(8)          # sector 2 is not the authenticated one
    assert card.dump_block(8) == bytes(16)


def test_a_new_authentication_empties_the_transfer_buffer():
    card = card_with_sector((0, 0, 0))
    card.authenticate(BLOCK, "A", KEY_A)
    card.increment(BLOCK, 5)
    card.authenticate(BLOCK, "A", KEY_A)
    with pytest.raises(CardNak):
        card.transfer(BLOCK)
    assert mifare.decode_value_block(card.dump_block(BLOCK)) == (100, BLOCK)


@pytest.mark.parametrize("start, operation, delta", [
    (mifare.VALUE_MAX, "increment", 1),
    (mifare.VALUE_MAX - 5, "increment", 6),
    (mifare.VALUE_MIN, "decrement", 1),
    (-1, "decrement", mifare.VALUE_MAX),  # exactly VALUE_MIN: allowed
    (-2, "decrement", mifare.VALUE_MAX),
])
def test_overflow_is_refused_and_the_limits_are_reachable(start, operation, delta):
    card = card_with_sector((0, 0, 0), blocks={BLOCK: mifare.encode_value_block(start, BLOCK)})
    card.authenticate(BLOCK, "A", KEY_A)
    result = start + delta if operation == "increment" else start - delta
    if mifare.VALUE_MIN <= result <= mifare.VALUE_MAX:
        getattr(card, operation)(BLOCK, delta)
        card.transfer(BLOCK)
        assert mifare.decode_value_block(card.dump_block(BLOCK))[0] == result
        return
    with pytest.raises(CardNak, match="overflow"):
        getattr(card, operation)(BLOCK, delta)
    assert mifare.decode_value_block(card.dump_block(BLOCK))[0] == start


@pytest.mark.parametrize("position", [0, 5, 9, 12, 13])
def test_a_corrupted_value_block_is_refused(position):
    damaged = bytearray(mifare.encode_value_block(100, BLOCK))
    damaged[position] ^= 0x01
    card = card_with_sector((0, 0, 0), blocks={BLOCK: bytes(damaged)})
    card.authenticate(BLOCK, "A", KEY_A)
    with pytest.raises(CardNak, match="not a valid value block"):
        card.decrement(BLOCK, 1)
    card.select()
    card.authenticate(BLOCK, "A", KEY_A)
    with pytest.raises(CardNak):
        card.restore(BLOCK)


def test_blocks_outside_the_card_are_refused():
    card = ClassicCard(UID)
    card.select()
    with pytest.raises(CardNak):
        card.authenticate(64, "A", mifare.TRANSPORT_KEY)
    card.select()
    card.authenticate(63, "A", mifare.TRANSPORT_KEY)
    with pytest.raises(CardNak):
        card.read(64)


def test_an_image_round_trips_through_bytes_and_files(tmp_path):
    card = card_with_sector((1, 1, 0))
    card.authenticate(BLOCK, "B", KEY_B)
    card.write(5, b"\x5a" * 16)
    image = card.to_bytes()
    assert len(image) == 4 + 1024
    copy = ClassicCard.from_bytes(image)
    assert copy.uid == UID and copy.to_bytes() == image
    path = tmp_path / "card.bin"
    card.save(str(path))
    loaded = ClassicCard.load(str(path))
    loaded.select()
    loaded.authenticate(5, "A", KEY_A)
    assert loaded.read(5) == b"\x5a" * 16
    seven = ClassicCard(bytes.fromhex("04112233445566"))
    assert ClassicCard.from_bytes(seven.to_bytes()).uid == seven.uid
    with pytest.raises(ValueError):
        ClassicCard.from_bytes(image[:-1])


def test_random_nuids_replay_from_a_seed_and_avoid_the_cascade_tag():
    first = [random_nuid(random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(11)
    uids = [random_nuid(rng) for _ in range(2000)]
    assert all(len(uid) == 4 and uid[0] != 0x88 for uid in uids)
    assert len(set(uids)) > 1990
