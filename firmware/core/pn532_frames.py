"""PN532 host frames and the reader commands ykt uses: a sans-IO codec shared by the serial driver
(reader_drivers/pn532.py) and the emulator (simulators/pn532_emulator.py).

Frames follow the PN532 User Manual UM0701-02, section 6.2.1: normal information frame (6.2.1.1),
extended information frame (6.2.1.2), ACK (6.2.1.3), NACK (6.2.1.4) and the syntax error frame
(6.2.1.5); preamble and postamble may be any number of 0x00 bytes (6.2.1.6). Commands and their
parameters are from chapter 7 (7.2 miscellaneous, 7.3 RF communication, 7.3.5 InListPassiveTarget,
7.3.8 InDataExchange, 7.3.11 InRelease); the status byte codes from the error table of section 7.1.

`FrameParser` takes bytes in whatever chunks the line delivers, skips garbage and preambles, and
returns one frame at a time or raises `FrameError` for a frame whose length or data checksum is
wrong (after discarding its start code, so the caller can carry on and resynchronise).

Limits: no I/O, no clock, no threads (MicroPython-safe). Only what a MIFARE Classic reader needs;
target mode, FeliCa, DEP and type B have no builders here.
"""
import struct
from collections import namedtuple

# --- frames (UM0701-02 6.2.1) -----------------------------------------------------------------

TFI_HOST = 0xD4          # frame from the host controller to the PN532
TFI_CHIP = 0xD5          # frame from the PN532 to the host controller
TFI_ERROR = 0x7F         # the syntax error frame's only data byte (6.2.1.5)

START_CODE = b"\x00\xff"
ACK_FRAME = b"\x00\x00\xff\x00\xff\x00"
NACK_FRAME = b"\x00\x00\xff\xff\x00\x00"
ERROR_FRAME = b"\x00\x00\xff\x01\xff\x7f\x81\x00"

# The firmware's largest frame holds 264 data bytes plus the TFI (6.2.1.2).
MAX_FRAME_DATA_BYTES = 265
# A normal frame's LEN may be 255, but LEN=FF with a damaged LCS reads as a NACK (FF 00) or as the
# extended marker (FF FF); the encoder therefore switches to extended frames from 255 bytes on.
_MAX_NORMAL_ENCODED_BYTES = 254
# Parser buffer bound: a few largest frames; older bytes are garbage by then.
MAX_BUFFER_BYTES = 4 * (MAX_FRAME_DATA_BYTES + 10)

ACK = "ack"
NACK = "nack"
ERROR = "error"
INFO = "info"

Frame = namedtuple("Frame", ("kind", "tfi", "data"))
ACK_KIND = Frame(ACK, None, b"")
NACK_KIND = Frame(NACK, None, b"")
ERROR_KIND = Frame(ERROR, TFI_ERROR, b"")


class FrameError(Exception):
    """A frame on the line whose length or data checksum is wrong."""


class CommandError(Exception):
    """A response that does not answer the command sent (wrong TFI, code or shape)."""


def checksum(data):
    """The byte that makes the low byte of sum(data) + checksum zero (LCS and DCS, 6.2.1.1)."""
    return (-sum(data)) & 0xFF


def encode_frame(tfi, data):
    """One information frame: preamble, start code, LEN/LCS (or extended LENM/LENL/LCS), TFI, data,
    DCS, postamble."""
    body = bytes((tfi,)) + bytes(data)
    length = len(body)
    assert 1 <= length <= MAX_FRAME_DATA_BYTES, "frame data must be 1..%d bytes" % MAX_FRAME_DATA_BYTES
    if length <= _MAX_NORMAL_ENCODED_BYTES:
        head = b"\x00\x00\xff" + bytes((length, checksum((length,))))
    else:
        length_bytes = struct.pack(">H", length)
        head = b"\x00\x00\xff\xff\xff" + length_bytes + bytes((checksum(length_bytes),))
    return head + body + bytes((checksum(body), 0))


def encode_command(payload):
    """A host -> PN532 frame for payload = command code + parameters."""
    return encode_frame(TFI_HOST, payload)


