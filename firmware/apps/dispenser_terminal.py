"""The water dispenser's shell (开水机): card taps, Bluetooth grants, valve, flow meter, journal, sync.

Thin, like the POS shell: the decisions live in firmware/core/dispenser.py (the session) and
firmware/core/water_grants.py (the Bluetooth gate); this file turns the world into their events
and carries out their actions.

    reader      a card appearing while idle: read it, ask the machine whether it would start
                (card_refusal: nothing counted for a refused card), count the tap, CardRead;
                a card appearing again while dispensing: CardTapped (tap again to stop)
    radio       firmware/apps/dispenser_ble.py calls the handler methods below (challenge, grant,
                control, progress, receipt, link lost) from its own thread
    buttons     Start / End on the machine: press_start(), press_end()
    tick        the flow meter's pulses and the clock, every TICK_MS (a thread), or per scripted step
    journal     Journal -> TerminalStore.append_water, which clears the persisted progress in the same
                transaction; only then Journaled goes back to the machine and "done" shows
    valve       OpenValve / CloseValve -> firmware/apps/dispenser_hw.Valve (gpiozero), closed first
                thing at power-up, before anything else is read

One lock serialises everything that touches the machine (reader loop, radio thread, ticks): the
machine is a plain object. Output is JSON lines like the POS ("show", "beep", "valve", "alarm",
"session", "sync"). A meter that stops pulsing with the valve open closes it, alarms, and reports
`alarm` in the health map of every sync until the dispenser is restarted by staff.

Scripted mode (tests and the demo): one JSON object per line:
    {"card": "cards/04a1b2c3.card"}     tap that card image (the sim: reader's field), then take it away
    {"start": true} | {"end": true}      the machine's buttons
    {"advance_ms": 3000}                 let time pass (virtual clock: in steps of TICK_MS, the simulated
                                         meter flowing while the valve is open)
    {"flow_ml_per_s": 80}                the simulated flow rate from now on (0: the supply stopped)
    {"sync": true} | {"sleep_ms": 200}
"""
import os
import sqlite3
import sys
import threading
import time
import traceback

from firmware.apps import card_io, dispenser_hw, provisioning as provisioning_keys
from firmware.apps.pos_terminal import DB_FILE, load_provisioning, make_owner_only
from firmware.apps.store import StoreError, TerminalStore
from firmware.apps.sync_client import SharedClock
from firmware.apps.terminal_shell import SyncedShell, scripted_card
from firmware.core import card_layout, clock as clock_module, dispenser, messages, pos, records
from firmware.core import sam as sam_module, wallets, water_grants
from reader_drivers.base import CardGone, ReaderError

TICK_MS = 100
MAX_EVENTS_PER_INPUT = 16
DEFAULT_SYNC_INTERVAL_MS = 5000
CARD_POLL_MS = 50
CHALLENGE_LIFETIME_MS = 120000       # a challenge waits at most this long for its grant
# After a key rotation the server makes grants under the old water key until it has seen this
# dispenser sign with the new one (its next sync); those stay good this long (GrantGate.previous_key).
PREVIOUS_WATER_KEY_MS = 10 * 60 * 1000
# The dispenser's own calibration (its provisioning file may override): the meter's pulses per
# litre and how often progress is persisted (<= 100 ml: at most that much goes free on a power cut).
DEFAULTS = {"pulses_per_litre": 450, "persist_interval_ml": 50, "idle_timeout_ms": 30000, "stall_ms": 5000,
            "price_fen_per_litre": 30, "max_session_fen": 500, "max_grant_fen": 500, "tap_starts": True,
            "grant_valid_ms": 60000, "max_session_ms": 600000}
# server configuration key -> machine configuration key
SERVER_CONFIG_KEYS = {"offline_cap_count": "offline_cap_count", "offline_cap_amount_fen": "offline_cap_amount_fen",
                      "water_price_fen_per_litre": "price_fen_per_litre",
                      "water_max_session_fen": "max_session_fen", "water_max_grant_fen": "max_grant_fen",
                      "water_grant_valid_ms": "grant_valid_ms", "water_max_session_ms": "max_session_ms"}
_SOURCE_CARD, _SOURCE_GRANT = "card", "grant"


