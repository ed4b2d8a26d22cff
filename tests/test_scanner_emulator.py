"""The code scanner emulator (simulators/scanner_emulator.py): the exact bytes it puts on its
pseudo-terminal for each suffix, raw garbage, per-byte gaps, a bounded write when nobody reads,
images decoded with zxing-cpp (a generated payment code as PNG, and as a JPEG phone screenshot)
read back through the `serial:` driver, and `python -m simulators.scanner_emulator` as a process
driven over stdin."""
import json
import os
import queue
import random
import select
import subprocess
import sys
import threading
import time

import pytest
import segno
from PIL import Image, ImageDraw

from firmware.apps.code_scanner import open_scanner
from simulators.scanner_emulator import ScannerEmulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
PAYMENT_CODE = "".join(random.Random(7).choice(BASE45) for _ in range(400))
WAIT_S = 5


def read_exactly(fd, count):
    """`count` bytes from fd, or fewer if nothing more comes within WAIT_S."""
    data, deadline = b"", time.monotonic() + WAIT_S
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        data += os.read(fd, count - len(data))
    return data


def nothing_more(fd):
    """Nothing waits on the pty now: what was written before has all been read (a pty passes on a
    write whole)."""
    return not select.select([fd], [], [], 0)[0]


@pytest.fixture
def line():
    """(emulator, fd): the emulator and our own raw read end of its pty."""
    with ScannerEmulator() as emulator:
        fd = os.open(emulator.path, os.O_RDONLY | os.O_NOCTTY)
        try:
            yield emulator, fd
        finally:
            os.close(fd)


@pytest.mark.parametrize("suffix, ending", [("cr", b"\r"), ("lf", b"\n"), ("crlf", b"\r\n"), ("tab", b"\t"),
                                            ("none", b"")])
def test_a_code_goes_out_with_its_suffix(line, suffix, ending):
    emulator, fd = line
    emulator.suffix = suffix
    assert emulator.scan(PAYMENT_CODE) == PAYMENT_CODE.encode() + ending
    assert read_exactly(fd, 400 + len(ending)) == PAYMENT_CODE.encode() + ending
    assert nothing_more(fd)
    assert emulator.scans == 1


def test_non_ascii_goes_out_as_utf8_and_raw_bytes_as_they_are(line):
    emulator, fd = line
    emulator.scan("付款码")
    emulator.scan(b"\x02STX")
    emulator.send_raw(b"\x00\xffHALF")
    expected = "付款码".encode("utf-8") + b"\r\x02STX\r\x00\xffHALF"
    assert read_exactly(fd, len(expected)) == expected
    assert nothing_more(fd)


def test_a_slow_scanner_spends_its_gaps(line):
    emulator, fd = line
    emulator.char_gap_us = 3000
    started = time.monotonic()
    emulator.scan("ABCDE")
    assert time.monotonic() - started >= 5 * 0.003              # 5 gaps: between 6 bytes, CR included
    assert read_exactly(fd, 6) == b"ABCDE\r"


def test_a_write_nobody_reads_gives_up_at_its_bound():
    with ScannerEmulator(write_timeout_ms=100) as emulator:
        with pytest.raises(TimeoutError, match="扫码枪串口无人读取 / nobody reads the scanner's pty"):
            emulator.send_raw(b"X" * (1 << 20))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="suffix"):
        ScannerEmulator(suffix="etx")
    with pytest.raises(ValueError, match="char_gap_us"):
        ScannerEmulator(char_gap_us=-1)


def _screenshot(path, text, fmt):
    """A phone's screen with a payment code on it: a 1080 x 2340 page, a header bar, some text
    lines, the QR code in the middle; saved as PNG or JPEG (quality 80: what a screenshot shared
    through a chat app looks like)."""
    code = segno.make_qr(text, error="m")
    code_path = str(path) + ".code.png"
    code.save(code_path, scale=8, border=4)
    screen = Image.new("RGB", (1080, 2340), (245, 245, 245))
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, 1080, 180), fill=(22, 119, 255))
    for row in range(6):
        draw.rectangle((120, 1900 + row * 60, 960 - row * 70, 1930 + row * 60), fill=(180, 180, 180))
    with Image.open(code_path) as image:
        screen.paste(image.convert("RGB"), ((1080 - image.width) // 2, 450))
    screen.save(path, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return str(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_screenshot_is_decoded_and_read_back_through_the_driver(tmp_path, fmt):
    path = _screenshot(tmp_path / ("shot." + fmt.lower()), PAYMENT_CODE, fmt)
    with ScannerEmulator() as emulator, open_scanner("serial:" + emulator.path) as scanner:
        assert emulator.scan_image(path) == PAYMENT_CODE
        assert scanner.read_code(WAIT_S * 1000) == PAYMENT_CODE


def test_an_image_without_a_code_sends_nothing(tmp_path, line):
    emulator, fd = line
    blank = tmp_path / "blank.png"
    Image.new("L", (300, 300), 255).save(blank)
    with pytest.raises(ValueError, match="图片中没有二维码 / no QR code in the image"):
        emulator.scan_image(str(blank))
    with pytest.raises(ValueError, match="找不到图片 / no such image"):
        emulator.scan_image(str(tmp_path / "missing.png"))
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="无法读取图片 / cannot read the image"):
        emulator.scan_image(str(tmp_path / "text.png"))
    assert emulator.scans == 0
    emulator.scan("AFTER")
    assert read_exactly(fd, 6) == b"AFTER\r"                      # nothing was sent before it


class _Process:
    """`python -m simulators.scanner_emulator ...` with its stdout read line by line, each wait
    bounded."""

    def __init__(self, *args):
        self.process = subprocess.Popen([sys.executable, "-m", "simulators.scanner_emulator", *args], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))

    def answer(self):
        return self.lines.get(timeout=WAIT_S * 2)

    def send(self, text):
        self.process.stdin.write(text.encode() + b"\n")
        self.process.stdin.flush()

    def finish(self):
        self.process.stdin.close()
        try:
            return self.process.wait(WAIT_S * 2)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(WAIT_S)
            self.process.stdout.close()
            self.process.stderr.close()


def test_the_command_line_scans_stdin_lines_and_images(tmp_path):
    emulator = _Process("--suffix", "crlf")
    try:
        ready = emulator.answer()
        assert ready == {"path": ready["path"], "suffix": "crlf", "char_gap_us": 0}
        with open_scanner("serial:" + ready["path"]) as scanner:
            emulator.send("CODE-1 $%*")
            assert emulator.answer() == {"scanned": "CODE-1 $%*"}
            assert scanner.read_code(WAIT_S * 1000) == "CODE-1 $%*"
    finally:
        assert emulator.finish() == 0

    shot = _screenshot(tmp_path / "shot.png", PAYMENT_CODE, "PNG")
    emulator = _Process("--images", "--char-gap-us", "10")
    try:
        ready = emulator.answer()
        with open_scanner("serial:" + ready["path"]) as scanner:
            emulator.send(str(tmp_path / "missing.png"))
            assert emulator.answer()["error"].startswith("找不到图片 / no such image")
            emulator.send(shot)
            assert emulator.answer() == {"scanned": PAYMENT_CODE}
            assert scanner.read_code(WAIT_S * 1000) == PAYMENT_CODE
    finally:
        assert emulator.finish() == 0
