"""A MIFARE Classic 1K card, modelled on the MIFARE Classic EV1 1K datasheet (NXP MF1S50yyX/V1).

The model keeps what a terminal can observe through a reader: 64 blocks of 16 bytes, the
manufacturer block, per-sector keys and access conditions (tables 7 and 8, encoded by
`firmware.core.mifare`), value blocks and the internal transfer buffer (section 8.6), and the
card's state machine (the command state diagram): a card answers only once selected, one sector is
authenticated at a time, and any NAK or failed authentication sends it to HALT, so the reader must
select it again (poll) before it answers anything else.

Limits, on purpose: no Crypto-1 cipher, no anticollision of several cards, no timing, no 4K cards.
One deliberate difference from silicon: writing a sector trailer whose access bits are inconsistent
is refused with a NAK. A real card accepts the write and blocks the sector forever; a simulator that
bricks test cards only hides the bug that wrote them.

A card image is `uid + 1024 bytes` of memory (keys included, like a full dump), so cards can live
in files and move between processes.
"""
import os
import threading

from firmware.core import mifare
from reader_drivers.base import AuthenticationError, CardGone, CardNak

__all__ = ("CardNak", "CardHalted", "ClassicCard", "blank_memory", "manufacturer_block", "bcc", "random_nuid")

# The model answers NAK (reader_drivers.base.CardNak) for: access denied by the access conditions,
# not a value block, overflow, a block outside the card, nothing in the transfer buffer.

ATQA_SINGLE_UID = 0x0004   # 4-byte NUID (AN10833, MIFARE type identification)
ATQA_DOUBLE_UID = 0x0044   # 7-byte UID
SAK_CLASSIC_1K = 0x08
MEMORY_BYTES = mifare.BLOCKS * mifare.BLOCK_SIZE
_MANUFACTURER_DATA = b"\x62\x63\x64\x65\x66\x67\x68\x69"  # "bcdefghi": a plausible NXP filler


class CardHalted(CardGone):
    """The card is in the field but not selected (new in the field, halted after a NAK or a failed
    authentication, or released): it does not answer until the reader selects it again."""


def bcc(uid4):
    """Block check character of a 4-byte UID (ISO 14443-3 6.5.3.2): XOR of its bytes."""
    value = 0
    for byte in uid4:
        value ^= byte
    return value


def random_nuid(rng):
    """A 4-byte NUID from a seeded random.Random, so simulations replay. Never starts with the
    cascade tag 0x88, which ISO 14443-3 reserves to announce a longer UID."""
    while True:
        uid = bytes(rng.getrandbits(8) for _ in range(4))
        if uid[0] != 0x88:
            return uid


def manufacturer_block(uid):
    """Block 0 as the factory programs it (datasheet, "Manufacturer block")."""
    uid = bytes(uid)
    if len(uid) == 4:
        block = uid + bytes((bcc(uid), SAK_CLASSIC_1K)) + ATQA_SINGLE_UID.to_bytes(2, "little") + _MANUFACTURER_DATA
    elif len(uid) == 7:
        block = uid + bytes((SAK_CLASSIC_1K,)) + ATQA_DOUBLE_UID.to_bytes(2, "little") + _MANUFACTURER_DATA[:6]
    else:
        raise ValueError("a MIFARE Classic UID is 4 or 7 bytes, not %d" % len(uid))
    assert len(block) == mifare.BLOCK_SIZE
    return block


def blank_memory(uid):
    """A card as delivered: zero data, transport keys FF..FF, access bits FF 07 80 (datasheet, "Sector
    trailer": delivery configuration)."""
    trailer = mifare.TRANSPORT_KEY + mifare.TRANSPORT_ACCESS + b"\x69" + mifare.TRANSPORT_KEY
    memory = bytearray(MEMORY_BYTES)
    memory[0:16] = manufacturer_block(uid)
    for sector in range(mifare.SECTORS):
        start = mifare.trailer_block(sector) * mifare.BLOCK_SIZE
        memory[start:start + 16] = trailer
    return memory


