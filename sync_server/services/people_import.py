"""People import from the HR and student registries (CSV), by category, repeatably.

    import_people(conn, csv_text, category) -> {"created", "updated", "unchanged", "rows"}

Categories (manual chapter 9): staff (新教工, from HR), student (from the student registry),
self_employed (部门自聘人员), temporary (临时卡: the expiry column is required and becomes the card's
expiry), identity (身份卡: identification only, no wallet - recharges and payments are refused).

The natural key is the staff / student number: a row whose person exists updates name, ID number,
department, category and expiry when they differ, and is otherwise left alone, so running the same
file twice changes nothing. New people get an account (their initial PIN is hashed on first use, see
sync_server/pin_rules.py). The whole file is checked before anything is written: one bad row refuses the
import, with the line numbers of the bad rows, and nothing is stored. Columns may be named in
English or Chinese (姓名, 工号/学号, 身份证号, 部门/院系, 有效期).
"""
import csv
import datetime
import io
import re

from firmware.core import card_layout
from sync_server import registry
from sync_server.services import ServiceError, csv_columns, now, register_messages, tx

CATEGORIES = {
    "staff": card_layout.HOLDER_STAFF,
    "student": card_layout.HOLDER_STUDENT,
    "self_employed": card_layout.HOLDER_SELF_EMPLOYED,
    "temporary": card_layout.HOLDER_TEMPORARY,
    "identity": card_layout.HOLDER_IDENTITY_ONLY,
}
COLUMNS = {
    "name": ("name", "姓名"),
    "staff_number": ("staff_number", "number", "学工号", "工号", "学号"),
    "id_number": ("id_number", "身份证号", "证件号"),
    "department": ("department", "部门", "院系", "单位"),
    "expiry": ("expiry", "有效期", "有效期至"),
}
MAX_ROWS = 50000
MAX_CSV_BYTES = 16 * 1024 * 1024
MAX_ERRORS_REPORTED = 20
_NUMBER = re.compile(r"^[0-9A-Za-z]{1,32}$")
_ID_NUMBER = re.compile(r"^[0-9A-Za-z]{6,18}$")


class ImportRefused(ServiceError):
    """The file has bad rows; `errors` is [(line, zh, en)] (the first MAX_ERRORS_REPORTED)."""

    def __init__(self, errors):
        ServiceError.__init__(self, "import_refused", len(errors))
        self.errors = errors[:MAX_ERRORS_REPORTED]
        details = "; ".join("%d: %s" % (line, zh) for line, zh, _ in self.errors)
        details_en = "; ".join("%d: %s" % (line, en) for line, _, en in self.errors)
        self.zh, self.en = "%s（%s）" % (self.zh, details), "%s (%s)" % (self.en, details_en)
        self.args = ("%s / %s" % (self.zh, self.en),)


register_messages({
    "import_refused": (400, "导入被拒绝：%d 行有错误，未导入任何人员", "import refused: %d bad rows, nobody imported"),
    "bad_category": (400, "人员类别应为 staff、student、self_employed、temporary 或 identity",
                     "category must be staff, student, self_employed, temporary or identity"),
    "bad_csv": (400, "CSV 文件无效：%s", "invalid CSV file: %s"),
})


def _expiry(text):
    for form in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"):
        try:
            day = datetime.datetime.strptime(text, form).date()
            return day.year * 10000 + day.month * 100 + day.day
        except ValueError:
            continue
    return None


def parse(csv_text, category_name):
    """Rows as dicts (name, staff_number, id_number, department, expiry_yyyymmdd), or ImportRefused."""
    if category_name not in CATEGORIES:
        raise ServiceError("bad_category")
    if len(csv_text) > MAX_CSV_BYTES:
        raise ServiceError("bad_csv", "too large")
    reader = csv.reader(io.StringIO(csv_text.lstrip("\ufeff")))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise ServiceError("bad_csv", "no header")
    columns = csv_columns(header, COLUMNS)
    if "name" not in columns or "staff_number" not in columns:
        raise ServiceError("bad_csv", "name and staff_number columns are required / 需要姓名和学工号列")
    rows, errors, seen = [], [], {}
    temporary = CATEGORIES[category_name] == card_layout.HOLDER_TEMPORARY
    try:
        for line, values in enumerate(reader, start=2):
            if not any(value.strip() for value in values):
                continue
            if len(rows) >= MAX_ROWS:
                raise ServiceError("bad_csv", "more than %d rows" % MAX_ROWS)
            cell = {field: (values[index].strip() if index < len(values) else "") for field, index in columns.items()}
            problem = _row_problem(cell, temporary, seen)
            if problem:
                errors.append((line,) + problem)
                continue
            seen[cell["staff_number"]] = line
            rows.append({"name": cell["name"], "staff_number": cell["staff_number"],
                         "id_number": cell.get("id_number") or None, "department": cell.get("department") or None,
                         "expiry_yyyymmdd": _expiry(cell["expiry"]) if cell.get("expiry") else None})
    except csv.Error as error:
        raise ServiceError("bad_csv", str(error))
    if errors:
        raise ImportRefused(errors)
    return rows


def _row_problem(cell, temporary, seen):
    if not cell["name"] or len(cell["name"]) > 64:
        return ("姓名为空或过长", "name empty or too long")
    if not _NUMBER.match(cell["staff_number"]):
        return ("学工号无效", "invalid staff/student number")
    if cell["staff_number"] in seen:
        return ("学工号与第 %d 行重复" % seen[cell["staff_number"]],
                "staff/student number repeats line %d" % seen[cell["staff_number"]])
    if cell.get("id_number") and not _ID_NUMBER.match(cell["id_number"]):
        return ("身份证号无效", "invalid ID number")
    if cell.get("expiry") and _expiry(cell["expiry"]) is None:
        return ("有效期格式错误", "invalid expiry date")
    if temporary and not cell.get("expiry"):
        return ("临时卡需要有效期", "a temporary card needs an expiry date")
    if len(cell.get("department") or "") > 64:
        return ("部门名称过长", "department too long")
    return None


_FIELDS = ("name", "id_number", "category", "department", "expiry_yyyymmdd")


def import_people(conn, csv_text, category_name, now_ms=None):
    """Create or update the people of a registry file; returns counts and the rows' staff numbers."""
    rows = parse(csv_text, category_name)
    category = CATEGORIES[category_name]
    now_ms = now(now_ms)
    report = {"created": 0, "updated": 0, "unchanged": 0, "rows": len(rows)}
    with tx(conn):
        for row in rows:
            wanted = (row["name"], row["id_number"], category, row["department"], row["expiry_yyyymmdd"])
            existing = conn.execute("SELECT id, %s FROM persons WHERE staff_number = ?" % ", ".join(_FIELDS),
                                    (row["staff_number"],)).fetchone()
            if existing is None:
                person_id, _ = registry.add_person(conn, row["name"], category, id_number=row["id_number"],
                                                   staff_number=row["staff_number"], now_ms=now_ms,
                                                   set_initial_pin=False)
                conn.execute("UPDATE persons SET department = ?, expiry_yyyymmdd = ?, updated_ms = ? WHERE id = ?",
                             (row["department"], row["expiry_yyyymmdd"], now_ms, person_id))
                report["created"] += 1
            elif tuple(existing[1:]) != wanted:
                conn.execute("UPDATE persons SET name = ?, id_number = ?, category = ?, department = ?, "
                             "expiry_yyyymmdd = ?, updated_ms = ? WHERE id = ?", wanted + (now_ms, existing[0]))
                report["updated"] += 1
            else:
                report["unchanged"] += 1
    return report
