"""PN532 frame codec properties (Hypothesis): any frame survives any chunking and garbage around it,
and every single-byte corruption of a frame's checked bytes is refused, never delivered.

Known-answer cases live in tests/core/test_pn532_frames.py (they also run under MicroPython).
"""
import pytest
from hypothesis import assume, given, settings, strategies as st

from firmware.core import pn532_frames as frames

payloads = st.binary(min_size=1, max_size=frames.MAX_FRAME_DATA_BYTES - 1)
tfis = st.sampled_from((frames.TFI_HOST, frames.TFI_CHIP))
# Garbage between frames may hold anything except a start code, which would announce a frame - also
# one it forms with the postamble before it (00 | FF..) or the preamble after it (..00 | 00 FF).
garbage = st.binary(max_size=12).filter(lambda data: frames.START_CODE not in data and not data.endswith(b"\x00")
                                        and not data.startswith(b"\xff"))


def _chunks(data, cuts):
    points = sorted(set(cut % (len(data) + 1) for cut in cuts))
    pieces, last = [], 0
    for point in points + [len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


def _parse_all(parser):
    found = []
    while True:
        frame = parser.next_frame()
        if frame is None:
            return found
        found.append(frame)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(tfis, payloads, garbage), min_size=1, max_size=4),
       st.lists(st.integers(0, 2000), max_size=12))
def test_frames_survive_any_chunking_and_garbage(items, cuts):
    stream = b"".join(g + frames.encode_frame(tfi, payload) for tfi, payload, g in items)
    parser = frames.FrameParser()
    found = []
    for chunk in _chunks(stream, cuts):
        parser.feed(chunk)
        found.extend(_parse_all(parser))
    assert found == [frames.Frame(frames.INFO, tfi, payload) for tfi, payload, _g in items]


@settings(max_examples=100, deadline=None)
@given(payloads)
def test_encoder_picks_normal_or_extended_frames(payload):
    encoded = frames.encode_frame(frames.TFI_HOST, payload)
    extended = len(payload) + 1 > 254
    assert (encoded[3:5] == b"\xff\xff") == extended
    assert len(encoded) == len(payload) + (11 if extended else 8)


@settings(max_examples=300, deadline=None)
@given(tfis, payloads, st.data())
def test_every_single_byte_corruption_is_refused(tfi, payload, data):
    encoded = frames.encode_frame(tfi, payload)
    # Checked bytes: start code .. DCS (preamble and postamble are free by 6.2.1.6).
    position = data.draw(st.integers(1, len(encoded) - 2), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda byte: byte != encoded[position]), label="value")
    corrupted = bytearray(encoded)
    corrupted[position] = value
    corrupted = bytes(corrupted)
    parser = frames.FrameParser()
    parser.feed(corrupted)
    delivered = []
    for _ in range(len(corrupted)):
        try:
            frame = parser.next_frame()
        except frames.FrameError:
            continue
        if frame is None:
            break
        delivered.append(frame)
    original = frames.Frame(frames.INFO, tfi, payload)
    assert original not in delivered
    extended = encoded[3:5] == b"\xff\xff"
    if frames.START_CODE not in corrupted[3:]:
        if extended and position == 4:
            # FF FF -> FF 00 turns an extended header into a NACK: the protocol cannot tell them
            # apart, and a NACK only asks for the last answer again.
            assert all(frame.kind == frames.NACK for frame in delivered)
        else:
            assert delivered == []


@settings(max_examples=100, deadline=None)
@given(tfis, payloads, st.integers(1, 6))
def test_a_truncated_frame_is_never_delivered(tfi, payload, missing):
    encoded = frames.encode_frame(tfi, payload)
    parser = frames.FrameParser()
    parser.feed(encoded[:-1 - missing])     # postamble and `missing` bytes before it never arrive
    assert parser.next_frame() is None


@pytest.mark.parametrize("special, kind", [(frames.ACK_FRAME, frames.ACK), (frames.NACK_FRAME, frames.NACK),
                                           (frames.ERROR_FRAME, frames.ERROR)])
def test_special_frames_between_information_frames(special, kind):
    first = frames.encode_response(0x40, b"\x00\x01")
    second = frames.encode_command(frames.mifare_read(4))
    found = frames.parse_frames(first + special + second)
    assert [frame.kind for frame in found] == [frames.INFO, kind, frames.INFO]


def test_the_parser_buffer_is_bounded():
    parser = frames.FrameParser()
    for _ in range(100):
        parser.feed(b"\x00\x00\xff\x80\x80" + bytes(100))   # a frame header that never completes
    assert parser.pending_bytes <= frames.MAX_BUFFER_BYTES


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=7, max_size=7),
                 st.binary(min_size=10, max_size=10)))
def test_cascade_uid_round_trip(uid):
    assume(uid[0] != 0x88)
    assert frames.uncascade_uid(frames.cascade_uid(uid)) == uid
