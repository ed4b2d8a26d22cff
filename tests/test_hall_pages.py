"""Service-hall pages through Flask's test client, on each store (--store): PIN reset with its identity
check, spending limits in yuan, the search (every key, masked ID numbers, paging past 50), and the
action log that shows what staff and the holder did, wherever they did it.

What a clerk relies on: a reset PIN is the initial one and the old one stops working; a refused
identity check or a mistyped limit changes nothing; a search never drops people silently; the log
on the person page names who did what - the holder in the portal or the app included.
"""
import re
import urllib.parse

import pytest

from conftest import database_snapshot
from firmware.core import card_layout
from staff_site import new_site, signed_in, token_of
from sync_server import db as dbmod, pin_rules, registry
from sync_server.services import pins as pin_service
from sync_server.web import auth

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

ID_NUMBER = "11010519900307123X"          # initial PIN 071230 (the last six, X read as 0)
INITIAL_PIN = "071230"
OWN_PIN = "740258"


@pytest.fixture
def site(tmp_path):
    app, conn, _data_dir = new_site(tmp_path, [("clerk", "王老师", ["hall"])])
    person_id, account_id = registry.add_person(conn, "张三", card_layout.HOLDER_STUDENT, id_number=ID_NUMBER,
                                                staff_number="S20190001")
    with dbmod.transaction(conn):
        conn.execute("UPDATE persons SET department = '计算机学院' WHERE id = ?", (person_id,))
    identity, _ = registry.issue_card_record(conn, account_id, b"\x01\x02\x03\x04")
    yield {"app": app, "conn": conn, "person_id": person_id, "account_id": account_id,
           "card_number": identity.card_number}
    conn.close()


def clerk(site):
    return signed_in(site["app"], "clerk")


def page_text(client, url):
    response = client.get(url)
    assert response.status_code == 200, url
    return response.get_data(as_text=True)


def pin_accepted(site, pin):
    return pin_rules.check_pin(site["conn"], site["account_id"], pin, dbmod.now_ms()) in pin_rules.PIN_ACCEPTED


def staff_log(site):
    return site["conn"].execute("SELECT username, action FROM staff_actions ORDER BY id").fetchall()


# --- PIN reset -----------------------------------------------------------------------------------

def post_reset(client, site, **form):
    person_url = "/hall/person/%d" % site["person_id"]
    data = {"csrf_token": token_of(client.get(person_url))}
    data.update(form)
    return client.post(person_url + "/reset-pin", data=data)


def test_a_reset_pin_is_the_initial_one_and_the_old_one_stops_working(site):
    pin_service.change_pin(site["conn"], site["account_id"], INITIAL_PIN, OWN_PIN)
    for _ in range(pin_rules.MAX_PIN_FAILURES):       # and the holder locked themself out
        pin_accepted(site, "000000")
    client = clerk(site)
    response = post_reset(client, site, id_checked="yes", id_last4="123x")      # typed in lower case
    assert response.status_code == 302 and "/hall/receipt/" in response.location
    receipt = page_text(client, response.location)
    assert "重置交易密码" in receipt and "已重置为初始密码" in receipt and "clerk" in receipt
    assert INITIAL_PIN not in receipt
    assert pin_accepted(site, INITIAL_PIN)
    assert not pin_accepted(site, OWN_PIN)
    assert staff_log(site) == [("clerk", "pin_reset")]
    detail = site["conn"].execute("SELECT detail FROM staff_actions").fetchone()[0]
    assert INITIAL_PIN not in detail and "123X" not in detail.upper()
    person = page_text(client, "/hall/person/%d" % site["person_id"])
    assert "重置交易密码" in person and "王老师（clerk）" in person


@pytest.mark.parametrize("form, message", [
    ({"id_last4": "123X"}, "勾选"),                                   # the box not ticked
    ({"id_checked": "yes", "id_last4": "1234"}, "与档案不符"),         # the wrong card
    ({"id_checked": "yes", "id_last4": "307123X"}, "后4位"),           # not four characters
    ({"id_checked": "yes", "id_last4": ""}, "后4位"),
    ({"id_checked": "on", "id_last4": "123X"}, "勾选"),
])
def test_a_failed_identity_check_leaves_the_pin(site, form, message):
    pin_service.change_pin(site["conn"], site["account_id"], INITIAL_PIN, OWN_PIN)
    client = clerk(site)
    before = database_snapshot(site["conn"])
    response = post_reset(client, site, **form)
    assert response.status_code == 302 and "/hall/receipt/" not in response.location
    assert message in page_text(client, response.location)
    assert database_snapshot(site["conn"]) == before
    assert pin_accepted(site, OWN_PIN)


