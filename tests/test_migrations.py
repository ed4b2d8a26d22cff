"""The schema migrations: numbered SQL files in sync_server/migrations/, applied once each, in order.

The database they build through number 34 is the one the Python migration functions of earlier
releases built (tests/data/schema_through_0034.txt was dumped from those), so a database of an
earlier release upgrades by running only the numbers it lacks. An installed ykt (a wheel, not this
source tree) finds the files, and every other data file of the packages (templates, style sheet).
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from sync_server import db as dbmod, migrations, registry

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN_THROUGH_0034 = pathlib.Path(__file__).resolve().parent / "data" / "schema_through_0034.txt"
PACKAGES = ("ykt", "firmware", "reader_drivers", "sync_server", "simulators")     # pyproject's packages.find
SEED_TABLES = ("counters", "settings", "ledger_accounts", "balances", "recharge_channels")
# (number, name) as every database made so far records them: the tracking must never change
RECORDED_BEFORE = [(1, "initial schema"), (10, "cardholder services"), (11, "binding failures per number"),
                   (20, "web staff users"), (21, "staff action log"), (22, "cardholder session generation"),
                   (30, "finance day close"), (31, "finance ledger check"), (32, "staff session generation"),
                   (33, "binding guesses per guesser"), (34, "phone binding ids")]


def _normalized_sql(sql):
    sql = re.sub(r"--[^\n]*", "", sql or "")
    sql = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"\s*([(),])\s*", r"\1", sql)


def schema_dump(conn):
    """Tables, indexes and seed rows, independent of whitespace and comments in the SQL text."""
    lines = []
    for kind, name, table, sql in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                                "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"):
        lines.append("%s %s on %s: %s" % (kind, name, table, _normalized_sql(sql)))
    for table in SEED_TABLES:
        for row in conn.execute("SELECT * FROM %s ORDER BY rowid" % table):
            lines.append("%s row: %r" % (table, row))
    for row in conn.execute("SELECT number, name FROM _migrations ORDER BY number"):
        lines.append("_migrations row: %r" % (row,))
    return "\n".join(lines) + "\n"


def test_migrations_through_34_build_what_earlier_releases_built(tmp_path):
    conn = dbmod.connect(str(tmp_path / "new.sqlite3"))
    assert dbmod.migrate(conn, through=34) == [number for number, _ in RECORDED_BEFORE]
    assert schema_dump(conn) == GOLDEN_THROUGH_0034.read_text(encoding="utf-8")
    ids = {kind: ledger_id for ledger_id, kind in conn.execute("SELECT id, kind FROM ledger_accounts WHERE id <= 4")}
    assert ids == {"cash_desk": dbmod.LEDGER_CASH_DESK, "channel": dbmod.LEDGER_ONLINE_CHANNEL,
                   "fee_income": dbmod.LEDGER_FEE_INCOME, "legacy_source": dbmod.LEDGER_LEGACY_SOURCE}


def test_an_older_database_upgrades_without_running_anything_twice(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    conn = dbmod.connect(path)
    dbmod.migrate(conn, through=22)                 # the database of a release before the day close
    merchant_id = registry.add_merchant(conn, "一食堂", "canteen 1", 1)
    _person_id, account_id = registry.add_person(conn, "张三", 2, staff_number="S1", set_initial_pin=False)
    registry.recharge(conn, account_id, 5000)
    before = conn.execute("SELECT number, name, applied_ms FROM _migrations ORDER BY number").fetchall()
    conn.close()

    conn = dbmod.init_db(path)
    after = conn.execute("SELECT number, name, applied_ms FROM _migrations ORDER BY number").fetchall()
    assert after[:len(before)] == before            # nothing applied again
    assert [(number, name) for number, name, _ in after][:len(RECORDED_BEFORE)] == RECORDED_BEFORE
    # 31's backfill ran on the data that was there (no day closed yet: an empty baseline)
    assert conn.execute("SELECT count(*) FROM finance_ledger_baseline").fetchone()[0] == 0
    assert conn.execute("SELECT value FROM settings WHERE name = 'finance_close_after_minutes'").fetchone() == (60,)
    assert registry.balances_of(conn, account_id)["main"] == 5000
    assert conn.execute("SELECT count(*) FROM merchants WHERE id = ?", (merchant_id,)).fetchone()[0] == 1
    conn.close()
    conn = dbmod.init_db(path)
    assert conn.execute("SELECT number, name, applied_ms FROM _migrations ORDER BY number").fetchall() == after


def test_migration_files_are_numbered_and_named():
    loaded = migrations.load()
    assert [m.number for m in loaded] == sorted({m.number for m in loaded})
    assert [(m.number, m.name) for m in loaded][:len(RECORDED_BEFORE)] == RECORDED_BEFORE
    assert all(m.statements for m in loaded)


def test_statements_split_at_semicolons_outside_strings_and_comments():
    script = ("-- a comment; not a split\nCREATE TABLE t (a TEXT); -- trailing; comment\n"
              "INSERT INTO t VALUES ('x;y');\n-- the end;\n")
    assert migrations.split_statements(script) == [
        "-- a comment; not a split\nCREATE TABLE t (a TEXT); -- trailing; comment", "INSERT INTO t VALUES ('x;y');"]
    with pytest.raises(ValueError, match="missing ';'"):
        migrations.split_statements("CREATE TABLE t (a TEXT);\nCREATE TABLE u (b TEXT)\n")


def test_an_installed_ykt_finds_the_migration_files_and_templates(tmp_path):
    """Build the wheel as pip would, from a clean copy of the sources (a build's leftover file lists in
    this tree would hide a missing package-data entry), and open a database from the unpacked wheel."""
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "node_modules"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path),
                    str(source)], check=True, timeout=240, cwd=tmp_path)
    wheel = next(tmp_path.glob("ykt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data_files = {path.relative_to(source).as_posix() for package in PACKAGES for path in (source / package).rglob("*")
                  if path.is_file() and path.suffix not in (".py", ".pyc")}
    assert len([name for name in data_files if name.endswith(".sql") and "/postgresql/" not in name]) \
        == len(migrations.load())       # migrations/postgresql/ holds PostgreSQL's forms of a few of them
    assert sorted(data_files - names) == []      # templates and style sheets too: the pages need them
    installed = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(installed)
    probe = ("import sys, sync_server.db as db; assert db.__file__.startswith(sys.argv[1]), db.__file__; "
             "print(db.init_db(sys.argv[2]).execute('SELECT count(*) FROM _migrations').fetchone()[0])")
    environment = dict(os.environ, PYTHONPATH=str(installed))
    done = subprocess.run([sys.executable, "-c", probe, str(installed), str(tmp_path / "x.sqlite3")],
                          capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(migrations.load())
