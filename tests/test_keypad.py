"""The cashier's keypad reader (firmware/apps/keypad.py) on its real read path.

A pipe stands in for the event device: the test writes real `struct input_event` records into it
(timeval, type, code, value) as a USB keypad produces them - MSC_SCAN, the key event, SYN_REPORT -
with presses, releases and the kernel's auto-repeat, SYN_DROPPED, and records split across reads.
The key names expected come from a table written out here, not the module's. Opening a real event
device is tested for its errors (missing path, a file that is not one, permission denied); a real
virtual keypad through uinput is typed on when this kernel has one.
"""
import contextlib
import errno
import logging
import os
import select
import shutil
import subprocess
import sys
import threading
import time

import pytest
from evdev import ecodes

from firmware.apps import keypad as keypad_module
from firmware.apps.code_scanner import wedge
from firmware.apps.keypad import EvdevKeypad, KeypadError, open_keypad
from firmware.core import keypad as key_entry, pos

import test_code_scanner as scanner_tests
from test_code_scanner import DOWN, EV_KEY, EV_SYN, K, REPEAT, UP, record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_MS = 3000          # upper bound for a key already on its way; returns as soon as it is
NAME = "evdev:/dev/input/by-id/usb-test-keypad-event-kbd"

# What each key of a keypad or keyboard is to the till, written out on its own.
EXPECTED = {
    "KEY_0": "0", "KEY_1": "1", "KEY_2": "2", "KEY_3": "3", "KEY_4": "4", "KEY_5": "5", "KEY_6": "6",
    "KEY_7": "7", "KEY_8": "8", "KEY_9": "9",
    "KEY_KP0": "0", "KEY_KP1": "1", "KEY_KP2": "2", "KEY_KP3": "3", "KEY_KP4": "4", "KEY_KP5": "5",
    "KEY_KP6": "6", "KEY_KP7": "7", "KEY_KP8": "8", "KEY_KP9": "9",
    "KEY_DOT": ".", "KEY_KPDOT": ".",
    "KEY_ENTER": "enter", "KEY_KPENTER": "enter", "KEY_KPPLUS": "enter",
    "KEY_BACKSPACE": "back",
    "KEY_ESC": "cancel", "KEY_DELETE": "cancel", "KEY_KPMINUS": "cancel",
    "KEY_F1": "f1", "KEY_F2": "f2", "KEY_F3": "f3", "KEY_F4": "f4", "KEY_F5": "f5", "KEY_F6": "f6",
    "KEY_F7": "f7", "KEY_F8": "f8", "KEY_F9": "f9", "KEY_F10": "f10", "KEY_F11": "f11", "KEY_F12": "f12",
}
# Keys a keyboard has that the till does not use.
IGNORED = ("KEY_A", "KEY_Q", "KEY_TAB", "KEY_SPACE", "KEY_LEFTSHIFT", "KEY_LEFTCTRL", "KEY_NUMLOCK",
           "KEY_KPASTERISK", "KEY_KPSLASH", "KEY_COMMA", "KEY_MINUS", "KEY_UP", "KEY_F13", "KEY_INSERT")
# A small keypad: keypad digits and operators only, no main row (what canteens buy).
KEYPAD_ONLY = [K[name] for name in ("KEY_KP0", "KEY_KP1", "KEY_KP2", "KEY_KP3", "KEY_KP4", "KEY_KP5", "KEY_KP6",
                                    "KEY_KP7", "KEY_KP8", "KEY_KP9", "KEY_KPDOT", "KEY_KPENTER", "KEY_KPPLUS",
                                    "KEY_KPMINUS", "KEY_KPASTERISK", "KEY_KPSLASH", "KEY_NUMLOCK",
                                    "KEY_BACKSPACE")]


class Typist(scanner_tests.Typist):
    """The scanner tests' keyboard, typing keys by name, several at a time, or held down."""

    def key(self, name, value):
        return scanner_tests.Typist.key(self, K[name] if isinstance(name, str) else name, value)

    def tap(self, *names):
        return b"".join(self.key(name, DOWN) + self.key(name, UP) for name in names)

    def hold(self, name, repeats):
        return self.key(name, DOWN) + b"".join(self.key(name, REPEAT) for _ in range(repeats)) + self.key(name, UP)


class PipeDevice(scanner_tests.PipeDevice):
    """The scanner tests' pipe device, named as a keypad."""

    def __init__(self, keys=None, grab_error=None, name="pipe keypad"):
        scanner_tests.PipeDevice.__init__(self, keys, grab_error, name)


