"""The Bluetooth LE air across processes: `python -m simulators.ble_air` serving bumble's virtual
controllers as HCI over loopback TCP, a dispenser radio and a phone radio in different processes.

Every child runs in a session of its own and is killed (its whole process group) when the test ends,
whatever happened. Listening sockets are read from /proc: the air listens on loopback only, the
radios listen on nothing. Timings are printed (run with -s), never asserted.
"""
import asyncio
import contextlib
import json
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from firmware.apps.dispenser_ble import BleError, DispenserRadio
from firmware.core import water_grants as wg
from simulators.ble_air import Air
from simulators.phone_ble import PhoneBleError, PhoneRadio
from test_dispenser_ble import DISPENSER_ID, FakeDispenser, full_exchange, make_grant, report, run

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
START_TIMEOUT_S = 8

DISPENSER_CHILD = """
import asyncio, json, sys
from firmware.apps.dispenser_ble import BleError, DispenserRadio
from test_dispenser_ble import DISPENSER_ID, FakeDispenser

async def main(spec):
    fake = FakeDispenser()
    fake.on_event = lambda event: print(json.dumps(event), flush=True)
    async with DispenserRadio(spec, DISPENSER_ID, fake) as radio:
        fake.radio = radio
        print(json.dumps({"ready": radio.address}), flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
"""

PHONE_CHILD = """
import asyncio, json, sys
from simulators.phone_ble import PhoneBleError, PhoneRadio
from test_dispenser_ble import DISPENSER_ID, make_grant

async def main(spec):
    async with PhoneRadio(spec) as phone:
        link = await phone.connect(await phone.find(DISPENSER_ID))
        _, challenge = await link.read_challenge()
        await link.write_grant(make_grant(challenge, grant_id=77))
        note = await link.next_progress()
        print(json.dumps({"dispensing": note.ml}), flush=True)
        await asyncio.sleep(60)

asyncio.run(main(sys.argv[1]))
"""


class Child:
    """A child process in its own session, with its stdout read a line at a time, bounded in time."""

    def __init__(self, args, stderr_path):
        self._stderr = open(stderr_path, "wb")
        self.stderr_path = stderr_path
        self.process = subprocess.Popen(args, cwd=ROOT, env=CHILD_ENV, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=self._stderr, start_new_session=True)
        self._buffer = b""

    def line(self, timeout_s=START_TIMEOUT_S):
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left_s = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(left_s, 0))
            if not ready:
                raise AssertionError("no line from %s within %s s; stderr:\n%s" % (self.process.args[:3], timeout_s,
                                                                                   self.stderr()))
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError("%s exited (%s); stderr:\n%s" % (self.process.args[:3], self.process.wait(),
                                                                     self.stderr()))
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def stderr(self):
        self._stderr.flush()
        return pathlib.Path(self.stderr_path).read_text(errors="replace")[-3000:]

    def stop(self, signum=signal.SIGTERM, timeout_s=3):
        """Signal the child's process group; SIGKILL it if it lingers. Returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout_s)
        return self.process.returncode

    def close(self):
        self.stop(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):   # anything the child left in its group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.stdout.close()
        self._stderr.close()


@pytest.fixture
def children(tmp_path):
    """Start children with `children(name, args)`; all of them are killed when the test ends."""
    started = []

    def start(name, args):
        child = Child(args, tmp_path / ("%s.stderr" % name))
        started.append(child)
        return child
    yield start
    for child in started:
        child.close()


def start_air(children, count=2):
    air = children("air", [sys.executable, "-m", "simulators.ble_air", "--controllers", str(count)])
    specs = air.line()["transports"]
    assert len(specs) == count and all(s.startswith("tcp-client:127.0.0.1:") for s in specs)
    return air, specs


def listening_addresses(pid):
    """(address, port) of every TCP socket the process listens on, from /proc."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        with contextlib.suppress(OSError):
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for row in pathlib.Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                if width == 8:
                    text = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:
                    text = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.append((text, int(port, 16)))
    return found


