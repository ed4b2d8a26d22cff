"""Every number a request carries is bounded: sync_server/numbers.py, and every route that reads one.

First the parsers themselves; then, over HTTP against the server process, each route that takes
a number in its path, query, form or JSON body, fed 2**64, -1, Arabic-Indic and superscript digits,
`1e3`, empty and giant strings: a 4xx in the audience's shape (JSON with a bilingual message for
/api, the page's own message for pages), never a 5xx, and nothing changes. Full-width digits, what a
Chinese input method types, are read as the number they show.
"""
import re

import cbor2
import httpx
import pytest

from conftest import database_snapshot
from firmware.core import protocol
from sync_server import numbers
from sync_server.web import auth
from test_cardholder_api import Holder

GIANT = "9" * 1000
BAD_TEXTS = [str(2 ** 64), str(2 ** 63), "-1", "0", "٣", "١٢", "²", "1e3", "1_000", "+5", "0x10", "", " ", GIANT]
BAD_JSON = [2 ** 64, 2 ** 63, -1, 0, "12", "１２", 1e3, 12.0, True, None, "", GIANT]


def full_width(number):
    return str(number).translate(str.maketrans("0123456789", "０１２３４５６７８９"))


# --- the parsers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("12", 12), (" 12 ", 12), ("１２", 12), ("０", None), (str(numbers.MAX_ID), numbers.MAX_ID),
    (full_width(numbers.MAX_ID), numbers.MAX_ID)] + [(text, None) for text in BAD_TEXTS] + [(12, None), (None, None)])
def test_parse_id_reads_ascii_and_full_width_digits_only(text, expected):
    assert numbers.parse_id(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("12", 1200), ("12.5", 1250), ("１２．５０", 1250), ("0.01", 1), ("1000000", 100000000),
    ("1000000.01", None), ("12.345", None), ("-1", None), ("١٢", None), ("1e3", None), ("", None),
    (str(2 ** 64), None), (GIANT, None), ("12.", None), (".5", None)])
def test_parse_yuan_is_exact_and_bounded(text, expected):
    assert numbers.parse_yuan(text) == expected


def test_pages_and_dates():
    assert [numbers.parse_page(text) for text in (None, "1", "１２", "", "0", str(numbers.MAX_PAGE + 1))] == \
        [1, 1, 12, None, None, None]
    assert numbers.parse_page("101", maximum=100) is None
    assert str(numbers.parse_date("２０２６－０１－０２")) == "2026-01-02"
    assert [numbers.parse_date(text) for text in ("٢٠٢٦-01-01", "2026-02-30", "20260101", "", GIANT)] == [None] * 5


# --- the JSON API --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def holder(live_server):
    return Holder(live_server, balance_fen=50000, legacy_fen=500)


def _refused(answer, code=None):
    """A 4xx in the API's error shape (a path a route cannot even match is a JSON 404)."""
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    body = answer.json()
    assert body["message"] == "%s / %s" % (body["message_zh"], body["message_en"])
    if code is not None:
        assert body["error"] == code, body


ACCOUNT_ROUTES = [("GET", "balance"), ("GET", "transactions"), ("GET", "limits"), ("GET", "recharge-orders/R1"),
                  ("POST", "recharge-orders"), ("POST", "report-loss"), ("POST", "unfreeze"), ("POST", "pin"),
                  ("PUT", "limits"), ("POST", "electricity")]


@pytest.mark.parametrize("method, tail", ACCOUNT_ROUTES)
def test_account_ids_in_api_paths_are_bounded(live_server, holder, method, tail):
    conn = live_server.connect()
    before = database_snapshot(conn)
    for text in BAD_TEXTS:
        answer = holder.http.request(method, "/api/v1/accounts/%s/%s" % (text, tail), json={})
        _refused(answer, "bad_id" if text.strip() else None)
    assert database_snapshot(conn) == before
    conn.close()
    if method == "GET" and tail != "recharge-orders/R1":    # the holder's own id typed in full width
        answer = holder.http.get("/api/v1/accounts/%s/%s" % (full_width(holder.account_id), tail))
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("name", ["page", "page_size"])
def test_statement_paging_is_bounded(holder, name):
    for text in BAD_TEXTS + [str(numbers.MAX_PAGE + 1)]:
        _refused(holder.http.get(holder.url("transactions"), params={name: text}), "bad_page")
    _refused(holder.http.get(holder.url("transactions"), params={"page_size": "101"}), "bad_page")
    answer = holder.http.get(holder.url("transactions"), params={name: "２"})
    assert answer.status_code == 200 and answer.json()[name] == 2


