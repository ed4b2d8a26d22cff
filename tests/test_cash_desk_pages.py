"""The cash desk on the hall pages (sync_server/web/hall_pages.py over services/cash_desk.py), through
Flask's test client on each store: the recharge form leads to a confirmation page that books nothing,
确认充值 books once; above the cap a second staff member signs with their password on that page or
approves from the pending list, never the clerk; ¥500,000 typed by mistake is refused outright; a
supervisor reverses a recharge and the receipts and the person page show it; a clerk closes the shift
and finance's day report lists the close with its difference. Last, the printable close page in
headless Chromium, with its buttons hidden when printed.
"""
import re

import pytest

from browser import by_id, chromium, click, fill
from conftest import database_snapshot
import staff_site
from staff_site import PASSWORD, new_site, token_of
from sync_server import registry
from sync_server.business_day import day_text
from sync_server.finance import close as close_module
from sync_server.web import auth

USERS = (("clerk", "王老师", ["hall"]), ("clerk2", "赵老师", ["hall"]), ("boss", "主管", ["hall", "supervisor"]),
         ("auditor", "财务", ["finance"]))


@pytest.fixture
def site(tmp_path, store_environment):
    app, conn, _data_dir = new_site(tmp_path, USERS)
    person_id, account_id = registry.add_person(conn, "张三", 2, staff_number="S20190001")
    card, _ = registry.issue_card_record(conn, account_id, b"\x01\x02\x03\x04")
    registry.recharge(conn, account_id, 2000)
    yield {"app": app, "conn": conn, "person_id": person_id, "account_id": account_id,
           "card_number": card.card_number}
    conn.close()


def form_of(page, form_id):
    """{name: value} of the hidden fields of one form of the page."""
    form = page[page.index('id="%s"' % form_id):]
    form = form[:form.index("</form>")]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))


def signed_in(site, username):
    return staff_site.signed_in(site["app"], username)


def main_fen(site):
    return registry.balances_of(site["conn"], site["account_id"])["main"]


def ask(client, site, amount_yuan, wallet="main"):
    """The person page's recharge form sent; returns the confirmation page's answer."""
    person = client.get("/hall/person/%d" % site["person_id"]).get_data(as_text=True)
    return client.post("/hall/person/%d/recharge" % site["person_id"],
                       data=dict(form_of(person, "recharge-form"), amount_yuan=amount_yuan, wallet=wallet))


def confirm(client, site, page, **extra):
    data = dict(form_of(page, "recharge-confirm-form"), step="book")
    data.update(extra)
    return client.post("/hall/person/%d/recharge/confirm" % site["person_id"], data=data)


def test_the_confirmation_page_shows_who_what_and_how_much_and_only_confirm_books(site):
    clerk = signed_in(site, "clerk")
    before = database_snapshot(site["conn"])
    answer = ask(clerk, site, "３０．５", wallet="water")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200
    for field, shown in (("confirm-name", "张三"), ("confirm-number", "S20190001"),
                         ("confirm-card", str(site["card_number"])), ("confirm-wallet", "小钱包（热水）"),
                         ("confirm-amount", "<strong>30.50</strong>")):
        assert re.search(r'id="%s">%s<' % (field, re.escape(shown)), page), field
    assert "确认充值" in page and "approver" not in page
    assert database_snapshot(site["conn"]) == before                   # the confirmation page books nothing
    first = confirm(clerk, site, page)
    second = confirm(clerk, site, page)                                 # a double click
    assert first.status_code == 302 and second.location == first.location and "/hall/receipt/" in first.location
    assert registry.balances_of(site["conn"], site["account_id"])["water"] == 3050
    receipt = clerk.get(first.location).get_data(as_text=True)
    assert 'id="receipt-amount">30.50<' in receipt and 'id="receipt-wallet">小钱包（热水）<' in receipt


def test_above_the_cap_a_second_person_signs_on_the_confirmation_page(site):
    clerk = signed_in(site, "clerk")
    page = ask(clerk, site, "1500").get_data(as_text=True)
    assert 'id="needs-approval"' in page and "1000.00" in page and 'id="recharge-hold"' in page
    before = database_snapshot(site["conn"])
    for extra, message in (({}, "需另一位工作人员审批"),
                           ({"approver": "clerk", "approver_password": PASSWORD}, "审批人不能是经办人本人"),
                           ({"approver": "auditor", "approver_password": PASSWORD}, "无审批权限"),
                           ({"approver": "boss", "approver_password": "not the password"}, "用户名或密码错误")):
        answer = confirm(clerk, site, page, **extra)
        assert answer.status_code in (401, 403) and message in answer.get_data(as_text=True), extra
        assert 'id="recharge-confirm-form"' in answer.get_data(as_text=True)       # still on the page
        if "not the password" not in extra.values():
            assert database_snapshot(site["conn"]) == before
    for table in ("recharge_orders", "cash_recharge_requests", "staff_actions", "transfers"):
        assert site["conn"].execute("SELECT count(*) FROM %s" % table).fetchone()[0] == (table == "transfers")
    answer = confirm(clerk, site, page, approver="boss", approver_password=PASSWORD)
    assert answer.status_code == 302 and "/hall/receipt/" in answer.location
    assert main_fen(site) == 2000 + 150000
    receipt = clerk.get(answer.location).get_data(as_text=True)
    assert 'id="receipt-approver">boss<' in receipt and 'id="receipt-clerk">clerk<' in receipt
    assert confirm(clerk, site, page, approver="boss", approver_password=PASSWORD).location == answer.location
    assert main_fen(site) == 152000


