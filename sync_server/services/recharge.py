"""Recharge (充值) through payment channels, the way payment gateways behave.

    create_order(conn, account_id, amount_fen, channel)      -> order dict, status pending
    handle_notification(conn, channel, handler, headers, body) -> (outcome, order)
    cash_recharge(conn, account_id, amount_fen, operator, idempotency_key=None)
                                                             -> paid order dict (service-hall cash desk)
    close_stale_orders(conn, older_than_ms)                  -> orders closed

Online channels (Alipay, WeChat Pay, CCB 龙支付) answer asynchronously: the cardholder pays in the
channel's app and the channel POSTs a notification to /api/v1/channels/<name>/notify, in its own
format and signed its own way (Alipay RSA2 over the form, WeChat Pay v3 RSA over the body with an
AES-GCM encrypted resource, CCB MD5withRSA): sync_server/channels/ verifies and reads each one into
a Notice (order, paid / closed / other, amount, the channel's trade number). Notifications may
arrive more than once and in any order. Rules:

- A forged, altered or unsigned notification, one for another merchant account, or one whose
  resource does not decrypt is refused (ChannelRefused) and logged; nothing changes.
- `paid` credits the order's wallet exactly once: the transfer id is derived from the order id, so a
  duplicate (or a retry racing another worker) finds the transfer already there. The amount must
  equal the order's, else the notification is refused (amount_mismatch) and logged.
- `paid` after we closed a pending order still credits it: the channel took the money, and the
  cardholder must not lose it (finance sees the late payment on the channel statement too).
- `closed` only closes a pending order; after `paid` it is acknowledged and ignored, as is a notice
  of anything else (a payment still waiting, a failed attempt).

Each channel has its own ledger account (migration 10, table recharge_channels), so the channel's
daily statement can be matched against its transfers; `channel_trade_no` is the channel's own number.
Channel keys come from the channels' configuration (sync_server/channels/), never from code, and are
never logged. simulators/pay_gateways.py plays the channels' sandboxes for tests and the demo.
"""
import logging
import uuid

from firmware.core import card_layout, protocol
from sync_server import db as dbmod, ledger, registry
from sync_server.channels import CLOSED, MAX_NOTICE_BYTES, PAID, Notice, NoticeRefused
from sync_server.ledger_store import SqliteStore, touch_accounts, update_debt_flags
from sync_server.services import (ServiceError, check_amount, idempotent_id, now, person_row, register_messages,
                                  tx)

log = logging.getLogger(__name__)

ONLINE_CHANNELS = ("alipay", "wechat", "ccb")
CASH_CHANNEL = "cash"
CHANNELS = ONLINE_CHANNELS + (CASH_CHANNEL,)
STATUS_PENDING, STATUS_PAID, STATUS_CLOSED = "pending", "paid", "closed"
NOTIFY_PAID, NOTIFY_CLOSED = PAID, CLOSED

MAX_ORDER_FEN = 100000                 # ¥1000 per order, as the channels' campus products allow
MAX_PENDING_ORDERS_PER_ACCOUNT = 20    # an app stuck in a loop cannot fill the table
PENDING_ORDER_TTL_MS = 30 * 60 * 1000  # close_stale_orders() closes what stayed pending this long
MAX_NOTIFICATION_BYTES = MAX_NOTICE_BYTES
MAX_LOGGED_BODY_CHARS = 4096
MAX_LOGGED_REFUSALS = 10000            # refused notifications kept for the audit; oldest go first

register_messages({
    "unknown_channel": (404, "未知的充值渠道", "unknown recharge channel"),
    "unknown_order": (404, "订单不存在", "unknown order"),
    "too_many_pending": (429, "未完成的充值订单过多，请稍后再试", "too many unfinished recharge orders: try later"),
    "bad_signature": (401, "通知签名无效", "notification signature does not verify"),
    "amount_mismatch": (409, "通知金额与订单不符", "notified amount differs from the order"),
    "bad_notification": (400, "通知格式错误：%s", "malformed notification: %s"),
    "wrong_channel": (409, "订单不属于该渠道", "the order belongs to another channel"),
    "channel_not_configured": (404, "该充值渠道未开通（本服务器没有它的配置）",
                               "this recharge channel is not configured on this server"),
    "other_merchant": (409, "通知不属于本商户", "the notice is for another merchant account"),
    "bad_resource": (400, "通知的加密内容无法解密", "the notice's encrypted resource does not decrypt"),
    "stale_notification": (401, "通知时间戳超出允许范围", "the notice's timestamp is too far from our clock"),
})


