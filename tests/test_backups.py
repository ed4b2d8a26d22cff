"""Server backups (sync_server/backups.py) against the real server process on its SQLite file: online
copies taken by `ykt server backup` while signed terminals upload over HTTP, copies taken on a
schedule by `ykt server --backup-dir` and pruned, and `ykt server restore` proven by closing the day
with `ykt finance close` on the restored copy. The mistakes a technician makes at 3 a.m. - a missing
or damaged file, a database already there, no master key, PostgreSQL - are refused and change nothing.
"""
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from server_process import running_server
from sync_server import backups, db as dbmod, keys, registry
from sync_server.finance import day_of_ms, day_text
from sync_server.ledger import check_balances
from sync_server.ledger_store import SqliteStore

DEADLINE_S = 60


def ykt(*args, env=None):
    environment = dict(os.environ, YKT_LANG="zh")
    environment.pop("YKT_DATABASE_URL", None)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "ykt", *args], capture_output=True, text=True, timeout=120,
                          env=environment)


def rows_in(path, table):
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return conn.execute("SELECT count(*) FROM %s" % table).fetchone()[0]
    finally:
        conn.close()


def purchases_in(path):
    return rows_in(path, "terminal_records")


def balanced(path):
    """The ledger in a copy balances; read-only: opening a backup for writing would change its bytes."""
    conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True)
    try:
        return check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()


def fingerprint(directory):
    """Every file in a directory and its hash: "nothing changed" is checked, not assumed."""
    found = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                found[name] = hashlib.sha256(handle.read()).hexdigest()
    return found


@pytest.fixture
def server(tmp_path):
    with running_server(tmp_path / "server", env={"YKT_FINANCE_CLOSE": "off"}, database=None) as handle:
        yield handle


def lunch(server, stop, booked):
    """A terminal uploading a purchase at a time over HTTP until `stop`; `booked` counts them."""
    conn = server.connect()
    try:
        _person, account_id = registry.add_person(conn, "备份", 2, staff_number="B0001", set_initial_pin=False)
        registry.recharge(conn, account_id, 10_000_000)
        identity, _name = registry.issue_card_record(conn, account_id, b"\x0b\xac\x0c\x01")
    finally:
        conn.close()
    terminal = server.add_terminal()
    counter = 0
    while not stop.is_set() and counter < 5000:
        counter += 1
        terminal.sync([terminal.record(account_id, identity.card_number, 100 + counter, tap_counter=counter)])
        booked.append(counter)


