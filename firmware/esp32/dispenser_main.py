"""The water dispenser on an ESP32-class board (MicroPython): valve, flow meter, buttons, Bluetooth.

The same sans-IO core as the Raspberry Pi dispenser (firmware/core/dispenser.py and
water_grants.py); only the shell differs:

    valve       machine.Pin(VALVE_PIN, Pin.OUT), driven low (closed) before anything else runs; the
                valve's driver needs a pull-down so it is closed while the chip resets and boots too
    meter       machine.Pin(METER_PIN, Pin.IN) with an IRQ on each rising edge that only counts
                (no allocation in the handler); the main loop takes the count every TICK_MS
    buttons     Start / End on pins with pull-ups, read by the loop every TICK_MS (pressed = 0)
    Bluetooth   the water service of water_grants on `aioble` (micropython-lib): CHALLENGE served
                fresh on each read, GRANT and CONTROL captured writes, PROGRESS notified, RECEIPT
                readable by the phone whose session it is
    progress    PersistProgress goes to PROGRESS_FILE (written to a temporary file and renamed, so a
                power cut leaves the old or the new progress, never half of one); at power-up the
                machine settles a session it finds there
    journal     each session's 52-byte record (firmware/core/records.py) appended to JOURNAL_FILE,
                at most MAX_JOURNAL_RECORDS; the Pi's dispensers keep them in SQLite and sync them
                over HTTP
    clock       BoardClock: milliseconds that never go backwards, across ticks_ms wrapping and
                across power cuts (its floor is the last journal record and the saved progress)

What differs from the Pi, and why:
- aioble accepts every write into the GATT table and tells the program afterwards, so a refused
  grant cannot become an ATT error response as on the Pi. The board answers on PROGRESS instead,
  notified to the phone that wrote: its state byte carries the refusal code itself (REFUSED_*,
  0x80-0x88, above every PROGRESS_* state), which the phone shows as it shows an ATT error. Reads
  can be refused (aioble's on_read): RECEIPT answers another phone with REFUSED_NOT_YOURS.
- MicroPython keeps 20 bytes per characteristic unless told otherwise, and cuts a longer write to
  that; GRANT is a BufferedCharacteristic of MAX_WRITE_BYTES so the 54-byte grant arrives whole.
  A phone should still exchange a larger ATT MTU first (NimBLE, which the ESP32 port runs, offers
  up to its preferred MTU and reassembles a Write Long).
- The board advertises with the controller's own address: MicroPython's `bluetooth` has no call
  that sets a given static address, so unlike the Pi it is not at water_grants.static_address(id).
  A phone that scanned the sticker finds it by its advertisement, whose manufacturer data names the
  id (the address is printed at boot for whoever installs the board).
- Reads are answered on the Bluetooth stack's own task (see ChallengeCharacteristic), writes are
  queued by aioble and taken by the loop; the only state both touch is the GrantGate, under a lock.
- One phone at a time: advertising stops while a phone is connected, and a link that is not running
  a session is dropped after LINK_IDLE_MS without traffic, so nobody can hold the machine.
- Not on this board yet: syncing the journal to the server over Wi-Fi, and card taps (no reader
  wired). Every Bluetooth session's receipt goes back through the phone, which is how the server
  settles it today; the journal keeps the records until staff copy JOURNAL_FILE off the board
  (mpremote) and empty it. It is a bounded log, not a ring that overwrites: a record is money, and
  nothing here knows which ones the server has, so a board whose journal is full refuses new grants
  (REFUSED_OUT_OF_ORDER) instead of losing records.
- Storage is LittleFS (the ESP32 port's default): an append or a rename is committed whole when the
  file is closed. A journal that ends in a partial or corrupt record anyway is cut back to its last
  whole record at power-up.
- Journal and PersistProgress(None) cannot be one transaction as in the Pi's SQLite: the record is
  appended first and the progress removed after it. A power cut between the two leaves a progress
  whose session is the journal's last record; power-up sees that and does not settle it again.

The water key and the dispenser's id come from CONFIG_FILE (JSON written when the board is flashed:
{"dispenser_id": 7, "merchant_id": 3, "water_key": "<64 hex digits>", "price_fen_per_litre": 30, ...}).
Install: copy firmware/__init__.py, firmware/core/ and this file (as main.py) to the board, and
aioble (`mpremote mip install aioble`).
"""
import _thread
import asyncio
import json
import os
import time

