"""`nfcpy:` - PN53x readers found and opened by nfcpy, MIFARE Classic through the chip's InDataExchange.

    open_reader("nfcpy:usb")                          the first USB PN53x reader nfcpy knows
    open_reader("nfcpy:usb:072f:2200")                by vendor:product (nfcpy's usb:BUS:DEV also works)
    open_reader("nfcpy:tty:ttyUSB0")                  a PN532 on /dev/ttyUSB0
    open_reader("nfcpy:tty:/dev/pts/7?baud=115200")   a PN532 on any device path (the emulator's pty)
    open_reader("nfcpy:tty:USB0:pn532")               nfcpy's own path syntax, searched by nfcpy

nfcpy's tag layer cannot authenticate MIFARE Classic (it has no Crypto-1 and no Classic commands), so
this driver uses nfcpy for what it does well - finding the device, initialising the chip, sensing a
type A card - and sends the MIFARE commands itself through the chip's InDataExchange (PN532 User Manual
UM0701-02, 7.3.8), with the same command bytes and status table (section 7.1) as the pn532: serial driver
(`firmware.core.pn532_frames`).

    feature                           nfcpy:  notes
    --------------------------------  ------  ------------------------------------------------
    USB PN531 / PN533 / ACR122U /     yes     nfc.clf.device.connect finds them (usb, usb:VID:PID,
    RC-S956                                   usb:BUS:DEV); other nfcpy devices are refused
    PN532 on a serial line            yes     tty:<path or ttyXXX> opens it with nfcpy's TTY transport
                                              and PN532 driver; ?baud=N sets the line rate after
                                              nfcpy's own choice (it raises the rate on Linux)
    ISO 14443-A poll + select         yes     nfcpy's sense_tta, one card, 4/7-byte UIDs
    MIFARE Classic 1K                 yes     InDataExchange through nfcpy's chipset
    authenticate A / B                yes     failure halts the card: poll again
    read / write                      yes
    increment / decrement / restore   yes
    transfer                          yes
    release (HALT)                    yes     InRelease
    resend / NACK on a damaged frame  no      nfcpy reports it as an I/O error: ReaderError,
                                              and the next command needs a poll
    recovery after a reader reset     no      close and open the reader again

Errors, mapped like reader_drivers/pn532.py does:

    chipset status 0x01 timeout, RF errors, 0x27/0x29/0x2A/0x2B     CardGone
    chipset status 0x14 MIFARE authentication error                 AuthenticationError
    chipset status 0x05 framing error (the card's 4-bit NAK)        CardNak
    nfc.clf.TimeoutError, other nfc.clf.CommunicationError          CardGone
    IOError ETIMEDOUT (the chip did not answer in time)             ReaderTimeout
    any other IOError, syntax error frame, other status bytes       ReaderError

Limits: one reader per process at a time as nfcpy drives it (its methods are not thread-safe); no
second target; the card's own timeout is set like the pn532: driver's (12.8 ms) so a pulled card costs
the same on both.
"""
import errno
import os
import time
import urllib.parse

import nfc
import nfc.clf
import nfc.clf.device
import nfc.clf.pn532
import nfc.clf.pn53x
import nfc.clf.transport

from firmware.core import pn532_frames as frames
from reader_drivers import pn532 as pn532_driver
from reader_drivers.base import CardGone, Reader, ReaderError, ReaderTimeout, Target, register_scheme
from reader_drivers.pn53x_classic import Pn53xClassic, parse_answer, status_error

SUPPORTS = frozenset(("iso14443a", "mifare_classic_1k", "authenticate", "read", "write", "increment",
                      "decrement", "restore", "transfer", "release"))

