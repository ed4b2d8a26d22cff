"""A terminal's face: what its screens show, kept from the shell's own output lines, served to the
kiosk pages on the terminal itself.

    face = Face("pos", "zh", terminal_id=7, dishes={"rice": ["米饭", 100]}, clock_text=...)
    server = FaceServer(face, "127.0.0.1", 8800).start()     # Chromium --kiosk http://127.0.0.1:8800/
    face.observe({"type": "show", "code": "amount_due", "text": "..."})   # every line the shell emits
    face.set(phase="wait_card", amount_fen=1250, entry="", pin_digits=None)

Why a local page in Chromium's kiosk mode and not a terminal UI: the Pi's screens have to show
Chinese in type readable at arm's length, and a text console can do neither (the Linux console has
no CJK glyphs without fbterm, and a terminal UI's "big" type is one cell per character). Chromium has
the fonts, scales type to the screen, drives a touch panel (the dish buttons) and a second display
facing the queue (a second kiosk window on /holder), and it is the same headless Chromium the tests
already drive for the web pages, so the screens are tested and photographed as they are.

What the page may know and do is narrow on purpose:
  - The state is built only from lines the shell emits, and the shell emits a success only after
    the journal commit; the page can never show a success the journal does not hold. At start-up
    the last committed tap is read back from the journal (`last_tap`, restored), so a power cut
    between the commit and the display still leaves the cashier seeing that it was paid.
  - Keys are read by the terminal process (firmware/apps/keypad.py), not by the page: the PIN never
    reaches the browser, only how many digits were typed.
  - The page's own keys (touch buttons) are taken only from the loopback interface and only from
    this page's origin, into a bounded queue; anything else is refused. Long polls are bounded in
    number and in time, and idle connections are closed.
"""
import json
import os
import queue
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "face_static")
STATIC_FILES = {"face.css": "text/css; charset=utf-8", "face.js": "text/javascript; charset=utf-8"}
PAGES = {"/cashier": "cashier.html", "/holder": "holder.html"}
KINDS = ("pos", "activation", "dispenser")
PHASES = ("idle", "wait_card", "busy", "wait_pin", "wait_confirm")
TONES = ("info", "ok", "error", "attention")
POLL_HOLD_S = 20.0                 # a long poll is answered after this long even when nothing changed
MAX_POLLS = 16                     # long polls held at once; more get 503 (two kiosk windows need two)
SOCKET_IDLE_S = 30.0               # a connection that sends nothing for this long is closed
MAX_KEYS_QUEUED = 64               # touch keys not yet taken by the shell
MAX_KEY_BODY_BYTES = 256
MAX_KEY_CHARS = 40
# The screen's buttons: dishes, 取消 and 确认. Digits come only from the keypad, so no PIN ever passes
# through the browser.
PLAIN_KEYS = frozenset(("back", "enter", "cancel"))
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = (("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'"),
                    ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                    ("Cache-Control", "no-store"))


def card_tail(card_number):
    """A card number as the cashier's screen shows it: its last four digits (…0042)."""
    if not card_number:
        return None
    return "…%04d" % (int(card_number) % 10000)


def _menu(dishes, dish_keys):
    """The screen's dish buttons: {dish_id: [name, price_fen]} in id order, with their F-key."""
    shortcut_of = {dish_id: key.upper() for key, dish_id in (dish_keys or {}).items()}
    return [{"id": dish_id, "name": entry[0], "price_fen": entry[1], "key": shortcut_of.get(dish_id)}
            for dish_id, entry in sorted((dishes or {}).items())]


