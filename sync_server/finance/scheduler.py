"""The nightly close inside `ykt server`: a small process beside the server process closes yesterday.

Started by the server's supervising process before its workers fork (and stopped when it stops),
so there is exactly one scheduler however many workers serve requests. It is a process of its own,
so that a long close never holds a worker, and it exits by itself when the server is gone (even
killed).

Every `CHECK_INTERVAL_S` it asks close.days_due(): once today's Beijing clock is past the
`finance_close_after_minutes` setting (default 01:00), every day since the last closed one through
yesterday is closed, oldest first. Closing is idempotent and days close in order, so a restart, a
second server on the same file, or a finance officer closing by hand first changes nothing: the
day is closed once. A failed close is logged and tried again at the next check.
YKT_FINANCE_CLOSE=off leaves the close out (tests that close days themselves).

With `ykt server --backup-dir` (YKT_BACKUP_DIR, _INTERVAL_S, _KEEP in its environment) it also takes
an online backup at start-up and every interval (sync_server/backups.py), here and not in a worker.

Each check also gives back the holds of Bluetooth water grants past their expiry
(water_holds.release_expired), so money a phone never used returns without waiting for the next
grant anyone asks for.

Every `METER_INTERVAL_S` between checks it sends the dorm electricity payments owed to a meter system
(sync_server/meter_gateway.py: one delivery pass of the outbox, with the data directory's
meter_gateways.json), so a payment reaches its meter within seconds; a failed pass is logged and the
rows wait for their next attempt.
"""
import logging
import os
import subprocess
import sys
import time

from sync_server import backups, db as dbmod, meter_gateway, water_holds
from sync_server.finance import close as close_module

CHECK_INTERVAL_S = 60.0
LOCATION_ENV = "YKT_CLOSE_DATABASE"      # the database when argv says "-"
MAX_DAYS_PER_CHECK = 31      # a server off for a long time catches up a month per check
METER_INTERVAL_S = 5.0       # dorm electricity payments owed to meter systems: one delivery pass this often

log = logging.getLogger(__name__)


def run_due(conn, now_ms=None):
    """Close what is due now; returns the reports closed (tests call this directly)."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    after_ms = dbmod.setting(conn, "finance_close_after_minutes") * 60000
    closed = []
    for number in close_module.days_due(conn, now_ms, after_ms)[:MAX_DAYS_PER_CHECK]:
        report, newly = close_module.close_day(conn, number, now_ms)
        if newly:
            closed.append(report)
            log.warning("day %s closed: balanced=%s", report["day"], report["invariants"]["balanced"])
    return closed


def release_holds(conn, now_ms=None):
    """Release expired water grant holds, a bounded batch per transaction; returns how many."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    released = 0
    for _ in range(MAX_DAYS_PER_CHECK):
        with dbmod.transaction(conn):
            count = water_holds.release_expired(conn, now_ms)
        released += count
        if count < water_holds.MAX_RELEASES_PER_CALL:
            break
    if released:
        log.warning("released %d expired water grant holds", released)
    return released


def deliver_meter_payments(db_path, data_dir):
    """One delivery pass of the meter outbox on a connection of its own; returns the counts or None."""
    conn = dbmod.connect(db_path)
    try:
        counts = meter_gateway.deliver_from_config(conn, data_dir)
    except Exception:       # a bad configuration or a database hiccup: the rows wait for the next pass
        log.exception("meter delivery failed")
        return None
    finally:
        conn.close()
    if counts["delivered"] or counts["failed"]:
        log.warning("meter payments: %s", counts)
    return counts


def take_backup(db_path, backup_dir, keep):
    """One scheduled backup (sync_server/backups.py); a failure is logged and tried at the next time."""
    try:
        manifest = backups.take_backup(db_path, backup_dir, keep)
    except Exception:       # a full disk, an unplugged backup drive: the server goes on serving
        log.exception("backup failed")
        return None
    log.warning("backup taken: %s (%d bytes)", manifest["file"], manifest["bytes"])
    return manifest


def loop(db_path, parent_pid, interval_s=CHECK_INTERVAL_S):
    """Check every interval until the parent (the server process) is gone."""
    data_dir = os.environ.get("YKT_DATA_DIR") or os.path.dirname(os.path.abspath(db_path))
    closing = os.environ.get("YKT_FINANCE_CLOSE", "on") != "off"
    backup_dir = os.environ.get("YKT_BACKUP_DIR")
    backup_interval_s = int(os.environ.get("YKT_BACKUP_INTERVAL_S", "3600"))
    backup_keep = int(os.environ.get("YKT_BACKUP_KEEP", str(backups.DEFAULT_KEEP)))
    next_meter_pass = 0.0
    next_backup = time.monotonic()          # one at start-up, then every interval
    while os.getppid() == parent_pid:
        if closing:
            conn = dbmod.connect(db_path)
            try:
                release_holds(conn)
                run_due(conn)
            except Exception:   # keep going: the next check tries again (FinanceError included)
                log.exception("finance close failed")
            finally:
                conn.close()
        deadline = time.monotonic() + interval_s
        while time.monotonic() < deadline and os.getppid() == parent_pid:   # gone soon after the master
            if closing and time.monotonic() >= next_meter_pass:
                deliver_meter_payments(db_path, data_dir)
                next_meter_pass = time.monotonic() + METER_INTERVAL_S
            if backup_dir and time.monotonic() >= next_backup:
                take_backup(db_path, backup_dir, backup_keep)
                next_backup = time.monotonic() + backup_interval_s
            time.sleep(1.0)


def hooks(location):
    """(start, stop): start the scheduler process beside this one, and stop it. `location` is the
    SQLite file or PostgreSQL URL (dbmod.store_location); a URL goes by the environment, not the
    command line, where `ps` would show its password."""
    started = []

    def start():
        env = dict(os.environ)
        argument = location
        if not location.endswith(dbmod.DB_FILE_NAME):
            env[LOCATION_ENV], argument = location, "-"
        started.append(subprocess.Popen([sys.executable, "-m", "sync_server.finance.scheduler", argument,
                                         str(os.getpid())], env=env))

    def stop():
        for process in started:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return start, stop


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="[finance-close] %(message)s")
    loop(os.environ[LOCATION_ENV] if sys.argv[1] == "-" else sys.argv[1], int(sys.argv[2]))
