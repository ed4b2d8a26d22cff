"""`pcsc:` - ACR122U-class contactless readers through pcscd, with pyscard.

    open_reader("pcsc:")           the first reader pcscd lists
    open_reader("pcsc:ACR122")     the first reader whose name contains "ACR122" (any case;
                                   the text may be %-quoted, e.g. "pcsc:Virtual%20PCD%2000%2001")

Layers: pcscd and the reader's driver carry the APDUs (transport); this module builds the PC/SC
Part 3 storage-card pseudo-APDUs (CLA FF) and maps their status words (chip); `PcscReader` gives them
the reader interface of `reader_drivers.base` (device).

    feature                           pcsc:  how
    --------------------------------  -----  ---------------------------------------------------------
    ISO 14443-A poll + select         yes    SCardGetStatusChange, then connect / reconnect with
                                             reset (the reader activates the card again, waking a
                                             halted one); UID from Get Data FF CA (Part 3 3.2.2.1.3)
    ATQA / SAK                        from   SAK from the card name in the ATR (Part 3 supplement:
                                      ATR    00 01 Classic 1K, 00 02 4K, 00 26 Mini, FF xx = SAK xx);
                                             ATQA from the UID length (PC/SC does not show it)
    authenticate A / B                yes    Load Keys FF 82 into volatile slot 0 (A) / 1 (B), cached
                                             per connection, then General Authenticate FF 86 (3.2.2.1.6)
    read / write                      yes    Read Binary FF B0 / Update Binary FF D6, one block
    increment / decrement + transfer  yes    the ACR122U value operation FF D7 does the change and the
                                             transfer to the same block in one APDU, so the change is
                                             held back and sent by transfer(); transfer to another
                                             block is UnsupportedOperation
    restore + transfer                yes    ACR122U restore value block FF D7 .. 02 03 <target>
    release (HALT)                    yes    disconnect with reset: the next poll selects it anew
    several cards, 4K sector keys     no

Status words (ACR122U API): 63 00, 69 81, 69 82 or 69 86 after General Authenticate ->
AuthenticationError, after any other card command -> CardNak; 6A 81 -> UnsupportedOperation; anything
else -> ReaderError (also any refusal of Load Keys). pcscd's "card removed" / "not transacted" / "no
card", and an answer without a status word -> CardGone, after which the connection is dropped and
the next poll starts over.

Semantics follow the other drivers: after AuthenticationError or CardNak the card answers nothing until
polled again; a card that left during a command raises CardGone and its outcome is unknown. The
connection is exclusive: the reader's key slots belong to this terminal while it runs.
"""
import struct
import time
import urllib.parse

from firmware.core import mifare
from reader_drivers.base import (AuthenticationError, CardGone, CardNak, Reader, ReaderError, ReaderTimeout,
                                 Target, UnsupportedOperation, register_scheme)

try:
    from smartcard import scard
except ImportError as error:   # the scheme registry reports this as "driver not available"
    raise ImportError("pyscard is not installed (make test installs it): %s" % error)

SUPPORTS = frozenset(("iso14443a", "mifare_classic_1k", "authenticate", "read", "write", "increment",
                      "decrement", "restore", "transfer", "release"))

SW_OK = 0x9000
SW_FAILED = 0x6300
SW_NOT_SUPPORTED = 0x6A81
SW_CARD_REFUSED = (0x6981, 0x6982, 0x6986)

KEY_TYPE_CODES = {mifare.A: 0x60, mifare.B: 0x61}
KEY_SLOT = {mifare.A: 0, mifare.B: 1}

VALUE_INCREMENT = 0x01
VALUE_DECREMENT = 0x02
VALUE_RESTORE = 0x03

# Part 3 supplement, card names in the ATR of a contactless storage card -> the SAK they stand for.
_CARD_NAME_SAK = {0x0001: 0x08, 0x0002: 0x18, 0x0026: 0x09}
_ATR_RID = bytes.fromhex("a000000306")
_ATQA_BY_UID_LENGTH = {4: 0x0004, 7: 0x0044}

# pcscd answers meaning the card is not there (any more) or its answer was lost.
_CARD_GONE = frozenset(code for code in (
    getattr(scard, "SCARD_W_REMOVED_CARD", None), getattr(scard, "SCARD_E_NO_SMARTCARD", None),
    getattr(scard, "SCARD_E_NOT_TRANSACTED", None), getattr(scard, "SCARD_W_UNPOWERED_CARD", None),
    getattr(scard, "SCARD_W_UNRESPONSIVE_CARD", None), getattr(scard, "SCARD_W_RESET_CARD", None),
    getattr(scard, "SCARD_E_COMM_DATA_LOST", None)) if code is not None)
