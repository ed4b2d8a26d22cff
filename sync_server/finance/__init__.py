"""Finance (财务): the nightly close of a business day, its report, exports and channel statements.

    close.py               close_day(): reconcile one Beijing business day and store its figures for good,
                           from the sections in settlement.py, anomalies.py, counter_gaps.py and
                           ledger_check.py, all reading one close_window.CloseWindow
    report.py              the one-line summary, labels and the flat tables every output shares
    channel_statements.py  channel settlement statements (CSV) imported and matched line by line
    exports.py             the closed day as CSV files and an Excel workbook
    charts.py              SVG charts drawn on the server (no JavaScript on the finance pages)
    pages.py               the /finance pages for signed-in finance staff
    scheduler.py           the close run from inside `ykt server`, once a day
    cli.py                 `ykt finance close | import-statement | export`

Days are Beijing calendar days numbered from 1970-01-01 (sync_server/business_day.py, which the
rest of the server uses too). Everything here is a plain function on a database connection; the
pages and the CLI only format.
"""
# the day helpers, also under finance's name (finance modules, tests and simulators use them from here)
from sync_server.business_day import (BEIJING_OFFSET_MS, DAY_MS, EPOCH_DATE, HOUR_MS, day_of_ms,  # noqa: F401
                                      day_start_ms, day_text, hour_of_ms)
from sync_server import numbers
from sync_server.messages import BilingualError


class FinanceError(BilingualError):
    """A finance operation refused (day not closable, bad statement file...): zh and en texts."""


class MalformedFinanceInput(FinanceError):
    """Input that cannot be read at all (a date, a statement's encoding, columns or lines), as opposed
    to a refusal: the command line's exit code 7 (sync_server/mistakes.py)."""
    malformed = True


def day_number(text):
    """'YYYY-MM-DD' -> day number; FinanceError when it is not a date."""
    date = numbers.parse_date(str(text))
    if date is None:
        raise MalformedFinanceInput("日期格式错误（应为 YYYY-MM-DD）：%s" % text, "dates are YYYY-MM-DD: %s" % text)
    return (date - EPOCH_DATE).days
