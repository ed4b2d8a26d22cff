"""Bluetooth water (扫码用水): the bytes a phone, the server and a dispenser exchange, and the
dispenser's gate that lets a grant open the valve at most once. Sans-IO: no radio, no clock, no
randomness of its own (the shell passes times and fresh random bytes in).

The flow (DESIGN.md section 5):

    phone --read CHALLENGE-----------------> dispenser   fresh single-use challenge
    phone --POST /api/v1/water/grants------> server      {dispenser_id, challenge}: holds the money
    phone --write GRANT (+ start byte)-----> dispenser   verified offline with the dispenser's key
    phone <-notify PROGRESS----------------- dispenser   ml, fen while dispensing, then the end
    phone --read RECEIPT-------------------> dispenser   MAC'd by the dispenser
    phone --POST /api/v1/water/receipts----> server      settled once (also via the dispenser's batch)

Every message is fixed-width big-endian with a version byte; the grant and the receipt end in a
16-byte HMAC-SHA256 under the dispenser's water key (sam.WATER, derived per dispenser from the site
master key, so the server derives it again and a dispenser can forge nothing for another).

    challenge  (21)  version, dispenser_id u32, challenge 16
    grant      (53)  version, dispenser_id u32, grant_id u32, account_id u32, challenge 16,
                     cap_fen u32, valid_ms u32, mac 16
    receipt    (46)  version, dispenser_id u32, grant_id u32, seq u32, ml u32, fen u32, cap_fen u32,
                     duration_ms u32, end_reason u8, mac 16
    progress   (14)  version, state u8, ml u32, fen u32, cap_fen u32
    control    (1)   CONTROL_START or CONTROL_END

The grant's expiry is relative to the challenge (valid_ms after the dispenser issued it, by the
dispenser's own clock), so it holds without synchronised clocks; the server keeps its own absolute
expiry for the hold. A grant is accepted only for a live challenge of this dispenser's (each phone
connected reads its own), which is retired by the first grant written for it (good or bad) and when
it grows old: a replayed, forged, expired,
other-dispenser or over-cap grant never reaches the dispenser state machine.
"""
import struct
from collections import namedtuple

from firmware.core import crypto

VERSION = 1
CHALLENGE_BYTES = 16
MAC_BYTES = 16

# The GATT service and its characteristics (128-bit UUIDs of our own).
SERVICE_UUID = "6b7a0100-2f3e-4c5d-9a8b-79cc00000001"
CHALLENGE_UUID = "6b7a0101-2f3e-4c5d-9a8b-79cc00000001"   # read
GRANT_UUID = "6b7a0102-2f3e-4c5d-9a8b-79cc00000001"       # write (with response)
CONTROL_UUID = "6b7a0103-2f3e-4c5d-9a8b-79cc00000001"     # write: start / end, from the grant's link only
PROGRESS_UUID = "6b7a0104-2f3e-4c5d-9a8b-79cc00000001"    # notify (and read)
RECEIPT_UUID = "6b7a0105-2f3e-4c5d-9a8b-79cc00000001"     # read: the last session's receipt
# Advertisement: complete local name ADVERT_NAME_PREFIX + id, and manufacturer data
# MANUFACTURER_ID (0xFFFF: reserved for tests and development) + ADVERT_TAG + dispenser_id u32.
ADVERT_NAME_PREFIX = "YKT-W-"
MANUFACTURER_ID = 0xFFFF
ADVERT_TAG = b"YW"
STICKER_PREFIX = "ykt://water?"

CONTROL_START = 1
CONTROL_END = 2
MAX_WRITE_BYTES = 64     # anything longer written to a characteristic is garbage

# progress states; a state of 0x80 or above is a REFUSED_* code: boards whose stack cannot answer a
# write with an ATT error (MicroPython's aioble, firmware/esp32) report a refusal on PROGRESS instead
PROGRESS_READY = 0
PROGRESS_AUTHORISED = 1
PROGRESS_DISPENSING = 2
PROGRESS_ENDED = 3

