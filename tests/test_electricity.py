"""Dorm electricity by building, floor and room from the service hall's lists (services/electricity.py).

The lists: a rooms file imported twice changes nothing, a file with bad rows is refused whole with
every bad line named, meters move between rooms, a building goes online only with every meter known.
A payment must name an active listed room (unknown: 404, stopped room or building: 409, a kind the
building does not sell: 409) and a refusal books nothing. The phone's API lists buildings, floors and
rooms and a room's recent payments with the payers' names masked and no account ids; the hall's
commands and the portal's page work on the same lists. Each on every store (--store).
"""
import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from conftest import database_snapshot
from firmware.core import card_layout, protocol
from sync_server import db as dbmod, ledger, pin_rules, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import ServiceError, electricity

ROOMS_CSV = """楼栋,楼层,房间,电表号
南1,1,101,M-S1-0101
南1,1,102,M-S1-0102
南1,2,201,M-S1-0201
南1,10,1001,M-S1-1001
南2,3,301,
南10,1,101,
"""


def _holder(conn, name, number, balance_fen=10000, legacy_fen=0):
    """(account_id, initial PIN) of a new student with money."""
    id_number = "1101011990%08d" % int(re.sub(r"\D", "", number))
    _person_id, account_id = registry.add_person(conn, name, card_layout.HOLDER_STUDENT, id_number=id_number,
                                                 staff_number=number)
    if balance_fen:
        registry.recharge(conn, account_id, balance_fen)
    if legacy_fen:
        registry.recharge(conn, account_id, legacy_fen, wallet=protocol.WALLET_LEGACY, channel=dbmod.LEDGER_LEGACY_SOURCE)
    return account_id, pin_rules.initial_pin(id_number, number)


def _refused(code, call, *args, **kwargs):
    with pytest.raises(ServiceError) as refused:
        call(*args, **kwargs)
    assert refused.value.code == code, refused.value
    return refused.value


def _balanced(conn):
    assert ledger.check_balances(SqliteStore(conn)) == []


@pytest.fixture
def conn(database_location):
    connection = dbmod.init_db(database_location)
    yield connection
    connection.close()


# --- the lists -------------------------------------------------------------------------------------

def test_a_rooms_file_imported_twice_changes_nothing_and_bad_rows_refuse_it_whole(conn):
    assert electricity.import_rooms(conn, ROOMS_CSV) == {"created": 6, "updated": 0, "unchanged": 0, "rows": 6,
                                                         "buildings_created": 3}
    before = database_snapshot(conn)
    assert electricity.import_rooms(conn, ROOMS_CSV) == {"created": 0, "updated": 0, "unchanged": 6, "rows": 6,
                                                         "buildings_created": 0}
    assert database_snapshot(conn) == before                     # not even a timestamp moved

    bad = ROOMS_CSV + "南1,0,001,\n南1,1,101,M-9\n北'1,1,1,\n南3,1,301,M-S1-0101\n南3,1,302,M*1\n南3,1,3030303030,\n"
    refused = _refused("rooms_import_refused", electricity.import_rooms, conn, bad)
    assert [line for line, _zh, _en in refused.errors] == [8, 9, 10, 11, 12, 13]
    assert "6 行有错误" in refused.zh and "第 8 行：楼层无效" in refused.zh and "第 9 行：房间与第 2 行重复" in refused.zh
    assert "line 11: meter number repeats line 2" in refused.en and refused.status == 400
    taken = _refused("rooms_import_refused", electricity.import_rooms, conn, "楼栋,楼层,房间,电表号\n南3,1,301,M-S1-0102\n")
    assert "电表号已属于 南1 1层 102" in taken.zh
    _refused("rooms_bad_csv", electricity.import_rooms, conn, "building,floor,room\n南1,1,101\n")
    assert database_snapshot(conn) == before                     # nothing of a refused file stored

    swap = "楼栋,楼层,房间,电表号\n南1,1,101,M-S1-0102\n南1,1,102,M-S1-0101\n南2,3,301,M-S2-0301\n"
    assert electricity.import_rooms(conn, swap)["updated"] == 3      # two meters swapped, one added
    meters = {(row["building"], row["floor"], row["room"]): row["meter_id"] for row in electricity.list_rooms(conn)}
    assert meters[("南1", 1, "101")] == "M-S1-0102" and meters[("南1", 1, "102")] == "M-S1-0101"
    assert [row["room"] for row in electricity.list_rooms(conn, "南1")] == ["101", "102", "201", "1001"]


