"""Known-answer and round-trip tests of the shared core formats, runnable under MicroPython.

Vectors come from outside this project wherever one exists (RFC 4231 for HMAC-SHA256, the CRC-32
check value, the access bytes printed in NXP's datasheet and used by every MIFARE tool), so a wrong
implementation cannot agree with itself and pass.
"""
import binascii
import struct

from firmware.core import card_layout, crypto, mifare, records, sam, wallets

from .expect import raises


def _hex(data):
    return binascii.hexlify(data).decode()


# --- crypto: RFC 4231 section 4 test cases 1, 2, 4 and 6 (HMAC-SHA-256 rows) -------------------

def test_hmac_sha256_rfc4231_vectors():
    cases = [
        (b"\x0b" * 20, b"Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe", b"what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (bytes(range(1, 26)), b"\xcd" * 50,
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        # key longer than the 64-byte block: hashed first (RFC 2104 section 2)
        (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ]
    for key, message, expected in cases:
        assert _hex(crypto.hmac_sha256(key, message)) == expected, expected


def test_derive_binds_label_and_parts():
    master = b"m" * 32
    key = crypto.derive(master, "sector", b"\x01\x02\x03\x04", 1)
    assert len(key) == 32
    assert key == crypto.hmac_sha256(master, b"ykt/sector/\x01\x02\x03\x04/\x00\x00\x00\x01")
    assert key != crypto.derive(master, "sector", b"\x01\x02\x03\x04", 2)
    assert key != crypto.derive(master, "sectors", b"\x01\x02\x03\x04", 1)


def test_equal_compares_content_and_length():
    assert crypto.equal(b"abc", b"abc")
    assert not crypto.equal(b"abc", b"abd")
    assert not crypto.equal(b"abc", b"ab")


# --- records: 52-byte purchase record with CRC-32 ------------------------------------------------

def _purchase(**changes):
    fields = dict(terminal_id=7, seq=1, time_ms=1700000000123, card_number=100001, account_id=5001,
                  card_generation=1, category=wallets.CATEGORY_CANTEEN, tap_counter=42, amount_fen=1250,
                  merchant_id=3, flags=records.FLAG_OFFLINE)
    fields.update(changes)
    return fields


def test_crc32_check_value():
    # The CRC-32 (IEEE) catalogue check value; records rely on binascii.crc32 being this CRC.
    assert binascii.crc32(b"123456789") & 0xFFFFFFFF == 0xCBF43926


def test_record_round_trip_and_layout():
    fields = _purchase()
    data = records.encode_purchase(**fields)
    assert len(data) == records.RECORD_SIZE == 52
    decoded = records.decode(data)
    for name in fields:
        assert decoded[name] == fields[name], name
    assert decoded["version"] == records.VERSION and decoded["kind"] == records.KIND_PURCHASE
    # offsets from the layout table in records.py
    assert struct.unpack(">I", data[34:38])[0] == 1250
    assert struct.unpack(">I", data[48:52])[0] == binascii.crc32(data[:48]) & 0xFFFFFFFF


def test_record_any_single_bit_flip_is_refused():
    data = records.encode_purchase(**_purchase())
    for index in range(len(data)):
        for bit in (0x01, 0x80):
            corrupted = bytearray(data)
            corrupted[index] ^= bit
            raises(records.RecordError, records.decode, bytes(corrupted))


def test_record_refuses_impossible_values():
    raises(records.RecordError, records.encode_purchase, **_purchase(amount_fen=0))
    raises(records.RecordError, records.encode_purchase, **_purchase(amount_fen=records.MAX_AMOUNT_FEN + 1))
    raises(records.RecordError, records.encode_purchase, **_purchase(seq=0))
    data = records.encode_purchase(**_purchase())
    raises(records.RecordError, records.decode, data[:-1])
    raises(records.RecordError, records.decode, data + b"\x00")


def test_water_records_carry_volume_duration_and_end_reason():
    card = records.encode_water(7, 3, 1700000000123, 100001, 5001, 1, wallets.CATEGORY_WATER, 43, 45, 3,
                                ml=1500, duration_s=62, end_reason=2)
    assert len(card) == records.RECORD_SIZE
    decoded = records.decode(card)
    assert decoded["kind"] == records.KIND_WATER and decoded["amount_fen"] == 45 and decoded["tap_counter"] == 43
    assert records.water_fields(card) == (1500, 62, 2)
    nothing = records.encode_water(7, 4, 1700000000999, 0, 5001, 0, wallets.CATEGORY_WATER, 41, 0, 3,
                                   ml=0, duration_s=1, end_reason=4, grant=True)
    decoded = records.decode(nothing)
    assert decoded["kind"] == records.KIND_WATER_GRANT and decoded["amount_fen"] == 0 and decoded["tap_counter"] == 41
    raises(records.RecordError, records.encode_water, 7, 4, 0, 100001, 5001, 1, 2, 41, 0, 3, 0, 1, 4, True)
    raises(records.RecordError, records.encode_water, 7, 4, 0, 0, 5001, 0, 2, 41, -1, 3, 0, 1, 4, True)
    raises(records.RecordError, records.encode_water, 7, 4, 0, 0, 5001, 0, 2, 41, 0, 3, 0, 1, 0, True)
    for index in range(len(card)):
        corrupted = bytearray(card)
        corrupted[index] ^= 0x10
        raises(records.RecordError, records.decode, bytes(corrupted))


# --- mifare: access bits (datasheet 8.7.1, tables 7-8) and value blocks (8.6.2) -------------------

def test_transport_access_bytes_match_datasheet():
    # Delivery configuration FF 07 80: data blocks 000, trailer 001 (datasheet 8.7.1).
    transport = ((0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 1))
    assert mifare.encode_access_bits(transport) == mifare.TRANSPORT_ACCESS == b"\xff\x07\x80"
    assert mifare.decode_access_bits(b"\xff\x07\x80") == transport


def test_identity_sector_access_bytes_are_the_well_known_78_77_88():
    assert mifare.encode_access_bits(card_layout.IDENTITY_SECTOR_ACCESS) == b"\x78\x77\x88"


def test_access_bits_round_trip_every_combination():
    combos = [(c1, c2, c3) for c1 in (0, 1) for c2 in (0, 1) for c3 in (0, 1)]
    seen = set()
    for block0 in combos:
        for block1 in combos:
            for block2 in combos:
                for trailer in combos:
                    conditions = (block0, block1, block2, trailer)
                    encoded = mifare.encode_access_bits(conditions)
                    assert mifare.decode_access_bits(encoded) == conditions
                    seen.add(encoded)
    assert len(seen) == 8 ** 4


def test_access_bits_inconsistent_copy_refused():
    for index in range(3):
        for bit in range(8):
            corrupted = bytearray(b"\x78\x77\x88")
            corrupted[index] ^= 1 << bit
            raises(mifare.FormatError, mifare.decode_access_bits, bytes(corrupted))


def test_value_block_layout_and_round_trip():
    block = mifare.encode_value_block(100, 5)
    assert _hex(block) == "64000000" "9bffffff" "64000000" "05fa05fa"
    for value in (mifare.VALUE_MIN, -1, 0, 1, card_layout.COUNTER_START, mifare.VALUE_MAX):
        assert mifare.decode_value_block(mifare.encode_value_block(value, 8)) == (value, 8)
    raises(mifare.FormatError, mifare.encode_value_block, mifare.VALUE_MAX + 1, 8)


def test_value_block_any_corruption_refused():
    block = mifare.encode_value_block(12345, 8)
    for index in range(16):
        corrupted = bytearray(block)
        corrupted[index] ^= 0x10
        raises(mifare.FormatError, mifare.decode_value_block, bytes(corrupted))


def test_counter_sector_forbids_increment_and_write():
    counter_condition = card_layout.COUNTER_SECTOR_ACCESS[0]
    rules = mifare.DATA_CONDITIONS[counter_condition]
    assert rules[mifare.INCREMENT] == mifare.NEVER and rules[mifare.WRITE] == mifare.NEVER
    assert mifare.key_allowed(rules[mifare.DECREMENT], "A")


# --- card layout: identity, name, MAC -------------------------------------------------------------

_UID = b"\x04\xa1\xb2\xc3"


def _issuer():
    return sam.SoftwareSAM(sam.site_purpose_keys(b"site-master-key-for-tests-only!!", include_issuer=True))


def test_identity_round_trip_and_mac_verifies():
    identity = card_layout.Identity(100001, 5001, 2, card_layout.HOLDER_STUDENT, 20280630)
    key_holder = _issuer()
    plan = dict(card_layout.issue_plan(key_holder, _UID, identity, "张三丰"))
    blocks = dict(plan[card_layout.IDENTITY_SECTOR])
    verified, name = card_layout.verify_card(key_holder, _UID, blocks[card_layout.IDENTITY_BLOCK],
                                             blocks[card_layout.MAC_BLOCK], blocks[card_layout.NAME_BLOCK])
    assert verified == identity and name == "张三丰"


def test_identity_mac_refuses_other_uid_and_edited_block():
    identity = card_layout.Identity(100001, 5001, 2, card_layout.HOLDER_STAFF, 20301231)
    key_holder = _issuer()
    blocks = dict(dict(card_layout.issue_plan(key_holder, _UID, identity, "李四"))[card_layout.IDENTITY_SECTOR])
    identity_block, mac_block, name_block = (blocks[card_layout.IDENTITY_BLOCK], blocks[card_layout.MAC_BLOCK],
                                             blocks[card_layout.NAME_BLOCK])
    # a copied card (same blocks, other UID) and a raised account number are both refused
    raises(card_layout.CardFormatError, card_layout.verify_card, key_holder, b"\x04\xa1\xb2\xc4",
           identity_block, mac_block, name_block)
    edited = bytearray(identity_block)
    edited[8] ^= 1
    raises(card_layout.CardFormatError, card_layout.verify_card, key_holder, _UID, bytes(edited), mac_block,
           name_block)


def test_terminal_key_holder_cannot_issue():
    terminal = sam.SoftwareSAM(sam.site_purpose_keys(b"site-master-key-for-tests-only!!"))
    identity = card_layout.Identity(1, 1, 1, card_layout.HOLDER_STAFF, 20301231)
    raises(sam.KeyMissing, card_layout.issue_plan, terminal, _UID, identity, "王五")


def test_name_is_cut_on_a_character_boundary_and_masked():
    block = card_layout.encode_name("欧阳娜娜娜娜")        # 6 characters, 18 bytes of UTF-8
    assert len(block) == card_layout.NAME_BYTES
    assert card_layout.decode_name(block) == "欧阳娜娜娜"
    assert card_layout.mask_name("张三丰") == "张*丰"
    assert card_layout.mask_name("李四") == "李*"
    assert card_layout.mask_name("欧阳娜娜") == "欧**娜"


def test_tap_counter_counts_up_as_value_counts_down():
    assert card_layout.tap_counter_from_value(card_layout.COUNTER_START) == 0
    assert card_layout.tap_counter_from_value(card_layout.COUNTER_START - 3) == 3
    raises(card_layout.CardFormatError, card_layout.tap_counter_from_value, -1)


# --- wallets: category -> wallet order ------------------------------------------------------------

def test_canteen_spends_main_only():
    balances_fen = {"main": 500, "water": 1000, "legacy": 1000}
    assert wallets.split_debit(balances_fen, wallets.CATEGORY_CANTEEN, 500) == [("main", 500)]
    assert wallets.split_debit(balances_fen, wallets.CATEGORY_CANTEEN, 501) is None
    assert wallets.spendable_fen(balances_fen, wallets.CATEGORY_CANTEEN) == 500


def test_water_spends_water_then_legacy_then_main():
    balances_fen = {"main": 1000, "water": 30, "legacy": 50}
    assert wallets.split_debit(balances_fen, wallets.CATEGORY_WATER, 100) == \
        [("water", 30), ("legacy", 50), ("main", 20)]


def test_shortfall_lands_on_the_last_wallet():
    balances_fen = {"main": 10, "legacy": 5}
    parts = wallets.split_debit(balances_fen, wallets.CATEGORY_ELECTRICITY, 40, allow_shortfall=True)
    assert parts == [("legacy", 5), ("main", 35)]
    assert sum(fen for _, fen in parts) == 40
