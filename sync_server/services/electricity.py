"""Dorm electricity (学生公寓电费): pay for a room picked from the lists the service hall maintains.

Room lists. The hall imports rooms from a CSV file (楼栋,楼层,房间,电表号: `ykt hall rooms-import`,
`import_rooms`), repeatably: a room already listed with the same meter changes nothing, a new meter
number updates it, and one bad row refuses the whole file with every bad line named. A building is
created by the first room that names it; `set_building` gives it its names, campus, the kinds of
electricity it sells (照明用电 lighting, 空调用电 aircon) and its meter system: `none` (the old 购电机:
the payment is booked and nothing else) or `online` (the payment is owed to the building's meter
system, sync_server/meter_gateway.py). Rooms and buildings are deactivated, never deleted; the phone
lists only active ones (`buildings`, `rooms`), and a payment must name an active room of an active
building.

Payment. The payment draws on the wallets in the shared order for the electricity category
(firmware.core.wallets: legacy first - the old system's balance may be spent only on water and
electricity - then main) and goes to the dorm electricity merchant's ledger account, created on the
first payment and named by the setting electricity_merchant_id. One `purchase` transfer per wallet
drawn on, ids derived from the payment id, so the statement shows them under consumption. Unlike a
terminal tap, nothing here may go negative: a shortfall is refused. For a room of an online building
the same transaction writes the payment's meter outbox row (meter_gateway.enqueue): the delivery loop
sends it, and the meter is credited exactly once.

A room's recent payments (`room_payments`) are shown to anyone signed in who picks the room - the
roommates pay for one meter - with the time, the amount and the payer's name masked (李*龙), never an
account id or anything else of the payer's.
"""
import csv
import datetime
import io
import re
import uuid

from firmware.core import card_layout, protocol, wallets as wallet_rules
from sync_server import db as dbmod, ledger, meter_gateway, numbers, registry
from sync_server.ledger_store import SqliteStore, touch_accounts
from sync_server.services import (ServiceError, check_amount, csv_columns, idempotent_id, now, person_row, register_messages,
                                  tx, with_pin)
from sync_server.services.history import BEIJING

MAX_PAYMENT_FEN = 50000           # ¥500 at a time
MAX_FLOOR = 60
MAX_ROOMS = 50000                 # rows of one rooms file
MAX_CSV_BYTES = 4 * 1024 * 1024
MAX_ERRORS_REPORTED = 50
MAX_LISTED_PAYMENTS = 50          # a room's recent payments, at most this many at once
DEFAULT_LISTED_PAYMENTS = 10
MAX_NAME_CHARS = 64
KINDS = {"lighting": ("照明用电", "lighting"), "aircon": ("空调用电", "air conditioning")}
DEFAULT_KIND = "lighting"
METER_SYSTEMS = ("none", "online")
_BUILDING = re.compile(r"^[0-9A-Za-z\u4e00-\u9fff\-]{1,16}$")
_ROOM = re.compile(r"^[0-9A-Za-z\-]{1,8}$")
_METER = re.compile(r"^[0-9A-Za-z_\-]{1,32}$")
COLUMNS = {
    "building": ("building", "楼栋", "楼号"),
    "floor": ("floor", "楼层"),
    "room": ("room", "房间", "房间号"),
    "meter_id": ("meter_id", "meter", "电表号", "电表编号"),
}

