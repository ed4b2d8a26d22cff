"""Bluetooth water for the phone (扫码用水): grants, receipts, and the state of a grant.

The money rules live in sync_server/water_holds.py and the byte formats in
firmware/core/water_grants.py; this module checks what a phone sends, runs each step in one
transaction, and answers in the cardholder API's shape. Challenges, grants and receipts travel as
lowercase hex in JSON.
"""
import binascii

from firmware.core import water_grants
from sync_server import db as dbmod, water_holds
from sync_server.services import ServiceError, now, register_messages

register_messages({
    "water_not_dispenser": (404, "开水机不存在或已停用", "no such water dispenser, or it is out of service"),
    "water_bad_challenge": (400, "开水机挑战码格式错误", "malformed dispenser challenge"),
    "water_challenge_used": (409, "该开水机挑战码已被使用，请重新开始", "that challenge was used already: start again"),
    "water_too_many": (429, "还有未结束的用水，请先结束", "another water session is still open: end it first"),
    "water_bad_receipt": (400, "用水凭证无效：%s", "invalid usage receipt: %s"),
    "water_not_your_grant": (403, "这不是您的用水授权", "that water grant is not yours"),
    "water_unknown_grant": (404, "用水授权不存在", "no such water grant"),
})
_REFUSALS = {"not_dispenser": "water_not_dispenser", "challenge_used": "water_challenge_used",
             "blocked": "account_blocked", "too_many": "water_too_many", "insufficient": "insufficient_funds"}
MAX_HEX_CHARS = 2 * water_grants.MAX_WRITE_BYTES


def _bytes(text):
    """The bytes of a short hex string, or None."""
    if not isinstance(text, str) or len(text) > MAX_HEX_CHARS:
        return None
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        return None


def issue_grant(conn, master_key, account_id, dispenser_id, challenge_hex, now_ms=None):
    """Hold money and sign a grant for the dispenser's challenge (the CHALLENGE read, as hex).
    Returns {grant_id, grant (hex, to write to the dispenser), cap_fen, expires_ms, dispenser_id}."""
    now_ms = now(now_ms)
    raw = _bytes(challenge_hex)
    try:
        named_id, challenge = water_grants.decode_challenge(raw if raw is not None else b"")
    except water_grants.WaterMessageError:
        raise ServiceError("water_bad_challenge")
    if named_id != dispenser_id:
        raise ServiceError("water_bad_challenge")
    with dbmod.transaction(conn):
        water_holds.release_expired(conn, now_ms)
        try:
            grant = water_holds.place_hold(conn, account_id, dispenser_id, challenge, now_ms)
        except water_holds.GrantRefused as refusal:
            raise ServiceError(_REFUSALS[refusal.code])
        key_version = water_holds.dispenser_row(conn, dispenser_id)[1]
    if grant["status"] != water_holds.HELD:
        raise ServiceError("water_challenge_used")
    mac = water_holds.grant_mac(master_key, dispenser_id, key_version)
    signed = water_grants.encode_grant(mac, water_grants.Grant(
        dispenser_id, grant["id"], account_id, bytes(grant["challenge"]), grant["cap_fen"],
        grant["expires_ms"] - grant["issued_ms"]))
    return {"grant_id": grant["id"], "grant": signed.hex(), "cap_fen": grant["cap_fen"],
            "expires_ms": grant["expires_ms"], "dispenser_id": dispenser_id}


def hand_in_receipt(conn, master_key, account_id, receipt_hex, now_ms=None):
    """Settle a grant from the dispenser's MAC'd receipt the phone carried. Returns the grant's state
    and `outcome`: settled, late (its hold had been released: charged to the wallets) or already."""
    now_ms = now(now_ms)
    raw = _bytes(receipt_hex)
    if raw is None:
        raise ServiceError("water_bad_receipt", "hex expected")
    try:
        receipt = water_holds.check_receipt(conn, master_key, raw)
    except water_grants.WaterMessageError as error:
        raise ServiceError("water_bad_receipt", water_grants.REFUSAL_TEXTS.get(error.code, ("", str(error)))[1])
    with dbmod.transaction(conn):
        grant = water_holds.grant_row(conn, receipt.grant_id)
        if grant is None or grant["dispenser_id"] != receipt.dispenser_id:
            raise ServiceError("water_unknown_grant")
        if grant["account_id"] != account_id:
            raise ServiceError("water_not_your_grant")
        outcome = water_holds.settle(conn, receipt.grant_id, receipt.fen, receipt.ml, receipt.end_reason,
                                     water_holds.VIA_PHONE, receipt.seq, now_ms)
        state = _state(water_holds.grant_row(conn, receipt.grant_id))
    state["outcome"] = outcome
    return state


def give_up(conn, account_id, grant_id, now_ms=None):
    """The phone gives up a grant it could not use: the hold goes back (water_holds.cancel)."""
    now_ms = now(now_ms)
    with dbmod.transaction(conn):
        grant = water_holds.grant_row(conn, grant_id)
        if grant is None:
            raise ServiceError("water_unknown_grant")
        if grant["account_id"] != account_id:
            raise ServiceError("water_not_your_grant")
        water_holds.cancel(conn, grant_id, now_ms)
        return _state(water_holds.grant_row(conn, grant_id))


def grant_state(conn, account_id, grant_id):
    grant = water_holds.grant_row(conn, grant_id)
    if grant is None:
        raise ServiceError("water_unknown_grant")
    if grant["account_id"] != account_id:
        raise ServiceError("water_not_your_grant")
    return _state(grant)


def _state(grant):
    return {"grant_id": grant["id"], "dispenser_id": grant["dispenser_id"], "status": grant["status"],
            "cap_fen": grant["cap_fen"], "issued_ms": grant["issued_ms"], "expires_ms": grant["expires_ms"],
            "settled_fen": grant["settled_fen"], "settled_ml": grant["settled_ml"],
            "settled_via": grant["settled_via"], "end_reason": grant["end_reason"]}
