"""PN532 frame codec: known-answer frames and the parser's edge cases, runnable under MicroPython.

The known frames are the bytes printed in the PN532 User Manual UM0701-02 (6.2.1.3 ACK, 6.2.1.4
NACK, 6.2.1.5 error frame) and the GetFirmwareVersion / SAMConfiguration frames nfcpy's PN532 driver
writes to a real chip, so a codec that agrees only with itself cannot pass.
"""
import binascii

from firmware.core import pn532_frames as frames

from .expect import raises


def _hex(data):
    return binascii.hexlify(data).decode()


def test_known_command_frames():
    assert _hex(frames.encode_command(frames.build_get_firmware_version())) == "0000ff02fed4022a00"
    assert _hex(frames.encode_command(frames.build_sam_configuration())) == "0000ff05fbd4140100001700"
    # GetFirmwareVersion answer of a PN532 v1.6 (UM0701-02 7.2.2): IC 32, version 1.6, support 07
    assert _hex(frames.encode_response(0x02, b"\x32\x01\x06\x07")) == "0000ff06fad50332010607e800"


def test_ack_nack_and_error_frames_parse():
    found = frames.parse_frames(frames.ACK_FRAME + frames.NACK_FRAME + frames.ERROR_FRAME)
    assert [frame.kind for frame in found] == [frames.ACK, frames.NACK, frames.ERROR]


def test_parser_skips_wakeup_garbage_and_long_preambles():
    response = frames.encode_response(0x14)
    data = b"\x55\x55" + bytes(14) + b"\x01\x02\xff" + bytes(5) + response
    found = frames.parse_frames(data)
    assert found == [frames.Frame(frames.INFO, frames.TFI_CHIP, b"\x15")]


def test_parser_takes_bytes_one_at_a_time():
    frame = frames.encode_response(0x40, b"\x00" + bytes(range(16)))
    parser = frames.FrameParser()
    seen = []
    for index in range(len(frame)):
        parser.feed(frame[index:index + 1])
        result = parser.next_frame()
        if result is not None:
            seen.append((index, result))
    # The frame is complete at its DCS, the byte before the postamble.
    assert seen == [(len(frame) - 2, frames.Frame(frames.INFO, frames.TFI_CHIP, b"\x41\x00" + bytes(range(16))))]


def test_extended_frame_round_trip():
    payload = bytes((frames.CMD_DIAGNOSE,)) + bytes(i & 0xFF for i in range(263))
    encoded = frames.encode_command(payload)
    assert encoded[3:5] == b"\xff\xff" and encoded[5:7] == b"\x01\x09"    # LENM LENL = 265
    assert frames.parse_frames(encoded) == [frames.Frame(frames.INFO, frames.TFI_HOST, payload)]


def test_bad_data_checksum_raises_and_the_parser_resynchronises():
    good = frames.encode_response(0x4A, b"\x00")
    bad = bytearray(good)
    bad[-2] ^= 0x01
    parser = frames.FrameParser()
    parser.feed(bytes(bad) + good)
    error = raises(frames.FrameError, parser.next_frame)
    assert "DCS" in str(error)
    assert parser.next_frame() == frames.Frame(frames.INFO, frames.TFI_CHIP, b"\x4b\x00")
    assert parser.next_frame() is None


def test_bad_length_checksum_raises():
    bad = bytearray(frames.encode_response(0x14))
    bad[4] ^= 0x10
    parser = frames.FrameParser()
    parser.feed(bytes(bad))
    assert "LCS" in str(raises(frames.FrameError, parser.next_frame))


def test_incomplete_frame_waits_for_more_bytes():
    frame = frames.encode_response(0x40, b"\x00")
    parser = frames.FrameParser()
    parser.feed(frame[:6])
    assert parser.next_frame() is None
    assert parser.pending_bytes == 5
    parser.feed(frame[6:])
    assert parser.next_frame().data == b"\x41\x00"


def test_response_params_checks_the_answer():
    frame = frames.parse_frames(frames.encode_response(0x40, b"\x14"))[0]
    assert frames.response_params(frame, 0x40) == b"\x14"
    raises(frames.CommandError, frames.response_params, frame, 0x4A)
    raises(frames.CommandError, frames.response_params, frames.ERROR_KIND, 0x40)


def test_mifare_payloads():
    uid7 = bytes.fromhex("04a1b2c3d4e5f6")
    key = bytes.fromhex("a0a1a2a3a4a5")
    assert _hex(frames.mifare_authenticate(7, "A", key, uid7)) == "6007a0a1a2a3a4a5c3d4e5f6"
    assert _hex(frames.mifare_authenticate(4, "B", key, uid7[:4])) == "6104a0a1a2a3a4a504a1b2c3"
    assert _hex(frames.mifare_read(8)) == "3008"
    assert _hex(frames.mifare_decrement(9, 1)) == "c00901000000"
    assert _hex(frames.mifare_increment(9, 0x01020304)) == "c10904030201"
    assert _hex(frames.mifare_restore(9)) == "c20900000000"
    assert _hex(frames.mifare_transfer(9)) == "b009"
    assert _hex(frames.build_in_data_exchange(1, frames.mifare_read(8))) == "40013008"


def test_in_list_passive_target_builds_and_parses():
    assert _hex(frames.build_in_list_passive_target()) == "4a0100"
    uid7 = bytes.fromhex("04a1b2c3d4e5f6")
    assert _hex(frames.build_in_list_passive_target(uid=uid7)) == "4a01008804a1b2c3d4e5f6"
    assert frames.uncascade_uid(frames.cascade_uid(uid7)) == uid7
    params = bytes.fromhex("01" "01" "0004" "08" "04" "c0ffee01")
    assert frames.parse_in_list_passive_target(params) == [
        frames.TypeATarget(1, 0x0004, 0x08, bytes.fromhex("c0ffee01"), b"")]
    assert frames.parse_in_list_passive_target(b"\x00") == []
    raises(frames.CommandError, frames.parse_in_list_passive_target, bytes.fromhex("0101000408"))


def test_status_codes():
    assert frames.parse_status(b"\x54\x01\x02") == (0x14, b"\x01\x02")   # MI and NAD bits masked off
    assert "authentication" in frames.status_text(0x14)
    assert "unknown" in frames.status_text(0x3E)
    assert frames.timeout_index_us(0x0A) == 51200
