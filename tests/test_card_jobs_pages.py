"""Issue and reissue from the hall page through the issuing station, on each store (--store).

The clerk checks the holder against the photos (or 未采集), confirms, and the page makes a card job;
the real station process (`ykt hall station --reader sim: --card-file F`) prompts for a blank card,
refuses a used one, writes the card, and the page then links to the receipt. The card image must read
back on a terminal as the holder's new card, and the fee must be booked once. `ykt hall card-issue` /
`reissue` carry a job the page made through (no second fee, no refusal), and a job is cancelled from
the page only while no card has been written for it.
"""
import json
import queue
import subprocess
import sys
import threading

import pytest

from firmware.core import protocol
from staff_site import new_site, signed_in, token_of
from sync_server import db as dbmod, ledger, registry
from sync_server.services import card_jobs, cash_desk
from test_issuing import read_as_terminal

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

NUMBER = "S20240007"
NEWCOMER = "S20250001"
FEE_FEN = 1000


@pytest.fixture
def site(tmp_path):
    app, conn, data_dir = new_site(tmp_path, [("clerk", "王老师", ["hall"])])
    person_id, account_id = registry.add_person(conn, "王小红", 2, staff_number=NUMBER, id_number="11010520000101123X")
    old_card, _ = registry.issue_card_record(conn, account_id, b"\x01\x02\x03\x04")
    registry.recharge(conn, account_id, 5000)
    newcomer_id, newcomer_account = registry.add_person(conn, "李新生", 2, staff_number=NEWCOMER)
    yield {"app": app, "conn": conn, "data_dir": data_dir, "person_id": person_id, "account_id": account_id,
           "old_card": old_card, "newcomer_id": newcomer_id, "newcomer_account": newcomer_account}
    conn.close()


def clerk(site):
    return signed_in(site["app"], "clerk")


def ask_for_card(client, person_id, fee_source="balance", station=""):
    """The person page's card form, the identity check page, and its confirmation: the job's page."""
    person_page = client.get("/hall/person/%d" % person_id).get_data(as_text=True)
    assert 'id="reissue-form"' in person_page and 'name="uid"' not in person_page    # no UID typed any more
    check = client.get("/hall/person/%d/reissue?fee_source=%s&station=%s" % (person_id, fee_source, station))
    text = check.get_data(as_text=True)
    assert check.status_code == 200 and "核对身份" in text and 'id="photo-face-missing"' in text
    answer = client.post("/hall/person/%d/reissue" % person_id,
                         data={"csrf_token": token_of(check), "fee_source": fee_source, "station": station})
    assert answer.status_code == 302 and "/hall/card-job/" in answer.location
    return int(answer.location.rsplit("/", 1)[1]), text


def ykt(data_dir, *words):
    completed = subprocess.run([sys.executable, "-m", "ykt", *words, "--data-dir", data_dir],
                               capture_output=True, text=True, timeout=120)
    return completed.returncode, completed.stdout, completed.stderr


class Station:
    """`ykt hall station` as a process, its output read line by line as it comes."""

    def __init__(self, data_dir, *words):
        self.process = subprocess.Popen([sys.executable, "-m", "ykt", "hall", "station", "--data-dir", data_dir,
                                         *words], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text, timeout_s=60):
        """The first line containing `text` (every line read is kept in `seen`)."""
        while True:
            line = self.lines.get(timeout=timeout_s)
            assert line is not None, "station ended before %r: %s" % (text, self.seen)
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, timeout_s=60):
        code = self.process.wait(timeout_s)
        while True:
            line = self.lines.get(timeout=timeout_s)
            if line is None:
                return code
            self.seen.append(line)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def fee_transfers(conn, account_id):
    main = registry.wallet_ledger_id(conn, account_id, protocol.WALLET_MAIN)
    return conn.execute("SELECT id, amount_fen FROM transfers WHERE kind = ? AND debit_id = ? ORDER BY id",
                        (ledger.KIND_FEE, main)).fetchall()