class Face:
    """The state both screens render, with a version that grows on every change (thread-safe: the
    main loop, the sync thread and the HTTP threads all touch it)."""

    def __init__(self, kind, lang, terminal_id, dishes=None, dish_keys=None, backlog=0, clock_text=None,
                 max_keys=MAX_KEYS_QUEUED):
        assert kind in KINDS, kind
        self._changed = threading.Condition()
        self._clock_text = clock_text or (lambda: time.strftime("%H:%M:%S"))
        self._state = {
            "version": 1, "kind": kind, "lang": lang, "terminal_id": terminal_id, "phase": "idle",
            "message": {"code": "", "text": "", "tone": "info"}, "amount_fen": None, "entry": "",
            "pin_digits": None, "result": None, "last_tap": None, "dishes": _menu(dishes, dish_keys),
            "network": {"online": None, "last_sync": None, "error": None}, "backlog": int(backlog),
            "dispensed_ml": None,
        }
        self.keys = queue.Queue(max_keys)      # the page's touch keys, for the shell to take

    # -- what the shell tells ----------------------------------------------------------------------

    def observe(self, line):
        """One line the shell emitted (show, beep, decision, session, sync)."""
        kind = line.get("type")
        with self._changed:
            state = self._state
            if kind == "show":
                state["message"] = {"code": line.get("code") or "", "text": line.get("text") or "", "tone": "info"}
            elif kind == "beep" and line.get("kind") in TONES:
                state["message"] = dict(state["message"], tone=line["kind"])
            elif kind == "decision":
                self._decided(line)
            elif kind == "session":
                self._dispensed(line)
            elif kind == "sync":
                state["network"] = {"online": bool(line.get("online")), "error": line.get("error"),
                                    "last_sync": self._clock_text() if line.get("online")
                                    else state["network"]["last_sync"]}
                if line.get("unacked") is not None:
                    state["backlog"] = int(line["unacked"])
            else:
                return
            self._bump()

    def _decided(self, line):
        state = self._state
        amount_fen = line.get("amount_fen")
        state["result"] = {"accepted": bool(line.get("accepted")), "code": line.get("reason"),
                           "text": state["message"]["text"], "amount_fen": amount_fen,
                           "balance_after_fen": line.get("balance_after_fen")}
        if line.get("accepted") and line.get("seq"):
            state["last_tap"] = {"seq": line["seq"], "amount_fen": amount_fen,
                                 "balance_after_fen": line.get("balance_after_fen"),
                                 "card": card_tail(line.get("card_number")), "time": self._clock_text(),
                                 "restored": False}
            state["backlog"] += 1

    def _dispensed(self, line):
        state = self._state
        state["dispensed_ml"] = line.get("ml")
        state["result"] = {"accepted": True, "code": "water_done", "text": state["message"]["text"],
                           "amount_fen": line.get("fen"), "balance_after_fen": None}
        state["last_tap"] = {"seq": line.get("seq"), "amount_fen": line.get("fen"), "balance_after_fen": None,
                             "card": None, "time": self._clock_text(), "restored": False}
        state["backlog"] += 1

    def set(self, **fields):
        """The shell's own view of the moment: phase, amount_fen, entry, pin_digits, dispensed_ml."""
        assert set(fields) <= {"phase", "amount_fen", "entry", "pin_digits", "dispensed_ml", "backlog"}, fields
        assert fields.get("phase", "idle") in PHASES, fields
        with self._changed:
            state = self._state
            if fields.get("amount_fen") and fields["amount_fen"] != state["amount_fen"]:
                state["result"] = None        # a new order: the last result leaves the screen
            changed = {name: value for name, value in fields.items() if state.get(name) != value}
            if changed:
                state.update(changed)
                self._bump()

    def set_menu(self, dishes, dish_keys):
        """A new dish menu (the server's configuration changed it): the screen's buttons follow."""
        with self._changed:
            menu = _menu(dishes, dish_keys)
            if menu != self._state["dishes"]:
                self._state["dishes"] = menu
                self._bump()

    def restore_last_tap(self, seq, amount_fen, card_number, time_text):
        """The journal's last committed tap at start-up (上笔交易)."""
        with self._changed:
            self._state["last_tap"] = {"seq": seq, "amount_fen": amount_fen, "balance_after_fen": None,
                                       "card": card_tail(card_number), "time": time_text, "restored": True}
            self._bump()

    def _bump(self):
        self._state["version"] += 1
        self._changed.notify_all()

    # -- what the pages read -----------------------------------------------------------------------

    def snapshot(self):
        with self._changed:
            return json.loads(json.dumps(self._state))

    def wait_newer(self, after_version, hold_s):
        """The state once its version passes after_version, or as it is after hold_s."""
        deadline = time.monotonic() + hold_s
        with self._changed:
            while self._state["version"] <= after_version:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return json.dumps(self._state, ensure_ascii=False)

    def dish_ids(self):
        with self._changed:
            return {dish["id"] for dish in self._state["dishes"]}

    def home(self):
        return "/cashier" if self._state["kind"] == "pos" else "/holder"