class ChannelRefused(ServiceError):
    """A notification refused before it could touch an order (the channel gets a 4xx)."""


# --- orders --------------------------------------------------------------------------------------

_ORDER_COLUMNS = ("order_id", "account_id", "wallet", "amount_fen", "channel", "status", "channel_trade_no",
                  "transfer_id", "operator", "created_ms", "paid_ms", "closed_ms")


def _order(conn, order_id):
    row = conn.execute("SELECT %s FROM recharge_orders WHERE order_id = ?" % ", ".join(_ORDER_COLUMNS),
                       (order_id,)).fetchone()
    return None if row is None else dict(zip(_ORDER_COLUMNS, row))


def get_order(conn, order_id, account_id=None):
    """The order as a dict; with `account_id`, only when it belongs to that account."""
    order = _order(conn, order_id)
    if order is None or (account_id is not None and order["account_id"] != account_id):
        raise ServiceError("unknown_order")
    return order


def list_orders(conn, account_id, limit=20):
    limit = max(1, min(int(limit), 100))
    rows = conn.execute("SELECT %s FROM recharge_orders WHERE account_id = ? ORDER BY created_ms DESC, order_id "
                        "LIMIT ?" % ", ".join(_ORDER_COLUMNS), (account_id, limit)).fetchall()
    return [dict(zip(_ORDER_COLUMNS, row)) for row in rows]


def channels(conn):
    """[{name, name_zh, name_en, online, ledger_account_id}] in a fixed order."""
    rows = conn.execute("SELECT name, name_zh, name_en, online, ledger_account_id FROM recharge_channels").fetchall()
    by_name = {row[0]: dict(zip(("name", "name_zh", "name_en", "online", "ledger_account_id"), row)) for row in rows}
    return [by_name[name] for name in CHANNELS if name in by_name]


def _channel_ledger_id(conn, channel):
    row = conn.execute("SELECT ledger_account_id FROM recharge_channels WHERE name = ?", (channel,)).fetchone()
    if row is None:
        raise ServiceError("unknown_channel")
    return row[0]


def _check_rechargeable(conn, account_id, wallet):
    holder = person_row(conn, account_id)
    if holder["category"] == card_layout.HOLDER_IDENTITY_ONLY:
        raise ServiceError("no_wallet")
    if wallet not in protocol.WALLETS:
        raise ServiceError("bad_request", "wallet")


def check_order(amount_fen, channel):
    """The checks of an order's own fields (before the API asks whether the channel is configured)."""
    if channel not in ONLINE_CHANNELS:
        raise ServiceError("unknown_channel")
    check_amount(amount_fen, MAX_ORDER_FEN)


