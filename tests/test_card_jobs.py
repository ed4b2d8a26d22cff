"""Card jobs (sync_server/services/card_jobs.py) on each store: the hall page asks, a station claims,
writes and completes; the reissue fee is booked once per job whatever happens in between (torn writes,
a station restarted mid-write, a second station, retries), two stations never take one job, and a job
is cancelled only before its card is written.
"""
import threading

import pytest

from conftest import database_snapshot
from firmware.core import protocol
from sync_server import db as dbmod, ledger, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import ServiceError, card_jobs

FEE_FEN = 1000


@pytest.fixture
def site(database_location):
    conn = dbmod.init_db(database_location)
    person_id, account_id = registry.add_person(conn, "王小红", 2, staff_number="S2024007")
    registry.issue_card_record(conn, account_id, b"\x01\x02\x03\x04")
    registry.recharge(conn, account_id, 5000)
    first_id, first_account = registry.add_person(conn, "李新生", 2, staff_number="S2025001")
    yield {"conn": conn, "location": database_location, "person_id": person_id, "account_id": account_id,
           "first_account": first_account}
    conn.close()


def _fee_transfers(conn, account_id):
    """(id, amount, from) of every fee transfer paid for the account (its main wallet or the cash desk)."""
    main = registry.wallet_ledger_id(conn, account_id, protocol.WALLET_MAIN)
    return conn.execute("SELECT id, amount_fen, debit_id FROM transfers WHERE kind = ? AND (debit_id = ? OR "
                        "id LIKE 'fee/card-job/%%') ORDER BY id", (ledger.KIND_FEE, main)).fetchall()


def _cards(conn, account_id):
    return conn.execute("SELECT generation, status FROM cards WHERE account_id = ? ORDER BY generation",
                        (account_id,)).fetchall()


def _uid(n):
    return bytes([0x04, 0xA0, 0x00, n])


def test_a_first_card_job_is_issued_free_and_done_with_its_receipt(site):
    conn, account_id = site["conn"], site["first_account"]
    job = card_jobs.create(conn, account_id, "balance", "clerk1", requested_user_id=7)
    assert (job["kind"], job["fee_source"], job["status"], job["name"]) == ("issue", "none", "pending", "李新生")
    assert card_jobs.next_job(conn, "desk-1")["id"] == job["id"]
    claimed = card_jobs.claim(conn, job["id"], "desk-1", _uid(1))
    assert claimed["job"]["status"] == "writing" and claimed["identity"].generation == 1
    assert card_jobs.next_job(conn, "desk-1") is None

    def receipt(conn, done):
        assert conn.in_transaction and done["status"] == "done"
        return 4242
    done = card_jobs.complete(conn, job["id"], "desk-1", receipt)
    assert (done["status"], done["staff_action_id"], done["fee_fen"], done["uid"]) == ("done", 4242, 0, _uid(1).hex())
    assert _cards(conn, account_id) == [(1, "active")]
    assert _fee_transfers(conn, account_id) == []
    assert card_jobs.open_job(conn, account_id) is None


def test_the_fee_is_booked_once_across_torn_writes_restarts_and_two_stations(site):
    conn, account_id = site["conn"], site["account_id"]
    job = card_jobs.create(conn, account_id, "balance", "clerk1")
    assert job["kind"] == "reissue"
    # station A: the card leaves mid-write
    first = card_jobs.claim(conn, job["id"], "desk-A", _uid(1))["identity"]
    assert registry.balances_of(conn, account_id)["main"] == 5000 - FEE_FEN
    failed = card_jobs.fail(conn, job["id"], "desk-A", "写卡中断", "card write interrupted")
    assert failed["status"] == "failed" and "卡号 %d 已作废" % first.card_number in failed["reason_zh"]
    assert _cards(conn, account_id)[-1] == (first.generation, "lost")           # the half-written card never pays
    with pytest.raises(ServiceError) as refused:                                 # not pending: nobody takes it
        card_jobs.claim(conn, job["id"], "desk-B", _uid(2))
    assert refused.value.code == "job_taken"
    # retried; station B takes it and is killed mid-write; restarted, it voids that card
    card_jobs.retry(conn, job["id"])
    second = card_jobs.claim(conn, job["id"], "desk-B", _uid(2))["identity"]
    assert [j["id"] for j in card_jobs.recover(conn, "desk-A")] == []           # not A's to recover
    recovered = card_jobs.recover(conn, "desk-B")
    assert [j["status"] for j in recovered] == ["failed"] and "中断" in recovered[0]["reason_zh"]
    # retried again, now station A writes it
    card_jobs.retry(conn, job["id"], fee_source="cash")                          # the fee is booked: stays balance
    third = card_jobs.claim(conn, job["id"], "desk-A", _uid(3))
    done = card_jobs.complete(conn, job["id"], "desk-A")
    assert (done["status"], done["attempts"], done["fee_fen"], done["fee_source"]) == ("done", 3, FEE_FEN, "balance")
    assert third["identity"].generation == second.generation + 1 == first.generation + 2
    assert _fee_transfers(conn, account_id) == [("fee/card-job/%d" % job["id"], FEE_FEN,
                                                registry.wallet_ledger_id(conn, account_id, "main"))]
    assert registry.balances_of(conn, account_id)["main"] == 5000 - FEE_FEN
    assert _cards(conn, account_id) == [(1, "replaced"), (2, "replaced"), (3, "replaced"), (4, "active")]
    assert conn.execute("SELECT count(*), sum(fee_fen) FROM card_reissues WHERE account_id = ?",
                        (account_id,)).fetchone() == (3, FEE_FEN)
    assert ledger.check_balances(SqliteStore(conn)) == []




