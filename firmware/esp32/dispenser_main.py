"""The water dispenser on an ESP32-class board (MicroPython): valve, flow meter, buttons, Bluetooth.

The same sans-IO core as the Raspberry Pi dispenser (firmware/core/dispenser.py and
water_grants.py); only the shell differs:

    valve       machine.Pin(VALVE_PIN, Pin.OUT), driven low (closed) before anything else runs
    meter       machine.Pin(METER_PIN, Pin.IN) with an IRQ on each rising edge that only counts
                (no allocation in the handler); the main loop takes the count every TICK_MS
    buttons     Start / End on pins with pull-ups, read by the loop (pressed = 0)
    Bluetooth   the water service of water_grants on `aioble` (micropython-lib): CHALLENGE served
                fresh on each read, GRANT and CONTROL captured writes, PROGRESS notified, RECEIPT
    progress    PersistProgress goes to PROGRESS_FILE (written to a temporary file and renamed, so a
                power cut leaves the old or the new progress, never half of one); at power-up the
                machine settles a session it finds there
    journal     each session's 52-byte record (firmware/core/records.py) appended to JOURNAL_FILE,
                at most MAX_JOURNAL_RECORDS; the Pi's dispensers keep SQLite and sync over HTTP

What differs from the Pi, and why:
- aioble accepts every write into the GATT table and tells the program afterwards, so a refused
  grant cannot become an ATT error response as on the Pi. The board answers on PROGRESS instead:
  its state byte carries the refusal code itself (REFUSED_*, 0x80-0x88, above every PROGRESS_*
  state), which the phone shows as it shows an ATT error.
- One phone at a time (aioble serves one connection per advertise() round here); the GrantGate
  still keeps a challenge per read.
- Not on this board yet: syncing the journal to the server over Wi-Fi (the records wait in
  JOURNAL_FILE, bounded; a board that is full refuses new sessions) and card taps (no reader wired).
  The receipts phones carry still settle every Bluetooth session on the server.

The water key and the dispenser's id come from CONFIG_FILE (JSON written when the board is flashed:
{"dispenser_id": 7, "water_key": "<hex>", "price_fen_per_litre": 30, ...}).
"""
import asyncio
import json
import os
import struct
import time

import aioble
import bluetooth
from machine import Pin

from firmware.core import dispenser, records, sam, wallets, water_grants

VALVE_PIN = 4
METER_PIN = 5
START_PIN = 18
END_PIN = 19
TICK_MS = 100
ADVERTISING_INTERVAL_US = 100_000
CONFIG_FILE = "dispenser.json"
PROGRESS_FILE = "water_progress.json"
JOURNAL_FILE = "water_journal.bin"
MAX_JOURNAL_RECORDS = 2000
CHALLENGE_LIFETIME_MS = 120_000
DEFAULTS = {"pulses_per_litre": 450, "persist_interval_ml": 50, "idle_timeout_ms": 30000, "stall_ms": 5000,
            "price_fen_per_litre": 30, "max_session_fen": 500, "max_session_ms": 600000, "tap_starts": False}


def _uuid(text: str) -> bluetooth.UUID:
    return bluetooth.UUID(text)