import aioble
import bluetooth
import machine
from machine import Pin

from firmware.core import dispenser, messages, records, sam, wallets, water_grants

VALVE_PIN = 4
METER_PIN = 5
START_PIN = 18
END_PIN = 19
TICK_MS = 100
WATCHDOG_MS = 10_000             # the tick loop feeds it; a hung board resets, closes the valve, settles
ADVERTISING_INTERVAL_US = 100_000
LINK_CHECK_MS = 1_000
LINK_IDLE_MS = 30_000
CONFIG_FILE = "dispenser.json"
PROGRESS_FILE = "water_progress.json"
JOURNAL_FILE = "water_journal.bin"
MAX_JOURNAL_RECORDS = 2000       # 104 KB of flash
COPY_CHUNK_BYTES = 512
CHALLENGE_LIFETIME_MS = 120_000
MAX_EVENTS_PER_INPUT = 8         # one event and what follows from it (a Journal's Journaled)
# time.time() counts from 2000-01-01 on ports built with MICROPY_EPOCH_IS_2000 (the ESP32's), from
# 1970 on others; records want milliseconds since the Unix epoch
EPOCH_OFFSET_MS = 946_684_800_000 if time.gmtime(0)[0] == 2000 else 0
DEFAULTS = {"pulses_per_litre": 450, "persist_interval_ml": 50, "idle_timeout_ms": 30000, "stall_ms": 5000,
            "price_fen_per_litre": 30, "max_session_fen": 500, "max_session_ms": 600000, "tap_starts": False}


def _uuid(text: str) -> bluetooth.UUID:
    return bluetooth.UUID(text)


def _file_size(path: str) -> int:
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def load_config() -> dict:
    try:
        with open(CONFIG_FILE) as handle:
            config = json.loads(handle.read())
        int(config["dispenser_id"])
        if len(bytes.fromhex(config["water_key"])) != 32:
            raise ValueError("water_key")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError("配置文件 %s 缺失或有误 / %s is missing or bad: %r" % (CONFIG_FILE, CONFIG_FILE, error))
    return config


class BoardClock:
    """Milliseconds since the Unix epoch as far as the board knows, never going backwards.

    time.ticks_ms() wraps (after about 12 days on the ESP32) and the RTC starts again at 2000-01-01
    after a power cut, so neither is used directly: the clock starts at the RTC or at `floor_ms`
    (the latest time the board wrote down before), whichever is later, and then adds the ticks that
    pass. now_ms() must run at least every few days for ticks_diff to see the steps; the loop calls
    it every TICK_MS. Until Wi-Fi sync sets the time, record times are right in order, not in date.
    """

    def __init__(self, floor_ms: int) -> None:
        self._ms = max(int(time.time()) * 1000 + EPOCH_OFFSET_MS, floor_ms)
        self._ticks = time.ticks_ms()

    def now_ms(self) -> int:
        """The time now; from the loop only (it updates the clock)."""
        ticks = time.ticks_ms()
        self._ms += max(0, time.ticks_diff(ticks, self._ticks))
        self._ticks = ticks
        return self._ms

    def latest_ms(self) -> int:
        """The time the loop last saw (at most TICK_MS old), for the Bluetooth stack's task."""
        return self._ms


