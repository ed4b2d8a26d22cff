"""The OLD campus system's card layout on a MIFARE Classic 1K: the money lives on the card.

Cards of the system the new one replaces carry their balances, as campus systems of the 2000s-2010s
did: each purse is a value block plus a record (transaction counter, flags, checksum), kept twice,
main and backup, each copy in a sector of its own so a torn write or a damaged sector costs one copy.
Here: that layout, the old systems' rule for a torn purse, their write order, and the lock the
activation unit writes so no old terminal can spend a purse again.

    sector  blocks       content                                 access (C1C2C3)
    1, 2    4-11         blank (transport keys): the new layout  -
                         (card_layout.py) goes here at activation
    3       12, 13, 14   identity, name (GBK, zero padded), zero 100: read A|B, write B
    4 / 5   16-18/20-22  main purse (电子钱包), main / backup copy  value block 110 (read A|B, write B,
    6 / 7   24-26/28-30  water purse (小钱包), main / backup copy   decrement A|B, increment B), rest 100
    3-7     trailers     old keys A / B diversified per UID      011: keys and access written with B;
                                                                 locked purse: data 010, trailer 110

    block         offset  size  field
    12            0       1     format, 1
                  1       4     serial (卡号), u32 BE, 1..99999999
                  5       5     staff number (学工号), packed BCD, up to 10 digits, left-filled with F
                  10      1     category: 1 教工 teacher, 2 学生 student, 3 临时 temporary
                  11      4     expiry, BCD yyyymmdd
                  15      1     XOR of bytes 0-14
    16 20 24 28   0/4/8   4+4+4 balance in fen, int32 LE; inverted; again (datasheet 8.6.2 value block)
                  12      4     the block's own address, inverted, again, inverted
    17 21 25 29   0       1     purse id: 1 main, 2 water
                  1       1     copy: 0 main, 1 backup
                  2       3     transaction counter, u24 BE
                  5       1     flags: bit 0 locked (activated)
                  6       2     last terminal, u16 BE
                  8       6     zero
                  14      2     CRC-16/CCITT-FALSE BE over the value block's bytes 0-3 and these 0-13

A copy is trusted when its value block is well formed at its own address, holds 0..the purse's limit
and its record's CRC matches. Writes go backup value, backup record (the commit), main value, main
record (`write_plan`). The rule (`read_purse`): both trusted and equal: OK; both trusted, different:
the higher counter wins (equal counters with different balances: UNREADABLE, no old write leaves
that); one trusted: that one; none: UNREADABLE. A tear before the commit leaves the main copy with the
old balance; after it, the backup holds the new balance with the higher counter.

Keys: each sector's key A / B is `crypto.derive(old master, "legacy_card_key", UID, sector, A|B)`.
Real old systems used their vendor's diversification (typically DES/3DES of the UID in a PSAM); this
stands in for it in the same shape. Old terminals held both keys: key B writes purses.
"""
import struct

from firmware.core import crypto, mifare

FORMAT_VERSION = 1
IDENTITY_SECTOR = 3
IDENTITY_BLOCK = 12
NAME_BLOCK = 13
NAME_BYTES = 16
SERIAL_MAX = 99999999          # eight digits printed on the card face
STAFF_NUMBER_DIGITS = 10

TEACHER = 1      # 教工
STUDENT = 2      # 学生
TEMPORARY = 3    # 临时卡
CATEGORIES = (TEACHER, STUDENT, TEMPORARY)

MAIN_PURSE = 1   # 电子钱包
WATER_PURSE = 2  # 开水小钱包
MAIN_COPY = 0
BACKUP_COPY = 1
COUNTER_MAX = 0xFFFFFF
TERMINAL_MAX = 0xFFFF
FLAG_LOCKED = 0x01
_KNOWN_FLAGS = FLAG_LOCKED

OK = "ok"
RECOVERED_FROM_BACKUP = "recovered_from_backup"
RECOVERED_FROM_MAIN = "recovered_from_main"
UNREADABLE = "unreadable"
STATES = (OK, RECOVERED_FROM_BACKUP, RECOVERED_FROM_MAIN, UNREADABLE)

