"""The cardholder JSON API (/api/v1) over HTTP against the real server process.

Every operation and every refusal the manuals and issue 4 name: binding, another person's account,
recharge through channels (duplicate, out-of-order and forged notifications), the statement query,
loss and unfreeze with their PIN rules, PIN change and lockout, limits reaching terminals, dorm
electricity, and a reissue whose old card terminals refuse.
"""
import concurrent.futures
import functools
import itertools

import httpx
import pytest

from conftest import database_snapshot
from server_process import running_server
from firmware.core import card_layout, protocol
from simulators import pay_gateways
from sync_server import db as dbmod, ledger, pin_rules, registry
from sync_server.ledger_store import SqliteStore, REASON_LOST, REASON_REPLACED
from sync_server.services import binding, cards

_serial = itertools.count(1)


class Holder:
    """A cardholder with an account, a card and a phone app signed in (bearer token)."""

    def __init__(self, server, balance_fen=0, legacy_fen=0, with_card=True):
        n = next(_serial)
        self.name = "测试%d号" % n
        self.staff_number = "T%05d" % n
        self.id_number = "1101011990010%04dX" % n
        self.pin = pin_rules.initial_pin(self.id_number, self.staff_number)
        conn = server.connect()
        try:
            self.person_id, self.account_id = registry.add_person(conn, self.name, card_layout.HOLDER_STUDENT,
                                                                  id_number=self.id_number,
                                                                  staff_number=self.staff_number)
            self.card_number = None
            if with_card:
                identity, _ = registry.issue_card_record(conn, self.account_id,
                                                         bytes([0x10, n >> 8 & 0xFF, n & 0xFF, 1]))
                self.card_number = identity.card_number
            if balance_fen:
                registry.recharge(conn, self.account_id, balance_fen)
            if legacy_fen:
                registry.recharge(conn, self.account_id, legacy_fen, wallet=protocol.WALLET_LEGACY,
                                  channel=dbmod.LEDGER_LEGACY_SOURCE)  # old-system balance, as migrated
        finally:
            conn.close()
        self.http = httpx.Client(base_url=server.url, timeout=60)
        self.app_user_id = "app-%s" % self.staff_number
        answer = self.http.post("/api/v1/bind", json=self.bind_request())
        assert answer.status_code == 200, answer.text
        assert answer.json()["account_id"] == self.account_id
        self.phone_id = answer.json()["phone_id"]
        self.http.headers["Authorization"] = "Bearer " + answer.json()["token"]

    def bind_request(self, **changes):
        return dict({"app_user_id": self.app_user_id, "name": self.name, "staff_number": self.staff_number,
                     "pin": self.pin}, **changes)

    def url(self, tail, account_id=None):
        return "/api/v1/accounts/%d/%s" % (account_id or self.account_id, tail)

    def balance(self):
        answer = self.http.get(self.url("balance"))
        assert answer.status_code == 200, answer.text
        return answer.json()


def _card_status(server, card_number):
    conn = server.connect()
    try:
        return [row[0] for row in conn.execute("SELECT status FROM cards WHERE card_number = ? ORDER BY generation",
                                               (card_number,))]
    finally:
        conn.close()


def _deny_entries(terminal, card_number, generation=1):
    answer = terminal.sync([])
    ref = protocol.card_deny_ref(card_number, generation)
    return [(entry[2], entry[3]) for entry in answer["deny"]["entries"] if entry[0] == protocol.DENY_CARD
            and entry[1] == ref]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, module_database, gateways):
    """This module's server (on each selected store), with the sandboxes configured as its channels."""
    data_dir = tmp_path_factory.mktemp("server")
    gateways.install(data_dir)
    with running_server(data_dir, database=module_database) as server:
        yield server


def _error(answer, status, code):
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == code and body["message_zh"] and body["message_en"]
    return body


# --- binding and scoping -------------------------------------------------------------------------

def _client_from(server, address):
    """An HTTP client whose connections come from another loopback address (another guesser)."""
    return httpx.Client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(local_address=address))


def _pin_failures(server, account_id):
    conn = server.connect()
    try:
        return conn.execute("SELECT pin_failures, pin_locked_until_ms > 0 FROM accounts WHERE id = ?",
                            (account_id,)).fetchone()
    finally:
        conn.close()


