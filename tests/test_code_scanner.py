"""The canteen POS's code scanners (firmware/apps/code_scanner/).

`serial:` runs on a real pseudo-terminal driven by the scanner emulator and on pyserial's `loop://`:
every suffix, several codes in one burst, a code split across reads, a slow scanner, overlong
lines, non-printable bytes, a partial line followed by silence, timeouts, the port going away, and
each error when opening (missing path, not a serial device, held by another program, permission
denied for real: the open runs in a child without the capability that lets root past file modes).

`evdev:` (keyboard wedge) runs its real read path on a pipe carrying `struct input_event` bytes
packed here (timeval, type, code, value), with key down/up/auto-repeat values, SYN reports,
SYN_DROPPED, MSC_SCAN and Shift presses as a USB keyboard produces them; the characters expected
come from a US-layout table written out in this file, not the module's. The byte layout is checked
against python-evdev's own C reader. Opening a real event device is left to hardware: its errors
for a missing path, a file that is not one and permission denied are tested.
"""
import contextlib
import ctypes
import errno
import fcntl
import io
import logging
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import threading
import time

import pytest
from evdev import ecodes
from hypothesis import given, settings, strategies as st

from firmware.apps.code_scanner import (
    EVENTS_LOST, NON_PRINTABLE, UNMAPPED_KEY, ScanError, ScannerError, base, open_scanner, serial_line, wedge,
)
from simulators.scanner_emulator import ScannerEmulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
PAYMENT_CODE = "".join(random.Random(20261204).choice(BASE45) for _ in range(400))
WAIT_MS = 3000          # upper bound for a code that is already on its way; returns as soon as it is


# --- serial: through the emulator's pty and through loop:// ------------------------------------------

@contextlib.contextmanager
def serial_rig(kind, emulated_suffix="cr", **options):
    """(scanner, send_raw, scan) on a real pty behind the emulator, or on loop://."""
    if kind == "pty":
        with ScannerEmulator(suffix=emulated_suffix) as emulator, \
                open_scanner("serial:" + emulator.path, **options) as scanner:
            yield scanner, emulator.send_raw, emulator.scan
    else:
        suffix = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "tab": b"\t"}[emulated_suffix]
        with open_scanner("serial:loop://", **options) as scanner:
            yield scanner, scanner.port.write, lambda code: scanner.port.write(code.encode() + suffix)


def hold_partial(scanner):
    """Read until the scanner holds the start of a code (a pty passes written bytes on a moment
    later); the codes read on the way."""
    codes, deadline = [], time.monotonic() + WAIT_MS / 1000
    while not scanner.holds_partial:
        assert time.monotonic() < deadline, "the partial code never arrived"
        code = scanner.read_code(10)
        if code is not None:
            codes.append(code)
    return codes


@pytest.mark.parametrize("kind", ["pty", "loop"])
@pytest.mark.parametrize("emulated, driver", [("cr", "line"), ("lf", "line"), ("crlf", "line"), ("cr", "cr"),
                                              ("lf", "lf"), ("tab", "tab"), ("tab", "any"), ("crlf", "any")])
def test_each_suffix_ends_a_code(kind, emulated, driver):
    with serial_rig(kind, emulated, suffix=driver) as (scanner, _send, scan):
        scan(PAYMENT_CODE)
        scan("HELLO world 123")
        assert scanner.read_code(WAIT_MS) == PAYMENT_CODE
        assert scanner.read_code(WAIT_MS) == "HELLO world 123"
        assert scanner.read_code(0) is None            # the LF of a CRLF is no empty code


def test_a_suffix_the_driver_does_not_expect_gets_the_next_code_refused():
    # a scanner sending CRLF to a driver told `cr`: the LF starts the next line, which is refused
    with serial_rig("pty", "crlf", suffix="cr") as (scanner, _send, scan):
        scan("FIRST")
        scan("SECOND")
        assert scanner.read_code(WAIT_MS) == "FIRST"
        with pytest.raises(ScanError) as refused:
            scanner.read_code(WAIT_MS)
        assert refused.value.reason == NON_PRINTABLE and "0x0A" in refused.value.detail


