"""Every page of the phone app (/app/..., sync_server/web/phone_app.py) in headless Chromium at phone
size (CDP device metrics, 390 x 844 at 2x) against the real server, one server and one browser for
the module, the tests in order as one cardholder's day.

Bind on the home page (every field refused next to it first), the three balances; the bills of the
last month paged by scrolling to the end and by 加载更多, by type and by date range, a reversed range
refused next to the field; 挂失, 解挂 refused with the initial PIN (the server's reason next to the
field), 修改密码 with its refusals (mismatch, weak, not six digits, a wrong old PIN from the server),
then 解挂 works; the limits; the bound phones, another one removed (its token stops); 圈存 with its
refusals, a double click and two submits in one tick booking one move each, the receipt; the water
page listing a dispenser's session; 充值 through Alipay's and WeChat Pay's sandboxes following the page's own 去支付 link,
充值成功 with the new balance; the electricity lists, the room's payments and a payment; the face photo
refused (a coffee cup) and accepted (scikit-image's astronaut), the server's reason next to the field;
another holder's account id put into the phone's IndexedDB shows and changes nothing of theirs; every
page in English at 360 px wide, its tap targets and labels checked; and with the server stopped the
pages from the service worker, the offline page for one it never kept, the pay code still there.
Screenshots of every page stay in the run's directory (`screens`); no page breaks its
Content-Security-Policy or throws.
"""
import datetime

import httpx
import pytest

from browser import PAGE_DEADLINE_S, by_id, chromium, fill, set_date, text
from firmware.core import card_layout, protocol, wallets as wallet_rules
from server_process import running_server
from simulators import pay_gateways
from simulators.phone import PhoneApp
from sync_server import db as dbmod, ledger, pin_rules, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import electricity, recharge as recharge_service

pytestmark = pytest.mark.stores("sqlite")

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
NARROW_PHONE = dict(PHONE, width=360, height=740)
DAY_MS = 86400 * 1000
BEIJING = datetime.timezone(datetime.timedelta(hours=8))
MEALS, MEAL_FEN = 34, 350
NEW_PIN = "258147"
A = {"name": "页面甲", "number": "S2026101", "id_number": "51340119980101123X"}
B = {"name": "另一位乙", "number": "S2026999", "id_number": "513401199702024567"}
B_SECRETS = ("另一位乙", "S2026999", "777.77", "757.77")
PAGES = ("", "paycode", "bills", "loss", "pin", "limits", "phones", "wallet-move", "water", "recharge",
         "electricity", "photo?kind=face", "photo?kind=id_photo", "offline")
WATCH = """
self.__pageProblems = [];
document.addEventListener("securitypolicyviolation", (event) => self.__pageProblems.push("CSP " + event.violatedDirective));
addEventListener("error", (event) => self.__pageProblems.push("error " + event.message));
addEventListener("unhandledrejection", (event) => self.__pageProblems.push("rejection " + event.reason));
"""


def day(now_ms, days_ago):
    return datetime.datetime.fromtimestamp(now_ms / 1000 - days_ago * 86400, BEIJING).date().isoformat()


def seed_holder(conn, who):
    _person, account_id = registry.add_person(conn, who["name"], card_layout.HOLDER_STUDENT,
                                              id_number=who["id_number"], staff_number=who["number"])
    card = registry.issue_card_record(conn, account_id, who["uid"])[0]
    return dict(who, account_id=account_id, card_number=card.card_number,
                pin=pin_rules.initial_pin(who["id_number"], who["number"]))


@pytest.fixture(scope="module")
def site(tmp_path_factory, module_database):
    """The server (Alipay, WeChat Pay and CCB as their sandboxes), holder A with a month of meals, an
    older top-up, the old card's balance; holder B with money and a pending order; a dorm's rooms."""
    gateways = pay_gateways.PayGateways()
    data_dir = tmp_path_factory.mktemp("pages-server")
    gateways.install(data_dir)
    with running_server(data_dir, database=module_database) as server:
        conn = server.connect()
        now_ms = dbmod.now_ms()
        try:
            a = seed_holder(conn, dict(A, uid=b"\x04\x70\x61\x01"))
            b = seed_holder(conn, dict(B, uid=b"\x04\x70\x62\x02"))
            registry.recharge(conn, a["account_id"], 5000, now_ms=now_ms - 50 * DAY_MS)        # outside the month
            registry.recharge(conn, a["account_id"], 1500, wallet=protocol.WALLET_LEGACY,
                              channel=dbmod.LEDGER_LEGACY_SOURCE, now_ms=now_ms - 45 * DAY_MS)
            registry.recharge(conn, a["account_id"], 20000, now_ms=now_ms - 10 * DAY_MS)
            registry.recharge(conn, b["account_id"], 77777, now_ms=now_ms - 5 * DAY_MS)
            b["order_id"] = recharge_service.create_order(conn, b["account_id"], 2000, "ccb")["order_id"]
            electricity.import_rooms(conn, "楼栋,楼层,房间,电表号\n南2,3,301,\n南2,3,302,\n南2,4,401,\n北1,1,101,\n")
            electricity.set_building(conn, "南2", name_zh="南区2号楼", name_en="South 2", kinds=["lighting", "aircon"])
        finally:
            conn.close()
        canteen = server.add_terminal()
        canteen.sync([canteen.record(a["account_id"], a["card_number"], MEAL_FEN, tap_counter=n + 1,
                                     time_ms=now_ms - (MEALS - n) * 3600 * 1000) for n in range(MEALS)])
        canteen.close()
        yield {"server": server, "gateways": gateways, "now_ms": now_ms, "a": a, "b": b}
        gateways.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("pages-chromium")) as driver:
        phone_size(driver, PHONE)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
        yield driver


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    """Where the screenshots of this run stay: <basetemp>/screens<N>/<page>.png."""
    return tmp_path_factory.mktemp("screens")


