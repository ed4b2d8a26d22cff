"""`pn532:` - a PN532 on a serial line (HSU), through pyserial.

    open_reader("pn532:/dev/ttyS0")                  115200 baud, the PN532's power-on rate
    open_reader("pn532:/dev/ttyUSB0?baud=115200")
    open_reader("pn532:/dev/pts/7")                  the emulator (simulators/pn532_emulator.py)

    feature                           pn532:  notes
    --------------------------------  ------  ------------------------------------------------
    ISO 14443-A poll + select         yes     InListPassiveTarget, one card, 4/7-byte UIDs
    MIFARE Classic 1K                 yes     through InDataExchange (UM0701-02 7.3.8)
    authenticate A / B                yes     failure halts the card: poll again
    read / write                      yes     a trailer write is never sent twice (below)
    increment / decrement / restore   yes
    transfer                          yes
    release (HALT)                    yes     InRelease
    HSU wake-up, ACK/NACK, abort      yes     UM0701-02 6.2; resend only what may run twice
    recovery after a reader reset     yes     SAMConfiguration and RF settings run again
    I2C / SPI, baud rate change       no

Layers, as in nfcpy's nfc/clf: `HsuTransport` moves bytes and frames (pyserial, blocking reads with
deadlines); `Pn532Chip` sends commands and handles ACK, NACK, abort and resend; `Pn532Reader` is the
Reader interface and maps status bytes to the shared errors (reader_drivers/base.py):

    0x01 timeout, 0x02/0x03/0x0B/0x13 RF errors, 0x27 no target, 0x29/0x2A/0x2B   CardGone
    0x14 MIFARE authentication error                                              AuthenticationError
    0x05 framing error (the card's 4-bit NAK)                                      CardNak
    a card-changing command that may or may not have run                          CommandOutcomeUnknown
                                                                                  (a CardGone)
    no ACK or answer after every resend                                           ReaderTimeout
    an answer of the wrong shape (no status byte, a bad target list)              ReaderError
                                                                                  (CommandOutcomeUnknown
                                                                                  for a card-changing one)

When a command is sent again (UM0701-02 6.2.2). The chip ACKs a command within 15 ms and then runs
it, and the manual has the host send the command again when it saw no ACK in those 15 ms. That
assumes a host that reads the line as the bytes arrive; this process may read the ACK of a command
the chip already ran far later on a loaded machine, and sending it again then runs it twice. So a
missing ACK is waited for until ACK_DEADLINE_MS, and a late ACK or answer is taken as the one it
is. Only when nothing at all came back by then is the command sent again, after an abort and a
fresh set-up (`_recover`), and only if running it twice does no harm, because the chip may have
run it with its ACK and answer both lost on the line:

    read, authenticate, configuration, poll    no lasting effect
    write of a data block                      writes the same 16 bytes again
    increment, decrement, restore              the card computes the transfer buffer from the
                                               block's stored value (MF1S50 "Value blocks"), so a
                                               second run leaves the same buffer: a repeated
                                               decrement does not count twice, and the block only
                                               changes on transfer
    transfer                                   copies the same buffer to the block again

A sector trailer write is the exception: the first run may change the keys and access bits that
decide whether the second is allowed, so a second run can be refused (a CardNak for a write that
happened). It is never sent twice; when its fate is unknown the driver aborts, sets the chip up
again and raises CommandOutcomeUnknown. A card-changing command that the chip ACKed but did not
answer by RESPONSE_DEADLINE_MS, or whose answer stayed damaged, raises the same: callers treat it as
CardGone (the card may or may not have changed), e.g. the POS asks for the tap again and charges
nothing, and the next tap reads the counter back from the card. A damaged answer is asked for again
with NACK, which makes the chip send its last answer again and never runs the command again.
Every wait is a deadline in the blocking serial read; the deadlines are long where waiting is
harmless (only a silent or reset chip ever makes the driver wait them out).
"""
import time
import urllib.parse

import serial

from firmware.core import pn532_frames as frames
from reader_drivers.base import CardGone, Reader, ReaderError, ReaderTimeout, Target, register_scheme
from reader_drivers.pn53x_classic import Pn53xClassic, parse_answer

SUPPORTS = frozenset(("iso14443a", "mifare_classic_1k", "authenticate", "read", "write", "increment",
                      "decrement", "restore", "transfer", "release"))