def test_a_reissue_asked_on_the_page_is_written_by_the_station_with_the_fee_booked_once(site, tmp_path):
    client, conn, data_dir = clerk(site), site["conn"], site["data_dir"]
    job_id, check_page = ask_for_card(client, site["person_id"])
    assert "10.00" in check_page and "从余额扣除" in check_page and "任一发卡机" in check_page
    page = client.get("/hall/card-job/%d" % job_id).get_data(as_text=True)
    assert "等待发卡机" in page and 'id="job-cancel"' in page and "请在发卡机上放一张空白卡" in page
    assert client.get("/hall/card-job/%d/status" % job_id).get_json()["status"] == "pending"
    again = client.post("/hall/person/%d/reissue" % site["person_id"],         # the same form twice: one job
                        data={"csrf_token": token_of(client.get("/hall/person/%d" % site["person_id"])),
                              "fee_source": "balance"})
    assert again.location.endswith("/hall/card-job/%d" % job_id)
    assert registry.balances_of(conn, site["account_id"])["main"] == 5000     # nothing booked before a card

    # the station: a used card is refused before anything is allocated; a blank one is written
    card = tmp_path / "desk.card"
    assert ykt(data_dir, "hall", "card-issue", "--number", NEWCOMER, "--card-file", str(card))[0] == 0
    cards_before = conn.execute("SELECT count(*) FROM cards").fetchone()[0]
    station = Station(data_dir, "--reader", "sim:", "--card-file", str(card), "--station", "desk-1", "--jobs", "1")
    try:
        assert "王小红" in station.wait_for("请在发卡机上放一张空白卡")
        station.wait_for("不是空白卡")
        assert card_jobs.get(conn, job_id)["status"] == "pending"
        assert conn.execute("SELECT count(*) FROM cards").fetchone()[0] == cards_before
        card.unlink()                                                          # a new blank card
        station.wait_for("完成")
        assert station.finish() == 0
    finally:
        station.stop()

    job = card_jobs.get(conn, job_id)
    assert (job["status"], job["claimed_by"], job["fee_fen"], job["attempts"]) == ("done", "desk-1", FEE_FEN, 1)
    view = read_as_terminal(data_dir, card)
    assert (view.identity.card_number, view.identity.generation, view.identity.account_id) == \
        (site["old_card"].card_number, 2, site["account_id"])
    assert view.name == "王小红" and view.identity.card_number == job["card_number"]
    assert fee_transfers(conn, site["account_id"]) == [("fee/card-job/%d" % job_id, FEE_FEN)]
    assert registry.balances_of(conn, site["account_id"])["main"] == 5000 - FEE_FEN

    page = client.get("/hall/card-job/%d" % job_id).get_data(as_text=True)
    assert "已完成" in page and 'id="job-receipt"' in page and 'id="job-cancel"' not in page
    receipt = client.get("/hall/receipt/%d" % job["staff_action_id"]).get_data(as_text=True)
    assert "补办卡片" in receipt and "10.00" in receipt and str(job["card_number"]) in receipt and "clerk" in receipt
    assert [row[0] for row in conn.execute("SELECT action FROM staff_actions WHERE person_id = ? ORDER BY id",
                                           (site["person_id"],))] == ["card_job", "reissue"]
    # afterwards the command line is as before: no open job, a reissue there books its own fee
    code, out, err = ykt(data_dir, "hall", "reissue", "--number", NUMBER, "--uid", "0a0b0c0d", "--json")
    assert code == 0 and json.loads(out)["job_id"] is None and json.loads(out)["fee_fen"] == FEE_FEN, err