KEY_LABEL = "legacy_card_key"
IDENTITY_ACCESS = ((1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 1, 1))
PURSE_ACCESS = ((1, 1, 0), (1, 0, 0), (1, 0, 0), (0, 1, 1))
LOCKED_PURSE_ACCESS = ((0, 1, 0), (0, 1, 0), (0, 1, 0), (1, 1, 0))

_IDENTITY = ">BI5sB4sB"
_RECORD = ">BB3sBH6sH"
assert struct.calcsize(_IDENTITY) == mifare.BLOCK_SIZE
assert struct.calcsize(_RECORD) == mifare.BLOCK_SIZE


class LegacyCardError(ValueError):
    """Bytes that are not a valid old-system block, or a write the old system would never make."""


class PurseSpec:
    """Where one purse's two copies live and how much it may hold (the old system's purse limit)."""
    __slots__ = ("purse_id", "main_sector", "backup_sector", "max_fen")

    def __init__(self, purse_id, main_sector, backup_sector, max_fen):
        self.purse_id = purse_id
        self.main_sector = main_sector
        self.backup_sector = backup_sector
        self.max_fen = max_fen

    def sector(self, copy):
        return self.main_sector if copy == MAIN_COPY else self.backup_sector

    def value_block(self, copy):
        return self.sector(copy) * mifare.BLOCKS_PER_SECTOR

    def record_block(self, copy):
        return self.value_block(copy) + 1

    def blocks(self):
        """(main value, main record, backup value, backup record): read_purse's arguments, in order."""
        return (self.value_block(MAIN_COPY), self.record_block(MAIN_COPY),
                self.value_block(BACKUP_COPY), self.record_block(BACKUP_COPY))


# 9,999.99 yuan on the main purse, 999.99 on the water purse: the old terminals' display limits.
PURSES = {MAIN_PURSE: PurseSpec(MAIN_PURSE, 4, 5, 999999), WATER_PURSE: PurseSpec(WATER_PURSE, 6, 7, 99999)}
SECTORS = (IDENTITY_SECTOR, 4, 5, 6, 7)
PURSE_SECTORS = (4, 5, 6, 7)
# What a reader reads with key A, sector by sector, to see the whole old card.
READ_PLAN = ((IDENTITY_SECTOR, (IDENTITY_BLOCK, NAME_BLOCK)), (4, (16, 17)), (5, (20, 21)), (6, (24, 25)),
             (7, (28, 29)))


def purse_spec(purse):
    spec = PURSES.get(purse)
    if spec is None:
        raise LegacyCardError("unknown purse %r" % (purse,))
    return spec


# --- checksums -------------------------------------------------------------------------------------

