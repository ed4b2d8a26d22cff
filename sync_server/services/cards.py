"""Card loss (挂失), unfreeze (解挂), issue and reissue (补办) - the rules of the manuals.

    report_loss(conn, account_id, pin=None, operator=None)   -> {card_number, generation, deny_version}
    unfreeze(conn, account_id, pin=None, operator=None)      -> {card_number, generation, deny_version}
    issue_card(conn, account_id, uid, operator)              -> {identity, name}
    reissue(conn, account_id, uid, operator, fee_source="balance") -> {identity, name, fee_fen, ...}

Loss and unfreeze become deny entries (registry.report_loss / cancel_loss), which every online terminal
fetches in its next sync. A cardholder needs the card PIN for both; staff (`operator`) act on the
holder's ID card. Self-service unfreeze is refused while the PIN is still the initial one (manual
5.2: "若卡片密码为初始密码，为了安全考虑，不能进行自助解挂，需要到服务大厅办理"): whoever found the card may
know the holder's ID number, so the initial PIN proves nothing.

A reissue keeps the card number with the next generation; the previous card is denied for good
(reason replaced) and the balance stays with the account (money lives in the ledger, not on cards).
The fee (setting reissue_fee_fen, ¥10 by default) is its own `fee` transfer to the fee-income account,
from the main wallet or, when paid in cash at the desk, from the cash desk account.
"""
from firmware.core import card_layout, protocol
from sync_server import db as dbmod, ledger, pin_rules, registry
from sync_server.ledger_store import SqliteStore, touch_accounts
from sync_server.services import ServiceError, holder_actions, now, person_row, register_messages, tx, with_pin

FEE_SOURCES = ("balance", "cash")

register_messages({
    "no_card": (404, "该账户没有可挂失的卡", "the account has no card in use to report lost"),
    "already_lost": (409, "卡片已挂失", "the card is already reported lost"),
    "not_lost": (409, "卡片未挂失，无需解挂", "the card is not reported lost"),
    "initial_pin_unfreeze": (403, "交易密码仍为初始密码，为了安全不能自助解挂，请持有效证件到服务大厅办理",
                             "the PIN is still the initial one: for safety, unfreeze at the service hall "
                             "with your ID"),
    "no_card_yet": (409, "该账户尚未发卡，请先办理发卡", "no card was issued for this account yet: issue one first"),
    "card_exists": (409, "该账户已有卡片，请办理补卡", "the account already has a card: reissue instead"),
    "bad_fee_source": (400, "补卡费支付方式应为 balance 或 cash", "the fee is paid from balance or cash"),
    "fee_needs_cash": (409, "余额不足以支付补卡费 %.2f 元，请以现金支付",
                       "balance does not cover the reissue fee of %.2f yuan: pay it in cash"),
    "bad_uid": (400, "卡片UID应为4或7字节", "card UID must be 4 or 7 bytes"),
    "uid_in_use": (409, "该卡片UID已被使用", "this card UID is already in use"),
})


def _card(conn, account_id, status):
    return conn.execute("SELECT card_number, generation FROM cards WHERE account_id = ? AND status = ? "
                        "ORDER BY generation DESC LIMIT 1", (account_id, status)).fetchone()


def report_loss(conn, account_id, pin=None, operator=None, now_ms=None, via=None):
    """挂失 the account's card in use. Needs the PIN unless staff act (`operator`); the holder's own
    report goes into their action log (`via`: where, services/holder_actions.py)."""
    now_ms = now(now_ms)

    def operation():
        card = _card(conn, account_id, "active")
        if card is None:
            raise ServiceError("already_lost" if _card(conn, account_id, "lost") else "no_card")
        version = registry.report_loss(conn, card[0], now_ms)
        if operator is None:
            holder_actions.record(conn, account_id, "report_loss", via, card_number=card[0],
                                  detail={"generation": card[1]}, now_ms=now_ms)
        return {"card_number": card[0], "generation": card[1], "deny_version": version}
    return with_pin(conn, account_id, pin, operator, now_ms, operation)


def _pin_is_initial(conn, account_id, pin):
    holder = person_row(conn, account_id)
    return pin == pin_rules.initial_pin(holder["id_number"], holder["staff_number"])


def unfreeze(conn, account_id, pin=None, operator=None, now_ms=None, via=None):
    """解挂 a lost card that was found. A cardholder needs a PIN changed from the initial one (and the
    unfreeze goes into their action log, `via` naming where)."""
    now_ms = now(now_ms)

    def operation():
        card = _card(conn, account_id, "lost")
        if card is None:
            raise ServiceError("not_lost")
        if operator is None and _pin_is_initial(conn, account_id, pin):
            raise ServiceError("initial_pin_unfreeze")
        version = registry.cancel_loss(conn, card[0], now_ms)
        if operator is None:
            holder_actions.record(conn, account_id, "unfreeze", via, card_number=card[0],
                                  detail={"generation": card[1]}, now_ms=now_ms)
        return {"card_number": card[0], "generation": card[1], "deny_version": version}
    return with_pin(conn, account_id, pin, operator, now_ms, operation)