def test_no_id_number_on_record_is_refused_not_waved_through(site):
    with dbmod.transaction(site["conn"]):
        site["conn"].execute("UPDATE persons SET id_number = NULL WHERE id = ?", (site["person_id"],))
    pin_service.change_pin(site["conn"], site["account_id"], INITIAL_PIN, OWN_PIN)
    client = clerk(site)
    response = post_reset(client, site, id_checked="yes", id_last4="0001")
    assert "没有证件号码" in page_text(client, response.location)
    assert pin_accepted(site, OWN_PIN) and staff_log(site) == []


def test_the_person_page_never_shows_what_the_identity_check_asks_for(site):
    page = page_text(clerk(site), "/hall/person/%d" % site["person_id"])
    assert ID_NUMBER not in page and "123X" not in page and "110**************X" in page
    assert "计算机学院" in page


# --- limits --------------------------------------------------------------------------------------

def post_limits(client, site, single, daily):
    person_url = "/hall/person/%d" % site["person_id"]
    return client.post(person_url + "/limits", data={"csrf_token": token_of(client.get(person_url)),
                                                     "single_yuan": single, "daily_yuan": daily})


def limits_of(site):
    return site["conn"].execute("SELECT single_limit_fen, daily_limit_fen FROM accounts WHERE id = ?",
                                (site["account_id"],)).fetchone()


def test_limits_are_set_and_shown_in_yuan_with_a_receipt(site):
    client = clerk(site)
    response = post_limits(client, site, "35.5", "１２０")        # full-width digits from a Chinese IME
    assert "/hall/receipt/" in response.location
    assert tuple(limits_of(site)) == (3550, 12000)
    receipt = page_text(client, response.location)
    assert "设置消费限额" in receipt and "35.50" in receipt and "120.00" in receipt
    person = page_text(client, "/hall/person/%d" % site["person_id"])
    assert "当前：单笔 35.50 元，每日 120.00 元" in person and 'value="35.50"' in person
    assert "单笔 35.50 / 每日 120.00 元" in person          # the log line
    assert staff_log(site) == [("clerk", "limits")]


@pytest.mark.parametrize("single, daily, message", [
    ("12..5", "100", "元，最多两位小数"),
    ("-5", "100", "元，最多两位小数"),
    ("0", "100", "元，最多两位小数"),
    ("", "100", "元，最多两位小数"),
    ("12.555", "100", "元，最多两位小数"),
    ("99999999", "100", "元，最多两位小数"),
    ("5000", "5000", "限额无效"),                  # above the per-payment bound (¥1000)
    ("50", "6000", "限额无效"),                    # above the per-day bound (¥5000)
    ("200", "100", "限额无效"),                    # per payment above per day
])
def test_bad_limits_are_refused_and_change_nothing(site, single, daily, message):
    client = clerk(site)
    before, snapshot = tuple(limits_of(site)), database_snapshot(site["conn"])
    response = post_limits(client, site, single, daily)
    assert "/hall/receipt/" not in response.location
    assert message in page_text(client, response.location)
    assert tuple(limits_of(site)) == before and database_snapshot(site["conn"]) == snapshot


# --- search --------------------------------------------------------------------------------------

def search(client, query, page=None):
    url = "/hall/?q=%s" % urllib.parse.quote(query) + ("&page=%d" % page if page else "")
    return page_text(client, url)


def people_on(page):
    return re.findall(r'class="person-link">([^<]+)</a>', page)


@pytest.mark.parametrize("query", ["张三", "张", "S20190001", "s2019", "123X", "123x", "07123X", ID_NUMBER,
                                   ID_NUMBER.lower(), "CARD"])
def test_search_finds_by_each_key_and_shows_card_department_category_status(site, query):
    query = str(site["card_number"]) if query == "CARD" else query
    page = search(clerk(site), query)
    assert people_on(page) == ["张三"], query
    assert str(site["card_number"]) in page and "计算机学院" in page and "学生" in page and "正常" in page
    assert ID_NUMBER not in page.replace(query, "") and "110**************X" in page
    assert "共找到 1 人" in page


