"""The web pages in headless Chromium against the real server (server subprocess, SQLite file).

A cardholder signs in, reads the transaction history with date and type filters and paging, reports
the card lost and sees it (and a terminal's next sync refuses the card), unfreezes it under the
manual's rule, recharges through a (simulated) payment channel; a clerk finds a person, takes cash and
prints a receipt. One test tries another person's ids in every URL and form and fails if any of
their data shows. Screenshots of the portal and the hall page go to the test's tmp directory.
"""
import datetime

import httpx
import pytest

from browser import by_id, chromium, click, fill, set_date, text
from firmware.core import protocol
from server_process import running_server
from sync_server import db as dbmod, registry
from sync_server.services import recharge as recharge_service
from sync_server.web import auth

BEIJING = datetime.timezone(datetime.timedelta(hours=8))
DAY_MS = 24 * 3600 * 1000
CLERK_PASSWORD = "hall-desk-password"
A = {"name": "张三丰", "number": "S20190001", "pin": "190001"}
B = {"name": "李四海", "number": "S20190002", "pin": "011230", "id_number": "21010419900101123X"}
B_AMOUNT_TEXT = "777.77"
PURCHASES = 14
PURCHASE_FEN = 350

# what the browser does; the pages' server side is tested on both stores over HTTP
pytestmark = pytest.mark.stores("sqlite")


@pytest.fixture(scope="module")
def site(tmp_path_factory, module_database):
    with running_server(tmp_path_factory.mktemp("web"), env={"YKT_SIMULATED_PAYMENTS": "1"},
                        database=module_database) as server:
        conn = server.connect()
        now_ms = dbmod.now_ms()
        a_person, a_account = registry.add_person(conn, A["name"], 2, staff_number=A["number"])
        b_person, b_account = registry.add_person(conn, B["name"], 2, staff_number=B["number"],
                                                  id_number=B["id_number"])
        a_card, _ = registry.issue_card_record(conn, a_account, b"\xa1\x02\x03\x04")
        b_card, _ = registry.issue_card_record(conn, b_account, b"\xb1\x02\x03\x04")
        registry.recharge(conn, a_account, 5000, now_ms=now_ms - 40 * DAY_MS)      # outside the default month
        registry.recharge(conn, a_account, 10000, now_ms=now_ms - 10 * DAY_MS)
        registry.recharge(conn, b_account, 77777, now_ms=now_ms - 5 * DAY_MS)
        b_order = recharge_service.create_order(conn, b_account, 12345, "alipay")
        auth.add_staff_user(conn, "clerk", "王老师", ["hall"], CLERK_PASSWORD)
        conn.close()
        terminal = server.add_terminal()
        terminal.sync([terminal.record(a_account, a_card.card_number, PURCHASE_FEN, tap_counter=n + 1,
                                       time_ms=now_ms - (PURCHASES - n) * 60000) for n in range(PURCHASES)])
        yield {"server": server, "terminal": terminal, "now_ms": now_ms,
               "a": dict(A, person_id=a_person, account_id=a_account, card_number=a_card.card_number),
               "b": dict(B, person_id=b_person, account_id=b_account, card_number=b_card.card_number,
                         order_id=b_order["order_id"])}
        terminal.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


@pytest.fixture
def fresh(browser):
    browser.delete_all_cookies()
    return browser


def sign_in_portal(driver, site, who):
    driver.get(site["server"].url + "/portal/sign-in")
    fill(driver, {"staff_number": who["number"], "pin": who["pin"]})
    click(driver, "sign-in")
    assert who["name"] in by_id(driver, "holder-name").text


def rows(driver):
    return driver.find_elements("css selector", "#statement tr.row")


def day(site, days_ago):
    return datetime.datetime.fromtimestamp(site["now_ms"] / 1000 - days_ago * 86400, BEIJING).date().isoformat()


def test_history_with_filters_and_paging(fresh, site, tmp_path):
    driver = fresh
    sign_in_portal(driver, site, site["a"])
    assert by_id(driver, "holder-balance").text.startswith("101.00")     # 50 + 100 - 14 x 3.50
    driver.save_screenshot(str(tmp_path / "portal_home.png"))
    click(driver, "nav-transactions")
    # the last month by default: 14 meals and one recharge, ten to a page
    assert "共2页" in by_id(driver, "page-count").text
    first_page = [row.text for row in rows(driver)]
    assert len(first_page) == 10 and all("-3.50" in row for row in first_page)
    assert "101.00" in first_page[0]                                   # newest first, balance after
    driver.save_screenshot(str(tmp_path / "portal_transactions.png"))
    click(driver, "next-page")
    second_page = [row.text for row in rows(driver)]
    assert len(second_page) == 5 and "+100.00" in second_page[-1] and by_id(driver, "page-current").text == "2"
    # recharges only
    driver.find_element("css selector", "#type option[value=recharge]").click()
    click(driver, "query")
    assert [("+100.00" in row.text) for row in rows(driver)] == [True]
    # a date range around the older recharge only
    set_date(driver, "start", day(site, 41))
    set_date(driver, "end", day(site, 39))
    driver.find_element("css selector", "#type option[value=all]").click()
    click(driver, "query")
    only = [row.text for row in rows(driver)]
    assert len(only) == 1 and "+50.00" in only[0] and "共1页" in by_id(driver, "page-count").text
    # English on request, remembered
    driver.get(site["server"].url + "/portal/transactions?lang=en")
    assert "Transactions" in driver.page_source and "2 pages" in by_id(driver, "page-count").text
    driver.get(site["server"].url + "/portal/")
    assert "Valid until" in driver.page_source
    driver.get(site["server"].url + "/portal/?lang=zh")