def test_a_building_goes_online_only_with_every_meter_known(conn):
    electricity.import_rooms(conn, ROOMS_CSV)
    _refused("building_needs_meters", electricity.set_building, conn, "南2", meter_system="online")
    building = electricity.set_building(conn, "南1", name_zh="南校区南1栋", name_en="South 1", campus="南校区",
                                        meter_system="online", kinds=["lighting", "aircon"])
    assert building == {"code": "南1", "name_zh": "南校区南1栋", "name_en": "South 1", "campus": "南校区",
                        "meter_system": "online", "kinds": ["lighting", "aircon"], "active": True}
    refused = _refused("rooms_import_refused", electricity.import_rooms, conn, "楼栋,楼层,房间,电表号\n南1,3,301,\n")
    assert "需要电表号" in refused.zh
    _refused("bad_building", electricity.set_building, conn, "南1", kinds=["heating"])
    _refused("bad_building", electricity.set_building, conn, "南1", meter_system="cloud")


def test_a_payment_names_an_active_listed_room_and_a_refusal_books_nothing(conn):
    electricity.import_rooms(conn, ROOMS_CSV)
    account_id, pin = _holder(conn, "王小明", "S20230001", balance_fen=5000, legacy_fen=300)
    _refused("unknown_room", electricity.pay, conn, account_id, "南1", 1, "199", 500, pin=pin)
    _refused("unknown_room", electricity.pay, conn, account_id, "北9", 1, "101", 500, pin=pin)
    _refused("bad_room", electricity.pay, conn, account_id, "南1", 0, "101", 500, pin=pin)
    _refused("bad_electricity_kind", electricity.pay, conn, account_id, "南1", 1, "101", 500, pin=pin, kind="heat")
    _refused("kind_unavailable", electricity.pay, conn, account_id, "南1", 1, "101", 500, pin=pin, kind="aircon")
    electricity.set_active(conn, "南1", 1, "101", active=False)
    refused = _refused("room_inactive", electricity.pay, conn, account_id, "南1", 1, "101", 500, pin=pin)
    assert refused.zh.startswith("该房间已停止缴费") and refused.status == 409
    electricity.set_active(conn, "南1", 1, "101", active=True)
    electricity.set_active(conn, "南2", active=False)                # the whole building
    _refused("room_inactive", electricity.pay, conn, account_id, "南2", 3, "301", 500, pin=pin)
    electricity.set_active(conn, "南2", active=True)
    _refused("unknown_building", electricity.set_active, conn, "北9", active=False)
    _refused("unknown_room", electricity.set_active, conn, "南1", 1, "199", active=False)
    assert registry.balances_of(conn, account_id) == {"main": 5000, "water": 0, "legacy": 300}
    assert conn.execute("SELECT count(*) FROM electricity_payments").fetchone()[0] == 0

    paid = electricity.pay(conn, account_id, "南1", 1, "101", 500, pin=pin)
    assert paid["parts"] == [("legacy", 300), ("main", 200)] and paid["meter_status"] == "none"
    assert paid["kind"] == "lighting" and not paid["repeated"]
    electricity.set_building(conn, "南1", kinds=["lighting", "aircon"])
    cooled = electricity.pay(conn, account_id, "南1", 1, "101", 800, operator="hall-2", kind="aircon",
                             idempotency_key="hall-aircon-0001")
    assert cooled["kind"] == "aircon" and cooled["parts"] == [("main", 800)]
    again = electricity.pay(conn, account_id, "南1", 1, "101", 800, operator="hall-2", kind="aircon",
                            idempotency_key="hall-aircon-0001")
    assert again["repeated"] and again["payment_id"] == cooled["payment_id"]
    _refused("idempotency_conflict", electricity.pay, conn, account_id, "南1", 1, "101", 800, operator="hall-2",
             idempotency_key="hall-aircon-0001")                      # the same key for lighting
    assert registry.balances_of(conn, account_id) == {"main": 5000 - 200 - 800, "water": 0, "legacy": 0}
    assert conn.execute("SELECT count(*) FROM meter_outbox").fetchone()[0] == 0     # no meter system here
    _balanced(conn)


