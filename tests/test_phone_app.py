"""The phone's payment code page (/app/paycode, sync_server/web/phone_app.py) in headless Chromium at
phone size against the real server.

A cardholder binds the card on the page, is refused 开通付款码 with the initial PIN (the text next to
the field), changes the PIN on the page and enables the code: the page's own WebCrypto key is
certified. Screenshots of the page are decoded with zxing-cpp and the text checked with the server's
real signature check (`sync_server.paycode.verify_code`) and `firmware.core.paycode.parse`: the
account, the minute, the counter. The screenshot goes through the emulated scanner into a `ykt terminal`
process: paid once; the same screenshot again is refused at that till and at another; the page says
支付成功 and moves to the next counter, and the balance follows. Then the server is stopped: a minute later
(the page's clock shifted) the page shows a new code that verifies, and reloaded with no server it
still opens from its service worker and shows a code that verifies, the balance marked 离线; at 360
px wide the code is still whole modules and scans. The QR version is segno's for the same text (10).
In English, a wrong PIN is refused next to the field, a certificate near its end is renewed, and
停用付款码 stops the phone's credential; the page runs under its strict Content-Security-Policy with no
violation, and its base45 is RFC 9285's. Screenshots stay in each test's tmp directory.
"""
import re

import httpx
import pytest
import segno

from browser import PAGE_DEADLINE_S, by_id, chromium, fill
from firmware.core import card_layout, messages, paycode as codes, records
from sync_server import db as dbmod, ledger, paycode, pin_rules, registry
from sync_server.ledger_store import SqliteStore
from test_pos_terminal_paycode import TillProcess
from simulators.phone import PhoneApp

pytestmark = pytest.mark.stores("sqlite")

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
NARROW_PHONE = dict(PHONE, width=360, height=740)
NEW_PIN = "258147"
SALE_FEN = 850
# The phone's clock as the page reads it (Date.now), shifted by the test: injected before any script of
# the page runs, on every page load, and changeable in a running page.
CLOCK_SHIFT = """
(() => {
  if (self.__phoneClockShiftMs === undefined) {
    const real_now = Date.now.bind(Date);
    Date.now = () => real_now() + self.__phoneClockShiftMs;
  }
  self.__phoneClockShiftMs = %d;
})();
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("phone")) as driver:
        phone_size(driver, PHONE)
        yield driver


def phone_size(driver, metrics):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})


@pytest.fixture
def shift_clock(browser):
    """shift(ms): the page's clock (Date.now) shifted now and on every later load, until the test ends."""
    added = []

    def shift(shift_ms):
        added.append(browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                             {"source": CLOCK_SHIFT % shift_ms})["identifier"])
        browser.execute_script(CLOCK_SHIFT % shift_ms)
    yield shift
    for identifier in added:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": identifier})
    phone_size(browser, PHONE)


def phone_step(shift_ms=0):
    """The minute the page's codes carry now (its clock offset from the server is a few ms at most)."""
    return (dbmod.now_ms() + shift_ms) // codes.STEP_MS


def wait(driver, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, PAGE_DEADLINE_S, poll_frequency=0.1).until(
        lambda _: condition(), message="page did not show %s" % what)


def shown(driver, element_id):
    return by_id(driver, element_id).is_displayed()


class Holder:
    """A cardholder with a card, 100 yuan in the main wallet and the initial PIN."""

    def __init__(self, server, name, staff_number, id_number):
        conn = server.connect()
        try:
            _person, self.account_id = registry.add_person(conn, name, card_layout.HOLDER_STUDENT,
                                                           id_number=id_number, staff_number=staff_number)
            registry.recharge(conn, self.account_id, 10000)
            self.card_number = registry.issue_card_record(conn, self.account_id, b"\x04\x61\x62\x63")[0].card_number
        finally:
            conn.close()
        self.name, self.staff_number = name, staff_number
        self.initial_pin = pin_rules.initial_pin(id_number, staff_number)