@pytest.mark.parametrize("kind", ["pty", "loop"])
def test_codes_of_one_burst_come_one_at_a_time(kind):
    with serial_rig(kind) as (scanner, send, _scan):
        send(b"A1\rB2\r\r\rC3\r")
        assert [scanner.read_code(WAIT_MS) for _ in range(3)] == ["A1", "B2", "C3"]
        assert scanner.read_code(0) is None


@pytest.mark.parametrize("kind", ["pty", "loop"])
def test_a_code_split_across_reads_and_calls_is_whole(kind):
    with serial_rig(kind, gap_ms=60_000) as (scanner, send, _scan):
        send(b"HALF")
        assert scanner.read_code(0) is None             # the partial line is kept, not returned
        send(b"-DONE\r")
        assert scanner.read_code(WAIT_MS) == "HALF-DONE"


def test_a_slow_scanner_with_gaps_between_bytes_is_read_whole():
    with ScannerEmulator(char_gap_us=2000) as emulator, \
            open_scanner("serial:%s?gap_ms=2000" % emulator.path) as scanner:
        sender = threading.Thread(target=emulator.scan, args=(PAYMENT_CODE[:40],))
        sender.start()
        try:
            assert scanner.read_code(10_000) == PAYMENT_CODE[:40]
        finally:
            sender.join(10)
        assert not sender.is_alive()


@pytest.mark.parametrize("kind", ["pty", "loop"])
def test_an_overlong_line_is_dropped_whole_never_cut_into_a_code(kind, caplog):
    with serial_rig(kind) as (scanner, send, scan):
        with caplog.at_level(logging.WARNING, logger="ykt.scanner"):
            scan("7" * 1025)
            scan("8" * 1024)                             # exactly the most taken
            scan("GOOD")
            assert scanner.read_code(WAIT_MS) == "8" * 1024
            assert scanner.read_code(WAIT_MS) == "GOOD"
        assert scanner.dropped_scans == 1
        assert "dropped a line of 1025 bytes" in caplog.text and "7777" not in caplog.text
    with serial_rig(kind, max_bytes=16) as (scanner, send, _scan):
        # past one read on the pty; loop:// holds at most 4096 bytes, and its write waits for room
        send(b"X" * (5000 if kind == "pty" else 4000) + b"\rSHORT\r")
        assert scanner.read_code(WAIT_MS) == "SHORT"


@pytest.mark.parametrize("payload", [b"AB\x00CD", b"AB\x7fCD", b"\x1b[2~", "付款码".encode("utf-8"), b"\xff\xfe",
                                     b"A\tB"])
def test_a_line_with_a_non_printable_byte_is_refused_whole(payload):
    with serial_rig("pty") as (scanner, send, scan):
        send(payload + b"\r")
        scan("NEXT")
        with pytest.raises(ScanError) as refused:
            scanner.read_code(WAIT_MS)
        assert refused.value.reason == NON_PRINTABLE
        assert refused.value.text("zh").startswith("付款码含无法识别的字符")
        assert "not printable ASCII" in refused.value.text("en") and "scan again" in str(refused.value)
        assert scanner.read_code(WAIT_MS) == "NEXT"


def test_a_partial_line_then_silence_is_dropped_not_glued_to_the_next_code(caplog):
    with serial_rig("pty", gap_ms=100) as (scanner, send, scan), \
            caplog.at_level(logging.WARNING, logger="ykt.scanner"):
        send(b"JUNK")
        assert hold_partial(scanner) == []
        assert scanner.read_code(300) is None           # 100 ms of silence while waiting
        assert not scanner.holds_partial
        scan("GOOD")
        assert scanner.read_code(WAIT_MS) == "GOOD"
        # the same when nobody was reading during the silence: dropped before the new bytes are read
        send(b"MORE-JUNK")
        assert hold_partial(scanner) == []
        time.sleep(0.2)                                 # silence longer than gap_ms, nobody reading
        scan("BETTER")
        assert scanner.read_code(WAIT_MS) == "BETTER"
        assert scanner.dropped_scans == 2
    assert caplog.text.count("cut by") == 2


@pytest.mark.parametrize("kind", ["pty", "loop"])
def test_read_code_returns_none_at_its_timeout(kind):
    with serial_rig(kind) as (scanner, _send, _scan):
        assert scanner.read_code(0) is None
        assert scanner.read_code(30) is None
        for bad in (-1, 1.5, True, "10"):
            with pytest.raises(ValueError):
                scanner.read_code(bad)


