"""A closed day for the finance office: CSV files (one per table) and one Excel workbook.

Both are built from `report.tables()`, so they hold exactly what the HTML page shows: headers and
codes in words (names.py: 食堂, 支付宝, 已停用, never `canteen`, `alipay`, `revoked`), ids and amounts as
numbers. No code column is kept beside the words: programs read the day's .json (the stored figures,
codes and all); these files are for people. CSV is UTF-8
with a BOM (Excel opens it with the Chinese intact); in the workbook amounts are numbers with two
decimals (Decimal, never float arithmetic), so the office can sum them.

Every text cell stays text, whatever a merchant or channel name starts with: in the workbook each is
a string cell (never a formula), with Excel's quote prefix when it starts like one; in CSV a text cell
starting with = + - @ tab or CR gets a leading apostrophe (OWASP "CSV injection"). Only counts,
ids and amounts (report.Yuan) are written as numbers.
"""
import csv
import decimal
import io
import os

import openpyxl
from openpyxl.styles import Font

from sync_server.finance import report as report_module

PARTS = ("summary", "merchants", "by_hour", "terminals", "channels", "anomalies", "card_gaps", "invariants",
         "merchant_checks", "unusual")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _tables(report, lang):
    tables = report_module.tables(report, lang)
    assert len(tables) == len(PARTS)
    return dict(zip(PARTS, tables))


def csv_text(report, part, lang="zh"):
    """One table of the report as CSV text (with a BOM)."""
    _name, header, rows = _tables(report, lang)[part]
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([_csv_cell(value) for value in header])
    writer.writerows([_csv_cell(value) for value in row] for row in rows)
    return out.getvalue()


def is_number(value):
    """Counts, ids and amounts: written as numbers, shown right-aligned."""
    return isinstance(value, (int, report_module.Yuan)) and not isinstance(value, bool)


def _csv_cell(value):
    if is_number(value) or value is None:
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _set_sheet_cell(cell, value):
    """Amounts as two-decimal numbers, counts as numbers, anything else as a string cell."""
    if isinstance(value, report_module.Yuan):
        cell.value = decimal.Decimal(value)
        cell.number_format = "0.00"
    elif is_number(value) or value is None:
        cell.value = value
    else:
        text = str(value)
        cell.value = text
        cell.data_type = "s"            # openpyxl would store "=..." as a formula
        if text.startswith(FORMULA_STARTS):
            cell.quotePrefix = True


def workbook_bytes(report, lang="zh"):
    """The whole report as an .xlsx file, one sheet per table."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, header, rows in _tables(report, lang).values():
        sheet = book.create_sheet(title=name[:31])
        for row_number, row in enumerate([header] + list(rows), start=1):
            for column_number, value in enumerate(row, start=1):
                _set_sheet_cell(sheet.cell(row=row_number, column=column_number), value)
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        for index, title in enumerate(header, start=1):
            sheet.column_dimensions[openpyxl.utils.get_column_letter(index)].width = max(10, len(str(title)) * 2)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def write_all(report, out_dir, lang="zh"):
    """Write <day>-<part>.csv for every table and <day>.xlsx into out_dir; returns the paths. The files
    are 0600 and a directory made here 0700 (names, accounts, money); an existing one keeps its mode."""
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir, mode=0o700)
        os.chmod(out_dir, 0o700)         # makedirs' mode is cut by the umask, never widened
    paths = []
    for part in PARTS:
        path = os.path.join(out_dir, "%s-%s.csv" % (report["day"], part))
        _write_private(path, csv_text(report, part, lang).encode("utf-8"))
        paths.append(path)
    path = os.path.join(out_dir, "%s.xlsx" % report["day"])
    _write_private(path, workbook_bytes(report, lang))
    paths.append(path)
    return paths


def _write_private(path, data):
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(descriptor, 0o600)     # a file left by an older export may be 0644
        handle.write(data)