# why a session ended (receipts, records, progress)
END_BUTTON = 1        # End pressed, on the machine or the phone, or the card tapped again
END_CAP = 2           # the cap was reached
END_TIMEOUT = 3       # the session ran for max_session_ms
END_LINK_LOST = 4     # the phone's Bluetooth link dropped
END_STALLED = 5       # valve open, no meter pulses: closed and alarmed
END_POWER_CUT = 6     # settled at power-up from the persisted volume
END_REASONS = (END_BUTTON, END_CAP, END_TIMEOUT, END_LINK_LOST, END_STALLED, END_POWER_CUT)

# refusals: ATT application error codes (0x80-0x9F) the dispenser answers a write with
REFUSED_MALFORMED = 0x80
REFUSED_FORGED = 0x81
REFUSED_OTHER_DISPENSER = 0x82
REFUSED_NO_CHALLENGE = 0x83      # replayed, or never issued, or already used
REFUSED_EXPIRED = 0x84
REFUSED_OVER_CAP = 0x85
REFUSED_BUSY = 0x86              # a session is running: a second Start
REFUSED_NOT_YOURS = 0x87         # a control write from a link that did not write the grant
REFUSED_OUT_OF_ORDER = 0x88      # the dispenser is in fault (meter stalled)
REFUSAL_TEXTS = {
    REFUSED_MALFORMED: ("数据格式错误", "malformed message"),
    REFUSED_FORGED: ("授权校验失败", "grant signature is not valid"),
    REFUSED_OTHER_DISPENSER: ("授权不属于本机", "grant is for another dispenser"),
    REFUSED_NO_CHALLENGE: ("授权已使用或无效，请重新开始", "grant already used or not for this challenge: start again"),
    REFUSED_EXPIRED: ("授权已过期，请重新开始", "grant expired: start again"),
    REFUSED_OVER_CAP: ("授权额度超出本机上限", "grant cap above this dispenser's limit"),
    REFUSED_BUSY: ("正在出水，请先结束", "already dispensing: press End first"),
    REFUSED_NOT_YOURS: ("只有开始用水的手机可以操作", "only the phone that started can do that"),
    REFUSED_OUT_OF_ORDER: ("设备故障，请联系管理员", "out of order: call staff"),
}

_CHALLENGE = ">BI16s"
_GRANT_BODY = ">BIII16sII"
_RECEIPT_BODY = ">BIIIIIIIB"
_PROGRESS = ">BBIII"
CHALLENGE_SIZE = struct.calcsize(_CHALLENGE)
GRANT_SIZE = struct.calcsize(_GRANT_BODY) + MAC_BYTES
RECEIPT_SIZE = struct.calcsize(_RECEIPT_BODY) + MAC_BYTES
PROGRESS_SIZE = struct.calcsize(_PROGRESS)
assert (CHALLENGE_SIZE, GRANT_SIZE, RECEIPT_SIZE, PROGRESS_SIZE) == (21, 53, 46, 14)
_U32 = 0xFFFFFFFF

Grant = namedtuple("Grant", ("dispenser_id", "grant_id", "account_id", "challenge", "cap_fen", "valid_ms"))
Receipt = namedtuple("Receipt", ("dispenser_id", "grant_id", "seq", "ml", "fen", "cap_fen", "duration_ms",
                                 "end_reason"))
Progress = namedtuple("Progress", ("state", "ml", "fen", "cap_fen"))


class WaterMessageError(ValueError):
    """Bytes that are not a well-formed message of the kind expected, or a bad field; `code` is the
    REFUSED_* a dispenser answers with."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


def _u32(name, value):
    if type(value) is not int or not 0 <= value <= _U32:
        raise WaterMessageError(REFUSED_MALFORMED, "%s out of range: %r" % (name, value))
    return value


def _mac(mac_fn, label, body):
    return mac_fn(label + body)[:MAC_BYTES]


def grant_mac_fn(water_key):
    """The MAC function a server or a test signs with, from the dispenser's 32-byte water key."""
    return lambda message: crypto.hmac_sha256(water_key, message)


