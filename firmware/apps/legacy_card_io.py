"""The activation unit's card steps on an old-system card, through any Reader and a key holder.

At go-live an old card (firmware/core/legacy_card.py: the money on the card) is activated in one tap,
in the order the activation machine (firmware/core/activation.py) asks for:

    read_old_card   old key A: identity (sector 3), both copies of both purses with their trailers
                    (sectors 4-7); then the new layout's sectors 1-2: blank, half written or done
                    -> activation.OldCardView
    lock_purses     old key B: the purses read again, then legacy_card.lock_plan for the main and the
                    water purse, one block per command, trailers last
    write_identity  the new identity (card_layout.issue_plan) into sectors 1 and 2, trailer last in each

Which key does what (legacy_card's access bits; key B is never readable, so it always authenticates):

    purse sector   data blocks                      trailer
    before lock    110/100: read A|B, write B       011: access bits read A|B, keys and bits written B
    after lock     010: read A|B, no write          110: access bits read A|B, nothing ever written
    identity (3)   100: read A|B, write B           011

So key A reads everything the steps need (the trailer read shows its access bits, keys as zeros) before
and after the lock, and key B both reads and writes while locking.

Why every step is tear-safe, whatever command the card leaves at (CardGone):

* Reading writes nothing.
* The lock is planned from what the card holds at that moment, read in the same selection just before
  the first write, and legacy_card.lock_plan keeps the balance the same after every prefix of its
  writes: a repaired copy before any flag, the flags before the trailers, a frozen trailer never written
  again. Run again after a pull, it plans the rest; once both trailers are frozen it plans nothing.
* A new-layout sector's trailer is written last, so a sector still under the transport key is at most
  part written and gets its whole plan again; a sector under our keys is complete. Sector 1 under our
  keys is checked instead of written: it must carry the very identity being written.

A failed authentication halts a MIFARE card, so every "try this key, else that one" polls the card
again (same UID, else CardGone) before the second try, as card_io does.

Errors are the reader's (CardGone, AuthenticationError, CardNak, ReaderError) or
card_layout.CardFormatError (not an old card of this campus, damaged, or another identity already on
it); `failure_reason` maps them to activation.FAILURE_*.

Limits: the `sim:` card writes a block whole; a real card torn inside a trailer write can lose that
sector for good (its keys half written). The lock writes each purse's two trailers one after the other,
so such a card still holds the locked balance in the other copy, for the old card centre to read.
"""
from firmware.core import activation, card_layout, legacy_card, mifare
from reader_drivers.base import AuthenticationError, CardGone

_REPOLL_TIMEOUT_MS = 200   # the card just answered, so it is still in front of the reader


class CardChanged(CardGone):
    """The purses no longer hold what the read step saw (another writer since, or another card with
    the same UID): nothing was written; tap again and the next tap reads afresh."""


def failure_reason(error):
    """An exception of these steps -> activation.FAILURE_* (as pos_terminal maps card_io's errors)."""
    if isinstance(error, CardGone):
        return activation.FAILURE_GONE
    if isinstance(error, (card_layout.CardFormatError, legacy_card.LegacyCardError)):
        return activation.FAILURE_FORMAT
    if isinstance(error, AuthenticationError):
        return activation.FAILURE_AUTH
    return activation.FAILURE_READER


# --- shared helpers ---------------------------------------------------------------------------------

def _require_classic_1k(target):
    if not target.is_mifare_classic_1k or len(target.uid) not in (4, 7):
        raise card_layout.CardFormatError("不是旧系统卡片 / not a MIFARE Classic 1K card (SAK %02x, %d-byte UID)"
                                          % (target.sak, len(target.uid)))


def _reselect(reader, target):
    """Select the card again after a refused key halted it; CardGone when it is not the same card."""
    again = reader.poll(_REPOLL_TIMEOUT_MS)
    if again is None or again.uid != target.uid:
        raise CardGone("卡片已移开 / the card left while being worked on")


def _authenticate_first(reader, target, sector, candidates):
    """Authenticate `sector` with the first of candidates [(key_type, key), ...] the card takes -> its
    index. The card is selected again before each further try; all refused: the first refusal."""
    refusal = None
    for index, (key_type, key) in enumerate(candidates):
        if index:
            _reselect(reader, target)
        try:
            reader.authenticate(mifare.trailer_block(sector), key_type, key)
            return index
        except AuthenticationError as refused:
            refusal = refusal or refused
    raise refusal


