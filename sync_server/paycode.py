"""Payment codes on the server: signing keys, phone credentials, certificates, claims and uses.

The byte formats are firmware/core/paycode.py's. What lives here:

- **Signing keys.** The pay-code key with id K is Ed25519 from the seed derive(master, "paycode", K):
  nothing secret is stored, and `paycode_keys` only says which ids exist. `rotate()` starts a new id;
  the old one signs nothing more but is still sent to terminals (`terminal_keys`) while certificates
  it signed can be in date, so no code in flight is refused because of a rotation.
- **Credentials and certificates.** Enabling the code (card PIN, services/paycode.py) records the
  phone's public key as a credential and certifies it: account, the account's card in use, an expiry
  and an offline cap. The app renews the certificate online before it runs out.
- **Revocation** of a credential (a lost phone, unbinding, a double use) or of one certificate becomes
  a deny entry ("credential" / "certificate") that every terminal receives in its next sync.
- **Claims.** A POS that is online asks `claim()` before it accepts: the first claim of (credential,
  minute, counter) wins anywhere, so online a code is used once on the whole campus. The same terminal
  asking again (its answer was lost) gets its yes again.
- **Uses.** Every pay-code record stored from a batch is a row of `paycode_uses` (`note_uses`, under
  the booking turn of the ingest). A second row for one code is a double use - possible only between
  terminals that were offline, each within the certificate's offline cap: both sales stand (the food
  was handed over), the credential is revoked at once and the day close lists them.
"""
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.exceptions import InvalidSignature

from firmware.core import card_layout, crypto, paycode as codes, protocol
from sync_server import db as dbmod
from sync_server.ledger_store import REASON_REVOKED, add_deny_entries

DENY_CREDENTIAL = protocol.DENY_CREDENTIAL
DENY_CERTIFICATE = protocol.DENY_CERTIFICATE
REASON_DOUBLE_USE = protocol.DENY_REASON_DOUBLE_USE
ACTIVE = "active"
REVOKED = "revoked"
MAX_KEY_ID = 255

# claim() answers
CLAIM_OK = "ok"
CLAIM_USED = "used"                  # claimed by another terminal, or journaled already
CLAIM_REVOKED = "revoked"            # credential or certificate revoked
CLAIM_BLOCKED = "blocked"            # the account is frozen or in debt, or its card is lost
CLAIM_UNKNOWN = "unknown"            # no such credential / certificate, or not that account's


class PayCodeRefused(Exception):
    """Enabling or renewing refused: `code` names the reason (services/paycode.py has the texts)."""

    def __init__(self, code):
        Exception.__init__(self, code)
        self.code = code


# -- keys ---------------------------------------------------------------------------------------------

def signing_key(master_key, key_id):
    assert 0 < key_id <= MAX_KEY_ID
    return Ed25519PrivateKey.from_private_bytes(crypto.derive(master_key, "paycode", key_id))