def test_binding_without_the_card_pin_is_refused(live_server):
    holder = Holder(live_server)
    http = httpx.Client(base_url=live_server.url, timeout=60)
    conn = live_server.connect()
    try:
        app_users_before = conn.execute("SELECT count(*) FROM app_users").fetchone()[0]
    finally:
        conn.close()
    no_pin = holder.bind_request(app_user_id="no-pin-phone")
    del no_pin["pin"]
    for request in (no_pin, holder.bind_request(app_user_id="no-pin-phone", pin=""),
                    holder.bind_request(app_user_id="no-pin-phone", pin=None)):
        _error(http.post("/api/v1/bind", json=request), 400, "pin_required")
    conn = live_server.connect()
    try:
        assert conn.execute("SELECT count(*) FROM app_users").fetchone()[0] == app_users_before
    finally:
        conn.close()
    _error(http.get(holder.url("balance")), 401, "bad_token")


def test_a_wrong_pin_at_binding_counts_towards_the_cards_lockout(live_server):
    holder = Holder(live_server)
    http = _client_from(live_server, "127.0.0.3")
    wrong = holder.bind_request(app_user_id="pin-guesser", pin="000000")
    for attempt in range(1, pin_rules.MAX_PIN_FAILURES):
        _error(http.post("/api/v1/bind", json=wrong), 403, "pin_wrong")
        assert _pin_failures(live_server, holder.account_id) == (attempt, 0)
    _error(http.post("/api/v1/bind", json=wrong), 423, "pin_locked")
    assert _pin_failures(live_server, holder.account_id)[1] == 1
    # the card's one lockout: the right PIN is refused for binding and for signing in alike
    _error(http.post("/api/v1/bind", json=holder.bind_request(app_user_id="pin-guesser")), 423, "pin_locked")
    _error(holder.http.post("/api/v1/sign-in", json={"app_user_id": "kiosk", "staff_number": holder.staff_number,
                                                     "pin": holder.pin}), 423, "pin_locked")