# --- challenge ------------------------------------------------------------------------------------

def encode_challenge(dispenser_id, challenge):
    if len(challenge) != CHALLENGE_BYTES:
        raise WaterMessageError(REFUSED_MALFORMED, "challenge must be %d bytes" % CHALLENGE_BYTES)
    return struct.pack(_CHALLENGE, VERSION, _u32("dispenser_id", dispenser_id), bytes(challenge))


def decode_challenge(data):
    """(dispenser_id, challenge) from a CHALLENGE read."""
    data = bytes(data)
    if len(data) != CHALLENGE_SIZE or data[0] != VERSION:
        raise WaterMessageError(REFUSED_MALFORMED, "not a challenge (%d bytes)" % len(data))
    _version, dispenser_id, challenge = struct.unpack(_CHALLENGE, data)
    return dispenser_id, challenge


# --- grant ----------------------------------------------------------------------------------------

def encode_grant(mac_fn, grant):
    """The signed grant bytes (what the server hands the phone and the phone writes)."""
    if len(grant.challenge) != CHALLENGE_BYTES:
        raise WaterMessageError(REFUSED_MALFORMED, "challenge must be %d bytes" % CHALLENGE_BYTES)
    body = struct.pack(_GRANT_BODY, VERSION, _u32("dispenser_id", grant.dispenser_id),
                       _u32("grant_id", grant.grant_id), _u32("account_id", grant.account_id),
                       bytes(grant.challenge), _u32("cap_fen", grant.cap_fen), _u32("valid_ms", grant.valid_ms))
    return body + _mac(mac_fn, b"ykt-water-grant/", body)


def _verifies(mac_fns, label, body, mac):
    """The MAC is right under one of the keys (a function, or a tuple of them: see GrantGate)."""
    for mac_fn in mac_fns if isinstance(mac_fns, tuple) else (mac_fns,):
        if crypto.equal(_mac(mac_fn, label, body), mac):
            return True
    return False


def decode_grant(data, mac_fn=None):
    """A Grant from its bytes; with `mac_fn` (one, or a tuple that any may verify), also checks the MAC
    (WaterMessageError REFUSED_FORGED)."""
    data = bytes(data)
    if len(data) != GRANT_SIZE or data[0] != VERSION:
        raise WaterMessageError(REFUSED_MALFORMED, "not a grant (%d bytes)" % len(data))
    body, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    if mac_fn is not None and not _verifies(mac_fn, b"ykt-water-grant/", body, mac):
        raise WaterMessageError(REFUSED_FORGED, "grant MAC does not verify")
    values = struct.unpack(_GRANT_BODY, body)
    return Grant(*values[1:])


# --- receipt --------------------------------------------------------------------------------------

def encode_receipt(mac_fn, receipt):
    if receipt.end_reason not in END_REASONS:
        raise WaterMessageError(REFUSED_MALFORMED, "unknown end reason %r" % (receipt.end_reason,))
    if receipt.fen > receipt.cap_fen:
        raise WaterMessageError(REFUSED_MALFORMED, "fen above the cap")
    body = struct.pack(_RECEIPT_BODY, VERSION, _u32("dispenser_id", receipt.dispenser_id),
                       _u32("grant_id", receipt.grant_id), _u32("seq", receipt.seq), _u32("ml", receipt.ml),
                       _u32("fen", receipt.fen), _u32("cap_fen", receipt.cap_fen),
                       _u32("duration_ms", receipt.duration_ms), receipt.end_reason)
    return body + _mac(mac_fn, b"ykt-water-receipt/", body)


