"""The service hall's issuing station writes real cards: `ykt hall card-issue / reissue --card-file`.

The written card must read back on a terminal (its key holder has no issuer key), a used card is
refused before any card number is allocated, and a write torn by a pulled card voids that number.
"""
import argparse
import json
import subprocess
import sys

import pytest

from firmware.apps import card_io, issuing
from firmware.apps.issuing import StationCard, StationError
from firmware.core import sam as sam_module
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from sync_server import cli, db as dbmod, keys, registry

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)


def ykt(data_dir, *words):
    completed = subprocess.run([sys.executable, "-m", "ykt", *words, "--data-dir", str(data_dir)],
                               capture_output=True, text=True, timeout=120)
    return completed.returncode, completed.stdout, completed.stderr


def read_as_terminal(data_dir, card_path):
    master = keys.load_master_key(keys.master_key_path(str(data_dir)))
    terminal_sam = sam_module.SoftwareSAM(sam_module.site_purpose_keys(master))
    reader = open_reader("sim:")
    reader.field.place(ClassicCard.load(str(card_path)))
    return card_io.read_card(reader, terminal_sam, reader.poll(100))


@pytest.fixture
def hall_dir(tmp_path):
    data_dir = tmp_path / "data"
    assert ykt(data_dir, "server", "init")[0] == 0
    assert ykt(data_dir, "hall", "person-add", "--name", "王小红", "--staff-number", "S2024007")[0] == 0
    assert ykt(data_dir, "hall", "recharge", "--number", "S2024007", "--amount", "50")[0] == 0
    return data_dir


def test_issue_writes_a_card_a_terminal_can_read(hall_dir, tmp_path):
    card = tmp_path / "new.card"
    code, out, err = ykt(hall_dir, "hall", "card-issue", "--account", "1", "--card-file", str(card),
                         "--uid", "04a1b2c3", "--json")
    assert code == 0, err
    issued = json.loads(out)
    assert issued["written"] and issued["uid"] == "04a1b2c3"
    view = read_as_terminal(hall_dir, card)
    assert (view.identity.card_number, view.identity.generation, view.identity.account_id) == \
        (issued["card_number"], 1, 1)
    assert view.name == "王小红" and view.tap_counter == 0


def test_a_used_card_is_refused_before_a_number_is_allocated(hall_dir, tmp_path):
    card = tmp_path / "used.card"
    assert ykt(hall_dir, "hall", "card-issue", "--account", "1", "--card-file", str(card))[0] == 0
    conn = dbmod.connect(dbmod.store_location(str(hall_dir)))
    before = conn.execute("SELECT count(*) FROM cards").fetchone()[0]
    code, _, err = ykt(hall_dir, "hall", "card-issue", "--account", "1", "--card-file", str(card))
    assert code == 2 and "不是空白卡" in err
    assert conn.execute("SELECT count(*) FROM cards").fetchone()[0] == before
    conn.close()


def test_reissue_writes_the_next_generation_and_charges_the_fee(hall_dir, tmp_path):
    assert ykt(hall_dir, "hall", "card-issue", "--account", "1", "--card-file", str(tmp_path / "old.card"))[0] == 0
    code, out, err = ykt(hall_dir, "hall", "reissue", "--account", "1", "--card-file", str(tmp_path / "new.card"),
                         "--operator", "clerk1", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["generation"] == 2 and result["fee_fen"] == 1000 and result["balances"]["main"] == 4000
    view = read_as_terminal(hall_dir, tmp_path / "new.card")
    assert view.identity.generation == 2 and view.identity.card_number == result["card_number"]


def test_a_torn_write_voids_the_card_number(hall_dir, tmp_path):
    station = StationCard("sim:", str(tmp_path / "torn.card"), "0a0b0c0d")
    conn = dbmod.connect(dbmod.store_location(str(hall_dir)))
    try:
        identity, name = registry.issue_card_record(conn, 1, station.uid)
        station.reader.field.pull_after(3)              # the cardholder takes the card mid-write
        args = argparse.Namespace(data_dir=str(hall_dir), lang="zh", issuing_station=lambda: issuing)
        with pytest.raises(registry.HallError):
            cli.write_at_station(args, conn, station, identity, name)
        status = conn.execute("SELECT status FROM cards WHERE card_number = ? AND generation = ?",
                              (identity.card_number, identity.generation)).fetchone()[0]
        assert status == "lost"                         # denied on every terminal's next sync
    finally:
        station.close()
        conn.close()


def test_no_card_on_the_station_is_a_clear_error(tmp_path):
    with pytest.raises(StationError) as refused:
        StationCard("sim:", None, None, timeout_ms=50)
    assert "没有卡片" in refused.value.zh and "no card" in refused.value.en


@pytest.mark.parametrize("swap", [False, True], ids=["card-left", "card-swapped"])
def test_a_card_that_leaves_or_is_swapped_after_the_blank_check_is_not_written(tmp_path, monkeypatch, swap):
    checked = issuing.card_io.require_blank

    def check_then_lose_the_card(reader, target):
        checked(reader, target)
        if swap:
            reader.field.place(ClassicCard(bytes.fromhex("04ffeedd")))   # another card, never checked
        else:
            reader.field.pull()
    monkeypatch.setattr(issuing.card_io, "require_blank", check_then_lose_the_card)
    with pytest.raises(StationError) as refused:
        StationCard(card_file=str(tmp_path / "blank.card"), uid_hex="04a1b2c3", timeout_ms=50)
    assert "空白卡" in refused.value.zh and "put it back" in refused.value.en


def test_the_server_only_command_line_refuses_the_station_and_changes_nothing(hall_dir, tmp_path):
    # `python -m sync_server` carries no terminal code: it cannot drive a reader, says so, and
    # allocates no card number; recording a UID alone still works there.
    card = tmp_path / "new.card"
    completed = subprocess.run([sys.executable, "-m", "sync_server", "hall", "card-issue", "--account", "1",
                                "--card-file", str(card), "--data-dir", str(hall_dir)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert "不带发卡机" in completed.stderr
    assert not card.exists()
    conn = dbmod.connect(dbmod.store_location(str(hall_dir)))
    try:
        assert conn.execute("SELECT count(*) FROM cards").fetchone()[0] == 0
    finally:
        conn.close()
    completed = subprocess.run([sys.executable, "-m", "sync_server", "hall", "card-issue", "--account", "1",
                                "--uid", "04a1b2c3", "--data-dir", str(hall_dir), "--json"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert not json.loads(completed.stdout)["written"]