register_messages({
    "bad_room": (400, "楼栋、楼层或房间号无效", "invalid building, floor or room"),
    "account_not_clear": (409, "账户已冻结或余额为负，不能缴费", "account blocked or negative: cannot pay"),
    "unknown_room": (404, "该房间不在缴费名单中，请从列表中选择楼栋、楼层和房间",
                     "that room is not on the list: pick the building, floor and room from the lists"),
    "unknown_building": (404, "楼栋不在缴费名单中", "that building is not on the list"),
    "room_inactive": (409, "该房间已停止缴费，请咨询服务大厅", "payments for that room are stopped: ask the service hall"),
    "bad_electricity_kind": (400, "用电类型无效（lighting 照明用电、aircon 空调用电）",
                 "invalid kind of electricity (lighting or aircon)"),
    "kind_unavailable": (409, "该楼栋不提供这种用电（如空调用电）", "this building does not sell that kind of electricity"),
    "no_meter": (409, "该房间尚未登记电表号，请到服务大厅办理", "the room's meter is not registered: ask the service hall"),
    "bad_building": (400, "楼栋设置无效：%s", "invalid building setting: %s"),
    "building_needs_meters": (409, "该楼栋有 %d 个房间没有电表号，不能接入电控系统",
                              "%d rooms of the building have no meter number: it cannot go online"),
    "rooms_bad_csv": (400, "房间文件无效：%s", "invalid rooms file: %s"),
    "rooms_import_refused": (400, "导入被拒绝：%d 行有错误，未导入任何房间", "import refused: %d bad rows, no room imported"),
})


class RoomsImportRefused(ServiceError):
    """The rooms file has bad rows; `errors` is [(line, zh, en)] (the first MAX_ERRORS_REPORTED)."""

    def __init__(self, errors):
        ServiceError.__init__(self, "rooms_import_refused", len(errors))
        self.errors = errors[:MAX_ERRORS_REPORTED]
        self.zh = "%s（%s）" % (self.zh, "；".join("第 %d 行：%s" % (line, zh) for line, zh, _ in self.errors))
        self.en = "%s (%s)" % (self.en, "; ".join("line %d: %s" % (line, en) for line, _, en in self.errors))
        self.args = ("%s / %s" % (self.zh, self.en),)


def electricity_merchant(conn):
    """The merchant id of dorm electricity, created once (inside the caller's transaction)."""
    assert conn.in_transaction
    merchant_id = dbmod.setting(conn, "electricity_merchant_id")
    if not merchant_id:
        merchant_id = registry.add_merchant(conn, "学生公寓电费", "dorm electricity", wallet_rules.CATEGORY_ELECTRICITY)
        conn.execute("UPDATE settings SET value = ? WHERE name = 'electricity_merchant_id'", (merchant_id,))
    return merchant_id


def room_ok(building, floor, room):
    return bool(isinstance(building, str) and _BUILDING.match(building) and type(floor) is int
                and 0 < floor <= MAX_FLOOR and isinstance(room, str) and _ROOM.match(room))


def _check_room(building, floor, room):
    if not room_ok(building, floor, room):
        raise ServiceError("bad_room")


def parse_floor(text):
    """A floor from a URL or form (ASCII or full-width digits), or ServiceError bad_room."""
    floor = numbers.parse_int(text, 1, MAX_FLOOR)
    if floor is None:
        raise ServiceError("bad_room")
    return floor


