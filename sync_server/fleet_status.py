"""The terminals as a technician sees them: what each is, where, on which firmware, when it last
synced, how far its clock is off, how much it has not uploaded, and what is wrong - the failing and
stale first. `ykt fleet status` prints it, /admin/fleet shows it (role admin).

Everything comes from what the terminals themselves report at each signed sync (terminal_api.py:
`last_sync_ms`, the clock offset the server measured, the health map: firmware, journal backlog,
reader errors, an upload refusal, an alarm) and from what the server found in their uploads (card
mismatches). Nothing here writes.
"""
import json

from firmware.core import wallets
from sync_server import db as dbmod

STALE_AFTER_MS = 10 * 60 * 1000          # no sync for this long: the terminal is off or cut off
CLOCK_SKEW_MS = 60 * 1000                # its clock this far off: records get corrected, look at the RTC
BACKLOG_WARN = 200                       # records not uploaded: an outage, or a sync that keeps failing
KINDS = {wallets.CATEGORY_CANTEEN: ("消费机", "POS"), wallets.CATEGORY_WATER: ("开水机", "water dispenser"),
         wallets.CATEGORY_ELECTRICITY: ("电费终端", "electricity"),
         wallets.CATEGORY_ACTIVATION: ("激活机", "activation unit")}

# (key, zh, en) of every problem a row can have, most urgent first
PROBLEMS = (
    ("alarm", "报警", "alarm"),
    ("upload_refused", "上传被拒", "upload refused"),
    ("never_synced", "从未同步", "never synced"),
    ("stale", "长时间未同步", "not synced lately"),
    ("card_mismatch", "卡片记录不符", "card mismatches"),
    ("reader_errors", "读卡器故障", "reader errors"),
    ("backlog", "积压未上传", "backlog"),
    ("clock", "时钟偏差", "clock off"),
)
_RANK = {key: rank for rank, (key, _zh, _en) in enumerate(PROBLEMS)}

_QUERY = ("SELECT t.id, t.status, t.last_sync_ms, t.clock_offset_ms, t.health, t.card_mismatch_count, "
          "m.name_zh, m.name_en, m.category, t.merchant_id, t.location, t.key_version, t.next_key_version "
          "FROM terminals t JOIN merchants m ON m.id = t.merchant_id")


def fleet(conn, now_ms=None, stale_after_ms=STALE_AFTER_MS):
    """One dict per terminal, the most urgent first: failing, then stale, then the rest by the oldest
    sync; revoked terminals last."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    rows = [_row(values, now_ms, stale_after_ms) for values in conn.execute(_QUERY).fetchall()]
    rows.sort(key=lambda row: (row["status"] != "active",
                               min((_RANK[key] for key in row["problems"]), default=len(PROBLEMS)),
                               row["last_sync_ms"] if row["last_sync_ms"] is not None else -1, row["terminal_id"]))
    return rows


def _row(values, now_ms, stale_after_ms):
    (terminal_id, status, last_sync_ms, offset_ms, health_text, mismatches, name_zh, name_en, category, merchant_id,
     location, key_version, next_key_version) = values
    try:
        health = json.loads(health_text) if health_text else {}
    except ValueError:
        health = {}
    if not isinstance(health, dict):
        health = {}
    kind_zh, kind_en = KINDS.get(category, ("终端", "terminal"))
    # where: the merchant, and the spot the terminal stands at when one was recorded (migration 95)
    row = {"terminal_id": terminal_id, "status": status, "kind": kind_en, "kind_zh": kind_zh, "category": category,
           "merchant_id": merchant_id, "merchant": name_zh, "merchant_en": name_en or name_zh, "location": location,
           "where": "%s · %s" % (name_zh, location) if location else name_zh,
           "where_en": "%s · %s" % (name_en or name_zh, location) if location else name_en or name_zh,
           "key_version": key_version, "next_key_version": next_key_version, "firmware": health.get("firmware"),
           "last_sync_ms": last_sync_ms,
           "since_sync_s": None if last_sync_ms is None else max(0, (now_ms - last_sync_ms) // 1000),
           "clock_offset_ms": offset_ms, "backlog": _count(health, "journal_unacked"),
           "reader_errors": _count(health, "reader_errors"), "upload_refused": health.get("upload_refused"),
           "alarm": health.get("alarm"), "card_mismatches": mismatches or 0}
    problems = []
    if status == "active":
        if row["alarm"]:
            problems.append("alarm")
        if row["upload_refused"]:
            problems.append("upload_refused")
        if last_sync_ms is None:
            problems.append("never_synced")
        elif now_ms - last_sync_ms > stale_after_ms:
            problems.append("stale")
        if row["card_mismatches"]:
            problems.append("card_mismatch")
        if row["reader_errors"]:
            problems.append("reader_errors")
        if row["backlog"] >= BACKLOG_WARN:
            problems.append("backlog")
        if offset_ms is not None and abs(offset_ms) > CLOCK_SKEW_MS:
            problems.append("clock")
    row["problems"] = problems
    return row


def _count(health, key):
    value = health.get(key)
    return value if type(value) is int and value >= 0 else 0


def problem_text(key, lang):
    for name, zh, en in PROBLEMS:
        if name == key:
            return en if lang == "en" else zh
    raise KeyError(key)


def since_text(seconds, lang):
    """'3 分钟前' / '3 min ago'; '从未' / 'never' for None."""
    if seconds is None:
        return "never" if lang == "en" else "从未"
    for size, zh, en in ((86400, "天", "d"), (3600, "小时", "h"), (60, "分钟", "min")):
        if seconds >= size:
            return ("%d %s ago" % (seconds // size, en)) if lang == "en" else "%d %s前" % (seconds // size, zh)
    return ("%d s ago" % seconds) if lang == "en" else "%d 秒前" % seconds