def test_the_pty_can_be_selected_on():
    with serial_rig("pty") as (scanner, _send, scan):
        assert scanner.fileno() == scanner.port.fileno()
        assert select.select([scanner], [], [], 0)[0] == []
        scan("SELECTED")
        assert select.select([scanner], [], [], WAIT_MS / 1000)[0] == [scanner]
        assert scanner.read_code(0) == "SELECTED"


@pytest.mark.parametrize("kind", ["pty", "loop"])
def test_codes_scanned_while_nothing_was_due_can_be_discarded(kind):
    with serial_rig(kind, gap_ms=60_000) as (scanner, send, scan):
        scan("STALE-1")
        scan("STALE-2")
        send(b"STALE-PART")
        assert set(hold_partial(scanner)) <= {"STALE-1", "STALE-2"}
        scanner.discard_pending()
        assert not scanner.holds_partial
        assert scanner.read_code(0) is None
        scan("FRESH")
        assert scanner.read_code(WAIT_MS) == "FRESH"


def test_more_waiting_scans_than_the_bound_keep_the_newest(caplog):
    with serial_rig("loop") as (scanner, send, _scan):
        send(b"".join(b"C%d\r" % number for number in range(base.MAX_READY_CODES + 2)))
        got = []
        while (code := scanner.read_code(0)) is not None:
            got.append(code)
        assert got == ["C%d" % number for number in range(2, base.MAX_READY_CODES + 2)]
        assert scanner.overflowed_scans == 2


def test_a_scanner_that_goes_away_is_an_error():
    emulator = ScannerEmulator().start()
    with open_scanner("serial:" + emulator.path) as scanner:
        emulator.scan("LAST")
        assert scanner.read_code(WAIT_MS) == "LAST"
        emulator.stop()
        with pytest.raises(ScannerError, match="扫码枪已断开 / the scanner on .* is gone"):
            scanner.read_code(WAIT_MS)


def test_loop_url_options_and_fileno():
    with open_scanner("serial:loop://?logging=warning&suffix=tab", gap_ms=5000) as scanner:
        assert scanner.options == {"baud": 9600, "suffix": "tab", "gap_ms": 5000, "max_bytes": 1024}
        scanner.port.write(b"CODE\t")
        assert scanner.read_code(WAIT_MS) == "CODE"
        with pytest.raises(io.UnsupportedOperation):
            scanner.fileno()


@pytest.mark.parametrize("name, message", [
    ("usb:/dev/ttyACM0", r"未知的扫码枪 'usb:/dev/ttyACM0' / unknown scanner 'usb:/dev/ttyACM0' \(known: evdev:, serial:\)"),
    ("/dev/ttyACM0", "unknown scanner '/dev/ttyACM0'"),
    ("serial:", "缺少扫码枪设备路径 / serial: needs a device path"),
    ("serial:?baud=9600", "needs a device path"),
    ("serial:/dev/ttyNOSUCH9", "找不到扫码枪 /dev/ttyNOSUCH9 / no such device: /dev/ttyNOSUCH9"),
    ("serial:{tmp}/plain-file", "不是串口设备 .* is not a serial device"),
    ("serial:{tmp}", "不是串口设备 .* is not a serial device"),
    ("serial:/dev/null", "不是串口设备 /dev/null / /dev/null is not a serial device"),
    ("serial:nosuch://x", "无法打开扫码枪 nosuch://x / cannot open nosuch://x"),
    ("serial:/dev/ttyACM0?speed=9600", "未知的扫码枪选项 'speed' / unknown option 'speed'"),
    ("serial:loop://?suffix=etx", "扫码枪选项 suffix 无效 / option suffix must be one of line, cr, lf, tab, any"),
    ("serial:loop://?gap_ms=0", "option gap_ms must be an integer 1..60000"),
    ("serial:loop://?baud=fast", "option baud must be an integer"),
    ("serial:loop://?max_bytes=", "option max_bytes must be an integer"),
])
def test_opening_errors_say_what_is_wrong(name, message, tmp_path):
    (tmp_path / "plain-file").write_text("not a tty")
    with pytest.raises(ScannerError, match=message):
        open_scanner(name.format(tmp=tmp_path))