_NO_SERVICE = frozenset(code for code in (
    getattr(scard, "SCARD_E_NO_SERVICE", None), getattr(scard, "SCARD_E_SERVICE_STOPPED", None))
    if code is not None)
_READER_GONE = frozenset(code for code in (
    getattr(scard, "SCARD_E_UNKNOWN_READER", None), getattr(scard, "SCARD_E_READER_UNAVAILABLE", None))
    if code is not None)

_MAX_WAIT_SLICE_MS = 1000   # status waits are sliced, so a reader unplugged meanwhile is noticed


def _hex(data):
    return bytes(data).hex()


def _error_text(result):
    try:
        return scard.SCardGetErrorMessage(result)
    except Exception:   # pyscard builds without the message table
        return "0x%08X" % (result & 0xFFFFFFFF)


def _raise_for(result, doing):
    """Turn a pcscd result code into the reader interface's exceptions."""
    if result == scard.SCARD_S_SUCCESS:
        return
    text = _error_text(result)
    if result in _CARD_GONE:
        raise CardGone("卡片已移开 / the card left during %s: %s" % (doing, text))
    if result == scard.SCARD_E_TIMEOUT:
        raise ReaderTimeout("读卡器无应答 / the reader did not answer during %s" % doing)
    if result in _NO_SERVICE:
        raise ReaderError("PC/SC 服务未运行 / pcscd is not running: %s" % text)
    if result in _READER_GONE:
        raise ReaderError("读卡器已断开 / the reader is gone: %s" % text)
    if result == getattr(scard, "SCARD_E_SHARING_VIOLATION", None):
        raise ReaderError("读卡器被其他程序占用 / another program holds the reader: %s" % text)
    raise ReaderError("读卡器错误 / PC/SC error during %s: %s" % (doing, text))


def list_readers():
    """Names of the readers pcscd knows now ([] when there are none); ReaderError without pcscd."""
    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    _raise_for(result, "connecting to pcscd")
    try:
        result, readers = scard.SCardListReaders(context, [])
        if result == getattr(scard, "SCARD_E_NO_READERS_AVAILABLE", None):
            return []
        _raise_for(result, "listing readers")
        return list(readers)
    finally:
        scard.SCardReleaseContext(context)


def reader_name_filter(url):
    """"pcsc:ACR122" -> "ACR122"; "pcsc:" -> "" (any reader)."""
    scheme, _, rest = url.partition(":")
    assert scheme == "pcsc", url
    return urllib.parse.unquote(rest).strip()


def target_from(uid, atr):
    """A Target from the UID (Get Data) and the ATR the reader built (Part 3 supplement)."""
    atr = bytes(atr)
    sak = None
    # 3B 8F 80 01 | 80 4F 0C | RID(5) | SS | C0 C1 | RFU(4) | TCK
    if len(atr) == 20 and atr[4:7] == b"\x80\x4f\x0c" and atr[7:12] == _ATR_RID:
        (card_name,) = struct.unpack(">H", atr[13:15])
        sak = atr[14] if atr[13] == 0xFF else _CARD_NAME_SAK.get(card_name)
    if sak is None:
        sak = 0x00   # not a storage card we recognise: is_mifare_classic_1k will be False
    return Target(uid, _ATQA_BY_UID_LENGTH.get(len(uid), 0x0000), sak)


def load_keys_apdu(slot, key):
    assert slot in (0, 1) and len(key) == mifare.KEY_SIZE
    return bytes((0xFF, 0x82, 0x00, slot, 0x06)) + bytes(key)


def general_authenticate_apdu(block, key_type, slot):
    return bytes((0xFF, 0x86, 0x00, 0x00, 0x05, 0x01, 0x00, block, KEY_TYPE_CODES[key_type], slot))


def read_binary_apdu(block):
    return bytes((0xFF, 0xB0, 0x00, block, mifare.BLOCK_SIZE))


def update_binary_apdu(block, data):
    assert len(data) == mifare.BLOCK_SIZE
    return bytes((0xFF, 0xD6, 0x00, block, mifare.BLOCK_SIZE)) + bytes(data)


def value_apdu(block, operation, value):
    return bytes((0xFF, 0xD7, 0x00, block, 0x05, operation)) + struct.pack(">i", value)


def restore_apdu(source_block, target_block):
    return bytes((0xFF, 0xD7, 0x00, source_block, 0x02, VALUE_RESTORE, target_block))


