"""Terminal records: the fixed binary layout a terminal journals and uploads.

A record is what a terminal commits before it shows success, and what the server stores at most
once per (terminal_id, seq). The layout is fixed-width big-endian (like the records real POS units
keep) and ends in a CRC-32 of everything before it, so a torn journal row or a corrupted upload is
detected, never booked. Authenticity comes from the HMAC over the whole sync request, not from here.

Layout v1, kind PURCHASE (52 bytes):

    offset  size  field
    0       1     version (=1)
    1       1     kind (1 = purchase)
    2       2     flags (FLAG_*)
    4       4     terminal_id
    8       4     seq               gap-free per terminal, from 1
    12      8     time_ms           terminal clock, ms since the Unix epoch (see clock rules)
    20      4     card_number
    24      4     account_id
    28      1     card_generation
    29      1     category          merchant category code (wallets.CATEGORY_*)
    30      4     tap_counter       card's tap counter after this tap
    34      4     amount_fen        > 0
    38      4     merchant_id
    42      6     reserved (zero)
    48      4     crc32 of bytes 0..47
"""
import binascii
import struct

VERSION = 1
KIND_PURCHASE = 1
KINDS = (KIND_PURCHASE,)

FLAG_OFFLINE = 0x0001          # decided while the terminal could not reach the server
FLAG_PIN_VERIFIED = 0x0002     # over the cardholder's limit, PIN checked online
FLAG_CONFIRMED_REPEAT = 0x0004  # same card, same amount within seconds, cashier confirmed

MAX_AMOUNT_FEN = 1000000       # one tap never exceeds 10,000 yuan; anything above is corrupt

_BODY = ">BBHIIQIIBBIII6s"
_BODY_SIZE = struct.calcsize(_BODY)
RECORD_SIZE = _BODY_SIZE + 4
assert RECORD_SIZE == 52

FIELDS = (
    "version", "kind", "flags", "terminal_id", "seq", "time_ms", "card_number", "account_id",
    "card_generation", "category", "tap_counter", "amount_fen", "merchant_id",
)


class RecordError(ValueError):
    """A record that must not be stored: wrong size, bad CRC, unknown version/kind, bad field."""


def encode_purchase(terminal_id, seq, time_ms, card_number, account_id, card_generation, category,
                    tap_counter, amount_fen, merchant_id, flags=0):
    if not 0 < amount_fen <= MAX_AMOUNT_FEN:
        raise RecordError("amount_fen out of range: %d" % amount_fen)
    if seq < 1:
        raise RecordError("seq must start at 1")
    body = struct.pack(_BODY, VERSION, KIND_PURCHASE, flags, terminal_id, seq, time_ms, card_number,
                       account_id, card_generation, category, tap_counter, amount_fen, merchant_id,
                       bytes(6))
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def decode_tuple(data):
    """Check and unpack a record; returns the FIELDS values as a tuple (fast path for the server)."""
    if len(data) != RECORD_SIZE:
        raise RecordError("record is %d bytes, expected %d" % (len(data), RECORD_SIZE))
    body = data[:_BODY_SIZE]
    (crc,) = struct.unpack(">I", data[_BODY_SIZE:])
    if binascii.crc32(body) & 0xFFFFFFFF != crc:
        raise RecordError("record CRC mismatch")
    values = struct.unpack(_BODY, body)
    if values[0] != VERSION:
        raise RecordError("unknown record version %d" % values[0])
    if values[1] not in KINDS:
        raise RecordError("unknown record kind %d" % values[1])
    if values[4] < 1:
        raise RecordError("record seq must be >= 1")
    if not 0 < values[11] <= MAX_AMOUNT_FEN:
        raise RecordError("amount_fen out of range")
    if values[13] != bytes(6):
        raise RecordError("reserved bytes not zero")
    return values[:13]


def decode(data):
    """Check and unpack a record into a dict keyed by FIELDS."""
    return dict(zip(FIELDS, decode_tuple(data)))
