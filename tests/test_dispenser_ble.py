"""The dispenser's Bluetooth LE radio and the phone's, on bumble's virtual controllers in one process.

Real bumble host stacks on both sides (advertising, scanning, connection, ATT/GATT, MTU exchange, long
writes and reads) over a LocalLink; nothing of bumble is mocked. Behind the dispenser's radio sits
`FakeDispenser`: the REAL water_grants.GrantGate decides every grant, and a flag stands for the valve,
so an attack that gets past the radio would show as an opened valve. Timings are printed (run with
-s to see them), never asserted.
"""
import asyncio
import contextlib
import os
import random
import statistics
import time

import pytest

from firmware.apps.dispenser_ble import DispenserRadio, Link
from firmware.core import water_grants as wg
from simulators.ble_air import LocalAir
from simulators.phone_ble import NO_DISPENSER, PhoneBleError, PhoneRadio

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
DISPENSER_ID = 7
MAX_CAP_FEN = 500
TEST_TIMEOUT_S = 9


class FakeDispenser:
    """The dispenser behind the radio, as small as these tests need: the real GrantGate decides, a flag
    is the valve, and once the valve opens a "meter" notifies a few progress notes to the link."""

    def __init__(self, dispenser_id=DISPENSER_ID, key=KEY, max_cap_fen=MAX_CAP_FEN, lifetime_ms=60_000,
                 meter_notes=3, meter_step_s=0.01):
        self.dispenser_id = dispenser_id
        self.mac_fn = wg.grant_mac_fn(key)
        self.gate = wg.GrantGate(dispenser_id, self.mac_fn, max_cap_fen, lifetime_ms)
        self.meter_notes = meter_notes
        self.meter_step_s = meter_step_s
        self.now_ms = 0                 # the dispenser's clock, moved by the tests
        self.radio = None               # set once the radio runs, for the meter's notifications
        self.valve_open = False
        self.opened = []                # every grant that opened the valve
        self.lost = []                  # links handed to link_lost
        self.session = None             # [link, grant]
        self.ml = 0
        self.seq = 0
        self.receipt = b""
        self.explode = False            # the handler's own bug: read_progress raises
        self.events = []
        self.on_event = None
        self._tasks = set()

    def _event(self, **event):
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _spawn(self, coroutine):
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the handler interface ----------------------------------------------------------------------

    def read_challenge(self, link):
        return self.gate.challenge(os.urandom(wg.CHALLENGE_BYTES), self.now_ms)

    def write_grant(self, link, data):
        if self.session is not None:
            raise wg.WaterMessageError(wg.REFUSED_BUSY, "a session is running")
        start = len(data) == wg.GRANT_SIZE + 1 and data[-1] == wg.CONTROL_START
        grant = self.gate.accept(data[:wg.GRANT_SIZE] if start else data, self.now_ms)
        self.session = [link, grant]
        self._event(granted=grant.grant_id, link=link.number)
        if start:
            self._open()

    def write_control(self, link, data):
        code = wg.decode_control(data)
        if self.session is None or self.session[0] != link:
            raise wg.WaterMessageError(wg.REFUSED_NOT_YOURS, "not this link's session")
        if code == wg.CONTROL_START:
            if self.valve_open:
                raise wg.WaterMessageError(wg.REFUSED_BUSY, "already dispensing")
            self._open()
        else:
            self._end(wg.END_BUTTON)

    def read_progress(self, link):
        if self.explode:
            raise RuntimeError("meter driver bug")
        return self._progress()

    def read_receipt(self, link):
        return self.receipt

    def link_lost(self, link):
        self.lost.append(link)
        self._event(lost=link.number)
        if self.session is not None and self.session[0] == link:
            self._end(wg.END_LINK_LOST)

    # --- the machine, in miniature ------------------------------------------------------------------

    def _open(self):
        self.valve_open = True
        self.opened.append(self.session[1])
        self._event(opened=self.session[1].grant_id)
        if self.radio is not None and self.meter_notes:
            self._spawn(self._meter(self.session))

    async def _meter(self, session):
        for note in range(1, self.meter_notes + 1):
            await asyncio.sleep(self.meter_step_s)
            if self.session is not session:
                return
            self.ml = 100 * note
            await self.radio.notify_progress(self._progress(), session[0])

    def _progress(self):
        if self.session is None:
            return wg.encode_progress(wg.PROGRESS_READY, 0, 0, 0)
        grant = self.session[1]
        state = wg.PROGRESS_DISPENSING if self.valve_open else wg.PROGRESS_AUTHORISED
        return wg.encode_progress(state, self.ml, self._fen(), grant.cap_fen)

    def _fen(self):
        return min(self.ml // 10, self.session[1].cap_fen)

    def _end(self, reason):
        link, grant = self.session
        self.seq += 1
        fen = self._fen()
        self.receipt = wg.encode_receipt(self.mac_fn, wg.Receipt(self.dispenser_id, grant.grant_id, self.seq, self.ml,
                                                                 fen, grant.cap_fen, 1000, reason))
        ended = wg.encode_progress(wg.PROGRESS_ENDED, self.ml, fen, grant.cap_fen)
        self.valve_open = False
        self.session = None
        self.ml = 0
        self._event(ended=reason)
        if self.radio is not None and reason != wg.END_LINK_LOST:
            self._spawn(self.radio.notify_progress(ended, link))


def make_grant(challenge, dispenser_id=DISPENSER_ID, cap_fen=300, valid_ms=30_000, key=KEY, grant_id=1):
    return wg.encode_grant(wg.grant_mac_fn(key), wg.Grant(dispenser_id, grant_id, 42, challenge, cap_fen, valid_ms))


def run(coroutine, timeout_s=TEST_TIMEOUT_S):
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))