def phone_size(driver, metrics):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})


def wait(driver, condition, what):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def check(_):
        try:
            return condition()
        except StaleElementReferenceException:
            return False
    return WebDriverWait(driver, PAGE_DEADLINE_S, poll_frequency=0.1).until(check, message="page did not show %s" % what)


def shown(driver, element_id):
    return by_id(driver, element_id).is_displayed()


def says(driver, element_id, words):
    return words in by_id(driver, element_id).text


def open_page(driver, site, path, ready="view-page"):
    driver.get(site["server"].url + "/app/" + path)
    wait(driver, lambda: shown(driver, ready), "%s on /app/%s" % (ready, path))


def no_problems(driver):
    """No Content-Security-Policy violation, no uncaught error on the page."""
    assert driver.execute_script("return self.__pageProblems") == []


def submit(driver, button_id):
    by_id(driver, button_id).click()


def error_of(driver, field_id):
    return by_id(driver, field_id + "-error").text


def choose(driver, select_id, value):
    from selenium.webdriver.support.ui import Select
    wait(driver, lambda: any(option.get_attribute("value") == value for option in
                             by_id(driver, select_id).find_elements("tag name", "option")),
         "%s offering %s" % (select_id, value))
    Select(by_id(driver, select_id)).select_by_value(value)


def rows(driver, list_id):
    return driver.find_elements("css selector", "#%s > li" % list_id)


def query(site, sql, parameters=()):
    conn = site["server"].connect()
    try:
        return conn.execute(sql, parameters).fetchall()
    finally:
        conn.close()


# --- bind and home ----------------------------------------------------------------------------------------

def test_bind_on_the_home_page_then_the_three_balances(browser, site, screens):
    driver, a = browser, site["a"]
    open_page(driver, site, "", ready="view-bind")
    submit(driver, "bind-submit")
    assert error_of(driver, "bind-name") == "请输入姓名" and error_of(driver, "bind-number") == "请输入学工号"
    assert error_of(driver, "bind-pin") == "请输入交易密码"
    assert by_id(driver, "bind-name").get_attribute("aria-invalid") == "true"
    fill(driver, {"bind-name": a["name"], "bind-number": a["number"], "bind-pin": "12a"})
    submit(driver, "bind-submit")
    assert error_of(driver, "bind-pin") == "交易密码应为6位数字" and error_of(driver, "bind-name") == ""
    fill(driver, {"bind-pin": "000000"})
    submit(driver, "bind-submit")
    wait(driver, lambda: error_of(driver, "bind-pin") == "密码错误，还可尝试 4 次",
         "the server's wrong-PIN refusal next to the PIN")
    driver.save_screenshot(str(screens / "bind_refused.png"))
    fill(driver, {"bind-pin": a["pin"]})
    submit(driver, "bind-submit")
    wait(driver, lambda: shown(driver, "view-page") and by_id(driver, "balance-main").text != "--", "the balances")
    main_fen = 5000 + 20000 - MEALS * MEAL_FEN
    assert [by_id(driver, "balance-" + wallet).text for wallet in ("main", "water", "legacy")] == \
        ["%.2f" % (main_fen / 100), "0.00", "15.00"]
    assert by_id(driver, "holder-name").text == a["name"] and by_id(driver, "holder-number").text == a["number"]
    services = {link.get_attribute("id"): link.get_attribute("href").split("/app/")[1]
                for link in driver.find_elements("css selector", "nav.services a.service")}
    assert services == {"go-paycode": "paycode", "go-recharge": "recharge", "go-bills": "bills", "go-loss": "loss",
                        "go-electricity": "electricity", "go-water": "water", "go-wallet-move": "wallet-move",
                        "go-pin": "pin", "go-limits": "limits", "go-phones": "phones", "go-face": "photo?kind=face",
                        "go-id-photo": "photo?kind=id_photo"}
    driver.save_screenshot(str(screens / "home.png"))
    no_problems(driver)
    # the manifest makes it an app: the home page, phone-sized icons
    manifest = httpx.get(site["server"].url + "/app/manifest.webmanifest", timeout=30).json()
    assert (manifest["name"], manifest["start_url"], manifest["scope"]) == ("校园一卡通", "/app/", "/app/")
    assert {icon["sizes"] for icon in manifest["icons"]} == {"any", "192x192", "512x512"}
    for icon in manifest["icons"]:
        assert httpx.get(site["server"].url + icon["src"], timeout=30).headers["Content-Type"].startswith(icon["type"])


# --- bills ----------------------------------------------------------------------------------------------

