"""Unusual totals at the day close (sync_server/finance/unusual.py), on each store (--store): with a
week of ordinary days closed before it, a day whose cash is far above the usual is flagged per channel
and for the cash desk, a cash recharge above the cap is listed, and the flags show in the report, on
the day page (highlighted) and in `ykt finance close`; an ordinary day shows none.
"""
import json
import re
import subprocess
import sys

import pytest

from staff_site import new_site, signed_in
from sync_server import db as dbmod, registry
from sync_server.business_day import HOUR_MS, day_of_ms, day_start_ms, day_text
from sync_server.finance import close as close_module, report as report_module, unusual
from sync_server.services import recharge

HISTORY = 7


@pytest.fixture
def site(tmp_path, store_environment):
    app, conn, data_dir = new_site(tmp_path, [("caiwu", "财务一", ["finance"])])
    _person_id, account_id = registry.add_person(conn, "张三", 2, staff_number="S20190001")
    yield {"app": app, "conn": conn, "data_dir": data_dir, "account_id": account_id}
    conn.close()


def book_day(site, day, cash_yuan, alipay_yuan, extra_cash_fen=()):
    """The day's cash recharges (¥1000 each, under the cap) and Alipay orders (¥500 each), booked at
    the day's hours, then the day closed."""
    conn, account_id = site["conn"], site["account_id"]
    at = day_start_ms(day) + 9 * HOUR_MS
    for index in range(cash_yuan // 1000):
        recharge.cash_recharge(conn, account_id, 100000, "dating", now_ms=at + index)
    for amount_fen in extra_cash_fen:
        recharge.cash_recharge(conn, account_id, amount_fen, "dating", now_ms=at + 500)
    for index in range(alipay_yuan // 500):
        order = recharge.create_order(conn, account_id, 50000, "alipay", now_ms=at + 1000 + index)
        recharge.simulate_payment(conn, order["order_id"], now_ms=at + 2000 + index)
    report, newly = close_module.close_day(conn, day, before_day_end=True)
    assert newly
    return report


def lines_of(report):
    return {line["key"]: line for line in report["unusual"]["lines"]}


def cli_close(site, day):
    completed = subprocess.run([sys.executable, "-m", "ykt", "finance", "close", "--date", day_text(day),
                                "--data-dir", site["data_dir"], "--before-day-end"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_a_cash_day_far_above_the_usual_is_flagged_and_an_ordinary_day_is_not(site):
    today = day_of_ms(dbmod.now_ms())
    first = today - HISTORY - 1
    for day in range(first, today - 1):                      # a week at ¥3,000 cash and ¥1,000 Alipay a day
        book_day(site, day, 3000, 1000)
    ordinary = book_day(site, today - 1, 4000, 1000)
    lines = lines_of(ordinary)
    assert lines["cash"]["usual_fen"] == 300000 and lines["cash"]["history_days"] == HISTORY
    assert lines["cash"]["total_fen"] == 400000 and lines["cash_desk"]["total_fen"] == 400000
    assert lines["alipay"]["usual_fen"] == unusual.FLOOR_FEN        # ¥1,000 a day is below the floor
    assert not any(line["flagged"] for line in lines.values())
    assert ordinary["unusual"]["large_cash_recharges"] == [] and report_module.summary(ordinary)["unusual"] == 0

    # ¥15,000 in ¥1,000 notes plus one ¥2,000 recharge over the ¥1,000 cap: ¥17,000 > 5 x ¥3,000
    flagged = book_day(site, today, 15000, 1000, extra_cash_fen=[200000])
    lines = lines_of(flagged)
    assert lines["cash"]["flagged"] and lines["cash_desk"]["flagged"] and lines["cash"]["total_fen"] == 1700000
    assert not lines["alipay"]["flagged"] and not lines["wechat"]["flagged"]
    [large] = flagged["unusual"]["large_cash_recharges"]
    assert (large["amount_fen"], large["clerk"], large["staff_number"]) == (200000, "dating", "S20190001")
    assert report_module.summary(flagged)["unusual"] == 3
    assert flagged["invariants"]["balanced"]                 # a flag is for people: the day still balances

    output = cli_close(site, today)                          # already closed: the stored figures again
    assert "异常大额，请核实（3 项）" in output
    assert "现金（服务大厅）：17000.00 元，超过通常（3000.00 元）的 5 倍" in output
    assert "单笔现金充值 2000.00 元（S20190001，收款员 dating），超过单笔上限 1000.00 元" in output
    assert "异常大额" not in cli_close(site, today - 1)

    client = signed_in(site["app"], "caiwu", "/finance/sign-in")
    page = client.get("/finance/%s" % day_text(today)).get_data(as_text=True)
    assert 'id="unusual-flags"' in page and 'id="unusual-count" class="alarm"' in page
    table = page[page.index('id="table-unusual"'):]
    table = table[:table.index("</table>")]
    assert len(re.findall(r'<tr class="flagged">', table)) == 3
    assert re.search(r'<tr class="flagged"><td>现金（服务大厅）</td>.*?<td class="num">17000\.00</td>'
                     r'<td class="num">3000\.00</td>', table)
    plain = client.get("/finance/%s" % day_text(today - 1)).get_data(as_text=True)
    assert 'id="unusual-flags"' not in plain and 'class="flagged"' not in plain
    days = client.get("/finance/").get_data(as_text=True)
    assert '<td class="num flagged">3</td>' in days
    stored = json.loads(json.dumps(client.get("/finance/%s.json" % day_text(today)).get_json()))
    assert stored["unusual"]["flagged_count"] == 3


def test_a_young_site_is_flagged_only_above_the_floor(site):
    today = day_of_ms(dbmod.now_ms())
    quiet = book_day(site, today - 2, 9000, 0)               # no history: the usual is the floor, ¥2,000
    assert lines_of(quiet)["cash"]["usual_fen"] == unusual.FLOOR_FEN and not lines_of(quiet)["cash"]["flagged"]
    first_rush = book_day(site, today - 1, 46000, 0)         # above 5 x ¥9,000, the one day of history
    assert lines_of(first_rush)["cash"]["usual_fen"] == 900000 and lines_of(first_rush)["cash"]["flagged"]
    again = book_day(site, today, 46000, 0)                  # the median of ¥9,000 and ¥46,000: the lower
    assert lines_of(again)["cash"]["usual_fen"] == 900000 and lines_of(again)["cash"]["flagged"]


def test_the_usual_is_the_median_of_days_with_traffic_and_never_below_the_floor():
    assert unusual.usual_fen([]) == unusual.FLOOR_FEN
    assert unusual.usual_fen([0, 0, 0, 500000]) == 500000           # a holiday's zeros are left out
    assert unusual.usual_fen([300000, 900000, 400000, 0, 10000000]) == 400000     # one odd day moves nothing
    assert unusual.usual_fen([300000, 400000]) == 300000
    assert unusual.check_line("cash", 1000001, 10, [])["flagged"]          # no history: above 5 x ¥2,000
    assert not unusual.check_line("cash", 1000000, 10, [])["flagged"]
    line = unusual.check_line("cash", 5 * 400000, 10, [400000])
    assert not line["flagged"] and unusual.check_line("cash", 5 * 400000 + 1, 10, [400000])["flagged"]
    old_report = {"channels": [{"ledger_account_id": 1, "total_fen": 123}, {"ledger_account_id": 9, "total_fen": 7}]}
    assert unusual.day_totals(old_report, {1: "cash"}) == {"cash": 123, "ledger/9": 7, "cash_desk": 123}