def test_unknown_keyword_options_are_refused():
    with pytest.raises(ScannerError, match="unknown option 'parity'"):
        open_scanner("serial:loop://", parity="E")
    with pytest.raises(ScannerError, match="unknown option 'baud'"):
        open_scanner("evdev:/dev/input/event0", baud=9600)


def test_a_port_another_program_holds_is_refused():
    with ScannerEmulator() as emulator, open_scanner("serial:" + emulator.path):
        with pytest.raises(ScannerError, match="扫码枪被其他程序占用 / another program holds"):
            open_scanner("serial:" + emulator.path)


def _as_unprivileged(command):
    """The command without root's way past file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv(1): cannot take away root's file access")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] + command


_OPEN_EACH = """
import sys
from firmware.apps.code_scanner import ScannerError, open_scanner
for name in sys.argv[1:]:
    try:
        open_scanner(name).close()
        print("opened")
    except ScannerError as error:
        print(error)
"""


def test_permission_denied_is_named(tmp_path):
    event_file = tmp_path / "event7"
    event_file.write_bytes(b"")
    os.chmod(event_file, 0)
    with ScannerEmulator() as emulator:
        os.chmod(emulator.path, 0)
        result = subprocess.run(_as_unprivileged([sys.executable, "-c", _OPEN_EACH, "serial:" + emulator.path,
                                                  "evdev:%s" % event_file]),
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    serial_line_text, evdev_line_text = result.stdout.splitlines()
    assert serial_line_text.startswith("没有权限打开扫码枪 %s / permission denied opening" % emulator.path)
    assert evdev_line_text.startswith("没有权限打开扫码枪 %s / permission denied opening" % event_file)
    assert "input group" in evdev_line_text and "dialout group" in serial_line_text


# --- the line framer alone ----------------------------------------------------------------------------

def test_framer_boundaries():
    framer = serial_line.LineFramer(max_bytes=4, gap_ms=100)
    assert framer.feed(b"ABCD\r\nABCDE\nAB", 0) == ["ABCD"]
    assert framer.partial and framer.gap_left_ms(40) == 60
    assert framer.feed(b"C\r", 50) == ["ABC"]                   # within the gap: one line
    assert framer.feed(b"XYZ", 60) == [] and framer.feed(b"\r", 160) == []    # the gap passed: dropped
    assert framer.dropped_lines == 2
    assert framer.feed(b"ABCDEFGH", 200) == [] and framer.expire(300) and not framer.partial
    assert framer.feed(b"OK\r", 400) == ["OK"] and framer.dropped_lines == 3


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.one_of(st.text(alphabet=BASE45, max_size=30).map(str.encode),
                                st.binary(max_size=12), st.just(b"x" * 40)), max_size=8),
       ends=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n"]), min_size=8, max_size=8),
       cuts=st.lists(st.integers(0, 400), max_size=6))
def test_framer_any_chunking_gives_the_same_codes(lines, ends, cuts):
    stream = b"".join(line.replace(b"\r", b"").replace(b"\n", b"") + end for line, end in zip(lines, ends))
    whole = serial_line.LineFramer(max_bytes=32).feed(stream, 0)
    framer = serial_line.LineFramer(max_bytes=32)
    pieces, start = [], 0
    for cut in sorted(cuts) + [len(stream)]:
        pieces.append(stream[start:max(start, cut)])
        start = max(start, cut)
    chunked = [outcome for piece in pieces for outcome in framer.feed(piece, 0)]

    def plain(outcomes):
        return [(o.reason, o.detail) if isinstance(o, ScanError) else o for o in outcomes]
    assert plain(chunked) == plain(whole)
    for outcome in whole:
        assert isinstance(outcome, ScanError) or (outcome.isprintable() and outcome.isascii() and 0 < len(outcome) <= 32)


# --- evdev: the keyboard-wedge decoder on raw input_event bytes ---------------------------------------

# The US layout as a table of its own: character -> (key, needs Shift).
_PLAIN = "`1234567890-=[]\\;',./ "
_SHIFTED = "~!@#$%^&*()_+{}|:\"<>? "
_PLAIN_KEYS = ["KEY_GRAVE"] + ["KEY_%d" % digit for digit in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0)] + [
    "KEY_MINUS", "KEY_EQUAL", "KEY_LEFTBRACE", "KEY_RIGHTBRACE", "KEY_BACKSLASH", "KEY_SEMICOLON",
    "KEY_APOSTROPHE", "KEY_COMMA", "KEY_DOT", "KEY_SLASH", "KEY_SPACE"]
US = {}
for _plain, _shifted, _key in zip(_PLAIN, _SHIFTED, _PLAIN_KEYS):
    US[_plain] = (ecodes.ecodes[_key], False)
    US.setdefault(_shifted, (ecodes.ecodes[_key], True))
for _letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
    US[_letter.lower()] = (ecodes.ecodes["KEY_" + _letter], False)
    US[_letter] = (ecodes.ecodes["KEY_" + _letter], True)
PRINTABLE = "".join(chr(code) for code in range(0x20, 0x7F))
assert set(US) == set(PRINTABLE)

EV_KEY, EV_SYN, EV_MSC = ecodes.EV_KEY, ecodes.EV_SYN, ecodes.EV_MSC
DOWN, UP, REPEAT = 1, 0, 2
K = ecodes.ecodes


def record(time_us, event_type, code, value):
    """One `struct input_event` as the kernel hands it to read(2): timeval (long sec, long usec),
    u16 type, u16 code, s32 value, native byte order."""
    return struct.pack("@llHHi", time_us // 1_000_000, time_us % 1_000_000, event_type, code, value)


class Typist:
    """Bytes of a USB keyboard typing text, as a wedge scanner does: for each key an MSC_SCAN (its
    value made up: the decoder ignores it), the key event and a SYN_REPORT, Shift pressed around
    shifted characters; 1.5 ms between reports."""

    def __init__(self, time_us=1_764_800_000_000_000):
        self.time_us = time_us

    def report(self, *events):
        out = b"".join(record(self.time_us, event_type, code, value) for event_type, code, value in events)
        out += record(self.time_us, EV_SYN, ecodes.SYN_REPORT, 0)
        self.time_us += 1500
        return out

    def key(self, code, value):
        return self.report((EV_MSC, ecodes.MSC_SCAN, 0x70000 + code), (EV_KEY, code, value))

    def tap(self, code):
        return self.key(code, DOWN) + self.key(code, UP)

    def type(self, text, enter=True, shift=K["KEY_LEFTSHIFT"]):
        out = b""
        for char in text:
            code, shifted = US[char]
            if shifted:
                out += self.key(shift, DOWN)
            out += self.tap(code)
            if shifted:
                out += self.key(shift, UP)
        return out + (self.tap(K["KEY_ENTER"]) if enter else b"")

    def pause(self, milliseconds):
        self.time_us += milliseconds * 1000


class PipeDevice:
    """What EvdevScanner asks of an evdev.InputDevice, with `fd` a pipe the test writes event bytes
    into; the kernel's side (capabilities, grab, held keys) is played by attributes."""

    def __init__(self, keys=None, grab_error=None, name="pipe scanner"):
        self.fd, self._writer = os.pipe()
        os.set_blocking(self.fd, False)
        fcntl.fcntl(self._writer, fcntl.F_SETPIPE_SZ, 1 << 20)      # room for a 1025-key code
        self.keys = list(range(1, 249)) if keys is None else keys
        self.grab_error = grab_error
        self.name = name
        self.held = []
        self.grabbed = self.closed = False

    def capabilities(self, absinfo=True):
        return {ecodes.EV_SYN: [0], ecodes.EV_KEY: self.keys}

    def grab(self):
        if self.grab_error:
            raise self.grab_error
        self.grabbed = True

    def ungrab(self):
        self.grabbed = False

    def active_keys(self):
        return list(self.held)

    def write(self, data):
        os.write(self._writer, data)

    def hang_up(self):
        os.close(self._writer)
        self._writer = None

    def close(self):
        if not self.closed:
            self.closed = True
            os.close(self.fd)
            if self._writer is not None:
                os.close(self._writer)


