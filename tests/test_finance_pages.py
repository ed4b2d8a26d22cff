"""The finance pages (sync_server/finance/pages.py) as finance staff meet them, on each store (--store):
their own front door (/finance/sign-in) and landing by role, never a redirect off the site, the 403
page that names the role, sign-out and who is signed in on every staff page, and a day with canteen,
water, cash and Alipay traffic shown in words - no `canteen`, `cash_desk` or `alipay` on the page or in
the CSV and Excel files - with numbers right-aligned (computed style in headless Chromium).
"""
import csv
import html.parser
import io
import re

import httpx
import openpyxl
import pytest

from browser import by_id, chromium, click, fill
from firmware.core import wallets as wallet_rules
from server_process import ServerHandle
import staff_site
from staff_site import PASSWORD, sign_in, token_of
from sync_server import db as dbmod, registry
from sync_server.business_day import day_of_ms, day_text
from sync_server.finance import close as close_module, exports, names
from sync_server.services import recharge
from sync_server.web import auth

USERS = (("caiwu", "财务一", ["finance"]), ("dating", "大厅一", ["hall"]), ("both", "两者", ["hall", "finance"]),
         ("admin", "管理员", ["admin"]))


@pytest.fixture
def site(tmp_path, store_environment):
    app, conn, data_dir = staff_site.new_site(tmp_path, USERS)
    yield {"app": app, "conn": conn, "data_dir": data_dir}
    conn.close()


def signed_in(site, username, door="/finance/sign-in"):
    return staff_site.signed_in(site["app"], username, door)


def closed_day(site):
    """Today closed with nothing in it (enough for the pages' frame)."""
    today = day_of_ms(dbmod.now_ms())
    close_module.close_day(site["conn"], today, before_day_end=True)
    return day_text(today)


# --- the front door ------------------------------------------------------------------------------

def test_an_unsigned_visitor_is_sent_to_the_finance_front_door_and_back(site):
    day = closed_day(site)
    client = site["app"].test_client()
    answer = client.get("/finance/%s?lang=en" % day)
    assert answer.status_code == 302
    assert answer.location == "/finance/sign-in?next=/finance/%s" % day
    page = client.get(answer.location).get_data(as_text=True)
    assert "Finance staff sign-in" in page                                 # ?lang=en was remembered
    assert 'name="next" value="/finance/%s"' % day in page
    assert "q=S2019" not in client.get("/hall/?q=S20190001").location     # a search is not echoed
    landed = sign_in(client, "/finance/sign-in", "caiwu", next_path="/finance/%s" % day)
    assert landed.status_code == 302 and landed.location == "/finance/%s" % day
    assert "Day report" in client.get(landed.location).get_data(as_text=True)
    for path in ("/finance/", "/finance/migration", "/finance/%s.xlsx" % day, "/finance/%s/summary.csv" % day):
        assert site["app"].test_client().get(path).location.startswith("/finance/sign-in?next=/finance/")


def test_sign_in_lands_by_role_at_either_door(site):
    landings = {}
    for door in ("/hall/sign-in", "/finance/sign-in"):
        for username, _name, _roles in USERS:
            client = site["app"].test_client()
            landings[(door, username)] = sign_in(client, door, username).location
    assert landings == {
        ("/hall/sign-in", "caiwu"): "/finance/", ("/finance/sign-in", "caiwu"): "/finance/",
        ("/hall/sign-in", "dating"): "/hall/", ("/finance/sign-in", "dating"): "/hall/",
        ("/hall/sign-in", "both"): "/hall/", ("/finance/sign-in", "both"): "/finance/",
        # the admin role has its own pages now: an admin-only user lands there from any door
        ("/hall/sign-in", "admin"): "/admin/fleet", ("/finance/sign-in", "admin"): "/admin/fleet",
    }


def test_a_wrong_password_stays_at_the_door_with_its_next(site):
    client = site["app"].test_client()
    page = client.get("/finance/sign-in?next=/finance/migration").get_data(as_text=True)
    answer = client.post("/finance/sign-in", data={"csrf_token": token_of(page), "username": "caiwu",
                                                   "password": "wrong password!", "next": "/finance/migration"})
    text = answer.get_data(as_text=True)
    assert answer.status_code == 401 and "用户名或密码错误" in text
    assert 'name="next" value="/finance/migration"' in text
    assert client.get("/finance/").status_code == 302
    no_token = client.post("/finance/sign-in", data={"username": "caiwu", "password": PASSWORD})
    assert no_token.status_code == 400 and client.get("/finance/").status_code == 302


@pytest.mark.parametrize("target", [
    "//evil.example/finance/", "https://evil.example/", "http:/evil.example", "/\\evil.example", "\\\\evil.example",
    "/finance/\r\nLocation: https://evil.example", "javascript:alert(1)", "/portal/", "evil.example", ""])
