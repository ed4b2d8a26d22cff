"""`ykt phone water --ble bleak` across processes, as on a Raspberry Pi with BlueZ, but with BlueZ played
by `python -m simulators.bluez_air` (the org.bluez D-Bus API on a private bus, its two adapters' radios
on the simulated air) and the phone's bleak pointed at it with DBUS_SYSTEM_BUS_ADDRESS. The server,
the air, a `ykt dispenser` on mock pins and every `ykt phone` are processes of their own; nothing is
mocked between bleak and the dispenser's GATT server.

One site per module (the dispenser syncs once before it lets water run, so its start is paid once);
the tests run in order on it, each leaving the dispenser idle. The radio and link themselves are also
tested in this process, against the stand-in and a dispenser's GATT server on one LocalLink
(tests/test_bluez_air.py's rig). Every wait is bounded.
"""
import json
import os
import select
import subprocess
import sys
import time

import pytest

from firmware.core import card_layout, wallets, water_grants as w
from simulators.phone_ble import CONNECT_FAILED, LINK_LOST, NO_DISPENSER, RADIO_FAILED, PhoneBleError
from simulators.phone_bleak import PhoneRadio
from sync_server import pin_rules, registry
from test_bluez_air import rig
from test_dispenser_ble import DISPENSER_ID, make_grant, run
from test_phone_cli import _grant_state, _spawn, _stop

_TIMEOUT_S = 60
_READY_TIMEOUT_S = 30
_PRICE_FEN_PER_LITRE = 30
# the phone, bleak and the stand-in are under test here; both stores' side of water is test_water_holds.py's
pytestmark = pytest.mark.stores("sqlite")




def _first_line(process, timeout_s=_TIMEOUT_S):
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, "no line from %s within %d s" % (process.args[:4], timeout_s)
    line = process.stdout.readline()
    assert line, "%s exited: %s" % (process.args[:4], process.stderr.read())
    return json.loads(line)


def _cardholder(conn, name, number):
    id_number = "11010119900606%04d" % number
    staff_number = "B%06d" % number
    _person, account_id = registry.add_person(conn, name, card_layout.HOLDER_STUDENT, id_number=id_number,
                                              staff_number=staff_number)
    registry.recharge(conn, account_id, 300, wallet="water")
    return account_id, id_number, staff_number


