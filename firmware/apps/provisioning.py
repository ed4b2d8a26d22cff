"""Purpose keys from a terminal's provisioning file (`ykt hall terminal-register --out F`, mode 0600).

The file carries them as hex under "sam_keys" (purpose -> hex); older files had them flat at the top
level ("terminal_key", "card_key_a", ...), still accepted. Callers take only the purposes they need
into a key holder (firmware.core.sam) and never show the bytes.
"""
from firmware.core import sam as sam_module

# Flat top-level names of older provisioning files -> key holder purpose.
_FLAT_NAMES = (("terminal_key", sam_module.TERMINAL), ("card_key_a", sam_module.CARD_KEY_A),
               ("card_key_b", sam_module.CARD_KEY_B), ("card_mac", sam_module.CARD_MAC))


def purpose_keys(document, purposes):
    """{purpose: key bytes} for those of `purposes` the document holds; ValueError for a key that is
    not hex (the message names the purpose, never the value)."""
    hex_keys = dict(document.get("sam_keys") or {})
    for flat, purpose in _FLAT_NAMES:
        if flat in document:
            hex_keys.setdefault(purpose, document[flat])
    keys = {}
    for purpose in purposes:
        if purpose in hex_keys:
            try:
                keys[purpose] = bytes.fromhex(hex_keys[purpose])
            except (TypeError, ValueError):
                raise ValueError("provisioning key %s is not hex" % purpose)
    return keys
