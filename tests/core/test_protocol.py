"""Sync protocol signing: requests and answers are bound to the terminal key, counter and body."""
from firmware.core import protocol, sam

KEYS = {sam.TERMINAL: b"\x11" * 32}
OTHER = {sam.TERMINAL: b"\x22" * 32}


def _mac(keys, counter=7, status=200, body=b"answer"):
    holder = sam.SoftwareSAM(keys)
    return holder.sign_request(protocol.answer_signing_string(protocol.SYNC_PATH, 5, counter, status, body)).hex()


def test_an_answer_signed_with_the_terminal_key_is_authentic():
    holder = sam.SoftwareSAM(KEYS)
    assert protocol.answer_is_authentic(holder, protocol.SYNC_PATH, 5, 7, 200, b"answer", _mac(KEYS))


def test_any_change_makes_the_answer_unauthentic():
    holder = sam.SoftwareSAM(KEYS)
    good = _mac(KEYS)
    assert not protocol.answer_is_authentic(holder, protocol.SYNC_PATH, 5, 7, 200, b"answeR", good)
    assert not protocol.answer_is_authentic(holder, protocol.SYNC_PATH, 5, 8, 200, b"answer", good)   # replayed
    assert not protocol.answer_is_authentic(holder, protocol.SYNC_PATH, 5, 7, 403, b"answer", good)   # status
    assert not protocol.answer_is_authentic(holder, protocol.SYNC_PATH, 6, 7, 200, b"answer", good)
    assert not protocol.answer_is_authentic(holder, protocol.SYNC_PATH, 5, 7, 200, b"answer", _mac(OTHER))


def test_missing_or_malformed_macs_are_refused():
    holder = sam.SoftwareSAM(KEYS)
    for mac in (None, "", "zz" * 32, "00" * 31, _mac(KEYS)[:-2]):
        assert not protocol.answer_is_authentic(holder, protocol.SYNC_PATH, 5, 7, 200, b"answer", mac)
