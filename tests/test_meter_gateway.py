"""The dorm meter gateway (sync_server/meter_gateway.py) against the simulated meter system
(simulators/meter_gateway.py): a payment reaches the meter exactly once.

The payment and its outbox row commit together; the delivery loop sends the row with the payment id
as the gateway's idempotency key. The meter system fails first, answers too slowly, or applies the
credit and loses the answer; a delivery loop (`ykt hall meter-deliver`) is killed after the meter
applied the credit and another resumes it after the lease: each time the meter is credited once, the
outbox holds the reference of that one credit, and the ledger stays balanced. A row out of attempts
or refused by the gateway is flagged for staff and can be queued again. The server's scheduler sends
a phone payment by itself. Each on every store (--store).
"""
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from simulators.meter_gateway import SimulatedMeterSystem
from sync_server import db as dbmod, ledger, meter_gateway, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import electricity

KEY = "meter-shared-key-0123456789"
ROOMS_CSV = "楼栋,楼层,房间,电表号\n南1,1,101,M-0101\n南1,1,102,M-0102\n南2,1,101,\n"
AMOUNT_FEN = 2500


@pytest.fixture
def meters():
    with SimulatedMeterSystem(key=KEY) as system:
        yield system


def _online_rooms(conn):
    electricity.import_rooms(conn, ROOMS_CSV)
    electricity.set_building(conn, "南1", name_zh="南校区南1栋", meter_system="online")


def _holder(conn, balance_fen=10000):
    _person_id, account_id = registry.add_person(conn, "郑小电", 2, staff_number="E%d" % time.monotonic_ns(),
                                                 set_initial_pin=False)
    registry.recharge(conn, account_id, balance_fen)
    return account_id


@pytest.fixture
def site(database_location):
    conn = dbmod.init_db(database_location)
    _online_rooms(conn)
    account_id = _holder(conn)
    yield {"conn": conn, "account_id": account_id}
    conn.close()


def _pay(site, room="101", amount_fen=AMOUNT_FEN):
    paid = electricity.pay(site["conn"], site["account_id"], "南1", 1, room, amount_fen, operator="hall-1")
    assert paid["meter_status"] == "pending"
    return paid["payment_id"]


def _row(conn, payment_id):
    return dbmod.fetch_named(conn, "SELECT status, attempts, next_attempt_ms, gateway_ref, last_error FROM meter_outbox "
                             "WHERE payment_id = ?", (payment_id,))


def _merchant_fen(conn):
    merchant_id = dbmod.setting(conn, "electricity_merchant_id")
    return conn.execute("SELECT b.balance_fen FROM merchants m JOIN balances b ON b.ledger_account_id = "
                        "m.ledger_account_id WHERE m.id = ?", (merchant_id,)).fetchone()[0]


def _credited_once(conn, meters, payment_id, meter_id="M-0101", amount_fen=AMOUNT_FEN):
    """The meter has the payment once, the outbox its one reference, and the money is where it was booked."""
    state = meters.state()
    assert state["applied"].count(payment_id) == 1
    assert meters.credit_of(meter_id) == amount_fen
    row = _row(conn, payment_id)
    assert row["status"] == "delivered" and row["gateway_ref"] == state["payments"][payment_id]["ref"]
    assert ledger.check_balances(SqliteStore(conn)) == []
    assert _merchant_fen(conn) == amount_fen


# --- the configuration and the client -------------------------------------------------------------

def _write_config(data_dir, document, mode=0o600):
    path = meter_gateway.config_path(str(data_dir))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    os.chmod(path, mode)
    return path


def _config(url, timeout_s=2, retries=1):
    return {"gateways": {"south": {"url": url, "key": KEY, "auth": "hmac", "timeout_s": timeout_s,
                                   "retries": retries}}, "buildings": {"南1": "south"}}


