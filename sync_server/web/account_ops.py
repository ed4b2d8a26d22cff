"""The account operations the portal needs that `sync_server/services/` does not offer yet: PIN change
and consumption limits, both confirmed with the card PIN.

Interim: `sync_server/services/` (pins, limits) is where these rules belong; the portal calls
them through this module only, so switching over is a change here and nowhere else.
"""
from sync_server import db as dbmod, hall, messages, pins


def _check_pin_or_refuse(conn, account_id, pin, now_ms):
    with dbmod.transaction(conn):       # committed on its own: a wrong PIN must count even though we refuse
        code = pins.check_pin(conn, account_id, pin, now_ms)
    if code not in ("pin_ok", "account_in_debt", "account_blocked"):
        zh, en = messages.MESSAGES[code]
        raise hall.HallError(zh, en)


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
