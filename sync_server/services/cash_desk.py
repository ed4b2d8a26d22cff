"""The service hall's cash desk (现金收款): cash recharges under a per-transaction cap, a second staff
member's approval above it, reversal (冲正) of a mistaken cash recharge, and each clerk's shift close (结账).

    limits(conn) / set_limits(conn, cap_fen, maximum_fen, operator)    -> {cap_fen, maximum_fen}
    account_of_number(conn, staff_number)                              -> account id
    recharge(conn, account_id, amount_fen, clerk, wallet="main", idempotency_key=None, approver=None,
             hold=False, now_ms=None)                                  -> outcome (below)
    approve(conn, request_id, approver, now_ms=None)                   -> outcome, booked
    refuse(conn, request_id, staff, now_ms=None)                       -> the request, refused
    pending_requests(conn) / get_request(conn, request_id)
    reverse(conn, order_id, supervisor, reason, now_ms=None)           -> the reversal
    get_cash_recharge(conn, order_id) / cash_recharges(conn, account_id) -> cash orders with their reversal
    open_shift(conn, clerk, now_ms=None)                               -> what the clerk holds unclosed
    close_shift(conn, clerk, counted_fen, note=None, request_key=None, expected_fen=None, now_ms=None)
    get_close(conn, close_id) / closes_of_clerk(conn, clerk) / closes_of_day(conn, day_number)

An outcome is {outcome: "booked" | "pending", order, request, receipt_id, repeated}: `receipt_id` is
the staff action log line of the booking (the hall's receipt number), `repeated` True when the same
submission (idempotency key) was seen before and nothing new happened.

Rules. Up to the cap (setting cash_recharge_cap_fen, ¥1000 by default: the online channels' per-order
ceiling, so the desk alone takes no more at once than the app would, and a slipped digit in a typical
¥50-¥500 top-up lands above it) a clerk books alone. Above it and up to the absolute maximum
(cash_recharge_max_fen, ¥10000; `ykt hall cash-limits` sets both) the booking needs a second person: a web staff
user other than the clerk with the hall or supervisor role, who proved who they are (the caller checks
their password). Without one the request is refused, or with `hold` stored pending for approval from
the hall's list; nothing is booked until approved. Above the maximum everything is refused.

A reversal is by a supervisor other than the clerk who booked the original, with a reason: one
`correction` transfer from the wallet back to the cash desk, id "rv/" + the original's transfer id, so
it happens at most once and the original stays as it was. It takes back only what the wallet still
holds: a wallet never goes negative by a reversal (that would block the account at every terminal, as
an offline overdraft does); a holder who spent part of it settles the rest with the clerk first.

A shift close takes every cash item of the clerk that no close has taken yet (cash recharges they
booked, reissue fees paid in cash at their desk, reversals of their recharges, which pay cash back),
so an item booked while the close ran lands in the next one and none is counted twice. The clerk's
counted cash minus the expected total is the difference (below zero 短款, above 长款). Closes are
stored once and never changed; finance's day report lists each day's closes.

Every change writes its staff action log line in the transaction of the change (same columns as
sync_server/web/auth.log_action); a clerk that is no web staff user (a command-line login) is logged
with staff_user_id 0.
"""
import collections
import json
import uuid

from firmware.core import card_layout, protocol
from sync_server import db as dbmod, ledger, registry
from sync_server.business_day import day_of_ms
from sync_server.ledger_store import SqliteStore, touch_accounts, update_debt_flags
from sync_server.services import MESSAGES, ServiceError, idempotent_id, now, person_row, register_messages, tx
from sync_server.services import recharge as recharge_service
from sync_server.services.wallet_move import WALLET_NAMES

