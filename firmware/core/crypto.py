"""HMAC-SHA256 and key derivation on `hashlib` alone, so the same code runs on MicroPython.

CPython has `hmac`, MicroPython does not; this is RFC 2104 over SHA-256 (64-byte block) and the
test suite checks it against CPython's `hmac` module. Key derivation is HMAC with a label: every key
in the system is `derive(parent, label, *parts)`, so one site master key fans out into purpose keys
and per-card / per-terminal keys without any of them being stored in code.
"""
import hashlib

_BLOCK_SIZE = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _translate(key, table):
    return bytes(table[b] for b in key)


def hmac_sha256(key, message):
    """RFC 2104 HMAC with SHA-256; returns 32 bytes."""
    if len(key) > _BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK_SIZE - len(key))
    inner = hashlib.sha256(_translate(key, _IPAD))
    inner.update(message)
    outer = hashlib.sha256(_translate(key, _OPAD))
    outer.update(inner.digest())
    return outer.digest()


def derive(parent_key, label, *parts):
    """Derive a 32-byte key: HMAC(parent, b'ykt/' + label + b'/' + part...).

    `label` is a str naming the purpose; `parts` are bytes or ints (encoded as 4-byte big endian)
    that bind the key to one card, sector or terminal.
    """
    message = b"ykt/" + label.encode()
    for part in parts:
        if isinstance(part, int):
            part = part.to_bytes(4, "big")
        message += b"/" + part
    return hmac_sha256(parent_key, message)


def equal(a, b):
    """Compare two byte strings in time that does not depend on where they differ."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0
