"""Bluetooth water money: a grant holds the cardholder's money, is settled once, and lets go of the rest.

A grant (firmware/core/water_grants.py) lets a phone start one dispenser for up to `cap_fen`. So
that two dispensers can never spend the same money, issuing it moves the cap out of the wallets
(water -> legacy -> main, the water category's order; nothing may go negative) into the one `hold`
ledger account, with `hold` transfers "wh/<grant>/<part>". The session's usage receipt settles it,
whichever copy arrives first - the phone's (MAC'd by the dispenser) or the dispenser's own journal
record in a sync batch:

    held      -> settled    `purchase` hold -> water merchant "wp/<grant>/0" for what was drawn, and
                            `release` hold -> wallet "wr/<grant>/<part>" of the rest, given back in the
                            reverse order of the take, so what was spent came from the wallets in the
                            category's order
    held      -> released   the hold outlived hold_until_ms with no receipt (a grant never used, or a
                            dispenser offline for long), or the phone gave the grant up (the dispenser
                            refused it): everything goes back, "wr/<grant>/<part>"
    released  -> settled    a receipt after that: charged to the wallets like an offline tap, in the
                            category's order, the last wallet may go negative (then the account is
                            flagged, as for any offline overspend): "wp/<grant>/<part>"

Each step is one transaction that checks the grant's status first, and every transfer id is
derived from the grant, so a replayed receipt, or the second copy, books nothing. Money is
conserved at every step: the hold account's balance is the sum of the caps of the grants held.
The water merchant is the dispenser's own merchant (its terminal row), so the day close counts a
grant's sale as a sale without a terminal record (finance/settlement.py), by the settlement's time.
"""
from firmware.core import sam, wallets as wallet_rules, water_grants
from sync_server import db as dbmod, ledger
from sync_server.ledger_store import SqliteStore, touch_accounts, update_debt_flags

HELD = "held"
SETTLED = "settled"
RELEASED = "released"
VIA_PHONE = "phone"
VIA_DISPENSER = "dispenser"
MAX_RELEASES_PER_CALL = 200          # bound on one sweep; the next call takes the rest
RETIRED_KEY_RECEIPTS_MS = 60 * 60 * 1000   # a rotated-out water key's receipts are taken this long
_WATER_ORDER = wallet_rules.WALLET_ORDER[wallet_rules.CATEGORY_WATER]


class GrantRefused(Exception):
    """A grant that cannot be issued: `code` names the reason (services/water.py has the texts)."""

    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


def hold_ledger_id(conn):
    row = conn.execute("SELECT id FROM ledger_accounts WHERE kind = 'hold' ORDER BY id LIMIT 1").fetchone()
    assert row is not None, "migration 0050 makes the hold account"
    return row[0]


def dispenser_row(conn, dispenser_id):
    """(status, key_version, merchant ledger id) of a water dispenser, or None when the terminal is
    unknown or not a water terminal."""
    row = conn.execute("SELECT t.status, t.key_version, m.ledger_account_id, m.category FROM terminals t "
                       "JOIN merchants m ON m.id = t.merchant_id WHERE t.id = ?", (dispenser_id,)).fetchone()
    if row is None or row[3] != wallet_rules.CATEGORY_WATER:
        return None
    return row[0], row[1], row[2]


def grant_row(conn, grant_id):
    return dbmod.fetch_named(conn, "SELECT id, account_id, dispenser_id, challenge, cap_fen, issued_ms, expires_ms, "
                             "hold_until_ms, status, settled_fen, settled_ml, settled_ms, settled_via, end_reason, "
                             "session_seq FROM water_grants WHERE id = ?", (grant_id,))