def test_search_shows_a_lost_card_and_people_without_one(site):
    registry.report_loss(site["conn"], site["card_number"])
    registry.add_person(site["conn"], "张四", card_layout.HOLDER_STAFF, staff_number="T001", set_initial_pin=False)
    page = search(clerk(site), "张")
    assert people_on(page) == ["张三", "张四"]
    assert "已挂失" in page and "未发卡" in page and "教工" in page


def test_short_digits_do_not_search_id_numbers_and_like_wildcards_are_literal(site):
    registry.add_person(site["conn"], "李_四", card_layout.HOLDER_STAFF, staff_number="T100%", set_initial_pin=False)
    client = clerk(site)
    assert people_on(search(client, "23X")) == []       # three characters: not an ID tail
    assert people_on(search(client, "_")) == ["李_四"]   # the underscore itself, not "any one character"
    assert people_on(search(client, "%")) == []
    assert people_on(search(client, "T10_")) == []
    assert people_on(search(client, "t100%")) == ["李_四"]


def test_an_exact_number_comes_before_names_that_contain_it(site):
    registry.add_person(site["conn"], "S20190001的家长", card_layout.HOLDER_TEMPORARY, staff_number="L1",
                        set_initial_pin=False)
    assert people_on(search(clerk(site), "S20190001")) == ["张三", "S20190001的家长"]


def test_search_pages_past_fifty_with_the_total_and_never_cuts(site):
    conn = site["conn"]
    for number in range(120):
        registry.add_person(conn, "同名%03d" % number, card_layout.HOLDER_STUDENT, staff_number="P%05d" % number,
                            set_initial_pin=False)
    client = clerk(site)
    first = search(client, "同名")
    assert "共找到 120 人，显示第 1–50 人" in first and "第 1 / 3 页" in first
    assert 'id="next-page"' in first and 'id="previous-page"' not in first
    third = search(client, "同名", page=3)
    assert "显示第 101–120 人" in third and 'id="next-page"' not in third and 'id="previous-page"' in third
    seen = people_on(first) + people_on(search(client, "同名", page=2)) + people_on(third)
    assert len(seen) == 120 and sorted(seen) == ["同名%03d" % number for number in range(120)]
    assert people_on(search(client, "同名", page=99)) == people_on(third)    # past the end: the last page
    assert clerk(site).get("/hall/?q=同名&page=x").status_code == 400


# --- the action log: staff and holder together ---------------------------------------------------

def portal_post(client, url, **form):
    form["csrf_token"] = token_of(client.get("/portal/loss"))
    return client.post(url, data=form)


def holder_in_portal(site):
    client = site["app"].test_client()
    token = token_of(client.get("/portal/sign-in"))
    assert client.post("/portal/sign-in", data={"staff_number": "S20190001", "pin": INITIAL_PIN,
                                                "csrf_token": token}).status_code == 302
    return client


def api(client, method, url, token=None, **body):
    headers = {"Authorization": "Bearer " + token} if token else {}
    response = client.open(url, method=method, json=body, headers=headers)
    assert response.status_code < 300, response.get_data(as_text=True)
    return response.get_json()


def log_rows(page):
    """(action, by) of each row of the person page's log, newest first."""
    rows = re.findall(r'<td class="action-name">([^<]+)</td>\s*<td class="action-by">([^<]+)</td>', page)
    return [(name, by) for name, by in rows]


