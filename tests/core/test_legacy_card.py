"""The old system's card layout: formats against published vectors, every torn state and the rule,
every write and lock torn at every step (plain asserts: also run under MicroPython)."""
import binascii
import struct

from firmware.core import crypto, legacy_card as L, mifare

from .expect import raises

MASTER = bytes(range(100, 132))
UID = b"\x11\x22\x33\x44"
MAIN = L.PURSES[L.MAIN_PURSE]
WATER = L.PURSES[L.WATER_PURSE]


def _unhex(text):
    return binascii.unhexlify(text.replace(" ", ""))


def _card(purse, balance_fen, counter, flags=0):
    """A purse as a {block: bytes} map, standing in for the card's memory."""
    spec = L.PURSES[purse]
    return dict(zip(spec.blocks(), L.encode_purse(purse, balance_fen, counter, flags)))


def _blocks(card, purse):
    return [card.get(block) for block in L.PURSES[purse].blocks()]


def _read(card, purse=L.MAIN_PURSE):
    return L.read_purse(*_blocks(card, purse), purse=purse)


def _apply(card, steps):
    card = dict(card)
    for block, data in steps:
        assert len(data) == 16
        card[block] = data
    return card


def _as_read(trailer):
    """A trailer as a reader sees it: key A always zeros, key B not readable under these conditions."""
    return bytes(6) + trailer[6:10] + bytes(6)


# --- formats ---------------------------------------------------------------------------------------

def test_checksums_match_their_catalogue_values():
    assert L.crc16_ccitt(b"123456789") == 0x29B1          # CRC-16/CCITT-FALSE check value
    assert L.crc16_ccitt(b"") == 0xFFFF
    assert L.xor_checksum(b"\x01\x02\x04") == 0x07 and L.xor_checksum(b"") == 0


def test_value_blocks_follow_the_datasheet_format():
    # NXP MF1S50yyX table 4: 1234567 at block 17 -> value LE, inverted, value, adr ~adr adr ~adr
    assert mifare.encode_value_block(1234567, 17) == _unhex("87d61200 7829edff 87d61200 11ee11ee")
    main_value, _, backup_value, _ = L.encode_purse(L.MAIN_PURSE, 12345, 7)
    assert main_value == _unhex("39300000 c6cfffff 39300000 10ef10ef")      # 12345 fen at block 16
    assert backup_value == _unhex("39300000 c6cfffff 39300000 14eb14eb")    # the backup at block 20
    water_value = L.encode_purse(L.WATER_PURSE, 12345, 7)[0]
    assert water_value[12:] == _unhex("18e718e7")                           # block 24
    assert mifare.decode_value_block(main_value) == (12345, 16)


def test_layout_blocks_and_sectors_are_where_the_table_says():
    assert MAIN.blocks() == (16, 17, 20, 21) and WATER.blocks() == (24, 25, 28, 29)
    assert L.SECTORS == (3, 4, 5, 6, 7)
    # sectors 1 and 2 stay free for the new layout written at activation
    from firmware.core import card_layout
    assert card_layout.IDENTITY_SECTOR not in L.SECTORS and card_layout.COUNTER_SECTOR not in L.SECTORS
    for sector, blocks in L.READ_PLAN:
        assert all(mifare.sector_of(block) == sector and not mifare.is_trailer(block) for block in blocks)


def test_identity_block_layout_and_round_trip():
    student = L.OldIdentity(12345678, "2019010203", L.STUDENT, 20230701)
    block = L.encode_identity(student)
    assert block == _unhex("01 00bc614e 2019010203 02 20230701 ac")
    assert L.decode_identity(block) == student
    teacher = L.OldIdentity(31, "19980123", L.TEACHER, 20301231)
    block = L.encode_identity(teacher)
    assert block[5:10] == _unhex("ff19980123")           # shorter numbers are left-filled with F
    assert struct.unpack(">I", block[1:5])[0] == 31 and block[10] == L.TEACHER
    assert L.decode_identity(block) == teacher


