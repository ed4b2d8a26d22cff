"""`serial:` - a scanner that sends each code as one line on a serial port: USB-CDC scanners
(`/dev/ttyACM0`), RS-232 ones behind a USB adapter (`/dev/ttyUSB0`), the emulator's pty, or any
pyserial URL.

    open_scanner("serial:/dev/ttyACM0")
    open_scanner("serial:/dev/ttyUSB0?baud=9600&suffix=cr")
    open_scanner("serial:/dev/pts/5")                   simulators/scanner_emulator.py
    open_scanner("serial:loop://")                      pyserial's loopback: what is written comes back

Options (`?key=value`, or keywords of open_scanner):

    baud       9600        only matters for RS-232; USB-CDC ignores it (9600 is what RS-232
                           scanners ship with)
    suffix     line        what ends a code: `line` CR, LF or CRLF; `cr`; `lf`; `tab`; `any` CR, LF
                           or TAB. The scanner's own "suffix" setting must be among them; a byte
                           that ends no code and is not printable gets the line refused
    gap_ms     200         silence after which a partial line is dropped (below)
    max_bytes  1024        longest line taken; a payment code is about 400 characters

Other `?key=value` options of a pyserial URL (`loop://?logging=debug`) are passed on to pyserial.

Framing (LineFramer, pure: bytes and the time they were read in, codes out):
- printable ASCII (0x20-0x7E) up to the suffix is one code; empty lines (the LF of a CRLF) are
  skipped;
- a line with any other byte is refused whole at its end: read_code raises ScanError
  (NON_PRINTABLE) and the next call goes on with the next line;
- a line longer than max_bytes is dropped whole at its end with a logged warning, never cut short
  into a code;
- a partial line followed by gap_ms of silence is dropped with a logged warning, so a code sent
  after a cable wiggle or a scanner unplugged mid-code is not glued onto its remains. Scanners send
  a code in one burst: USB-CDC in back-to-back 64-byte packets, RS-232 at about 1 ms per character
  at 9600 baud; the slowest "inter-character delay" setting of common scanners (Honeywell, Zebra)
  is 99 ms. 200 ms is above that with room for a loaded host and well below the half second and
  more between two people scanning.

A serial line carries no time stamps: the silence is measured on the bytes as this process reads
them, so the POS calls read_code in its loop; bytes that waited unread in the kernel are judged as
they come out (a partial line older than gap_ms is dropped before anything newer is read).
Logs never contain a code's text (it is a payment credential), only lengths.

Errors when opening (ScannerError, Chinese first): no such device, permission denied, another
program holds the port (the port is opened with an exclusive lock), not a serial device, a pyserial
URL it does not know. A serial port cannot tell whether a scanner is on it: a tty that is not a
scanner just never sends a code. A port that goes away (unplugged, the emulator stopped) raises
ScannerError from read_code.
"""
import errno
import re

import serial

from firmware.apps.code_scanner.base import (
    NON_PRINTABLE, CodeScanner, ScanError, ScannerError, choice_option, int_option, log, now_ms, split_options,
)

DEFAULT_BAUD = 9600
DEFAULT_GAP_MS = 200
DEFAULT_MAX_BYTES = 1024
READ_CHUNK_BYTES = 4096
SUFFIXES = {"line": b"\r\n", "cr": b"\r", "lf": b"\n", "tab": b"\t", "any": b"\r\n\t"}
OPTIONS = ("baud", "suffix", "gap_ms", "max_bytes")
_PRINTABLE = bytes(range(0x20, 0x7F))


class LineFramer:
    """Bytes in, codes out: `feed(data, now_ms)` returns a list of outcomes, each a str (a code)
    or a ScanError (a refused line), in the order they ended. No I/O, no clock of its own."""

    def __init__(self, suffix="line", max_bytes=DEFAULT_MAX_BYTES, gap_ms=DEFAULT_GAP_MS):
        self._ends = re.compile(b"[" + re.escape(SUFFIXES[suffix]) + b"]")
        self.max_bytes = max_bytes
        self.gap_ms = gap_ms
        self._line = bytearray()
        self._overlong_bytes = 0       # > 0 while the rest of a too-long line is being skipped
        self._last_ms = None
        self.dropped_lines = 0         # too long or cut by silence

    @property
    def partial(self):
        return bool(self._line) or self._overlong_bytes > 0

    def gap_left_ms(self, now):
        """Milliseconds until a partial line counts as abandoned, or None with no partial line."""
        return self._last_ms + self.gap_ms - now if self.partial else None

    def expire(self, now):
        """Drop a partial line whose last byte is gap_ms or more before `now`; True if one was."""
        if not self.partial or now - self._last_ms < self.gap_ms:
            return False
        log.warning("扫码数据不完整，已丢弃 / dropped %d bytes of a line cut by %d ms of silence",
                    self._overlong_bytes or len(self._line), now - self._last_ms)
        self.dropped_lines += 1
        self.reset()
        return True

    def reset(self):
        self._line.clear()
        self._overlong_bytes = 0

    def feed(self, data, now):
        self.expire(now)
        outcomes = []
        position = 0
        while position < len(data):
            end = self._ends.search(data, position)
            self._append(data[position:end.start() if end else len(data)])
            if end is None:
                break
            outcome = self._end_line()
            if outcome is not None:
                outcomes.append(outcome)
            position = end.end()
        self._last_ms = now
        return outcomes

    def _append(self, piece):
        if self._overlong_bytes:
            self._overlong_bytes += len(piece)
        elif len(self._line) + len(piece) > self.max_bytes:
            self._overlong_bytes = len(self._line) + len(piece)
            self._line.clear()
        else:
            self._line += piece

    def _end_line(self):
        if self._overlong_bytes:
            log.warning("扫码数据过长，已丢弃 / dropped a line of %d bytes (at most %d are taken)",
                        self._overlong_bytes, self.max_bytes)
            self.dropped_lines += 1
            self.reset()
            return None
        line = bytes(self._line)
        self.reset()
        if not line:
            return None
        strange = line.translate(None, _PRINTABLE)
        if strange:
            return ScanError(NON_PRINTABLE, "%d bytes such as 0x%02X" % (len(strange), strange[0]))
        return line.decode("ascii")


