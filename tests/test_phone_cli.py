"""`ykt phone` across processes, as a developer runs it: the server, the simulated Bluetooth air
(`python -m simulators.ble_air`), a `ykt dispenser` on mock pins with its radio on the air, and
`ykt phone` binding, then drawing water from the dispenser it finds nearby - and one phone that
walks away mid-session."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from firmware.core import card_layout, wallets, water_grants as w
from sync_server import pin_rules, registry, water_holds

_TIMEOUT_S = 60
# the phone, the radio and the air are under test here; both stores' side of water is test_water_holds.py's
pytestmark = pytest.mark.stores("sqlite")


def _spawn(*argv, **options):
    return subprocess.Popen([sys.executable, "-m"] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **options)


def _stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def water_site(live_server, tmp_path):
    conn = live_server.connect()
    try:
        merchant = registry.add_merchant(conn, "五号楼开水房", "building 5 boiler room", wallets.CATEGORY_WATER)
        terminal_id = registry.register_terminal(conn, merchant)
        document = registry.provisioning_document(conn, live_server.master_key(), terminal_id, live_server.url)
        id_number = "11010119900505%04d" % terminal_id
        staff_number = "P%06d" % terminal_id
        _person, account_id = registry.add_person(conn, "陈手机", card_layout.HOLDER_STUDENT, id_number=id_number,
                                                  staff_number=staff_number)
        registry.recharge(conn, account_id, 300, wallet="water")
    finally:
        conn.close()
    provision = str(tmp_path / "water.json")
    descriptor = os.open(provision, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(descriptor, json.dumps(document).encode())
    os.close(descriptor)
    air = _spawn("simulators.ble_air", "--controllers", "2")
    processes = [air]
    try:
        transports = json.loads(air.stdout.readline())["transports"]
        dispenser = _spawn("ykt", "dispenser", "--provision", provision, "--data-dir", str(tmp_path / "dispenser"),
                           "--pins", "mock", "--flow-ml-per-s", "100", "--ble", transports[0], "--serve",
                           "--sync-interval-ms", "300", stdin=subprocess.DEVNULL)
        processes.append(dispenser)
        profile = str(tmp_path / "phone.json")
        bound = subprocess.run([sys.executable, "-m", "ykt", "phone", "--profile", profile, "bind", "--server",
                                live_server.url, "--name", "陈手机", "--staff-number", staff_number, "--pin",
                                pin_rules.initial_pin(id_number, staff_number)],
                               capture_output=True, text=True, timeout=_TIMEOUT_S)
        assert bound.returncode == 0, bound.stderr
        assert oct(os.stat(profile).st_mode & 0o777) == "0o600"
        store_env = {} if live_server.store == "sqlite" else {"YKT_DATABASE_URL": live_server.database}
        yield {"server": live_server, "store_env": store_env, "terminal_id": terminal_id, "account_id": account_id, "profile": profile,
               "phone_transport": transports[1], "dispenser": dispenser}
    finally:
        for process in reversed(processes):
            _stop(process)


def _phone(site, *argv, found=("--nearby",)):
    return subprocess.run([sys.executable, "-m", "ykt", "phone", "--profile", site["profile"], "water", "--ble",
                           site["phone_transport"], "--json"] + list(found) + list(argv),
                          capture_output=True, text=True, timeout=_TIMEOUT_S)


def _grant_state(site, grant_id, wanted, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while True:
        conn = site["server"].connect()
        try:
            row = water_holds.grant_row(conn, grant_id)
        finally:
            conn.close()
        if row["status"] == wanted or time.monotonic() > deadline:
            return row
        time.sleep(0.2)


def test_a_phone_finds_the_dispenser_nearby_draws_water_and_pays_once(water_site):
    # the dispenser syncs once before it lets water run: wait for the phone to be let in
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        run = _phone(water_site, "--seconds", "1.5")
        if run.returncode == 0 or time.monotonic() > deadline or "设备故障" not in run.stderr:
            break
        time.sleep(0.5)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["dispenser_id"] == water_site["terminal_id"] and result["outcome"] in ("settled", "already")
    assert 100 <= result["ml"] <= 200 and result["fen"] == result["ml"] * 30 // 1000
    row = _grant_state(water_site, result["grant_id"], "settled")
    assert (row["status"], row["settled_ml"], row["settled_fen"]) == ("settled", result["ml"], result["fen"])
    conn = water_site["server"].connect()
    try:
        assert registry.balances_of(conn, water_site["account_id"])["water"] == 300 - result["fen"]
    finally:
        conn.close()

    walked = _phone(water_site, "--seconds", "1", "--walk-away")
    assert walked.returncode == 0, walked.stderr
    gone = json.loads(walked.stdout.strip().splitlines()[-1])
    row = _grant_state(water_site, gone["grant_id"], "settled")
    assert row["status"] == "settled" and row["settled_via"] == "dispenser"
    assert row["end_reason"] == w.END_LINK_LOST and row["settled_ml"] > 0

    # 扫码连接: the sticker staff printed, photographed by the phone, leads straight to the machine
    photo = os.path.join(os.path.dirname(water_site["profile"]), "sticker.png")
    made = subprocess.run([sys.executable, "-m", "ykt", "hall", "dispenser-sticker", "--terminal",
                           str(water_site["terminal_id"]), "--out", photo, "--data-dir", water_site["server"].data_dir],
                          capture_output=True, text=True, timeout=_TIMEOUT_S,
                          env=dict(os.environ, **water_site["store_env"]))
    assert made.returncode == 0, made.stderr
    scanned = _phone(water_site, "--seconds", "1", found=("--sticker", photo))
    assert scanned.returncode == 0, scanned.stderr
    assert json.loads(scanned.stdout.strip().splitlines()[-1])["dispenser_id"] == water_site["terminal_id"]


def test_the_phone_explains_what_went_wrong(water_site, tmp_path):
    missing = subprocess.run([sys.executable, "-m", "ykt", "phone", "--profile", str(tmp_path / "none.json"),
                              "balance"], capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert missing.returncode == 9 and "ykt phone bind" in missing.stderr and "Traceback" not in missing.stderr
    nobody = _phone(water_site, "--dispenser", "999999", "--seconds", "1")
    assert nobody.returncode == 2 and "附近没有找到开水机" in nobody.stderr and "Traceback" not in nobody.stderr