class FaceServer:
    """The kiosk pages and their state on one local port (a ThreadingHTTPServer on its own thread)."""

    def __init__(self, face, host="127.0.0.1", port=0):
        self.face = face
        self._polls = threading.BoundedSemaphore(MAX_POLLS)
        handler = type("FaceHandler", (_Handler,), {"face": face, "polls": self._polls})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = self._handle_error
        self._thread = None

    def _handle_error(self, request, client_address):
        """A screen that went away mid-poll (reloaded, closed) is no error worth a traceback."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        ThreadingHTTPServer.handle_error(self.httpd, request, client_address)

    @property
    def url(self):
        host, port = self.httpd.server_address[:2]
        return "http://%s:%d" % ("127.0.0.1" if host in ("0.0.0.0", "") else host, port)

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ykt-face", daemon=True)
        self._thread.start()
        return self

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    face = None
    polls = None
    timeout = SOCKET_IDLE_S
    server_version = "ykt-face"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass                                   # requests carry nothing worth a log line; keys never logged

    def _send(self, status, body=b"", content_type="text/plain; charset=utf-8", headers=()):
        self.send_response(status)
        for name, value in SECURITY_HEADERS + tuple(headers):
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, status, zh, en):
        self.close_connection = True        # a refused request's body may still be unread
        self._send(status, ("%s / %s\n" % (zh, en)).encode("utf-8"))

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        if path == "/":
            self._send(HTTPStatus.FOUND, headers=(("Location", self.face.home()),))
        elif path in PAGES:
            self._file(PAGES[path], "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
            name = path[len("/static/"):]
            self._file(name, STATIC_FILES[name])
        elif path == "/state":
            self._state(urllib.parse.parse_qs(parts.query).get("after", [""])[0])
        else:
            self._refuse(HTTPStatus.NOT_FOUND, "没有这个页面", "no such page")

    do_HEAD = do_GET

    def _file(self, name, content_type):
        with open(os.path.join(STATIC_DIR, name), "rb") as handle:
            self._send(HTTPStatus.OK, handle.read(), content_type)

    def _state(self, after):
        if after == "":
            body = self.face.wait_newer(1 << 62, 0)
        else:
            try:
                after_version = int(after)
            except ValueError:
                return self._refuse(HTTPStatus.BAD_REQUEST, "after 须为整数", "after must be an integer")
            if not self.polls.acquire(blocking=False):
                return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "连接过多", "too many screens waiting")
            try:
                body = self.face.wait_newer(after_version, POLL_HOLD_S)
            finally:
                self.polls.release()
        self._send(HTTPStatus.OK, body.encode("utf-8"), "application/json; charset=utf-8")

    def do_POST(self):
        if urllib.parse.urlsplit(self.path).path != "/key":
            return self._refuse(HTTPStatus.NOT_FOUND, "没有这个页面", "no such page")
        if not self._from_this_page():
            return self._refuse(HTTPStatus.FORBIDDEN, "只接受本机屏幕的按键", "keys are taken only from this "
                                                                            "terminal's own screen")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._refuse(HTTPStatus.LENGTH_REQUIRED, "缺少长度", "Content-Length required")
        if not 0 < length <= MAX_KEY_BODY_BYTES:
            return self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "按键数据过长", "key body too large")
        try:
            key = json.loads(self.rfile.read(length).decode("utf-8"))["key"]
        except (ValueError, KeyError, TypeError):
            return self._refuse(HTTPStatus.BAD_REQUEST, "按键格式错误", 'expected {"key": "..."}')
        if not self._known(key):
            return self._refuse(HTTPStatus.BAD_REQUEST, "未知按键", "unknown key")
        try:
            self.face.keys.put_nowait(key)
        except queue.Full:
            return self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "按键过快，请稍候", "too many keys waiting")
        self._send(HTTPStatus.NO_CONTENT)

    def _from_this_page(self):
        """Loopback only, addressed by a loopback name, and (when the browser says) from a page of
        this very origin: a page of any other site open on the terminal must not press its keys,
        not even through a name it rebinds to 127.0.0.1."""
        if not self.client_address[0].startswith("127.") and self.client_address[0] != "::1":
            return False
        host = self.headers.get("Host", "")
        if host.rpartition(":")[0] not in LOOPBACK_NAMES:
            return False
        origin = self.headers.get("Origin")
        return origin is None or origin == "http://" + host

    def _known(self, key):
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
            return False
        if key.startswith("dish:"):
            return key[len("dish:"):] in self.face.dish_ids()
        return key in PLAIN_KEYS