def encode_response(command_code, params=b""):
    """A PN532 -> host frame answering command_code (the response code is command code + 1)."""
    return encode_frame(TFI_CHIP, bytes((command_code + 1,)) + bytes(params))


class FrameParser:
    """Incremental frame parser: feed() any chunks, then call next_frame() until it returns None."""

    def __init__(self, max_buffer_bytes=MAX_BUFFER_BYTES):
        assert max_buffer_bytes >= MAX_FRAME_DATA_BYTES + 10
        self._max_buffer_bytes = max_buffer_bytes
        self._buffer = b""

    def feed(self, chunk):
        self._buffer = self._buffer + bytes(chunk)
        if len(self._buffer) > self._max_buffer_bytes:
            # Keep the newest bytes: whatever frame they begin is still complete-able.
            self._buffer = self._buffer[-self._max_buffer_bytes:]

    def reset(self):
        self._buffer = b""

    @property
    def pending_bytes(self):
        """Bytes held from a start code on: a frame begun but not complete (0 when only garbage,
        postambles or preambles are left)."""
        start = self._buffer.find(START_CODE)
        return 0 if start < 0 else len(self._buffer) - start

    def _skip_start_code(self, start):
        self._buffer = self._buffer[start + 2:]

    def next_frame(self):
        """The next complete frame, None when more bytes are needed; FrameError for a damaged one."""
        buffer = self._buffer
        start = buffer.find(START_CODE)
        if start < 0:
            # Garbage and preamble: keep a trailing 0x00, it may be the first half of a start code.
            self._buffer = buffer[-1:] if buffer[-1:] == b"\x00" else b""
            return None
        if len(buffer) - start < 4:
            self._buffer = buffer[start:]
            return None
        length, length_checksum = buffer[start + 2], buffer[start + 3]
        # The postamble stays in the buffer: the next scan skips it like any preamble byte.
        if length == 0x00 and length_checksum == 0xFF:
            self._buffer = buffer[start + 4:]
            return ACK_KIND
        if length == 0xFF and length_checksum == 0x00:
            self._buffer = buffer[start + 4:]
            return NACK_KIND
        if length == 0xFF and length_checksum == 0xFF:
            if len(buffer) - start < 7:
                self._buffer = buffer[start:]
                return None
            if (buffer[start + 4] + buffer[start + 5] + buffer[start + 6]) & 0xFF:
                self._skip_start_code(start)
                raise FrameError("扩展帧长度校验错误 / extended frame length checksum (LCS) is wrong")
            length = buffer[start + 4] * 256 + buffer[start + 5]
            header = 7
        else:
            if (length + length_checksum) & 0xFF:
                self._skip_start_code(start)
                raise FrameError("帧长度校验错误 / frame length checksum (LCS) is wrong")
            header = 4
        if not 1 <= length <= MAX_FRAME_DATA_BYTES:
            self._skip_start_code(start)
            raise FrameError("帧长度非法 / frame length %d is outside 1..%d" % (length, MAX_FRAME_DATA_BYTES))
        end = start + header + length
        if len(buffer) < end + 1:
            self._buffer = buffer[start:]
            return None
        body = buffer[start + header:end]
        if (sum(body) + buffer[end]) & 0xFF:
            self._skip_start_code(start)
            raise FrameError("帧数据校验错误 / frame data checksum (DCS) is wrong")
        self._buffer = buffer[end + 1:]
        if length == 1 and body[0] == TFI_ERROR:
            return ERROR_KIND
        return Frame(INFO, body[0], bytes(body[1:]))


def parse_frames(data):
    """Every frame in a byte string (a convenience for tests and logs); FrameError on the first
    damaged one."""
    parser = FrameParser(max(MAX_BUFFER_BYTES, len(data) + 1))
    parser.feed(data)
    frames = []
    while True:
        frame = parser.next_frame()
        if frame is None:
            return frames
        frames.append(frame)


