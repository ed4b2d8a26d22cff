"""Terminal <-> server sync protocol: message shapes and request authentication.

One call, `POST /api/terminal/v1/sync` with a CBOR body (`application/cbor`), both uploads and
downloads. This module fixes the shapes (plain dicts of ints, bytes, str, lists) and the signing
string; the shells turn them into bytes with cbor2.

Request body (a CBOR map):

    terminal_id      int
    clock_ms         int    terminal clock when the request was built
    records          [bytes]  encoded records (records.py), ascending seq, at most MAX_BATCH_RECORDS
    deny_version     int    highest deny-list version the terminal holds (0 = none)
    balance_version  int    highest balance version the terminal holds (0 = none)
    config_version   int    configuration version the terminal runs (0 = none)
    health           map    free-form str -> int/str (journal depth, firmware, uptime_s, ...)
    rekey_public     bytes  a one-time X25519 public key (32 bytes): a key rotation's new keys come
                            sealed to it (optional; below, REKEY_INFO)

Answer body (a CBOR map):

    acked_seq        int    highest contiguous seq the server holds for this terminal
    server_ms        int    server clock when answering (terminal uses it to correct its clock)
    deny             {"version": int, "entries": [[kind, ref, active, reason_code], ...], "more": bool}
                     kind: "card" (ref = card_number*256 + generation), "card_number" (every
                     generation), "account", "terminal", "credential" and "certificate" (pay codes,
                     paycode.py); active False lifts an earlier entry
    balances         {"version": int, "rows": [[account_id, wallet, balance_fen,
                      spent_today_fen, single_limit_fen, daily_limit_fen], ...], "more": bool}
    config           map or None   (new configuration when config_version is behind)
    commands         [{"op": "resend", "from_seq": a, "to_seq": b} | {"op": "set_time", "server_ms": t} |
                      {"op": "update", "release_id": n, "version": "1.3.0", ...} (sync_server/releases.py) |
                      {"op": "rekey", "key_version": v, "server_public": bytes, "nonce": bytes,
                       "sealed": bytes} (sync_server/key_rotation.py)]

Errors are HTTP 4xx with a CBOR map {"error": code, "message": text}.

Authentication headers (every request):

    X-Ykt-Terminal   terminal id (decimal)
    X-Ykt-Counter    request counter (decimal), strictly increasing per terminal: a replay or an
                     old counter is refused; the terminal persists it before sending
    X-Ykt-Mac        hex HMAC-SHA256 over signing_string(...) with the terminal's key
    X-Ykt-Key-Version  which of its keys signed (optional: the server's current one when absent)

Every answer, refusals included, carries X-Ykt-Answer-Mac: hex HMAC-SHA256 with the same key over
answer_signing_string(...) - the request's counter, the status and the body - so a terminal applies
nothing that did not come from the server (a forged acknowledgement would make it prune records).
"""
import hashlib

from firmware.core import crypto

SYNC_PATH = "/api/terminal/v1/sync"
CONTENT_TYPE = "application/cbor"
MAX_BATCH_RECORDS = 1000
MAX_BODY_BYTES = 256 * 1024

HEADER_TERMINAL = "X-Ykt-Terminal"
HEADER_COUNTER = "X-Ykt-Counter"
HEADER_MAC = "X-Ykt-Mac"
HEADER_ANSWER_MAC = "X-Ykt-Answer-Mac"
# Which of the terminal's keys signed the request (its provisioning's key_version). Absent: the key the
# server holds as current. During a key rotation the server takes the current and the next version;
# the first sync signed with the next one retires the old key (sync_server/key_rotation.py).
HEADER_KEY_VERSION = "X-Ykt-Key-Version"

# Key rotation: every sync request carries a fresh X25519 public key ("rekey_public", 32 bytes). While
# a rotation is pending, the answer's "rekey" command carries the new keys sealed to it: AES-256-GCM
# under HKDF-SHA256(the X25519 shared secret, info=REKEY_INFO), with rekey_aad() as associated data.
# Someone holding the old key who only listens cannot open it.
REKEY_INFO = b"ykt-rekey-v1"
REKEY_PUBLIC_BYTES = 32

WALLET_MAIN = "main"
WALLET_WATER = "water"
WALLET_LEGACY = "legacy"
WALLETS = (WALLET_MAIN, WALLET_WATER, WALLET_LEGACY)

DENY_CARD = "card"
DENY_CARD_NUMBER = "card_number"
DENY_ACCOUNT = "account"
DENY_TERMINAL = "terminal"
DENY_CREDENTIAL = "credential"     # a phone's pay-code credential (ref = credential_id): all its certificates
DENY_CERTIFICATE = "certificate"   # one pay-code certificate (ref = cert_serial)

# reason_code of a deny entry (the server's values; terminals map them to what the cardholder hears)
DENY_REASON_LOST = 1
DENY_REASON_REPLACED = 2
DENY_REASON_FROZEN = 3
DENY_REASON_NEGATIVE = 4     # driven below zero by offline spending: blocked until topped up
DENY_REASON_REVOKED = 5
DENY_REASON_FOUND = 6        # on lifting entries (active False)
DENY_REASON_DOUBLE_USE = 7   # a pay code used twice (offline, at two terminals): its credential stops


def signing_string(method, path, terminal_id, counter, body):
    """What the request MAC covers: method, path, terminal, counter and a hash of the body."""
    return b"ykt-sync-v1\n" + ("%s\n%s\n%d\n%d\n" % (method, path, terminal_id, counter)).encode() + \
        hashlib.sha256(body).digest()


def answer_signing_string(path, terminal_id, counter, status, body):
    """What the answer MAC covers: the request it answers (path, terminal, counter), the HTTP status
    and a hash of the body. Bound to the request counter, so an old answer cannot be replayed."""
    return b"ykt-answer-v1\n" + ("%s\n%d\n%d\n%d\n" % (path, terminal_id, counter, status)).encode() + \
        hashlib.sha256(body).digest()


def answer_is_authentic(sam, path, terminal_id, counter, status, body, mac_hex):
    """True when the server's answer carries a valid MAC under this terminal's key.

    A terminal applies nothing (acknowledgements, deny list, balances, time, a revocation) from an
    answer that fails this check: it could come from anything on the path between it and the server.
    """
    if not mac_hex or len(mac_hex) != 64:
        return False
    try:
        mac = bytes.fromhex(mac_hex)
    except ValueError:
        return False
    expected = sam.sign_request(answer_signing_string(path, terminal_id, counter, status, body))
    return crypto.equal(expected, mac)


def card_deny_ref(card_number, generation):
    return card_number * 256 + generation


def auth_headers(sam, method, path, terminal_id, counter, body, key_version=None):
    """Headers for one request, the MAC made by the terminal's key holder."""
    mac = sam.sign_request(signing_string(method, path, terminal_id, counter, body))
    headers = {HEADER_TERMINAL: str(terminal_id), HEADER_COUNTER: str(counter), HEADER_MAC: mac.hex()}
    if key_version is not None:
        headers[HEADER_KEY_VERSION] = str(key_version)
    return headers


def rekey_aad(terminal_id, key_version):
    """What a sealed rekey is bound to: this terminal and the version it brings."""
    return ("ykt-rekey-v1\n%d\n%d" % (terminal_id, key_version)).encode()