def test_statement_dates_take_full_width_digits_only(holder):
    for text in ("٢٠٢٦-01-01", "２٠٢６-01-01", "2026-1-1", GIANT):
        _refused(holder.http.get(holder.url("transactions"), params={"from": text, "to": "2026-01-02"}), "bad_date")
    answer = holder.http.get(holder.url("transactions"), params={"from": "２０２６－０１－０１", "to": "2026-01-02"})
    assert answer.status_code == 200 and answer.json()["from_date"] == "2026-01-01", answer.text


def _bodies(holder):
    """(tail, method, a body the service accepts, the number fields in it)."""
    return [("recharge-orders", "POST", {"amount_fen": 1000, "channel": "alipay"}, ["amount_fen"]),
            ("limits", "PUT", {"pin": holder.pin, "single_limit_fen": 5000, "daily_limit_fen": 20000},
             ["single_limit_fen", "daily_limit_fen"]),
            ("electricity", "POST", {"pin": holder.pin, "building": "A1", "floor": 3, "room": "301", "amount_fen": 100},
             ["floor", "amount_fen"])]


def test_numbers_in_json_bodies_are_bounded_and_change_nothing(live_server, holder):
    conn = live_server.connect()
    before = database_snapshot(conn)
    for tail, method, body, fields in _bodies(holder):
        for field in fields:
            for value in BAD_JSON:
                _refused(holder.http.request(method, holder.url(tail), json=dict(body, **{field: value})))
    # a number too long for Python's int() in JSON, and an exponent far out of range
    for raw in (b'{"amount_fen": ' + b"9" * 5000 + b', "channel": "alipay"}', b'{"amount_fen": 1e999, "channel": "alipay"}'):
        _refused(holder.http.post(holder.url("recharge-orders"), content=raw,
                                  headers={"Content-Type": "application/json"}))
    assert database_snapshot(conn) == before
    conn.close()


# --- the pages -----------------------------------------------------------------------------------

def _csrf(page):
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _form_key(page):
    return re.search(r'name="form_key" value="([^"]+)"', page).group(1)


@pytest.fixture(scope="module")
def clerk(live_server):
    conn = live_server.connect()
    auth.add_staff_user(conn, "numbers-clerk", "柜员", ["hall", "finance"], "clerk-password-1")
    conn.close()
    client = httpx.Client(base_url=live_server.url, timeout=60)
    page = client.get("/hall/sign-in").text
    answer = client.post("/hall/sign-in", data={"csrf_token": _csrf(page), "username": "numbers-clerk",
                                                "password": "clerk-password-1"})
    assert answer.status_code == 302, answer.text
    return client


@pytest.mark.parametrize("method, template", [("GET", "/hall/person/%s"), ("GET", "/hall/receipt/%s"),
                                              ("POST", "/hall/person/%s/recharge"),
                                              ("POST", "/hall/person/%s/report-loss")])
def test_ids_in_hall_paths_are_bounded(live_server, clerk, holder, method, template):
    conn = live_server.connect()
    before = database_snapshot(conn)
    for text in BAD_TEXTS:
        answer = clerk.request(method, template % text)
        assert 400 <= answer.status_code < 500, (text[:20], answer.status_code)
        if text.strip():
            assert answer.text.startswith("编号无效") and "invalid id" in answer.text
    assert database_snapshot(conn) == before
    conn.close()
    if template == "/hall/person/%s":
        answer = clerk.get(template % full_width(holder.person_id))
        assert answer.status_code == 200 and holder.name in answer.text


def test_hall_search_never_fails_on_numbers(clerk, holder):
    for text in BAD_TEXTS[:-1]:
        answer = clerk.get("/hall/", params={"q": text})
        assert answer.status_code == 200, (text, answer.status_code)
    answer = clerk.get("/hall/", params={"q": GIANT})
    assert answer.status_code == 400 and "查询内容过长" in answer.text
    answer = clerk.get("/hall/", params={"q": full_width(holder.card_number)})   # card number typed in full width
    assert answer.status_code == 200 and holder.name in answer.text


