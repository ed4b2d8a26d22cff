"""`ykt activation` against the real server process, set up as the service hall does it, on SQLite and
PostgreSQL: the export imported with the old system's key (`ykt hall migration-import --old-keys`),
an activation merchant and unit registered (`ykt hall merchant-add --category 4`,
`terminal-register --out`), the unit a `ykt activation` process speaking through a sound sink of
real espeak-ng WAVs.

A cardholder at the door hears «卡片激活中，请勿移开卡片» at the tap and «卡片激活成功» within 3 s, the
first prompt to its end; the old money is in the app once the unit synced, once; a lost card is
refused with 到原一卡通中心处理; with the network cut the unit activates from its ticket cache and
the server books the record when it is back; a unit without the old keys or with a wrong reader
path says so in one line."""
import io
import json
import os
import subprocess
import sys
import time

import pytest

from firmware.apps.activation_terminal import ActivationTerminal
from firmware.core import legacy_card
from reader_drivers.base import open_reader
from simulators import legacy_campus
from simulators.netcut import Relay
from sync_server import legacy_migration as migration, registry

SEED = 12

# the unit's side; the server's activation booking is tested on both stores (test_legacy_migration_activation.py)
pytestmark = pytest.mark.stores("sqlite")


def _cli(server, *args, stdin=None):
    env = dict(os.environ, YKT_LANG="zh")
    env.pop("YKT_DATABASE_URL", None)
    if server.database and server.database.startswith("postgresql:"):
        env["YKT_DATABASE_URL"] = server.database
    return subprocess.run([sys.executable, "-m", "ykt", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=120)


@pytest.fixture(scope="module")
def hall(live_server, tmp_path_factory):
    """The campus imported and one unit registered, as the hall's staff do it."""
    work = tmp_path_factory.mktemp("hall")
    campus = work / "old"
    legacy_campus.generate(str(campus), 40, SEED)
    data = ["--data-dir", live_server.data_dir]
    done = _cli(live_server, "hall", "migration-import", *data, "--people", str(campus / legacy_campus.PEOPLE_CSV),
                "--water", str(campus / legacy_campus.WATER_CSV), "--old-keys",
                str(campus / legacy_campus.MASTER_KEY_FILE), "--json")
    assert done.returncode == 0, done.stderr
    done = _cli(live_server, "hall", "merchant-add", *data, "--name-zh", "一食堂激活点", "--category", "4")
    assert done.returncode == 0, done.stderr
    merchant_id = int(done.stdout.split("编号")[1].strip())
    provision = work / "unit.json"
    done = _cli(live_server, "hall", "terminal-register", *data, "--merchant", str(merchant_id), "--out",
                str(provision), "--server-url", live_server.url)
    assert done.returncode == 0, done.stderr
    assert os.stat(provision).st_mode & 0o777 == 0o600
    assert "legacy_master" in json.loads(provision.read_text())["sam_keys"]
    with open(campus / legacy_campus.TRUTH_JSON, encoding="utf-8") as stream:
        truth = json.load(stream)["cards"]
    return work, campus, provision, truth


def _cards(truth, **wanted):
    serials = {}
    for card in truth:
        serials[card["serial"]] = serials.get(card["serial"], 0) + 1
    found = [card for card in truth if serials[card["serial"]] == 1 and card["main_state"] == legacy_card.OK
             and not card["oddities"] and all(card[key] == value for key, value in wanted.items())]
    assert found, wanted
    return found


def _balances(server, serial):
    conn = server.connect()
    try:
        account_id = conn.execute("SELECT account_id FROM legacy_cards WHERE serial = ?", (serial,)).fetchone()[0]
        return registry.balances_of(conn, account_id)
    finally:
        conn.close()


def _run_unit(hall, live_server, lines, sink, *extra):
    work, campus, provision, _truth = hall
    script = "".join(json.dumps(line) + "\n" for line in lines)
    data_dir = work / ("unit-%d" % time.monotonic_ns())
    done = _cli(live_server, "activation", "--provision", str(provision), "--data-dir", str(data_dir),
                "--cards-dir", str(campus), "--voice", str(sink), "--script", "-", "--drain-timeout-s", "20",
                *extra, stdin=script)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done, lines


def test_a_teacher_and_a_student_activate_at_the_door_and_hear_it(hall, live_server, tmp_path):
    _work, campus, _provision, truth = hall
    student = _cards(truth, category="student", lost=False)[0]
    teacher = _cards(truth, category="teacher", lost=False)[0]
    before = {card["serial"]: _balances(live_server, card["serial"]) for card in (student, teacher)}
    assert before[teacher["serial"]]["main"] == teacher["export_main_fen"]     # in the app before activation
    sink = tmp_path / "speaker"
    done, lines = _run_unit(hall, live_server, [{"sync": True}, {"card": str(campus / student["file"])},
                                                {"card": str(campus / teacher["file"])}], sink)
    assert done.returncode == 0, done.stderr
    decisions = [line for line in lines if line["type"] == "decision"]
    assert [(d["accepted"], d["reason"], d["ticket"]) for d in decisions] == \
        [(True, "activated", "server"), (True, "activated", "server")]
    assert [line for line in lines if line["type"] == "drained"] == [{"type": "drained", "unacked": 0, "last_seq": 2}]
    after = _balances(live_server, student["serial"])
    assert after["legacy"] - before[student["serial"]]["legacy"] == student["card_main_fen"]
    water = student["card_water_fen"] if student["water_registered"] else 0
    assert after["water"] - before[student["serial"]]["water"] == water
    assert _balances(live_server, teacher["serial"])["main"] == teacher["export_main_fen"]

    with open(sink / "played.jsonl", encoding="utf-8") as stream:
        played = [json.loads(line) for line in stream]
    assert [p["text"] for p in played] == ["卡片激活中，请勿移开卡片", "卡片激活成功"] * 2
    for first, success in (played[0:2], played[2:4]):
        assert success["start_s"] >= first["end_s"]                  # never cut off, never overlapping
        assert success["start_s"] - first["start_s"] <= 3.0          # «卡片激活成功» within 3 s of the tap
        assert os.path.getsize(sink / os.path.basename(success["wav"])) > 10000     # a real WAV, spoken


def test_a_lost_card_is_refused_and_the_same_card_twice_records_once(hall, live_server, tmp_path):
    _work, campus, _provision, truth = hall
    lost = next(card for card in truth if card["lost"] and card["main_state"] == legacy_card.OK)
    student = _cards(truth, category="student", lost=False)[1]
    path = str(campus / student["file"])
    done, lines = _run_unit(hall, live_server, [{"sync": True}, {"card": str(campus / lost["file"])},
                                                {"card": path, "pull_after": 30}, {"card": path}, {"card": path}],
                            "off", "--lang", "zh")
    assert done.returncode == 0, done.stderr
    decisions = [line for line in lines if line["type"] == "decision"]
    assert [(d["accepted"], d["reason"]) for d in decisions] == [
        (False, "activation_refused"), (False, "tap_again"), (True, "activated"), (True, "already_activated")]
    shown = [line["text"] for line in lines if line["type"] == "show"]
    assert "该卡无法激活，请到原一卡通中心处理" in shown
    conn = live_server.connect()
    try:
        row = conn.execute("SELECT state, activation_records FROM legacy_cards WHERE serial = ?",
                           (student["serial"],)).fetchone()
        lost_state = conn.execute("SELECT state FROM legacy_cards WHERE serial = ?", (lost["serial"],)).fetchone()[0]
    finally:
        conn.close()
    assert tuple(row) == (migration.ACTIVATED, 1) and lost_state == migration.LOST


def test_with_the_network_cut_the_unit_activates_from_its_cache_and_books_later(hall, live_server, tmp_path):
    _work, campus, provision, truth = hall
    student = _cards(truth, category="student", lost=False)[2]
    relay = Relay("127.0.0.1", int(live_server.url.rsplit(":", 1)[1]))
    reader = open_reader("sim:")
    document = dict(json.loads(provision.read_text()), server_url=relay.url)
    out = open(tmp_path / "unit.out", "w+", encoding="utf-8")
    unit = ActivationTerminal(document, str(tmp_path / "unit"), reader, out=out, sync_interval_ms=200)
    try:
        unit.sync_now()                              # first sync and the ticket cache
        assert unit.store.ticket(student["serial"]) is not None
        before = _balances(live_server, student["serial"])
        relay.cut()
        unit.sync_now()                              # the unit now knows it is offline
        unit.run_line({"card": str(campus / student["file"])})
        relay.restore()
        assert unit.drain(20) == 0
    finally:
        unit.close()
        reader.close()
        relay.close()
    out.seek(0)
    decisions = [json.loads(line) for line in out if '"decision"' in line]
    assert [(d["accepted"], d["reason"], d["ticket"]) for d in decisions] == [(True, "activated", "cache")]
    after = _balances(live_server, student["serial"])
    assert after["legacy"] - before["legacy"] == student["card_main_fen"]


def test_a_unit_without_the_old_keys_or_with_a_wrong_reader_says_so(hall, live_server, tmp_path):
    _work, _campus, provision, _truth = hall
    document = json.loads(provision.read_text())
    del document["sam_keys"]["legacy_master"]
    broken = tmp_path / "no-keys.json"
    broken.write_text(json.dumps(document))
    done = _cli(live_server, "activation", "--provision", str(broken), "--data-dir", str(tmp_path / "a"),
                "--voice", "off", "--script", "-", stdin="")
    assert done.returncode == 2 and "legacy_master" in done.stderr and "Traceback" not in done.stderr
    done = _cli(live_server, "activation", "--provision", str(provision), "--data-dir", str(tmp_path / "b"),
                "--voice", "off", "--reader", "pn532:/dev/no-such-reader", "--script", "-", stdin="")
    assert done.returncode == 5 and "/dev/no-such-reader" in done.stderr and "Traceback" not in done.stderr


def test_the_units_screen_says_what_the_speaker_says(hall, live_server, tmp_path):
    """`--face`: the cardholder's screen at the door shows the prompt and the result as the unit
    decides them, and counts the activation as waiting to upload until a sync takes it."""
    from firmware.apps.face import Face
    from firmware.apps.pos_terminal import load_provisioning
    _work, campus, provision, truth = hall
    card = _cards(truth, category="student", lost=False)[-1]
    document = load_provisioning(str(provision))
    face = Face("activation", "zh", document["terminal_id"])
    unit = ActivationTerminal(document, str(tmp_path / "unit"), open_reader("sim:"), out=io.StringIO(),
                              cards_dir=str(campus), face=face, sync_interval_ms=60000)
    try:
        unit.run_line({"sync": True})
        unit.run_line({"card": str(campus / card["file"])})
        state = face.snapshot()
        assert state["result"]["accepted"] is True and state["result"]["code"] == "activated"
        assert state["message"]["tone"] == "ok" and "卡片激活成功" in state["message"]["text"]
        assert state["backlog"] == 1
        unit.run_line({"sync": True})
        assert face.snapshot()["backlog"] == 0 and face.snapshot()["network"]["online"] is True
    finally:
        unit.close()
