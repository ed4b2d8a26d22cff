"""A USB-CDC code scanner on a pseudo-terminal: what the canteen POS's `serial:` scanner driver
(firmware/apps/code_scanner/) opens exactly like /dev/ttyACM0.

    with ScannerEmulator() as emulator:                 # emulator.path is the pty, e.g. /dev/pts/5
        scanner = open_scanner("serial:%s" % emulator.path)
        emulator.scan("6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3/XIV0W23NTDE")
        emulator.scan_image("screenshot.png")           # a phone's screenshot of its payment code
        emulator.send_raw(b"\\x00\\xffHALF")             # garbage, a partial line

    python -m simulators.scanner_emulator [--suffix cr] [--char-gap-us 0] [--images]

What a real one does, and so this one: it sends each code as the text the symbol holds followed by
its suffix (CR by default, as most scanners ship; LF, CRLF, TAB or none are settings), the whole
in one burst - a USB-CDC scanner hands the host the code in back-to-back 64-byte packets. A slow
scanner, or an RS-232 one with an "inter-character delay" setting, leaves a gap after each byte:
`char_gap_us`. A symbol that holds non-ASCII text is passed on as its UTF-8 bytes, which is what
scanners do in their default "raw" output, so the driver's refusal of non-printable lines can be
driven from a QR code too.

`scan_image(path)` decodes a PNG or JPEG with zxing-cpp first (simulators/sticker_scan.py's
`read_qr_texts`, the same reader the phone's sticker scan uses) and scans the first code found.

The command line prints one JSON line with the pty path (`{"path": "/dev/pts/5", ...}`), then
scans one code per line of stdin (with `--images`, each line is an image path instead) and answers
each with a JSON line (`{"scanned": text}` or `{"error": message}`); it stops at the end of stdin
or Ctrl-C. Every write is bounded: a scan that nobody reads once the pty's buffer is full fails
with TimeoutError after `write_timeout_ms` instead of hanging.
"""
import argparse
import json
import os
import select
import sys
import threading
import time
import tty

from simulators.sticker_scan import read_qr_texts

SUFFIXES = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "tab": b"\t", "none": b""}
DEFAULT_WRITE_TIMEOUT_MS = 5000
MAX_STDIN_LINE_BYTES = 1 << 20


class ScannerEmulator:
    def __init__(self, suffix="cr", char_gap_us=0, write_timeout_ms=DEFAULT_WRITE_TIMEOUT_MS):
        if suffix not in SUFFIXES:
            raise ValueError("suffix must be one of %s, not %r" % (", ".join(SUFFIXES), suffix))
        if not isinstance(char_gap_us, int) or char_gap_us < 0:
            raise ValueError("char_gap_us must be an int >= 0, not %r" % (char_gap_us,))
        self.suffix = suffix
        self.char_gap_us = char_gap_us
        self.write_timeout_ms = write_timeout_ms
        self.path = None
        self.scans = 0
        self._master = self._slave = None
        self._lock = threading.Lock()          # one scan at a time on the line, from any thread

    def start(self):
        assert self._master is None, "already started"
        self._master, self._slave = os.openpty()
        # Raw, as a USB-CDC port is: no CR -> LF translation, no line buffering, no echo. The
        # emulator keeps the slave open itself so a driver closing and reopening it causes no hang-up.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        return self

    def stop(self):
        """Close the pty: a driver still reading it sees the scanner gone (EIO), as on unplugging."""
        if self._master is None:
            return
        with self._lock:
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def scan(self, code):
        """Send one code (str, sent as UTF-8, or bytes) and the suffix, as the scanner would after
        reading it; returns the bytes sent."""
        data = (code.encode("utf-8") if isinstance(code, str) else bytes(code)) + SUFFIXES[self.suffix]
        self._send(data)
        self.scans += 1
        return data

    def scan_image(self, path):
        """Decode the image at `path` (PNG, JPEG: anything Pillow opens) and scan the first code in
        it; returns its text. ValueError (Chinese first) for a missing or unreadable image or one
        with no code."""
        text = read_qr_texts(path)[0]
        self.scan(text)
        return text

    def send_raw(self, data):
        """Exactly these bytes, no suffix: garbage on the line, a code cut off mid-way."""
        self._send(bytes(data))

    def _send(self, data):
        with self._lock:
            assert self._master is not None, "the emulator is not started"
            if self.char_gap_us and len(data) > 1:
                for index in range(len(data)):
                    if index:
                        time.sleep(self.char_gap_us / 1_000_000)
                    self._write_all(data[index:index + 1])
            else:
                self._write_all(data)

    def _write_all(self, data):
        deadline = time.monotonic() + self.write_timeout_ms / 1000
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [self._master], [], remaining)[1]:
                raise TimeoutError("扫码枪串口无人读取 / nobody reads the scanner's pty %s: %d bytes not sent "
                                   "after %d ms" % (self.path, len(view), self.write_timeout_ms))
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                continue
            view = view[written:]


def _stdin_lines(stream):
    """Lines of at most MAX_STDIN_LINE_BYTES without their line ending; a longer line is reported
    as None and skipped whole."""
    while True:
        line = stream.readline(MAX_STDIN_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_STDIN_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = stream.readline(MAX_STDIN_LINE_BYTES)
            yield None
            continue
        yield line.rstrip(b"\r\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m simulators.scanner_emulator",
                                     description="USB-CDC code scanner on a pseudo-terminal / 伪终端上的扫码枪")
    parser.add_argument("--suffix", default="cr", choices=sorted(SUFFIXES), help="what follows each code (cr)")
    parser.add_argument("--char-gap-us", type=int, default=0,
                        help="microseconds between bytes, for a slow scanner (0: one burst)")
    parser.add_argument("--images", action="store_true",
                        help="each stdin line is a PNG/JPEG path whose QR code is scanned")
    options = parser.parse_args(argv)
    if options.char_gap_us < 0:
        parser.error("--char-gap-us must be >= 0")

    def answer(**fields):
        print(json.dumps(fields, ensure_ascii=False), flush=True)

    with ScannerEmulator(suffix=options.suffix, char_gap_us=options.char_gap_us) as emulator:
        answer(path=emulator.path, suffix=options.suffix, char_gap_us=options.char_gap_us)
        print("扫码枪模拟器已就绪 / scanner emulator ready on %s: one %s per line on stdin (Ctrl-D to stop)"
              % (emulator.path, "image path" if options.images else "code"), file=sys.stderr, flush=True)
        try:
            for line in _stdin_lines(sys.stdin.buffer):
                if line is None:
                    answer(error="输入行过长 / line longer than %d bytes: skipped" % MAX_STDIN_LINE_BYTES)
                    continue
                try:
                    if options.images:
                        answer(scanned=emulator.scan_image(line.decode("utf-8", "replace")))
                    else:
                        emulator.scan(line)
                        answer(scanned=line.decode("utf-8", "replace"))
                except (ValueError, TimeoutError) as error:
                    answer(error=str(error))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
