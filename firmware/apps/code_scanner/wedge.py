"""`evdev:` - a USB keyboard-wedge scanner: it presents itself as a keyboard and types each code,
ending it with Enter. Read through the Linux input layer with python-evdev.

    open_scanner("evdev:/dev/input/by-id/usb-Honeywell_Scanner-event-kbd")
    open_scanner("evdev:/dev/input/event3?suffix=any")

Options (`?key=value`, or keywords of open_scanner):

    suffix     enter   what ends a code: `enter` (Enter or keypad Enter, what scanners send by
                       default), `tab`, `any` (either)
    gap_ms     200     silence between two keys after which a partial code is dropped (as on
                       serial: scanners type a code in one burst, a few ms per key)
    max_chars  1024    longest code taken; a longer one is dropped whole with a logged warning

Three parts, so that all but the last can be tested without a device:

    unpack_events(data)   `struct input_event` bytes, as read(2) returns them from an event device
                          (<linux/input.h>: struct timeval, u16 type, u16 code, s32 value; 24 bytes
                          on 64-bit Linux), -> evdev.InputEvent
    WedgeDecoder          pure: InputEvents in, codes out (US layout, below)
    EvdevScanner          the device: opens it with evdev.InputDevice, checks it has Enter and the
                          digits, grabs it (EVIOCGRAB: the keys reach no console, no login prompt,
                          no other program) and then reads raw bytes from its descriptor with
                          select(2) and read(2), feeding them through unpack_events and the decoder

What the tests cover and what needs a real device. EvdevScanner takes an already open `device`
(anything with `fd`, `capabilities()`, `grab()`, `ungrab()`, `active_keys()`, `close()`), and the
tests give it one whose `fd` is a pipe carrying real `struct input_event` bytes: the whole read
path - select, read, partial events split across reads, unpacking, decoding, silence, the
capability check, a refused grab, the re-sync after SYN_DROPPED - runs as it does on a device.
`unpack_events` is checked against python-evdev's own C reader on the same bytes. Only
`open_input_device` (evdev.InputDevice on a path: its errors for a missing path, a file that is
not an input device and permission denied are tested) and the kernel's side of grab(),
capabilities() and active_keys() need a real /dev/input device.

Decoding (US layout, which scanners emit unless set otherwise):
- a key press (value 1) types its character; Shift (either) gives the shifted one; Caps Lock
  toggles the case of letters; keypad digits and operators type as on the main block (scanners
  that use them expect Num Lock on);
- key releases (0) type nothing, and neither does the kernel's auto-repeat (2): a scanner presses
  each key once, so a repeat means a release came late, not a second character;
- a key that types no character (F1, Esc, arrows, Tab unless it is the suffix) or any key with
  Ctrl, Alt or Meta held gets the code refused at its Enter: ScanError(UNMAPPED_KEY) naming the key;
- SYN_DROPPED (the kernel's buffer overran and events were lost) gets the code refused:
  ScanError(EVENTS_LOST); events up to the next SYN_REPORT are ignored and the modifier state is
  read again from the device (`held_keys`), as the kernel's input documentation asks;
- the silence between keys is measured on the events' own time stamps, so a POS that reads late
  still splits codes where the scanner paused; when no event comes at all, on the time this
  process last read one.
"""
import errno
import os
import select
import struct

from firmware.apps.code_scanner.base import (
    EVENTS_LOST, UNMAPPED_KEY, CodeScanner, ScanError, ScannerError, choice_option, int_option, log, now_ms,
    split_options,
)

EVENT_FORMAT = "llHHi"                     # native: struct timeval is two longs (sec, usec)
EVENT_BYTES = struct.calcsize(EVENT_FORMAT)
READ_EVENTS = 64                           # per read(2), like python-evdev's own read_many
MAX_DRAIN_READS = 64                       # discard_pending: reads of what is queued, at most
DEFAULT_GAP_MS = 200
DEFAULT_MAX_CHARS = 1024
SUFFIXES = {"enter": ("KEY_ENTER", "KEY_KPENTER"), "tab": ("KEY_TAB",),
            "any": ("KEY_ENTER", "KEY_KPENTER", "KEY_TAB")}
OPTIONS = ("suffix", "gap_ms", "max_chars")