def test_a_held_request_waits_in_the_list_until_someone_else_approves_it(site):
    clerk = signed_in(site, "clerk")
    page = ask(clerk, site, "2000").get_data(as_text=True)
    held = confirm(clerk, site, page, step="hold")
    assert held.status_code == 302 and held.location.endswith("/hall/approvals") and main_fen(site) == 2000
    listing = clerk.get("/hall/approvals").get_data(as_text=True)
    request_id = re.search(r'id="request-(Q[0-9a-f]+)"', listing).group(1)
    assert "2000.00" in listing and "张三" in listing and "须他人审批" in listing
    own = clerk.post("/hall/approvals/%s/approve" % request_id, data={"csrf_token": token_of(listing),
                                                                      "password": PASSWORD})
    assert own.status_code == 302 and main_fen(site) == 2000
    assert "审批人不能是经办人本人" in clerk.get("/hall/approvals").get_data(as_text=True)

    other = signed_in(site, "clerk2")
    listing = other.get("/hall/approvals").get_data(as_text=True)
    assert "批准并入账" in listing
    wrong = other.post("/hall/approvals/%s/approve" % request_id, data={"csrf_token": token_of(listing),
                                                                        "password": "wrong password"})
    assert wrong.location.endswith("/hall/approvals") and main_fen(site) == 2000
    done = other.post("/hall/approvals/%s/approve" % request_id, data={"csrf_token": token_of(listing),
                                                                       "password": PASSWORD})
    assert "/hall/receipt/" in done.location and main_fen(site) == 2000 + 200000
    assert "没有待审批的充值" in other.get("/hall/approvals").get_data(as_text=True)
    assert other.post("/hall/approvals/nothing/approve", data={"csrf_token": token_of(listing)}).status_code == 302
    assert other.post("/hall/approvals/../x/approve", data={"csrf_token": token_of(listing)}).status_code == 404


def test_half_a_million_typed_by_mistake_is_refused_and_changes_nothing(site):
    clerk = signed_in(site, "clerk")
    before = database_snapshot(site["conn"])
    answer = ask(clerk, site, "500000")
    assert answer.status_code == 302
    page = clerk.get(answer.location).get_data(as_text=True)
    assert "金额 500000.00 元超过现金充值单笔上限 10000.00 元" in page
    assert database_snapshot(site["conn"]) == before


def test_a_supervisor_reverses_a_recharge_and_every_page_shows_it(site):
    clerk = signed_in(site, "clerk")
    booked = confirm(clerk, site, ask(clerk, site, "300").get_data(as_text=True))
    order_id = site["conn"].execute("SELECT order_id FROM recharge_orders").fetchone()[0]
    reverse_url = "/hall/person/%d/reverse/%s" % (site["person_id"], order_id)
    person = clerk.get("/hall/person/%d" % site["person_id"]).get_data(as_text=True)
    assert 'id="cash-%s"' % order_id in person and 'class="reverse"' not in person    # no 冲正 link for a clerk
    refused = clerk.get(reverse_url)
    assert refused.status_code == 403 and "此页需要「主管」角色" in refused.get_data(as_text=True)
    assert clerk.post(reverse_url, data={"csrf_token": token_of(person), "reason": "x"}).status_code == 403

    boss = signed_in(site, "boss")
    someone_else, _ = registry.add_person(site["conn"], "李四", 2, staff_number="S20190002")
    assert boss.get("/hall/person/%d/reverse/%s" % (someone_else, order_id)).status_code == 404
    assert boss.get("/hall/person/%d/reverse/C-none" % site["person_id"]).status_code == 404
    person = boss.get("/hall/person/%d" % site["person_id"]).get_data(as_text=True)
    assert 'href="%s"' % reverse_url in person
    page = boss.get(reverse_url).get_data(as_text=True)
    assert 'id="reverse-amount">300.00<' in page and 'id="reverse-clerk">clerk<' in page
    empty = boss.post(reverse_url, data={"csrf_token": token_of(page), "reason": " "})
    assert "请填写冲正原因" in empty.get_data(as_text=True) and main_fen(site) == 32000
    done = boss.post(reverse_url, data={"csrf_token": token_of(page), "reason": "多输了一个0"})
    assert "/hall/receipt/" in done.location and main_fen(site) == 2000
    receipt = boss.get(done.location).get_data(as_text=True)
    for field, shown in (("receipt-action", "现金充值冲正"), ("receipt-reversed-order", order_id),
                         ("receipt-original-clerk", "clerk"), ("receipt-reason", "多输了一个0"),
                         ("receipt-clerk", "boss"), ("receipt-amount", "300.00")):
        assert 'id="%s">%s<' % (field, shown) in receipt, field
    original = boss.get(booked.location).get_data(as_text=True)
    assert 'id="receipt-reversal"' in original and "多输了一个0" in original
    person = boss.get("/hall/person/%d" % site["person_id"]).get_data(as_text=True)
    assert "已冲正：boss（多输了一个0）" in person and "现金充值冲正" in person
    again = boss.post(reverse_url, data={"csrf_token": token_of(page), "reason": "again"})
    assert "这笔充值已冲正" in again.get_data(as_text=True) and main_fen(site) == 2000