class ClassicCard:
    """One MIFARE Classic 1K card. Not thread-safe: the VirtualField serialises access to it."""

    def __init__(self, uid, memory=None):
        uid = bytes(uid)
        if memory is None:
            memory = blank_memory(uid)
        if len(memory) != MEMORY_BYTES:
            raise ValueError("a 1K card image holds %d bytes, not %d" % (MEMORY_BYTES, len(memory)))
        self.uid = uid
        self._memory = bytearray(memory)
        if bytes(self._memory[0:len(uid)]) != uid:
            raise ValueError("block 0 does not hold the UID %s" % uid.hex())
        self.atqa = ATQA_SINGLE_UID if len(uid) == 4 else ATQA_DOUBLE_UID
        self.sak = SAK_CLASSIC_1K
        self.power_off()

    # --- images -------------------------------------------------------------------------------

    def to_bytes(self):
        return self.uid + bytes(self._memory)

    @classmethod
    def from_bytes(cls, image):
        uid_bytes = len(image) - MEMORY_BYTES
        if uid_bytes not in (4, 7):
            raise ValueError("a card image is a 4- or 7-byte UID plus %d bytes" % MEMORY_BYTES)
        return cls(image[:uid_bytes], image[uid_bytes:])

    def save(self, path):
        """Write the image atomically (temp file, then rename), so a reader never sees half a card."""
        temporary = "%s.tmp-%d-%d" % (path, os.getpid(), threading.get_ident())
        with open(temporary, "wb") as stream:
            stream.write(self.to_bytes())
        os.replace(temporary, path)

    @classmethod
    def load(cls, path):
        with open(path, "rb") as stream:
            return cls.from_bytes(stream.read())

    def dump_block(self, block):
        """The stored bytes of a block, keys included, bypassing access control (a test's view)."""
        return bytes(self._memory[block * 16:block * 16 + 16])

    # --- states (datasheet, "MIFARE Classic command overview" state diagram) ---------------------

    def power_off(self):
        """Leaving the field: every volatile state is lost."""
        self._selected = False
        self._authenticated_sector = None
        self._key_type = None
        self._transfer_buffer = None

    def select(self):
        """REQA/WUPA + anticollision + SELECT; wakes a halted card. Returns (uid, atqa, sak)."""
        self.power_off()
        self._selected = True
        return self.uid, self.atqa, self.sak

    def halt(self):
        self.power_off()

    @property
    def selected(self):
        return self._selected

    def _require_selected(self):
        if not self._selected:
            raise CardHalted("卡片未被选中，请重新寻卡 / card is not selected (halted): poll again")

    def _nak(self, reason):
        self.halt()
        raise CardNak("卡片拒绝操作：%s / card NAK: %s" % reason)

    # --- authentication -----------------------------------------------------------------------

    def authenticate(self, block, key_type, key):
        self._require_selected()
        if key_type not in (mifare.A, mifare.B) or len(key) != mifare.KEY_SIZE:
            raise ValueError("key_type must be 'A' or 'B' and the key 6 bytes")
        # A new authentication always ends the previous one (datasheet, three-pass authentication).
        self._authenticated_sector = None
        self._key_type = None
        self._transfer_buffer = None
        if not 0 <= block < mifare.BLOCKS:
            self._nak(("块号超出范围", "block %d is outside the card" % block))
        trailer = self._block(mifare.trailer_block(mifare.sector_of(block)))
        stored_key = trailer[0:6] if key_type == mifare.A else trailer[10:16]
        if bytes(key) != stored_key:
            self.halt()
            raise AuthenticationError("密钥认证失败 / authentication with key %s failed for block %d"
                                      % (key_type, block))
        self._authenticated_sector = mifare.sector_of(block)
        self._key_type = key_type

    # --- access checks (tables 7 and 8) -------------------------------------------------------

    def _block(self, block):
        return bytes(self._memory[block * 16:block * 16 + 16])

    def _conditions(self, sector):
        """The sector's four (C1, C2, C3) tuples; a sector with broken access bits refuses all."""
        trailer = self._block(mifare.trailer_block(sector))
        try:
            return mifare.decode_access_bits(trailer[6:9])
        except mifare.FormatError:
            self._nak(("扇区访问位损坏", "sector %d has inconsistent access bits and is blocked" % sector))

    def _key_b_readable(self, conditions):
        return mifare.TRAILER_CONDITIONS[conditions[3]][mifare.KEY_B_READ] != mifare.NEVER

    def _check_session(self, block):
        """Common to every memory command: selected, block authenticated, usable key."""
        self._require_selected()
        if not 0 <= block < mifare.BLOCKS:
            self._nak(("块号超出范围", "block %d is outside the card" % block))
        sector = mifare.sector_of(block)
        if self._authenticated_sector != sector:
            self._nak(("扇区未认证", "sector %d is not authenticated" % sector))
        conditions = self._conditions(sector)
        # Tables 7 and 8, grey rows: where key B is readable it cannot serve for authentication;
        # after an authentication with it the card refuses every memory access.
        if self._key_type == mifare.B and self._key_b_readable(conditions):
            self._nak(("B密钥可读，不能用于访问", "key B is readable in sector %d and grants nothing" % sector))
        return conditions

    def _check_data(self, block, operation):
        conditions = self._check_session(block)
        if mifare.is_trailer(block):
            self._nak(("扇区尾块不能做此操作", "%s is not possible on sector trailer %d" % (operation, block)))
        if block == 0 and operation != mifare.READ:
            self._nak(("厂商块只读", "the manufacturer block is read-only"))
        rule = mifare.DATA_CONDITIONS[conditions[block % mifare.BLOCKS_PER_SECTOR]][operation]
        if not mifare.key_allowed(rule, self._key_type):
            self._nak(("访问条件不允许", "%s of block %d with key %s is not allowed" % (operation, block, self._key_type)))

    def _trailer_rule(self, conditions, part):
        return mifare.key_allowed(mifare.TRAILER_CONDITIONS[conditions[3]][part], self._key_type)

    # --- memory commands ----------------------------------------------------------------------

    def read(self, block):
        if not mifare.is_trailer(block) or not 0 <= block < mifare.BLOCKS:
            self._check_data(block, mifare.READ)
            return self._block(block)
        conditions = self._check_session(block)
        stored = self._block(block)
        # Key A never leaves the card; access bits and key B only where table 7 lets this key read.
        access = stored[6:10] if self._trailer_rule(conditions, mifare.ACCESS_READ) else bytes(4)
        key_b = stored[10:16] if self._trailer_rule(conditions, mifare.KEY_B_READ) else bytes(6)
        return bytes(6) + access + key_b

    def write(self, block, data):
        if len(data) != mifare.BLOCK_SIZE:
            raise ValueError("a block is 16 bytes")
        data = bytes(data)
        if not mifare.is_trailer(block) or not 0 <= block < mifare.BLOCKS:
            self._check_data(block, mifare.WRITE)
            self._store(block, data)
            return
        conditions = self._check_session(block)
        may_key_a = self._trailer_rule(conditions, mifare.KEY_A_WRITE)
        may_access = self._trailer_rule(conditions, mifare.ACCESS_WRITE)
        may_key_b = self._trailer_rule(conditions, mifare.KEY_B_WRITE)
        if not (may_key_a or may_access or may_key_b):
            self._nak(("访问条件不允许改写尾块", "trailer %d may not be written with key %s" % (block, self._key_type)))
        if may_access:
            try:
                mifare.decode_access_bits(data[6:9])
            except mifare.FormatError:
                # A real card would take these bits and block the sector for good (see module doc).
                self._nak(("访问位不一致，拒绝写入", "inconsistent access bits refused (would block sector %d)"
                           % mifare.sector_of(block)))
        # Parts this key may not write keep their old bytes, as on the card.
        stored = bytearray(self._block(block))
        if may_key_a:
            stored[0:6] = data[0:6]
        if may_access:
            stored[6:10] = data[6:10]
        if may_key_b:
            stored[10:16] = data[10:16]
        self._store(block, bytes(stored))

    def _store(self, block, data):
        assert len(data) == mifare.BLOCK_SIZE
        assert block != 0, "the manufacturer block is never written"
        self._memory[block * 16:block * 16 + 16] = data

    # --- value commands (datasheet, "Value blocks" and the value commands) -----------------------

    def _source_value(self, block, operation):
        self._check_data(block, operation)
        try:
            return mifare.decode_value_block(self._block(block))
        except mifare.FormatError:
            self._nak(("不是值块", "block %d is not a valid value block" % block))

    def increment(self, block, delta):
        self._apply_delta(block, delta, mifare.INCREMENT, +1)

    def decrement(self, block, delta):
        self._apply_delta(block, delta, mifare.DECREMENT, -1)

    def _apply_delta(self, block, delta, operation, sign):
        if not 0 <= delta <= mifare.VALUE_MAX:
            raise ValueError("delta must be 0..%d" % mifare.VALUE_MAX)
        value, address = self._source_value(block, operation)
        result = value + sign * delta
        if not mifare.VALUE_MIN <= result <= mifare.VALUE_MAX:
            self._nak(("值溢出", "value of block %d would overflow" % block))
        # The result goes to the transfer buffer only; the block changes on transfer.
        self._transfer_buffer = mifare.encode_value_block(result, address)

    def restore(self, block):
        value, address = self._source_value(block, mifare.DECREMENT)
        self._transfer_buffer = mifare.encode_value_block(value, address)

    def transfer(self, block):
        self._check_data(block, mifare.DECREMENT)   # table 8: transfer shares the decrement column
        if self._transfer_buffer is None:
            self._nak(("传输缓冲为空", "nothing to transfer: no increment, decrement or restore first"))
        self._store(block, self._transfer_buffer)
