"""`ykt hall` service commands run as staff run them (subprocesses) on a temp data directory: registry
import (repeatable, all-or-nothing), reissue with its fee, staff unfreeze, limits, PIN reset,
electricity and a simulated channel recharge."""
import getpass
import json
import os

import pytest
import subprocess
import sys

from conftest import database_snapshot
from sync_server import db as dbmod, keys, pin_rules, registry
from sync_server.services import history
from sync_server.web import auth

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

HR_CSV = """姓名,工号,身份证号,部门
王建国,T1001,21020219800101002X,化工学院
李秀英,T1002,210202198502020031,电信学部
"""
TEMPORARY_CSV = """name,staff_number,department,expiry
赵短期,L2001,后勤处,2027-06-30
"""


def _run(data_dir, *args, stdin=None, lang="zh"):
    result = subprocess.run([sys.executable, "-m", "sync_server", *args, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, input=stdin, env=dict(os.environ, YKT_LANG=lang))
    return result.returncode, result.stdout + result.stderr


def _conn(data_dir):
    return dbmod.connect(dbmod.store_location(str(data_dir)))


def test_registry_import_is_repeatable_and_all_or_nothing(tmp_path):
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    hr = tmp_path / "hr.csv"
    hr.write_text(HR_CSV, encoding="utf-8")
    code, out = _run(data_dir, "hall", "import-people", "--file", str(hr), "--category", "staff", "--json")
    assert code == 0 and json.loads(out) == {"created": 2, "updated": 0, "unchanged": 0, "rows": 2}
    conn = _conn(data_dir)
    snapshot = database_snapshot(conn)
    code, out = _run(data_dir, "hall", "import-people", "--file", str(hr), "--category", "staff", "--json")
    assert code == 0 and json.loads(out) == {"created": 0, "updated": 0, "unchanged": 2, "rows": 2}
    assert database_snapshot(conn) == snapshot                  # the second run changed nothing at all

    hr.write_text(HR_CSV.replace("电信学部", "软件学院") + "张新,T1003,,建筑学院\n", encoding="utf-8")
    code, out = _run(data_dir, "hall", "import-people", "--file", str(hr), "--category", "staff")
    assert code == 0 and "新建 1，更新 1，未变 1" in out

    bad = tmp_path / "bad.csv"
    bad.write_text(HR_CSV + "孙错误,T1002,,重复行\n,T1009,,没有姓名\n", encoding="utf-8")
    snapshot = database_snapshot(conn)
    code, out = _run(data_dir, "hall", "import-people", "--file", str(bad), "--category", "staff", lang="en")
    assert code == 7 and "import refused: 2 bad rows" in out and "4: staff/student number repeats line 3" in out
    assert database_snapshot(conn) == snapshot

    temporary = tmp_path / "temporary.csv"
    temporary.write_text(TEMPORARY_CSV, encoding="utf-8")
    assert _run(data_dir, "hall", "import-people", "--file", str(temporary), "--category", "temporary")[0] == 0
    temporary.write_text(TEMPORARY_CSV.replace(",2027-06-30", ","), encoding="utf-8")
    code, out = _run(data_dir, "hall", "import-people", "--file", str(temporary), "--category", "temporary")
    assert code == 7 and "临时卡需要有效期" in out
    row = conn.execute("SELECT p.category, p.expiry_yyyymmdd, a.id FROM persons p JOIN accounts a ON a.person_id = p.id "
                       "WHERE staff_number = 'L2001'").fetchone()
    assert row[:2] == (4, 20270630)
    code, out = _run(data_dir, "hall", "card-issue", "--account", str(row[2]), "--uid", "0badcafe", "--json")
    assert code == 0 and json.loads(out)["expiry_yyyymmdd"] == 20270630   # the card ends with the registration
    conn.close()


def _staff_site(tmp_path):
    """A data directory with HR_CSV's staff imported: (data_dir, conn, T1001's account id)."""
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    hr = tmp_path / "hr.csv"
    hr.write_text(HR_CSV, encoding="utf-8")
    assert _run(data_dir, "hall", "import-people", "--file", str(hr), "--category", "staff")[0] == 0
    conn = _conn(data_dir)
    account_id = conn.execute("SELECT a.id FROM accounts a JOIN persons p ON p.id = a.person_id "
                              "WHERE staff_number = 'T1001'").fetchone()[0]
    return data_dir, conn, account_id


def test_hall_service_commands(tmp_path):
    data_dir, conn, account_id = _staff_site(tmp_path)
    identity, _ = registry.issue_card_record(conn, account_id, b"\x01\x02\x03\x04")

    code, out = _run(data_dir, "hall", "recharge-channel", "--number", "T1001", "--amount", "30", "--channel", "ccb")
    assert code == 0 and "充值成功" in out and "30.00" in out
    rooms = tmp_path / "rooms.csv"
    rooms.write_text("楼栋,楼层,房间,电表号\n西山1,2,201,\n", encoding="utf-8")     # the hall's room list
    assert _run(data_dir, "hall", "rooms-import", "--file", str(rooms))[0] == 0
    code, out = _run(data_dir, "hall", "electricity", "--number", "T1001", "--building", "西山1",
                     "--floor", "2", "--room", "201", "--amount", "5.00")
    assert code == 0 and "电费缴纳成功" in out and "5.00 元" in out
    code, out = _run(data_dir, "hall", "set-limits", "--number", "T1001", "--single", "20", "--daily", "10")
    assert code == 2 and "限额无效" in out
    code, out = _run(data_dir, "hall", "set-limits", "--number", "T1001", "--single", "20", "--daily", "100.5")
    assert code == 0 and "单笔 20.00 元，每日 100.50 元" in out
    assert conn.execute("SELECT single_limit_fen, daily_limit_fen FROM accounts WHERE id = ?",
                        (account_id,)).fetchone() == (2000, 10050)
    code, out = _run(data_dir, "hall", "set-limits", "--number", "T1001", "--single", "12..5", "--daily", "100")
    assert code == 7 and "12..5" in out and "Traceback" not in out
    code, out = _run(data_dir, "hall", "electricity", "--number", "T9999", "--building", "西山1",
                     "--floor", "2", "--room", "201", "--amount", "5")
    assert code == 6 and "T9999" in out

    registry.report_loss(conn, identity.card_number)
    code, out = _run(data_dir, "hall", "unfreeze", "--number", "T1001", "--operator", "hall-3")
    assert code == 0 and "解挂成功" in out     # staff unfreeze does not need a changed PIN
    code, out = _run(data_dir, "hall", "reissue", "--account", str(account_id), "--uid", "a1a2a3a4", "--json",
                     "--operator", "hall-3")
    reissued = json.loads(out)
    assert code == 0 and reissued["generation"] == 2 and reissued["fee_fen"] == 1000
    assert reissued["balances"]["main"] == 3000 - 500 - 1000
    assert conn.execute("SELECT operator, fee_source FROM card_reissues").fetchall() == [("hall-3", "balance")]

    code, out = _run(data_dir, "hall", "change-pin", "--number", "T1001", "--new-pin-stdin", stdin="246802\n")
    assert code == 0 and "246802" not in out
    with dbmod.transaction(conn):
        assert pin_rules.check_pin(conn, account_id, "246802", dbmod.now_ms()) == "pin_ok"
    code, out = _run(data_dir, "hall", "change-pin", "--account", str(account_id), "--lang", "en")  # hidden alias
    assert code == 0 and "initial" in out
    with dbmod.transaction(conn):
        initial = pin_rules.initial_pin("21020219800101002X", None)
        assert pin_rules.check_pin(conn, account_id, initial, dbmod.now_ms()) == "pin_ok"
    code, out = _run(data_dir, "hall", "report-loss", "--number", "T1001", "--operator", "hall-3")
    assert code == 0 and "挂失成功：卡号 %d" % identity.card_number in out
    assert conn.execute("SELECT status FROM cards WHERE account_id = ? AND generation = 2",
                        (account_id,)).fetchone()[0] == "lost"

    # what was done at the command line is on the person's action log of the hall pages, with who did it
    person_id = conn.execute("SELECT person_id FROM accounts WHERE id = ?", (account_id,)).fetchone()[0]
    logged = [(line["action"], line["username"]) for line in auth.actions_for_person(conn, person_id)
              if line["source"] == "staff"]
    login = getpass.getuser()
    for expected in (("electricity", login), ("limits", login), ("unfreeze", "hall-3"), ("pin_reset", login),
                     ("report_loss", "hall-3")):
        assert expected in logged, (expected, logged)
    assert logged.count(("pin_reset", login)) == 2
    assert logged[0] == ("report_loss", "hall-3")         # newest first

    listing = history.query(conn, account_id, "2000-01-01", "2000-12-31")
    assert listing["rows"] == []
    today = history.today(dbmod.now_ms())
    places = [row["place_zh"] for row in history.query(conn, account_id, today, today)["rows"]]
    assert places == ["补卡费", "学生公寓电费", "建行龙支付"]
    conn.close()


def test_hall_lists_and_stops_a_lost_phones_payment_code(tmp_path):
    from sync_server import paycode
    data_dir, conn, account_id = _staff_site(tmp_path)
    code, out = _run(data_dir, "hall", "paycode-list", "--number", "T1001")
    assert code == 0 and "未开通" in out
    master_key = keys.load_master_key(keys.master_key_path(str(data_dir)))
    with dbmod.transaction(conn):
        for seed in (1, 2):
            phone_key = paycode.public_key_bytes(paycode.signing_key(bytes([seed]) * 32, 1))
            paycode.enable(conn, master_key, account_id, None, phone_key, dbmod.now_ms())
    code, out = _run(data_dir, "hall", "paycode-list", "--number", "T1001", "--json")
    credentials = json.loads(out)
    assert code == 0 and [line["status"] for line in credentials] == ["active", "active"]
    code, out = _run(data_dir, "hall", "paycode-list", "--number", "T1001")
    assert code == 0 and "使用中" in out and str(credentials[0]["credential_id"]) in out
    code, out = _run(data_dir, "hall", "paycode-stop", "--number", "T1001", "--credential", "999")
    assert code == 6 and "999" in out
    code, out = _run(data_dir, "hall", "paycode-stop", "--number", "T1001", "--credential",
                     str(credentials[0]["credential_id"]), "--operator", "hall-1")
    assert code == 0 and "1 台" in out
    code, out = _run(data_dir, "hall", "paycode-stop", "--number", "T1001", "--all", "--lang", "en")
    assert code == 0 and "1 phone" in out
    assert conn.execute("SELECT count(*) FROM deny_entries WHERE kind = 'credential' AND active = 1").fetchone()[0] == 2
    code, out = _run(data_dir, "hall", "paycode-rotate-key")
    assert code == 0 and "第 2 代" in out
    conn.close()


def test_hall_imports_the_old_card_centres_export_once_and_reports_the_money(tmp_path):
    from simulators import legacy_campus
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    campus = tmp_path / "old"
    legacy_campus.generate(str(campus), 40, 5)
    people, water = str(campus / legacy_campus.PEOPLE_CSV), str(campus / legacy_campus.WATER_CSV)
    code, out = _run(data_dir, "hall", "migration-import", "--people", people, "--water", water, "--json")
    assert code == 0, out
    first = json.loads(out)
    assert first["cards_new"] > 0 and first["teacher_fen_booked"] > 0 and first["conservation_ok"]
    code, out = _run(data_dir, "hall", "migration-import", "--people", people, "--water", water, lang="en")
    assert code == 0 and "0 new cards" in out and "booked 0.00 yuan" in out and "agrees" in out
    code, out = _run(data_dir, "hall", "migration-report")
    assert code == 0 and "待迁移" in out and "一致" in out
    code, out = _run(data_dir, "hall", "migration-import", "--people", str(tmp_path / "missing.csv"), "--water", water)
    assert code == 4 and "missing.csv" in out and "Traceback" not in out
    bad = tmp_path / "bad.csv"
    bad.write_text("姓名,学工号,证件号码,身份,卡号,卡状态,余额(元)\n王,T1,,教师,1,正常,1.00\n", encoding="utf-8")
    code, out = _run(data_dir, "hall", "migration-import", "--people", str(bad), "--water", water, lang="en")
    assert code == 7 and "import refused: 1 bad rows" in out
