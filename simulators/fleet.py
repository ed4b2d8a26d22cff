"""The main job: a seeded canteen lunch rush against a real server, end to end.

`ykt demo` starts the sync server (waitress, SQLite) as its own process, provisions canteen
windows, one POS terminal per window and a few thousand cardholders with MIFARE cards, then drives
the rush from `simulators.lunch`'s seeded plan through the terminals - each one a separate
`ykt terminal` process with its own SQLite journal, talking HTTP to the server through an outage
relay (`simulators.netcut`). Mid-rush some terminals lose the network and one card is reported lost
at the service hall; its thief keeps trying it at every online window until each one refuses.

At the end every terminal syncs until nothing is unacknowledged, and the demo checks what matters:
every tap a terminal showed as accepted is on the server exactly once, nothing is on the server that
no terminal journaled, and the ledger sums to zero with every balance equal to its transfers. Last
come the next steps on the demo's data (simulators/demo_guide.py): the server command, the pages,
cardholders and staff users to sign in as, and the command that closes today.
"""
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from firmware.apps import card_io
from firmware.core import records, sam as sam_module, wallets
from reader_drivers.sim import SimReader
from simulators import demo_guide, injected_faults, lunch, pay_gateways, paycode_day, rollout_day, water_day
from reader_drivers.sim.classic_card import ClassicCard
from simulators.netcut import Relay
from simulators.phone import PhoneApp
from sync_server import db as dbmod, keys, ledger, pg_store, pin_rules, registry
from sync_server.cli import init_data_dir
from sync_server.ledger_store import SqliteStore

_CANTEEN_WINDOWS = (
    ("一食堂一号窗口", "Canteen 1, window 1"), ("一食堂二号窗口", "Canteen 1, window 2"),
    ("二食堂面食窗口", "Canteen 2, noodles"), ("二食堂快餐窗口", "Canteen 2, set meals"),
    ("三食堂清真窗口", "Canteen 3, halal"), ("三食堂麻辣烫", "Canteen 3, malatang"),
    ("教工食堂", "Staff canteen"), ("西山餐厅", "Xishan dining hall"),
)
_PROBE_AMOUNT_FEN = 500
_PROBE_INTERVAL_S = 0.25
_SYNC_INTERVAL_MS = 1000
_MAX_IN_FLIGHT_PER_TERMINAL = 4       # taps handed to a terminal and not yet decided: the queue
                                      # waits here, so a probe of the lost card is not stuck behind it
_LOW_BALANCE_SHARE = 0.06             # cardholders who will run out mid-rush
_DRAIN_TIMEOUT_S = 120.0
_APP_RECHARGES = 12                   # low-balance cardholders who top up from the app mid-rush
_APP_RECHARGE_CHANNELS = ("wechat", "ccb")   # (the anomaly injector's statement uses alipay)
_NOTIFICATIONS_PER_PAYMENT = 2        # channels retry: every payment is notified twice
_SERVER_START_TIMEOUT_S = 30.0
_APP_JOIN_TIMEOUT_S = 120.0          # the app's top-ups still under way when the rush ends


def _say(lang, zh, en):
    return en if lang == "en" else zh