def parse_name(name, **keywords):
    """'serial:<device or pyserial URL>[?options]' -> (pyserial target, {option: value})."""
    assert name.startswith("serial:"), name
    device = name[len("serial:"):].partition("?")[0]
    if not device:
        raise ScannerError("缺少扫码枪设备路径 / serial: needs a device path or pyserial URL, "
                           "e.g. serial:/dev/ttyACM0")
    is_url = "://" in device
    device, given, leftover = split_options(name, "serial", OPTIONS, extra_allowed=is_url)
    for key, value in keywords.items():
        if key not in OPTIONS:
            raise ScannerError("未知的扫码枪选项 %r / unknown option %r (known: %s)"
                               % (key, key, ", ".join(OPTIONS)))
        given[key] = value
    options = {"baud": int_option("baud", given.get("baud", DEFAULT_BAUD), 50, 4_000_000),
               "suffix": choice_option("suffix", given.get("suffix", "line"), tuple(SUFFIXES)),
               "gap_ms": int_option("gap_ms", given.get("gap_ms", DEFAULT_GAP_MS), 1, 60_000),
               "max_bytes": int_option("max_bytes", given.get("max_bytes", DEFAULT_MAX_BYTES), 1, 1 << 20)}
    return device + ("?" + leftover if leftover else ""), options


def _open_error(device, error):
    code = getattr(error, "errno", None)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return ScannerError("找不到扫码枪 %s / no such device: %s" % (device, device))
    if code in (errno.EACCES, errno.EPERM):
        return ScannerError("没有权限打开扫码枪 %s / permission denied opening %s (the terminal's user needs the "
                            "dialout group, or a udev rule for the scanner)" % (device, device))
    if code in (errno.EAGAIN, errno.EBUSY) or "exclusively lock" in str(error):
        return ScannerError("扫码枪被其他程序占用 / another program holds %s" % device)
    if code in (errno.EISDIR, errno.ENOTTY) or "Could not configure port" in str(error):
        return ScannerError("不是串口设备 %s / %s is not a serial device: %s" % (device, device, error))
    return ScannerError("无法打开扫码枪 %s / cannot open %s: %s" % (device, device, error))


class SerialScanner(CodeScanner):
    """A line scanner on a pyserial port (see the module docstring)."""

    def __init__(self, name, port=None, **options):
        """port: an already open pyserial-like object (tests); otherwise the name's device is
        opened, exclusively, with a non-blocking read."""
        super().__init__()
        self.url = name
        target, self.options = parse_name(name, **options)
        if port is None:
            try:
                port = serial.serial_for_url(target, baudrate=self.options["baud"], timeout=0, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as error:
                raise _open_error(target.partition("?")[0], error)
        self.port = port
        self._framer = LineFramer(self.options["suffix"], self.options["max_bytes"], self.options["gap_ms"])

    @property
    def holds_partial(self):
        return self._framer.partial

    @property
    def dropped_scans(self):
        """Lines dropped because they were too long or cut by silence (each also logged)."""
        return self._framer.dropped_lines

    def _pump(self, wait_ms):
        now = now_ms()
        self._framer.expire(now)
        gap_left = self._framer.gap_left_ms(now)
        if gap_left is not None:
            wait_ms = max(0, min(wait_ms, gap_left))
        try:
            self.port.timeout = wait_ms / 1000
            data = self.port.read(1)
            if data:
                waiting = self.port.in_waiting
                if waiting:
                    data += self.port.read(min(waiting, READ_CHUNK_BYTES))
        except (serial.SerialException, OSError) as error:
            raise ScannerError("扫码枪已断开 / the scanner on %s is gone: %s" % (self.url, error))
        if not data:
            return False
        self._take(self._framer.feed(data, now_ms()))
        return True

    def discard_pending(self):
        super().discard_pending()
        self._framer.reset()
        try:
            self.port.reset_input_buffer()
        except (serial.SerialException, OSError) as error:
            raise ScannerError("扫码枪已断开 / the scanner on %s is gone: %s" % (self.url, error))

    def fileno(self):
        return self.port.fileno()      # io.UnsupportedOperation for URLs without one (loop://)

    def close(self):
        self.port.close()
