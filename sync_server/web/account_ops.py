"""The account operations the portal needs that `sync_server/hall.py` does not offer yet: one page of
the statement with date and type filters, and the cardholder's own loss report and unfreeze (both
confirmed with the card PIN).

Interim: `sync_server/services/` (statements, cards) is where these rules belong; the portal calls
them through this module only, so switching over is a change here and nowhere else.
"""
import datetime

from sync_server import db as dbmod, hall, messages, pins

BEIJING = datetime.timezone(datetime.timedelta(hours=8))
_CONSUMPTION_KINDS = ("purchase",)
_RECHARGE_KINDS = ("recharge",)


def _day_start_ms(day):
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=BEIJING).timestamp() * 1000)


def page(conn, account_id, start, end, query_type, page_number, page_rows):
    """{"rows", "page", "pages", "total"}: rows newest first, `page_rows` per page."""
    rows = hall.transactions(conn, account_id, hall.MAX_TRANSACTIONS_LISTED)
    if start is not None:
        rows = [row for row in rows if row["time_ms"] >= _day_start_ms(start)]
    if end is not None:
        rows = [row for row in rows if row["time_ms"] < _day_start_ms(end + datetime.timedelta(days=1))]
    if query_type == "consumption":
        rows = [row for row in rows if row["kind"] in _CONSUMPTION_KINDS]
    elif query_type == "recharge":
        rows = [row for row in rows if row["kind"] in _RECHARGE_KINDS]
    rows.reverse()
    pages = max(1, -(-len(rows) // page_rows))
    page_number = min(page_number, pages)
    first = (page_number - 1) * page_rows
    return {"rows": rows[first:first + page_rows], "page": page_number, "pages": pages, "total": len(rows)}


def _check_pin_or_refuse(conn, account_id, pin, now_ms):
    with dbmod.transaction(conn):       # committed on its own: a wrong PIN must count even though we refuse
        code = pins.check_pin(conn, account_id, pin, now_ms)
    if code not in ("pin_ok", "account_in_debt", "account_blocked"):
        zh, en = messages.MESSAGES[code]
        raise hall.HallError(zh, en)


def report_loss(conn, account_id, card_number, pin, now_ms=None):
    """挂失 by the cardholder, confirmed with the card PIN."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    _check_pin_or_refuse(conn, account_id, pin, now_ms)
    with dbmod.transaction(conn):
        card = conn.execute("SELECT 1 FROM cards WHERE card_number = ? AND account_id = ?",
                            (card_number, account_id)).fetchone()
        assert card is not None, "loss report of a card that is not the account's own"
        return hall.report_loss(conn, card_number, now_ms)


def self_unfreeze(conn, account_id, card_number, pin, now_ms=None):
    """解挂 by the cardholder: the card PIN must be right AND changed from its initial value (the manual:
    with the initial PIN only the service hall may unfreeze)."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    _check_pin_or_refuse(conn, account_id, pin, now_ms)
    with dbmod.transaction(conn):
        row = conn.execute("SELECT p.id_number, p.staff_number FROM accounts a JOIN persons p ON p.id = a.person_id "
                           "WHERE a.id = ?", (account_id,)).fetchone()
        if pin == pins.initial_pin(row[0], row[1]):
            raise hall.HallError("卡片密码仍为初始密码，为了安全不能自助解挂，请到服务大厅办理",
                                 "the card PIN is still the initial one: for safety, unfreeze at the service hall")
        card = conn.execute("SELECT 1 FROM cards WHERE card_number = ? AND account_id = ?",
                            (card_number, account_id)).fetchone()
        assert card is not None, "unfreeze of a card that is not the account's own"
        return hall.cancel_loss(conn, card_number, now_ms)


def change_pin(conn, account_id, old_pin, new_pin, now_ms=None):
    """Change the card PIN with the old one; the new one must be 6 digits."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    if not pins.valid_pin_format(new_pin):
        zh, en = messages.MESSAGES["pin_format"]
        raise hall.HallError(zh, en)
    _check_pin_or_refuse(conn, account_id, old_pin, now_ms)
    with dbmod.transaction(conn):
        pins.set_pin(conn, account_id, new_pin)


MAX_LIMIT_FEN = 1000000


def set_limits(conn, account_id, single_limit_fen, daily_limit_fen, pin, now_ms=None):
    """消费限额: per transaction and per day, confirmed with the PIN; terminals learn them with the
    next balance delta (the account's balance version moves)."""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    if not (0 < single_limit_fen <= daily_limit_fen <= MAX_LIMIT_FEN):
        raise hall.HallError("限额无效：单笔限额应大于0且不超过日限额",
                             "invalid limits: per-transaction limit must be above 0 and at most the daily limit")
    _check_pin_or_refuse(conn, account_id, pin, now_ms)
    from sync_server.ledger_store import touch_accounts
    with dbmod.transaction(conn):
        conn.execute("UPDATE accounts SET single_limit_fen = ?, daily_limit_fen = ? WHERE id = ?",
                     (single_limit_fen, daily_limit_fen, account_id))
        touch_accounts(conn, [account_id])