@contextlib.asynccontextmanager
async def setting(phones=1, fake=None, **radio_options):
    """A dispenser radio (with its fake) and `phones` phone radios on one LocalLink."""
    async with LocalAir(1 + phones) as air:
        fake = fake or FakeDispenser()
        async with DispenserRadio(air.controllers[0], DISPENSER_ID, fake, **radio_options) as radio:
            fake.radio = radio
            async with contextlib.AsyncExitStack() as stack:
                radios = [await stack.enter_async_context(PhoneRadio(c)) for c in air.controllers[1:]]
                yield air, radio, fake, radios


async def refusal(awaitable):
    with pytest.raises(PhoneBleError) as caught:
        await awaitable
    return caught.value.code


async def full_exchange(phone, dispenser_id=DISPENSER_ID, timings=None):
    """Find, connect, challenge, grant + start, progress, End, receipt, disconnect: what a phone does."""
    timings = {} if timings is None else timings
    started = time.perf_counter()
    nearby = await phone.find(dispenser_id, timeout_ms=3000)
    timings["scan_to_found_ms"] = (time.perf_counter() - started) * 1000
    assert nearby.dispenser_id == dispenser_id and nearby.address == wg.static_address(dispenser_id)
    started = time.perf_counter()
    link = await phone.connect(nearby.address)
    timings["connect_ms"] = (time.perf_counter() - started) * 1000    # with MTU exchange, discovery, subscribe
    timings["link_up_ms"], timings["gatt_setup_ms"] = link.connect_ms, link.setup_ms
    seen_id, challenge = await link.read_challenge()
    assert seen_id == dispenser_id
    grant_bytes = make_grant(challenge)
    await link.write_grant(grant_bytes, start=True)
    notes = [await link.next_progress(3000) for _ in range(3)]
    assert [n.ml for n in notes] == [100, 200, 300]
    assert all(n.state == wg.PROGRESS_DISPENSING and n.cap_fen == 300 for n in notes)
    await link.control(wg.CONTROL_END)
    ended = await link.next_progress(3000)
    assert ended.state == wg.PROGRESS_ENDED and ended.ml == 300 and ended.fen == 30
    receipt = wg.decode_receipt(await link.read_receipt(), wg.grant_mac_fn(KEY))
    assert (receipt.grant_id, receipt.ml, receipt.fen, receipt.end_reason) == (1, 300, 30, wg.END_BUTTON)
    await timed_round_trips(link, timings)
    await link.disconnect()
    return link, grant_bytes


