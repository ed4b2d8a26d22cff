#!/usr/bin/env python3
"""The virtual MicroPython board (虚拟开发板): an ESP32 stand-in on a pseudo-terminal, for mpremote.

    python tools/virtual_board.py --fs board-flash/ [--control /tmp/board.sock]
        prints "<pty path> <control path>" on one line and runs until killed; then
        mpremote connect /dev/pts/N fs ls      (or tools/flash_board.py --port /dev/pts/N ...)

    with VirtualBoard(fs_dir, control_path) as board:     # board.path: the pty, e.g. /dev/pts/7
        with board.control() as control:                  # BoardControl on the control socket
            control.set_pin(18, 0)                        # press a button (pins with pull-ups read 1)

The board itself is tools/virtual_board.mjs (the real MicroPython, the WebAssembly port from npm, in
node; see its header for what it serves and its limits) with its frozen modules in
tools/virtual_board_modules/. This side owns the pseudo-terminal: it keeps the slave end open, in raw
mode as a UART is, so the line never hangs up while mpremote comes and goes, and relays bytes between
the pty and node. Output nobody reads waits in a bounded buffer (MAX_UNREAD_OUTPUT_BYTES) and then the
oldest is dropped, as a USB-serial adapter drops what no host collects.

The control channel is a unix socket of JSON lines; BoardControl is its client. Pins: set_pin,
pulses, pin, pins. Bluetooth, acting as a phone: scan, connect, read, write, notifications,
disconnect (BoardControlError carries the ATT error a refused read or write got). The board: reset
(the EN button), status.
"""
import argparse
import collections
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARD_SCRIPT = os.path.join(ROOT, "tools", "virtual_board.mjs")
START_DEADLINE_S = 30           # waiting for node and the control socket: a deadline, not a measure
STOP_DEADLINE_S = 10
CONTROL_TIMEOUT_S = 30
MAX_UNREAD_OUTPUT_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 4096


class VirtualBoardError(Exception):
    def __init__(self, zh, en):
        Exception.__init__(self, "%s / %s" % (zh, en))
        self.zh = zh
        self.en = en


class BoardControlError(Exception):
    """The board refused a control request; `att_error` is the ATT error code of a refused
    Bluetooth read or write (None otherwise)."""

    def __init__(self, message, att_error=None):
        Exception.__init__(self, message)
        self.att_error = att_error


