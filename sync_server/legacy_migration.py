"""Go-live: the old card centre's export into people, accounts and the ledger (seed 004).

The old system (firmware/core/legacy_card.py) kept money on the cards; its card centre hands over
what it last knew: people.csv (姓名, 学工号, 证件号码, 身份, 卡号, 卡状态, 余额(元)) and
water_purses.csv (卡号, 小钱包余额(元)), UTF-8 with or without a BOM, amounts in yuan with two
decimals. `import_export` makes one person and account per 学工号 (an existing one is kept), and a
`legacy_cards` row per 卡号:

    teacher (教工)   the export's balance is booked into the main wallet now ("mg/<serial>/main", a
                     `migration` transfer from the legacy source account), so it shows in the app
                     before the card is activated
    student, 临时    nothing now: at activation the card's own balance goes to the legacy wallet
                     (usable on hot water and electricity only)
    小钱包            a registered water purse moves to the water wallet at activation
    挂失 (lost)       kept, state lost: the service hall handles it, no activation
    a shared 卡号     both rows' people are imported, the card is state duplicate: the hall decides

The whole import is one transaction and all-or-nothing: a file with a bad row is refused with every
bad line named, and changes nothing. The same export imported again changes nothing (each card's
money is booked once, by its serial); a later export may add cards but never books a card twice.
`report` gives the money: what the export says is on the old cards, what has been credited, what is
outstanding on cards not activated yet - old money in = credited + outstanding.
"""
import csv
import io

from firmware.core import card_layout, protocol
from sync_server import db as dbmod, ledger, numbers
from sync_server.ledger_store import SqliteStore, touch_accounts
from sync_server.registry import HallError, add_person, wallet_ledger_id

PEOPLE_HEADER = ("姓名", "学工号", "证件号码", "身份", "卡号", "卡状态", "余额(元)")
WATER_HEADER = ("卡号", "小钱包余额(元)")
MAX_EXPORT_BYTES = 64 * 1024 * 1024
MAX_ROWS = 200000
MAX_SERIAL = 99999999
MAX_BALANCE_FEN = 999999            # the old main purse's limit (9,999.99 yuan)
MAX_WATER_FEN = 99999               # the old 小钱包's (999.99 yuan)
MAX_PROBLEMS_LISTED = 20

TEACHER, STUDENT, TEMPORARY = 1, 2, 3          # firmware/core/legacy_card.py's categories
CATEGORIES = {"教工": TEACHER, "学生": STUDENT, "临时": TEMPORARY}
HOLDER_OF = {TEACHER: card_layout.HOLDER_STAFF, STUDENT: card_layout.HOLDER_STUDENT,
             TEMPORARY: card_layout.HOLDER_TEMPORARY}
STATUS_NORMAL, STATUS_LOST = "正常", "挂失"

PENDING, ACTIVATED, LOST, DUPLICATE = "pending", "activated", "lost", "duplicate"


class ExportRefused(HallError):
    """The export has rows that cannot be imported: `problems` lists them (line, what)."""

    def __init__(self, problems):
        listed = "; ".join("%d: %s" % problem for problem in problems[:MAX_PROBLEMS_LISTED])
        HallError.__init__(self, "导入被拒绝：%d 行有误（%s）" % (len(problems), listed),
                           "import refused: %d bad rows (%s)" % (len(problems), listed))
        self.problems = problems


def _rows(text, header, what):
    if len(text) > MAX_EXPORT_BYTES:
        raise ExportRefused([(0, "%s larger than %d bytes" % (what, MAX_EXPORT_BYTES))])
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    first = next(reader, None)
    if first is None or tuple(cell.strip() for cell in first) != header:
        raise ExportRefused([(1, "%s must start with the header %s" % (what, ",".join(header)))])
    rows = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(rows) >= MAX_ROWS:
            raise ExportRefused([(line, "more than %d rows" % MAX_ROWS)])
        rows.append((line, [cell.strip() for cell in row]))
    return rows


def _serial(text):
    return numbers.parse_int(text, 1, MAX_SERIAL)


def parse_export(people_text, water_text):
    """(people, water): people [{name, staff_number, id_number, category, serial, lost, balance_fen}],
    water {serial: fen}; ExportRefused naming every bad line."""
    problems, people, water = [], [], {}
    for line, row in _rows(people_text, PEOPLE_HEADER, "people.csv"):
        if len(row) != len(PEOPLE_HEADER):
            problems.append((line, "expected %d columns" % len(PEOPLE_HEADER)))
            continue
        name, staff_number, id_number, category, serial, status, balance = row
        entry = {"line": line, "name": name, "staff_number": staff_number, "id_number": id_number or None,
                 "category": CATEGORIES.get(category), "serial": _serial(serial), "lost": status == STATUS_LOST,
                 "balance_fen": numbers.parse_yuan(balance, MAX_BALANCE_FEN)}
        if not name or not staff_number or len(name) > 40 or len(staff_number) > 20:
            problems.append((line, "name and staff number are required"))
        elif entry["category"] is None:
            problems.append((line, "身份 must be one of %s" % "/".join(CATEGORIES)))
        elif entry["serial"] is None:
            problems.append((line, "卡号 must be 1 to %d" % MAX_SERIAL))
        elif status not in (STATUS_NORMAL, STATUS_LOST):
            problems.append((line, "卡状态 must be %s or %s" % (STATUS_NORMAL, STATUS_LOST)))
        elif entry["balance_fen"] is None:
            problems.append((line, "余额 must be yuan with at most two decimals, at most %.2f" % (MAX_BALANCE_FEN / 100)))
        else:
            people.append(entry)
    for line, row in _rows(water_text, WATER_HEADER, "water_purses.csv"):
        serial = _serial(row[0]) if len(row) == 2 else None
        fen = numbers.parse_yuan(row[1], MAX_WATER_FEN) if len(row) == 2 else None
        if serial is None or fen is None:
            problems.append((line, "water_purses.csv: 卡号 and 小钱包余额 (yuan, at most %.2f)" % (MAX_WATER_FEN / 100)))
        elif serial in water:
            problems.append((line, "water_purses.csv: 卡号 %d twice" % serial))
        else:
            water[serial] = fen
    staff_numbers = {}
    for entry in people:
        earlier = staff_numbers.setdefault(entry["staff_number"], entry["line"])
        if earlier != entry["line"]:
            problems.append((entry["line"], "学工号 %s repeats line %d" % (entry["staff_number"], earlier)))
    if problems:
        raise ExportRefused(sorted(problems))
    return people, water