def test_bills_by_scrolling_by_type_and_by_dates(browser, site, screens):
    driver, now_ms = browser, site["now_ms"]
    open_page(driver, site, "bills")
    wait(driver, lambda: len(rows(driver, "bills")) == 15, "the first page")
    assert by_id(driver, "bills-status").text == "共 35 条，已显示 15 条"
    newest = rows(driver, "bills")[0]
    assert newest.find_element("css selector", ".bill-place").text == "测试窗口"
    assert newest.find_element("css selector", ".bill-amount").text == "-3.50"
    assert newest.find_element("css selector", ".bill-wallet").text == "主钱包"
    assert newest.find_element("css selector", ".bill-after").text == "余额 131.00"
    assert newest.find_element("css selector", ".bill-time").text.startswith(day(now_ms, 0)[:4])
    driver.save_screenshot(str(screens / "bills.png"))
    # the end of the list in view loads the next page; 加载更多 the one after
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    wait(driver, lambda: by_id(driver, "bills-status").text == "共 35 条，已显示 30 条", "the second page, by scrolling")
    driver.execute_script("window.scrollTo(0, 0)")                # the list's end out of view: no more by itself
    assert len(rows(driver, "bills")) == 30 and not shown(driver, "bills-end")
    driver.execute_script("document.getElementById('bills-more').click()")       # a tap, without scrolling to it
    wait(driver, lambda: len(rows(driver, "bills")) == 35 and shown(driver, "bills-end"), "every line")
    assert not shown(driver, "bills-more")
    oldest = rows(driver, "bills")[-1]
    assert oldest.find_element("css selector", ".bill-amount").text == "+200.00"
    assert oldest.find_element("css selector", ".bill-after").text == "余额 250.00"
    assert len({row.get_attribute("data-transfer-id") for row in rows(driver, "bills")}) == 35
    # by type: top-ups of the month
    driver.execute_script("window.scrollTo(0, 0)")
    by_id(driver, "bills-type").find_element("css selector", "option[value=recharge]").click()
    submit(driver, "bills-query")
    wait(driver, lambda: [row.find_element("css selector", ".bill-amount").text for row in rows(driver, "bills")]
         == ["+200.00"], "the month's one top-up")
    # by dates: the older top-up and the old card's balance, both wallets named
    set_date(driver, "bills-from", day(now_ms, 51))
    set_date(driver, "bills-to", day(now_ms, 44))
    by_id(driver, "bills-type").find_element("css selector", "option[value=all]").click()
    submit(driver, "bills-query")
    wait(driver, lambda: len(rows(driver, "bills")) == 2, "the two older top-ups")
    assert [row.find_element("css selector", ".bill-wallet").text for row in rows(driver, "bills")] == \
        ["原卡余额", "主钱包"]
    assert shown(driver, "bills-end") and not shown(driver, "bills-more")
    # nothing in the range: the empty state; a reversed range: refused next to the date
    set_date(driver, "bills-from", day(now_ms, 200))
    set_date(driver, "bills-to", day(now_ms, 190))
    submit(driver, "bills-query")
    wait(driver, lambda: shown(driver, "bills-empty"), "the empty state")
    set_date(driver, "bills-from", day(now_ms, 1))
    set_date(driver, "bills-to", day(now_ms, 3))
    submit(driver, "bills-query")
    assert error_of(driver, "bills-from") == "起始日期不能晚于截止日期"
    driver.save_screenshot(str(screens / "bills_refused.png"))
    submit(driver, "bills-reset")
    wait(driver, lambda: len(rows(driver, "bills")) == 15 and error_of(driver, "bills-from") == "", "reset")
    no_problems(driver)


# --- loss, PIN, unfreeze -----------------------------------------------------------------------------------

def test_loss_then_unfreeze_refused_with_the_initial_pin_until_it_is_changed(browser, site, screens):
    driver, a = browser, site["a"]
    open_page(driver, site, "loss")
    wait(driver, lambda: by_id(driver, "card-status").text == "正常" and shown(driver, "loss-form"), "the card in use")
    submit(driver, "loss-submit")
    assert error_of(driver, "loss-pin") == "请输入交易密码"
    fill(driver, {"loss-pin": a["pin"]})
    submit(driver, "loss-submit")
    wait(driver, lambda: by_id(driver, "card-status").text == "已挂失" and shown(driver, "unfreeze-form"), "lost")
    assert "挂失成功" in by_id(driver, "loss-result").text and not shown(driver, "loss-form")
    assert query(site, "SELECT status FROM cards WHERE account_id = ?", (a["account_id"],)) == [("lost",)]
    fill(driver, {"unfreeze-pin": a["pin"]})
    submit(driver, "unfreeze-submit")
    wait(driver, lambda: "初始密码" in error_of(driver, "unfreeze-pin"), "the initial-PIN rule next to the PIN")
    assert "服务大厅" in error_of(driver, "unfreeze-pin") and by_id(driver, "card-status").text == "已挂失"
    driver.save_screenshot(str(screens / "loss_unfreeze_refused.png"))
    no_problems(driver)

    open_page(driver, site, "pin")
    for values, field, message in (
            ({"pin-old": a["pin"], "pin-new": "2581", "pin-confirm": "2581"}, "pin-new", "交易密码应为6位数字"),
            ({"pin-new": "123456", "pin-confirm": "123456"}, "pin-new", "过于简单"),
            ({"pin-new": "888888", "pin-confirm": "888888"}, "pin-new", "过于简单"),
            ({"pin-new": NEW_PIN, "pin-confirm": "258148"}, "pin-confirm", "两次输入的新密码不一致"),
            ({"pin-new": a["pin"], "pin-confirm": a["pin"]}, "pin-new", "新密码不能与原密码相同")):
        fill(driver, values)
        submit(driver, "pin-change-submit")
        assert message in error_of(driver, field), (values, error_of(driver, field))
        assert driver.switch_to.active_element.get_attribute("id") == field
    fill(driver, {"pin-new": "980101", "pin-confirm": "980101"})        # A's birth date: only the server knows it
    submit(driver, "pin-change-submit")
    wait(driver, lambda: "出生日期" in error_of(driver, "pin-new"), "the server's birth-date refusal next to the new PIN")
    fill(driver, {"pin-old": "000000", "pin-new": NEW_PIN, "pin-confirm": NEW_PIN})
    submit(driver, "pin-change-submit")
    wait(driver, lambda: error_of(driver, "pin-old") == "密码错误，还可尝试 4 次", "the server's refusal next to the old PIN")
    driver.save_screenshot(str(screens / "pin_refused.png"))
    fill(driver, {"pin-old": a["pin"]})
    submit(driver, "pin-change-submit")
    wait(driver, lambda: by_id(driver, "pin-result").text == "交易密码已修改", "the PIN changed")
    assert all(by_id(driver, field).get_attribute("value") == "" for field in ("pin-old", "pin-new", "pin-confirm"))
    a["pin"] = NEW_PIN
    no_problems(driver)

    open_page(driver, site, "loss")
    wait(driver, lambda: shown(driver, "unfreeze-form"), "the unfreeze form")
    fill(driver, {"unfreeze-pin": NEW_PIN})
    submit(driver, "unfreeze-submit")
    wait(driver, lambda: by_id(driver, "card-status").text == "正常" and "解挂成功" in by_id(driver, "loss-result").text,
         "unfrozen")
    assert query(site, "SELECT status FROM cards WHERE account_id = ?", (a["account_id"],)) == [("active",)]
    driver.save_screenshot(str(screens / "loss.png"))
    no_problems(driver)