GET_UID_APDU = bytes((0xFF, 0xCA, 0x00, 0x00, 0x00))


class PcscReader(Reader):
    supports = SUPPORTS

    def __init__(self, url="pcsc:"):
        self.url = url
        self._name_filter = reader_name_filter(url)
        result, self._context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        _raise_for(result, "connecting to pcscd")
        self._card = None          # SCARDHANDLE while connected
        self.atr = b""             # the ATR the reader built for the card last selected (for technicians)
        self._protocol = None
        self._loaded_keys = [None, None]
        self._pending_value = None   # (operation, block, delta), sent by transfer()
        try:
            self.reader_name = self._find_reader()
        except Exception:
            scard.SCardReleaseContext(self._context)
            raise

    def _find_reader(self):
        result, readers = scard.SCardListReaders(self._context, [])
        if result == getattr(scard, "SCARD_E_NO_READERS_AVAILABLE", None):
            readers = []
        else:
            _raise_for(result, "listing readers")
        wanted = self._name_filter.lower()
        for name in readers:
            if wanted in name.lower():
                return name
        raise ReaderError("找不到读卡器 %r / no PC/SC reader matches %r (pcscd lists: %s)"
                          % (self._name_filter, self._name_filter, ", ".join(readers) or "none"))

    # --- connection -----------------------------------------------------------------------------

    def _forget_session(self):
        self._loaded_keys = [None, None]
        self._pending_value = None

    def _drop_connection(self, disposition=None):
        card, self._card = self._card, None
        self._forget_session()
        if card is not None:
            scard.SCardDisconnect(card, scard.SCARD_LEAVE_CARD if disposition is None else disposition)

    def _card_present(self, timeout_ms):
        """Wait up to timeout_ms until pcscd reports a card (with an ATR) in our reader."""
        deadline = time.monotonic() + timeout_ms / 1000.0
        wait_ms = 0
        known_state = scard.SCARD_STATE_UNAWARE
        while True:
            result, states = scard.SCardGetStatusChange(self._context, wait_ms, [(self.reader_name, known_state)])
            if result != scard.SCARD_E_TIMEOUT:
                _raise_for(result, "waiting for a card")
                _name, event_state, _atr = states[0]
                if event_state & scard.SCARD_STATE_PRESENT and not event_state & scard.SCARD_STATE_MUTE:
                    return True
                known_state = event_state & ~scard.SCARD_STATE_CHANGED
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return False
            wait_ms = min(remaining_ms, _MAX_WAIT_SLICE_MS)

    def _connect(self):
        result, card, protocol = scard.SCardConnect(self._context, self.reader_name, scard.SCARD_SHARE_EXCLUSIVE,
                                                    scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        _raise_for(result, "connecting to the card")
        self._card, self._protocol = card, protocol
        self._forget_session()

    def _reselect(self):
        """Reconnect with reset: the reader activates the card again (a halted card wakes up)."""
        result, protocol = scard.SCardReconnect(self._card, scard.SCARD_SHARE_EXCLUSIVE,
                                                scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
                                                scard.SCARD_RESET_CARD)
        _raise_for(result, "selecting the card")
        self._protocol = protocol
        self._forget_session()

    def poll(self, timeout_ms):
        assert timeout_ms >= 0
        self._pending_value = None
        if self._card is not None and scard.SCardStatus(self._card)[0] != scard.SCARD_S_SUCCESS:
            # The card left since this handle was made (SCardStatus says "removed"). pcsc-lite's
            # SCardReconnect would still succeed on it, and pcscd then misses the next card's removal.
            self._drop_connection()
        if self._card is not None:
            try:
                self._reselect()
                return self._selected_target()
            except CardGone:
                self._drop_connection()
        if not self._card_present(timeout_ms):
            return None
        try:
            self._connect()
            self._reselect()
            return self._selected_target()
        except CardGone:
            self._drop_connection()
            return None

    def _selected_target(self):
        uid = self._transmit(GET_UID_APDU, "reading the UID")
        sw = self._last_sw
        if sw != SW_OK or len(uid) not in (4, 7, 10):
            raise ReaderError("读卡器未返回卡号 / the reader gave no UID (SW %04X, %d bytes)" % (sw, len(uid)))
        result, _name, _state, _protocol, atr = scard.SCardStatus(self._card)
        _raise_for(result, "reading the ATR")
        self.atr = bytes(atr)
        return target_from(bytes(uid), self.atr)

    # --- APDUs ----------------------------------------------------------------------------------

    def _transmit(self, apdu, doing):
        """Send one APDU -> its data; the status word is left in self._last_sw."""
        if self._card is None:
            raise CardGone("没有选中的卡片，请重新寻卡 / no card selected: poll first")
        result, response = scard.SCardTransmit(self._card, self._protocol, list(apdu))
        if result != scard.SCARD_S_SUCCESS:
            try:
                _raise_for(result, doing)
            except CardGone:
                self._drop_connection()
                raise
        if len(response) < 2:
            # No status word: the reader lost the card's answer (vpcd passes a hung-up card on as an
            # empty answer). The command may or may not have happened.
            self._drop_connection()
            raise CardGone("卡片已移开，结果未知 / no answer to %s (got %r): the card left" % (doing, _hex(response)))
        self._last_sw = (response[-2] << 8) | response[-1]
        return bytes(response[:-2])

    def _command(self, apdu, doing, refused=CardNak):
        """Send a card command; 63 00 means the card refused it (or never answered)."""
        data = self._transmit(apdu, doing)
        sw = self._last_sw
        if sw == SW_OK:
            return data
        self._pending_value = None
        if sw == SW_FAILED or sw in SW_CARD_REFUSED:
            raise refused("卡片拒绝操作 / the card refused %s (SW %04X)" % (doing, sw))
        if sw == SW_NOT_SUPPORTED:
            raise UnsupportedOperation("读卡器不支持 / the reader does not support %s (SW %04X)" % (doing, sw))
        raise ReaderError("读卡器错误 / the reader answered SW %04X to %s" % (sw, doing))

    # --- the reader interface -------------------------------------------------------------------

    def authenticate(self, block, key_type, key):
        if key_type not in KEY_TYPE_CODES or len(key) != mifare.KEY_SIZE:
            raise ValueError("key_type must be 'A' or 'B' and the key 6 bytes")
        self._pending_value = None
        slot = KEY_SLOT[key_type]
        key = bytes(key)
        if self._loaded_keys[slot] != key:
            self._loaded_keys[slot] = None
            self._command(load_keys_apdu(slot, key), "loading a key", refused=ReaderError)
            self._loaded_keys[slot] = key
        self._command(general_authenticate_apdu(block, key_type, slot), "authenticating block %d" % block,
                      refused=AuthenticationError)

    def read_block(self, block):
        data = self._command(read_binary_apdu(block), "reading block %d" % block)
        if len(data) != mifare.BLOCK_SIZE:
            raise ReaderError("读卡器返回 %d 字节 / the reader returned %d bytes for block %d"
                              % (len(data), len(data), block))
        return data

    def write_block(self, block, data):
        if len(data) != mifare.BLOCK_SIZE:
            raise ValueError("a block is 16 bytes")
        self._command(update_binary_apdu(block, data), "writing block %d" % block)

    def increment(self, block, delta):
        self._hold_value(VALUE_INCREMENT, block, delta)

    def decrement(self, block, delta):
        self._hold_value(VALUE_DECREMENT, block, delta)

    def _hold_value(self, operation, block, delta):
        if not 0 <= delta <= mifare.VALUE_MAX:
            raise ValueError("delta must be 0..%d" % mifare.VALUE_MAX)
        if self._card is None:
            raise CardGone("没有选中的卡片，请重新寻卡 / no card selected: poll first")
        # On the card the change only reaches the transfer buffer; the block changes on transfer.
        # The ACR122U does both in one APDU, so nothing is sent before transfer().
        self._pending_value = (operation, block, delta)

    def restore(self, block):
        self._hold_value(VALUE_RESTORE, block, 0)

    def transfer(self, block):
        pending, self._pending_value = self._pending_value, None
        if pending is None:
            raise CardNak("卡片拒绝操作 / nothing to transfer: no increment, decrement or restore first")
        operation, source_block, delta = pending
        if operation == VALUE_RESTORE:
            self._command(restore_apdu(source_block, block), "restoring block %d into %d" % (source_block, block))
            return
        if source_block != block:
            raise UnsupportedOperation("读卡器只能写回原块 / the ACR122U transfers a changed value only to its "
                                       "own block (%d, not %d)" % (source_block, block))
        self._command(value_apdu(block, operation, delta), "changing value block %d" % block)

    def release(self):
        self._pending_value = None
        if self._card is not None:
            self._drop_connection(scard.SCARD_RESET_CARD)

    def close(self):
        if self._context is None:
            return
        try:
            self._drop_connection()
        finally:
            scard.SCardReleaseContext(self._context)
            self._context = None

    def __repr__(self):
        return "PcscReader(%r -> %r)" % (self.url, self.reader_name)


register_scheme("pcsc", PcscReader)