def test_air_help_and_bad_arguments():
    done = subprocess.run([sys.executable, "-m", "simulators.ble_air", "--help"], cwd=ROOT, env=CHILD_ENV,
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and "--controllers" in done.stdout and "tcp-client" in done.stdout
    assert "虚拟" in done.stdout
    for args, expected in ((["--controllers", "0"], "controllers must be 1 to"),
                           (["--host", "0.0.0.0"], "loopback addresses only")):
        done = subprocess.run([sys.executable, "-m", "simulators.ble_air"] + args, cwd=ROOT, env=CHILD_ENV,
                              capture_output=True, text=True, timeout=20)
        assert done.returncode == 2 and expected in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_air_listens_on_loopback_only_and_exits_cleanly(children, signum):
    air, specs = start_air(children, 3)
    listening = listening_addresses(air.process.pid)
    assert sorted(port for _, port in listening) == sorted(int(s.rsplit(":", 1)[1]) for s in specs)
    assert all(address == "127.0.0.1" for address, _ in listening)
    assert air.stop(signum) == 0


def test_a_grant_exchange_across_processes(children):
    air, specs = start_air(children)
    dispenser = children("dispenser", [sys.executable, "-c", DISPENSER_CHILD, specs[0]])
    assert dispenser.line() == {"ready": wg.static_address(DISPENSER_ID)}

    async def phone_side():
        async with PhoneRadio(specs[1]) as phone:
            timings = {}
            await full_exchange(phone, timings=timings)
            report("across processes, air + dispenser children, TCP HCI", timings)
    run(phone_side())
    events = [dispenser.line(3) for _ in range(4)]
    assert events == [{"granted": 1, "link": 1}, {"opened": 1}, {"ended": wg.END_BUTTON}, {"lost": 1}]
    for child in (dispenser, air):
        assert all(address == "127.0.0.1" for address, _ in listening_addresses(child.process.pid))
    assert listening_addresses(dispenser.process.pid) == []


def test_a_phone_process_killed_mid_session_is_a_lost_link(children):
    air, specs = start_air(children)

    async def body():
        fake = FakeDispenser()
        async with DispenserRadio(specs[0], DISPENSER_ID, fake) as radio:
            fake.radio = radio
            phone = children("phone", [sys.executable, "-c", PHONE_CHILD, specs[1]])
            assert await asyncio.to_thread(phone.line) == {"dispensing": 100}
            assert fake.valve_open and [g.grant_id for g in fake.opened] == [77]
            killed = time.perf_counter()
            phone.stop(signal.SIGKILL)
            for _ in range(300):
                if fake.lost:
                    break
                await asyncio.sleep(0.01)
            print("\n[ble timing] phone process killed -> dispenser link_lost in %.0f ms"
                  % ((time.perf_counter() - killed) * 1000))
            assert len(fake.lost) == 1 and not fake.valve_open
            assert wg.decode_receipt(fake.receipt).end_reason == wg.END_LINK_LOST
            # the phone's controller is free and quiet again: a new phone host takes it and gets in
            async with PhoneRadio(specs[1]) as again:
                link = await again.connect(await again.find(DISPENSER_ID, timeout_ms=2000))
                _, challenge = await link.read_challenge()
                await link.write_grant(make_grant(challenge, grant_id=78), start=False)
                assert fake.session[1].grant_id == 78
    run(body())


def test_in_process_air_over_tcp_and_one_host_per_controller():
    async def body():
        async with Air(2) as air:
            assert all(spec.startswith("tcp-client:127.0.0.1:") for spec in air.transport_specs)
            fake = FakeDispenser()
            async with DispenserRadio(air.transport_specs[0], DISPENSER_ID, fake) as radio:
                fake.radio = radio
                # a second host on the dispenser's controller is turned away at once
                reader, writer = await asyncio.open_connection("127.0.0.1", air.ports[0])
                assert await asyncio.wait_for(reader.read(), 2) == b""
                writer.close()
                async with PhoneRadio(air.transport_specs[1]) as phone:
                    timings = {}
                    await full_exchange(phone, timings=timings)
                    report("in-process Air, both radios over TCP HCI", timings)
                assert [g.grant_id for g in fake.opened] == [1]
    run(body())


def test_a_controller_that_is_not_there_is_a_clear_error():
    async def body():
        with socket.socket() as probe:          # a loopback port nobody listens on
            probe.bind(("127.0.0.1", 0))
            spec = "tcp-client:127.0.0.1:%d" % probe.getsockname()[1]
        with pytest.raises(BleError) as caught:
            await DispenserRadio(spec, DISPENSER_ID, FakeDispenser()).start()
        assert str(caught.value).startswith("无法打开蓝牙控制器")
        with pytest.raises(PhoneBleError) as caught:
            await PhoneRadio(spec).start()
        assert str(caught.value).startswith("手机蓝牙不可用 / ")
    run(body())
