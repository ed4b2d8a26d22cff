"""The card steps terminals and the service hall perform, through any Reader and a key holder.

This is the shell's I/O, not its decisions: issue a blank card, read and check a card, count one
tap. Layout and MAC rules live in `firmware.core.card_layout`; keys come only from the key holder
(`firmware.core.sam`). Errors are the reader's (`CardGone`, `AuthenticationError`, `ReaderError`)
or the layout's (`CardFormatError`), so the terminal core can map each to a prompt.

Limits: a card torn in the middle of issuing (one sector written, the other still blank) is
neither blank nor valid; re-issuing it needs a recovery step that does not exist yet.
"""
from collections import namedtuple

from firmware.core import card_layout, mifare
from reader_drivers.base import AuthenticationError, CardGone

CardView = namedtuple("CardView", ("uid", "identity", "name", "tap_counter"))

_REPOLL_TIMEOUT_MS = 200   # the card just answered, so it is still in front of the reader


class CardNotBlank(Exception):
    """Issuing refused: the card already carries keys or data."""


class TapNotCounted(card_layout.CardFormatError):
    """The tap counter read back is not the one just counted (another writer or a broken card)."""


def issue_card(reader, sam, target, identity, name):
    """Write a new card's identity and tap counter to a blank card (service hall).

    Checks every sector of the plan is blank before writing any, so a used card is refused whole.
    """
    plan = card_layout.issue_plan(sam, target.uid, identity, name)
    for sector, _writes in plan:
        _require_blank_sector(reader, target, sector)
    for sector, writes in plan:
        reader.authenticate(mifare.trailer_block(sector), mifare.A, mifare.TRANSPORT_KEY)
        for block, data in writes:   # the plan puts the trailer last: keys change after the data
            reader.write_block(block, data)


def require_blank(reader, target):
    """Refuse (CardNotBlank) a card whose identity or counter sector is not factory-fresh."""
    for sector in (card_layout.IDENTITY_SECTOR, card_layout.COUNTER_SECTOR):
        _require_blank_sector(reader, target, sector)


def _require_blank_sector(reader, target, sector):
    try:
        reader.authenticate(mifare.trailer_block(sector), mifare.A, mifare.TRANSPORT_KEY)
    except AuthenticationError:
        raise CardNotBlank("不是空白卡（第%d扇区密钥已更改），拒绝发卡 / card %s is not blank: sector %d "
                           "keys were changed" % (sector, target.uid.hex(), sector))
    trailer = reader.read_block(mifare.trailer_block(sector))
    data_blocks = range(sector * mifare.BLOCKS_PER_SECTOR, mifare.trailer_block(sector))
    if trailer[6:9] != mifare.TRANSPORT_ACCESS or any(reader.read_block(block) != bytes(16) for block in data_blocks):
        raise CardNotBlank("不是空白卡（第%d扇区已有数据），拒绝发卡 / card %s is not blank: sector %d holds "
                           "data or access bits" % (sector, target.uid.hex(), sector))


def read_card(reader, sam, target):
    """Read and check a new-system card -> CardView(uid, identity, name, tap_counter).

    It ends with the counter sector authenticated (key A), which count_tap can go on from.
    """
    if not target.is_mifare_classic_1k or len(target.uid) not in (4, 7):
        raise card_layout.CardFormatError("不是本系统卡片 / not a MIFARE Classic 1K card (SAK %02x, %d-byte UID)"
                                          % (target.sak, len(target.uid)))
    uid = target.uid
    _authenticate_or_explain(reader, target, card_layout.IDENTITY_SECTOR,
                             sam.card_sector_key(uid, card_layout.IDENTITY_SECTOR, mifare.A))
    identity_block = reader.read_block(card_layout.IDENTITY_BLOCK)
    mac_block = reader.read_block(card_layout.MAC_BLOCK)
    name_block = reader.read_block(card_layout.NAME_BLOCK)
    identity, name = card_layout.verify_card(sam, uid, identity_block, mac_block, name_block)
    reader.authenticate(card_layout.COUNTER_BLOCK, mifare.A,
                        sam.card_sector_key(uid, card_layout.COUNTER_SECTOR, mifare.A))
    tap_counter = _read_tap_counter(reader)
    return CardView(uid, identity, name, tap_counter)


def _authenticate_or_explain(reader, target, sector, key):
    """Authenticate with our key; when that fails, tell a blank card (transport key) from a foreign one."""
    try:
        reader.authenticate(mifare.trailer_block(sector), mifare.A, key)
        return
    except AuthenticationError as refused:
        foreign = refused
    # The failed authentication halted the card: select it again to try the transport key.
    again = reader.poll(_REPOLL_TIMEOUT_MS)
    if again is None or again.uid != target.uid:
        raise CardGone("卡片已移开 / the card left while being read")
    try:
        reader.authenticate(mifare.trailer_block(sector), mifare.A, mifare.TRANSPORT_KEY)
    except AuthenticationError:
        raise foreign
    raise card_layout.CardFormatError("空白卡，尚未发卡 / blank card: not issued yet")


def _read_tap_counter(reader):
    try:
        value, address = mifare.decode_value_block(reader.read_block(card_layout.COUNTER_BLOCK))
    except mifare.FormatError as error:
        raise card_layout.CardFormatError("计数块损坏 / tap counter block is corrupted: %s" % error)
    if address != card_layout.COUNTER_BLOCK:
        raise card_layout.CardFormatError("计数块地址错误 / tap counter block carries address %d" % address)
    return card_layout.tap_counter_from_value(value)


def count_tap(reader, sam, target, expected_tap_counter, authenticated=False):
    """Count one tap on the card -> the new tap counter (expected_tap_counter + 1).

    authenticated: read_card on this very selection of the card was the last thing sent to the reader
    (no poll, no other command since), so the counter sector is still authenticated - the card and
    the reader keep that until another authentication, a halt, a re-selection or the card leaving -
    and one authentication round trip is saved. When in doubt pass False: a card that lost the
    state while this is True answers the decrement with a NAK or not at all, and the tap fails.

    CardGone means the card left and the outcome is unknown: the counter may or may not have moved.
    The caller asks the cardholder to tap again and charges nothing for this attempt.
    """
    if not authenticated:
        reader.authenticate(card_layout.COUNTER_BLOCK, mifare.A,
                            sam.card_sector_key(target.uid, card_layout.COUNTER_SECTOR, mifare.A))
    # The value block counts down (access 001 allows only decrement), see card_layout.
    reader.decrement(card_layout.COUNTER_BLOCK, 1)
    reader.transfer(card_layout.COUNTER_BLOCK)
    tap_counter = _read_tap_counter(reader)
    if tap_counter != expected_tap_counter + 1:
        raise TapNotCounted("计数异常，请重新刷卡 / tap counter is %d, expected %d"
                            % (tap_counter, expected_tap_counter + 1))
    return tap_counter
