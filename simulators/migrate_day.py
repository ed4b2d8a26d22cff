"""`ykt demo migrate`: go-live morning at the canteen doors - a few thousand old cards activated.

Seed 004's first day: the old card centre's export imported at the service hall (teachers' balances
booked at once), activation units (激活机) at the canteen doors, and the campus queueing with its
old cards. Everything is real but the cards and the hands: the old campus comes from
simulators/legacy_campus.py (old-layout card images, the export CSVs, the old master key, the
truth), the server is a `ykt server` process, the import is `ykt hall migration-import`, and each
unit is a `ykt activation` process with its own journal and ticket cache, talking HTTP through an
outage relay (simulators/netcut.py). What happens on the way, as on the real morning:

    pulled early   some holders take the card away mid-activation (at a random card command); they
                   tap again, often at another unit: the next tap finishes it, nothing twice
    torn           the cards an old terminal tore after the export: read by the old rule
    offline        one unit loses the network for a while and keeps activating from its cache;
                   its records reach the server when it is back
    refused        lost, shared-number and unreadable cards are refused with 到原一卡通中心处理;
                   at the end the hall replaces the unreadable ones free against the old card
    voice          the first unit speaks through a sound sink (espeak-ng WAVs, firmware/apps/voice.py)

Then every unit drains its journal and the money is checked against the truth the generator kept:
each activated card credited exactly what its purses held (students' main purse to the legacy
wallet, registered 小钱包 to the water wallet; teachers' main purse from the export), no serial
moved twice, the ledger's migrated money = what the cards' rows say, old money in = credited +
outstanding. One JSON line (--json) ends it: activated, moved_fen, outstanding_fen, moved_twice,
conservation_ok, activation_p95_ms, ...
"""
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

from firmware.core import messages, wallets
from simulators import fleet, legacy_campus
from simulators.netcut import Relay
from sync_server import db as dbmod, keys, ledger, legacy_migration as migration, registry
from sync_server.cli import init_data_dir
from sync_server.ledger_store import SqliteStore

UNIT_DOORS = (("一食堂北门激活点", "Canteen 1, north door"), ("一食堂南门激活点", "Canteen 1, south door"),
              ("二食堂激活点", "Canteen 2"), ("三食堂激活点", "Canteen 3"), ("教工食堂激活点", "Staff canteen"),
              ("西山餐厅激活点", "Xishan dining hall"))
PULL_SHARE = 0.04                   # holders who take the card away mid-activation
COMMANDS_PER_ACTIVATION = 59        # firmware/apps/legacy_card_io.py: read 19, lock 30, write 10
OFFLINE_FROM, OFFLINE_TO = 0.3, 0.6  # share of the queue during which one unit is cut off
SYNC_INTERVAL_MS = 1000
DRAIN_TIMEOUT_S = 120.0
DECISION_TIMEOUT_S = 60.0
MAX_TAPS_PER_CARD = 3               # a pulled card is tapped again; a third refusal sends it to the hall


def _say(lang, zh, en):
    return en if lang == "en" else zh