def test_a_torn_first_card_is_retried_free(site):
    conn, account_id = site["conn"], site["first_account"]
    job = card_jobs.create(conn, account_id, "cash", "clerk1")
    card_jobs.claim(conn, job["id"], "desk-A", _uid(5))
    card_jobs.fail(conn, job["id"], "desk-A", "写卡中断", "card write interrupted")
    card_jobs.retry(conn, job["id"])
    card_jobs.claim(conn, job["id"], "desk-A", _uid(6))
    assert card_jobs.complete(conn, job["id"], "desk-A")["fee_fen"] == 0
    assert _cards(conn, account_id) == [(1, "replaced"), (2, "active")]
    assert conn.execute("SELECT count(*) FROM transfers WHERE kind = ?", (ledger.KIND_FEE,)).fetchone()[0] == 0


def test_two_stations_racing_for_one_job_get_it_once(site):
    conn, account_id = site["conn"], site["account_id"]
    job = card_jobs.create(conn, account_id, "balance", "clerk1")
    start = threading.Barrier(2)
    outcomes = {}

    def station(name, uid):
        own = dbmod.connect(site["location"])
        try:
            start.wait()
            card_jobs.claim(own, job["id"], name, uid)
            outcomes[name] = "claimed"
        except ServiceError as error:
            outcomes[name] = error.code
        finally:
            own.close()
    threads = [threading.Thread(target=station, args=("desk-%d" % n, _uid(10 + n))) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes.values()) == ["claimed", "job_taken"]
    assert len(_fee_transfers(conn, account_id)) == 1 and len(_cards(conn, account_id)) == 2
    winner = [name for name, outcome in outcomes.items() if outcome == "claimed"][0]
    assert card_jobs.get(conn, job["id"])["claimed_by"] == winner
    loser = "desk-1" if winner == "desk-2" else "desk-2"
    with pytest.raises(ServiceError) as refused:                        # nor may the loser finish it
        card_jobs.complete(conn, job["id"], loser)
    assert refused.value.code == "job_not_writing"


def test_a_job_is_cancelled_only_before_its_card_is_written(site):
    conn, account_id = site["conn"], site["account_id"]
    job = card_jobs.create(conn, account_id, "balance", "clerk1")
    with pytest.raises(ServiceError) as refused:
        card_jobs.create(conn, account_id, "cash", "clerk2")
    assert refused.value.code == "job_open"
    before = database_snapshot(conn)
    cancelled = card_jobs.cancel(conn, job["id"], "clerk1")
    assert cancelled["status"] == "cancelled" and "clerk1" in cancelled["reason_zh"]
    assert card_jobs.next_job(conn, "desk-1") is None
    with pytest.raises(ServiceError) as refused:
        card_jobs.claim(conn, job["id"], "desk-1", _uid(20))
    assert refused.value.code == "job_taken"
    assert _fee_transfers(conn, account_id) == [] and len(_cards(conn, account_id)) == 1
    assert len(database_snapshot(conn)) == len(before)

    job = card_jobs.create(conn, account_id, "balance", "clerk1")                # a new one after the cancel
    card_jobs.claim(conn, job["id"], "desk-1", _uid(21))
    with pytest.raises(ServiceError) as refused:
        card_jobs.cancel(conn, job["id"], "clerk1")                              # being written
    assert refused.value.code == "job_not_cancellable"
    card_jobs.fail(conn, job["id"], "desk-1", "写卡中断", "card write interrupted")
    with pytest.raises(ServiceError) as refused:
        card_jobs.cancel(conn, job["id"], "clerk1")                              # its fee is booked: retry it
    assert refused.value.code == "job_fee_booked"


