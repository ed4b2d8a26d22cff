"""The POS shell paying by code against the real server (SQLite and PostgreSQL): the terminal takes the
server's pay-code keys from sync, verifies real Ed25519 signatures, claims online, journals, and the
sale reaches the ledger once. The same code again - at this terminal (replay cache, also after a
restart) or another (the server's claim) - is refused; offline, a code is journaled within its
certificate's cap through a real network cut, and bad codes of every kind are refused with their
message and nothing journaled."""
import io
import json
import urllib.parse

import pytest

from firmware.apps.pos_terminal import PosTerminal
from firmware.core import messages, paycode as codes, records
from reader_drivers.base import open_reader
from simulators.netcut import Relay
from simulators.phone_paycode import PayCodeWallet
from sync_server import registry
from test_paycode import Holder, check_ledger, main_fen


class Till:
    """A POS shell in this process behind its own network relay; the decision lines it printed."""

    def __init__(self, server, tmp_path, name):
        conn = server.connect()
        try:
            merchant = registry.add_merchant(conn, "一食堂%s" % name, "canteen %s" % name, 1)
            terminal_id = registry.register_terminal(conn, merchant)
            self.document = registry.provisioning_document(conn, server.master_key(), terminal_id, server.url)
        finally:
            conn.close()
        port = urllib.parse.urlsplit(server.url).port
        self.relay = Relay("127.0.0.1", port)
        self.data_dir = str(tmp_path / name)
        self.out = io.StringIO()
        self.terminal = self._open()

    def _open(self):
        terminal = PosTerminal(self.document, self.data_dir, open_reader("sim:"), out=self.out,
                               server_url=self.relay.url, sync_interval_ms=60000)
        terminal.sync_now()
        return terminal

    def restart(self):
        self.terminal.close()
        self.terminal = self._open()

    def pay(self, text, amount_fen=800):
        self.terminal.run_line({"amount_fen": amount_fen, "code": text})
        return [json.loads(line) for line in self.out.getvalue().splitlines()
                if json.loads(line)["type"] == "decision"][-1]

    def paycode_records(self):
        return [records.decode(bytes(row[1])) for row in self.terminal.store.journal()
                if records.decode(bytes(row[1]))["kind"] == records.KIND_PAYCODE]

    def close(self):
        self.terminal.close()
        self.relay.close()


@pytest.fixture
def tills(live_server, tmp_path):
    made = []

    def make(name):
        till = Till(live_server, tmp_path, name)
        made.append(till)
        return till
    yield make
    for till in made:
        till.close()


def test_an_online_code_is_claimed_journaled_and_booked_once(live_server, tills):
    holder = Holder(live_server)
    holder.enable()
    till, other = tills("a"), tills("b")
    text = holder.wallet.code()
    before_fen = main_fen(live_server, holder.account_id)
    decision = till.pay(text)
    assert decision["accepted"] and decision["amount_fen"] == 800
    assert decision["balance_after_fen"] == before_fen - 800
    assert till.pay(text)["reason"] == messages.PAYCODE_USED            # this terminal's replay cache
    assert other.pay(text)["reason"] == messages.PAYCODE_USED           # the server's claim
    till.restart()
    assert till.pay(text)["reason"] == messages.PAYCODE_USED            # remembered across a restart
    assert till.terminal.drain(30) == 0 and other.terminal.drain(30) == 0
    assert main_fen(live_server, holder.account_id) == before_fen - 800
    (record,) = till.paycode_records()
    assert record["card_number"] == holder.wallet.credential_id and not record["flags"] & records.FLAG_OFFLINE
    assert other.paycode_records() == []
    check_ledger(live_server)


def test_offline_codes_are_taken_within_the_certificates_cap(live_server, tills):
    holder = Holder(live_server, main_fen=20000)
    holder.enable()
    till = tills("offline")
    till.relay.cut()
    till.terminal.sync_now()                                            # learns it is offline
    accepted = []
    for _ in range(5):      # the certificate's cap (5000 fen) binds before the terminal's (5 taps, 10000 fen)
        decision = till.pay(holder.wallet.code(), 1200)
        holder.wallet.used()
        accepted.append(decision["accepted"])
        if not decision["accepted"]:
            assert decision["reason"] == messages.PAYCODE_OFFLINE_CAP
    assert accepted == [True] * 4 + [False]
    assert all(record["flags"] & records.FLAG_OFFLINE for record in till.paycode_records())
    till.relay.restore()
    assert till.terminal.drain(30) == 0
    assert main_fen(live_server, holder.account_id) == 20000 - 4 * 1200
    check_ledger(live_server)


