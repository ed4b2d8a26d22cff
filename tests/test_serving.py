"""Slow and idle clients against the real server process: half-sent requests never starve terminals.

Many connections send part of a request line, of the headers or of a body and go silent; `/health` and
a signed terminal sync must still be answered, and the server must close the silent sockets itself.
"""
import os

import pytest
import signal
import socket
import subprocess
import sys
import time

import httpx

from server_process import running_server
from sync_server import registry, serving

# the HTTP server's own behaviour: the store adds nothing
pytestmark = [pytest.mark.usefixtures("store_environment"), pytest.mark.stores("sqlite")]

IDLE_TIMEOUT_S = 2
SILENT_CONNECTIONS = 50
CLIENT_TIMEOUT_S = 10       # a hang becomes a failure; no duration is asserted
CLOSE_DEADLINE_S = 60       # give up waiting for the server to close the silent sockets


def _partial_requests(port):
    host = "Host: 127.0.0.1:%d\r\n" % port
    return [
        b"GET /hea",                                                              # half a request line
        ("GET /health HTTP/1.1\r\n%sX-Half: " % host).encode(),                   # half the headers
        ("POST /api/terminal/v1/sync HTTP/1.1\r\n%sContent-Type: application/cbor\r\n"
         "Content-Length: 4000\r\n\r\n" % host).encode() + b"\xa1" * 100,          # a tenth of the body
        b"",                                                                      # connects, sends nothing
    ]


def _open_silent_connections(port, count):
    partials = _partial_requests(port)
    sockets = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)
        sock.sendall(partials[index % len(partials)])
        sockets.append(sock)
    return sockets


def _closed_by_server(sock, deadline):
    """True once the server closes the socket (EOF or reset); False if the deadline passes first."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


def _holder_and_terminal(server, conn, name, staff_number, uid):
    """A cardholder with ¥10.00 and a card, and a terminal whose requests time out rather than hang."""
    _person_id, account_id = registry.add_person(conn, name, 2, staff_number=staff_number, set_initial_pin=False)
    identity, _name = registry.issue_card_record(conn, account_id, uid)
    registry.recharge(conn, account_id, 1000)
    terminal = server.add_terminal()
    terminal.http.timeout = httpx.Timeout(CLIENT_TIMEOUT_S)
    return account_id, identity, terminal


def test_silent_half_requests_neither_starve_health_and_sync_nor_stay_open(tmp_path):
    with running_server(tmp_path / "server", workers=2,
                        server_args=("--idle-timeout-s", str(IDLE_TIMEOUT_S))) as server:
        port = int(server.url.rsplit(":", 1)[1])
        conn = server.connect()
        account_id, identity, terminal = _holder_and_terminal(server, conn, "王五", "SLOW-1", b"\x05\x06\x07\x08")
        silent = _open_silent_connections(port, SILENT_CONNECTIONS)
        try:
            assert httpx.get(server.url + "/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
            answer = terminal.sync([terminal.record(account_id, identity.card_number, 250)])
            assert answer["acked_seq"] == 1
            assert registry.balances_of(conn, account_id)["main"] == 750
            deadline = time.monotonic() + CLOSE_DEADLINE_S
            still_open = [sock for sock in silent if not _closed_by_server(sock, deadline)]
            assert still_open == [], "%d silent connections left open by the server" % len(still_open)
            assert httpx.get(server.url + "/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
        finally:
            for sock in silent:
                sock.close()
            terminal.close()
            conn.close()


TRICKLING_CONNECTIONS = 10
REQUEST_TIMEOUT_S = 3


def test_a_request_trickled_a_byte_at_a_time_is_dropped_at_its_deadline(tmp_path):
    """Never silent long enough for the idle limit, never finishing its headers: the request deadline
    closes it, and the server answers others meanwhile."""
    with running_server(tmp_path / "server", server_args=("--idle-timeout-s", str(IDLE_TIMEOUT_S),
                                                          "--request-timeout-s", str(REQUEST_TIMEOUT_S)),
                        env={"YKT_FINANCE_CLOSE": "off"}) as server:
        port = int(server.url.rsplit(":", 1)[1])
        trickling = [socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)
                     for _ in range(TRICKLING_CONNECTIONS)]
        open_sockets = list(trickling)
        deadline = time.monotonic() + CLOSE_DEADLINE_S
        try:
            for sock in trickling:
                sock.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
            while open_sockets and time.monotonic() < deadline:
                time.sleep(IDLE_TIMEOUT_S / 4)
                for sock in list(open_sockets):
                    try:
                        sock.sendall(b"a")
                        sock.settimeout(0.01)
                        closed = sock.recv(4096) == b""
                    except socket.timeout:
                        closed = False
                    except (BrokenPipeError, ConnectionResetError):
                        closed = True
                    if closed:
                        open_sockets.remove(sock)
                assert httpx.get(server.url + "/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
            assert open_sockets == [], "%d trickling requests never dropped" % len(open_sockets)
        finally:
            for sock in trickling:
                sock.close()


def _worker_pids(server_pid):
    """The server's worker processes (its children running `sync_server server`, not the scheduler)."""
    with open("/proc/%d/task/%d/children" % (server_pid, server_pid)) as handle:
        children = [int(pid) for pid in handle.read().split()]
    workers = []
    for pid in children:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if b"sync_server\x00server" in handle.read():
                    workers.append(pid)
        except FileNotFoundError:
            pass
    return workers


