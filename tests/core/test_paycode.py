"""Payment codes in the core: base45, the certificate and code bytes, the minute and skew, the replay
cache, and the POS paying by code - online (claimed), offline (within the certificate's cap), refused
for every reason with nothing journaled. Plain asserts: these run under MicroPython too, so the
signatures are stand-ins here (the shell checks the real Ed25519 ones, tests/test_paycode.py)."""
from firmware.core import messages, paycode, pos, protocol, records
from firmware.core.decide import AccountView, DenyView, NOT_DENIED

NOW_MS = 1741600000000
STEP = NOW_MS // paycode.STEP_MS
PHONE_KEY = bytes(range(32))
CONFIG = {"terminal_id": 7, "merchant_id": 3, "category": 1, "offline_cap_count": 5, "offline_cap_amount_fen": 20000}


def raises(kind, function, *args):
    try:
        function(*args)
    except kind as error:
        return error
    raise AssertionError("%s not raised" % kind.__name__)


def cert_bytes(expiry_min=STEP + 10000, cap_fen=3000, card=1001, generation=1, account=501, credential=77, serial=9):
    body = paycode.cert_body(1, serial, credential, account, card, generation, expiry_min, cap_fen, PHONE_KEY)
    return body + b"S" * paycode.SIGNATURE_SIZE


def code_text(step=STEP, counter=0, **cert):
    body = paycode.code_body(cert_bytes(**cert), step, counter)
    return paycode.to_text(body + b"P" * paycode.SIGNATURE_SIZE)


# -- base45 ----------------------------------------------------------------------------------------

def test_base45_matches_the_rfc_examples():
    for raw, text in ((b"AB", "BB8"), (b"Hello!!", "%69 VD92EX0"), (b"base-45", "UJCLQE7W581"), (b"ietf!", "QED8WEX0")):
        assert paycode.b45encode(raw) == text
        assert paycode.b45decode(text) == raw


def test_base45_refuses_what_is_not_base45():
    for text in ("GGW", "a", "ab", "A", "0000", "!!!", "ZZZZ"):
        raises(ValueError, paycode.b45decode, text)


def test_base45_round_trips_every_byte():
    data = bytes(range(256)) + b"\xff"
    assert paycode.b45decode(paycode.b45encode(data)) == data


# -- bytes -------------------------------------------------------------------------------------------

def test_code_is_297_characters_of_the_qr_alphanumeric_set():
    text = code_text()
    assert len(text) == paycode.TEXT_SIZE == 297
    assert all(char in paycode.BASE45_ALPHABET for char in text)


def test_parse_reads_back_every_field():
    code = paycode.parse(code_text(counter=3))
    assert code.time_step == STEP and code.counter == 3
    cert = code.cert
    assert (cert.key_id, cert.cert_serial, cert.credential_id, cert.account_id, cert.card_number, cert.card_generation,
            cert.offline_cap_fen, cert.phone_key) == (1, 9, 77, 501, 1001, 1, 3000, PHONE_KEY)
    (key_id, cert_message, cert_signature), (phone_key, code_message, code_signature) = paycode.signed_parts(code)
    assert key_id == 1 and cert_message.startswith(paycode.CERT_DOMAIN) and cert_signature == b"S" * 64
    assert phone_key == PHONE_KEY and code_message.startswith(paycode.CODE_DOMAIN) and code_signature == b"P" * 64
    assert len(code_message) == len(paycode.CODE_DOMAIN) + paycode.CODE_SIZE - 64
    assert paycode.use_key(code) == (77, STEP, 3)


def test_parse_refuses_garbage_truncated_and_other_codes():
    text = code_text()
    for bad in ("", "hello", "YK1:", text[:-3], text[:100], text + "00", "YK2:" + text[4:], text.lower(),
                "https://qr.alipay.com/abc", "YK1:" + "0" * 2000, text[:50] + "~" + text[51:]):
        assert raises(paycode.PayCodeError, paycode.parse, bad).reason == paycode.MALFORMED
    raises(paycode.PayCodeError, paycode.parse, b"YK1:")


