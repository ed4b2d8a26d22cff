"""The new-system card layout on a MIFARE Classic 1K.

The card is a token, not a purse: it carries an authenticated identity and a tap counter, never a
balance. A torn write can therefore never create or lose money.

    sector  block  content                                   access (C1C2C3)
    ------  -----  ----------------------------------------  -----------------------------------
    1       4      identity (layout below)                   100: read A|B, write B
    1       5      identity MAC (16 bytes, SAM.identity_mac)  100
    1       6      holder name, UTF-8, zero padded            100
    1       7      trailer: key A / key B diversified per UID 011: keys and access written with B
    2       8      tap counter, a MIFARE value block          001: read A|B, decrement A|B, never
                                                               write or increment
    2       9, 10  zero                                       100
    2       11     trailer                                    011

Tap counter: the value block starts at COUNTER_START and each tap *decrements* it by one (with key
A, then transfer). The logical tap counter, `COUNTER_START - value`, therefore increases by one per
tap, and because access condition 001 forbids increment and write for both keys, nobody - not a
terminal, not a thief holding key A - can roll it back. The server watches counters per card for
repeats and gaps (clone or torn tap).

Identity block (16 bytes, big-endian): version u8, card_number u32, account_id u32,
generation u8, holder_category u8, expiry_yyyymmdd u32, zero u8.
"""
import struct

from firmware.core import mifare

LAYOUT_VERSION = 1
IDENTITY_SECTOR = 1
COUNTER_SECTOR = 2
IDENTITY_BLOCK = 4
MAC_BLOCK = 5
NAME_BLOCK = 6
COUNTER_BLOCK = 8
COUNTER_START = 0x7FFFFFF0
NAME_BYTES = 16

# Cardholder categories (the manual's card kinds).
HOLDER_STAFF = 1
HOLDER_STUDENT = 2
HOLDER_SELF_EMPLOYED = 3   # 部门自聘人员
HOLDER_TEMPORARY = 4       # 临时卡, always with an expiry
HOLDER_IDENTITY_ONLY = 5   # 身份卡: identification, no wallet
HOLDER_CATEGORIES = (HOLDER_STAFF, HOLDER_STUDENT, HOLDER_SELF_EMPLOYED, HOLDER_TEMPORARY,
                     HOLDER_IDENTITY_ONLY)

_IDENTITY = ">BIIBBIB"
assert struct.calcsize(_IDENTITY) == 16

IDENTITY_SECTOR_ACCESS = ((1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 1, 1))
COUNTER_SECTOR_ACCESS = ((0, 0, 1), (1, 0, 0), (1, 0, 0), (0, 1, 1))


class CardFormatError(ValueError):
    """The card's blocks do not hold a valid new-system layout (blank, foreign or corrupted)."""


class Identity:
    __slots__ = ("card_number", "account_id", "generation", "holder_category", "expiry_yyyymmdd")

    def __init__(self, card_number, account_id, generation, holder_category, expiry_yyyymmdd):
        self.card_number = card_number
        self.account_id = account_id
        self.generation = generation
        self.holder_category = holder_category
        self.expiry_yyyymmdd = expiry_yyyymmdd

    def __eq__(self, other):
        return isinstance(other, Identity) and self.as_tuple() == other.as_tuple()

    def as_tuple(self):
        return (self.card_number, self.account_id, self.generation, self.holder_category,
                self.expiry_yyyymmdd)

    def __repr__(self):
        return "Identity(card_number=%d, account_id=%d, generation=%d, holder_category=%d, expiry=%d)" % \
            self.as_tuple()


def encode_identity(identity):
    if not 0 < identity.card_number <= 0xFFFFFFFF or not 0 < identity.account_id <= 0xFFFFFFFF:
        raise CardFormatError("card_number and account_id must be positive 32-bit numbers")
    if not 0 <= identity.generation <= 0xFF or identity.holder_category not in HOLDER_CATEGORIES:
        raise CardFormatError("bad generation or holder category")
    return struct.pack(_IDENTITY, LAYOUT_VERSION, identity.card_number, identity.account_id,
                       identity.generation, identity.holder_category, identity.expiry_yyyymmdd, 0)


def decode_identity(block):
    if len(block) != mifare.BLOCK_SIZE:
        raise CardFormatError("identity block must be 16 bytes")
    version, card_number, account_id, generation, category, expiry, zero = struct.unpack(_IDENTITY, bytes(block))
    if version != LAYOUT_VERSION or zero != 0:
        raise CardFormatError("not a ykt identity block (version %d)" % version)
    if category not in HOLDER_CATEGORIES or card_number == 0 or account_id == 0:
        raise CardFormatError("identity block holds impossible values")
    return Identity(card_number, account_id, generation, category, expiry)


def encode_name(name):
    raw = name.encode("utf-8")
    while len(raw) > NAME_BYTES:          # cut on a character boundary
        name = name[:-1]
        raw = name.encode("utf-8")
    return raw + bytes(NAME_BYTES - len(raw))


def decode_name(block):
    raw = bytes(block).rstrip(b"\x00")
    try:
        return raw.decode("utf-8")
    except UnicodeError:
        raise CardFormatError("name block is not UTF-8")


def mac_input(identity_block, name_block):
    return bytes(identity_block) + bytes(name_block)


def verify_card(sam, uid, identity_block, mac_block, name_block):
    """Return (Identity, name) if the MAC holds; CardFormatError otherwise."""
    if not sam.verify_identity_mac(uid, mac_input(identity_block, name_block), mac_block):
        raise CardFormatError("identity MAC does not verify")
    return decode_identity(identity_block), decode_name(name_block)


def tap_counter_from_value(value):
    if not 0 <= value <= COUNTER_START:
        raise CardFormatError("tap counter value out of range")
    return COUNTER_START - value


def issue_plan(sam, uid, identity, name):
    """What an issuing station writes to a blank card, sector by sector.

    Returns [(sector, [(block, 16 bytes), ...]), ...]; each sector is written after authenticating
    with the transport key A, and its trailer is written last in the sector so the new keys take
    effect only when the data is in place. Needs a key holder with card_key_b (an issuing station).
    """
    identity_block = encode_identity(identity)
    name_block = encode_name(name)
    mac_block = sam.identity_mac(uid, mac_input(identity_block, name_block))

    def trailer(sector, access):
        return mifare.encode_trailer(sam.card_sector_key(uid, sector, "A"), access,
                                     sam.card_sector_key(uid, sector, "B"))

    return [
        (IDENTITY_SECTOR, [(IDENTITY_BLOCK, identity_block), (MAC_BLOCK, mac_block), (NAME_BLOCK, name_block),
                           (mifare.trailer_block(IDENTITY_SECTOR), trailer(IDENTITY_SECTOR, IDENTITY_SECTOR_ACCESS))]),
        (COUNTER_SECTOR, [(COUNTER_BLOCK, mifare.encode_value_block(COUNTER_START, COUNTER_BLOCK)),
                          (9, bytes(16)), (10, bytes(16)),
                          (mifare.trailer_block(COUNTER_SECTOR), trailer(COUNTER_SECTOR, COUNTER_SECTOR_ACCESS))]),
    ]


def mask_name(name):
    """Show 张*明 style: first character, then stars, then the last for names of three or more."""
    if len(name) <= 1:
        return name
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]