def test_a_strangers_guesses_throttle_the_stranger_not_the_holder(live_server):
    holder = Holder(live_server)
    stranger = _client_from(live_server, "127.0.0.2")
    conn = live_server.connect()
    try:
        app_users_before = conn.execute("SELECT count(*) FROM app_users").fetchone()[0]
        wrong = holder.bind_request(app_user_id="stranger", name="别人")
        for _ in range(binding.MAX_BIND_FAILURES - 1):
            _error(stranger.post("/api/v1/bind", json=wrong), 403, "bind_failed")
        _error(stranger.post("/api/v1/bind", json=wrong), 423, "bind_locked")
        # a new app user id per guess: the stranger's address is counted too
        guesses = itertools.count()
        while True:
            index = next(guesses)
            assert index < binding.MAX_BIND_FAILURES_PER_ADDRESS, "the address is never throttled"
            guess = holder.bind_request(app_user_id="rotating-%d" % index, name="猜%d" % index) if index % 2 else \
                {"app_user_id": "rotating-%d" % index, "name": "某人", "staff_number": "NO%06d" % index, "pin": "123456"}
            answer = stranger.post("/api/v1/bind", json=guess)
            if answer.status_code == 423:
                break
            _error(answer, 403, "bind_failed")
        _error(stranger.post("/api/v1/bind", json=holder.bind_request(app_user_id="stranger-right")), 423, "bind_locked")
        assert conn.execute("SELECT count(*) FROM app_users").fetchone()[0] == app_users_before
        assert _pin_failures(live_server, holder.account_id) == (0, 0)     # no PIN was tried for a wrong pair
    finally:
        conn.close()
    # the holder, from their own phone, binds at once with the right name, number and PIN
    answer = httpx.post(live_server.url + "/api/v1/bind", json=holder.bind_request(app_user_id="holders-new-phone"),
                        timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["account_id"] == holder.account_id
    assert holder.http.get("/api/v1/me").json()["account_id"] == holder.account_id   # bound apps keep working


def _phones(holder):
    answer = holder.http.get("/api/v1/phones")
    assert answer.status_code == 200, answer.text
    return answer.json()["phones"]


def test_the_holder_lists_and_removes_their_own_phones_only(live_server):
    alice, bob = Holder(live_server), Holder(live_server)
    second = httpx.post(live_server.url + "/api/v1/bind", json=alice.bind_request(app_user_id="alice-tablet"),
                        timeout=60).json()
    listed = _phones(alice)
    assert sorted(phone["phone_id"] for phone in listed) == sorted([alice.phone_id, second["phone_id"]])
    assert [phone["this_phone"] for phone in listed if phone["phone_id"] == alice.phone_id] == [True]
    assert all(phone["bound_ms"] and phone["last_used_ms"] for phone in listed)
    assert "alice-tablet" not in str(listed) and bob.phone_id not in str(listed)
    assert [phone["phone_id"] for phone in _phones(bob)] == [bob.phone_id]

    tablet = httpx.Client(base_url=live_server.url, timeout=60,
                          headers={"Authorization": "Bearer " + second["token"]})
    assert tablet.get("/api/v1/me").status_code == 200
    assert alice.http.delete("/api/v1/phones/" + second["phone_id"]).json() == {"ok": True}
    _error(tablet.get("/api/v1/me"), 401, "bad_token")                     # the removed phone's token ends at once
    _error(tablet.get(alice.url("balance")), 401, "bad_token")
    assert [phone["phone_id"] for phone in _phones(alice)] == [alice.phone_id]
    _error(alice.http.delete("/api/v1/phones/" + second["phone_id"]), 404, "phone_unknown")   # gone already


def test_another_holders_phone_cannot_be_removed_and_looks_unknown(live_server):
    alice, bob = Holder(live_server), Holder(live_server)
    conn = live_server.connect()
    try:
        before = database_snapshot(conn)
    finally:
        conn.close()
    bobs = _error(alice.http.delete("/api/v1/phones/" + bob.phone_id), 404, "phone_unknown")
    made_up = _error(alice.http.delete("/api/v1/phones/" + "x" * 16), 404, "phone_unknown")
    assert bobs == made_up                                                  # nothing tells the two apart
    _error(httpx.delete(live_server.url + "/api/v1/phones/" + bob.phone_id, timeout=60), 401, "bad_token")
    conn = live_server.connect()
    try:
        assert database_snapshot(conn) == before
    finally:
        conn.close()
    assert bob.http.get("/api/v1/me").status_code == 200
    assert [phone["phone_id"] for phone in _phones(bob)] == [bob.phone_id]


def test_another_persons_account_is_refused_everywhere(live_server):
    alice, bob = Holder(live_server, balance_fen=5000), Holder(live_server, balance_fen=7000)
    bob_before = bob.balance()
    attempts = [
        ("get", "balance", None), ("get", "transactions", None), ("get", "limits", None),
        ("post", "recharge-orders", {"amount_fen": 100, "channel": "alipay"}),
        ("post", "report-loss", {"pin": bob.pin}), ("post", "unfreeze", {"pin": bob.pin}),
        ("post", "pin", {"old_pin": bob.pin, "new_pin": "135790"}),
        ("put", "limits", {"pin": bob.pin, "single_limit_fen": 100, "daily_limit_fen": 100}),
        ("post", "electricity", {"pin": bob.pin, "building": "南1", "floor": 1, "room": "101", "amount_fen": 100}),
    ]
    for method, tail, body in attempts:
        answer = getattr(alice.http, method)(alice.url(tail, bob.account_id), **({"json": body} if body else {}))
        body = _error(answer, 403, "not_yours")
        assert bob.name not in answer.text and str(bob_before["total_fen"]) not in answer.text
    order = bob.http.post(bob.url("recharge-orders"), json={"amount_fen": 100, "channel": "wechat"}).json()
    _error(alice.http.get(alice.url("recharge-orders/%s" % order["order_id"], bob.account_id)), 403, "not_yours")
    _error(alice.http.get(alice.url("recharge-orders/%s" % order["order_id"])), 404, "unknown_order")
    assert bob.balance() == bob_before
    assert _card_status(live_server, bob.card_number) == ["active"]


# --- recharge ------------------------------------------------------------------------------------

def _refused(answer, status, code):
    """A notice refused: the status, our X-Ykt-Error, and the channel's own failure answer."""
    assert answer.status == status and answer.error == code, answer
    assert not answer.accepted and (answer.text in ("fail", "FAIL") or '"FAIL"' in answer.text), answer


def test_channel_recharge_credits_each_order_once_in_any_order(live_server, gateways):
    holder = Holder(live_server)
    first = holder.http.post(holder.url("recharge-orders"), json={"amount_fen": 5000, "channel": "alipay"})
    second = holder.http.post(holder.url("recharge-orders"), json={"amount_fen": 2000, "channel": "alipay"})
    assert first.status_code == second.status_code == 201
    first, second = first.json(), second.json()
    assert first["status"] == "pending" and first["order_id"] != second["order_id"]
    assert first["pay"]["url"].startswith("https://openapi.alipay.com/gateway.do?")
    assert gateways.alipay.check_request(first["pay"])[:2] == (first["order_id"], 5000)   # signed with our app key

    # the channel closes the second order, then delivers the first one's payment four times at once
    answer = gateways.post(live_server.url, gateways.notice(second, "closed"))
    assert answer.accepted and answer.text == "success" and answer.outcome == "closed"
    delivery = gateways.notice(first, "paid")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: gateways.post(live_server.url, delivery), range(4)))
    assert sorted(answer.outcome for answer in answers) == ["credited", "duplicate", "duplicate", "duplicate"]
    assert all(answer.accepted for answer in answers)
    assert holder.balance()["wallets"]["main"] == 5000
    # a payment after the close still reaches the cardholder (the channel took the money) - once
    assert gateways.post(live_server.url, gateways.notice(second, "paid")).outcome == "credited"
    assert gateways.post(live_server.url, gateways.notice(second, "closed")).outcome == "ignored"
    assert holder.balance()["wallets"]["main"] == 7000
    paid = holder.http.get(holder.url("recharge-orders/%s" % second["order_id"])).json()
    assert paid["status"] == "paid" and "pay" not in paid

    conn = live_server.connect()
    try:
        transfers = conn.execute("SELECT t.amount_fen, c.name FROM transfers t JOIN recharge_channels c "
                                 "ON c.ledger_account_id = t.debit_id WHERE t.id IN (?, ?)",
                                 ("o/" + first["order_id"], "o/" + second["order_id"])).fetchall()
        assert sorted(transfers) == [(2000, "alipay"), (5000, "alipay")]
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()


