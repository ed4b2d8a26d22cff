"""The terminal's screens in headless Chromium, as the cashier and the cardholder see them.

The POS shell runs its counter loop (`serve`) on the sim: reader with real card images and its real
journal; its screens are served by firmware/apps/face.py and opened in two Chromium windows sized
like the Pi's 7-inch panels (/cashier and /holder). Keys come through the real evdev keypad reader
(firmware/apps/keypad.py) from `struct input_event` records on a pipe - this kernel has no uinput to
make a real input device - and the dish buttons are clicked in the page. `ykt terminal --face` is
also run as a process, killed with SIGKILL right after a tap's decision, and restarted: its screen
shows that tap as 上笔交易 before anything else.

Screenshots of every step stay in <basetemp>/face-screens<N>/ (pytest prints the base directory).
"""
import contextlib
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from browser import by_id, chromium
from firmware.apps.face import Face, FaceServer, card_tail
from firmware.apps.keypad import open_keypad
from firmware.apps.pos_terminal import PosTerminal
from firmware.apps.terminal_shell import pump
from firmware.core import wallets
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from server_process import running_server
from sync_server import pin_rules, registry

from field_cards import card_image
from test_keypad import PipeDevice, Typist
from test_phone_app_pages import WATCH, no_problems
from test_pos_terminal import UID, issue_card_image, journal, provisioning, seed_cache

DEADLINE_S = 30
PANEL = {"width": 800, "height": 480, "deviceScaleFactor": 1, "mobile": False}


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    """The real server on its SQLite file: the screens are the terminal's, whatever store the server
    keeps (both stores are tested against terminals elsewhere)."""
    with running_server(tmp_path_factory.mktemp("server"), database=None) as server:
        yield server


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    return tmp_path_factory.mktemp("face-screens")


def until(driver, what, predicate):
    """Wait (a deadline, not a timing) until predicate(driver) holds; fail naming `what`."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if predicate(driver):
                return
        except Exception:               # the element is being re-rendered: ask again
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the screen never showed %s; it shows:\n%s"
                                 % (what, driver.find_element("tag name", "body").text))
        time.sleep(0.05)


def shows(element_id, *fragments):
    return lambda driver: all(fragment in by_id(driver, element_id).text for fragment in fragments)


def lift(driver, terminal, reader):
    """The cardholder takes the card away, and the till has seen it go."""
    reader.field.pull()
    until(driver, "the card lifted", lambda d: terminal._lingering_uid is None)


def window(driver, url):
    """A new window the size of the Pi's panel, watched for script errors and CSP violations."""
    driver.switch_to.new_window("window")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PANEL)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
    driver.get(url)
    return driver.current_window_handle


@contextlib.contextmanager
def counter(server, tmp_path):
    """A canteen till registered with the real server and synced, a cardholder with ¥100 and a ¥50
    single limit, the counter loop serving in a thread with its screens up and a keypad on a pipe:
    .terminal .face .url .keyboard .card_path .reader .card_tail .pin (the cardholder's PIN)."""
    conn = server.connect()
    try:
        merchant = registry.add_merchant(conn, "一食堂", "canteen 1", wallets.CATEGORY_CANTEEN)
        terminal_id = registry.register_terminal(conn, merchant)
        document = registry.provisioning_document(conn, server.master_key(), terminal_id, server.url)
    finally:
        conn.close()
    staff_number, id_number = "F%06d" % terminal_id, "11010120000404%04d" % terminal_id
    _account_id, identity = server.add_cardholder("张小明", staff_number, 10000, UID, id_number=id_number,
                                                  single_limit_fen=5000)
    document["dishes"] = provisioning()["dishes"]
    card_path = card_image(server.master_key(), identity, "张小明", UID, tmp_path / "card.card")
    reader = open_reader("sim:")
    face = Face("pos", "zh", terminal_id, dishes=document["dishes"], dish_keys={"f1": "pork", "f2": "rice"})
    terminal = PosTerminal(document, str(tmp_path / "terminal"), reader, out=io.StringIO(), face=face,
                           sync_interval_ms=60000)
    terminal.sync_now()
    screens_server = FaceServer(face, "127.0.0.1", 0).start()
    stop = threading.Event()
    device = PipeDevice()
    keypad = open_keypad("evdev:/dev/input/by-id/usb-pipe-keypad-event-kbd", device=device)
    keys = pump(lambda: keypad.read_key(100), face.keys, stop, "keypad")      # as `ykt terminal --keypad`
    loop = threading.Thread(target=terminal.serve, args=(face.keys, stop), kwargs={"poll_ms": 50}, daemon=True)
    loop.start()
    try:
        yield types.SimpleNamespace(terminal=terminal, face=face, url=screens_server.url, keyboard=Keyboard(device),
                                    card_path=card_path, reader=reader, card_tail=card_tail(identity.card_number),
                                    pin=pin_rules.initial_pin(id_number, staff_number))
    finally:
        stop.set()
        loop.join(timeout=30)
        keys.join(timeout=30)
        keypad.close()
        screens_server.close()
        terminal.close()


