"""A closed day for the finance office: CSV files (one per table) and one Excel workbook.

Both are built from `report.tables()`, so they hold exactly what the HTML page shows. CSV is UTF-8
with a BOM (Excel opens it with the Chinese intact); in the workbook amounts are numbers with two
decimals (Decimal, never float arithmetic), so the office can sum them.
"""
import csv
import decimal
import io
import os
import re

import openpyxl
from openpyxl.styles import Font

from sync_server.finance import report as report_module

PARTS = ("summary", "merchants", "by_hour", "terminals", "channels", "anomalies", "card_gaps", "invariants",
         "merchant_checks")
_YUAN = re.compile(r"^-?\d+\.\d{2}$")


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
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def workbook_bytes(report, lang="zh"):
    """The whole report as an .xlsx file, one sheet per table."""
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, header, rows in _tables(report, lang).values():
        sheet = book.create_sheet(title=name[:31])
        sheet.append(header)
        for cell in sheet[1]:
            cell.font = Font(bold=True)
        for row in rows:
            sheet.append([decimal.Decimal(value) if isinstance(value, str) and _YUAN.match(value) else value
                          for value in row])
        for column in sheet.iter_cols(min_row=2):
            for cell in column:
                if isinstance(cell.value, decimal.Decimal):
                    cell.number_format = "0.00"
        for index, title in enumerate(header, start=1):
            sheet.column_dimensions[openpyxl.utils.get_column_letter(index)].width = max(10, len(str(title)) * 2)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def write_all(report, out_dir, lang="zh"):
    """Write <day>-<part>.csv for every table and <day>.xlsx into out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for part in PARTS:
        path = os.path.join(out_dir, "%s-%s.csv" % (report["day"], part))
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write(csv_text(report, part, lang))
        paths.append(path)
    path = os.path.join(out_dir, "%s.xlsx" % report["day"])
    with open(path, "wb") as handle:
        handle.write(workbook_bytes(report, lang))
    paths.append(path)
    return paths