def test_names_are_masked_for_roommates():
    assert [electricity.mask_name(name) for name in ("李小龙", "欧阳小龙", "李龙", "李", "", "Anna Lee")] == \
        ["李*龙", "欧**龙", "李*", "*", "*", "A******e"]


# --- the phone's API -------------------------------------------------------------------------------

class Phone:
    """A cardholder signed in on the phone app (bind with name + number + initial PIN)."""

    def __init__(self, server, name, number, balance_fen=10000):
        conn = server.connect()
        try:
            self.account_id, self.pin = _holder(conn, name, number, balance_fen)
        finally:
            conn.close()
        self.name, self.number = name, number
        self.http = httpx.Client(base_url=server.url, timeout=60)
        answer = self.http.post("/api/v1/bind", json={"app_user_id": "app-" + number, "name": name,
                                                      "staff_number": number, "pin": self.pin})
        assert answer.status_code == 200, answer.text
        self.http.headers["Authorization"] = "Bearer " + answer.json()["token"]

    def pay(self, building, floor, room, amount_fen, **extra):
        return self.http.post("/api/v1/accounts/%d/electricity" % self.account_id, json=dict(
            {"pin": self.pin, "building": building, "floor": floor, "room": room, "amount_fen": amount_fen}, **extra))


def _error(answer, status, code):
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == code
    return answer.json()


def test_the_phone_picks_building_floor_and_room_and_sees_the_rooms_recent_payments(live_server):
    conn = live_server.connect()
    try:
        electricity.import_rooms(conn, ROOMS_CSV)
        electricity.set_building(conn, "南1", name_zh="南校区南1栋", name_en="South 1", campus="南校区",
                                 kinds=["lighting", "aircon"])
        electricity.set_active(conn, "南10", active=False)
        electricity.set_active(conn, "南2", 3, "301", active=False)
    finally:
        conn.close()
    li, wang, zhao = (Phone(live_server, "李小龙", "S20240001"), Phone(live_server, "王大锤", "S20240002"),
                      Phone(live_server, "赵六", "S20240003"))

    buildings = li.http.get("/api/v1/electricity/buildings").json()["buildings"]
    assert [(entry["code"], entry["name"], entry["floors"]) for entry in buildings] == [("南1", "南校区南1栋", [1, 2, 10])]
    assert [kind["name_zh"] for kind in buildings[0]["kinds"]] == ["照明用电", "空调用电"]
    rooms = li.http.get("/api/v1/electricity/buildings/南1/floors/1/rooms").json()
    assert rooms["rooms"] == [{"room": "101"}, {"room": "102"}] and "meter_id" not in json.dumps(rooms)
    assert li.http.get("/api/v1/electricity/buildings/南1/floors/１/rooms").json() == rooms     # full-width digit
    assert li.http.get("/api/v1/electricity/buildings/南1/floors/5/rooms").json()["rooms"] == []
    _error(li.http.get("/api/v1/electricity/buildings/南10/floors/1/rooms"), 404, "unknown_building")
    _error(li.http.get("/api/v1/electricity/buildings/南1/floors/99/rooms"), 400, "bad_room")
    _error(httpx.get(live_server.url + "/api/v1/electricity/buildings"), 401, "bad_token")

    assert li.pay("南1", 1, "101", 1500).status_code == 200
    assert wang.pay("南1", 1, "101", 2000, kind="aircon").json()["kind"] == "aircon"
    assert wang.pay("南1", 1, "102", 700).status_code == 200
    _error(wang.pay("南2", 3, "301", 700), 409, "room_inactive")
    body = _error(wang.pay("南1", 1, "109", 700), 404, "unknown_room")
    assert body["message"].startswith(body["message_zh"])          # Chinese first

    seen = zhao.http.get("/api/v1/electricity/rooms/南1/1/101/payments")
    assert seen.status_code == 200, seen.text
    payments = seen.json()["payments"]
    assert [(line["payer"], line["amount_fen"], line["kind"], line["mine"]) for line in payments] == [
        ("王*锤", 2000, "aircon", False), ("李*龙", 1500, "lighting", False)]
    assert all(line["meter_status"] == "none" and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line["time"])
               for line in payments)
    for secret in ("李小龙", "王大锤", "S20240001", "S20240002", '"account_id"', '"payment_id"'):
        assert secret not in seen.text
    assert [line["mine"] for line in li.http.get("/api/v1/electricity/rooms/南1/1/101/payments").json()["payments"]] \
        == [False, True]
    one = li.http.get("/api/v1/electricity/rooms/南1/1/101/payments", params={"limit": "1"}).json()["payments"]
    assert [line["amount_fen"] for line in one] == [2000]
    _error(li.http.get("/api/v1/electricity/rooms/南1/1/101/payments", params={"limit": "0"}), 400, "bad_request")
    _error(li.http.get("/api/v1/electricity/rooms/南1/1/109/payments"), 404, "unknown_room")
    _error(li.http.get("/api/v1/electricity/rooms/南1/1/1'0/payments"), 400, "bad_room")
    assert li.http.get("/api/v1/electricity/rooms/南2/3/301/payments").json()["payments"] == []   # stopped: history
    conn = live_server.connect()
    try:
        assert registry.balances_of(conn, wang.account_id)["main"] == 10000 - 2000 - 700
        _balanced(conn)
    finally:
        conn.close()


