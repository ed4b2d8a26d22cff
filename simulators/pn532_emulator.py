"""A PN532 on a pseudo-terminal: the HSU frame protocol, a virtual RF field behind it, its timing and
its faults, so drivers open it by path exactly like /dev/ttyS0.

    with Pn532Emulator() as emulator:          # emulator.path is the pty slave, e.g. /dev/pts/7
        emulator.field.place(ClassicCard(uid))
        reader = open_reader("pn532:%s" % emulator.path)

    python -m simulators.pn532_emulator [--baud 115200] [--uid c0ffee01 | --card-file card.bin]

What it serves (PN532 User Manual UM0701-02; section numbers below are that manual's):
  frames      normal and extended information frames, ACK, NACK, syntax error frame (6.2.1); every
              command is ACKed before it runs; a host ACK aborts a running command, a host NACK asks
              for the last answer again (6.2.1.3, 6.2.1.4); damaged frames are ignored (no ACK)
  commands    Diagnose (line test), GetFirmwareVersion (PN532 v1.6), GetGeneralStatus, Read/
              WriteRegister (the CIU registers of simulators/pn532_ciu.py: CRC on/off, bit framing
              and MFCrypto1On change what the card hears), SetSerialBaudRate, SetParameters,
              SAMConfiguration, PowerDown, RFConfiguration (items 1, 2, 4, 5, 0x0A-0x0D),
              InListPassiveTarget (106 kbps type A, one card), InAutoPoll (types 0x00 and 0x10
              find the card), InDataExchange (MIFARE Classic authenticate A/B, read, write,
              increment, decrement, restore, transfer), InCommunicateThru (raw frames: what a
              Classic card answers before and after authentication), InDeselect, InRelease
  RF field    the sim: reader's VirtualField with its ClassicCard (reader_drivers/sim/); cards are
              placed and pulled from any thread at any moment, hooks pull them mid-command
  power       starts asleep (PN532 C106 powers up in LowVbat mode, AN10609 "Low battery mode"):
              the first bytes after sleep only wake the HSU and are lost (see HSU_WAKEUP_S), hence
              the host's 0x55 0x55 00.. wake-up preamble; until SAMConfiguration, RF commands get
              no ACK and the chip sleeps again; PowerDown and reset() put it back to sleep
  faults      lose_acks, corrupt_responses (bad DCS), drop_bytes (either direction), reset()

Timing model (`timing=True`): each byte on the wire costs 10 bits at the current baud rate (start,
8 data, stop), in both directions; then the card's RF time, the typical transaction times of the
MIFARE Classic EV1 1K datasheet (MF1S50yyX/V1 rev. 3.0, figure 4 "MIFARE Classic command flow
diagram"): identification and selection 2.5 ms (+1 ms for a 7-byte UID), authentication 2 ms, read
2.5 ms, write 5.5 ms, increment/decrement/restore 2.5 ms, transfer 4.5 ms. A card that does not
answer costs the chip's own timeout, RFConfiguration item 2 (100 us * 2^(n-1), default n=0x0A).
Before its ACK the firmware spends PROCESSING_S on every command (measured on a real chip, see there).
Not modelled: RF collisions, several cards, firmware time that differs between commands.
`modelled_s` adds up the modelled wire, firmware and RF time of every exchange: the protocol floor a
driver is measured against.

Card answers map to status bytes (7.1 error table): no answer (card gone, halted, pulled mid-command)
-> 0x01 timeout; failed authentication -> 0x14 (the card halts); a MIFARE NAK (access denied, not a
value block, overflow) -> 0x05, the framing error the chip reports for the 4-bit NAK frame; no listed
target -> 0x27.
"""
import argparse
import collections
import os
import select
import struct
import sys
import threading
import time
import tty

from firmware.core import mifare, pn532_frames as frames
from reader_drivers.base import AuthenticationError, CardGone, CardNak
from reader_drivers.sim.card_file import write_through
from reader_drivers.sim.classic_card import ClassicCard
from reader_drivers.sim.field import VirtualField
from simulators.pn532_ciu import CiuRegisters

DEFAULT_BAUD = 115200
BITS_PER_BYTE = 10