CAP_SETTING, MAXIMUM_SETTING = "cash_recharge_cap_fen", "cash_recharge_max_fen"
APPROVER_ROLES = ("hall", "supervisor")
SUPERVISOR_ROLE = "supervisor"
MAX_REASON_CHARS = 200
MAX_NOTE_CHARS = 200
MAX_LISTED = 200
LATE_BOOKING_MS = 10 * 60 * 1000     # an item may carry a time up to this much before a close it missed
PENDING, APPROVED, REFUSED = "pending", "approved", "refused"
KIND_RECHARGE, KIND_FEE, KIND_REVERSAL = "recharge", "fee", "reversal"
ACTION_NAMES = {"recharge_request": ("大额充值待审批", "cash recharge awaiting approval"),
                "recharge_approve": ("大额充值审批", "cash recharge approved"),
                "recharge_refuse": ("大额充值未获批准", "cash recharge not approved"),
                "recharge_reverse": ("现金充值冲正", "cash recharge reversed"),
                "cash_close": ("收款结账", "cash desk close"),
                "cash_limits": ("现金充值限额设置", "cash recharge limits set")}
KIND_NAMES = {KIND_RECHARGE: ("现金充值", "cash recharge"), KIND_FEE: ("补卡费（现金）", "reissue fee (cash)"),
              KIND_REVERSAL: ("充值冲正（退还现金）", "reversal (cash paid back)")}

Staff = collections.namedtuple("Staff", "id username roles")

register_messages({
    "cash_bad_amount": (400, "请输入充值金额（元，最多两位小数）", "enter the amount in yuan (at most two decimals)"),
    "cash_over_maximum": (400, "金额 %s 元超过现金充值单笔上限 %s 元，不能办理",
                          "%s yuan is above the most a cash recharge may be (%s yuan): refused"),
    "cash_needs_approval": (403, "金额 %s 元超过单笔限额 %s 元，需另一位工作人员审批",
                            "%s yuan is above the per-transaction cap of %s yuan: a second staff member approves it"),
    "cash_same_person": (403, "审批人不能是经办人本人", "the approver cannot be the clerk who took the cash"),
    "cash_not_approver": (403, "%s 无审批权限（须有服务大厅或主管角色）",
                          "%s may not approve (needs the hall or supervisor role)"),
    "cash_request_unknown": (404, "没有这笔待审批的充值", "no such recharge request"),
    "cash_request_decided": (409, "这笔充值已%s", "this recharge was already %s"),
    "cash_not_supervisor": (403, "冲正须由主管办理", "a reversal is done by a supervisor"),
    "cash_own_reversal": (403, "冲正须由经办人以外的主管办理", "a supervisor other than the clerk who booked it reverses it"),
    "cash_order_unknown": (404, "没有这笔现金充值", "no such cash recharge"),
    "cash_already_reversed": (409, "这笔充值已冲正", "this recharge was already reversed"),
    "cash_reversal_balance": (409, "%s余额 %s 元，不足以冲正 %s 元：持卡人已使用部分款项，请先与持卡人结清",
                              "the %s holds %s yuan, less than the %s yuan to reverse: the holder spent some of it"),
    "cash_reason_required": (400, "请填写冲正原因（最多 %d 个字）", "give the reason for the reversal (at most %d characters)"),
    "cash_shift_changed": (409, "结账期间又有款项入账，请核对后重新结账",
                           "money was booked meanwhile: check the figures and close again"),
    "cash_close_unknown": (404, "没有这次结账记录", "no such close"),
    "cash_number_unknown": (404, "没有学工号为 %s 的人员", "nobody has the staff/student number %s"),
    "cash_bad_limits": (400, "限额无效：单笔限额应为 0.01 至 %s 元，且不高于上限",
                        "invalid limits: the cap is 0.01 to %s yuan and not above the maximum"),
    "cash_bad_note": (400, "备注最多 %d 个字", "the note has at most %d characters"),
})


