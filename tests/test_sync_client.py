"""A POS terminal against the real sync server (server subprocess) through a relay we can cut.

The user-visible promise: every tap the terminal showed as paid reaches the server's ledger exactly
once, whether it was made online or offline, whatever answers got lost on the way.
"""
import io
import json
import os
import sqlite3
import stat
import threading
import time

import cbor2
import httpx
import pytest

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.apps.store import TerminalStore
from firmware.apps.sync_client import SharedClock, SyncClient
from firmware.core import card_layout, protocol, sam
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from simulators.netcut import Relay
from sync_server import db as dbmod, registry
from field_cards import counter_on_image
from server_process import running_server

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

UIDS = (bytes.fromhex("04a1b2c3"), bytes.fromhex("04d4e5f6"))


def issue(server, conn, uid, name, staff_number, directory, recharge_fen):
    _person, account_id = registry.add_person(conn, name, card_layout.HOLDER_STUDENT, staff_number=staff_number)
    identity, holder = registry.issue_card_record(conn, account_id, uid)
    registry.recharge(conn, account_id, recharge_fen)
    issuer = sam.SoftwareSAM(sam.site_purpose_keys(server.master_key(), include_issuer=True))
    reader = open_reader("sim:")
    card = ClassicCard(uid)
    reader.field.place(card)
    card_io.issue_card(reader, issuer, reader.poll(100), identity, holder)
    reader.field.pull()
    path = str(directory / ("%s.card" % uid.hex()))
    card.save(path)
    return identity, path


@pytest.fixture
def campus(tmp_path):
    with running_server(tmp_path / "server") as server:
        conn = server.connect()
        merchant_id = registry.add_merchant(conn, "第一食堂", "Canteen 1", 1)
        terminal_id = registry.register_terminal(conn, merchant_id)
        port = int(server.url.rsplit(":", 1)[1])
        relay = Relay("127.0.0.1", port)
        document = registry.provisioning_document(conn, server.master_key(), terminal_id, relay.url)
        people = [issue(server, conn, uid, name, staff, tmp_path, 20000)
                  for uid, name, staff in zip(UIDS, ("张小明", "李华"), ("20240001", "20240002"))]
        out = io.StringIO()
        terminal = PosTerminal(document, str(tmp_path / "terminal"), open_reader("sim:"), out=out)
        try:
            yield server, conn, relay, terminal, people, out
        finally:
            terminal.close()
            relay.close()
            conn.close()


def decisions(out):
    return [json.loads(line) for line in out.getvalue().splitlines() if json.loads(line)["type"] == "decision"]


