"""MIFARE Classic 1K data formats: sector trailers, access bits, value blocks.

Follows the MIFARE Classic EV1 1K datasheet (NXP MF1S50yyX/V1), section 8.6 (value blocks),
8.7 (sector trailer) and tables 7-9 (access conditions). Pure functions over bytes; the card model of
the sim: reader (reader_drivers/sim/) enforces them and the terminal uses them to build and read cards.
"""
import struct

SECTORS = 16
BLOCKS_PER_SECTOR = 4
BLOCKS = SECTORS * BLOCKS_PER_SECTOR
BLOCK_SIZE = 16
KEY_SIZE = 6
TRANSPORT_KEY = b"\xff" * 6          # factory default key A and B (datasheet 8.7.1)
TRANSPORT_ACCESS = b"\xff\x07\x80"    # factory access bits: data 000, trailer 001
VALUE_MIN = -0x80000000
VALUE_MAX = 0x7FFFFFFF

# Operations a data block's access condition may permit (datasheet table 8).
READ = "read"
WRITE = "write"
INCREMENT = "increment"
DECREMENT = "decrement"  # also covers transfer and restore
A = "A"
B = "B"
AB = "AB"
NEVER = ""

# (C1, C2, C3) -> which keys may do each operation on a data block. Table 8.
DATA_CONDITIONS = {
    (0, 0, 0): {READ: AB, WRITE: AB, INCREMENT: AB, DECREMENT: AB},
    (0, 1, 0): {READ: AB, WRITE: NEVER, INCREMENT: NEVER, DECREMENT: NEVER},
    (1, 0, 0): {READ: AB, WRITE: B, INCREMENT: NEVER, DECREMENT: NEVER},
    (1, 1, 0): {READ: AB, WRITE: B, INCREMENT: B, DECREMENT: AB},
    (0, 0, 1): {READ: AB, WRITE: NEVER, INCREMENT: NEVER, DECREMENT: AB},
    (0, 1, 1): {READ: B, WRITE: B, INCREMENT: NEVER, DECREMENT: NEVER},
    (1, 0, 1): {READ: B, WRITE: NEVER, INCREMENT: NEVER, DECREMENT: NEVER},
    (1, 1, 1): {READ: NEVER, WRITE: NEVER, INCREMENT: NEVER, DECREMENT: NEVER},
}

KEY_A_WRITE = "key_a_write"
ACCESS_READ = "access_read"
ACCESS_WRITE = "access_write"
KEY_B_READ = "key_b_read"
KEY_B_WRITE = "key_b_write"

# (C1, C2, C3) -> trailer permissions. Table 7. Key A is never readable.
TRAILER_CONDITIONS = {
    (0, 0, 0): {KEY_A_WRITE: A, ACCESS_READ: A, ACCESS_WRITE: NEVER, KEY_B_READ: A, KEY_B_WRITE: A},
    (0, 1, 0): {KEY_A_WRITE: NEVER, ACCESS_READ: A, ACCESS_WRITE: NEVER, KEY_B_READ: A, KEY_B_WRITE: NEVER},
    (1, 0, 0): {KEY_A_WRITE: B, ACCESS_READ: AB, ACCESS_WRITE: NEVER, KEY_B_READ: NEVER, KEY_B_WRITE: B},
    (1, 1, 0): {KEY_A_WRITE: NEVER, ACCESS_READ: AB, ACCESS_WRITE: NEVER, KEY_B_READ: NEVER, KEY_B_WRITE: NEVER},
    (0, 0, 1): {KEY_A_WRITE: A, ACCESS_READ: A, ACCESS_WRITE: A, KEY_B_READ: A, KEY_B_WRITE: A},
    (0, 1, 1): {KEY_A_WRITE: B, ACCESS_READ: AB, ACCESS_WRITE: B, KEY_B_READ: NEVER, KEY_B_WRITE: B},
    (1, 0, 1): {KEY_A_WRITE: NEVER, ACCESS_READ: AB, ACCESS_WRITE: B, KEY_B_READ: NEVER, KEY_B_WRITE: NEVER},
    (1, 1, 1): {KEY_A_WRITE: NEVER, ACCESS_READ: AB, ACCESS_WRITE: NEVER, KEY_B_READ: NEVER, KEY_B_WRITE: NEVER},
}