def yuan(fen):
    """'12.34' from integer fen (negative with a leading minus)."""
    return "%s%d.%02d" % ("-" if fen < 0 else "", abs(fen) // 100, abs(fen) % 100)


def _error(code, zh_parameters, en_parameters):
    """A ServiceError whose Chinese and English texts take different parameters (names of things)."""
    error = ServiceError(code, *zh_parameters)
    error.en = MESSAGES[code][2] % tuple(en_parameters)
    error.args = ("%s / %s" % (error.zh, error.en),)
    return error


def _decided(status):
    return _error("cash_request_decided", ("批准" if status == APPROVED else "被拒绝",),
                  ("approved" if status == APPROVED else "refused",))


def wallet_name(wallet, lang="zh"):
    names = WALLET_NAMES.get(wallet, (wallet, wallet))
    return names[1] if lang == "en" else names[0]


# --- limits --------------------------------------------------------------------------------------

def limits(conn):
    return {"cap_fen": dbmod.setting(conn, CAP_SETTING), "maximum_fen": dbmod.setting(conn, MAXIMUM_SETTING)}


def set_limits(conn, cap_fen=None, maximum_fen=None, operator=None, now_ms=None):
    """Change the cap and / or the maximum (0 < cap <= maximum <= ledger.MAX_TRANSFER_FEN); logged."""
    now_ms = now(now_ms)
    with tx(conn):
        current = limits(conn)
        cap_fen = current["cap_fen"] if cap_fen is None else cap_fen
        maximum_fen = current["maximum_fen"] if maximum_fen is None else maximum_fen
        for value in (cap_fen, maximum_fen):
            if type(value) is not int or not 0 < value <= ledger.MAX_TRANSFER_FEN:
                raise ServiceError("cash_bad_limits", yuan(ledger.MAX_TRANSFER_FEN))
        if cap_fen > maximum_fen:
            raise ServiceError("cash_bad_limits", yuan(ledger.MAX_TRANSFER_FEN))
        conn.execute("UPDATE settings SET value = ? WHERE name = ?", (cap_fen, CAP_SETTING))
        conn.execute("UPDATE settings SET value = ? WHERE name = ?", (maximum_fen, MAXIMUM_SETTING))
        _log(conn, _staff(conn, operator or "system"), "cash_limits", detail={
            "cap_fen": cap_fen, "maximum_fen": maximum_fen, "was": current}, now_ms=now_ms)
        return limits(conn)


def check_amount_allowed(conn, amount_fen):
    """True when the amount needs a second person's approval, False when the clerk books it alone;
    ServiceError for an amount that is no amount or above the absolute maximum."""
    bounds = limits(conn)
    if type(amount_fen) is not int or amount_fen <= 0:
        raise ServiceError("cash_bad_amount")
    if amount_fen > bounds["maximum_fen"]:
        raise ServiceError("cash_over_maximum", yuan(amount_fen), yuan(bounds["maximum_fen"]))
    return amount_fen > bounds["cap_fen"]


# --- people and staff ----------------------------------------------------------------------------

def account_of_number(conn, staff_number):
    """The account of the person with this staff/student number (the number people know)."""
    staff_number = (staff_number or "").strip()
    row = conn.execute("SELECT a.id FROM persons p JOIN accounts a ON a.person_id = p.id WHERE p.staff_number = ? "
                       "ORDER BY a.id LIMIT 1", (staff_number,)).fetchone()
    if row is None or not staff_number:
        raise ServiceError("cash_number_unknown", staff_number[:40])
    return row[0]


def _staff(conn, who):
    """A Staff from a web staff user's mapping (id, username, roles) or a name (looked up among the web
    staff users; id 0 and no roles when it is none, a command-line login)."""
    if isinstance(who, str):
        if not who.strip() or len(who) > 100:
            raise ServiceError("bad_request", "operator")
        row = conn.execute("SELECT id, roles FROM web_staff_users WHERE username = ? AND disabled = 0",
                           (who,)).fetchone()
        return Staff(row[0], who, frozenset(row[1].split())) if row else Staff(0, who, frozenset())
    return Staff(who["id"], who["username"], frozenset(who.get("roles", ())))


def _same_person(first, second):
    return first.username == second.username or (first.id and first.id == second.id)


def _log(conn, staff, action, holder=None, account_id=None, amount_fen=None, detail=None, now_ms=None):
    """The staff action log's line, in the caller's transaction; returns its id (a receipt number)."""
    assert conn.in_transaction, "log the action in the transaction that does it"
    return conn.execute(
        "INSERT INTO staff_actions (staff_user_id, username, action, person_id, account_id, card_number, "
        "amount_fen, detail, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (staff.id, staff.username, action, None if holder is None else holder["id"], account_id, None, amount_fen,
         json.dumps(detail or {}, ensure_ascii=False, sort_keys=True), now(now_ms))).fetchone()[0]


# --- recharge, approval --------------------------------------------------------------------------

_REQUEST_COLUMNS = ("request_id", "account_id", "person_id", "wallet", "amount_fen", "clerk", "clerk_user_id",
                    "requested_ms", "status", "decided_by", "decided_user_id", "decided_ms", "order_id",
                    "staff_action_id")