class Keyboard:
    """Types key names (firmware/core/keypad.py) as a USB keypad's input_event records on the pipe."""
    EVDEV_NAMES = {".": "KEY_KPDOT", "enter": "KEY_KPENTER", "cancel": "KEY_ESC", "back": "KEY_BACKSPACE"}

    def __init__(self, device):
        self.device = device
        self.typist = Typist()

    def type(self, keys):
        names = [self.EVDEV_NAMES.get(key) or "KEY_KP%s" % key for key in keys]
        self.device.write(self.typist.tap(*names))


def test_a_lunch_at_the_counter(sqlite_server, tmp_path, screens):
    with counter(sqlite_server, tmp_path) as site, chromium(tmp_path) as driver:
        terminal, face, keyboard, reader, pin = site.terminal, site.face, site.keyboard, site.reader, site.pin
        first = driver.current_window_handle
        cashier = window(driver, site.url + "/cashier")
        holder = window(driver, site.url + "/holder")
        driver.switch_to.window(first)
        driver.close()

        # the cashier keys ¥12.50: both screens show it
        keyboard.type(["1", "2", ".", "5"])
        driver.switch_to.window(cashier)
        until(driver, "the typed amount", shows("entry", "12.5"))
        keyboard.type(["enter"])
        until(driver, "the amount due", shows("amount", "12.50"))
        driver.save_screenshot(str(screens / "cashier-amount-due.png"))
        driver.switch_to.window(holder)
        until(driver, "the amount due to the cardholder", shows("amount", "12.50"))
        driver.save_screenshot(str(screens / "holder-amount-due.png"))

        # the card is tapped: paid, shown with the balance after, on both sides
        card = ClassicCard.load(site.card_path)
        reader.field.place(card)
        until(driver, "the success", shows("result", "交易成功"))
        until(driver, "the balance after", shows("balance", "87.50"))
        driver.save_screenshot(str(screens / "holder-accepted.png"))
        driver.switch_to.window(cashier)
        until(driver, "the last tap", shows("last-tap", "12.50", site.card_tail))
        driver.save_screenshot(str(screens / "cashier-accepted.png"))
        assert [record["amount_fen"] for record in journal(terminal)] == [1250]

        # the card stays on the reader: the next order is not charged to it until it has left
        driver.find_element("css selector", "#dishes button[data-dish='pork']").click()
        until(driver, "the dish's price", shows("amount", "8.00"))
        time.sleep(0.3)                  # several polls find the forgotten card
        assert len(journal(terminal)) == 1 and face.snapshot()["phase"] == "wait_card"
        lift(driver, terminal, reader)
        reader.field.place(card)
        until(driver, "the second tap", shows("last-tap", "8.00"))
        lift(driver, terminal, reader)
        assert [record["amount_fen"] for record in journal(terminal)] == [1250, 800]

        # ¥60 is over the ¥50 single limit: the PIN is asked; the screens show dots, never digits
        keyboard.type(["6", "0", "enter"])
        until(driver, "¥60 due", shows("amount", "60.00"))
        reader.field.place(card)
        until(driver, "the PIN prompt", lambda d: d.find_element("tag name", "body").get_attribute(
            "data-phase") == "wait_pin")
        keyboard.type(list(pin[:3]))
        until(driver, "three PIN dots for the cashier", shows("pin", "●●●"))
        driver.save_screenshot(str(screens / "cashier-pin.png"))
        driver.switch_to.window(holder)
        until(driver, "three PIN dots", shows("pin", "●●●"))
        driver.save_screenshot(str(screens / "holder-pin.png"))
        assert set(by_id(driver, "pin").text) <= set("●○ ") and face.snapshot()["pin_digits"] == 3
        keyboard.type(list(pin[3:]) + ["enter"])             # the server checks it: paid
        driver.switch_to.window(cashier)
        until(driver, "the payment after the PIN", shows("last-tap", "60.00"))
        lift(driver, terminal, reader)
        assert [record["amount_fen"] for record in journal(terminal)] == [1250, 800, 6000]

        # ¥30 is more than the card still holds: 余额不足 in red on the cardholder's side, nothing charged
        keyboard.type(["3", "0", "enter"])
        until(driver, "¥30 due", shows("amount", "30.00"))
        reader.field.place(card)
        driver.switch_to.window(holder)
        until(driver, "the refusal", shows("result", "余额不足"))
        driver.save_screenshot(str(screens / "holder-insufficient.png"))
        lift(driver, terminal, reader)
        assert len(journal(terminal)) == 3
        keyboard.type(["cancel"])
        driver.switch_to.window(cashier)

        # the touch screen's buttons: rice twice on the same card within the repeat window is held
        # for the cashier (重复刷卡), who confirms it with 确认; then an order cancelled with 取消
        driver.find_element("css selector", "#dishes button[data-dish='rice']").click()
        until(driver, "rice due", shows("amount", "1.00"))
        reader.field.place(card)
        until(driver, "rice paid", lambda d: len(journal(terminal)) == 4)
        lift(driver, terminal, reader)
        driver.find_element("css selector", "#dishes button[data-dish='rice']").click()
        until(driver, "rice due again", shows("amount", "1.00"))
        reader.field.place(card)
        until(driver, "the repeat-tap question", lambda d: d.find_element("tag name", "body").get_attribute(
            "data-phase") == "wait_confirm")
        driver.save_screenshot(str(screens / "cashier-repeat-tap.png"))
        by_id(driver, "key-enter").click()                      # the card is still on the reader
        until(driver, "the confirmed repeat", lambda d: len(journal(terminal)) == 5)
        lift(driver, terminal, reader)
        driver.find_element("css selector", "#dishes button[data-dish='rice']").click()
        until(driver, "rice due", shows("amount", "1.00"))
        by_id(driver, "key-cancel").click()
        until(driver, "nothing due", lambda d: d.find_element("tag name", "body").get_attribute(
            "data-phase") == "idle")
        assert [record["amount_fen"] for record in journal(terminal)] == [1250, 800, 6000, 100, 100]
        driver.save_screenshot(str(screens / "cashier-idle.png"))
        no_problems(driver)
        driver.switch_to.window(holder)
        no_problems(driver)


