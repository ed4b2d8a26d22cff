"""Recharge (充值) through payment channels, the way payment gateways behave.

    create_order(conn, account_id, amount_fen, channel)      -> order dict, status pending
    handle_notification(conn, channel, body, signature_hex, secret) -> (outcome, order or None)
    cash_recharge(conn, account_id, amount_fen, operator, idempotency_key=None)
                                                             -> paid order dict (service-hall cash desk)
    close_stale_orders(conn, older_than_ms)                  -> orders closed

Online channels (Alipay, WeChat Pay, CCB 龙支付) answer asynchronously: the cardholder pays in the
channel's app and the channel POSTs a notification to /api/v1/channels/<name>/notify. Notifications
are signed (HMAC-SHA256 over the raw body with the channel's secret), may arrive more than once and
in any order. Rules:

- A forged or unsigned notification is refused (ChannelRefused, 401) and logged; nothing changes.
- `paid` credits the order's wallet exactly once: the transfer id is derived from the order id, so a
  duplicate (or a retry racing another worker) finds the transfer already there. The amount must
  equal the order's, else the notification is refused (amount_mismatch) and logged.
- `paid` after we closed a pending order still credits it: the channel took the money, and the
  cardholder must not lose it (finance sees the late payment on the channel statement too).
- `closed` only closes a pending order; after `paid` it is acknowledged and ignored.

Each channel has its own ledger account (migration 10, table recharge_channels), so the channel's
daily statement can be matched against its transfers; `channel_trade_no` is the channel's own number.
Channel secrets come from configuration (see `channel_secret`), never from code, and are never logged.

`SimulatedChannel` produces correctly signed notifications, for tests and the demo.
"""
import hashlib
import hmac
import json
import logging
import uuid

from firmware.core import card_layout, crypto, protocol
from sync_server import db as dbmod, ledger, registry
from sync_server.ledger_store import SqliteStore, touch_accounts, update_debt_flags
from sync_server.services import (ServiceError, check_amount, idempotent_id, now, person_row, register_messages,
                                  tx)

log = logging.getLogger(__name__)

ONLINE_CHANNELS = ("alipay", "wechat", "ccb")
CASH_CHANNEL = "cash"
CHANNELS = ONLINE_CHANNELS + (CASH_CHANNEL,)
STATUS_PENDING, STATUS_PAID, STATUS_CLOSED = "pending", "paid", "closed"
NOTIFY_PAID, NOTIFY_CLOSED = "paid", "closed"

MAX_ORDER_FEN = 100000                 # ¥1000 per order, as the channels' campus products allow
MAX_PENDING_ORDERS_PER_ACCOUNT = 20    # an app stuck in a loop cannot fill the table
PENDING_ORDER_TTL_MS = 30 * 60 * 1000  # close_stale_orders() closes what stayed pending this long
MAX_NOTIFICATION_BYTES = 4096
MAX_LOGGED_BODY_CHARS = 1024
MAX_LOGGED_REFUSALS = 10000            # refused notifications kept for the audit; oldest go first
SIGNATURE_HEADER = "X-Ykt-Channel-Signature"

register_messages({
    "unknown_channel": (404, "未知的充值渠道", "unknown recharge channel"),
    "unknown_order": (404, "订单不存在", "unknown order"),
    "too_many_pending": (429, "未完成的充值订单过多，请稍后再试", "too many unfinished recharge orders: try later"),
    "bad_signature": (401, "通知签名无效", "notification signature does not verify"),
    "amount_mismatch": (409, "通知金额与订单不符", "notified amount differs from the order"),
    "bad_notification": (400, "通知格式错误：%s", "malformed notification: %s"),
    "wrong_channel": (409, "订单不属于该渠道", "the order belongs to another channel"),
})


class ChannelRefused(ServiceError):
    """A notification refused before it could touch an order (the channel gets a 4xx)."""


# --- configuration -------------------------------------------------------------------------------

def channel_secret(master_key, channel, configured=None):
    """The channel's notification key: the configured secret when there is one (the channel gave it
    to us, hex in the 0600 secrets file), else derived from the site master key."""
    if channel not in ONLINE_CHANNELS:
        raise ServiceError("unknown_channel")
    if configured and configured.get(channel):
        return bytes.fromhex(configured[channel])
    return crypto.derive(master_key, "channel", channel.encode())


