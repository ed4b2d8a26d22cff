"""Reading what people type into the web forms: yuan amounts, dates, page numbers.

Parsing only; each function returns None for input it cannot read, and the view says so in the
page's language. Amounts become integer fen without passing through a float.
"""
import datetime
import re

_YUAN = re.compile(r"^\s*(\d{1,7})(?:\.(\d{1,2}))?\s*$")
MAX_PAGE = 100000


def parse_yuan(text):
    """'12', '12.5', '12.50' -> 1200, 1250, 1250 fen; None for anything else (negative, 3 decimals...)."""
    match = _YUAN.match(text or "")
    if not match:
        return None
    whole, cents = match.group(1), (match.group(2) or "").ljust(2, "0")
    return int(whole) * 100 + int(cents)


def parse_date(text):
    """'YYYY-MM-DD' -> datetime.date, or None."""
    try:
        return datetime.date.fromisoformat((text or "").strip())
    except ValueError:
        return None


def parse_page(text):
    try:
        page = int(text or 1)
    except ValueError:
        return 1
    return max(1, min(page, MAX_PAGE))


def parse_int(text):
    try:
        return int((text or "").strip())
    except ValueError:
        return None