async def timed_round_trips(link, timings, samples=20):
    """Median round trips: a CHALLENGE read, and a 54-byte GRANT write (refused: no live challenge,
    which is still one full write and answer)."""
    reads, writes = [], []
    for _ in range(samples):
        started = time.perf_counter()
        await link.read_challenge()
        reads.append(time.perf_counter() - started)
    stale = make_grant(bytes(16)) + bytes([wg.CONTROL_START])
    for _ in range(samples):
        started = time.perf_counter()
        assert await refusal(link.write(wg.GRANT_UUID, stale)) == wg.REFUSED_NO_CHALLENGE
        writes.append(time.perf_counter() - started)
    timings["read_rtt_ms"] = statistics.median(reads) * 1000
    timings["write_rtt_ms"] = statistics.median(writes) * 1000


def report(label, timings):
    print("\n[ble timing] %s: %s" % (label, ", ".join("%s=%.2f" % item for item in sorted(timings.items()))))


@pytest.mark.parametrize("mtu", [247, None], ids=["mtu247", "default-mtu-long-writes"])
def test_a_phone_finds_the_dispenser_and_a_grant_opens_the_valve_once(mtu):
    async def body():
        async with setting() as (air, radio, fake, (phone,)):
            phone.mtu = mtu
            timings = {}
            link, _grant = await full_exchange(phone, timings=timings)
            assert link.mtu == (247 if mtu else 23)
            report("in-process LocalLink, mtu=%s" % (mtu or 23), timings)
            assert [g.grant_id for g in fake.opened] == [1]
            await asyncio.sleep(0.05)
            assert [lost.number for lost in fake.lost] == [1] and radio.links == ()
    run(body())


def test_scan_lists_only_our_advertisements_with_their_ids():
    async def body():
        async with LocalAir(3) as air:
            fakes = [FakeDispenser(7), FakeDispenser(4294967295)]
            async with DispenserRadio(air.controllers[0], 7, fakes[0]), \
                    DispenserRadio(air.controllers[1], 4294967295, fakes[1]), \
                    PhoneRadio(air.controllers[2]) as phone:
                nearby = await phone.scan_nearby(timeout_ms=400)
                assert sorted((d.dispenser_id, d.address) for d in nearby) == [
                    (7, wg.static_address(7)), (4294967295, wg.static_address(4294967295))]
                assert all(isinstance(d.rssi, int) for d in nearby)
    run(body())


def test_no_dispenser_found_is_a_clear_error():
    async def body():
        async with LocalAir(1) as air, PhoneRadio(air.controllers[0]) as phone:
            assert await phone.scan_nearby(timeout_ms=200) == []
            with pytest.raises(PhoneBleError) as caught:
                await phone.find(DISPENSER_ID, timeout_ms=200)
            assert caught.value.code is None and (caught.value.zh, caught.value.en) == NO_DISPENSER
            assert str(caught.value).startswith(NO_DISPENSER[0] + " / ")
            with pytest.raises(PhoneBleError) as caught:   # nobody at that address
                await phone.connect(wg.static_address(99), timeout_ms=300)
            assert str(caught.value).startswith("连接开水机失败") and "could not connect" in str(caught.value)
    run(body())