def xor_checksum(data):
    """The identity block's check byte: XOR of the bytes (catches any single flipped bit)."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def crc16_ccitt(data):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection); check value 0x29B1."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


# --- keys and trailers ------------------------------------------------------------------------------

def sector_key(master_key, uid, sector, key_type):
    """The 6-byte old-system key of one sector of one card (module text: a stand-in for the vendor's
    diversification)."""
    if len(master_key) < 16:
        raise LegacyCardError("old-system master key too short")
    if key_type not in (mifare.A, mifare.B) or sector not in SECTORS:
        raise LegacyCardError("no old-system key for sector %r key %r" % (sector, key_type))
    return crypto.derive(master_key, KEY_LABEL, bytes(uid), sector, key_type.encode())[:mifare.KEY_SIZE]


def sector_trailer(master_key, uid, sector, locked=False):
    """A sector's trailer: the card's own keys and the sector's access bits (locked: the purse's
    data read-only for both keys and the trailer never writable again; the keys stay, so the purse
    can still be read for audit)."""
    if locked and sector not in PURSE_SECTORS:
        raise LegacyCardError("only purse sectors are locked")
    access = IDENTITY_ACCESS if sector == IDENTITY_SECTOR else LOCKED_PURSE_ACCESS if locked else PURSE_ACCESS
    return mifare.encode_trailer(sector_key(master_key, uid, sector, mifare.A), access,
                                 sector_key(master_key, uid, sector, mifare.B))


def trailer_locked(trailer_read):
    """True if a purse trailer as read from the card (key A shown as zeros) has the locked access bits;
    False for the normal bits or bytes the reading key may not see."""
    if trailer_read is None or len(trailer_read) != mifare.BLOCK_SIZE:
        return False
    try:
        return mifare.decode_access_bits(bytes(trailer_read[6:9])) == LOCKED_PURSE_ACCESS
    except mifare.FormatError:
        return False


# --- identity ---------------------------------------------------------------------------------------

def _bcd(digits, size, fill):
    if not isinstance(digits, str) or not 0 < len(digits) <= size * 2 or \
            (not fill and len(digits) != size * 2) or any(not "0" <= digit <= "9" for digit in digits):
        raise LegacyCardError("%r does not fit %d BCD bytes" % (digits, size))
    nibbles = [0xF] * (size * 2 - len(digits)) + [ord(digit) - 48 for digit in digits]
    return bytes((nibbles[i] << 4) | nibbles[i + 1] for i in range(0, size * 2, 2))


def _digits(data, fill):
    digits = ""
    for byte in data:
        for nibble in (byte >> 4, byte & 0xF):
            if nibble == 0xF and fill and not digits:
                continue
            if nibble > 9:
                raise LegacyCardError("not a BCD number")
            digits += chr(48 + nibble)
    if not digits:
        raise LegacyCardError("empty BCD number")
    return digits


class OldIdentity:
    """What an old card says of its holder: 卡号 (serial), 学工号 (staff number), category, expiry."""
    __slots__ = ("serial", "staff_number", "category", "expiry_yyyymmdd")

    def __init__(self, serial, staff_number, category, expiry_yyyymmdd):
        self.serial = serial
        self.staff_number = staff_number
        self.category = category
        self.expiry_yyyymmdd = expiry_yyyymmdd

    def as_tuple(self):
        return (self.serial, self.staff_number, self.category, self.expiry_yyyymmdd)

    def __eq__(self, other):
        return isinstance(other, OldIdentity) and self.as_tuple() == other.as_tuple()

    def __repr__(self):
        return "OldIdentity(serial=%d, staff_number=%r, category=%d, expiry=%d)" % self.as_tuple()


def _check_date(yyyymmdd):
    if not isinstance(yyyymmdd, int) or not 19900101 <= yyyymmdd <= 20991231 or \
            not 1 <= yyyymmdd // 100 % 100 <= 12 or not 1 <= yyyymmdd % 100 <= 31:
        raise LegacyCardError("impossible expiry date %r" % (yyyymmdd,))


def encode_identity(identity):
    if not isinstance(identity.serial, int) or not 0 < identity.serial <= SERIAL_MAX or \
            identity.category not in CATEGORIES:
        raise LegacyCardError("serial must be 1..%d and the category known" % SERIAL_MAX)
    _check_date(identity.expiry_yyyymmdd)
    staff_bcd = _bcd(identity.staff_number, STAFF_NUMBER_DIGITS // 2, True)
    body = struct.pack(_IDENTITY, FORMAT_VERSION, identity.serial, staff_bcd, identity.category,
                       _bcd(str(identity.expiry_yyyymmdd), 4, False), 0)[:15]
    return body + bytes((xor_checksum(body),))


def decode_identity(block):
    if block is None or len(block) != mifare.BLOCK_SIZE:
        raise LegacyCardError("identity block must be 16 bytes")
    block = bytes(block)
    if xor_checksum(block[:15]) != block[15]:
        raise LegacyCardError("identity checksum mismatch")
    version, serial, staff_bcd, category, expiry_bcd, _check = struct.unpack(_IDENTITY, block)
    if version != FORMAT_VERSION:
        raise LegacyCardError("not an old-system identity block (format %d)" % version)
    identity = OldIdentity(serial, _digits(staff_bcd, True), category, int(_digits(expiry_bcd, False)))
    encode_identity(identity)   # the same bounds as on the way in
    return identity


def encode_name(raw):
    """The name block from the holder's name already encoded by the caller (GBK, as the old system
    stored it: MicroPython has no Chinese codecs), at most 16 bytes cut on a character boundary."""
    raw = bytes(raw)
    if len(raw) > NAME_BYTES or b"\x00" in raw:
        raise LegacyCardError("a name is at most %d bytes with no zero byte" % NAME_BYTES)
    return raw + bytes(NAME_BYTES - len(raw))


def decode_name(block):
    """The name's raw GBK bytes (GBK never uses a zero byte, so the padding strips cleanly)."""
    if block is None or len(block) != mifare.BLOCK_SIZE:
        raise LegacyCardError("name block must be 16 bytes")
    return bytes(block).rstrip(b"\x00")