DEFAULT_PORT = "/dev/ttyS0"
DEFAULT_BAUD = 115200
# UM0701-02 6.2.2 / 7.2.11: a sleeping HSU needs a long preamble to wake up (libnfc sends the same).
WAKEUP_PREAMBLE = b"\x55\x55" + bytes(14)
# Past the frame's own wire time. The chip ACKs within 15 ms (6.2.2); the rest is for a host that is
# slow to read it (module doc). Only a lost frame, a reset or a dead chip make the driver wait it out.
ACK_DEADLINE_MS = 1000
# After the ACK: the chip ends every command with an answer, InDataExchange within the card timeout
# it was given (NON_DEP_TIMEOUT_INDEX), configuration commands at once. Waiting longer costs nothing
# unless the chip is gone, and giving up on a card-changing command leaves its outcome unknown.
RESPONSE_DEADLINE_MS = 1000
# Bytes of a started answer that stop coming were lost on the line: NACK at once, not at the deadline.
FRAME_STALL_MS = 100
MIN_POLL_WAIT_MS = 25             # even poll(0) lets the chip try once (selection takes ~2.5-3.5 ms)
NON_DEP_TIMEOUT_INDEX = 0x08      # 12.8 ms: above the card's 10 ms write/transfer time-out (MF1S50)
MAX_SENDS = 3                     # one send and two resends of a command
MAX_NACKS = 3                     # answers asked for again per command
_READ_CHUNK_BYTES = 512



class CommandOutcomeUnknown(CardGone):
    """A card-changing command was given up after the chip may have run it: the card may or may not
    have changed. A CardGone, so callers do what they do for a card pulled mid-command."""


class HsuTransport:
    """Frames over a pyserial port: write a frame, read the next frame before a deadline."""

    def __init__(self, port, baud):
        self.port = port
        self.baud = baud
        self._parser = frames.FrameParser()

    def wire_ms(self, byte_count):
        return byte_count * 10 * 1000.0 / self.baud

    def write(self, data):
        self.port.write(data)

    def write_fresh(self, data):
        """Write after forgetting whatever is still on the line (answers to aborted commands)."""
        self.port.reset_input_buffer()
        self._parser.reset()
        self.port.write(data)

    def forget_partial_frame(self):
        self._parser.reset()

    @property
    def holds_partial_frame(self):
        return self._parser.pending_bytes > 0

    def read_frame(self, deadline, stall_s=None):
        """The next frame, or None at the deadline (time.monotonic() seconds) - with stall_s, also
        once a started frame got no byte for stall_s; FrameError for a damaged frame. Blocks in the
        serial read itself: no sleeping, no polling."""
        while True:
            frame = self._parser.next_frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            stalling = stall_s is not None and self.holds_partial_frame
            if stalling:
                remaining = min(remaining, stall_s)
            if remaining <= 0:
                return None
            self.port.timeout = remaining
            chunk = self.port.read(1)
            if not chunk:
                if stalling:
                    return None
                continue
            waiting = self.port.in_waiting
            if waiting:
                chunk += self.port.read(min(waiting, _READ_CHUNK_BYTES))
            self._parser.feed(chunk)

    def close(self):
        self.port.close()


