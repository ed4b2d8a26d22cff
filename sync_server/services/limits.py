"""Consumption limits (消费限额): per transaction and per day, set by the cardholder (with the PIN) or
by staff.

Terminals hold the limits in their balance cache rows (terminal_api balance delta: single and daily
limit per account), so a change bumps the account's balance version and every terminal fetches the
new values on its next sync. Over a limit a terminal asks for the PIN, which only an online check
accepts (terminal_api /pin-check). Bounds keep a typo from becoming an open purse.
"""
from sync_server.ledger_store import touch_accounts
from sync_server.services import ServiceError, holder_actions, now, register_messages, with_pin

MAX_SINGLE_LIMIT_FEN = 100000     # ¥1000 per transaction
MAX_DAILY_LIMIT_FEN = 500000      # ¥5000 per day

register_messages({
    "bad_limits": (400, "限额无效：单笔 0.01 至 %s 元，每日 0.01 至 %s 元，且单笔不超过每日",
                   "invalid limits: per transaction 0.01 to %s yuan, per day 0.01 to %s yuan, and per "
                   "transaction not above per day"),
})


def get_limits(conn, account_id):
    row = conn.execute("SELECT single_limit_fen, daily_limit_fen FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        raise ServiceError("account_unknown")
    return {"single_limit_fen": row[0], "daily_limit_fen": row[1]}


def _check(single_limit_fen, daily_limit_fen):
    ok = (type(single_limit_fen) is int and type(daily_limit_fen) is int
          and 0 < single_limit_fen <= MAX_SINGLE_LIMIT_FEN and 0 < daily_limit_fen <= MAX_DAILY_LIMIT_FEN
          and single_limit_fen <= daily_limit_fen)
    if not ok:
        raise ServiceError("bad_limits", "%d.%02d" % divmod(MAX_SINGLE_LIMIT_FEN, 100),
                           "%d.%02d" % divmod(MAX_DAILY_LIMIT_FEN, 100))


def _store(conn, account_id, single_limit_fen, daily_limit_fen):
    conn.execute("UPDATE accounts SET single_limit_fen = ?, daily_limit_fen = ? WHERE id = ?",
                 (single_limit_fen, daily_limit_fen, account_id))
    touch_accounts(conn, [account_id])   # terminals learn the new limits with the next balance delta
    return get_limits(conn, account_id)


def set_limits(conn, account_id, single_limit_fen, daily_limit_fen, pin=None, operator=None, now_ms=None,
               via=None, also=None):
    """Set both limits; a cardholder gives the PIN (the change goes into their action log, `via`
    naming where), staff name themselves as `operator`. `also(conn, before, after)` runs in the same
    transaction (the hall page's staff log line)."""
    _check(single_limit_fen, daily_limit_fen)
    now_ms = now(now_ms)

    def operation():
        before = get_limits(conn, account_id)
        after = _store(conn, account_id, single_limit_fen, daily_limit_fen)
        if operator is None:
            holder_actions.record(conn, account_id, "limits", via, detail=dict(after, before=before), now_ms=now_ms)
        if also is not None:
            also(conn, before, after)
        return after
    return with_pin(conn, account_id, pin, operator, now_ms, operation)