def test_the_screens_follow_the_terminals_language(tmp_path, screens):
    face = Face("pos", "en", 11, dishes=provisioning()["dishes"])
    server = FaceServer(face, "127.0.0.1", 0).start()
    try:
        face.observe({"type": "show", "code": "insufficient_balance", "text": "Insufficient balance"})
        face.observe({"type": "beep", "kind": "error"})
        face.observe({"type": "decision", "accepted": False, "reason": "insufficient_balance", "seq": None,
                      "amount_fen": 30000, "balance_after_fen": None, "card_number": 1001})
        face.observe({"type": "sync", "online": False, "error": "connection refused", "unacked": 12})
        with chromium(tmp_path) as driver:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PANEL)
            driver.get(server.url + "/cashier")
            until(driver, "the refusal in English", shows("result", "Insufficient balance"))
            until(driver, "the backlog", shows("backlog", "12"))
            assert "离线" not in by_id(driver, "network").text
            driver.save_screenshot(str(screens / "cashier-offline-en.png"))
    finally:
        server.close()


def _start_terminal(tmp_path, data_dir, cards, *options, stdin=subprocess.DEVNULL):
    provision = tmp_path / "provision.json"
    provision.write_text(json.dumps(provisioning()))
    return subprocess.Popen(
        [sys.executable, "-m", "ykt", "terminal", "--provision", str(provision), "--data-dir", str(data_dir),
         "--reader", "sim:", "--cards-dir", str(cards), "--no-sync", *options],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _screens_url(process):
    """The address `ykt terminal --face` prints on stderr when its screens are up."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert process.poll() is None, "the terminal exited with %s" % process.returncode
            continue
        if "screens:" in line:
            return line.split("screens:")[1].strip().rstrip("/")
    raise AssertionError("the terminal never said where its screens are")


def test_a_power_cut_mid_display_shows_the_paid_tap_at_start_up(tmp_path, screens):
    """`ykt terminal --face` pays one tap and is killed (SIGKILL) the moment its decision is out,
    before anyone could read the screen. Started again, it shows that tap as paid first of all."""
    data_dir, cards = tmp_path / "t", tmp_path / "cards"
    data_dir.mkdir()
    cards.mkdir()
    issue_card_image(cards)
    seed_cache(data_dir)
    process = _start_terminal(tmp_path, data_dir, cards, "--face", "127.0.0.1:0", "--script", "-",
                              "--decisions-only", stdin=subprocess.PIPE)
    try:
        process.stdin.write(json.dumps({"amount_fen": 1550, "card": UID.hex()}) + "\n")
        process.stdin.flush()
        decision = json.loads(process.stdout.readline())
        assert decision["accepted"] and decision["seq"] == 1
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    again = _start_terminal(tmp_path, data_dir, cards, "--face", "127.0.0.1:0", "--serve")
    try:
        url = _screens_url(again)
        with chromium(tmp_path) as driver:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PANEL)
            driver.get(url + "/cashier")
            until(driver, "the restored last tap", shows("last-tap", "15.50", "…1001"))
            assert "开机恢复" in by_id(driver, "last-tap").text
            until(driver, "the record still to upload", shows("backlog", "1"))
            until(driver, "the last tap message", shows("message", "上笔交易"))
            driver.save_screenshot(str(screens / "cashier-restored-last-tap.png"))
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=DEADLINE_S) == 0
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)
            again.wait()