class Pn532Chip:
    """PN532 commands over a transport: ACK wait, resend, NACK, abort (UM0701-02 6.2.2)."""

    def __init__(self, transport):
        self.transport = transport
        self._initialising = False
        self.recoveries = 0

    def wake(self):
        self.transport.write_fresh(WAKEUP_PREAMBLE)

    def initialise(self):
        """Leave LowVbat mode and set the RF behaviour this driver relies on; returns the firmware
        version tuple (ic, version, revision, support)."""
        self._initialising = True
        try:
            self.command(frames.build_sam_configuration())
            # Retry activation for ever: poll() ends a search by aborting it at its deadline.
            self.command(frames.build_rf_max_retries(0xFF, 0x01, frames.RETRY_FOREVER))
            self.command(frames.build_rf_timings(0x0B, NON_DEP_TIMEOUT_INDEX))
            return parse_answer(frames.parse_firmware_version, self.command(frames.build_get_firmware_version()),
                                "GetFirmwareVersion")
        finally:
            self._initialising = False

    def _recover(self):
        """Abort whatever runs (an ACK frame, 6.2.2), wake the HSU, and set the chip up again in case
        it was reset. The set-up's own answers come after any late answer to what was aborted (the
        chip answers in order), so they also clear the line of it."""
        self.recoveries += 1
        self.transport.write_fresh(frames.ACK_FRAME + WAKEUP_PREAMBLE)
        if not self._initialising:
            self.initialise()

    def command(self, payload, response_deadline_ms=RESPONSE_DEADLINE_MS, abort_on_timeout=False,
                repeatable=True, changes_card=False):
        """Send one command and return its answer's parameters.

        abort_on_timeout: an answer that does not come within response_deadline_ms of the ACK ends
        the command with an abort and returns None (a poll's search time).
        repeatable: running the command twice does no harm, so it may be sent again when nothing at
        all came back by ACK_DEADLINE_MS. changes_card: giving up on it raises CommandOutcomeUnknown
        rather than ReaderTimeout/ReaderError. A command that is not repeatable must change the card.
        """
        assert repeatable or changes_card, "a command with no lasting effect can always run again"
        code = payload[0]
        frame = frames.encode_command(payload)
        for attempt in range(MAX_SENDS):
            if attempt:
                try:
                    self._recover()
                except ReaderError as error:
                    # The chip stays silent. The first send may still have run: for a card-changing
                    # command that is CommandOutcomeUnknown, as for every other way of giving up.
                    if changes_card:
                        raise CommandOutcomeUnknown("结果未知，请重新刷卡 / outcome unknown: command 0x%02X was "
                                                    "sent and the PN532 then stopped answering (%s)"
                                                    % (code, error)) from error
                    raise
            self.transport.write_fresh(frame)
            outcome = self._await_answer(code, len(frame), response_deadline_ms, changes_card)
            if outcome is _NO_ACK:
                if repeatable:
                    continue
                raise self._abandon(CommandOutcomeUnknown(
                    "结果未知，请重新刷卡 / the PN532 did not acknowledge command 0x%02X in %d ms; it may "
                    "still have run it, so it is not sent again" % (code, ACK_DEADLINE_MS)))
            if outcome is _UNANSWERED:
                if abort_on_timeout:
                    self.transport.write_fresh(frames.ACK_FRAME)      # abort (6.2.2)
                    return None
                raise self._abandon(self._lost(
                    changes_card, ReaderTimeout,
                    "读卡器无应答 / the PN532 did not answer command 0x%02X in %d ms" % (code, response_deadline_ms)))
            return outcome
        raise self._lost(changes_card, ReaderTimeout,
                         "读卡器无响应 / the PN532 did not acknowledge command 0x%02X after %d sends" % (code, MAX_SENDS))

    @staticmethod
    def _lost(changes_card, error_class, message):
        if changes_card:
            return CommandOutcomeUnknown("结果未知，请重新刷卡 / outcome unknown: " + message)
        return error_class(message)

    def _abandon(self, error):
        """Abort the command and set the chip up again; returns `error`, the one to raise about it."""
        try:
            self._recover()
        except ReaderError:
            pass            # still silent: the next command says so; `error` is what the caller must know
        return error

    def _await_answer(self, code, frame_bytes, response_deadline_ms, changes_card):
        """-> the answer's parameters, _NO_ACK (nothing came back by ACK_DEADLINE_MS), or _UNANSWERED
        (ACKed, no answer by response_deadline_ms after the ACK)."""
        deadline = time.monotonic() + (self.transport.wire_ms(frame_bytes + len(frames.ACK_FRAME))
                                       + ACK_DEADLINE_MS) / 1000.0
        acknowledged = False
        nacks = 0
        while True:
            try:
                # Only once ACKed is a started frame the answer to this command, worth a NACK.
                frame = self.transport.read_frame(deadline, FRAME_STALL_MS / 1000.0 if acknowledged else None)
            except frames.FrameError:
                frame = _DAMAGED
            if frame is None and acknowledged and self.transport.holds_partial_frame:
                frame = _DAMAGED          # bytes of the answer were lost on the line
            if frame is _DAMAGED:
                if nacks >= MAX_NACKS:
                    raise self._lost(changes_card, ReaderError, "读卡器应答反复出错 / the PN532's answer to "
                                     "command 0x%02X stayed damaged after %d NACKs" % (code, nacks))
                nacks += 1
                self.transport.forget_partial_frame()
                self.transport.write(frames.NACK_FRAME)        # send the last answer again (6.2.1.4)
                resent_ms = self.transport.wire_ms(frames.MAX_FRAME_DATA_BYTES + 10) + RESPONSE_DEADLINE_MS
                deadline = max(deadline, time.monotonic() + resent_ms / 1000.0)
                continue
            if frame is None:
                return _UNANSWERED if acknowledged else _NO_ACK
            if frame.kind == frames.ACK and not acknowledged:
                acknowledged = True
                deadline = time.monotonic() + response_deadline_ms / 1000.0
            elif frame.kind == frames.ERROR:
                raise ReaderError("读卡器报告命令语法错误 / the PN532 refused command 0x%02X as malformed" % code)
            elif frame.kind == frames.INFO:
                if frame.tfi == frames.TFI_CHIP and frame.data[:1] == bytes((code + 1,)):
                    return frame.data[1:]         # also when its ACK was lost on the line
                # an answer to an aborted command: not ours, keep waiting