# --- one copy of a purse ----------------------------------------------------------------------------

def _check_copy_fields(spec, balance_fen, counter, flags, terminal):
    if not isinstance(balance_fen, int) or not 0 <= balance_fen <= spec.max_fen:
        raise LegacyCardError("balance %r fen outside 0..%d" % (balance_fen, spec.max_fen))
    if not 0 <= counter <= COUNTER_MAX or not 0 <= flags <= 0xFF or flags & ~_KNOWN_FLAGS:
        raise LegacyCardError("counter or flags out of range")
    if not 0 <= terminal <= TERMINAL_MAX:
        raise LegacyCardError("terminal number out of range")


def encode_record(purse, copy, balance_fen, counter, flags=0, terminal=0):
    """One copy's record block; its CRC binds it to the balance in that copy's value block."""
    spec = purse_spec(purse)
    _check_copy_fields(spec, balance_fen, counter, flags, terminal)
    body = struct.pack(_RECORD, spec.purse_id, copy, counter.to_bytes(3, "big"), flags, terminal, bytes(6), 0)[:14]
    crc = crc16_ccitt(struct.pack("<i", balance_fen) + body)
    return body + crc.to_bytes(2, "big")


def encode_copy(purse, copy, balance_fen, counter, flags=0, terminal=0):
    """-> (value block, record block) of one copy."""
    record = encode_record(purse, copy, balance_fen, counter, flags, terminal)
    return mifare.encode_value_block(balance_fen, purse_spec(purse).value_block(copy)), record


def encode_purse(purse, balance_fen, counter, flags=0, terminal=0):
    """A consistent purse -> (main value, main record, backup value, backup record): what the
    issuer writes and what a completed write leaves, in read_purse's argument order."""
    return (encode_copy(purse, MAIN_COPY, balance_fen, counter, flags, terminal)
            + encode_copy(purse, BACKUP_COPY, balance_fen, counter, flags, terminal))


def _trusted_copy(spec, copy, value_block, record_block):
    """(balance_fen, counter, flags, terminal) of one copy, or None when it cannot be trusted."""
    if value_block is None or record_block is None or len(value_block) != mifare.BLOCK_SIZE or \
            len(record_block) != mifare.BLOCK_SIZE:
        return None
    try:
        balance_fen, address = mifare.decode_value_block(bytes(value_block))
    except mifare.FormatError:
        return None
    if address != spec.value_block(copy) or not 0 <= balance_fen <= spec.max_fen:
        return None
    record = bytes(record_block)
    purse_id, record_copy, counter_bytes, flags, terminal, zero, crc = struct.unpack(_RECORD, record)
    if crc != crc16_ccitt(bytes(value_block[0:4]) + record[:14]):
        return None
    if purse_id != spec.purse_id or record_copy != copy or flags & ~_KNOWN_FLAGS or zero != bytes(6):
        return None
    return (balance_fen, int.from_bytes(counter_bytes, "big"), flags, terminal)


# --- the rule ---------------------------------------------------------------------------------------

class PurseReading:
    """The rule's verdict on one purse: balance, counter, state, flags, and which copy lost."""
    __slots__ = ("purse", "balance_fen", "counter", "state", "flags", "terminal")

    def __init__(self, purse, balance_fen, counter, state, flags=0, terminal=0):
        self.purse = purse
        self.balance_fen = balance_fen
        self.counter = counter
        self.state = state
        self.flags = flags
        self.terminal = terminal

    @property
    def locked(self):
        return bool(self.flags & FLAG_LOCKED)

    @property
    def losing_copy(self):
        """The copy to rewrite so the purse reads OK again (None when OK or unreadable)."""
        if self.state == RECOVERED_FROM_BACKUP:
            return MAIN_COPY
        if self.state == RECOVERED_FROM_MAIN:
            return BACKUP_COPY
        return None

    def __repr__(self):
        return "PurseReading(purse=%d, balance_fen=%r, counter=%r, state=%s, flags=%d)" % (
            self.purse, self.balance_fen, self.counter, self.state, self.flags)


