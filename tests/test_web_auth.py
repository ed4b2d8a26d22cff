"""Web sessions, CSRF and roles, through Flask's test client on a real SQLite file.

What a user relies on: a forged form post (no or wrong CSRF token) is refused with 400 and changes
nothing; staff pages need the hall role; a cardholder session never opens staff pages; repeated wrong
PINs lock the portal sign-in like they lock terminals; staff passwords never appear anywhere.
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import database_snapshot
from sync_server import db as dbmod, registry, services
from sync_server.app import create_app
from sync_server.cli import init_data_dir
from sync_server.services import binding, cards, pins as pin_service
from sync_server.web import auth

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

PASSWORD = "correct horse battery"


class Clock:
    """The app's session clock: the real time plus however far a test has moved it."""

    def __init__(self):
        self.offset_ms = 0

    def __call__(self):
        return dbmod.now_ms() + self.offset_ms

    def advance(self, seconds):
        self.offset_ms += seconds * 1000


@pytest.fixture
def site(tmp_path):
    data_dir = str(tmp_path / "data")
    init_data_dir(data_dir, os.environ.get('YKT_DATABASE_URL'))
    clock = Clock()
    app = create_app({"DATA_DIR": data_dir, "TESTING": True, "NOW_MS": clock})
    conn = dbmod.connect(dbmod.store_location(data_dir))
    person_id, account_id = registry.add_person(conn, "张三", 2, staff_number="S20190001")
    registry.issue_card_record(conn, account_id, b"\x01\x02\x03\x04")
    registry.recharge(conn, account_id, 6955)
    auth.add_staff_user(conn, "clerk", "王老师", ["hall"], PASSWORD)
    auth.add_staff_user(conn, "auditor", "财务", ["finance"], PASSWORD)
    yield {"app": app, "conn": conn, "person_id": person_id, "account_id": account_id, "data_dir": data_dir,
           "clock": clock}
    conn.close()


def token_of(response):
    return re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def sign_in_cardholder(client, pin="190001"):
    token = token_of(client.get("/portal/sign-in"))
    return client.post("/portal/sign-in", data={"staff_number": "S20190001", "pin": pin, "csrf_token": token})


def sign_in_staff(client, username="clerk", password=PASSWORD):
    token = token_of(client.get("/hall/sign-in"))
    return client.post("/hall/sign-in", data={"username": username, "password": password, "csrf_token": token})


def test_cardholder_signs_in_and_sees_balance_with_a_hardened_cookie(site):
    client = site["app"].test_client()
    response = sign_in_cardholder(client)
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/portal/").get_data(as_text=True)
    assert "张三" in page and "69.55" in page
    assert "Balance" in client.get("/portal/?lang=en").get_data(as_text=True)


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_portal_post_without_the_session_token_is_refused_and_changes_nothing(site, token):
    client = site["app"].test_client()
    sign_in_cardholder(client)
    before = database_snapshot(site["conn"])
    data = {"pin": "190001"}
    if token is not None:
        data["csrf_token"] = token
    assert client.post("/portal/loss/report", data=data).status_code == 400
    assert database_snapshot(site["conn"]) == before
    assert site["conn"].execute("SELECT status FROM cards").fetchone()[0] == "active"


def test_token_of_another_session_does_not_work(site):
    other = site["app"].test_client()
    sign_in_staff(other)
    stolen = token_of(other.get("/hall/person/%d" % site["person_id"]))
    client = site["app"].test_client()
    sign_in_staff(client)
    before = database_snapshot(site["conn"])
    response = client.post("/hall/person/%d/recharge" % site["person_id"], data={"amount_yuan": "100", "csrf_token": stolen})
    assert response.status_code == 400
    assert database_snapshot(site["conn"]) == before


def test_sign_in_form_needs_the_token_too(site):
    client = site["app"].test_client()
    response = client.post("/portal/sign-in", data={"staff_number": "S20190001", "pin": "190001"})
    assert response.status_code == 400
    assert client.get("/portal/").status_code == 302     # still signed out


def test_hall_pages_need_the_hall_role(site):
    anonymous = site["app"].test_client()
    response = anonymous.get("/hall/person/%d" % site["person_id"])
    assert response.status_code == 302 and "/hall/sign-in" in response.location

    finance = site["app"].test_client()
    assert sign_in_staff(finance, "auditor").status_code == 302
    assert finance.get("/hall/person/%d" % site["person_id"]).status_code == 403
    assert finance.get("/hall/?q=张").status_code == 403

    cardholder = site["app"].test_client()
    sign_in_cardholder(cardholder)
    response = cardholder.get("/hall/person/%d" % site["person_id"])
    assert response.status_code == 302 and "/hall/sign-in" in response.location
    assert "张三" not in cardholder.get("/hall/?q=张").get_data(as_text=True)

    clerk = site["app"].test_client()
    sign_in_staff(clerk)
    assert "张三" in clerk.get("/hall/?q=张").get_data(as_text=True)