def test_limits_refused_next_to_their_fields_then_saved(browser, site, screens):
    driver, a = browser, site["a"]
    open_page(driver, site, "limits")
    wait(driver, lambda: by_id(driver, "limits-single-now").text != "--", "the current limits")
    for values, field, message in (
            ({"limits-single": "", "limits-daily": "200", "limits-pin": NEW_PIN}, "limits-single", "请输入金额"),
            ({"limits-single": "4o", "limits-daily": "200"}, "limits-single", "最多两位小数"),
            ({"limits-single": "40.125", "limits-daily": "200"}, "limits-single", "最多两位小数"),
            ({"limits-single": "40", "limits-daily": "9000"}, "limits-daily", "单次最多 5000.00 元"),
            ({"limits-single": "300", "limits-daily": "200"}, "limits-single", "不能超过每日限额"),
            ({"limits-single": "40", "limits-daily": "200", "limits-pin": "25814"}, "limits-pin", "6位数字")):
        fill(driver, values)
        submit(driver, "limits-submit")
        assert message in error_of(driver, field), (values, error_of(driver, field))
    fill(driver, {"limits-single": "４０", "limits-daily": "200.5", "limits-pin": "000000"})    # full-width digits
    submit(driver, "limits-submit")
    wait(driver, lambda: error_of(driver, "limits-pin") == "密码错误，还可尝试 4 次", "the wrong PIN next to the PIN")
    fill(driver, {"limits-pin": NEW_PIN})
    submit(driver, "limits-submit")
    wait(driver, lambda: by_id(driver, "limits-result").text == "限额已保存", "the limits saved")
    assert by_id(driver, "limits-single-now").text == "40.00 元" and by_id(driver, "limits-daily-now").text == "200.50 元"
    assert query(site, "SELECT single_limit_fen, daily_limit_fen FROM accounts WHERE id = ?",
                 (a["account_id"],)) == [(4000, 20050)]
    driver.save_screenshot(str(screens / "limits.png"))
    no_problems(driver)


def test_bound_phones_listed_this_one_marked_another_removed(browser, site, screens):
    driver, a, url = browser, site["a"], site["server"].url
    tablet = PhoneApp(url, "alipay-a-tablet")
    try:
        tablet_phone = tablet.bind(a["name"], a["number"], NEW_PIN)["phone_id"]
        open_page(driver, site, "phones")
        wait(driver, lambda: len(rows(driver, "phones")) == 2, "both phones")
        mine = [row for row in rows(driver, "phones") if "本机" in row.text]
        assert len(mine) == 1 and mine[0].get_attribute("data-phone-id") != tablet_phone
        driver.save_screenshot(str(screens / "phones.png"))
        button = "remove-phone-" + tablet_phone
        submit(driver, button)
        assert by_id(driver, button).text == "再点一次确认解除" and len(rows(driver, "phones")) == 2
        submit(driver, button)
        wait(driver, lambda: by_id(driver, "phones-result").text == "已解除绑定" and len(rows(driver, "phones")) == 1,
             "the tablet removed")
        assert httpx.get(url + "/api/v1/me", headers={"Authorization": "Bearer " + tablet.token},
                         timeout=30).status_code == 401
        # this phone itself: signed out at once, the bind form again, then the same page once bound
        this_phone = rows(driver, "phones")[0].get_attribute("data-phone-id")
        submit(driver, "remove-phone-" + this_phone)
        submit(driver, "remove-phone-" + this_phone)
        wait(driver, lambda: shown(driver, "view-bind") and by_id(driver, "bind-note").text == "本机已解除绑定",
             "the bind form after removing this phone")
        assert query(site, "SELECT count(*) FROM app_users WHERE person_id = (SELECT person_id FROM accounts "
                     "WHERE id = ?)", (a["account_id"],)) == [(0,)]
        fill(driver, {"bind-name": a["name"], "bind-number": a["number"], "bind-pin": NEW_PIN})
        submit(driver, "bind-submit")
        wait(driver, lambda: shown(driver, "view-page") and len(rows(driver, "phones")) == 1
             and "本机" in rows(driver, "phones")[0].text, "this phone bound again")
        no_problems(driver)
    finally:
        tablet.close()


# --- 圈存, water ------------------------------------------------------------------------------------------

COUNT_MOVES = """
self.__moveRequests = 0;
const sent = self.fetch.bind(self);
self.fetch = (...request) => { if (String(request[0]).endsWith("/wallet-move")) self.__moveRequests += 1; return sent(...request); };
"""


def moves(site):
    return query(site, "SELECT receipt_no, amount_fen FROM wallet_moves WHERE account_id = ? ORDER BY time_ms",
                 (site["a"]["account_id"],))