def get_request(conn, request_id):
    row = conn.execute("SELECT %s FROM cash_recharge_requests WHERE request_id = ?" % ", ".join(_REQUEST_COLUMNS),
                       (request_id,)).fetchone()
    if row is None:
        raise ServiceError("cash_request_unknown")
    return dict(zip(_REQUEST_COLUMNS, row))


def pending_requests(conn, limit=MAX_LISTED):
    """Requests waiting for approval, oldest first, with the holder's name and number."""
    rows = conn.execute("SELECT %s, p.name, p.staff_number FROM cash_recharge_requests r JOIN persons p "
                        "ON p.id = r.person_id WHERE r.status = 'pending' ORDER BY r.requested_ms, r.request_id "
                        "LIMIT ?" % ", ".join("r." + c for c in _REQUEST_COLUMNS), (limit,)).fetchall()
    return [dict(zip(_REQUEST_COLUMNS + ("name", "staff_number"), row)) for row in rows]


def _outcome(outcome, order=None, request=None, receipt_id=None, repeated=False):
    return {"outcome": outcome, "order": order, "request": request, "receipt_id": receipt_id, "repeated": repeated}


def recharge(conn, account_id, amount_fen, clerk, wallet=protocol.WALLET_MAIN, idempotency_key=None,
             approver=None, hold=False, now_ms=None):
    """Book cash paid at the desk (module text). `clerk` / `approver`: a web staff user's mapping or a
    name; the caller has checked the approver's password. `hold`: above the cap without an approver,
    store the request for approval instead of refusing it."""
    needs_approval = check_amount_allowed(conn, amount_fen)
    if wallet not in protocol.WALLETS:
        raise ServiceError("bad_request", "wallet")
    now_ms = now(now_ms)
    with tx(conn):
        clerk = _staff(conn, clerk)
        if not needs_approval:
            return _book(conn, account_id, amount_fen, wallet, clerk, idempotency_key, now_ms)
        request_id = "Q%d%s" % (now_ms, uuid.uuid4().hex[:12]) if idempotency_key is None else \
            idempotent_id("Q", account_id, idempotency_key)
        existing = _request_or_none(conn, request_id)
        if existing is not None:
            if (existing["account_id"], existing["amount_fen"], existing["wallet"]) != (account_id, amount_fen, wallet):
                raise ServiceError("idempotency_conflict")
            if existing["status"] != PENDING or approver is None:
                return _request_outcome(conn, existing)
            return approve(conn, request_id, approver, now_ms)
        if approver is None and not hold:
            raise ServiceError("cash_needs_approval", yuan(amount_fen), yuan(limits(conn)["cap_fen"]))
        if approver is not None:
            _check_approver(conn, clerk, _staff(conn, approver))
        _store_request(conn, request_id, account_id, amount_fen, wallet, clerk, now_ms)
        if approver is None:
            return _outcome(PENDING, request=get_request(conn, request_id))
        return approve(conn, request_id, approver, now_ms)


def _request_or_none(conn, request_id):
    try:
        return get_request(conn, request_id)
    except ServiceError:
        return None


def _request_outcome(conn, request):
    """What a repeated submission of a request answers: its booking, or that it still waits."""
    if request["status"] == APPROVED:
        return _outcome("booked", recharge_service.get_order(conn, request["order_id"]), request,
                        _receipt_of_order(conn, request["order_id"]), repeated=True)
    if request["status"] == REFUSED:
        raise _decided(REFUSED)
    return _outcome(PENDING, request=request, repeated=True)


def _store_request(conn, request_id, account_id, amount_fen, wallet, clerk, now_ms):
    holder = person_row(conn, account_id)
    if holder["category"] == card_layout.HOLDER_IDENTITY_ONLY:
        raise ServiceError("no_wallet")
    action_id = _log(conn, clerk, "recharge_request", holder, account_id, amount_fen,
                     {"request_id": request_id, "wallet": wallet}, now_ms)
    conn.execute("INSERT INTO cash_recharge_requests (request_id, account_id, person_id, wallet, amount_fen, clerk, "
                 "clerk_user_id, requested_ms, status, staff_action_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                 (request_id, account_id, holder["id"], wallet, amount_fen, clerk.username, clerk.id, now_ms,
                  action_id))