@contextlib.contextmanager
def wedge_rig(name="evdev:/dev/input/by-id/usb-test-event-kbd", **options):
    device = PipeDevice()
    with open_scanner(name, device=device, **options) as scanner:
        assert device.grabbed
        yield scanner, device, Typist()
    assert device.closed and not device.grabbed


def test_every_printable_character_and_a_payment_code_type_through():
    with wedge_rig() as (scanner, device, typist):
        device.write(typist.type(PRINTABLE) + typist.type(PAYMENT_CODE) + typist.type("lower case, Mixed/Case?"))
        assert scanner.read_code(WAIT_MS) == PRINTABLE
        assert scanner.read_code(WAIT_MS) == PAYMENT_CODE
        assert scanner.read_code(WAIT_MS) == "lower case, Mixed/Case?"
        assert scanner.read_code(0) is None


def test_shift_held_over_a_run_either_side_and_caps_lock():
    with wedge_rig() as (scanner, device, typist):
        # right Shift held across three keys, released, then lower case
        device.write(typist.key(K["KEY_RIGHTSHIFT"], DOWN) + typist.tap(K["KEY_A"]) + typist.tap(K["KEY_4"])
                     + typist.tap(K["KEY_SLASH"]) + typist.key(K["KEY_RIGHTSHIFT"], UP) + typist.tap(K["KEY_B"])
                     + typist.tap(K["KEY_ENTER"]))
        assert scanner.read_code(WAIT_MS) == "A$?b"
        # both Shifts down, one released: still shifted
        device.write(typist.key(K["KEY_LEFTSHIFT"], DOWN) + typist.key(K["KEY_RIGHTSHIFT"], DOWN)
                     + typist.key(K["KEY_LEFTSHIFT"], UP) + typist.tap(K["KEY_C"])
                     + typist.key(K["KEY_RIGHTSHIFT"], UP) + typist.tap(K["KEY_C"]) + typist.tap(K["KEY_ENTER"]))
        assert scanner.read_code(WAIT_MS) == "Cc"
        # Caps Lock turns letters round, Shift turns them back, digits and symbols are not affected
        device.write(typist.tap(K["KEY_CAPSLOCK"]) + typist.type("ab1-", enter=False) + typist.type("Z!")
                     + typist.tap(K["KEY_CAPSLOCK"]) + typist.type("ab"))
        assert scanner.read_code(WAIT_MS) == "AB1-z!"
        assert scanner.read_code(WAIT_MS) == "ab"