@contextlib.contextmanager
def keypad_rig(keys=None):
    device = PipeDevice(keys)
    with open_keypad(NAME, device=device) as keypad:
        assert device.grabbed                 # a PIN typed on it reaches no console
        yield keypad, device, Typist()
    assert device.closed and not device.grabbed


def read_all(keypad):
    """Every key written so far: the first may still be on its way, the rest came with it."""
    first = keypad.read_key(WAIT_MS)
    return [] if first is None else [first] + take_now(keypad)


def take_now(keypad):
    """Every key that has already arrived."""
    keys = []
    key = keypad.read_key(0)
    while key is not None:
        keys.append(key)
        key = keypad.read_key(0)
    return keys


def test_an_amount_typed_on_the_main_row_and_on_the_keypad():
    with keypad_rig() as (keypad, device, typist):
        device.write(typist.tap("KEY_1", "KEY_2", "KEY_DOT", "KEY_5", "KEY_ENTER"))
        assert read_all(keypad) == ["1", "2", ".", "5", "enter"]
        device.write(typist.tap("KEY_KP1", "KEY_KP2", "KEY_KPDOT", "KEY_KP5", "KEY_KPENTER"))
        assert read_all(keypad) == ["1", "2", ".", "5", "enter"]


def test_the_keys_become_the_pos_machines_events():
    entry = key_entry.KeyEntry()
    with keypad_rig(KEYPAD_ONLY) as (keypad, device, typist):
        device.write(typist.tap("KEY_KP1", "KEY_KP2", "KEY_KPDOT", "KEY_KP5", "KEY_KPPLUS"))
        events = []
        for key in read_all(keypad):
            events.extend(entry.press(key, pos.IDLE))
        assert events == [pos.AmountKeyed(1250)]


def test_every_key_of_the_table_and_nothing_else():
    with keypad_rig() as (keypad, device, typist):
        names = sorted(EXPECTED)
        device.write(typist.tap(*IGNORED) + typist.tap(*names) + typist.tap(*IGNORED))
        assert read_all(keypad) == [EXPECTED[name] for name in names]


def test_a_held_key_counts_once():
    with keypad_rig() as (keypad, device, typist):
        # auto-repeat while a key is held must neither type 8888 nor confirm a tap twice
        device.write(typist.hold("KEY_8", 25) + typist.hold("KEY_KPENTER", 25) + typist.tap("KEY_ESC"))
        assert read_all(keypad) == ["8", "enter", "cancel"]


def test_releases_and_modifiers_type_nothing():
    with keypad_rig() as (keypad, device, typist):
        data = typist.key("KEY_LEFTSHIFT", DOWN) + typist.tap("KEY_8") + typist.key("KEY_LEFTSHIFT", UP)
        data += typist.key("KEY_3", UP) + typist.key("KEY_ENTER", UP)           # releases alone
        data += typist.key("KEY_LEFTCTRL", DOWN) + typist.tap("KEY_F2") + typist.key("KEY_LEFTCTRL", UP)
        device.write(data)
        assert read_all(keypad) == ["8", "f2"]                                  # Shift+8 is still 8, no "*"


def test_an_event_split_across_reads_is_put_together():
    with keypad_rig() as (keypad, device, typist):
        data = typist.tap("KEY_4", "KEY_2", "KEY_ENTER")
        cut = wedge.EVENT_BYTES * 7 + 7                # inside the record of the 2's press
        device.write(data[:cut])
        assert keypad.read_key(WAIT_MS) == "4"
        assert keypad.read_key(0) is None
        device.write(data[cut:])
        assert read_all(keypad) == ["2", "enter"]


def test_every_possible_cut_gives_the_same_keys():
    typist = Typist()
    data = typist.tap("KEY_KP7", "KEY_KPDOT", "KEY_BACKSPACE", "KEY_F12")
    for cut in range(1, len(data)):
        with keypad_rig() as (keypad, device, _):
            device.write(data[:cut])
            keys = take_now(keypad)
            device.write(data[cut:])
            assert keys + take_now(keypad) == ["7", ".", "back", "f12"], cut


def test_lost_events_are_skipped_to_the_next_report(caplog):
    with keypad_rig() as (keypad, device, typist), caplog.at_level(logging.DEBUG, logger="ykt.keypad"):
        data = typist.tap("KEY_1", "KEY_2")
        data += record(typist.time_us, EV_SYN, ecodes.SYN_DROPPED, 0)
        data += record(typist.time_us, EV_KEY, K["KEY_9"], DOWN)               # half a report: ignored
        data += record(typist.time_us, EV_SYN, ecodes.SYN_REPORT, 0)
        data += typist.tap("KEY_3", "KEY_ENTER")
        device.write(data)
        assert read_all(keypad) == ["1", "2", "3", "enter"]
        assert keypad.lost_reports == 1
    assert "key events from %s were lost (SYN_DROPPED)" % NAME[len("evdev:"):] in caplog.text


