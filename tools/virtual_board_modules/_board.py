"""The virtual board's glue between MicroPython and its host (tools/virtual_board.mjs).

Imported at every boot before boot.py, like the rest of this directory: the board's "frozen" modules.
The host hands the program its events only where the program waits (idle()): pin edges, which run the
handlers machine.Pin.irq registered, and control requests for the modules (Bluetooth as a phone would
do it), which the module that registered the operation answers. A handler that raises is reported
and the board goes on, as MicroPython does for an IRQ callback.
"""
import builtins
import json
import micropython
import os
import sys

import _board_host as host

irq_handlers = {}           # pin -> callable(count): machine.Pin's
request_handlers = {}       # control op -> callable(request) -> dict of the answer: bluetooth's
after_dispatch = []         # callables run after each batch of events (the radio's queued IRQs)
irq_enabled = True
_pending_edges = {}         # pin -> edges held back while interrupts are disabled


FROZEN = ("time", "machine", "_thread", "asyncio", "bluetooth", "aioble")


def start():
    """At boot: what the ESP32 port has and the WebAssembly port lacks, then the frozen modules."""
    os.urandom = urandom
    os.ilistdir = ilistdir
    builtins.input = read_line
    for name in FROZEN:
        __import__(name)


def urandom(count):
    return bytes.fromhex(host.urandom(count))


def read_line(prompt=None):
    """input(), reading the serial line and echoing it as the board's readline does (the WebAssembly
    port's own input() waits for a browser's console)."""
    if prompt:
        sys.stdout.write(prompt)
    line = []
    while True:         # one line, as long as the person types
        char = sys.stdin.read(1)
        if char in ("\r", "\n"):
            sys.stdout.write("\r\n")
            return "".join(line)
        if char == "\x04" and not line:
            raise EOFError
        if char in ("\x08", "\x7f"):
            if line:
                line.pop()
                sys.stdout.write("\x08 \x08")
        elif char >= " ":
            line.append(char)
            sys.stdout.write(char)


_posix_ilistdir = os.ilistdir


def ilistdir(path=""):
    """os.ilistdir with each file's size, as LittleFS gives it on the ESP32 (VfsPosix gives none),
    so that `mpremote fs ls` shows sizes."""
    prefix = path.rstrip("/") + "/" if path else ""
    for entry in _posix_ilistdir(path) if path else _posix_ilistdir():
        size = os.stat(prefix + entry[0])[6] if entry[1] == 0x8000 else 0
        yield (entry[0], entry[1], entry[2], size)


def idle(timeout_ms):
    """Wait up to `timeout_ms` (negative: until something happens) for the board's events and run
    their handlers; True when there were some."""
    events = host.wait(int(timeout_ms))
    if events == "[]":
        return False
    dispatch(json.loads(events))
    return True


def dispatch_pending():
    idle(0)


def dispatch(events):
    for event in events:
        if event["t"] == "irq":
            _pending_edges[event["pin"]] = _pending_edges.get(event["pin"], 0) + event["n"]
        elif event["t"] == "req":
            _answer(event["id"], event["req"])
    fire_edges()
    for run in after_dispatch:
        _guarded(run)


def fire_edges():
    if not irq_enabled:
        return
    while _pending_edges:
        pin, count = _pending_edges.popitem()
        handler = irq_handlers.get(pin)
        if handler is not None:
            _guarded(handler, count)


def _guarded(function, *args):
    try:
        function(*args)
    except Exception as error:
        print("Uncaught exception in IRQ callback handler")
        sys.print_exception(error)


def _answer(request_id, request):
    handler = request_handlers.get(request.get("op"))
    if handler is None:
        answer = {"ok": False, "error": "the board does not serve %s" % request.get("op")}
    else:
        try:
            answer = handler(request)
            answer["ok"] = True
        except Exception as error:
            answer = {"ok": False, "error": "%s: %s" % (type(error).__name__, error)}
            code = getattr(error, "att_error", None)
            if code is not None:
                answer["att_error"] = code
    host.reply(request_id, json.dumps(answer))


def run_file(name):
    """Run a file of the board as boot.py and main.py run (pyexec_file_if_exists): in __main__, with
    Ctrl-C raising KeyboardInterrupt, a traceback for what escapes. True when it asked for a soft
    reset (SystemExit)."""
    try:
        os.stat(name)
    except OSError:
        return False
    import __main__
    with open(name) as handle:
        source = handle.read()
    micropython.kbd_intr(3)
    try:
        exec(compile(source, name, "exec"), __main__.__dict__)
    except SystemExit:
        return True
    except BaseException as error:     # KeyboardInterrupt too: the board goes on to its REPL
        sys.print_exception(error)
    finally:
        micropython.kbd_intr(-1)
    return False