def _uid(uid):
    uid = bytes(uid)
    if len(uid) not in (4, 7):
        raise ServiceError("bad_uid")
    return uid


def _check_uid_free(conn, uid):
    if conn.execute("SELECT 1 FROM cards WHERE uid = ? AND status != 'replaced'", (uid,)).fetchone():
        raise ServiceError("uid_in_use")


def _expiry(holder):
    """A temporary card expires when the person's registration does; others get the hall's default."""
    return holder["expiry_yyyymmdd"] or None


def issue_card(conn, account_id, uid, operator=None, now_ms=None):
    """First card of an account (the hall writes it at the issuing station with what this returns)."""
    uid = _uid(uid)
    now_ms = now(now_ms)
    with tx(conn):
        holder = person_row(conn, account_id)
        if conn.execute("SELECT 1 FROM cards WHERE account_id = ?", (account_id,)).fetchone():
            raise ServiceError("card_exists")
        _check_uid_free(conn, uid)
        identity, name = registry.issue_card_record(conn, account_id, uid, now_ms, _expiry(holder))
    return {"identity": identity, "name": name}


def reissue(conn, account_id, uid, operator, fee_source="balance", now_ms=None, fee_transfer_id=None,
            fee_paid=False):
    """补办: the next generation of the account's card, the old one denied, the fee booked.

    Returns {identity, name, fee_fen, fee_source, fee_transfer_id, replaced_generation, balances}.
    All of it commits together or not at all. A card job (services/card_jobs.py) books its fee under
    its own `fee_transfer_id` on its first card and passes `fee_paid` for the cards after a torn write.
    """
    if fee_source not in FEE_SOURCES and not fee_paid:
        raise ServiceError("bad_fee_source")
    uid = _uid(uid)
    now_ms = now(now_ms)
    with tx(conn):
        holder = person_row(conn, account_id)
        if conn.execute("SELECT 1 FROM cards WHERE account_id = ? LIMIT 1", (account_id,)).fetchone() is None:
            raise ServiceError("no_card_yet")
        _check_uid_free(conn, uid)
        fee_fen = 0 if fee_paid else dbmod.setting(conn, "reissue_fee_fen")
        identity, name = registry.issue_card_record(conn, account_id, uid, now_ms, _expiry(holder))
        if fee_fen > 0:
            fee_transfer_id = _charge_fee(conn, holder, account_id, identity, fee_fen, fee_source, now_ms,
                                          fee_transfer_id)
        else:
            fee_source, fee_transfer_id = "none", None
        conn.execute("INSERT INTO card_reissues (card_number, generation, account_id, fee_fen, fee_source, "
                     "fee_transfer_id, operator, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (identity.card_number, identity.generation, account_id, fee_fen, fee_source,
                      fee_transfer_id, operator, now_ms))
        touch_accounts(conn, [account_id])
        balances = registry.balances_of(conn, account_id)
    return {"identity": identity, "name": name, "fee_fen": fee_fen, "fee_source": fee_source,
            "fee_transfer_id": fee_transfer_id, "replaced_generation": identity.generation - 1, "balances": balances}


def fee_payer(conn, holder, account_id, fee_fen, fee_source):
    """The ledger account the reissue fee comes from; fee_needs_cash when the balance cannot pay it."""
    if fee_source not in FEE_SOURCES:
        raise ServiceError("bad_fee_source")
    if fee_source == "cash":
        return dbmod.LEDGER_CASH_DESK
    if holder["category"] == card_layout.HOLDER_IDENTITY_ONLY:
        raise ServiceError("fee_needs_cash", fee_fen / 100)
    source = registry.wallet_ledger_id(conn, account_id, protocol.WALLET_MAIN)
    if SqliteStore(conn).balances([source])[source] < fee_fen:
        raise ServiceError("fee_needs_cash", fee_fen / 100)
    return source


def _charge_fee(conn, holder, account_id, identity, fee_fen, fee_source, now_ms, transfer_id=None):
    source = fee_payer(conn, holder, account_id, fee_fen, fee_source)
    transfer_id = transfer_id or "fee/reissue/%d/%d" % (identity.card_number, identity.generation)
    ledger.post(SqliteStore(conn), [ledger.Transfer(
        transfer_id, source, dbmod.LEDGER_FEE_INCOME, fee_fen, ledger.KIND_FEE,
        "reissue %d/%d" % (identity.card_number, identity.generation), now_ms)])
    return transfer_id