def test_the_configuration_is_private_and_checked(tmp_path):
    assert meter_gateway.load_config(str(tmp_path)).gateway_for("南1") is None        # no file: no gateway
    _write_config(tmp_path, _config("http://127.0.0.1:9"), mode=0o644)
    with pytest.raises(meter_gateway.ConfigError, match="chmod 600"):
        meter_gateway.load_config(str(tmp_path))
    path = _write_config(tmp_path, _config("http://127.0.0.1:9"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = meter_gateway.load_config(str(tmp_path))
    assert config.gateway_for("南1").url == "http://127.0.0.1:9" and config.gateway_for("南2") is None
    assert KEY not in repr(config.gateway_for("南1"))
    for broken in ({"gateways": {"south": {"url": "ftp://x", "key": KEY}}},
                   {"gateways": {"south": {"url": "http://x", "key": "short"}}},
                   {"gateways": {"south": {"url": "http://x", "key": KEY, "timeout_s": 600}}},
                   {"gateways": {"south": {"url": "http://x", "key": KEY, "auth": "none"}}},
                   {"gateways": {}, "buildings": {"南1": "north"}}, ["not", "an", "object"]):
        _write_config(tmp_path, broken)
        with pytest.raises(meter_gateway.ConfigError):
            meter_gateway.load_config(str(tmp_path))


def test_the_client_signs_each_credit_and_a_repeat_gets_the_same_reference(meters):
    gateway = meter_gateway.HttpMeterGateway(meters.url, KEY, timeout_s=2, retries=0)
    ref = gateway.credit("M-7", 1000, "E-first", "lighting")
    assert gateway.credit("M-7", 1000, "E-first", "lighting") == ref
    assert meters.credit_of("M-7") == 1000 and meters.state()["requests"] == 2
    with pytest.raises(meter_gateway.GatewayRefused, match="409"):
        gateway.credit("M-7", 1200, "E-first", "lighting")                # one payment id, one credit
    with pytest.raises(meter_gateway.GatewayRefused, match="401"):
        meter_gateway.HttpMeterGateway(meters.url, "another-key-0123456789", retries=0).credit("M-7", 1, "E-x")
    assert gateway.credit("M-7", 300, "E-cool", "aircon") != ref
    assert (meters.credit_of("M-7"), meters.credit_of("M-7", "aircon")) == (1000, 300)
    with SimulatedMeterSystem(key=KEY, auth="bearer") as bearer:
        assert meter_gateway.HttpMeterGateway(bearer.url, KEY, auth="bearer", retries=0).credit("M-8", 5, "E-b")
    closed = meter_gateway.HttpMeterGateway("http://127.0.0.1:9", KEY, timeout_s=0.5, retries=1, retry_pause_s=0.01)
    with pytest.raises(meter_gateway.GatewayError) as unreachable:
        closed.credit("M-7", 1, "E-y")
    assert not isinstance(unreachable.value, meter_gateway.GatewayRefused)


# --- exactly once ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["fails_first", "answers_slowly", "applies_and_drops_the_answer"])
def test_a_payment_reaches_the_meter_exactly_once(site, meters, fault):
    conn = site["conn"]
    payment_id = _pay(site)
    assert meter_gateway.undelivered(conn)[0]["payment_id"] == payment_id
    start = dbmod.now_ms()
    if fault == "fails_first":          # two 503s: the outbox tries again after 10 s, then 20 s
        meters.fail_next(2)
        gateway = meter_gateway.HttpMeterGateway(meters.url, KEY, timeout_s=2, retries=0)
        assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start)["retrying"] == 1
        assert _row(conn, payment_id)["next_attempt_ms"] == start + meter_gateway.FIRST_RETRY_MS
        assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start + 5000) == {
            "delivered": 0, "retrying": 0, "failed": 0, "unconfigured": 0}           # not due yet
        assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start + 10000)["retrying"] == 1
        assert _row(conn, payment_id)["next_attempt_ms"] == start + 10000 + 2 * meter_gateway.FIRST_RETRY_MS
        assert meters.credit_of("M-0101") == 0
        assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start + 30000)["delivered"] == 1
        assert _row(conn, payment_id)["attempts"] == 3 and meters.state()["requests"] == 3
    elif fault == "answers_slowly":     # applied, answered after the client gave up: its retry gets the ref
        meters.slow_next(1, 2.0)
        gateway = meter_gateway.HttpMeterGateway(meters.url, KEY, timeout_s=0.5, retries=1, retry_pause_s=0.1)
        assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start)["delivered"] == 1
        assert _row(conn, payment_id)["attempts"] == 1 and meters.state()["requests"] == 2
    else:                               # applied, connection closed unanswered: the next attempt gets the ref
        meters.drop_next(1)
        gateway = meter_gateway.HttpMeterGateway(meters.url, KEY, timeout_s=2, retries=0)
        assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start)["retrying"] == 1
        assert meters.credit_of("M-0101") == AMOUNT_FEN and _row(conn, payment_id)["status"] == "pending"
        assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start + 60000)["delivered"] == 1
        assert meters.state()["requests"] == 2
    _credited_once(conn, meters, payment_id)
    assert meter_gateway.undelivered(conn) == []
    assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=start + 10 ** 8)["delivered"] == 0
    assert meters.credit_of("M-0101") == AMOUNT_FEN
    listed = electricity.room_payments(conn, "南1", 1, "101")["payments"]
    assert [(line["amount_fen"], line["meter_status"], line["payer"]) for line in listed] == [
        (AMOUNT_FEN, "delivered", "郑*电")]