def _old_key(old_master_key, uid, sector, key_type):
    return legacy_card.sector_key(old_master_key, uid, sector, key_type)


def _read_purse_sectors(reader, old_master_key, uid, key_type):
    """Sectors 4-7, one authentication each -> {block: 16 bytes} of every value, record and trailer."""
    blocks = {}
    for sector in legacy_card.PURSE_SECTORS:
        reader.authenticate(mifare.trailer_block(sector), key_type, _old_key(old_master_key, uid, sector, key_type))
        first = sector * mifare.BLOCKS_PER_SECTOR
        for block in (first, first + 1, mifare.trailer_block(sector)):
            blocks[block] = reader.read_block(block)
    return blocks


def _purse_blocks(blocks, purse):
    """(main value, main record, backup value, backup record) of one purse, read_purse's order."""
    return [blocks[block] for block in legacy_card.PURSES[purse].blocks()]


def _purse_trailers(blocks, purse):
    spec = legacy_card.PURSES[purse]
    return (blocks[mifare.trailer_block(spec.main_sector)], blocks[mifare.trailer_block(spec.backup_sector)])


def _purse_view(blocks, purse):
    """The rule's verdict as activation.PurseView; locked only when a copy carries the lock flag AND
    both trailers are frozen, so a half-locked purse is locked to the end at this tap."""
    reading = legacy_card.inspect_purse(*_purse_blocks(blocks, purse), purse=purse)
    trailers = _purse_trailers(blocks, purse)
    frozen = legacy_card.trailer_locked(trailers[0]) and legacy_card.trailer_locked(trailers[1])
    return activation.purse_view(reading)._replace(locked=reading.locked and frozen)


def _read_new_identity(reader, sam, uid):
    """Sector 1 authenticated with our key A: read and check it -> (Identity, name)."""
    identity_block = reader.read_block(card_layout.IDENTITY_BLOCK)
    mac_block = reader.read_block(card_layout.MAC_BLOCK)
    name_block = reader.read_block(card_layout.NAME_BLOCK)
    return card_layout.verify_card(sam, uid, identity_block, mac_block, name_block)


# --- 1. read ----------------------------------------------------------------------------------------

def read_old_card(reader, old_master_key, sam, target):
    """Read an old card -> activation.OldCardView(uid, old_identity, main, water, new_identity).

    Refused: not a Classic 1K with a 4/7-byte UID, sector 3 under the transport key (a blank or a
    new-system card) or an identity block that does not decode (CardFormatError: FAILURE_FORMAT);
    sector 3 refusing both our old key A and the transport key (another campus: AuthenticationError,
    FAILURE_AUTH). An unreadable purse is no error: its state says so and the machine refuses it.
    sam: any key holder with card_key_a and card_mac (the new identity's MAC is checked).
    """
    _require_classic_1k(target)
    uid = target.uid
    sector = legacy_card.IDENTITY_SECTOR
    if _authenticate_first(reader, target, sector, [(mifare.A, _old_key(old_master_key, uid, sector, mifare.A)),
                                                    (mifare.A, mifare.TRANSPORT_KEY)]):
        raise card_layout.CardFormatError("不是旧系统卡片（第3扇区为出厂密钥）/ not an old-system card: sector 3 "
                                          "still has the transport key")
    try:
        old_identity = legacy_card.decode_identity(reader.read_block(legacy_card.IDENTITY_BLOCK))
    except legacy_card.LegacyCardError as error:
        raise card_layout.CardFormatError("旧卡身份块损坏 / old identity block unusable: %s" % error)
    blocks = _read_purse_sectors(reader, old_master_key, uid, mifare.A)
    return activation.OldCardView(uid, old_identity, _purse_view(blocks, legacy_card.MAIN_PURSE),
                                  _purse_view(blocks, legacy_card.WATER_PURSE), new_identity(reader, sam, target))


