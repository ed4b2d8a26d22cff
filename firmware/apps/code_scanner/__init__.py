"""Code scanners for the canteen POS: the payment code (付款码) a phone shows as a QR code, read by
the kind of scanner canteens buy, behind one interface picked by a URL-like name (like the card
readers in reader_drivers/).

    open_scanner("serial:/dev/ttyACM0")                     USB-CDC or RS-232 line scanner, pyserial
    open_scanner("serial:/dev/pts/5")                       the emulator (simulators/scanner_emulator.py)
    open_scanner("serial:loop://?suffix=tab")               any pyserial URL
    open_scanner("evdev:/dev/input/by-id/usb-...-event-kbd")  USB keyboard-wedge scanner, python-evdev

    with open_scanner(name) as scanner:
        try:
            code = scanner.read_code(timeout_ms=500)        # str, or None when none came in time
        except ScanError as refused:
            show(refused.text(lang))                        # damaged scan: ask to scan again

The interface (CodeScanner, base.py): `read_code(timeout_ms)` -> the next complete code as a str
(printable ASCII, no suffix), or None on timeout; `fileno()` to select() on (io.UnsupportedOperation
where there is none, e.g. loop://); `discard_pending()` forgets codes scanned while nothing was due;
`close()`, and use as a context manager. Nothing is assumed of a code beyond "one printable-ASCII
line": the payment code's own format (base45, about 400 characters) is checked by whoever reads it.

Errors: ScanError for one refused scan (non-printable bytes, a key that is not text, lost key
events), ScannerError for a scanner that cannot be opened or is gone (unknown name, no device
path, no such device, permission denied, not a serial / input device, not a keyboard, held by
another program). Texts are Chinese, then English. Too long and cut-off codes are dropped with a
logged warning (base.py says why). Each driver's docstring has its options and framing:
serial_line.py and wedge.py.
"""
from firmware.apps.code_scanner import serial_line, wedge
from firmware.apps.code_scanner.base import (  # noqa: F401  (re-exported)
    EVENTS_LOST, NON_PRINTABLE, UNMAPPED_KEY, CodeScanner, ScanError, ScannerError,
)

SCHEMES = {"serial": serial_line.SerialScanner, "evdev": wedge.EvdevScanner}


def open_scanner(name, **options):
    """The scanner `name` names, opened; options as keywords override the name's `?key=value`.
    `port=` (serial:) and `device=` (evdev:) hand in an already open port or event device, as tests
    do; otherwise the name's device is opened."""
    scheme, colon, _ = name.partition(":")
    if not colon or scheme not in SCHEMES:
        raise ScannerError("未知的扫码枪 %r / unknown scanner %r (known: %s)"
                           % (name, name, ", ".join(sorted(scheme + ":" for scheme in SCHEMES))))
    return SCHEMES[scheme](name, **options)
