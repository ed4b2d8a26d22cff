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

Kinds WATER (a card session at a water dispenser) and WATER_GRANT (a phone's Bluetooth session)
keep the layout, with these differences:

    30      4     tap_counter       WATER: the card's counter after the starting tap;
                                    WATER_GRANT: the grant id (the session's source)
    20, 28        card_number, card_generation: 0 for WATER_GRANT (no card)
    24      4     account_id        WATER_GRANT: the account the grant named
    34      4     amount_fen        >= 0 (a session may draw nothing; it is still a record)
    42      4     ml                metered volume
    46      2     duration_s        valve open to closed, seconds (at most 65535)
    2       2     flags             bits 8-10: the end reason (water_grants.END_*)
    12      8     time_ms           when the session ended

Kind PAYCODE (a payment by the phone's 付款码, firmware/core/paycode.py) keeps it too:

    20      4     card_number       the phone credential id (no card was tapped)
    28      1     card_generation   0
    30      4     tap_counter       the code's counter
    42      4     time_step         the code's minute (with credential and counter: one use of one code)
    46      2     reserved (zero)

Kind ACTIVATION (an old card activated at an activation unit, firmware/core/activation.py) moves
what the old card held into the ledger. The server books it once per old serial, whichever unit's
record (or a second record of a resumed tap) arrives first: the purses are locked before the record
is written, so every record of one serial carries the same amounts.

    20      4     card_number       the NEW card number (the ticket's)
    24      4     account_id        the account the ticket names
    28      1     card_generation   the new identity's generation (1)
    29      1     category          the person's category (legacy_card.TEACHER / STUDENT / TEMPORARY):
                                    it decides which wallet the old balance goes to
    30      4     tap_counter       the OLD card serial (卡号, 1..99999999): the booking key
    34      4     amount_fen        the main purse's balance, >= 0 (an empty purse still activates)
    38      4     merchant_id       the main purse's transaction counter (u24; no merchant here)
    42      3     water_fen         the water purse's (小钱包) balance, u24 BE
    45      3     water_counter     the water purse's transaction counter, u24 BE
    2       2     flags             ACTIVATION_* only: a purse was read from one copy (torn)

Nothing the old card holds for the booking is left out: both balances and both counters (the
counters let finance match a card against the old system's export). Not carried: the purse's last
old terminal and the staff number (the export has them, keyed by the serial).
"""
import binascii
import struct

VERSION = 1
KIND_PURCHASE = 1
KIND_WATER = 2
KIND_WATER_GRANT = 3
KIND_PAYCODE = 4
KIND_ACTIVATION = 5
KINDS = (KIND_PURCHASE, KIND_WATER, KIND_WATER_GRANT, KIND_PAYCODE, KIND_ACTIVATION)
WATER_KINDS = (KIND_WATER, KIND_WATER_GRANT)

FLAG_OFFLINE = 0x0001          # decided while the terminal could not reach the server
FLAG_PIN_VERIFIED = 0x0002     # over the cardholder's limit, PIN checked online
FLAG_CONFIRMED_REPEAT = 0x0004  # same card, same amount within seconds, cashier confirmed

# ACTIVATION only: the purse was torn and read from its one trusted copy (legacy_card.read_purse's
# RECOVERED_* states); the lock repaired it, the amount is the one the old system's rule gives.
ACTIVATION_MAIN_RECOVERED = 0x0100
ACTIVATION_WATER_RECOVERED = 0x0200
ACTIVATION_FLAGS = ACTIVATION_MAIN_RECOVERED | ACTIVATION_WATER_RECOVERED
OLD_SERIAL_MAX = 99999999      # legacy_card.SERIAL_MAX: eight digits on the old card's face
OLD_COUNTER_MAX = 0xFFFFFF     # legacy_card.COUNTER_MAX: the old purse's u24 transaction counter

END_REASON_SHIFT = 8           # water kinds: flags bits 8-10 hold the end reason
END_REASON_MASK = 0x0700
MAX_DURATION_S = 0xFFFF

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


def encode_water(terminal_id, seq, time_ms, card_number, account_id, card_generation, category, tap_counter,
                 amount_fen, merchant_id, ml, duration_s, end_reason, grant=False, flags=0):
    """A water session record: a card's (tap_counter = its counter) or, with `grant`, a phone's
    (card 0, tap_counter = the grant id)."""
    if not 0 <= amount_fen <= MAX_AMOUNT_FEN:
        raise RecordError("amount_fen out of range: %d" % amount_fen)
    if seq < 1:
        raise RecordError("seq must start at 1")
    if not 0 <= ml <= 0xFFFFFFFF or not 0 < end_reason <= 7:
        raise RecordError("ml or end reason out of range")
    if grant and (card_number or card_generation):
        raise RecordError("a grant session names no card")
    flags = (flags & ~END_REASON_MASK) | (end_reason << END_REASON_SHIFT)
    reserved = struct.pack(">IH", ml, min(max(duration_s, 0), MAX_DURATION_S))
    body = struct.pack(_BODY, VERSION, KIND_WATER_GRANT if grant else KIND_WATER, flags, terminal_id, seq, time_ms,
                       card_number, account_id, card_generation, category, tap_counter, amount_fen, merchant_id,
                       reserved)
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def encode_paycode(terminal_id, seq, time_ms, credential_id, account_id, category, counter, amount_fen,
                   merchant_id, time_step, flags=0):
    """A sale paid with a phone's code: one use of (credential_id, time_step, counter)."""
    if not 0 < amount_fen <= MAX_AMOUNT_FEN:
        raise RecordError("amount_fen out of range: %d" % amount_fen)
    if seq < 1:
        raise RecordError("seq must start at 1")
    if not 0 < credential_id <= 0xFFFFFFFF or not 0 <= time_step <= 0xFFFFFFFF:
        raise RecordError("credential or time step out of range")
    body = struct.pack(_BODY, VERSION, KIND_PAYCODE, flags, terminal_id, seq, time_ms, credential_id, account_id, 0,
                       category, counter, amount_fen, merchant_id, struct.pack(">IH", time_step, 0))
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def encode_activation(terminal_id, seq, time_ms, card_number, account_id, card_generation, category, serial,
                      main_fen, main_counter, water_fen, water_counter, flags=0):
    """An old card's activation: what its two purses held when they were locked (module text)."""
    if seq < 1:
        raise RecordError("seq must start at 1")
    _check_activation(card_number, account_id, serial, main_fen, main_counter, water_fen, water_counter, flags)
    reserved = water_fen.to_bytes(3, "big") + water_counter.to_bytes(3, "big")
    body = struct.pack(_BODY, VERSION, KIND_ACTIVATION, flags, terminal_id, seq, time_ms, card_number, account_id,
                       card_generation, category, serial, main_fen, main_counter, reserved)
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def _check_activation(card_number, account_id, serial, main_fen, main_counter, water_fen, water_counter, flags):
    if not 0 < card_number <= 0xFFFFFFFF or not 0 < account_id <= 0xFFFFFFFF:
        raise RecordError("an activation names the new card and its account")
    if not 0 < serial <= OLD_SERIAL_MAX:
        raise RecordError("old serial out of range: %d" % serial)
    if not 0 <= main_fen <= MAX_AMOUNT_FEN or not 0 <= water_fen <= MAX_AMOUNT_FEN:
        raise RecordError("old purse balance out of range")
    if not 0 <= main_counter <= OLD_COUNTER_MAX or not 0 <= water_counter <= OLD_COUNTER_MAX:
        raise RecordError("old purse counter out of range")
    if flags & ~ACTIVATION_FLAGS:
        raise RecordError("unknown activation flags 0x%04x" % flags)


def activation_fields(data):
    """(serial, main_fen, main_counter, water_fen, water_counter) of an ACTIVATION record already
    checked by decode_tuple."""
    serial, main_fen, main_counter = struct.unpack(">III", data[30:42])
    return (serial, main_fen, main_counter, int.from_bytes(data[42:45], "big"),
            int.from_bytes(data[45:48], "big"))


def paycode_time_step(data):
    """The code's minute of a PAYCODE record already checked by decode_tuple."""
    return struct.unpack(">I", data[42:46])[0]


def water_fields(data):
    """(ml, duration_s, end_reason) of a water record already checked by decode_tuple."""
    ml, duration_s = struct.unpack(">IH", data[42:48])
    flags = struct.unpack(">H", data[2:4])[0]
    return ml, duration_s, (flags & END_REASON_MASK) >> END_REASON_SHIFT


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
    if values[1] == KIND_PURCHASE:
        if not 0 < values[11] <= MAX_AMOUNT_FEN:
            raise RecordError("amount_fen out of range")
        if values[13] != bytes(6):
            raise RecordError("reserved bytes not zero")
    elif values[1] == KIND_PAYCODE:
        if not 0 < values[11] <= MAX_AMOUNT_FEN:
            raise RecordError("amount_fen out of range")
        if values[6] == 0 or values[8] or values[13][4:] != bytes(2):
            raise RecordError("pay code record fields out of range")
    elif values[1] == KIND_ACTIVATION:
        reserved = values[13]
        _check_activation(values[6], values[7], values[10], values[11], values[12],
                          int.from_bytes(reserved[:3], "big"), int.from_bytes(reserved[3:], "big"), values[2])
    else:
        if not 0 <= values[11] <= MAX_AMOUNT_FEN:
            raise RecordError("amount_fen out of range")
        if not values[2] & END_REASON_MASK:
            raise RecordError("water record without an end reason")
        if values[1] == KIND_WATER_GRANT and (values[6] or values[8]):
            raise RecordError("a grant session names no card")
    return values[:13]


def decode(data):
    """Check and unpack a record into a dict keyed by FIELDS."""
    return dict(zip(FIELDS, decode_tuple(data)))