def test_a_clerk_closes_the_shift_and_the_day_report_shows_the_difference(site):
    clerk = signed_in(site, "clerk")
    for amount in ("50", "12.30"):
        confirm(clerk, site, ask(clerk, site, amount).get_data(as_text=True))
    other = signed_in(site, "clerk2")
    confirm(other, site, ask(other, site, "7").get_data(as_text=True))
    page = clerk.get("/hall/cash-close").get_data(as_text=True)
    assert 'id="expected">62.30<' in page and "现金充值" in page and "主钱包" in page
    form = form_of(page, "cash-close-form")
    bad = clerk.post("/hall/cash-close", data=dict(form, counted_yuan="six"))
    assert "请输入清点的现金" in bad.get_data(as_text=True)
    confirm(clerk, site, ask(clerk, site, "1").get_data(as_text=True))         # booked while the page was open
    changed = clerk.post("/hall/cash-close", data=dict(form, counted_yuan="62.30"))
    assert "结账期间又有款项入账" in changed.get_data(as_text=True)
    assert site["conn"].execute("SELECT count(*) FROM cash_closes").fetchone()[0] == 0
    page = clerk.get("/hall/cash-close").get_data(as_text=True)
    closed = clerk.post("/hall/cash-close", data=dict(form_of(page, "cash-close-form"), counted_yuan="63",
                                                      note="多收五角"))
    assert closed.status_code == 302 and "/hall/cash-close/" in closed.location
    assert clerk.post("/hall/cash-close", data=dict(form_of(page, "cash-close-form"), counted_yuan="63")).location \
        == closed.location                                              # the same form twice is one close
    printed = clerk.get(closed.location).get_data(as_text=True)
    assert 'id="close-expected">63.30<' in printed and 'id="close-counted">63.00<' in printed
    assert 'id="close-difference">短款 0.30 元<' in printed and 'id="close-clerk">clerk<' in printed
    assert 'id="expected">0.00<' in clerk.get("/hall/cash-close").get_data(as_text=True)

    close_id = int(closed.location.rsplit("/", 1)[1])
    day = site["conn"].execute("SELECT day_number FROM cash_closes WHERE id = ?", (close_id,)).fetchone()[0]
    close_module.close_day(site["conn"], day, before_day_end=True)
    finance = signed_in(site, "auditor")
    report = finance.get("/finance/%s" % day_text(day)).get_data(as_text=True)
    section = report[report.index('id="cash-desk-closes"'):]
    assert "clerk" in section and "63.30" in section and "短款 0.30" in section and "多收五角" in section
    assert "1 次有差异" in section


@pytest.mark.stores("sqlite")
def test_the_printable_close_page_in_chromium(live_server, tmp_path):
    conn = live_server.connect()
    try:
        person_id, account_id = registry.add_person(conn, "李四", 2, staff_number="S20190009")
        auth.add_staff_user(conn, "printer", "打印员", ["hall"], PASSWORD)
    finally:
        conn.close()
    with chromium(tmp_path / "chromium") as driver:
        driver.get(live_server.url + "/hall/sign-in")
        fill(driver, {"username": "printer", "password": PASSWORD})
        click(driver, "sign-in")
        driver.get(live_server.url + "/hall/person/%d" % person_id)
        fill(driver, {"amount-yuan": "88.80"})
        click(driver, "recharge")
        assert by_id(driver, "confirm-amount").text == "88.80" and by_id(driver, "confirm-name").text == "李四"
        click(driver, "recharge-confirm")
        assert by_id(driver, "receipt-amount").text == "88.80"
        driver.get(live_server.url + "/hall/person/%d" % person_id)
        click(driver, "nav-cash-close")
        assert by_id(driver, "expected").text == "88.80"
        fill(driver, {"counted-yuan": "90"})
        click(driver, "cash-close")
        assert by_id(driver, "close-difference").text == "长款 1.20 元"
        assert by_id(driver, "print").is_displayed()
        driver.save_screenshot(str(tmp_path / "cash_close.png"))
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        assert not by_id(driver, "print").is_displayed()                 # buttons stay off the paper
        assert by_id(driver, "close-counted").is_displayed()