# What the chip itself needs (nfcpy has no resend layer, so these are all the waiting there is).
COMMAND_TIMEOUT_MS = 100          # configuration commands answer at once
DATA_EXCHANGE_TIMEOUT_MS = 200    # worst MIFARE exchange: 10 ms card timeout + the chip's own timeout
DATA_EXCHANGE_TIMEOUT_S = DATA_EXCHANGE_TIMEOUT_MS / 1000.0
COMMAND_TIMEOUT_S = COMMAND_TIMEOUT_MS / 1000.0
# CIU_RxMode bit 7 (RxCRCEn): nfcpy turns it off after selecting a card that is neither ISO 14443-4
# nor NFC-DEP, because it reads Type 2 Tags raw through InCommunicateThru. MIFARE Classic answers
# carry a CRC_A that the chip must check and strip for InDataExchange, so it goes back on.
_RX_CRC_ENABLE = 0x80
_SAK_ISO14443_4_OR_DEP = 0x60
_MAX_POLL_ROUNDS = 10000          # bounds a poll even if the chip answered instantly for ever
# What nfcpy raises from its device, chipset and transports.
_NFCPY_ERRORS = (nfc.clf.Error, nfc.clf.pn53x.Chipset.Error, IOError, OSError)


def parse_url(url):
    """nfcpy:<path>[?baud=N] -> (kind, where, baud). kind "device": `where` is a device file that this
    driver opens with nfcpy's TTY transport; kind "search": `where` is an nfcpy path for
    nfc.clf.device.connect. baud is None unless given."""
    assert url.startswith("nfcpy:"), url
    path, _, query = url[len("nfcpy:"):].partition("?")
    options = urllib.parse.parse_qs(query)
    baud = None
    if "baud" in options:
        baud = int(options["baud"][0])
        if baud not in frames.SERIAL_BAUD_RATES:
            raise ReaderError("不支持的波特率 / the PN532 HSU has no %d baud rate" % baud)
    if not path:
        raise ReaderError("缺少读卡器路径 / nfcpy: needs a path such as nfcpy:usb or nfcpy:tty:ttyUSB0")
    if path.startswith("tty:"):
        device = path[len("tty:"):]
        if device.startswith("/"):
            return "device", device, baud
        if device.startswith("tty"):
            return "device", "/dev/" + device, baud
    if baud is not None and not path.startswith(("tty", "com")):
        raise ReaderError("波特率只适用于串口 / ?baud= applies to serial readers only, not %r" % path)
    return "search", path, baud


def _open_device(kind, where):
    """The nfcpy device for a parsed path, or ReaderError."""
    try:
        if kind == "device":
            # nfcpy's own tty: search only looks directly under /dev (not /dev/pts/); for a named
            # device file build what nfc.clf.device.connect builds once it found one.
            if not os.path.exists(where):
                raise ReaderError("找不到读卡器串口 / no such serial device: %s" % where)
            transport = nfc.clf.transport.TTY(where)
            try:
                device = nfc.clf.pn532.init(transport)
            except Exception:
                transport.close()
                raise
            device._path = where
            return device
        device = nfc.clf.device.connect(where)
    except ReaderError:
        raise
    except (IOError, OSError, ValueError) as error:
        raise ReaderError("无法打开读卡器 / nfcpy cannot open %s: %s" % (where, error))
    if device is None:
        raise ReaderError("找不到读卡器 / nfcpy found no reader on %r" % where)
    return device