def response_params(frame, command_code):
    """The parameters of a response frame to command_code; CommandError when it answers something
    else."""
    if frame.kind == ERROR:
        raise CommandError("读卡器报告命令语法错误 / the PN532 answered with a syntax error frame")
    if frame.kind != INFO or frame.tfi != TFI_CHIP or not frame.data or frame.data[0] != command_code + 1:
        raise CommandError("应答与命令不符 / frame %r does not answer command 0x%02X" % (frame, command_code))
    return frame.data[1:]


# --- commands (UM0701-02 chapter 7) -----------------------------------------------------------

CMD_DIAGNOSE = 0x00
CMD_GET_FIRMWARE_VERSION = 0x02
CMD_GET_GENERAL_STATUS = 0x04
CMD_READ_REGISTER = 0x06
CMD_WRITE_REGISTER = 0x08
CMD_SET_SERIAL_BAUD_RATE = 0x10
CMD_SET_PARAMETERS = 0x12
CMD_SAM_CONFIGURATION = 0x14
CMD_POWER_DOWN = 0x16
CMD_RF_CONFIGURATION = 0x32
CMD_IN_DATA_EXCHANGE = 0x40
CMD_IN_COMMUNICATE_THRU = 0x42
CMD_IN_DESELECT = 0x44
CMD_IN_LIST_PASSIVE_TARGET = 0x4A
CMD_IN_RELEASE = 0x52
CMD_IN_AUTO_POLL = 0x60

SAM_MODE_NORMAL = 0x01       # 7.2.10: no SAM, the PN532 alone
BRTY_106A = 0x00             # 7.3.5: 106 kbps ISO/IEC 14443-3 type A

# RFConfiguration items (7.3.1)
RF_ITEM_FIELD = 0x01         # bit 0 RF on, bit 1 auto RF collision avoidance
RF_ITEM_TIMINGS = 0x02       # RFU, ATR_RES timeout, non-DEP (MIFARE) timeout
RF_ITEM_MAX_RETRY_COM = 0x04
RF_ITEM_MAX_RETRIES = 0x05   # MxRtyATR, MxRtyPSL, MxRtyPassiveActivation (0xFF: for ever)
RETRY_FOREVER = 0xFF

SERIAL_BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1288000)  # 7.2.8

# MIFARE Classic commands carried by InDataExchange (7.3.8, and the MIFARE Classic EV1 datasheet
# command set).
MIFARE_AUTH_A = 0x60
MIFARE_AUTH_B = 0x61
MIFARE_READ = 0x30
MIFARE_WRITE = 0xA0
MIFARE_DECREMENT = 0xC0
MIFARE_INCREMENT = 0xC1
MIFARE_RESTORE = 0xC2
MIFARE_TRANSFER = 0xB0

_CASCADE_TAG = 0x88


def timeout_index_us(index):
    """RFConfiguration item 2 timeout index -> microseconds (7.3.1: 100 us * 2^(n-1); 0: none)."""
    assert 0 <= index <= 0x10
    return 0 if index == 0 else 100 << (index - 1)


def build_get_firmware_version():
    return bytes((CMD_GET_FIRMWARE_VERSION,))


def parse_firmware_version(params):
    """-> (ic, version, revision, support); a PN532 v1.6 answers (0x32, 1, 6, 7)."""
    if len(params) != 4:
        raise CommandError("固件版本应答长度错误 / GetFirmwareVersion answer is %d bytes, not 4" % len(params))
    return params[0], params[1], params[2], params[3]


def build_sam_configuration(mode=SAM_MODE_NORMAL, timeout_50ms=0, use_irq=False):
    assert mode in (1, 2, 3, 4) and 0 <= timeout_50ms <= 0xFF
    return bytes((CMD_SAM_CONFIGURATION, mode, timeout_50ms, 1 if use_irq else 0))


def build_rf_configuration(item, data):
    return bytes((CMD_RF_CONFIGURATION, item)) + bytes(data)


def build_rf_field(on, auto_collision_avoidance=False):
    return build_rf_configuration(RF_ITEM_FIELD, bytes(((2 if auto_collision_avoidance else 0) | (1 if on else 0),)))


