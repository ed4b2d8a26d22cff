"""`evdev:` - the cashier's USB numeric keypad, or a whole USB keyboard, read through the Linux
input layer with python-evdev. Its keys become the key names of firmware/core/keypad.py.

    with open_keypad("evdev:/dev/input/by-id/usb-Keypad-event-kbd") as keypad:
        key = keypad.read_key(timeout_ms=200)       # "1", ".", "enter", "f3", ... or None

    digits          KEY_0..9, KEY_KP0..9 -> "0".."9"   (raw key codes: Num Lock plays no part)
    .               KEY_DOT, KEY_KPDOT -> "."
    enter           KEY_ENTER, KEY_KPENTER, KEY_KPPLUS (the big key beside the digits)
    back            KEY_BACKSPACE
    cancel          KEY_ESC, KEY_DELETE, KEY_KPMINUS
    f1..f12         KEY_F1..KEY_F12: dish shortcuts

Only presses count (value 1): releases and the kernel's auto-repeat (2) give nothing, so a key held
down neither types 8888 nor confirms twice. Other keys, and Shift or Ctrl with these, are ignored.

The device is grabbed (EVIOCGRAB) for as long as it is open: a PIN typed on it reaches no console,
login prompt or other program. For the same reason nothing here logs a key. The read path is the
keyboard-wedge scanner's (firmware/apps/code_scanner/wedge.py): select(2) and read(2) on the
descriptor, `struct input_event` records unpacked by its `unpack_events`, a record split across two
reads kept for the next one, and after SYN_DROPPED (the kernel's buffer overran) events ignored up
to the next SYN_REPORT; a key lost that way is missing from the entry line the cashier sees.

`EvdevKeypad(name, device=...)` takes an already open evdev.InputDevice-like object (`fd`,
`capabilities()`, `grab()`, `ungrab()`, `close()`), which is how the tests run the whole read path
on a pipe; only opening a real device needs one.
"""
import collections
import logging
import select

from firmware.apps.code_scanner.base import now_ms
from firmware.apps.code_scanner.wedge import EventDevice, import_evdev, open_input_device

log = logging.getLogger("ykt.keypad")

SCHEME = "evdev"
# Reads past read_key's deadline while input keeps arriving without a key press, at most.
MAX_LATE_READS = 64

# evdev key name -> the core's key name (firmware/core/keypad.py)
_KEY_NAMES = {"KEY_DOT": ".", "KEY_KPDOT": ".", "KEY_ENTER": "enter", "KEY_KPENTER": "enter",
              "KEY_KPPLUS": "enter", "KEY_BACKSPACE": "back", "KEY_ESC": "cancel", "KEY_DELETE": "cancel",
              "KEY_KPMINUS": "cancel"}
for _digit in range(10):
    _KEY_NAMES["KEY_%d" % _digit] = _KEY_NAMES["KEY_KP%d" % _digit] = str(_digit)
for _number in range(1, 13):
    _KEY_NAMES["KEY_F%d" % _number] = "f%d" % _number
_ENTER_KEYS = ("KEY_ENTER", "KEY_KPENTER")
_DIGIT_ROWS = (tuple("KEY_%d" % digit for digit in range(10)), tuple("KEY_KP%d" % digit for digit in range(10)))


class KeypadError(Exception):
    """The keypad cannot be opened or read: its text is Chinese, then English."""


def _evdev():
    return import_evdev(KeypadError)


_KEY_MAP = None


def _key_map():
    """{key code: key name} from the table above."""
    global _KEY_MAP
    if _KEY_MAP is None:
        codes = _evdev().ecodes.ecodes
        _KEY_MAP = {codes[name]: key for name, key in _KEY_NAMES.items()}
    return _KEY_MAP


def parse_name(name):
    """'evdev:<event device path>' -> the path."""
    scheme, colon, path = name.partition(":")
    if not colon or scheme != SCHEME:
        raise KeypadError("未知的数字键盘 %r / unknown keypad %r (known: evdev:)" % (name, name))
    if not path:
        raise KeypadError("缺少数字键盘设备路径 / evdev: needs a device path, e.g. "
                          "evdev:/dev/input/by-id/usb-...-event-kbd")
    if "?" in path:
        raise KeypadError("数字键盘没有选项 / the keypad takes no options: %r" % name)
    return path