def test_read_key_waits_and_times_out():
    with keypad_rig() as (keypad, device, typist):
        assert keypad.read_key(0) is None and keypad.read_key(30) is None
        for bad in (-1, 1.5, True, "10", None):
            with pytest.raises(ValueError):
                keypad.read_key(bad)
        later = threading.Timer(0.05, device.write, (typist.tap("KEY_6"),))
        later.start()
        try:
            assert keypad.read_key(WAIT_MS) == "6"     # a key pressed while read_key waits
        finally:
            later.join()


def test_fileno_can_be_selected_on():
    with keypad_rig() as (keypad, device, typist):
        assert keypad.fileno() == device.fd
        assert select.select([keypad], [], [], 0)[0] == []
        device.write(typist.tap("KEY_5"))
        assert select.select([keypad], [], [], WAIT_MS / 1000)[0] == [keypad]
        assert keypad.read_key(0) == "5"


def test_a_burst_of_keys_comes_through_whole_in_order():
    with keypad_rig() as (keypad, device, typist):
        names = ["KEY_%d" % (number % 10) for number in range(300)]       # far more than one read holds
        device.write(typist.tap(*names))
        assert take_now(keypad) == [str(number % 10) for number in range(300)]


def test_releases_alone_do_not_hold_the_caller():
    with keypad_rig() as (keypad, device, typist):
        # far more than MAX_LATE_READS reads of releases (64 events a read, 3 a release)
        device.write(b"".join(typist.key("KEY_5", UP) for _ in range(40 * keypad_module.MAX_LATE_READS)))
        assert keypad.read_key(0) is None
        assert select.select([keypad], [], [], 0)[0] == [keypad]     # it gave up with input still there
        device.write(typist.tap("KEY_5"))
        assert keypad.read_key(WAIT_MS) == "5"          # and the rest is read on the next call


def test_no_key_is_ever_logged(caplog):
    with keypad_rig() as (keypad, device, typist), caplog.at_level(logging.DEBUG):
        data = typist.tap("KEY_3", "KEY_1", "KEY_4")
        data += record(typist.time_us, EV_SYN, ecodes.SYN_DROPPED, 0) + typist.tap("KEY_1", "KEY_5", "KEY_9")
        device.write(data)
        assert read_all(keypad) == ["3", "1", "4", "5", "9"]     # the 1 fell in the lost report
    assert caplog.records                               # the lost events were logged...
    for logged in caplog.records:                       # ...and no digit typed with them
        assert not set("31459") & set(logged.getMessage()), logged.getMessage()


def test_a_keypad_that_goes_away_is_an_error():
    with keypad_rig() as (keypad, device, typist):
        device.write(typist.tap("KEY_1", "KEY_ENTER"))
        device.hang_up()
        assert keypad.read_key(WAIT_MS) == "1" and keypad.read_key(WAIT_MS) == "enter"
        with pytest.raises(KeypadError, match="数字键盘已断开 / the keypad on .* is gone: end of input"):
            keypad.read_key(WAIT_MS)


def test_a_read_error_is_the_keypad_gone(tmp_path):
    device = PipeDevice()
    keypad = EvdevKeypad(NAME, device=device)
    os.close(device.fd)
    device.fd = os.open(tmp_path, os.O_RDONLY)       # always readable, and read(2) fails (EISDIR)
    try:
        with pytest.raises(KeypadError, match=r"数字键盘已断开 / the keypad on .* is gone: \[Errno %d\]"
                                              % errno.EISDIR):
            keypad.read_key(WAIT_MS)
    finally:
        keypad.close()