def new_identity(reader, sam, target):
    """The new layout on this card: card_layout.Identity when both sectors are under our keys and the
    MAC verifies; None while sector 1 or 2 is still under the transport key (blank, or written in part:
    write_identity finishes it). A sector refusing both keys: AuthenticationError; a bad MAC:
    CardFormatError."""
    uid = target.uid
    ours = (mifare.A, sam.card_sector_key(uid, card_layout.IDENTITY_SECTOR, mifare.A))
    blank = (mifare.A, mifare.TRANSPORT_KEY)
    # At go-live sector 1 is nearly always blank: the transport key first saves a re-poll.
    if _authenticate_first(reader, target, card_layout.IDENTITY_SECTOR, [blank, ours]) == 0:
        return None
    identity, _name = _read_new_identity(reader, sam, uid)
    ours = (mifare.A, sam.card_sector_key(uid, card_layout.COUNTER_SECTOR, mifare.A))
    if _authenticate_first(reader, target, card_layout.COUNTER_SECTOR, [ours, blank]) == 1:
        return None
    return identity


# --- 2. lock ----------------------------------------------------------------------------------------

def lock_purses(reader, old_master_key, target, expected=None):
    """Lock the main and the water purse for good (legacy_card.lock_plan, key B) -> blocks written.

    The purses are read again here with key B, in this selection, and planned from what they hold
    now; nothing is written before both are planned. expected: the OldCardView of this tap's read;
    when given, a purse whose balance, counter or state differs from it raises CardChanged before any
    write (the machine journals the amounts it read, so they must be the ones locked). 0 written: both
    were locked already. A torn purse is repaired to the balance the old rule reads.
    """
    _require_classic_1k(target)
    uid = target.uid
    if expected is not None and expected.uid != uid:
        raise CardChanged("不是刚读过的卡片 / not the card just read")
    blocks = _read_purse_sectors(reader, old_master_key, uid, mifare.B)
    steps = []
    for purse in (legacy_card.MAIN_PURSE, legacy_card.WATER_PURSE):
        if expected is not None:
            seen = _purse_view(blocks, purse)[:3]
            wanted = (expected.main if purse == legacy_card.MAIN_PURSE else expected.water)[:3]
            if seen != wanted:
                raise CardChanged("钱包已变化，请重新刷卡 / purse %d changed since it was read: tap again" % purse)
        try:
            steps += legacy_card.lock_plan(*_purse_blocks(blocks, purse), master_key=old_master_key, uid=uid,
                                           purse=purse, trailers_read=_purse_trailers(blocks, purse))
        except legacy_card.LegacyCardError as error:
            raise card_layout.CardFormatError(str(error))
    _write_with_key_b(reader, old_master_key, uid, steps, legacy_card.PURSE_SECTORS[-1])
    return len(steps)


def _write_with_key_b(reader, old_master_key, uid, steps, authenticated_sector):
    """Write [(block, data), ...] in order, authenticating with the sector's old key B whenever the
    block's sector is not the one authenticated (authenticated_sector: the one the card holds now)."""
    sector = authenticated_sector
    for block, data in steps:
        if mifare.sector_of(block) != sector:
            sector = mifare.sector_of(block)
            reader.authenticate(mifare.trailer_block(sector), mifare.B, _old_key(old_master_key, uid, sector, mifare.B))
        reader.write_block(block, data)


# --- 3. write the new identity ----------------------------------------------------------------------

def write_identity(reader, sam, target, identity, name):
    """Write the new identity and tap counter (card_layout.issue_plan) into sectors 1 and 2, resuming a
    write a pull cut short; returns the sectors written.

    A sector under the transport key gets its whole plan (data, then trailer). Sector 1 already under
    our keys must carry `identity` (else CardFormatError: another identity is on the card, refused,
    nothing written); sector 2 under our keys is complete. A sector refusing both keys:
    AuthenticationError. sam: the issuer's key holder (card_key_a, card_key_b and card_mac).
    """
    _require_classic_1k(target)
    uid = target.uid
    written = []
    for sector, writes in card_layout.issue_plan(sam, uid, identity, name):
        candidates = [(mifare.A, mifare.TRANSPORT_KEY), (mifare.A, sam.card_sector_key(uid, sector, mifare.A))]
        if _authenticate_first(reader, target, sector, candidates) == 0:
            for block, data in writes:   # the plan puts the trailer last: keys change after the data
                reader.write_block(block, data)
            written.append(sector)
        elif sector == card_layout.IDENTITY_SECTOR:
            on_card, _name = _read_new_identity(reader, sam, uid)
            if on_card != identity:
                raise card_layout.CardFormatError("卡上已有另一身份，拒绝激活 / the card already carries another "
                                                  "identity (%r): refused" % (on_card,))
    return written

