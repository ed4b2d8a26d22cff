"""Water in the demo (`ykt demo`): dispensers in the dorms while the canteens have their rush.

Each dispenser is a `ykt dispenser` process on gpiozero's mock pins (water runs through a simulated
meter while its valve is open), with its own journal, syncing through an outage relay
(simulators/netcut.py) and serving phones on the simulated Bluetooth air (`python -m
simulators.ble_air`). Phones are this process's bumble stacks on the same air, speaking to the server
over HTTP like the app. The seeded plan holds, over the rush:

    card sessions     a resident taps a card, water runs, the card is tapped again
    phone sessions    扫码用水: the phone finds the dispenser nearby, Start, End, receipt handed in
    a walk-away       a phone leaves mid-session (its link drops): the dispenser ends and settles
    an outage         one dispenser loses the network for a while; cards and phones still work
                      (grants are verified offline), its batches arrive when it is back
    a power cut       one dispenser is killed with SIGKILL mid-dispense and started again

At the end every dispenser syncs until nothing is unacknowledged, and `reconcile` checks the
server: every session a dispenser journaled is stored once, no session's money reached the water
merchant twice, every grant is settled and no hold is left open.
"""
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

from firmware.apps import card_io
from firmware.core import card_layout, sam as sam_module, wallets, water_grants
from reader_drivers.sim import SimReader
from reader_drivers.sim.classic_card import ClassicCard
from simulators.netcut import Relay
from simulators.phone import PhoneApp
from simulators.phone_ble import PhoneBleError, PhoneRadio
from simulators.phone_water import WaterSession
from sync_server import db as dbmod, pin_rules, registry, water_holds

DISPENSERS = 3
PHONE_RADIOS = 2
RESIDENTS = 9                        # three per dispenser: card holders and phone users
_FLOW_ML_PER_S = 80
_SYNC_INTERVAL_MS = 1000
_AIR_START_TIMEOUT_S = 30
_DRAIN_TIMEOUT_S = 60
_QUEUE_LOOKS = 12                    # a phone waits up to 6 s for a busy dispenser before trying
_BUILDINGS = (("一号学生公寓开水房", "Dorm 1 boiler room"), ("二号学生公寓开水房", "Dorm 2 boiler room"),
              ("三号学生公寓开水房", "Dorm 3 boiler room"))