def natural_key(text):
    """南2 before 南10, 0902 after 901: digit runs compare as numbers."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _kinds_of(text):
    return [kind for kind in (text or "").split(",") if kind in KINDS]


def _kind_entries(text):
    return [{"kind": kind, "name_zh": KINDS[kind][0], "name_en": KINDS[kind][1]} for kind in _kinds_of(text)]


def mask_name(name):
    """李小龙 -> 李*龙, 欧阳小龙 -> 欧**龙, 李龙 -> 李*, 李 -> *: enough for roommates, nothing more."""
    name = (name or "").strip()
    if len(name) <= 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def _time_text(time_ms):
    return datetime.datetime.fromtimestamp(time_ms / 1000, BEIJING).strftime("%Y-%m-%d %H:%M:%S")


# --- the hall's room lists -------------------------------------------------------------------------

def parse_rooms(csv_text):
    """Rows {building, floor, room, meter_id, line} of a rooms file, or RoomsImportRefused naming
    every bad line (ServiceError rooms_bad_csv for a file that is no rooms file at all)."""
    if len(csv_text) > MAX_CSV_BYTES:
        raise ServiceError("rooms_bad_csv", "too large")
    reader = csv.reader(io.StringIO(csv_text.lstrip("\ufeff")))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise ServiceError("rooms_bad_csv", "no header")
    columns = csv_columns(header, COLUMNS)
    if set(columns) != set(COLUMNS):
        raise ServiceError("rooms_bad_csv", "columns 楼栋,楼层,房间,电表号 are required / 需要楼栋、楼层、房间、电表号四列")
    rows, errors, rooms_seen, meters_seen = [], [], {}, {}
    try:
        for line, values in enumerate(reader, start=2):
            if not any(value.strip() for value in values):
                continue
            if len(rows) + len(errors) >= MAX_ROOMS:
                raise ServiceError("rooms_bad_csv", "more than %d rows" % MAX_ROOMS)
            cell = {field: (values[index].strip() if index < len(values) else "") for field, index in columns.items()}
            floor = numbers.parse_int(cell["floor"], 1, MAX_FLOOR)
            key = (cell["building"], floor, cell["room"])
            if not _BUILDING.match(cell["building"]):
                problem = ("楼栋无效（1 至 16 个汉字、字母、数字或 -）", "invalid building (1-16 letters, digits, Chinese or -)")
            elif floor is None:
                problem = ("楼层无效（1 至 %d）" % MAX_FLOOR, "invalid floor (1 to %d)" % MAX_FLOOR)
            elif not _ROOM.match(cell["room"]):
                problem = ("房间号无效（1 至 8 个字母、数字或 -）", "invalid room (1-8 letters, digits or -)")
            elif cell["meter_id"] and not _METER.match(cell["meter_id"]):
                problem = ("电表号无效（1 至 32 个字母、数字、- 或 _）", "invalid meter number (1-32 letters, digits, - or _)")
            elif key in rooms_seen:
                problem = ("房间与第 %d 行重复" % rooms_seen[key], "room repeats line %d" % rooms_seen[key])
            elif cell["meter_id"] and cell["meter_id"] in meters_seen:
                problem = ("电表号与第 %d 行重复" % meters_seen[cell["meter_id"]],
                           "meter number repeats line %d" % meters_seen[cell["meter_id"]])
            else:
                problem = None
            if problem:
                errors.append((line,) + problem)
                continue
            rooms_seen[key] = line
            if cell["meter_id"]:
                meters_seen[cell["meter_id"]] = line
            rows.append({"building": cell["building"], "floor": floor, "room": cell["room"],
                         "meter_id": cell["meter_id"] or None, "line": line})
    except csv.Error as error:
        raise ServiceError("rooms_bad_csv", str(error))
    if errors:
        raise RoomsImportRefused(errors)
    return rows


def import_rooms(conn, csv_text, now_ms=None):
    """Add or update the rooms of a file, all or nothing; returns {created, updated, unchanged, rows,
    buildings_created}. A room's active flag is the hall's (rooms-deactivate), not the file's."""
    rows = parse_rooms(csv_text)
    now_ms = now(now_ms)
    report = {"created": 0, "updated": 0, "unchanged": 0, "rows": len(rows), "buildings_created": 0}
    with tx(conn):
        buildings = {code: system for code, system in conn.execute("SELECT code, meter_system FROM dorm_buildings")}
        listed = {(row["building"], row["floor"], row["room"]): row["meter_id"] for row in rows}
        existing, errors = {}, []
        for row in rows:
            key = (row["building"], row["floor"], row["room"])
            found = conn.execute("SELECT meter_id FROM dorm_rooms WHERE building = ? AND floor = ? AND room = ?",
                                 key).fetchone()
            existing[key] = found
            if buildings.get(row["building"]) == "online" and row["meter_id"] is None:
                errors.append((row["line"], "该楼栋已接入电控系统，需要电表号", "the building is online: a meter number is required"))
                continue
            if row["meter_id"] is not None:
                holder = conn.execute("SELECT building, floor, room FROM dorm_rooms WHERE meter_id = ?",
                                      (row["meter_id"],)).fetchone()
                if holder is not None and tuple(holder) != key and listed.get(tuple(holder), row["meter_id"]) == \
                        row["meter_id"]:
                    errors.append((row["line"], "电表号已属于 %s %d层 %s" % tuple(holder),
                                   "meter number belongs to %s floor %d room %s" % tuple(holder)))
        if errors:
            raise RoomsImportRefused(errors)
        changed = [row for row in rows if existing[(row["building"], row["floor"], row["room"])] is not None
                   and existing[(row["building"], row["floor"], row["room"])][0] != row["meter_id"]]
        for row in changed:     # meters moved between rooms of the file: free them all first
            conn.execute("UPDATE dorm_rooms SET meter_id = NULL WHERE building = ? AND floor = ? AND room = ?",
                         (row["building"], row["floor"], row["room"]))
        for row in rows:
            key = (row["building"], row["floor"], row["room"])
            if row["building"] not in buildings:
                conn.execute("INSERT INTO dorm_buildings (code, name_zh, name_en, updated_ms) VALUES (?, ?, ?, ?)",
                             (row["building"], row["building"], row["building"], now_ms))
                buildings[row["building"]] = "none"
                report["buildings_created"] += 1
            if existing[key] is None:
                conn.execute("INSERT INTO dorm_rooms (building, floor, room, meter_id, active, updated_ms) "
                             "VALUES (?, ?, ?, ?, 1, ?)", key + (row["meter_id"], now_ms))
                report["created"] += 1
            elif existing[key][0] != row["meter_id"]:
                conn.execute("UPDATE dorm_rooms SET meter_id = ?, updated_ms = ? WHERE building = ? AND floor = ? "
                             "AND room = ?", (row["meter_id"], now_ms) + key)
                report["updated"] += 1
            else:
                report["unchanged"] += 1
    return report