class VirtualBoard:
    """One virtual board: node running tools/virtual_board.mjs behind a pseudo-terminal."""

    def __init__(self, fs_dir, control_path=None, heap_bytes=None, mac=None, log_path=None):
        self.fs_dir = os.path.abspath(fs_dir)
        self._requested_control_path = os.path.abspath(control_path) if control_path else None
        self.control_path = None
        self._own_control_dir = None
        self.heap_bytes = heap_bytes
        self.mac = mac
        self.log_path = log_path
        self.path = None
        self.process = None
        self._master = self._slave = None
        self._wake_read = self._wake_write = None
        self._thread = None
        self._stopping = False
        self._unread = collections.deque()
        self._unread_bytes = 0
        self._log = None

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self):
        assert self.process is None, "already started"
        node = shutil.which("node")
        if node is None:
            raise VirtualBoardError("找不到 node：虚拟开发板需要 Node.js（npm install 安装 MicroPython）",
                                    "node not found: the virtual board needs Node.js (and npm install for MicroPython)")
        os.makedirs(self.fs_dir, exist_ok=True)
        # always a control channel: it is also how start() knows the board is up; without a path, a
        # short one of its own (a unix socket's path has room for about 100 bytes)
        self.control_path = self._requested_control_path
        if self.control_path is None:
            self._own_control_dir = tempfile.mkdtemp(prefix="virtual-board-")
            self.control_path = os.path.join(self._own_control_dir, "control.sock")
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)
        command = [node, BOARD_SCRIPT, "--fs", self.fs_dir, "--control", self.control_path]
        if self.heap_bytes:
            command += ["--heapsize", str(self.heap_bytes)]
        if self.mac:
            command += ["--mac", self.mac]
        self._master, self._slave = os.openpty()
        # raw, as a UART is; kept open here so the master never sees a hang-up between connections
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._wake_read, self._wake_write = os.pipe()
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        cwd=ROOT, start_new_session=True)
        os.set_blocking(self.process.stdout.fileno(), False)
        self._thread = threading.Thread(target=self._relay, name="virtual-board-relay", daemon=True)
        self._thread.start()
        self._wait_for_control()
        return self

    def _wait_for_control(self):
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                self.stop()
                raise VirtualBoardError("虚拟开发板未能启动（退出码 %s；详情见 --log 的文件）" % status,
                                        "the virtual board did not start (exit status %s; --log keeps why)" % status)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(self.control_path)
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise VirtualBoardError("虚拟开发板的控制通道未就绪", "the virtual board's control channel did not come up")

    def stop(self):
        """Power off: node is ended where it is (unclosed files are lost, as in a power cut)."""
        if self.process is None:
            return
        self._stopping = True
        os.write(self._wake_write, b"s")
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass                        # it ended by itself
        self.process.wait(timeout=STOP_DEADLINE_S)
        self._thread.join(timeout=STOP_DEADLINE_S)
        assert not self._thread.is_alive(), "the relay thread did not stop"
        self.process.stdin.close()
        self.process.stdout.close()
        for fd in (self._master, self._slave, self._wake_read, self._wake_write):
            os.close(fd)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)
        if self._own_control_dir is not None:
            shutil.rmtree(self._own_control_dir, ignore_errors=True)
            self._own_control_dir = None
        self.process = None
        self._stopping = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def control(self, timeout_s=CONTROL_TIMEOUT_S):
        return BoardControl(self.control_path, timeout_s)

    # --- the serial line --------------------------------------------------------------------------------
    def _relay(self):
        board_out = self.process.stdout.fileno()
        board_in = self.process.stdin.fileno()
        while not self._stopping:       # the board's life: until stop()
            writers = [self._master] if self._unread else []
            try:
                readable, writable, _ = select.select([self._master, board_out, self._wake_read], writers, [])
            except (OSError, ValueError):
                return
            if self._wake_read in readable:
                return
            if board_out in readable:
                try:
                    data = os.read(board_out, READ_CHUNK_BYTES)
                except BlockingIOError:
                    data = None
                if data == b"":
                    return              # node is gone (killed, or it failed)
                if data:
                    self._queue_output(data)
                    writable = [self._master]
            if self._master in readable:
                try:
                    data = os.read(self._master, READ_CHUNK_BYTES)
                except (BlockingIOError, OSError):
                    data = b""
                if data:
                    try:
                        os.write(board_in, data)
                    except OSError:
                        return
            if self._master in writable:
                self._write_output()

    def _queue_output(self, data):
        self._unread.append(data)
        self._unread_bytes += len(data)
        while self._unread_bytes > MAX_UNREAD_OUTPUT_BYTES:     # nobody reads: the oldest is lost
            self._unread_bytes -= len(self._unread.popleft())

    def _write_output(self):
        while self._unread:
            chunk = self._unread[0]
            try:
                written = os.write(self._master, chunk)
            except (BlockingIOError, OSError):
                return
            self._unread_bytes -= written
            if written < len(chunk):
                self._unread[0] = chunk[written:]
                return
            self._unread.popleft()