def decode_receipt(data, mac_fn=None):
    """A Receipt from its bytes; with `mac_fn` (one, or a tuple that any may verify), also checks the
    MAC (WaterMessageError REFUSED_FORGED)."""
    data = bytes(data)
    if len(data) != RECEIPT_SIZE or data[0] != VERSION:
        raise WaterMessageError(REFUSED_MALFORMED, "not a receipt (%d bytes)" % len(data))
    body, mac = data[:-MAC_BYTES], data[-MAC_BYTES:]
    if mac_fn is not None and not _verifies(mac_fn, b"ykt-water-receipt/", body, mac):
        raise WaterMessageError(REFUSED_FORGED, "receipt MAC does not verify")
    receipt = Receipt(*struct.unpack(_RECEIPT_BODY, body)[1:])
    if receipt.end_reason not in END_REASONS or receipt.fen > receipt.cap_fen or receipt.seq < 1:
        raise WaterMessageError(REFUSED_MALFORMED, "receipt fields out of range")
    return receipt


# --- progress, control, advertisement, sticker --------------------------------------------------

def encode_progress(state, ml, fen, cap_fen):
    return struct.pack(_PROGRESS, VERSION, state, _u32("ml", ml), _u32("fen", fen), _u32("cap_fen", cap_fen))


def decode_progress(data):
    data = bytes(data)
    if len(data) != PROGRESS_SIZE or data[0] != VERSION:
        raise WaterMessageError(REFUSED_MALFORMED, "not a progress note (%d bytes)" % len(data))
    return Progress(*struct.unpack(_PROGRESS, data)[1:])


def decode_control(data):
    data = bytes(data)
    if len(data) != 1 or data[0] not in (CONTROL_START, CONTROL_END):
        raise WaterMessageError(REFUSED_MALFORMED, "not a control byte")
    return data[0]


def advert_manufacturer_data(dispenser_id):
    """The manufacturer-specific AD payload after the company id: tag + dispenser id."""
    return ADVERT_TAG + struct.pack(">I", _u32("dispenser_id", dispenser_id))


def dispenser_from_manufacturer_data(company_id, data):
    """The dispenser id an advertisement names, or None when it is not one of ours."""
    data = bytes(data)
    if company_id != MANUFACTURER_ID or len(data) != 6 or data[:2] != ADVERT_TAG:
        return None
    return struct.unpack(">I", data[2:])[0]


def static_address(dispenser_id):
    """The dispenser's Bluetooth LE static random address, derived from its id (the two top bits set,
    as the Core spec asks of a static address), so a sticker printed from the id alone finds a Pi's
    dispenser. A board whose stack picks its own address (MicroPython, firmware/esp32) is found by
    the id it advertises instead (the phone scans for it when the sticker's address is not heard)."""
    value = 0xC07A00000000 | _u32("dispenser_id", dispenser_id)
    raw = value.to_bytes(6, "big")
    return ":".join("%02X" % b for b in raw)


def sticker_text(dispenser_id, address):
    """What the QR sticker on a dispenser encodes: its id and its Bluetooth address."""
    _u32("dispenser_id", dispenser_id)
    return "%sd=%d&a=%s" % (STICKER_PREFIX, dispenser_id, address.upper())


def parse_sticker(text):
    """(dispenser_id, address) from a sticker's text; WaterMessageError when it is not one."""
    if not isinstance(text, str) or not text.startswith(STICKER_PREFIX) or len(text) > 100:
        raise WaterMessageError(REFUSED_MALFORMED, "不是开水机二维码 / not a water dispenser code")
    fields = {}
    for part in text[len(STICKER_PREFIX):].split("&"):
        name, _, value = part.partition("=")
        fields[name] = value
    dispenser_id, address = fields.get("d", ""), fields.get("a", "")
    hexdigits = "0123456789ABCDEF"
    parts = address.split(":")
    if (not dispenser_id.isdigit() or len(dispenser_id) > 10 or len(parts) != 6
            or any(len(p) != 2 or p[0] not in hexdigits or p[1] not in hexdigits for p in parts)):
        raise WaterMessageError(REFUSED_MALFORMED, "不是开水机二维码 / not a water dispenser code")
    return _u32("dispenser_id", int(dispenser_id)), address


