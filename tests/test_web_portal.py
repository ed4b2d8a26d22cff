"""The portal's PIN feedback, through Flask's test client on each store: a wrong PIN says how many
tries are left, a lockout says how long it lasts and until when, and a new PIN too easy to guess is
refused with the rule it breaks - at sign-in, on the PIN-change page and on a PIN-checked action."""
import datetime
import os
import re
import uuid

import pytest

from sync_server import db as dbmod, pin_rules, registry
from sync_server.app import create_app
from sync_server.cli import init_data_dir

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

ID_NUMBER = "110105199803150014"          # born 1998-03-15; initial PIN 150014
INITIAL = "150014"
NEW_PIN = "802417"
BEIJING = datetime.timezone(datetime.timedelta(hours=8))


@pytest.fixture
def site(tmp_path):
    data_dir = str(tmp_path / "data")
    init_data_dir(data_dir, os.environ.get("YKT_DATABASE_URL"))
    app = create_app({"DATA_DIR": data_dir, "TESTING": True})
    conn = dbmod.connect(dbmod.store_location(data_dir))
    number = "S%s" % uuid.uuid4().hex[:10]
    _, account_id = registry.add_person(conn, "李四", 2, id_number=ID_NUMBER, staff_number=number)
    card, _ = registry.issue_card_record(conn, account_id, uuid.uuid4().bytes[:4])
    yield {"app": app, "conn": conn, "account_id": account_id, "number": number, "card_number": card.card_number}
    conn.close()


def _token(response):
    return re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def _sign_in(client, number, pin, lang=None):
    query = "?lang=%s" % lang if lang else ""
    token = _token(client.get("/portal/sign-in" + query))
    response = client.post("/portal/sign-in" + query, data={"staff_number": number, "pin": pin, "csrf_token": token})
    return response.status_code, response.get_data(as_text=True)


def _post(client, page, path, data):
    data = dict(data, csrf_token=_token(client.get(page)))
    return client.post(path, data=data, follow_redirects=True).get_data(as_text=True)


def _pin_state(conn, account_id):
    return conn.execute("SELECT pin_failures, pin_locked_until_ms FROM accounts WHERE id = ?", (account_id,)).fetchone()


def test_sign_in_counts_the_tries_down_then_says_how_long_the_lockout_lasts(site):
    client = site["app"].test_client()
    for tries_left in (4, 3, 2):
        status, page = _sign_in(client, site["number"], "000000")
        assert status == 401 and "密码错误，还可尝试 %d 次" % tries_left in page
    status, page = _sign_in(client, site["number"], "000000")
    assert status == 401 and "密码错误，还可尝试 1 次；再错将锁定 30 分钟" in page
    status, page = _sign_in(client, site["number"], "000000")
    assert status == 401
    match = re.search(r"已锁定，请 (\d+) 分钟后（北京时间 (\d\d:\d\d) 以后）再试", page)
    assert match and match.group(1) == "30"
    _, locked_until_ms = _pin_state(site["conn"], site["account_id"])
    assert match.group(2) == datetime.datetime.fromtimestamp(locked_until_ms / 1000, BEIJING).strftime("%H:%M")
    status, page = _sign_in(client, site["number"], INITIAL, lang="en")      # the right PIN, but locked
    assert status == 401 and "locked, try again in 30 minutes (after" in page
    assert client.get("/portal/").status_code == 302


def test_a_number_nobody_has_gets_the_same_countdown(site):
    client = site["app"].test_client()
    nobody = "S%s" % uuid.uuid4().hex[:10]
    pages = [_sign_in(client, nobody, "000000")[1] for _ in range(pin_rules.MAX_PIN_FAILURES)]
    for tries_left, page in zip((4, 3, 2), pages):
        assert "密码错误，还可尝试 %d 次" % tries_left in page
    assert "再错将锁定 30 分钟" in pages[3] and "已锁定，请 30 分钟后" in pages[4]


def test_a_wrong_old_pin_on_the_pin_page_says_the_tries_left_and_a_weak_new_pin_names_its_rule(site):
    client = site["app"].test_client()
    assert _sign_in(client, site["number"], INITIAL)[0] == 302
    page = _post(client, "/portal/pin", "/portal/pin", {"old_pin": "999999", "new_pin": NEW_PIN,
                                                        "new_pin_again": NEW_PIN})
    assert "密码错误，还可尝试 4 次" in page
    assert _pin_state(site["conn"], site["account_id"])[0] == 1
    refusals = {"111111": "同一数字", "234567": "连续数字", "980315": "出生日期", "031598": "出生日期",
                "150398": "出生日期", INITIAL: "初始密码"}
    for weak, rule in refusals.items():
        page = _post(client, "/portal/pin", "/portal/pin", {"old_pin": INITIAL, "new_pin": weak, "new_pin_again": weak})
        assert rule in page and "密码已修改" not in page, weak
    assert _pin_state(site["conn"], site["account_id"])[0] == 1      # refused before the old PIN was checked
    assert "不能是同一数字" in client.get("/portal/pin").get_data(as_text=True)      # the rules, before typing
    page = _post(client, "/portal/pin?lang=en", "/portal/pin", {"old_pin": INITIAL, "new_pin": "980315",
                                                                "new_pin_again": "980315"})
    assert "cannot contain the birth date of the ID number" in page
    page = _post(client, "/portal/pin?lang=zh", "/portal/pin", {"old_pin": INITIAL, "new_pin": NEW_PIN,
                                                                "new_pin_again": NEW_PIN})
    assert "密码已修改" in page
    assert _sign_in(site["app"].test_client(), site["number"], NEW_PIN)[0] == 302


def test_a_pin_checked_action_says_the_tries_left_and_does_nothing(site):
    client = site["app"].test_client()
    assert _sign_in(client, site["number"], INITIAL)[0] == 302
    page = _post(client, "/portal/loss", "/portal/loss/report", {"pin": "999999"})
    assert "密码错误，还可尝试 4 次" in page
    page = _post(client, "/portal/loss", "/portal/loss/report", {"pin": "999998"})
    assert "密码错误，还可尝试 3 次" in page
    status = site["conn"].execute("SELECT status FROM cards WHERE card_number = ?", (site["card_number"],)).fetchone()
    assert status[0] == "active"