def test_every_bad_grant_comes_back_as_its_refusal_and_the_valve_stays_shut():
    async def body():
        async with setting() as (air, radio, fake, (phone,)):
            link = await phone.connect(radio.address)

            async def challenge():
                return (await link.read_challenge())[1]

            # garbage on every writable characteristic: random bytes, empty, 500 bytes
            rng = random.Random(20240601)
            for uuid in (wg.GRANT_UUID, wg.CONTROL_UUID):
                for value in [bytes(rng.randrange(256) for _ in range(n)) for n in (1, 5, 53, 54, 64)] + [b"", bytes(500)]:
                    await challenge()
                    code = await refusal(link.write(uuid, value))
                    assert code in (wg.REFUSED_MALFORMED, wg.REFUSED_OTHER_DISPENSER, wg.REFUSED_FORGED,
                                    wg.REFUSED_NOT_YOURS), (uuid, value.hex(), code)
                    if len(value) > wg.MAX_WRITE_BYTES or not value:
                        assert code == wg.REFUSED_MALFORMED
            # the progress subscription descriptor (CCCD) is writable too: garbage there is bumble's to refuse
            cccd = link.peer.get_characteristics_by_uuid(wg.PROGRESS_UUID)[0]
            for value in (b"", b"\x07", bytes(500)):
                with contextlib.suppress(PhoneBleError):
                    await link._request(link.peer.write_value(cccd.handle + 1, value, with_response=True))

            # a replayed grant: written twice, the second finds no live challenge
            good = make_grant(await challenge(), grant_id=5)
            await link.write_grant(good, start=False)
            assert fake.session[1].grant_id == 5 and not fake.valve_open
            await link.control(wg.CONTROL_END)
            assert await refusal(link.write_grant(good)) == wg.REFUSED_NO_CHALLENGE
            await challenge()
            assert await refusal(link.write_grant(good)) == wg.REFUSED_NO_CHALLENGE   # a new challenge: still no
            # a forged MAC, another dispenser's grant, an expired one, one over the cap
            forged = bytearray(make_grant(await challenge()))
            forged[-1] ^= 1
            assert await refusal(link.write_grant(bytes(forged))) == wg.REFUSED_FORGED
            assert await refusal(link.write_grant(make_grant(await challenge(), key=OTHER_KEY))) == wg.REFUSED_FORGED
            other = make_grant(await challenge(), dispenser_id=8, key=OTHER_KEY)
            assert await refusal(link.write_grant(other)) == wg.REFUSED_OTHER_DISPENSER
            issued = await challenge()
            fake.now_ms += 1000
            assert await refusal(link.write_grant(make_grant(issued, valid_ms=1000))) == wg.REFUSED_EXPIRED
            over = make_grant(await challenge(), cap_fen=MAX_CAP_FEN + 1)
            assert await refusal(link.write_grant(over)) == wg.REFUSED_OVER_CAP
            # a grant with no challenge ever read for it
            assert await refusal(link.write_grant(make_grant(os.urandom(16)))) == wg.REFUSED_NO_CHALLENGE
            # control without a session of one's own
            assert await refusal(link.control(wg.CONTROL_START)) == wg.REFUSED_NOT_YOURS

            assert fake.opened == [] and not fake.valve_open
            # the refusal texts reach the phone, Chinese first
            with pytest.raises(PhoneBleError) as caught:
                await link.write_grant(good)
            assert str(caught.value) == "%s / %s" % wg.REFUSAL_TEXTS[wg.REFUSED_NO_CHALLENGE]
            # and after all that, a good grant still works
            await link.write_grant(make_grant(await challenge(), grant_id=9))
            assert [g.grant_id for g in fake.opened] == [9]
            assert await refusal(link.write_grant(make_grant(await challenge(), grant_id=10))) == wg.REFUSED_BUSY
            assert [g.grant_id for g in fake.opened] == [9]
    run(body())


def test_malformed_att_traffic_and_handler_bugs_do_not_stop_the_radio():
    async def body():
        async with setting() as (air, radio, fake, (phone,)):
            link = await phone.connect(radio.address)
            _, challenge = await link.read_challenge()
            grant = make_grant(challenge) + bytes([wg.CONTROL_START])
            handle = link._characteristic(wg.GRANT_UUID).handle
            # a write without response is not how these characteristics are written: dropped, challenge kept
            await link.peer.write_value(handle, grant, with_response=False)
            # truncated ATT PDUs straight onto the ATT channel: a write request, a read request, nothing
            for pdu in (b"\x12", b"\x0a\x01", b"", b"\x16\x05"):
                link.connection.send_l2cap_pdu(4, pdu)
            await asyncio.sleep(0.05)
            assert fake.opened == [] and fake.session is None
            # a handler that raises something else answers "unlikely error", and the radio carries on
            fake.explode = True
            assert await refusal(link.read_progress()) == 0x0E
            fake.explode = False
            assert (await link.read_progress()).state == wg.PROGRESS_READY
            await link.write_grant(grant[:-1], start=False)   # the dropped write left the challenge live
            assert fake.session is not None and fake.opened == []
            await link.control(wg.CONTROL_START)
            assert [g.grant_id for g in fake.opened] == [1]
    run(body())


