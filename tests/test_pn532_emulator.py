"""The PN532 emulator's commands that the pn532: driver does not use but other PN532 tools do
(InAutoPoll, InDeselect, InCommunicateThru: UM0701-02 7.3.13, 7.3.10, 7.3.9), byte for byte on its
pseudo-terminal: what goes in, the ACK and the answer frame that come back.
"""
import nfc.clf.device
import pytest
import serial

from firmware.core import mifare, pn532_frames as frames
from reader_drivers.pn532 import WAKEUP_PREAMBLE
from reader_drivers.sim.classic_card import ClassicCard
from simulators.pn532_emulator import Pn532Emulator

UID4 = bytes.fromhex("c0ffee01")
READ_TIMEOUT_S = 5          # a bound that turns a silent emulator into a failure, not a speed claim


class RawLine:
    """The emulator's pty through pyserial: command frames written as they are, every byte read back."""

    def __init__(self, path):
        self.port = serial.serial_for_url(path, baudrate=115200, timeout=READ_TIMEOUT_S)
        self.port.write(WAKEUP_PREAMBLE)
        assert self.command("1401") == frames.ACK_FRAME + frames.encode_response(frames.CMD_SAM_CONFIGURATION)

    def send(self, payload_hex):
        self.port.write(frames.encode_command(bytes.fromhex(payload_hex)))

    def read(self, byte_count):
        data = self.port.read(byte_count)
        assert len(data) == byte_count, "the emulator sent %r, then nothing" % data
        return data

    def answer(self):
        """ACK and the answer frame (normal information frame or the syntax error frame), raw."""
        head = self.read(len(frames.ACK_FRAME) + 5)
        return head + self.read(head[-2] + 2)

    def command(self, payload_hex):
        self.send(payload_hex)
        return self.answer()

    def close(self):
        self.port.close()


def answer_frame(command_code, params_hex):
    return frames.ACK_FRAME + frames.encode_response(command_code, bytes.fromhex(params_hex))


def with_crc_a(data):
    return bytes(nfc.clf.device.Device.add_crc_a(bytearray(data)))


@pytest.fixture
def emulator():
    with Pn532Emulator() as running:
        yield running


@pytest.fixture
def line(emulator):
    opened = RawLine(emulator.path)
    yield opened
    opened.close()


# --- InAutoPoll (7.3.13) ------------------------------------------------------------------------------

def test_in_auto_poll_lists_the_card_as_the_type_asked_for(emulator, line):
    assert line.command("60010110") == bytes.fromhex("0000ff00ff00" "0000ff03fdd56100ca00")   # NbTg 0
    emulator.field.place(ClassicCard(UID4))
    # PollNr endless, 150 ms, types MIFARE then generic 106 kbps: Type 10, 9 bytes of target data
    # (Tg 01, SENS_RES 00 04, SEL_RES 08, NFCIDLength 04, NFCID1).
    assert line.command("60ff011000") == answer_frame(0x60, "01" "10" "09" "01" "0004" "08" "04" "c0ffee01")
    assert line.command("40016004ffffffffffffc0ffee01") == answer_frame(0x40, "00")   # the listed target
    assert line.command("60020300") == answer_frame(0x60, "01" "00" "09" "01000408" "04" "c0ffee01")


def test_in_auto_poll_types_a_classic_card_does_not_answer_find_nothing(emulator, line):
    emulator.field.place(ClassicCard(UID4))
    assert line.command("6002012011") == answer_frame(0x60, "00")   # ISO 14443-4A, FeliCa 212


def test_an_endless_in_auto_poll_ends_at_the_hosts_ack(line):
    line.send("60ff0110")
    assert line.read(len(frames.ACK_FRAME)) == frames.ACK_FRAME
    line.port.write(frames.ACK_FRAME)                             # abort (6.2.1.3)
    assert line.command("02") == answer_frame(0x02, "32010607")


@pytest.mark.parametrize("payload", ["6000", "600101", "60000110", "60011010", "6001" + "10" * 16])
def test_a_malformed_in_auto_poll_is_a_syntax_error(line, payload):
    assert line.command(payload) == frames.ACK_FRAME + frames.ERROR_FRAME


