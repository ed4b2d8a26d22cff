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
Tickets: every pending card of one person whose account has no card yet gets its new card at import
(a `cards` row, generation 1, status pending): the ticket an activation unit asks for by the old
serial (`ticket`, online) or keeps in its cache (`tickets_since`, paged by ticket_version, so a unit
activates with the server away). The unit's record (records.KIND_ACTIVATION) says what the locked
purses held; `book_activations` books it by serial, once, whatever copies arrive from wherever:

    student, 临时    the card's main purse -> the legacy wallet ("mg/<serial>/legacy")
    teacher          nothing more for the main purse (booked from the export at import; a card that
                     differs from the export is listed for finance, `report`)
    小钱包            registered in the export: the card's water purse -> the water wallet
                     ("mg/<serial>/water"); not registered: kept outstanding until the hall registers it

The transfer ids name the serial and the wallet, so a second record of the serial (another unit, a
resumed tap, a replay) cannot book again: it is counted on the card's row and nothing else happens.
A record naming a serial we never imported, or a new card other than the serial's ticket, is stored
unbooked with its reason (a forged or broken unit). The service hall activates late (the same unit
software on the hall's reader) and replaces a card broken by activation free against the old card
(`replace_broken`), booking from the unit's record when one exists, else from the export.

`report` gives the money: what the old cards held (the export's figures, replaced by what a unit read
once a card is activated), what has been credited, what is outstanding; old money in = credited +
outstanding, and the ledger's migrated money equals what the rows say was credited.
"""
import csv
import io

from firmware.core import card_layout, protocol, records as record_codec
from sync_server import db as dbmod, ledger, numbers
from sync_server.ledger_store import SqliteStore, touch_accounts
from sync_server.registry import HallError, add_person, card_expiry, issue_card_record, wallet_ledger_id

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
    shared = {}
    for entry in people:
        shared[entry["serial"]] = shared.get(entry["serial"], 0) + 1
    for line, row in _rows(water_text, WATER_HEADER, "water_purses.csv"):
        serial = _serial(row[0]) if len(row) == 2 else None
        fen = numbers.parse_yuan(row[1], MAX_WATER_FEN) if len(row) == 2 else None
        if serial is None or fen is None:
            problems.append((line, "water_purses.csv: 卡号 and 小钱包余额 (yuan, at most %.2f)" % (MAX_WATER_FEN / 100)))
        elif serial in water and shared.get(serial, 0) < 2:
            problems.append((line, "water_purses.csv: 卡号 %d twice" % serial))
        else:
            # a 卡号 two people share has a 小钱包 row per card: the total is kept for the hall to split
            water[serial] = water.get(serial, 0) + fen
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
              "teacher_fen_booked": 0, "tickets": 0}
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
            if state == PENDING:
                counts["tickets"] += _allocate_ticket(conn, serial, account_id, now_ms)
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


# --- tickets -------------------------------------------------------------------------------------

TICKET_PAGE = 500                    # tickets per cache page a unit downloads
VIA_UNIT, VIA_HALL = "unit", "hall"
REASON_UNKNOWN_SERIAL = "unknown_serial"        # a record naming a serial the export never had
REASON_NOT_THE_TICKET = "not_the_ticket"        # ... or a new card that is not the serial's ticket
CATEGORY_NAMES = {TEACHER: ("教工", "teacher"), STUDENT: ("学生", "student"), TEMPORARY: ("临时", "temporary")}


def _allocate_ticket(conn, serial, account_id, now_ms):
    """The new card an old card becomes at activation: a pending `cards` row, generation 1. None
    (0 returned) when the account has a card already: the hall activates that old card."""
    if conn.execute("SELECT 1 FROM cards WHERE account_id = ?", (account_id,)).fetchone():
        return 0
    holder, expiry = conn.execute("SELECT p.category, p.expiry_yyyymmdd FROM persons p JOIN accounts a "
                                  "ON a.person_id = p.id WHERE a.id = ?", (account_id,)).fetchone()
    card_number = dbmod.next_counter(conn, "card_number")
    # no UID yet: the old card's is learnt when a unit asks for the ticket online
    conn.execute("INSERT INTO cards (card_number, generation, account_id, uid, status, holder_category, "
                 "expiry_yyyymmdd, issued_ms) VALUES (?, 1, ?, ?, 'pending', ?, ?, ?)",
                 (card_number, account_id, b"", holder, expiry or card_expiry(holder, now_ms), now_ms))
    conn.execute("UPDATE legacy_cards SET card_number = ?, card_generation = 1, ticket_version = ? WHERE serial = ?",
                 (card_number, dbmod.next_counter(conn, "ticket_version"), serial))
    return 1


_TICKET_SQL = ("SELECT l.serial, l.category, l.state, l.card_number, l.card_generation, l.account_id, "
               "c.holder_category, c.expiry_yyyymmdd, c.status, p.name, l.ticket_version "
               "FROM legacy_cards l JOIN cards c ON c.card_number = l.card_number AND c.generation = l.card_generation "
               "JOIN persons p ON p.id = l.person_id ")


def _ticket_of(row):
    serial, category, state, card_number, generation, account_id, holder, expiry, status, name, version = row
    usable = state in (PENDING, ACTIVATED) and status in ("pending", "active")
    return serial, version, ({"serial": serial, "category": category, "card_number": card_number,
                              "generation": generation, "account_id": account_id, "holder_category": holder,
                              "expiry_yyyymmdd": expiry, "name": name} if usable else None)


def ticket(conn, serial, uid=None, now_ms=None):
    """What a unit online asks at a tap: {"ticket": the serial's new card or None, "recorded": whether
    a unit's record of this serial is booked already}. The card's UID is kept the first time."""
    row = conn.execute(_TICKET_SQL + "WHERE l.serial = ?", (serial,)).fetchone()
    if row is None:
        return {"ticket": None, "recorded": False}
    _serial_, _version, found = _ticket_of(row)
    if found is not None and uid:
        with dbmod.joined_transaction(conn):
            conn.execute("UPDATE cards SET uid = ? WHERE card_number = ? AND generation = ? AND uid = ?",
                         (bytes(uid), found["card_number"], found["generation"], b""))
    recorded = conn.execute("SELECT activation_records FROM legacy_cards WHERE serial = ?", (serial,)).fetchone()[0]
    return {"ticket": found, "recorded": bool(recorded)}


def tickets_since(conn, after_version, limit=TICKET_PAGE):
    """One page of the ticket cache: (tickets [{...} or {"serial", "ticket": None} when withdrawn],
    the version the unit then holds, more?)."""
    limit = max(1, min(int(limit), TICKET_PAGE))
    with dbmod.read_snapshot(conn):
        rows = conn.execute(_TICKET_SQL + "WHERE l.ticket_version > ? ORDER BY l.ticket_version LIMIT ?",
                            (after_version, limit + 1)).fetchall()
    more = len(rows) > limit
    page, version = [], after_version
    for row in rows[:limit]:
        serial, version, found = _ticket_of(row)
        page.append(found or {"serial": serial, "withdrawn": True})
    return page, version, more


# --- booking --------------------------------------------------------------------------------------

def _migration_transfer(conn, serial, account_id, wallet, amount_fen, now_ms):
    return ledger.Transfer("mg/%d/%s" % (serial, wallet), dbmod.LEDGER_LEGACY_SOURCE,
                           wallet_ledger_id(conn, account_id, wallet), amount_fen, ledger.KIND_MIGRATION,
                           "legacy:%d" % serial, now_ms)


def _book_card(conn, row, amounts, via, now_ms, terminal_id=None, seq=None):
    """Book one pending card's purses (amounts: main_fen, main_counter, water_fen, water_counter) by the
    rules of the module text and mark it activated. Returns the transfers posted."""
    serial, account_id, category, export_water_fen = row
    main_fen, main_counter, water_fen, water_counter = amounts
    transfers = []
    legacy_fen = main_fen if category != TEACHER else 0
    moved_water_fen = water_fen if export_water_fen is not None else 0
    if legacy_fen > 0:
        transfers.append(_migration_transfer(conn, serial, account_id, protocol.WALLET_LEGACY, legacy_fen, now_ms))
    if moved_water_fen > 0:
        transfers.append(_migration_transfer(conn, serial, account_id, protocol.WALLET_WATER, moved_water_fen, now_ms))
    posted = ledger.post(SqliteStore(conn), transfers) if transfers else []
    assert len(posted) == len(transfers), "serial %d was booked before while pending" % serial
    conn.execute("UPDATE legacy_cards SET state = ?, card_main_fen = ?, card_main_counter = ?, card_water_fen = ?, "
                 "card_water_counter = ?, moved_legacy_fen = ?, moved_water_fen = ?, activated_ms = ?, "
                 "activated_terminal_id = ?, activated_seq = ?, activated_via = ?, "
                 "ticket_version = ? WHERE serial = ? AND state = ?",
                 (ACTIVATED, main_fen, main_counter, water_fen, water_counter, legacy_fen, moved_water_fen, now_ms,
                  terminal_id, seq, via, dbmod.next_counter(conn, "ticket_version"), serial, PENDING))
    if posted:
        touch_accounts(conn, [account_id])
    return posted


def book_activations(conn, terminal_id, activations, now_ms):
    """Book the activation records new in a sync batch (ingest.store, under the booking turn): a list
    of (seq, record values, raw). Returns [(seq, reason)] of those stored unbooked (module text)."""
    assert conn.in_transaction
    refused = []
    for seq, values, raw in activations:
        serial, main_fen, main_counter, water_fen, water_counter = record_codec.activation_fields(raw)
        row = conn.execute("SELECT serial, account_id, category, export_water_fen, state, card_number, "
                           "card_generation FROM legacy_cards WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            refused.append((seq, REASON_UNKNOWN_SERIAL))
            continue
        card_number, account_id, generation, category = values[6], values[7], values[8], values[9]
        if (row[5], row[6], row[1], row[2]) != (card_number, generation, account_id, category):
            refused.append((seq, REASON_NOT_THE_TICKET))
            continue
        conn.execute("UPDATE legacy_cards SET activation_records = activation_records + 1 WHERE serial = ?",
                     (serial,))
        if row[4] != PENDING:
            continue                    # booked by an earlier record or at the hall: never twice
        _book_card(conn, row[:4], (main_fen, main_counter, water_fen, water_counter), VIA_UNIT, now_ms,
                   terminal_id, seq)
        conn.execute("UPDATE cards SET status = 'active' WHERE card_number = ? AND generation = ? AND status = 'pending'",
                     (card_number, generation))
    return refused


def replace_broken(conn, serial, uid, now_ms=None):
    """A card that activation left unusable (or one the unit could not activate), replaced free against
    the old card at the service hall (seed 004: 凭旧卡免费更换, no reissue fee): the serial's money is
    booked once - from a unit's record if one was booked, else from the export's figures - and a new
    card (the ticket's number, next generation) is issued for `uid`. Returns (identity, name, booked)."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.joined_transaction(conn):
        row = conn.execute("SELECT serial, account_id, category, export_water_fen, state, export_fen "
                           "FROM legacy_cards WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            raise HallError("旧卡号 %d 不在导入数据中" % serial, "old card %d is not in the import" % serial)
        if row[4] in (LOST, DUPLICATE) or row[1] is None:
            raise HallError("旧卡 %d 为挂失卡或重复卡号，请按补卡办理" % serial,
                            "old card %d is lost or shared: handle it as a reissue" % serial)
        booked = []
        if row[4] == PENDING:
            export_water = row[3] or 0
            booked = _book_card(conn, row[:4], (row[5], 0, export_water, 0), VIA_HALL, now_ms)
        if conn.execute("SELECT 1 FROM cards WHERE uid = ? AND status != 'replaced'", (bytes(uid),)).fetchone():
            raise HallError("该卡片UID已被使用", "this card UID is already in use")
        identity, name = issue_card_record(conn, row[1], uid, now_ms)   # the pending ticket is replaced
    return identity, name, [(t.id, t.amount_fen) for t in booked]


def register_water(conn, serial, now_ms=None):
    """A 小钱包 registered at the hall after its card was activated: the locked purse's amount, as the
    unit read it, moves to the water wallet once."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    with dbmod.joined_transaction(conn):
        row = conn.execute("SELECT account_id, state, card_water_fen, export_water_fen, moved_water_fen "
                           "FROM legacy_cards WHERE serial = ?", (serial,)).fetchone()
        if row is None or row[1] != ACTIVATED or row[2] is None:
            raise HallError("旧卡 %d 尚未激活，请先激活卡片" % serial, "old card %d is not activated yet" % serial)
        if row[3] is not None:
            return 0                    # registered already: moved at activation
        fen = row[2]
        if fen > 0:
            ledger.post(SqliteStore(conn), [_migration_transfer(conn, serial, row[0], protocol.WALLET_WATER, fen,
                                                                now_ms)])
            touch_accounts(conn, [row[0]])
        conn.execute("UPDATE legacy_cards SET export_water_fen = ?, moved_water_fen = ? WHERE serial = ?",
                     (fen, fen, serial))
    return fen


# --- the money ------------------------------------------------------------------------------------

def report(conn):
    """The migration's money (module text): per state the cards, per category and wallet what moved,
    old money in = credited + outstanding, and the ledger's migrated money against the rows."""
    totals = {state: 0 for state in (PENDING, ACTIVATED, LOST, DUPLICATE)}
    moved = {name_en: {"main": 0, "legacy": 0, "water": 0} for _zh, name_en in CATEGORY_NAMES.values()}
    old_fen = credited_fen = outstanding_fen = 0
    teacher_differ = teacher_differ_fen = water_unregistered_fen = 0
    for (state, category, export_fen, export_water, moved_main, moved_legacy, moved_water, card_main,
         card_water) in conn.execute(
            "SELECT state, category, export_fen, export_water_fen, moved_main_fen, moved_legacy_fen, "
            "moved_water_fen, card_main_fen, card_water_fen FROM legacy_cards"):
        totals[state] += 1
        wallets = moved[CATEGORY_NAMES[category][1]]
        wallets["main"] += moved_main
        wallets["legacy"] += moved_legacy
        wallets["water"] += moved_water
        credited = moved_main + moved_legacy + moved_water
        if state == ACTIVATED:
            # what the old card held once read: teachers' main purse stays the export's (booked at import)
            main = export_fen if category == TEACHER else card_main
            water = card_water or 0
            if category == TEACHER and card_main is not None and card_main != export_fen:
                teacher_differ += 1
                teacher_differ_fen += card_main - export_fen
            if export_water is None:
                water_unregistered_fen += water
        else:
            main, water = export_fen, export_water or 0
        old_fen += main + water
        credited_fen += credited
        outstanding_fen += main + water - credited
    ledger_fen = -(conn.execute("SELECT coalesce(balance_fen, 0) FROM balances WHERE ledger_account_id = ?",
                                (dbmod.LEDGER_LEGACY_SOURCE,)).fetchone() or (0,))[0]
    # the ledger's own view, apart from the rows: one migration transfer per serial and wallet at most
    moved_twice = conn.execute(
        "SELECT count(*) FROM (SELECT t.reference, t.credit_id FROM transfers t WHERE t.kind = ? "
        "GROUP BY t.reference, t.credit_id HAVING count(*) > 1) twice", (ledger.KIND_MIGRATION,)).fetchone()[0]
    return {"cards_pending": totals[PENDING], "cards_activated": totals[ACTIVATED], "cards_lost": totals[LOST],
            "cards_duplicate": totals[DUPLICATE], "old_fen": old_fen, "credited_fen": credited_fen,
            "outstanding_fen": outstanding_fen, "ledger_migrated_fen": ledger_fen, "moved": moved,
            "moved_twice": moved_twice, "teacher_cards_differing": teacher_differ,
            "teacher_difference_fen": teacher_differ_fen, "water_unregistered_fen": water_unregistered_fen,
            "conservation_ok": credited_fen == ledger_fen and old_fen == credited_fen + outstanding_fen
            and moved_twice == 0}


WALLET_NAMES = {"main": ("主钱包", "main"), "legacy": ("原卡余额", "old balance"), "water": ("小钱包", "water")}


def report_lines(report, lang="zh"):
    """The migration report for people (the hall's and finance's commands): cards by state, money
    moved per category and wallet, outstanding, the invariant and the ledger's agreement."""
    en = lang == "en"

    def yuan(fen):
        return "%.2f" % (fen / 100)
    lines = [("old cards: %(cards_pending)d pending, %(cards_activated)d activated, %(cards_lost)d lost, "
              "%(cards_duplicate)d with a shared serial" if en else
              "旧卡：待激活 %(cards_pending)d，已激活 %(cards_activated)d，挂失 %(cards_lost)d，卡号重复 %(cards_duplicate)d")
             % report]
    lines.append("moved in, yuan:" if en else "已迁入（元）：")
    for category in (TEACHER, STUDENT, TEMPORARY):
        zh, english = CATEGORY_NAMES[category]
        moved = report["moved"][english]
        lines.append("  %s  %s" % (english if en else zh, "  ".join(
            "%s %s" % (WALLET_NAMES[wallet][1 if en else 0], yuan(moved[wallet])) for wallet in ("main", "legacy", "water"))))
    lines.append(("old money %s yuan = credited %s + outstanding %s; ledger %s; moved twice %d" if en else
                  "旧系统余额 %s 元 = 已入账 %s 元 + 待迁移 %s 元；账本核对%s；重复迁入 %d 笔") % (
        yuan(report["old_fen"]), yuan(report["credited_fen"]), yuan(report["outstanding_fen"]),
        ("agrees" if report["conservation_ok"] else "DISAGREES") if en else
        ("一致" if report["conservation_ok"] else "不一致"), report["moved_twice"]))
    if report["teacher_cards_differing"]:
        lines.append(("teachers' cards that differ from the export: %d, %s yuan (booked from the export)" if en else
                      "教工卡内余额与导出不符 %d 张，差额 %s 元（按导出入账）")
                     % (report["teacher_cards_differing"], yuan(report["teacher_difference_fen"])))
    if report["water_unregistered_fen"]:
        lines.append(("小钱包 not registered on activated cards: %s yuan (register at the hall)" if en else
                      "已激活卡未登记的小钱包 %s 元（到服务大厅登记后转入）") % yuan(report["water_unregistered_fen"]))
    return lines