def test_report_loss_then_unfreeze_under_the_manual_rule(fresh, site):
    driver, a, terminal = fresh, site["a"], site["terminal"]
    sign_in_portal(driver, site, a)
    click(driver, "nav-loss")
    assert "正常" in by_id(driver, "card-status").text
    fill(driver, {"loss-pin": a["pin"]})
    click(driver, "report-loss")
    assert "已挂失" in by_id(driver, "card-status").text and "挂失成功" in text(driver)
    denied = terminal.sync(deny_version=0)["deny"]["entries"]      # the terminal's next sync refuses the card
    assert [protocol.DENY_CARD, protocol.card_deny_ref(a["card_number"], 1), True] in [entry[:3] for entry in denied]
    # with the initial PIN only the hall may unfreeze (manual 5.2)
    fill(driver, {"unfreeze-pin": a["pin"]})
    click(driver, "unfreeze")
    assert "已挂失" in by_id(driver, "card-status").text and "服务大厅" in text(driver)
    click(driver, "nav-pin")
    fill(driver, {"old-pin": a["pin"], "new-pin": "246810", "new-pin-again": "246810"})
    click(driver, "change-pin")
    assert "密码已修改" in text(driver)
    a["pin"] = "246810"
    click(driver, "nav-loss")
    fill(driver, {"unfreeze-pin": "246810"})
    click(driver, "unfreeze")
    assert "正常" in by_id(driver, "card-status").text


def test_recharge_through_a_channel(fresh, site):
    driver = fresh
    sign_in_portal(driver, site, site["a"])
    before = by_id(driver, "holder-balance").text
    click(driver, "nav-recharge")
    fill(driver, {"amount-yuan": "20"})
    driver.find_element("css selector", "#channel option[value=wechat]").click()
    click(driver, "create-order")
    assert "待支付" in by_id(driver, "order-status").text
    click(driver, "simulate-payment")
    assert "已到账" in by_id(driver, "order-status").text
    after = by_id(driver, "holder-balance").text
    assert float(after.rstrip("元")) == pytest.approx(float(before.rstrip("元")) + 20)


def test_hall_finds_a_person_takes_cash_and_prints_a_receipt(fresh, site, tmp_path):
    driver, b = fresh, site["b"]
    driver.get(site["server"].url + "/hall/sign-in")
    fill(driver, {"username": "clerk", "password": CLERK_PASSWORD})
    click(driver, "sign-in")
    fill(driver, {"q": b["number"]})
    click(driver, "search")
    driver.find_element("css selector", "a.person-link").click()
    assert b["name"] in by_id(driver, "person-name").text
    driver.save_screenshot(str(tmp_path / "hall_person.png"))
    fill(driver, {"amount-yuan": "30"})
    click(driver, "recharge")
    assert by_id(driver, "confirm-name").text == b["name"] and by_id(driver, "confirm-amount").text == "30.00"
    assert by_id(driver, "confirm-wallet").text == "主钱包"
    click(driver, "recharge-confirm")
    assert "现金充值" in by_id(driver, "receipt-action").text and by_id(driver, "receipt-amount").text == "30.00"
    assert by_id(driver, "receipt-clerk").text == "clerk"
    driver.save_screenshot(str(tmp_path / "hall_receipt.png"))
    conn = site["server"].connect()
    try:
        assert conn.execute("SELECT username, action, person_id, amount_fen FROM staff_actions").fetchall() == \
            [("clerk", "recharge", b["person_id"], 3000)]
    finally:
        conn.close()
    site["b_amount_texts"] = [B_AMOUNT_TEXT, "807.77"]