def _check_approver(conn, clerk, approver):
    if _same_person(clerk, approver):
        raise ServiceError("cash_same_person")
    if not approver.id or not approver.roles & set(APPROVER_ROLES):
        raise ServiceError("cash_not_approver", approver.username)


def approve(conn, request_id, approver, now_ms=None):
    """The second person's approval: books the request's cash order (the clerk's) and logs both names."""
    now_ms = now(now_ms)
    with tx(conn):
        request = get_request(conn, request_id)
        clerk = Staff(request["clerk_user_id"], request["clerk"], frozenset())
        approver = _staff(conn, approver)
        if request["status"] != PENDING:
            return _request_outcome(conn, request)
        _check_approver(conn, clerk, approver)
        check_amount_allowed(conn, request["amount_fen"])     # the maximum may have been lowered meanwhile
        booked = _book(conn, request["account_id"], request["amount_fen"], request["wallet"], clerk, request_id,
                       now_ms, approver=approver, request_id=request_id)
        order_id = booked["order"]["order_id"]
        changed = conn.execute("UPDATE cash_recharge_requests SET status = 'approved', decided_by = ?, "
                               "decided_user_id = ?, decided_ms = ?, order_id = ? WHERE request_id = ? "
                               "AND status = 'pending'", (approver.username, approver.id, now_ms, order_id,
                                                          request_id)).rowcount
        assert changed == 1, "a pending request is decided once, under the write lock"
        _log(conn, approver, "recharge_approve", person_row(conn, request["account_id"]), request["account_id"],
             request["amount_fen"], {"request_id": request_id, "order_id": order_id, "clerk": clerk.username,
                                     "approved_by": approver.username, "receipt_id": booked["receipt_id"]}, now_ms)
        booked["request"] = get_request(conn, request_id)
        return booked


def refuse(conn, request_id, staff, now_ms=None):
    """Turn a pending request down (the approver) or withdraw it (the clerk); nothing is booked."""
    now_ms = now(now_ms)
    with tx(conn):
        request = get_request(conn, request_id)
        staff = _staff(conn, staff)
        if request["status"] != PENDING:
            raise _decided(request["status"])
        conn.execute("UPDATE cash_recharge_requests SET status = 'refused', decided_by = ?, decided_user_id = ?, "
                     "decided_ms = ? WHERE request_id = ?", (staff.username, staff.id, now_ms, request_id))
        _log(conn, staff, "recharge_refuse", person_row(conn, request["account_id"]), request["account_id"],
             request["amount_fen"], {"request_id": request_id, "clerk": request["clerk"]}, now_ms)
        return get_request(conn, request_id)


def _book(conn, account_id, amount_fen, wallet, clerk, idempotency_key, now_ms, approver=None, request_id=None):
    order = recharge_service.cash_recharge(conn, account_id, amount_fen, clerk.username, wallet=wallet,
                                           now_ms=now_ms, idempotency_key=idempotency_key)
    if order["repeated"]:
        return _outcome("booked", order, receipt_id=_receipt_of_order(conn, order["order_id"]), repeated=True)
    detail = {"order_id": order["order_id"], "wallet": wallet,
              "balance_fen_after": registry.balances_of(conn, account_id)[wallet]}
    if approver is not None:
        detail.update(approved_by=approver.username, request_id=request_id)
    receipt_id = _log(conn, clerk, "recharge", person_row(conn, account_id), account_id, amount_fen, detail, now_ms)
    conn.execute("UPDATE recharge_orders SET staff_action_id = ? WHERE order_id = ?", (receipt_id, order["order_id"]))
    return _outcome("booked", order, receipt_id=receipt_id)


def _receipt_of_order(conn, order_id):
    row = conn.execute("SELECT staff_action_id FROM recharge_orders WHERE order_id = ?", (order_id,)).fetchone()
    return None if row is None else row[0]


# --- reversal (冲正) -------------------------------------------------------------------------------

_REVERSAL_COLUMNS = ("order_id", "transfer_id", "account_id", "person_id", "wallet", "amount_fen", "clerk",
                     "supervisor", "supervisor_user_id", "reason", "staff_action_id", "time_ms")