def import_export(conn, people_text, water_text, now_ms=None):
    """Import the old card centre's export (module text); returns the counts and the money."""
    people, water = parse_export(people_text, water_text)
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    counts = {"people_created": 0, "people_kept": 0, "cards_new": 0, "cards_known": 0, "lost": 0, "duplicate": 0,
              "teacher_fen_booked": 0}
    by_serial = {}
    for entry in people:
        by_serial.setdefault(entry["serial"], []).append(entry)
    with dbmod.transaction(conn):
        accounts = {}
        for entry in people:
            accounts[entry["line"]] = _person(conn, entry, now_ms, counts)
        transfers, touched = [], []
        for serial in sorted(by_serial):
            entries = by_serial[serial]
            if conn.execute("SELECT 1 FROM legacy_cards WHERE serial = ?", (serial,)).fetchone():
                counts["cards_known"] += 1          # imported before: its money is booked once only
                continue
            counts["cards_new"] += 1
            entry = entries[0]
            if len(entries) > 1:
                state, person_id, account_id = DUPLICATE, None, None
                counts["duplicate"] += 1
            else:
                state = LOST if entry["lost"] else PENDING
                person_id, account_id = accounts[entry["line"]]
                counts["lost"] += state == LOST
            booked_fen = 0
            if state == PENDING and entry["category"] == TEACHER and entry["balance_fen"] > 0:
                booked_fen = entry["balance_fen"]
                transfers.append(ledger.Transfer("mg/%d/main" % serial, dbmod.LEDGER_LEGACY_SOURCE,
                                                 wallet_ledger_id(conn, account_id, protocol.WALLET_MAIN),
                                                 booked_fen, ledger.KIND_MIGRATION, "legacy:%d" % serial, now_ms))
                touched.append(account_id)
            conn.execute("INSERT INTO legacy_cards (serial, person_id, account_id, category, export_fen, "
                         "export_water_fen, state, imported_ms, moved_main_fen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (serial, person_id, account_id, entry["category"], entry["balance_fen"], water.get(serial),
                          state, now_ms, booked_fen))
            counts["teacher_fen_booked"] += booked_fen
        for start in range(0, len(transfers), ledger.MAX_TRANSFERS_PER_POST):
            ledger.post(SqliteStore(conn), transfers[start:start + ledger.MAX_TRANSFERS_PER_POST])
        if touched:
            touch_accounts(conn, sorted(set(touched)))     # terminals get the new balances at their next sync
    counts.update(report(conn))
    return counts


def _person(conn, entry, now_ms, counts):
    """(person_id, account_id) of the export row's 学工号: the existing person, or a new one."""
    row = conn.execute("SELECT p.id, a.id FROM persons p JOIN accounts a ON a.person_id = p.id WHERE p.staff_number = ? "
                       "ORDER BY a.id LIMIT 1", (entry["staff_number"],)).fetchone()
    if row is not None:
        counts["people_kept"] += 1
        return row[0], row[1]
    counts["people_created"] += 1
    # the initial PIN is hashed on first use (pin_rules.ensure_pin), as for the registry import
    return add_person(conn, entry["name"], HOLDER_OF[entry["category"]], id_number=entry["id_number"],
                      staff_number=entry["staff_number"], now_ms=now_ms, set_initial_pin=False)


def report(conn):
    """The migration's money: old money in = credited + outstanding (the export's view of the cards)."""
    totals = {state: 0 for state in (PENDING, ACTIVATED, LOST, DUPLICATE)}
    old_fen = credited_fen = outstanding_fen = 0
    for state, count, export_fen, water_fen, moved_fen in conn.execute(
            "SELECT state, count(*), coalesce(sum(export_fen), 0), coalesce(sum(export_water_fen), 0), "
            "coalesce(sum(moved_main_fen + moved_legacy_fen + moved_water_fen), 0) FROM legacy_cards GROUP BY state"):
        totals[state] = count
        old_fen += export_fen + water_fen
        credited_fen += moved_fen
        if state != ACTIVATED:
            outstanding_fen += export_fen + water_fen - moved_fen
    ledger_fen = -(conn.execute("SELECT coalesce(balance_fen, 0) FROM balances WHERE ledger_account_id = ?",
                                (dbmod.LEDGER_LEGACY_SOURCE,)).fetchone() or (0,))[0]
    return {"cards_pending": totals[PENDING], "cards_activated": totals[ACTIVATED], "cards_lost": totals[LOST],
            "cards_duplicate": totals[DUPLICATE], "old_fen": old_fen, "credited_fen": credited_fen,
            "outstanding_fen": outstanding_fen, "ledger_migrated_fen": ledger_fen,
            "conservation_ok": credited_fen == ledger_fen}
