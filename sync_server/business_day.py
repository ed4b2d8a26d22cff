"""Beijing business days: the day and hour a moment falls in, as plain integers.

Days are Beijing calendar days (UTC+8, no daylight saving), numbered as days since 1970-01-01 so
arithmetic on them is plain integer arithmetic. Ingest counts daily spending by them, the terminal API
checks daily limits by them, and finance closes them.
"""
import datetime

BEIJING_OFFSET_MS = 8 * 3600 * 1000
DAY_MS = 86400 * 1000
HOUR_MS = 3600 * 1000
EPOCH_DATE = datetime.date(1970, 1, 1)


def day_of_ms(time_ms):
    """The Beijing day number a moment falls in."""
    return (time_ms + BEIJING_OFFSET_MS) // DAY_MS


def hour_of_ms(time_ms):
    """The Beijing hour of the day (0-23) of a moment."""
    return (time_ms + BEIJING_OFFSET_MS) % DAY_MS // HOUR_MS


def day_start_ms(day_number):
    return day_number * DAY_MS - BEIJING_OFFSET_MS


def day_text(day_number):
    return (EPOCH_DATE + datetime.timedelta(days=day_number)).isoformat()
