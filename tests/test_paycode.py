"""Payment codes against the real server (SQLite and PostgreSQL), over HTTP: enabling needs the card
PIN (not the initial one), the certificate and the phone's code verify with real Ed25519, an online
claim wins once on the whole campus, the sale books like a card tap, a code used twice offline is
found at sync (both sales stand, the credential is revoked), stopping a phone reaches terminals as a
deny entry, and a key rotation keeps codes in flight valid."""
import itertools
import time

import cbor2
import pytest

from firmware.core import card_layout, paycode as codes, protocol, records
from simulators.phone import PhoneApp, PhoneError
from simulators.phone_paycode import PayCodeWallet
from sync_server import db as dbmod, ledger, paycode, pin_rules, registry
from sync_server.ledger_store import SqliteStore
from sync_server.terminal_api import PAYCODE_CLAIM_PATH
from tests.server_process import decode_answer

_serial = itertools.count(1)
NEW_PIN = "147258"


class Holder:
    def __init__(self, server, main_fen=10000, card=True):
        n = next(_serial)
        staff_number = "Q%05d" % n
        id_number = "1101011990030%04dX" % n
        conn = server.connect()
        try:
            _person, self.account_id = registry.add_person(conn, "码%d号" % n, card_layout.HOLDER_STUDENT,
                                                           id_number=id_number, staff_number=staff_number)
            registry.recharge(conn, self.account_id, main_fen)
            self.card_number = registry.issue_card_record(conn, self.account_id,
                                                          bytes([4, 0x50, n % 256, n // 256]))[0].card_number \
                if card else 0
        finally:
            conn.close()
        self.initial_pin = pin_rules.initial_pin(id_number, staff_number)
        self.phone = PhoneApp(server.url, "app-code-%d" % n)
        self.phone.bind("码%d号" % n, staff_number, self.initial_pin)
        self.wallet = PayCodeWallet.create()

    def enable(self):
        self.phone.change_pin(self.initial_pin, NEW_PIN)
        return self.wallet.enable(self.phone, NEW_PIN)


def claim(terminal, code, amount_fen=800):
    message = {"credential_id": code.cert.credential_id, "cert_serial": code.cert.cert_serial,
               "time_step": code.time_step, "counter": code.counter, "account_id": code.cert.account_id,
               "amount_fen": amount_fen}
    return decode_answer(terminal.post(cbor2.dumps(message), path=PAYCODE_CLAIM_PATH))["result"]


def sale(terminal, code, amount_fen=800, offline=False):
    seq = terminal.next_seq
    terminal.next_seq += 1
    return records.encode_paycode(terminal.terminal_id, seq, int(time.time() * 1000), code.cert.credential_id,
                                  code.cert.account_id, terminal.category, code.counter, amount_fen,
                                  terminal.merchant_id, code.time_step, records.FLAG_OFFLINE if offline else 0)


def main_fen(server, account_id):
    conn = server.connect()
    try:
        return registry.balances_of(conn, account_id)["main"]
    finally:
        conn.close()


def check_ledger(server):
    conn = server.connect()
    try:
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()


def test_enabling_needs_a_pin_changed_from_the_initial_one(live_server):
    holder = Holder(live_server)
    with pytest.raises(PhoneError) as refused:
        holder.wallet.enable(holder.phone, holder.initial_pin)
    assert refused.value.status == 403 and "paycode_initial_pin" in refused.value.body
    holder.phone.change_pin(holder.initial_pin, NEW_PIN)
    with pytest.raises(PhoneError) as wrong:
        holder.wallet.enable(holder.phone, "000000")
    assert wrong.value.status == 403
    with pytest.raises(PhoneError) as bad_key:
        holder.phone.paycode_enable(b"\x01" * 31, NEW_PIN)
    assert bad_key.value.status == 400
    holder.wallet.enable(holder.phone, NEW_PIN)
    cert = codes.parse_cert(holder.wallet.certificate)
    assert cert.account_id == holder.account_id and cert.card_number == holder.card_number
    assert cert.phone_key == holder.wallet.public_key and cert.offline_cap_fen == 5000


def test_a_code_verifies_and_is_297_characters(live_server):
    holder = Holder(live_server)
    holder.enable()
    text = holder.wallet.code()
    assert len(text) == codes.TEXT_SIZE
    conn = live_server.connect()
    try:
        code = paycode.verify_code(conn, live_server.master_key(), text, dbmod.now_ms())
        assert code.cert.account_id == holder.account_id
        for position in (10, 150, 250, len(text) - 1):                # a flipped character anywhere
            flipped = text[:position] + ("0" if text[position] != "0" else "1") + text[position + 1:]
            with pytest.raises(codes.PayCodeError):
                paycode.verify_code(conn, live_server.master_key(), flipped, dbmod.now_ms())
        other_campus = PayCodeWallet(holder.wallet.private_key, _resigned(holder.wallet.certificate), 1)
        with pytest.raises(codes.PayCodeError) as foreign:
            paycode.verify_code(conn, live_server.master_key(), other_campus.code(), dbmod.now_ms())
        assert foreign.value.reason == codes.FOREIGN
    finally:
        conn.close()


def _resigned(certificate):
    """The same certificate signed by another campus's key of the same id."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    body = certificate[:codes.CERT_SIZE - codes.SIGNATURE_SIZE]
    return body + Ed25519PrivateKey.generate().sign(codes.cert_message(body))


def test_online_claim_wins_once_anywhere_and_the_sale_books_once(live_server):
    holder = Holder(live_server)
    holder.enable()
    code = codes.parse(holder.wallet.code())
    till_a, till_b = live_server.add_terminal(), live_server.add_terminal()
    assert claim(till_a, code) == paycode.CLAIM_OK
    assert claim(till_a, code) == paycode.CLAIM_OK            # its answer was lost: asked again
    assert claim(till_b, code) == paycode.CLAIM_USED
    before_fen = main_fen(live_server, holder.account_id)
    record = sale(till_a, code)
    till_a.sync([record])
    till_a.sync([record])                                     # resent: stored once
    assert main_fen(live_server, holder.account_id) == before_fen - 800
    uses = holder.phone.paycode_uses(holder.wallet.credential_id)
    assert uses["highest_counter"] == 0 and len(uses["uses"]) == 1 and not uses["uses"][0]["double_use"]
    holder.wallet.refresh(holder.phone)
    assert holder.wallet.counter == 1 and codes.parse(holder.wallet.code()).counter == 1
    check_ledger(live_server)


def test_a_code_used_offline_at_two_terminals_books_both_and_revokes_the_credential(live_server):
    holder = Holder(live_server)
    holder.enable()
    code = codes.parse(holder.wallet.code())
    till_a, till_b = live_server.add_terminal(), live_server.add_terminal()
    before_fen = main_fen(live_server, holder.account_id)
    till_a.sync([sale(till_a, code, 500, offline=True)])
    answer = till_b.sync([sale(till_b, code, 700, offline=True)])
    assert main_fen(live_server, holder.account_id) == before_fen - 1200     # both sales stand
    assert [protocol.DENY_CREDENTIAL, code.cert.credential_id, True, protocol.DENY_REASON_DOUBLE_USE] in \
        answer["deny"]["entries"]
    uses = holder.phone.paycode_uses(holder.wallet.credential_id)
    assert all(use["double_use"] for use in uses["uses"])
    assert claim(till_a, codes.parse(holder.wallet.code(int(time.time() * 1000) + 1))) == paycode.CLAIM_REVOKED
    check_ledger(live_server)


def test_stopping_a_phone_reaches_terminals_and_its_claims_are_refused(live_server):
    holder = Holder(live_server)
    holder.enable()
    till = live_server.add_terminal()
    stopped = holder.phone.paycode_stop(holder.wallet.credential_id)
    assert stopped["revoked"] is True
    answer = till.sync()
    assert [protocol.DENY_CREDENTIAL, holder.wallet.credential_id, True, protocol.DENY_REASON_REVOKED] in \
        answer["deny"]["entries"]
    assert claim(till, codes.parse(holder.wallet.code())) == paycode.CLAIM_REVOKED
    with pytest.raises(PhoneError) as renew:
        holder.phone.paycode_renew(holder.wallet.credential_id)
    assert renew.value.status == 409
    other = Holder(live_server)
    with pytest.raises(PhoneError) as not_theirs:                # another holder's credential id
        other.phone.paycode_stop(holder.wallet.credential_id)
    assert not_theirs.value.status == 404


def test_a_lost_card_stops_its_codes_online(live_server):
    holder = Holder(live_server)
    holder.enable()
    holder.phone.report_loss(NEW_PIN)
    till = live_server.add_terminal()
    assert claim(till, codes.parse(holder.wallet.code())) == paycode.CLAIM_BLOCKED
    answer = till.sync()
    assert [protocol.DENY_CARD, protocol.card_deny_ref(holder.card_number, 1), True, protocol.DENY_REASON_LOST] in \
        answer["deny"]["entries"]


def test_claims_with_bad_fields_are_refused_and_change_nothing(live_server, snapshot):
    holder = Holder(live_server)
    holder.enable()
    till = live_server.add_terminal()
    code = codes.parse(holder.wallet.code())
    conn = live_server.connect()
    try:
        before = snapshot(conn)
    finally:
        conn.close()
    good = {"credential_id": code.cert.credential_id, "cert_serial": code.cert.cert_serial,
            "time_step": code.time_step, "counter": code.counter, "account_id": code.cert.account_id, "amount_fen": 1}
    for name, value in (("credential_id", 0), ("counter", 2 ** 40), ("amount_fen", 0), ("amount_fen", 10 ** 12),
                        ("time_step", "now"), ("account_id", None)):
        message = dict(good, **{name: value})
        response = till.post(cbor2.dumps(message), path=PAYCODE_CLAIM_PATH)
        assert response.status_code == 400, (name, value)
    conn = live_server.connect()
    try:
        after = snapshot(conn)
    finally:
        conn.close()
    assert _without_counters(after) == _without_counters(before)
    assert claim(till, code, 1) == paycode.CLAIM_OK
    wrong_account = dict(good, account_id=code.cert.account_id + 1, counter=code.counter + 1)
    assert decode_answer(till.post(cbor2.dumps(wrong_account), path=PAYCODE_CLAIM_PATH))["result"] == \
        paycode.CLAIM_UNKNOWN


def _without_counters(dump):
    """A database snapshot less the request counters (a refused request still uses its counter)."""
    if dump and isinstance(dump[0], str):                      # SQLite's iterdump lines
        return [line for line in dump if "request_counters" not in line]
    columns, rows = dump
    return [columns, [(table, table_rows) for table, table_rows in rows if table != "request_counters"]]


def test_a_rotation_keeps_codes_in_flight_and_sends_both_keys(live_server):
    holder = Holder(live_server)
    holder.enable()
    old_text = holder.wallet.code()
    conn = live_server.connect()
    try:
        with dbmod.transaction(conn):
            new_id = paycode.rotate(conn, dbmod.now_ms())
        keys = paycode.terminal_keys(conn, live_server.master_key(), dbmod.now_ms())
        assert set(keys) >= {new_id - 1, new_id}
        paycode.verify_code(conn, live_server.master_key(), old_text, dbmod.now_ms())
    finally:
        conn.close()
    till = live_server.add_terminal()
    config = till.sync()["config"]
    assert [new_id, keys[new_id].hex()] in config["paycode_keys"]
    assert [new_id - 1, keys[new_id - 1].hex()] in config["paycode_keys"]
    renewed = holder.phone.paycode_renew(holder.wallet.credential_id)
    assert renewed["key_id"] == new_id


def test_unbinding_the_phone_stops_its_codes(live_server):
    holder = Holder(live_server)
    holder.enable()
    (phone,) = holder.phone.phones()
    holder.phone.remove_phone(phone["phone_id"])
    conn = live_server.connect()
    try:
        status = conn.execute("SELECT status FROM paycode_credentials WHERE id = ?",
                              (holder.wallet.credential_id,)).fetchone()[0]
        assert status == paycode.REVOKED
    finally:
        conn.close()
    till = live_server.add_terminal()
    assert claim(till, codes.parse(holder.wallet.code())) == paycode.CLAIM_REVOKED


@pytest.mark.stores("sqlite")
def test_a_flipped_bit_anywhere_in_the_code_is_refused(live_server):
    """Every one of the 1560 bits of a code, flipped on its own: the text no longer parses, or a
    signature no longer verifies - never a code that passes for another."""
    holder = Holder(live_server)
    holder.enable()
    raw = bytearray(codes.parse(holder.wallet.code()).raw)
    conn = live_server.connect()
    try:
        now_ms = dbmod.now_ms()
        for bit in range(len(raw) * 8):
            flipped = bytearray(raw)
            flipped[bit // 8] ^= 0x80 >> (bit % 8)
            with pytest.raises(codes.PayCodeError):
                paycode.verify_code(conn, live_server.master_key(), codes.to_text(bytes(flipped)), now_ms)
    finally:
        conn.close()


@pytest.mark.stores("sqlite")
def test_the_code_fits_a_version_10_qr_code_that_reads_at_arms_length(tmp_path):
    """297 alphanumeric characters at error correction M: version 10, 57 x 57 modules. Drawn at the
    size a phone shows it and then shrunk to what a canteen scanner's camera sees at arm's length
    (about 2 pixels a module), it still reads back exactly."""
    import segno
    from PIL import Image
    from simulators.sticker_scan import read_qr_texts
    text = PayCodeWallet(PayCodeWallet.create().private_key, bytes(codes.CERT_SIZE), 1).code()
    qr = segno.make(text, error="m", mode="alphanumeric", micro=False)
    assert (qr.version, qr.symbol_size(border=0)) == (10, (57, 57))
    path = tmp_path / "code.png"
    qr.save(str(path), scale=8, border=4)
    small = tmp_path / "small.png"
    with Image.open(path) as image:
        image.resize((130, 130), Image.BILINEAR).save(small)      # 65 modules with the quiet zone: 2 px each
    assert read_qr_texts(str(small)) == [text]


def test_an_identity_only_card_cannot_enable_the_code(live_server):
    n = next(_serial)
    conn = live_server.connect()
    try:
        _person, account_id = registry.add_person(conn, "身份%d" % n, card_layout.HOLDER_IDENTITY_ONLY,
                                                  id_number="1101011990050%04dX" % n, staff_number="I%05d" % n)
        with dbmod.transaction(conn):
            with pytest.raises(paycode.PayCodeRefused) as refused:
                paycode.enable(conn, live_server.master_key(), account_id, None, PayCodeWallet.create().public_key,
                               dbmod.now_ms())
        assert refused.value.code == "no_wallet"
    finally:
        conn.close()


def test_a_sale_naming_another_accounts_credential_is_stored_unbooked(live_server):
    """Only a forged or broken till writes a pay-code record whose credential is not the named
    account's: it is stored once and acknowledged, never booked, and noted with its reason."""
    holder, other = Holder(live_server), Holder(live_server)
    holder.enable()
    code = codes.parse(holder.wallet.code())
    till = live_server.add_terminal()
    seq = till.next_seq
    till.next_seq += 1
    forged = records.encode_paycode(till.terminal_id, seq, int(time.time() * 1000), code.cert.credential_id,
                                    other.account_id, till.category, code.counter, 700, till.merchant_id,
                                    code.time_step)
    before = main_fen(live_server, other.account_id), main_fen(live_server, holder.account_id)
    assert till.sync([forged])["acked_seq"] == seq
    assert (main_fen(live_server, other.account_id), main_fen(live_server, holder.account_id)) == before
    conn = live_server.connect()
    try:
        assert conn.execute("SELECT booked FROM terminal_records WHERE terminal_id = ? AND seq = ?",
                            (till.terminal_id, seq)).fetchone()[0] == 0
        assert conn.execute("SELECT reason FROM record_anomalies WHERE terminal_id = ? AND seq = ?",
                            (till.terminal_id, seq)).fetchone()[0] == "unknown_credential"
        assert conn.execute("SELECT count(*) FROM paycode_uses WHERE terminal_id = ?",
                            (till.terminal_id,)).fetchone()[0] == 0
    finally:
        conn.close()
    check_ledger(live_server)