def test_certificate_fields_are_bounded():
    raises(paycode.PayCodeError, paycode.cert_body, 1, 1, 1, 1, 1, 1, 1, -1, PHONE_KEY)
    raises(paycode.PayCodeError, paycode.cert_body, 1, 1, 1, 1, 1, 1, 1, 2 ** 32, PHONE_KEY)
    raises(paycode.PayCodeError, paycode.cert_body, 0, 1, 1, 1, 1, 1, 1, 1, PHONE_KEY)
    raises(paycode.PayCodeError, paycode.cert_body, 1, 1, 1, 1, 1, 1, 1, 1, PHONE_KEY[:31])


# -- time and replay ------------------------------------------------------------------------------

def test_a_code_is_good_from_its_minute_until_a_minute_after_within_the_skew():
    code = paycode.parse(code_text())
    start_ms = STEP * paycode.STEP_MS
    skew_ms = 30000
    assert paycode.check_time(code, start_ms, skew_ms) is None
    assert paycode.check_time(code, start_ms - skew_ms, skew_ms) is None
    assert paycode.check_time(code, start_ms - skew_ms - 1, skew_ms) == paycode.FUTURE
    assert paycode.check_time(code, start_ms + 2 * paycode.STEP_MS + skew_ms, skew_ms) is None
    assert paycode.check_time(code, start_ms + 2 * paycode.STEP_MS + skew_ms + 1, skew_ms) == paycode.EXPIRED
    old = paycode.parse(code_text(expiry_min=STEP - 10))
    assert paycode.check_time(old, start_ms, skew_ms) == paycode.CERT_EXPIRED


def test_replay_cache_accepts_once_forgets_only_dead_codes_and_never_overflows():
    cache = paycode.ReplayCache(skew_ms=0, max_entries=3)
    now_ms = STEP * paycode.STEP_MS
    for counter in range(3):
        assert cache.check((1, STEP, counter), now_ms) is None
        cache.add((1, STEP, counter), now_ms)
    assert cache.check((1, STEP, 0), now_ms) == paycode.REPLAYED
    assert cache.check((1, STEP, 9), now_ms) == paycode.REPLAY_FULL      # full of live codes: refuse
    later_ms = paycode.live_until_ms(STEP, 0) + 1
    assert cache.check((1, STEP + 3, 0), later_ms) is None               # the old ones are dead now
    assert len(cache) == 0


# -- the POS paying by code ------------------------------------------------------------------------

def machine(online=True):
    m = pos.CanteenPos(CONFIG)
    m.handle(pos.Tick(NOW_MS))
    m.handle(pos.SyncAnswered(online))
    return m


def code_facts(main=10000, deny=NOT_DENIED, credential=None, certificate=None, offline_fen=0):
    account = AccountView(True, {"main": main}, 0, 0, 0, 0, 0)
    return pos.PayCodeFacts(pos.TapFacts(deny, account), credential, certificate, offline_fen)


def scan(m, text, amount=1200):
    m.handle(pos.AmountKeyed(amount))
    return m.handle(pos.CodeScanned(text))


def shown(actions):
    return [a.message_code for a in actions if isinstance(a, pos.Show)]


def refused_with(actions):
    outcome = [a for a in actions if isinstance(a, pos.Outcome)]
    assert len(outcome) == 1 and not outcome[0].accepted
    assert not any(isinstance(a, (pos.JournalPayCode, pos.Journal, pos.ClaimCode)) for a in actions)
    return outcome[0].message_code


def test_online_code_is_claimed_then_journaled_then_accepted_once():
    m = machine(online=True)
    actions = scan(m, code_text(counter=4))
    assert m.state == pos.VERIFYING and isinstance(actions[-1], pos.VerifyCode)
    actions = m.handle(pos.CodeVerified(True, code_facts()))
    assert actions == [pos.ClaimCode(77, 9, STEP, 4, 501, 1200)]
    actions = m.handle(pos.CodeClaimed(pos.CLAIM_OK))
    fields = actions[0].record_fields
    assert fields["credential_id"] == 77 and fields["counter"] == 4 and fields["time_step"] == STEP
    assert not fields["flags"] & records.FLAG_OFFLINE
    record = records.encode_paycode(seq=1, time_ms=NOW_MS, **fields)
    assert records.decode(record)["kind"] == records.KIND_PAYCODE and records.paycode_time_step(record) == STEP
    done = m.handle(pos.Journaled(1))
    assert messages.ACCEPTED in shown(done) and m.state == pos.IDLE
    assert refused_with(scan(m, code_text(counter=4))) == messages.PAYCODE_USED     # the same code again