def test_forged_or_wrong_notifications_change_nothing_and_are_logged(live_server, gateways):
    holder = Holder(live_server)
    order = holder.http.post(holder.url("recharge-orders"), json={"amount_fen": 3000, "channel": "wechat"}).json()
    assert order["pay"]["body"]["amount"] == {"total": 3000, "currency": "CNY"}
    forger = pay_gateways.PayGateways()
    conn = live_server.connect()
    try:
        before = conn.execute("SELECT count(*) FROM transfers").fetchone()[0]
        logged_before = conn.execute("SELECT max(id) FROM channel_notifications").fetchone()[0] or 0
        _refused(gateways.post(live_server.url, gateways.notice(order, signed_by=forger)), 401, "bad_signature")
        genuine = gateways.notice(order)
        _refused(gateways.post(live_server.url, genuine._replace(headers={"Content-Type": "application/json"})), 401,
                 "bad_signature")
        _refused(gateways.post(live_server.url, genuine._replace(channel="alipay")), 400, "bad_notification")
        _refused(gateways.post(live_server.url, gateways.notice(order, amount_fen=300000)), 409, "amount_mismatch")
        _refused(gateways.post(live_server.url, gateways.notice(dict(order, order_id="R404"))), 404, "unknown_order")
        _error(httpx.post(live_server.url + "/api/v1/channels/paypal/notify", content=genuine.body,
                          headers=genuine.headers, timeout=60), 404, "unknown_channel")
        assert conn.execute("SELECT count(*) FROM transfers").fetchone()[0] == before
        assert holder.balance()["wallets"]["main"] == 0
        logged = [row[0] for row in conn.execute("SELECT outcome FROM channel_notifications WHERE id > ? ORDER BY id",
                                                 (logged_before,))]
        assert logged == ["bad_signature", "bad_signature", "malformed", "amount_mismatch", "unknown_order"]
        assert "bad_signature" in live_server.log()
    finally:
        conn.close()
    _error(holder.http.post(holder.url("recharge-orders"), json={"amount_fen": 0, "channel": "wechat"}), 400,
           "bad_amount")
    _error(holder.http.post(holder.url("recharge-orders"), json={"amount_fen": 100, "channel": "bitcoin"}), 404,
           "unknown_channel")


# --- statements ----------------------------------------------------------------------------------

def test_transaction_query_by_type_date_and_page(live_server):
    holder = Holder(live_server, balance_fen=10000)
    terminal = live_server.add_terminal()
    terminal.sync([terminal.record(holder.account_id, holder.card_number, 450, tap_counter=n) for n in (1, 2, 3)])
    _list_rooms(live_server, "南2,3,305")
    paid = holder.http.post(holder.url("electricity"), json={"pin": holder.pin, "building": "南2", "floor": 3,
                                                             "room": "305", "amount_fen": 1200})
    assert paid.status_code == 200, paid.text

    everything = holder.http.get(holder.url("transactions"), params={"page_size": 2}).json()
    assert everything["total_rows"] == 5 and everything["total_pages"] == 3 and len(everything["rows"]) == 2
    newest = everything["rows"][0]
    assert newest["place_zh"] == "学生公寓电费" and newest["amount_fen"] == -1200
    assert newest["balance_fen_after"] == 10000 - 3 * 450 - 1200 == holder.balance()["total_fen"]
    last_page = holder.http.get(holder.url("transactions"), params={"page_size": 2, "page": 3}).json()
    assert [row["amount_fen"] for row in last_page["rows"]] == [10000]
    assert last_page["rows"][0]["place_zh"] == "服务大厅现金" and last_page["rows"][0]["balance_fen_after"] == 10000

    consumption = holder.http.get(holder.url("transactions"), params={"type": "consumption"}).json()
    assert [row["amount_fen"] for row in consumption["rows"]] == [-1200, -450, -450, -450]
    assert {row["place_en"] for row in consumption["rows"]} == {"dorm electricity", "test window"}
    assert [row["balance_fen_after"] for row in consumption["rows"]] == [7450, 8650, 9100, 9550]
    recharges = holder.http.get(holder.url("transactions"), params={"type": "recharge"}).json()
    assert [row["amount_fen"] for row in recharges["rows"]] == [10000]
    old = holder.http.get(holder.url("transactions"), params={"from": "2020-01-01", "to": "2020-01-31"}).json()
    assert old["rows"] == [] and old["total_pages"] == 1
    _error(holder.http.get(holder.url("transactions"), params={"from": "2020-02-30"}), 400, "bad_date")
    _error(holder.http.get(holder.url("transactions"), params={"type": "gifts"}), 400, "bad_kind")
    _error(holder.http.get(holder.url("transactions"), params={"page_size": 1000}), 400, "bad_page")


