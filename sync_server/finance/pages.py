"""The finance section of the web pages (/finance/...), for signed-in staff with the finance role.

    GET  /finance/sign-in              finance's front door (POST: username + password, CSRF checked);
                                       lands on `next` (a staff page of this site only) or by role
    POST /finance/sign-out             ends this user's sessions, back to the front door
    GET  /finance/                     closed days, newest first; close the next day that has ended
    POST /finance/close                close a day (form field `day`, CSRF checked; never today)
    GET  /finance/<day>                the day's report: tables and SVG charts
    GET  /finance/<day>/<part>.csv     one table as CSV (parts: exports.PARTS)
    GET  /finance/<day>.xlsx           the whole report as an Excel workbook
    GET  /finance/<day>.json           the stored figures
    GET  /finance/migration            the go-live migration: old money in = credited + outstanding

Views only format what close.py / channel_statements.py compute. Who may see them is decided by
`finance_required`, one swappable decorator (today: the staff sessions of sync_server/web/auth.py
with the "finance" role): a visitor not signed in is sent to /finance/sign-in, a signed-in user
without the role gets the 403 page (sync_server/web/error_pages.py) saying so. Codes are shown by
their names (names.py), amounts in yuan.
"""
from flask import Blueprint, Response, abort, flash, g, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup

from sync_server import db as dbmod
from sync_server.finance import FinanceError, charts, close as close_module, day_number, day_of_ms, day_text
from sync_server.finance import exports, report as report_module
from sync_server.web import auth

finance_pages = Blueprint("finance_pages", __name__, url_prefix="/finance", template_folder="templates")
MAX_DAYS_LISTED = 400

finance_required = auth.staff_required("finance")


@finance_pages.after_request
def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _lang():
    return getattr(g, "lang", "zh")


def numeric_columns(rows, header):
    """[bool] per column: every filled cell of it is a number (count, id, amount: report.Yuan), so the
    column and its header are right-aligned in tabular figures; a number in a mixed column is too."""
    columns = []
    for index in range(len(header)):
        filled = [row[index] for row in rows if index < len(row) and row[index] not in (None, "")]
        columns.append(bool(filled) and all(exports.is_number(cell) for cell in filled))
    return columns


@finance_pages.context_processor
def _table_helpers():
    return {"numeric_columns": numeric_columns, "is_number": exports.is_number}


def _report_or_404(day):
    try:
        number = day_number(day)
    except FinanceError:
        abort(404)
    report = close_module.load_report(dbmod.get_db(), number)
    if report is None:
        abort(404)
    return report


@finance_pages.route("/sign-in", methods=("GET", "POST"))
def sign_in():
    return auth.staff_sign_in("finance", "finance/sign_in.html")


@finance_pages.post("/sign-out")
def sign_out():
    auth.check_csrf()
    auth.end_staff_sessions(dbmod.get_db())    # a copied cookie of this user ends too
    return redirect(url_for("finance_pages.sign_in"))


@finance_pages.get("/")
@finance_required
def index():
    conn = dbmod.get_db()
    days = []
    for number, day, closed_ms in reversed(close_module.closed_days(conn)[-MAX_DAYS_LISTED:]):
        report = close_module.load_report(conn, number)
        days.append({"day": day, "closed_ms": closed_ms, "summary": report_module.summary(report)})
    last = close_module.last_closed_day(conn)
    yesterday = day_of_ms(dbmod.now_ms()) - 1
    # only a day that has ended is offered (and only one can be closed here: no override on the page)
    next_day = None if last is not None and last >= yesterday else day_text(yesterday if last is None else last + 1)
    return render_template("finance/index.html", days=days, next_day=next_day)


@finance_pages.get("/migration")
@finance_required
def migration():
    """The go-live migration's money: cards by state, moved per category and wallet, outstanding."""
    from sync_server import legacy_migration
    report = legacy_migration.report(dbmod.get_db())
    rows = []
    for category in (legacy_migration.TEACHER, legacy_migration.STUDENT, legacy_migration.TEMPORARY):
        zh, en = legacy_migration.CATEGORY_NAMES[category]
        moved = report["moved"][en]
        rows.append({"name": en if _lang() == "en" else zh, "main": moved["main"], "legacy": moved["legacy"],
                     "water": moved["water"], "total": moved["main"] + moved["legacy"] + moved["water"]})
    return render_template("finance/migration.html", report=report, rows=rows)


@finance_pages.post("/close")
@finance_required
def close_day():
    auth.check_csrf()
    day = request.form.get("day", "")
    try:
        report, _newly = close_module.close_day(dbmod.get_db(), day_number(day))
    except FinanceError as error:
        flash(error.text(_lang()), "error")
        return redirect(url_for("finance_pages.index"))
    return redirect(url_for("finance_pages.day", day=report["day"]))


@finance_pages.get("/<day>")
@finance_required
def day(day):
    report = _report_or_404(day)
    lang = _lang()
    svg = {name: Markup(text) for name, text in charts.day_charts(report, lang).items()}
    tables = report_module.tables(report, lang)
    return render_template("finance/day.html", report=report, summary=report_module.summary(report),
                           ledger_check_text=report_module.ledger_check_text(report, lang),
                           tables=tables, parts=exports.PARTS, charts=svg,
                           downloads=[(part, name) for part, (name, _header, _rows) in zip(exports.PARTS, tables)],
                           unusual=report_module.unusual_lines(report, lang))


@finance_pages.get("/<day>/<part>.csv")
@finance_required
def day_csv(day, part):
    if part not in exports.PARTS:
        abort(404)
    report = _report_or_404(day)
    return Response(exports.csv_text(report, part, _lang()), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=%s-%s.csv" % (report["day"], part)})


@finance_pages.get("/<day>.xlsx")
@finance_required
def day_xlsx(day):
    report = _report_or_404(day)
    return Response(exports.workbook_bytes(report, _lang()),
                    mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": "attachment; filename=%s.xlsx" % report["day"]})


@finance_pages.get("/<day>.json")
@finance_required
def day_json(day):
    return jsonify(_report_or_404(day))