def bind_on_the_page(driver, server, holder):
    driver.get(server.url + "/app/paycode")
    wait(driver, lambda: shown(driver, "view-bind"), "the bind form")
    fill(driver, {"bind-name": holder.name, "bind-number": holder.staff_number, "bind-pin": holder.initial_pin})
    by_id(driver, "bind-submit").click()
    wait(driver, lambda: shown(driver, "view-enable"), "the enable form")


def enable_on_the_page(driver, pin):
    fill(driver, {"enable-pin": pin})
    by_id(driver, "enable-submit").click()
    wait(driver, lambda: shown(driver, "view-code") and by_id(driver, "paycode").get_attribute("data-counter"),
         "a payment code")


def screenshot_code(driver, path):
    """The text of the one QR code zxing-cpp finds in a screenshot of the page."""
    import zxingcpp
    from PIL import Image
    driver.save_screenshot(str(path))
    with Image.open(path) as image:
        found = [barcode for barcode in zxingcpp.read_barcodes(image.convert("L")) if barcode.valid]
    assert len(found) == 1, "expected one QR code in %s, found %d" % (path, len(found))
    assert found[0].format == zxingcpp.BarcodeFormat.QRCode
    return found[0].text


def verified(server, text):
    """The code after the server's real signature check (certificate and phone signature)."""
    conn = server.connect()
    try:
        code = paycode.verify_code(conn, server.master_key(), text, dbmod.now_ms())
    finally:
        conn.close()
    assert codes.parse(text) == code
    return code


def drawn(driver):
    canvas = by_id(driver, "paycode")
    return {name: int(canvas.get_attribute("data-" + name)) for name in
            ("version", "modules", "module-px", "time-step", "counter")}