def test_only_a_keypad_or_keyboard_is_taken_and_it_is_grabbed():
    mouse = PipeDevice(keys=[ecodes.BTN_LEFT, ecodes.BTN_RIGHT], name="USB mouse")
    with pytest.raises(KeypadError, match=r"不是数字键盘 /dev/input/event5 / /dev/input/event5 \(USB mouse\) is "
                                          "not a numeric keypad or keyboard: it has no Enter and no digits 0-9"):
        EvdevKeypad("evdev:/dev/input/event5", device=mouse)
    assert mouse.closed
    no_digits = PipeDevice(keys=[K["KEY_ENTER"], K["KEY_KPENTER"], K["KEY_1"], K["KEY_KP2"]] +
                           [K["KEY_%d" % digit] for digit in range(9)])            # KEY_9 missing
    with pytest.raises(KeypadError, match="it has no digits 0-9"):
        EvdevKeypad("evdev:/dev/input/event6", device=no_digits)
    assert no_digits.closed
    power_button = PipeDevice(keys=[K["KEY_POWER"]] + [K["KEY_%d" % digit] for digit in range(10)])
    with pytest.raises(KeypadError, match="it has no Enter$"):
        EvdevKeypad("evdev:/dev/input/event7", device=power_button)
    taken = PipeDevice(grab_error=OSError(errno.EBUSY, "Device or resource busy"))
    with pytest.raises(KeypadError, match="数字键盘已被其他程序独占 / another program has grabbed /dev/input/event8"):
        EvdevKeypad("evdev:/dev/input/event8", device=taken)
    assert taken.closed
    refused = PipeDevice(grab_error=OSError(errno.EINVAL, "Invalid argument"))
    with pytest.raises(KeypadError, match="无法独占数字键盘 /dev/input/event9 / cannot grab"):
        EvdevKeypad("evdev:/dev/input/event9", device=refused)
    small = PipeDevice(keys=KEYPAD_ONLY)                # keypad digits and keypad Enter are enough
    EvdevKeypad("evdev:/dev/input/event10", device=small).close()
    assert small.closed and not small.grabbed


@pytest.mark.parametrize("name, message", [
    ("evdev:", "缺少数字键盘设备路径 / evdev: needs a device path"),
    ("serial:/dev/ttyACM0", r"未知的数字键盘 'serial:/dev/ttyACM0' / unknown keypad .* \(known: evdev:\)"),
    ("/dev/input/event3", "unknown keypad '/dev/input/event3'"),
    ("evdev:/dev/input/event0?grab=no", "数字键盘没有选项 / the keypad takes no options"),
    ("evdev:/dev/input/event99", "找不到数字键盘 /dev/input/event99 / no such device: /dev/input/event99"),
    ("evdev:/dev/null", "不是输入设备 /dev/null / /dev/null is not an input event device"),
    ("evdev:{tmp}/event4", "不是输入设备 .* is not an input event device"),
    ("evdev:{tmp}", "is not an input event device"),
])
def test_opening_errors_say_what_is_wrong(name, message, tmp_path):
    (tmp_path / "event4").write_bytes(b"\0" * 48)
    with pytest.raises(KeypadError, match=message):
        open_keypad(name.format(tmp=tmp_path))


_OPEN = """
import sys
from firmware.apps.keypad import KeypadError, open_keypad
try:
    open_keypad(sys.argv[1]).close()
    print("opened")
except KeypadError as error:
    print(error)
"""


def test_permission_denied_is_named(tmp_path):
    event_file = tmp_path / "event7"
    event_file.write_bytes(b"")
    os.chmod(event_file, 0)
    command = [sys.executable, "-c", _OPEN, "evdev:%s" % event_file]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv(1): cannot take away root's file access")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] + command
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("没有权限打开数字键盘 %s / permission denied opening %s" % (event_file, event_file))
    assert "input group" in result.stdout


def _uinput_reason():
    if not os.path.exists("/dev/uinput"):
        return "this kernel has no uinput (/dev/uinput is missing): the pipe tests type the same keys"
    if not os.access("/dev/uinput", os.R_OK | os.W_OK):
        return "/dev/uinput is not writable by this user: the pipe tests type the same keys"
    return None


@pytest.mark.skipif(_uinput_reason() is not None, reason=_uinput_reason() or "")
def test_a_real_virtual_keypad_through_uinput():
    import evdev
    keys = [K[name] for name in EXPECTED] + [K["KEY_A"]]
    with evdev.UInput({ecodes.EV_KEY: keys}, name="ykt test keypad") as virtual:
        deadline = time.monotonic() + WAIT_MS / 1000
        while not os.path.exists(virtual.device.path):       # udev makes the node a moment later
            assert time.monotonic() < deadline, "no device node for the virtual keypad"
            time.sleep(0.01)
        with open_keypad("evdev:" + virtual.device.path) as keypad:
            for name in ("KEY_1", "KEY_2", "KEY_DOT", "KEY_5", "KEY_A", "KEY_ENTER"):
                virtual.write(ecodes.EV_KEY, K[name], DOWN)
                virtual.syn()
                virtual.write(ecodes.EV_KEY, K[name], UP)
                virtual.syn()
            assert read_all(keypad) == ["1", "2", ".", "5", "enter"]
            with pytest.raises(KeypadError, match="another program has grabbed"):
                open_keypad("evdev:" + virtual.device.path)