def inspect_purse(main_value, main_record, backup_value, backup_record, purse=MAIN_PURSE):
    """The old systems' rule (module text) over one purse's four blocks -> PurseReading.

    A purse is locked when any trusted copy says so: a lock is never undone, so the safe side wins."""
    spec = purse_spec(purse)
    main = _trusted_copy(spec, MAIN_COPY, main_value, main_record)
    backup = _trusted_copy(spec, BACKUP_COPY, backup_value, backup_record)
    if main is not None and backup is not None:
        flags = main[2] | backup[2]
        if main[0] == backup[0] and main[1] == backup[1]:
            return PurseReading(purse, main[0], main[1], OK, flags, backup[3])
        if main[1] == backup[1]:
            return PurseReading(purse, None, None, UNREADABLE)
        if backup[1] > main[1]:
            return PurseReading(purse, backup[0], backup[1], RECOVERED_FROM_BACKUP, flags, backup[3])
        return PurseReading(purse, main[0], main[1], RECOVERED_FROM_MAIN, flags, main[3])
    if backup is not None:
        return PurseReading(purse, backup[0], backup[1], RECOVERED_FROM_BACKUP, backup[2], backup[3])
    if main is not None:
        return PurseReading(purse, main[0], main[1], RECOVERED_FROM_MAIN, main[2], main[3])
    return PurseReading(purse, None, None, UNREADABLE)


def read_purse(main_value, main_record, backup_value, backup_record, purse=MAIN_PURSE):
    """-> (balance_fen, counter, state); balance and counter are None when the state is UNREADABLE."""
    reading = inspect_purse(main_value, main_record, backup_value, backup_record, purse)
    return reading.balance_fen, reading.counter, reading.state


# --- writers ----------------------------------------------------------------------------------------
# A plan is [(block, 16 bytes), ...] in order; it may span the purse's two sectors, so the writer
# authenticates with that sector's key B whenever the block's sector changes.

def _readable(blocks, purse):
    reading = inspect_purse(blocks[0], blocks[1], blocks[2], blocks[3], purse)
    if reading.state == UNREADABLE:
        raise LegacyCardError("purse %d unreadable: both copies torn or damaged (到原一卡通中心处理 / "
                              "take the card to the old card centre)" % purse)
    return reading


def _copy_steps(purse, copy, balance_fen, counter, flags, terminal):
    spec = purse_spec(purse)
    value_block, record_block = encode_copy(purse, copy, balance_fen, counter, flags, terminal)
    return [(spec.value_block(copy), value_block), (spec.record_block(copy), record_block)]


def repair_plan(main_value, main_record, backup_value, backup_record, purse=MAIN_PURSE):
    """The writes that bring a torn purse back to OK, as old terminals did at the next tap: the
    losing copy's value, then its record, from the winning copy. [] when already OK.

    Every prefix reads back as the same balance: the winner is never touched, and the loser stays
    untrusted (or older) until its record matches its new value."""
    reading = _readable((main_value, main_record, backup_value, backup_record), purse)
    if reading.losing_copy is None:
        return []
    return _copy_steps(purse, reading.losing_copy, reading.balance_fen, reading.counter, reading.flags,
                       reading.terminal)


def write_plan(main_value, main_record, backup_value, backup_record, new_balance_fen, purse=MAIN_PURSE,
               terminal=0):
    """An old terminal's transaction setting the purse to new_balance_fen (a spend or a recharge).

    A torn purse is repaired first (writing over the winner would lose what it holds). Then backup
    value, backup record (the commit: from here the rule reads the new balance), main value, main
    record, all with the counter one up. Refused: an unreadable or locked purse, a balance outside
    0..the purse's limit, an exhausted counter."""
    blocks = (main_value, main_record, backup_value, backup_record)
    reading = _readable(blocks, purse)
    if reading.locked:
        raise LegacyCardError("purse %d is locked (activated): 旧卡已激活，不能再用旧系统消费" % purse)
    if reading.counter >= COUNTER_MAX:
        raise LegacyCardError("purse %d transaction counter exhausted" % purse)
    counter = reading.counter + 1
    _check_copy_fields(purse_spec(purse), new_balance_fen, counter, reading.flags, terminal)
    return (repair_plan(*blocks, purse=purse)
            + _copy_steps(purse, BACKUP_COPY, new_balance_fen, counter, reading.flags, terminal)
            + _copy_steps(purse, MAIN_COPY, new_balance_fen, counter, reading.flags, terminal))


