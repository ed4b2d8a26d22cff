"""Terminal key rotation: a terminal is moved to a new key through its own sync, and the old key
stops working after the first sync signed with the new one.

    ykt fleet rotate-key --terminal 12        (or the admin console's button: registry.rotate_terminal_key)
        terminals.next_key_version = key_version + 1
    the terminal's next sync, signed with the old key, carries a fresh X25519 public key (every sync
    request does: protocol.REKEY_INFO)
        the answer's "rekey" command: the new keys (firmware.core.sam: TERMINAL, and WATER for a water
        dispenser), derived from the master key for the new version, sealed to that public key
    the terminal keeps them (its data directory, 0600, written before it uses them) and signs the next
    request with them (header X-Ykt-Key-Version)
        that sync's transaction makes next_key_version the key_version: from then on the old key is
        refused (key_retired), the water grants are made under the new water key

The sealing is what makes a rotation worth having after a key may have leaked: whoever holds the old
key and only listens to the traffic cannot open the new keys (the one-time X25519 secret stays in the
terminal's memory). Lost answers are harmless: the old key keeps working until the new one is used,
and every sync brings a newly sealed copy. The keys are never stored; as always they are derived again
from the master key (firmware.core.sam).
"""
import os

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware.core import protocol, sam as sam_keys
from firmware.core import wallets as wallet_rules

NONCE_BYTES = 12

PROMOTE_SQL = ("UPDATE terminals SET key_version = next_key_version, next_key_version = NULL, "
               "next_key_asked_ms = NULL, key_rotated_ms = ? WHERE id = ? AND next_key_version = ?")


def new_keys(master_key, terminal_id, key_version, category):
    """{purpose: key} a terminal of `category` holds at `key_version`: the keys a rotation replaces."""
    keys = {sam_keys.TERMINAL: sam_keys.terminal_key(master_key, terminal_id, key_version)}
    if category == wallet_rules.CATEGORY_WATER:
        keys[sam_keys.WATER] = sam_keys.water_key(master_key, terminal_id, key_version)
    return keys


def seal_command(master_key, terminal_id, key_version, category, terminal_public):
    """The sync answer's rekey command: the new keys sealed to the request's one-time public key."""
    assert len(terminal_public) == protocol.REKEY_PUBLIC_BYTES
    ours = X25519PrivateKey.generate()
    shared = ours.exchange(X25519PublicKey.from_public_bytes(bytes(terminal_public)))
    nonce = os.urandom(NONCE_BYTES)
    plain = cbor2.dumps(new_keys(master_key, terminal_id, key_version, category))
    sealed = AESGCM(sealing_key(shared)).encrypt(nonce, plain, protocol.rekey_aad(terminal_id, key_version))
    return {"op": "rekey", "key_version": key_version, "nonce": nonce, "sealed": sealed,
            "server_public": ours.public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw)}


def sealing_key(shared):
    """AES-256 key from an X25519 shared secret (both ends: firmware/apps/sync_client.py opens it)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=protocol.REKEY_INFO).derive(shared)
