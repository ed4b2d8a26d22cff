"""The virtual MicroPython board (tools/virtual_board.py, .mjs) driven as a board is: by the real
mpremote on its pseudo-terminal and by pyserial speaking the REPL's bytes, with the real MicroPython
(the WebAssembly port) behind it; pins and Bluetooth through its control channel.

One board serves the module; each test writes the files it needs. What a test asserts is what a
technician relies on: mpremote's file commands, errors as a board words them, raw-paste's answer,
a soft reset that runs main.py, Ctrl-C that stops it, files that survive a restart, resets that lose
what was not closed, a watchdog that bites, the frozen asyncio, pins and a phone's Bluetooth reaching
the program.
"""
import hashlib
import os
import subprocess
import sys
import time

import pytest
import serial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from virtual_board import BoardControlError, VirtualBoard, advertised_fields  # noqa: E402

DEADLINE_S = 20         # giving up on an answer, not a performance bound
MPREMOTE_TIMEOUT_S = 60
BANNER = b'Type "help()" for more information.\r\n>>> '


def until(what, predicate, deadline_s=DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "never: %s" % what
        time.sleep(0.05)


def mpremote(board, *args, check=True):
    completed = subprocess.run([sys.executable, "-m", "mpremote", "connect", board.path, *args], capture_output=True,
                               text=True, timeout=MPREMOTE_TIMEOUT_S)
    if check:
        assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def put(board, name, text):
    path = os.path.join(board.fs_dir, "..", "upload-" + name.replace("/", "_"))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    mpremote(board, "fs", "cp", path, ":" + name)


class Line:
    """The serial line as a terminal program has it: bytes out, bytes in until an expected ending."""

    def __init__(self, board):
        self.port = serial.Serial(board.path, 115200, timeout=0.05)
        self.seen = b""

    def close(self):
        self.port.close()

    def send(self, data):
        self.port.write(data)

    def expect(self, ending):
        deadline = time.monotonic() + DEADLINE_S
        while ending not in self.seen:
            assert time.monotonic() < deadline, "never got %r; got %r" % (ending, self.seen[-500:])
            self.seen += self.port.read(4096)
        before, _, self.seen = self.seen.partition(ending)
        return before

    def friendly(self):
        self.send(b"\r\x03\x02")
        self.expect(BANNER)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    base = tmp_path_factory.mktemp("board")
    with VirtualBoard(base / "flash", log_path=base / "board.log") as running:
        yield running


@pytest.fixture
def line(board):
    opened = Line(board)
    yield opened
    opened.close()


@pytest.fixture
def control(board):
    with board.control() as client:
        yield client


def test_mpremote_copies_lists_reads_and_hashes_files(board, tmp_path):
    source = tmp_path / "hello.py"
    source.write_text("GREETING = '你好'\n" * 200, encoding="utf-8")
    mpremote(board, "fs", "mkdir", "lib")
    mpremote(board, "fs", "cp", str(source), ":lib/hello.py")
    listing = mpremote(board, "fs", "ls", "lib").stdout
    assert "%d hello.py" % source.stat().st_size in listing
    assert mpremote(board, "fs", "cat", "lib/hello.py").stdout.count("GREETING = '你好'") == 200
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert digest in mpremote(board, "fs", "sha256sum", "lib/hello.py").stdout
    with open(os.path.join(board.fs_dir, "lib", "hello.py"), "rb") as written_back:
        assert written_back.read() == source.read_bytes(), "the board's flash is the host directory"

    assert mpremote(board, "exec", "import hello; print(len(hello.GREETING))").stdout.strip() == "2"
    mpremote(board, "fs", "rm", "lib/hello.py")
    assert "hello.py" not in mpremote(board, "fs", "ls", "lib").stdout
    assert not os.path.exists(os.path.join(board.fs_dir, "lib", "hello.py"))


def test_errors_come_back_as_a_boards_do(board):
    failed = mpremote(board, "exec", "open('no-such-file')", check=False)
    assert failed.returncode == 1 and "OSError: [Errno 2] ENOENT" in failed.stdout + failed.stderr
    assert "No such file or directory" in mpremote(board, "fs", "rm", "no-such-file", check=False).stderr
    assert mpremote(board, "exec", "import errno, os\ntry:\n os.mkdir('lib')\n os.mkdir('lib')\n"
                                   "except OSError as e:\n print(e.errno == errno.EEXIST)").stdout.strip() == "True"
    listed = mpremote(board, "exec", "import os; print(os.listdir('/'))").stdout
    assert "frozen" not in listed, "the frozen modules are not on the flash"


def test_raw_paste_answers_with_its_window_and_flow_control(board, line):
    line.send(b"\r\x03\x01")
    line.expect(b"raw REPL; CTRL-B to exit\r\n>")
    line.send(b"\x05A\x01")
    deadline = time.monotonic() + DEADLINE_S
    while len(line.seen) < 4:
        assert time.monotonic() < deadline
        line.seen += line.port.read(4)
    header, line.seen = line.seen[:4], line.seen[4:]
    assert header[:2] == b"R\x01"
    window = int.from_bytes(header[2:4], "little")
    command = b"x = 0\n" + b"x += 1\n" * (window // 7 + 3) + b"print('sum', x)\n"
    line.send(command[:window])
    line.expect(b"\x01")                                # the board took a window: another may come
    line.send(command[window:] + b"\x04")
    assert line.expect(b"\x04") == b""                  # end of data acknowledged
    assert line.expect(b"\x04\x04>") == b"sum %d\r\n" % (window // 7 + 3)
    line.send(b"\x02")
    line.expect(BANNER)


def test_soft_reset_runs_main_py_and_ctrl_c_stops_it(board, line):
    put(board, "main.py", "import time\nprint('main started')\nwhile True:\n    time.sleep_ms(50)\n")
    try:
        line.friendly()
        line.send(b"\x04")
        line.expect(b"MPY: soft reboot\r\nmain started\r\n")
        line.send(b"\x03")
        interrupted = line.expect(BANNER)
        assert b"KeyboardInterrupt" in interrupted and b'File "main.py", line 4' in interrupted
        line.send(b"print(6 * 7)\r")
        assert line.expect(b">>> ").endswith(b"42\r\n")
    finally:
        mpremote(board, "fs", "rm", "main.py")


def test_mpremote_interrupts_a_running_main_py(board, line):
    put(board, "main.py", "import time\nwhile True:\n    time.sleep_ms(50)\n")
    try:
        line.friendly()
        line.send(b"\x04")
        line.expect(b"MPY: soft reboot\r\n")
        line.close()
        assert "main.py" in mpremote(board, "fs", "ls").stdout
    finally:
        mpremote(board, "fs", "rm", "main.py")


def test_a_soft_reset_closes_open_files_a_reset_loses_them(board, control):
    mpremote(board, "exec", "f = open('soft.txt', 'w'); f.write('kept')", "soft-reset")
    with open(os.path.join(board.fs_dir, "soft.txt")) as kept:
        assert kept.read() == "kept"
    boots = control.status()["boots"]
    mpremote(board, "exec", "f = open('hard.txt', 'w'); f.write('lost')", "reset")
    until("the reset", lambda: control.status()["boots"] == boots + 1)
    assert not os.path.exists(os.path.join(board.fs_dir, "hard.txt")), "never closed: never committed"
    assert mpremote(board, "exec", "import machine; print(machine.reset_cause())").stdout.strip() == "5", \
        "machine.reset() is SOFT_RESET on the ESP32"
    mpremote(board, "fs", "rm", "soft.txt")


def test_files_persist_across_a_restart_of_the_virtual_board(tmp_path):
    flash = tmp_path / "flash"
    with VirtualBoard(flash) as first:
        mpremote(first, "exec", "f = open('boot.py', 'w'); f.write('print(\"booted\")'); f.close()")
    with VirtualBoard(flash) as second:
        assert "boot.py" in mpremote(second, "fs", "ls").stdout
        line = Line(second)
        try:
            line.friendly()
            line.send(b"\x04")
            line.expect(b"MPY: soft reboot\r\nbooted\r\n")
        finally:
            line.close()


def test_the_watchdog_resets_a_board_whose_program_stopped(control, line):
    boots = control.status()["boots"]
    line.send(b"\r\x03\x01")
    line.expect(b"raw REPL; CTRL-B to exit\r\n>")
    line.send(b"import machine, time\nwdt = machine.WDT(timeout=500)\nfor _ in range(5):\n"
              b" wdt.feed()\n time.sleep_ms(50)\nprint('stopped feeding')\n\x04")
    assert line.expect(b"\x04\x04>") == b"OKstopped feeding\r\n"
    line.send(b"\x04")                          # a soft reset does not stop it
    line.expect(b"OK\r\nMPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
    until("the watchdog's reset", lambda: control.status()["boots"] == boots + 1)
    assert control.status()["reset_cause"] == 3          # WDT_RESET
    line.expect(BANNER)                                 # no main.py: the board waits in its REPL


ASYNCIO_PROGRAM = """import asyncio
log = []
async def sleeper(name, ms):
    try:
        await asyncio.sleep_ms(ms)
        log.append(name)
        return name
    except asyncio.CancelledError:
        log.append("cancelled " + name)
        raise
async def failing():
    await asyncio.sleep_ms(5)
    raise ValueError("boom")
async def main():
    assert await asyncio.gather(sleeper("b", 20), sleeper("a", 10)) == ["b", "a"]
    assert log == ["a", "b"], log
    try:
        await asyncio.wait_for_ms(sleeper("slow", 1000), 20)
    except asyncio.TimeoutError:
        log.append("timeout")
    assert log[-2:] == ["cancelled slow", "timeout"], log
    task = asyncio.create_task(sleeper("c", 1000))
    await asyncio.sleep_ms(5)
    assert task.cancel() and not task.done()
    try:
        await task
    except asyncio.CancelledError:
        log.append("awaited cancel")
    assert task.done()
    results = await asyncio.gather(failing(), sleeper("d", 1), return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] == "d", results
    event, flag, lock = asyncio.Event(), asyncio.ThreadSafeFlag(), asyncio.Lock()
    async def setter():
        await asyncio.sleep_ms(5)
        event.set()
        flag.set()
    asyncio.create_task(setter())
    await event.wait()
    await flag.wait()
    order = []
    async def locked(name):
        async with lock:
            order.append(name + "+")
            await asyncio.sleep_ms(5)
            order.append(name + "-")
    await asyncio.gather(locked("x"), locked("y"))
    assert order == ["x+", "x-", "y+", "y-"], order
    assert asyncio.current_task() is not None
    return "done"
assert asyncio.run(main()) == "done"
loop = asyncio.get_event_loop()
assert loop.run_until_complete(sleeper("e", 1)) == "e"
print("asyncio ok")
"""


def test_the_frozen_asyncio_keeps_micropythons_interface(board, tmp_path):
    """run, gather, wait_for_ms's timeout cancelling what it waited for, cancel, return_exceptions,
    Event, ThreadSafeFlag, Lock: what dispenser_main and aioble use, on the board's own loop."""
    program = tmp_path / "asyncio_check.py"
    program.write_text(ASYNCIO_PROGRAM, encoding="utf-8")
    assert mpremote(board, "run", str(program)).stdout.strip() == "asyncio ok"


PIN_PROGRAM = """import machine, time
edges = []
meter = machine.Pin(5, machine.Pin.IN, machine.Pin.PULL_UP)
meter.irq(handler=lambda pin: edges.append(1), trigger=machine.Pin.IRQ_RISING)
button = machine.Pin(18, machine.Pin.IN, machine.Pin.PULL_UP)
valve = machine.Pin(4, machine.Pin.OUT, value=0)
print('ready', button.value())
for _ in range(400):
    if button.value() == 0:
        valve.value(1)
    if len(edges) >= 25 and valve.value():
        break
    time.sleep_ms(25)
print('edges', len(edges), 'button', button.value())
"""


def test_control_channel_drives_pins_the_program_reads(board, control):
    program = subprocess.Popen([sys.executable, "-m", "mpremote", "connect", board.path, "exec", PIN_PROGRAM],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert program.stdout.readline().strip() == "ready 1", "a pulled-up button reads 1"
        assert control.pin(4) == 0
        control.pulses(5, 25)
        control.set_pin(18, 0)                       # pressed
        until("the valve", lambda: control.pin(4) == 1)
        output, _ = program.communicate(timeout=MPREMOTE_TIMEOUT_S)
        assert output.strip() == "edges 25 button 0"
    finally:
        control.set_pin(18, 1)
        program.kill()
    with pytest.raises(BoardControlError):
        control.set_pin(40, 1)


BLE_PROGRAM = """import aioble, asyncio, bluetooth
SERVICE = bluetooth.UUID('6b7a0100-2f3e-4c5d-9a8b-79cc00000099')
service = aioble.Service(SERVICE)
class Secret(aioble.Characteristic):
    def on_read(self, connection):
        return 0x87 if self.read() == b'locked' else 0
secret = Secret(service, bluetooth.UUID(0x2A3D), read=True, initial=b'locked')
inbox = aioble.BufferedCharacteristic(service, bluetooth.UUID(0x2A3E), write=True, capture=True, max_len=40)
outbox = aioble.Characteristic(service, bluetooth.UUID(0x2A3F), read=True, notify=True)
aioble.register_services(service)
async def main():
    connection = await aioble.advertise(100000, name='board-99', services=[SERVICE],
                                        manufacturer=(0xFFFF, b'YW'))
    print('connected')
    writer, data = await inbox.written()
    assert writer is connection
    secret.write(b'open')
    outbox.notify(connection, bytes(reversed(data)))
    await connection.disconnected()
    print('gone', len(data))
asyncio.run(main())
"""


def test_a_phone_reaches_the_programs_bluetooth_service(board, control):
    program = subprocess.Popen([sys.executable, "-m", "mpremote", "connect", board.path, "exec", BLE_PROGRAM],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        advert = until("advertising", lambda: (lambda scan: scan if scan["advertising"] else None)(control.scan()))
        fields = advertised_fields(advert["adv_data"] + advert["resp_data"])
        assert fields[0x09] == b"board-99" and fields[0xFF] == b"\xff\xffYW"
        conn = control.connect()
        assert program.stdout.readline().strip() == "connected"
        assert control.scan()["advertising"] is False, "a connection stops advertising"
        with pytest.raises(BoardControlError) as refused:
            control.read(conn, "2a3d")
        assert refused.value.att_error == 0x87, "on_read's answer is the ATT error"
        with pytest.raises(BoardControlError) as refused:
            control.write(conn, "2a3d", b"x")
        assert refused.value.att_error == 0x03, "not writable"
        message = bytes(range(1, 46))                    # longer than the 20 bytes a plain value keeps
        control.write(conn, "2a3e", message)
        notes, connected = control.notifications(conn, timeout_ms=DEADLINE_S * 1000)
        assert notes == [("2a3f", bytes(reversed(message[:40])))] and connected
        assert control.read(conn, "2a3d") == b"open"
        control.disconnect(conn)
        output, _ = program.communicate(timeout=MPREMOTE_TIMEOUT_S)
        assert output.strip() == "gone 40", "the buffer's max_len, not 20 bytes, was kept"
        assert control.notifications(conn) == ([], False)
    finally:
        program.kill()
