"""Moving money between one holder's own wallets (钱包间转账), with a receipt, booked exactly once.

    move(conn, account_id, from_wallet, to_wallet, amount_fen, operator=None, pin=None, request_id=None,
         now_ms=None)                                  -> receipt dict (see RECEIPT_FIELDS, plus `repeated`)
    receipt_text(receipt, lang="zh")                   -> the printable receipt, Chinese unless lang is en
    list_moves(conn, account_id, limit=20)             -> the account's receipts, newest first
    get_receipt(conn, receipt_no, account_id=None)     -> one receipt

The directions the campus allows, and nothing else:

    main -> water    圈存: the holder in the app or portal (card PIN), or a clerk at the service hall
    legacy -> main   the old system's balance (spendable on hot water and electricity only) into the
                     new system, at the service hall only, by staff who checked the ID card (go-live
                     notice: 可带身份证件与校园卡到原一卡通中心办理部分余额转移至新一卡通系统)

Any other pair (water -> main, main -> legacy, a wallet to itself, an unknown name) is refused, and so
is legacy -> main without a staff member. The amount is 1 fen up to the direction's cap
(MAX_MOVE_FEN) and never more than the source wallet holds: a move never takes a wallet negative.
An identity-only card has no wallets; a blocked account moves nothing; an account in debt may only
have its old balance moved in by staff (which is how it pays the debt back).

Each move is one `wallet_move` ledger transfer from the source wallet's ledger account to the target
one's, so money is conserved and ledger.check_balances stays clean; the account's balance version is
touched so terminals fetch the new balances at their next sync. A `request_id` (8-100 of A-Z a-z 0-9
- _) makes the move idempotent: the receipt number is derived from the account and the request id,
the transfer id from the receipt number ("wm/<receipt_no>"), so the same request again books
nothing and returns the same receipt (`repeated` True); the same request id with another direction
or amount is refused (idempotency_conflict). Without one the receipt number is random.

`operator` is the clerk: a staff user name (the hall command line's login, or a web staff user's
name), or a web staff user as a mapping with `id` and `username` (the hall pages' g.staff). A clerk's
move is written to the staff action log (staff_actions, action `wallet_move`) in the same
transaction; a name that is no web staff user is logged with staff_user_id 0. The holder acting
themself gives the PIN instead (services.with_pin: a wrong PIN counts towards the lockout and the
move does not happen).
"""
import datetime
import json
import uuid

from firmware.core import card_layout, protocol
from sync_server import ledger
from sync_server.ledger_store import SqliteStore, touch_accounts, update_debt_flags
from sync_server.services import (MESSAGES, ServiceError, check_amount, holder_actions, idempotent_id, now,
                                  person_row, register_messages, with_pin)
from sync_server.services.history import BEIJING

# (from, to) -> (cap in fen per move, the holder may do it themself)
DIRECTIONS = {
    (protocol.WALLET_MAIN, protocol.WALLET_WATER): (50000, True),          # 圈存 ¥500 at a time
    (protocol.WALLET_LEGACY, protocol.WALLET_MAIN): (1000000, False),      # the old purse held at most ¥9,999.99
}
MAX_MOVE_FEN = {direction: cap for direction, (cap, _holder) in DIRECTIONS.items()}
MAX_LISTED = 100
ACTION = "wallet_move"            # staff_actions.action
TRANSFER_PREFIX = "wm/"

WALLET_NAMES = {
    protocol.WALLET_MAIN: ("主钱包", "main wallet"),
    protocol.WALLET_WATER: ("小钱包（热水）", "water wallet"),
    protocol.WALLET_LEGACY: ("原一卡通余额", "old-system balance"),
}

register_messages({
    "bad_wallet": (400, "钱包名称无效（应为 main、water 或 legacy）", "unknown wallet (main, water or legacy)"),
    "move_not_allowed": (400, "不能从%s转入%s：只能由主钱包转入小钱包（圈存），或在服务大厅将原一卡通余额转入主钱包",
                         "cannot move money from the %s to the %s: only main -> water (圈存), or the old-system "
                         "balance -> main at the service hall"),
    "move_hall_only": (403, "原一卡通余额转入主钱包须本人持身份证件与校园卡到服务大厅办理",
                       "moving the old-system balance into the main wallet is done at the service hall, with "
                       "your ID and campus card"),
    "unknown_receipt": (404, "凭证不存在", "unknown receipt"),
})

RECEIPT_FIELDS = ("receipt_no", "account_id", "person_id", "name", "staff_number", "from_wallet", "to_wallet",
                  "amount_fen", "from_balance_fen_after", "to_balance_fen_after", "transfer_id", "operator",
                  "staff_action_id", "time_ms")
