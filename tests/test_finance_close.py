"""The day close against a real server: records uploaded over HTTP by signed terminals, then
`ykt finance close` as finance runs it. Late records, closed days that stay closed, gaps, clones,
negative accounts, impossible times, statements, the finance pages and the scheduler.
"""
import csv
import json
import os
import re
import subprocess
import sys

import httpx
import openpyxl
import pytest
from hypothesis import given, settings, strategies as st

from firmware.core import protocol, records as record_codec
from server_process import running_server
from sync_server import db as dbmod, pg_store, registry
from sync_server.finance import (FinanceError, channel_statements, close, counter_gaps, day_of_ms, day_start_ms,
                                 day_text, hour_of_ms, scheduler)
from sync_server.finance import exports
from sync_server.web import auth

HOUR_MS = 3600 * 1000


@pytest.fixture
def server(tmp_path, store_environment):
    # the scheduler stays out: these tests decide when days close; `ykt finance` commands find the
    # database as the server does (store_environment sets $YKT_DATABASE_URL on PostgreSQL)
    with running_server(tmp_path / "server", env={"YKT_FINANCE_CLOSE": "off"}) as handle:
        yield handle


def _person(conn, balance_fen, uid):
    _person_id, account_id = registry.add_person(conn, "测试", 2, staff_number="T%s" % uid.hex(), set_initial_pin=False)
    if balance_fen:
        registry.recharge(conn, account_id, balance_fen)
    identity, _name = registry.issue_card_record(conn, account_id, uid)
    return account_id, identity.card_number


def _terminal(server, conn):
    """A terminal registered last week (a tap before its terminal existed is an impossible time)."""
    terminal = server.add_terminal()
    conn.execute("UPDATE terminals SET created_ms = ? WHERE id = ?", (day_start_ms(_today() - 7), terminal.terminal_id))
    return terminal