class Journal:
    """JOURNAL_FILE: the sessions' records back to back, appended, at most MAX_JOURNAL_RECORDS."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self.last: tuple | None = None       # records.FIELDS of the last record
        self.damaged = False
        self._recover()

    def _recover(self) -> None:
        """Cut a partial or corrupt last record off (a power cut on a file system without atomic
        appends); the records before it were each committed whole. A journal damaged further back
        than its last record is left alone for staff, and the board takes no more sessions."""
        size = _file_size(self.path)
        whole = size - size % records.RECORD_SIZE
        self.last = self._record_before(whole)
        if self.last is None and whole:
            whole -= records.RECORD_SIZE        # the record the power cut short
            self.last = self._record_before(whole)
            self.damaged = whole > 0 and self.last is None
        if whole != size and not self.damaged:
            self._keep_first(whole)
        self.count = whole // records.RECORD_SIZE

    def _record_before(self, offset: int) -> tuple | None:
        """records.FIELDS of the record that ends at `offset`, or None (none there, or not whole)."""
        if offset < records.RECORD_SIZE:
            return None
        with open(self.path, "rb") as handle:
            handle.seek(offset - records.RECORD_SIZE)
            data = handle.read(records.RECORD_SIZE)
        try:
            return records.decode_tuple(data)
        except records.RecordError:
            return None

    def _keep_first(self, length: int) -> None:
        """The file cut to `length` bytes (MicroPython has no truncate): copied and renamed."""
        with open(self.path, "rb") as source, open(self.path + ".new", "wb") as target:
            left = length
            while left > 0:          # bounded by the journal's size / COPY_CHUNK_BYTES
                chunk = source.read(min(COPY_CHUNK_BYTES, left))
                if not chunk:
                    break
                target.write(chunk)
                left -= len(chunk)
        os.rename(self.path + ".new", self.path)

    def full(self) -> bool:
        return self.damaged or self.count >= MAX_JOURNAL_RECORDS

    def last_seq(self) -> int:
        return self.last[4] if self.last is not None else 0

    def last_time_ms(self) -> int:
        return self.last[5] if self.last is not None else 0

    def append(self, record: bytes) -> None:
        with open(self.path, "ab") as handle:
            handle.write(record)
        self.last = records.decode_tuple(record)
        self.count += 1

    def holds_session(self, progress) -> bool:
        """Whether the last record is the session `progress` was saving (journaled before the power
        went, its progress not yet removed)."""
        last, source = self.last, progress.source
        if last is None or last[5] < progress.start_ms:
            return False
        if source[0] == "grant":
            return last[1] == records.KIND_WATER_GRANT and last[10] == source[1] and last[7] == source[2]
        return last[1] == records.KIND_WATER and last[6] == source[1] and last[10] == source[4]


def saved_progress():
    """(dispenser.Progress, the board time it was saved at) from PROGRESS_FILE, or None."""
    try:
        with open(PROGRESS_FILE) as handle:
            source, cap_fen, start_ms, ml, saved_ms = json.loads(handle.read())
    except (OSError, ValueError, TypeError):
        return None
    return dispenser.Progress(tuple(source), cap_fen, start_ms, ml), saved_ms


def forget_progress() -> None:
    try:
        os.remove(PROGRESS_FILE)
    except OSError:
        pass


class Board:
    def __init__(self, config: dict, valve: Pin, clock: BoardClock, journal: Journal) -> None:
        self.valve = valve
        self.clock = clock
        self.journal = journal
        self.pulses = 0
        self.meter = Pin(METER_PIN, Pin.IN, Pin.PULL_UP)
        self.meter.irq(handler=self._pulse, trigger=Pin.IRQ_RISING)
        self.start_button = Pin(START_PIN, Pin.IN, Pin.PULL_UP)
        self.end_button = Pin(END_PIN, Pin.IN, Pin.PULL_UP)
        self.dispenser_id = int(config["dispenser_id"])
        self.merchant_id = int(config.get("merchant_id", 0))
        self.holder = sam.SoftwareSAM({sam.WATER: bytes.fromhex(config["water_key"])})
        machine_config = dict(DEFAULTS)
        for key in DEFAULTS:
            if key in config:
                machine_config[key] = config[key]
        self.machine = dispenser.Dispenser(machine_config)
        self.gate = water_grants.GrantGate(self.dispenser_id, self.holder.water_mac, machine_config["max_session_fen"],
                                           CHALLENGE_LIFETIME_MS)
        self.gate_lock = _thread.allocate_lock()    # CHALLENGE reads come from the Bluetooth stack's task
        self.alarm: str | None = None            # a message code while the board is out of order
        self.watchdog: machine.WDT | None = None
        self.grant_connection: aioble.DeviceConnection | None = None
        self.receipt_connection: aioble.DeviceConnection | None = None
        self.link_seen_ms = 0
        self.service = aioble.Service(_uuid(water_grants.SERVICE_UUID))
        self.challenge_char = ChallengeCharacteristic(self, self.service, _uuid(water_grants.CHALLENGE_UUID))
        self.grant_char = aioble.BufferedCharacteristic(self.service, _uuid(water_grants.GRANT_UUID), write=True,
                                                        capture=True, max_len=water_grants.MAX_WRITE_BYTES)
        self.control_char = aioble.Characteristic(self.service, _uuid(water_grants.CONTROL_UUID), write=True,
                                                  capture=True)
        self.progress_char = aioble.Characteristic(self.service, _uuid(water_grants.PROGRESS_UUID), read=True,
                                                   notify=True, initial=self.progress())
        self.receipt_char = ReceiptCharacteristic(self, self.service, _uuid(water_grants.RECEIPT_UUID))
        aioble.register_services(self.service)

    # -- the meter's interrupt: count only ------------------------------------------------------
    def _pulse(self, pin: Pin) -> None:
        self.pulses += 1

    def take_pulses(self) -> int:
        # The ESP32 runs pin handlers from the scheduler, between bytecodes; with interrupts off no
        # edge is even queued while the count is read and cleared, on any port.
        state = machine.disable_irq()
        count = self.pulses
        self.pulses = 0
        machine.enable_irq(state)
        return count

    # -- the machine's actions -------------------------------------------------------------------
    def feed(self, event) -> None:
        """Hand one event to the machine and carry out what it asks, with what follows from that."""
        queue = [event]
        handled = 0
        while queue:
            handled += 1
            assert handled <= MAX_EVENTS_PER_INPUT, "event loop did not settle"
            journaled = False
            for action in self.machine.handle(queue.pop(0)):
                if isinstance(action, dispenser.PersistProgress) and action.progress is None and journaled:
                    continue    # the journal removed it after the record was written, or kept it
                follow = self.execute(action)
                if isinstance(action, dispenser.Journal):
                    journaled = True
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
        elif isinstance(action, dispenser.Alarm):
            self.alarm = action.message_code
            print("alarm:", action.message_code)
        return None             # Show, Beep: the board has no display; the phone sees PROGRESS

    def _persist(self, progress) -> None:
        if progress is None:
            forget_progress()
            return
        with open(PROGRESS_FILE + ".new", "w") as handle:
            handle.write(json.dumps([list(progress.source), progress.cap_fen, progress.start_ms, progress.ml,
                                     self.clock.now_ms()]))
        os.rename(PROGRESS_FILE + ".new", PROGRESS_FILE)

    def _journal(self, fields: dict):
        """Append the session's record, then remove its progress; None (the machine stays settling,
        the progress stays for the next power-up) when it cannot be written."""
        source = fields["source"]
        grant = source[0] == "grant"
        if self.journal.full():
            self.alarm = messages.JOURNAL_FAILED
            return None
        seq = self.journal.last_seq() + 1
        duration_ms = max(0, fields["end_ms"] - fields["start_ms"])
        try:
            record = records.encode_water(
                self.dispenser_id, seq, max(self.clock.now_ms(), self.journal.last_time_ms() + 1),
                0 if grant else source[1], source[2], 0 if grant else source[3], wallets.CATEGORY_WATER,
                source[1] if grant else source[4], fields["fen"], self.merchant_id, fields["ml"],
                duration_ms // 1000, fields["end_reason"], grant=grant)
            self.journal.append(record)
        except (OSError, records.RecordError) as error:
            self.alarm = messages.JOURNAL_FAILED
            print("journal:", error)
            return None
        forget_progress()
        if grant:
            receipt = water_grants.encode_receipt(self.holder.water_mac, water_grants.Receipt(
                self.dispenser_id, source[1], seq, fields["ml"], fields["fen"], fields["cap_fen"], duration_ms,
                fields["end_reason"]))
            self.receipt_char.write(receipt)
            self.receipt_connection = self.grant_connection
            self.notify(water_grants.encode_progress(water_grants.PROGRESS_ENDED, fields["ml"], fields["fen"],
                                                     fields["cap_fen"]), self.grant_connection)
        self.grant_connection = None
        self.link_seen_ms = self.clock.now_ms()
        return dispenser.Journaled(seq)

    # -- Bluetooth ---------------------------------------------------------------------------------
    def notify(self, data: bytes, connection: aioble.DeviceConnection | None) -> None:
        """PROGRESS set to `data`, and notified to `connection` when there is one."""
        self.progress_char.write(data)
        if connection is not None and connection.is_connected():
            try:
                self.progress_char.notify(connection, data)
            except (OSError, ValueError):
                pass            # the link is going: its LinkLost follows

    def refuse(self, code: int, connection: aioble.DeviceConnection | None) -> None:
        self.notify(water_grants.encode_progress(code, 0, 0, 0), connection)

    def progress(self) -> bytes:
        m = self.machine
        state = water_grants.PROGRESS_DISPENSING if m.state == dispenser.DISPENSING else \
            water_grants.PROGRESS_AUTHORISED if m.state == dispenser.AUTHORISED else water_grants.PROGRESS_READY
        return water_grants.encode_progress(state, m.ml(), m.charged_fen(), m.cap_fen)

    def refusal_for_grant(self) -> int | None:
        if self.machine.state == dispenser.FAULT or self.alarm is not None or self.journal.full():
            return water_grants.REFUSED_OUT_OF_ORDER
        if self.machine.state not in (dispenser.IDLE, dispenser.AUTHORISED):
            return water_grants.REFUSED_BUSY
        return None

    async def serve_grants(self) -> None:
        while True:             # the board's service: as long as it runs
            connection, data = await self.grant_char.written()
            self.link_seen_ms = self.clock.now_ms()
            data = bytes(data)
            start = len(data) == water_grants.GRANT_SIZE + 1 and data[-1] == water_grants.CONTROL_START
            if len(data) == water_grants.GRANT_SIZE + 1:
                data = data[:-1]
            refusal = self.refusal_for_grant()
            if refusal is not None:
                self.refuse(refusal, connection)
                continue
            now_ms = self.clock.now_ms()
            try:
                with self.gate_lock:
                    grant = self.gate.accept(data, now_ms)
            except water_grants.WaterMessageError as error:
                self.refuse(error.code, connection)
                continue
            self.grant_connection = connection
            self.feed(dispenser.GrantVerified(grant.grant_id, grant.account_id, grant.cap_fen,
                                              now_ms + self.machine.config["idle_timeout_ms"]))
            if start and self.machine.state == dispenser.AUTHORISED:
                self.feed(dispenser.Start())
            if self.machine.state not in (dispenser.AUTHORISED, dispenser.DISPENSING):
                self.grant_connection = None
                self.refuse(water_grants.REFUSED_OUT_OF_ORDER, connection)
                continue
            self.notify(self.progress(), connection)

    async def serve_controls(self) -> None:
        while True:             # the board's service: as long as it runs
            connection, data = await self.control_char.written()
            self.link_seen_ms = self.clock.now_ms()
            try:
                control = water_grants.decode_control(bytes(data))
            except water_grants.WaterMessageError as error:
                self.refuse(error.code, connection)
                continue
            if self.grant_connection is None or connection is not self.grant_connection:
                self.refuse(water_grants.REFUSED_NOT_YOURS, connection)
            elif control == water_grants.CONTROL_START:
                if self.machine.state == dispenser.DISPENSING:
                    self.refuse(water_grants.REFUSED_BUSY, connection)
                else:
                    self.feed(dispenser.Start())
                    self.notify(self.progress(), connection)
            else:
                self.feed(dispenser.End())

    async def serve_links(self) -> None:
        """Advertise; serve the phone that connects until it goes (or idles), then advertise again."""
        name = water_grants.ADVERT_NAME_PREFIX + str(self.dispenser_id)
        while True:             # the board's service: as long as it runs
            connection = await aioble.advertise(
                ADVERTISING_INTERVAL_US, name=name, services=[_uuid(water_grants.SERVICE_UUID)],
                manufacturer=(water_grants.MANUFACTURER_ID, water_grants.advert_manufacturer_data(self.dispenser_id)))
            if connection is None:
                return          # advertising was cancelled: the board is stopping
            self.link_seen_ms = self.clock.now_ms()
            while connection.is_connected():     # bounded by the link: idle ones are dropped below
                try:
                    await connection.disconnected(timeout_ms=LINK_CHECK_MS)
                except asyncio.TimeoutError:
                    idle_ms = self.clock.now_ms() - self.link_seen_ms
                    in_session = connection is self.grant_connection and self.machine.state in (
                        dispenser.AUTHORISED, dispenser.DISPENSING)
                    if not in_session and idle_ms >= LINK_IDLE_MS:
                        try:
                            await connection.disconnect()
                        except asyncio.TimeoutError:
                            pass        # tried again at the next check
            if connection is self.grant_connection:
                self.grant_connection = None
                self.feed(dispenser.LinkLost())
            if connection is self.receipt_connection:
                self.receipt_connection = None

    # -- the loop ------------------------------------------------------------------------------------
    async def tick(self) -> None:
        while True:             # the board's heartbeat: as long as it runs
            await asyncio.sleep_ms(TICK_MS)
            if self.watchdog is not None:
                self.watchdog.feed()
            if self.start_button.value() == 0 and self.machine.state == dispenser.AUTHORISED:
                self.feed(dispenser.Start())
            if self.end_button.value() == 0 and self.machine.state == dispenser.DISPENSING:
                self.feed(dispenser.End())
            self.feed(dispenser.Tick(self.clock.now_ms()))
            count = self.take_pulses()
            if count:           # 100000 pulses in one tick would be a meter fault, not water
                self.feed(dispenser.Pulses(min(count, dispenser.MAX_PULSES_PER_EVENT)))
            if self.machine.state == dispenser.DISPENSING:
                self.notify(self.progress(), self.grant_connection)


class ChallengeCharacteristic(aioble.Characteristic):
    """CHALLENGE: a fresh challenge written into the table on each read, before the read is served.

    aioble calls on_read from the read request, which the ESP32 port delivers synchronously on
    NimBLE's own FreeRTOS task (holding the GIL, which the loop gives up every few bytecodes): so it
    may run in the middle of the loop's work. It reads only the clock's last value and takes the
    gate's lock, as serve_grants does around accept()."""

    def __init__(self, board: Board, service: aioble.Service, uuid: bluetooth.UUID) -> None:
        super().__init__(service, uuid, read=True)
        self.board = board

    def on_read(self, connection: aioble.DeviceConnection | None) -> int:
        board = self.board
        now_ms = board.clock.latest_ms()
        board.link_seen_ms = now_ms
        with board.gate_lock:
            value = board.gate.challenge(os.urandom(water_grants.CHALLENGE_BYTES), now_ms)
        self.write(value)
        return 0