def test_a_cardholder_never_sees_another_persons_data(fresh, site):
    """Signed in as A, try B's ids in every URL and every form; B's name, number and amounts must never
    show, and nothing of B's may change."""
    driver, a, b = fresh, site["a"], site["b"]
    conn = site["server"].connect()
    b_before = (registry.balances_of(conn, b["account_id"]),
                conn.execute("SELECT status FROM cards WHERE account_id = ?", (b["account_id"],)).fetchall(),
                conn.execute("SELECT single_limit_fen, daily_limit_fen, pin_hash FROM accounts WHERE id = ?",
                             (b["account_id"],)).fetchone(),
                conn.execute("SELECT count(*) FROM recharge_orders WHERE account_id = ?", (b["account_id"],)).fetchone())
    sign_in_portal(driver, site, a)
    secrets_of_b = [b["name"], b["number"], B_AMOUNT_TEXT, "807.77", "123.45", b["order_id"]]
    ids = {"account_id": b["account_id"], "account": b["account_id"], "person_id": b["person_id"],
           "card_number": b["card_number"], "card": b["card_number"], "staff_number": b["number"],
           "order_id": b["order_id"]}
    query = "&".join("%s=%s" % item for item in ids.items())
    url = site["server"].url

    def assert_nothing_of_b(where):
        shown = text(driver) + driver.page_source
        for secret in secrets_of_b:
            assert secret not in shown, "%s shows %r of another person" % (where, secret)

    pages = ["/portal/", "/portal/transactions", "/portal/loss", "/portal/pin", "/portal/limits", "/portal/recharge",
             "/portal/electricity", "/portal/phones"]
    for page in pages:
        for address in (page, page + "?" + query, page + "/%d" % b["account_id"], page + "/%d" % b["person_id"]):
            driver.get(url + address)
            assert_nothing_of_b(address)
        driver.get(url + page + "?" + query)
        assert a["name"] in text(driver) or "/sign-in" in driver.current_url or "404" in driver.title + driver.page_source
    for address in ("/portal/recharge/%s" % b["order_id"], "/hall/person/%d" % b["person_id"],
                    "/hall/?q=%s" % b["number"], "/hall/receipt/1",
                    "/portal/transactions?start=2000-01-01&end=2100-01-01&type=all&account_id=%d" % b["account_id"]):
        driver.get(url + address)
        assert_nothing_of_b(address)
    # every form, with B's ids added as extra fields and put in place of the visible ones
    forms = (("/portal/loss", "report-loss", {"loss-pin": a["pin"]}),
             ("/portal/limits", "set-limits", {"single-yuan": "40", "daily-yuan": "200", "limits-pin": a["pin"]}),
             ("/portal/recharge", "create-order", {"amount-yuan": "1"}),
             ("/portal/electricity", "pay-electricity", {"building": "B1", "floor": "3", "room": "301",
                                                          "amount-yuan": "0.5", "electricity-pin": a["pin"]}),
             ("/portal/pin", "change-pin", {"old-pin": "000000", "new-pin": "111111", "new-pin-again": "111111"}),
             ("/portal/loss", "unfreeze", {"unfreeze-pin": a["pin"]}))
    for page, button, values in forms:
        driver.get(url + page + "?" + query)
        if not driver.find_elements("id", button):
            continue
        fill(driver, values)
        driver.execute_script("""
            const form = document.getElementById(arguments[0]).form;
            for (const [name, value] of Object.entries(arguments[1])) {
                const input = document.createElement('input');
                input.type = 'hidden'; input.name = name; input.value = value; form.appendChild(input);
            }""", button, {key: str(value) for key, value in ids.items()})
        click(driver, button)
        assert_nothing_of_b(page + " after " + button)
    after = (registry.balances_of(conn, b["account_id"]),
             conn.execute("SELECT status FROM cards WHERE account_id = ?", (b["account_id"],)).fetchall(),
             conn.execute("SELECT single_limit_fen, daily_limit_fen, pin_hash FROM accounts WHERE id = ?",
                          (b["account_id"],)).fetchone(),
             conn.execute("SELECT count(*) FROM recharge_orders WHERE account_id = ?", (b["account_id"],)).fetchone())
    conn.close()
    assert after == b_before


def test_the_holder_sees_bound_phones_and_removes_one(fresh, site):
    driver, a, b = fresh, site["a"], site["b"]
    url = site["server"].url

    def bind(who, app_user_id):
        answer = httpx.post(url + "/api/v1/bind", json={"app_user_id": app_user_id, "name": who["name"],
                                                        "staff_number": who["number"], "pin": who["pin"]}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()
    phone, tablet, bs_phone = bind(a, "wechat-a-phone"), bind(a, "alipay-a-tablet"), bind(b, "wechat-b-phone")
    sign_in_portal(driver, site, a)
    click(driver, "nav-phones")
    shown = [row.get_attribute("data-phone-id") for row in driver.find_elements("css selector", "#phones tr.phone")]
    assert sorted(shown) == sorted([phone["phone_id"], tablet["phone_id"]])
    assert bs_phone["phone_id"] not in driver.page_source
    click(driver, "remove-phone-" + tablet["phone_id"])
    assert "已解除绑定" in text(driver)
    shown = [row.get_attribute("data-phone-id") for row in driver.find_elements("css selector", "#phones tr.phone")]
    assert shown == [phone["phone_id"]]
    headers = {"Authorization": "Bearer " + tablet["token"]}
    assert httpx.get(url + "/api/v1/me", headers=headers, timeout=60).status_code == 401
    headers = {"Authorization": "Bearer " + bs_phone["token"]}
    assert httpx.get(url + "/api/v1/me", headers=headers, timeout=60).status_code == 200