def test_staff_action_is_logged_with_who_did_it_and_has_a_receipt(site):
    client = site["app"].test_client()
    sign_in_staff(client)
    confirm, form = recharge_confirmation(client, site["person_id"], "12.30")
    assert "12.30" in confirm.get_data(as_text=True) and "张三" in confirm.get_data(as_text=True)
    assert site["conn"].execute("SELECT count(*) FROM staff_actions").fetchone()[0] == 0
    response = client.post("/hall/person/%d/recharge/confirm" % site["person_id"], data=form)
    assert response.status_code == 302 and "/hall/receipt/" in response.location
    receipt = client.get(response.location).get_data(as_text=True)
    assert "12.30" in receipt and "clerk" in receipt and "张三" in receipt
    row = site["conn"].execute("SELECT username, action, person_id, amount_fen FROM staff_actions").fetchone()
    assert row == ("clerk", "recharge", site["person_id"], 1230)
    assert registry.balances_of(site["conn"], site["account_id"])["main"] == 6955 + 1230


def test_a_disabled_staff_user_is_signed_out_at_once(site):
    client = site["app"].test_client()
    sign_in_staff(client)
    assert client.get("/hall/").status_code == 200
    with dbmod.transaction(site["conn"]):
        site["conn"].execute("UPDATE web_staff_users SET disabled = 1 WHERE username = 'clerk'")
    assert client.get("/hall/").status_code == 302


def test_wrong_pins_lock_the_portal_sign_in(site):
    client = site["app"].test_client()
    for _ in range(5):
        assert sign_in_cardholder(client, pin="000000").status_code == 401
    response = sign_in_cardholder(client, pin="190001")     # the right PIN, but locked now
    assert response.status_code == 401
    assert "锁定" in response.get_data(as_text=True)
    assert client.get("/portal/").status_code == 302


def test_unknown_number_and_wrong_pin_look_the_same(site):
    client = site["app"].test_client()
    token = token_of(client.get("/portal/sign-in"))
    unknown = client.post("/portal/sign-in", data={"staff_number": "S99999999", "pin": "123456", "csrf_token": token})
    wrong = sign_in_cardholder(client, pin="123456")
    assert unknown.status_code == wrong.status_code == 401
    assert "密码错误" in unknown.get_data(as_text=True) and "密码错误" in wrong.get_data(as_text=True)


def test_wrong_staff_passwords_lock_the_user(site):
    client = site["app"].test_client()
    for _ in range(5):
        assert sign_in_staff(client, password="wrong password!").status_code == 401
    assert sign_in_staff(client).status_code == 401
    assert client.get("/hall/").status_code == 302