def test_the_page_shows_a_code_that_verifies_moves_on_after_a_sale_and_works_offline(browser, fresh_server,
                                                                                      shift_clock, tmp_path):
    driver, server = browser, fresh_server
    holder = Holder(server, "付码一", "S2026001", "51340119990101123X")
    bind_on_the_page(driver, server, holder)

    # 开通付款码 with the initial PIN is refused next to the field; the PIN is changed on the page
    fill(driver, {"enable-pin": holder.initial_pin})
    by_id(driver, "enable-submit").click()
    wait(driver, lambda: "初始密码" in by_id(driver, "enable-error").text, "the initial-PIN refusal")
    assert shown(driver, "pin-form")
    fill(driver, {"pin-old": holder.initial_pin, "pin-new": NEW_PIN, "pin-confirm": NEW_PIN})
    by_id(driver, "pin-submit").click()
    wait(driver, lambda: "已修改" in by_id(driver, "enable-note").text, "the PIN changed")
    enable_on_the_page(driver, NEW_PIN)
    wait(driver, lambda: by_id(driver, "balance-main").text == "100.00", "the balance")

    text = screenshot_code(driver, tmp_path / "paycode.png")
    code = verified(server, text)
    assert len(text) == codes.TEXT_SIZE and code.counter == 0 and phone_step() - 1 <= code.time_step <= phone_step()
    assert (code.cert.account_id, code.cert.card_number) == (holder.account_id, holder.card_number)
    figures = drawn(driver)
    version = segno.make(text, error="m", mode="alphanumeric").version
    assert figures["version"] == version == 10 and figures["modules"] == 57, (
        "the page draws QR version %d (%d modules), segno makes %d" % (figures["version"], figures["modules"], version))
    assert figures["module-px"] == 10, ("%d device px (%.1f CSS px) a module at 390 px wide" %
                                        (figures["module-px"], figures["module-px"] / PHONE["deviceScaleFactor"]))

    # the screenshot through the emulated scanner into two `ykt terminal` processes: paid once at the
    # first; the same screenshot again refused there (its replay cache) and at the other (the server's
    # claim); the page says 支付成功, moves to the next counter, and the balance follows
    first, second = TillProcess(server, tmp_path, "one"), TillProcess(server, tmp_path, "two")
    try:
        first.ready()
        second.ready()
        paid = first.pay_with_image(tmp_path / "paycode.png", SALE_FEN, 1)
        assert paid["accepted"] and paid["credential_id"] == code.cert.credential_id, paid
        assert first.pay_with_image(tmp_path / "paycode.png", SALE_FEN, 2)["reason"] == messages.PAYCODE_USED
        assert second.pay_with_image(tmp_path / "paycode.png", SALE_FEN, 3)["reason"] == messages.PAYCODE_USED
        wait(driver, lambda: "支付成功 ¥8.50" in by_id(driver, "paid").text, "支付成功")
        wait(driver, lambda: drawn(driver)["counter"] == 1, "the next counter")
        wait(driver, lambda: by_id(driver, "balance-main").text == "91.50", "the balance after the sale")
    finally:
        assert first.finish() == 0 and second.finish() == 0
    conn = server.connect()
    try:
        assert registry.balances_of(conn, holder.account_id)["main"] == 10000 - SALE_FEN     # once
        assert conn.execute("SELECT count(*) FROM terminal_records WHERE kind = ?",
                            (records.KIND_PAYCODE,)).fetchone()[0] == 1
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()
    after_sale_text = screenshot_code(driver, tmp_path / "paycode_after_sale.png")
    after_sale = verified(server, after_sale_text)
    assert after_sale.counter == 1 and after_sale.time_step >= code.time_step
    wait(driver, lambda: driver.execute_script("return navigator.serviceWorker.controller !== null"),
         "the page under its service worker")

    # offline: the server is gone; a minute later the page shows a new code of the next minute
    server.stop()
    wait(driver, lambda: "离线" in by_id(driver, "balance-state").text, "the offline mark")
    shift_clock(codes.STEP_MS)
    wait(driver, lambda: drawn(driver)["time-step"] == phone_step(codes.STEP_MS), "the next minute's code")
    next_minute_text = screenshot_code(driver, tmp_path / "paycode_offline_next_minute.png")
    next_minute = verified(server, next_minute_text)
    assert next_minute_text not in (text, after_sale_text) and next_minute.time_step > after_sale.time_step
    assert next_minute.counter == 1 and phone_step(codes.STEP_MS) - 1 <= next_minute.time_step

    # reloaded with no server: the service worker serves the page, IndexedDB the code and the balance
    driver.refresh()
    wait(driver, lambda: shown(driver, "view-code") and by_id(driver, "paycode").get_attribute("data-counter"),
         "the code after a reload offline")
    wait(driver, lambda: "离线" in by_id(driver, "balance-state").text, "the offline mark after the reload")
    assert by_id(driver, "balance-main").text == "91.50"
    reloaded = verified(server, screenshot_code(driver, tmp_path / "paycode_offline_reloaded.png"))
    assert (reloaded.counter, reloaded.cert.account_id) == (1, holder.account_id)
    assert phone_step(codes.STEP_MS) - 1 <= reloaded.time_step <= phone_step(codes.STEP_MS)

    # the narrowest phone: still one readable code, whole modules
    phone_size(driver, NARROW_PHONE)
    wait(driver, lambda: drawn(driver)["module-px"] < figures["module-px"], "the code redrawn narrower")
    narrow = verified(server, screenshot_code(driver, tmp_path / "paycode_360.png"))
    assert narrow.counter == 1
    narrow_figures = drawn(driver)
    assert narrow_figures["version"] == 10 and narrow_figures["module-px"] == 9, (
        "%d device px (%.1f CSS px) a module at 360 px wide" % (narrow_figures["module-px"],
                                                               narrow_figures["module-px"] / NARROW_PHONE["deviceScaleFactor"]))


def test_the_page_has_no_inline_script_and_is_never_stored(live_server):
    page = httpx.get(live_server.url + "/app/paycode", timeout=30)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy and "frame-ancestors 'none'" in policy
    for attributes, body in re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S):
        assert "src=" in attributes or 'type="application/json"' in attributes, attributes
        assert "src=" not in attributes or not body.strip()
    assert not re.search(r"\son[a-z]+=|\sstyle=", page.text), "inline handlers or styles"
    assert "Bearer" not in page.text and "token" not in page.text.lower()
    worker = httpx.get(live_server.url + "/app/sw.js", timeout=30)
    assert worker.headers["Content-Type"].startswith("text/javascript") and "Content-Security-Policy" in worker.headers
    assets = re.findall(r'(?:src|href)="(/web/static/[^"]+)"', page.text)
    assert len(assets) == 10 and all(asset.replace("&amp;", "&") in worker.text for asset in assets)
    for asset in assets:
        assert httpx.get(live_server.url + asset.replace("&amp;", "&"), timeout=30).status_code == 200, asset
    manifest = httpx.get(live_server.url + "/app/manifest.webmanifest", timeout=30).json()
    assert manifest["start_url"] == "/app/"


