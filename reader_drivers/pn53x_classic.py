"""MIFARE Classic through a PN53x chip's InDataExchange, shared by the `pn532:` and `nfcpy:` drivers.

Both drivers reach the card the same way: the chip wraps the MIFARE command (MF1S50yyX/V1 section 9)
in InDataExchange (PN532 User Manual UM0701-02 section 7.3.8) and answers with a status byte (section
7.1, table 15). They differ only in how a frame reaches the chip, so a driver mixes `Pn53xClassic` in
and provides `_target` (the selected Target or None) and

    _data_exchange(mifare_command, operation, changes_card, repeatable) -> (status, data)

`changes_card` / `repeatable` tell a transport that can resend which commands it may run twice (a
sector-trailer write never: it may change the very keys that allowed it).
"""
from firmware.core import mifare, pn532_frames as frames
from reader_drivers.base import AuthenticationError, CardGone, CardNak, ReaderError, UnsupportedOperation

# Status bytes that mean the card did not (or no longer) answer: treated as "the card left".
CARD_GONE_STATUS = frozenset((frames.STATUS_TIMEOUT, frames.STATUS_CRC, frames.STATUS_PARITY, 0x0B,
                              frames.STATUS_FORMAT, frames.STATUS_NOT_ACCEPTABLE, frames.STATUS_RELEASED,
                              frames.STATUS_CARD_EXCHANGED, frames.STATUS_CARD_DISAPPEARED))


def parse_answer(parse, params, operation):
    """parse(params) from firmware.core.pn532_frames, with a malformed answer (its CommandError, which
    the sans-IO core cannot make a reader error) raised as the shared ReaderError."""
    try:
        return parse(params)
    except frames.CommandError as error:
        raise ReaderError("读卡器应答格式错误 / the PN532's answer to %s is malformed: %s" % (operation, error))


def status_error(code, operation):
    """The shared reader exception for a non-zero PN53x status byte during `operation`."""
    detail = "%s (PN532 status 0x%02X: %s)" % (operation, code, frames.status_text(code))
    if code == frames.STATUS_MIFARE_AUTHENTICATION:
        return AuthenticationError("密钥认证失败 / authentication failed: %s" % detail)
    if code == frames.STATUS_MIFARE_FRAMING:
        return CardNak("卡片拒绝操作 / card NAK: %s" % detail)
    if code in CARD_GONE_STATUS:
        return CardGone("卡片已移开 / the card did not answer: %s" % detail)
    return ReaderError("读卡器错误 / reader error: %s" % detail)


class Pn53xClassic:
    """The MIFARE Classic half of the Reader interface over a PN53x."""

    _target = None

    def authenticate(self, block, key_type, key):
        target = self._selected()
        if len(target.uid) not in (4, 7):
            # Authentication binds to a 4-byte NUID or a 7-byte UID (AN10927); a 10-byte UID card
            # is no MIFARE Classic, whatever its SAK claims.
            raise UnsupportedOperation("不支持此卡 / MIFARE Classic authentication needs a 4- or 7-byte UID, "
                                       "not %d bytes" % len(target.uid))
        self._exchange(frames.mifare_authenticate(block, key_type, bytes(key), target.uid), "authenticate %d" % block)

    def read_block(self, block):
        data = self._exchange(frames.mifare_read(block), "read %d" % block)
        if len(data) != mifare.BLOCK_SIZE:
            raise ReaderError("读块应答长度错误 / read of block %d returned %d bytes" % (block, len(data)))
        return data

    def write_block(self, block, data):
        self._exchange(frames.mifare_write(block, bytes(data)), "write %d" % block, changes_card=True,
                       repeatable=not mifare.is_trailer(block))

    def increment(self, block, delta):
        self._exchange(frames.mifare_increment(block, delta), "increment %d" % block, changes_card=True)

    def decrement(self, block, delta):
        self._exchange(frames.mifare_decrement(block, delta), "decrement %d" % block, changes_card=True)

    def restore(self, block):
        self._exchange(frames.mifare_restore(block), "restore %d" % block, changes_card=True)

    def transfer(self, block):
        self._exchange(frames.mifare_transfer(block), "transfer %d" % block, changes_card=True)

    def _selected(self):
        if self._target is None:
            raise CardGone("没有选中的卡片，请重新寻卡 / no card is selected: poll first")
        return self._target

    def _exchange(self, mifare_command, operation, changes_card=False, repeatable=True):
        self._selected()
        code, data = self._data_exchange(mifare_command, operation, changes_card, repeatable)
        if code == frames.STATUS_OK:
            return data
        # Every failure leaves the card halted or gone: the next command needs a poll.
        self._target = None
        raise status_error(code, operation)