def sign(secret, body):
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


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


def create_order(conn, account_id, amount_fen, channel, wallet=protocol.WALLET_MAIN, now_ms=None):
    """A pending order for an online channel; the app hands order_id and amount to the channel."""
    if channel not in ONLINE_CHANNELS:
        raise ServiceError("unknown_channel")
    check_amount(amount_fen, MAX_ORDER_FEN)
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
    text = body.decode("utf-8", "replace").replace("\x00", "\ufffd")[:MAX_LOGGED_BODY_CHARS]
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


def _parse(body):
    if len(body) > MAX_NOTIFICATION_BYTES:
        raise ChannelRefused("bad_notification", "too large")
    try:
        message = json.loads(body)
    except ValueError:
        raise ChannelRefused("bad_notification", "not JSON")
    if not isinstance(message, dict):
        raise ChannelRefused("bad_notification", "not an object")
    for field, kind in (("order_id", str), ("status", str), ("amount_fen", int), ("trade_no", str)):
        if type(message.get(field)) is not kind:
            raise ChannelRefused("bad_notification", field)
    if message["status"] not in (NOTIFY_PAID, NOTIFY_CLOSED):
        raise ChannelRefused("bad_notification", "status")
    return message


def handle_notification(conn, channel, body, signature_hex, secret, now_ms=None):
    """Verify and apply one channel notification. Returns (outcome, order) where outcome is one of
    credited, duplicate, closed, ignored. Raises ChannelRefused / ServiceError (logged) otherwise.

    `body` is the raw request body (the signature covers these exact bytes).
    """
    if channel not in ONLINE_CHANNELS:
        raise ServiceError("unknown_channel")
    now_ms = now(now_ms)
    expected = sign(secret, body)
    if not isinstance(signature_hex, str) or not hmac.compare_digest(expected, signature_hex.strip().lower()):
        _log_refusal(conn, channel, None, None, "bad_signature", body, now_ms)
        raise ChannelRefused("bad_signature")
    try:
        message = _parse(body)
    except ChannelRefused:
        _log_refusal(conn, channel, None, None, "malformed", body, now_ms)
        raise
    order_id, status = message["order_id"], message["status"]
    refusal = None
    with dbmod.transaction(conn):
        order = _order(conn, order_id)
        if order is None:
            refusal = "unknown_order"
        elif order["channel"] != channel:
            refusal = "wrong_channel"
        elif message["amount_fen"] != order["amount_fen"]:
            refusal = "amount_mismatch"
        else:
            outcome = _apply(conn, channel, order, status, message["trade_no"], now_ms)
            _log_notification(conn, channel, order_id, status, outcome, body, now_ms)
            return outcome, _order(conn, order_id)
    _log_refusal(conn, channel, order_id, status, refusal, body, now_ms)
    raise ChannelRefused(refusal)


def _apply(conn, channel, order, status, trade_no, now_ms):
    order_id = order["order_id"]
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


# --- simulator -----------------------------------------------------------------------------------

class SimulatedChannel:
    """A payment channel's notification sender for tests and the demo: correctly signed bodies.

        channel = SimulatedChannel("alipay", secret)
        body, headers = channel.notification(order, "paid")
        httpx.post(url + "/api/v1/channels/alipay/notify", content=body, headers=headers)
    """

    def __init__(self, name, secret):
        assert name in ONLINE_CHANNELS
        self.name = name
        self._secret = secret

    def __repr__(self):
        return "SimulatedChannel(%s, <secret hidden>)" % self.name

    def notification(self, order, status=NOTIFY_PAID, amount_fen=None, trade_no=None):
        """(body bytes, headers) of one notification for `order` (a dict with order_id, amount_fen).
        The channel's trade number is the same on every retry of one payment, as channels do."""
        message = {"channel": self.name, "order_id": order["order_id"], "status": status,
                   "amount_fen": order["amount_fen"] if amount_fen is None else amount_fen,
                   "trade_no": trade_no or "%s-%s" % (self.name.upper(), order["order_id"])}
        body = json.dumps(message, sort_keys=True).encode()
        return body, {SIGNATURE_HEADER: sign(self._secret, body), "Content-Type": "application/json"}
