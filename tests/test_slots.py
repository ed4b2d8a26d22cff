"""A/B firmware slots and their supervisor (firmware/apps/slots.py) with real signed bundles of this
tree (tools/release.py), the real server process and the POS terminal as a process started from the
active slot:

  1. a tap is journaled offline by the running version (its network cut through a relay);
  2. an update whose terminal crashes at start is rolled back by itself, and the old version, back
     on the network, uploads the offline tap;
  3. an update that runs but never reaches the server (the network cut again) is rolled back when
     its trial time is up;
  3. a build that hangs at start (no heartbeat, no sync) is stopped with its stacks written and
     rolled back without waiting for the trial's end;
  4. an update that runs but never reaches the server (the network cut again) is rolled back when
     its trial time is up;
  5. a good update syncs on trial and is confirmed, and its heartbeat keeps it running past the hang
     limit; the server sees its version in the terminal's health, and the tap is on the server
     exactly once with the journal row untouched.

The supervisor's heartbeat watch on its own: a terminal that stops pinging is aborted and restarted
(a confirmed version is not rolled back), and pings from any other process do not keep it alive.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.apps import bundles
from firmware.apps.slots import Slots
from firmware.apps.store import TerminalStore
from field_cards import card_image
from server_process import running_server
from simulators.netcut import Relay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import release  # noqa: E402

DEADLINE_S = 90
UID = bytes.fromhex("0badc0de")


def public_hex(key):
    return key.public_key().public_bytes_raw().hex()


def broken_tree(tmp_path, tail="\nraise RuntimeError('a broken build')\n", name="pos_terminal.py"):
    """This tree, but the POS shell raises at import: a build that cannot start (or with another
    `tail` added to the shell's module)."""
    files = release.tree_files()
    broken = tmp_path / name
    with open(files["firmware/apps/pos_terminal.py"], encoding="utf-8") as handle:
        broken.write_text(handle.read() + tail, encoding="utf-8")
    return dict(files, **{"firmware/apps/pos_terminal.py": str(broken)})


HANGS_AT_START = """
import threading


def _hang_at_start(self):
    threading.Event().wait()       # a build that hangs before its first sync and heartbeat


PosTerminal.start_sync = _hang_at_start
"""
HANG_S = 8      # short for the tests; far above how long the POS takes to start and go round its loop


def until(what, predicate):
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, "never: %s" % what
        time.sleep(0.2)


def records_on_server(server, terminal_id):
    conn = server.connect()
    try:
        return conn.execute("SELECT seq FROM terminal_records WHERE terminal_id = ?", (terminal_id,)).fetchall()
    finally:
        conn.close()


def health_on_server(server, terminal_id):
    conn = server.connect()
    try:
        text = conn.execute("SELECT health FROM terminals WHERE id = ?", (terminal_id,)).fetchone()[0]
        return json.loads(text) if text else {}
    finally:
        conn.close()


@pytest.fixture
def till(tmp_path):
    """(server, relay, provisioning path, data dir, card image path, terminal id)."""
    with running_server(tmp_path / "server", database=None) as server:
        relay = Relay("127.0.0.1", urllib.parse.urlsplit(server.url).port)
        client = server.add_terminal()
        document = dict(client.document, server_url=relay.url)
        client.close()
        provision = tmp_path / "terminal.json"
        provision.write_text(json.dumps(document))
        _account_id, identity = server.add_cardholder("升级", "U0001", 5000, UID, set_initial_pin=False)
        card_path = card_image(server.master_key(), identity, "升级", UID, tmp_path / "card.card")
        try:
            yield server, relay, str(provision), str(tmp_path / "terminal"), card_path, document["terminal_id"]
        finally:
            relay.close()


def run_script(provision, data_dir, lines):
    done = subprocess.run([sys.executable, "-m", "ykt", "terminal", "--provision", provision, "--data-dir", data_dir,
                           "--script", "-", "--decisions-only", "--sync-interval-ms", "600000"],
                          input="".join(json.dumps(line) + "\n" for line in lines), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


class Supervisor:
    def __init__(self, root, data_dir, provision, hang_s=120):
        self.started_s = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "firmware.apps.slots", "--root", root, "--data-dir", data_dir,
             "--hang-s", str(hang_s), "--", "terminal", "--provision", provision, "--data-dir", data_dir, "--serve",
             "--reader", "sim:", "--sync-interval-ms", "500"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=DEADLINE_S)
        return self.process.returncode, output


def test_updates_on_trial_roll_back_by_themselves_and_lose_nothing(till, tmp_path):
    server, relay, provision, data_dir, card_path, terminal_id = till
    key = Ed25519PrivateKey.generate()
    keys = bundles.public_keys([public_hex(key)])
    dist = str(tmp_path / "dist")
    slots = Slots(str(tmp_path / "slots"))
    slots.first_install(release.build("pos", "1.2.0", key, dist), "pos", keys)

    # 1. synced once, then the network goes: a tap is journaled offline
    run_script(provision, data_dir, [{"sync": True}])
    relay.cut()
    (decision,) = run_script(provision, data_dir, [{"amount_fen": 700, "card": card_path}])
    assert decision["accepted"] and decision["seq"] == 1
    store = TerminalStore(os.path.join(data_dir, "terminal.db"))
    ((seq, journaled, acked),) = store.journal()
    store.close()
    assert (seq, acked) == (1, 0)

    # 2. a build that crashes at start: rolled back, the old version uploads the tap
    slots.install(release.build("pos", "1.3.0", key, dist, files=broken_tree(tmp_path)), keys, trial_s=60)
    relay.restore()
    supervisor = Supervisor(slots.root, data_dir, provision)
    until("the rollback", lambda: slots.state()["trial"] is None)
    until("the offline tap on the server", lambda: len(records_on_server(server, terminal_id)) == 1)
    code, output = supervisor.stop()
    assert "a broken build" in output and "回退" in output and code == 0, output
    state = slots.state()
    assert (state["active"], state["version"]) == ("a", "1.2.0")
    assert state["history"][-1]["event"] == "rolled_back" and "exited" in state["history"][-1]["reason"]

    # 3. a build that hangs at start: stopped once silent for HANG_S, its stacks in the log, rolled back
    slots.install(release.build("pos", "1.3.1", key, dist, files=broken_tree(tmp_path, HANGS_AT_START, "hung.py")),
                  keys, trial_s=300)
    supervisor = Supervisor(slots.root, data_dir, provision, hang_s=HANG_S)
    until("the hung build's rollback", lambda: slots.state()["trial"] is None)
    code, output = supervisor.stop()
    assert slots.state()["version"] == "1.2.0" and code == 0
    assert slots.state()["history"][-1]["reason"] == "stopped responding for %d s" % HANG_S
    assert "Fatal Python error: Aborted" in output and "_hang_at_start" in output, output

    # 4. an update that never reaches the server: rolled back when its trial is up
    slots.install(release.build("pos", "1.3.2", key, dist), keys, trial_s=4)
    relay.cut()
    supervisor = Supervisor(slots.root, data_dir, provision)
    until("the trial's end", lambda: slots.state()["trial"] is None)
    supervisor.stop()
    assert slots.state()["version"] == "1.2.0"
    assert slots.state()["history"][-1]["reason"] == "no sync within the trial"

    # 5. a good update that syncs: confirmed, the server sees it run, and its heartbeat keeps it up
    relay.restore()
    slots.install(release.build("pos", "1.3.3", key, dist), keys, trial_s=60)
    supervisor = Supervisor(slots.root, data_dir, provision, hang_s=HANG_S)
    until("the confirmation", lambda: slots.state()["trial"] is None)
    until("the new version's health", lambda: health_on_server(server, terminal_id).get("firmware") == "ykt-pos/1.3.3")
    until("past the hang limit", lambda: time.monotonic() - supervisor.started_s > HANG_S + 3)
    code, output = supervisor.stop()
    state = slots.state()
    assert (state["active"], state["version"]) == ("b", "1.3.3") and code == 0
    assert "无响应" not in output and output.count("启动固件") == 1, output
    assert [entry["event"] for entry in state["history"]] == ["installed", "trial", "rolled_back", "trial",
                                                              "rolled_back", "trial", "rolled_back", "trial",
                                                              "confirmed"]
    assert records_on_server(server, terminal_id) == [(1,)]                        # once
    store = TerminalStore(os.path.join(data_dir, "terminal.db"))
    ((seq_after, journaled_after, acked_after),) = store.journal()
    store.close()
    assert (seq_after, bytes(journaled_after), acked_after) == (1, bytes(journaled), 1)


def test_an_update_is_refused_on_trial_or_when_not_newer(tmp_path):
    key = Ed25519PrivateKey.generate()
    keys = bundles.public_keys([public_hex(key)])
    dist = str(tmp_path / "dist")
    slots = Slots(str(tmp_path / "slots"))
    files = {"firmware/__init__.py": release.tree_files()["firmware/__init__.py"]}
    slots.first_install(release.build("pos", "1.2.0", key, dist, files=files), "pos", keys)
    with pytest.raises(bundles.BundleRefused) as again:
        slots.first_install(release.build("pos", "1.2.1", key, dist, files=files), "pos", keys)
    assert again.value.code == "installed"
    with pytest.raises(bundles.BundleRefused) as older:
        slots.install(release.build("pos", "1.1.0", key, dist, files=files), keys)
    assert older.value.code == "not_newer" and not os.path.exists(os.path.join(slots.root, "b"))
    slots.install(release.build("pos", "1.3.0", key, dist, files=files), keys)
    with pytest.raises(bundles.BundleRefused) as busy:
        slots.install(release.build("pos", "1.4.0", key, dist, files=files), keys)
    assert busy.value.code == "on_trial" and slots.state()["version"] == "1.3.0"
    done = subprocess.run([sys.executable, "-m", "firmware.apps.slots", "--root", str(tmp_path / "none"),
                           "--data-dir", str(tmp_path), "--", "terminal"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 4 and "尚未安装固件" in done.stderr
    for option, value in (("--hang-s", "0"), ("--hang-s", "2m"), ("--trial-s", "-300"), ("--trial-s", "9" * 40)):
        mistaken = subprocess.run([sys.executable, "-m", "firmware.apps.slots", "--root", slots.root, "--data-dir",
                                   str(tmp_path), option, value, "--", "terminal"], capture_output=True, text=True,
                                  timeout=60)
        assert mistaken.returncode == 2 and "秒数须为 1 到 604800 的整数" in mistaken.stderr, mistaken.stderr
        assert "Traceback" not in mistaken.stderr


PINGS_THEN_HANGS = """
import json, os, sys, time
from firmware.apps import systemd_notify

notifier = systemd_notify.Notifier()
with open(sys.argv[1], "a") as log:
    log.write(json.dumps({"pid": os.getpid(), "at_s": time.monotonic(), "socket": os.environ["NOTIFY_SOCKET"],
                          "watchdog_usec": os.environ["WATCHDOG_USEC"]}) + "\\n")
until_s = time.monotonic() + float(sys.argv[2])
while time.monotonic() < until_s:          # a loop that goes round, then one that is stuck
    notifier.alive()
    time.sleep(0.05)
while True:
    time.sleep(1)
"""


def test_a_terminal_that_stops_pinging_is_aborted_and_restarted_and_forged_pings_do_not_count(tmp_path):
    """A slot holding a small `ykt` that pings through the real Notifier for 2 s, then hangs; the
    supervisor runs with --hang-s 1. Meanwhile this test process floods the supervisor's socket with
    WATCHDOG=1 of its own."""
    import socket
    slot = tmp_path / "slots" / "a"
    for package in ("firmware", "firmware/apps", "ykt"):
        (slot / package).mkdir(parents=True)
        (slot / package / "__init__.py").write_text("")
    (slot / "firmware" / "apps" / "systemd_notify.py").write_text(
        open(os.path.join(ROOT, "firmware", "apps", "systemd_notify.py"), encoding="utf-8").read())
    (slot / "ykt" / "__main__.py").write_text(PINGS_THEN_HANGS)
    (tmp_path / "slots" / "state.json").write_text(json.dumps(
        {"active": "a", "version": "1.0.0", "kind": "pos", "trial": None, "history": []}))
    starts = tmp_path / "starts.jsonl"

    def started():
        return [json.loads(line) for line in starts.read_text().splitlines()] if starts.exists() else []

    process = subprocess.Popen(
        [sys.executable, "-m", "firmware.apps.slots", "--root", str(tmp_path / "slots"), "--data-dir",
         str(tmp_path), "--hang-s", "1", "--", str(starts), "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    forger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        until("the first start", lambda: len(started()) == 1)
        first = started()[0]
        assert first["watchdog_usec"] == "1000000" and first["socket"].startswith("@ykt-slots-")
        deadline = time.monotonic() + DEADLINE_S
        while len(started()) < 2:
            assert time.monotonic() < deadline, "never restarted"
            forger.sendto(b"WATCHDOG=1", "\0" + first["socket"][1:])      # not the terminal's pid
            time.sleep(0.05)
    finally:
        forger.close()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=DEADLINE_S)
    second = started()[1]
    # kept while it pinged (every half second, so until at least 1.5 s), aborted 1 s after its last
    # ping, restarted after a 1 s pause: 3.5 s at least (unheard, its pings would give about 2 s)
    assert second["at_s"] - first["at_s"] >= 3.0, (first, second)
    assert "Fatal Python error: Aborted" in output and "__main__.py" in output, output
    assert "固件无响应（1 秒无心跳）" in output and "stopped responding for 1 s" in output, output
    assert process.returncode == 0
    state = json.loads((tmp_path / "slots" / "state.json").read_text())
    assert (state["active"], state["trial"], state["history"]) == ("a", None, [])   # restarted, not rolled back


def test_the_terminals_ping_never_waits_on_a_supervisor_that_does_not_read():
    """A datagram socket's queue is short (net.unix.max_dgram_qlen): a supervisor busy or flooded must
    not stall the serve loop that pings it."""
    import socket
    import threading
    from firmware.apps import systemd_notify
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        name = "ykt-test-%d" % os.getpid()
        listener.bind("\0" + name)
        notifier = systemd_notify.Notifier({"NOTIFY_SOCKET": "@" + name})
        sent = []
        pinging = threading.Thread(target=lambda: sent.extend(notifier.send("WATCHDOG=1") for _ in range(1000)),
                                   daemon=True)
        pinging.start()
        pinging.join(DEADLINE_S)
        assert not pinging.is_alive(), "a ping waited on the full socket"
        assert sent[0] is True and sent[-1] is False