class Progress:
    """One status line on stderr, redrawn at most a few times a second."""

    def __init__(self, lang):
        self.lang = lang
        self.tty = sys.stderr.isatty()
        self._last_s = 0.0

    def step(self, text):
        print(text, file=sys.stderr, flush=True)

    def status(self, text, force=False):
        now = time.monotonic()
        if not force and now - self._last_s < (0.25 if self.tty else 2.0):
            return
        self._last_s = now
        if self.tty:
            sys.stderr.write("\r\033[K" + text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def end_status(self):
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- set-up ------------------------------------------------------------------------------------------


def provision(server_dir, database, cards_dir, people, terminals, seed, progress, lang):
    """Server data, merchants, terminals, cardholders with balances, and their issued cards."""
    init_data_dir(server_dir, database)
    master_key = keys.load_master_key(keys.master_key_path(server_dir))
    conn = dbmod.init_db(dbmod.store_location(server_dir, database))
    try:
        terminal_ids = []
        for index in range(terminals):
            name_zh, name_en = _CANTEEN_WINDOWS[index % len(_CANTEEN_WINDOWS)]
            if index >= len(_CANTEEN_WINDOWS):
                name_zh, name_en = "%s %d" % (name_zh, index), "%s %d" % (name_en, index)
            merchant_id = registry.add_merchant(conn, name_zh, name_en, 1)
            terminal_ids.append(registry.register_terminal(conn, merchant_id))
        progress.step(_say(lang, "开通 %d 名持卡人……" % people, "provisioning %d cardholders..." % people))
        population = registry.provision_population(conn, people, seed, initial_balance_fen=0)
        _opening_balances(conn, population, seed)
        documents = [registry.provisioning_document(conn, master_key, tid, "") for tid in terminal_ids]
    finally:
        conn.close()
    progress.step(_say(lang, "发卡：写入 %d 张 MIFARE 卡……" % people, "issuing %d MIFARE cards..." % people))
    issuer = sam_module.SoftwareSAM(sam_module.site_purpose_keys(master_key, include_issuer=True))
    reader = SimReader("sim:")
    os.makedirs(cards_dir, exist_ok=True)
    for person in population:
        card = ClassicCard(person["uid"])
        reader.field.place(card)
        target = reader.poll(100)
        card_io.issue_card(reader, issuer, target, person["identity"], person["name"])
        reader.field.pull()
        card.save(os.path.join(cards_dir, "%s.card" % person["uid"].hex()))
    del master_key, issuer
    return population, documents


def _holds_people(database):
    """Whether the PostgreSQL database already holds cardholders (a demo wants an empty one)."""
    conn = dbmod.init_db(database)
    try:
        return conn.execute("SELECT count(*) FROM persons").fetchone()[0] > 0
    finally:
        conn.close()


def _opening_balances(conn, population, seed):
    """Most cardholders start with 50-300 yuan; a few with almost nothing, so they run out."""
    rng = random.Random(seed ^ 0x5EED)
    store = SqliteStore(conn)
    wallet_ids = store.wallet_ids([p["account_id"] for p in population])
    transfers = []
    for person in population:
        if rng.random() < _LOW_BALANCE_SHARE:
            amount_fen = rng.randrange(100, 1500)
        else:
            amount_fen = rng.randrange(50, 301) * 100
        person["opening_fen"] = amount_fen
        transfers.append(ledger.recharge_transfer(
            "r/demo/%d/%d" % (seed, person["account_id"]), dbmod.LEDGER_CASH_DESK,
            wallet_ids[person["account_id"]]["main"], amount_fen, dbmod.now_ms(), "opening balance"))
    with dbmod.transaction(conn):
        for start in range(0, len(transfers), ledger.MAX_TRANSFERS_PER_POST):
            ledger.post(store, transfers[start:start + ledger.MAX_TRANSFERS_PER_POST])
        registry.touch_accounts(conn, [p["account_id"] for p in population])


class ServerProcess:
    """One `ykt server` (two worker processes); `database` a PostgreSQL URL or None (SQLite in
    data_dir). On PostgreSQL the demo runs two of these on one database, as two hosts would."""

    def __init__(self, data_dir, log_path, database=None):
        self.port = _free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self._log = open(log_path, "ab")
        env = dict(os.environ)
        env.pop("YKT_DATABASE_URL", None)
        if database is not None:
            env["YKT_DATABASE_URL"] = database       # by the environment: `ps` shows a command line
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ykt", "server", "--data-dir", data_dir, "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "2"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("sync server did not start; see %s" % log_path)
            time.sleep(0.1)

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class TerminalProcess:
    """One `ykt terminal` process, fed JSON lines on stdin; its decisions collected by a thread."""

    def __init__(self, index, document, relay, run_dir, cards_dir, decisions, command=("terminal",), face_port=None,
                 rollout=None):
        """`decisions` is the queue every terminal's reader thread puts (index, monotonic_s, line) on;
        `command` the ykt subcommand and its own options (the canteen POS by default); face_port: serve
        its screens there (`ykt demo --face`); rollout: a simulators.rollout_day.RolloutDay that runs
        this terminal from A/B slots under the supervisor, as a flashed terminal runs."""
        self.index = index
        self.terminal_id = document["terminal_id"]
        self.relay = relay
        self.in_flight = 0
        self.lock = threading.Lock()
        self.drained = None
        self.updates = []               # the terminal's "update" lines: versions it installed
        terminal_dir = os.path.join(run_dir, "terminal-%d" % self.terminal_id)
        os.makedirs(terminal_dir, exist_ok=True)
        self.supervised = rollout is not None
        supervisor = [sys.executable, "-m", "firmware.apps.slots", "--root", rollout.install(index, terminal_dir),
                      "--data-dir", terminal_dir, "--"] if self.supervised else [sys.executable, "-m", "ykt"]
        provision_path = os.path.join(terminal_dir, "provision.json")
        document = dict(document, server_url=relay.url)
        descriptor = os.open(provision_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            json.dump(document, stream)
        self._stderr = open(os.path.join(terminal_dir, "stderr.log"), "wb")
        self.process = subprocess.Popen(
            [*supervisor, *command, "--provision", provision_path, "--data-dir", terminal_dir,
             "--reader", "sim:", "--cards-dir", cards_dir, "--script", "-", "--decisions-only",
             "--sync-interval-ms", str(_SYNC_INTERVAL_MS), "--drain-timeout-s", str(_DRAIN_TIMEOUT_S)]
            + (["--face", "127.0.0.1:%d" % face_port] if face_port else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1,
            start_new_session=True)
        self._decisions = decisions
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Like a real unit after power-on: fetch the deny list and balances before serving the queue.
        self.process.stdin.write(json.dumps({"sync": True}) + "\n")
        self.process.stdin.flush()

    def send(self, line):
        with self.lock:
            self.in_flight += 1
        self.process.stdin.write(json.dumps(line) + "\n")
        self.process.stdin.flush()

    def clear(self):
        """The cashier presses 取消: an amount still due is dropped (no decision line comes of it)."""
        self.process.stdin.write(json.dumps({"cancel": True}) + "\n")
        self.process.stdin.flush()

    def _read(self):
        for raw in self.process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("type") == "decision":
                with self.lock:
                    self.in_flight -= 1
                self._decisions.put((self.index, time.monotonic(), line))
            elif line.get("type") == "drained":
                self.drained = line
            elif line.get("type") == "update":
                self.updates.append(line)

    def finish(self, timeout_s):
        self.drained = None             # only the drain after the end of its input counts
        self.process.stdin.close()
        if self.supervised:
            # the supervisor would start the terminal again: stop it once the terminal has uploaded all
            deadline = time.monotonic() + timeout_s
            while self.drained is None and time.monotonic() < deadline and self.process.poll() is None:
                time.sleep(0.05)
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(timeout=5)
        self._stderr.close()


# -- the phone app -------------------------------------------------------------------------------------


class AppActivity:
    """What cardholders do on their phones during the rush, over the server's cardholder API:
    a few who are running out top up through WeChat Pay or CCB (the channel's sandbox,
    simulators/pay_gateways.py, checks the order's signed request, then notifies the payment twice
    in the channel's own format; each must credit once), and the owner of the lost card reports it
    with the card PIN."""

    def __init__(self, server_url, gateways, population, plan, exclude=()):
        rng = random.Random(plan.seed ^ 0xA99)
        self.server_url = server_url
        self.population = population
        self.gateways = gateways
        low = [index for index, person in enumerate(population)
               if person.get("opening_fen", 0) < 1500 and index != plan.lost_person_index and index not in exclude]
        chosen = rng.sample(low, min(_APP_RECHARGES, len(low)))
        self.pending = sorted((rng.uniform(0.1, 0.7) * plan.duration_s, index, rng.choice(_APP_RECHARGE_CHANNELS),
                               rng.randrange(20, 101) * 100) for index in chosen)
        self.outcomes = []           # (channel, amount_fen, [outcome per notification])
        self.errors = []
        self.owner = self._phone(plan.lost_person_index)
        # the top-ups run on a thread of their own: each binds a phone (a PIN check, scrypt) and makes
        # several requests, which must never hold up the rush's feeding of the windows
        self._due = queue.Queue()
        self._worker = threading.Thread(target=self._recharge_loop, name="app-recharges", daemon=True)
        self._worker.start()

    def _phone(self, person_index):
        person = self.population[person_index]
        phone = PhoneApp(self.server_url, "app-user-%d" % person["person_id"])
        # the demo's cardholders still have the initial PIN (last six of the number), as at report_loss
        phone.bind(person["name"], person["staff_number"], pin_rules.initial_pin(None, person["staff_number"]))
        return phone

    def run_due(self, now_s):
        while self.pending and self.pending[0][0] <= now_s:
            self._due.put(self.pending.pop(0)[1:])

    def _recharge_loop(self):
        while True:
            job = self._due.get()
            if job is None:
                return
            index, channel, amount_fen = job
            try:
                phone = self._phone(index)
                try:
                    order = phone.recharge_order(amount_fen, channel)
                    answers = self.gateways.pay(self.server_url, order, times=_NOTIFICATIONS_PER_PAYMENT)
                    self.outcomes.append((channel, amount_fen, [answer.outcome for answer in answers]))
                    if not all(answer.accepted for answer in answers):
                        self.errors.append("order %s: notices answered %s" % (
                            order["order_id"], [(answer.status, answer.error) for answer in answers]))
                    status = phone.order(order["order_id"])["status"]
                    if status != "paid":
                        self.errors.append("order %s is %s after its notices" % (order["order_id"], status))
                finally:
                    phone.close()
            except Exception as error:      # reported in the summary, never a dead thread
                self.errors.append("%s: %s" % (type(error).__name__, error))

    def report_loss(self, person_index):
        """挂失 from the app: the owner's card PIN is still the initial one (last six of the number)."""
        person = self.population[person_index]
        return self.owner.report_loss(pin_rules.initial_pin(None, person["staff_number"]))

    def close(self):
        self.pending = []
        self._due.put(None)
        self._worker.join(_APP_JOIN_TIMEOUT_S)
        self.owner.close()
        self.gateways.close()

    def summary(self):
        credited = [amount for _, amount, outcomes in self.outcomes if outcomes.count("credited") == 1]
        return {"app_recharges": len(credited), "app_recharge_fen": sum(credited),
                "repeat_notifications": sum(len(outcomes) - 1 for _, _, outcomes in self.outcomes),
                "notifications_credited_twice": sum(1 for _, _, outcomes in self.outcomes
                                                    if outcomes.count("credited") > 1),
                "app_errors": self.errors[:10]}


# -- the rush ------------------------------------------------------------------------------------------


class Rush:
    """Feeds the plan to the terminals in real time and keeps the score."""

    def __init__(self, plan, population, fleet, decisions, log_path, progress, lang, app, codes=None, rollout=None):
        self.app = app
        self.rollout = rollout          # simulators.rollout_day.RolloutDay: a firmware update mid-rush
        self.codes = codes              # simulators.paycode_day.PayCodeDay: phones paying by code
        self.plan = plan
        self.population = population
        self.fleet = fleet
        self.progress = progress
        self.lang = lang
        self.decisions = decisions
        self.outcomes = {}              # tap_id -> decision line (with terminal index)
        self.sent = {}                  # tap_id -> (kind, person_index, terminal_index)
        self.card_busy = {}             # person_index -> tap_id in flight
        self.lost_person = plan.lost_person_index
        self.loss_reported_s = None
        self.first_refusal_s = {}       # terminal index -> seconds after the loss report
        self.probe_accepted = 0
        self._next_probe_s = 0.0
        self._probe_cursor = 0
        self._next_tap_id = len(plan.taps) + 1
        self.online_at_loss = set()
        self.unconfirmed_repeats = {}      # quick repeat taps the cashier does not confirm: tap_id -> original
        self._t0 = None
        self._cut = set()
        self.log = open(log_path, "w", encoding="utf-8")

    def run(self):
        pending = list(self.plan.taps)
        waiting = []                    # taps held back while the same card is still at another window
        start = self._t0 = time.monotonic()
        cut = self._cut = set()
        while True:
            now_s = time.monotonic() - start
            self._collect()
            self._network(now_s, cut)
            if self.loss_reported_s is None and now_s >= self.plan.loss_at_s:
                self._report_loss(now_s)
                self.online_at_loss = {t.index for t in self.fleet if t.index not in cut}
            if self.loss_reported_s is not None:
                self._probe(now_s, cut)
            self.app.run_due(now_s)
            if self.rollout is not None:
                self.rollout.run_due(now_s, self.fleet, self.progress, lambda zh, en: _say(self.lang, zh, en))
            if self.codes is not None:
                self._send_code_lines(now_s, cut)
            while waiting and self._try_send(waiting[0]):
                waiting.pop(0)
            while pending and pending[0].at_s <= now_s:
                tap = pending.pop(0)
                if not self._try_send(tap):
                    waiting.append(tap)
            self._show(now_s, cut)
            probing = (self.loss_reported_s is not None and len(self.first_refusal_s) < len(self.fleet) or
                       self.codes is not None and self.codes.probing() or
                       self.rollout is not None and self.rollout.pending()) and now_s < self.plan.duration_s * 3
            if not pending and not waiting and not probing and now_s >= self.plan.duration_s:
                break
            time.sleep(0.005)
        for index in list(cut):
            self.fleet[index].relay.restore()
        self._show(time.monotonic() - start, set(), force=True)
        self.progress.end_status()

    def steady(self, now_s, cut):
        """Windows online for a while and not about to be cut: a code refused at one of them was refused
        with the server's word (paycode_day)."""
        margin_s = paycode_day.STEADY_ONLINE_S
        return {t.index for t in self.fleet if t.index not in cut and not any(
            start_s - margin_s <= now_s < end_s + margin_s
            for index, (start_s, end_s) in self.plan.offline_windows.items() if index == t.index)}

    def _send_code_lines(self, now_s, cut):
        steady = self.steady(now_s, cut)
        for tap_id, index, line in self.codes.due(now_s, steady, set(range(len(self.fleet))), self._next_tap_id,
                                                   self.card_busy):
            self._next_tap_id = max(self._next_tap_id, tap_id + 1)
            kind = "code_thief" if tap_id in self.codes.thief_taps else "code_replay"
            self.sent[tap_id] = (kind, None, index)
            self.fleet[index].send(line)

    def _network(self, now_s, cut):
        for index, (start_s, end_s) in self.plan.offline_windows.items():
            relay = self.fleet[index].relay
            if start_s <= now_s < end_s and index not in cut:
                relay.cut()
                cut.add(index)
                if self.codes is not None:
                    self.codes.cut_off(index)
                if self.loss_reported_s is not None and index not in self.first_refusal_s:
                    # Cut off before it learnt of the loss: not an online terminal for the measure.
                    self.online_at_loss.discard(index)
            elif now_s >= end_s and index in cut:
                relay.restore()
                cut.discard(index)

    def _report_loss(self, now_s):
        """The owner reports the card lost from the phone app (挂失, with the card PIN)."""
        self.app.report_loss(self.lost_person)
        self.loss_reported_s = now_s
        self._next_probe_s = now_s

    def _probe(self, now_s, cut):
        """The finder of the lost card tries it at the next online window that has not refused it yet."""
        if now_s < self._next_probe_s or self.lost_person in self.card_busy:
            return
        candidates = [t.index for t in self.fleet if t.index not in self.first_refusal_s and t.index not in cut]
        if not candidates:
            return
        index = candidates[self._probe_cursor % len(candidates)]
        self._probe_cursor += 1
        tap_id = self._next_tap_id
        self._next_tap_id += 1
        # A different small purchase each time (the same amount again would be a repeat tap).
        amount_fen = _PROBE_AMOUNT_FEN + (tap_id % 97) * 10
        self._send(lunch.Tap(tap_id, now_s, index, self.lost_person, amount_fen, probe=True))
        self._next_probe_s = now_s + _PROBE_INTERVAL_S / max(1, len(candidates))

    def _try_send(self, tap):
        if tap.person_index in self.card_busy:
            return False
        if self.fleet[tap.terminal_index].in_flight >= _MAX_IN_FLIGHT_PER_TERMINAL:
            return False
        if tap.person_index == self.lost_person and self.loss_reported_s is not None and not tap.probe:
            # The owner has lost this card; only its finder (the probes) uses it from now on.
            self.sent[tap.tap_id] = ("skipped", tap.person_index, tap.terminal_index)
            return True
        self._send(tap)
        return True

    def _send(self, tap):
        person = self.population[tap.person_index]
        if self.codes is not None and self.codes.pays_by_code(tap):
            self.sent[tap.tap_id] = ("code", tap.person_index, tap.terminal_index)
            self.card_busy[tap.person_index] = tap.tap_id
            self.fleet[tap.terminal_index].send(self.codes.code_line(tap))
            return
        line = {"tap_id": tap.tap_id, "amount_fen": tap.amount_fen,
                "card": getattr(tap, "card", None) or person["uid"].hex()}   # a cloned card's own image
        if tap.pull_after_ops:
            line["pull_after"] = tap.pull_after_ops
            line["pull_done"] = tap.tap_id % 2 == 0
        if tap.repeat_of:
            line["confirm"] = tap.cashier_confirms
            if not tap.cashier_confirms:
                self.unconfirmed_repeats[tap.tap_id] = tap.repeat_of
        kind = "probe" if tap.probe else ("repeat" if tap.repeat_of else "tap")
        self.sent[tap.tap_id] = (kind, tap.person_index, tap.terminal_index)
        self.card_busy[tap.person_index] = tap.tap_id
        self.fleet[tap.terminal_index].send(line)

    def finish(self):
        """After every terminal has drained and exited: take the last decisions, close the log."""
        self._collect()
        self.log.close()

    def _collect(self):
        while True:
            try:
                index, at, line = self.decisions.get_nowait()
            except queue.Empty:
                return
            tap_id = line.get("tap_id")
            assert tap_id in self.sent and tap_id not in self.outcomes, "decision for an unknown tap %r" % tap_id
            line["terminal_index"] = index
            line["terminal_id"] = self.fleet[index].terminal_id
            line["kind"] = self.sent[tap_id][0]
            self.outcomes[tap_id] = line
            self.log.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
            kind, person_index, _ = self.sent[tap_id]
            if self.card_busy.get(person_index) == tap_id:
                del self.card_busy[person_index]
            if kind.startswith("code"):
                now_s = at - self._t0
                self.codes.decided(tap_id, line, now_s, index, self.steady(now_s, self._cut))
            if kind == "probe":
                if line["accepted"]:
                    self.probe_accepted += 1
                elif line["reason"] == "card_lost" and index not in self.first_refusal_s:
                    self.first_refusal_s[index] = at - self._t0 - self.loss_reported_s

    def _show(self, now_s, cut, force=False):
        decided = len(self.outcomes)
        accepted = sum(1 for line in self.outcomes.values() if line["accepted"])
        offline = ",".join(str(self.fleet[i].terminal_id) for i in sorted(cut)) or "-"
        enforced = "%d/%d" % (len(self.first_refusal_s), len(self.fleet)) if self.loss_reported_s is not None else "-"
        self.progress.status(_say(
            self.lang,
            "午餐高峰 %5.1f/%.0fs  已刷卡 %d（计划 %d）  通过 %d  拒绝 %d  断网终端 %s  挂失生效 %s" % (
                now_s, self.plan.duration_s, decided, len(self.plan.taps), accepted, decided - accepted, offline,
                enforced),
            "lunch rush %5.1f/%.0fs  taps %d (planned %d)  accepted %d  declined %d  offline terminals %s  "
            "loss enforced %s" % (
                now_s, self.plan.duration_s, decided, len(self.plan.taps), accepted, decided - accepted, offline,
                enforced)), force=force)


# -- the reckoning -------------------------------------------------------------------------------------


def reconcile(location, outcomes, unconfirmed_repeats=None):
    """Compare what terminals showed with what the server holds (at `location`, a SQLite file or a
    PostgreSQL URL), and check the ledger."""
    conn = dbmod.connect(location)
    try:
        # the canteen's taps; the dispensers' water sessions are simulators/water_day.py's to check
        rows = conn.execute("SELECT terminal_id, seq, raw FROM terminal_records WHERE kind IN (?, ?)",
                            (records.KIND_PURCHASE, records.KIND_PAYCODE)).fetchall()
        window_ms = dbmod.setting(conn, "double_tap_window_ms")
        problems = ledger.check_balances(SqliteStore(conn))
        imbalance_fen = conn.execute("SELECT coalesce(sum(balance_fen), 0) FROM balances").fetchone()[0]
        merchant_fen = conn.execute(
            "SELECT coalesce(sum(b.balance_fen), 0) FROM balances b JOIN merchants m "
            "ON m.ledger_account_id = b.ledger_account_id WHERE m.category = ?",
            (wallets.CATEGORY_CANTEEN,)).fetchone()[0]
        negative_wallets = conn.execute(
            "SELECT count(*) FROM balances b JOIN ledger_accounts l ON l.id = b.ledger_account_id "
            "WHERE l.kind = 'wallet' AND b.balance_fen < 0").fetchone()[0]
    finally:
        conn.close()
    stored = {}
    taps_on_card = {}
    duplicates = 0
    for terminal_id, seq, raw in rows:
        fields = records.decode(bytes(raw))
        key = (terminal_id, seq)
        duplicates += key in stored
        stored[key] = fields
        if fields["kind"] == records.KIND_PAYCODE:     # one code: credential, minute, counter
            card_tap = ("code", fields["card_number"], records.paycode_time_step(bytes(raw)), fields["tap_counter"])
        else:
            card_tap = (fields["card_number"], fields["card_generation"], fields["tap_counter"])
        duplicates += card_tap in taps_on_card     # one physical tap (or code) booked twice under two seqs
        taps_on_card[card_tap] = key
    journaled = {}
    for line in outcomes.values():
        if line["accepted"]:
            journaled[(line["terminal_id"], line["seq"])] = line
    on_server = sum(1 for key, line in journaled.items()
                    if key in stored and stored[key]["amount_fen"] == line["amount_fen"]
                    and stored[key]["card_number"] == line.get("credential_id", line["card_number"]))
    accepted_fen = sum(line["amount_fen"] for line in journaled.values())
    charged, as_new = _unconfirmed_repeats_charged(outcomes, unconfirmed_repeats or {}, stored, window_ms)
    return {
        "repeat_taps_charged_without_confirmation": charged,
        "repeat_taps_charged_as_new": as_new,
        "journaled": len(journaled),
        "on_server": on_server,
        "lost": len(journaled) - on_server,
        "unexpected_on_server": sum(1 for key in stored if key not in journaled),
        "duplicates": duplicates,
        "ledger_imbalance_fen": imbalance_fen,
        "ledger_problems": problems[:10],
        "accepted_fen": accepted_fen,
        "merchant_credited_fen": merchant_fen,
        "negative_wallets": negative_wallets,
    }


def _unconfirmed_repeats_charged(outcomes, unconfirmed_repeats, stored, window_ms):
    """(charged, charged_as_new) among the repeat taps the cashier did not confirm. A repeat is charged
    wrongly only when its original was charged at the same terminal and the two records lie within the
    repeat window (by the terminal's own record times: the repeat's check came before its own record,
    so a gap within the window means the check saw it too). Under load a planned quick repeat can reach
    the till after the window, or after its original was declined: then it is a new purchase."""
    charged = as_new = 0
    for tap_id, original_id in unconfirmed_repeats.items():
        repeat, original = outcomes.get(tap_id, {}), outcomes.get(original_id, {})
        if not repeat.get("accepted"):
            continue
        repeat_record = stored.get((repeat["terminal_id"], repeat["seq"]))
        original_record = stored.get((original.get("terminal_id"), original.get("seq"))) \
            if original.get("accepted") and original.get("terminal_id") == repeat["terminal_id"] else None
        if repeat_record is None or original_record is not None and \
                0 <= repeat_record["time_ms"] - original_record["time_ms"] <= window_ms:
            charged += 1        # (a repeat charged but missing on the server is counted as wrong too)
        else:
            as_new += 1
    return charged, as_new


def summarize(plan, rush, result, elapsed_s, terminals, people):
    undecided = sorted(tap_id for tap_id, (kind, _person, _window) in rush.sent.items()
                       if kind != "skipped" and tap_id not in rush.outcomes)
    declined = {}
    accepted = 0
    for line in rush.outcomes.values():
        if line["accepted"]:
            accepted += 1
        else:
            declined[line["reason"]] = declined.get(line["reason"], 0) + 1
    # Terminals online from the loss report until they refused the card (offline ones are bounded by
    # their offline caps instead: lost_card_accepted_before_enforcement counts those uses).
    enforced = [rush.first_refusal_s[i] for i in rush.online_at_loss if i in rush.first_refusal_s]
    summary = {
        "seed": plan.seed,
        "people": people,
        "terminals": terminals,
        "taps": len(rush.outcomes),
        # handed to a terminal and never decided: a tap that vanished (say, read and dropped by a
        # terminal restarting for an update) - it must be none
        "undecided": len(undecided),
        "undecided_taps": [[tap_id] + list(rush.sent[tap_id]) for tap_id in undecided[:10]],   # id, kind, person, window
        "accepted": accepted,
        "declined": dict(sorted(declined.items())),
        "deny_enforced_after_s": round(max(enforced), 3) if enforced and
        len(enforced) == len(rush.online_at_loss) else None,
        "lost_card_accepted_before_enforcement": rush.probe_accepted,
        "offline_terminals": sorted(rush.fleet[i].terminal_id for i in plan.offline_windows),
        "elapsed_s": round(elapsed_s, 1),
    }
    summary.update(result)
    summary["ok"] = (result["lost"] == 0 and result["duplicates"] == 0 and result["unexpected_on_server"] == 0
                     and summary["undecided"] == 0
                     and summary["repeat_taps_charged_without_confirmation"] == 0
                     and result["ledger_imbalance_fen"] == 0 and not result["ledger_problems"]
                     and result["accepted_fen"] == result["merchant_credited_fen"])
    return summary


_REASON_NAMES = {
    "insufficient_balance": ("余额不足", "insufficient balance"),
    "card_lost": ("卡片已挂失", "card reported lost"),
    "repeat_tap": ("重复刷卡未确认", "repeat tap not confirmed"),
    "tap_again": ("卡片移开过早", "card removed too early"),
    "offline_cap_reached": ("脱机消费已达上限", "offline cap reached"),
    "account_blocked": ("账户已冻结", "account blocked"),
    "cancelled": ("收银员取消（重复刷卡）", "cancelled by the cashier (repeat tap)"),
    "account_not_synced": ("终端尚无该账户", "account not synced yet"),
    "unknown_card": ("未知卡片", "unknown card"),
    "paycode_used": ("付款码已使用", "pay code already used"),
    "paycode_revoked": ("付款码已停用", "pay code stopped"),
    "paycode_offline_cap": ("付款码脱机额度已满", "pay-code offline cap reached"),
    "paycode_expired": ("付款码已过期", "pay code expired"),
}


def render(summary, lang):
    zh = lang != "en"

    def row(label_zh, label_en, value):
        return "  %-18s %s" % (label_zh if zh else label_en, value)

    lines = ["", "== %s ==" % ("午餐高峰演示结果" if zh else "Lunch rush results"),
             row("随机种子", "seed", summary["seed"]),
             row("持卡人 / 终端", "people / terminals", "%d / %d" % (summary["people"], summary["terminals"])),
             row("刷卡次数", "taps", summary["taps"]),
             row("交易成功", "accepted", "%d（%.2f 元）" % (summary["accepted"], summary["accepted_fen"] / 100.0)
                 if zh else "%d (%.2f yuan)" % (summary["accepted"], summary["accepted_fen"] / 100.0))]
    for reason, count in summary["declined"].items():
        name = _REASON_NAMES.get(reason, (reason, reason))
        lines.append(row("  拒绝：" + name[0], "  declined: " + name[1], count))
    lines += [
        row("本地记账", "journaled", summary["journaled"]),
        row("服务器已入账", "on server", summary["on_server"]),
        row("丢失", "lost", summary["lost"]),
        row("未处理的刷卡", "taps never decided", summary["undecided"]),
        row("重复", "duplicates", summary["duplicates"]),
        row("账本不平衡（分）", "ledger imbalance (fen)", summary["ledger_imbalance_fen"]),
        row("商户入账（分）", "merchants credited (fen)", summary["merchant_credited_fen"]),
        row("断网终端", "offline terminals", ", ".join(map(str, summary["offline_terminals"])) or "-"),
        row("挂失生效用时（秒）", "loss enforced after (s)", summary["deny_enforced_after_s"]),
        row("挂失后、生效前被刷（含断网终端）", "lost card used before enforced (offline windows too)",
            summary["lost_card_accepted_before_enforcement"]),
        row("未确认的重复扣款", "repeats charged unconfirmed", summary["repeat_taps_charged_without_confirmation"]),
        row("超出重复窗口、按新消费扣款", "repeats after the window, charged as new", summary["repeat_taps_charged_as_new"]),
        row("手机充值（笔/元）", "app recharges (n / yuan)",
            "%d / %.2f" % (summary.get("app_recharges", 0), summary.get("app_recharge_fen", 0) / 100.0)),
        row("重复到账通知（均未重复入账）", "repeated payment notices (none credited twice)",
            summary.get("repeat_notifications", 0)),
        row("开水机用水（刷卡/手机）", "water sessions (card / phone)", "%d（%d / %d）" % (
            summary.get("water_sessions", 0), summary.get("water_card_sessions", 0),
            summary.get("water_phone_sessions", 0))),
        row("用水量（升）", "water drawn (litres)", "%.1f" % (summary.get("water_ml", 0) / 1000.0)),
        row("手机离开/断电结算", "walk-aways / power cuts settled", "%d / %d" % (
            summary.get("water_walked_away", 0), summary.get("water_power_cuts", 0))),
        row("用水重复结算 / 未结算", "water settled twice / unsettled", "%d / %d" % (
            summary.get("water_settled_twice", 0), summary.get("water_unsettled", 0))),
        row("未释放的授权冻结", "grant holds still open", summary.get("holds_open", 0)),
        row("付款码支付（手机断网的 %d 人）" % summary.get("paycode_offline_phones", 0),
            "pay-code sales (%d phones offline)" % summary.get("paycode_offline_phones", 0),
            summary.get("paycode_accepted", 0)),
        row("截图重放（被接受）", "screenshot replays (accepted)", "%d（%d）" % (
            summary.get("paycode_replays_shown", 0), summary.get("paycode_replays_accepted", 0))),
        row("手机被盗停用后生效用时（秒）", "stolen phone's code refused after (s)",
            summary.get("paycode_revoked_after_s")),
        row("高峰中固件升级", "firmware updated mid-rush", ("%s：%d / %d 台，回退 %d" if zh else
                                                          "%s: %d of %d terminals, %d rolled back") % (
            summary["rollout_version"], summary["rollout_updated"], summary["rollout_terminals"],
            summary["rollout_rolled_back"]) if "rollout_terminals" in summary else "-"),
        row("用时（秒）", "elapsed (s)", summary["elapsed_s"]),
        "",
        ("结论：" if zh else "verdict: ") + (("一笔不丢、一笔不重，账本平衡。" if zh else
                                            "nothing lost, nothing twice, ledger balanced.")
                                           if summary["ok"] else ("发现问题（%s），见上。" if zh else "problems found (%s), see above.")
                                           % ", ".join(summary.get("failed_parts") or ["canteen"])),
    ]
    return "\n".join(lines)


def show_face(port, run_dir, progress, lang):
    """Say where the first POS's screens are, and open them when this machine has a display."""
    base = "http://127.0.0.1:%d" % port
    progress.step(_say(lang, "1 号消费机的屏幕：收银员 %s/cashier ，持卡人 %s/holder" % (base, base),
                       "POS 1's screens: cashier %s/cashier, cardholder %s/holder" % (base, base)))
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        progress.step(_say(lang, "（本机没有显示器：用浏览器打开上面的地址即可）",
                           "(no display here: open the addresses above in a browser)"))
        return
    for view in ("cashier", "holder"):
        profile = os.path.join(run_dir, "face-browser-%s" % view)
        subprocess.Popen([browser, "--app=%s/%s" % (base, view), "--user-data-dir=%s" % profile,
                          "--no-first-run", "--window-size=800,480"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def run(args):
    lang = args.lang
    progress = Progress(lang)
    started = time.monotonic()
    run_dir = os.path.abspath(args.data_dir) if args.data_dir else tempfile.mkdtemp(prefix="ykt-demo-")
    os.makedirs(run_dir, exist_ok=True)
    server_dir = os.path.join(run_dir, "server")
    cards_dir = os.path.join(run_dir, "cards")
    database = args.database
    if os.path.exists(dbmod.db_path(server_dir)) or os.path.exists(keys.master_key_path(server_dir)):
        print(_say(lang, "数据目录已有演示数据，请换一个目录：%s" % run_dir,
                   "the data directory already holds a demo, pick another: %s" % run_dir), file=sys.stderr)
        return 2
    if database is not None and _holds_people(database):
        print(_say(lang, "数据库中已有持卡人，演示需要一个空库：%s" % pg_store.describe(database),
                   "the database already holds cardholders; the demo needs an empty one: %s"
                   % pg_store.describe(database)), file=sys.stderr)
        return 2
    progress.step(_say(lang, "演示目录：%s（种子 %d）" % (run_dir, args.seed),
                       "demo directory: %s (seed %d)" % (run_dir, args.seed)))
    population, documents = provision(server_dir, database, cards_dir, args.people, args.terminals, args.seed,
                                      progress, lang)
    location = dbmod.store_location(server_dir, database)
    # the payment channels' sandboxes: their test keys, and the server's channel configuration for them
    gateways = pay_gateways.PayGateways()
    gateways.install(server_dir)
    progress.step(_say(lang, "开通 %d 台开水机和住宿生……" % water_day.DISPENSERS,
                       "provisioning %d water dispensers and dorm residents..." % water_day.DISPENSERS))
    water_documents, residents = water_day.provision(location, keys.load_master_key(keys.master_key_path(server_dir)),
                                                     run_dir, args.seed)
    plan = lunch.make_plan(args.seed, args.people, args.terminals, args.duration_s)
    injector = injected_faults.Injector(args, population, plan, run_dir, cards_dir) \
        if injected_faults.wanted(args) else None
    # on PostgreSQL two servers share the database, as two hosts behind a load balancer; terminals
    # alternate between them and the payment gateway notifies the second
    servers = []
    fleet = []
    relays = []
    decisions = queue.Queue()
    water = None
    rollout = None
    # not with injected faults: their offline double spend needs its two windows to keep their timing
    if args.rollout and rollout_day.available() and injector is None and args.terminals >= rollout_day.MIN_FLEET:
        progress.step(_say(lang, "生成发布密钥，签名固件 %s 与 %s……" % (rollout_day.OLD_VERSION, rollout_day.NEW_VERSION),
                           "making the release key, signing firmware %s and %s..."
                           % (rollout_day.OLD_VERSION, rollout_day.NEW_VERSION)))
        rollout = rollout_day.RolloutDay(run_dir, location, keys.load_master_key(keys.master_key_path(server_dir)),
                                         documents, args.duration_s)
    try:
        for _ in range(1 if database is None else 2):
            servers.append(ServerProcess(server_dir, os.path.join(run_dir, "server-%d.log" % (len(servers) + 1)
                                                                  if database else "server.log"), database))
        server = servers[0]
        urls = " ".join(s.url for s in servers)
        progress.step(_say(lang, "服务器 %s 已启动；启动 %d 台消费机……" % (urls, args.terminals),
                           "server up at %s; starting %d POS terminals..." % (urls, args.terminals)))
        for index, document in enumerate(documents):
            relay = Relay("127.0.0.1", servers[index % len(servers)].port)
            relays.append(relay)
            fleet.append(TerminalProcess(index, document, relay, run_dir, cards_dir, decisions,
                                         face_port=args.face if index == 0 else None,
                                         rollout=rollout if rollout is not None and index in rollout.group else None))
        if args.face:
            show_face(args.face, run_dir, progress, lang)
        app = AppActivity(servers[-1].url, gateways, population, plan,
                          exclude=injector.taken if injector is not None else ())
        progress.step(_say(lang, "为 %d 名持卡人开通付款码……" % paycode_day.PAYERS,
                           "enabling the payment code for %d cardholders..." % paycode_day.PAYERS))
        codes = paycode_day.PayCodeDay(location, keys.load_master_key(keys.master_key_path(server_dir)),
                                       servers[-1].url, population, plan,
                                       exclude=injector.taken if injector is not None else ())
        rush = Rush(plan, population, fleet, decisions, os.path.join(run_dir, "decisions.jsonl"), progress, lang,
                    app, codes, rollout)
        water = water_day.WaterDay([s.url for s in servers], servers[0].port, run_dir, water_documents, residents,
                                   args.seed, args.duration_s, progress, lang)
        progress.step(_say(lang, "启动 %d 台开水机与蓝牙……" % water_day.DISPENSERS,
                           "starting %d water dispensers and the Bluetooth air..." % water_day.DISPENSERS))
        water.start()
        try:
            rush.run()
        finally:
            app.close()
            codes.close()
        progress.step(_say(lang, "高峰结束，等待各终端同步完毕……", "rush over; waiting for every terminal to sync..."))
        for terminal in fleet:
            terminal.finish(_DRAIN_TIMEOUT_S + 30)
        rush.finish()
        water.finish()
        result = reconcile(location, rush.outcomes, rush.unconfirmed_repeats)
        result.update(water_day.reconcile(location, water))
        if injector is not None:
            injector.finish(server_dir, result, location, gateways)
    finally:
        if water is not None:
            water.close()
        for terminal in fleet:
            if terminal.process.poll() is None:
                os.killpg(terminal.process.pid, signal.SIGKILL)
        for relay in relays:
            relay.close()
        for server in servers:
            server.stop()
    summary = summarize(plan, rush, result, time.monotonic() - started, args.terminals, args.people)
    summary.update(app.summary())
    summary.update(codes.summary())
    if rollout is not None:
        summary.update(rollout.summary())
    # which part failed, named in the JSON and the verdict (a red run says where to look)
    parts = (("canteen", summary["ok"]),
             ("app", summary["notifications_credited_twice"] == 0 and not summary["app_errors"]),
             ("water", water_day.water_ok(summary)), ("paycode", paycode_day.paycode_ok(summary)),
             ("rollout", rollout_day.rollout_ok(summary)))
    summary["failed_parts"] = [name for name, good in parts if not good]
    summary["ok"] = not summary["failed_parts"]
    next_steps = demo_guide.render(server_dir, database, demo_guide.prepare(location), lang)
    print(render(summary, lang), file=sys.stderr if args.json else sys.stdout)
    print(next_steps, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0 if summary["ok"] else 1