def get_reversal(conn, order_id):
    row = conn.execute("SELECT %s FROM cash_reversals WHERE order_id = ?" % ", ".join(_REVERSAL_COLUMNS),
                       (order_id,)).fetchone()
    return None if row is None else dict(zip(_REVERSAL_COLUMNS, row))


def reversal_transfer_id(order):
    return "rv/" + order["transfer_id"]


def reverse(conn, order_id, supervisor, reason, now_ms=None):
    """Take back a mistaken cash recharge (module text); returns the reversal with its receipt id."""
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise ServiceError("cash_reason_required", MAX_REASON_CHARS)
    now_ms = now(now_ms)
    with tx(conn):
        supervisor = _staff(conn, supervisor)
        if SUPERVISOR_ROLE not in supervisor.roles or not supervisor.id:
            raise ServiceError("cash_not_supervisor")
        order = _cash_order(conn, order_id)
        if get_reversal(conn, order_id) is not None:
            raise ServiceError("cash_already_reversed")
        if order["operator"] == supervisor.username:
            raise ServiceError("cash_own_reversal")
        holder = person_row(conn, order["account_id"])
        store = SqliteStore(conn)
        wallet_ids = store.wallet_ids([order["account_id"]])[order["account_id"]]
        source = wallet_ids[order["wallet"]]
        balance_fen = store.balances([source])[source]
        if balance_fen < order["amount_fen"]:
            amounts = (yuan(balance_fen), yuan(order["amount_fen"]))
            raise _error("cash_reversal_balance", (wallet_name(order["wallet"]),) + amounts,
                         (wallet_name(order["wallet"], "en"),) + amounts)
        transfer_id = reversal_transfer_id(order)
        posted = ledger.post(store, [ledger.Transfer(transfer_id, source, dbmod.LEDGER_CASH_DESK, order["amount_fen"],
                                                     ledger.KIND_CORRECTION, "reversal %s" % order_id, now_ms)])
        assert posted, "a recharge not yet reversed has no reversal transfer"
        after = store.balances(sorted(wallet_ids.values()))
        update_debt_flags(conn, *ledger.accounts_in_debt(after, {order["account_id"]: wallet_ids}), now_ms)
        touch_accounts(conn, [order["account_id"]])
        detail = {"order_id": order_id, "transfer_id": transfer_id, "wallet": order["wallet"], "reason": reason,
                  "clerk": order["operator"], "supervisor": supervisor.username,
                  "original_receipt_id": order["staff_action_id"], "balance_fen_after": after[source]}
        action_id = _log(conn, supervisor, "recharge_reverse", holder, order["account_id"], order["amount_fen"],
                         detail, now_ms)
        conn.execute("INSERT INTO cash_reversals (%s) VALUES (%s)" % (", ".join(_REVERSAL_COLUMNS),
                                                                     ", ".join("?" * len(_REVERSAL_COLUMNS))),
                     (order_id, transfer_id, order["account_id"], holder["id"], order["wallet"], order["amount_fen"],
                      order["operator"], supervisor.username, supervisor.id, reason, action_id, now_ms))
        return dict(get_reversal(conn, order_id), balance_fen_after=after[source])


def _cash_order(conn, order_id):
    row = dbmod.fetch_named(conn, "SELECT order_id, account_id, wallet, amount_fen, channel, status, transfer_id, "
                            "operator, paid_ms, staff_action_id FROM recharge_orders WHERE order_id = ?",
                            (order_id or "",))
    if row is None or row["channel"] != recharge_service.CASH_CHANNEL or row["status"] != recharge_service.STATUS_PAID:
        raise ServiceError("cash_order_unknown")
    return {key: row[key] for key in row.keys()}


def get_cash_recharge(conn, order_id):
    """One cash recharge (a paid cash order) with its reversal (None when not reversed)."""
    return dict(_cash_order(conn, order_id), reversal=get_reversal(conn, order_id))


def cash_recharges(conn, account_id, limit=20):
    """The account's cash recharges, newest first, each with its reversal (None when not reversed)."""
    rows = conn.execute("SELECT order_id FROM recharge_orders WHERE account_id = ? AND channel = 'cash' "
                        "AND status = 'paid' ORDER BY paid_ms DESC, order_id LIMIT ?", (account_id, limit)).fetchall()
    return [get_cash_recharge(conn, order_id) for (order_id,) in rows]


