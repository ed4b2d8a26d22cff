"""The key holder (a software SAM): every use of a secret key goes through here.

A terminal never holds the site master key. At provisioning it receives only the purpose keys its
role needs, derived from the master key:

    purpose key       who holds it                 what it does
    ---------------   --------------------------   ----------------------------------------------
    card_key_a        every terminal               diversifies per-card MIFARE key A (read, count)
    card_key_b        issuing stations (hall)      diversifies per-card key B (write identity)
    card_mac          every terminal               MACs / verifies the identity block
    terminal          one terminal                 authenticates its sync requests (HMAC)
    water             one water dispenser          verifies Bluetooth grants, signs usage receipts

A hardware SAM later implements the same methods; callers never see key bytes except the 6-byte
MIFARE sector keys, which the reader chip needs in the clear (PN532 InDataExchange takes them).
"""
from firmware.core import crypto

CARD_KEY_A = "card_key_a"
CARD_KEY_B = "card_key_b"
CARD_MAC = "card_mac"
TERMINAL = "terminal"
WATER = "water"
_PURPOSES = (CARD_KEY_A, CARD_KEY_B, CARD_MAC)


def site_purpose_keys(master_key, include_issuer=False):
    """Purpose keys for a terminal (or, with include_issuer, for an issuing station)."""
    assert len(master_key) >= 16, "site master key too short"
    keys = {CARD_KEY_A: crypto.derive(master_key, CARD_KEY_A), CARD_MAC: crypto.derive(master_key, CARD_MAC)}
    if include_issuer:
        keys[CARD_KEY_B] = crypto.derive(master_key, CARD_KEY_B)
    return keys


def terminal_key(master_key, terminal_id, key_version=1):
    """The per-terminal sync key; the server derives it again instead of storing it."""
    return crypto.derive(master_key, TERMINAL, terminal_id, key_version)


def water_key(master_key, dispenser_id, key_version=1):
    """The per-dispenser key of Bluetooth water grants and receipts (firmware/core/water_grants.py);
    the server derives it again to sign grants and check receipts."""
    return crypto.derive(master_key, WATER, dispenser_id, key_version)


class KeyMissing(Exception):
    """This key holder was not given the key the operation needs (wrong role)."""


class SoftwareSAM:
    def __init__(self, keys):
        for name in keys:
            assert name in _PURPOSES or name in (TERMINAL, WATER), "unknown key purpose %r" % name
        self._keys = dict(keys)
        self._previous_water = None      # the water key a rotation replaced, for a while (rotate)

    def _key(self, purpose):
        key = self._keys.get(purpose)
        if key is None:
            raise KeyMissing(purpose)
        return key

    def has(self, purpose):
        return purpose in self._keys

    def rotate(self, keys):
        """A key rotation's new keys replace the old ones of the same purposes (only the per-terminal
        ones rotate: TERMINAL, WATER). The caller has stored them first. The old water key stays
        for previous_water_mac until forget_previous()."""
        for name in keys:
            assert name in (TERMINAL, WATER), "purpose %r does not rotate" % name
        if WATER in keys and WATER in self._keys:
            self._previous_water = self._keys[WATER]
        self._keys.update(keys)

    def previous_water_mac(self, message):
        """water_mac under the water key a rotation replaced (grants the server made just before it)."""
        return crypto.hmac_sha256(self._previous_water, message)

    def has_previous_water(self):
        return self._previous_water is not None

    def forget_previous(self):
        self._previous_water = None

    def card_sector_key(self, uid, sector, key_type):
        """The 6-byte MIFARE key of one sector of one card (diversified by UID)."""
        purpose = CARD_KEY_A if key_type == "A" else CARD_KEY_B
        assert key_type in ("A", "B")
        return crypto.derive(self._key(purpose), "sector", bytes(uid), sector)[:6]

    def identity_mac(self, uid, identity_bytes):
        """16-byte MAC binding the identity bytes to the card's UID."""
        return crypto.hmac_sha256(self._key(CARD_MAC), b"identity/" + bytes(uid) + bytes(identity_bytes))[:16]

    def verify_identity_mac(self, uid, identity_bytes, mac):
        return crypto.equal(self.identity_mac(uid, identity_bytes), bytes(mac))

    def sign_request(self, message):
        """HMAC-SHA256 of a sync request's signing string with this terminal's key."""
        return crypto.hmac_sha256(self._key(TERMINAL), message)

    def water_mac(self, message):
        """HMAC-SHA256 with this dispenser's water key (grants in, receipts out)."""
        return crypto.hmac_sha256(self._key(WATER), message)