class Board:
    def __init__(self, config: dict) -> None:
        # the valve first: closed before the files, the radio or anything else is touched
        self.valve = Pin(VALVE_PIN, Pin.OUT, value=0)
        self.pulses = 0
        self.meter = Pin(METER_PIN, Pin.IN, Pin.PULL_UP)
        self.meter.irq(handler=self._pulse, trigger=Pin.IRQ_RISING)
        self.start_button = Pin(START_PIN, Pin.IN, Pin.PULL_UP)
        self.end_button = Pin(END_PIN, Pin.IN, Pin.PULL_UP)
        self.dispenser_id = config["dispenser_id"]
        self.merchant_id = config.get("merchant_id", 0)
        self.holder = sam.SoftwareSAM({sam.WATER: bytes.fromhex(config["water_key"])})
        machine_config = dict(DEFAULTS)
        for key in DEFAULTS:
            if key in config:
                machine_config[key] = config[key]
        self.machine = dispenser.Dispenser(machine_config)
        self.gate = water_grants.GrantGate(self.dispenser_id, self.holder.water_mac, machine_config["max_session_fen"],
                                           CHALLENGE_LIFETIME_MS)
        self.grant_connection = None
        self.receipt = b""
        self.seq = self._last_seq()
        self.service = aioble.Service(_uuid(water_grants.SERVICE_UUID))
        self.challenge_char = ChallengeCharacteristic(self, self.service, _uuid(water_grants.CHALLENGE_UUID))
        self.grant_char = aioble.Characteristic(self.service, _uuid(water_grants.GRANT_UUID), write=True,
                                                capture=True)
        self.control_char = aioble.Characteristic(self.service, _uuid(water_grants.CONTROL_UUID), write=True,
                                                  capture=True)
        self.progress_char = aioble.Characteristic(self.service, _uuid(water_grants.PROGRESS_UUID), read=True,
                                                   notify=True)
        self.receipt_char = aioble.Characteristic(self.service, _uuid(water_grants.RECEIPT_UUID), read=True)
        aioble.register_services(self.service)

    # -- the meter's interrupt: count only ------------------------------------------------------
    def _pulse(self, pin: Pin) -> None:
        self.pulses += 1

    def take_pulses(self) -> int:
        count = self.pulses
        self.pulses -= count        # edges arriving meanwhile are kept for the next take
        return count

    # -- the machine's actions -------------------------------------------------------------------
    def feed(self, event) -> None:
        queue = [event]
        while queue:
            for action in self.machine.handle(queue.pop(0)):
                follow = self.execute(action)
                if follow is not None:
                    queue.append(follow)

    def execute(self, action):
        if isinstance(action, dispenser.OpenValve):
            self.valve.value(1)
        elif isinstance(action, dispenser.CloseValve):
            self.valve.value(0)
        elif isinstance(action, dispenser.PersistProgress):
            self._persist(action.progress)
        elif isinstance(action, dispenser.Journal):
            return self._journal(action.record_fields)
        return None             # Show, Beep, Alarm: the board has no display; the phone sees PROGRESS

    def _persist(self, progress) -> None:
        if progress is None:
            try:
                os.remove(PROGRESS_FILE)
            except OSError:
                pass
            return
        with open(PROGRESS_FILE + ".new", "w") as handle:
            handle.write(json.dumps([list(progress.source), progress.cap_fen, progress.start_ms, progress.ml]))
        os.rename(PROGRESS_FILE + ".new", PROGRESS_FILE)

    def saved_progress(self):
        try:
            with open(PROGRESS_FILE) as handle:
                source, cap_fen, start_ms, ml = json.loads(handle.read())
        except (OSError, ValueError):
            return None
        return dispenser.Progress(tuple(source), cap_fen, start_ms, ml)

    def _last_seq(self) -> int:
        try:
            size = os.stat(JOURNAL_FILE)[6]
        except OSError:
            return 0
        if size < records.RECORD_SIZE:
            return 0
        with open(JOURNAL_FILE, "rb") as handle:
            handle.seek(size - records.RECORD_SIZE)
            return struct.unpack(">I", handle.read(records.RECORD_SIZE)[8:12])[0]

    def _journal(self, fields: dict):
        source = fields["source"]
        grant = source[0] == "grant"
        try:
            size = os.stat(JOURNAL_FILE)[6]
        except OSError:
            size = 0
        if size // records.RECORD_SIZE >= MAX_JOURNAL_RECORDS:
            return None         # full: the session stays persisted and is settled once there is room
        self.seq += 1
        record = records.encode_water(
            self.dispenser_id, self.seq, time.time() * 1000, 0 if grant else source[1], source[2],
            0 if grant else source[3], wallets.CATEGORY_WATER, source[1] if grant else source[4], fields["fen"],
            self.merchant_id, fields["ml"], (fields["end_ms"] - fields["start_ms"]) // 1000, fields["end_reason"],
            grant=grant)
        with open(JOURNAL_FILE, "ab") as handle:
            handle.write(record)
        self._persist(None)
        if grant:
            self.receipt = water_grants.encode_receipt(self.holder.water_mac, water_grants.Receipt(
                self.dispenser_id, source[1], self.seq, fields["ml"], fields["fen"], fields["cap_fen"],
                fields["end_ms"] - fields["start_ms"], fields["end_reason"]))
            self.receipt_char.write(self.receipt)
            self.notify(water_grants.encode_progress(water_grants.PROGRESS_ENDED, fields["ml"], fields["fen"],
                                                     fields["cap_fen"]))
        return dispenser.Journaled(self.seq)

    # -- Bluetooth ---------------------------------------------------------------------------------
    def notify(self, data: bytes) -> None:
        self.progress_char.write(data)
        if self.grant_connection is not None:
            try:
                self.progress_char.notify(self.grant_connection, data)
            except (OSError, ValueError):
                pass

    def refuse(self, code: int) -> None:
        self.notify(water_grants.encode_progress(code, 0, 0, 0))

    def progress(self) -> bytes:
        m = self.machine
        state = water_grants.PROGRESS_DISPENSING if m.state == dispenser.DISPENSING else \
            water_grants.PROGRESS_AUTHORISED if m.state == dispenser.AUTHORISED else water_grants.PROGRESS_READY
        return water_grants.encode_progress(state, m.ml(), m.charged_fen(), m.cap_fen)

    async def serve_grants(self) -> None:
        while True:
            connection, data = await self.grant_char.written()
            data = bytes(data)
            start = len(data) == water_grants.GRANT_SIZE + 1 and data[-1] == water_grants.CONTROL_START
            if len(data) == water_grants.GRANT_SIZE + 1:
                data = data[:-1]
            if self.machine.state not in (dispenser.IDLE, dispenser.AUTHORISED):
                self.refuse(water_grants.REFUSED_BUSY)
                continue
            now_ms = time.ticks_ms()
            try:
                grant = self.gate.accept(data, now_ms)
            except water_grants.WaterMessageError as error:
                self.refuse(error.code)
                continue
            self.grant_connection = connection
            self.feed(dispenser.GrantVerified(grant.grant_id, grant.account_id, grant.cap_fen,
                                              now_ms + self.machine.config["idle_timeout_ms"]))
            if start:
                self.feed(dispenser.Start())
            self.notify(self.progress())

    async def serve_controls(self) -> None:
        while True:
            connection, data = await self.control_char.written()
            try:
                control = water_grants.decode_control(bytes(data))
            except water_grants.WaterMessageError as error:
                self.refuse(error.code)
                continue
            if connection != self.grant_connection:
                self.refuse(water_grants.REFUSED_NOT_YOURS)
            elif control == water_grants.CONTROL_START:
                self.feed(dispenser.Start())
            else:
                self.feed(dispenser.End())

    async def advertise(self) -> None:
        name = water_grants.ADVERT_NAME_PREFIX + str(self.dispenser_id)
        while True:
            connection = await aioble.advertise(
                ADVERTISING_INTERVAL_US, name=name, services=[_uuid(water_grants.SERVICE_UUID)],
                manufacturer=(water_grants.MANUFACTURER_ID, water_grants.advert_manufacturer_data(self.dispenser_id)))
            await connection.disconnected(timeout_ms=None)
            if connection == self.grant_connection:
                self.grant_connection = None
                self.feed(dispenser.LinkLost())

    # -- the loop ------------------------------------------------------------------------------------
    async def tick(self) -> None:
        while True:
            await asyncio.sleep_ms(TICK_MS)
            if self.start_button.value() == 0 and self.machine.state == dispenser.AUTHORISED:
                self.feed(dispenser.Start())
            if self.end_button.value() == 0 and self.machine.state == dispenser.DISPENSING:
                self.feed(dispenser.End())
            self.feed(dispenser.Tick(time.ticks_ms()))
            count = self.take_pulses()
            if count:
                self.feed(dispenser.Pulses(min(count, dispenser.MAX_PULSES_PER_EVENT)))
            if self.machine.state == dispenser.DISPENSING:
                self.notify(self.progress())


class ChallengeCharacteristic(aioble.Characteristic):
    """CHALLENGE: a fresh challenge written into the table on each read, before the read is served."""

    def __init__(self, board: Board, service: aioble.Service, uuid: bluetooth.UUID) -> None:
        super().__init__(service, uuid, read=True)
        self.board = board

    def on_read(self, connection: aioble.DeviceConnection) -> int:
        self.write(self.board.gate.challenge(os.urandom(water_grants.CHALLENGE_BYTES), time.ticks_ms()))
        return 0


async def main() -> None:
    with open(CONFIG_FILE) as handle:
        config = json.loads(handle.read())
    board = Board(config)
    board.feed(dispenser.PowerUp(time.ticks_ms(), board.saved_progress()))
    await asyncio.gather(board.advertise(), board.serve_grants(), board.serve_controls(), board.tick())


if __name__ == "__main__":
    asyncio.run(main())