# --- the dispenser's gate -------------------------------------------------------------------------

MAX_LIVE_CHALLENGES = 4     # phones connected at once, each with its own challenge; the oldest goes first


class GrantGate:
    """Live challenges (at most MAX_LIVE_CHALLENGES, one per phone reading one); a grant is accepted
    once, for its own challenge, while that is fresh.

    `mac_fn` is the dispenser's key holder (sam.SoftwareSAM.water_mac); `lifetime_ms` bounds how long
    a challenge waits for its grant whatever the grant says; `max_cap_fen` is the dispenser's own
    per-session ceiling (a grant above it is refused, not trimmed: the server never issues one).
    A grant written for a challenge uses it up, accepted or refused, so each challenge gets one try.
    The `now_ms` it is given measures a challenge's age: a clock that only counts forward (the ESP32's
    ticks, the Pi's monotonic clock), never one a sync may step back.
    """

    def __init__(self, dispenser_id, mac_fn, max_cap_fen, lifetime_ms):
        assert lifetime_ms > 0 and max_cap_fen > 0
        self.dispenser_id = dispenser_id
        self._mac_fn = mac_fn
        self._previous_mac_fn = None
        self.max_cap_fen = max_cap_fen
        self.lifetime_ms = lifetime_ms
        self._live = []            # [(challenge, issued_ms)], oldest first
        self.refusals = 0

    def previous_key(self, mac_fn):
        """After a key rotation (sync_server/key_rotation.py), for a while: grants the server made
        under the old water key, before it saw this dispenser use the new one, still open the valve.
        None ends that."""
        self._previous_mac_fn = mac_fn

    def challenge(self, random_bytes, now_ms):
        """Issue a fresh challenge (the oldest live one retires when there are too many); returns the
        CHALLENGE read value."""
        if len(random_bytes) != CHALLENGE_BYTES:
            raise WaterMessageError(REFUSED_MALFORMED, "need %d random bytes" % CHALLENGE_BYTES)
        self._live = [(c, t) for c, t in self._live if now_ms - t < self.lifetime_ms][-(MAX_LIVE_CHALLENGES - 1):]
        self._live.append((bytes(random_bytes), now_ms))
        return encode_challenge(self.dispenser_id, bytes(random_bytes))

    def live(self, now_ms):
        return any(now_ms - issued_ms < self.lifetime_ms for _c, issued_ms in self._live)

    def _take(self, challenge):
        """The issue time of `challenge` if it is live (it is used up now), else None."""
        for index, (live, issued_ms) in enumerate(self._live):
            if crypto.equal(live, challenge):
                del self._live[index]
                return issued_ms
        return None

    def accept(self, data, now_ms):
        """The Grant a written value carries, when it may open the valve; else WaterMessageError with
        the refusal code. The grant's challenge is used up either way."""
        try:
            if len(data) > MAX_WRITE_BYTES:
                raise WaterMessageError(REFUSED_MALFORMED, "write too long")
            grant = decode_grant(data)
            if grant.dispenser_id != self.dispenser_id:
                raise WaterMessageError(REFUSED_OTHER_DISPENSER, "grant names dispenser %d" % grant.dispenser_id)
            issued_ms = self._take(grant.challenge)
            keys = self._mac_fn if self._previous_mac_fn is None else (self._mac_fn, self._previous_mac_fn)
            decode_grant(data, keys)
            if issued_ms is None:
                raise WaterMessageError(REFUSED_NO_CHALLENGE, "grant is not for a live challenge")
            age_ms = now_ms - issued_ms
            if age_ms < 0 or age_ms >= min(grant.valid_ms, self.lifetime_ms):
                raise WaterMessageError(REFUSED_EXPIRED, "grant expired")
            if not 0 < grant.cap_fen <= self.max_cap_fen:
                raise WaterMessageError(REFUSED_OVER_CAP, "grant cap %d fen" % grant.cap_fen)
        except WaterMessageError:
            self.refusals += 1
            raise
        return grant