def test_wallet_move_with_its_receipt_each_form_booked_once(browser, site, screens):
    from selenium.webdriver import ActionChains
    driver = browser
    open_page(driver, site, "wallet-move")
    wait(driver, lambda: by_id(driver, "move-main").text == "131.00", "the balances")
    for amount, message in (("", "请输入金额"), ("abc", "最多两位小数"), ("1.234", "最多两位小数"), ("0", "金额应大于 0"),
                            ("600", "单次最多 500.00 元"), ("200", "余额不足：最多 131.00 元")):
        fill(driver, {"move-amount": amount, "move-pin": NEW_PIN})
        submit(driver, "move-submit")
        assert message in error_of(driver, "move-amount"), (amount, error_of(driver, "move-amount"))
    fill(driver, {"move-amount": "20.5", "move-pin": "000000"})
    submit(driver, "move-submit")
    wait(driver, lambda: error_of(driver, "move-pin") == "密码错误，还可尝试 4 次", "the wrong PIN next to the PIN")
    assert moves(site) == []
    # a double click on 确认圈存: one move, one receipt
    driver.execute_script(COUNT_MOVES)
    first_form = by_id(driver, "move-form").get_attribute("data-request-id")
    fill(driver, {"move-pin": NEW_PIN})
    ActionChains(driver).double_click(by_id(driver, "move-submit")).perform()
    wait(driver, lambda: shown(driver, "move-receipt"), "the receipt")
    assert [by_id(driver, "receipt-" + name).text for name in ("amount", "from-after", "to-after")] == \
        ["20.50", "110.50", "20.50"]
    booked = moves(site)
    assert [amount for _, amount in booked] == [2050] and by_id(driver, "receipt-no").text == booked[0][0]
    wait(driver, lambda: len(rows(driver, "moves")) == 1 and by_id(driver, "move-water").text == "20.50",
         "the balances and the list after the move")
    driver.save_screenshot(str(screens / "wallet_move_receipt.png"))
    # the next form has a new request id; two submits in one tick send twice and book once
    submit(driver, "move-again")
    assert by_id(driver, "move-form").get_attribute("data-request-id") != first_form
    fill(driver, {"move-amount": "1", "move-pin": NEW_PIN})
    driver.execute_script("self.__moveRequests = 0; const form = document.getElementById('move-form');"
                          "form.requestSubmit(); form.requestSubmit();")
    wait(driver, lambda: shown(driver, "move-receipt") and by_id(driver, "receipt-amount").text == "1.00",
         "the second receipt")
    wait(driver, lambda: driver.execute_script("return self.__moveRequests") == 2, "both copies sent")
    assert [amount for _, amount in moves(site)] == [2050, 100]
    conn = site["server"].connect()
    try:
        assert conn.execute("SELECT count(*) FROM transfers WHERE kind = ?", (ledger.KIND_WALLET_MOVE,)).fetchone()[0] == 2
        assert registry.balances_of(conn, site["a"]["account_id"])["water"] == 2150
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()
    no_problems(driver)


def test_water_page_lists_a_dispenser_session_and_says_how_to_start(browser, site, screens):
    driver, a, server = browser, site["a"], site["server"]
    dispenser = server.add_terminal(category=wallet_rules.CATEGORY_WATER)
    try:
        dispenser.sync([dispenser.water_record(a["account_id"], 150, 3000, card_number=a["card_number"],
                                               tap_counter=MEALS + 1)])
    finally:
        dispenser.close()
    open_page(driver, site, "water")
    wait(driver, lambda: len(rows(driver, "water-sessions")) == 1, "the water session")
    session = rows(driver, "water-sessions")[0]
    assert session.find_element("css selector", ".bill-amount").text == "-1.50"
    assert session.find_element("css selector", ".bill-wallet").text == "小钱包"
    assert by_id(driver, "water-balance").text == "20.00"
    assert by_id(driver, "water-open-app").get_attribute("href") == "ykt://water"
    assert "扫码用水" in by_id(driver, "view-page").text and "蓝牙" in by_id(driver, "view-page").text
    driver.save_screenshot(str(screens / "water.png"))
    no_problems(driver)


# --- 充值, 电费, photos -----------------------------------------------------------------------------------