def test_key_repeat_and_releases_type_nothing():
    with wedge_rig() as (scanner, device, typist):
        device.write(typist.key(K["KEY_A"], DOWN) + typist.key(K["KEY_A"], REPEAT) + typist.key(K["KEY_A"], REPEAT)
                     + typist.key(K["KEY_A"], UP) + typist.key(K["KEY_LEFTSHIFT"], DOWN)
                     + typist.key(K["KEY_LEFTSHIFT"], REPEAT) + typist.tap(K["KEY_B"])
                     + typist.key(K["KEY_LEFTSHIFT"], UP) + typist.key(K["KEY_ENTER"], DOWN)
                     + typist.key(K["KEY_ENTER"], REPEAT) + typist.key(K["KEY_ENTER"], UP))
        assert scanner.read_code(WAIT_MS) == "aB"
        assert scanner.read_code(0) is None


def test_keypad_keys_and_keypad_enter():
    with wedge_rig() as (scanner, device, typist):
        keys = ["KEY_KP1", "KEY_KP0", "KEY_KPDOT", "KEY_KP5", "KEY_KPPLUS", "KEY_KPMINUS", "KEY_KPASTERISK",
                "KEY_KPSLASH", "KEY_NUMLOCK", "KEY_KP9"]
        device.write(b"".join(typist.tap(K[name]) for name in keys) + typist.tap(K["KEY_KPENTER"]))
        assert scanner.read_code(WAIT_MS) == "10.5+-*/9"


@pytest.mark.parametrize("keys, detail", [
    (["KEY_F5"], "KEY_F5"),
    (["KEY_ESC"], "KEY_ESC"),
    (["KEY_TAB"], "KEY_TAB"),
    (["KEY_LEFTCTRL+KEY_C"], "KEY_LEFTCTRL+KEY_C"),
    (["KEY_RIGHTALT+KEY_2"], "KEY_RIGHTALT+KEY_2"),
    (["KEY_UP", "KEY_F1"], "KEY_UP"),
])
def test_a_key_that_is_not_text_gets_the_code_refused(keys, detail):
    with wedge_rig() as (scanner, device, typist):
        data = typist.type("AB", enter=False)
        for key in keys:
            modifier, _, name = key.rpartition("+")
            if modifier:
                data += typist.key(K[modifier], DOWN) + typist.tap(K[name]) + typist.key(K[modifier], UP)
            else:
                data += typist.tap(K[name])
        device.write(data + typist.type("CD") + typist.type("NEXT"))
        with pytest.raises(ScanError) as refused:
            scanner.read_code(WAIT_MS)
        assert (refused.value.reason, refused.value.detail) == (UNMAPPED_KEY, detail)
        assert refused.value.text("zh").startswith("扫码枪输入了非文字按键") and "US keyboard" in refused.value.text("en")
        assert scanner.read_code(WAIT_MS) == "NEXT"