_SELECT = "SELECT %s FROM wallet_moves" % ", ".join(RECEIPT_FIELDS)


def _receipt(row):
    receipt = dict(zip(RECEIPT_FIELDS, row))
    receipt["time"] = datetime.datetime.fromtimestamp(receipt["time_ms"] / 1000, BEIJING).strftime(
        "%Y-%m-%d %H:%M:%S")
    return receipt


def _stored(conn, receipt_no):
    row = conn.execute(_SELECT + " WHERE receipt_no = ?", (receipt_no,)).fetchone()
    return None if row is None else _receipt(row)


def get_receipt(conn, receipt_no, account_id=None):
    """One receipt; with `account_id`, only when it is that account's (else unknown_receipt)."""
    receipt = _stored(conn, receipt_no) if isinstance(receipt_no, str) else None
    if receipt is None or (account_id is not None and receipt["account_id"] != account_id):
        raise ServiceError("unknown_receipt")
    return receipt


def list_moves(conn, account_id, limit=20):
    """The account's receipts, newest first (at most MAX_LISTED)."""
    limit = max(1, min(int(limit), MAX_LISTED))
    return [_receipt(row) for row in conn.execute(
        _SELECT + " WHERE account_id = ? ORDER BY time_ms DESC, rowid DESC LIMIT ?", (account_id, limit))]


def check_direction(from_wallet, to_wallet, operator=None):
    """The cap in fen of an allowed move, else ServiceError: bad_wallet, move_not_allowed, move_hall_only."""
    for wallet in (from_wallet, to_wallet):
        if not isinstance(wallet, str) or wallet not in protocol.WALLETS:
            raise ServiceError("bad_wallet")
    rule = DIRECTIONS.get((from_wallet, to_wallet))
    if rule is None:
        raise _not_allowed(from_wallet, to_wallet)
    cap_fen, holder_may = rule
    if operator is None and not holder_may:
        raise ServiceError("move_hall_only")
    return cap_fen


def _not_allowed(from_wallet, to_wallet):
    """move_not_allowed naming the wallets in each language."""
    error = ServiceError("move_not_allowed", WALLET_NAMES[from_wallet][0], WALLET_NAMES[to_wallet][0])
    error.en = MESSAGES["move_not_allowed"][2] % (WALLET_NAMES[from_wallet][1], WALLET_NAMES[to_wallet][1])
    error.args = ("%s / %s" % (error.zh, error.en),)
    return error


def _staff(conn, operator):
    """(staff_user_id, username) of the clerk: a web staff user's mapping, or a name (looked up among
    the web staff users; 0 when it is none of them, a command-line login)."""
    if isinstance(operator, str):
        if not operator.strip() or len(operator) > 100:
            raise ServiceError("bad_request", "operator")
        row = conn.execute("SELECT id FROM web_staff_users WHERE username = ?", (operator,)).fetchone()
        return (row[0] if row else 0), operator
    return operator["id"], operator["username"]


def _log_action(conn, staff_user_id, username, holder, account_id, receipt, now_ms):
    """The staff action log's line (same columns as sync_server/web/auth.log_action writes), in the
    move's own transaction; returns its id."""
    detail = {"receipt_no": receipt["receipt_no"], "from_wallet": receipt["from_wallet"],
              "to_wallet": receipt["to_wallet"], "from_balance_fen_after": receipt["from_balance_fen_after"],
              "to_balance_fen_after": receipt["to_balance_fen_after"], "transfer_id": receipt["transfer_id"]}
    return conn.execute(
        "INSERT INTO staff_actions (staff_user_id, username, action, person_id, account_id, card_number, "
        "amount_fen, detail, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (staff_user_id, username, ACTION, holder["id"], account_id, None, receipt["amount_fen"],
         json.dumps(detail, ensure_ascii=False, sort_keys=True), now_ms)).fetchone()[0]