def test_next_never_leads_off_the_staff_pages(site, target):
    client = site["app"].test_client()
    page = client.get("/finance/sign-in", query_string={"next": target}).get_data(as_text=True)
    assert "evil" not in page
    answer = client.post("/finance/sign-in", data={"csrf_token": token_of(page), "username": "caiwu",
                                                   "password": PASSWORD, "next": target})
    assert answer.status_code == 302 and answer.location == "/finance/"
    assert auth.safe_next(target) is None


def test_safe_next_keeps_local_staff_paths():
    assert auth.safe_next("/finance/2024-05-01?lang=en") == "/finance/2024-05-01?lang=en"
    assert auth.safe_next("/hall/person/3") == "/hall/person/3"
    assert auth.safe_next("/finance") == "/finance"
    assert auth.safe_next("/financeX") is None and auth.safe_next(None) is None


def test_a_user_without_the_role_gets_a_page_that_names_it_and_leads_on(site):
    day = closed_day(site)
    hall = signed_in(site, "dating", "/hall/sign-in")
    answer = hall.get("/finance/%s" % day)
    page = answer.get_data(as_text=True)
    assert answer.status_code == 403
    assert "此页需要「财务」角色" in page and "needs the finance role" in page
    assert "大厅一（dating）" in page and 'id="sign-out"' in page
    assert 'id="go-hall" href="/hall/"' in page and 'id="go-sign-in" href="/finance/sign-in"' in page
    finance = signed_in(site, "caiwu")
    page = finance.get("/hall/").get_data(as_text=True)
    assert "此页需要「服务大厅」角色" in page and 'id="go-finance" href="/finance/"' in page
    nobody = signed_in(site, "admin")
    page = nobody.get("/finance/").get_data(as_text=True)
    assert "此页需要「财务」角色" in page and 'id="go-sign-in"' in page and 'id="go-hall"' not in page


# --- sign-out and who is signed in on every staff page -------------------------------------------

def test_every_staff_page_shows_who_is_signed_in_and_signs_out(site):
    day = closed_day(site)
    person_id, _account_id = registry.add_person(site["conn"], "张三", 2, staff_number="S20190001")
    client = signed_in(site, "both")
    pages = ["/finance/", "/finance/%s" % day, "/finance/migration", "/hall/", "/hall/?q=S2019",
             "/hall/person/%d" % person_id]
    for path in pages:
        page = client.get(path).get_data(as_text=True)
        assert 'id="sign-out"' in page and "两者（both）" in page, path
    finance_page = client.get("/finance/").get_data(as_text=True)
    assert 'id="to-hall"' in finance_page and 'id="to-finance"' in client.get("/hall/").get_data(as_text=True)
    form = finance_page[finance_page.index('action="/finance/sign-out"'):]
    signed_out = client.post("/finance/sign-out", data={"csrf_token": token_of(form)})
    assert signed_out.status_code == 302 and signed_out.location == "/finance/sign-in"
    assert client.get("/finance/").status_code == 302 and client.get("/hall/").status_code == 302
    other = signed_in(site, "caiwu")
    assert other.post("/finance/sign-out", data={"csrf_token": "forged"}).status_code == 400
    assert other.get("/finance/").status_code == 200


# --- a day in words ------------------------------------------------------------------------------

class _Text(html.parser.HTMLParser):
    """The text a person reads on a page (no tags, attributes, scripts or styles)."""

    def __init__(self):
        super().__init__()
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style") and self.skip > 0

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def visible_text(page):
    parser = _Text()
    parser.feed(page)
    return " ".join(parser.parts)


CODES = sorted(names.every_code() | {"cash", "main", "legacy", "water", "canteen", "electricity", "active"})
UNDERSCORED = sorted(code for code in CODES if "_" in code)


def raw_codes(text, codes):
    return sorted(code for code in codes if re.search(r"(?<![A-Za-z_])%s(?![A-Za-z_])" % re.escape(code), text))


def busy_day(site):
    """Today with canteen and water taps (through the terminal API), cash at the desk, an Alipay
    order and a revoked terminal, closed; the day's text."""
    conn, app = site["conn"], site["app"]
    _person_id, account_id = registry.add_person(conn, "李四", 2, staff_number="S20190002")
    identity, _ = registry.issue_card_record(conn, account_id, b"\x0a\x0b\x0c\x0d")
    recharge.cash_recharge(conn, account_id, 20000, "dating")
    order = recharge.create_order(conn, account_id, 5000, "alipay")
    recharge.simulate_payment(conn, order["order_id"])
    handle = ServerHandle("http://localhost", site["data_dir"], None, None,
                          database=dbmod.store_location(site["data_dir"]))
    canteen = handle.add_terminal(registry.add_merchant(conn, "一食堂", "canteen 1", wallet_rules.CATEGORY_CANTEEN))
    water = handle.add_terminal(registry.add_merchant(conn, "一号楼热水", "hot water 1", wallet_rules.CATEGORY_WATER),
                                category=wallet_rules.CATEGORY_WATER)
    for terminal in (canteen, water):
        terminal.http = httpx.Client(base_url="http://localhost", transport=httpx.WSGITransport(app=app))
    canteen.sync([canteen.record(account_id, identity.card_number, 1250, tap_counter=1)])
    water.sync([water.water_record(account_id, 80, 2000, card_number=identity.card_number, tap_counter=2)])
    idle = handle.add_terminal()
    registry.revoke_terminal(conn, idle.terminal_id)
    today = day_of_ms(dbmod.now_ms())
    report, _ = close_module.close_day(conn, today, before_day_end=True)
    assert report["totals"]["sales_count"] == 2 and len(report["channels"]) == 2
    return day_text(today)