def _percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Morning:
    """The queue at the doors: one queue, each unit taking the next holder once its tap is decided; a
    holder told to tap again joins the queue again (and most often reaches another unit)."""

    def __init__(self, units, truth, campus_dir, seed, progress, lang, log_path, speaker_pause_s=0.0):
        self.units = units
        self.campus_dir = campus_dir
        self.rng = random.Random(seed ^ 0xAC7)
        self.progress = progress
        self.lang = lang
        self.queue = queue.Queue()
        self.outcomes = {}              # card file -> list of decision lines, in order
        self.pulls = 0
        self.elapsed_ms = []            # accepted activations, tap to decision
        self.lock = threading.Lock()
        self.done = 0
        self.cards = list(truth)
        self.rng.shuffle(self.cards)
        self.log = open(log_path, "w", encoding="utf-8")
        # the unit with the speaker serves at the pace of its voice, as a real door does
        self.speaker_pause_s = speaker_pause_s

    def run(self, cut_unit):
        total = len(self.cards)
        for card in self.cards:
            self.queue.put((card, 1))
        workers = [threading.Thread(target=self._work, args=(index,), daemon=True) for index in range(len(self.units))]
        for worker in workers:
            worker.start()
        cut = False
        while any(worker.is_alive() for worker in workers):
            time.sleep(0.2)
            share = self.done / max(1, total)
            if not cut and OFFLINE_FROM <= share < OFFLINE_TO:
                cut_unit.relay.cut()
                cut = True
                self.progress.step(_say(self.lang, "%d 号激活机断网……" % (cut_unit.index + 1),
                                        "unit %d lost the network..." % (cut_unit.index + 1)))
            elif cut and share >= OFFLINE_TO and cut_unit.relay.is_cut:
                cut_unit.relay.restore()
                self.progress.step(_say(self.lang, "%d 号激活机网络恢复" % (cut_unit.index + 1),
                                        "unit %d back online" % (cut_unit.index + 1)))
            self.progress.status(_say(self.lang, "激活 %d/%d 张卡" % (self.done, total),
                                      "activated %d/%d cards" % (self.done, total)))
        self.progress.status(_say(self.lang, "激活 %d/%d 张卡" % (self.done, total),
                                  "activated %d/%d cards" % (self.done, total)), force=True)
        self.progress.end_status()
        if cut_unit.relay.is_cut:
            cut_unit.relay.restore()
        self.log.close()

    def _work(self, index):
        unit = self.units[index]
        while True:
            try:
                card, attempt = self.queue.get(timeout=1.0)
            except queue.Empty:
                with self.lock:
                    if self.done >= len(self.cards):
                        return
                continue
            line = {"card": os.path.join(self.campus_dir, card["file"]), "tap_id": "%s/%d" % (card["uid"], attempt)}
            if attempt == 1 and self.rng.random() < PULL_SHARE:
                line["pull_after"] = self.rng.randint(1, COMMANDS_PER_ACTIVATION)
                line["pull_done"] = self.rng.random() < 0.5
            decision = unit.tap(line)
            with self.lock:
                self.outcomes.setdefault(card["file"], []).append(decision)
                self.log.write(json.dumps(dict(decision, unit=index + 1, pull_after=line.get("pull_after")),
                                          ensure_ascii=False, sort_keys=True) + "\n")
                if "pull_after" in line:
                    self.pulls += 1
                if decision["accepted"] and decision["reason"] == "activated" and "elapsed_ms" in decision:
                    self.elapsed_ms.append(decision["elapsed_ms"])
            if decision["reason"] in ("tap_again", "activation_unavailable") and attempt < MAX_TAPS_PER_CARD:
                self.queue.put((card, attempt + 1))
            else:
                with self.lock:
                    self.done += 1
            if unit.speaker and decision["accepted"]:
                time.sleep(self.speaker_pause_s)


class Unit:
    """One `ykt activation` process; tap() sends a line and waits for its decision."""

    def __init__(self, index, document, relay, run_dir, campus_dir, voice):
        self.index = index
        self.relay = relay
        self.speaker = voice != "off"
        self._decisions = queue.Queue()
        command = ("activation", "--voice", voice, "--sync-interval-ms", str(SYNC_INTERVAL_MS))
        self.process = fleet.TerminalProcess(index, document, relay, run_dir, campus_dir, self._decisions,
                                             command=command)

    def tap(self, line):
        self.process.send(line)
        _index, _at, decision = self._decisions.get(timeout=DECISION_TIMEOUT_S)
        return decision

    def finish(self):
        self.process.finish(DRAIN_TIMEOUT_S + 30)


def provision_units(server_dir, database, count):
    """An activation merchant per door and one unit each -> provisioning documents (with keys)."""
    master_key = keys.load_master_key(keys.master_key_path(server_dir))
    legacy_key = keys.load_legacy_key(server_dir)
    conn = dbmod.connect(dbmod.store_location(server_dir, database))
    try:
        documents = []
        for index in range(count):
            name_zh, name_en = UNIT_DOORS[index % len(UNIT_DOORS)]
            merchant_id = registry.add_merchant(conn, name_zh, name_en, wallets.CATEGORY_ACTIVATION)
            terminal_id = registry.register_terminal(conn, merchant_id)
            documents.append(registry.provisioning_document(conn, master_key, terminal_id, "", legacy_key))
    finally:
        conn.close()
    return documents


