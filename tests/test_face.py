"""The terminal's face (firmware/apps/face.py): the state its screens show, built from the POS shell's
own lines on the sim: reader with real card images and the real journal, and the local HTTP server
the kiosk pages read, spoken to over real sockets - including as an attacker on the same network
or in another browser tab would: other origins, other hosts, unknown keys, a flood of keys, idle
sockets, too many waiting screens.

The pages themselves run in headless Chromium in tests/test_face_pages.py, where a PIN is typed for
real against the server (the dots, never the digits).
"""
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from firmware.apps import face as face_module
from firmware.apps.face import Face, FaceServer, card_tail
from firmware.apps.store import StoreError
from reader_drivers.base import open_reader

from test_pos_terminal import journal, shell_on

DISHES = {"rice": ["米饭", 100], "pork": ["红烧肉", 800]}


def pos_face(**options):
    return Face("pos", "zh", 11, dishes=DISHES, dish_keys={"f1": "pork", "f2": "rice"}, **options)


@pytest.fixture
def rig(tmp_path):
    face = pos_face()
    terminal, card_path, out = shell_on(tmp_path, open_reader("sim:"), face=face)
    yield terminal, card_path, face
    terminal.close()


def test_a_tap_reaches_the_screens_only_as_the_journal_holds_it(rig):
    terminal, card_path, face = rig
    for key in "12.5":
        terminal.press(key)
    state = face.snapshot()
    assert (state["phase"], state["entry"], state["amount_fen"]) == ("idle", "12.5", None)
    terminal.press("enter")
    state = face.snapshot()
    assert (state["phase"], state["entry"], state["amount_fen"]) == ("wait_card", "", 1250)
    assert state["message"] == {"code": "amount_due", "text": state["message"]["text"], "tone": "info"}
    terminal.run_line({"card": card_path})
    state = face.snapshot()
    assert state["result"] == {"accepted": True, "code": "accepted", "text": "交易成功 消费12.50元 余额87.50元 张*明",
                               "amount_fen": 1250, "balance_after_fen": 8750}
    assert state["last_tap"]["seq"] == 1 and state["last_tap"]["card"] == "…1001"
    assert state["last_tap"]["restored"] is False and state["message"]["tone"] == "ok"
    assert state["phase"] == "idle" and state["backlog"] == 1
    assert [record["seq"] for record in journal(terminal)] == [1]


def test_a_failed_commit_never_shows_a_success(rig, monkeypatch):
    """The disk refuses the record: the card was counted, but the screens say it failed and keep
    the last tap they had (none)."""
    terminal, card_path, face = rig

    def refuse(*_args, **_kwargs):
        raise StoreError("disk full")
    monkeypatch.setattr(terminal.store, "append_purchase", refuse)
    terminal.run_line({"amount_fen": 800, "card": card_path})
    state = face.snapshot()
    assert state["result"]["accepted"] is False and state["result"]["code"] == "journal_failed"
    assert state["last_tap"] is None and state["message"]["tone"] == "error" and state["backlog"] == 0


def test_a_new_order_clears_the_last_result(tmp_path):
    face = pos_face()
    terminal, card_path, _out = shell_on(tmp_path, open_reader("sim:"), cache={"main_fen": 1000}, face=face)
    try:
        terminal.run_line({"amount_fen": 2000, "card": card_path})      # 余额不足: shown until the next order
        assert face.snapshot()["result"]["code"] == "insufficient_balance"
        assert face.snapshot()["message"]["tone"] == "error"
        terminal.run_line({"amount_fen": 300})
        assert face.snapshot()["result"] is None
    finally:
        terminal.close()


def test_a_dish_button_and_its_shortcut_add_the_dish(rig):
    terminal, _card_path, face = rig
    terminal.press("dish:rice")
    terminal.press("f1")                         # pork's shortcut
    assert face.snapshot()["amount_fen"] == 900
    assert [(dish["id"], dish["key"]) for dish in face.snapshot()["dishes"]] == [("pork", "F1"), ("rice", "F2")]


def test_the_restarted_terminal_shows_the_last_committed_tap(tmp_path):
    terminal, card_path, _out = shell_on(tmp_path, open_reader("sim:"))
    terminal.run_line({"amount_fen": 1500, "card": card_path})
    terminal.close()
    from firmware.apps.pos_terminal import PosTerminal
    from test_pos_terminal import provisioning
    face = pos_face()
    again = PosTerminal(provisioning(), str(tmp_path / "terminal"), open_reader("sim:"), sync=False, face=face,
                        out=open("/dev/null", "w"))
    try:
        last = face.snapshot()["last_tap"]
        assert (last["seq"], last["amount_fen"], last["card"], last["restored"]) == (1, 1500, "…1001", True)
        assert face.snapshot()["backlog"] == 1           # journaled, never uploaded
        assert face.snapshot()["message"]["code"] == "last_tap"
    finally:
        again.close()