# --- InDeselect (7.3.10) ------------------------------------------------------------------------------

def test_in_deselect_halts_the_listed_card(emulator, line):
    emulator.field.place(ClassicCard(UID4))
    assert line.command("4401") == bytes.fromhex("0000ff00ff00" "0000ff03fdd54527bf00")   # nothing listed
    line.command("4a0100")
    assert line.command("4401") == bytes.fromhex("0000ff00ff00" "0000ff03fdd54500e600")
    assert line.command("40016004ffffffffffffc0ffee01") == answer_frame(0x40, "01")  # halted: timeout
    line.command("4a0100")
    assert line.command("40016004ffffffffffffc0ffee01") == answer_frame(0x40, "00")


# --- InCommunicateThru (7.3.9) ------------------------------------------------------------------------

def test_in_communicate_thru_with_nobody_there_times_out(line):
    assert line.command("423004") == bytes.fromhex("0000ff00ff00" "0000ff03fdd54301e700")


def test_a_classic_card_before_authentication(emulator, line):
    emulator.field.place(ClassicCard(UID4))
    line.command("4a0100")
    assert line.command("421a00") == answer_frame(0x42, "01")          # unknown command: silence
    line.command("4a0100")
    assert line.command("423004") == answer_frame(0x42, "02")          # a 4-bit NAK, CRC check on
    line.command("4a0100")
    line.command("08630300")                                           # CIU_RxMode: RxCRCEn off
    assert line.command("423004") == answer_frame(0x42, "0004")        # NAK 4h ...
    assert line.command("06633c") == answer_frame(0x06, "14")          # ... 4 valid bits (RxLastBits)
    assert line.command("423004") == answer_frame(0x42, "01")          # and the card halted
    line.command("4a0100")
    nonce = line.command("426004")                                     # AUTH part 1: nT in plain
    assert nonce[:len(frames.ACK_FRAME) + 8] == frames.ACK_FRAME + bytes.fromhex("0000ff07f9d54300")


def test_hlta_through_in_communicate_thru_halts_the_card(emulator, line):
    emulator.field.place(ClassicCard(UID4))
    line.command("4a0100")
    assert line.command("425000") == answer_frame(0x42, "01")          # HLTA is never answered
    assert line.command("40016004ffffffffffffc0ffee01") == answer_frame(0x40, "01")


def test_after_authentication_raw_read_and_write_go_through_the_ciphering_ciu(emulator, line):
    card = ClassicCard(UID4)
    emulator.field.place(card)
    line.command("4a0100")
    assert line.command("40016004ffffffffffffc0ffee01") == answer_frame(0x40, "00")
    assert line.command("066338") == answer_frame(0x06, "08")        # MFCrypto1On
    assert line.command("423004") == answer_frame(0x42, "00" + "00" * 16)
    line.command("08630300")
    assert line.command("42a005") == answer_frame(0x42, "000a")        # ACK Ah for each part
    assert line.command("42" + b"raw through 0x42".hex()) == answer_frame(0x42, "000a")
    assert card.dump_block(5) == b"raw through 0x42"
    assert line.command("423005") == answer_frame(0x42, "00" + with_crc_a(b"raw through 0x42").hex())


def test_with_tx_crc_off_only_a_frame_carrying_its_own_crc_reaches_the_card(emulator, line):
    emulator.field.place(ClassicCard(UID4))
    line.command("4a0100")
    line.command("40016004ffffffffffffc0ffee01")
    line.command("08630200")                                           # CIU_TxMode: TxCRCEn off
    assert line.command("423004") == answer_frame(0x42, "01")
    assert line.command("42" + with_crc_a(b"\x30\x04").hex()) == answer_frame(0x42, "00" + "00" * 16)


def test_a_trailer_read_raw_hides_key_a(emulator, line):
    emulator.field.place(ClassicCard(UID4))
    line.command("4a0100")
    line.command("40016007ffffffffffffc0ffee01")
    trailer = bytes(6) + mifare.TRANSPORT_ACCESS + b"\x69" + mifare.TRANSPORT_KEY
    assert line.command("423007") == answer_frame(0x42, "00" + trailer.hex())
