"""Hypothesis properties of the terminal record codec (firmware/core/records.py).

Round trip for every valid record; and corruption is detected for the classes CRC-32 guarantees:
any single changed bit, any burst of changed bits no longer than 32, any truncation or extension.
(Arbitrary multi-byte damage is caught with probability 1 - 2^-32, which no test can prove.)
"""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from firmware.core import records

u32 = st.integers(0, 0xFFFFFFFF)
fields = st.fixed_dictionaries({
    "terminal_id": u32,
    "seq": st.integers(1, 0xFFFFFFFF),
    "time_ms": st.integers(0, 2 ** 64 - 1),
    "card_number": u32,
    "account_id": u32,
    "card_generation": st.integers(0, 255),
    "category": st.integers(0, 255),
    "tap_counter": u32,
    "amount_fen": st.integers(1, records.MAX_AMOUNT_FEN),
    "merchant_id": u32,
    "flags": st.integers(0, 0xFFFF),
})


@given(fields)
def test_round_trip(values):
    encoded = records.encode_purchase(**values)
    assert len(encoded) == records.RECORD_SIZE
    decoded = records.decode(encoded)
    assert decoded.pop("version") == records.VERSION and decoded.pop("kind") == records.KIND_PURCHASE
    assert decoded == values


@given(fields, st.data())
def test_any_single_bit_flip_is_detected(values, data):
    encoded = bytearray(records.encode_purchase(**values))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(records.RecordError):
        records.decode_tuple(bytes(encoded))


@given(fields, st.data())
@settings(max_examples=300)
def test_any_burst_up_to_32_bits_is_detected(values, data):
    encoded = records.encode_purchase(**values)
    total_bits = len(encoded) * 8
    length = data.draw(st.integers(1, 32))
    start = data.draw(st.integers(0, total_bits - length))
    # A burst: first and last bit of the window flipped, anything in between.
    middle = data.draw(st.integers(0, 2 ** max(0, length - 2) - 1)) if length > 2 else 0
    pattern = 1 if length == 1 else (1 << (length - 1)) | (middle << 1) | 1
    as_int = int.from_bytes(encoded, "big") ^ (pattern << (total_bits - start - length))
    with pytest.raises(records.RecordError):
        records.decode_tuple(as_int.to_bytes(len(encoded), "big"))


@given(fields, st.integers(0, records.RECORD_SIZE - 1), st.binary(min_size=1, max_size=8))
def test_truncated_or_extended_records_are_refused(values, cut, extra):
    encoded = records.encode_purchase(**values)
    for damaged in (encoded[:cut], encoded + extra):
        with pytest.raises(records.RecordError):
            records.decode_tuple(damaged)


@given(fields)
def test_a_valid_crc_over_impossible_fields_is_still_refused(values):
    """A record re-sealed with a correct CRC is refused when a field is impossible (zero amount)."""
    body = bytearray(records.encode_purchase(**values)[:-4])
    body[34:38] = b"\x00\x00\x00\x00"          # amount_fen = 0
    import binascii
    resealed = bytes(body) + struct.pack(">I", binascii.crc32(bytes(body)) & 0xFFFFFFFF)
    with pytest.raises(records.RecordError):
        records.decode_tuple(resealed)


@given(st.integers(-5, 0) | st.integers(records.MAX_AMOUNT_FEN + 1, 2 ** 31))
def test_impossible_amounts_are_never_encoded(amount_fen):
    with pytest.raises(records.RecordError):
        records.encode_purchase(1, 1, 0, 1, 1, 1, 1, 1, amount_fen, 1)