# MF1S50yyX/V1 figure 4, typical times.
RF_SELECT_S = 0.0025
RF_SELECT_DOUBLE_UID_EXTRA_S = 0.001
RF_AUTHENTICATE_S = 0.002
RF_READ_S = 0.0025
RF_WRITE_S = 0.0055
RF_VALUE_S = 0.0025
RF_TRANSFER_S = 0.0045
# Model choices, not datasheet figures: HLTA is one short frame; a REQA nobody answers is a short
# frame plus the chip's guard time; the HSU oscillator start-up swallows the first bytes after sleep.
RF_HALT_S = 0.0005
RF_EMPTY_ACTIVATION_S = 0.001
HSU_WAKEUP_S = 0.0005
# The PN532 firmware's own time per command, between the last byte of the command frame and the
# first byte of its ACK. Source: nfcpy issue #131 (github.com/nfcpy/nfcpy/issues/131, 2019-06-07), a
# `tagtool.py --reltime` debug log of a PN532 v1.6 on a Raspberry Pi 3 UART at 115200 baud:
# GetFirmwareVersion written at 626 ms, its ACK read at 630 ms; SAMConfiguration 631 -> 635 ms;
# SetSerialBaudRate 651 -> 655 ms. Take away the wire time of the 19-, 22- and 20-byte frames (wake-up
# preamble included) and of the 6-byte ACK at 10 bits a byte: 1.83, 1.57 and 1.74 ms are left, 1.7 ms
# on average. The log counts whole milliseconds, so one constant time fits all three only between 0.8
# and 2.6 ms; it may hold some of that host's read latency too, so a real chip can be a little
# quicker. No published log separates an RF command's extra firmware time: every command gets this.
PROCESSING_S = 0.0017

FIRMWARE_VERSION = b"\x32\x01\x06\x07"       # PN532, firmware 1.6, ISO 14443A/B and 18092 (7.2.2)
DEFAULT_NON_DEP_TIMEOUT_INDEX = 0x0A         # 51.2 ms (7.3.1 item 2 default)
_RF_ITEM_LENGTHS = {0x01: 1, 0x02: 3, 0x04: 1, 0x05: 3, 0x0A: 11, 0x0B: 8, 0x0C: 3, 0x0D: 9}
_REQA = 0x26
_HLTA = b"\x50\x00"
_MIFARE_ACK = 0x0A                    # MF1S50yyX/V1 table 10: 4-bit ACK
_MIFARE_NAK_INVALID_OPERATION = 0x04  # table 10: invalid operation, transfer buffer not valid
_MIFARE_MEMORY_COMMANDS = frozenset((frames.MIFARE_READ, frames.MIFARE_WRITE, frames.MIFARE_INCREMENT,
                                     frames.MIFARE_DECREMENT, frames.MIFARE_RESTORE, frames.MIFARE_TRANSFER))
AUTO_POLL_PERIOD_UNIT_S = 0.150       # 7.3.13: Period counts 150 ms
_AUTO_POLL_CLASSIC_TYPES = (0x00, 0x10)   # generic passive 106 kbps, MIFARE card
_MAX_PENDING_FRAMES = 8
_READ_CHUNK_BYTES = 4096

TO_HOST = "to_host"
TO_CHIP = "to_chip"


class _SyntaxError(Exception):
    """The command is malformed: the chip answers with the syntax error frame (6.2.1.5)."""


class _Aborted(Exception):
    """The host aborted the running command (ACK, or a new frame)."""


class _Stop(Exception):
    pass