def _building_row(conn, code):
    return dbmod.fetch_named(conn, "SELECT code, name_zh, name_en, campus, meter_system, kinds, active "
                             "FROM dorm_buildings WHERE code = ?", (code,))


def _building_dict(row):
    return {"code": row["code"], "name_zh": row["name_zh"], "name_en": row["name_en"], "campus": row["campus"],
            "meter_system": row["meter_system"], "kinds": _kinds_of(row["kinds"]), "active": bool(row["active"])}


def set_building(conn, code, name_zh=None, name_en=None, campus=None, meter_system=None, kinds=None, now_ms=None):
    """Create or change a building (what is None stays as it is); returns the building. Going online
    needs a meter number on every active room."""
    if not isinstance(code, str) or not _BUILDING.match(code):
        raise ServiceError("bad_room")
    for label, text in (("name_zh", name_zh), ("name_en", name_en), ("campus", campus)):
        if text is not None and (not isinstance(text, str) or len(text) > MAX_NAME_CHARS
                                 or (label != "campus" and not text.strip())):
            raise ServiceError("bad_building", "%s 为空或过长 / %s empty or too long" % (label, label))
    if meter_system is not None and meter_system not in METER_SYSTEMS:
        raise ServiceError("bad_building", "meter_system: none | online")
    if kinds is not None:
        kinds = list(dict.fromkeys(kinds))
        if not kinds or any(kind not in KINDS for kind in kinds):
            raise ServiceError("bad_building", "kinds: lighting, aircon")
    now_ms = now(now_ms)
    with tx(conn):
        row = _building_row(conn, code)
        if row is None:
            conn.execute("INSERT INTO dorm_buildings (code, name_zh, name_en, updated_ms) VALUES (?, ?, ?, ?)",
                         (code, code, code, now_ms))
            row = _building_row(conn, code)
        wanted = {"name_zh": name_zh.strip() if name_zh else row["name_zh"],
                  "name_en": name_en.strip() if name_en else row["name_en"],
                  "campus": campus.strip() if campus is not None else row["campus"],
                  "meter_system": meter_system or row["meter_system"],
                  "kinds": ",".join(kinds) if kinds else row["kinds"]}
        if wanted["meter_system"] == "online":
            missing = conn.execute("SELECT count(*) FROM dorm_rooms WHERE building = ? AND active = 1 AND "
                                   "meter_id IS NULL", (code,)).fetchone()[0]
            if missing:
                raise ServiceError("building_needs_meters", missing)
        if any(wanted[name] != row[name] for name in wanted):
            conn.execute("UPDATE dorm_buildings SET name_zh = ?, name_en = ?, campus = ?, meter_system = ?, kinds = ?, "
                         "updated_ms = ? WHERE code = ?", tuple(wanted.values()) + (now_ms, code))
        return _building_dict(_building_row(conn, code))