def test_workers_are_processes_and_a_killed_one_is_replaced(tmp_path):
    """--workers 2 forks two serving processes; one killed, the other keeps answering and the server
    starts a replacement."""
    with running_server(tmp_path / "server", workers=2, env={"YKT_FINANCE_CLOSE": "off"}) as server:
        workers = _worker_pids(server.process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        conn = server.connect()
        account_id, identity, terminal = _holder_and_terminal(server, conn, "赵六", "SLOW-2", b"\x09\x0a\x0b\x0c")
        assert terminal.sync([terminal.record(account_id, identity.card_number, 100)])["acked_seq"] == 1
        deadline = time.monotonic() + CLOSE_DEADLINE_S
        while True:
            now = _worker_pids(server.process.pid)
            if len(now) == 2 and workers[0] not in now:
                break
            assert time.monotonic() < deadline, "no replacement worker: %s" % now
            time.sleep(0.1)
        for _ in range(4):      # both workers answer (the listen socket is shared)
            assert httpx.get(server.url + "/health", timeout=CLIENT_TIMEOUT_S).status_code == 200
        assert "server worker %d ended (signal 9): starting another" % workers[0] in server.log()
        terminal.close()
        conn.close()


def test_out_of_range_server_options_are_refused_clearly(tmp_path):
    for lang, text in (("zh", "--idle-timeout-s 须在 1 到 3600 之间"), ("en", "--idle-timeout-s must be between 1 and 3600")):
        result = subprocess.run([sys.executable, "-m", "sync_server", "server", "--data-dir", str(tmp_path / "d"),
                                 "--idle-timeout-s", "0"], capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, YKT_LANG=lang))
        assert result.returncode == 2 and text in result.stderr
    assert not (tmp_path / "d").exists()


def test_the_command_line_loads_no_web_stack_before_the_server_starts():
    """Every `ykt` command (a terminal powering on, a hall command) builds the whole parser; the server
    options must not drag Flask and waitress into them (it doubled a terminal's start-up)."""
    code = "import sys, ykt.cli; ykt.cli.build_parser(); print(sorted({'flask', 'waitress'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_worker_that_cannot_start_says_why():
    """A worker that fails as it starts (here: options it cannot read) logs its traceback
    before it exits, and the supervisor gives up after the restart limit instead of looping."""
    program = ("import sys; from sync_server import serving\n"
               "listener = serving.bind('127.0.0.1', 0)\n"
               "sys.exit(serving.serve(lambda environ, start_response: [], listener, 1, {'no_such_option': 1}))\n")
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert "server worker" in completed.stderr and "failed" in completed.stderr
    assert "Traceback" in completed.stderr and "keep dying" in completed.stderr


def test_a_stop_signal_inside_a_socket_handler_stops_the_worker():
    """SIGTERM runs its handler wherever the main thread is; in a worker that is often inside one of
    waitress's socket handlers, which it wraps in a bare `except:`. The stop must come through that,
    not be logged as a channel error while the worker serves on until the supervisor kills it."""
    from waitress import wasyncore

    class Channel:
        errors = 0

        def handle_read_event(self):
            serving._raise_stop(signal.SIGTERM, None)     # as if the signal arrived here

        def handle_error(self):
            self.errors += 1

    channel = Channel()
    with pytest.raises(serving._Stop):
        wasyncore.read(channel)
    assert channel.errors == 0