def hall_afternoon(location, morning, truth):
    """The old card centre in the afternoon: unreadable cards replaced free against the old card
    (booked from the export), 小钱包 registered late for the activated cards that had none."""
    shared = {}
    for card in truth:
        shared[card["serial"]] = shared.get(card["serial"], 0) + 1
    replaced = registered = 0
    conn = dbmod.connect(location)
    try:
        for card in truth:
            decisions = morning.outcomes.get(card["file"])
            if not decisions or shared[card["serial"]] > 1 or card["lost"]:
                continue
            serial = card["serial"]
            if decisions[-1]["reason"] == "card_unreadable_old":
                uid = bytes.fromhex("ee") + serial.to_bytes(4, "big")[1:]      # the new blank card at the desk
                migration.replace_broken(conn, serial, uid)
                replaced += 1
            elif decisions[-1]["accepted"] and not card["water_registered"] and card["card_water_fen"]:
                migration.register_water(conn, serial)
                registered += 1
    finally:
        conn.close()
    return replaced, registered


def check_against_truth(location, truth):
    """Per activated serial: what the ledger credited against what the card and export held."""
    rows = {}
    conn = dbmod.connect(location)
    try:
        for serial, state, moved_main, moved_legacy, moved_water, via in conn.execute(
                "SELECT serial, state, moved_main_fen, moved_legacy_fen, moved_water_fen, activated_via "
                "FROM legacy_cards"):
            rows[serial] = (state, moved_main, moved_legacy, moved_water, via)
        report = migration.report(conn)
        ledger_problems = ledger.check_balances(SqliteStore(conn))
    finally:
        conn.close()
    shared = {}
    for card in truth:
        shared[card["serial"]] = shared.get(card["serial"], 0) + 1
    wrong = []
    for card in truth:
        row = rows.get(card["serial"])
        if row is None or shared[card["serial"]] > 1 or row[0] != migration.ACTIVATED:
            continue
        state, moved_main, moved_legacy, moved_water, via = row
        teacher = card["category"] == "teacher"
        main = card["export_main_fen"] if via == migration.VIA_HALL else card["true_main_fen"]
        expected = (card["export_main_fen"] if teacher else 0, 0 if teacher else main,
                    card["card_water_fen"] or 0)
        if via == migration.VIA_HALL and not card["water_registered"]:
            expected = expected[:2] + (0,)
        if (moved_main, moved_legacy, moved_water) != expected:
            wrong.append({"serial": card["serial"], "credited": [moved_main, moved_legacy, moved_water],
                          "expected": list(expected)})
    return report, wrong, ledger_problems