def test_the_command_line_carries_a_page_job_through_without_a_second_fee(site, tmp_path):
    client, conn, data_dir = clerk(site), site["conn"], site["data_dir"]
    # a first card asked on the page, written with `ykt hall card-issue` (no refusal: it is that job)
    job_id, check_page = ask_for_card(client, site["newcomer_id"], station="desk-9")
    assert "发卡（首张卡）" in check_page and "desk-9" in check_page
    code, out, err = ykt(data_dir, "hall", "card-issue", "--number", NEWCOMER, "--card-file",
                         str(tmp_path / "first.card"), "--json")
    assert code == 0, err
    issued = json.loads(out)
    assert issued["job_id"] == job_id and issued["written"] and issued["generation"] == 1
    assert read_as_terminal(data_dir, tmp_path / "first.card").name == "李新生"
    done = card_jobs.get(conn, job_id)
    assert done["status"] == "done" and conn.execute("SELECT action FROM staff_actions WHERE id = ?",
                                                     (done["staff_action_id"],)).fetchone() == ("issue",)

    # a reissue asked on the page whose first card tore at a station: `ykt hall reissue` finishes it
    job_id, _ = ask_for_card(client, site["person_id"], fee_source="cash")
    card_jobs.claim(conn, job_id, "desk-1", b"\x04\x55\x66\x77")
    card_jobs.fail(conn, job_id, "desk-1", "写卡中断", "card write interrupted")
    page = client.get("/hall/card-job/%d" % job_id).get_data(as_text=True)
    assert "失败" in page and "已作废" in page and 'id="job-retry"' in page and 'id="job-cancel"' not in page
    code, out, err = ykt(data_dir, "hall", "reissue", "--account", str(site["account_id"]), "--card-file",
                         str(tmp_path / "second.card"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["job_id"], result["generation"], result["fee_fen"], result["fee_source"]) == \
        (job_id, 3, FEE_FEN, "cash")
    assert read_as_terminal(data_dir, tmp_path / "second.card").identity.generation == 3
    cash_fees = conn.execute("SELECT id FROM transfers WHERE kind = ? AND debit_id = ?",
                             (ledger.KIND_FEE, dbmod.LEDGER_CASH_DESK)).fetchall()
    assert cash_fees == [("fee/card-job/%d" % job_id,)]
    shift = cash_desk.open_shift(conn, "clerk")                     # the clerk who asked takes the cash, once
    assert [(line["kind"], line["fen"]) for line in shift["lines"]] == [(cash_desk.KIND_FEE, FEE_FEN)]
    assert registry.balances_of(conn, site["account_id"])["main"] == 5000
    statuses = conn.execute("SELECT generation, status FROM cards WHERE account_id = ? ORDER BY generation",
                            (site["account_id"],)).fetchall()
    assert statuses == [(1, "replaced"), (2, "replaced"), (3, "active")]


def test_a_pending_job_is_cancelled_from_the_page(site):
    client, conn = clerk(site), site["conn"]
    job_id, _ = ask_for_card(client, site["person_id"], fee_source="cash")
    person_page = client.get("/hall/person/%d" % site["person_id"]).get_data(as_text=True)
    assert 'id="card-job-line"' in person_page and 'id="reissue-form"' not in person_page
    # while the job is open, the check page goes to it rather than making another
    assert client.get("/hall/person/%d/reissue" % site["person_id"]).location.endswith("/hall/card-job/%d" % job_id)
    page = client.get("/hall/card-job/%d" % job_id)
    answer = client.post("/hall/card-job/%d/cancel" % job_id, data={"csrf_token": token_of(page)})
    assert answer.status_code == 302
    page = client.get(answer.location).get_data(as_text=True)
    assert "已取消" in page and "clerk" in page and 'id="job-cancel"' not in page
    assert card_jobs.get(conn, job_id)["status"] == "cancelled"
    assert conn.execute("SELECT count(*) FROM cards").fetchone()[0] == 1 and fee_transfers(conn, site["account_id"]) == []
    assert [row[0] for row in conn.execute("SELECT action FROM staff_actions ORDER BY id")] == \
        ["card_job", "card_job_cancel"]
    # a job a station is writing cannot be cancelled
    job_id, _ = ask_for_card(client, site["person_id"])
    card_jobs.claim(conn, job_id, "desk-1", b"\x04\x10\x20\x30")
    page = client.get("/hall/card-job/%d" % job_id)
    assert "正在写卡" in page.get_data(as_text=True) and 'id="job-cancel"' not in page.get_data(as_text=True)
    answer = client.post("/hall/card-job/%d/cancel" % job_id, data={"csrf_token": token_of(page)})
    assert "不能取消" in client.get(answer.location).get_data(as_text=True)
    assert card_jobs.get(conn, job_id)["status"] == "writing"
    # bad input on the check page: back to the person, nothing made
    for query in ("fee_source=gift", "station=" + "x" * 41):
        answer = client.get("/hall/person/%d/reissue?%s" % (site["newcomer_id"], query))
        assert answer.status_code == 302 and answer.location.endswith("/hall/person/%d" % site["newcomer_id"])
    assert card_jobs.open_job(conn, site["newcomer_account"]) is None