def _bind(server, profile, name, id_number, staff_number):
    bound = subprocess.run([sys.executable, "-m", "ykt", "phone", "--profile", profile, "bind", "--server",
                            server.url, "--name", name, "--staff-number", staff_number, "--pin",
                            pin_rules.initial_pin(id_number, staff_number)],
                           capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert bound.returncode == 0, bound.stderr


@pytest.fixture(scope="module")
def bluez_site(live_server, tmp_path_factory):
    """The server with a water dispenser and two cardholders, the air (three controllers), the dispenser
    on the first, and the BlueZ stand-in with hci0 and hci1 on the others."""
    tmp_path = tmp_path_factory.mktemp("bluez-site")
    conn = live_server.connect()
    try:
        merchant = registry.add_merchant(conn, "六号楼开水房", "building 6 boiler room", wallets.CATEGORY_WATER)
        terminal_id = registry.register_terminal(conn, merchant)
        document = registry.provisioning_document(conn, live_server.master_key(), terminal_id, live_server.url)
        first = _cardholder(conn, "王蓝牙", terminal_id)
        second = _cardholder(conn, "李蓝牙", terminal_id + 5000)
    finally:
        conn.close()
    provision = str(tmp_path / "water.json")
    descriptor = os.open(provision, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(descriptor, json.dumps(document).encode())
    os.close(descriptor)
    processes = []
    try:
        air = _spawn("simulators.ble_air", "--controllers", "3")
        processes.append(air)
        transports = _first_line(air)["transports"]
        dispenser = _spawn("ykt", "dispenser", "--provision", provision, "--data-dir", str(tmp_path / "dispenser"),
                           "--pins", "mock", "--flow-ml-per-s", "100", "--ble", transports[0], "--serve",
                           "--sync-interval-ms", "300", stdin=subprocess.DEVNULL)
        processes.append(dispenser)
        bluez = _spawn("simulators.bluez_air", "--ble", transports[1], "--ble", transports[2])
        processes.append(bluez)
        described = _first_line(bluez)
        assert [a["name"] for a in described["adapters"]] == ["hci0", "hci1"]
        profiles = [str(tmp_path / "phone-a.json"), str(tmp_path / "phone-b.json")]
        _bind(live_server, profiles[0], "王蓝牙", *first[1:])
        _bind(live_server, profiles[1], "李蓝牙", *second[1:])
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=described["bus"])
        yield {"server": live_server, "terminal_id": terminal_id, "accounts": [first[0], second[0]],
               "profiles": profiles, "env": env, "tmp_path": tmp_path, "bluez": bluez}
    finally:
        for process in reversed(processes):
            _stop(process)


def _phone_argv(site, *argv, phone=0, ble="bleak", found=("--nearby",)):
    return [sys.executable, "-m", "ykt", "phone", "--profile", site["profiles"][phone], "water", "--ble", ble,
            "--json"] + list(found) + list(argv)


def _phone(site, *argv, **options):
    return subprocess.run(_phone_argv(site, *argv, **options), capture_output=True, text=True, timeout=_TIMEOUT_S,
                          env=site["env"])


def _result(run):
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _water_balance(site, account_id):
    conn = site["server"].connect()
    try:
        return registry.balances_of(conn, account_id)["water"]
    finally:
        conn.close()


def test_a_bleak_phone_finds_the_dispenser_draws_water_and_pays_once(bluez_site):
    # the dispenser syncs once before it lets water run: until then it answers "out of order"
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        run = _phone(bluez_site, "--seconds", "1.5")
        if run.returncode == 0 or time.monotonic() > deadline or "设备故障" not in run.stderr:
            break
        time.sleep(0.5)
    result = _result(run)
    assert result["dispenser_id"] == bluez_site["terminal_id"] and result["outcome"] in ("settled", "already")
    assert 100 <= result["ml"] <= 200 and result["fen"] == result["ml"] * _PRICE_FEN_PER_LITRE // 1000
    row = _grant_state(bluez_site, result["grant_id"], "settled")
    assert (row["status"], row["settled_ml"], row["settled_fen"]) == ("settled", result["ml"], result["fen"])
    assert _water_balance(bluez_site, bluez_site["accounts"][0]) == 300 - result["fen"]
    assert "用水" in run.stdout and "毫升" in run.stdout

    # 扫码连接: the sticker's address, photographed, leads to the same machine through BlueZ
    photo = str(bluez_site["tmp_path"] / "sticker.png")
    made = subprocess.run([sys.executable, "-m", "ykt", "hall", "dispenser-sticker", "--terminal",
                           str(bluez_site["terminal_id"]), "--out", photo, "--data-dir",
                           bluez_site["server"].data_dir], capture_output=True, text=True, timeout=_TIMEOUT_S)
    assert made.returncode == 0, made.stderr
    scanned = _result(_phone(bluez_site, "--seconds", "1", found=("--sticker", photo)))
    assert scanned["dispenser_id"] == bluez_site["terminal_id"] and scanned["outcome"] in ("settled", "already")
    assert _grant_state(bluez_site, scanned["grant_id"], "settled")["settled_ml"] == scanned["ml"]


def test_a_second_phone_pressing_start_while_water_runs_is_refused_clearly(bluez_site):
    # the first phone (hci0) holds the water running until Enter; the second (hci1) presses Start
    first = subprocess.Popen(_phone_argv(bluez_site, "--until-enter", ble="bleak:hci0"), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=bluez_site["env"],
                             start_new_session=True)
    try:
        seen = ""
        deadline = time.monotonic() + _TIMEOUT_S
        while "出水中" not in seen:
            assert time.monotonic() < deadline and first.poll() is None, seen + first.stderr.read()
            ready, _, _ = select.select([first.stderr], [], [], 1)
            if ready:
                seen += first.stderr.readline()
        balance = _water_balance(bluez_site, bluez_site["accounts"][1])
        second = _phone(bluez_site, "--dispenser", str(bluez_site["terminal_id"]), "--seconds", "1", phone=1,
                        ble="bleak:hci1")
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert "正在出水，请先结束" in second.stderr and "already dispensing" in second.stderr
        # the refused grant's hold went back at once
        assert _water_balance(bluez_site, bluez_site["accounts"][1]) == balance
        out, err = first.communicate("\n", timeout=_TIMEOUT_S)
    finally:
        _stop(first)
    result = _result(subprocess.CompletedProcess(first.args, first.returncode, out, err))
    assert result["ml"] > 0 and _grant_state(bluez_site, result["grant_id"], "settled")["status"] == "settled"


def test_a_phone_that_walks_away_is_settled_by_the_dispenser(bluez_site):
    gone = _result(_phone(bluez_site, "--seconds", "1", "--walk-away", phone=1, ble="bleak:hci1"))
    assert gone["walked_away"] is True
    row = _grant_state(bluez_site, gone["grant_id"], "settled")
    assert row["status"] == "settled" and row["settled_via"] == "dispenser"
    assert row["end_reason"] == w.END_LINK_LOST and row["settled_ml"] > 0


def test_the_bleak_phone_explains_what_went_wrong(bluez_site):
    # (no dispenser nearby: the in-process test below; it costs a whole scan)
    no_adapter = _phone(bluez_site, "--seconds", "1", ble="bleak:hci7")
    assert no_adapter.returncode == 2 and "手机蓝牙不可用" in no_adapter.stderr, no_adapter.stderr
    assert "Traceback" not in no_adapter.stderr
    misspelt = _phone(bluez_site, "--seconds", "1", ble="bleak:usb0")
    assert misspelt.returncode == 2 and "bleak:hciN" in misspelt.stderr
    no_bluez = subprocess.run(_phone_argv(bluez_site, "--seconds", "1"), capture_output=True, text=True,
                              timeout=_TIMEOUT_S, env=dict(bluez_site["env"], DBUS_SYSTEM_BUS_ADDRESS="unix:path="
                                                           + str(bluez_site["tmp_path"] / "no-such-bus")))
    assert no_bluez.returncode == 2 and "手机蓝牙不可用" in no_bluez.stderr and "Traceback" not in no_bluez.stderr
    assert bluez_site["bluez"].poll() is None


# --- the radio and link themselves, in one process against the stand-in (tests/test_bluez_air.py's rig) ----

def test_the_bleak_link_is_phone_bles_link_over_bluez(monkeypatch):
    async def body():
        async with rig(monkeypatch) as (air, _radio, fake, _bluez):
            async with PhoneRadio("hci0") as phone:
                nearby = await phone.find(DISPENSER_ID)
                assert (nearby.dispenser_id, nearby.address) == (DISPENSER_ID, w.static_address(DISPENSER_ID))
                shown = []
                link = await phone.connect(nearby, on_progress=shown.append)
                assert link.connected and link.mtu == 247 and link.connect_ms > 0
                dispenser_id, challenge = await link.read_challenge()
                assert dispenser_id == DISPENSER_ID
                await link.write_grant(make_grant(challenge))
                assert (await link.next_progress()).state == w.PROGRESS_DISPENSING
                _, second = await link.read_challenge()
                with pytest.raises(PhoneBleError) as refused:
                    await link.write_grant(make_grant(second, grant_id=2))
                assert refused.value.code == w.REFUSED_BUSY and refused.value.zh == "正在出水，请先结束"
                await link.control(w.CONTROL_END)
                while (await link.next_progress(2000)).state != w.PROGRESS_ENDED:
                    pass
                receipt = w.decode_receipt(await link.read_receipt(), fake.mac_fn)
                assert receipt.grant_id == 1 and receipt.end_reason == w.END_BUTTON and shown
                await link.disconnect()
                assert not link.connected

                # the dispenser out of range mid-session: the link is lost, not refused
                link = await phone.connect(w.static_address(DISPENSER_ID))     # a sticker's address
                _, challenge = await link.read_challenge()
                await link.write_grant(make_grant(challenge, grant_id=3))
                air.lose(0)
                with pytest.raises(PhoneBleError) as gone:
                    while True:
                        await link.next_progress(3000)
                assert gone.value.zh == LINK_LOST[0]
                with pytest.raises(PhoneBleError) as again:
                    await link.read_challenge()
                assert again.value.zh == LINK_LOST[0]
                assert await phone.scan_nearby(300, DISPENSER_ID) == []     # it stopped advertising too
                with pytest.raises(PhoneBleError) as nobody:
                    await phone.find(DISPENSER_ID, timeout_ms=300)
                assert nobody.value.zh == NO_DISPENSER[0]
    run(body(), timeout_s=20)


def test_the_bleak_radio_says_when_there_is_no_bluetooth(monkeypatch, tmp_path):
    with pytest.raises(ValueError):
        PhoneRadio("usb0")

    async def no_bus():
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=%s" % (tmp_path / "no-bus"))
        with pytest.raises(PhoneBleError) as failed:
            async with PhoneRadio():
                pass
        assert failed.value.zh == RADIO_FAILED[0]
    run(no_bus())

    async def no_such_adapter():
        async with rig(monkeypatch):
            async with PhoneRadio("hci5") as phone:
                with pytest.raises(PhoneBleError) as failed:
                    await phone.scan_nearby(300)
                assert failed.value.zh == RADIO_FAILED[0] and "hci5" in str(failed.value)
            async with PhoneRadio() as phone:          # BlueZ's first powered adapter: hci0
                with pytest.raises(PhoneBleError) as failed:
                    await phone.connect("C0:7A:00:00:AA:AA", timeout_ms=500)
                assert failed.value.zh == CONNECT_FAILED[0]
                with pytest.raises(PhoneBleError) as bad:
                    await phone.connect("not an address")
                assert bad.value.zh == CONNECT_FAILED[0]
    run(no_such_adapter())