def run(args):
    lang = args.lang
    progress = fleet.Progress(lang)
    started = time.monotonic()
    run_dir = os.path.abspath(args.data_dir) if args.data_dir else tempfile.mkdtemp(prefix="ykt-migrate-")
    os.makedirs(run_dir, exist_ok=True)
    server_dir = os.path.join(run_dir, "server")
    campus_dir = os.path.join(run_dir, "old-campus")
    if os.path.exists(campus_dir) or os.path.exists(keys.master_key_path(server_dir)):
        print(_say(lang, "数据目录已有演示数据，请换一个目录：%s" % run_dir,
                   "the data directory already holds a demo, pick another: %s" % run_dir), file=sys.stderr)
        return 2
    database = args.database
    progress.step(_say(lang, "演示目录：%s（种子 %d）" % (run_dir, args.seed),
                       "demo directory: %s (seed %d)" % (run_dir, args.seed)))
    progress.step(_say(lang, "生成旧系统校园：%d 张旧卡与原一卡通中心的导出……" % args.people,
                       "making the old campus: %d old cards and the old card centre's export..." % args.people))
    legacy_campus.generate(campus_dir, args.people, args.seed)
    with open(os.path.join(campus_dir, legacy_campus.TRUTH_JSON), encoding="utf-8") as stream:
        truth = json.load(stream)["cards"]
    init_data_dir(server_dir, database)
    location = dbmod.store_location(server_dir, database)
    units, relays, server = [], [], None
    try:
        server = fleet.ServerProcess(server_dir, os.path.join(run_dir, "server.log"), database)
        progress.step(_say(lang, "服务大厅导入旧卡数据（ykt hall migration-import）……",
                           "the hall imports the export (ykt hall migration-import)..."))
        imported = _import(server_dir, campus_dir, database)
        progress.step(_say(lang, "已导入：新建人员 %d，旧卡 %d；教工余额入账 %.2f 元" % (
            imported["people_created"], imported["cards_new"], imported["teacher_fen_booked"] / 100),
            "imported: %d people, %d old cards; teachers' balances booked %.2f yuan" % (
            imported["people_created"], imported["cards_new"], imported["teacher_fen_booked"] / 100)))
        documents = provision_units(server_dir, database, args.terminals)
        progress.step(_say(lang, "启动 %d 台激活机（各自进程与流水）……" % args.terminals,
                           "starting %d activation units (one process and journal each)..." % args.terminals))
        voice_dir = os.path.join(run_dir, "unit-1-speaker")
        speech_s = _speech_s(run_dir, lang)
        if not speech_s:
            progress.step(_say(lang, "未安装 espeak-ng：激活机不播报语音", "espeak-ng is not installed: the units stay silent"))
        for index, document in enumerate(documents):
            relay = Relay("127.0.0.1", server.port)
            relays.append(relay)
            units.append(Unit(index, document, relay, run_dir, campus_dir,
                              voice_dir if index == 0 and speech_s else "off"))
        morning = Morning(units, truth, campus_dir, args.seed, progress, lang,
                          os.path.join(run_dir, "decisions.jsonl"), speech_s)
        morning.run(units[-1])
        progress.step(_say(lang, "排队结束，等待各激活机同步完毕……", "queue done; waiting for every unit to sync..."))
        for unit in units:
            unit.finish()
        replaced, registered = hall_afternoon(location, morning, truth)
        report, wrong, ledger_problems = check_against_truth(location, truth)
    finally:
        for unit in units:
            if unit.process.process.poll() is None:
                os.killpg(unit.process.process.pid, signal.SIGKILL)
        for relay in relays:
            relay.close()
        if server is not None:
            server.stop()
    summary = summarize(morning, units, report, wrong, ledger_problems, replaced, registered, voice_dir,
                        time.monotonic() - started, args)
    print(render(summary, lang), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0 if summary["ok"] else 1


def _speech_s(run_dir, lang):
    """How long the unit with the speaker talks per card: both prompts, one after the other."""
    from firmware.apps.voice import Voice, VoiceError
    try:
        voice = Voice(os.path.join(run_dir, "voice-cache"), "off", lang=lang)
        return sum(voice.duration_s(messages.text(code, lang)) for code in (messages.ACTIVATING, messages.ACTIVATED))
    except VoiceError:
        return 0.0


def _import(server_dir, campus_dir, database):
    env = dict(os.environ)
    env.pop("YKT_DATABASE_URL", None)
    if database is not None:
        env["YKT_DATABASE_URL"] = database
    done = subprocess.run(
        [sys.executable, "-m", "ykt", "hall", "migration-import", "--data-dir", server_dir,
         "--people", os.path.join(campus_dir, legacy_campus.PEOPLE_CSV),
         "--water", os.path.join(campus_dir, legacy_campus.WATER_CSV),
         "--old-keys", os.path.join(campus_dir, legacy_campus.MASTER_KEY_FILE), "--json"],
        capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError("migration-import failed: %s" % done.stderr.strip())
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(morning, units, report, wrong, ledger_problems, replaced, registered, voice_dir, elapsed_s, args):
    reasons = {}
    for decisions in morning.outcomes.values():
        last = decisions[-1]["reason"]
        reasons[last] = reasons.get(last, 0) + 1
    resumed = sum(1 for decisions in morning.outcomes.values()
                  if len(decisions) > 1 and decisions[-1]["accepted"])
    drained = [unit.process.drained for unit in units]
    unacked = sum((line or {}).get("unacked", 1) for line in drained)
    spoken = 0
    played = os.path.join(voice_dir, "played.jsonl")
    if os.path.exists(played):
        with open(played, encoding="utf-8") as stream:
            spoken = sum(1 for _ in stream)
    p95 = _percentile(morning.elapsed_ms, 0.95)
    summary = {
        "seed": args.seed, "people": args.people, "units": args.terminals, "elapsed_s": round(elapsed_s, 1),
        "cards_tapped": len(morning.outcomes), "activated": report["cards_activated"],
        "activated_at_units": reasons.get("activated", 0) + reasons.get("already_activated", 0),
        "pulled_early": morning.pulls, "finished_by_a_later_tap": resumed,
        "refused": {reason: count for reason, count in sorted(reasons.items())
                    if reason not in ("activated", "already_activated")},
        "hall_replaced_free": replaced, "hall_registered_water": registered,
        "moved_fen": report["credited_fen"], "outstanding_fen": report["outstanding_fen"],
        "old_fen": report["old_fen"], "moved": report["moved"], "moved_twice": report["moved_twice"],
        "credited_wrong": len(wrong), "wrong_examples": wrong[:3],
        "teacher_cards_differing": report["teacher_cards_differing"],
        "conservation_ok": report["conservation_ok"] and not wrong and not ledger_problems,
        "ledger_ok": not ledger_problems,
        "activation_p50_ms": _percentile(morning.elapsed_ms, 0.5), "activation_p95_ms": p95,
        "unacked_after_drain": unacked, "voice_prompts_spoken": spoken,
    }
    summary["ok"] = (summary["conservation_ok"] and summary["moved_twice"] == 0 and unacked == 0
                     and summary["activated"] > 0)
    return summary


def render(summary, lang):
    def yuan(fen):
        return "%.2f" % (fen / 100)
    refused = "；".join("%s %d 张" % (messages.text(reason, "zh"), count)
                       for reason, count in summary["refused"].items()) or "无"
    if lang == "en":
        refused = "; ".join("%s: %d" % (messages.text(reason, "en"), count)
                            for reason, count in summary["refused"].items()) or "none"
        return "\n".join([
            "Go-live morning: %(cards_tapped)d old cards at %(units)d activation units in %(elapsed_s).0f s" % summary,
            "  activated %(activated)d (pulled early %(pulled_early)d, finished by a later tap "
            "%(finished_by_a_later_tap)d); hall replaced %(hall_replaced_free)d free" % summary,
            "  refused at the doors: %s" % refused,
            "  moved %s yuan, outstanding %s yuan, old money %s yuan; moved twice %d" % (
                yuan(summary["moved_fen"]), yuan(summary["outstanding_fen"]), yuan(summary["old_fen"]),
                summary["moved_twice"]),
            "  activation p50 %s ms, p95 %s ms; prompts spoken at unit 1: %d" % (
                summary["activation_p50_ms"], summary["activation_p95_ms"], summary["voice_prompts_spoken"]),
            "  %s" % ("money conserved, every card credited what it held" if summary["ok"] else "PROBLEMS: see JSON")])
    return "\n".join([
        "上线首日：%(cards_tapped)d 张旧卡，%(units)d 台激活机，用时 %(elapsed_s).0f 秒" % summary,
        "  已激活 %(activated)d 张（中途移卡 %(pulled_early)d 次，再刷完成 %(finished_by_a_later_tap)d 张）；"
        "大厅免费换卡 %(hall_replaced_free)d 张" % summary,
        "  激活机拒绝：%s" % refused,
        "  迁入 %s 元，待迁移 %s 元，旧系统余额 %s 元；重复迁入 %d 笔" % (
            yuan(summary["moved_fen"]), yuan(summary["outstanding_fen"]), yuan(summary["old_fen"]),
            summary["moved_twice"]),
        "  激活耗时 p50 %s 毫秒，p95 %s 毫秒；1 号激活机语音播报 %d 次" % (
            summary["activation_p50_ms"], summary["activation_p95_ms"], summary["voice_prompts_spoken"]),
        "  %s" % ("资金守恒，每张卡按卡内余额入账" if summary["ok"] else "发现问题：见 JSON")])