def set_active(conn, building, floor=None, room=None, active=False, now_ms=None):
    """Deactivate (or activate again) one room, or a whole building when no room is named; returns
    how many rows changed."""
    now_ms = now(now_ms)
    with tx(conn):
        if _building_row(conn, building) is None:
            raise ServiceError("unknown_building")
        if room is None:
            return conn.execute("UPDATE dorm_buildings SET active = ?, updated_ms = ? WHERE code = ? AND active <> ?",
                                (int(active), now_ms, building, int(active))).rowcount
        _check_room(building, floor, room)
        key = (building, floor, room)
        if conn.execute("SELECT 1 FROM dorm_rooms WHERE building = ? AND floor = ? AND room = ?", key).fetchone() is None:
            raise ServiceError("unknown_room")
        return conn.execute("UPDATE dorm_rooms SET active = ?, updated_ms = ? WHERE building = ? AND floor = ? "
                            "AND room = ? AND active <> ?", (int(active), now_ms) + key + (int(active),)).rowcount


def list_rooms(conn, building=None):
    """Every room (inactive ones too) with its building's state, for the hall: sorted naturally."""
    rows = conn.execute(
        "SELECT r.building, b.name_zh, b.meter_system, b.active, r.floor, r.room, r.meter_id, r.active "
        "FROM dorm_rooms r JOIN dorm_buildings b ON b.code = r.building" +
        (" WHERE r.building = ?" if building is not None else ""), (building,) if building is not None else ()).fetchall()
    listed = [{"building": row[0], "building_name": row[1], "meter_system": row[2], "building_active": bool(row[3]),
               "floor": row[4], "room": row[5], "meter_id": row[6], "active": bool(row[7])} for row in rows]
    return sorted(listed, key=lambda item: (natural_key(item["building"]), item["floor"], natural_key(item["room"])))


def list_buildings(conn):
    """Every building with its settings and room counts, for the hall."""
    rows = conn.execute("SELECT b.code, b.name_zh, b.name_en, b.campus, b.meter_system, b.kinds, b.active, "
                        "count(r.room), sum(CASE WHEN r.active = 1 THEN 1 ELSE 0 END) FROM dorm_buildings b "
                        "LEFT JOIN dorm_rooms r ON r.building = b.code GROUP BY b.code, b.name_zh, b.name_en, "
                        "b.campus, b.meter_system, b.kinds, b.active").fetchall()
    names = ("code", "name_zh", "name_en", "campus", "meter_system", "kinds", "active", "rooms", "active_rooms")
    listed = [dict(zip(names, row)) for row in rows]
    for item in listed:
        item["kinds"], item["active"], item["active_rooms"] = _kinds_of(item["kinds"]), bool(item["active"]), \
            item["active_rooms"] or 0
    return sorted(listed, key=lambda item: natural_key(item["code"]))


# --- what the phone picks from ---------------------------------------------------------------------

def buildings(conn):
    """The active buildings with an active room: [{code, name, name_en, campus, floors, kinds,
    meter_system}], in natural order (南2 before 南10)."""
    found = {}
    for code, name_zh, name_en, campus, meter_system, kinds, floor in conn.execute(
            "SELECT DISTINCT b.code, b.name_zh, b.name_en, b.campus, b.meter_system, b.kinds, r.floor "
            "FROM dorm_buildings b JOIN dorm_rooms r ON r.building = b.code WHERE b.active = 1 AND r.active = 1"):
        entry = found.setdefault(code, {"code": code, "name": name_zh, "name_en": name_en, "campus": campus,
                                        "floors": [], "kinds": _kind_entries(kinds), "meter_system": meter_system})
        entry["floors"].append(floor)
    for entry in found.values():
        entry["floors"].sort()
    return [found[code] for code in sorted(found, key=natural_key)]