def build_rf_timings(atr_res_index, non_dep_index):
    """Item 2: how long the PN532 waits for a card's answer (non_dep_index covers MIFARE)."""
    return build_rf_configuration(RF_ITEM_TIMINGS, bytes((0x00, atr_res_index, non_dep_index)))


def build_rf_max_retries(atr, psl, passive_activation):
    return build_rf_configuration(RF_ITEM_MAX_RETRIES, bytes((atr, psl, passive_activation)))


def build_set_serial_baud_rate(baud):
    return bytes((CMD_SET_SERIAL_BAUD_RATE, SERIAL_BAUD_RATES.index(baud)))


def cascade_uid(uid):
    """InListPassiveTarget initiator data for one UID (7.3.5): cascade tags before each 3-byte part
    of a 7- or 10-byte UID, as the anticollision loop sends them (ISO/IEC 14443-3 6.5.4)."""
    uid = bytes(uid)
    assert len(uid) in (4, 7, 10)
    if len(uid) == 4:
        return uid
    if len(uid) == 7:
        return bytes((_CASCADE_TAG,)) + uid
    return bytes((_CASCADE_TAG,)) + uid[0:3] + bytes((_CASCADE_TAG,)) + uid[3:]


def uncascade_uid(data):
    """The UID named by InListPassiveTarget initiator data (inverse of cascade_uid)."""
    data = bytes(data)
    if len(data) == 4:
        return data
    if len(data) == 8 and data[0] == _CASCADE_TAG:
        return data[1:]
    if len(data) == 12 and data[0] == _CASCADE_TAG and data[4] == _CASCADE_TAG:
        return data[1:4] + data[5:]
    raise CommandError("级联UID格式错误 / initiator data is not a cascaded UID")


def build_in_list_passive_target(max_targets=1, uid=None):
    """Search for (and select) up to max_targets type A cards at 106 kbps, one given UID if any."""
    assert max_targets in (1, 2)
    initiator_data = b"" if uid is None else cascade_uid(uid)
    return bytes((CMD_IN_LIST_PASSIVE_TARGET, max_targets, BRTY_106A)) + initiator_data


TypeATarget = namedtuple("TypeATarget", ("number", "atqa", "sak", "uid", "ats"))


def parse_in_list_passive_target(params):
    """-> list of TypeATarget (7.3.5, 106 kbps type A target data: Tg, SENS_RES (ATQA, first byte
    most significant), SEL_RES (SAK), NFCIDLength, NFCID1, ATS when the card has one)."""
    if not params:
        raise CommandError("寻卡应答为空 / empty InListPassiveTarget answer")
    count = params[0]
    if count > 2:
        raise CommandError("寻卡应答卡数非法 / InListPassiveTarget reports %d targets" % count)
    targets = []
    position = 1
    for _index in range(count):
        if len(params) < position + 5:
            raise CommandError("寻卡应答过短 / InListPassiveTarget answer is truncated")
        number = params[position]
        atqa = params[position + 1] * 256 + params[position + 2]
        sak = params[position + 3]
        uid_length = params[position + 4]
        uid_end = position + 5 + uid_length
        if uid_length not in (4, 7, 10) or len(params) < uid_end:
            raise CommandError("寻卡应答UID长度非法 / InListPassiveTarget UID length %d" % uid_length)
        uid = bytes(params[position + 5:uid_end])
        ats = b""
        position = uid_end
        if sak & 0x20 and len(params) > position:   # ISO/IEC 14443-4 compliant: the ATS follows
            ats_length = params[position]
            ats = bytes(params[position:position + ats_length])
            position += ats_length
        targets.append(TypeATarget(number, atqa, sak, uid, ats))
    return targets


def build_in_data_exchange(target_number, data):
    assert 1 <= target_number <= 2
    return bytes((CMD_IN_DATA_EXCHANGE, target_number)) + bytes(data)


def parse_status(params):
    """-> (error code, data) of a status-carrying answer: InDataExchange, InRelease, PowerDown.
    The status byte's bit 6 is the more-information flag and bit 7 NAD present (7.3.8); the low six
    bits are the error code (7.1)."""
    if not params:
        raise CommandError("应答缺少状态字节 / answer has no status byte")
    return params[0] & 0x3F, bytes(params[1:])


