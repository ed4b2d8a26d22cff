"""Properties of the card layout and the MIFARE formats: round trips, and every corruption detected."""
import pytest
from hypothesis import assume, given, settings, strategies as st

from firmware.core import card_layout, mifare, sam as sam_module

MASTER_KEY = bytes(range(32))
TERMINAL_SAM = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY))

u32_positive = st.integers(min_value=1, max_value=0xFFFFFFFF)
identities = st.builds(
    card_layout.Identity,
    card_number=u32_positive,
    account_id=u32_positive,
    generation=st.integers(min_value=0, max_value=255),
    holder_category=st.sampled_from(card_layout.HOLDER_CATEGORIES),
    expiry_yyyymmdd=st.integers(min_value=0, max_value=0xFFFFFFFF),
)
names = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
uids = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=7, max_size=7))
conditions = st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1))
access_sets = st.tuples(conditions, conditions, conditions, conditions)


def issued_blocks(uid, identity, name):
    identity_block = card_layout.encode_identity(identity)
    name_block = card_layout.encode_name(name)
    mac_block = TERMINAL_SAM.identity_mac(uid, card_layout.mac_input(identity_block, name_block))
    return [identity_block, mac_block, name_block]


@given(identities)
def test_identity_round_trips(identity):
    block = card_layout.encode_identity(identity)
    assert len(block) == 16
    assert card_layout.decode_identity(block) == identity


@given(names)
def test_name_round_trips_or_is_cut_on_a_character_boundary(name):
    block = card_layout.encode_name(name)
    assert len(block) == card_layout.NAME_BYTES
    decoded = card_layout.decode_name(block)
    assert name.startswith(decoded)
    if len(name.encode("utf-8")) <= card_layout.NAME_BYTES:
        assert decoded == name


@given(uids, identities, names)
def test_an_issued_card_verifies(uid, identity, name):
    blocks = issued_blocks(uid, identity, name)
    got_identity, got_name = card_layout.verify_card(TERMINAL_SAM, uid, *blocks)
    assert got_identity == identity
    assert got_name == card_layout.decode_name(card_layout.encode_name(name))