def test_offline_code_is_journaled_within_the_certificates_cap():
    m = machine(online=False)
    scan(m, code_text(cap_fen=3000), amount=1200)
    actions = m.handle(pos.CodeVerified(True, code_facts(offline_fen=1800)))
    assert isinstance(actions[0], pos.JournalPayCode) and actions[0].record_fields["flags"] & records.FLAG_OFFLINE
    m.handle(pos.Journaled(1))
    scan(m, code_text(counter=1, cap_fen=3000), amount=1200)
    actions = m.handle(pos.CodeVerified(True, code_facts(offline_fen=3000)))
    assert refused_with(actions) == messages.PAYCODE_OFFLINE_CAP


def test_the_server_unreachable_during_the_claim_decides_offline():
    m = machine(online=True)
    scan(m, code_text())
    m.handle(pos.CodeVerified(True, code_facts()))
    actions = m.handle(pos.CodeClaimed(None))
    assert isinstance(actions[0], pos.JournalPayCode) and actions[0].record_fields["flags"] & records.FLAG_OFFLINE
    m.handle(pos.Journaled(1))
    # that one code only: the till is still online for the next payment, whose claim is asked again
    scan(m, code_text(counter=1))
    assert m.online and isinstance(m.handle(pos.CodeVerified(True, code_facts()))[0], pos.ClaimCode)


def test_refusals_journal_nothing():
    lost = DenyView(False, protocol.DENY_REASON_LOST, None, None, 0)
    frozen = DenyView(False, None, None, protocol.DENY_REASON_FROZEN, 0)
    reissued = DenyView(False, None, None, None, 2)
    cases = [
        (code_facts(deny=lost), messages.CARD_LOST),
        (code_facts(deny=frozen), messages.ACCOUNT_BLOCKED),
        (code_facts(deny=reissued), messages.PAYCODE_CERT_EXPIRED),
        (code_facts(credential=protocol.DENY_REASON_REVOKED), messages.PAYCODE_REVOKED),
        (code_facts(certificate=protocol.DENY_REASON_REVOKED), messages.PAYCODE_REVOKED),
        (code_facts(main=100), messages.INSUFFICIENT_BALANCE),
    ]
    for facts, expected in cases:
        m = machine()
        scan(m, code_text())
        assert refused_with(m.handle(pos.CodeVerified(True, facts))) == expected
        assert m.state == pos.WAIT_CARD and m.amount_fen == 1200
    m = machine()
    scan(m, code_text())
    assert refused_with(m.handle(pos.CodeVerified(False, None))) == messages.PAYCODE_FOREIGN
    for result, expected in ((pos.CLAIM_USED, messages.PAYCODE_USED), (pos.CLAIM_REVOKED, messages.PAYCODE_REVOKED),
                             (pos.CLAIM_BLOCKED, messages.ACCOUNT_BLOCKED), ("nonsense", messages.PAYCODE_FOREIGN)):
        m = machine()
        scan(m, code_text())
        m.handle(pos.CodeVerified(True, code_facts()))
        assert refused_with(m.handle(pos.CodeClaimed(result))) == expected


def test_bad_scans_are_refused_before_any_check():
    m = machine()
    assert refused_with(scan(m, "garbage")) == messages.PAYCODE_INVALID
    assert refused_with(m.handle(pos.CodeScanned(code_text(step=STEP - 10)))) == messages.PAYCODE_EXPIRED
    assert refused_with(m.handle(pos.CodeScanned(code_text(step=STEP + 10)))) == messages.PAYCODE_FUTURE
    assert refused_with(m.handle(pos.CodeScanned(code_text(expiry_min=STEP - 5)))) == messages.PAYCODE_CERT_EXPIRED
    m = machine()
    actions = m.handle(pos.CodeScanned(code_text()))                  # no amount keyed: nothing to pay
    assert shown(actions) == [messages.ENTER_AMOUNT] and m.state == pos.IDLE


def test_a_restarted_terminal_remembers_the_codes_it_journaled():
    m = machine()
    m.remember_code((77, STEP, 0), NOW_MS)
    assert refused_with(scan(m, code_text())) == messages.PAYCODE_USED


def test_a_second_scan_while_one_is_checked_is_dropped():
    m = machine()
    scan(m, code_text())
    assert m.handle(pos.CodeScanned(code_text(counter=1))) == []
    assert m.state == pos.VERIFYING
