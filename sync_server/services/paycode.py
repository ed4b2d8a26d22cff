"""The payment code (付款码) for the phone: enable with the card PIN, renew, list, stop, and recent uses.

The rules live in sync_server/paycode.py and the byte formats in firmware/core/paycode.py; this module
checks what a phone sends and answers in the cardholder API's shape. Keys and certificates travel as
lowercase hex in JSON.

Enabling needs the card PIN, and not the initial one: the initial PIN derives from the ID number, so
whoever knows that could otherwise turn a phone of theirs into this cardholder's wallet (the same rule
as self-service unfreeze, services/cards.py).
"""
import binascii

from firmware.core import paycode as codes
from sync_server import db as dbmod, paycode, pin_rules
from sync_server.ledger_store import REASON_REVOKED
from sync_server.services import ServiceError, holder_actions, now, person_row, register_messages, tx, with_pin

register_messages({
    "paycode_bad_key": (400, "手机密钥格式错误", "malformed phone key"),
    "paycode_key_used": (409, "该手机密钥已被使用，请重新生成", "that phone key is in use already: make a new one"),
    "paycode_too_many": (409, "已开通付款码的手机过多，请先停用一台", "too many phones have the code: stop one first"),
    "paycode_initial_pin": (403, "交易密码仍为初始密码，请先修改密码再开通付款码",
                            "the PIN is still the initial one: change it before enabling the payment code"),
    "paycode_unknown": (404, "付款码凭证不存在", "no such payment code credential"),
    "paycode_revoked": (409, "付款码已停用，请重新开通", "the payment code was stopped: enable it again"),
    "paycode_card_not_active": (409, "卡片已挂失或冻结，不能使用付款码", "the card is lost or frozen: no payment code"),
    "paycode_keys_exhausted": (409, "付款码签名密钥代数已用完（255）", "all 255 pay-code key generations are used"),
})
_REFUSALS = {"bad_key": "paycode_bad_key", "key_used": "paycode_key_used", "too_many": "paycode_too_many",
             "unknown_credential": "paycode_unknown", "credential_revoked": "paycode_revoked",
             "account_unknown": "account_unknown", "account_blocked": "account_blocked",
             "account_in_debt": "account_in_debt", "card_not_active": "paycode_card_not_active",
             "keys_exhausted": "paycode_keys_exhausted", "no_wallet": "no_wallet"}
MAX_USES_LISTED = 20


def _key(text):
    if not isinstance(text, str) or len(text) != 2 * codes.PUBLIC_KEY_SIZE:
        raise ServiceError("paycode_bad_key")
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise ServiceError("paycode_bad_key")


def _answer(certificate, now_ms):
    answer = dict(certificate)
    answer["certificate"] = certificate["certificate"].hex()
    answer["server_ms"] = now_ms        # the app keeps the offset: its codes carry the campus's minute
    return answer


def _refused(refusal):
    raise ServiceError(_REFUSALS[refusal.code])


def enable(conn, master_key, account_id, app_user_id, public_key_hex, pin, now_ms=None):
    """开通付款码: certify the phone's key. Needs the card PIN (not the initial one)."""
    now_ms = now(now_ms)
    public_key = _key(public_key_hex)
    holder = person_row(conn, account_id)
    if isinstance(pin, str) and pin == pin_rules.initial_pin(holder["id_number"], holder["staff_number"]):
        raise ServiceError("paycode_initial_pin")

    def operation():
        try:
            enabled = paycode.enable(conn, master_key, account_id, app_user_id, public_key, now_ms)
        except paycode.PayCodeRefused as refusal:
            _refused(refusal)
        holder_actions.record(conn, account_id, "paycode_on", holder_actions.VIA_APP, now_ms=now_ms,
                              detail={"credential_id": enabled["credential_id"]})
        return enabled
    return _answer(with_pin(conn, account_id, pin, None, now_ms, operation), now_ms)


def _own_credential(conn, account_id, credential_id):
    row = conn.execute("SELECT account_id FROM paycode_credentials WHERE id = ?", (credential_id,)).fetchone()
    if row is None or row[0] != account_id:
        raise ServiceError("paycode_unknown")       # another holder's id reads as unknown


def renew(conn, master_key, account_id, credential_id, now_ms=None):
    """A fresh certificate for the phone's credential (the app renews before the old one runs out)."""
    now_ms = now(now_ms)
    with tx(conn):
        _own_credential(conn, account_id, credential_id)
        try:
            certificate = paycode.issue_certificate(conn, master_key, credential_id, now_ms)
        except paycode.PayCodeRefused as refusal:
            _refused(refusal)
    return _answer(certificate, now_ms)


def stop(conn, account_id, credential_id, now_ms=None, via=None):
    """停用付款码 on one phone: every terminal refuses its codes after its next sync. The holder's own
    stop names where (`via`) and goes into their action log; the hall command line passes none."""
    now_ms = now(now_ms)
    with tx(conn):
        _own_credential(conn, account_id, credential_id)
        changed = paycode.revoke_credential(conn, credential_id, REASON_REVOKED, now_ms)
        if changed and via is not None:
            holder_actions.record(conn, account_id, "paycode_stop", via, now_ms=now_ms,
                                  detail={"credential_id": credential_id})
    return {"credential_id": credential_id, "revoked": changed}


def listing(conn, account_id):
    return {"credentials": paycode.credentials(conn, account_id)}


def recent_uses(conn, account_id, credential_id, since_ms=0, now_ms=None):
    """The credential's uses since `since_ms`, newest first: claims (online sales, known at once) and
    journaled uses, one line per code, so the app shows "paid" and moves to a new code."""
    _own_credential(conn, account_id, credential_id)
    seen = {}
    for sql in ("SELECT time_step, counter, terminal_id, amount_fen, claimed_ms, 0 FROM paycode_claims "
                "WHERE credential_id = ? AND claimed_ms >= ? ORDER BY claimed_ms DESC LIMIT ?",
                "SELECT time_step, counter, terminal_id, amount_fen, used_ms, double_use FROM paycode_uses "
                "WHERE credential_id = ? AND used_ms >= ? ORDER BY used_ms DESC LIMIT ?"):
        for time_step, counter, terminal_id, amount_fen, at_ms, double_use in conn.execute(
                sql, (credential_id, since_ms, MAX_USES_LISTED)).fetchall():
            line = seen.setdefault((time_step, counter), {"time_step": time_step, "counter": counter,
                                                          "terminal_id": terminal_id, "amount_fen": amount_fen,
                                                          "at_ms": at_ms, "double_use": False})
            line["double_use"] = line["double_use"] or bool(double_use)
    uses = sorted(seen.values(), key=lambda line: line["at_ms"], reverse=True)[:MAX_USES_LISTED]
    return {"uses": uses, "highest_counter": max((line["counter"] for line in uses), default=None),
            "server_ms": now(now_ms)}


def rotate_key(conn, now_ms=None):
    """`ykt hall paycode-rotate-key`: sign new certificates with a fresh key id."""
    now_ms = now(now_ms)
    with dbmod.transaction(conn):
        try:
            return {"key_id": paycode.rotate(conn, now_ms)}
        except paycode.PayCodeRefused as refusal:
            _refused(refusal)