def test_sync_lines_carry_network_and_backlog():
    face = pos_face(clock_text=lambda: "12:05:01")
    face.observe({"type": "sync", "online": False, "error": "connection refused", "unacked": 7})
    assert face.snapshot()["network"] == {"online": False, "last_sync": None, "error": "connection refused"}
    assert face.snapshot()["backlog"] == 7
    face.observe({"type": "sync", "online": True, "error": None, "unacked": 0})
    assert face.snapshot()["network"] == {"online": True, "last_sync": "12:05:01", "error": None}


def test_card_tail():
    assert card_tail(1001) == "…1001" and card_tail(123456789) == "…6789" and card_tail(7) == "…0007"
    assert card_tail(None) is None and card_tail(0) is None


# --- the server, over real sockets ----------------------------------------------------------------

@pytest.fixture
def served():
    face = pos_face()
    server = FaceServer(face, "127.0.0.1", 0).start()
    yield face, server
    server.close()


def request(server, method, path, body=None, headers=None):
    host, port = server.httpd.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post_key(server, key, **headers):
    return request(server, "POST", "/key", json.dumps({"key": key}), dict({"Content-Type": "application/json"},
                                                                          **headers))


def test_pages_state_and_headers(served):
    face, server = served
    status, headers, _ = request(server, "GET", "/")
    assert status == 302 and headers["Location"] == "/cashier"
    for path in ("/cashier", "/holder", "/static/face.js", "/static/face.css"):
        status, headers, body = request(server, "GET", path)
        assert status == 200 and body, path
        assert headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/static/../face.py", "/static/cashier.html.bak", "/face.py", "/etc/passwd"):
        assert request(server, "GET", path)[0] == 404, path
    status, headers, body = request(server, "GET", "/state")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["version"] == face.snapshot()["version"]
    assert request(server, "GET", "/state?after=abc")[0] == 400


def test_a_long_poll_answers_as_soon_as_the_state_changes(served):
    face, server = served
    version = face.snapshot()["version"]
    answer = {}
    poll = threading.Thread(target=lambda: answer.update(reply=request(server, "GET", "/state?after=%d" % version)))
    poll.start()
    time.sleep(0.2)
    assert poll.is_alive()                      # held: nothing changed yet
    face.set(phase="wait_card", amount_fen=500)
    poll.join(timeout=30)
    assert json.loads(answer["reply"][2])["amount_fen"] == 500


def test_too_many_waiting_screens_are_refused(served, monkeypatch):
    face, server = served
    monkeypatch.setattr(face_module, "POLL_HOLD_S", 5.0)
    version = face.snapshot()["version"]
    held = [threading.Thread(target=request, args=(server, "GET", "/state?after=%d" % version))
            for _ in range(face_module.MAX_POLLS)]
    for thread in held:
        thread.start()
    deadline = time.monotonic() + 30
    while server._polls._value and time.monotonic() < deadline:      # every poll slot taken
        time.sleep(0.01)
    status, _, body = request(server, "GET", "/state?after=%d" % version)
    assert status == 503 and "连接过多" in body.decode()
    face.set(entry="1")                         # releases them all
    for thread in held:
        thread.join(timeout=30)
    assert request(server, "GET", "/state?after=%d" % version)[0] == 200


def test_keys_from_this_page_reach_the_queue(served):
    face, server = served
    port = server.httpd.server_address[1]
    assert post_key(server, "dish:rice", Origin="http://127.0.0.1:%d" % port)[0] == 204
    assert post_key(server, "enter")[0] == 204                                   # no Origin: a local tool
    assert [face.keys.get_nowait(), face.keys.get_nowait()] == ["dish:rice", "enter"]


@pytest.mark.parametrize("key", ["1", "9", ".", "dish:caviar", "rm -rf", "", "x" * 100, 5, None, ["enter"]])
def test_unknown_keys_and_digits_are_refused(served, key):
    """Digits come only from the keypad: a PIN never passes through the browser."""
    face, server = served
    status, _, body = post_key(server, key)
    assert status == 400 and face.keys.empty(), body


def test_keys_from_another_origin_or_host_are_refused(served):
    face, server = served
    port = server.httpd.server_address[1]
    for origin in ("http://evil.example", "http://127.0.0.1:%d.evil.example" % port, "null",
                   "http://localhost:%d" % (port + 1)):
        status, _, body = post_key(server, "enter", Origin=origin)
        assert status == 403 and "本机屏幕" in body.decode(), origin
    # a DNS-rebound page: its Host is the attacker's name, and so is its Origin
    status, _, _ = post_key(server, "enter", Host="evil.example:%d" % port, Origin="http://evil.example:%d" % port)
    assert status == 403
    assert face.keys.empty()