def test_a_link_lost_mid_session_reaches_the_handler_and_advertising_resumes():
    async def body():
        async with setting(phones=2) as (air, radio, fake, (phone, other)):
            link = await phone.connect(radio.address)
            _, challenge = await link.read_challenge()
            await link.write_grant(make_grant(challenge))
            assert fake.valve_open
            air.lose(1)                                # the phone walks out of range
            await asyncio.wait_for(link.lost.wait(), 2)
            for _ in range(100):
                if fake.lost:
                    break
                await asyncio.sleep(0.01)
            assert [lost.number for lost in fake.lost] == [1] and isinstance(fake.lost[0], Link)
            assert not fake.valve_open and wg.decode_receipt(fake.receipt).end_reason == wg.END_LINK_LOST
            with pytest.raises(PhoneBleError) as caught:
                await link.read_challenge()
            assert "蓝牙连接已断开" in str(caught.value)
            # the dispenser advertises again: another phone finds it and connects
            assert (await other.find(DISPENSER_ID, timeout_ms=2000)).address == radio.address
            second = await other.connect(radio.address)
            assert (await second.read_challenge())[0] == DISPENSER_ID
    run(body())


def test_connection_limit_and_idle_disconnection():
    async def body():
        async with setting(phones=2, max_links=1, idle_timeout_ms=400) as (air, radio, fake, (phone, other)):
            link = await phone.connect(radio.address)
            assert len(radio.links) == 1
            # at the limit the dispenser is not connectable
            with pytest.raises(PhoneBleError) as caught:
                await other.connect(radio.address, timeout_ms=300)
            assert caught.value.code is None and "连接开水机失败" in str(caught.value)
            # a squatting phone is dropped once idle, and the other gets in
            started = time.perf_counter()
            await asyncio.wait_for(link.lost.wait(), 3)
            idle_s = time.perf_counter() - started
            assert [lost.number for lost in fake.lost] == [1]
            second = await other.connect(radio.address, timeout_ms=2000)
            # traffic keeps a link: reads every 150 ms for longer than the idle timeout
            for _ in range(6):
                await second.read_progress()
                await asyncio.sleep(0.15)
            assert second.connected
            print("\n[ble timing] idle link (400 ms timeout) dropped after %.0f ms" % (idle_s * 1000))
    run(body())


def test_progress_notify_reaches_only_the_named_link():
    async def body():
        async with setting(phones=2, fake=FakeDispenser(meter_notes=0)) as (air, radio, fake, (phone, other)):
            first = await phone.connect(radio.address)
            second = await other.connect(radio.address)
            assert len(radio.links) == 2
            one, two = radio.links
            note = wg.encode_progress(wg.PROGRESS_DISPENSING, 10, 1, 100)
            assert await radio.notify_progress(note, one)
            assert (await first.next_progress(1000)).ml == 10
            with pytest.raises(PhoneBleError):
                await second.next_progress(200)
            await radio.notify_progress(wg.encode_progress(wg.PROGRESS_DISPENSING, 20, 2, 100))
            assert (await first.next_progress(1000)).ml == 20 and (await second.next_progress(1000)).ml == 20
            assert not await radio.notify_progress(note, Link(99, "nobody"))
            with pytest.raises(ValueError):
                await radio.notify_progress(bytes(21), one)
            future = radio.notify_progress_threadsafe(note, two)
            await asyncio.wrap_future(future)
            assert (await second.next_progress(1000)).ml == 10
    run(body())