class NfcpyReader(Pn53xClassic, Reader):
    supports = SUPPORTS

    def __init__(self, url="nfcpy:usb"):
        self.url = url
        kind, where, baud = parse_url(url)
        device = _open_device(kind, where)
        # A ContactlessFrontend around the device, for technicians' tools that speak nfcpy.
        self.frontend = nfc.ContactlessFrontend()
        self.frontend.device = device
        self._target = None
        if not isinstance(device, nfc.clf.pn53x.Device):
            self.close()
            raise ReaderError("不是PN53x读卡器 / %s is not a PN53x reader: MIFARE Classic needs the chip's "
                              "InDataExchange" % device)
        try:
            if baud is not None and device.chipset.transport.TYPE == "TTY" \
                    and device.chipset.transport.baudrate != baud:
                device.chipset.set_serial_baudrate(baud)      # 7.2.8: the chip switches after our ACK
                device.chipset.transport.baudrate = baud
            # Item 2: the card's answer timeout, as in the pn532: driver (7.3.1).
            device.chipset.rf_configuration(frames.RF_ITEM_TIMINGS,
                                            bytearray((0x00, 0x0B, pn532_driver.NON_DEP_TIMEOUT_INDEX)))
        except _NFCPY_ERRORS as error:
            self.close()
            raise _reader_error(error, "set-up")

    @property
    def device(self):
        return self.frontend.device

    @property
    def chipset(self):
        return self.frontend.device.chipset

    # --- card selection ----------------------------------------------------------------------------

    def poll(self, timeout_ms):
        """Sense until a type A card answers or timeout_ms passes; at least once. nfcpy configures
        the chip to try activation once per InListPassiveTarget, so each round is short and the
        rounds are paced by the chip itself."""
        assert timeout_ms >= 0
        self._target = None
        deadline = time.monotonic() + timeout_ms / 1000.0
        for _round in range(_MAX_POLL_ROUNDS):
            target = self._sense_once()
            if target is not None:
                self._target = target
                return target
            if time.monotonic() >= deadline:
                return None
        return None

    def _sense_once(self):
        try:
            found = self.device.sense_tta(nfc.clf.RemoteTarget("106A"))
            if found is None or found.sdd_res is None:
                return None             # nothing, or a Type 1 Tag (no UID to select by)
            sak = found.sel_res[0]
            if sak & _SAK_ISO14443_4_OR_DEP == 0:
                rx_mode = self.chipset.read_register("CIU_RxMode")
                if not rx_mode & _RX_CRC_ENABLE:
                    self.chipset.write_register("CIU_RxMode", rx_mode | _RX_CRC_ENABLE)
        except _NFCPY_ERRORS as error:
            mapped = _reader_error(error, "poll")
            if isinstance(mapped, CardGone):
                return None             # the card left while being selected: none is there
            raise mapped
        sens_res = bytes(found.sens_res)
        # nfcpy keeps SENS_RES as sent on the air (least significant byte first).
        return Target(bytes(found.sdd_res), sens_res[1] * 256 + sens_res[0], sak)

    def release(self):
        self._target = None
        try:
            params = self.chipset.command(frames.CMD_IN_RELEASE, bytearray(frames.build_in_release(0)[1:]),
                                          COMMAND_TIMEOUT_S)
        except _NFCPY_ERRORS as error:
            raise _reader_error(error, "release")
        code, _data = parse_answer(frames.parse_status, bytes(params), "release")
        if code:
            raise ReaderError("释放卡片失败 / InRelease failed: %s" % frames.status_text(code))

    # --- MIFARE Classic: the commands are in Pn53xClassic; this is how they reach the chip ----------

    def _data_exchange(self, mifare_command, operation, changes_card, repeatable):
        """nfcpy has no resend layer, so changes_card/repeatable change nothing here."""
        try:
            data, _more = self.chipset.in_data_exchange(bytearray(mifare_command), DATA_EXCHANGE_TIMEOUT_S)
        except _NFCPY_ERRORS as error:
            # Every failure leaves the card halted, gone, or the line in doubt: the next command
            # needs a poll.
            self._target = None
            raise _reader_error(error, operation)
        return frames.STATUS_OK, bytes(data)

    def close(self):
        self._target = None
        if self.frontend.device is not None:
            self.frontend.close()       # nfcpy aborts, restores 115200 baud on a tty and powers down

    def __repr__(self):
        return "NfcpyReader(%r)" % self.url


def _reader_error(error, operation):
    """The shared reader exception for anything nfcpy raised during `operation` (not raised here,
    so callers keep their own traceback)."""
    if isinstance(error, ReaderError):
        return error
    if isinstance(error, nfc.clf.pn53x.Chipset.Error):
        return status_error(error.errno, operation)
    if isinstance(error, nfc.clf.TimeoutError):
        return CardGone("卡片无应答 / the card did not answer: %s (%s)" % (operation, error))
    if isinstance(error, nfc.clf.CommunicationError):
        return CardGone("卡片通信出错 / the card's answer was lost: %s (%s)" % (operation, error))
    if isinstance(error, (IOError, OSError)):
        if error.errno == errno.ETIMEDOUT:
            return ReaderTimeout("读卡器无应答 / the reader did not answer in time: %s" % operation)
        return ReaderError("读卡器通信出错 / the reader's answer was missing or damaged: %s (%s)" % (operation, error))
    return ReaderError("读卡器错误 / reader error: %s (%r)" % (operation, error))


register_scheme("nfcpy", NfcpyReader)
