"""The sync endpoint over HTTP against the real server process: auth, bad input, exactly-once, deltas."""
import struct
import binascii
import json
import time

import cbor2
import httpx
import pytest

from firmware.core import protocol, records, sam as sam_keys, wallets as wallet_rules
from sync_server import db as dbmod, registry
from sync_server.app import MAX_REQUEST_BYTES, create_app
from sync_server.cli import init_data_dir
from server_process import ServerHandle, SyncRefused, decode_answer


def _person(conn, balance_fen, staff_number, id_number=None):
    _person_id, account_id = registry.add_person(conn, "李四", 2, staff_number=staff_number, id_number=id_number,
                                                 set_initial_pin=False)
    identity, _name = registry.issue_card_record(conn, account_id, staff_number.encode()[-4:].rjust(4, b"\x01"))
    if balance_fen:
        registry.recharge(conn, account_id, balance_fen)
    return account_id, identity.card_number


def _stored(conn, terminal_id):
    return [row[0] for row in conn.execute("SELECT seq FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                                           (terminal_id,))]


def _record_with_crc(fields):
    body = struct.pack(">BBHIIQIIBBIII6s", *fields)
    return body + struct.pack(">I", binascii.crc32(body) & 0xFFFFFFFF)


def _bad_requests():
    """name -> set-up function(server, terminal, account, card) returning a function that sends one bad
    request (the database snapshot is taken between the two)."""
    def bad_mac(server, terminal, account, card):
        wrong = sam_keys.SoftwareSAM({sam_keys.TERMINAL: b"\x00" * 32})
        return lambda: terminal.post(terminal.body([terminal.record(account, card, 100)]), mac_sam=wrong)

    def unknown_terminal(server, terminal, account, card):
        terminal.terminal_id += 1000
        return lambda: terminal.post(terminal.body([]))

    def revoked_terminal(server, terminal, account, card):
        conn = server.connect()
        registry.revoke_terminal(conn, terminal.terminal_id)
        conn.close()
        return lambda: terminal.post(terminal.body([terminal.record(account, card, 100)]))

    def replayed_counter(server, terminal, account, card):
        body = terminal.body([terminal.record(account, card, 100)])
        decode_answer(terminal.post(body, counter=50))
        return lambda: terminal.post(body, counter=50)

    def old_counter(server, terminal, account, card):
        decode_answer(terminal.post(terminal.body([]), counter=50))
        return lambda: terminal.post(terminal.body([terminal.record(account, card, 100)]), counter=49)

    def malformed_cbor(server, terminal, account, card):
        return lambda: terminal.post(b"\xbf\x61garbage")

    def not_a_map(server, terminal, account, card):
        return lambda: terminal.post(cbor2.dumps([1, 2, 3]))

    def bad_crc(server, terminal, account, card):
        good = terminal.record(account, card, 100)
        broken = good[:-1] + bytes([good[-1] ^ 1])
        return lambda: terminal.post(terminal.body([terminal.record(account, card, 100), broken]))

    def zero_amount(server, terminal, account, card):
        raw = _record_with_crc((1, 1, 0, terminal.terminal_id, 1, 1, card, account, 1, 1, 1, 0,
                                terminal.merchant_id, bytes(6)))
        return lambda: terminal.post(terminal.body([raw]))

    def huge_amount(server, terminal, account, card):
        raw = _record_with_crc((1, 1, 0, terminal.terminal_id, 1, 1, card, account, 1, 1, 1,
                                records.MAX_AMOUNT_FEN + 1, terminal.merchant_id, bytes(6)))
        return lambda: terminal.post(terminal.body([raw]))

    def huge_time(server, terminal, account, card):        # 64-bit time no SQLite INTEGER holds
        return lambda: terminal.post(terminal.body([terminal.record(account, card, 100, time_ms=2 ** 64 - 1)]))

    def time_ahead_of_clock(server, terminal, account, card):   # a tap weeks after the terminal's own "now"
        now_ms = int(time.time() * 1000)
        raw = terminal.record(account, card, 100, time_ms=now_ms + 30 * 86400 * 1000)
        return lambda: terminal.post(terminal.body([raw], clock_ms=now_ms))

    def time_before_epoch(server, terminal, account, card):    # corrected by a clock far in the future
        raw = terminal.record(account, card, 100, time_ms=1000)
        return lambda: terminal.post(terminal.body([raw], clock_ms=2 ** 62))

    def other_category(server, terminal, account, card):       # a canteen terminal booking electricity
        conn = server.connect()
        registry.recharge(conn, account, 3000, wallet=protocol.WALLET_LEGACY)
        conn.close()
        terminal.category = wallet_rules.CATEGORY_ELECTRICITY
        try:
            raw = terminal.record(account, card, 100)
        finally:
            terminal.category = wallet_rules.CATEGORY_CANTEEN
        return lambda: terminal.post(terminal.body([raw]))

    def reflashed_journal(server, terminal, account, card):    # same id, journal restarted at seq 1
        decode_answer(terminal.post(terminal.body([terminal.record(account, card, 100, seq=seq, tap_counter=seq)
                                                   for seq in (1, 2)])))
        return lambda: terminal.post(terminal.body([terminal.record(account, card, 250, seq=1, tap_counter=3)]))

    def rewritten_above_ack(server, terminal, account, card):  # a stored seq beyond a hole, other bytes
        decode_answer(terminal.post(terminal.body([terminal.record(account, card, 100, seq=5)])))
        return lambda: terminal.post(terminal.body([terminal.record(account, card, 250, seq=seq, tap_counter=seq)
                                                    for seq in (1, 5)]))

    def other_terminal(server, terminal, account, card):
        terminal.terminal_id += 1
        try:
            raw = terminal.record(account, card, 100, seq=1)
        finally:
            terminal.terminal_id -= 1
        return lambda: terminal.post(terminal.body([raw]))

    def oversized_batch(server, terminal, account, card):
        batch = [terminal.record(account, card, 1, seq=seq) for seq in range(1, protocol.MAX_BATCH_RECORDS + 2)]
        return lambda: terminal.post(terminal.body(batch))

    def oversized_body(server, terminal, account, card):
        return lambda: terminal.post(terminal.body([], padding=b"x" * protocol.MAX_BODY_BYTES))

    return {name: function for name, function in locals().items() if callable(function)}


BAD = _bad_requests()
EXPECTED = {
    "bad_mac": (401, "bad_mac"), "unknown_terminal": (401, "unknown_terminal"),
    "revoked_terminal": (403, "terminal_revoked"), "replayed_counter": (409, "replayed_counter"),
    "old_counter": (409, "replayed_counter"), "malformed_cbor": (400, "malformed_cbor"),
    "not_a_map": (400, "bad_request"), "bad_crc": (422, "bad_record"), "zero_amount": (422, "bad_record"),
    "huge_amount": (422, "bad_record"), "huge_time": (422, "bad_record"),
    "time_ahead_of_clock": (422, "bad_record"), "time_before_epoch": (422, "bad_record"),
    "reflashed_journal": (409, "journal_mismatch"), "rewritten_above_ack": (409, "journal_mismatch"),
    "other_terminal": (422, "wrong_terminal"), "other_category": (422, "wrong_category"),
    "oversized_batch": (413, "batch_too_large"), "oversized_body": (413, "body_too_large"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_is_refused_clearly_and_changes_nothing(live_server, snapshot, case):
    conn = live_server.connect()
    account, card = _person(conn, 5000, "BAD-%s" % case)
    terminal = live_server.add_terminal()
    send = BAD[case](live_server, terminal, account, card)
    before = snapshot(conn)
    balance_before = registry.balances_of(conn, account)
    response = send()
    status, error = EXPECTED[case]
    assert response.status_code == status, response.content
    answer = cbor2.loads(response.content)
    assert answer["error"] == error
    assert " / " in answer["message"]          # Chinese first, then English
    assert snapshot(conn) == before
    assert registry.balances_of(conn, account) == balance_before


def test_duplicate_reordered_partial_and_replayed_uploads_store_each_record_once(live_server):
    conn = live_server.connect()
    account, card = _person(conn, 100000, "DUP-1")
    terminal = live_server.add_terminal()
    batch = [terminal.record(account, card, 100 + seq, seq=seq, tap_counter=seq) for seq in range(1, 21)]

    answer = terminal.sync(batch[10:])                     # later half first: a hole at 1..10
    assert answer["acked_seq"] == 0
    assert {"op": "resend", "from_seq": 1, "to_seq": 10} in answer["commands"]

    answer = terminal.sync(batch[:5])                      # part of the hole
    assert answer["acked_seq"] == 5
    assert {"op": "resend", "from_seq": 6, "to_seq": 10} in answer["commands"]

    answer = terminal.sync(list(reversed(batch[:10])) + batch[:3])   # reordered, with duplicates
    assert answer["acked_seq"] == 20
    assert not [c for c in answer["commands"] if c["op"] == "resend"]

    answer = terminal.sync(batch)                          # the whole thing replayed (new counter)
    assert answer["acked_seq"] == 20

    assert _stored(conn, terminal.terminal_id) == list(range(1, 21))
    spent = sum(100 + seq for seq in range(1, 21))
    assert registry.balances_of(conn, account)["main"] == 100000 - spent
    purchases = conn.execute("SELECT count(*) FROM transfers WHERE kind = 'purchase' AND reference LIKE ?",
                             ("%d/%%" % terminal.terminal_id,)).fetchone()[0]
    assert purchases == 20


def test_recharge_then_purchase_and_negative_account_blocked_until_topped_up(live_server):
    conn = live_server.connect()
    account, card = _person(conn, 0, "NEG-1")
    first = live_server.add_terminal()
    second = live_server.add_terminal()
    registry.recharge(conn, account, 1000)
    answer = first.sync([first.record(account, card, 700, tap_counter=1)])
    row = [r for r in answer["balances"]["rows"] if r[0] == account and r[1] == "main"]
    assert row and row[0][2] == 300 and row[0][3] == 700

    # the same card spent offline at another terminal: the account goes negative and is denied
    answer = second.sync([second.record(account, card, 500, tap_counter=2)], deny_version=0)
    assert registry.balances_of(conn, account)["main"] == -200
    assert [protocol.DENY_ACCOUNT, account, True, 4] in answer["deny"]["entries"]
    deny_version = answer["deny"]["version"]

    registry.recharge(conn, account, 200)
    answer = first.sync([], deny_version=deny_version)
    assert answer["deny"]["entries"] == [[protocol.DENY_ACCOUNT, account, False, 6]]
    assert registry.balances_of(conn, account)["main"] == 0


def test_deny_and_balance_deltas_carry_only_what_changed(live_server):
    conn = live_server.connect()
    account, card = _person(conn, 3000, "DELTA-1")
    other, _other_card = _person(conn, 3000, "DELTA-2")
    terminal = live_server.add_terminal()
    versions = {"deny_version": 0, "balance_version": 0}
    while True:                                            # catch up page by page
        answer = terminal.sync(**versions)
        versions = {"deny_version": answer["deny"]["version"], "balance_version": answer["balances"]["version"]}
        if not answer["deny"]["more"] and not answer["balances"]["more"]:
            break
    answer = terminal.sync(**versions)
    assert answer["deny"]["entries"] == [] and answer["balances"]["rows"] == []

    registry.report_loss(conn, card)
    registry.recharge(conn, other, 150)
    answer = terminal.sync(**versions)
    assert answer["deny"]["entries"] == [[protocol.DENY_CARD, protocol.card_deny_ref(card, 1), True, 1]]
    rows = answer["balances"]["rows"]
    assert {r[0] for r in rows} == {other}
    assert [r for r in rows if r[1] == "main"][0][2] == 3150


def test_balance_pages_cover_every_account(live_server):
    conn = live_server.connect()
    people = registry.provision_population(conn, 700, seed=7, initial_balance_fen=1234)
    terminal = live_server.add_terminal()
    seen, version, pages = {}, 0, 0
    while True:
        answer = terminal.sync(balance_version=version)
        pages += 1
        assert pages < 50
        for account_id, wallet, balance_fen, *_rest in answer["balances"]["rows"]:
            seen[(account_id, wallet)] = balance_fen
        version = answer["balances"]["version"]
        if not answer["balances"]["more"]:
            break
    assert pages >= 3
    assert all(seen[(p["account_id"], "main")] == 1234 for p in people)


def test_clock_offset_corrects_record_times_and_sets_terminal_time(live_server):
    conn = live_server.connect()
    account, card = _person(conn, 5000, "CLOCK-1")
    terminal = live_server.add_terminal()
    skew_ms = -3600 * 1000                                 # terminal runs an hour behind
    now_ms = int(time.time() * 1000)
    answer = terminal.sync([terminal.record(account, card, 100, time_ms=now_ms + skew_ms - 1000)],
                           clock_ms=now_ms + skew_ms)
    assert any(c["op"] == "set_time" for c in answer["commands"])
    time_ms, corrected_ms = conn.execute("SELECT time_ms, corrected_time_ms FROM terminal_records WHERE terminal_id = ?",
                                         (terminal.terminal_id,)).fetchone()
    assert time_ms == now_ms + skew_ms - 1000
    assert abs(corrected_ms - (now_ms - 1000)) < 600 * 1000   # correct to the hour, not to the ms

    answer = terminal.sync([])
    assert not any(c["op"] == "set_time" for c in answer["commands"])


def test_tap_counter_repeats_and_gaps_are_noted(live_server):
    conn = live_server.connect()
    account, card = _person(conn, 5000, "TAPS-1")
    terminal = live_server.add_terminal()
    terminal.sync([terminal.record(account, card, 10, tap_counter=c) for c in (1, 2, 2, 5)])
    kinds = [row[0] for row in conn.execute("SELECT kind FROM counter_anomalies WHERE card_number = ? ORDER BY id",
                                            (card,))]
    assert kinds == ["repeat", "gap"]


def test_pin_check_initial_pin_wrong_pin_and_lockout(live_server):
    conn = live_server.connect()
    account, _card = _person(conn, 5000, "PIN-1", id_number="21020219950101123X")
    terminal = live_server.add_terminal()
    assert terminal.pin_check(account, "011230", 9000)["ok"] is True
    for tries_left in (4, 3, 2, 1):
        answer = terminal.pin_check(account, "999999", 9000)
        assert answer["ok"] is False and answer["code"] == "pin_wrong" and answer["tries_left"] == tries_left
    assert "还可尝试 1 次" in answer["message"]
    locked = terminal.pin_check(account, "999999", 9000)
    assert locked["code"] == "pin_locked" and 0 < locked["retry_after_s"] <= 1800 and "30 分钟后" in locked["message"]
    assert terminal.pin_check(account, "011230", 9000)["code"] == "pin_locked"   # even the right one, for now
    with pytest.raises(SyncRefused) as refused:
        decode_answer(terminal.post(b"\xff\xff"))
    assert refused.value.status == 400


class _Interleaving:
    """The server's connection, with a hook run right after a statement whose text contains a marker:
    another writer commits there, between the answer's reads (deterministic, in-process)."""

    def __init__(self, conn, hooks):
        self._conn = conn
        self._hooks = hooks          # [(marker, function)], each fired once

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def execute(self, sql, *parameters):
        cursor = self._conn.execute(sql, *parameters)
        for hook in list(self._hooks):
            if hook[0] in sql:
                self._hooks.remove(hook)
                hook[1]()
        return cursor


def test_loss_and_recharge_committed_while_the_answer_is_built_still_reach_the_terminal(tmp_path, monkeypatch):
    """The deny and balance versions sent back must match the rows sent back: a loss report or a
    recharge another worker commits in between is fetched at the next sync, never skipped."""
    data_dir = str(tmp_path / "server")
    init_data_dir(data_dir)
    app = create_app({"DATA_DIR": data_dir, "TESTING": True})
    server = ServerHandle("http://ykt.test", data_dir, None, None)
    terminal = server.add_terminal()
    terminal.http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url=server.url)
    conn = server.connect()
    account, card = _person(conn, 3000, "RACE-1")
    versions = {"deny_version": 0, "balance_version": 0}
    while True:                                            # catch up: nothing new to fetch
        answer = terminal.sync(**versions)
        versions = {"deny_version": answer["deny"]["version"], "balance_version": answer["balances"]["version"]}
        if not answer["deny"]["more"] and not answer["balances"]["more"]:
            break

    writer = server.connect()
    hooks = [("FROM deny_entries WHERE version >", lambda: registry.report_loss(writer, card)),
             ("FROM accounts WHERE balance_version >", lambda: registry.recharge(writer, account, 150))]
    real_get_db = dbmod.get_db
    monkeypatch.setattr(dbmod, "get_db", lambda: _Interleaving(real_get_db(), hooks))
    answer = terminal.sync(**versions)
    assert hooks == []                                     # both writes landed mid-answer
    monkeypatch.setattr(dbmod, "get_db", real_get_db)

    versions = {"deny_version": answer["deny"]["version"], "balance_version": answer["balances"]["version"]}
    deny, balances = list(answer["deny"]["entries"]), list(answer["balances"]["rows"])
    answer = terminal.sync(**versions)
    deny += answer["deny"]["entries"]
    balances += answer["balances"]["rows"]
    assert [protocol.DENY_CARD, protocol.card_deny_ref(card, 1), True, 1] in deny
    main_fen = [r[2] for r in balances if r[0] == account and r[1] == "main"]
    assert main_fen and main_fen[-1] == 3150
    terminal.close()
    writer.close()
    conn.close()


def test_terminal_health_is_stored_whole_with_known_keys_only(live_server):
    """However much a terminal puts in its health map, what the server keeps parses as JSON and still
    says what the nightly close reads from it (the journal head)."""
    conn = live_server.connect()
    terminal = live_server.add_terminal()
    health = {"last_seq": 7, "acked_seq": 5, "journal_unacked": 2, "firmware": "ykt-pos/0.1" + "+" * 500,
              "uptime_s": 2 ** 70, "deny_entries": True, "crash_log": ["栈" * 100] * 40}
    terminal.sync(health=health)
    stored = json.loads(conn.execute("SELECT health FROM terminals WHERE id = ?",
                                     (terminal.terminal_id,)).fetchone()[0])
    assert stored["last_seq"] == 7 and stored["acked_seq"] == 5 and stored["journal_unacked"] == 2
    assert stored["firmware"].startswith("ykt-pos/0.1") and len(stored["firmware"]) <= 200
    assert "crash_log" not in stored and "uptime_s" not in stored and "deny_entries" not in stored


@pytest.mark.parametrize("path", ["/hall/sign-in", "/portal/sign-in", "/api/v1/sign-in"])
def test_oversize_request_to_any_page_is_refused_with_a_clear_413(live_server, path):
    """The whole server caps a request at app.MAX_REQUEST_BYTES, before any form or JSON is parsed."""
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        response = client.post(path, data={"staff_number": "x" * (MAX_REQUEST_BYTES + 1), "pin": "123456"})
    assert response.status_code == 413
    text = response.json()["message"] if path.startswith("/api/") else response.text
    assert "请求体过大 / request body too large" in text



def test_every_answer_to_a_known_terminal_is_signed_for_it(live_server):
    """Answers and refusals carry a MAC the terminal checks before applying anything."""
    from firmware.core import protocol
    terminal = live_server.add_terminal()
    body = terminal.body([terminal.record(1, 100001, 100)])
    response = terminal.post(body)
    assert response.status_code in (200, 422)
    counter = terminal.counter
    mac = response.headers[protocol.HEADER_ANSWER_MAC]
    assert protocol.answer_is_authentic(terminal.sam, protocol.SYNC_PATH, terminal.terminal_id, counter,
                                        response.status_code, response.content, mac)
    assert not protocol.answer_is_authentic(terminal.sam, protocol.SYNC_PATH, terminal.terminal_id, counter + 1,
                                            response.status_code, response.content, mac)
    replay = terminal.post(body, counter=counter)          # refused (replayed counter) - and signed too
    assert replay.status_code == 409
    assert protocol.answer_is_authentic(terminal.sam, protocol.SYNC_PATH, terminal.terminal_id, counter,
                                        409, replay.content, replay.headers[protocol.HEADER_ANSWER_MAC])