def create_order(conn, account_id, amount_fen, channel, wallet=protocol.WALLET_MAIN, now_ms=None):
    """A pending order for an online channel; the app hands order_id and amount to the channel."""
    check_order(amount_fen, channel)
    now_ms = now(now_ms)
    with tx(conn):
        _check_rechargeable(conn, account_id, wallet)
        pending = conn.execute("SELECT count(*) FROM recharge_orders WHERE account_id = ? AND status = 'pending'",
                               (account_id,)).fetchone()[0]
        if pending >= MAX_PENDING_ORDERS_PER_ACCOUNT:
            raise ServiceError("too_many_pending")
        order_id = "R%d%s" % (now_ms, uuid.uuid4().hex[:12])
        conn.execute("INSERT INTO recharge_orders (order_id, account_id, wallet, amount_fen, channel, status, "
                     "created_ms) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                     (order_id, account_id, wallet, amount_fen, channel, now_ms))
        return _order(conn, order_id)


def _credit(conn, order, channel_ledger_id, now_ms):
    """Book the order's credit (idempotent by transfer id); returns the transfers actually posted."""
    transfer_id = "o/%s" % order["order_id"]
    target = registry.wallet_ledger_id(conn, order["account_id"], order["wallet"])
    transfer = ledger.recharge_transfer(transfer_id, channel_ledger_id, target, order["amount_fen"], now_ms,
                                        "%s %s" % (order["channel"], order["order_id"]))
    posted = ledger.post(SqliteStore(conn), [transfer])
    account_id = order["account_id"]
    ids = SqliteStore(conn).wallet_ids([account_id])
    after = SqliteStore(conn).balances(sorted(ids[account_id].values()))
    in_debt, clear = ledger.accounts_in_debt(after, ids)
    update_debt_flags(conn, in_debt, clear, now_ms)
    touch_accounts(conn, [account_id])
    return transfer_id, posted


def cash_recharge(conn, account_id, amount_fen, operator, wallet=protocol.WALLET_MAIN, now_ms=None,
                  idempotency_key=None):
    """Cash paid at the service-hall desk: an order paid at once, credited from the cash desk account.
    Returns the order (its id is the receipt number) with `repeated`: True when `idempotency_key`
    named an order already booked (nothing booked again; the same amount and wallet are required)."""
    check_amount(amount_fen, ledger.MAX_TRANSFER_FEN)
    assert operator, "a cash recharge names the staff member who took the money"
    now_ms = now(now_ms)
    with tx(conn):
        if idempotency_key is None:
            order_id = "C%d%s" % (now_ms, uuid.uuid4().hex[:12])
        else:
            order_id = idempotent_id("C", account_id, idempotency_key)
            existing = _order(conn, order_id)
            if existing is not None:
                if (existing["account_id"], existing["channel"], existing["amount_fen"], existing["wallet"]) != \
                        (account_id, CASH_CHANNEL, amount_fen, wallet):
                    raise ServiceError("idempotency_conflict")
                return dict(existing, repeated=True)
        _check_rechargeable(conn, account_id, wallet)
        conn.execute("INSERT INTO recharge_orders (order_id, account_id, wallet, amount_fen, channel, status, "
                     "operator, created_ms, paid_ms) VALUES (?, ?, ?, ?, 'cash', 'paid', ?, ?, ?)",
                     (order_id, account_id, wallet, amount_fen, operator, now_ms, now_ms))
        order = _order(conn, order_id)
        transfer_id, _ = _credit(conn, order, _channel_ledger_id(conn, CASH_CHANNEL), now_ms)
        conn.execute("UPDATE recharge_orders SET transfer_id = ? WHERE order_id = ?", (transfer_id, order_id))
        return dict(_order(conn, order_id), repeated=False)


def close_stale_orders(conn, now_ms=None, ttl_ms=PENDING_ORDER_TTL_MS, limit=1000):
    """Close pending orders older than ttl_ms (the channel's own payment window has passed)."""
    now_ms = now(now_ms)
    with tx(conn):
        return conn.execute("UPDATE recharge_orders SET status = 'closed', closed_ms = ? WHERE order_id IN "
                            "(SELECT order_id FROM recharge_orders WHERE status = 'pending' AND created_ms < ? "
                            "LIMIT ?)", (now_ms, now_ms - ttl_ms, limit)).rowcount


# --- notifications -------------------------------------------------------------------------------

def _log_notification(conn, channel, order_id, status, outcome, body, now_ms):
    # NUL shown as U+FFFD: a forged body may carry one, and PostgreSQL text cannot hold it
    text = body if isinstance(body, str) else body.decode("utf-8", "replace")
    text = text.replace("\x00", "\ufffd")[:MAX_LOGGED_BODY_CHARS]
    conn.execute("INSERT INTO channel_notifications (channel, order_id, status, outcome, received_ms, body) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (channel, order_id, status, outcome, now_ms, text))


def _log_refusal(conn, channel, order_id, status, outcome, body, now_ms):
    """Refusals are written in a transaction of their own (the caller's work is not committed)."""
    log.warning("channel %s notification refused (%s) for order %s", channel, outcome, order_id)
    with dbmod.transaction(conn):
        _log_notification(conn, channel, order_id, status, outcome, body, now_ms)
        conn.execute("DELETE FROM channel_notifications WHERE id IN (SELECT id FROM channel_notifications WHERE "
                     "outcome NOT IN ('credited', 'duplicate', 'closed', 'ignored') ORDER BY id DESC "
                     "LIMIT -1 OFFSET ?)", (MAX_LOGGED_REFUSALS,))


# a channel module's reason for refusing a notice -> the refusal's message code
_REFUSALS = {"bad_signature": "bad_signature", "malformed": "bad_notification", "other_merchant": "other_merchant",
             "bad_resource": "bad_resource", "stale_notification": "stale_notification"}


def handle_notification(conn, channel, handler, headers, body, now_ms=None):
    """Verify and apply one channel notification. Returns (outcome, order) where outcome is one of
    credited, duplicate, closed, ignored. Raises ChannelRefused / ServiceError (logged) otherwise.

    `handler` is the channel's module object (sync_server.channels.load), `headers` the request's
    headers, `body` the raw request body (the signatures cover these exact bytes).
    """
    if channel not in ONLINE_CHANNELS or getattr(handler, "name", None) != channel:
        raise ServiceError("unknown_channel")
    now_ms = now(now_ms)
    try:
        notice = handler.verify(headers, body, now_ms / 1000.0)
    except NoticeRefused as refusal:
        _log_refusal(conn, channel, refusal.order_id, None, refusal.reason, body[:MAX_NOTIFICATION_BYTES], now_ms)
        code = _REFUSALS[refusal.reason]
        if code == "bad_notification":
            raise ChannelRefused(code, refusal.detail or "format")
        raise ChannelRefused(code)
    return apply_notice(conn, channel, notice, now_ms)


def apply_notice(conn, channel, notice, now_ms=None):
    """Apply a notice already verified (or the demo's simulated payment): (outcome, order), or
    ChannelRefused (logged) for an unknown order, another channel's order or another amount."""
    now_ms = now(now_ms)
    order_id, status = notice.order_id, notice.status
    refusal = None
    with dbmod.transaction(conn):
        order = _order(conn, order_id)
        if order is None:
            refusal = "unknown_order"
        elif order["channel"] != channel:
            refusal = "wrong_channel"
        elif notice.amount_fen != order["amount_fen"]:
            refusal = "amount_mismatch"
        else:
            outcome = _apply(conn, channel, order, status, notice.trade_no, now_ms)
            _log_notification(conn, channel, order_id, status, outcome, notice.text, now_ms)
            return outcome, _order(conn, order_id)
    _log_refusal(conn, channel, order_id, status, refusal, notice.text, now_ms)
    raise ChannelRefused(refusal)


def simulate_payment(conn, order_id, now_ms=None):
    """Demo only (the portal's simulated-payment button under SIMULATED_PAYMENTS, `ykt hall
    recharge-channel`): book a pending order as paid by its channel without a channel notice, through
    the same steps as a verified one. The channel never took this money: its statement will not list
    it (a statement mismatch at the close, as it should be)."""
    order = get_order(conn, order_id)
    text = "simulated payment of %s (no channel notice)" % order_id
    return apply_notice(conn, order["channel"], Notice(order_id, PAID, order["amount_fen"], "SIM-" + order_id, text),
                        now_ms)


def _apply(conn, channel, order, status, trade_no, now_ms):
    order_id = order["order_id"]
    if status not in (NOTIFY_PAID, NOTIFY_CLOSED):
        return "ignored"            # a payment still waiting, a failed attempt: nothing to do
    if status == NOTIFY_CLOSED:
        if order["status"] != STATUS_PENDING:
            return "ignored"        # paid stays paid; closed twice is still closed
        conn.execute("UPDATE recharge_orders SET status = 'closed', closed_ms = ? WHERE order_id = ?",
                     (now_ms, order_id))
        return "closed"
    if order["status"] == STATUS_PAID:
        return "duplicate"
    transfer_id, posted = _credit(conn, order, _channel_ledger_id(conn, channel), now_ms)
    assert posted, "an order not yet paid already had its credit"
    conn.execute("UPDATE recharge_orders SET status = 'paid', paid_ms = ?, channel_trade_no = ?, transfer_id = ? "
                 "WHERE order_id = ?", (now_ms, trade_no, transfer_id, order_id))
    return "credited"