CSP_WATCH = """
self.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => self.__cspViolations.push(event.violatedDirective));
"""


def certificates(server, account_id):
    conn = server.connect()
    try:
        return [row[0] for row in conn.execute(
            "SELECT k.id FROM paycode_certificates k JOIN paycode_credentials c ON c.id = k.credential_id "
            "WHERE c.account_id = ? ORDER BY k.id", (account_id,))]
    finally:
        conn.close()


def set_cert_valid_ms(server, valid_ms):
    conn = server.connect()
    try:
        with dbmod.transaction(conn):
            conn.execute("UPDATE settings SET value = ? WHERE name = 'paycode_cert_valid_ms'", (valid_ms,))
    finally:
        conn.close()


def test_in_english_a_wrong_pin_is_refused_renewal_and_stopping(browser, live_server, tmp_path):
    driver, server = browser, live_server
    watch = driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_WATCH})["identifier"]
    set_cert_valid_ms(server, 86400 * 1000)
    try:
        holder = Holder(server, "付码二", "S2026002", "513401199902021234")
        other_phone = PhoneApp(server.url, "app-phone-app-test")
        other_phone.bind(holder.name, holder.staff_number, holder.initial_pin)
        other_phone.change_pin(holder.initial_pin, NEW_PIN)
        other_phone.close()
        driver.get(server.url + "/app/paycode?lang=en")
        wait(driver, lambda: shown(driver, "view-bind"), "the bind form")
        assert "Bind your campus card" in driver.page_source
        fill(driver, {"bind-name": holder.name, "bind-number": holder.staff_number, "bind-pin": NEW_PIN})
        by_id(driver, "bind-submit").click()
        wait(driver, lambda: shown(driver, "view-enable"), "the enable form")
        fill(driver, {"enable-pin": "000000"})
        by_id(driver, "enable-submit").click()
        wait(driver, lambda: by_id(driver, "enable-error").text == "wrong PIN: 4 tries left", "the wrong-PIN refusal")
        enable_on_the_page(driver, NEW_PIN)
        assert "A new code every minute" in by_id(driver, "view-code").text
        # a certificate good for less than two days is renewed at the first poll, and the code follows
        wait(driver, lambda: len(certificates(server, holder.account_id)) == 2, "the certificate renewed")
        renewed = certificates(server, holder.account_id)[-1]
        wait(driver, lambda: verified(server, screenshot_code(driver, tmp_path / "renewed.png")).cert.cert_serial
             == renewed, "a code under the renewed certificate")
        assert driver.execute_script(
            "return ['AB', 'Hello!!', 'base-45', 'ietf!'].map((text) => ykt.base45.encode(new TextEncoder().encode(text)))"
        ) == ["BB8", "%69 VD92EX0", "UJCLQE7W581", "QED8WEX0"]

        by_id(driver, "stop").click()                      # the first tap only asks
        assert by_id(driver, "stop").text == "Tap again to stop it" and shown(driver, "view-code")
        by_id(driver, "stop").click()
        wait(driver, lambda: shown(driver, "view-enable"), "the enable form after stopping")
        assert by_id(driver, "enable-note").text == "The payment code is stopped"
        conn = server.connect()
        try:
            assert [row["status"] for row in paycode.credentials(conn, holder.account_id)] == [paycode.REVOKED]
        finally:
            conn.close()
        assert driver.execute_script("return self.__cspViolations") == []
        driver.get(server.url + "/app/paycode?lang=zh")
    finally:
        set_cert_valid_ms(server, 7 * 86400 * 1000)
        driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": watch})