def open_keypad(name, device=None):
    """The keypad `name` names ("evdev:/dev/input/..."), opened, checked and grabbed; `device`
    hands in an already open event device, as tests do."""
    return EvdevKeypad(name, device)


class EvdevKeypad(EventDevice):
    """A numeric keypad or keyboard on an event device (see the module docstring)."""
    error_type = KeypadError
    device_zh, device_en = "数字键盘", "keypad"

    def __init__(self, name, device=None):
        """device: an already open evdev.InputDevice-like object (tests); otherwise the name's
        path is opened. Either way it is checked and grabbed here, and closed on failure."""
        self.url = name
        self.path = parse_name(name)
        self._keys = _key_map()
        # the wedge scanner's opener, its errors in the keypad's words (evdev is imported by now)
        self.device = device if device is not None else open_input_device(self.path, KeypadError, "数字键盘", "keypad")
        try:
            self._check_keypad()
            self._grab()
        except BaseException:
            self.device.close()
            raise
        self._split = b""              # the start of an event whose rest is in the next read
        # keys of one read not yet returned: read only when it is empty, so at most READ_EVENTS
        self._ready = collections.deque()
        self._dropping = False
        self.lost_reports = 0          # SYN_DROPPED seen: key presses may be missing

    def _check_keypad(self):
        codes = _evdev().ecodes
        keys = set(self.device.capabilities(absinfo=False).get(codes.EV_KEY, ()))
        missing = []
        if not any(codes.ecodes[name] in keys for name in _ENTER_KEYS):
            missing.append("Enter")
        if not any(all(codes.ecodes[name] in keys for name in row) for row in _DIGIT_ROWS):
            missing.append("digits 0-9")
        if missing:
            raise KeypadError("不是数字键盘 %s / %s (%s) is not a numeric keypad or keyboard: it has no %s"
                              % (self.path, self.path, getattr(self.device, "name", "?"), " and no ".join(missing)))

    def read_key(self, timeout_ms):
        """The next key pressed, by name, or None when none is pressed within timeout_ms (an int,
        0 = only what has already arrived). Raises KeypadError when the keypad is gone."""
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 0:
            raise ValueError("timeout_ms must be an int >= 0, not %r" % (timeout_ms,))
        deadline_ms = now_ms() + timeout_ms
        late_reads = 0
        while not self._ready:
            remaining_ms = deadline_ms - now_ms()
            read = self._pump(max(remaining_ms, 0))
            if remaining_ms <= 0:
                # past the deadline, what already arrived is still read (more than one read's worth
                # may be queued), but a device sending only releases cannot hold the caller for ever
                late_reads += 1
                if not read or late_reads >= MAX_LATE_READS:
                    return None
        return self._ready.popleft()

    def _pump(self, wait_ms):
        """Wait at most wait_ms for input and take one read of it: True when something was read."""
        readable, _, _ = select.select([self.device.fd], [], [], wait_ms / 1000)
        events = self._read() if readable else None
        if events is None:
            return False
        self._take(events)
        return True

    def _take(self, events):
        ecodes = _evdev().ecodes
        for event in events:
            if event.type == ecodes.EV_SYN:
                if event.code == ecodes.SYN_DROPPED:
                    self._dropping = True
                    self.lost_reports += 1
                    log.warning("数字键盘按键事件丢失 / key events from %s were lost (SYN_DROPPED): a key may "
                                "be missing from the entry", self.path)
                elif event.code == ecodes.SYN_REPORT:
                    self._dropping = False
                continue
            if self._dropping or event.type != ecodes.EV_KEY or event.value != 1:
                continue               # half a report after a drop, MSC_SCAN, LEDs, releases, auto-repeat
            key = self._keys.get(event.code)
            if key is None:
                continue
            self._ready.append(key)

    # fileno() (EventDevice): select() on it only after read_key returned None - keys of one read
    # that read_key has not returned yet are held here, not on the descriptor.

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
