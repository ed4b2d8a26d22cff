"""The service-hall command line, run as users run it (a subprocess), on a temp data directory."""
import json
import os
import sqlite3
import stat
import subprocess
import sys


def _run(data_dir, *args):
    result = subprocess.run([sys.executable, "-m", "sync_server", *args, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, env=dict(os.environ, YKT_LANG="zh"))
    return result.returncode, result.stdout + result.stderr


def test_hall_flow_and_keys_stay_out_of_output(tmp_path):
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    key_file = data_dir / "master.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    master_key_hex = key_file.read_bytes().hex()

    assert _run(data_dir, "hall", "merchant-add", "--name-zh", "二食堂", "--name-en", "Canteen 2")[0] == 0
    code, out = _run(data_dir, "hall", "person-add", "--name", "张小明", "--id-number", "110101200001011234",
                     "--staff-number", "S2000001")
    assert code == 0 and "账户 1" in out
    code, out = _run(data_dir, "hall", "card-issue", "--account", "1", "--uid", "0a0b0c0d", "--json")
    assert code == 0 and json.loads(out)["card_number"] == 100001
    assert _run(data_dir, "hall", "recharge", "--number", "S2000001", "--amount", "25.50")[0] == 0
    code, out = _run(data_dir, "hall", "transactions", "--account", "1", "--lang", "en")
    assert code == 0 and "balance" in out and "25.50" in out

    provisioning = tmp_path / "t1.json"
    code, out = _run(data_dir, "hall", "terminal-register", "--merchant", "1", "--out", str(provisioning))
    assert code == 0
    assert stat.S_IMODE(os.stat(provisioning).st_mode) == 0o600
    document = json.loads(provisioning.read_text())
    assert set(document["sam_keys"]) == {"card_key_a", "card_mac", "terminal"}
    for secret in list(document["sam_keys"].values()) + [master_key_hex]:
        assert secret not in out

    code, out = _run(data_dir, "hall", "report-loss", "--card", "100001")
    assert code == 0 and "挂失成功" in out
    code, out = _run(data_dir, "hall", "report-loss", "--card", "100001", "--lang", "en")
    assert code == 2 and "no active card" in out      # clear refusal, not a traceback


def test_card_issue_refuses_an_account_that_has_a_card_and_a_uid_in_use(tmp_path):
    """A second card-issue would replace the card for free, without a reissue record: refused, pointing
    to reissue, which books the fee. A UID already on someone's card is refused too."""
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    assert _run(data_dir, "hall", "person-add", "--name", "张小明", "--id-number", "110101200001011234",
                "--staff-number", "S2000001")[0] == 0
    assert _run(data_dir, "hall", "person-add", "--name", "李小红", "--id-number", "110101200002022345")[0] == 0
    assert _run(data_dir, "hall", "recharge", "--number", "S2000001", "--amount", "50")[0] == 0
    assert _run(data_dir, "hall", "card-issue", "--account", "1", "--uid", "0a0b0c0d")[0] == 0
    code, out = _run(data_dir, "hall", "card-issue", "--account", "1", "--uid", "01020304")
    assert code == 2 and "补卡" in out
    code, out = _run(data_dir, "hall", "card-issue", "--account", "1", "--uid", "01020304", "--lang", "en")
    assert code == 2 and "reissue" in out
    code, out = _run(data_dir, "hall", "card-issue", "--account", "2", "--uid", "0a0b0c0d", "--lang", "en")
    assert code == 2 and "UID is already in use" in out
    conn = sqlite3.connect(str(data_dir / "ykt.sqlite3"))
    try:
        assert conn.execute("SELECT account_id, generation, status FROM cards").fetchall() == [(1, 1, "active")]
        assert conn.execute("SELECT count(*) FROM card_reissues").fetchone()[0] == 0
    finally:
        conn.close()
    code, out = _run(data_dir, "hall", "reissue", "--account", "1", "--uid", "01020304", "--json")
    assert code == 0 and json.loads(out)["fee_fen"] == 1000 and json.loads(out)["generation"] == 2


def test_hall_recharge_unfreeze_and_statement_go_through_the_services(tmp_path):
    """The hall commands book and show what the pages and the app do: a cash recharge is an order with
    the staff member on it, cancel-loss is unfreeze under its old name, the statement is the portal's."""
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    assert _run(data_dir, "hall", "person-add", "--name", "张小明", "--id-number", "110101200001011234",
                "--staff-number", "S2000001")[0] == 0
    code, out = _run(data_dir, "hall", "recharge", "--number", "S2000001", "--amount", "25.50", "--operator", "desk1")
    assert code == 0 and "25.50" in out
    conn = sqlite3.connect(str(data_dir / "ykt.sqlite3"))
    try:
        order = conn.execute("SELECT order_id, channel, status, amount_fen, operator FROM recharge_orders").fetchall()
        assert [row[1:] for row in order] == [("cash", "paid", 2550, "desk1")]
        assert order[0][0] in out                               # the receipt number is shown
    finally:
        conn.close()

    assert _run(data_dir, "hall", "card-issue", "--account", "1", "--uid", "0a0b0c0d")[0] == 0
    assert _run(data_dir, "hall", "report-loss", "--card", "100001")[0] == 0
    code, by_old_name = _run(data_dir, "hall", "cancel-loss", "--card", "100001")
    assert code == 0 and "解挂成功" in by_old_name
    assert _run(data_dir, "hall", "report-loss", "--card", "100001")[0] == 0
    code, by_new_name = _run(data_dir, "hall", "unfreeze", "--card", "100001")
    assert code == 0 and by_new_name.split("（")[0] == by_old_name.split("（")[0] == "解挂成功：卡号 100001"
    code, out = _run(data_dir, "hall", "cancel-loss", "--account", "1", "--lang", "en")
    assert code == 2 and "not reported lost" in out

    assert _run(data_dir, "hall", "reissue", "--account", "1", "--uid", "01020304")[0] == 0
    code, out = _run(data_dir, "hall", "transactions", "--account", "1", "--lang", "en")
    lines = out.splitlines()
    assert code == 0 and "card reissue fee" in lines[1] and "service hall cash desk" in lines[2]   # newest first
    code, out = _run(data_dir, "hall", "transactions", "--account", "1", "--type", "recharge", "--lang", "en")
    assert code == 0 and "reissue" not in out and "25.50" in out
    code, out = _run(data_dir, "hall", "transactions", "--account", "1", "--from", "2001-01-01", "--to", "2001-02-01")
    assert code == 0 and "无交易" in out


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _ykt(data_dir, *args):
    result = subprocess.run([sys.executable, "-m", "ykt", *args, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, env=dict(os.environ, YKT_LANG="en"), timeout=120)
    return result.returncode, result.stdout + result.stderr


def test_data_directory_database_wal_and_exports_are_owner_only(tmp_path):
    """They hold ID numbers and PIN hashes: 0700 directories and 0600 files after `ykt server init`,
    while the server runs (WAL and SHM included), for `ykt finance export`, and an older loose
    directory is tightened at the next start with a note."""
    from server_process import running_server
    from sync_server import db as dbmod, registry
    from sync_server.finance import day_of_ms, day_text
    data_dir = tmp_path / "data"
    database = data_dir / "ykt.sqlite3"
    assert _run(data_dir, "server", "init")[0] == 0
    assert _mode(data_dir) == 0o700
    assert [_mode(path) for path in (database, data_dir / "master.key")] == [0o600, 0o600]

    os.chmod(data_dir, 0o755)                   # as an older version left it
    os.chmod(database, 0o644)
    code, out = _run(data_dir, "hall", "person-add", "--name", "张小明", "--id-number", "110101200001011234")
    assert code == 0 and "数据目录权限已收紧" in out and "owner-only" in out
    assert (_mode(data_dir), _mode(database)) == (0o700, 0o600)

    with running_server(data_dir) as server:
        conn = server.connect()
        identity, _name = registry.issue_card_record(conn, 1, b"\x0a\x0b\x0c\x0d")
        registry.recharge(conn, 1, 1000)
        terminal = server.add_terminal()
        assert terminal.sync([terminal.record(1, identity.card_number, 300)])["acked_seq"] == 1
        written = [database, data_dir / "ykt.sqlite3-wal", data_dir / "ykt.sqlite3-shm",
                   data_dir / "ykt.sqlite3-writer.lock", data_dir / "master.key"]
        assert {path.name: _mode(path) for path in written} == {path.name: 0o600 for path in written}
        assert _mode(data_dir) == 0o700
        terminal.close()
        conn.close()

    today = day_text(day_of_ms(dbmod.now_ms()))
    assert _ykt(data_dir, "finance", "close", "--date", today, "--before-day-end")[0] == 0
    out_dir = tmp_path / "exports" / "today"
    code, out = _ykt(data_dir, "finance", "export", "--date", today, "--out", str(out_dir))
    assert code == 0
    exported = [line for line in out.splitlines() if line.startswith(str(out_dir))]
    assert len(exported) > 2 and all(_mode(path) == 0o600 for path in exported)
    assert _mode(out_dir) == 0o700