# --- loss, unfreeze, PIN -------------------------------------------------------------------------

def test_report_loss_needs_the_pin_and_terminals_deny_the_card(live_server):
    holder = Holder(live_server, balance_fen=2000)
    terminal = live_server.add_terminal()
    _error(holder.http.post(holder.url("report-loss"), json={"pin": "000000"}), 403, "pin_wrong")
    _error(holder.http.post(holder.url("report-loss"), json={"pin": "12ab"}), 400, "pin_format")
    assert _card_status(live_server, holder.card_number) == ["active"]
    assert _deny_entries(terminal, holder.card_number) == []

    answer = holder.http.post(holder.url("report-loss"), json={"pin": holder.pin})
    assert answer.status_code == 200 and answer.json()["card_number"] == holder.card_number
    assert _card_status(live_server, holder.card_number) == ["lost"]
    assert _deny_entries(terminal, holder.card_number) == [(True, REASON_LOST)]
    _error(holder.http.post(holder.url("report-loss"), json={"pin": holder.pin}), 409, "already_lost")
    assert holder.balance()["wallets"]["main"] == 2000     # the money stays with the account


def test_unfreeze_only_after_the_pin_was_changed(live_server):
    holder = Holder(live_server)
    terminal = live_server.add_terminal()
    _error(holder.http.post(holder.url("unfreeze"), json={"pin": holder.pin}), 409, "not_lost")
    assert holder.http.post(holder.url("report-loss"), json={"pin": holder.pin}).status_code == 200
    body = _error(holder.http.post(holder.url("unfreeze"), json={"pin": holder.pin}), 403, "initial_pin_unfreeze")
    assert "服务大厅" in body["message_zh"]
    assert _card_status(live_server, holder.card_number) == ["lost"]

    _error(holder.http.post(holder.url("pin"), json={"old_pin": "999999", "new_pin": "864213"}), 403, "pin_wrong")
    _error(holder.http.post(holder.url("pin"), json={"old_pin": holder.pin, "new_pin": "8642"}), 400, "pin_format")
    _error(holder.http.post(holder.url("pin"), json={"old_pin": holder.pin, "new_pin": "864213",
                                                     "confirm_pin": "864214"}), 400, "pin_mismatch")
    assert holder.http.post(holder.url("pin"), json={"old_pin": holder.pin, "new_pin": "864213"}).status_code == 200
    _error(holder.http.post(holder.url("unfreeze"), json={"pin": holder.pin}), 403, "pin_wrong")   # old PIN gone
    answer = holder.http.post(holder.url("unfreeze"), json={"pin": "864213"})
    assert answer.status_code == 200, answer.text
    assert _card_status(live_server, holder.card_number) == ["active"]
    assert _deny_entries(terminal, holder.card_number)[-1][0] is False     # the deny entry is lifted


def test_wrong_pins_lock_the_account_out(live_server):
    holder = Holder(live_server)
    for _ in range(pin_rules.MAX_PIN_FAILURES - 1):
        _error(holder.http.post(holder.url("report-loss"), json={"pin": "000001"}), 403, "pin_wrong")
    _error(holder.http.post(holder.url("report-loss"), json={"pin": "000001"}), 423, "pin_locked")
    _error(holder.http.post(holder.url("report-loss"), json={"pin": holder.pin}), 423, "pin_locked")
    _error(holder.http.post("/api/v1/sign-in", json={"app_user_id": "kiosk-1", "staff_number": holder.staff_number,
                                                     "pin": holder.pin}), 423, "pin_locked")
    assert _card_status(live_server, holder.card_number) == ["active"]