def test_a_payment_refused_or_not_booked_sends_nothing(site, meters):
    conn = site["conn"]
    with pytest.raises(electricity.ServiceError):
        electricity.pay(conn, site["account_id"], "南1", 1, "101", 10 ** 6 // 2 + 1, operator="hall-1")
    with pytest.raises(electricity.ServiceError):
        electricity.pay(conn, site["account_id"], "南1", 1, "101", 20000, operator="hall-1")    # more than held
    booked = electricity.pay(conn, site["account_id"], "南2", 1, "101", 100, operator="hall-1")   # no meter system
    assert booked["meter_status"] == "none"
    assert conn.execute("SELECT count(*) FROM meter_outbox").fetchone()[0] == 0
    gateway = meter_gateway.HttpMeterGateway(meters.url, KEY, retries=0)
    assert meter_gateway.deliver_due(conn, lambda _b: gateway)["delivered"] == 0 and meters.state()["requests"] == 0


def test_a_killed_delivery_loop_is_resumed_after_its_lease(tmp_path, store_environment, meters):
    data_dir = tmp_path / "data"
    assert subprocess.run([sys.executable, "-m", "sync_server", "server", "init", "--data-dir", str(data_dir)],
                          capture_output=True).returncode == 0
    _write_config(data_dir, _config(meters.url, timeout_s=30, retries=0))
    conn = dbmod.connect(dbmod.store_location(str(data_dir)))
    try:
        _online_rooms(conn)
        site = {"conn": conn, "account_id": _holder(conn)}
        payment_id = _pay(site)
        meters.slow_next(1, 20.0)           # applied at once, answered long after the loop is dead
        loop = subprocess.Popen([sys.executable, "-m", "sync_server", "hall", "meter-deliver", "--json",
                                 "--data-dir", str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while payment_id not in meters.state()["applied"]:
                assert loop.poll() is None and time.monotonic() < deadline, "the loop never reached the meter"
                time.sleep(0.05)
        finally:
            loop.kill()
            loop.wait()
        row = _row(conn, payment_id)
        assert (row["status"], row["attempts"], row["gateway_ref"]) == ("pending", 1, None)
        assert row["next_attempt_ms"] > dbmod.now_ms()             # leased by the dead loop
        again = subprocess.run([sys.executable, "-m", "sync_server", "hall", "meter-deliver", "--json",
                                "--data-dir", str(data_dir)], capture_output=True, text=True)
        assert json.loads(again.stdout) == {"delivered": 0, "retrying": 0, "failed": 0, "unconfigured": 0}
        assert meters.state()["requests"] == 1                      # nothing sent while the lease runs
        later = row["next_attempt_ms"]
        assert meter_gateway.deliver_from_config(conn, str(data_dir), now_ms=later)["delivered"] == 1
        assert meters.state()["requests"] == 2
        _credited_once(conn, meters, payment_id)
    finally:
        conn.close()


def test_attempts_are_bounded_then_flagged_for_staff_who_can_send_again(site, meters):
    conn = site["conn"]
    payment_id = _pay(site)
    meters.fail_next(10 ** 6)
    gateway = meter_gateway.HttpMeterGateway(meters.url, KEY, timeout_s=2, retries=0)
    now_ms = dbmod.now_ms()
    outcomes = []
    for _ in range(meter_gateway.MAX_ATTEMPTS):
        counts = meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=now_ms)
        outcomes.append("failed" if counts["failed"] else "retrying" if counts["retrying"] else "-")
        now_ms = max(now_ms, _row(conn, payment_id)["next_attempt_ms"])
    assert outcomes == ["retrying"] * (meter_gateway.MAX_ATTEMPTS - 1) + ["failed"]
    assert meters.state()["requests"] == meter_gateway.MAX_ATTEMPTS
    assert meter_gateway.deliver_due(conn, lambda _b: gateway, now_ms=now_ms + 10 ** 9) == {
        "delivered": 0, "retrying": 0, "failed": 0, "unconfigured": 0}          # flagged rows are left alone
    flagged = meter_gateway.undelivered(conn)
    assert [(row["payment_id"], row["status"], row["attempts"], row["room"]) for row in flagged] == [
        (payment_id, "failed", meter_gateway.MAX_ATTEMPTS, "101")]
    assert "503" in flagged[0]["last_error"]
    assert meter_gateway.requeue(conn, payment_id) == 1 and meter_gateway.requeue(conn, payment_id) == 0
    meters.fail_next(0)
    assert meter_gateway.deliver_due(conn, lambda _b: gateway)["delivered"] == 1
    _credited_once(conn, meters, payment_id)


def test_a_refused_credit_is_flagged_at_once(site):
    conn = site["conn"]
    with SimulatedMeterSystem(key=KEY, meters={"M-0102"}) as strict:
        payment_id = _pay(site)                                  # M-0101: the meter system does not know it
        gateway = meter_gateway.HttpMeterGateway(strict.url, KEY, retries=2, retry_pause_s=0.01)
        assert meter_gateway.deliver_due(conn, lambda _b: gateway)["failed"] == 1
        assert strict.state()["requests"] == 1                   # a 4xx is not retried
    row = _row(conn, payment_id)
    assert row["status"] == "failed" and "404" in row["last_error"]
    assert meter_gateway.requeue(conn) == 1 and _row(conn, payment_id)["status"] == "pending"


def test_a_row_is_sent_by_one_loop_at_a_time_and_waits_for_a_gateway(site, meters):
    conn = site["conn"]
    payment_id = _pay(site)
    assert meter_gateway.deliver_due(conn, lambda _b: None)["unconfigured"] == 1
    assert _row(conn, payment_id)["attempts"] == 0                 # no gateway: no attempt spent

    class Racing:
        """A gateway whose send is overtaken by a second loop: that loop finds the row leased."""
        def credit(self, meter_id, amount_fen, payment_id, kind="lighting"):
            assert meter_gateway.deliver_due(conn, lambda _b: self.fail) == {
                "delivered": 0, "retrying": 0, "failed": 0, "unconfigured": 0}
            return meter_gateway.HttpMeterGateway(meters.url, KEY).credit(meter_id, amount_fen, payment_id, kind)

        def fail(self, *args):
            raise AssertionError("sent twice at once")
    assert meter_gateway.deliver_due(conn, lambda _b: Racing())["delivered"] == 1
    _credited_once(conn, meters, payment_id)


def test_the_server_sends_a_phone_payment_to_the_meter(fresh_server, meters):
    from test_cardholder_api import Holder
    conn = fresh_server.connect()
    try:
        _online_rooms(conn)
    finally:
        conn.close()
    _write_config(fresh_server.data_dir, _config(meters.url))
    holder = Holder(fresh_server, balance_fen=5000, legacy_fen=500)
    answer = holder.http.post(holder.url("electricity"), json={"pin": holder.pin, "building": "南1", "floor": 1,
                                                               "room": "102", "amount_fen": 1800,
                                                               "idempotency_key": "phone-meter-0001"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["meter_status"] == "pending" and answer.json()["parts"] == [["legacy", 500], ["main", 1300]]
    payment_id = answer.json()["payment_id"]
    deadline = time.monotonic() + 60            # the scheduler passes every few seconds
    payments = "/api/v1/electricity/rooms/南1/1/102/payments"
    while holder.http.get(payments).json()["payments"][0]["meter_status"] != "delivered":
        assert time.monotonic() < deadline, fresh_server.log()
        time.sleep(0.2)
    again = holder.http.post(holder.url("electricity"), json={"pin": holder.pin, "building": "南1", "floor": 1,
                                                              "room": "102", "amount_fen": 1800,
                                                              "idempotency_key": "phone-meter-0001"})
    assert again.json()["repeated"] and again.json()["meter_status"] == "delivered"
    conn = fresh_server.connect()
    try:
        _credited_once(conn, meters, payment_id, meter_id="M-0102", amount_fen=1800)
    finally:
        conn.close()
