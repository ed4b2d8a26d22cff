"""Reading the numbers a request carries: ids, page numbers, counts, yuan amounts and dates.

One place decides what a number is. Digits are ASCII `0-9` or the full-width `０-９` a Chinese input
method types (normalised to ASCII, with the full-width `．` and `－` of amounts and dates); every other
digit Python's int() would read (Arabic-Indic `٣`, `²`, ...) is refused, and so are signs, exponents,
underscores and anything longer than the bound allows. Every reader takes a range, so nothing past
SQLite's 64-bit integers (or a wallet's bound, for money) reaches a query. Each returns None for input
it cannot read; the caller answers in its audience's shape (JSON for /api, the page's own message).
"""
import datetime
import re

from werkzeug.exceptions import BadRequest
from werkzeug.routing import BaseConverter

from sync_server import ledger

MAX_ID = 2 ** 63 - 1                       # SQLite INTEGER PRIMARY KEY
MAX_PAGE = 100000                          # pages of any listing; far past what a person pages through
MAX_AMOUNT_FEN = ledger.MAX_TRANSFER_FEN   # the most any one amount may be; services bound tighter
MAX_INPUT_CHARS = 64                       # longer text is not a number, and is not parsed

_FULL_WIDTH = str.maketrans("０１２３４５６７８９．－", "0123456789.-")
_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
_YUAN = re.compile(r"([0-9]{1,7})(?:\.([0-9]{1,2}))?", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def normalise_digits(text):
    """Full-width digits (and `．` `－`) as ASCII; everything else as it is."""
    return text.translate(_FULL_WIDTH)


def _clean(text):
    if not isinstance(text, str) or len(text) > MAX_INPUT_CHARS:
        return None
    return normalise_digits(text.strip())


def parse_int(text, minimum, maximum):
    """A whole number from minimum to maximum written in ASCII or full-width digits, else None."""
    assert 0 <= minimum <= maximum <= MAX_ID
    text = _clean(text)
    if text is None or not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


def parse_id(text):
    """A row id (1 to 2**63 - 1), else None."""
    return parse_int(text, 1, MAX_ID)


def parse_page(text, maximum=MAX_PAGE, default=1):
    """A page number (or page size) from 1 to `maximum`; `default` when the parameter is absent (None);
    else None, also for a blank one."""
    return default if text is None else parse_int(text, 1, maximum)


def parse_yuan(text, maximum_fen=MAX_AMOUNT_FEN):
    """'12', '12.5', '１２．５０' -> 1200, 1250, 1250 fen, without passing through a float; None for
    anything else (negative, three decimals, above `maximum_fen`...)."""
    text = _clean(text)
    match = _YUAN.fullmatch(text) if text is not None else None
    if not match:
        return None
    fen = int(match.group(1)) * 100 + int((match.group(2) or "").ljust(2, "0"))
    return fen if fen <= maximum_fen else None


def check_int(value, minimum, maximum):
    """A JSON number: an int (not a bool, not a float) from minimum to maximum, else None."""
    if type(value) is not int or not minimum <= value <= maximum:
        return None
    return value


def parse_date(text):
    """'YYYY-MM-DD' (ASCII or full-width digits) -> datetime.date, else None."""
    text = _clean(text)
    if text is None or not _DATE.fullmatch(text):
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


# --- ids in URL paths ----------------------------------------------------------------------------

class BadId(BadRequest):
    """An id in the path that is no id: a 400 the app answers in its audience's shape (app.py)."""
    code_name = "bad_id"
    zh = "编号无效（应为 1 至 %d 的整数）" % MAX_ID
    en = "invalid id (a whole number from 1 to %d)" % MAX_ID


class IdConverter(BaseConverter):
    """`<id:name>` in a route: any path segment, read with parse_id. Werkzeug's own `int` takes any
    number of any script's digits; this one refuses what parse_id refuses, with a 400 instead of the
    500 a 2**64 used to cause deep in a query."""
    regex = r"[^/]+"
    weight = 50

    def to_python(self, value):
        number = parse_id(value)
        if number is None:
            raise BadId()
        return number

    def to_url(self, value):
        assert type(value) is int and 1 <= value <= MAX_ID, value
        return str(value)
