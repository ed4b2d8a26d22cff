"""扫码用水 as the campus app does it: find the dispenser (its sticker or nearby), Start, End, receipt.

The phone is the only party that talks to both the server (simulators/phone.py's PhoneApp, HTTP) and
the dispenser (simulators/phone_ble.py's DispenserLink, Bluetooth LE). Pressing Start is three round
trips: read the dispenser's challenge, have the server hold money and sign a grant for it, write the
grant with the start byte; the valve opens when the dispenser has verified it. Pressing End writes the
end control; the dispenser closes the valve, journals the session and notifies its end; the phone
reads the MAC'd receipt and hands it to the server, which settles the grant (or finds it settled by
the dispenser's own batch already). A phone that walks away simply disconnects: the dispenser ends the
session itself, and its batch settles it.

`WaterSession` keeps the timings of each step, for the benchmark (benchmarks/water_start.py) and the
developer's `ykt phone water`.
"""
import asyncio
import time

from firmware.core import water_grants
from simulators.phone_ble import PhoneBleError

END_NOTE_TIMEOUT_MS = 10_000


def dispenser_from_sticker(path):
    """(dispenser_id, address) from a photo of the sticker (zxing-cpp), as the app's scanner reads it."""
    from simulators import sticker_scan
    return sticker_scan.scan_sticker(path)


class WaterSession:
    """One phone's session at one dispenser, over a connected DispenserLink."""

    def __init__(self, app, link):
        self.app = app                  # a bound simulators.phone.PhoneApp
        self.link = link
        self.grant = None               # the server's answer: grant_id, cap_fen, ...
        self.timings_s = {}             # step -> seconds
        self.receipt = None
        self.settlement = None
        self.last_progress = None

    async def start(self, start_now=True):
        """Press Start: challenge -> grant -> write. Returns the grant's cap in fen."""
        started = time.perf_counter()
        dispenser_id, challenge = await self.link.read_challenge()
        read_s = time.perf_counter()
        challenge_bytes = water_grants.encode_challenge(dispenser_id, challenge)
        self.grant = await asyncio.to_thread(self.app.water_grant, dispenser_id, challenge_bytes)
        granted_s = time.perf_counter()
        try:
            await self.link.write_grant(self.grant["grant"], start=start_now)
        except PhoneBleError:
            # refused (busy, out of order) or no answer: give the hold back now rather than at its
            # expiry; should the dispenser have started after all, its receipt is still charged
            await asyncio.to_thread(self.app.water_give_up, self.grant["grant_id"])
            raise
        written_s = time.perf_counter()
        self.timings_s.update({"challenge": read_s - started, "grant": granted_s - read_s,
                               "write": written_s - granted_s, "start": written_s - started})
        return self.grant["cap_fen"]

    async def end(self, hand_in=True):
        """Press End: stop the water, wait for the dispenser's end note, read and hand in the receipt."""
        await self.link.control(water_grants.CONTROL_END)
        await self.wait_for_end()
        return await self.finish(hand_in)

    async def wait_for_end(self, timeout_ms=END_NOTE_TIMEOUT_MS):
        """Follow the progress notes until the session's end (the cap, the machine's End, ...)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while time.monotonic() < deadline:
            remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
            note = await self.link.next_progress(remaining_ms)
            self.last_progress = note
            if note.state == water_grants.PROGRESS_ENDED:
                return note
            if note.state >= water_grants.REFUSED_MALFORMED:
                # a board whose stack cannot refuse a write with an ATT error (firmware/esp32) says so here
                raise PhoneBleError.refused(note.state)
        raise PhoneBleError(("开水机未结束用水", "the dispenser did not end the session"))

    async def finish(self, hand_in=True):
        self.receipt = await self.link.read_receipt()
        if hand_in:
            self.settlement = await asyncio.to_thread(self.app.water_receipt, self.receipt)
        return water_grants.decode_receipt(self.receipt)

    async def walk_away(self):
        """The phone leaves mid-session: the link drops, the dispenser settles without the phone."""
        await self.link.disconnect()