class ReceiptCharacteristic(aioble.Characteristic):
    """RECEIPT: the last session's receipt, for the phone whose session it was (a non-zero return
    from on_read is the ATT error the read is refused with)."""

    def __init__(self, board: Board, service: aioble.Service, uuid: bluetooth.UUID) -> None:
        super().__init__(service, uuid, read=True)
        self.board = board

    def on_read(self, connection: aioble.DeviceConnection | None) -> int:
        board = self.board
        board.link_seen_ms = board.clock.latest_ms()
        if connection is None or connection is not board.receipt_connection:
            return water_grants.REFUSED_NOT_YOURS
        return 0


async def main(valve: Pin) -> None:
    config = load_config()
    journal = Journal(JOURNAL_FILE)
    found = saved_progress()
    persisted = None
    floor_ms = journal.last_time_ms() + 1
    if found is not None:
        progress, saved_ms = found
        floor_ms = max(floor_ms, saved_ms, progress.start_ms)
        if journal.holds_session(progress):
            forget_progress()        # journaled just before the power went: settled already
        else:
            persisted = progress
    clock = BoardClock(floor_ms)
    board = Board(config, valve, clock, journal)
    board.feed(dispenser.PowerUp(clock.now_ms(), persisted))
    _addr_type, address = aioble.config("mac")
    address_text = ":".join("%02X" % b for b in address)
    print("开水机 %d 蓝牙地址 %s / dispenser %d Bluetooth address %s"
          % (board.dispenser_id, address_text, board.dispenser_id, address_text))
    board.watchdog = machine.WDT(timeout=WATCHDOG_MS)
    await asyncio.gather(board.serve_links(), board.serve_grants(), board.serve_controls(), board.tick())


def run() -> None:
    # the valve first: closed before the files, the radio or anything else is touched
    valve = Pin(VALVE_PIN, Pin.OUT, value=0)
    try:
        asyncio.run(main(valve))
    finally:
        valve.value(0)          # whatever stopped the loop; the watchdog then resets the board


if __name__ == "__main__":
    run()