def place_hold(conn, account_id, dispenser_id, challenge, now_ms):
    """Issue a grant: hold its cap and store it. Inside the caller's write transaction. Returns the
    grant row; the same account asking again for the same challenge (a double tap, a retry) gets the
    grant it has. GrantRefused: not_dispenser, challenge_used, blocked, too_many, insufficient."""
    assert conn.in_transaction
    dispenser = dispenser_row(conn, dispenser_id)
    if dispenser is None or dispenser[0] != "active":
        raise GrantRefused("not_dispenser")
    earlier = conn.execute("SELECT id, account_id FROM water_grants WHERE dispenser_id = ? AND challenge = ?",
                           (dispenser_id, challenge)).fetchone()
    if earlier is not None:
        if earlier[1] != account_id:
            raise GrantRefused("challenge_used")
        return grant_row(conn, earlier[0])
    flags = conn.execute("SELECT blocked, in_debt FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if flags is None or flags[0] or flags[1]:
        raise GrantRefused("blocked")
    open_count = conn.execute("SELECT count(*) FROM water_grants WHERE account_id = ? AND status = ?",
                              (account_id, HELD)).fetchone()[0]
    if open_count >= dbmod.setting(conn, "water_open_grants_per_account"):
        raise GrantRefused("too_many")
    store = SqliteStore(conn)
    wallet_ids = store.wallet_ids([account_id]).get(account_id)
    if not wallet_ids:
        raise GrantRefused("blocked")
    balances = store.balances([wallet_ids[w] for w in _WATER_ORDER])
    spendable = wallet_rules.spendable_fen({w: balances[wallet_ids[w]] for w in _WATER_ORDER},
                                           wallet_rules.CATEGORY_WATER)
    cap_fen = min(dbmod.setting(conn, "water_max_grant_fen"), spendable)
    if cap_fen < minimum_fen(conn):
        raise GrantRefused("insufficient")
    valid_ms = dbmod.setting(conn, "water_grant_valid_ms")
    expires_ms = now_ms + valid_ms
    hold_until_ms = expires_ms + dbmod.setting(conn, "water_max_session_ms") + dbmod.setting(conn, "water_hold_grace_ms")
    grant_id = conn.execute(
        "INSERT INTO water_grants (account_id, dispenser_id, challenge, cap_fen, issued_ms, expires_ms, hold_until_ms, "
        "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (account_id, dispenser_id, bytes(challenge), cap_fen, now_ms, expires_ms, hold_until_ms, HELD)).fetchone()[0]
    parts = wallet_rules.split_debit({w: balances[wallet_ids[w]] for w in _WATER_ORDER}, wallet_rules.CATEGORY_WATER,
                                     cap_fen)
    hold_id = hold_ledger_id(conn)
    ledger.post(store, [ledger.Transfer("wh/%d/%d" % (grant_id, index), wallet_ids[wallet], hold_id, fen,
                                        ledger.KIND_HOLD, "water grant %d" % grant_id, now_ms)
                        for index, (wallet, fen) in enumerate(parts)])
    touch_accounts(conn, [account_id])
    return grant_row(conn, grant_id)


def minimum_fen(conn):
    """The least a grant is worth issuing for: 100 ml at the current price, at least 1 fen."""
    return max(1, dbmod.setting(conn, "water_price_fen_per_litre") // 10)


def _hold_parts(conn, grant_id):
    """[(wallet ledger id, fen)] the grant's hold took, in the order taken."""
    ids = ["wh/%d/%d" % (grant_id, index) for index in range(len(_WATER_ORDER))]
    rows = conn.execute("SELECT id, debit_id, amount_fen FROM transfers WHERE id IN (?, ?, ?)", ids).fetchall()
    by_id = {row[0]: (row[1], row[2]) for row in rows}
    return [by_id[i] for i in ids if i in by_id]


def settle(conn, grant_id, fen, ml, end_reason, via, session_seq, now_ms):
    """Settle a grant from its usage (the phone's receipt or the dispenser's record), once. Inside the
    caller's write transaction. Returns "settled", "late" (settled after its hold was released:
    charged to the wallets) or "already" (settled before: nothing happens); None for an unknown grant."""
    assert conn.in_transaction
    grant = grant_row(conn, grant_id)
    if grant is None:
        return None
    if grant["status"] == SETTLED:
        return "already"
    fen = max(0, min(fen, grant["cap_fen"]))
    store = SqliteStore(conn)
    merchant_ledger_id = dispenser_row(conn, grant["dispenser_id"])[2]
    reference = "water grant %d" % grant_id
    account_id = grant["account_id"]
    if grant["status"] == HELD:
        hold_id = hold_ledger_id(conn)
        transfers = []
        if fen:
            transfers.append(ledger.Transfer("wp/%d/0" % grant_id, hold_id, merchant_ledger_id, fen,
                                             ledger.KIND_PURCHASE, reference, now_ms))
        rest = grant["cap_fen"] - fen
        for index, (wallet_ledger_id, held_fen) in reversed(list(enumerate(_hold_parts(conn, grant_id)))):
            back = min(rest, held_fen)
            if back:
                transfers.append(ledger.Transfer("wr/%d/%d" % (grant_id, index), hold_id, wallet_ledger_id, back,
                                                 ledger.KIND_RELEASE, reference, now_ms))
            rest -= back
        assert rest == 0, "a grant's hold parts do not add up to its cap"
        ledger.post(store, transfers)
        outcome = "settled"
    else:
        assert grant["status"] == RELEASED
        wallet_ids = store.wallet_ids([account_id])[account_id]
        balances = store.balances([wallet_ids[w] for w in _WATER_ORDER])
        parts = wallet_rules.split_debit({w: balances[wallet_ids[w]] for w in _WATER_ORDER},
                                         wallet_rules.CATEGORY_WATER, fen, allow_shortfall=True) if fen else []
        posted = ledger.post(store, [ledger.Transfer("wp/%d/%d" % (grant_id, index), wallet_ids[wallet],
                                                     merchant_ledger_id, part_fen, ledger.KIND_PURCHASE, reference,
                                                     now_ms)
                                     for index, (wallet, part_fen) in enumerate(parts)])
        if posted:
            after = store.balances([wallet_ids[w] for w in _WATER_ORDER])
            in_debt, clear = ledger.accounts_in_debt(after, {account_id: {w: wallet_ids[w] for w in _WATER_ORDER}})
            update_debt_flags(conn, in_debt, set(), now_ms)
        outcome = "late"
    conn.execute("UPDATE water_grants SET status = ?, settled_fen = ?, settled_ml = ?, settled_ms = ?, settled_via = ?, "
                 "end_reason = ?, session_seq = ? WHERE id = ? AND status != ?",
                 (SETTLED, fen, ml, now_ms, via, end_reason, session_seq, grant_id, SETTLED))
    touch_accounts(conn, [account_id])
    return outcome


def release_expired(conn, now_ms, limit=MAX_RELEASES_PER_CALL):
    """Give back the holds of grants past hold_until_ms with no usage yet. Inside the caller's write
    transaction; at most `limit` grants per call. Returns how many were released."""
    assert conn.in_transaction
    rows = conn.execute("SELECT id, account_id, cap_fen FROM water_grants WHERE status = ? AND hold_until_ms < ? "
                        "ORDER BY hold_until_ms LIMIT ?", (HELD, now_ms, limit)).fetchall()
    _release(conn, rows, now_ms, "expired")
    return len(rows)


def cancel(conn, grant_id, now_ms):
    """The phone gives a grant up (the dispenser refused it, or the user went away before Start):
    its hold goes back now. Should the dispenser have used it after all, its receipt is charged to
    the wallets like a late one (settle), so giving up early can never make water free. Returns the
    grant's status after."""
    assert conn.in_transaction
    rows = conn.execute("SELECT id, account_id, cap_fen FROM water_grants WHERE id = ? AND status = ?",
                        (grant_id, HELD)).fetchall()
    _release(conn, rows, now_ms, "given up")
    return grant_row(conn, grant_id)["status"]


def _release(conn, rows, now_ms, why):
    """Release the holds of the held grants `rows` [(id, account_id, cap_fen)] in full."""
    if not rows:
        return
    hold_id = hold_ledger_id(conn)
    transfers = []
    for grant_id, _account_id, cap_fen in rows:
        parts = _hold_parts(conn, grant_id)
        assert sum(fen for _, fen in parts) == cap_fen
        transfers.extend(ledger.Transfer("wr/%d/%d" % (grant_id, index), hold_id, wallet_ledger_id, fen,
                                         ledger.KIND_RELEASE, "water grant %d %s" % (grant_id, why), now_ms)
                         for index, (wallet_ledger_id, fen) in enumerate(parts))
    ledger.post(SqliteStore(conn), transfers)
    conn.executemany("UPDATE water_grants SET status = ? WHERE id = ? AND status = ?",
                     [(RELEASED, row[0], HELD) for row in rows])
    touch_accounts(conn, {row[1] for row in rows})


def open_holds(conn):
    """(grants held, fen held) - the second always equals the hold account's balance."""
    count, fen = conn.execute("SELECT count(*), coalesce(sum(cap_fen), 0) FROM water_grants WHERE status = ?",
                              (HELD,)).fetchone()
    return count, fen


def check_receipt(conn, master_key, receipt_bytes):
    """The Receipt a phone hands in, when its dispenser's key verifies it; water_grants.WaterMessageError
    otherwise (malformed, forged, or naming no water dispenser)."""
    receipt = water_grants.decode_receipt(receipt_bytes)
    dispenser = dispenser_row(conn, receipt.dispenser_id)
    if dispenser is None:
        raise water_grants.WaterMessageError(water_grants.REFUSED_OTHER_DISPENSER, "receipt names no dispenser")
    versions = receipt_key_versions(conn, receipt.dispenser_id, dispenser[1], dbmod.now_ms())
    return water_grants.decode_receipt(receipt_bytes, tuple(grant_mac(master_key, receipt.dispenser_id, version)
                                                            for version in versions))


def receipt_key_versions(conn, dispenser_id, key_version, now_ms):
    """The water keys a receipt may carry: the current one; during a key rotation the next one too
    (the dispenser has switched, the server has not seen it sync yet); and for RETIRED_KEY_RECEIPTS_MS
    after one, the retired key (a session granted and ended just before, its receipt handed in late)."""
    versions = [key_version]
    row = conn.execute("SELECT next_key_version, key_rotated_ms FROM terminals WHERE id = ?",
                       (dispenser_id,)).fetchone()
    if row[0] is not None:
        versions.append(row[0])
    if row[1] is not None and key_version > 1 and now_ms - row[1] < RETIRED_KEY_RECEIPTS_MS:
        versions.append(key_version - 1)
    return versions


def grant_mac(master_key, dispenser_id, key_version):
    """The MAC function of one dispenser's water key, derived again from the site master key."""
    return water_grants.grant_mac_fn(sam.water_key(master_key, dispenser_id, key_version))