def test_recharge_hands_the_phone_to_the_channel_then_shows_the_money(browser, site, screens):
    driver, a = browser, site["a"]
    open_page(driver, site, "recharge")
    wait(driver, lambda: by_id(driver, "recharge-balance").text == "109.50", "the main balance")
    for amount, message in (("", "请输入金额"), ("0.001", "最多两位小数"), ("1000.01", "单次最多 1000.00 元")):
        fill(driver, {"recharge-amount": amount})
        submit(driver, "recharge-submit")
        assert message in error_of(driver, "recharge-amount"), amount
    submit(driver, "recharge-pick-50")
    assert by_id(driver, "recharge-amount").get_attribute("value") == "50"
    fill(driver, {"recharge-amount": "37.70"})              # and 12.30 through WeChat Pay below: 50 in all
    by_id(driver, "channel-alipay").click()
    submit(driver, "recharge-submit")
    wait(driver, lambda: shown(driver, "order-view") and by_id(driver, "order-status").text == "待支付", "the order")
    order_id = by_id(driver, "order-id").text
    assert query(site, "SELECT amount_fen, channel, status FROM recharge_orders WHERE order_id = ? AND account_id = ?",
                 (order_id, a["account_id"])) == [(3770, "alipay", "pending")]
    link = by_id(driver, "order-pay-link")
    assert link.is_displayed() and link.text == "去支付"
    pay_url = link.get_attribute("href")
    assert pay_url.startswith("https://openapi.alipay.com/gateway.do?")
    driver.save_screenshot(str(screens / "recharge_order.png"))
    # the holder pays in Alipay: the sandbox checks the link the page offered, then notifies us
    answers = site["gateways"].pay(site["server"].url, {"order_id": order_id, "amount_fen": 3770, "channel": "alipay",
                                                        "pay": {"url": pay_url}})
    assert [answer.outcome for answer in answers] == ["credited"]
    wait(driver, lambda: shown(driver, "order-result"), "充值成功")
    assert by_id(driver, "order-result").text == "充值成功，余额 147.20 元"
    assert by_id(driver, "order-status").text == "已到账" and not link.is_displayed()
    assert by_id(driver, "recharge-balance").text == "147.20"
    driver.save_screenshot(str(screens / "recharge_paid.png"))
    # WeChat Pay refusing the server's prepay request: the order waits, the page says so, nothing to open
    submit(driver, "order-new")
    fill(driver, {"recharge-amount": "8.80"})
    by_id(driver, "channel-wechat").click()
    with site["gateways"].wechat.api_fault("refuse"):
        submit(driver, "recharge-submit")
        wait(driver, lambda: by_id(driver, "order-error").text == "暂时无法发起微信支付，请稍后重试", "no WeChat Pay")
        assert by_id(driver, "order-amount").text == "8.80" and not by_id(driver, "order-pay-link").is_displayed()
    # WeChat Pay: the page offers the h5_url the server got from WeChat Pay's API (the sandbox); the
    # holder pays in WeChat, which notifies us and sends the phone back here (redirect_url)
    submit(driver, "order-new")
    fill(driver, {"recharge-amount": "12.30"})
    by_id(driver, "channel-wechat").click()
    submit(driver, "recharge-submit")
    wait(driver, lambda: shown(driver, "order-view") and by_id(driver, "order-amount").text == "12.30", "the order")
    link, order_id = by_id(driver, "order-pay-link"), by_id(driver, "order-id").text
    assert link.is_displayed() and link.text == "去支付" and "微信支付" in by_id(driver, "order-handoff").text
    pay_url = link.get_attribute("href")
    assert pay_url.startswith(pay_gateways.H5_PAGE + "?prepay_id=")
    driver.get("about:blank")                                       # the phone is in WeChat now
    answers = site["gateways"].pay(site["server"].url, {"order_id": order_id, "amount_fen": 1230, "channel": "wechat",
                                                        "pay": {"url": pay_url}})
    assert [answer.outcome for answer in answers] == ["credited"]
    driver.get(site["gateways"].wechat.open(pay_url)[1])            # back to /app/recharge: the order picked up
    wait(driver, lambda: shown(driver, "order-result"), "充值成功 after WeChat Pay")
    assert by_id(driver, "order-result").text == "充值成功，余额 159.50 元" and driver.current_url.endswith("/app/recharge")
    no_problems(driver)


def test_electricity_lists_room_payments_and_a_payment(browser, site, screens):
    driver, a, b = browser, site["a"], site["b"]
    conn = site["server"].connect()
    try:
        electricity.pay(conn, b["account_id"], "南2", 3, "301", 2000, operator="hall-desk")      # a roommate's
    finally:
        conn.close()
    open_page(driver, site, "electricity")
    choose(driver, "elec-building", "南2")
    assert [option.text for option in by_id(driver, "elec-building").find_elements("tag name", "option")][1:] == \
        ["北1", "南区2号楼"]
    assert [label.text for label in driver.find_elements("css selector", "#elec-kinds label")] == ["照明用电", "空调用电"]
    submit(driver, "elec-submit")
    assert error_of(driver, "elec-floor") == "请选择楼层" and error_of(driver, "elec-room") == "请选择房间"
    assert error_of(driver, "elec-amount") == "请输入金额" and error_of(driver, "elec-pin") == "请输入交易密码"
    choose(driver, "elec-floor", "3")
    choose(driver, "elec-room", "301")
    assert [option.text for option in by_id(driver, "elec-room").find_elements("tag name", "option")][1:] == \
        ["301", "302"]
    wait(driver, lambda: len(rows(driver, "elec-payments")) == 1, "the roommate's payment")
    assert "另**乙" in rows(driver, "elec-payments")[0].text and "20.00" in rows(driver, "elec-payments")[0].text
    by_id(driver, "elec-kind-aircon").click()
    fill(driver, {"elec-amount": "600", "elec-pin": NEW_PIN})
    submit(driver, "elec-submit")
    assert error_of(driver, "elec-amount") == "单次最多 500.00 元"
    fill(driver, {"elec-amount": "18"})
    submit(driver, "elec-submit")
    wait(driver, lambda: shown(driver, "elec-receipt"), "the receipt")
    assert by_id(driver, "elec-receipt-parts").text == "原卡余额 15.00，主钱包 3.00"
    assert by_id(driver, "elec-receipt-room").text == "南区2号楼 3 层 301"
    assert query(site, "SELECT building, floor, room, amount_fen, kind FROM electricity_payments WHERE account_id = ?",
                 (a["account_id"],)) == [("南2", 3, "301", 1800, "aircon")]
    driver.save_screenshot(str(screens / "electricity_receipt.png"))
    submit(driver, "elec-again")                                   # the form again, the room still chosen
    wait(driver, lambda: len(rows(driver, "elec-payments")) == 2, "our payment in the room's list")
    assert "(我)" in rows(driver, "elec-payments")[0].text and "空调用电" in rows(driver, "elec-payments")[0].text
    driver.save_screenshot(str(screens / "electricity.png"))
    no_problems(driver)