def test_refusals_at_the_station(site):
    conn, account_id = site["conn"], site["account_id"]
    registry.recharge(conn, account_id, 1, transfer_id="top-up")
    main = registry.wallet_ledger_id(conn, account_id, protocol.WALLET_MAIN)
    with pytest.raises(ServiceError) as refused:
        card_jobs.create(conn, account_id, "gift", "clerk1")
    assert refused.value.code == "bad_fee_source"
    job = card_jobs.create(conn, account_id, "balance", "clerk1", station="desk-2")
    assert card_jobs.next_job(conn, "desk-1") is None and card_jobs.next_job(conn, "desk-2")["id"] == job["id"]
    # a card whose UID is on a card in use: refused, the job waits for another card
    snapshot = database_snapshot(conn)
    with pytest.raises(ServiceError) as refused:
        card_jobs.claim(conn, job["id"], "desk-2", b"\x01\x02\x03\x04")
    assert refused.value.code == "uid_in_use" and database_snapshot(conn) == snapshot
    # the balance was spent meanwhile: the job fails with the reason, nothing allocated or booked
    with dbmod.transaction(conn):
        ledger.post(SqliteStore(conn), [ledger.Transfer("spend", main, dbmod.LEDGER_FEE_INCOME, 4500,
                                                            ledger.KIND_FEE, "test", 1)])
    with pytest.raises(ServiceError) as refused:
        card_jobs.claim(conn, job["id"], "desk-2", _uid(30))
    assert refused.value.code == "fee_needs_cash"
    failed = card_jobs.get(conn, job["id"])
    assert failed["status"] == "failed" and "现金" in failed["reason_zh"] and failed["attempts"] == 0
    assert len(_cards(conn, account_id)) == 1
    # paid in cash instead
    card_jobs.retry(conn, job["id"], fee_source="cash")
    card_jobs.claim(conn, job["id"], "desk-2", _uid(30))
    assert card_jobs.complete(conn, job["id"], "desk-2")["fee_source"] == "cash"
    assert conn.execute("SELECT debit_id, amount_fen FROM transfers WHERE id = ?",
                        ("fee/card-job/%d" % job["id"],)).fetchone() == (dbmod.LEDGER_CASH_DESK, FEE_FEN)
    with pytest.raises(ServiceError) as refused:
        card_jobs.create(conn, account_id, "balance", "clerk1", station="x" * 41)
    assert refused.value.code == "bad_station"


def test_a_write_whose_station_went_silent_is_abandoned_then_retried_elsewhere_fee_once(site):
    conn, account_id = site["conn"], site["account_id"]
    start_ms = dbmod.now_ms()
    job = card_jobs.create(conn, account_id, "balance", "clerk1", now_ms=start_ms)
    card_jobs.claim(conn, job["id"], "desk-A", _uid(7), now_ms=start_ms)
    half_written = card_jobs.get(conn, job["id"])
    snapshot = database_snapshot(conn)
    with pytest.raises(ServiceError) as refused:            # the station may still be writing: not yet
        card_jobs.abandon(conn, job["id"], "clerk2", now_ms=start_ms + card_jobs.STUCK_WRITING_MS - 1)
    assert refused.value.code == "job_not_stuck" and database_snapshot(conn) == snapshot

    abandoned = card_jobs.abandon(conn, job["id"], "clerk2", now_ms=start_ms + card_jobs.STUCK_WRITING_MS)
    assert abandoned["status"] == "failed" and "desk-A" in abandoned["reason_zh"] and "clerk2" in abandoned["reason_zh"]
    assert conn.execute("SELECT status FROM cards WHERE card_number = ? AND generation = ?",
                        (half_written["card_number"], half_written["generation"])).fetchone()[0] == "lost"
    with pytest.raises(ServiceError) as late:                # desk-A comes back: the job is no longer its own
        card_jobs.complete(conn, job["id"], "desk-A")
    assert late.value.code == "job_not_writing"

    card_jobs.retry(conn, job["id"])
    card_jobs.claim(conn, job["id"], "desk-B", _uid(8))
    assert card_jobs.complete(conn, job["id"], "desk-B")["status"] == "done"
    assert [amount for _id, amount, _from in _fee_transfers(conn, account_id)] == [1000]     # booked once
    assert [status for _generation, status in _cards(conn, account_id)][-1] == "active"