class Dispenser:
    """One `ykt dispenser` process and what it printed."""

    def __init__(self, index, document, relay, run_dir, transport):
        self.index = index
        self.document = document
        self.terminal_id = document["terminal_id"]
        self.relay = relay
        self.transport = transport
        self.data_dir = os.path.join(run_dir, "dispenser-%d" % index)
        self.provision_path = os.path.join(run_dir, "dispenser-%d.json" % index)
        descriptor = os.open(self.provision_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(document, handle)
        self.log_path = os.path.join(run_dir, "dispenser-%d.log" % index)
        self.lines = []
        self._lock = threading.Lock()
        self.process = None
        self.restarts = 0

    def start(self):
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ykt", "dispenser", "--provision", self.provision_path, "--data-dir",
             self.data_dir, "--pins", "mock", "--flow-ml-per-s", str(_FLOW_ML_PER_S), "--ble", self.transport,
             "--script", "-", "--server-url", "http://127.0.0.1:%d" % self.relay.port, "--sync-interval-ms",
             str(_SYNC_INTERVAL_MS), "--drain-timeout-s", str(_DRAIN_TIMEOUT_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True)
        reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        reader.start()
        self._reader = reader
        self.send({"sync": True})

    def _read(self, process):
        for raw in process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            with self._lock:
                self.lines.append(line)

    def send(self, line):
        try:
            self.process.stdin.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def power_cut(self):
        """SIGKILL: the board loses power at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._reader.join(5)
        self._log.close()

    def finish(self, timeout_s):
        """Sync until nothing is unacknowledged, then stop; returns the process's exit status."""
        self.send({"sync": True})
        try:
            self.process.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            status = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            status = self.process.wait()
        self._reader.join(5)
        self._log.close()
        return status

    def of_type(self, kind):
        with self._lock:
            return [line for line in self.lines if line.get("type") == kind]


def provision(location, master_key, run_dir, seed):
    """Three dorm boiler rooms with a dispenser each, and their residents with water and old-system
    balances, cards (images in run_dir/water-cards) and known PINs. Returns (documents, residents)."""
    rng = random.Random(seed ^ 0x3A7E8)
    conn = dbmod.init_db(location)
    documents, residents = [], []
    try:
        for name_zh, name_en in _BUILDINGS[:DISPENSERS]:
            merchant_id = registry.add_merchant(conn, name_zh, name_en, wallets.CATEGORY_WATER)
            terminal_id = registry.register_terminal(conn, merchant_id)
            documents.append(registry.provisioning_document(conn, master_key, terminal_id, ""))
        for index in range(RESIDENTS):
            staff_number = "W%d%04d" % (seed % 1000, index + 1)
            id_number = "5134011999%02d%02d%04d" % (index % 12 + 1, index % 28 + 1, rng.randrange(10000))
            name = "住宿生%d" % (index + 1)
            _person, account_id = registry.add_person(conn, name, card_layout.HOLDER_STUDENT, id_number=id_number,
                                                      staff_number=staff_number)
            registry.recharge(conn, account_id, rng.randrange(200, 800), wallet="water")
            registry.recharge(conn, account_id, rng.randrange(0, 300), wallet="legacy",
                              channel=dbmod.LEDGER_LEGACY_SOURCE)
            uid = bytes([0x5A, index + 1]) + rng.randrange(1, 0xFFFF).to_bytes(2, "big")
            identity, _ = registry.issue_card_record(conn, account_id, uid)
            residents.append({"account_id": account_id, "name": name, "staff_number": staff_number,
                              "pin": pin_rules.initial_pin(id_number, staff_number), "uid": uid,
                              "identity": identity})
    finally:
        conn.close()
    cards_dir = os.path.join(run_dir, "water-cards")
    os.makedirs(cards_dir, exist_ok=True)
    issuer = sam_module.SoftwareSAM(sam_module.site_purpose_keys(master_key, include_issuer=True))
    reader = SimReader("sim:")
    for resident in residents:
        card = ClassicCard(resident["uid"])
        reader.field.place(card)
        card_io.issue_card(reader, issuer, reader.poll(100), resident["identity"], resident["name"])
        reader.field.pull()
        resident["card_path"] = os.path.join(cards_dir, "%s.card" % resident["uid"].hex())
        card.save(resident["card_path"])
    return documents, residents


class WaterDay:
    """The dispensers' day beside the rush: start(), run in a thread, finish(), then reconcile()."""

    def __init__(self, server_urls, server_port, run_dir, documents, residents, seed, duration_s, progress, lang):
        self.server_urls = server_urls
        self.server_port = server_port
        self.run_dir = run_dir
        self.documents = documents
        self.residents = residents
        self.rng = random.Random(seed ^ 0x3A7E9)
        self.duration_s = duration_s
        self.progress = progress
        self.lang = lang
        self.air = None
        self.dispensers = []
        self.relays = []
        self.phone_sessions = []         # results of the phones' sessions
        self._walked_away = False
        self.errors = []
        self._thread = None

    def say(self, zh, en):
        return en if self.lang == "en" else zh

    def start(self):
        self.air = subprocess.Popen([sys.executable, "-m", "simulators.ble_air", "--controllers",
                                     str(DISPENSERS + PHONE_RADIOS)], stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
        line = self.air.stdout.readline()
        if not line:
            raise RuntimeError("the simulated Bluetooth air did not start")
        self.transports = json.loads(line)["transports"]
        for index, document in enumerate(self.documents):
            relay = Relay("127.0.0.1", self.server_port)
            self.relays.append(relay)
            dispenser = Dispenser(index, document, relay, self.run_dir, self.transports[index])
            dispenser.start()
            self.dispensers.append(dispenser)
        self._thread = threading.Thread(target=self._run, name="ykt-water-day", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            asyncio.run(self._day())
        except Exception as error:          # reported in the summary, never a silent pass
            self.errors.append(repr(error))

    async def _day(self):
        started = time.monotonic()
        span_s = max(12.0, self.duration_s)
        await asyncio.sleep(2.0)             # the dispensers' first sync
        offline, cut = self.dispensers[1 % DISPENSERS], self.dispensers[2 % DISPENSERS]
        tasks = [asyncio.create_task(self._card_sessions(d, self.residents[3 * d.index], span_s, started))
                 for d in self.dispensers]
        tasks.append(asyncio.create_task(self._outage(offline, span_s)))
        tasks.append(asyncio.create_task(self._power_cut(cut, self.residents[3 * cut.index + 2])))
        for radio_index in range(PHONE_RADIOS):
            tasks.append(asyncio.create_task(self._phone_sessions(radio_index, span_s, started)))
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                self.errors.append(repr(result))

    async def _card_sessions(self, dispenser, resident, span_s, started):
        while time.monotonic() - started < span_s - 4:
            dispenser.send({"card": resident["card_path"]})
            await asyncio.sleep(self.rng.uniform(1.0, 2.5))
            dispenser.send({"card": resident["card_path"]})           # tap again to stop
            await asyncio.sleep(self.rng.uniform(3.0, 6.0))

    async def _outage(self, dispenser, span_s):
        await asyncio.sleep(span_s * 0.2)
        self.progress.step(self.say("开水机 %d 断网" % dispenser.terminal_id,
                                    "dispenser %d loses the network" % dispenser.terminal_id))
        dispenser.relay.cut()
        await asyncio.sleep(span_s * 0.35)
        dispenser.relay.restore()
        self.progress.step(self.say("开水机 %d 恢复联网" % dispenser.terminal_id,
                                    "dispenser %d is back on the network" % dispenser.terminal_id))

    async def _power_cut(self, dispenser, resident):
        await asyncio.sleep(3.0)
        dispenser.send({"card": resident["card_path"]})
        await asyncio.sleep(1.5)                                   # water running
        self.progress.step(self.say("开水机 %d 出水中断电" % dispenser.terminal_id,
                                    "dispenser %d loses power mid-dispense" % dispenser.terminal_id))
        await asyncio.to_thread(dispenser.power_cut)
        await asyncio.sleep(1.0)
        dispenser.restarts += 1
        await asyncio.to_thread(dispenser.start)

    async def _phone_sessions(self, radio_index, span_s, started):
        transport = self.transports[DISPENSERS + radio_index]
        session_number = 0
        async with PhoneRadio(transport) as radio:
            while time.monotonic() - started < span_s - 5:
                dispenser = self.dispensers[(radio_index + session_number) % DISPENSERS]
                resident = self.residents[3 * dispenser.index + 1]
                walk_away = radio_index == 0 and not self._walked_away
                result = await self._phone_session(radio, dispenser, resident, walk_away)
                self._walked_away = self._walked_away or (walk_away and "grant_id" in result)
                session_number += 1
                await asyncio.sleep(self.rng.uniform(0.5, 1.5))

    async def _phone_session(self, radio, dispenser, resident, walk_away):
        app = PhoneApp(self.server_urls[-1], "water-phone-%s" % resident["staff_number"])
        result = {"dispenser_id": dispenser.terminal_id, "walked_away": walk_away}
        try:
            await asyncio.to_thread(app.bind, resident["name"], resident["staff_number"], resident["pin"])
            nearby = await radio.find(dispenser.terminal_id)
            link = await radio.connect(nearby)
            session = WaterSession(app, link)
            try:
                for _ in range(_QUEUE_LOOKS):       # someone is drawing water: wait, as a person would
                    state = (await link.read_progress()).state
                    if state in (water_grants.PROGRESS_READY, water_grants.PROGRESS_ENDED):
                        break
                    await asyncio.sleep(0.5)
                await session.start()
                result["grant_id"] = session.grant["grant_id"]
                await asyncio.sleep(self.rng.uniform(1.0, 2.5))
                if walk_away:
                    await session.walk_away()
                else:
                    receipt = await session.end()
                    result.update({"ml": receipt.ml, "fen": receipt.fen, "outcome": session.settlement["outcome"]})
            finally:
                await link.disconnect()
        except PhoneBleError as error:
            # the dispenser refused or was away (power cut, out of order): the app shows why
            result["refused"] = str(error)
        finally:
            await asyncio.to_thread(app.close)
        self.phone_sessions.append(result)
        with open(os.path.join(self.run_dir, "water-phones.jsonl"), "a", encoding="utf-8") as log:
            log.write(json.dumps(result, ensure_ascii=False) + "\n")
        return result

    def finish(self):
        if self._thread is not None:
            self._thread.join(self.duration_s + 120)
        for relay in self.relays:
            relay.restore()
        statuses = [dispenser.finish(_DRAIN_TIMEOUT_S + 30) for dispenser in self.dispensers]
        return statuses

    def close(self):
        for dispenser in self.dispensers:
            if dispenser.process is not None and dispenser.process.poll() is None:
                os.killpg(dispenser.process.pid, signal.SIGKILL)
        for relay in self.relays:
            relay.close()
        if self.air is not None and self.air.poll() is None:
            self.air.terminate()
            try:
                self.air.wait(_AIR_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.air.kill()

    def journaled(self):
        """{(terminal_id, seq)} of every session a dispenser printed as journaled (power cuts included)."""
        return {(d.terminal_id, line["seq"]) for d in self.dispensers for line in d.of_type("session")}


def reconcile(location, water_day):
    """The water part of the demo's results (module text)."""
    conn = dbmod.connect(location)
    try:
        stored = {(row[0], row[1]) for row in conn.execute("SELECT terminal_id, seq FROM water_sessions")}
        journaled = water_day.journaled()
        settled_twice = 0
        for grant_id, settled_fen in conn.execute("SELECT id, settled_fen FROM water_grants WHERE status = 'settled'"):
            paid = conn.execute("SELECT coalesce(sum(amount_fen), 0), count(*) FROM transfers WHERE id LIKE ?",
                                ("wp/%d/%%" % grant_id,)).fetchone()
            settled_twice += paid[0] != settled_fen
        for terminal_id, seq, amount_fen in conn.execute(
                "SELECT terminal_id, seq, amount_fen FROM water_sessions WHERE kind = 2"):
            paid = conn.execute("SELECT coalesce(sum(amount_fen), 0) FROM transfers WHERE id LIKE ?",
                                ("p/%d/%d/%%" % (terminal_id, seq),)).fetchone()[0]
            settled_twice += paid != amount_fen
        # a session whose money is not settled: its grant not settled, or its record not booked (a
        # grant given up after the dispenser refused it never had a session: not counted)
        unsettled = conn.execute("SELECT count(*) FROM water_sessions s JOIN water_grants g ON g.id = s.grant_id "
                                 "WHERE s.kind = 3 AND g.status != 'settled'").fetchone()[0]
        unsettled += conn.execute("SELECT count(*) FROM terminal_records r JOIN water_sessions s ON "
                                  "s.terminal_id = r.terminal_id AND s.seq = r.seq WHERE r.booked = 0").fetchone()[0]
        holds_open, _held_fen = water_holds.open_holds(conn)
        water_ml = conn.execute("SELECT coalesce(sum(ml), 0) FROM water_sessions").fetchone()[0]
        by_source = dict(conn.execute("SELECT kind, count(*) FROM water_sessions GROUP BY kind").fetchall())
    finally:
        conn.close()
    phones = water_day.phone_sessions
    return {
        "water_sessions": len(stored),
        "water_card_sessions": by_source.get(2, 0),
        "water_phone_sessions": by_source.get(3, 0),
        "water_journaled": len(journaled),
        "water_lost": len(journaled - stored),
        "water_unexpected_on_server": len(stored - journaled),
        "water_settled_twice": settled_twice,
        "water_unsettled": unsettled,
        "holds_open": holds_open,
        "water_ml": water_ml,
        "water_phone_refusals": sum(1 for p in phones if "refused" in p),
        "water_walked_away": sum(1 for p in phones if p["walked_away"] and "refused" not in p),
        "water_power_cuts": sum(d.restarts for d in water_day.dispensers),
        "water_errors": list(water_day.errors),
    }


def water_ok(result):
    return (result["water_lost"] == 0 and result["water_unexpected_on_server"] == 0
            and result["water_settled_twice"] == 0 and result["water_unsettled"] == 0 and result["holds_open"] == 0
            and not result["water_errors"] and result["water_sessions"] > 0)