def test_face_photo_refused_with_the_servers_reason_then_accepted(browser, site, screens, tmp_path):
    import skimage.data
    from PIL import Image
    driver = browser
    astronaut, coffee = tmp_path / "astronaut.jpg", tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.astronaut()).save(astronaut, quality=90)
    Image.fromarray(skimage.data.coffee()).resize((720, 480)).save(coffee, quality=90)
    open_page(driver, site, "photo?kind=face")
    wait(driver, lambda: by_id(driver, "photo-state").text == "尚未采集", "no face photo yet")
    assert by_id(driver, "page-heading").text == "人脸采集" and by_id(driver, "photo-file").get_attribute("capture") == "user"
    submit(driver, "photo-submit")
    assert error_of(driver, "photo-file") == "请拍照或选择一张照片"
    by_id(driver, "photo-file").send_keys(str(coffee))
    wait(driver, lambda: shown(driver, "photo-preview"), "the preview")
    submit(driver, "photo-submit")
    wait(driver, lambda: error_of(driver, "photo-file") not in ("", "请拍照或选择一张照片"), "the server's reason")
    reason = error_of(driver, "photo-file")
    assert "人脸" in reason, reason
    driver.save_screenshot(str(screens / "photo_refused.png"))
    by_id(driver, "photo-file").send_keys(str(astronaut))
    wait(driver, lambda: error_of(driver, "photo-file") == "", "the new photo picked")
    submit(driver, "photo-submit")
    wait(driver, lambda: by_id(driver, "photo-result").text == "上传成功", "uploaded")
    assert by_id(driver, "photo-state").text == "已采集"
    driver.save_screenshot(str(screens / "photo_face.png"))
    assert query(site, "SELECT kind FROM person_photos WHERE person_id = (SELECT person_id FROM accounts WHERE id = ?)",
                 (site["a"]["account_id"],)) == [("face",)]
    open_page(driver, site, "photo?kind=id_photo")
    wait(driver, lambda: by_id(driver, "photo-state").text == "尚未采集", "no ID photo yet")
    assert by_id(driver, "page-heading").text == "证件照采集"
    driver.save_screenshot(str(screens / "photo_id_photo.png"))
    no_problems(driver)


# --- another person's data, English at 360 px, offline --------------------------------------------------

def test_another_holders_account_id_in_the_phones_storage_shows_and_changes_nothing(browser, site):
    """The session in IndexedDB is the phone's: put B's account id there next to A's token; every page
    and every form then asks for B's account with A's token, and the API refuses each time."""
    driver, a, b = browser, site["a"], site["b"]
    conn = site["server"].connect()

    def state_of_b():
        return (registry.balances_of(conn, b["account_id"]),
                conn.execute("SELECT status FROM cards WHERE account_id = ?", (b["account_id"],)).fetchall(),
                conn.execute("SELECT single_limit_fen, daily_limit_fen, pin_hash FROM accounts WHERE id = ?",
                             (b["account_id"],)).fetchone(),
                conn.execute("SELECT count(*), max(status) FROM recharge_orders WHERE account_id = ?",
                             (b["account_id"],)).fetchone())
    before = state_of_b()
    open_page(driver, site, "")
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1], other = arguments[0];
        ykt.store.get("session").then((session) => ykt.store.put("session", Object.assign({}, session, {account_id: other})))
          .then(() => ykt.store.remove("balance")).then(() => done(true));""", b["account_id"])

    def nothing_of_b(where):
        seen = text(driver) + driver.page_source
        for secret in B_SECRETS + (b["order_id"],):
            assert secret not in seen, "%s shows %r of another person" % (where, secret)
    for page, refusal_at in (("", "home-error"), ("bills", "bills-error"), ("loss", "loss-load-error"),
                             ("limits", "limits-load-error"), ("wallet-move", "move-load-error"),
                             ("water", "water-error"), ("recharge", "recharge-form-error")):
        open_page(driver, site, page)
        wait(driver, lambda at=refusal_at: by_id(driver, at).text == "无权访问他人的账户", "the refusal on /app/" + page)
        nothing_of_b("/app/" + page)
    for page, values, button, refusal_at in (
            ("loss", None, None, None),
            ("limits", {"limits-single": "1", "limits-daily": "2", "limits-pin": a["pin"]}, "limits-submit",
             "limits-form-error"),
            ("pin", {"pin-old": a["pin"], "pin-new": "314159", "pin-confirm": "314159"}, "pin-change-submit",
             "pin-change-form-error"),
            ("recharge", {"recharge-amount": "1"}, "recharge-submit", "recharge-form-error"),
            ("electricity", {"elec-amount": "1", "elec-pin": a["pin"]}, "elec-submit", "elec-form-error")):
        open_page(driver, site, page)
        if values is None:                          # no card state for another's account: no form to send
            wait(driver, lambda: by_id(driver, "loss-load-error").text, "the refusal")
            assert not shown(driver, "loss-form") and not shown(driver, "unfreeze-form")
            continue
        if page == "electricity":
            choose(driver, "elec-building", "北1")
            choose(driver, "elec-floor", "1")
            choose(driver, "elec-room", "101")
        fill(driver, values)
        submit(driver, button)
        wait(driver, lambda at=refusal_at: by_id(driver, at).text == "无权访问他人的账户", "the refusal of " + button)
        nothing_of_b("/app/%s after %s" % (page, button))
    assert state_of_b() == before
    conn.close()
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1], own = arguments[0];
        ykt.store.get("session").then((session) => ykt.store.put("session", Object.assign({}, session, {account_id: own})))
          .then(() => done(true));""", a["account_id"])
    no_problems(driver)