def test_kiosk_sign_in_with_staff_number_and_pin(live_server):
    holder = Holder(live_server, balance_fen=1234)
    http = httpx.Client(base_url=live_server.url, timeout=60)
    _error(http.post("/api/v1/sign-in", json={"app_user_id": "kiosk-7", "staff_number": "NOBODY", "pin": "123456"}),
           403, "pin_wrong")
    answer = http.post("/api/v1/sign-in", json={"app_user_id": "kiosk-7", "staff_number": holder.staff_number,
                                                "pin": holder.pin})
    assert answer.status_code == 200
    http.headers["Authorization"] = "Bearer " + answer.json()["token"]
    assert http.get(holder.url("balance")).json()["wallets"]["main"] == 1234
    assert http.post("/api/v1/sign-out").status_code == 200
    _error(http.get(holder.url("balance")), 401, "bad_token")


# --- limits and electricity ----------------------------------------------------------------------

def test_limits_reach_the_terminals(live_server):
    holder = Holder(live_server)
    terminal = live_server.add_terminal()
    version = terminal.sync([])["balances"]["version"]
    _error(holder.http.put(holder.url("limits"), json={"pin": "000000", "single_limit_fen": 2000,
                                                       "daily_limit_fen": 9000}), 403, "pin_wrong")
    _error(holder.http.put(holder.url("limits"), json={"pin": holder.pin, "single_limit_fen": 9000,
                                                       "daily_limit_fen": 2000}), 400, "bad_limits")
    answer = holder.http.put(holder.url("limits"), json={"pin": holder.pin, "single_limit_fen": 2000,
                                                         "daily_limit_fen": 9000})
    assert answer.json() == {"single_limit_fen": 2000, "daily_limit_fen": 9000}
    assert holder.http.get(holder.url("limits")).json() == answer.json()
    rows = terminal.sync([], balance_version=version)["balances"]["rows"]
    mine = [row for row in rows if row[0] == holder.account_id]
    assert mine and all(row[4:6] == [2000, 9000] for row in mine)


def _list_rooms(server, *lines):
    """Put rooms on the service hall's list ("楼栋,楼层,房间"): a payment must name a listed room."""
    from sync_server.services import electricity
    conn = server.connect()
    try:
        electricity.import_rooms(conn, "楼栋,楼层,房间,电表号\n" + "".join(line + ",\n" for line in lines))
    finally:
        conn.close()


def test_electricity_draws_legacy_first_and_refuses_a_shortfall(live_server):
    holder = Holder(live_server, balance_fen=5000, legacy_fen=500)
    _list_rooms(live_server, "南1,4,402")
    request = {"pin": holder.pin, "building": "南1", "floor": 4, "room": "402", "amount_fen": 800}
    answer = holder.http.post(holder.url("electricity"), json=request)
    assert answer.status_code == 200, answer.text
    assert answer.json()["parts"] == [["legacy", 500], ["main", 300]]
    assert holder.balance()["wallets"] == {"main": 4700, "water": 0, "legacy": 0}
    _error(holder.http.post(holder.url("electricity"), json=dict(request, amount_fen=4701)), 409,
           "insufficient_funds")
    _error(holder.http.post(holder.url("electricity"), json=dict(request, room="4'; --")), 400, "bad_room")
    _error(holder.http.post(holder.url("electricity"), json=dict(request, room="499")), 404, "unknown_room")
    _error(holder.http.post(holder.url("electricity"), json=dict(request, pin="111111")), 403, "pin_wrong")
    assert holder.balance()["wallets"]["main"] == 4700


def test_a_double_submitted_electricity_payment_is_booked_once(live_server):
    """The app sends the same idempotency key with a retried or double-tapped payment: one payment,
    the same receipt for every copy, even when the copies arrive at the same time."""
    holder = Holder(live_server, balance_fen=5000)
    _list_rooms(live_server, "北3,2,215")
    request = {"pin": holder.pin, "building": "北3", "floor": 2, "room": "215", "amount_fen": 1200,
               "idempotency_key": "tap-0b7c2f9e4d1a"}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: holder.http.post(holder.url("electricity"), json=request), range(2)))
    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    assert answers[0].json()["payment_id"] == answers[1].json()["payment_id"]
    assert answers[0].json()["parts"] == answers[1].json()["parts"] == [["main", 1200]]
    again = holder.http.post(holder.url("electricity"), json=request)
    assert again.json()["payment_id"] == answers[0].json()["payment_id"]
    assert holder.balance()["wallets"]["main"] == 3800
    _error(holder.http.post(holder.url("electricity"), json=dict(request, amount_fen=1300)), 409,
           "idempotency_conflict")                           # one key, one payment
    _error(holder.http.post(holder.url("electricity"), json=dict(request, idempotency_key="x")), 400,
           "bad_idempotency_key")
    fresh = holder.http.post(holder.url("electricity"), json=dict(request, idempotency_key="tap-5e6f7a8b9c0d"))
    assert fresh.status_code == 200 and fresh.json()["payment_id"] != answers[0].json()["payment_id"]
    assert holder.balance()["wallets"]["main"] == 2600
    conn = live_server.connect()
    try:
        assert conn.execute("SELECT count(*) FROM electricity_payments WHERE account_id = ?",
                            (holder.account_id,)).fetchone()[0] == 2
    finally:
        conn.close()