# --- shift close (结账) ----------------------------------------------------------------------------

def _last_close(conn, clerk):
    return conn.execute("SELECT id, closed_ms FROM cash_closes WHERE clerk = ? ORDER BY closed_ms DESC, id DESC "
                        "LIMIT 1", (clerk,)).fetchone()


def _open_items(conn, clerk, since_ms):
    """[(kind, ref, wallet, signed fen, time_ms)] of the clerk's cash items no close has taken."""
    floor_ms = -1 if since_ms is None else since_ms - LATE_BOOKING_MS
    unclosed = "NOT EXISTS (SELECT 1 FROM cash_close_items i WHERE i.kind = ? AND i.ref = %s)"
    items = [(KIND_RECHARGE,) + tuple(row) for row in conn.execute(
        "SELECT o.order_id, o.wallet, o.amount_fen, o.paid_ms FROM recharge_orders o WHERE o.operator = ? "
        "AND o.paid_ms > ? AND o.channel = 'cash' AND o.status = 'paid' AND " + unclosed % "o.order_id",
        (clerk, floor_ms, KIND_RECHARGE))]
    items += [(KIND_FEE,) + tuple(row) for row in conn.execute(
        "SELECT r.fee_transfer_id, 'cash', r.fee_fen, r.time_ms FROM card_reissues r WHERE r.operator = ? "
        "AND r.time_ms > ? AND r.fee_source = 'cash' AND r.fee_fen > 0 AND r.fee_transfer_id IS NOT NULL AND "
        + unclosed % "r.fee_transfer_id", (clerk, floor_ms, KIND_FEE))]
    items += [(KIND_REVERSAL, order_id, wallet, -amount_fen, time_ms) for order_id, wallet, amount_fen, time_ms in
              conn.execute("SELECT v.order_id, v.wallet, v.amount_fen, v.time_ms FROM cash_reversals v WHERE "
                           "v.clerk = ? AND v.time_ms > ? AND " + unclosed % "v.order_id",
                           (clerk, floor_ms, KIND_REVERSAL))]
    return sorted(items, key=lambda item: (item[4], item[0], item[1]))


def _lines(items):
    """[{kind, wallet, count, fen}] of the items, in a fixed order (kind, then wallet)."""
    sums = {}
    for kind, _ref, wallet, fen, _time_ms in items:
        line = sums.setdefault((kind, wallet), {"kind": kind, "wallet": wallet, "count": 0, "fen": 0})
        line["count"] += 1
        line["fen"] += fen
    order = (KIND_RECHARGE, KIND_FEE, KIND_REVERSAL)
    return [sums[key] for key in sorted(sums, key=lambda key: (order.index(key[0]), key[1]))]


def open_shift(conn, clerk, now_ms=None):
    """What the clerk took in since their last close: {clerk, from_ms, to_ms, lines, items, expected_fen,
    pending_requests}; from_ms is the last close's time, else the first item's (None: nothing yet)."""
    now_ms = now(now_ms)
    with dbmod.read_snapshot(conn):
        last = _last_close(conn, clerk)
        items = _open_items(conn, clerk, None if last is None else last[1])
        pending = conn.execute("SELECT count(*) FROM cash_recharge_requests WHERE clerk = ? AND status = 'pending'",
                               (clerk,)).fetchone()[0]
    from_ms = last[1] if last is not None else (items[0][4] if items else None)
    return {"clerk": clerk, "from_ms": from_ms, "to_ms": now_ms, "lines": _lines(items),
            "items": [dict(zip(("kind", "ref", "wallet", "fen", "time_ms"), item)) for item in items],
            "expected_fen": sum(item[3] for item in items), "pending_requests": pending,
            "last_close_id": None if last is None else last[0]}


_CLOSE_COLUMNS = ("id", "clerk", "clerk_user_id", "request_key", "from_ms", "closed_ms", "day_number",
                  "expected_fen", "counted_fen", "difference_fen", "item_count", "lines", "note", "staff_action_id")