class FormatError(ValueError):
    """Bytes that are not a valid trailer / access-bits / value block."""


def sector_of(block):
    return block // BLOCKS_PER_SECTOR


def trailer_block(sector):
    return sector * BLOCKS_PER_SECTOR + BLOCKS_PER_SECTOR - 1


def is_trailer(block):
    return block % BLOCKS_PER_SECTOR == BLOCKS_PER_SECTOR - 1


def encode_access_bits(conditions):
    """conditions: four (C1, C2, C3) tuples for blocks 0, 1, 2 and the trailer -> 3 bytes.

    Bytes 6..8 of the trailer (datasheet figure 10): each bit is stored once inverted, once plain.
    """
    assert len(conditions) == 4
    c1 = c2 = c3 = 0
    for index, (bit1, bit2, bit3) in enumerate(conditions):
        c1 |= bit1 << index
        c2 |= bit2 << index
        c3 |= bit3 << index
    byte6 = ((~c2 & 0xF) << 4) | (~c1 & 0xF)
    byte7 = (c1 << 4) | (~c3 & 0xF)
    byte8 = (c3 << 4) | c2
    return bytes((byte6, byte7, byte8))


def decode_access_bits(access):
    """3 bytes -> four (C1, C2, C3) tuples; FormatError if the inverted copies disagree."""
    if len(access) < 3:
        raise FormatError("access bits need 3 bytes")
    byte6, byte7, byte8 = access[0], access[1], access[2]
    c1, c2, c3 = byte7 >> 4, byte8 & 0xF, byte8 >> 4
    if (~byte6 & 0xF) != c1 or (~byte6 >> 4 & 0xF) != c2 or (~byte7 & 0xF) != c3:
        raise FormatError("access bits inconsistent (inverted copy mismatch)")
    return tuple(((c1 >> i) & 1, (c2 >> i) & 1, (c3 >> i) & 1) for i in range(4))


def encode_trailer(key_a, conditions, key_b, user_byte=0x69):
    assert len(key_a) == KEY_SIZE and len(key_b) == KEY_SIZE
    return bytes(key_a) + encode_access_bits(conditions) + bytes((user_byte,)) + bytes(key_b)


def encode_value_block(value, address):
    """Value block (datasheet 8.6.2): value, ~value, value (4 bytes LE each), addr, ~addr, addr, ~addr."""
    if not VALUE_MIN <= value <= VALUE_MAX:
        raise FormatError("value out of 32-bit signed range")
    raw = struct.pack("<i", value)
    inverted = bytes(b ^ 0xFF for b in raw)
    address &= 0xFF
    return raw + inverted + raw + bytes((address, address ^ 0xFF, address, address ^ 0xFF))


def decode_value_block(data):
    """16 bytes -> (value, address); FormatError if the redundant copies disagree."""
    if len(data) != BLOCK_SIZE:
        raise FormatError("value block must be 16 bytes")
    raw, inverted, copy = data[0:4], data[4:8], data[8:12]
    if raw != copy or bytes(b ^ 0xFF for b in raw) != inverted:
        raise FormatError("not a value block (value copies disagree)")
    address = data[12]
    if data[13] != address ^ 0xFF or data[14] != address or data[15] != address ^ 0xFF:
        raise FormatError("not a value block (address copies disagree)")
    return struct.unpack("<i", raw)[0], address


def key_allowed(rule, key_type):
    """rule is one of A/B/AB/NEVER; key_type is 'A' or 'B'."""
    return key_type in rule
