"""Bluetooth water messages and the dispenser's grant gate (plain asserts: also run under MicroPython)."""
from firmware.core import crypto, sam, water_grants as w

KEY = crypto.derive(b"k" * 32, "water", 7, 1)
OTHER_KEY = crypto.derive(b"k" * 32, "water", 8, 1)
MAC = w.grant_mac_fn(KEY)
CHALLENGE = bytes(range(16))


def refused(function, *args):
    try:
        function(*args)
    except w.WaterMessageError as error:
        return error.code
    raise AssertionError("accepted %r" % (args,))


def grant(**fields):
    values = {"dispenser_id": 7, "grant_id": 41, "account_id": 501, "challenge": CHALLENGE, "cap_fen": 300,
              "valid_ms": 60000}
    values.update(fields)
    return w.Grant(**values)


def gate(now_ms=1000):
    g = w.GrantGate(7, MAC, max_cap_fen=500, lifetime_ms=90000)
    read = g.challenge(CHALLENGE, now_ms)
    assert w.decode_challenge(read) == (7, CHALLENGE)
    return g


def test_sizes_and_round_trips():
    data = w.encode_grant(MAC, grant())
    assert len(data) == w.GRANT_SIZE == 53
    assert w.decode_grant(data, MAC) == grant()
    receipt = w.Receipt(7, 41, 12, 1500, 45, 300, 61000, w.END_BUTTON)
    raw = w.encode_receipt(MAC, receipt)
    assert len(raw) == w.RECEIPT_SIZE and w.decode_receipt(raw, MAC) == receipt
    assert w.decode_progress(w.encode_progress(w.PROGRESS_DISPENSING, 100, 3, 300)) == (2, 100, 3, 300)
    assert w.decode_control(bytes([w.CONTROL_END])) == w.CONTROL_END


def test_the_sam_holds_the_water_key_like_the_server_derives_it():
    holder = sam.SoftwareSAM({sam.WATER: sam.water_key(b"m" * 32, 7)})
    server_mac = w.grant_mac_fn(sam.water_key(b"m" * 32, 7))
    data = w.encode_grant(server_mac, grant())
    assert w.decode_grant(data, holder.water_mac) == grant()


def test_a_good_grant_is_accepted_once():
    g = gate()
    data = w.encode_grant(MAC, grant())
    assert g.accept(data, 2000) == grant()
    assert refused(g.accept, data, 2100) == w.REFUSED_NO_CHALLENGE      # replayed
    g.challenge(bytes(16), 3000)
    assert refused(g.accept, data, 3100) == w.REFUSED_NO_CHALLENGE      # still used up


def test_forged_other_dispenser_expired_and_over_cap_grants_are_refused():
    data = bytearray(w.encode_grant(MAC, grant()))
    data[-1] ^= 1
    assert refused(gate().accept, bytes(data), 2000) == w.REFUSED_FORGED
    changed = bytearray(w.encode_grant(MAC, grant()))
    changed[32] ^= 0x01                                                   # cap raised after signing
    assert refused(gate().accept, bytes(changed), 2000) == w.REFUSED_FORGED
    other = w.encode_grant(w.grant_mac_fn(OTHER_KEY), grant(dispenser_id=8))
    assert refused(gate().accept, other, 2000) == w.REFUSED_OTHER_DISPENSER
    late = w.encode_grant(MAC, grant(valid_ms=5000))
    assert refused(gate().accept, late, 6000) == w.REFUSED_EXPIRED
    assert refused(gate().accept, w.encode_grant(MAC, grant(valid_ms=10 ** 9)), 1000 + 90000) == w.REFUSED_EXPIRED
    assert refused(gate().accept, w.encode_grant(MAC, grant(cap_fen=501)), 2000) == w.REFUSED_OVER_CAP
    assert refused(gate().accept, w.encode_grant(MAC, grant(cap_fen=0)), 2000) == w.REFUSED_OVER_CAP


def test_a_refused_grant_uses_up_its_challenge():
    g = gate()
    assert refused(g.accept, b"\x00" * 53, 2000) == w.REFUSED_MALFORMED
    forged = bytearray(w.encode_grant(MAC, grant()))
    forged[-1] ^= 1
    assert refused(g.accept, bytes(forged), 2050) == w.REFUSED_FORGED
    assert refused(g.accept, w.encode_grant(MAC, grant()), 2100) == w.REFUSED_NO_CHALLENGE
    assert g.refusals == 3