def sam_from_provisioning(document):
    """The keys a dispenser needs: sync, card reading, and its own water key for grants and receipts."""
    wanted = (sam_module.TERMINAL, sam_module.CARD_KEY_A, sam_module.CARD_MAC, sam_module.WATER)
    keys = provisioning_keys.purpose_keys(document, wanted)
    missing = [purpose for purpose in wanted if purpose not in keys]
    if missing:
        raise ValueError("provisioning file lacks keys: %s (register the terminal under a water merchant)"
                         % ", ".join(missing))
    return sam_module.SoftwareSAM(keys)


class VirtualRawClock:
    """A board clock that moves only when told (scripted runs: seconds of water in no time)."""

    def __init__(self, start_ms=None):
        self._ms = int(time.time() * 1000) if start_ms is None else start_ms
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            return self._ms

    def advance(self, ms):
        with self._lock:
            self._ms += ms


def monotonic_ms():
    return int(time.monotonic() * 1000)


class DispenserTerminal(SyncedShell):
    def __init__(self, provisioning, data_dir, reader, valve, meter, lang="zh", out=None, sync=True,
                 server_url=None, sync_interval_ms=None, raw_ms=None, sim_meter=None, random_bytes=os.urandom,
                 card_slot=None, beeper=None, face=None):
        if provisioning.get("category") != wallets.CATEGORY_WATER:
            raise ValueError("终端不是开水机 / this terminal is not registered as a water dispenser")
        make_owner_only(data_dir)
        provisioning = provisioning_keys.with_rotated_keys(provisioning, data_dir)   # its rotated keys, if any
        self.provisioning = provisioning
        self.face = face            # firmware.apps.face.Face: the cardholder's screen, or None
        self.terminal_id = provisioning["terminal_id"]
        self.reader = reader
        self.card_slot = card_slot if card_slot is not None else getattr(reader, "field", None)
        self.valve = valve
        self.meter = meter
        self.sim_meter = sim_meter
        self.beeper = beeper            # firmware.apps.beeper.Beeper or None
        self.flow_ml_per_s = 0
        self.lang = lang
        self.out = out if out is not None else sys.stdout
        self.sam = sam_from_provisioning(provisioning)
        self._random = random_bytes
        db_path = os.path.join(data_dir, DB_FILE)
        self.store = TerminalStore(db_path)
        self.raw_ms = raw_ms
        self.clock = SharedClock(self.store, raw_ms) if raw_ms else SharedClock(self.store)
        # How long a challenge has waited, and the old water key's window, are spans of time: measured
        # on a clock that only counts (the virtual one moves only forward). The terminal clock steps
        # when a sync corrects it, and a step back between a phone's read and its write made a fresh
        # grant look expired.
        self.elapsed_ms = raw_ms if raw_ms else monotonic_ms
        self._lock = threading.RLock()
        self.machine = dispenser.Dispenser(self._machine_config())
        self.gate = self._new_gate()
        self.alarm = None                  # a message code while the dispenser is out of order
        self.grant_link = None             # the radio link whose grant the session runs on
        self.receipt = None                # (link, bytes) of the last grant session
        self.sessions = 0
        self._present_uid = None           # the card in the field now (a tap is a card arriving)
        self._session_offline = False
        self.radio = None                  # firmware/apps/dispenser_ble.DispenserRadio, when attached
        self._tick_thread = None
        self._open_sync(db_path, server_url, sync, sync_interval_ms, DEFAULT_SYNC_INTERVAL_MS,
                        firmware_version="ykt-water/0.1")
        self._previous_key_until_ms = None
        if self.sync_client is not None:
            self.sync_client.health_extra = self._health
            self.sync_client.on_rekey = self._rekeyed
        self._power_up()

    def _rekeyed(self, key_version):
        """The sync thread took a rotation's keys: the old water key's grants keep working a while."""
        with self._lock:
            if self.sam.has_previous_water():
                self.gate.previous_key(self.sam.previous_water_mac)
                self._previous_key_until_ms = self.elapsed_ms() + PREVIOUS_WATER_KEY_MS

    # -- configuration -------------------------------------------------------------------------

    def _machine_config(self):
        config = dict(DEFAULTS)
        for key, value in (self.provisioning.get("dispenser") or {}).items():
            if key in DEFAULTS:
                config[key] = value
        server = self.store.config()
        for server_key, key in SERVER_CONFIG_KEYS.items():
            if isinstance(server.get(server_key), int) and server[server_key] > 0:
                config[key] = server[server_key]
        return config

    def _new_gate(self):
        config = self.machine.config
        return water_grants.GrantGate(self.terminal_id, self.sam.water_mac, config["max_grant_fen"],
                                      min(CHALLENGE_LIFETIME_MS, max(config["grant_valid_ms"], 1)))

    def _refresh_config(self):
        if self.sync_client is not None and self.sync_client.config_changed.is_set():
            self.sync_client.config_changed.clear()
            with self._lock:
                self.machine.config.update(self._machine_config())
                self.gate.max_cap_fen = self.machine.config["max_grant_fen"]

    def _health(self):
        health = {"water_state": self.machine.state, "water_sessions": self.sessions}
        if self.alarm is not None:
            health["alarm"] = self.alarm
        return health

    # -- power-up ----------------------------------------------------------------------------------

    def _power_up(self):
        """Close the valve before anything else, then settle a session the power cut (if any)."""
        self.valve.close()
        self.emit({"type": "valve", "open": False})
        saved = self.store.water_progress()
        persisted = None
        if saved is not None:
            source, cap_fen, start_ms, ml = saved
            persisted = dispenser.Progress(tuple(source), cap_fen, start_ms, ml)
        self._feed(dispenser.PowerUp(self.clock.peek_ms(), persisted))

    # -- events in, actions out --------------------------------------------------------------------

    def _feed(self, event):
        """Hand one event to the machine and carry out what it asks, with what follows from that."""
        with self._lock:
            queue = [event]
            handled = 0
            while queue:
                handled += 1
                assert handled <= MAX_EVENTS_PER_INPUT, "event loop did not settle"
                actions = self.machine.handle(queue.pop(0))
                skip_clear = False
                for action in actions:
                    if isinstance(action, dispenser.PersistProgress) and action.progress is None and skip_clear:
                        continue        # append_water cleared it in the journal's own transaction
                    follow = self._execute(action)
                    if isinstance(action, dispenser.Journal):
                        skip_clear = True
                    if follow is not None:
                        queue.append(follow)

    def _execute(self, action):
        kind = type(action)
        if kind in (dispenser.OpenValve, dispenser.CloseValve):
            dispenser_hw.carry_out([action], self.valve)
            self.emit({"type": "valve", "open": kind is dispenser.OpenValve})
            self._notify_progress()
        elif kind is dispenser.Show:
            self.emit({"type": "show", "code": action.message_code,
                       "text": messages.text(action.message_code, self.lang, **action.fields)})
        elif kind is dispenser.Beep:
            if self.beeper is not None:
                self.beeper.beep(action.kind)
            self.emit({"type": "beep", "kind": action.kind})
        elif kind is dispenser.Alarm:
            self.alarm = action.message_code
            self.emit({"type": "alarm", "code": action.message_code,
                       "text": messages.text(action.message_code, self.lang)})
            self._wake.set()                    # tell the server soon
        elif kind is dispenser.PersistProgress:
            progress = action.progress
            self.store.save_water_progress(None if progress is None else
                                           [list(progress.source), progress.cap_fen, progress.start_ms, progress.ml])
            if self.face is not None and progress is not None:
                self.face.set(dispensed_ml=progress.ml)     # saved first: the screen never runs ahead
        elif kind is dispenser.Journal:
            return self._journal(action.record_fields)
        else:
            raise AssertionError("unknown action %r" % (action,))
        return None

    def _journal(self, fields):
        source = fields["source"]
        duration_s = max(0, (fields["end_ms"] - fields["start_ms"]) // 1000)
        grant = source[0] == _SOURCE_GRANT
        record_fields = {
            "terminal_id": self.terminal_id, "card_number": 0 if grant else source[1],
            "account_id": source[2], "card_generation": 0 if grant else source[3],
            "category": wallets.CATEGORY_WATER, "tap_counter": source[1] if grant else source[4],
            "amount_fen": fields["fen"], "merchant_id": self.provisioning["merchant_id"], "ml": fields["ml"],
            "duration_s": duration_s, "end_reason": fields["end_reason"],
            "flags": records.FLAG_OFFLINE if self._session_offline and not grant else 0}
        time_ms, floor_ms = self.clock.stamp_ms()
        try:
            seq = self.store.append_water(record_fields, time_ms, floor_ms, grant=grant)
        except (StoreError, sqlite3.Error, records.RecordError) as error:
            # The valve is closed already; the session stays persisted and is settled at power-up.
            self.alarm = messages.JOURNAL_FAILED
            self.emit({"type": "alarm", "code": messages.JOURNAL_FAILED, "error": str(error)})
            return None
        self.sessions += 1
        self.emit({"type": "session", "seq": seq, "source": source[0], "ml": fields["ml"], "fen": fields["fen"],
                   "cap_fen": fields["cap_fen"], "end_reason": fields["end_reason"], "account_id": source[2]})
        if grant:
            receipt = water_grants.encode_receipt(self.sam.water_mac, water_grants.Receipt(
                self.terminal_id, source[1], seq, fields["ml"], fields["fen"], fields["cap_fen"],
                fields["end_ms"] - fields["start_ms"], fields["end_reason"]))
            self.receipt = (self.grant_link, receipt)
            self._notify_progress(ended=(fields["ml"], fields["fen"], fields["cap_fen"]))
        self.grant_link = None
        self._wake.set()
        return dispenser.Journaled(seq)

    # -- ticks: the clock and the meter --------------------------------------------------------------

    def tick(self):
        """Collect the meter's pulses and let the machine see the time (every TICK_MS)."""
        self._refresh_config()
        try:
            pulses = self.meter.take()
        except dispenser_hw.MeterOverflow:
            pulses = dispenser.Pulses(dispenser.MAX_PULSES_PER_EVENT)
        with self._lock:
            if self._previous_key_until_ms is not None and self.elapsed_ms() >= self._previous_key_until_ms:
                self.gate.previous_key(None)
                self.sam.forget_previous()
                self._previous_key_until_ms = None
            self._feed(dispenser.Tick(self.clock.peek_ms()))
            if pulses.count:
                self._feed(pulses)
            if self.machine.state == dispenser.DISPENSING:
                self._notify_progress()

    def advance(self, ms):
        """Scripted: let `ms` pass on the virtual clock, the simulated meter flowing, ticking as we go."""
        assert isinstance(self.raw_ms, VirtualRawClock), "advance needs the virtual clock"
        steps = max(1, ms // TICK_MS)
        for _ in range(steps):
            self.raw_ms.advance(TICK_MS)
            if self.sim_meter is not None and self.flow_ml_per_s:
                self.sim_meter.flow(self.flow_ml_per_s, TICK_MS / 1000.0)
            self.tick()

    def idle_for_update(self):
        """No water running and no grant waiting for its Start (a phone session is kept to its end)."""
        return self.machine.state == dispenser.IDLE

    def start_ticking(self):
        if self._tick_thread is None:
            self._tick_thread = threading.Thread(target=self._tick_loop, name="ykt-water-tick", daemon=True)
            self._tick_thread.start()

    def _tick_loop(self):
        while not self._stop.wait(TICK_MS / 1000.0):
            try:
                if self.sim_meter is not None and self.flow_ml_per_s:
                    self.sim_meter.flow(self.flow_ml_per_s, TICK_MS / 1000.0)
                self.tick()
            except Exception:
                self._log_fault("tick")

    # -- buttons and cards ---------------------------------------------------------------------------

    def press_start(self):
        self._feed(dispenser.Start())

    def press_end(self):
        self._feed(dispenser.End())

    def poll_card(self, timeout_ms=CARD_POLL_MS):
        """One look at the reader. A card that arrives is a tap; one that stays is not tapped again."""
        try:
            target = self.reader.poll(timeout_ms)
        except ReaderError:
            self.emit({"type": "show", "code": messages.READER_ERROR, "text": messages.text(messages.READER_ERROR,
                                                                                             self.lang)})
            return False
        if target is None:
            self._present_uid = None
            return False
        if target.uid == self._present_uid:
            return False
        self._present_uid = target.uid
        self._tap(target)
        return True

    def _synced_once(self):
        """A new or replaced journal numbers from seq 1, which the server may hold for this terminal
        already: no session starts before one answer was applied (as on the POS)."""
        return not self.store.needs_first_sync()

    def _tap(self, target):
        if not self._synced_once():
            self._refuse(messages.TERMINAL_NOT_SYNCED)
            return
        with self._lock:
            if self.machine.state == dispenser.DISPENSING:
                self._feed(dispenser.CardTapped(target.uid))
                return
            if self.machine.state not in (dispenser.IDLE, dispenser.AUTHORISED):
                return
        try:
            view = card_io.read_card(self.reader, self.sam, target)
        except (CardGone, card_layout.CardFormatError, ReaderError) as error:
            self._refuse(messages.TAP_AGAIN if isinstance(error, CardGone) else messages.UNKNOWN_CARD)
            return
        except Exception:
            self._log_fault("read_card")
            self._refuse(messages.READER_ERROR)
            return
        identity = view.identity
        online = bool(self.sync_client and self.sync_client.online)
        today = clock_module.date_yyyymmdd(self.clock.peek_ms(), 480)
        with self._lock:
            self.machine.config["today_yyyymmdd"] = today
            facts = pos.TapFacts(*self.store.tap_facts(identity.card_number, identity.generation,
                                                          identity.account_id, self.terminal_id, today))
            refusal = self.machine.card_refusal(view, facts, online)
            if refusal is not None:
                self._refuse(refusal)
                return
            try:
                counted = card_io.count_tap(self.reader, self.sam, target, view.tap_counter, authenticated=True)
            except (CardGone, ReaderError, card_layout.CardFormatError, card_io.TapNotCounted):
                self._refuse(messages.TAP_AGAIN)
                return
            self._session_offline = not online
            self._feed(dispenser.CardRead(view._replace(tap_counter=counted), facts, online))

    def _refuse(self, code):
        self.emit({"type": "show", "code": code, "text": messages.text(code, self.lang)})
        self.emit({"type": "beep", "kind": "error"})

    # -- the radio's handler (firmware/apps/dispenser_ble.py calls these from its own thread) -------

    def read_challenge(self, link):
        with self._lock:
            return self.gate.challenge(self._random(water_grants.CHALLENGE_BYTES), self.elapsed_ms())

    def write_grant(self, link, data):
        """A phone's grant (+ an optional start byte): verified offline; refusals raise WaterMessageError."""
        data = bytes(data)
        start = len(data) == water_grants.GRANT_SIZE + 1 and data[-1] == water_grants.CONTROL_START
        if len(data) == water_grants.GRANT_SIZE + 1:
            data = data[:-1]
        if not self._synced_once():
            raise water_grants.WaterMessageError(water_grants.REFUSED_OUT_OF_ORDER, "not synced yet")
        with self._lock:
            state = self.machine.state
            if state == dispenser.FAULT:
                raise water_grants.WaterMessageError(water_grants.REFUSED_OUT_OF_ORDER, "out of order")
            if state not in (dispenser.IDLE, dispenser.AUTHORISED):
                raise water_grants.WaterMessageError(water_grants.REFUSED_BUSY, "busy")
            grant = self.gate.accept(data, self.elapsed_ms())
            now_ms = self.clock.peek_ms()
            self.grant_link = link
            self._session_offline = False
            self._feed(dispenser.GrantVerified(grant.grant_id, grant.account_id, grant.cap_fen,
                                               now_ms + self.machine.config["idle_timeout_ms"]))
            if start and self.machine.state == dispenser.AUTHORISED:
                self._feed(dispenser.Start())
            if self.machine.state not in (dispenser.AUTHORISED, dispenser.DISPENSING):
                raise water_grants.WaterMessageError(water_grants.REFUSED_OUT_OF_ORDER, "not started")

    def write_control(self, link, data):
        control = water_grants.decode_control(data)
        with self._lock:
            if self.grant_link is None or link != self.grant_link:
                raise water_grants.WaterMessageError(water_grants.REFUSED_NOT_YOURS, "not the grant's link")
            if control == water_grants.CONTROL_START:
                if self.machine.state == dispenser.DISPENSING:
                    raise water_grants.WaterMessageError(water_grants.REFUSED_BUSY, "already dispensing")
                self._feed(dispenser.Start())
            else:
                self._feed(dispenser.End())

    def read_progress(self, link=None):
        with self._lock:
            return self._progress_bytes()

    def read_receipt(self, link):
        with self._lock:
            if self.receipt is None or self.receipt[0] != link:
                raise water_grants.WaterMessageError(water_grants.REFUSED_NOT_YOURS, "no receipt for this link")
            return self.receipt[1]

    def link_lost(self, link):
        with self._lock:
            if self.grant_link is not None and link == self.grant_link:
                self._feed(dispenser.LinkLost())
            if self.receipt is not None and self.receipt[0] == link:
                self.receipt = (None, self.receipt[1])

    def _progress_bytes(self, ended=None):
        m = self.machine
        if ended is not None:
            return water_grants.encode_progress(water_grants.PROGRESS_ENDED, *ended)
        state = {dispenser.AUTHORISED: water_grants.PROGRESS_AUTHORISED,
                 dispenser.DISPENSING: water_grants.PROGRESS_DISPENSING}.get(m.state, water_grants.PROGRESS_READY)
        return water_grants.encode_progress(state, m.ml(), m.charged_fen(), m.cap_fen)

    def _notify_progress(self, ended=None):
        """Tell the phone of the running grant how far it got (it also hears the end)."""
        if self.radio is not None and self.grant_link is not None:
            self.radio.notify(self._progress_bytes(ended), self.grant_link)

    def attach_radio(self, transport, **radio_options):
        """Serve the Bluetooth side on `transport` (hci-socket:0 on a Pi; tcp-client:... of the
        simulated air in tests and the demo) from a thread of its own; returns the RadioHost."""
        self.radio = RadioHost(self, transport, radio_options)
        self.radio.start()
        return self.radio

    def close(self):
        if self.radio is not None:
            self.radio.stop()
        self.stop_sync(self._tick_thread)
        with self._lock:
            self.valve.close()
        self.store.close()

    # -- scripts -------------------------------------------------------------------------------------

    def run_line(self, line):
        self._refresh_config()
        if line.get("sleep_ms"):
            time.sleep(min(int(line["sleep_ms"]), 60000) / 1000.0)
        if "flow_ml_per_s" in line:
            rate = line["flow_ml_per_s"]
            if not isinstance(rate, (int, float)) or not 0 <= rate <= 1000:
                raise ValueError("flow_ml_per_s must be 0..1000")
            self.flow_ml_per_s = rate
        if line.get("card"):
            self._scripted_tap(line["card"])
        if line.get("start"):
            self.press_start()
        if line.get("end"):
            self.press_end()
        if line.get("advance_ms"):
            self.advance(min(int(line["advance_ms"]), 3600000))
        if line.get("sync"):
            self.sync_now()

    def _scripted_tap(self, path):
        with scripted_card(self.card_slot, path, owner=self.reader):
            self.poll_card(timeout_ms=500)
        self.poll_card(timeout_ms=10)       # the card has left: the next arrival is a new tap

    def _log_fault(self, step):
        print("开水机异常 / unexpected failure during %s:" % step, file=sys.stderr)
        traceback.print_exc(file=sys.stderr)


class RadioHost:
    """The dispenser's radio (firmware/apps/dispenser_ble.py) on an asyncio loop in its own thread,
    with the terminal as its handler. The terminal's other threads reach it through notify()."""

    START_TIMEOUT_S = 15.0

    def __init__(self, terminal, transport, radio_options):
        self.terminal = terminal
        self.transport = transport
        self.radio_options = radio_options
        self.radio = None
        self.error = None
        self._loop = None
        self._stopped = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ykt-water-radio", daemon=True)

    def start(self):
        self._thread.start()
        if not self._ready.wait(self.START_TIMEOUT_S) or self.error is not None:
            raise RuntimeError("蓝牙启动失败 / the Bluetooth radio did not start: %s" % (self.error or "timeout"))

    def _run(self):
        import asyncio
        from firmware.apps.dispenser_ble import DispenserRadio

        async def serve():
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            self.radio = DispenserRadio(self.transport, self.terminal.terminal_id, self.terminal, **self.radio_options)
            try:
                await self.radio.start()
            except Exception as error:
                self.error = error
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stopped.wait()
            finally:
                await self.radio.stop()

        asyncio.run(serve())

    def notify(self, data, link):
        if self.radio is not None and self._loop is not None:
            try:
                self.radio.notify_progress_threadsafe(data, link)
            except Exception:
                pass            # the phone hears the state on its next read; nothing depends on this

    def stop(self, timeout_s=10.0):
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout_s)


__all__ = ["DispenserTerminal", "VirtualRawClock", "load_provisioning", "sam_from_provisioning"]
