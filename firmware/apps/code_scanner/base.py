"""What every code scanner driver shares: the interface, its two errors, the bounded queue of codes
read but not yet taken, and the parsing of a name's `?key=value` options.

Two errors, because the POS does two different things with them:

    ScannerError   the scanner cannot be opened or is gone (unknown name, no such device, permission
                   denied, not a scanner, unplugged): the terminal cannot take payment codes until
                   someone fixes it - shown to staff, logged
    ScanError      one scan arrived damaged (non-printable bytes, a key that is not text, events
                   the kernel dropped): the POS shows `text(lang)` and the customer scans again;
                   the scanner itself is fine and read_code may be called again at once

A code that is too long, and a partial code followed by silence, are neither: they are dropped with
a logged warning, because they are what line noise, a scanner unplugged mid-code or a cable wiggle
produce, and showing a customer an error for them would come at random moments.
"""
import collections
import io
import logging
import time
import urllib.parse

log = logging.getLogger("ykt.scanner")

# read but not yet taken: a POS takes each code at once; more waiting than this are stale scans
MAX_READY_CODES = 8

NON_PRINTABLE = "non_printable"
UNMAPPED_KEY = "unmapped_key"
EVENTS_LOST = "events_lost"

# reason -> (Chinese, English), shown on the POS display; %(detail)s names what was wrong
_SCAN_TEXTS = {
    NON_PRINTABLE: ("付款码含无法识别的字符，请重新扫码",
                    "The scanned code has characters that are not printable ASCII (%(detail)s): scan again"),
    UNMAPPED_KEY: ("扫码枪输入了非文字按键，请重新扫码（扫码枪应设为美式键盘）",
                   "The scanner typed a key that is not text (%(detail)s): scan again; the scanner "
                   "should be set to the US keyboard layout"),
    EVENTS_LOST: ("扫码数据丢失，请重新扫码",
                  "Key events were lost while the code was typed (%(detail)s): scan again"),
}


class ScannerError(Exception):
    """The scanner cannot be opened or read: its text is Chinese, then English."""


class ScanError(Exception):
    """One scanned code was refused; `reason` is NON_PRINTABLE, UNMAPPED_KEY or EVENTS_LOST and
    `detail` says what was found (never the code itself: it is a payment credential)."""

    def __init__(self, reason, detail=""):
        self.reason = reason
        self.detail = detail
        super().__init__("%s / %s" % (self.text("zh"), self.text("en")))

    def text(self, lang="zh"):
        zh, en = _SCAN_TEXTS[self.reason]
        return (en if lang == "en" else zh) % {"detail": self.detail}


def now_ms():
    return time.monotonic_ns() // 1_000_000


class CodeScanner:
    """One scanner. Drivers fill `_ready` (codes as str, refused scans as ScanError instances, in
    the order they were scanned) and implement `_pump(wait_ms)`: wait at most wait_ms for input
    (less when a partial code's silence ends sooner) and take what came, one bounded read."""

    url = ""

    def __init__(self):
        self._ready = collections.deque()
        self.overflowed_scans = 0       # dropped because MAX_READY_CODES were waiting

    def read_code(self, timeout_ms):
        """The next complete code as a str, or None when none is complete within timeout_ms
        (an int, 0 = only what has already arrived). Raises ScanError for a refused scan (the next
        call goes on with what follows it) and ScannerError when the scanner is gone."""
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 0:
            raise ValueError("timeout_ms must be an int >= 0, not %r" % (timeout_ms,))
        deadline_ms = now_ms() + timeout_ms
        while True:
            if self._ready:
                item = self._ready.popleft()
                if isinstance(item, ScanError):
                    raise item
                return item
            remaining_ms = deadline_ms - now_ms()
            # past the deadline one last look at what already arrived, then give up: a line that
            # keeps sending garbage cannot hold the caller beyond its timeout
            self._pump(max(remaining_ms, 0))
            if remaining_ms <= 0 and not self._ready:
                return None

    def _pump(self, wait_ms):
        raise NotImplementedError

    @property
    def holds_partial(self):
        """True while the start of a code has been read and its end has not (a display may say
        "scanning"; tests wait on it, since a pty passes bytes on a little after they are written)."""
        raise NotImplementedError

    def _take(self, outcomes):
        for outcome in outcomes:
            if len(self._ready) >= MAX_READY_CODES:
                self._ready.popleft()
                self.overflowed_scans += 1
                log.warning("扫码枪积压过多，丢弃最早的扫码 / %d scans waiting: the oldest was dropped",
                            MAX_READY_CODES)
            self._ready.append(outcome)

    def discard_pending(self):
        """Forget every code read but not taken and any partial one: for a POS that starts a new
        payment and must not charge a code scanned while nothing was due. Drivers also drop what
        the operating system holds for them."""
        self._ready.clear()

    def fileno(self):
        """The file descriptor to select() on, where the scanner has one. A readable descriptor
        means input arrived, not that a whole code did: call read_code(0). Codes of one burst that
        read_code has not returned yet are held here, not on the descriptor: select() only after
        read_code returned None."""
        raise io.UnsupportedOperation("fileno")

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def split_options(name, scheme, known, extra_allowed=False):
    """'scheme:path?a=1&b=2' -> (path, {known option: value}, leftover query string).

    Options named in `known` (a dict of name -> parser) are taken out; with extra_allowed the
    others stay in the leftover query (a pyserial URL's own options), otherwise they are refused.
    """
    rest = name[len(scheme) + 1:]
    path, _, query = rest.partition("?")
    taken, leftover = {}, []
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key in known:
            taken[key] = value
        elif extra_allowed:
            leftover.append((key, value))
        else:
            raise ScannerError("未知的扫码枪选项 %r / unknown option %r in %r (known: %s)"
                               % (key, key, name, ", ".join(sorted(known))))
    return path, taken, urllib.parse.urlencode(leftover)


def int_option(name, value, low, high):
    """An option given as text (from a name) or int (from a keyword), checked against its range."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        raise ScannerError("扫码枪选项 %s 无效 / option %s must be an integer %d..%d, not %r"
                           % (name, name, low, high, value))
    return number


def choice_option(name, value, choices):
    if value not in choices:
        raise ScannerError("扫码枪选项 %s 无效 / option %s must be one of %s, not %r"
                           % (name, name, ", ".join(choices), value))
    return value