# --- the hall's commands and the portal --------------------------------------------------------------

def _run(data_dir, *args):
    result = subprocess.run([sys.executable, "-m", "sync_server", *args, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, env=dict(os.environ, YKT_LANG="zh"))
    return result.returncode, result.stdout + result.stderr


def test_the_hall_keeps_the_lists_and_pays_for_a_listed_room(tmp_path, store_environment):
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    rooms = tmp_path / "rooms.csv"
    rooms.write_text(ROOMS_CSV, encoding="utf-8")
    code, out = _run(data_dir, "hall", "rooms-import", "--file", str(rooms), "--json")
    assert code == 0 and json.loads(out)["created"] == 6
    code, out = _run(data_dir, "hall", "rooms-import", "--file", str(rooms))
    assert code == 0 and "新建 0，更新 0，未变 6" in out
    bad = tmp_path / "bad.csv"
    bad.write_text(ROOMS_CSV + "南1,61,6101,\n南1,1,1 01,\n", encoding="utf-8")
    code, out = _run(data_dir, "hall", "rooms-import", "--file", str(bad))
    assert code == 7 and "2 行有错误" in out and "第 8 行" in out and "第 9 行" in out
    code, out = _run(data_dir, "hall", "building-set", "--building", "南1", "--name-zh", "南校区南1栋", "--campus",
                     "南校区", "--meter-system", "online", "--kinds", "lighting,aircon")
    assert code == 0 and "online" in out and "空调用电" in out
    code, out = _run(data_dir, "hall", "rooms-deactivate", "--building", "南1", "--floor", "2", "--room", "201")
    assert code == 0 and "已停止缴费" in out
    listing = json.loads(_run(data_dir, "hall", "rooms-list", "--building", "南1", "--json")[1])
    assert [(room["room"], room["active"]) for room in listing["rooms"]] == [
        ("101", True), ("102", True), ("201", False), ("1001", True)]
    assert "南校区南1栋" in _run(data_dir, "hall", "rooms-list")[1]

    conn = dbmod.connect(dbmod.store_location(str(data_dir)))
    try:
        account_id, _pin = _holder(conn, "孙小美", "S20250001", balance_fen=3000)
    finally:
        conn.close()
    pay = ("hall", "electricity", "--number", "S20250001", "--building", "南1", "--floor", "2", "--room", "201",
           "--amount", "5")
    code, out = _run(data_dir, *pay)
    assert code == 2 and "该房间已停止缴费" in out
    assert _run(data_dir, "hall", "rooms-activate", "--building", "南1", "--floor", "2", "--room", "201")[0] == 0
    code, out = _run(data_dir, *pay, "--kind", "aircon")
    assert code == 0 and "电费缴纳成功" in out
    code, out = _run(data_dir, "hall", "meter-pending", "--json")       # online, no gateway configured yet
    pending = json.loads(out)
    assert [(row["room"], row["meter_id"], row["kind"], row["status"]) for row in pending] == [
        ("201", "M-S1-0201", "aircon", "pending")]
    code, out = _run(data_dir, "hall", "meter-deliver", "--json")
    assert code == 0 and json.loads(out) == {"delivered": 0, "retrying": 0, "failed": 0, "unconfigured": 1}
    code, out = _run(data_dir, "hall", "rooms-deactivate", "--building", "南1", "--floor", "2")
    assert code == 2 and "--floor" in out


def test_the_portal_offers_the_lists_and_shows_the_rooms_payments(tmp_path, store_environment):
    from sync_server.app import create_app
    from sync_server.cli import init_data_dir
    data_dir = str(tmp_path / "data")
    init_data_dir(data_dir, store_environment)
    app = create_app({"DATA_DIR": data_dir, "TESTING": True})
    conn = dbmod.connect(dbmod.store_location(data_dir))
    try:
        electricity.import_rooms(conn, ROOMS_CSV)
        electricity.set_building(conn, "南1", name_zh="南校区南1栋", name_en="South 1", kinds=["lighting", "aircon"])
        account_id, pin = _holder(conn, "周杰", "S20260001", balance_fen=4000)
        roommate, _ = _holder(conn, "吴彦祖", "S20260002")
        electricity.pay(conn, roommate, "南1", 1, "102", 1234, operator="hall-1")
    finally:
        conn.close()
    client = app.test_client()

    def csrf(page):
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    page = client.get("/portal/sign-in").get_data(as_text=True)
    assert client.post("/portal/sign-in", data={"staff_number": "S20260001", "pin": pin,
                                                "csrf_token": csrf(page)}).status_code == 302
    page = client.get("/portal/electricity").get_data(as_text=True)
    assert 'id="pick-building"' in page and "南校区南1栋" in page and 'id="pick-floor"' not in page
    page = client.get("/portal/electricity?building=南1").get_data(as_text=True)
    assert '<option value="10">10</option>' in page and 'id="pick-room"' not in page
    page = client.get("/portal/electricity?building=南1&floor=1&room=102").get_data(as_text=True)
    assert 'id="room-payments"' in page and "吴*祖" in page and "12.34" in page and "吴彦祖" not in page
    assert 'value="102"' in page and 'id="kind"' in page                # aircon sold here: the kind is asked
    form = {"csrf_token": csrf(page), "form_key": re.search(r'name="form_key" value="([^"]+)"', page).group(1),
            "building": "南1", "floor": "1", "room": "102", "kind": "aircon", "amount_yuan": "8.5", "pin": pin}
    answer = client.post("/portal/electricity", data=form, follow_redirects=True).get_data(as_text=True)
    assert "电费缴纳成功" in answer and "周*" in answer and "（本人）" in answer
    page = client.get("/portal/electricity").get_data(as_text=True)
    answer = client.post("/portal/electricity", follow_redirects=True, data=dict(
        form, csrf_token=csrf(page), form_key=re.search(r'name="form_key" value="([^"]+)"', page).group(1),
        room="109")).get_data(as_text=True)
    assert "该房间不在缴费名单中" in answer
    conn = dbmod.connect(dbmod.store_location(data_dir))
    try:
        assert registry.balances_of(conn, account_id)["main"] == 4000 - 850
        _balanced(conn)
    finally:
        conn.close()