def test_malformed_and_oversized_key_bodies(served):
    face, server = served
    assert request(server, "POST", "/key", "{not json", {"Content-Type": "application/json"})[0] == 400
    assert request(server, "POST", "/key", json.dumps({"key": "enter", "pad": "x" * 500}))[0] == 413
    assert request(server, "POST", "/nothing", "{}")[0] == 404
    connection = socket.create_connection(server.httpd.server_address[:2], timeout=30)
    connection.sendall(b"POST /key HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")      # no Content-Length
    assert b" 411 " in connection.recv(200)
    connection.close()
    assert face.keys.empty()


def test_a_flood_of_keys_is_bounded(served):
    face, server = served
    statuses = [post_key(server, "back")[0] for _ in range(face_module.MAX_KEYS_QUEUED + 5)]
    assert statuses.count(204) == face_module.MAX_KEYS_QUEUED and statuses[-1] == 503
    assert face.keys.qsize() == face_module.MAX_KEYS_QUEUED


def test_an_idle_socket_is_closed(served, monkeypatch):
    face, server = served
    monkeypatch.setattr(face_module._Handler, "timeout", 0.5)
    connection = socket.create_connection(server.httpd.server_address[:2], timeout=30)
    connection.sendall(b"GET /state HTTP/1.1\r\n")           # and then nothing
    assert connection.recv(100) == b""                        # the server hung up
    connection.close()


def test_a_rebound_host_cannot_read_the_state_cross_origin(served):
    """The state carries no secret, but the page must not be framed or read by another site:
    no CORS header is ever sent."""
    _face, server = served
    _status, headers, _ = request(server, "GET", "/state", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_a_dispensers_screen_follows_the_water(tmp_path):
    """The dispenser's cardholder screen: the volume as each progress is saved (never ahead of it),
    then the session's charge once journaled (the server on SQLite: the screen is the terminal's)."""
    from server_process import running_server
    from test_dispenser_terminal import Rig
    with running_server(tmp_path / "server", database=None) as server:
        rig = Rig(server, tmp_path)
        try:
            check_the_water(rig)
        finally:
            rig.close()


def check_the_water(rig):
    face = Face("dispenser", "zh", rig.terminal_id)
    rig.terminal.face = face
    rig.run({"sync": True}, {"flow_ml_per_s": 50}, {"card": rig.card_path}, {"advance_ms": 2000})
    state = face.snapshot()
    assert state["message"]["code"] == "water_dispensing" and state["result"] is None
    saved = rig.terminal.store.water_progress()
    assert saved is not None and state["dispensed_ml"] == saved[3]
    rig.run({"advance_ms": 2000}, {"card": rig.card_path})
    state = face.snapshot()
    (session,) = rig.lines("session")
    assert state["dispensed_ml"] == session["ml"] == 200
    assert state["result"]["accepted"] and state["result"]["amount_fen"] == session["fen"]
    assert state["last_tap"]["seq"] == session["seq"] and state["backlog"] >= 1


# --- `ykt terminal --face / --keypad` mistakes -----------------------------------------------------

def run_terminal(tmp_path, *options):
    from test_pos_terminal import provisioning
    provision = tmp_path / "provision.json"
    provision.write_text(json.dumps(provisioning()))
    return subprocess.run([sys.executable, "-m", "ykt", "terminal", "--provision", str(provision), "--data-dir",
                           str(tmp_path / "t"), "--no-sync", "--serve", *options],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("face", ["eighty", "127.0.0.1:", "70000", "-1", "80.5"])
def test_a_face_address_that_is_not_one_is_refused(tmp_path, face):
    result = run_terminal(tmp_path, "--face", face)
    assert result.returncode == 2 and "--face" in result.stderr and "Traceback" not in result.stderr


def test_a_face_port_in_use_is_a_device_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_terminal(tmp_path, "--face", "127.0.0.1:%d" % busy.getsockname()[1])
    assert result.returncode == 5 and "无法提供终端屏幕" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("keypad, words", [("evdev:/dev/input/by-id/no-such-keypad", "找不到数字键盘"),
                                           ("evdev:/etc/hostname", "不是输入设备"),
                                           ("usb:keypad", "未知的数字键盘")])
def test_a_wrong_keypad_path_says_which(tmp_path, keypad, words):
    result = run_terminal(tmp_path, "--keypad", keypad)
    assert result.returncode == 5 and words in result.stderr and "Traceback" not in result.stderr
