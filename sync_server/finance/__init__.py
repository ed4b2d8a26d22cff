"""Finance (财务): the nightly close of a business day, its report, exports and channel statements.

    close.py       close_day(): reconcile one Beijing business day and store its figures for good
    report.py      the one-line summary, labels and the flat tables every output shares
    statements.py  channel settlement statements (CSV) imported and matched line by line
    exports.py     the closed day as CSV files and an Excel workbook
    charts.py      SVG charts drawn on the server (no JavaScript on the finance pages)
    pages.py       the /finance pages for signed-in finance staff
    scheduler.py   the close run from inside `ykt server`, once a day
    cli.py         `ykt finance close | import-statement | export`

Days are Beijing calendar days (UTC+8, no daylight saving), numbered as days since 1970-01-01 so
arithmetic on them is plain integer arithmetic. Everything here is a plain function on a database
connection; the pages and the CLI only format.
"""
import datetime

from sync_server.messages import BilingualError

BEIJING_OFFSET_MS = 8 * 3600 * 1000
DAY_MS = 86400 * 1000
HOUR_MS = 3600 * 1000
_EPOCH = datetime.date(1970, 1, 1)


class FinanceError(BilingualError):
    """A finance operation refused (day not closable, bad statement file...): zh and en texts."""


def day_of_ms(time_ms):
    """The Beijing day number a moment falls in."""
    return (time_ms + BEIJING_OFFSET_MS) // DAY_MS


def hour_of_ms(time_ms):
    """The Beijing hour of the day (0-23) of a moment."""
    return (time_ms + BEIJING_OFFSET_MS) % DAY_MS // HOUR_MS


def day_start_ms(day_number):
    return day_number * DAY_MS - BEIJING_OFFSET_MS


def day_text(day_number):
    return (_EPOCH + datetime.timedelta(days=day_number)).isoformat()


def day_number(text):
    """'YYYY-MM-DD' -> day number; FinanceError when it is not a date."""
    try:
        return (datetime.date.fromisoformat(str(text).strip()) - _EPOCH).days
    except ValueError:
        raise FinanceError("日期格式错误（应为 YYYY-MM-DD）：%s" % text, "dates are YYYY-MM-DD: %s" % text)
