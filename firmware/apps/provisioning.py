"""Purpose keys from a terminal's provisioning file (`ykt hall terminal-register --out F`, mode 0600).

The file carries them as hex under "sam_keys" (purpose -> hex); older files had them flat at the top
level ("terminal_key", "card_key_a", ...), still accepted. Callers take only the purposes they need
into a key holder (firmware.core.sam) and never show the bytes.
"""
import json
import os

from firmware.core import sam as sam_module

# Where a terminal keeps the keys a rotation brought (sync_client.py), beside its journal: the
# provisioning file may sit on a read-only root. Mode 0600, like the provisioning file.
ROTATED_KEYS_FILE = "rotated-keys.json"

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


def with_rotated_keys(document, data_dir):
    """The provisioning document with the keys of a later rotation (ROTATED_KEYS_FILE in `data_dir`)
    in place of its own; unchanged when there is none, or it is for another terminal or not newer
    (a terminal flashed again after a rotation holds the current keys in its provisioning file)."""
    path = os.path.join(data_dir, ROTATED_KEYS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            rotated = json.load(handle)
    except FileNotFoundError:
        return document
    if rotated.get("terminal_id") != document.get("terminal_id") \
            or not rotated.get("key_version", 0) > document.get("key_version", 1):
        return document
    merged = dict(document)
    merged["sam_keys"] = dict(document.get("sam_keys") or {})
    merged["sam_keys"].update(rotated["sam_keys"])
    merged["key_version"] = rotated["key_version"]
    return merged


def save_rotated_keys(data_dir, terminal_id, key_version, keys):
    """Keep a rotation's keys ({purpose: bytes}) durably before they are used: written to a temporary
    file (0600), flushed, renamed over the old one, the directory flushed."""
    path = os.path.join(data_dir, ROTATED_KEYS_FILE)
    text = json.dumps({"terminal_id": terminal_id, "key_version": key_version,
                       "sam_keys": {purpose: key.hex() for purpose, key in sorted(keys.items())}})
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