class Pn532Emulator:
    def __init__(self, field=None, baud=DEFAULT_BAUD, timing=True):
        assert baud in frames.SERIAL_BAUD_RATES
        self.field = field if field is not None else VirtualField()
        self.timing = timing
        self.path = None
        self.modelled_s = 0.0
        self.exchanges = collections.deque(maxlen=1024)    # (command code, modelled seconds)
        self._lock = threading.Lock()                       # fault counters and requests
        self._faults = {"lost_ack": 0, "corrupt": 0, TO_HOST: 0, TO_CHIP: 0}
        self._dropped_bytes = 3
        self._reset_requested = False
        self._reset_done = threading.Event()
        self._stopping = False
        self._thread = None
        self._master = self._slave = None
        self._wakeup_read = self._wakeup_write = None
        self._initial_baud = baud
        self._power_on()

    # --- life cycle ------------------------------------------------------------------------------

    def start(self):
        assert self._thread is None, "already started"
        self._master, self._slave = os.openpty()
        # Raw mode on the line, as a real UART has; the emulator keeps the slave open itself so the
        # master never sees a hang-up while a driver closes and reopens the port.
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._wakeup_read, self._wakeup_write = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="pn532-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is None:
            return
        self._stopping = True
        os.write(self._wakeup_write, b"s")
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the emulator thread did not stop"
        for fd in (self._master, self._slave, self._wakeup_read, self._wakeup_write):
            os.close(fd)
        self._thread = None

    @classmethod
    def behind_reader_firmware(cls, field):
        """The PN532 inside a reader whose own firmware drives it (an ACR122U): never started on a
        pty, already configured, untimed, one activation attempt per InListPassiveTarget. Commands
        reach it through `answer`."""
        chip = cls(field=field, timing=False)
        chip.sam_configured = True
        chip._asleep = False
        chip._retries = [0xFF, 0x01, 0x00]
        return chip

    def answer(self, code, params):
        """Run one command without the serial line -> its answer's parameters, or None where the chip
        sends the syntax error frame. Only for a chip that is not started (behind_reader_firmware):
        a command that would wait for the host (an endless search) must not be sent this way."""
        assert self._thread is None, "a started emulator takes its commands from the pty"
        handler = _COMMANDS.get(code)
        if handler is None:
            return None
        try:
            params, _done = handler(self, bytes(params), time.perf_counter())
        except _SyntaxError:
            return None
        return params

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- faults (any thread) ---------------------------------------------------------------------

    def lose_acks(self, count=1):
        """The next `count` ACK frames never reach the host (the commands still run)."""
        with self._lock:
            self._faults["lost_ack"] += count

    def corrupt_responses(self, count=1):
        """The next `count` response frames reach the host with a wrong data checksum."""
        with self._lock:
            self._faults["corrupt"] += count

    def drop_bytes(self, count=1, direction=TO_HOST, dropped_bytes=3):
        """The next `count` frames in `direction` lose `dropped_bytes` bytes from their middle
        (a UART overrun on one side)."""
        assert direction in (TO_HOST, TO_CHIP) and dropped_bytes >= 1
        with self._lock:
            self._faults[direction] += count
            self._dropped_bytes = dropped_bytes

    def reset(self):
        """Reset the chip (power glitch, watchdog) and return once it took effect: configuration and
        targets are lost and the chip sleeps in LowVbat mode until woken and configured again."""
        if self._thread is None:
            self._power_on()
            return
        with self._lock:
            self._reset_requested = True
            self._reset_done.clear()
        os.write(self._wakeup_write, b"r")
        assert self._reset_done.wait(5), "the emulator did not reset"

    def _take_fault(self, name):
        with self._lock:
            if self._faults[name] > 0:
                self._faults[name] -= 1
                return True
            return False

    # --- chip state ------------------------------------------------------------------------------

    def _power_on(self):
        self.baud = self._initial_baud
        self._asleep = True
        self._wake_bytes_to_drop = 0
        self._target_uid = None
        self._rf_on = False
        self._retries = [0xFF, 0x01, frames.RETRY_FOREVER]     # 7.3.1 item 5 defaults
        self._non_dep_timeout_index = DEFAULT_NON_DEP_TIMEOUT_INDEX
        self.ciu = CiuRegisters()
        self._card_crypto1 = False     # the selected card expects Crypto1-enciphered frames
        self._raw_write_block = None   # InCommunicateThru: the card ACKed part 1 of a WRITE to it
        self._last_response = None
        self._pending_baud = None
        self._parser = frames.FrameParser()
        self._pending_frames = collections.deque(maxlen=_MAX_PENDING_FRAMES)
        self.sam_configured = False

    def _check_reset(self):
        with self._lock:
            requested, self._reset_requested = self._reset_requested, False
        if requested:
            self._power_on()
            self._reset_done.set()
        return requested

    # --- wire ------------------------------------------------------------------------------------

    def _wire_s(self, byte_count):
        return byte_count * BITS_PER_BYTE / float(self.baud)

    def _sleep_until(self, deadline):
        if self.timing:
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def _receive(self, timeout_s):
        """Bytes from the host (b"" on timeout); raises _Stop when asked to stop."""
        ready, _, _ = select.select([self._master, self._wakeup_read], [], [], timeout_s)
        if self._wakeup_read in ready:
            os.read(self._wakeup_read, 64)
            if self._stopping:
                raise _Stop()
        if self._master not in ready:
            return b""
        try:
            return os.read(self._master, _READ_CHUNK_BYTES)
        except OSError:
            return b""

    def _take_bytes(self, chunk):
        if not chunk:
            return
        if self._asleep:
            self._asleep = False
            self._wake_bytes_to_drop = -(-int(HSU_WAKEUP_S * self.baud) // BITS_PER_BYTE)
        if self._wake_bytes_to_drop:
            lost = min(self._wake_bytes_to_drop, len(chunk))
            self._wake_bytes_to_drop -= lost
            chunk = chunk[lost:]
        if chunk and frames.START_CODE in chunk and self._take_fault(TO_CHIP):
            middle = len(chunk) // 2
            chunk = chunk[:middle] + chunk[middle + self._dropped_bytes:]
        self._parser.feed(chunk)

    def _transmit(self, frame, ready_at, kind):
        """Send a frame whose first byte leaves at ready_at; returns when its last byte arrives."""
        done_at = ready_at + self._wire_s(len(frame))
        if kind == "ack" and self._take_fault("lost_ack"):
            return done_at
        if kind == "response":
            if self._take_fault("corrupt"):
                frame = frame[:-2] + bytes((frame[-2] ^ 0x5A,)) + frame[-1:]
            if self._take_fault(TO_HOST):
                middle = len(frame) // 2
                frame = frame[:middle] + frame[middle + self._dropped_bytes:]
        self._sleep_until(done_at)
        os.write(self._master, frame)
        return done_at

    def _next_frame(self):
        if self._pending_frames:
            return self._pending_frames.popleft()
        while True:
            try:
                return self._parser.next_frame()
            except frames.FrameError:
                continue        # a damaged frame gets no ACK: the host times out and sends again

    # --- serving loop ----------------------------------------------------------------------------

    def _serve(self):
        try:
            while True:
                chunk = self._receive(None)
                received_at = time.perf_counter()
                self._check_reset()
                self._take_bytes(chunk)
                self._process_frames(received_at)
        except _Stop:
            return

    def _process_frames(self, received_at):
        while True:
            frame = self._next_frame()
            if frame is None:
                return
            if frame.kind == frames.ACK:
                if self._pending_baud is not None:
                    # 7.2.8: the new rate applies once the host acknowledged the answer.
                    self.baud, self._pending_baud = self._pending_baud, None
            elif frame.kind == frames.NACK:
                if self._last_response is not None:
                    self._transmit(self._last_response, time.perf_counter(), "resend")
            elif frame.kind == frames.INFO:
                self._execute(frame, received_at)
                received_at = time.perf_counter()

    def _execute(self, frame, received_at):
        frame_bytes = len(frames.encode_frame(frame.tfi, frame.data))
        started = received_at + self._wire_s(frame_bytes)
        code = frame.data[0] if frame.data else None
        if code in _NEEDS_CONFIGURATION and not self.sam_configured:
            # LowVbat mode (AN10609, PN532 C106): until SAMConfiguration the chip drops back to
            # sleep instead of running RF commands; the host sees no ACK.
            self._asleep = True
            return
        after_ack = self._transmit(frames.ACK_FRAME, started + PROCESSING_S, "ack")
        handler = _COMMANDS.get(code) if frame.tfi == frames.TFI_HOST else None
        try:
            if handler is None:
                raise _SyntaxError()
            params, answered_at = handler(self, frame.data[1:], after_ack)
            response = frames.encode_response(code, params)
        except _SyntaxError:
            response, answered_at = frames.ERROR_FRAME, after_ack
        except _Aborted:
            return
        self._last_response = response
        # Accounted before the answer leaves: a host that reads modelled_s once it holds the answer
        # must find this exchange in it (_transmit's done_at is the same figure).
        done_at = answered_at + self._wire_s(len(response))
        modelled = (done_at - started) + self._wire_s(frame_bytes)
        self.modelled_s += modelled
        self.exchanges.append((code, modelled))
        self._transmit(response, answered_at, "response")
        if code == frames.CMD_POWER_DOWN:
            self._asleep = True

    def _wait_for_host(self, deadline):
        """Wait for the host until deadline (the RF retry interval); _Aborted when a frame arrives."""
        if not self.timing:
            deadline = time.perf_counter() + RF_EMPTY_ACTIVATION_S    # never spin, even untimed
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            chunk = self._receive(remaining)
            if self._check_reset():
                raise _Aborted()
            self._take_bytes(chunk)
            frame = self._next_frame()
            if frame is not None:
                if frame.kind != frames.ACK:      # an ACK is the abort itself; anything else waits
                    self._pending_frames.append(frame)
                raise _Aborted()

    # --- commands --------------------------------------------------------------------------------

    def _diagnose(self, params, at):
        if not params:
            raise _SyntaxError()
        if params[0] == 0x00:                   # communication line test: echo (7.2.1)
            return bytes(params), at
        return b"\x00", at                      # ROM / RAM and the other self tests pass

    def _get_firmware_version(self, params, at):
        return FIRMWARE_VERSION, at

    def _get_general_status(self, params, at):
        targets = b"\x01\x01\x00\x00\x10" if self._target_uid is not None else b"\x00"
        return bytes((0x00, 1 if self._rf_on else 0)) + targets + b"\x00", at

    def _read_register(self, params, at):
        if not params or len(params) % 2:
            raise _SyntaxError()
        addresses = [params[i] * 256 + params[i + 1] for i in range(0, len(params), 2)]
        return bytes(self.ciu.read(address) for address in addresses), at

    def _write_register(self, params, at):
        if not params or len(params) % 3:
            raise _SyntaxError()
        for i in range(0, len(params), 3):
            self.ciu.write(params[i] * 256 + params[i + 1], params[i + 2])
        return b"", at

    def _set_serial_baud_rate(self, params, at):
        if len(params) != 1 or params[0] >= len(frames.SERIAL_BAUD_RATES):
            raise _SyntaxError()
        self._pending_baud = frames.SERIAL_BAUD_RATES[params[0]]
        return b"", at

    def _set_parameters(self, params, at):
        if len(params) != 1:
            raise _SyntaxError()
        return b"", at

    def _sam_configuration(self, params, at):
        if not 1 <= len(params) <= 3 or params[0] not in (1, 2, 3, 4):
            raise _SyntaxError()
        self.sam_configured = True
        return b"", at

    def _power_down(self, params, at):
        if not 1 <= len(params) <= 2:
            raise _SyntaxError()
        self._release_target()
        return b"\x00", at

    def _rf_configuration(self, params, at):
        if not params or _RF_ITEM_LENGTHS.get(params[0]) != len(params) - 1:
            raise _SyntaxError()
        item, data = params[0], params[1:]
        if item == frames.RF_ITEM_FIELD:
            self._rf_on = bool(data[0] & 0x01)
            if not self._rf_on:
                self._release_target()      # no field, no power: the card forgets everything
        elif item == frames.RF_ITEM_TIMINGS:
            if data[2] > 0x10:
                raise _SyntaxError()
            self._non_dep_timeout_index = data[2]
        elif item == frames.RF_ITEM_MAX_RETRIES:
            self._retries = list(data)
        return b"", at

    def _release_target(self):
        if self._target_uid is not None:
            self.field.halt()
        self._target_uid = None
        self._end_crypto1()

    def _end_crypto1(self):
        """The card left its authenticated state (halted, NAK, new selection): the CIU's Crypto1
        unit goes off with it."""
        self._card_crypto1 = False
        self._raw_write_block = None
        self.ciu.set_crypto1(False)

    def _in_list_passive_target(self, params, at):
        if len(params) < 2 or params[0] not in (1, 2):
            raise _SyntaxError()
        wanted_uid = None
        if params[1] == frames.BRTY_106A and len(params) > 2:
            try:
                wanted_uid = frames.uncascade_uid(params[2:])
            except frames.CommandError:
                raise _SyntaxError()
        self._release_target()
        self._rf_on = True
        retries = self._retries[2]
        attempts_left = None if retries == frames.RETRY_FOREVER else retries + 1
        while True:
            selected = self._select_type_a(at, wanted_uid) if params[1] == frames.BRTY_106A else None
            if selected is not None:
                target_data, done = selected
                return b"\x01" + target_data, done
            at += RF_EMPTY_ACTIVATION_S
            if attempts_left is not None:
                attempts_left -= 1
                if attempts_left <= 0:
                    self._sleep_until(at)
                    # nfcpy reads the FIFO afterwards: REQA still there means nobody answered.
                    self.ciu.set_fifo(_REQA)
                    return b"\x00", at
            self._wait_for_host(at)

    def _select_type_a(self, at, wanted_uid=None):
        """WUPA + anticollision + SELECT of the card in the field -> (target data as InListPassiveTarget
        lists it: Tg, SENS_RES, SEL_RES, NFCIDLength, NFCID1 (7.3.5)), done) or None."""
        card = self.field.card
        if card is None or wanted_uid not in (None, card.uid):
            return None
        target = self.field.poll(0)
        if target is None:
            return None
        done = at + RF_SELECT_S + (RF_SELECT_DOUBLE_UID_EXTRA_S if len(target.uid) > 4 else 0)
        self._sleep_until(done)
        self._target_uid = target.uid
        self.ciu.set_fifo(0x00)
        target_data = b"\x01" + struct.pack(">H", target.atqa) + bytes((target.sak, len(target.uid))) + target.uid
        return target_data, done

    def _in_auto_poll(self, params, at):
        """7.3.13 InAutoPoll: PollNr (0x01-0xFE rounds, 0xFF for ever), Period (0x01-0x0F, units of
        150 ms between rounds), Type1..TypeN (N <= 15). Answer: NbTg, then per target its Type, the
        length of its data and the data (for type A: Tg, SENS_RES, SEL_RES, NFCIDLength, NFCID1, as
        libnfc's pn53x_InAutoPoll decodes it). A MIFARE Classic card answers the generic 106 kbps
        passive type (0x00) and the MIFARE type (0x10); nothing found after PollNr rounds: NbTg 0.
        There is no status byte; the host ends an endless poll with an ACK (6.2.1.3)."""
        if not 3 <= len(params) <= 17 or params[0] == 0x00 or not 0x01 <= params[1] <= 0x0F:
            raise _SyntaxError()
        poll_count, period_s, target_types = params[0], params[1] * AUTO_POLL_PERIOD_UNIT_S, params[2:]
        self._release_target()
        self._rf_on = True
        rounds_left = None if poll_count == 0xFF else poll_count
        while True:
            for target_type in target_types:
                selected = self._select_type_a(at) if target_type in _AUTO_POLL_CLASSIC_TYPES else None
                if selected is not None:
                    target_data, done = selected
                    return bytes((1, target_type, len(target_data))) + target_data, done
                at += RF_EMPTY_ACTIVATION_S
            if rounds_left is not None:
                rounds_left -= 1
                if rounds_left <= 0:
                    self._sleep_until(at)
                    return b"\x00", at
            at += period_s
            self._wait_for_host(at)

    def _in_deselect(self, params, at):
        """7.3.10 InDeselect Tg (0: every target) -> Status. The chip keeps the target's data (InSelect
        could select it again; not emulated); a MIFARE Classic card has no ISO/IEC 14443-4 DESELECT, so
        it is halted (HLTA) and answers nothing until selected again. Not a listed target: 0x27."""
        if len(params) != 1:
            raise _SyntaxError()
        if self._target_uid is None or params[0] not in (0, 1):
            return bytes((frames.STATUS_NOT_ACCEPTABLE,)), at
        done = at + RF_HALT_S
        self._sleep_until(done)
        self._halt_card()
        return b"\x00", done

    def _in_release(self, params, at):
        if len(params) != 1 or params[0] > 2:
            raise _SyntaxError()
        done = at
        if self._target_uid is not None and params[0] in (0, 1):
            done = at + RF_HALT_S
            self._sleep_until(done)
            self._release_target()
        return b"\x00", done

    def _in_data_exchange(self, params, at):
        if len(params) < 2:
            raise _SyntaxError()
        target_number, data = params[0] & 0x0F, bytes(params[1:])
        if self._target_uid is None or target_number != 1:
            return bytes((frames.STATUS_NOT_ACCEPTABLE,)), at
        command = self.ciu.card_receives(data)
        if command is None:
            # No CRC_A (TxCRCEn off and none appended by the host) or a short frame: the card does
            # not take it for a command and stays silent (pn532_ciu module doc).
            return self._silence(at + RF_READ_S)
        operation, rf_s, arguments = self._mifare_operation(command)
        done = at + rf_s
        self._sleep_until(done)      # the exchange happens on the air; the card acts at its end
        if self._card_crypto1 and not self.ciu.crypto1_on:
            # The host switched MFCrypto1On off: the command reaches the card in plain where it
            # expects cipher text, which it cannot decode; it goes back to idle without answering.
            self._halt_card()
            return self._silence(done)
        try:
            if operation == "authenticate_uid":
                self.field.operate("halt")        # wrong UID bytes: the cipher never agrees
                self._end_crypto1()
                return bytes((frames.STATUS_MIFARE_AUTHENTICATION,)), done
            if operation is None:
                raise CardGone("unknown MIFARE command: the card stays silent")
            answer = self.field.operate(operation, *arguments)
        except AuthenticationError:
            self._end_crypto1()
            return bytes((frames.STATUS_MIFARE_AUTHENTICATION,)), done
        except (CardNak, ValueError):
            self._end_crypto1()
            return bytes((frames.STATUS_MIFARE_FRAMING,)), done
        except CardGone:
            self._end_crypto1()
            return self._silence(done)
        if operation == "authenticate":
            self._card_crypto1 = True
            self.ciu.set_crypto1(True)
        return b"\x00" + (self.ciu.host_receives(answer) if operation == "read" else b""), done

    def _in_communicate_thru(self, params, at):
        """7.3.9 InCommunicateThru DataOut -> Status, DataIn: the bytes go to the card as they are,
        framed by the CIU registers (CRC_A, bit framing, Crypto1: pn532_ciu.py), and the card's raw
        answer comes back; nobody answering is status 0x01 after the RFConfiguration item 2 (non-DEP)
        timeout. What a MIFARE Classic card answers (MF1S50yyX/V1 sections 9.3 and 10-11):

            HLTA 50 00                      nothing (halted): 0x01, which hosts take as done
            before authentication:
              AUTH 60/61 block              its nonce nT, 4 bytes in plain without CRC_A (part 1 of
                                            the three-pass authentication); there is no Crypto1 here,
                                            so the card never accepts part 2 and is halted
              READ, WRITE, value commands   a 4-bit NAK 4h (table 10: invalid operation, transfer
                                            buffer not valid) and the card halts
            after InDataExchange authenticated it, with MFCrypto1On still set (the CIU ciphers):
              READ 30 block                 the 16 bytes (+ CRC_A when RxCRCEn is off)
              WRITE A0 block, then 16 bytes a 4-bit ACK Ah for each part; refused: NAK 4h
            anything else                   silence: the card goes back to idle (nfcpy senses again
                                            for exactly this reason, nfc/tag/tt2.py)

        A 4-bit answer reaches the host as one byte with CIU_Control RxLastBits = 4 when RxCRCEn is
        off; with it on the CIU finds no CRC in it and the status is 0x02 (nfcpy, nfc/clf/pn53x.py
        _tt2_send_cmd_recv_rsp). The emulator always NAKs with 4h; raw value commands after
        authentication are not emulated (the card stays silent)."""
        if not params:
            raise _SyntaxError()
        self.ciu.set_rx_last_bits(0)
        command = self.ciu.card_receives(bytes(params))
        card = self.field.card          # read once: another thread may pull it meanwhile
        if command is None or card is None or not card.selected:
            return self._silence(at + RF_READ_S)
        if self._card_crypto1 and not self.ciu.crypto1_on:
            self._halt_card()
            return self._silence(at + RF_READ_S)
        if command == _HLTA:
            self._halt_card()
            return self._silence(at + RF_HALT_S)
        if self._raw_write_block is not None:
            return self._raw_write_data(command, at)
        if not self._card_crypto1:
            return self._raw_before_authentication(command, at)
        return self._raw_after_authentication(command, at)

    def _raw_before_authentication(self, command, at):
        if command[0] in (frames.MIFARE_AUTH_A, frames.MIFARE_AUTH_B) and len(command) == 2:
            done = at + RF_AUTHENTICATE_S / 2
            self._sleep_until(done)
            self._halt_card()        # part 2 can never be right without Crypto1
            return self._raw_answer(os.urandom(4), done, with_crc=False)
        if command[0] in _MIFARE_MEMORY_COMMANDS and len(command) == 2:
            return self._raw_nak(at + RF_READ_S)
        self._halt_card()
        return self._silence(at + RF_READ_S)

    def _raw_after_authentication(self, command, at):
        if command[0] == frames.MIFARE_READ and len(command) == 2:
            done = at + RF_READ_S
            self._sleep_until(done)
            try:
                return self._raw_answer(self.field.operate("read", command[1]), done, with_crc=True)
            except (CardNak, ValueError):
                return self._raw_nak(done, halted=True)
            except CardGone:
                self._end_crypto1()
                return self._silence(done)
        if command[0] == frames.MIFARE_WRITE and len(command) == 2:
            self._raw_write_block = command[1]
            return self._raw_ack(at + RF_READ_S)
        self._halt_card()
        return self._silence(at + RF_READ_S)

    def _raw_write_data(self, command, at):
        block, self._raw_write_block = self._raw_write_block, None
        if len(command) != mifare.BLOCK_SIZE:
            self._halt_card()
            return self._silence(at + RF_READ_S)
        done = at + RF_WRITE_S
        self._sleep_until(done)
        try:
            self.field.operate("write", block, command)
        except (CardNak, ValueError):
            return self._raw_nak(done, halted=True)
        except CardGone:
            self._end_crypto1()
            return self._silence(done)
        return self._raw_ack(done)

    def _raw_answer(self, answer, done, with_crc):
        """A full-byte answer of the card; with_crc: it carries a CRC_A on the air."""
        if with_crc:
            return b"\x00" + self.ciu.host_receives(answer), done
        if self.ciu.rx_crc:
            return bytes((frames.STATUS_CRC,)), done
        return b"\x00" + bytes(answer), done

    def _raw_four_bits(self, nibble, done):
        if self.ciu.rx_crc:
            return bytes((frames.STATUS_CRC,)), done
        self.ciu.set_rx_last_bits(4)
        return bytes((0x00, nibble)), done

    def _raw_ack(self, done):
        self._sleep_until(done)
        return self._raw_four_bits(_MIFARE_ACK, done)

    def _raw_nak(self, done, halted=False):
        self._sleep_until(done)
        if not halted:
            self._halt_card()    # every NAK sends the card to HALT (classic_card.py)
        else:
            self._end_crypto1()
        return self._raw_four_bits(_MIFARE_NAK_INVALID_OPERATION, done)

    def _silence(self, at):
        """Nobody answered: the chip waits out its timeout (RFConfiguration item 2, non-DEP) and
        reports status 0x01 (7.1 error table)."""
        done = at + frames.timeout_index_us(self._non_dep_timeout_index) / 1e6
        self._sleep_until(done)
        return bytes((frames.STATUS_TIMEOUT,)), done

    def _halt_card(self):
        try:
            self.field.operate("halt")
        except CardGone:
            pass
        self._end_crypto1()

    def _mifare_operation(self, data):
        """-> (VirtualField operation name, RF seconds, arguments); _SyntaxError on a wrong length."""
        code = data[0]
        lengths = {frames.MIFARE_AUTH_A: 12, frames.MIFARE_AUTH_B: 12, frames.MIFARE_READ: 2,
                   frames.MIFARE_WRITE: 18, frames.MIFARE_INCREMENT: 6, frames.MIFARE_DECREMENT: 6,
                   frames.MIFARE_RESTORE: 6, frames.MIFARE_TRANSFER: 2}
        if code not in lengths:
            return None, RF_READ_S, ()
        if len(data) != lengths[code]:
            raise _SyntaxError()
        block = data[1]
        if code in (frames.MIFARE_AUTH_A, frames.MIFARE_AUTH_B):
            if data[8:12] != self._target_uid[-4:]:
                return "authenticate_uid", RF_AUTHENTICATE_S, ()
            key_type = mifare.A if code == frames.MIFARE_AUTH_A else mifare.B
            return "authenticate", RF_AUTHENTICATE_S, (block, key_type, data[2:8])
        if code == frames.MIFARE_READ:
            return "read", RF_READ_S, (block,)
        if code == frames.MIFARE_WRITE:
            return "write", RF_WRITE_S, (block, data[2:18])
        if code == frames.MIFARE_TRANSFER:
            return "transfer", RF_TRANSFER_S, (block,)
        if code == frames.MIFARE_RESTORE:
            return "restore", RF_VALUE_S, (block,)
        value = struct.unpack("<i", data[2:6])[0]
        return ("increment" if code == frames.MIFARE_INCREMENT else "decrement"), RF_VALUE_S, (block, value)


_NEEDS_CONFIGURATION = frozenset((frames.CMD_RF_CONFIGURATION, frames.CMD_IN_LIST_PASSIVE_TARGET,
                                 frames.CMD_IN_DATA_EXCHANGE, frames.CMD_IN_COMMUNICATE_THRU,
                                 frames.CMD_IN_DESELECT, frames.CMD_IN_RELEASE, frames.CMD_IN_AUTO_POLL))

_COMMANDS = {
    frames.CMD_DIAGNOSE: Pn532Emulator._diagnose,
    frames.CMD_GET_FIRMWARE_VERSION: Pn532Emulator._get_firmware_version,
    frames.CMD_GET_GENERAL_STATUS: Pn532Emulator._get_general_status,
    frames.CMD_READ_REGISTER: Pn532Emulator._read_register,
    frames.CMD_WRITE_REGISTER: Pn532Emulator._write_register,
    frames.CMD_SET_SERIAL_BAUD_RATE: Pn532Emulator._set_serial_baud_rate,
    frames.CMD_SET_PARAMETERS: Pn532Emulator._set_parameters,
    frames.CMD_SAM_CONFIGURATION: Pn532Emulator._sam_configuration,
    frames.CMD_POWER_DOWN: Pn532Emulator._power_down,
    frames.CMD_RF_CONFIGURATION: Pn532Emulator._rf_configuration,
    frames.CMD_IN_LIST_PASSIVE_TARGET: Pn532Emulator._in_list_passive_target,
    frames.CMD_IN_DATA_EXCHANGE: Pn532Emulator._in_data_exchange,
    frames.CMD_IN_COMMUNICATE_THRU: Pn532Emulator._in_communicate_thru,
    frames.CMD_IN_DESELECT: Pn532Emulator._in_deselect,
    frames.CMD_IN_RELEASE: Pn532Emulator._in_release,
    frames.CMD_IN_AUTO_POLL: Pn532Emulator._in_auto_poll,
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m simulators.pn532_emulator",
                                     description="PN532 emulator on a pseudo-terminal / 伪终端上的PN532读卡器")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD, choices=frames.SERIAL_BAUD_RATES)
    card = parser.add_mutually_exclusive_group()
    card.add_argument("--uid", help="place a blank MIFARE Classic 1K card with this UID (hex, 4 or 7 bytes)")
    card.add_argument("--card-file", help="place the card image in this file (uid + 1024 bytes); every write "
                      "and transfer is saved back to it")
    parser.add_argument("--no-timing", action="store_true", help="answer at once, without wire and RF times")
    options = parser.parse_args(argv)
    emulator = Pn532Emulator(baud=options.baud, timing=not options.no_timing)
    if options.uid:
        emulator.field.place(ClassicCard(bytes.fromhex(options.uid)))
    elif options.card_file:
        # The image follows every write and transfer, as the card's EEPROM would (card_file.py).
        card = ClassicCard.load(options.card_file)
        write_through(emulator.field, card, options.card_file)
        emulator.field.place(card)
    with emulator:
        print(emulator.path, flush=True)
        print("PN532 模拟器已就绪 / PN532 emulator ready on %s (Ctrl-C to stop)" % emulator.path,
              file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
