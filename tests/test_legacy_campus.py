"""The old-system campus generator: the same seed gives the same bytes, the export reads back as an old
card centre's CSV, every oddity is there and counted, and every card reads through the `sim:` reader's
driver path with the old keys (and only with them)."""
import collections
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from firmware.apps import card_io
from firmware.core import card_layout, legacy_card as L, mifare, sam
from reader_drivers import AuthenticationError, CardNak, open_reader
from reader_drivers.sim.classic_card import ClassicCard
from simulators import legacy_campus

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEOPLE = 120
SEED = 20230223


@pytest.fixture(scope="module")
def campus(tmp_path_factory):
    out = tmp_path_factory.mktemp("campus") / "run"
    summary = legacy_campus.generate(str(out), PEOPLE, SEED)
    with open(out / "truth.json", encoding="utf-8") as stream:
        truth = json.load(stream)
    return out, summary, truth


def _rows(path):
    with open(path, encoding="utf-8-sig", newline="") as stream:
        return list(csv.reader(stream))


def _files(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def _read_card(path, master_key):
    """Read one card image the way a terminal would: the sim: reader, the card model, old key A."""
    card = ClassicCard.load(path)
    reader = open_reader("sim:")
    reader.field.place(card)
    target = reader.poll(100)
    assert target is not None and target.is_mifare_classic_1k
    blocks = {}
    for sector, numbers in L.READ_PLAN:
        reader.authenticate(mifare.trailer_block(sector), mifare.A, L.sector_key(master_key, target.uid, sector, "A"))
        for number in numbers:
            blocks[number] = reader.read_block(number)
    purses = {purse: L.inspect_purse(*[blocks[b] for b in L.PURSES[purse].blocks()], purse=purse)
              for purse in L.PURSES}
    return target, L.decode_identity(blocks[L.IDENTITY_BLOCK]), L.decode_name(blocks[L.NAME_BLOCK]), purses, reader


def test_the_same_seed_writes_the_same_bytes(tmp_path, campus):
    out, summary, _ = campus
    again = tmp_path / "again"
    assert legacy_campus.generate(str(again), PEOPLE, SEED) == dict(summary, out=str(again))
    assert _files(again) == _files(out)
    other = tmp_path / "other"
    legacy_campus.generate(str(other), PEOPLE, SEED + 1)
    assert (other / "people.csv").read_bytes() != (out / "people.csv").read_bytes()


def test_the_export_reads_back_as_the_old_centre_wrote_it(campus):
    out, summary, truth = campus
    for name in ("people.csv", "water_purses.csv"):
        raw = (out / name).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") and raw.endswith(b"\r\n") and raw.count(b"\r\n") == raw.count(b"\n")
    people = _rows(out / "people.csv")
    assert tuple(people[0]) == ("姓名", "学工号", "证件号码", "身份", "卡号", "卡状态", "余额(元)")
    rows = people[1:]
    assert len(rows) == PEOPLE
    money = re.compile(r"^\d+\.\d\d$")
    for name, staff_number, id_number, category, serial, status, balance in rows:
        assert name and staff_number.isdigit() and serial.isdigit() and money.match(balance)
        assert category in ("教工", "学生", "临时") and status in ("正常", "挂失")
        if id_number:
            assert len(id_number) == 18 and id_number[-1] == legacy_campus.id_number_check(id_number[:17])
    fen = lambda text: int(text.replace(".", ""))
    assert sum(fen(row[6]) for row in rows) == summary["export_main_fen"]
    water = _rows(out / "water_purses.csv")
    assert tuple(water[0]) == ("卡号", "小钱包余额(元)")
    assert all(money.match(row[1]) for row in water[1:])
    assert sum(fen(row[1]) for row in water[1:]) == summary["export_water_fen"]
    assert summary["teachers"] + summary["students"] + summary["temporary"] == PEOPLE
    assert summary["teachers"] > 0 and summary["students"] > summary["teachers"]
    assert len(truth["cards"]) == PEOPLE and summary["cards"] == PEOPLE
    assert os.stat(out / "old_master.key").st_mode & 0o077 == 0


def test_every_oddity_is_present_and_counted(campus):
    out, summary, truth = campus
    for oddity in legacy_campus.ODDITIES:
        assert summary[oddity] >= 1, oddity
    rows = _rows(out / "people.csv")[1:]
    assert summary["lost"] == sum(1 for row in rows if row[5] == "挂失")
    assert summary["missing_id_number"] == sum(1 for row in rows if not row[2])
    serial_counts = collections.Counter(row[4] for row in rows)
    assert summary["duplicate_serials"] == sum(1 for count in serial_counts.values() if count == 2)
    assert max(serial_counts.values()) == 2
    water_serials = {row[0] for row in _rows(out / "water_purses.csv")[1:]}
    by_oddity = collections.defaultdict(list)
    for card in truth["cards"]:
        for oddity in card["oddities"]:
            by_oddity[oddity].append(card)
    assert len(by_oddity["torn"]) == summary["torn"] and len(by_oddity["unreadable"]) == summary["unreadable"]
    assert len(by_oddity["spent_after_export"]) == summary["spent_after_export"]
    assert len(by_oddity["water_unregistered"]) == summary["water_unregistered"]
    for card in by_oddity["water_unregistered"]:
        assert card["card_water_fen"] > 0 and not card["water_registered"]
        if serial_counts[str(card["serial"])] == 1:
            assert str(card["serial"]) not in water_serials
    # both torn states are there, and the counts add up
    assert set(summary["torn_by_state"]) == {L.RECOVERED_FROM_BACKUP, L.RECOVERED_FROM_MAIN}
    assert sum(summary["torn_by_state"].values()) == summary["torn"]
    assert summary["export_main_fen"] - summary["card_main_fen"] == \
        summary["spent_after_export_fen"] + summary["unreadable_true_main_fen"]


def test_every_card_reads_through_the_sim_reader_with_the_old_keys(campus):
    out, summary, truth = campus
    master_key = legacy_campus.load_old_master_key(str(out / "old_master.key"))
    rows = {(row[1], row[4]): row for row in _rows(out / "people.csv")[1:]}
    states = collections.Counter()
    main_fen = water_fen = 0
    for card in truth["cards"]:
        target, identity, name, purses, _ = _read_card(out / card["file"], master_key)
        assert target.uid.hex() == card["uid"]
        row = rows[(identity.staff_number, str(identity.serial))]
        assert name.decode("gbk") == row[0] == card["name"]
        main, water = purses[L.MAIN_PURSE], purses[L.WATER_PURSE]
        assert main.balance_fen == card["card_main_fen"] and main.state == card["main_state"]
        assert water.state == L.OK and water.balance_fen == card["card_water_fen"]
        states[main.state] += 1
        main_fen += main.balance_fen or 0
        water_fen += water.balance_fen
        if main.state == L.OK and "spent_after_export" in card["oddities"]:
            assert main.balance_fen < card["export_main_fen"]
        elif main.state == L.OK:
            assert "%d.%02d" % divmod(main.balance_fen, 100) == row[6]
    assert states[L.UNREADABLE] == summary["unreadable"]
    assert states[L.RECOVERED_FROM_BACKUP] + states[L.RECOVERED_FROM_MAIN] == summary["torn"]
    assert main_fen == summary["card_main_fen"] and water_fen == summary["card_water_fen"]


def test_other_keys_open_nothing_and_sectors_1_2_stay_free_for_the_new_layout(campus, tmp_path):
    out, _, truth = campus
    master_key = legacy_campus.load_old_master_key(str(out / "old_master.key"))
    card = ClassicCard.load(out / truth["cards"][0]["file"])
    reader = open_reader("sim:")
    reader.field.place(card)
    target = reader.poll(100)
    for key in (mifare.TRANSPORT_KEY, L.sector_key(b"another campus master", target.uid, 4, "A")):
        with pytest.raises(AuthenticationError):
            reader.authenticate(16, mifare.A, key)
        target = reader.poll(100)
    # the new system's identity and tap counter go next to the old purses
    issuer = sam.SoftwareSAM(sam.site_purpose_keys(bytes(range(32)), include_issuer=True))
    identity = card_layout.Identity(1001, 501, 1, card_layout.HOLDER_STUDENT, 20991231)
    card_io.issue_card(reader, issuer, target, identity, "张小明")
    view = card_io.read_card(reader, issuer, reader.poll(100))
    assert view.identity == identity
    reader.field.pull()
    path = tmp_path / "both.card"
    card.save(path)
    assert _read_card(path, master_key)[3][L.MAIN_PURSE].balance_fen == truth["cards"][0]["card_main_fen"]


def test_a_locked_purse_refuses_an_old_terminal_but_still_reads(campus):
    out, _, truth = campus
    master_key = legacy_campus.load_old_master_key(str(out / "old_master.key"))
    torn = next(card for card in truth["cards"] if card["main_state"] == L.RECOVERED_FROM_BACKUP)
    target, _, _, purses, reader = _read_card(out / torn["file"], master_key)
    blocks = legacy_campus.read_purse_blocks(reader, master_key, target.uid, L.MAIN_PURSE)
    steps = L.lock_plan(*blocks, master_key, target.uid)
    legacy_campus.write_steps(reader, master_key, target.uid, steps)
    blocks = legacy_campus.read_purse_blocks(reader, master_key, target.uid, L.MAIN_PURSE)
    reading = L.inspect_purse(*blocks)
    assert (reading.balance_fen, reading.state, reading.locked) == (torn["card_main_fen"], L.OK, True)
    for sector in (4, 5):
        reader.authenticate(mifare.trailer_block(sector), mifare.A, L.sector_key(master_key, target.uid, sector, "A"))
        assert L.trailer_locked(reader.read_block(mifare.trailer_block(sector)))
    # an old terminal holding key B: the card itself refuses the write now
    reader.authenticate(20, mifare.B, L.sector_key(master_key, target.uid, 5, "B"))
    with pytest.raises(CardNak):
        reader.write_block(20, mifare.encode_value_block(0, 20))
    assert L.lock_plan(*blocks, master_key, target.uid, trailers_read=(
        _trailer(reader, master_key, target.uid, 4), _trailer(reader, master_key, target.uid, 5))) == []


def _trailer(reader, master_key, uid, sector):
    reader.poll(100)
    reader.authenticate(mifare.trailer_block(sector), mifare.A, L.sector_key(master_key, uid, sector, "A"))
    return reader.read_block(mifare.trailer_block(sector))


def test_the_command_prints_one_json_line_and_refuses_bad_options(tmp_path):
    command = [sys.executable, "-m", "simulators.legacy_campus", "--people", "20", "--seed", "5"]
    done = subprocess.run(command + ["--out", str(tmp_path / "a")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["people"] == 20 and summary["out"] == str(tmp_path / "a") and summary["torn"] >= 3
    assert len(list((tmp_path / "a" / "cards").glob("*.card"))) == 20
    for bad in (["--out", str(tmp_path / "a")], ["--out", str(tmp_path / "b"), "--people", "5"]):
        refused = subprocess.run(command + bad, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert re.search(r"[\u4e00-\u9fff]", refused.stderr), refused.stderr