def build_in_release(target_number=0):
    """Release one target (1 or 2) or all of them (0), 7.3.11; the PN532 sends HLTA to a type A card."""
    assert 0 <= target_number <= 2
    return bytes((CMD_IN_RELEASE, target_number))


def authentication_uid(uid):
    """The four UID bytes MIFARE Classic authentication binds to: the whole 4-byte NUID, or the last
    four bytes of a 7-byte UID (NXP AN10927; libnfc's nfc-mfclassic does the same)."""
    uid = bytes(uid)
    assert len(uid) in (4, 7)
    return uid[-4:]


def mifare_authenticate(block, key_type, key, uid):
    assert key_type in ("A", "B") and len(key) == 6 and 0 <= block <= 0xFF
    code = MIFARE_AUTH_A if key_type == "A" else MIFARE_AUTH_B
    return bytes((code, block)) + bytes(key) + authentication_uid(uid)


def mifare_read(block):
    assert 0 <= block <= 0xFF
    return bytes((MIFARE_READ, block))


def mifare_write(block, data):
    assert 0 <= block <= 0xFF and len(data) == 16
    return bytes((MIFARE_WRITE, block)) + bytes(data)


def _value_operation(code, block, value):
    assert 0 <= block <= 0xFF and 0 <= value <= 0x7FFFFFFF
    return bytes((code, block)) + struct.pack("<i", value)   # the card takes the operand LSB first


def mifare_increment(block, delta):
    return _value_operation(MIFARE_INCREMENT, block, delta)


def mifare_decrement(block, delta):
    return _value_operation(MIFARE_DECREMENT, block, delta)


def mifare_restore(block):
    # RESTORE part 2 carries four dummy bytes, like increment and decrement.
    return _value_operation(MIFARE_RESTORE, block, 0)


def mifare_transfer(block):
    assert 0 <= block <= 0xFF
    return bytes((MIFARE_TRANSFER, block))


# --- status byte error codes (UM0701-02 section 7.1, error code table) ----------------------------

STATUS_OK = 0x00
STATUS_TIMEOUT = 0x01
STATUS_CRC = 0x02
STATUS_PARITY = 0x03
STATUS_MIFARE_FRAMING = 0x05
STATUS_INVALID_PARAMETER = 0x10
STATUS_FORMAT = 0x13
STATUS_MIFARE_AUTHENTICATION = 0x14
STATUS_NOT_ACCEPTABLE = 0x27
STATUS_RELEASED = 0x29
STATUS_CARD_EXCHANGED = 0x2A
STATUS_CARD_DISAPPEARED = 0x2B

STATUS_TEXT = {
    0x01: "time out, the target has not answered",
    0x02: "CRC error detected by the CIU",
    0x03: "parity error detected by the CIU",
    0x04: "erroneous bit count during anticollision",
    0x05: "framing error during a MIFARE operation",
    0x06: "abnormal bit collision at 106 kbps",
    0x07: "communication buffer too small",
    0x09: "RF buffer overflow in the CIU",
    0x0A: "RF field not switched on in time",
    0x0B: "RF protocol error",
    0x0D: "temperature error: antenna drivers switched off",
    0x0E: "internal buffer overflow",
    0x10: "invalid parameter",
    0x12: "command not supported by the initiator (DEP)",
    0x13: "data format does not match the specification",
    0x14: "MIFARE authentication error",
    0x23: "ISO/IEC 14443-3 UID check byte is wrong",
    0x25: "invalid device state for this command",
    0x26: "operation not allowed in this configuration",
    0x27: "command not acceptable in the current context",
    0x29: "target released by the initiator",
    0x2A: "the card was exchanged (type B)",
    0x2B: "the activated card has disappeared",
    0x2C: "NFCID3 mismatch in DEP",
    0x2D: "over-current",
    0x2E: "NAD missing in DEP frame",
}


def status_text(code):
    return STATUS_TEXT.get(code, "unknown error 0x%02X" % code)