# key name -> (character, character with Shift); letters are added in _key_map
_US_KEYS = {
    "KEY_1": "1!", "KEY_2": "2@", "KEY_3": "3#", "KEY_4": "4$", "KEY_5": "5%", "KEY_6": "6^", "KEY_7": "7&",
    "KEY_8": "8*", "KEY_9": "9(", "KEY_0": "0)", "KEY_MINUS": "-_", "KEY_EQUAL": "=+", "KEY_LEFTBRACE": "[{",
    "KEY_RIGHTBRACE": "]}", "KEY_BACKSLASH": "\\|", "KEY_SEMICOLON": ";:", "KEY_APOSTROPHE": "'\"",
    "KEY_GRAVE": "`~", "KEY_COMMA": ",<", "KEY_DOT": ".>", "KEY_SLASH": "/?", "KEY_SPACE": "  ",
    "KEY_KP0": "00", "KEY_KP1": "11", "KEY_KP2": "22", "KEY_KP3": "33", "KEY_KP4": "44", "KEY_KP5": "55",
    "KEY_KP6": "66", "KEY_KP7": "77", "KEY_KP8": "88", "KEY_KP9": "99", "KEY_KPDOT": "..",
    "KEY_KPSLASH": "//", "KEY_KPASTERISK": "**", "KEY_KPMINUS": "--", "KEY_KPPLUS": "++",
}
_SHIFTS = ("KEY_LEFTSHIFT", "KEY_RIGHTSHIFT")
_OTHER_MODIFIERS = ("KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_LEFTALT", "KEY_RIGHTALT", "KEY_LEFTMETA", "KEY_RIGHTMETA")
# a device without these is not a keyboard, so not a wedge scanner (a mouse, a power button)
_REQUIRED_KEYS = ("KEY_ENTER",) + tuple("KEY_%d" % digit for digit in range(10))


def import_evdev(error_type=ScannerError):
    """python-evdev, or `error_type` saying how to install it (the keypad reads through it too)."""
    try:
        import evdev
    except ImportError as error:
        raise error_type("未安装 python-evdev / python-evdev is not installed (pip install 'ykt[scanner]'): %s"
                         % error)
    return evdev


_evdev = import_evdev


_KEY_MAP = None


def _key_map():
    """{key code: (character, shifted character)}, letters marked by being in `letters`."""
    global _KEY_MAP
    if _KEY_MAP is None:
        codes = _evdev().ecodes.ecodes
        table = {codes[name]: tuple(pair) for name, pair in _US_KEYS.items()}
        letters = set()
        for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            table[codes["KEY_" + letter]] = (letter.lower(), letter)
            letters.add(codes["KEY_" + letter])
        _KEY_MAP = table, frozenset(letters)
    return _KEY_MAP


def key_name(code):
    name = _evdev().ecodes.KEY.get(code)
    if isinstance(name, (list, tuple)):
        name = name[0]
    return name or "key %d" % code


def unpack_events(data):
    """Whole `struct input_event` records -> [evdev.InputEvent]; len(data) must be a multiple of
    EVENT_BYTES (EvdevScanner keeps a record split across reads for the next one)."""
    assert len(data) % EVENT_BYTES == 0, len(data)
    InputEvent = _evdev().InputEvent
    return [InputEvent(*fields) for fields in struct.iter_unpack(EVENT_FORMAT, data)]