def commit_step(steps, purse=MAIN_PURSE):
    """The index of a write plan's commit: its last write of the backup record."""
    backup_record = purse_spec(purse).record_block(BACKUP_COPY)
    for index in range(len(steps) - 1, -1, -1):
        if steps[index][0] == backup_record:
            return index
    raise LegacyCardError("no backup record write in this plan")


def lock_plan(main_value, main_record, backup_value, backup_record, master_key, uid, purse=MAIN_PURSE,
              trailers_read=(None, None)):
    """The writes that lock a purse for good (the activation unit, with key B): a torn purse's losing
    copy repaired first, its record carrying the locked flag; then the flag on each copy not yet
    carrying it (backup, then main); then the frozen trailers (main, then backup).

    The winner's record is rewritten only once the other copy holds the same balance, so a write
    torn anywhere reads back as the same balance, locked from the first flagged record on.
    trailers_read: the (main, backup) trailers as read; a frozen one is not written again, and when
    both are frozen the plan is []. Planning again from the card's new state finishes the job."""
    spec = purse_spec(purse)
    frozen = (trailer_locked(trailers_read[0]), trailer_locked(trailers_read[1]))
    if frozen[0] and frozen[1]:
        return []
    reading = _readable((main_value, main_record, backup_value, backup_record), purse)
    flags = reading.flags | FLAG_LOCKED
    steps = []
    if reading.losing_copy is not None and not frozen[reading.losing_copy]:
        steps += _copy_steps(purse, reading.losing_copy, reading.balance_fen, reading.counter, flags,
                             reading.terminal)
    for copy, record_block in ((BACKUP_COPY, backup_record), (MAIN_COPY, main_record)):
        if copy == reading.losing_copy or frozen[copy]:
            continue
        trusted = _trusted_copy(spec, copy, (main_value, backup_value)[copy], record_block)
        if trusted is None or not trusted[2] & FLAG_LOCKED:
            steps.append((spec.record_block(copy), encode_record(purse, copy, reading.balance_fen, reading.counter,
                                                                 flags, reading.terminal)))
    for copy in (MAIN_COPY, BACKUP_COPY):
        if not frozen[copy]:
            steps.append((mifare.trailer_block(spec.sector(copy)), sector_trailer(master_key, uid, spec.sector(copy),
                                                                                  locked=True)))
    return steps


# --- issuing ----------------------------------------------------------------------------------------

def issue_plan(master_key, uid, identity, name_raw, purses):
    """What the old card centre wrote to a blank card, sector by sector with the transport key A, the
    trailer last in each sector (the card's keys change only once its data is in place).

    purses: {MAIN_PURSE: (balance_fen, counter), WATER_PURSE: (balance_fen, counter)}: the centre
    formatted both on every card. -> [(sector, [(block, 16 bytes), ...]), ...]."""
    if sorted(purses) != sorted(PURSES):
        raise LegacyCardError("give the main and the water purse")
    zero = bytes(mifare.BLOCK_SIZE)
    plan = [(IDENTITY_SECTOR, [(IDENTITY_BLOCK, encode_identity(identity)), (NAME_BLOCK, encode_name(name_raw)),
                               (IDENTITY_BLOCK + 2, zero),
                               (mifare.trailer_block(IDENTITY_SECTOR),
                                sector_trailer(master_key, uid, IDENTITY_SECTOR))])]
    for purse in (MAIN_PURSE, WATER_PURSE):
        spec = PURSES[purse]
        balance_fen, counter = purses[purse]
        for copy in (MAIN_COPY, BACKUP_COPY):
            sector = spec.sector(copy)
            writes = _copy_steps(purse, copy, balance_fen, counter, 0, 0)
            writes += [(spec.value_block(copy) + 2, zero), (mifare.trailer_block(sector),
                                                            sector_trailer(master_key, uid, sector))]
            plan.append((sector, writes))
    return plan
