"""Dorm electricity (学生公寓电费): pay for a building / floor / room from the card account.

The payment draws on the wallets in the shared order for the electricity category
(firmware.core.wallets: legacy first - the old system's balance may be spent only on water and
electricity - then main) and goes to the dorm electricity merchant's ledger account, created on the
first payment and named by the setting electricity_merchant_id. One `purchase` transfer per wallet
drawn on, ids derived from the payment id, so the statement shows them under consumption.
Unlike a terminal tap, nothing here may go negative: a shortfall is refused.
"""
import re
import uuid

from firmware.core import card_layout, protocol, wallets as wallet_rules
from sync_server import db as dbmod, ledger, registry
from sync_server.ledger_store import SqliteStore, touch_accounts
from sync_server.services import (ServiceError, check_amount, idempotent_id, now, person_row, register_messages,
                                  with_pin)

MAX_PAYMENT_FEN = 50000           # ¥500 at a time
MAX_FLOOR = 60
_BUILDING = re.compile(r"^[0-9A-Za-z\u4e00-\u9fff\-]{1,16}$")
_ROOM = re.compile(r"^[0-9A-Za-z\-]{1,8}$")

register_messages({
    "bad_room": (400, "楼栋、楼层或房间号无效", "invalid building, floor or room"),
    "account_not_clear": (409, "账户已冻结或余额为负，不能缴费", "account blocked or negative: cannot pay"),
})


def electricity_merchant(conn):
    """The merchant id of dorm electricity, created once (inside the caller's transaction)."""
    assert conn.in_transaction
    merchant_id = dbmod.setting(conn, "electricity_merchant_id")
    if not merchant_id:
        merchant_id = registry.add_merchant(conn, "学生公寓电费", "dorm electricity", wallet_rules.CATEGORY_ELECTRICITY)
        conn.execute("UPDATE settings SET value = ? WHERE name = 'electricity_merchant_id'", (merchant_id,))
    return merchant_id


def _check_room(building, floor, room):
    ok = (isinstance(building, str) and _BUILDING.match(building) and type(floor) is int and 0 < floor <= MAX_FLOOR
          and isinstance(room, str) and _ROOM.match(room))
    if not ok:
        raise ServiceError("bad_room")


def _parts(conn, payment_id):
    """[(wallet, fen)] of a booked payment, in the order they were drawn."""
    ids = ["e/%s/%d" % (payment_id, index) for index in range(len(protocol.WALLETS))]
    rows = conn.execute("SELECT t.id, la.wallet, t.amount_fen FROM transfers t JOIN ledger_accounts la "
                        "ON la.id = t.debit_id WHERE t.id IN (%s)" % ", ".join("?" * len(ids)), ids).fetchall()
    return [(wallet, fen) for _, wallet, fen in sorted(rows, key=lambda row: ids.index(row[0]))]


def pay(conn, account_id, building, floor, room, amount_fen, pin=None, operator=None, now_ms=None,
        idempotency_key=None):
    """Pay `amount_fen` for a room. Returns {payment_id, parts: [(wallet, fen)], balances, repeated}.

    With an `idempotency_key` the payment id is derived from it: a repeat of the same submission (a
    double click, a retry) books nothing and returns the first payment (repeated True); the same key
    for another room or amount is refused (idempotency_conflict)."""
    _check_room(building, floor, room)
    check_amount(amount_fen, MAX_PAYMENT_FEN)
    now_ms = now(now_ms)
    payment_id = "E%d%s" % (now_ms, uuid.uuid4().hex[:12]) if idempotency_key is None else \
        idempotent_id("E", account_id, idempotency_key)

    def operation():
        if idempotency_key is not None:
            done = conn.execute("SELECT account_id, building, floor, room, amount_fen FROM electricity_payments "
                                "WHERE payment_id = ?", (payment_id,)).fetchone()
            if done is not None:
                if tuple(done) != (account_id, building, floor, room, amount_fen):
                    raise ServiceError("idempotency_conflict")
                return {"payment_id": payment_id, "parts": _parts(conn, payment_id),
                        "balances": registry.balances_of(conn, account_id), "repeated": True}
        holder = person_row(conn, account_id)
        if holder["category"] == card_layout.HOLDER_IDENTITY_ONLY:
            raise ServiceError("no_wallet")
        if holder["blocked"] or holder["in_debt"]:
            raise ServiceError("account_not_clear")
        merchant_id = electricity_merchant(conn)
        merchant_ledger_id = conn.execute("SELECT ledger_account_id FROM merchants WHERE id = ?",
                                          (merchant_id,)).fetchone()[0]
        store = SqliteStore(conn)
        wallet_ids = store.wallet_ids([account_id])[account_id]
        balances = store.balances(sorted(wallet_ids.values()))
        parts = wallet_rules.split_debit({wallet: balances[ledger_id] for wallet, ledger_id in wallet_ids.items()},
                                         wallet_rules.CATEGORY_ELECTRICITY, amount_fen)
        if parts is None:
            raise ServiceError("insufficient_funds")
        reference = "%s %d-%s" % (building, floor, room)
        ledger.post(store, [ledger.Transfer("e/%s/%d" % (payment_id, index), wallet_ids[wallet], merchant_ledger_id,
                                            fen, ledger.KIND_PURCHASE, reference, now_ms)
                            for index, (wallet, fen) in enumerate(parts)])
        conn.execute("INSERT INTO electricity_payments (payment_id, account_id, building, floor, room, amount_fen, "
                     "operator, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (payment_id, account_id, building, floor, room, amount_fen, operator, now_ms))
        touch_accounts(conn, [account_id])
        return {"payment_id": payment_id, "parts": parts, "balances": registry.balances_of(conn, account_id),
                "repeated": False}
    return with_pin(conn, account_id, pin, operator, now_ms, operation)