def test_a_busy_day_reads_in_words_on_the_page_and_in_the_files(site):
    day = busy_day(site)
    client = signed_in(site, "caiwu")
    page = client.get("/finance/%s" % day).get_data(as_text=True)
    text = visible_text(page)
    assert "食堂" in text and "用水" in text and "支付宝" in text and "服务大厅现金" in text and "已停用" in text
    assert "持卡人钱包" in text and "12.50" in text
    assert raw_codes(text, CODES) == []
    english = visible_text(client.get("/finance/%s?lang=en" % day).get_data(as_text=True))
    assert "canteen" in english and "revoked" in english and "service hall cash desk" in english
    assert raw_codes(english, UNDERSCORED + ["alipay", "wechat", "ccb"]) == []
    for part in exports.PARTS:
        assert 'href="/finance/%s/%s.csv"' % (day, part) in page
    assert "merchants.csv" not in text and "商户结算 (CSV)" in text

    for part in exports.PARTS:
        rows = list(csv.reader(io.StringIO(client.get("/finance/%s/%s.csv?lang=zh" % (day, part)).get_data(as_text=True)
                                           .lstrip("\ufeff"))))
        assert raw_codes(" ".join(" ".join(row) for row in rows), CODES) == [], part
    merchants = list(csv.reader(io.StringIO(client.get("/finance/%s/merchants.csv?lang=en" % day)
                                            .get_data(as_text=True).lstrip("\ufeff"))))
    assert {row[2] for row in merchants[1:]} == {"canteen", "water"}
    book = openpyxl.load_workbook(io.BytesIO(client.get("/finance/%s.xlsx?lang=zh" % day).data))
    cells = " ".join(str(cell) for sheet in book.worksheets for row in sheet.iter_rows(values_only=True)
                     for cell in row if cell is not None)
    assert raw_codes(cells, CODES) == [] and "支付宝" in cells and "食堂" in cells
    stored = client.get("/finance/%s.json" % day).get_json()
    assert {row["kind"] for row in stored["channels"]} == {"cash_desk", "channel"}   # the JSON keeps the codes


def test_report_tables_right_align_numbers(site):
    day = busy_day(site)
    page = signed_in(site, "caiwu").get("/finance/%s" % day).get_data(as_text=True)
    merchants = page[page.index('id="table-merchants"'):]
    merchants = merchants[:merchants.index("</table>")]
    assert 'class="grid report"' in merchants
    assert re.search(r'<th class="num">[^<]*交易额', merchants) and re.search(r'<td class="num">12\.50</td>', merchants)
    assert re.search(r"<td>一食堂</td>", merchants)


@pytest.mark.stores("sqlite")
def test_numbers_are_right_aligned_in_tabular_figures_in_chromium(live_server, tmp_path):
    conn = live_server.connect()
    try:
        _person_id, account_id = registry.add_person(conn, "王五", 2, staff_number="S20190003")
        recharge.cash_recharge(conn, account_id, 123456, "dating")
        auth.add_staff_user(conn, "reader", "财务二", ["finance"], PASSWORD)
        today = day_of_ms(dbmod.now_ms())
        close_module.close_day(conn, today, before_day_end=True)
    finally:
        conn.close()
    with chromium(tmp_path / "chromium") as driver:
        driver.get(live_server.url + "/finance/%s" % day_text(today))
        fill(driver, {"username": "reader", "password": PASSWORD})
        click(driver, "sign-in")
        assert by_id(driver, "table-channels").is_displayed()
        style = driver.execute_script(
            "const cells = Array.from(document.querySelectorAll('#table-channels td'));"
            "const amount = cells.find(c => c.textContent.trim() === '1234.56');"
            "const name = cells.find(c => c.textContent.trim() === '服务大厅现金');"
            "const s = getComputedStyle(amount), n = getComputedStyle(name);"
            "return [s.textAlign, s.fontVariantNumeric, n.textAlign,"
            " getComputedStyle(document.querySelector('#table-channels th.num')).textAlign,"
            " getComputedStyle(amount.parentElement.parentElement.querySelector('td')).borderTopStyle];")
        assert style == ["right", "tabular-nums", "left", "right", "solid"]
        assert by_id(driver, "sign-out").is_displayed()
        driver.save_screenshot(str(tmp_path / "finance_day.png"))
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        assert not by_id(driver, "sign-out").is_displayed() and by_id(driver, "table-channels").is_displayed()