class WedgeDecoder:
    """InputEvents in, outcomes out: `feed(event)` returns a list, each a str (a code) or a
    ScanError (a refused one). `held_keys`: a function returning the key codes held now (the
    device's EVIOCGKEY), asked after SYN_DROPPED; None keeps the state as it was."""

    def __init__(self, suffix="enter", max_chars=DEFAULT_MAX_CHARS, gap_ms=DEFAULT_GAP_MS, held_keys=None):
        ecodes = _evdev().ecodes
        self._ecodes = ecodes
        self._map, self._letters = _key_map()
        self._ends = frozenset(ecodes.ecodes[name] for name in SUFFIXES[suffix])
        self._shift_keys = frozenset(ecodes.ecodes[name] for name in _SHIFTS)
        self._other_modifier_keys = frozenset(ecodes.ecodes[name] for name in _OTHER_MODIFIERS)
        self.max_chars = max_chars
        self.gap_us = gap_ms * 1000
        self._held_keys = held_keys
        self._shift = set()
        self._modifiers = set()
        self._caps = False
        self._dropping = False
        self._last_us = None
        self.dropped_codes = 0         # too long or cut by silence
        self.reset_code()

    def reset_code(self):
        self._chars = []
        self._overlong_chars = 0
        self._refusal = None

    @property
    def partial(self):
        return bool(self._chars) or self._overlong_chars > 0 or self._refusal is not None

    def silence(self):
        """No key came for gap_ms: drop a partial code (the reader calls this)."""
        if self.partial:
            self._drop("cut by %d ms of silence" % (self.gap_us // 1000))

    def feed_all(self, events):
        outcomes = []
        for event in events:
            outcomes.extend(self.feed(event))
        return outcomes

    def feed(self, event):
        ecodes = self._ecodes
        if event.type == ecodes.EV_SYN:
            if event.code == ecodes.SYN_DROPPED:
                self._dropping = True
                self._refuse(EVENTS_LOST, "SYN_DROPPED")
            elif event.code == ecodes.SYN_REPORT and self._dropping:
                self._dropping = False
                self._resync()
            return []
        if self._dropping or event.type != ecodes.EV_KEY:
            return []                  # MSC_SCAN, LEDs; anything until the SYN_REPORT after a drop
        now_us = event.sec * 1_000_000 + event.usec
        if self.partial and self._last_us is not None and now_us - self._last_us > self.gap_us:
            self._drop("cut by %d ms between keys" % ((now_us - self._last_us) // 1000))
        self._last_us = now_us
        code, value = event.code, event.value
        if code in self._shift_keys or code in self._other_modifier_keys:
            held = self._shift if code in self._shift_keys else self._modifiers
            if value == 1:
                held.add(code)
            elif value == 0:
                held.discard(code)
            return []
        if value != 1:
            return []                  # releases, and auto-repeat (module docstring)
        if code == ecodes.KEY_CAPSLOCK:
            self._caps = not self._caps
            return []
        if code == ecodes.KEY_NUMLOCK:
            return []
        if code in self._ends:
            return self._end()
        if self._modifiers:
            names = sorted(key_name(held) for held in self._modifiers)
            self._refuse(UNMAPPED_KEY, "+".join(names + [key_name(code)]))
            return []
        pair = self._map.get(code)
        if pair is None:
            self._refuse(UNMAPPED_KEY, key_name(code))
            return []
        shifted = bool(self._shift)
        if code in self._letters and self._caps:
            shifted = not shifted
        self._add(pair[1] if shifted else pair[0])
        return []

    def _add(self, char):
        if self._overlong_chars:
            self._overlong_chars += 1
        elif len(self._chars) >= self.max_chars:
            self._overlong_chars = len(self._chars) + 1
            self._chars = []
        else:
            self._chars.append(char)

    def _refuse(self, reason, detail):
        if self._refusal is None:
            self._refusal = ScanError(reason, detail)

    def _end(self):
        if self._overlong_chars:
            log.warning("扫码数据过长，已丢弃 / dropped a code of %d characters (at most %d are taken)",
                        self._overlong_chars, self.max_chars)
            self.dropped_codes += 1
            self.reset_code()
            return []
        refusal, text = self._refusal, "".join(self._chars)
        self.reset_code()
        if refusal is not None:
            return [refusal]
        return [text] if text else []

    def _drop(self, why):
        log.warning("扫码数据不完整，已丢弃 / dropped %d characters of a code %s",
                    self._overlong_chars or len(self._chars), why)
        self.dropped_codes += 1
        self.reset_code()

    def _resync(self):
        if self._held_keys is None:
            return
        held = set(self._held_keys())
        self._shift = held & self._shift_keys
        self._modifiers = held & self._other_modifier_keys


def open_input_device(path, error_type=ScannerError, device_zh="扫码枪", device_en="scanner"):
    """evdev.InputDevice(path), its errors as `error_type` naming the device in both languages (the
    cashier's keypad opens its device here too). Needs a real device beyond the errors."""
    evdev = _evdev()
    try:
        return evdev.InputDevice(path)
    except FileNotFoundError:
        raise error_type("找不到%s %s / no such device: %s" % (device_zh, path, path))
    except PermissionError:
        raise error_type("没有权限打开%s %s / permission denied opening %s (the terminal's user needs the "
                         "input group, or a udev rule for the %s)" % (device_zh, path, path, device_en))
    except OSError as error:
        if error.errno in (errno.ENOTTY, errno.EINVAL, errno.EISDIR):
            raise error_type("不是输入设备 %s / %s is not an input event device" % (path, path))
        if error.errno in (errno.ENODEV, errno.ENXIO):
            raise error_type("找不到%s %s / no such device: %s" % (device_zh, path, path))
        raise error_type("无法打开%s %s / cannot open %s: %s" % (device_zh, path, path, error))


def parse_name(name, **keywords):
    """'evdev:<event device path>[?options]' -> (path, {option: value})."""
    assert name.startswith("evdev:"), name
    path, given, _ = split_options(name, "evdev", OPTIONS)
    if not path:
        raise ScannerError("缺少扫码枪设备路径 / evdev: needs a device path, e.g. "
                           "evdev:/dev/input/by-id/usb-...-event-kbd")
    for key, value in keywords.items():
        if key not in OPTIONS:
            raise ScannerError("未知的扫码枪选项 %r / unknown option %r (known: %s)"
                               % (key, key, ", ".join(OPTIONS)))
        given[key] = value
    return path, {"suffix": choice_option("suffix", given.get("suffix", "enter"), tuple(SUFFIXES)),
                  "gap_ms": int_option("gap_ms", given.get("gap_ms", DEFAULT_GAP_MS), 1, 60_000),
                  "max_chars": int_option("max_chars", given.get("max_chars", DEFAULT_MAX_CHARS), 1, 1 << 16)}


class EventDevice:
    """What the wedge scanner and the cashier's keypad (firmware/apps/keypad.py) share: grabbing the
    device and reading whole events from it, their errors naming the device. Needs `device`, `path`
    and `_split` (the start of an event whose rest is in the next read)."""
    error_type = ScannerError
    device_zh, device_en = "扫码枪", "scanner"

    def _grab(self):
        try:
            self.device.grab()
        except OSError as error:
            if error.errno == errno.EBUSY:
                raise self.error_type("%s已被其他程序独占 / another program has grabbed %s" % (self.device_zh, self.path))
            raise self.error_type("无法独占%s %s / cannot grab %s: %s" % (self.device_zh, self.path, self.path, error))

    def _read(self):
        """One read(2) of whole events: the events, or None when nothing was there."""
        try:
            data = os.read(self.device.fd, EVENT_BYTES * READ_EVENTS)
        except BlockingIOError:
            return None
        except OSError as error:
            raise self.error_type("%s已断开 / the %s on %s is gone: %s" % (self.device_zh, self.device_en, self.path,
                                                                        error))
        if not data:
            raise self.error_type("%s已断开 / the %s on %s is gone: end of input" % (self.device_zh, self.device_en,
                                                                                   self.path))
        self._last_input_ms = now_ms()
        data = self._split + data
        whole = len(data) - len(data) % EVENT_BYTES
        self._split = data[whole:]
        return unpack_events(data[:whole])

    def fileno(self):
        return self.device.fd

    def close(self):
        try:
            self.device.ungrab()
        except OSError:
            pass                       # unplugged, or already closed
        self.device.close()


class EvdevScanner(EventDevice, CodeScanner):
    """A keyboard-wedge scanner on an event device (see the module docstring)."""

    def __init__(self, name, device=None, **options):
        """device: an already open evdev.InputDevice-like object (tests); otherwise the name's
        path is opened. Either way it is checked and grabbed here, and closed on failure."""
        super().__init__()
        self.url = name
        self.path, self.options = parse_name(name, **options)
        self._decoder = None
        self.device = device if device is not None else open_input_device(self.path)
        try:
            self._check_keyboard()
            self._decoder = WedgeDecoder(self.options["suffix"], self.options["max_chars"], self.options["gap_ms"],
                                         held_keys=self.device.active_keys)
            self._grab()
        except BaseException:
            self.device.close()
            raise
        self._split = b""              # the start of an event whose rest is in the next read
        self._last_input_ms = now_ms()

    def _check_keyboard(self):
        codes = _evdev().ecodes
        keys = set(self.device.capabilities(absinfo=False).get(codes.EV_KEY, ()))
        missing = [name for name in _REQUIRED_KEYS if codes.ecodes[name] not in keys]
        if missing:
            raise ScannerError("不是键盘式扫码枪 %s / %s (%s) is not a keyboard-wedge scanner: it has no %s"
                               % (self.path, self.path, getattr(self.device, "name", "?"), ", ".join(missing)))

    @property
    def holds_partial(self):
        return self._decoder.partial

    @property
    def dropped_scans(self):
        """Codes dropped because they were too long or cut by silence (each also logged)."""
        return self._decoder.dropped_codes

    def _pump(self, wait_ms):
        decoder = self._decoder
        if decoder.partial:
            wait_ms = max(0, min(wait_ms, self._last_input_ms + self.options["gap_ms"] - now_ms()))
        readable, _, _ = select.select([self.device.fd], [], [], wait_ms / 1000)
        events = self._read() if readable else None
        if events is None:
            if decoder.partial and now_ms() - self._last_input_ms >= self.options["gap_ms"]:
                decoder.silence()
            return False
        self._take(decoder.feed_all(events))
        return True

    def discard_pending(self):
        """Also reads and forgets what the kernel queued: the events still go through the decoder,
        so Shift and Caps Lock stay right, but no code from them is kept."""
        super().discard_pending()
        for _ in range(MAX_DRAIN_READS):
            if not select.select([self.device.fd], [], [], 0)[0]:
                break
            events = self._read()
            if events is None:
                break
            self._decoder.feed_all(events)
        self._decoder.reset_code()