def test_identity_checksum_catches_every_flipped_bit():
    block = L.encode_identity(L.OldIdentity(4242, "2020123456", L.STUDENT, 20240701))
    for bit in range(128):
        damaged = bytearray(block)
        damaged[bit // 8] ^= 1 << (bit % 8)
        raises(L.LegacyCardError, L.decode_identity, bytes(damaged))
    raises(L.LegacyCardError, L.decode_identity, bytes(16))
    raises(L.LegacyCardError, L.decode_identity, block[:15])


def test_identity_bounds_are_refused():
    bad = [L.OldIdentity(0, "1", L.STUDENT, 20240701), L.OldIdentity(L.SERIAL_MAX + 1, "1", L.STUDENT, 20240701),
           L.OldIdentity(5, "12345678901", L.STUDENT, 20240701), L.OldIdentity(5, "", L.STUDENT, 20240701),
           L.OldIdentity(5, "12A4", L.STUDENT, 20240701), L.OldIdentity(5, "1", 9, 20240701),
           L.OldIdentity(5, "1", L.STUDENT, 20241301), L.OldIdentity(5, "1", L.STUDENT, 20240700),
           L.OldIdentity(5, "1", L.STUDENT, 21000101)]
    for identity in bad:
        raises(L.LegacyCardError, L.encode_identity, identity)
    assert L.decode_identity(L.encode_identity(L.OldIdentity(L.SERIAL_MAX, "9999999999", L.TEMPORARY,
                                                             20991231))).serial == L.SERIAL_MAX


def test_name_block_keeps_raw_gbk_bytes():
    raw = _unhex("d5c5 c8fd")                 # 张三 in GBK
    block = L.encode_name(raw)
    assert block == raw + bytes(12) and L.decode_name(block) == raw
    raises(L.LegacyCardError, L.encode_name, bytes(17) + b"x")
    raises(L.LegacyCardError, L.encode_name, b"a\x00b")


def test_record_layout():
    record = L.encode_record(L.MAIN_PURSE, L.BACKUP_COPY, 1234, 77, L.FLAG_LOCKED, 300)
    assert record[0] == L.MAIN_PURSE and record[1] == L.BACKUP_COPY
    assert record[2:5] == b"\x00\x00\x4d" and record[5] == L.FLAG_LOCKED and record[6:8] == b"\x01\x2c"
    assert record[8:14] == bytes(6)
    assert record[14:16] == L.crc16_ccitt(struct.pack("<i", 1234) + record[:14]).to_bytes(2, "big")


def test_purses_round_trip_within_their_bounds():
    for purse in (L.MAIN_PURSE, L.WATER_PURSE):
        spec = L.PURSES[purse]
        for balance_fen, counter in ((0, 0), (1, 1), (spec.max_fen, L.COUNTER_MAX), (5000, 123456)):
            assert _read(_card(purse, balance_fen, counter), purse) == (balance_fen, counter, L.OK)
        raises(L.LegacyCardError, L.encode_purse, purse, -1, 0)          # a negative balance cannot be written
        raises(L.LegacyCardError, L.encode_purse, purse, spec.max_fen + 1, 0)
        raises(L.LegacyCardError, L.encode_purse, purse, 10, L.COUNTER_MAX + 1)
        raises(L.LegacyCardError, L.encode_purse, purse, 10, 0, 0x02)   # unknown flag
        raises(L.LegacyCardError, L.encode_purse, purse, 10, 0, 0, L.TERMINAL_MAX + 1)
    raises(L.LegacyCardError, L.encode_purse, 3, 10, 0)


# --- torn states and the rule ------------------------------------------------------------------------

def test_every_torn_state_and_the_rule():
    old = _card(L.MAIN_PURSE, 5000, 10)
    new = _card(L.MAIN_PURSE, 4200, 11)
    main_value, main_record, backup_value, backup_record = MAIN.blocks()

    # the two copies disagree: the higher counter wins
    assert _read(_apply(old, [(backup_value, new[backup_value]), (backup_record, new[backup_record])])) == \
        (4200, 11, L.RECOVERED_FROM_BACKUP)
    assert _read(_apply(old, [(main_value, new[main_value]), (main_record, new[main_record])])) == \
        (4200, 11, L.RECOVERED_FROM_MAIN)
    # a copy whose record does not match its value (checksum mismatch): the other copy
    assert _read(_apply(old, [(backup_value, new[backup_value])])) == (5000, 10, L.RECOVERED_FROM_MAIN)
    assert _read(_apply(old, [(main_value, new[main_value])])) == (5000, 10, L.RECOVERED_FROM_BACKUP)
    damaged = bytearray(old[main_record])
    damaged[4] ^= 0x01
    assert _read(_apply(old, [(main_record, bytes(damaged))])) == (5000, 10, L.RECOVERED_FROM_BACKUP)
    # malformed value blocks: copies disagree, wrong address, a copy moved to the other block
    broken = bytearray(old[main_value])
    broken[8] ^= 0xFF
    assert _read(_apply(old, [(main_value, bytes(broken))])) == (5000, 10, L.RECOVERED_FROM_BACKUP)
    broken = bytearray(old[backup_value])
    broken[13] ^= 0x01
    assert _read(_apply(old, [(backup_value, bytes(broken))])) == (5000, 10, L.RECOVERED_FROM_MAIN)
    assert _read(_apply(old, [(backup_value, old[main_value])])) == (5000, 10, L.RECOVERED_FROM_MAIN)
    assert _read(_apply(old, [(main_value, bytes(16))])) == (5000, 10, L.RECOVERED_FROM_BACKUP)
    # a well-formed value block holding a negative balance or more than the limit is not trusted
    for value in (-100, MAIN.max_fen + 1):
        forged = mifare.encode_value_block(value, main_value)
        record = L.crc16_ccitt(struct.pack("<i", value) + old[main_record][:14]).to_bytes(2, "big")
        assert _read(_apply(old, [(main_value, forged), (main_record, old[main_record][:14] + record)])) == \
            (5000, 10, L.RECOVERED_FROM_BACKUP)
    # another purse's record (the water purse's) is not this purse's
    water = _card(L.WATER_PURSE, 5000, 10)
    assert _read(_apply(old, [(main_record, water[WATER.blocks()[1]])])) == (5000, 10, L.RECOVERED_FROM_BACKUP)
    # nothing to trust
    assert _read(_apply(old, [(main_value, bytes(16)), (backup_record, bytes(16))])) == (None, None, L.UNREADABLE)
    assert L.read_purse(None, None, None, None) == (None, None, L.UNREADABLE)
    assert _read({}) == (None, None, L.UNREADABLE)
    # equal counters with different balances: no old write leaves that, so no guess
    assert _read(_apply(old, [(backup_value, _card(L.MAIN_PURSE, 4200, 10)[backup_value]),
                              (backup_record, _card(L.MAIN_PURSE, 4200, 10)[backup_record])])) == \
        (None, None, L.UNREADABLE)


def _torn_variants(old_block, new_block):
    """What a block write cut mid-way may leave: a prefix of the new bytes over the old, or over an
    erased (zero or 0xFF) page."""
    variants = []
    for cut in range(1, 16):
        for rest in (old_block or bytes(16), bytes(16), b"\xff" * 16):
            variants.append(new_block[:cut] + rest[cut:])
    return variants


def _expected_after(steps, commit, done, before, after):
    return after if done > commit else before


def _check_plan_torn_everywhere(card, steps, commit, before, after, purse=L.MAIN_PURSE):
    """Cut the plan after every step and inside every step; the rule must read `before` until the
    commit is whole and `after` from then on, and never UNREADABLE."""
    checked = 0
    for done in range(len(steps) + 1):
        state = _apply(card, steps[:done])
        balance_fen, counter, verdict = _read(state, purse)
        assert (balance_fen, counter) == _expected_after(steps, commit, done, before, after), (done, verdict)
        if done == len(steps):
            assert verdict == L.OK
        if done < len(steps):
            block, data = steps[done]
            for torn in _torn_variants(state.get(block), data):
                whole = torn == data
                expected = _expected_after(steps, commit, done + 1 if whole else done, before, after)
                got = _read(_apply(state, [(block, torn)]), purse)
                assert got[:2] == expected and got[2] != L.UNREADABLE, (done, torn, got)
                checked += 1
    return checked


def _torn_starts():
    """A clean purse and the purse left by a transaction torn at each step: the states cards are in."""
    clean = _card(L.MAIN_PURSE, 5000, 10)
    steps = L.write_plan(*_blocks(clean, L.MAIN_PURSE), 4200)
    return [_apply(clean, steps[:done]) for done in range(len(steps))]


def test_a_write_torn_at_every_step_reads_the_right_balance():
    clean = _card(L.MAIN_PURSE, 5000, 10)
    steps = L.write_plan(*_blocks(clean, L.MAIN_PURSE), 4200, terminal=12)
    assert [block for block, _ in steps] == [20, 21, 16, 17]    # backup value, backup record, main
    assert L.commit_step(steps) == 1
    assert _check_plan_torn_everywhere(clean, steps, 1, (5000, 10), (4200, 11)) > 100
    assert L.inspect_purse(*_blocks(_apply(clean, steps), L.MAIN_PURSE)).terminal == 12


def test_the_next_write_from_every_torn_state_repairs_first_and_is_tear_safe():
    for start in _torn_starts():
        before = _read(start)
        assert before[2] != L.UNREADABLE
        steps = L.write_plan(*_blocks(start, L.MAIN_PURSE), 3000)
        commit = L.commit_step(steps)
        _check_plan_torn_everywhere(start, steps, commit, before[:2], (3000, before[1] + 1))
        if before[2] != L.OK:
            assert len(steps) == 6 and commit == 3
            assert _read(_apply(start, L.repair_plan(*_blocks(start, L.MAIN_PURSE))))[2] == L.OK


def test_the_water_purse_follows_the_same_rule():
    clean = _card(L.WATER_PURSE, 800, 3)
    steps = L.write_plan(*_blocks(clean, L.WATER_PURSE), 650, purse=L.WATER_PURSE)
    assert [block for block, _ in steps] == [28, 29, 24, 25]
    _check_plan_torn_everywhere(clean, steps, L.commit_step(steps, L.WATER_PURSE), (800, 3), (650, 4),
                                purse=L.WATER_PURSE)


def test_writes_the_old_system_never_made_are_refused():
    clean = _card(L.MAIN_PURSE, 5000, 10)
    blocks = _blocks(clean, L.MAIN_PURSE)
    raises(L.LegacyCardError, L.write_plan, *blocks, -1)                 # overdraft
    raises(L.LegacyCardError, L.write_plan, *blocks, MAIN.max_fen + 1)
    raises(L.LegacyCardError, L.write_plan, *blocks, 100, terminal=L.TERMINAL_MAX + 1)
    raises(L.LegacyCardError, L.write_plan, *_blocks(_card(L.MAIN_PURSE, 5000, L.COUNTER_MAX), L.MAIN_PURSE), 10)
    raises(L.LegacyCardError, L.write_plan, None, None, None, None, 10)
    raises(L.LegacyCardError, L.repair_plan, None, None, None, None)
    assert L.repair_plan(*blocks) == []
    raises(L.LegacyCardError, L.commit_step, [(16, bytes(16))])


# --- keys and the lock -------------------------------------------------------------------------------

def test_keys_are_diversified_per_card_sector_and_type():
    key = L.sector_key(MASTER, UID, 4, "A")
    assert key == crypto.derive(MASTER, "legacy_card_key", UID, 4, b"A")[:6] and len(key) == 6
    others = [L.sector_key(MASTER, UID, 4, "B"), L.sector_key(MASTER, UID, 5, "A"),
              L.sector_key(MASTER, b"\x11\x22\x33\x45", 4, "A"), L.sector_key(b"x" * 32, UID, 4, "A")]
    assert key not in others and len(set(others)) == len(others)
    raises(L.LegacyCardError, L.sector_key, b"short", UID, 4, "A")
    raises(L.LegacyCardError, L.sector_key, MASTER, UID, 1, "A")        # sector 1 is not the old system's
    trailer = L.sector_trailer(MASTER, UID, 4)
    assert trailer[0:6] == key and trailer[10:16] == L.sector_key(MASTER, UID, 4, "B")
    assert mifare.decode_access_bits(trailer[6:9]) == L.PURSE_ACCESS
    assert mifare.decode_access_bits(L.sector_trailer(MASTER, UID, 3)[6:9]) == L.IDENTITY_ACCESS
    raises(L.LegacyCardError, L.sector_trailer, MASTER, UID, 3, True)


def test_the_locked_trailer_freezes_the_purse_for_every_key():
    trailer = L.sector_trailer(MASTER, UID, 5, locked=True)
    conditions = mifare.decode_access_bits(trailer[6:9])
    for block_condition in conditions[:3]:
        rules = mifare.DATA_CONDITIONS[block_condition]
        assert rules[mifare.READ] == mifare.AB
        assert rules[mifare.WRITE] == rules[mifare.INCREMENT] == rules[mifare.DECREMENT] == mifare.NEVER
    rules = mifare.TRAILER_CONDITIONS[conditions[3]]
    assert rules[mifare.KEY_A_WRITE] == rules[mifare.ACCESS_WRITE] == rules[mifare.KEY_B_WRITE] == mifare.NEVER
    assert rules[mifare.KEY_B_READ] == mifare.NEVER      # key B still authenticates: the purse stays readable
    assert L.trailer_locked(_as_read(trailer))
    assert not L.trailer_locked(_as_read(L.sector_trailer(MASTER, UID, 5)))
    assert not L.trailer_locked(bytes(16)) and not L.trailer_locked(None)


def _lock_until_done(card, purse=L.MAIN_PURSE, cut_after=None):
    """Plan the lock from the card's state and write it, cut after `cut_after` steps; -> (card, steps)."""
    spec = L.PURSES[purse]
    trailers = tuple(_as_read(card[mifare.trailer_block(spec.sector(copy))])
                     if mifare.trailer_block(spec.sector(copy)) in card else None
                     for copy in (L.MAIN_COPY, L.BACKUP_COPY))
    steps = L.lock_plan(*_blocks(card, purse), MASTER, UID, purse=purse, trailers_read=trailers)
    return _apply(card, steps[:cut_after] if cut_after is not None else steps), steps


def test_a_lock_torn_anywhere_keeps_the_balance_and_finishes_next_time():
    for start in _torn_starts():
        before = _read(start)
        repair_steps = 0 if before[2] == L.OK else 2
        _, steps = _lock_until_done(start)
        for done in range(len(steps) + 1):
            cut, _ = _lock_until_done(start, cut_after=done)
            assert _read(cut)[:2] == before[:2]
            locked = L.inspect_purse(*_blocks(cut, L.MAIN_PURSE)).locked
            assert locked == (done >= repair_steps + (0 if repair_steps else 1)), (done, before)
            if locked:
                raises(L.LegacyCardError, L.write_plan, *_blocks(cut, L.MAIN_PURSE), 100)   # no old spend
            if done < len(steps) and not mifare.is_trailer(steps[done][0]):
                block, data = steps[done]
                for torn in _torn_variants(cut.get(block), data):
                    assert _read(_apply(cut, [(block, torn)]))[:2] == before[:2]
            finished, rest = _lock_until_done(cut)
            assert _read(finished) == (before[0], before[1], L.OK)
            assert L.inspect_purse(*_blocks(finished, L.MAIN_PURSE)).locked
            assert all(L.trailer_locked(_as_read(finished[mifare.trailer_block(sector)])) for sector in (4, 5))
            assert _lock_until_done(finished)[1] == []
            assert len(rest) <= len(steps) - done + repair_steps


def test_a_clean_lock_writes_flags_then_trailers():
    clean = _card(L.MAIN_PURSE, 5000, 10)
    locked, steps = _lock_until_done(clean)
    assert [block for block, _ in steps] == [21, 17, 19, 23]
    assert _read(locked) == (5000, 10, L.OK) and L.inspect_purse(*_blocks(locked, L.MAIN_PURSE)).locked
    assert not L.inspect_purse(*_blocks(clean, L.MAIN_PURSE)).locked
    unreadable = _apply(clean, [(16, bytes(16)), (21, bytes(16))])
    raises(L.LegacyCardError, L.lock_plan, *_blocks(unreadable, L.MAIN_PURSE), MASTER, UID)


def test_issue_plan_writes_a_readable_card():
    identity = L.OldIdentity(20230001, "2023010001", L.STUDENT, 20270701)
    plan = L.issue_plan(MASTER, UID, identity, _unhex("c0eecbc4"), {L.MAIN_PURSE: (12050, 31),
                                                                     L.WATER_PURSE: (860, 12)})
    assert [sector for sector, _ in plan] == [3, 4, 5, 6, 7]
    card = {}
    for sector, writes in plan:
        assert writes[-1][0] == mifare.trailer_block(sector)          # keys change last
        assert all(mifare.sector_of(block) == sector for block, _ in writes)
        card = _apply(card, writes)
    assert L.decode_identity(card[L.IDENTITY_BLOCK]) == identity
    assert L.decode_name(card[L.NAME_BLOCK]) == _unhex("c0eecbc4")
    assert _read(card) == (12050, 31, L.OK)
    assert _read(card, L.WATER_PURSE) == (860, 12, L.OK)
    assert card[mifare.trailer_block(4)] == L.sector_trailer(MASTER, UID, 4)
    raises(L.LegacyCardError, L.issue_plan, MASTER, UID, identity, b"", {L.MAIN_PURSE: (1, 0)})