def test_staff_add_command_keeps_the_password_out_of_sight(site):
    secret = "a-very-long-hall-password"
    result = subprocess.run([sys.executable, "-m", "sync_server", "hall", "staff-add", "--data-dir", site["data_dir"],
                             "--username", "desk2", "--name", "李老师", "--role", "hall", "--password-stdin"],
                            input=secret + "\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "desk2" in result.stdout and secret not in result.stdout + result.stderr
    row = site["conn"].execute("SELECT roles, password_hash FROM web_staff_users WHERE username = 'desk2'").fetchone()
    assert row[0] == "hall" and secret.encode() not in row[1]
    client = site["app"].test_client()
    assert sign_in_staff(client, "desk2", secret).status_code == 302
    short = subprocess.run([sys.executable, "-m", "sync_server", "hall", "staff-add", "--data-dir", site["data_dir"],
                            "--username", "desk3", "--role", "hall", "--password-stdin", "--lang", "en"],
                           input="short\n", capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least" in short.stderr


def _copy_session(source, target):
    """A second browser holding the same session cookie (a copied or stolen cookie)."""
    target.set_cookie("ykt_session", source.get_cookie("ykt_session").value)


def test_sign_out_ends_the_session_everywhere_even_a_copied_cookie(site):
    client, copy = site["app"].test_client(), site["app"].test_client()
    sign_in_cardholder(client)
    _copy_session(client, copy)
    assert copy.get("/portal/").status_code == 200
    token = token_of(client.get("/portal/"))
    assert client.post("/portal/sign-out", data={"csrf_token": token}).status_code == 302
    assert copy.get("/portal/").status_code == 302            # the old cookie no longer opens a page
    assert client.get("/portal/").status_code == 302
    assert sign_in_cardholder(client).status_code == 302 and client.get("/portal/").status_code == 200


def test_a_pin_change_ends_the_other_sessions(site):
    client, other = site["app"].test_client(), site["app"].test_client()
    sign_in_cardholder(client)
    sign_in_cardholder(other)
    token = token_of(client.get("/portal/pin"))
    client.post("/portal/pin", data={"old_pin": "190001", "new_pin": "246813", "new_pin_again": "246813",
                                     "csrf_token": token})
    assert client.get("/portal/").status_code == 200          # who changed it stays signed in
    assert other.get("/portal/").status_code == 302
    assert sign_in_cardholder(other, pin="246813").status_code == 302
    pin_service.reset_pin(site["conn"], site["account_id"], "clerk")      # staff reset at the hall
    assert client.get("/portal/").status_code == 302 and other.get("/portal/").status_code == 302


def form_key_of(response, form_id):
    page = response.get_data(as_text=True)
    form = page[page.index('id="%s"' % form_id):]
    form = form[:form.index("</form>")]
    return re.search(r'name="form_key" value="([^"]+)"', form).group(1)


def recharge_confirmation(client, person_id, amount_yuan):
    """The person page's recharge form sent: (the confirmation page, the form its 确认充值 posts)."""
    page = client.get("/hall/person/%d" % person_id)
    confirm = client.post("/hall/person/%d/recharge" % person_id,
                          data={"amount_yuan": amount_yuan, "wallet": "main", "csrf_token": token_of(page),
                                "form_key": form_key_of(page, "recharge-form")})
    assert confirm.status_code == 200
    form = {"amount_yuan": re.search(r'name="amount_yuan" value="([^"]+)"', confirm.get_data(as_text=True)).group(1),
            "wallet": "main", "step": "book", "csrf_token": token_of(confirm),
            "form_key": form_key_of(confirm, "recharge-confirm-form")}
    return confirm, form


def test_a_double_clicked_cash_recharge_books_once_and_shows_one_receipt(site):
    client = site["app"].test_client()
    sign_in_staff(client)
    _confirm, form = recharge_confirmation(client, site["person_id"], "50")
    first = client.post("/hall/person/%d/recharge/confirm" % site["person_id"], data=form)
    second = client.post("/hall/person/%d/recharge/confirm" % site["person_id"], data=form)
    assert first.status_code == second.status_code == 302
    assert "/hall/receipt/" in first.location and second.location == first.location
    assert registry.balances_of(site["conn"], site["account_id"])["main"] == 6955 + 5000
    assert site["conn"].execute("SELECT count(*) FROM recharge_orders").fetchone()[0] == 1
    assert site["conn"].execute("SELECT count(*) FROM staff_actions").fetchone()[0] == 1
    _confirm, again = recharge_confirmation(client, site["person_id"], "50")   # the next form: a new submission
    client.post("/hall/person/%d/recharge/confirm" % site["person_id"], data=again)
    assert registry.balances_of(site["conn"], site["account_id"])["main"] == 6955 + 10000
    forged = client.post("/hall/person/%d/recharge/confirm" % site["person_id"],
                         data=dict(form, form_key="made-up-key"))
    assert forged.status_code == 302 and "/hall/receipt/" not in forged.location
    assert registry.balances_of(site["conn"], site["account_id"])["main"] == 6955 + 10000


def test_a_double_clicked_electricity_payment_is_charged_once(site):
    client = site["app"].test_client()
    sign_in_cardholder(client)
    from sync_server.services import electricity
    electricity.import_rooms(site["conn"], "楼栋,楼层,房间,电表号\n西1,3,305,\n")     # the hall's room list
    page = client.get("/portal/electricity")
    form = {"building": "西1", "floor": "3", "room": "305", "amount_yuan": "20", "pin": "190001",
            "csrf_token": token_of(page), "form_key": form_key_of(page, "electricity-form")}
    first = client.post("/portal/electricity", data=form, follow_redirects=True).get_data(as_text=True)
    second = client.post("/portal/electricity", data=form, follow_redirects=True).get_data(as_text=True)
    receipt = re.search(r"单号 (E[0-9a-f]+)", first).group(1)
    assert receipt in second                                  # the same receipt, shown again
    assert registry.balances_of(site["conn"], site["account_id"])["main"] == 6955 - 2000
    assert site["conn"].execute("SELECT count(*) FROM electricity_payments").fetchone()[0] == 1


def test_the_hall_page_shows_the_statement_as_the_portal_does(site):
    """Recent rows come from the statement query: a reissue fee shows as 补卡费, newest first."""
    cards.reissue(site["conn"], site["account_id"], b"\x0a\x0b\x0c\x0d", "clerk")
    client = site["app"].test_client()
    sign_in_staff(client)
    page = client.get("/hall/person/%d" % site["person_id"]).get_data(as_text=True)
    recent = page[page.index('id="recent"'):]
    recent = recent[:recent.index("</table>")]
    assert recent.index("补卡费") < recent.index("服务大厅现金") and "-10.00" in recent


# --- staff sessions end on the server; idle and absolute limits -----------------------------------

def _hall_sign_out(client):
    token = token_of(client.get("/hall/"))
    return client.post("/hall/sign-out", data={"csrf_token": token})


def test_staff_sign_out_ends_a_copied_cookie_too(site):
    client, copy = site["app"].test_client(), site["app"].test_client()
    sign_in_staff(client)
    _copy_session(client, copy)
    assert copy.get("/hall/").status_code == 200
    assert _hall_sign_out(client).status_code == 302
    assert copy.get("/hall/").status_code == 302             # the copy made before sign-out is refused
    assert copy.get("/hall/person/%d" % site["person_id"]).status_code == 302
    assert sign_in_staff(client).status_code == 302 and client.get("/hall/").status_code == 200
    assert copy.get("/hall/").status_code == 302             # and stays refused after a new sign-in


def test_a_staff_password_change_ends_every_session_of_that_user(site):
    client, other_user = site["app"].test_client(), site["app"].test_client()
    sign_in_staff(client)
    auth.add_staff_user(site["conn"], "desk2", "李老师", ["hall"], PASSWORD)
    sign_in_staff(other_user, "desk2")
    result = subprocess.run([sys.executable, "-m", "sync_server", "hall", "staff-password", "--data-dir",
                             site["data_dir"], "--username", "clerk", "--password-stdin"],
                            input="a brand new password\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert client.get("/hall/").status_code == 302
    assert other_user.get("/hall/").status_code == 200       # another user's sessions are left alone
    assert sign_in_staff(client).status_code == 401
    assert sign_in_staff(client, password="a brand new password").status_code == 302


def test_disabling_a_staff_user_ends_sessions_for_good(site):
    client = site["app"].test_client()
    sign_in_staff(client)
    auth.set_staff_disabled(site["conn"], "clerk")
    assert client.get("/hall/").status_code == 302
    auth.set_staff_disabled(site["conn"], "clerk", disabled=False)
    assert client.get("/hall/").status_code == 302           # enabling again does not revive the old cookie
    assert sign_in_staff(client).status_code == 302 and client.get("/hall/").status_code == 200


def test_an_idle_staff_session_is_refused_after_the_timeout(site):
    client = site["app"].test_client()
    sign_in_staff(client)
    for _ in range(3):                                       # used every 29 minutes: stays signed in
        site["clock"].advance(29 * 60)
        assert client.get("/hall/").status_code == 200
    site["clock"].advance(31 * 60)
    assert client.get("/hall/").status_code == 302
    site["clock"].advance(-31 * 60)                          # and the session is gone, not just asleep
    assert client.get("/hall/").status_code == 302


def test_a_staff_session_ends_after_its_absolute_lifetime_however_busy(site):
    client = site["app"].test_client()
    sign_in_staff(client)
    for _ in range(12 * 60 // 20 - 1):                       # 11 h 40 min, a page every 20 minutes
        site["clock"].advance(20 * 60)
        assert client.get("/hall/").status_code == 200
    site["clock"].advance(19 * 60)
    assert client.get("/hall/").status_code == 200
    site["clock"].advance(2 * 60)                            # 12 h 1 min after sign-in, idle 2 minutes
    assert client.get("/hall/").status_code == 302


def test_an_idle_portal_session_is_refused_and_the_timeouts_are_configurable(site, monkeypatch):
    client = site["app"].test_client()
    sign_in_cardholder(client)
    site["clock"].advance(14 * 60)
    assert client.get("/portal/").status_code == 200
    site["clock"].advance(16 * 60)
    assert client.get("/portal/").status_code == 302
    monkeypatch.setenv("YKT_STAFF_SESSION_IDLE_S", "120")
    app = create_app({"DATA_DIR": site["data_dir"], "TESTING": True, "NOW_MS": site["clock"]})
    assert app.config["STAFF_SESSION_IDLE_S"] == 120
    staff = app.test_client()
    token = token_of(staff.get("/hall/sign-in"))
    staff.post("/hall/sign-in", data={"username": "clerk", "password": PASSWORD, "csrf_token": token})
    site["clock"].advance(100)
    assert staff.get("/hall/").status_code == 200
    site["clock"].advance(121)
    assert staff.get("/hall/").status_code == 302
    monkeypatch.setenv("YKT_STAFF_SESSION_IDLE_S", "soon")
    with pytest.raises(ValueError, match="YKT_STAFF_SESSION_IDLE_S"):
        create_app({"DATA_DIR": site["data_dir"], "TESTING": True})


# --- Secure cookies ------------------------------------------------------------------------------

def _set_cookies(response):
    return {header.split("=", 1)[0]: header for header in response.headers.getlist("Set-Cookie")}


@pytest.mark.parametrize("secure", [False, True])
def test_every_cookie_is_secure_exactly_when_the_site_says_so(site, monkeypatch, secure):
    monkeypatch.setenv("YKT_COOKIE_SECURE", "1" if secure else "0")
    app = create_app({"DATA_DIR": site["data_dir"], "TESTING": True})
    client = app.test_client()
    token = token_of(client.get("/portal/sign-in"))
    signed_in = client.post("/portal/sign-in?lang=en",
                            data={"staff_number": "S20190001", "pin": "190001", "csrf_token": token})
    cookies = _set_cookies(signed_in)
    staff = app.test_client()
    token = token_of(staff.get("/hall/sign-in"))
    cookies_staff = _set_cookies(staff.post("/hall/sign-in", data={"username": "clerk", "password": PASSWORD,
                                                                   "csrf_token": token}))
    assert set(cookies) == {"ykt_session", "lang"} and set(cookies_staff) == {"ykt_session"}
    for header in list(cookies.values()) + list(cookies_staff.values()):
        attributes = [part.strip() for part in header.split(";")]
        assert "HttpOnly" in attributes and "SameSite=Lax" in attributes, header
        assert ("Secure" in attributes) == secure, header


def test_a_mistyped_cookie_secure_setting_stops_the_start(site, monkeypatch):
    monkeypatch.setenv("YKT_COOKIE_SECURE", "yes please")
    with pytest.raises(ValueError, match="YKT_COOKIE_SECURE"):
        create_app({"DATA_DIR": site["data_dir"], "TESTING": True})


# --- bound phones on the portal ------------------------------------------------------------------

def test_the_portal_lists_bound_phones_and_removes_one_with_the_form_token(site):
    conn = site["conn"]
    phone = binding.bind(conn, "wechat-oA1b2c3d4", "张三", "S20190001", "190001")
    tablet = binding.bind(conn, "alipay-20880042", "张三", "S20190001", "190001")
    other_person, _ = registry.add_person(conn, "李四", 2, staff_number="S20190002")
    others = binding.bind(conn, "qq-77777777", "李四", "S20190002", "190002")
    client = site["app"].test_client()
    sign_in_cardholder(client)
    page = client.get("/portal/phones").get_data(as_text=True)
    assert phone["phone_id"] in page and tablet["phone_id"] in page and others["phone_id"] not in page
    assert "…c3d4" in page and "wechat-oA1b2c3d4" not in page

    before = database_snapshot(conn)
    assert client.post("/portal/phones/%s/remove" % tablet["phone_id"]).status_code == 400        # no form token
    assert client.post("/portal/phones/%s/remove" % tablet["phone_id"],
                       data={"csrf_token": "forged"}).status_code == 400
    token = token_of(client.get("/portal/phones"))
    assert client.post("/portal/phones/%s/remove" % others["phone_id"],
                       data={"csrf_token": token}).status_code == 404                     # not 403: ids do not leak
    assert database_snapshot(conn) == before
    assert binding.authenticate(conn, others["token"])["person_id"] == other_person

    response = client.post("/portal/phones/%s/remove" % tablet["phone_id"], data={"csrf_token": token})
    assert response.status_code == 302
    with pytest.raises(services.ServiceError) as refused:
        binding.authenticate(conn, tablet["token"])                                      # its token ends at once
    assert refused.value.code == "bad_token"
    page = client.get("/portal/phones").get_data(as_text=True)
    assert tablet["phone_id"] not in page and phone["phone_id"] in page
    assert binding.authenticate(conn, phone["token"])["person_id"] == site["person_id"]
