"""What one day close sees: the day, the moment it runs, and the watermarks of this close and of the
previous one. Built under the close's write lock (close.py); the section modules (settlement,
anomalies, counter_gaps, ledger_check) read the database through it, so they all see the same cut.
"""
from sync_server import db as dbmod
from sync_server.business_day import day_start_ms

MAX_LISTED = 200                   # rows listed per anomaly kind; counts stay exact


def scalar(conn, sql):
    """The first column of the first row, 0 when it is NULL (max or sum over no rows)."""
    return conn.execute(sql).fetchone()[0] or 0


class CloseWindow:
    """One close's view of the database, inside the caller's write transaction: `day` (number),
    `now_ms`, the day's `start_ms`, the clock tolerance, the previous close's watermarks and report
    (`previous`), the floor of the counter notes to read, and this close's `watermarks`."""

    def __init__(self, conn, number, now_ms):
        assert conn.in_transaction
        self.conn = conn
        self.day = number
        self.now_ms = now_ms
        self.start_ms = day_start_ms(number)
        self.tolerance_ms = dbmod.setting(conn, "clock_tolerance_ms")
        previous = conn.execute(
            "SELECT transfer_watermark, counter_anomaly_watermark, deny_watermark, record_anomaly_watermark, report "
            "FROM finance_days WHERE day_number < ? ORDER BY day_number DESC LIMIT 2", (number,)).fetchall()
        self.previous = previous[0] if previous else (0, 0, 0, 0, None)
        # counter notes of the close before the previous one too: a record seen then but belonging to
        # this day was deferred, and its note must come along with it
        self.counter_floor = previous[1][1] if len(previous) > 1 else 0
        self.watermarks = (
            scalar(conn, "SELECT max(rowid) FROM transfers"),
            scalar(conn, "SELECT max(id) FROM counter_anomalies"),
            scalar(conn, "SELECT max(version) FROM deny_entries"),
            scalar(conn, "SELECT max(rowid) FROM record_anomalies"),
        )
