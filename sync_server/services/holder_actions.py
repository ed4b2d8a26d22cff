"""The cardholder's own actions (本人办理), for the service hall's action log.

    record(conn, account_id, action, via, card_number=None, amount_fen=None, detail=None, now_ms=None)

Staff actions are logged by the pages that do them (sync_server/web/auth.log_action); what holders
do themselves in the portal or the phone app is recorded here, by the services, inside the
transaction of the change itself - so the hall sees every loss report, unfreeze, PIN change, limit,
phone binding, wallet move, payment code turned on or stopped and photo taken on a person, whoever
did it, and never one that did not happen. `via`
says where: the portal (网上服务大厅) or the app (手机, also kiosks on the same API); None when the
caller did not say. A PIN never reaches this table: detail keys that look like one are refused.
"""
import json

from sync_server import db as dbmod

VIA_PORTAL = "portal"
VIA_APP = "app"
VIA_UNKNOWN = "holder"
VIAS = (VIA_PORTAL, VIA_APP, VIA_UNKNOWN)
ACTIONS = ("report_loss", "unfreeze", "pin_change", "limits", "phone_bound", "phone_unbound", "wallet_move",
           "paycode_on", "paycode_stop", "photo")


def record(conn, account_id, action, via, card_number=None, amount_fen=None, detail=None, now_ms=None):
    """One line for the holder's own `action` on `account_id`; call it inside the change's transaction.
    Returns the line's id."""
    assert conn.in_transaction, "record the holder's action in the transaction that does it"
    assert action in ACTIONS, action
    via = via or VIA_UNKNOWN
    assert via in VIAS, via
    detail = detail or {}
    assert not any("pin" in key for key in detail), "a PIN is never logged"
    row = conn.execute("SELECT person_id FROM accounts WHERE id = ?", (account_id,)).fetchone()
    assert row is not None, "the account of a holder's action exists"
    return conn.execute(
        "INSERT INTO holder_actions (person_id, account_id, action, via, card_number, amount_fen, detail, time_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (row[0], account_id, action, via, card_number, amount_fen,
         json.dumps(detail, ensure_ascii=False, sort_keys=True), dbmod.now_ms() if now_ms is None else now_ms)
    ).fetchone()[0]