def test_tab_ends_a_code_when_it_is_the_suffix():
    with wedge_rig(suffix="tab") as (scanner, device, typist):
        device.write(typist.type("T1", enter=False) + typist.tap(K["KEY_TAB"]) + typist.type("E1"))
        assert scanner.read_code(WAIT_MS) == "T1"
        with pytest.raises(ScanError, match="KEY_ENTER"):
            device.write(typist.tap(K["KEY_TAB"]))
            scanner.read_code(WAIT_MS)
    with wedge_rig(suffix="any") as (scanner, device, typist):
        device.write(typist.type("T1", enter=False) + typist.tap(K["KEY_TAB"]) + typist.type("E1"))
        assert [scanner.read_code(WAIT_MS), scanner.read_code(WAIT_MS)] == ["T1", "E1"]


def test_enter_alone_is_no_code():
    with wedge_rig() as (scanner, device, typist):
        device.write(typist.tap(K["KEY_ENTER"]) + typist.tap(K["KEY_KPENTER"]) + typist.type("X"))
        assert scanner.read_code(WAIT_MS) == "X"


def test_lost_events_refuse_the_code_and_the_shift_state_is_read_again():
    with wedge_rig() as (scanner, device, typist):
        # "AB", then the kernel's buffer overran: events up to the next SYN_REPORT are not whole,
        # and the Shift press went missing with them; the device says Shift is held now
        device.held = [K["KEY_LEFTSHIFT"]]
        data = typist.type("AB", enter=False)
        data += record(typist.time_us, EV_SYN, ecodes.SYN_DROPPED, 0)
        data += record(typist.time_us, EV_KEY, K["KEY_Q"], DOWN)          # half a report: ignored
        data += record(typist.time_us, EV_SYN, ecodes.SYN_REPORT, 0)
        data += typist.type("c") + typist.tap(K["KEY_X"]) + typist.key(K["KEY_LEFTSHIFT"], UP)
        data += typist.type("y")
        device.write(data)
        with pytest.raises(ScanError) as refused:
            scanner.read_code(WAIT_MS)
        assert (refused.value.reason, refused.value.detail) == (EVENTS_LOST, "SYN_DROPPED")
        assert refused.value.text("en").startswith("Key events were lost")
        assert scanner.read_code(WAIT_MS) == "Xy"                # Shift held, as the device said


def test_a_pause_between_keys_splits_codes_by_the_events_own_time():
    with wedge_rig(gap_ms=100) as (scanner, device, typist):
        data = typist.type("JUNK", enter=False)
        typist.pause(101)                                        # on the events' clock only
        data += typist.type("GOOD")
        device.write(data)                                       # all read at once
        assert scanner.read_code(WAIT_MS) == "GOOD"
        assert scanner.dropped_scans == 1


def test_silence_with_no_events_drops_a_partial_code(caplog):
    with wedge_rig(gap_ms=100) as (scanner, device, typist), caplog.at_level(logging.WARNING, "ykt.scanner"):
        device.write(typist.type("JUNK", enter=False))
        assert scanner.read_code(300) is None
        device.write(typist.type("GOOD"))
        assert scanner.read_code(WAIT_MS) == "GOOD"
        assert scanner.dropped_scans == 1
    assert "dropped 4 characters of a code cut by 100 ms of silence" in caplog.text


def test_an_event_split_across_reads_is_put_together():
    with wedge_rig() as (scanner, device, typist):
        data = typist.type("SPLIT")
        device.write(data[:wedge.EVENT_BYTES * 3 + 7])
        assert scanner.read_code(0) is None
        device.write(data[wedge.EVENT_BYTES * 3 + 7:])
        assert scanner.read_code(WAIT_MS) == "SPLIT"