def move(conn, account_id, from_wallet, to_wallet, amount_fen, operator=None, pin=None, request_id=None,
         now_ms=None, via=None):
    """Move `amount_fen` from one of the account's wallets to another (module text); returns the receipt
    with `repeated` (True: this request id was booked before, nothing booked now). The holder's own
    move goes into their action log (`via`: where)."""
    cap_fen = check_direction(from_wallet, to_wallet, operator)
    check_amount(amount_fen, cap_fen)
    now_ms = now(now_ms)
    receipt_no = "W%d%s" % (now_ms, uuid.uuid4().hex[:12]) if request_id is None else \
        idempotent_id("W", account_id, request_id)

    def operation():
        existing = _stored(conn, receipt_no)
        if existing is not None:
            if (existing["account_id"], existing["from_wallet"], existing["to_wallet"], existing["amount_fen"]) != \
                    (account_id, from_wallet, to_wallet, amount_fen):
                raise ServiceError("idempotency_conflict")
            return dict(existing, repeated=True)
        holder = person_row(conn, account_id)
        if holder["category"] == card_layout.HOLDER_IDENTITY_ONLY:
            raise ServiceError("no_wallet")
        if holder["blocked"]:
            raise ServiceError("account_blocked")
        if holder["in_debt"] and from_wallet != protocol.WALLET_LEGACY:
            raise ServiceError("account_in_debt")
        staff = None if operator is None else _staff(conn, operator)
        store = SqliteStore(conn)
        wallet_ids = store.wallet_ids([account_id]).get(account_id, {})
        if from_wallet not in wallet_ids or to_wallet not in wallet_ids:
            raise ServiceError("account_unknown")
        source, target = wallet_ids[from_wallet], wallet_ids[to_wallet]
        if store.balances([source])[source] < amount_fen:
            raise ServiceError("insufficient_funds")
        transfer_id = TRANSFER_PREFIX + receipt_no
        ledger.post(store, [ledger.Transfer(transfer_id, source, target, amount_fen, ledger.KIND_WALLET_MOVE,
                                            "%s>%s %s" % (from_wallet, to_wallet, receipt_no), now_ms)])
        after = store.balances(sorted(wallet_ids.values()))
        in_debt, clear = ledger.accounts_in_debt(after, {account_id: wallet_ids})
        update_debt_flags(conn, in_debt, clear, now_ms)
        touch_accounts(conn, [account_id])
        receipt = {"receipt_no": receipt_no, "account_id": account_id, "person_id": holder["id"],
                   "name": holder["name"], "staff_number": holder["staff_number"], "from_wallet": from_wallet,
                   "to_wallet": to_wallet, "amount_fen": amount_fen, "from_balance_fen_after": after[source],
                   "to_balance_fen_after": after[target], "transfer_id": transfer_id,
                   "operator": None if staff is None else staff[1], "staff_action_id": None, "time_ms": now_ms}
        if staff is not None:
            receipt["staff_action_id"] = _log_action(conn, staff[0], staff[1], holder, account_id, receipt, now_ms)
        else:
            holder_actions.record(conn, account_id, ACTION, via, amount_fen=amount_fen, now_ms=now_ms,
                                  detail={"receipt_no": receipt_no, "from_wallet": from_wallet, "to_wallet": to_wallet})
        conn.execute("INSERT INTO wallet_moves (%s) VALUES (%s)" % (", ".join(RECEIPT_FIELDS),
                                                                     ", ".join("?" * len(RECEIPT_FIELDS))),
                     tuple(receipt[field] for field in RECEIPT_FIELDS))
        return dict(_stored(conn, receipt_no), repeated=False)
    return with_pin(conn, account_id, pin, operator, now_ms, operation)


def _yuan(fen):
    return "%.2f" % (fen / 100)


def receipt_text(receipt, lang="zh"):
    """The printable receipt: Chinese (default) or English lines, amounts in yuan."""
    en = lang == "en"
    pick = 1 if en else 0
    source, target = WALLET_NAMES[receipt["from_wallet"]][pick], WALLET_NAMES[receipt["to_wallet"]][pick]
    by = receipt["operator"]
    if en:
        lines = ["Campus card - wallet transfer receipt",
                 "Receipt no.: %s" % receipt["receipt_no"],
                 "Time: %s (Beijing)" % receipt["time"],
                 "Name: %s    Staff/student no.: %s" % (receipt["name"], receipt["staff_number"] or "-"),
                 "From: %s    To: %s" % (source, target),
                 "Amount: %s yuan" % _yuan(receipt["amount_fen"]),
                 "%s after: %s yuan" % (source[0].upper() + source[1:], _yuan(receipt["from_balance_fen_after"])),
                 "%s after: %s yuan" % (target[0].upper() + target[1:], _yuan(receipt["to_balance_fen_after"])),
                 "Done by: %s" % ("%s (service hall)" % by if by else "the cardholder (card PIN)")]
    else:
        lines = ["校园一卡通 钱包转账凭证",
                 "凭证号：%s" % receipt["receipt_no"],
                 "时间：%s（北京时间）" % receipt["time"],
                 "姓名：%s    学工号：%s" % (receipt["name"], receipt["staff_number"] or "-"),
                 "转出：%s    转入：%s" % (source, target),
                 "金额：%s 元" % _yuan(receipt["amount_fen"]),
                 "%s余额：%s 元" % (source, _yuan(receipt["from_balance_fen_after"])),
                 "%s余额：%s 元" % (target, _yuan(receipt["to_balance_fen_after"])),
                 "经办：%s" % ("%s（服务大厅）" % by if by else "本人（交易密码）")]
    return "\n".join(lines) + "\n"