def test_phones_connected_at_once_each_have_their_own_challenge():
    g = w.GrantGate(7, MAC, max_cap_fen=500, lifetime_ms=90000)
    challenges = [bytes([n]) * 16 for n in range(1, 6)]
    for n, challenge in enumerate(challenges):
        g.challenge(challenge, 1000 + n)
    # the second phone's grant goes through although three more phones read challenges after it
    assert g.accept(w.encode_grant(MAC, grant(challenge=challenges[1], grant_id=2)), 2000).grant_id == 2
    assert g.accept(w.encode_grant(MAC, grant(challenge=challenges[4], grant_id=5)), 2000).grant_id == 5
    # only MAX_LIVE_CHALLENGES are kept: the oldest went
    assert refused(g.accept, w.encode_grant(MAC, grant(challenge=challenges[0])), 2000) == w.REFUSED_NO_CHALLENGE


def test_garbage_is_malformed():
    g = w.GrantGate(7, MAC, 500, 90000)
    for data in (b"", b"\x01", bytes(200), b"\x02" + bytes(52)):
        assert refused(g.accept, data, 0) == w.REFUSED_MALFORMED
    for decode in (w.decode_challenge, w.decode_receipt, w.decode_progress, w.decode_control):
        assert refused(decode, b"\xff" * 3) == w.REFUSED_MALFORMED
    assert refused(w.encode_grant, MAC, grant(cap_fen=-1)) == w.REFUSED_MALFORMED
    assert refused(w.encode_grant, MAC, grant(grant_id=2 ** 32)) == w.REFUSED_MALFORMED


def test_forged_receipt_and_fen_above_cap():
    raw = bytearray(w.encode_receipt(MAC, w.Receipt(7, 41, 12, 1500, 45, 300, 61000, w.END_CAP)))
    assert refused(w.decode_receipt, bytes(raw), w.grant_mac_fn(OTHER_KEY)) == w.REFUSED_FORGED
    assert refused(w.encode_receipt, MAC, w.Receipt(7, 41, 12, 1500, 301, 300, 61000, w.END_CAP)) == \
        w.REFUSED_MALFORMED
    assert refused(w.encode_receipt, MAC, w.Receipt(7, 41, 12, 1500, 1, 300, 61000, 99)) == w.REFUSED_MALFORMED


def test_advertisement_and_sticker():
    assert w.dispenser_from_manufacturer_data(w.MANUFACTURER_ID, w.advert_manufacturer_data(7)) == 7
    assert w.dispenser_from_manufacturer_data(0x004C, w.advert_manufacturer_data(7)) is None
    assert w.dispenser_from_manufacturer_data(w.MANUFACTURER_ID, b"XX\x00\x00\x00\x07") is None
    address = w.static_address(7)
    assert address == "C0:7A:00:00:00:07" and int(address[:2], 16) >> 6 == 3
    assert w.parse_sticker(w.sticker_text(7, address)) == (7, address)
    for text in ("https://example.com", "ykt://water?d=x&a=C0:7A:00:00:00:07", "ykt://water?d=7&a=zz",
                 "ykt://water?d=7", None, "ykt://water?d=99999999999&a=C0:7A:00:00:00:07"):
        assert refused(w.parse_sticker, text) == w.REFUSED_MALFORMED


def test_after_a_key_rotation_the_old_keys_grants_open_the_valve_until_it_is_forgotten():
    holder = sam.SoftwareSAM({sam.WATER: OTHER_KEY})           # the dispenser before the rotation
    holder.rotate({sam.WATER: KEY})
    assert holder.has_previous_water()
    g = w.GrantGate(7, holder.water_mac, max_cap_fen=500, lifetime_ms=90000)
    old_mac = w.grant_mac_fn(OTHER_KEY)
    g.challenge(CHALLENGE, 1000)
    assert refused(g.accept, w.encode_grant(old_mac, grant()), 2000) == w.REFUSED_FORGED
    g.previous_key(holder.previous_water_mac)
    g.challenge(CHALLENGE, 3000)
    assert g.accept(w.encode_grant(old_mac, grant()), 4000).grant_id == 41        # made just before
    g.challenge(bytes(16), 5000)
    assert g.accept(w.encode_grant(MAC, grant(challenge=bytes(16), grant_id=42)), 6000).grant_id == 42
    g.previous_key(None)
    holder.forget_previous()
    assert not holder.has_previous_water()
    g.challenge(CHALLENGE, 7000)
    assert refused(g.accept, w.encode_grant(old_mac, grant()), 8000) == w.REFUSED_FORGED
    # receipts: one key or any of several
    receipt = w.encode_receipt(old_mac, w.Receipt(7, 41, 12, 1500, 45, 300, 61000, w.END_CAP))
    assert w.decode_receipt(receipt, (MAC, old_mac)).grant_id == 41
    assert refused(w.decode_receipt, receipt, (MAC,)) == w.REFUSED_FORGED