_NO_ACK = object()
_UNANSWERED = object()
_DAMAGED = object()


def parse_url(url):
    """pn532:<port>[?baud=N] -> (port, baud)."""
    assert url.startswith("pn532:"), url
    port, _, query = url[len("pn532:"):].partition("?")
    options = urllib.parse.parse_qs(query)
    baud = int(options.get("baud", [DEFAULT_BAUD])[0])
    if baud not in frames.SERIAL_BAUD_RATES:
        raise ReaderError("不支持的波特率 / the PN532 HSU has no %d baud rate" % baud)
    return port or DEFAULT_PORT, baud


class Pn532Reader(Pn53xClassic, Reader):
    supports = SUPPORTS

    def __init__(self, url="pn532:" + DEFAULT_PORT, port=None):
        """port: an already open pyserial-like object (tests); otherwise the URL's device is opened."""
        self.url = url
        path, baud = parse_url(url)
        if port is None:
            try:
                port = serial.serial_for_url(path, baudrate=baud, timeout=0, write_timeout=1)
            except (serial.SerialException, OSError) as error:
                raise ReaderError("无法打开读卡器串口 / cannot open the PN532 on %s: %s" % (path, error))
        self.chip = Pn532Chip(HsuTransport(port, baud))
        self._target = None
        try:
            self.chip.wake()
            self.firmware = self.chip.initialise()
        except Exception:
            port.close()
            raise
        if self.firmware[0] != 0x32:
            port.close()
            raise ReaderError("不是PN532读卡器 / the chip on %s reports IC 0x%02X, not a PN532" % (path, self.firmware[0]))

    # --- card selection ----------------------------------------------------------------------------

    def poll(self, timeout_ms):
        assert timeout_ms >= 0
        self._target = None
        params = self.chip.command(frames.build_in_list_passive_target(), max(timeout_ms, MIN_POLL_WAIT_MS),
                                   abort_on_timeout=True)
        if params is None:
            return None
        found = parse_answer(frames.parse_in_list_passive_target, params, "poll")
        if not found:
            return None
        self._target = Target(found[0].uid, found[0].atqa, found[0].sak)
        return self._target

    def release(self):
        self._target = None
        code, _data = parse_answer(frames.parse_status, self.chip.command(frames.build_in_release(0)), "release")
        if code:
            raise ReaderError("释放卡片失败 / InRelease failed: %s" % frames.status_text(code))

    # --- MIFARE Classic: the commands are in Pn53xClassic; this is how they reach the chip ----------

    def _data_exchange(self, mifare_command, operation, changes_card, repeatable):
        """changes_card/repeatable: see Pn532Chip.command and the module doc (which commands may run twice)."""
        try:
            params = self.chip.command(frames.build_in_data_exchange(1, mifare_command),
                                       repeatable=repeatable, changes_card=changes_card)
        except CommandOutcomeUnknown as error:
            self._target = None           # the chip was set up again: the card needs a new poll
            raise CommandOutcomeUnknown("%s (%s)" % (error, operation)) from error
        except ReaderError:
            self._target = None           # a silent or reset chip holds no selected card
            raise
        try:
            return parse_answer(frames.parse_status, params, operation)
        except ReaderError as error:
            # An answer without a status byte says nothing about the card: select it again first,
            # and a card-changing command may or may not have run.
            self._target = None
            if changes_card:
                raise CommandOutcomeUnknown("结果未知，请重新刷卡 / outcome unknown: %s" % error) from error
            raise

    def close(self):
        self.chip.transport.close()

    def __repr__(self):
        return "Pn532Reader(%r)" % self.url


register_scheme("pn532", Pn532Reader)