def test_overlong_codes_are_dropped_whole(caplog):
    with wedge_rig() as (scanner, device, typist), caplog.at_level(logging.WARNING, "ykt.scanner"):
        device.write(typist.type("1" * 1025) + typist.type("2" * 1024) + typist.type("OK"))
        assert scanner.read_code(WAIT_MS) == "2" * 1024
        assert scanner.read_code(WAIT_MS) == "OK"
    assert "dropped a code of 1025 characters (at most 1024 are taken)" in caplog.text


def test_timeout_fileno_and_discard_pending():
    with wedge_rig(gap_ms=60_000) as (scanner, device, typist):
        assert scanner.read_code(0) is None and scanner.read_code(30) is None
        assert scanner.fileno() == device.fd
        device.write(typist.type("STALE") + typist.key(K["KEY_LEFTSHIFT"], DOWN) + typist.tap(K["KEY_P"]))
        assert select.select([scanner], [], [], WAIT_MS / 1000)[0] == [scanner]
        scanner.discard_pending()                               # the stale code and the partial one go,
        device.write(typist.tap(K["KEY_Q"]) + typist.key(K["KEY_LEFTSHIFT"], UP) + typist.type("r"))
        assert scanner.read_code(WAIT_MS) == "Qr"              # the held Shift stays known


def test_a_device_that_goes_away_is_an_error():
    with wedge_rig() as (scanner, device, typist):
        device.write(typist.type("LAST"))
        device.hang_up()
        assert scanner.read_code(WAIT_MS) == "LAST"
        with pytest.raises(ScannerError, match="扫码枪已断开 / the scanner on .* is gone"):
            scanner.read_code(WAIT_MS)


def test_only_a_keyboard_is_taken_and_it_is_grabbed():
    mouse = PipeDevice(keys=[ecodes.BTN_LEFT, ecodes.BTN_RIGHT])
    with pytest.raises(ScannerError, match="不是键盘式扫码枪 .* is not a keyboard-wedge scanner: it has no KEY_ENTER"):
        wedge.EvdevScanner("evdev:/dev/input/event5", device=mouse)
    assert mouse.closed
    taken = PipeDevice(grab_error=OSError(errno.EBUSY, "Device or resource busy"))
    with pytest.raises(ScannerError, match="扫码枪已被其他程序独占 / another program has grabbed /dev/input/event6"):
        wedge.EvdevScanner("evdev:/dev/input/event6", device=taken)
    assert taken.closed


@pytest.mark.parametrize("name, message", [
    ("evdev:", "缺少扫码枪设备路径 / evdev: needs a device path"),
    ("evdev:/dev/input/event99", "找不到扫码枪 /dev/input/event99 / no such device"),
    ("evdev:/dev/null", "不是输入设备 /dev/null / /dev/null is not an input event device"),
    ("evdev:{tmp}", "is not an input event device"),
    ("evdev:/dev/input/event0?grab=no", "unknown option 'grab'"),
    ("evdev:/dev/input/event0?suffix=cr", "option suffix must be one of enter, tab, any"),
    ("evdev:/dev/input/event0?max_chars=0", "option max_chars must be an integer 1..65536"),
])
def test_evdev_opening_errors_say_what_is_wrong(name, message, tmp_path):
    with pytest.raises(ScannerError, match=message):
        open_scanner(name.format(tmp=tmp_path))


class _InputEvent(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long), ("type", ctypes.c_uint16),
                ("code", ctypes.c_uint16), ("value", ctypes.c_int32)]


def test_the_event_layout_is_the_kernels_as_python_evdev_reads_it():
    assert wedge.EVENT_BYTES == ctypes.sizeof(_InputEvent)
    typist = Typist()
    data = typist.type("Ab1") + record(typist.time_us, EV_KEY, K["KEY_A"], -1)
    mine = [(e.sec, e.usec, e.type, e.code, e.value) for e in wedge.unpack_events(data)]
    from evdev import _input                                  # python-evdev's C reader of event devices
    reader, writer = os.pipe()
    try:
        os.write(writer, data)
        theirs = [tuple(event) for event in _input.device_read_many(reader)]
    finally:
        os.close(reader)
        os.close(writer)
    assert mine == theirs and len(mine) == len(data) // wedge.EVENT_BYTES