# --- reissue -------------------------------------------------------------------------------------

def _fee_income(conn):
    return conn.execute("SELECT balance_fen FROM balances WHERE ledger_account_id = ?",
                        (dbmod.LEDGER_FEE_INCOME,)).fetchone()[0]


def test_reissue_books_the_fee_and_terminals_refuse_the_old_card(live_server):
    holder = Holder(live_server, balance_fen=3000)
    terminal = live_server.add_terminal()
    conn = live_server.connect()
    try:
        fee_income = _fee_income(conn)
        result = cards.reissue(conn, holder.account_id, b"\x77\x66\x55\x44", operator="hall-1")
        assert result["identity"].generation == 2 and result["fee_fen"] == 1000
        assert _fee_income(conn) == fee_income + 1000
        transfer = conn.execute("SELECT debit_id, credit_id, amount_fen, kind FROM transfers WHERE id = ?",
                                (result["fee_transfer_id"],)).fetchone()
        assert transfer[1:] == (dbmod.LEDGER_FEE_INCOME, 1000, "fee")
        with pytest.raises(cards.ServiceError) as refused:
            cards.reissue(conn, holder.account_id, b"\x77\x66\x55\x44", operator="hall-1")
        assert refused.value.code == "uid_in_use"
    finally:
        conn.close()
    assert holder.balance()["wallets"]["main"] == 2000
    assert _card_status(live_server, holder.card_number) == ["replaced", "active"]
    assert _deny_entries(terminal, holder.card_number, generation=1) == [(True, REASON_REPLACED)]
    fee_row = holder.http.get(holder.url("transactions"), params={"type": "consumption"}).json()["rows"][0]
    assert fee_row["place_zh"] == "补卡费" and fee_row["amount_fen"] == -1000
    # the old card reported lost from the app now: it is the new card that gets reported
    answer = holder.http.post(holder.url("report-loss"), json={"pin": holder.pin})
    assert answer.json()["generation"] == 2


def test_reissue_fee_from_an_empty_balance_is_paid_in_cash(live_server):
    holder = Holder(live_server, balance_fen=300)
    conn = live_server.connect()
    try:
        with pytest.raises(cards.ServiceError) as refused:
            cards.reissue(conn, holder.account_id, b"\x70\x71\x72\x73", operator="hall-1")
        assert refused.value.code == "fee_needs_cash" and "现金" in refused.value.zh
        assert _card_status(live_server, holder.card_number) == ["active"]     # nothing changed
        result = cards.reissue(conn, holder.account_id, b"\x70\x71\x72\x73", operator="hall-1", fee_source="cash")
        assert result["balances"]["main"] == 300 and result["fee_source"] == "cash"
    finally:
        conn.close()


def test_a_holder_binds_a_bounded_number_of_phones(live_server):
    holder = Holder(live_server)
    bind = functools.partial(httpx.post, live_server.url + "/api/v1/bind", timeout=60)
    extra = [bind(json=holder.bind_request(app_user_id="spare-%d" % index)).json()
             for index in range(binding.MAX_PHONES_PER_PERSON - 1)]
    assert len(_phones(holder)) == binding.MAX_PHONES_PER_PERSON
    _error(bind(json=holder.bind_request(app_user_id="one-too-many")), 409, "too_many_phones")
    assert holder.http.delete("/api/v1/phones/" + extra[0]["phone_id"]).status_code == 200
    assert bind(json=holder.bind_request(app_user_id="one-too-many")).status_code == 200
    assert bind(json=holder.bind_request(app_user_id="spare-1")).status_code == 200     # a bound phone binds again


def _guess_from(server, holder, forwarded_for, index):
    guess = holder.bind_request(app_user_id="proxied-%s-%d" % (forwarded_for, index), name="猜%d" % index)
    return httpx.post(server.url + "/api/v1/bind", json=guess, headers={"X-Forwarded-For": forwarded_for},
                      timeout=60)