TARGETS = r"""
const small = [];
for (const element of document.querySelectorAll("button, input, select, a.button, a.service, .app-bar a, label.choice")) {
  const box = element.getBoundingClientRect();
  if (!box.width || element.type === "radio") continue;
  if (box.height < 44) small.push((element.id || element.textContent.trim()) + " " + Math.round(box.height) + "px");
}
const unlabelled = Array.from(document.querySelectorAll("input, select")).filter((element) =>
  element.getBoundingClientRect().width && !element.labels.length).map((element) => element.id);
const undescribed = Array.from(document.querySelectorAll("main input:not([type=radio]), main select")).filter((element) =>
  element.getBoundingClientRect().width && !(element.getAttribute("aria-describedby") || "").split(" ").some((id) =>
    document.getElementById(id) && document.getElementById(id).classList.contains("field-error"))).map((element) => element.id);
// WCAG 1.4.3: text at 4.5:1 against what is behind it (3:1 when large), backgrounds blended upwards
const rgba = (text) => { const parts = text.match(/[\d.]+/g).map(Number); return parts.length > 3 ? parts : parts.concat(1); };
const over = (top, below) => [0, 1, 2].map((index) => top[index] * top[3] + below[index] * (1 - top[3])).concat(1);
const behind = (element) => element ? over(rgba(getComputedStyle(element).backgroundColor), behind(element.parentElement))
                                    : [255, 255, 255, 1];
const luminance = (colour) => colour.slice(0, 3).map((value) => value / 255)
  .map((value) => value <= 0.03928 ? value / 12.92 : ((value + 0.055) / 1.055) ** 2.4)
  .reduce((sum, value, index) => sum + value * [0.2126, 0.7152, 0.0722][index], 0);
const low_contrast = [];
for (const element of document.querySelectorAll("body *")) {
  if (!Array.from(element.childNodes).some((node) => node.nodeType === 3 && node.textContent.trim())) continue;
  const box = element.getBoundingClientRect(), style = getComputedStyle(element);
  if (!box.width || !box.height || style.visibility === "hidden" || element.closest(":disabled")) continue;
  const back = behind(element), [light, dark] = [luminance(over(rgba(style.color), back)), luminance(back)].sort((x, y) => y - x);
  const ratio = (light + 0.05) / (dark + 0.05), size = parseFloat(style.fontSize);
  if (ratio < (size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700) ? 3 : 4.5)) {
    low_contrast.push(element.textContent.trim().slice(0, 20) + " " + ratio.toFixed(2));
  }
}
return {small, unlabelled, undescribed, low_contrast, overflow: document.documentElement.scrollWidth - innerWidth};
"""
ENGLISH = {"": "Main wallet", "paycode": "Payment code", "bills": "Bills", "loss": "Card status", "pin": "Change PIN",
           "limits": "Current limits", "phones": "Bound phones", "wallet-move": "To the water wallet",
           "water": "Drawing water", "recharge": "Pay with", "electricity": "Dorm electricity",
           "photo?kind=face": "Face photo", "photo?kind=id_photo": "ID photo", "offline": "No network"}


def test_every_page_in_english_at_360_px_thumb_sized_and_labelled(browser, site, screens):
    driver = browser
    phone_size(driver, NARROW_PHONE)
    try:
        for page in PAGES:
            address = page + ("&" if "?" in page else "?") + "lang=en"
            ready = {"paycode": "view-enable", "offline": "view-offline"}.get(page, "view-page")
            open_page(driver, site, address, ready=ready)
            wait(driver, lambda words=ENGLISH[page]: words in driver.find_element("tag name", "body").text,
                 "English on /app/" + address)
            wait(driver, lambda: "Loading" not in by_id(driver, "main").text, "loaded")
            found = driver.execute_script(TARGETS)
            assert found["small"] == [], (page, found["small"])
            assert found["unlabelled"] == [] and found["undescribed"] == [], (page, found)
            assert found["low_contrast"] == [], (page, found["low_contrast"])
            assert found["overflow"] <= 0, (page, "wider than the phone by %d px" % found["overflow"])
            driver.save_screenshot(str(screens / ("en_360_%s.png" % (page.replace("?kind=", "_") or "home"))))
            no_problems(driver)
    finally:
        phone_size(driver, PHONE)
        driver.get(site["server"].url + "/app/?lang=zh")


def test_offline_pages_from_the_service_worker_and_the_pay_code_still_there(browser, site, screens):
    driver, server = browser, site["server"]
    open_page(driver, site, "paycode", ready="view-enable")        # bound on the home page: no second bind
    fill(driver, {"enable-pin": NEW_PIN})
    submit(driver, "enable-submit")
    wait(driver, lambda: shown(driver, "view-code") and by_id(driver, "paycode").get_attribute("data-counter"),
         "the payment code")
    wait(driver, lambda: driver.execute_script("return navigator.serviceWorker.controller !== null"),
         "the pages under their service worker")
    for page in ("bills", "offline"):                 # kept again in Chinese (the last visit was in English)
        open_page(driver, site, page, ready={"offline": "view-offline"}.get(page, "view-page"))
    open_page(driver, site, "")
    wait(driver, lambda: by_id(driver, "balance-main").text == "156.50", "the balance before going offline")
    server.stop()
    open_page(driver, site, "")                                     # kept page, last balance, marked offline
    wait(driver, lambda: "离线" in by_id(driver, "balance-state").text, "the offline mark")
    assert by_id(driver, "balance-main").text == "156.50" and shown(driver, "offline-banner")
    driver.save_screenshot(str(screens / "offline_home.png"))
    open_page(driver, site, "bills")                                # kept page: it says it needs the network
    wait(driver, lambda: by_id(driver, "bills-error").text == "网络不可用，请联网后重试", "the network refusal")
    assert shown(driver, "offline-banner")
    driver.save_screenshot(str(screens / "offline_bills.png"))
    driver.get(server.url + "/app/receipts")                        # a page the worker never kept
    wait(driver, lambda: shown(driver, "view-offline"), "the offline page")
    assert "付款码不需要联网" in by_id(driver, "view-offline").text
    driver.save_screenshot(str(screens / "offline_page.png"))
    submit(driver, "offline-paycode")
    wait(driver, lambda: shown(driver, "view-code") and by_id(driver, "paycode").get_attribute("data-counter"),
         "the payment code with no server")
    driver.save_screenshot(str(screens / "offline_paycode.png"))
    no_problems(driver)