def _active_building(conn, building):
    if not isinstance(building, str) or not _BUILDING.match(building):
        raise ServiceError("bad_room")
    row = _building_row(conn, building)
    if row is None or not row["active"]:
        raise ServiceError("unknown_building")
    return row


def rooms(conn, building, floor):
    """The active rooms of a floor: {building, floor, rooms: [{room}], kinds}."""
    row = _active_building(conn, building)
    if type(floor) is not int or not 0 < floor <= MAX_FLOOR:
        raise ServiceError("bad_room")
    found = [room for (room,) in conn.execute("SELECT room FROM dorm_rooms WHERE building = ? AND floor = ? AND "
                                              "active = 1", (building, floor))]
    return {"building": building, "floor": floor, "kinds": _kind_entries(row["kinds"]),
            "rooms": [{"room": room} for room in sorted(found, key=natural_key)]}


def room_payments(conn, building, floor, room, limit=DEFAULT_LISTED_PAYMENTS, viewer_account_id=None):
    """A listed room's recent payments, newest first: {building, floor, room, payments: [{time_ms,
    time, amount_fen, kind, payer (masked), meter_status, mine}]}; `mine` marks the viewer's own."""
    _check_room(building, floor, room)
    if conn.execute("SELECT 1 FROM dorm_rooms WHERE building = ? AND floor = ? AND room = ?",
                    (building, floor, room)).fetchone() is None:
        raise ServiceError("unknown_room")
    limit = max(1, min(int(limit), MAX_LISTED_PAYMENTS))
    rows = conn.execute(
        "SELECT e.payment_id, e.time_ms, e.amount_fen, e.kind, p.name, e.account_id FROM electricity_payments e "
        "JOIN accounts a ON a.id = e.account_id JOIN persons p ON p.id = a.person_id WHERE e.building = ? AND "
        "e.floor = ? AND e.room = ? ORDER BY e.time_ms DESC, e.payment_id DESC LIMIT ?",
        (building, floor, room, limit)).fetchall()
    delivery = meter_gateway.statuses(conn, [row[0] for row in rows])
    return {"building": building, "floor": floor, "room": room, "payments": [
        {"time_ms": time_ms, "time": _time_text(time_ms), "amount_fen": amount_fen, "kind": kind,
         "payer": mask_name(name), "meter_status": delivery.get(payment_id, "none"),
         "mine": viewer_account_id is not None and account_id == viewer_account_id}
        for payment_id, time_ms, amount_fen, kind, name, account_id in rows]}


# --- payment ---------------------------------------------------------------------------------------

def _parts(conn, payment_id):
    """[(wallet, fen)] of a booked payment, in the order they were drawn."""
    ids = ["e/%s/%d" % (payment_id, index) for index in range(len(protocol.WALLETS))]
    rows = conn.execute("SELECT t.id, la.wallet, t.amount_fen FROM transfers t JOIN ledger_accounts la "
                        "ON la.id = t.debit_id WHERE t.id IN (%s)" % ", ".join("?" * len(ids)), ids).fetchall()
    return [(wallet, fen) for _, wallet, fen in sorted(rows, key=lambda row: ids.index(row[0]))]


def _payable_room(conn, building, floor, room, kind):
    """(meter_system, meter_id) of a room that can take this payment now, or the refusal."""
    row = conn.execute("SELECT r.active, r.meter_id, b.active, b.meter_system, b.kinds FROM dorm_rooms r "
                       "JOIN dorm_buildings b ON b.code = r.building WHERE r.building = ? AND r.floor = ? "
                       "AND r.room = ?", (building, floor, room)).fetchone()
    if row is None:
        raise ServiceError("unknown_room")
    room_active, meter_id, building_active, meter_system, kinds = row
    if not (room_active and building_active):
        raise ServiceError("room_inactive")
    if kind not in _kinds_of(kinds):
        raise ServiceError("kind_unavailable")
    if meter_system == "online" and not meter_id:
        raise ServiceError("no_meter")
    return meter_system, meter_id