def server_records(conn, terminal_id):
    return conn.execute("SELECT seq, amount_fen, account_id FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                        (terminal_id,)).fetchall()


def main_balance(conn, account_id):
    return registry.balances_of(conn, account_id)["main"]


def test_online_and_offline_taps_reach_the_ledger_exactly_once(campus):
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), (bob, bob_card) = people
    assert terminal.sync_now().online
    terminal.run_line({"amount_fen": 1200, "card": alice_card})
    assert decisions(out)[-1]["accepted"] and decisions(out)[-1]["balance_after_fen"] == 18800
    assert terminal.sync_now().acked_seq == 1

    relay.cut()
    assert not terminal.sync_now().online
    for amount_fen in (500, 600, 700):
        terminal.run_line({"amount_fen": amount_fen, "card": bob_card})
    terminal.run_line({"amount_fen": 800, "card": alice_card})
    offline = decisions(out)[1:]
    assert [d["accepted"] for d in offline] == [True, True, True, True]
    assert server_records(conn, terminal.terminal_id) == [(1, 1200, alice.account_id)]

    relay.restore()
    assert terminal.drain(60) == 0
    stored = server_records(conn, terminal.terminal_id)
    assert [seq for seq, _, _ in stored] == [1, 2, 3, 4, 5]
    assert main_balance(conn, alice.account_id) == 20000 - 1200 - 800
    assert main_balance(conn, bob.account_id) == 20000 - 500 - 600 - 700
    flags = [row[0] for row in conn.execute("SELECT flags FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                                            (terminal.terminal_id,))]
    assert flags[0] & 1 == 0 and all(flag & 1 for flag in flags[1:])      # FLAG_OFFLINE on offline taps
    # Syncing again and again stores nothing twice.
    for _ in range(3):
        terminal.sync_now()
    assert len(server_records(conn, terminal.terminal_id)) == 5


def test_lost_answer_resends_and_the_server_keeps_one_copy(campus, monkeypatch):
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _ = people
    terminal.sync_now()
    terminal.run_line({"amount_fen": 300, "card": alice_card})
    terminal.run_line({"amount_fen": 400, "card": alice_card})
    store = terminal.sync_client.store
    real_apply = store.apply_answer
    calls = []

    def lose_answer(*args, **kwargs):
        calls.append(1)
        raise sqlite3.OperationalError("disk I/O error (simulated): answer lost")
    monkeypatch.setattr(store, "apply_answer", lose_answer)
    result = terminal.sync_now()
    assert calls and result.error
    assert len(server_records(conn, terminal.terminal_id)) == 2     # the server stored them ...
    assert terminal.store.unacked_count() == 2                    # ... the terminal does not know
    monkeypatch.setattr(store, "apply_answer", real_apply)
    assert terminal.drain(60) == 0
    assert len(server_records(conn, terminal.terminal_id)) == 2
    assert main_balance(conn, alice.account_id) == 20000 - 700


def test_loss_report_reaches_the_terminal_and_refuses_the_card(campus):
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _ = people
    terminal.sync_now()
    terminal.run_line({"amount_fen": 100, "card": alice_card})
    registry.report_loss(conn, alice.card_number)
    terminal.sync_now()
    terminal.run_line({"amount_fen": 200, "card": alice_card})
    assert [(d["accepted"], d["reason"]) for d in decisions(out)] == [(True, "accepted"), (False, "card_lost")]
    terminal.drain(60)
    assert [amount for _, amount, _ in server_records(conn, terminal.terminal_id)] == [100]


def test_offline_cap_from_server_config(campus):
    server, conn, relay, terminal, people, out = campus
    _, (bob, bob_card) = people
    terminal.sync_now()
    cap_count = terminal.machine.config["offline_cap_count"]
    assert cap_count == dbmod.setting(conn, "offline_cap_count")       # taken from the server's config
    relay.cut()
    terminal.sync_now()
    for index in range(cap_count + 1):
        terminal.run_line({"amount_fen": 100 + index, "card": bob_card})
    outcome = [(d["accepted"], d["reason"]) for d in decisions(out)]
    assert outcome[:cap_count] == [(True, "accepted")] * cap_count
    assert outcome[cap_count] == (False, "offline_cap_reached")
    relay.restore()
    assert terminal.drain(60) == 0
    assert len(server_records(conn, terminal.terminal_id)) == cap_count


def test_pin_over_the_limit_is_checked_online(campus):
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _ = people
    terminal.sync_now()
    single_limit_fen = conn.execute("SELECT single_limit_fen FROM accounts WHERE id = ?",
                                    (alice.account_id,)).fetchone()[0]
    amount_fen = single_limit_fen + 100
    terminal.run_line({"amount_fen": amount_fen, "card": alice_card, "pin": "000000"})
    assert [(d["accepted"], d["reason"]) for d in decisions(out)] == [(False, "cancelled")]
    shown = [json.loads(line) for line in out.getvalue().splitlines()]
    wrong = [line for line in shown if line.get("code") == "pin_wrong_tries"]
    assert wrong and "还可尝试4次" in wrong[0]["text"], shown       # the server's count, on the screen
    # The initial PIN is the last six characters of the student number.
    terminal.run_line({"amount_fen": amount_fen, "card": alice_card, "pin": "240001"})
    last = decisions(out)[-1]
    assert last["accepted"] and last["amount_fen"] == amount_fen


@pytest.mark.stores("sqlite")   # the terminal's side: the store adds nothing
def test_background_sync_thread_uploads_while_taps_go_on(tmp_path):
    with running_server(tmp_path / "server") as server:
        conn = server.connect()
        merchant_id = registry.add_merchant(conn, "第二食堂", "Canteen 2", 1)
        terminal_id = registry.register_terminal(conn, merchant_id)
        relay = Relay("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
        document = registry.provisioning_document(conn, server.master_key(), terminal_id, relay.url)
        (alice, card_path), = [issue(server, conn, UIDS[0], "王芳", "20240009", tmp_path, 50000)]
        out = io.StringIO()
        terminal = PosTerminal(document, str(tmp_path / "terminal"), open_reader("sim:"), out=out,
                               sync_interval_ms=100)
        try:
            terminal.start_sync()
            accepted_fen = 0
            for index in range(12):
                if index == 4:
                    relay.cut()
                if index == 8:
                    relay.restore()
                terminal.run_line({"amount_fen": 100 + index, "card": card_path})
                last = decisions(out)[-1]
                accepted_fen += last["amount_fen"] if last["accepted"] else 0
            assert terminal.drain(60) == 0
            stored = server_records(conn, terminal_id)
            accepted = [d for d in decisions(out) if d["accepted"]]
            assert [seq for seq, _, _ in stored] == [d["seq"] for d in accepted]
            assert main_balance(conn, alice.account_id) == 50000 - accepted_fen
        finally:
            terminal.close()
            relay.close()
            conn.close()


def test_revoked_terminal_refuses_every_tap(campus):
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _ = people
    terminal.sync_now()
    registry.revoke_terminal(conn, terminal.terminal_id)
    result = terminal.sync_now()
    assert not result.online and "terminal_revoked" in result.error
    terminal.run_line({"amount_fen": 100, "card": alice_card})
    assert [(d["accepted"], d["reason"]) for d in decisions(out)] == [(False, "terminal_revoked")]
    assert terminal.store.last_seq() == 0


WAIT_DEADLINE_S = 60      # how long to wait for the sync thread to get somewhere; never a performance bound


class AnswerMangler(httpx.BaseTransport):
    """Real HTTP to the real server; while `mangle` is set, each 200 answer is changed by it and
    signed again with the terminal's key - a server bug, which the answer MAC cannot catch."""

    def __init__(self, sam):
        self._inner = httpx.HTTPTransport()
        self._sam = sam
        self.mangle = None
        self.answers = 0

    def handle_request(self, request):
        response = self._inner.handle_request(request)
        response.read()
        self.answers += 1
        if self.mangle is None or response.status_code != 200:
            return response
        answer = cbor2.loads(response.content)
        self.mangle(answer)
        body = cbor2.dumps(answer)
        signing = protocol.answer_signing_string(request.url.path, int(request.headers[protocol.HEADER_TERMINAL]),
                                                 int(request.headers[protocol.HEADER_COUNTER]), 200, body)
        return httpx.Response(200, content=body, headers={"Content-Type": "application/cbor",
                                                          protocol.HEADER_ANSWER_MAC: self._sam.sign_request(signing).hex()})

    def close(self):
        self._inner.close()


def wait_until(condition, what):
    deadline = time.monotonic() + WAIT_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.stores("sqlite")   # the terminal's side: the store adds nothing
def test_malformed_answers_never_stop_the_sync_thread(tmp_path):
    """However broken an answer, the sync thread keeps trying, the terminal counts as offline while
    answers cannot be applied, and it is back online once they can."""
    with running_server(tmp_path / "server") as server:
        terminal = server.add_terminal()
        terminal.close()
        store = TerminalStore(str(tmp_path / "terminal.db"))
        transport = AnswerMangler(terminal.sam)
        client = SyncClient(store, terminal.sam, terminal.terminal_id, server.url, SharedClock(store),
                            transport=transport)
        stop = threading.Event()
        thread = threading.Thread(target=client.run, args=(stop, 50))
        try:
            assert client.sync_once().online
            thread.start()
            for mangle in (lambda answer: answer.update(deny=[["card", 1, True, 1]]),
                           lambda answer: answer.update(commands=[5]),
                           lambda answer: answer.update(config=[1]),
                           lambda answer: answer["balances"].update(rows=7)):
                transport.mangle = mangle
                seen = transport.answers
                wait_until(lambda seen=seen: transport.answers >= seen + 2 and not client.online,
                           "the sync thread stopped trying after a malformed answer")
                assert "malformed" in client.last_error
                transport.mangle = None
                wait_until(lambda: client.online, "terminal did not come back online")
            assert thread.is_alive()
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(timeout=30)
            client.close()
            transport.close()
            store.close()


def test_replaced_terminal_storage_waits_for_its_first_sync_then_numbers_after_the_server(campus, tmp_path):
    """A terminal whose storage was replaced (new SD card, same provisioning) must not number its
    taps from 1 again: the server holds those seqs and would drop the new taps as copies."""
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _ = people
    assert terminal.sync_now().online
    for amount_fen in (300, 400):
        terminal.run_line({"amount_fen": amount_fen, "card": alice_card})
    assert terminal.drain(60) == 0
    relay.cut()
    replaced_out = io.StringIO()
    replaced = PosTerminal(terminal.provisioning, str(tmp_path / "replaced"), open_reader("sim:"), out=replaced_out)
    try:
        assert not replaced.sync_now().online
        counted_before = counter_on_image(alice_card)
        replaced.run_line({"amount_fen": 500, "card": alice_card})
        assert [(d["accepted"], d["reason"]) for d in decisions(replaced_out)] == [(False, "terminal_not_synced")]
        shown = [json.loads(line) for line in replaced_out.getvalue().splitlines()]
        assert "终端未完成首次同步（应付5.00元）" in [line.get("text") for line in shown if line["type"] == "show"]
        assert replaced.store.last_seq() == 0 and counter_on_image(alice_card) == counted_before
        relay.restore()
        assert replaced.sync_now().online            # its request counter starts above the old store's
        replaced.run_line({"amount_fen": 500, "card": alice_card})
        last = decisions(replaced_out)[-1]
        assert last["accepted"] and last["seq"] == 3
        assert replaced.drain(60) == 0
        assert server_records(conn, terminal.terminal_id) == [(1, 300, alice.account_id), (2, 400, alice.account_id),
                                                             (3, 500, alice.account_id)]
        assert main_balance(conn, alice.account_id) == 20000 - 1200
    finally:
        replaced.close()


@pytest.mark.stores("sqlite")   # the terminal's side: the store adds nothing
def test_new_store_on_a_board_clock_in_1970_catches_up_with_the_servers_counter_in_one_sync(tmp_path):
    with running_server(tmp_path / "server") as server:
        old = server.add_terminal()
        for _ in range(3):
            old.sync()                                  # the old store's requests, counters 1..3
        old.close()
        store = TerminalStore(str(tmp_path / "terminal.db"))
        client = SyncClient(store, old.sam, old.terminal_id, server.url, SharedClock(store, raw_ms=lambda: 0))
        try:
            assert client.sync_once().online          # refused as a replay, caught up, sent again at once
            assert not store.needs_first_sync() and store.next_request_counter() > 4
        finally:
            client.close()
            store.close()


def test_a_record_the_server_refuses_does_not_stop_the_deny_list(campus):
    """One record the server will not take (here: another merchant's) must not cut the terminal off
    from loss reports: the deny list keeps coming, the record stays, the refusal is reported."""
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _ = people
    assert terminal.sync_now().online
    bad = {"terminal_id": terminal.terminal_id, "card_number": alice.card_number, "account_id": alice.account_id,
           "card_generation": 1, "category": 1, "tap_counter": 99, "amount_fen": 100,
           "merchant_id": terminal.provisioning["merchant_id"] + 1000, "flags": 0}
    terminal.store.append_purchase(bad, terminal.clock.peek_ms())
    refused = terminal.sync_now()
    assert not refused.online and "wrong_merchant" in refused.error
    registry.report_loss(conn, alice.card_number)
    terminal.sync_now()
    terminal.run_line({"amount_fen": 200, "card": alice_card})
    assert [(d["accepted"], d["reason"]) for d in decisions(out)] == [(False, "card_lost")]
    assert terminal.store.unacked_count() == 1                      # the refused record is kept
    assert server_records(conn, terminal.terminal_id) == []
    assert "wrong_merchant" in terminal.sync_client.upload_refused       # sent in health, logged
    shown = [json.loads(line) for line in out.getvalue().splitlines()]
    assert any("wrong_merchant" in (line.get("error") or "") for line in shown if line["type"] == "sync")


def test_new_server_configuration_reaches_the_till_through_the_sync_thread(tmp_path):
    with running_server(tmp_path / "server") as server:
        conn = server.connect()
        terminal = None
        try:
            merchant_id = registry.add_merchant(conn, "第四食堂", "Canteen 4", 1)
            terminal_id = registry.register_terminal(conn, merchant_id)
            document = registry.provisioning_document(conn, server.master_key(), terminal_id, server.url)
            terminal = PosTerminal(document, str(tmp_path / "terminal"), open_reader("sim:"), out=io.StringIO(),
                                   sync_interval_ms=100)
            assert terminal.sync_now().online
            cap_count = terminal.machine.config["offline_cap_count"]
            with dbmod.transaction(conn):
                conn.execute("UPDATE settings SET value = ? WHERE name = 'offline_cap_count'", (cap_count + 7,))
                conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'config_version'")
            terminal.start_sync()
            wait_until(lambda: terminal.store.config().get("offline_cap_count") == cap_count + 7,
                       "the sync thread did not bring the new configuration")
            terminal.run_line({"cancel": True})
            assert terminal.machine.config["offline_cap_count"] == cap_count + 7
        finally:
            if terminal is not None:
                terminal.close()
            conn.close()


class _Impostor:
    """Something on the path that answers like a sync server but holds no terminal key."""

    def __init__(self, status, answer):
        import http.server
        body = cbor2.dumps(answer)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(status)
                self.send_header("Content-Type", "application/cbor")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Ykt-Answer-Mac", "00" * 32)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.parametrize("status, answer", [
    (200, {"acked_seq": 2, "server_ms": 0, "commands": [{"op": "set_time", "server_ms": 4102444800000}],
           "deny": {"version": 99, "entries": [], "more": False},
           "balances": {"version": 99, "rows": [[1, "main", 10 ** 9, 0, 10 ** 6, 10 ** 7]], "more": False},
           "config": None}),
    (403, {"error": "terminal_revoked", "message": "revoked"}),
])
@pytest.mark.stores("sqlite")   # the terminal's side: the store adds nothing
def test_answers_without_the_servers_mac_change_nothing(campus, status, answer):
    """A forged acknowledgement would prune unsent taps, a forged 403 would disable the terminal."""
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _ = people
    terminal.sync_now()
    relay.cut()
    terminal.run_line({"amount_fen": 300, "card": alice_card})
    terminal.run_line({"amount_fen": 400, "card": alice_card})
    store = terminal.sync_client.store
    before = (store.unacked_count(), store.versions(), store.clock().state(), store._meta("terminal_revoked"))
    impostor = _Impostor(status, answer)
    forged = SyncClient(store, terminal.sync_client.sam, terminal.terminal_id, impostor.url, terminal.clock)
    try:
        result = forged.sync_once()
    finally:
        forged.close()
        impostor.close()
    assert not result.online and "not authenticated" in result.error
    assert (store.unacked_count(), store.versions(), store.clock().state(), store._meta("terminal_revoked")) == before
    relay.restore()
    assert terminal.drain(60) == 0                          # the real server still takes both taps
    assert len(server_records(conn, terminal.terminal_id)) == 2


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.stores("sqlite")   # the terminal's side: the store adds nothing
def test_terminal_data_directory_is_owner_only(campus, tmp_path, capsys):
    """The journal holds card numbers and accounts: the directory 0700 and the journal, its WAL and
    SHM 0600 after taps and a sync; a directory an older version left loose is tightened, with a note."""
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _bob = people
    assert terminal.sync_now().online
    terminal.run_line({"amount_fen": 300, "card": alice_card})
    assert decisions(out)[-1]["accepted"]
    assert terminal.sync_now().acked_seq == 1
    data_dir = tmp_path / "terminal"
    assert _mode(data_dir) == 0o700
    journal = [data_dir / name for name in ("terminal.db", "terminal.db-wal", "terminal.db-shm")]
    assert {path.name: _mode(path) for path in journal} == {path.name: 0o600 for path in journal}

    old = tmp_path / "older"
    (old / "cards").mkdir(parents=True)
    (old / "cards" / "left.card").write_bytes(b"\x00" * 16)
    for path, mode in ((old, 0o755), (old / "cards", 0o755), (old / "cards" / "left.card", 0o644)):
        os.chmod(path, mode)
    capsys.readouterr()
    again = PosTerminal(terminal.provisioning, str(old), open_reader("sim:"), out=io.StringIO(), sync=False)
    again.close()
    assert "terminal data directory made owner-only (3 entries)" in capsys.readouterr().err
    assert [_mode(path) for path in (old, old / "cards", old / "cards" / "left.card", old / "terminal.db")] == \
        [0o700, 0o700, 0o600, 0o600]


def test_a_menu_set_on_the_admin_console_reaches_the_till_at_its_next_sync(campus):
    """The admin console (terminal_settings) sets this till's menu and sync interval: the next sync
    brings them, the keypad's F-keys follow, and a dish order is charged at the new price."""
    from sync_server import terminal_settings
    server, conn, relay, terminal, people, out = campus
    (alice, alice_card), _bob = people
    assert terminal.sync_now().online
    terminal_settings.set_settings(conn, terminal.terminal_id, {"dishes": {"noodles": ["牛肉面", 1350]},
                                                                "sync_interval_ms": 7000}, "admin")
    assert terminal.keys.dish_keys == {}
    assert terminal.sync_now().online
    assert terminal.keys.dish_keys == {"f1": "noodles"} and terminal.sync_interval_ms() == 7000
    terminal.run_line({"keys": ["f1"], "card": alice_card})
    assert decisions(out)[-1]["accepted"] and decisions(out)[-1]["amount_fen"] == 1350
