"""The admin console in headless Chromium against the real server (SQLite): a technician signs in,
adds a merchant, registers a terminal and gets its provisioning file as a download (its keys then
sync), edits the terminal's menu, uploads a signed bundle and rolls it out to that terminal; at a
phone's width (390 px) the same pages never grow wider than the screen, and a menu is edited there
too. Screenshots go to the test's tmp directory.
"""
import json
import os
import sys
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from browser import PAGE_DEADLINE_S, by_id, chromium, click, fill
from firmware.core import sam as sam_keys
from server_process import SyncClient, running_server
from sync_server import registry, releases
from sync_server.web import auth

from staff_site import PASSWORD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import release  # noqa: E402

pytestmark = pytest.mark.stores("sqlite")

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
# how far past the screen's edge anything on the page reaches (0: nothing does)
OVERFLOW = """
const width = document.documentElement.clientWidth;
let worst = [document.documentElement.scrollWidth - width, "the page"];
for (const element of document.querySelectorAll("table, form, input, select, button, nav, h1, h2, p, dl, td")) {
  const box = element.getBoundingClientRect();
  const over = Math.max(box.right - width, element.scrollWidth - element.clientWidth);
  if (box.width > 0 && over > worst[0]) worst = [over, element.tagName + "#" + element.id + "." + element.className];
}
return worst;
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("admin-web"), database=None) as server:
        conn = server.connect()
        try:
            auth.add_staff_user(conn, "tech", "李技术", ["admin"], PASSWORD)
            merchant_id = registry.add_merchant(conn, "二食堂", "Canteen 2", 1)
            key = Ed25519PrivateKey.generate()
            releases.add_release_key(conn, key.public_key().public_bytes_raw().hex())
        finally:
            conn.close()
        yield server, key, merchant_id


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def wait_for(what, check):
    deadline = time.monotonic() + PAGE_DEADLINE_S
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "no %s within %d s" % (what, PAGE_DEADLINE_S)
        time.sleep(0.1)


def sign_in(driver, server):
    driver.delete_all_cookies()
    driver.get(server.url + "/admin/sign-in")
    fill(driver, {"username": "tech", "password": PASSWORD})
    click(driver, "sign-in")
    assert driver.current_url.endswith("/admin/fleet") and "李技术" in by_id(driver, "staff-name").text


def flash_text(driver):
    return " ".join(element.text for element in driver.find_elements("css selector", "p.flash"))


def register_terminal(driver, downloads, merchant_id, location):
    """Register through the terminals page; the downloaded provisioning document."""
    from selenium.webdriver.support.ui import Select
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    click(driver, "admin-terminals")
    Select(by_id(driver, "register-merchant")).select_by_value(str(merchant_id))
    fill(driver, {"register-location": location})
    before = set(os.listdir(downloads))
    by_id(driver, "register-button").click()          # a download: the page stays
    name = wait_for("download", lambda: [name for name in os.listdir(downloads) if name not in before
                                         and name.endswith(".json")])[0]
    with open(os.path.join(downloads, name), encoding="utf-8") as handle:
        document = json.load(handle)
    assert name == "terminal-%d.json" % document["terminal_id"]
    return document


def terminal_of(server, document):
    sam = sam_keys.SoftwareSAM({purpose: bytes.fromhex(key) for purpose, key in document["sam_keys"].items()
                                if purpose != registry.LEGACY_MASTER})
    return SyncClient(server.url, document["terminal_id"], sam, document["merchant_id"], document["category"])


def edit_menu(driver, rows):
    for index, (dish_id, name, price) in enumerate(rows, 1):
        fill(driver, {"dish-id-%d" % index: dish_id, "dish-name-%d" % index: name, "dish-price-%d" % index: price})
    click(driver, "save-menu")
    assert "菜单已保存" in flash_text(driver)


def test_a_technician_registers_a_terminal_edits_its_menu_and_rolls_out_a_release(site, browser, tmp_path):
    server, key, _merchant_id = site
    driver = browser
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    sign_in(driver, server)
    click(driver, "admin-merchants")
    fill(driver, {"merchant-name-zh": "一食堂", "merchant-name-en": "Canteen 1"})
    click(driver, "add-merchant-button")
    assert "商户已添加" in flash_text(driver)
    merchant_id = int(driver.current_url.split("#merchant-")[1])
    document = register_terminal(driver, tmp_path, merchant_id, "一食堂二楼 3号窗口")
    terminal_id = document["terminal_id"]
    assert document["merchant_id"] == merchant_id and document["merchant_name_zh"] == "一食堂"

    driver.get(server.url + "/admin/terminals")
    assert "一食堂二楼 3号窗口" in by_id(driver, "terminal-%d" % terminal_id).text
    click(driver, "open-terminal-%d" % terminal_id)
    edit_menu(driver, [("rice", "米饭", "1.50"), ("pork", "红烧肉", "12")])
    assert by_id(driver, "dish-name-1").get_attribute("value") == "红烧肉"     # sorted by id: pork first
    driver.save_screenshot(str(tmp_path / "terminal-desktop.png"))
    terminal = terminal_of(server, document)
    try:
        config = terminal.sync(health={"firmware": "ykt-pos/1.0.0"})["config"]
        assert config["dishes"] == {"pork": ["红烧肉", 1200], "rice": ["米饭", 150]}

        bundle = release.build("pos", "1.1.0", key, str(tmp_path / "dist"),
                               files={"ykt/__init__.py": os.path.join(ROOT, "ykt", "__init__.py")})
        click(driver, "admin-releases")
        by_id(driver, "bundle-file").send_keys(bundle)
        click(driver, "upload-button")
        assert "已登记固件 pos 1.1.0" in flash_text(driver)
        (release_row,) = driver.find_elements("css selector", "#releases tbody tr[id^=release-]")
        release_id = int(release_row.get_attribute("id").split("-")[1])
        from selenium.webdriver.support.ui import Select
        Select(by_id(driver, "rollout-scope-%d" % release_id)).select_by_value("terminal")
        fill(driver, {"rollout-terminal-%d" % release_id: str(terminal_id)})
        click(driver, "rollout-button-%d" % release_id)
        assert "已推送：终端 %d" % terminal_id in flash_text(driver)
        assert "终端 %d" % terminal_id in by_id(driver, "release-%d" % release_id).text
        (offer,) = [command for command in terminal.sync(health={"firmware": "ykt-pos/1.0.0"})["commands"]
                    if command["op"] == "update"]
        assert offer["version"] == "1.1.0"
        driver.get(server.url + "/admin/releases")
        assert "ykt-pos/1.0.0" in by_id(driver, "running").text
    finally:
        terminal.close()


def test_at_a_phones_width_nothing_is_wider_than_the_screen(site, browser, tmp_path):
    server, _key, merchant_id = site
    driver = browser
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    sign_in(driver, server)
    document = register_terminal(driver, tmp_path, merchant_id, "二食堂一楼 12号窗口（靠近东门的那一排）")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        page = "/admin/terminals/%d" % document["terminal_id"]
        driver.get(server.url + page)
        edit_menu(driver, [("noodles-beef", "牛肉拉面（大碗）", "18.50")])
        driver.save_screenshot(str(tmp_path / "terminal-phone.png"))
        for path in ("/admin/fleet", "/admin/merchants", "/admin/terminals", page, page + "/revoke", "/admin/releases",
                     "/admin/fleet?lang=en", "/admin/terminals", page, "/admin/releases"):
            driver.get(server.url + path)
            overflow, where = driver.execute_script(OVERFLOW)
            assert overflow <= 0.5, "%s: %s reaches %.1f px past a 390 px phone" % (path, where, overflow)
        driver.save_screenshot(str(tmp_path / "releases-phone.png"))
        driver.get(server.url + "/admin/fleet?lang=zh")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