def pay(conn, account_id, building, floor, room, amount_fen, pin=None, operator=None, now_ms=None,
        idempotency_key=None, kind=DEFAULT_KIND):
    """Pay `amount_fen` of `kind` for a listed room. Returns {payment_id, parts: [(wallet, fen)],
    balances, repeated, kind, meter_status}; meter_status is "none" (no meter system: booked only) or
    the outbox row's state ("pending" until the meter system has it, then "delivered").

    With an `idempotency_key` the payment id is derived from it: a repeat of the same submission (a
    double click, a retry) books nothing and returns the first payment (repeated True); the same key
    for another room, kind or amount is refused (idempotency_conflict)."""
    _check_room(building, floor, room)
    if kind not in KINDS:
        raise ServiceError("bad_electricity_kind")
    check_amount(amount_fen, MAX_PAYMENT_FEN)
    now_ms = now(now_ms)
    payment_id = "E%d%s" % (now_ms, uuid.uuid4().hex[:12]) if idempotency_key is None else \
        idempotent_id("E", account_id, idempotency_key)

    def answer(parts, repeated):
        status = meter_gateway.statuses(conn, [payment_id]).get(payment_id, "none")
        return {"payment_id": payment_id, "parts": parts, "balances": registry.balances_of(conn, account_id),
                "repeated": repeated, "kind": kind, "meter_status": status}

    def operation():
        if idempotency_key is not None:
            done = conn.execute("SELECT account_id, building, floor, room, amount_fen, kind FROM electricity_payments "
                                "WHERE payment_id = ?", (payment_id,)).fetchone()
            if done is not None:
                if tuple(done) != (account_id, building, floor, room, amount_fen, kind):
                    raise ServiceError("idempotency_conflict")
                return answer(_parts(conn, payment_id), True)
        meter_system, meter_id = _payable_room(conn, building, floor, room, kind)
        holder = person_row(conn, account_id)
        if holder["category"] == card_layout.HOLDER_IDENTITY_ONLY:
            raise ServiceError("no_wallet")
        if holder["blocked"] or holder["in_debt"]:
            raise ServiceError("account_not_clear")
        merchant_id = electricity_merchant(conn)
        merchant_ledger_id = conn.execute("SELECT ledger_account_id FROM merchants WHERE id = ?",
                                          (merchant_id,)).fetchone()[0]
        store = SqliteStore(conn)
        wallet_ids = store.wallet_ids([account_id])[account_id]
        balances = store.balances(sorted(wallet_ids.values()))
        parts = wallet_rules.split_debit({wallet: balances[ledger_id] for wallet, ledger_id in wallet_ids.items()},
                                         wallet_rules.CATEGORY_ELECTRICITY, amount_fen)
        if parts is None:
            raise ServiceError("insufficient_funds")
        reference = "%s %d-%s" % (building, floor, room) + ("" if kind == DEFAULT_KIND else " " + kind)
        ledger.post(store, [ledger.Transfer("e/%s/%d" % (payment_id, index), wallet_ids[wallet], merchant_ledger_id,
                                            fen, ledger.KIND_PURCHASE, reference, now_ms)
                            for index, (wallet, fen) in enumerate(parts)])
        conn.execute("INSERT INTO electricity_payments (payment_id, account_id, building, floor, room, amount_fen, "
                     "operator, time_ms, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (payment_id, account_id, building, floor, room, amount_fen, operator, now_ms, kind))
        if meter_system == "online":        # owed to the meter: commits with the payment or not at all
            meter_gateway.enqueue(conn, payment_id, building, meter_id, kind, amount_fen, now_ms)
        touch_accounts(conn, [account_id])
        return answer(parts, False)
    return with_pin(conn, account_id, pin, operator, now_ms, operation)