def test_holder_actions_in_the_portal_and_the_app_appear_in_the_hall_log(site):
    portal = holder_in_portal(site)
    portal_post(portal, "/portal/pin", old_pin=INITIAL_PIN, new_pin=OWN_PIN, new_pin_again=OWN_PIN)
    portal_post(portal, "/portal/loss/report", pin=OWN_PIN)
    portal_post(portal, "/portal/loss/unfreeze", pin=OWN_PIN)
    portal_post(portal, "/portal/limits", single_yuan="30", daily_yuan="90", pin=OWN_PIN)

    phone = site["app"].test_client()
    bound = api(phone, "POST", "/api/v1/bind", app_user_id="wx-user-1", name="张三", staff_number="S20190001",
                pin=OWN_PIN)
    account = "/api/v1/accounts/%d" % site["account_id"]
    api(phone, "POST", account + "/report-loss", bound["token"], pin=OWN_PIN)
    api(phone, "POST", account + "/pin", bound["token"], old_pin=OWN_PIN, new_pin="592047")
    api(phone, "PUT", account + "/limits", bound["token"], pin="592047", single_limit_fen=2000, daily_limit_fen=8000)
    api(phone, "DELETE", "/api/v1/phones/" + bound["phone_id"], bound["token"])

    client = clerk(site)
    page = page_text(client, "/hall/person/%d" % site["person_id"])
    assert log_rows(page) == [
        ("解除手机绑定", "本人（手机）"), ("设置消费限额", "本人（手机）"), ("修改交易密码", "本人（手机）"),
        ("挂失", "本人（手机）"), ("绑定手机", "本人（手机）"),
        ("设置消费限额", "本人（网上服务大厅）"), ("解挂", "本人（网上服务大厅）"), ("挂失", "本人（网上服务大厅）"),
        ("修改交易密码", "本人（网上服务大厅）")]
    assert "单笔 20.00 / 每日 80.00 元" in page and "卡号 %d" % site["card_number"] in page

    # a staff action sits among them, newest first, with its receipt
    post_limits(client, site, "40", "100")
    rows = log_rows(page_text(client, "/hall/person/%d" % site["person_id"]))
    assert rows[0] == ("设置消费限额", "王老师（clerk）") and len(rows) == 10
    details = " ".join(row[0] for row in site["conn"].execute("SELECT detail FROM holder_actions"))
    assert not any(pin in details for pin in (INITIAL_PIN, OWN_PIN, "592047"))


def test_a_refused_holder_action_is_not_logged(site):
    portal = holder_in_portal(site)
    portal_post(portal, "/portal/loss/report", pin="000000")               # wrong PIN
    portal_post(portal, "/portal/loss/report", pin=INITIAL_PIN)
    portal_post(portal, "/portal/loss/unfreeze", pin=INITIAL_PIN)          # the initial PIN may not unfreeze
    rows = site["conn"].execute("SELECT action, via FROM holder_actions").fetchall()
    assert [tuple(row) for row in rows] == [("report_loss", "portal")]


def test_a_long_log_shows_the_newest_and_pages_through_the_rest(site):
    conn = site["conn"]
    staff = auth.staff_user(conn, conn.execute("SELECT id FROM web_staff_users").fetchone()[0])
    with dbmod.transaction(conn):
        for number in range(75):
            auth.log_action(conn, staff, "photo", person_id=site["person_id"], detail={"n": number},
                            now_ms=1_700_000_000_000 + number * 1000)
    client = clerk(site)
    person = page_text(client, "/hall/person/%d" % site["person_id"])
    assert len(log_rows(person)) == 20 and "共 75 条" in person and 'id="more-actions"' in person
    first = page_text(client, "/hall/person/%d/actions" % site["person_id"])
    second = page_text(client, "/hall/person/%d/actions?page=2" % site["person_id"])
    assert len(log_rows(first)) == 50 and len(log_rows(second)) == 25
    assert "共 75 条，第 1 / 2 页" in first and 'id="next-page"' in first and 'id="previous-page"' in second


def test_wallet_moves_and_the_payment_code_from_the_app_appear_in_the_hall_log(site):
    from simulators.phone_paycode import PayCodeWallet
    registry.recharge(site["conn"], site["account_id"], 5000)
    pin_service.change_pin(site["conn"], site["account_id"], INITIAL_PIN, OWN_PIN)
    phone = site["app"].test_client()
    bound = api(phone, "POST", "/api/v1/sign-in", app_user_id="qq-user-7", staff_number="S20190001", pin=OWN_PIN)
    api(phone, "POST", "/api/v1/wallet-move", bound["token"], from_wallet="main", to_wallet="water", amount_fen=1250,
        pin=OWN_PIN, request_id="move-0001")
    api(phone, "POST", "/api/v1/wallet-move", bound["token"], from_wallet="main", to_wallet="water", amount_fen=1250,
        pin=OWN_PIN, request_id="move-0001")                  # the same request again: booked once, logged once
    credential = api(phone, "POST", "/api/v1/paycode/credentials", bound["token"],
                     public_key=PayCodeWallet.create().public_key.hex(), pin=OWN_PIN)
    api(phone, "POST", "/api/v1/paycode/credentials/%d/stop" % credential["credential_id"], bound["token"])
    page = page_text(clerk(site), "/hall/person/%d" % site["person_id"])
    assert log_rows(page) == [("停用付款码", "本人（手机）"), ("开通付款码", "本人（手机）"),
                              ("钱包转账", "本人（手机）"), ("绑定手机", "本人（手机）"),
                              ("修改交易密码", "本人")]        # a service called without saying where
    assert "12.50 元" in page