def test_hall_cash_recharge_reads_yuan_in_full_width_only(live_server, clerk, holder):
    person = "/hall/person/%d" % holder.person_id
    conn = live_server.connect()
    before = database_snapshot(conn)
    for text, message in [("١٢", "请输入充值金额"), ("1e3", "请输入充值金额"), ("-1", "请输入充值金额"),
                          (str(2 ** 64), "请输入充值金额"), ("", "请输入充值金额"), (GIANT, "请输入充值金额"),
                          ("12.345", "请输入充值金额"), ("1000000.01", "超过现金充值单笔上限")]:
        page = clerk.get(person).text
        answer = clerk.post(person + "/recharge", data={"csrf_token": _csrf(page), "form_key": _form_key(page),
                                                        "amount_yuan": text}, follow_redirects=True)
        assert answer.status_code == 200 and message in answer.text, text[:20]
    assert database_snapshot(conn) == before
    conn.close()
    start_fen = holder.balance()["wallets"]["main"]
    page = clerk.get(person).text
    confirm = clerk.post(person + "/recharge", data={"csrf_token": _csrf(page), "form_key": _form_key(page),
                                                     "amount_yuan": "１２．５"})
    assert confirm.status_code == 200 and 'id="confirm-amount"><strong>12.50<' in confirm.text
    assert holder.balance()["wallets"]["main"] == start_fen           # the confirmation page books nothing
    answer = clerk.post(person + "/recharge/confirm", data={"csrf_token": _csrf(confirm.text), "step": "book",
                                                            "form_key": _form_key(confirm.text),
                                                            "amount_yuan": "12.50", "wallet": "main"})
    assert answer.status_code == 302 and "/hall/receipt/" in answer.headers["Location"]
    assert holder.balance()["wallets"]["main"] == start_fen + 1250


@pytest.fixture(scope="module")
def portal(live_server, holder):
    client = httpx.Client(base_url=live_server.url, timeout=60)
    page = client.get("/portal/sign-in").text
    answer = client.post("/portal/sign-in", data={"csrf_token": _csrf(page), "staff_number": holder.staff_number,
                                                  "pin": holder.pin})
    assert answer.status_code == 302, answer.text
    return client


def test_portal_statement_page_is_bounded(portal):
    for text in BAD_TEXTS:
        answer = portal.get("/portal/transactions", params={"page": text})
        assert answer.status_code == 400 and "页码无效" in answer.text, text[:20]
    assert portal.get("/portal/transactions", params={"page": "１"}).status_code == 200
    for text in ("٢٠٢٦-01-01", GIANT):     # a date that is no date falls back to the default range
        assert portal.get("/portal/transactions", params={"start": text}).status_code == 200


def test_portal_forms_refuse_other_digits_and_change_nothing(live_server, portal):
    conn = live_server.connect()
    before = database_snapshot(conn)
    for text in ["١٢", "²", "1e3", "-1", str(2 ** 64), "", GIANT]:
        page = portal.get("/portal/electricity").text
        answer = portal.post("/portal/electricity", follow_redirects=True, data={
            "csrf_token": _csrf(page), "form_key": _form_key(page), "building": "A1", "floor": text, "room": "301",
            "amount_yuan": "1", "pin": "000000"})
        assert answer.status_code == 200 and "楼栋、楼层或房间号无效" in answer.text, text[:20]
        page = portal.get("/portal/limits").text
        answer = portal.post("/portal/limits", follow_redirects=True, data={
            "csrf_token": _csrf(page), "single_yuan": text, "daily_yuan": "100", "pin": "000000"})
        assert answer.status_code == 200 and "请输入金额" in answer.text, text[:20]
    assert database_snapshot(conn) == before
    conn.close()


def test_finance_days_that_are_no_dates_are_not_found(clerk):
    for text in [text for text in BAD_TEXTS if text] + ["٢٠٢٦-01-01", "99999-01-01"]:
        for tail in ("", ".json", ".xlsx", "/merchants.csv"):
            answer = clerk.get("/finance/%s%s" % (text, tail))
            assert 400 <= answer.status_code < 500, (text[:20], tail, answer.status_code)


# --- the terminal API's headers ------------------------------------------------------------------

@pytest.mark.parametrize("header, spelling", [(protocol.HEADER_TERMINAL, "+%d"), (protocol.HEADER_TERMINAL, "%d_"),
                                              (protocol.HEADER_COUNTER, "+%d"), (protocol.HEADER_COUNTER, "0%d_0")])
def test_terminal_headers_are_plain_bounded_digits(live_server, header, spelling):
    """A correctly signed request whose id or counter is spelled other than in plain digits is
    refused before anything is read (int() took a sign, an underscore and any length)."""
    terminal = live_server.add_terminal()
    terminal.counter += 1
    body = terminal.body()
    headers = protocol.auth_headers(terminal.sam, "POST", protocol.SYNC_PATH, terminal.terminal_id, terminal.counter, body)
    value = terminal.terminal_id if header == protocol.HEADER_TERMINAL else terminal.counter
    headers.update({header: spelling % value, "Content-Type": protocol.CONTENT_TYPE})
    answer = terminal.http.post(protocol.SYNC_PATH, content=body, headers=headers)
    assert answer.status_code == 401 and cbor2.loads(answer.content)["error"] == "bad_auth"
    assert terminal.sync()["acked_seq"] == 0      # the terminal itself is not harmed