def test_bad_codes_are_refused_with_their_message_and_nothing_journaled(live_server, tills, tmp_path):
    holder = Holder(live_server)
    holder.enable()
    till = tills("bad")
    good = holder.wallet.code()
    flipped = good[:200] + ("0" if good[200] != "0" else "1") + good[201:]
    stranger = PayCodeWallet(PayCodeWallet.create().private_key, holder.wallet.certificate,
                             holder.wallet.credential_id)        # a copied certificate, another phone's key
    now_ms = till.terminal.clock.peek_ms()
    cases = [
        ("garbage", messages.PAYCODE_INVALID),
        (good[:150], messages.PAYCODE_INVALID),
        (flipped, messages.PAYCODE_FOREIGN),
        (stranger.code(), messages.PAYCODE_FOREIGN),
        (holder.wallet.code(now_ms - 10 * codes.STEP_MS), messages.PAYCODE_EXPIRED),
        (holder.wallet.code(now_ms + 10 * codes.STEP_MS), messages.PAYCODE_FUTURE),
        ("YK1:" + "A" * 5000, messages.PAYCODE_INVALID),
    ]
    for text, reason in cases:
        decision = till.pay(text)
        assert not decision["accepted"] and decision["reason"] == reason, (text[:20], decision)
    assert till.paycode_records() == []
    lost = Holder(live_server)
    lost.enable()
    lost.phone.report_loss("147258")
    till.terminal.sync_now()
    assert till.pay(lost.wallet.code())["reason"] == messages.CARD_LOST
    stopped = Holder(live_server)
    stopped.enable()
    stopped.phone.paycode_stop(stopped.wallet.credential_id)
    till.terminal.sync_now()
    assert till.pay(stopped.wallet.code())["reason"] == messages.PAYCODE_REVOKED
    assert till.paycode_records() == []


class TillProcess:
    """`ykt terminal --scanner serial:<pty>` as a separate process, its scanner the emulator here."""

    def __init__(self, server, tmp_path, name):
        import subprocess
        import sys
        from simulators.scanner_emulator import ScannerEmulator
        conn = server.connect()
        try:
            merchant = registry.add_merchant(conn, "二食堂%s" % name, "canteen 2 %s" % name, 1)
            terminal_id = registry.register_terminal(conn, merchant)
            document = registry.provisioning_document(conn, server.master_key(), terminal_id, server.url)
        finally:
            conn.close()
        provision = tmp_path / ("%s.json" % name)
        provision.write_text(json.dumps(document))
        provision.chmod(0o600)
        self.emulator = ScannerEmulator()
        self.emulator.start()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ykt", "terminal", "--provision", str(provision), "--data-dir",
             str(tmp_path / name), "--scanner", "serial:%s" % self.emulator.path, "--decisions-only",
             "--sync-interval-ms", "500", "--script", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ready(self):
        """Wait until the till has synced once (keys, balances) and reads its script: one typed line."""
        self.process.stdin.write(json.dumps({"sync": True, "amount_fen": 1, "code": "warm-up", "tap_id": 0}) + "\n")
        self.process.stdin.flush()
        assert json.loads(self.process.stdout.readline())["reason"] == messages.PAYCODE_INVALID

    def pay_with_image(self, image_path, amount_fen, tap_id):
        """Key the amount, wait on the scanner, scan the picture: the decision line."""
        self.process.stdin.write(json.dumps({"amount_fen": amount_fen, "scan": True, "timeout_ms": 20000,
                                             "tap_id": tap_id}) + "\n")
        self.process.stdin.flush()
        self.emulator.scan_image(str(image_path))
        line = json.loads(self.process.stdout.readline())
        assert line["tap_id"] == tap_id, line
        return line

    def finish(self):
        self.process.stdin.close()
        self.process.wait(60)
        self.emulator.stop()
        return self.process.returncode


def test_a_photographed_code_pays_once_through_a_scanner_at_a_till_process(live_server, tmp_path):
    """The code as a picture (what a camera sees of the phone), through the emulated USB scanner on a
    pty, into `ykt terminal` processes: paid once; the same picture again at the same till and at
    another is refused; the sale is on the server once."""
    import segno
    holder = Holder(live_server)
    holder.enable()
    picture = tmp_path / "code.png"
    segno.make(holder.wallet.code(), error="m", mode="alphanumeric").save(str(picture), scale=6, border=4)
    first, second = TillProcess(live_server, tmp_path, "one"), TillProcess(live_server, tmp_path, "two")
    try:
        first.ready()
        second.ready()
        before_fen = main_fen(live_server, holder.account_id)
        paid = first.pay_with_image(picture, 650, 1)
        assert paid["accepted"] and paid["paid_by"] == "code" and paid["credential_id"] == holder.wallet.credential_id
        assert first.pay_with_image(picture, 650, 3)["reason"] == messages.PAYCODE_USED
        assert second.pay_with_image(picture, 650, 4)["reason"] == messages.PAYCODE_USED
    finally:
        assert first.finish() == 0 and second.finish() == 0
    spent_fen = before_fen - main_fen(live_server, holder.account_id)
    assert spent_fen == 650
    check_ledger(live_server)