def _close(server, day, *extra):
    completed = subprocess.run([sys.executable, "-m", "ykt", "finance", "close", "--date", day_text(day), "--json",
                                "--data-dir", server.data_dir, "--lang", "en"] + list(extra),
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode in (0, 3), completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, completed.stdout
    return json.loads(lines[0]), completed


def _today():
    return day_of_ms(dbmod.now_ms())


def test_late_record_lands_in_the_next_day_and_a_closed_day_never_changes(server):
    conn = server.connect()
    account_id, card = _person(conn, 50000, b"\x01\x02\x03\x04")
    terminal = _terminal(server, conn)
    today = _today()
    yesterday_noon = day_start_ms(today - 1) + 12 * HOUR_MS
    terminal.sync([terminal.record(account_id, card, 800, tap_counter=1, time_ms=yesterday_noon),
                   terminal.record(account_id, card, 1200, tap_counter=2, time_ms=yesterday_noon + HOUR_MS),
                   terminal.record(account_id, card, 500, tap_counter=3, time_ms=dbmod.now_ms())])
    first, _ = _close(server, today - 1)
    assert first["balanced"] is True
    assert first["sales_count"] == 2 and first["gross_fen"] == 2000 and first["late_records"] == 0
    assert first["gaps"] == 0 and first["anomalies"] == 0

    # a tap of yesterday that comes in after yesterday closed (an offline terminal, say)
    terminal.sync([terminal.record(account_id, card, 300, tap_counter=4, time_ms=yesterday_noon + 2 * HOUR_MS,
                                   flags=record_codec.FLAG_OFFLINE)])
    again, completed = _close(server, today - 1)
    assert again == first, "closing twice must give the same figures"
    assert "already closed" in completed.stderr

    today_close, _ = _close(server, today, "--before-day-end")
    assert today_close["balanced"] is True
    assert today_close["sales_count"] == 2 and today_close["gross_fen"] == 800
    assert today_close["late_records"] == 1 and today_close["late_fen"] == 300
    report = close.load_report(conn, today)
    assert report["anomalies"]["late_records"] == [
        {"terminal_id": terminal.terminal_id, "seq": 4, "own_day": day_text(today - 1),
         "merchant_id": terminal.merchant_id, "amount_fen": 300}]
    merchant = next(row for row in report["merchants"] if row["merchant_id"] == terminal.merchant_id)
    hours = sum(count for count, _fen in merchant["by_hour"])
    assert hours == 1, "the late record is not one of today's hours"
    row = next(row for row in report["terminals"] if row["terminal_id"] == terminal.terminal_id)
    assert (row["first_seq"], row["last_seq"], row["records"]) == (3, 4, 2)
    assert row["offline_records"] == 1 and len(row["offline_periods"]) == 1
    assert close.stored_report(conn, today - 1)["totals"]["gross_fen"] == 2000
    conn.close()


def test_days_close_in_order_never_in_the_future(server):
    conn = server.connect()
    today = _today()
    with pytest.raises(FinanceError):
        close.close_day(conn, today + 1)
    close.close_day(conn, today - 3)
    with pytest.raises(FinanceError) as refused:
        close.close_day(conn, today - 1)
    assert day_text(today - 2) in refused.value.text("en")
    completed = subprocess.run([sys.executable, "-m", "ykt", "finance", "close", "--date", day_text(today - 1),
                                "--data-dir", server.data_dir], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2 and "请先结算 %s" % day_text(today - 2) in completed.stderr
    conn.close()


def test_a_day_in_progress_closes_only_with_the_override(server):
    """Closing today would turn every later tap of today into a late record: the CLI, the function
    and the page refuse it; `--before-day-end` is the operator's explicit way through."""
    conn = server.connect()
    today = _today()
    with pytest.raises(FinanceError) as refused:
        close.close_day(conn, today)
    assert "has not ended yet" in refused.value.text("en")
    completed = subprocess.run([sys.executable, "-m", "ykt", "finance", "close", "--date", day_text(today),
                                "--data-dir", server.data_dir], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2 and "尚未结束" in completed.stderr
    assert close.closed_days(conn) == []

    auth.add_staff_user(conn, "caiwu", "财务一", ["finance"], "finance-password-1")
    client = _signed_in(server, "caiwu", "finance-password-1")
    page = client.get("/finance/").text
    assert 'value="%s"' % day_text(today - 1) in page and day_text(today) not in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post("/finance/close", data={"csrf_token": token, "day": day_text(today)})
    assert close.closed_days(conn) == [], "the page closed a day still in progress"
    client.post("/finance/close", data={"csrf_token": token, "day": day_text(today - 1)})
    assert [row[1] for row in close.closed_days(conn)] == [day_text(today - 1)]
    page = client.get("/finance/").text
    assert 'id="close-day"' not in page and 'id="nothing-to-close"' in page, "today offered for closing"

    summary, _ = _close(server, today, "--before-day-end")
    assert summary["day"] == day_text(today)
    conn.close()


def test_gaps_clones_negative_accounts_and_impossible_times_are_reported(server):
    conn = server.connect()
    today = _today()
    rich, rich_card = _person(conn, 50000, b"\x11\x12\x13\x14")
    poor, poor_card = _person(conn, 1000, b"\x21\x22\x23\x24")
    first, second = _terminal(server, conn), _terminal(server, conn)
    now_ms = dbmod.now_ms()
    # the same tap counter at two windows: a copy of the card is in use
    first.sync([first.record(rich, rich_card, 500, tap_counter=7, time_ms=now_ms - 60000)])
    second.sync([second.record(rich, rich_card, 600, tap_counter=7, time_ms=now_ms - 30000)])
    # two offline windows each accept 700 from a 1000 balance
    first.sync([first.record(poor, poor_card, 700, tap_counter=1, time_ms=now_ms - 20000, flags=1)])
    second.sync([second.record(poor, poor_card, 700, tap_counter=2, time_ms=now_ms - 10000, flags=1)])
    # seq 5 never arrives; a record stamped an hour after it reached us
    first.sync([first.record(rich, rich_card, 100, seq=3, tap_counter=8, time_ms=now_ms - 5000),
                first.record(rich, rich_card, 100, seq=4, tap_counter=9, time_ms=now_ms + HOUR_MS),
                first.record(rich, rich_card, 100, seq=6, tap_counter=11, time_ms=now_ms - 1000)])
    summary, _ = _close(server, today, "--before-day-end")
    counts = summary["anomaly_counts"]
    assert counts["cloned_card_count"] == 1
    assert counts["negative_account_count"] == 1
    assert counts["impossible_time_count"] == 1
    assert counts["revoked_terminal_record_count"] == 0 and counts["unbooked_record_count"] == 0
    assert summary["gaps"] == 1 and summary["missing_seqs"] == 1
    assert summary["balanced"] is True
    report = close.load_report(conn, today)
    assert report["anomalies"]["negative_accounts"][0]["account_id"] == poor
    assert report["anomalies"]["negative_accounts"][0]["blocked"] is True
    clone = report["anomalies"]["cloned_cards"][0]
    assert (clone["card_number"], clone["denied"]) == (rich_card, True)
    assert conn.execute("SELECT status FROM cards WHERE card_number = ?", (rich_card,)).fetchone()[0] == "frozen"
    # terminals learn the denial on their next sync
    answer = first.sync([])
    assert [protocol.DENY_CARD, protocol.card_deny_ref(rich_card, 1), True, protocol.DENY_REASON_FROZEN] \
        in answer["deny"]["entries"]
    row = next(row for row in report["terminals"] if row["terminal_id"] == first.terminal_id)
    assert row["open_gaps"] == [[5, 5]]
    # the card skipped counter 10 and seq 5 of the same terminal is still missing: not called harmless
    assert summary["card_counter_gaps"] == 1
    assert summary["card_counter_gaps_by_reason"] == {"pending": 1, "torn_tap": 0}
    conn.close()


def test_a_card_not_of_the_named_account_is_unsettled_at_the_close(server, tmp_path):
    """A forged record (valid terminal key) naming another account's card, and one naming a card nobody
    holds: the close lists both as a card mismatch with owner and amount, the merchant is paid only the
    honest tap, its check holds and the ledger balances; the JSON line, the exports say so."""
    conn = server.connect()
    victim, victim_card = _person(conn, 5000, b"\x31\x32\x33\x34")
    thief, thief_card = _person(conn, 5000, b"\x41\x42\x43\x44")
    terminal = _terminal(server, conn)
    now_ms = dbmod.now_ms()
    answer = terminal.sync([terminal.record(victim, thief_card, 900, tap_counter=1, time_ms=now_ms - 3000),
                            terminal.record(victim, 987654, 700, tap_counter=1, time_ms=now_ms - 2000),
                            terminal.record(victim, victim_card, 50, tap_counter=1, time_ms=now_ms - 1000)])
    assert answer["acked_seq"] == 3 and answer["commands"] == []
    summary, _ = _close(server, _today(), "--before-day-end")
    assert summary["anomaly_counts"]["card_mismatch_count"] == 2
    assert summary["anomaly_counts"]["unbooked_record_count"] == 0
    assert summary["balanced"] is True and summary["ledger_check"] == {"ok": True, "problem_count": 0}
    assert summary["merchants"] == {str(terminal.merchant_id): 50}
    assert summary["sales_count"] == 1 and summary["gross_fen"] == 50
    report = close.load_report(conn, _today())
    assert report["invariants"]["merchant_mismatch_count"] == 0
    assert [(m["seq"], m["card_number"], m["named_account_id"], m["owner_account_id"], m["amount_fen"])
            for m in report["anomalies"]["card_mismatches"]] == [(1, thief_card, victim, thief, 900),
                                                                   (2, 987654, victim, None, 700)]
    assert registry.balances_of(conn, victim)["main"] == 5000 - 50 and registry.balances_of(conn, thief)["main"] == 5000
    paths = _export(server, _today(), tmp_path / "out")
    anomalies_csv = [path for path in paths if path.endswith("-anomalies.csv")][0]
    with open(anomalies_csv, encoding="utf-8-sig") as handle:
        text = handle.read()
    # people are named by name and staff/student number, not by the internal account id
    assert "terminal %d seq 1: card %d named 测试（T31323334）, the card is 测试（T41424344）; 9.00 yuan not charged" % (
        terminal.terminal_id, thief_card) in text
    assert "seq 2: card 987654 named 测试（T31323334）, the card is nobody's; 7.00 yuan" in text
    conn.close()


def _signed_in(server, username, password):
    client = httpx.Client(base_url=server.url, timeout=30)
    page = client.get("/hall/sign-in").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post("/hall/sign-in", data={"csrf_token": token, "username": username, "password": password})
    return client


def test_card_counter_gaps_reported_with_their_reason(server):
    """A counter a card skipped is on the night's report: a torn tap once every terminal has sent
    everything, pending while one still may hold the record; a gap a late record fills is no gap."""
    conn = server.connect()
    today = _today()
    a, b, c = _terminal(server, conn), _terminal(server, conn), _terminal(server, conn)
    torn, torn_card = _person(conn, 50000, b"\x51\x52\x53\x54")
    filled, filled_card = _person(conn, 50000, b"\x61\x62\x63\x64")
    waiting, waiting_card = _person(conn, 50000, b"\x71\x72\x73\x74")
    other, other_card = _person(conn, 50000, b"\x81\x82\x83\x84")
    noon = day_start_ms(today - 1) + 12 * HOUR_MS

    # yesterday: one card skips counter 3 (pulled after the count); another skips 2, whose record
    # comes from a second window a moment later; then every terminal syncs
    a.sync([a.record(torn, torn_card, 100, tap_counter=1, time_ms=noon),
            a.record(torn, torn_card, 100, tap_counter=2, time_ms=noon + 60000),
            a.record(torn, torn_card, 100, tap_counter=4, time_ms=noon + 120000),
            a.record(filled, filled_card, 100, tap_counter=1, time_ms=noon + 1000),
            a.record(filled, filled_card, 100, tap_counter=3, time_ms=noon + 90000)])
    b.sync([b.record(filled, filled_card, 100, tap_counter=2, time_ms=noon + 30000, flags=record_codec.FLAG_OFFLINE)])
    a.sync([])
    c.sync([])
    yesterday, _ = _close(server, today - 1)
    assert yesterday["card_counter_gaps"] == 1
    assert yesterday["card_counter_gaps_by_reason"] == {"torn_tap": 1, "pending": 0}
    report = close.load_report(conn, today - 1)
    assert report["card_counter_gaps"]["rows"] == [
        {"card_number": torn_card, "generation": 1, "account_id": torn, "from_counter": 3, "to_counter": 3,
         "missing": 1, "terminal_id": a.terminal_id, "seq": 3, "noticed_ms": report["card_counter_gaps"]["rows"][0][
             "noticed_ms"], "reason": "torn_tap", "waiting_terminals": []}]
    assert "torn tap, nothing charged" in exports.csv_text(report, "card_gaps", "en")

    # today: the tap with counter 2 was journaled at window c, but c's seq 2 has not reached us
    now_ms = dbmod.now_ms()
    a.sync([a.record(waiting, waiting_card, 100, tap_counter=1, time_ms=now_ms - 60000)])
    lost_on_the_way = c.record(waiting, waiting_card, 100, seq=2, tap_counter=2, time_ms=now_ms - 50000)
    c.sync([c.record(other, other_card, 100, seq=1, tap_counter=1, time_ms=now_ms - 55000),
            c.record(other, other_card, 100, seq=3, tap_counter=2, time_ms=now_ms - 40000)])
    a.sync([a.record(waiting, waiting_card, 100, tap_counter=3, time_ms=now_ms - 30000)])
    b.sync([])
    c.sync([])
    summary, completed = _close(server, today, "--before-day-end")
    assert summary["card_counter_gaps_by_reason"] == {"torn_tap": 0, "pending": 1}
    assert "a terminal has not sent everything yet 1" in completed.stderr
    pending = close.load_report(conn, today)["card_counter_gaps"]["rows"]
    assert [(row["card_number"], row["from_counter"], row["reason"], row["waiting_terminals"]) for row in pending] \
        == [(waiting_card, 2, "pending", [c.terminal_id])]

    # the record arrives after the close: today's figures stay as they were closed
    c.sync([lost_on_the_way])
    again, _ = _close(server, today, "--before-day-end")
    assert again == summary
    auth.add_staff_user(conn, "caiwu", "财务一", ["finance"], "finance-password-1")
    page = _signed_in(server, "caiwu", "finance-password-1").get("/finance/%s?lang=en" % day_text(today - 1))
    assert page.status_code == 200 and 'id="table-card_gaps"' in page.text
    table = page.text.split('id="table-card_gaps"', 1)[1].split("</section>", 1)[0]
    assert "torn tap, nothing charged" in table and str(torn_card) in table and str(filled_card) not in table
    conn.close()


def test_statement_matched_line_by_line_after_the_close(server, tmp_path):
    from simulators import pay_gateways
    from sync_server import channels
    from sync_server.services import recharge
    conn = server.connect()
    today = _today()
    account_id, _card = _person(conn, 0, b"\x31\x32\x33\x34")
    gateways = pay_gateways.PayGateways()      # WeChat Pay's sandbox: encrypted, signed v3 notices
    wechat = channels.load(gateways.install(tmp_path / "site"))["wechat"]
    orders = []
    for amount_fen in (1000, 2000, 3000):
        order = recharge.create_order(conn, account_id, amount_fen, "wechat")
        delivery = gateways.notice(order, "paid")
        assert recharge.handle_notification(conn, "wechat", wechat, delivery.headers, delivery.body)[0] == "credited"
        orders.append(order["order_id"])
    before, _ = _close(server, today, "--before-day-end")
    assert before["anomaly_counts"]["statement_mismatches"] == 0
    statement = tmp_path / "wechat.csv"
    # line 2 right, line 3 one yuan off, order 3 missing, one order we never saw
    statement.write_text("商户订单号,金额(元)\n%s,10.00\n%s,21.00\nX-UNKNOWN,5.00\n" % (orders[0], orders[1]),
                         encoding="utf-8")
    completed = subprocess.run([sys.executable, "-m", "ykt", "finance", "import-statement", "--channel", "wechat",
                                "--date", day_text(today), "--data-dir", server.data_dir, "--lang", "en",
                                str(statement)], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert "matched 1, missing ours 1, missing theirs 1, amount mismatch 1" in completed.stdout
    after, _ = _close(server, today, "--before-day-end")
    assert after["anomaly_counts"]["statement_mismatches"] == 3
    assert {k: v for k, v in after.items() if k not in ("anomalies", "anomaly_counts")} == \
        {k: v for k, v in before.items() if k not in ("anomalies", "anomaly_counts")}
    other = tmp_path / "other.csv"
    other.write_text("order_id,amount_fen\n%s,1000\n" % orders[0], encoding="utf-8")
    with pytest.raises(FinanceError):
        channel_statements.import_statement(conn, "wechat", today, other.read_bytes())
    conn.close()


def test_finance_pages_need_the_finance_role_and_show_charts_and_downloads(server):
    conn = server.connect()
    account_id, card = _person(conn, 5000, b"\x41\x42\x43\x44")
    terminal = server.add_terminal()
    terminal.sync([terminal.record(account_id, card, 900, tap_counter=1)])
    auth.add_staff_user(conn, "caiwu", "财务一", ["finance"], "finance-password-1")
    auth.add_staff_user(conn, "dating", "大厅一", ["hall"], "hall-password-12")
    today = _today()
    close.close_day(conn, today, before_day_end=True)
    conn.close()

    def signed_in(username, password):
        client = httpx.Client(base_url=server.url, timeout=30)
        page = client.get("/hall/sign-in").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        client.post("/hall/sign-in", data={"csrf_token": token, "username": username, "password": password})
        return client

    anonymous = httpx.Client(base_url=server.url, timeout=30)
    assert anonymous.get("/finance/%s" % day_text(today)).status_code == 302
    assert signed_in("dating", "hall-password-12").get("/finance/%s" % day_text(today)).status_code == 403
    client = signed_in("caiwu", "finance-password-1")
    page = client.get("/finance/%s?lang=en" % day_text(today))
    assert page.status_code == 200
    assert page.text.count("<svg") == 3 and "9.00" in page.text and "Balanced" in page.text
    workbook = client.get("/finance/%s.xlsx" % day_text(today))
    book = openpyxl.load_workbook(__import__("io").BytesIO(workbook.content))
    merchants = book["merchants"]
    rows = list(merchants.iter_rows(min_row=2, values_only=True))
    assert [(row[0], float(row[7])) for row in rows if row[3]] == [(terminal.merchant_id, 9.0)]
    csv_text = client.get("/finance/%s/merchants.csv" % day_text(today)).text
    assert "9.00" in csv_text
    assert client.get("/finance/%s" % day_text(today - 5)).status_code == 404
    assert client.get("/finance/").status_code == 200


def test_scheduler_closes_yesterday_once_after_the_configured_time(tmp_path, database_location):
    conn = dbmod.init_db(database_location)
    today = _today()
    assert scheduler.run_due(conn, day_start_ms(today) + 2 * HOUR_MS) == [], "installed today: no day to close"
    conn.execute("UPDATE _migrations SET applied_ms = ?", (day_start_ms(today - 7),))   # installed last week
    just_after_midnight = day_start_ms(today) + 10 * 60000
    assert scheduler.run_due(conn, just_after_midnight) == []           # before 01:00: nothing
    later = day_start_ms(today) + 2 * HOUR_MS
    closed = scheduler.run_due(conn, later)
    assert [report["day"] for report in closed] == [day_text(today - 1)]
    assert scheduler.run_due(conn, later + 60000) == []                  # once
    assert [row[1] for row in close.closed_days(conn)] == [day_text(today - 1)]
    conn.close()


def _merchant_row(report, merchant_id):
    return next((row for row in report["merchants"] if row["merchant_id"] == merchant_id), None)


def _merchant_check(report, merchant_id):
    return next(row for row in report["invariants"]["merchants"] if row["merchant_id"] == merchant_id)


def test_electricity_paid_without_a_terminal_is_settled_to_its_merchant(tmp_path, database_location):
    """A ¥25 dorm electricity payment (no terminal record: paid at the hall, drawn on the legacy and
    main wallets) is a sale of the electricity merchant, counted once, in its hour; a close before
    its day carries it as pending and stays balanced."""
    from sync_server.services import electricity
    conn = dbmod.init_db(database_location)
    account_id, _card = _person(conn, 5000, b"\x91\x92\x93\x94")
    registry.recharge(conn, account_id, 1000, wallet=protocol.WALLET_LEGACY, channel=dbmod.LEDGER_LEGACY_SOURCE)
    electricity.import_rooms(conn, "楼栋,楼层,房间,电表号\n7号楼,3,301,\n")     # the hall's room list
    paid_ms = dbmod.now_ms()
    payment = electricity.pay(conn, account_id, "7号楼", 3, "301", 2500, operator="hall-1", now_ms=paid_ms)
    assert len(payment["parts"]) == 2, "drawn on two wallets: two transfers, one sale"
    merchant_id = dbmod.setting(conn, "electricity_merchant_id")
    today = day_of_ms(paid_ms)

    yesterday, _newly = close.close_day(conn, today - 1)
    assert yesterday["invariants"]["balanced"] is True
    assert (_merchant_row(yesterday, merchant_id) or {}).get("gross_fen", 0) == 0, "paid today, not yesterday"
    assert _merchant_check(yesterday, merchant_id) == {
        "merchant_id": merchant_id, "opening_pending_fen": 0, "movement_fen": 2500, "net_fen": 0,
        "closing_pending_fen": 2500, "ok": True}

    report, _newly = close.close_day(conn, today, before_day_end=True)
    row = _merchant_row(report, merchant_id)
    assert (row["count"], row["gross_fen"], row["net_fen"]) == (1, 2500, 2500)
    assert row["by_hour"][hour_of_ms(paid_ms)] == [1, 2500]
    assert report["totals"]["sales_count"] == 1 and report["totals"]["gross_fen"] == 2500
    assert report["invariants"]["balanced"] is True
    assert _merchant_check(report, merchant_id)["ok"] is True
    conn.close()


def test_money_on_a_merchant_account_the_settlement_misses_unbalances_the_day(tmp_path, database_location):
    """Per merchant, what its ledger account moved must be what the settlement pays: a movement no
    settlement line explains makes the day unbalanced even though every balance adds up."""
    from sync_server import ledger
    from sync_server.ledger_store import SqliteStore
    conn = dbmod.init_db(database_location)
    merchant_id = registry.add_merchant(conn, "一食堂", "canteen 1", 1)
    merchant_ledger_id = conn.execute("SELECT ledger_account_id FROM merchants WHERE id = ?",
                                      (merchant_id,)).fetchone()[0]
    with dbmod.transaction(conn):
        ledger.post(SqliteStore(conn), [ledger.Transfer("x/1", dbmod.LEDGER_CASH_DESK, merchant_ledger_id, 2500,
                                                        ledger.KIND_CORRECTION, None, dbmod.now_ms())])
    report, _newly = close.close_day(conn, _today(), before_day_end=True)
    assert report["invariants"]["trial_balance_fen"] == 0 and report["invariants"]["balance_mismatch_count"] == 0
    check = _merchant_check(report, merchant_id)
    assert (check["movement_fen"], check["net_fen"], check["ok"]) == (2500, 0, False)
    assert report["invariants"]["merchant_mismatch_count"] == 1
    assert report["invariants"]["balanced"] is False
    conn.close()


def _store_env(location):
    """The environment for a `ykt` command on the database at `location`."""
    env = dict(os.environ)
    env.pop(pg_store.DATABASE_URL_ENV, None)
    if pg_store.is_postgresql(location):
        env[pg_store.DATABASE_URL_ENV] = location
    return env


def _reads_of_transfers(statements):
    return [sql for sql in statements if re.search(r"\b(FROM|JOIN)\s+transfers\b", sql)]


def test_the_close_checks_its_window_under_the_lock_and_the_whole_ledger_after(tmp_path, database_location):
    """Syncs wait while a close holds the write lock, so nothing under it may read all of history:
    it checks the accounts its transfer window touched; the full check_balances runs after the
    commit and is reported beside the day (the CLI exits 3 when it finds a problem)."""
    if not pg_store.is_postgresql(database_location):
        database_location = str(tmp_path / dbmod.DB_FILE_NAME)     # where `ykt finance close` looks
    conn = dbmod.init_db(database_location)
    a, _card = _person(conn, 5000, b"\xa1\xa2\xa3\xa4")
    b, _card = _person(conn, 5000, b"\xb1\xb2\xb3\xb4")
    c, _card = _person(conn, 5000, b"\xc1\xc2\xc3\xc4")
    wallet = {account: registry.wallet_ledger_id(conn, account, protocol.WALLET_MAIN) for account in (a, b, c)}
    today = _today()
    statements = []
    conn.set_trace_callback(statements.append)
    first, _newly = close.close_day(conn, today - 2)
    conn.set_trace_callback(None)
    begin = next(index for index, sql in enumerate(statements) if sql.startswith("BEGIN"))
    commit = statements.index("COMMIT", begin)
    locked = _reads_of_transfers(statements[begin:commit])
    assert locked and all("rowid" in sql for sql in locked), "read all transfers under the lock: %s" % locked
    assert [sql for sql in _reads_of_transfers(statements[commit:]) if "rowid" not in sql], \
        "the full ledger check did not run after the commit"
    assert first["invariants"]["balanced"] is True and first["ledger_check"]["ok"] is True

    # two cached balances changed without a transfer, offsetting, on accounts the next window leaves alone
    conn.execute("UPDATE balances SET balance_fen = balance_fen + 100 WHERE ledger_account_id = ?", (wallet[b],))
    conn.execute("UPDATE balances SET balance_fen = balance_fen - 100 WHERE ledger_account_id = ?", (wallet[c],))
    registry.recharge(conn, a, 700)
    completed = subprocess.run([sys.executable, "-m", "ykt", "finance", "close", "--date", day_text(today - 1),
                                "--json", "--data-dir", str(tmp_path), "--lang", "en"],
                               capture_output=True, text=True, timeout=120, env=_store_env(database_location))
    assert completed.returncode == 3, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["ledger_check"] == {"ok": False, "problem_count": 2}
    assert summary["balanced"] is True, "invisible under the lock: untouched accounts, kind sums unchanged"
    assert "full ledger check: 2 problems" in completed.stderr
    assert "ledger account %d" % wallet[b] in completed.stderr

    # a cached balance the window touched is caught under the lock
    conn.execute("UPDATE balances SET balance_fen = balance_fen + 100 WHERE ledger_account_id = ?", (wallet[a],))
    registry.recharge(conn, a, 300)
    report, _newly = close.close_day(conn, today, before_day_end=True)
    invariants = report["invariants"]
    assert invariants["balanced"] is False and invariants["wallet_mismatch_count"] == 1
    assert invariants["balance_mismatches"] == [{"ledger_account_id": wallet[a], "kind": "wallet",
                                                 "cached_fen": 5000 + 700 + 300 + 100,
                                                 "derived_fen": 5000 + 700 + 300}]
    assert invariants["trial_balance_fen"] == 100
    assert report["ledger_check"]["problem_count"] == 4, "three accounts and a sum that is not zero"
    conn.close()


def test_exports_write_every_table_and_a_workbook(tmp_path, database_location):
    conn = dbmod.init_db(database_location)
    report, newly = close.close_day(conn, _today(), before_day_end=True)
    assert newly and report["invariants"]["balanced"]
    paths = exports.write_all(report, str(tmp_path / "out"), "zh")
    assert len(paths) == len(exports.PARTS) + 1 and all(os.path.getsize(path) for path in paths)
    book = openpyxl.load_workbook(paths[-1])
    assert book.sheetnames[:2] == ["汇总", "商户结算"]
    conn.close()


FORMULA_NAMES = ['=HYPERLINK("http://x","y")', "+1+1", "-2", "@SUM(A1)"]


def _export(server, day, out_dir):
    completed = subprocess.run([sys.executable, "-m", "ykt", "finance", "export", "--date", day_text(day), "--out",
                                str(out_dir), "--data-dir", server.data_dir, "--lang", "en"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


def test_exports_never_turn_a_name_into_a_formula(server, tmp_path):
    """Merchants named like formulas: the workbook has string cells only (none a formula), the CSV
    cells start with an apostrophe, and the amounts are still numbers."""
    conn = server.connect()
    account_id, card = _person(conn, 50000, b"\x0f\x0e\x0d\x0c")
    today = _today()
    for number, name in enumerate(FORMULA_NAMES, start=1):
        merchant_id = registry.add_merchant(conn, name, name, 1)
        terminal = server.add_terminal(merchant_id)
        terminal.sync([terminal.record(account_id, card, 1234 * number, tap_counter=number, time_ms=dbmod.now_ms())])
    _close(server, today, "--before-day-end")
    paths = _export(server, today, tmp_path / "out")

    book = openpyxl.load_workbook([path for path in paths if path.endswith(".xlsx")][0])
    for sheet in book.worksheets:
        for row in sheet.iter_rows():
            assert all(cell.data_type != "f" for cell in row), sheet.title
    merchants = {row[1].value: row for row in book["merchants"].iter_rows(min_row=2)}
    assert set(FORMULA_NAMES) <= set(merchants)
    for number, name in enumerate(FORMULA_NAMES, start=1):
        cell = merchants[name][1]
        assert cell.data_type == "s" and cell.quotePrefix
        assert merchants[name][4].data_type == "n" and round(merchants[name][4].value * 100) == 1234 * number

    merchants_csv = [path for path in paths if path.endswith("-merchants.csv")][0]
    with open(merchants_csv, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    names = {row[1]: row for row in rows}
    for number, name in enumerate(FORMULA_NAMES, start=1):
        assert "'" + name in names, names.keys()
        assert names["'" + name][4] == "%d.%02d" % divmod(1234 * number, 100)      # the amount stays a plain number
        assert names["'" + name][0].isdigit()
    for path in paths:
        if path.endswith(".csv"):
            with open(path, encoding="utf-8-sig", newline="") as handle:
                for row in csv.reader(handle):
                    assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in row), (path, row)
                    assert not any(cell.startswith("-") and not _is_amount(cell) for cell in row), (path, row)
    conn.close()


def _is_amount(text):
    return re.fullmatch(r"-\d+(\.\d{2})?", text) is not None


_ref = st.sampled_from(["R%d" % n for n in range(12)])


@settings(max_examples=200, deadline=None)
@given(ours=st.lists(st.tuples(_ref, st.integers(1, 5000)), max_size=12, unique_by=lambda item: item[0]),
       theirs=st.lists(st.tuples(_ref, st.integers(1, 5000)), max_size=12, unique_by=lambda item: item[0]))
def test_statement_match_accounts_for_every_line_once(ours, theirs):
    result = channel_statements.match_lines([(ref, "o/" + ref, fen, 100) for ref, fen in ours],
                                            [(n + 2, ref, None, fen, None) for n, (ref, fen) in enumerate(theirs)], 100)
    both = {ref for ref, _fen in ours} & {ref for ref, _fen in theirs}
    assert result["matched"] + result["amount_mismatch_count"] == len(both)
    assert result["missing_ours_count"] == len(theirs) - len(both)
    assert result["missing_theirs_count"] == len(ours) - len(both)
    ours_fen, theirs_fen = dict(ours), dict(theirs)
    assert result["matched"] == sum(1 for ref in both if ours_fen[ref] == theirs_fen[ref])


def test_statement_parsing_yuan_fen_and_bad_lines():
    lines = channel_statements.parse_statement("商户订单号,交易号,金额(元),交易时间\nA1,T1,12.30,08:00\nA2,T2,\"1,000.05\",\n"
                                               .encode("gb18030"))
    assert [(line[1], line[3]) for line in lines] == [("A1", 1230), ("A2", 100005)]
    assert channel_statements.parse_statement(b"order_id,amount_fen\nB1,77\n")[0][3] == 77
    with pytest.raises(FinanceError) as bad:
        channel_statements.parse_statement(b"order_id,amount\nC1,1.234\n")
    assert "line 2" in bad.value.text("en")
    with pytest.raises(FinanceError):
        channel_statements.parse_statement(b"who,what\n1,2\n")


def test_close_day_benchmark_still_runs():
    """benchmarks/close_day.py on a small day: it generates, closes and agrees with plain SQL."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "close_day.py")
    completed = subprocess.run([sys.executable, script, "--records", "20000", "--terminals", "4", "--people", "500"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["records"] == 20000 and result["balanced"] is True and result["ledger_check_ok"] is True
    assert result["close_s"] > 0 and result["sql_aggregate_s"] > 0


@settings(max_examples=200, deadline=None)
@given(low=st.integers(1, 50), width=st.integers(0, 30), filled=st.sets(st.integers(0, 90), max_size=20))
def test_card_gap_runs_are_the_counters_still_missing(low, width, filled):
    high = low + width
    runs = counter_gaps._missing_runs(low, high, filled)
    covered = [counter for a, b in runs for counter in range(a, b + 1)]
    assert covered == [counter for counter in range(low, high + 1) if counter not in filled]
    assert all(b + 1 < a2 for (_a, b), (a2, _b2) in zip(runs, runs[1:])), "runs are separate and ordered"


def test_water_sales_are_settled_once_whichever_copy_came_first(server):
    """A dispenser's day: a card session (booked from its record), a phone session settled by the
    phone's receipt before the dispenser's record came, one settled by the record alone, and a grant
    still held at the close. The water merchant's sales count each session once, the held money is
    no sale, and the day is balanced."""
    from firmware.core import sam, water_grants as w
    from sync_server import water_holds
    from sync_server.services import water as water_service
    conn = server.connect()
    account_id, card = _person(conn, 5000, b"\x61\x62\x63\x64")
    dispenser = server.add_terminal(category=2)
    conn.execute("UPDATE terminals SET created_ms = ? WHERE id = ?", (day_start_ms(_today() - 7), dispenser.terminal_id))
    merchant_id = dispenser.merchant_id
    master_key = server.master_key()
    mac = w.grant_mac_fn(sam.water_key(master_key, dispenser.terminal_id))
    grants = [water_service.issue_grant(conn, master_key, account_id, dispenser.terminal_id,
                                        w.encode_challenge(dispenser.terminal_id, bytes([n]) * 16).hex())
              for n in (1, 2)]
    receipt = w.encode_receipt(mac, w.Receipt(dispenser.terminal_id, grants[0]["grant_id"], 2, 1000, 30,
                                              grants[0]["cap_fen"], 20000, w.END_BUTTON))
    assert water_service.hand_in_receipt(conn, master_key, account_id, receipt.hex())["outcome"] == "settled"
    held = water_service.issue_grant(conn, master_key, account_id, dispenser.terminal_id,
                                     w.encode_challenge(dispenser.terminal_id, bytes([3]) * 16).hex())
    dispenser.sync([dispenser.water_record(account_id, 45, 1500, card_number=card, seq=1),
                    dispenser.water_record(account_id, 30, 1000, grant_id=grants[0]["grant_id"], seq=2),
                    dispenser.water_record(account_id, 12, 400, grant_id=grants[1]["grant_id"], seq=3)])
    report, _newly = close.close_day(conn, _today(), before_day_end=True)
    row = _merchant_row(report, merchant_id)
    assert (row["count"], row["gross_fen"]) == (3, 45 + 30 + 12)
    assert report["invariants"]["balanced"] is True and _merchant_check(report, merchant_id)["ok"] is True
    assert water_holds.open_holds(conn) == (1, held["cap_fen"])
    conn.close()


def test_paycode_sales_and_double_uses_are_reported(server):
    """A canteen's day with pay-code sales: one claimed online, one code used at two offline terminals.
    Both sales of the twice-used code stand; the close counts three pay-code sales, lists the double
    use, and is balanced."""
    from firmware.core import paycode as codes
    from simulators.phone_paycode import PayCodeWallet
    from sync_server import paycode
    conn = server.connect()
    account_id, _card = _person(conn, 5000, b"\x71\x72\x73\x74")
    wallet = PayCodeWallet.create()
    with dbmod.transaction(conn):
        certificate = paycode.enable(conn, server.master_key(), account_id, None, wallet.public_key, dbmod.now_ms())
    wallet.certificate, wallet.credential_id = certificate["certificate"], certificate["credential_id"]
    till_a, till_b = _terminal(server, conn), _terminal(server, conn)
    first = codes.parse(wallet.code())
    wallet.used()
    second = codes.parse(wallet.code())

    def sale(till, code, fen, flags):
        seq = till.next_seq
        till.next_seq += 1
        return record_codec.encode_paycode(till.terminal_id, seq, dbmod.now_ms(), code.cert.credential_id,
                                           account_id, 1, code.counter, fen, till.merchant_id, code.time_step, flags)
    till_a.sync([sale(till_a, first, 300, 0), sale(till_a, second, 500, record_codec.FLAG_OFFLINE)])
    till_b.sync([sale(till_b, second, 700, record_codec.FLAG_OFFLINE)])
    report, _newly = close.close_day(conn, _today(), before_day_end=True)
    assert (report["totals"]["paycode_sales_count"], report["totals"]["paycode_sales_fen"]) == (3, 1500)
    assert report["paycode"]["offline_count"] == 2
    doubled = report["anomalies"]["paycode_double_uses"]
    assert report["anomalies"]["paycode_double_use_count"] == 2
    assert {(use["terminal_id"], use["amount_fen"]) for use in doubled} == {(till_a.terminal_id, 500),
                                                                          (till_b.terminal_id, 700)}
    assert report["invariants"]["balanced"] is True
    assert registry.balances_of(conn, account_id)["main"] == 5000 - 1500
    conn.close()