def _close_row(row):
    close = dict(zip(_CLOSE_COLUMNS, row))
    close["lines"] = json.loads(close["lines"])
    return close


def get_close(conn, close_id):
    row = conn.execute("SELECT %s FROM cash_closes WHERE id = ?" % ", ".join(_CLOSE_COLUMNS), (close_id,)).fetchone()
    if row is None:
        raise ServiceError("cash_close_unknown")
    return _close_row(row)


def closes_of_clerk(conn, clerk, limit=20):
    rows = conn.execute("SELECT %s FROM cash_closes WHERE clerk = ? ORDER BY closed_ms DESC, id DESC LIMIT ?"
                        % ", ".join(_CLOSE_COLUMNS), (clerk, max(1, min(limit, MAX_LISTED)))).fetchall()
    return [_close_row(row) for row in rows]


def closes_of_day(conn, day_number):
    """Every clerk's closes of a Beijing day, in order (the finance day report's section)."""
    rows = conn.execute("SELECT %s FROM cash_closes WHERE day_number = ? ORDER BY closed_ms, id"
                        % ", ".join(_CLOSE_COLUMNS), (day_number,)).fetchall()
    return [_close_row(row) for row in rows]


def close_shift(conn, clerk, counted_fen, note=None, request_key=None, expected_fen=None, now_ms=None):
    """Close the clerk's shift with the cash they counted; returns the stored close (with `repeated`).

    `request_key`: the form's one-time key (the same form twice is one close). `expected_fen`: the total
    the clerk was shown; when the books say otherwise by now, nothing is stored (cash_shift_changed)."""
    if type(counted_fen) is not int or not 0 <= counted_fen <= ledger.MAX_TRANSFER_FEN:
        raise ServiceError("bad_amount", ledger.MAX_TRANSFER_FEN)
    note = (note or "").strip() or None
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise ServiceError("cash_bad_note", MAX_NOTE_CHARS)
    key = None if request_key is None else idempotent_id("K", 0, request_key)
    now_ms = now(now_ms)
    with tx(conn):
        staff = _staff(conn, clerk)
        if key is not None:
            row = conn.execute("SELECT id FROM cash_closes WHERE request_key = ?", (key,)).fetchone()
            if row is not None:
                return dict(get_close(conn, row[0]), repeated=True)
        last = _last_close(conn, staff.username)
        items = _open_items(conn, staff.username, None if last is None else last[1])
        total_fen = sum(item[3] for item in items)
        if expected_fen is not None and expected_fen != total_fen:
            raise ServiceError("cash_shift_changed")
        from_ms = last[1] if last is not None else (items[0][4] if items else None)
        close_id = conn.execute(
            "INSERT INTO cash_closes (clerk, clerk_user_id, request_key, from_ms, closed_ms, day_number, expected_fen, "
            "counted_fen, difference_fen, item_count, lines, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "RETURNING id", (staff.username, staff.id, key, from_ms, now_ms, day_of_ms(now_ms), total_fen, counted_fen,
                             counted_fen - total_fen, len(items), json.dumps(_lines(items), sort_keys=True),
                             note)).fetchone()[0]
        conn.executemany("INSERT INTO cash_close_items (kind, ref, close_id, amount_fen) VALUES (?, ?, ?, ?)",
                         [(kind, ref, close_id, fen) for kind, ref, _wallet, fen, _time_ms in items])
        action_id = _log(conn, staff, "cash_close", amount_fen=counted_fen, detail={
            "close_id": close_id, "expected_fen": total_fen, "counted_fen": counted_fen,
            "difference_fen": counted_fen - total_fen, "item_count": len(items)}, now_ms=now_ms)
        conn.execute("UPDATE cash_closes SET staff_action_id = ? WHERE id = ?", (action_id, close_id))
        return dict(get_close(conn, close_id), repeated=False)


def difference_text(difference_fen, lang="zh"):
    """短款 / 长款 / 相符 with the amount, as the hall and finance pages say it."""
    en = lang == "en"
    if difference_fen < 0:
        return ("short by %s yuan" if en else "短款 %s 元") % yuan(-difference_fen)
    if difference_fen > 0:
        return ("over by %s yuan" if en else "长款 %s 元") % yuan(difference_fen)
    return "matches" if en else "相符"