def public_key_bytes(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def current_key_id(conn):
    row = conn.execute("SELECT max(key_id) FROM paycode_keys WHERE retired_ms IS NULL").fetchone()
    assert row[0] is not None, "migration 0060 makes key 1"
    return row[0]


def terminal_keys(conn, master_key, now_ms):
    """{key_id: public key bytes} a terminal needs: the current key, and retired ones while a
    certificate they signed can still be in date."""
    valid_ms = dbmod.setting(conn, "paycode_cert_valid_ms")
    rows = conn.execute("SELECT key_id FROM paycode_keys WHERE retired_ms IS NULL OR retired_ms > ? ORDER BY key_id",
                        (now_ms - valid_ms,)).fetchall()
    return {key_id: public_key_bytes(signing_key(master_key, key_id)) for (key_id,) in rows}


def rotate(conn, now_ms):
    """Start signing with a new key id; returns it. Call inside a transaction."""
    assert conn.in_transaction
    current = current_key_id(conn)
    if current >= MAX_KEY_ID:
        raise PayCodeRefused("keys_exhausted")
    conn.execute("UPDATE paycode_keys SET retired_ms = ? WHERE retired_ms IS NULL", (now_ms,))
    conn.execute("INSERT INTO paycode_keys (key_id, created_ms) VALUES (?, ?)", (current + 1, now_ms))
    dbmod.next_counter(conn, "config_version")       # terminals fetch the new public key
    return current + 1


# -- credentials and certificates ---------------------------------------------------------------------

def _card_in_use(conn, account_id):
    return conn.execute("SELECT card_number, generation, status FROM cards WHERE account_id = ? "
                        "ORDER BY generation DESC LIMIT 1", (account_id,)).fetchone()


def _account_refusal(conn, account_id):
    row = conn.execute("SELECT a.blocked, a.in_debt, p.category FROM accounts a JOIN persons p ON p.id = a.person_id "
                       "WHERE a.id = ?", (account_id,)).fetchone()
    if row is None:
        return "account_unknown"
    if row[2] == card_layout.HOLDER_IDENTITY_ONLY:
        return "no_wallet"                  # 身份卡: identification only, nothing to pay with
    if row[0]:
        return "account_blocked"
    if row[1]:
        return "account_in_debt"
    card = _card_in_use(conn, account_id)
    if card is not None and card[2] != "active":
        return "card_not_active"
    return None


def enable(conn, master_key, account_id, app_user_id, public_key, now_ms):
    """Record the phone's key as a credential and certify it. Inside a transaction (after the PIN).
    Returns certificate() of the new credential."""
    assert conn.in_transaction
    if not isinstance(public_key, bytes) or len(public_key) != codes.PUBLIC_KEY_SIZE:
        raise PayCodeRefused("bad_key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise PayCodeRefused("bad_key")
    refusal = _account_refusal(conn, account_id)
    if refusal:
        raise PayCodeRefused(refusal)
    existing = conn.execute("SELECT id, account_id, status FROM paycode_credentials WHERE public_key = ?",
                            (public_key,)).fetchone()
    if existing is not None:
        if existing[1] != account_id or existing[2] != ACTIVE:
            raise PayCodeRefused("key_used")
        return issue_certificate(conn, master_key, existing[0], now_ms)     # enabling twice: same credential
    active = conn.execute("SELECT count(*) FROM paycode_credentials WHERE account_id = ? AND status = ?",
                          (account_id, ACTIVE)).fetchone()[0]
    if active >= dbmod.setting(conn, "paycode_credentials_per_account"):
        raise PayCodeRefused("too_many")
    credential_id = conn.execute(
        "INSERT INTO paycode_credentials (account_id, app_user_id, public_key, status, created_ms) "
        "VALUES (?, ?, ?, ?, ?) RETURNING id", (account_id, app_user_id, public_key, ACTIVE, now_ms)).fetchone()[0]
    return issue_certificate(conn, master_key, credential_id, now_ms)


def issue_certificate(conn, master_key, credential_id, now_ms):
    """A fresh certificate for an active credential: {credential_id, cert_serial, certificate (bytes),
    key_id, expiry_ms, offline_cap_fen, account_id, card_number}. Inside a transaction."""
    assert conn.in_transaction
    row = conn.execute("SELECT account_id, public_key, status FROM paycode_credentials WHERE id = ?",
                       (credential_id,)).fetchone()
    if row is None:
        raise PayCodeRefused("unknown_credential")
    account_id, public_key, status = row[0], bytes(row[1]), row[2]
    if status != ACTIVE:
        raise PayCodeRefused("credential_revoked")
    refusal = _account_refusal(conn, account_id)
    if refusal:
        raise PayCodeRefused(refusal)
    card = _card_in_use(conn, account_id)
    card_number, generation = (card[0], card[1]) if card is not None else (0, 0)
    key_id = current_key_id(conn)
    valid_ms = dbmod.setting(conn, "paycode_cert_valid_ms")
    expiry_min = (now_ms + valid_ms) // codes.STEP_MS
    cap_fen = dbmod.setting(conn, "paycode_offline_cap_fen")
    serial = conn.execute(
        "INSERT INTO paycode_certificates (credential_id, key_id, card_number, card_generation, expiry_min, "
        "offline_cap_fen, issued_ms) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (credential_id, key_id, card_number, generation, expiry_min, cap_fen, now_ms)).fetchone()[0]
    body = codes.cert_body(key_id, serial, credential_id, account_id, card_number, generation, expiry_min, cap_fen,
                           public_key)
    signature = signing_key(master_key, key_id).sign(codes.cert_message(body))
    return {"credential_id": credential_id, "cert_serial": serial, "certificate": body + signature, "key_id": key_id,
            "expiry_ms": expiry_min * codes.STEP_MS, "offline_cap_fen": cap_fen, "account_id": account_id,
            "card_number": card_number}


def verify_code(conn, master_key, text, now_ms):
    """Check a code's signatures on the server (the hall's "check this code" and the tests):
    returns the parsed Code, or raises codes.PayCodeError (reason MALFORMED or FOREIGN)."""
    code = codes.parse(text)
    (key_id, cert_message, cert_signature), (phone_key, code_message, code_signature) = codes.signed_parts(code)
    keys = terminal_keys(conn, master_key, now_ms)
    try:
        if key_id not in keys:
            raise InvalidSignature()
        Ed25519PublicKey.from_public_bytes(keys[key_id]).verify(cert_signature, cert_message)
        Ed25519PublicKey.from_public_bytes(phone_key).verify(code_signature, code_message)
    except (InvalidSignature, ValueError):
        raise codes.PayCodeError("signature does not verify", codes.FOREIGN)
    return code


def revoke_credential(conn, credential_id, reason, now_ms):
    """Stop a credential (and so every certificate of it) on every terminal; True when it was active."""
    assert conn.in_transaction
    changed = conn.execute("UPDATE paycode_credentials SET status = ?, revoked_reason = ?, revoked_ms = ? "
                           "WHERE id = ? AND status = ?", (REVOKED, reason, now_ms, credential_id, ACTIVE)).rowcount
    if changed:
        add_deny_entries(conn, [(DENY_CREDENTIAL, credential_id, 1, reason)], now_ms)
    return bool(changed)


def revoke_certificate(conn, serial, now_ms):
    assert conn.in_transaction
    changed = conn.execute("UPDATE paycode_certificates SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL",
                           (now_ms, serial)).rowcount
    if changed:
        add_deny_entries(conn, [(DENY_CERTIFICATE, serial, 1, REASON_REVOKED)], now_ms)
    return bool(changed)


def credentials(conn, account_id):
    rows = conn.execute("SELECT id, status, created_ms, revoked_ms, revoked_reason FROM paycode_credentials "
                        "WHERE account_id = ? ORDER BY id", (account_id,)).fetchall()
    return [{"credential_id": row[0], "status": row[1], "created_ms": row[2], "revoked_ms": row[3],
             "revoked_reason": row[4]} for row in rows]


# -- claims and uses -----------------------------------------------------------------------------------

def claim(conn, terminal_id, credential_id, cert_serial, time_step, counter, account_id, amount_fen, now_ms):
    """The first claim of one code wins anywhere (module text). Inside a transaction."""
    assert conn.in_transaction
    row = conn.execute("SELECT c.account_id, c.status, k.revoked_ms FROM paycode_credentials c "
                       "JOIN paycode_certificates k ON k.credential_id = c.id WHERE c.id = ? AND k.id = ?",
                       (credential_id, cert_serial)).fetchone()
    if row is None or row[0] != account_id:
        return CLAIM_UNKNOWN
    if row[1] != ACTIVE or row[2] is not None:
        return CLAIM_REVOKED
    if _account_refusal(conn, account_id):
        return CLAIM_BLOCKED
    held = conn.execute("SELECT terminal_id FROM paycode_claims WHERE credential_id = ? AND time_step = ? AND "
                        "counter = ?", (credential_id, time_step, counter)).fetchone()
    if held is not None:
        return CLAIM_OK if held[0] == terminal_id else CLAIM_USED
    if conn.execute("SELECT 1 FROM paycode_uses WHERE credential_id = ? AND time_step = ? AND counter = ? LIMIT 1",
                    (credential_id, time_step, counter)).fetchone():
        return CLAIM_USED                       # journaled offline somewhere and synced already
    conn.execute("INSERT INTO paycode_claims (credential_id, time_step, counter, terminal_id, amount_fen, claimed_ms) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (credential_id, time_step, counter, terminal_id, amount_fen, now_ms))
    return CLAIM_OK


def note_uses(conn, uses, now_ms):
    """Store the uses [(terminal_id, seq, credential_id, time_step, counter, account_id, amount_fen, offline,
    used_ms)] of new pay-code records; mark double uses and revoke their credentials. Under the booking
    turn. Returns the credential ids revoked now."""
    if not uses:
        return []
    conn.executemany("INSERT INTO paycode_uses (terminal_id, seq, credential_id, time_step, counter, account_id, "
                     "amount_fen, offline, used_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", uses)
    keys = {(use[2], use[3], use[4]) for use in uses}
    doubled = set()
    # one statement for the batch (this runs under the booking turn of every upload): codes of these
    # credentials used more than once, kept when they are this batch's
    for condition, values in dbmod.in_lists(conn, sorted({key[0] for key in keys})):
        for row in conn.execute("SELECT credential_id, time_step, counter FROM paycode_uses WHERE credential_id %s "
                                "GROUP BY credential_id, time_step, counter HAVING count(*) > 1" % condition,
                                values).fetchall():
            if tuple(row) in keys:
                doubled.add(tuple(row))
    for key in sorted(doubled):
        conn.execute("UPDATE paycode_uses SET double_use = 1 WHERE credential_id = ? AND time_step = ? AND "
                     "counter = ?", key)
    revoked = []
    for credential_id in sorted({key[0] for key in doubled}):
        if revoke_credential(conn, credential_id, REASON_DOUBLE_USE, now_ms):
            revoked.append(credential_id)
    return revoked
