"""`ykt dispenser` as its own process, killed with SIGKILL mid-dispense (a power cut), then started
again on the same journal: the valve starts closed, the cut session is settled once from the
persisted volume, and the server holds it once."""
import json
import os
import signal
import subprocess
import sys
import time

from firmware.core import water_grants as w
from sync_server import registry

from test_dispenser_terminal import Rig

_TIMEOUT_S = 60


def _dispenser(rig, provision_path, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "ykt", "dispenser", "--provision", provision_path, "--data-dir", rig.data_dir + "-p",
         "--pins", "mock", "--flow-ml-per-s", "200", "--script", "-", "--sync-interval-ms", "500"] + list(extra),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _read_until(process, predicate, timeout_s=_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if predicate(seen[-1]):
            return seen
    raise AssertionError("did not see the line; got %s" % seen[-10:])


def test_a_power_cut_mid_dispense_settles_once_after_the_restart(live_server, tmp_path):
    rig = Rig(live_server, tmp_path)
    try:
        provision_path = str(tmp_path / "water.json")
        descriptor = os.open(provision_path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(descriptor, json.dumps(rig.provisioning).encode())
        os.close(descriptor)
        process = _dispenser(rig, provision_path)
        process.stdin.write(json.dumps({"sync": True}) + "\n" + json.dumps({"card": rig.card_path}) + "\n")
        process.stdin.flush()
        _read_until(process, lambda line: line["type"] == "valve" and line["open"])
        time.sleep(1.5)                                   # ~300 ml at 200 ml/s, persisted every 50 ml
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(_TIMEOUT_S)
        again = _dispenser(rig, provision_path, "--drain-timeout-s", "30")
        lines, _errors = again.communicate(json.dumps({"sync": True}) + "\n", timeout=_TIMEOUT_S)
        assert again.returncode == 0, _errors
        parsed = [json.loads(line) for line in lines.splitlines()]
        assert parsed[0] == {"type": "valve", "open": False}          # closed before anything else
        sessions = [line for line in parsed if line["type"] == "session"]
        assert len(sessions) == 1 and sessions[0]["end_reason"] == w.END_POWER_CUT
        assert 100 <= sessions[0]["ml"] <= 400
        assert [line for line in parsed if line["type"] == "drained"][-1]["unacked"] == 0
        conn = live_server.connect()
        try:
            stored = conn.execute("SELECT ml, amount_fen, end_reason FROM water_sessions WHERE terminal_id = ?",
                                  (rig.terminal_id,)).fetchall()
            assert stored == [(sessions[0]["ml"], sessions[0]["fen"], w.END_POWER_CUT)]
            assert registry.balances_of(conn, rig.account_id)["water"] == 100 - sessions[0]["fen"]
        finally:
            conn.close()
    finally:
        rig.close()
