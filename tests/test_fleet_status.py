"""The technicians' view of the fleet (sync_server/fleet_status.py): terminals syncing for real with
the server process (SQLite and PostgreSQL), each in its own kind of trouble - an alarm, a refused
upload, never synced, gone quiet, a clock minutes off with a failing reader - then `ykt fleet status`
as a technician runs it (table and JSON) and /admin/fleet as an administrator opens it, the failing
and stale first, the revoked last; other roles and visitors are kept out.
"""
import json
import time

import pytest

from firmware.core import wallets
from sync_server import db as dbmod, fleet_status, registry

from staff_site import new_site, signed_in

MINUTE_MS = 60 * 1000


@pytest.fixture
def fleet_site(fresh_server):
    """Seven terminals in seven states, by name -> terminal id."""
    server = fresh_server
    now_ms = int(time.time() * 1000)
    made = {}

    def terminal(name, category=wallets.CATEGORY_CANTEEN, **health):
        client = server.add_terminal(category=category)
        made[name] = client
        return client

    terminal("fine").sync(health={"firmware": "ykt-pos/1.2.0", "journal_unacked": 0})
    terminal("skewed").sync(clock_ms=now_ms - 5 * MINUTE_MS,
                            health={"firmware": "ykt-pos/1.1.0", "reader_errors": 3, "journal_unacked": 4})
    terminal("refused").sync(health={"firmware": "ykt-pos/1.2.0", "upload_refused": "record_conflict"})
    terminal("never")
    terminal("quiet").sync(health={"firmware": "ykt-pos/1.2.0", "journal_unacked": 250})
    terminal("alarm", category=wallets.CATEGORY_WATER).sync(
        health={"firmware": "ykt-water/1.0.0", "alarm": "water_meter_stalled"})
    terminal("revoked").sync(health={"firmware": "ykt-pos/0.9.0"})
    conn = server.connect()
    try:
        with dbmod.transaction(conn):
            conn.execute("UPDATE terminals SET last_sync_ms = ? WHERE id = ?",
                         (now_ms - 2 * 3600 * 1000, made["quiet"].terminal_id))
        registry.revoke_terminal(conn, made["revoked"].terminal_id)
    finally:
        conn.close()
    for client in made.values():
        client.close()
    return server, {name: client.terminal_id for name, client in made.items()}


def test_ykt_fleet_status_puts_the_failing_and_stale_first(fleet_site):
    server, ids = fleet_site
    done = server.ykt("fleet", "status", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    by_id = {row["terminal_id"]: row for row in rows}
    order = [next(name for name, terminal_id in ids.items() if terminal_id == row["terminal_id"]) for row in rows]
    assert order == ["alarm", "refused", "never", "quiet", "skewed", "fine", "revoked"]
    assert by_id[ids["alarm"]]["kind"] == "water dispenser" and by_id[ids["alarm"]]["alarm"] == "water_meter_stalled"
    assert by_id[ids["quiet"]]["problems"] == ["stale", "backlog"] and by_id[ids["quiet"]]["backlog"] == 250
    skewed = by_id[ids["skewed"]]
    assert skewed["problems"] == ["reader_errors", "clock"] and skewed["reader_errors"] == 3
    assert 4 * MINUTE_MS < skewed["clock_offset_ms"] < 6 * MINUTE_MS and skewed["firmware"] == "ykt-pos/1.1.0"
    assert by_id[ids["fine"]]["problems"] == [] and by_id[ids["fine"]]["since_sync_s"] < 600
    assert by_id[ids["never"]]["last_sync_ms"] is None and by_id[ids["revoked"]]["problems"] == []

    table = server.ykt("fleet", "status")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "固件" in lines[0] and "上次同步" in lines[0]
    assert "报警" in lines[1] and "上传被拒" in lines[2] and "从未同步" in lines[3] and "长时间未同步" in lines[4]
    assert "共 7 台终端，5 台需要处理" in table.stdout and "revoked" in lines[-2]
    english = server.ykt("fleet", "status", "--lang", "en")
    assert english.returncode == 0 and "7 terminals, 5 need attention" in english.stdout
    assert "not synced lately" in english.stdout and "water dispenser" in english.stdout
    patient = json.loads(server.ykt("fleet", "status", "--stale-min", "180", "--json").stdout)
    assert next(row for row in patient if row["terminal_id"] == ids["quiet"])["problems"] == ["backlog"]


def test_impossible_stale_minutes(fleet_site):
    server, _ids = fleet_site
    for value in ("0", "99999999"):
        done = server.ykt("fleet", "status", "--stale-min", value)
        assert done.returncode == 2 and "--stale-min" in done.stderr


def test_the_fleet_page_is_for_administrators(tmp_path, store_environment):
    app, conn, _data_dir = new_site(tmp_path, staff=[("tech", "李技术", ["admin"]), ("clerk", "王柜员", ["hall"])])
    try:
        merchant = registry.add_merchant(conn, "二食堂 <b>东</b>", "canteen 2", wallets.CATEGORY_CANTEEN)
        quiet = registry.register_terminal(conn, merchant)
        fine = registry.register_terminal(conn, merchant)
        now_ms = dbmod.now_ms()
        with dbmod.transaction(conn):
            conn.execute("UPDATE terminals SET last_sync_ms = ?, clock_offset_ms = 120, health = ? WHERE id = ?",
                         (now_ms, json.dumps({"firmware": "ykt-pos/1.2.0"}), fine))
            conn.execute("UPDATE terminals SET last_sync_ms = ?, health = ? WHERE id = ?",
                         (now_ms - 3600 * 1000, json.dumps({"firmware": "<script>x</script>"}), quiet))
        visitor = app.test_client().get("/admin/fleet")
        assert visitor.status_code == 302 and "/admin/sign-in" in visitor.headers["Location"]
        clerk = signed_in(app, "clerk")
        refused = clerk.get("/admin/fleet")
        assert refused.status_code == 403 and "管理员" in refused.get_data(as_text=True)
        tech = signed_in(app, "tech", door="/admin/sign-in")
        landing = tech.get("/admin/")
        assert landing.status_code == 302 and landing.headers["Location"].endswith("/admin/fleet")
        page = tech.get("/admin/fleet").get_data(as_text=True)
        assert page.index('id="terminal-%d"' % quiet) < page.index('id="terminal-%d"' % fine)
        assert "长时间未同步" in page and "共 2 台终端，1 台需要处理" in page
        assert "<script>x</script>" not in page and "&lt;script&gt;" in page          # escaped, never markup
        assert "<b>东</b>" not in page
        english = tech.get("/admin/fleet?lang=en&stale_min=120").get_data(as_text=True)
        assert "2 terminals, 0 need attention" in english
        assert tech.get("/admin/fleet?stale_min=abc").status_code == 200
    finally:
        conn.close()


def test_problem_and_time_texts():
    assert [fleet_status.problem_text(key, "zh") for key, _zh, _en in fleet_status.PROBLEMS][0] == "报警"
    assert fleet_status.since_text(None, "zh") == "从未" and fleet_status.since_text(59, "en") == "59 s ago"
    assert fleet_status.since_text(3 * 3600 + 5, "zh") == "3 小时前" and fleet_status.since_text(2 * 86400, "en") == "2 d ago"