@given(uids, identities, names, st.integers(0, 2), st.integers(0, 127))
def test_any_single_bit_flip_in_identity_mac_or_name_is_detected(uid, identity, name, which, bit):
    blocks = issued_blocks(uid, identity, name)
    damaged = bytearray(blocks[which])
    damaged[bit // 8] ^= 1 << (bit % 8)
    blocks[which] = bytes(damaged)
    with pytest.raises(card_layout.CardFormatError):
        card_layout.verify_card(TERMINAL_SAM, uid, *blocks)


@given(uids, uids, identities, names)
def test_blocks_copied_to_another_uid_do_not_verify(uid, other_uid, identity, name):
    assume(uid != other_uid)
    with pytest.raises(card_layout.CardFormatError):
        card_layout.verify_card(TERMINAL_SAM, other_uid, *issued_blocks(uid, identity, name))


def test_another_site_key_does_not_verify():
    other_site = sam_module.SoftwareSAM(sam_module.site_purpose_keys(b"\x01" * 32))
    blocks = issued_blocks(b"\x01\x02\x03\x04", card_layout.Identity(7, 8, 1, card_layout.HOLDER_STAFF, 20300101), "王芳")
    with pytest.raises(card_layout.CardFormatError):
        card_layout.verify_card(other_site, b"\x01\x02\x03\x04", *blocks)


@given(st.integers(mifare.VALUE_MIN, mifare.VALUE_MAX), st.integers(0, 255))
def test_value_block_round_trips(value, address):
    assert mifare.decode_value_block(mifare.encode_value_block(value, address)) == (value, address)


# The redundant fields of a value block (datasheet 8.6.2). Damage confined to one field is always
# caught; damage that rewrites all copies consistently is a different value, not a corruption.
VALUE_FIELDS = [(0, 4), (4, 8), (8, 12), (12, 13), (13, 14), (14, 15), (15, 16)]


@given(st.integers(mifare.VALUE_MIN, mifare.VALUE_MAX), st.integers(0, 255),
       st.sampled_from(VALUE_FIELDS), st.data())
def test_any_corruption_of_one_value_block_field_is_detected(value, address, field, data):
    start, end = field
    mask = data.draw(st.binary(min_size=end - start, max_size=end - start).filter(any))
    block = bytearray(mifare.encode_value_block(value, address))
    for offset, byte in enumerate(mask):
        block[start + offset] ^= byte
    with pytest.raises(mifare.FormatError):
        mifare.decode_value_block(bytes(block))


@given(st.integers(0, 127))
def test_any_single_bit_flip_of_a_value_block_is_detected(bit):
    block = bytearray(mifare.encode_value_block(card_layout.COUNTER_START, card_layout.COUNTER_BLOCK))
    block[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(mifare.FormatError):
        mifare.decode_value_block(bytes(block))


@given(access_sets)
def test_access_bits_round_trip(access):
    assert mifare.decode_access_bits(mifare.encode_access_bits(access)) == access


def test_transport_access_bits_mean_open_data_and_key_a_trailer():
    assert mifare.decode_access_bits(mifare.TRANSPORT_ACCESS) == ((0, 0, 0),) * 3 + ((0, 0, 1),)
    assert mifare.encode_access_bits(((0, 0, 0),) * 3 + ((0, 0, 1),)) == b"\xff\x07\x80"


@given(access_sets, st.integers(0, 23))
def test_any_single_bit_flip_of_access_bits_is_detected(access, bit):
    raw = bytearray(mifare.encode_access_bits(access))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(mifare.FormatError):
        mifare.decode_access_bits(bytes(raw))


@given(access_sets, st.data())
def test_any_corruption_of_one_copy_of_the_access_bits_is_detected(access, data):
    # Byte 6 and the low nibble of byte 7 hold the inverted copy; the rest the plain copy.
    inverted_mask = (0xFF, 0x0F, 0x00)
    plain_mask = (0x00, 0xF0, 0xFF)
    copy_mask = data.draw(st.sampled_from([inverted_mask, plain_mask]))
    damage = data.draw(st.tuples(*(st.integers(0, 255) for _ in range(3)))
                       .map(lambda bytes_: tuple(b & m for b, m in zip(bytes_, copy_mask))).filter(any))
    raw = bytes(a ^ d for a, d in zip(mifare.encode_access_bits(access), damage))
    with pytest.raises(mifare.FormatError):
        mifare.decode_access_bits(raw)


@given(st.integers(0, card_layout.COUNTER_START))
def test_tap_counter_grows_as_the_value_block_counts_down(value):
    counter = card_layout.tap_counter_from_value(value)
    assert counter >= 0
    if value > 0:
        assert card_layout.tap_counter_from_value(value - 1) == counter + 1


@pytest.mark.parametrize("value", [-1, card_layout.COUNTER_START + 1, mifare.VALUE_MAX])
def test_impossible_tap_counter_values_are_refused(value):
    with pytest.raises(card_layout.CardFormatError):
        card_layout.tap_counter_from_value(value)


@settings(max_examples=50)
@given(uids, identities, names)
def test_the_issue_plan_writes_the_documented_access_conditions(uid, identity, name):
    issuer = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY, include_issuer=True))
    plan = dict(card_layout.issue_plan(issuer, uid, identity, name))
    assert sorted(plan) == [card_layout.IDENTITY_SECTOR, card_layout.COUNTER_SECTOR]
    for sector, access in ((card_layout.IDENTITY_SECTOR, card_layout.IDENTITY_SECTOR_ACCESS),
                           (card_layout.COUNTER_SECTOR, card_layout.COUNTER_SECTOR_ACCESS)):
        last_block, trailer = plan[sector][-1]
        assert last_block == mifare.trailer_block(sector), "the trailer must be written last"
        assert mifare.decode_access_bits(trailer[6:9]) == access
        assert trailer[0:6] == TERMINAL_SAM.card_sector_key(uid, sector, "A")
    counter_block = dict(plan[card_layout.COUNTER_SECTOR])[card_layout.COUNTER_BLOCK]
    value, _address = mifare.decode_value_block(counter_block)
    assert card_layout.tap_counter_from_value(value) == 0