def test_online_backups_while_terminals_upload_restore_and_close_the_day(server, tmp_path):
    backup_dir = tmp_path / "backups"
    stop, booked = threading.Event(), []
    writer = threading.Thread(target=lunch, args=(server, stop, booked), daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(booked) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        taken = []
        for _ in range(3):                          # while the uploads go on
            done = ykt("server", "backup", "--data-dir", server.data_dir, "--to", str(backup_dir), "--keep", "5")
            assert done.returncode == 0, done.stderr
            assert "已备份" in done.stderr + done.stdout
            taken.append(len(booked))
            time.sleep(0.2)
    finally:
        stop.set()
        writer.join(timeout=DEADLINE_S)
    names = backups.list_backups(str(backup_dir))
    assert len(names) == 3 and oct(os.stat(backup_dir).st_mode & 0o777) == "0o700"
    counts = []
    for name in names:
        path = str(backup_dir / name)
        manifest = backups.verify_backup(path)
        assert manifest["file"] == name and os.stat(path).st_mode & 0o777 == 0o400
        assert balanced(path), name                  # each copy is one consistent moment of the ledger
        assert not os.path.exists(path + "-wal")
        counts.append(purchases_in(path))
    assert counts == sorted(counts) and counts[0] >= 20 and counts[-1] <= len(booked)
    assert not [name for name in os.listdir(backup_dir) if name.endswith(backups.PARTIAL_SUFFIX)]

    # a new machine: the master key comes from where it is kept apart, the database from the backup
    copy_dir = tmp_path / "restored"
    os.makedirs(os.path.dirname(keys.master_key_path(str(copy_dir))), mode=0o700)
    shutil.copy2(keys.master_key_path(server.data_dir), keys.master_key_path(str(copy_dir)))
    done = ykt("server", "restore", "--data-dir", str(copy_dir), "--file", str(backup_dir / names[-1]))
    assert done.returncode == 0, done.stderr
    assert purchases_in(dbmod.db_path(str(copy_dir))) == counts[-1]
    today = day_text(day_of_ms(dbmod.now_ms()))
    closed = ykt("finance", "close", "--data-dir", str(copy_dir), "--date", today, "--before-day-end", "--json",
                 "--lang", "en")
    assert closed.returncode == 0, closed.stderr
    report = json.loads(closed.stdout.strip().splitlines()[-1])
    assert report["balanced"] is True


def test_the_server_takes_backups_on_its_schedule_and_keeps_the_newest(tmp_path):
    backup_dir = tmp_path / "backups"
    with running_server(tmp_path / "server", env={"YKT_FINANCE_CLOSE": "off"}, database=None,
                        server_args=("--backup-dir", str(backup_dir), "--backup-interval-s", "5",
                                     "--backup-keep", "2")) as handle:
        seen = set()
        deadline = time.monotonic() + DEADLINE_S
        while len(seen) < 3 and time.monotonic() < deadline:
            seen.update(backups.list_backups(str(backup_dir)))
            time.sleep(0.2)
        assert len(seen) >= 3, "the schedule took %s" % sorted(seen)
        kept = backups.list_backups(str(backup_dir))
        assert len(kept) <= 2 and kept == sorted(seen)[-len(kept):]
        for name in kept:
            backups.verify_backup(str(backup_dir / name))
        assert handle.process.poll() is None


def test_restore_refuses_what_would_lose_or_corrupt_data(server, tmp_path):
    backup_dir = tmp_path / "backups"
    assert ykt("server", "backup", "--data-dir", server.data_dir, "--to", str(backup_dir)).returncode == 0
    (name,) = backups.list_backups(str(backup_dir))
    good = backup_dir / name
    before = fingerprint(server.data_dir)

    missing = ykt("server", "restore", "--data-dir", server.data_dir, "--file", str(backup_dir / "nope.db"))
    assert missing.returncode == 4 and "找不到备份文件" in missing.stderr
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    shutil.copy2(good, tampered / name)
    shutil.copy2(str(good)[:-3] + ".json", tampered / (name[:-3] + ".json"))
    with open(tampered / name, "r+b") as handle:
        handle.seek(5000)
        handle.write(b"\xff")
    damaged = ykt("server", "restore", "--data-dir", server.data_dir, "--file", str(tampered / name), "--force")
    assert damaged.returncode == 7 and "已损坏或被改动" in damaged.stderr
    os.remove(tampered / (name[:-3] + ".json"))
    shutil.copy2(good, tampered / name)
    unverified = ykt("server", "restore", "--data-dir", server.data_dir, "--file", str(tampered / name), "--force")
    assert unverified.returncode == 4 and "清单" in unverified.stderr
    there = ykt("server", "restore", "--data-dir", server.data_dir, "--file", str(good))
    assert there.returncode == 2 and "--force" in there.stderr
    no_key = ykt("server", "restore", "--data-dir", str(tmp_path / "empty"), "--file", str(good))
    assert no_key.returncode == 4 and "主密钥" in no_key.stderr
    assert fingerprint(server.data_dir) == before
    for done in (missing, damaged, unverified, there, no_key):
        assert "Traceback" not in done.stderr


def test_force_keeps_the_replaced_database(tmp_path):
    data_dir = tmp_path / "server"
    assert ykt("server", "init", "--data-dir", str(data_dir)).returncode == 0
    backup_dir = tmp_path / "backups"
    assert ykt("server", "backup", "--data-dir", str(data_dir), "--to", str(backup_dir)).returncode == 0
    conn = dbmod.connect(dbmod.db_path(str(data_dir)))
    registry.add_merchant(conn, "后来的商户", "added after the backup", 1)
    conn.close()
    (name,) = backups.list_backups(str(backup_dir))
    done = ykt("server", "restore", "--data-dir", str(data_dir), "--file", str(backup_dir / name), "--force")
    assert done.returncode == 0, done.stderr
    (replaced,) = [entry for entry in os.listdir(data_dir) if ".replaced-" in entry and not entry.endswith(("-wal",
                                                                                                            "-shm"))]
    assert rows_in(os.path.join(data_dir, replaced), "merchants") == rows_in(dbmod.db_path(str(data_dir)),
                                                                            "merchants") + 1


@pytest.mark.parametrize("options, words", [(("--keep", "0"), "--keep"), (("--keep", "999999"), "--keep")])
def test_impossible_backup_options(tmp_path, options, words):
    done = ykt("server", "backup", "--data-dir", str(tmp_path), "--to", str(tmp_path / "b"), *options)
    assert done.returncode == 2 and words in done.stderr and not (tmp_path / "b").exists()


def test_postgresql_is_backed_up_with_its_own_tools(tmp_path):
    done = ykt("server", "backup", "--data-dir", str(tmp_path), "--to", str(tmp_path / "b"),
               env={"YKT_DATABASE_URL": "postgresql://ykt@127.0.0.1:1/ykt"})
    assert done.returncode == 2 and "pg_basebackup" in done.stderr and not (tmp_path / "b").exists()


def test_a_missing_database_is_not_ready(tmp_path):
    done = ykt("server", "backup", "--data-dir", str(tmp_path / "nothing"), "--to", str(tmp_path / "b"))
    assert done.returncode == 9 and "ykt server init" in done.stderr