class BoardControl:
    """A client of the virtual board's control socket: one request, one answer, in order."""

    def __init__(self, path, timeout_s=CONTROL_TIMEOUT_S):
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout_s)
        self._socket.connect(path)
        self._file = self._socket.makefile("rwb")
        self._lock = threading.Lock()

    def close(self):
        self._file.close()
        self._socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def call(self, op, **fields):
        request = dict(fields, op=op)
        with self._lock:
            self._file.write(json.dumps(request).encode() + b"\n")
            self._file.flush()
            line = self._file.readline()
        if not line:
            raise BoardControlError("the virtual board closed its control channel")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise BoardControlError(answer.get("error", "refused"), answer.get("att_error"))
        return answer

    # --- pins ---------------------------------------------------------------------------------------------
    def set_pin(self, pin, level):
        """Drive a pin from outside (a button to 0 is pressed, with the board's pull-up)."""
        return self.call("pin_set", pin=pin, value=1 if level else 0)["level"]

    def pulses(self, pin, count):
        """`count` pulses on a pin (the flow meter): each one rising and one falling edge."""
        self.call("pulses", pin=pin, count=count)

    def pin(self, pin):
        """The level of a pin now (an output's is what the program drives, e.g. the valve)."""
        return self.call("pin_get", pin=pin)["level"]

    def pins(self):
        return {int(pin): state for pin, state in self.call("pins")["pins"].items()}

    # --- the board ----------------------------------------------------------------------------------------
    def reset(self, power=False):
        """The EN button (or with `power`, a power cycle): a hard reset."""
        self.call("reset", cause="power" if power else "hard")

    def status(self):
        return self.call("status")

    # --- Bluetooth, as a phone ------------------------------------------------------------------------------
    def scan(self):
        """What the board advertises: {"advertising": bool, "adv_data": bytes, "resp_data": bytes, ...}."""
        answer = self.call("ble_scan")
        for field in ("adv_data", "resp_data"):
            if field in answer:
                answer[field] = bytes.fromhex(answer[field])
        return answer

    def connect(self, mtu=247):
        return self.call("ble_connect", mtu=mtu)["conn"]

    def read(self, conn, uuid):
        return bytes.fromhex(self.call("ble_read", conn=conn, uuid=str(uuid).lower())["value"])

    def write(self, conn, uuid, value):
        self.call("ble_write", conn=conn, uuid=str(uuid).lower(), value=bytes(value).hex())

    def notifications(self, conn, timeout_ms=0):
        """(notifications [(uuid, bytes)], still connected) - waiting up to timeout_ms for the first."""
        answer = self.call("ble_notifications", conn=conn, timeout_ms=int(timeout_ms))
        return ([(item["uuid"], bytes.fromhex(item["value"])) for item in answer["notifications"]],
                answer["connected"])

    def disconnect(self, conn):
        self.call("ble_disconnect", conn=conn)


def advertised_fields(payload):
    """{AD type: data} of an advertising payload (the last of a type wins)."""
    fields = {}
    index = 0
    while index < len(payload):
        length = payload[index]
        if length == 0 or index + 1 + length > len(payload):
            break
        fields[payload[index + 1]] = bytes(payload[index + 2:index + 1 + length])
        index += 1 + length
    return fields


def main(argv=None):
    parser = argparse.ArgumentParser(description="虚拟开发板：pty 上的 MicroPython（供 mpremote 使用）/ "
                                     "the virtual MicroPython board: a pty for mpremote")
    parser.add_argument("--fs", required=True, help="directory holding the board's file system (kept across runs)")
    parser.add_argument("--control", help="unix socket path for the control channel (pins, Bluetooth, reset); "
                        "default: a new one under the temporary directory")
    parser.add_argument("--heapsize", type=int, help="MicroPython heap in bytes (default 2 MiB)")
    parser.add_argument("--log", help="file for the board's own diagnostics")
    args = parser.parse_args(argv)
    board = VirtualBoard(args.fs, args.control, heap_bytes=args.heapsize, log_path=args.log)
    try:
        board.start()
    except VirtualBoardError as error:
        print("错误：%s / error: %s" % (error.zh, error.en), file=sys.stderr)
        return 1
    print("%s %s" % (board.path, board.control_path), flush=True)
    print("虚拟开发板已启动：mpremote connect %s；Ctrl-C 停止 / virtual board running: mpremote connect %s; "
          "Ctrl-C stops it" % (board.path, board.path), file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set() and board.process.poll() is None:      # until killed
        stop.wait(0.5)
    board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