def test_behind_a_proxy_guesses_are_counted_per_forwarded_client(tmp_path, store_environment):
    """With YKT_PROXY_HOPS=1 the proxy's X-Forwarded-For names the guesser, so one client's guesses
    do not throttle everyone else behind the same proxy."""
    with running_server(tmp_path / "server", workers=1, env={"YKT_PROXY_HOPS": "1"}) as server:
        holder = Holder(server)
        for index in range(binding.MAX_BIND_FAILURES_PER_ADDRESS - 1):
            _error(_guess_from(server, holder, "203.0.113.7", index), 403, "bind_failed")
        _error(_guess_from(server, holder, "203.0.113.7", 99), 423, "bind_locked")
        answer = httpx.post(server.url + "/api/v1/bind", headers={"X-Forwarded-For": "198.51.100.20"}, timeout=60,
                            json=holder.bind_request(app_user_id="holder-behind-proxy"))
        assert answer.status_code == 200, answer.text


def test_without_trusted_proxies_a_forwarded_header_does_not_escape_the_throttle(live_server):
    holder = Holder(live_server)
    stranger = _client_from(live_server, "127.0.0.4")
    for index in range(binding.MAX_BIND_FAILURES_PER_ADDRESS + 1):
        guess = holder.bind_request(app_user_id="spoofer-%d" % index, name="猜%d" % index)
        answer = stranger.post("/api/v1/bind", json=guess, headers={"X-Forwarded-For": "192.0.2.%d" % index})
        if answer.status_code == 423:
            break
        _error(answer, 403, "bind_failed")
    _error(answer, 423, "bind_locked")


def test_wrong_pins_say_the_tries_left_then_when_the_lockout_ends(live_server):
    holder = Holder(live_server)
    for tries_left in (4, 3, 2, 1):
        body = _error(holder.http.post(holder.url("report-loss"), json={"pin": "000001"}), 403, "pin_wrong")
        assert body["tries_left"] == tries_left and "还可尝试 %d 次" % tries_left in body["message_zh"]
    assert "then it locks for 30 minutes" in body["message_en"]
    before_ms = dbmod.now_ms()
    answer = holder.http.post(holder.url("report-loss"), json={"pin": "000001"})
    body = _error(answer, 423, "pin_locked")
    assert before_ms + pin_rules.PIN_LOCKOUT_MS <= body["locked_until_ms"] <= dbmod.now_ms() + pin_rules.PIN_LOCKOUT_MS
    assert 1790 <= body["retry_after_s"] <= 1800 and answer.headers["Retry-After"] == str(body["retry_after_s"])
    assert "已锁定，请 30 分钟后" in body["message_zh"] and "tries_left" not in body
    answer = holder.http.post(holder.url("report-loss"), json={"pin": holder.pin})       # right, but locked
    assert _error(answer, 423, "pin_locked")["locked_until_ms"] == body["locked_until_ms"]
    assert _card_status(live_server, holder.card_number) == ["active"]


def test_a_sign_in_with_a_number_nobody_has_counts_down_like_a_real_one(live_server):
    """A new connection each time: whichever server process answers, the count is the same one."""
    nobody = {"app_user_id": "kiosk-9", "staff_number": "NOBODY-%d" % next(_serial), "pin": "802417"}

    def sign_in():
        return httpx.post(live_server.url + "/api/v1/sign-in", json=nobody, timeout=60)
    told = [_error(sign_in(), 403, "pin_wrong")["tries_left"] for _ in range(4)]
    assert told == [4, 3, 2, 1]
    answer = sign_in()
    assert _error(answer, 423, "pin_locked")["retry_after_s"] > 0 and answer.headers["Retry-After"]


def test_a_new_pin_too_easy_to_guess_is_refused_with_the_rule_it_breaks(live_server):
    holder = Holder(live_server)
    for weak, code, rule in (("777777", "pin_weak_same_digit", "同一数字"), ("345678", "pin_weak_run", "连续数字"),
                             ("109876", "pin_weak_run", "连续数字")):
        body = _error(holder.http.post(holder.url("pin"), json={"old_pin": holder.pin, "new_pin": weak}), 400, code)
        assert rule in body["message_zh"]
    assert holder.http.post(holder.url("pin"), json={"old_pin": holder.pin, "new_pin": "802417"}).status_code == 200
    _error(holder.http.post(holder.url("pin"), json={"old_pin": "802417", "new_pin": holder.pin}), 400,
           "pin_weak_initial")
    assert _pin_failures(live_server, holder.account_id) == (0, 0)
    assert holder.http.post(holder.url("report-loss"), json={"pin": "802417"}).status_code == 200
