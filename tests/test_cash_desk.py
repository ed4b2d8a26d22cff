"""The service hall's cash desk (sync_server/services/cash_desk.py), on each store: a cash recharge up to
the cap is the clerk's alone, above it a second staff member approves (never the clerk, never someone
without the hall or supervisor role), above the maximum nothing happens; a supervisor reverses a
mistaken recharge once, with new transfers and both names in the log, never below zero; a clerk's shift
close takes each cash item once, subtracts reversals, and records the difference to the cash counted.
Money is conserved throughout: the ledger's balances still sum to zero and match the transfers.
Then the `ykt hall recharge`, `recharge-reverse`, `cash-close` and `cash-limits` commands."""
import json
import os
import subprocess
import sys

import pytest

from conftest import database_snapshot
from firmware.core import card_layout
from sync_server import db as dbmod, ledger, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import ServiceError, cards, cash_desk, history
from sync_server.web import auth

PASSWORD = "correct horse battery"


@pytest.fixture
def conn(database_location):
    conn = dbmod.init_db(database_location)
    yield conn
    conn.close()


@pytest.fixture
def desk(conn):
    """A holder with ¥20 and a card, clerks at the desk, a supervisor and a finance clerk."""
    person_id, account_id = registry.add_person(conn, "张三", card_layout.HOLDER_STUDENT, staff_number="S2024001",
                                                id_number="110101200001011234")
    registry.recharge(conn, account_id, 2000)
    cards.issue_card(conn, account_id, b"\x01\x02\x03\x04", "clerk")
    users = {}
    for username, roles in (("clerk", ["hall"]), ("clerk2", ["hall"]), ("boss", ["hall", "supervisor"]),
                            ("auditor", ["finance"])):
        users[username] = auth.staff_user(conn, auth.add_staff_user(conn, username, username, roles, PASSWORD))
    return dict(users, person_id=person_id, account_id=account_id)


def _refused(code, call, *arguments, **keywords):
    with pytest.raises(ServiceError) as refusal:
        call(*arguments, **keywords)
    assert refusal.value.code == code, refusal.value
    assert refusal.value.zh and refusal.value.en
    return refusal.value


def _main(conn, desk):
    return registry.balances_of(conn, desk["account_id"])["main"]


def _ledger_sound(conn):
    store = SqliteStore(conn)
    assert ledger.check_balances(store) == []
    assert sum(store.all_balances().values()) == 0


def _actions(conn):
    return [(row[0], row[1], row[2], json.loads(row[3])) for row in conn.execute(
        "SELECT username, action, amount_fen, detail FROM staff_actions ORDER BY id")]


# --- the cap -------------------------------------------------------------------------------------

def test_up_to_the_cap_the_clerk_books_alone_with_a_receipt(conn, desk):
    done = cash_desk.recharge(conn, desk["account_id"], 100000, desk["clerk"], idempotency_key="form-key-0001")
    assert done["outcome"] == "booked" and not done["repeated"]
    assert _main(conn, desk) == 2000 + 100000
    assert _actions(conn) == [("clerk", "recharge", 100000, {"order_id": done["order"]["order_id"], "wallet": "main",
                                                            "balance_fen_after": 102000})]
    again = cash_desk.recharge(conn, desk["account_id"], 100000, desk["clerk"], idempotency_key="form-key-0001")
    assert again["repeated"] and again["receipt_id"] == done["receipt_id"]
    assert _main(conn, desk) == 102000 and len(_actions(conn)) == 1
    _ledger_sound(conn)


def test_above_the_cap_without_a_second_person_nothing_happens(conn, desk):
    before = database_snapshot(conn)
    refusal = _refused("cash_needs_approval", lambda: cash_desk.recharge(conn, desk["account_id"], 100001,
                                                                         desk["clerk"]))
    assert "1000.01" in refusal.zh and "1000.00" in refusal.zh and "1000.00 yuan" in refusal.en
    assert database_snapshot(conn) == before


def test_above_the_maximum_is_refused_outright_in_yuan(conn, desk):
    before = database_snapshot(conn)
    for amount_fen in (1000001, 50000000, ledger.MAX_TRANSFER_FEN * 5):
        refusal = _refused("cash_over_maximum", cash_desk.recharge, conn, desk["account_id"], amount_fen,
                           desk["clerk"], approver=desk["boss"])
        assert cash_desk.yuan(amount_fen) in refusal.zh and "10000.00" in refusal.zh
    refusal = _refused("cash_over_maximum", lambda: cash_desk.recharge(conn, desk["account_id"], 50000000,
                                                                       desk["clerk"], hold=True))
    assert "500000.00" in refusal.zh and "10000.00 yuan" in refusal.en
    for amount_fen in (0, -100, 12.5, "100"):
        _refused("cash_bad_amount", cash_desk.recharge, conn, desk["account_id"], amount_fen, desk["clerk"])
    assert database_snapshot(conn) == before


def test_the_limits_are_settings_that_can_be_changed_within_bounds(conn, desk):
    assert cash_desk.limits(conn) == {"cap_fen": 100000, "maximum_fen": 1000000}
    before = database_snapshot(conn)
    for cap, maximum in ((0, None), (200000, 100000), (None, ledger.MAX_TRANSFER_FEN + 1), (-5, None)):
        _refused("cash_bad_limits", cash_desk.set_limits, conn, cap, maximum, operator="admin")
    assert database_snapshot(conn) == before
    assert cash_desk.set_limits(conn, 5000, 20000, operator="admin") == {"cap_fen": 5000, "maximum_fen": 20000}
    _refused("cash_needs_approval", lambda: cash_desk.recharge(conn, desk["account_id"], 5001, desk["clerk"]))
    _refused("cash_over_maximum", lambda: cash_desk.recharge(conn, desk["account_id"], 20001, desk["clerk"],
                                                             approver=desk["boss"]))
    assert _actions(conn)[-1][:2] == ("admin", "cash_limits")


# --- approval by a second person -----------------------------------------------------------------

def test_a_pending_request_books_nothing_until_another_staff_member_approves(conn, desk):
    pending = cash_desk.recharge(conn, desk["account_id"], 250000, desk["clerk"], hold=True,
                                 idempotency_key="form-key-0002")
    assert pending["outcome"] == "pending" and _main(conn, desk) == 2000
    request_id = pending["request"]["request_id"]
    assert [r["request_id"] for r in cash_desk.pending_requests(conn)] == [request_id]
    assert cash_desk.pending_requests(conn)[0]["name"] == "张三"
    before = database_snapshot(conn)
    _refused("cash_same_person", lambda: cash_desk.approve(conn, request_id, desk["clerk"]))
    _refused("cash_same_person", lambda: cash_desk.approve(conn, request_id, "clerk"))
    _refused("cash_not_approver", lambda: cash_desk.approve(conn, request_id, desk["auditor"]))
    _refused("cash_not_approver", lambda: cash_desk.approve(conn, request_id, "someone-at-a-shell"))
    assert database_snapshot(conn) == before
    assert cash_desk.open_shift(conn, "clerk")["pending_requests"] == 1

    done = cash_desk.approve(conn, request_id, desk["clerk2"])
    assert done["outcome"] == "booked" and _main(conn, desk) == 252000
    assert done["order"]["operator"] == "clerk"                     # the cash is the clerk's
    booked = [entry for entry in _actions(conn) if entry[1] in ("recharge", "recharge_approve")]
    assert [(user, action) for user, action, _, _ in booked] == [("clerk", "recharge"), ("clerk2", "recharge_approve")]
    assert booked[0][3]["approved_by"] == "clerk2" and booked[1][3]["clerk"] == "clerk"
    again = cash_desk.approve(conn, request_id, desk["boss"])       # a second approval books nothing more
    assert again["repeated"] and again["receipt_id"] == done["receipt_id"] and _main(conn, desk) == 252000
    assert cash_desk.pending_requests(conn) == []
    _refused("cash_request_decided", lambda: cash_desk.refuse(conn, request_id, desk["boss"]))
    _ledger_sound(conn)


def test_an_approver_at_the_desk_books_at_once_and_a_double_submission_books_once(conn, desk):
    for _ in range(2):
        done = cash_desk.recharge(conn, desk["account_id"], 300000, desk["clerk"], approver=desk["boss"],
                                  idempotency_key="form-key-0003")
    assert done["outcome"] == "booked" and done["repeated"] and _main(conn, desk) == 302000
    assert conn.execute("SELECT count(*) FROM recharge_orders").fetchone()[0] == 1
    assert cash_desk.get_request(conn, done["request"]["request_id"])["decided_by"] == "boss"
    _refused("idempotency_conflict", lambda: cash_desk.recharge(conn, desk["account_id"], 300001, desk["clerk"],
                                                                approver=desk["boss"], idempotency_key="form-key-0003"))


def test_a_refused_or_withdrawn_request_never_books(conn, desk):
    first = cash_desk.recharge(conn, desk["account_id"], 150000, desk["clerk"], hold=True)["request"]
    second = cash_desk.recharge(conn, desk["account_id"], 160000, desk["clerk"], hold=True)["request"]
    assert cash_desk.refuse(conn, first["request_id"], desk["boss"])["status"] == "refused"
    assert cash_desk.refuse(conn, second["request_id"], desk["clerk"])["decided_by"] == "clerk"
    for request in (first, second):
        _refused("cash_request_decided", cash_desk.approve, conn, request["request_id"], desk["clerk2"])
    assert _main(conn, desk) == 2000 and cash_desk.pending_requests(conn) == []
    _refused("cash_request_unknown", lambda: cash_desk.approve(conn, "Qnothing", desk["boss"]))


# --- reversal (冲正) -------------------------------------------------------------------------------

def test_a_supervisor_reverses_a_recharge_once_with_new_transfers_and_both_names(conn, desk):
    order = cash_desk.recharge(conn, desk["account_id"], 50000, desk["clerk"])["order"]
    original = conn.execute("SELECT * FROM transfers WHERE id = ?", (order["transfer_id"],)).fetchall()
    before = database_snapshot(conn)
    _refused("cash_not_supervisor", lambda: cash_desk.reverse(conn, order["order_id"], desk["clerk2"], "typo"))
    _refused("cash_reason_required", lambda: cash_desk.reverse(conn, order["order_id"], desk["boss"], "  "))
    _refused("cash_order_unknown", lambda: cash_desk.reverse(conn, "C-nothing", desk["boss"], "typo"))
    assert database_snapshot(conn) == before

    reversal = cash_desk.reverse(conn, order["order_id"], desk["boss"], "多输了一个0")
    assert _main(conn, desk) == 2000 and reversal["balance_fen_after"] == 2000
    assert (reversal["clerk"], reversal["supervisor"], reversal["reason"]) == ("clerk", "boss", "多输了一个0")
    transfer = conn.execute("SELECT id, debit_id, credit_id, amount_fen, kind FROM transfers WHERE id = ?",
                            ("rv/" + order["transfer_id"],)).fetchone()
    wallet_id = registry.wallet_ledger_id(conn, desk["account_id"], "main")
    assert transfer == ("rv/" + order["transfer_id"], wallet_id, dbmod.LEDGER_CASH_DESK, 50000, ledger.KIND_CORRECTION)
    assert conn.execute("SELECT * FROM transfers WHERE id = ?", (order["transfer_id"],)).fetchall() == original
    username, action, amount_fen, detail = _actions(conn)[-1]
    assert (username, action, amount_fen) == ("boss", "recharge_reverse", 50000)
    assert (detail["clerk"], detail["supervisor"], detail["reason"]) == ("clerk", "boss", "多输了一个0")
    assert cash_desk.cash_recharges(conn, desk["account_id"])[0]["reversal"]["supervisor"] == "boss"
    # the holder's statement lists the reversal with the recharges, named for what it is
    listed = history.recent(conn, desk["account_id"], history.KIND_RECHARGE)["rows"]
    assert [(row["place_zh"], row["amount_fen"], row["type"]) for row in listed][:2] == [
        ("现金充值冲正", -50000, history.KIND_RECHARGE), ("服务大厅现金", 50000, history.KIND_RECHARGE)]

    before = database_snapshot(conn)
    _refused("cash_already_reversed", lambda: cash_desk.reverse(conn, order["order_id"], desk["boss"], "again"))
    assert database_snapshot(conn) == before
    _ledger_sound(conn)


def test_a_reversal_never_takes_a_wallet_below_zero_nor_is_done_by_the_clerk_who_booked_it(conn, desk):
    order = cash_desk.recharge(conn, desk["account_id"], 10000, desk["clerk"])["order"]
    wallet_id = registry.wallet_ledger_id(conn, desk["account_id"], "main")
    with dbmod.transaction(conn):          # the holder spends most of it
        ledger.post(SqliteStore(conn), [ledger.Transfer("spent/1", wallet_id, dbmod.LEDGER_FEE_INCOME, 11500,
                                                        ledger.KIND_FEE, "test", 1)])
    before = database_snapshot(conn)
    refusal = _refused("cash_reversal_balance", lambda: cash_desk.reverse(conn, order["order_id"], desk["boss"],
                                                                          "typo"))
    assert "主钱包" in refusal.zh and "5.00" in refusal.zh and "100.00" in refusal.zh and "main wallet" in refusal.en
    assert database_snapshot(conn) == before
    own = cash_desk.recharge(conn, desk["account_id"], 100, desk["boss"])["order"]
    before = database_snapshot(conn)
    _refused("cash_own_reversal", lambda: cash_desk.reverse(conn, own["order_id"], desk["boss"], "mine"))
    assert database_snapshot(conn) == before
    assert not conn.execute("SELECT in_debt FROM accounts WHERE id = ?", (desk["account_id"],)).fetchone()[0]


# --- shift close (结账) ----------------------------------------------------------------------------

def test_a_shift_close_counts_each_cash_item_once_and_records_the_difference(conn, desk):
    cash_desk.recharge(conn, desk["account_id"], 5000, desk["clerk"])
    cash_desk.recharge(conn, desk["account_id"], 1200, desk["clerk"], wallet="water")
    mistaken = cash_desk.recharge(conn, desk["account_id"], 90000, desk["clerk"])["order"]
    cash_desk.recharge(conn, desk["account_id"], 7000, desk["clerk2"])           # another clerk's drawer
    cards.reissue(conn, desk["account_id"], b"\x05\x06\x07\x08", "clerk", fee_source="cash")
    cash_desk.reverse(conn, mistaken["order_id"], desk["boss"], "typed 900 for 9")
    shift = cash_desk.open_shift(conn, "clerk")
    assert [(line["kind"], line["wallet"], line["count"], line["fen"]) for line in shift["lines"]] == [
        ("recharge", "main", 2, 95000), ("recharge", "water", 1, 1200), ("fee", "cash", 1, 1000),
        ("reversal", "main", 1, -90000)]
    assert shift["expected_fen"] == 5000 + 1200 + 1000

    before = database_snapshot(conn)
    _refused("cash_shift_changed", lambda: cash_desk.close_shift(conn, desk["clerk"], 7200, expected_fen=6200))
    assert database_snapshot(conn) == before
    close = cash_desk.close_shift(conn, desk["clerk"], 7150, note="差五角", request_key="close-key-01",
                                  expected_fen=7200)
    assert (close["expected_fen"], close["counted_fen"], close["difference_fen"], close["item_count"]) == \
        (7200, 7150, -50, 5)
    assert cash_desk.difference_text(close["difference_fen"]) == "短款 0.50 元"
    assert cash_desk.close_shift(conn, desk["clerk"], 9999, request_key="close-key-01")["id"] == close["id"]
    assert cash_desk.get_close(conn, close["id"])["counted_fen"] == 7150          # the repeat changed nothing

    empty = cash_desk.open_shift(conn, "clerk")
    assert empty["lines"] == [] and empty["expected_fen"] == 0 and empty["from_ms"] == close["closed_ms"]
    cash_desk.recharge(conn, desk["account_id"], 300, desk["clerk"])
    second = cash_desk.close_shift(conn, "clerk", 400)
    assert (second["expected_fen"], second["difference_fen"]) == (300, 100)
    assert cash_desk.difference_text(100, "en") == "over by 1.00 yuan"
    assert cash_desk.open_shift(conn, "clerk2")["expected_fen"] == 7000
    assert [c["id"] for c in cash_desk.closes_of_day(conn, close["day_number"])] == [close["id"], second["id"]]
    assert [c["id"] for c in cash_desk.closes_of_clerk(conn, "clerk")] == [second["id"], close["id"]]
    assert conn.execute("SELECT count(*) FROM cash_close_items").fetchone()[0] == 6
    _ledger_sound(conn)


def test_a_reversal_after_the_close_is_paid_from_the_next_shift(conn, desk):
    order = cash_desk.recharge(conn, desk["account_id"], 4000, desk["clerk"])["order"]
    cash_desk.close_shift(conn, desk["clerk"], 4000)
    cash_desk.reverse(conn, order["order_id"], desk["boss"], "wrong person")
    shift = cash_desk.open_shift(conn, "clerk")
    assert shift["expected_fen"] == -4000
    close = cash_desk.close_shift(conn, desk["clerk"], 0, expected_fen=-4000)
    assert close["difference_fen"] == 4000


def test_money_is_conserved_through_every_cash_desk_operation(conn, desk):
    """Whatever the desk does, the ledger sums to zero, matches its transfers, and the holder's wallets
    plus the cash desk account move by exactly opposite amounts."""
    store = SqliteStore(conn)

    def held():
        wallets = sum(registry.balances_of(conn, desk["account_id"]).values())
        return wallets, store.balances([dbmod.LEDGER_CASH_DESK])[dbmod.LEDGER_CASH_DESK]

    start_wallets, start_desk = held()
    orders = [cash_desk.recharge(conn, desk["account_id"], fen, desk["clerk"])["order"] for fen in (100, 99999, 5)]
    big = cash_desk.recharge(conn, desk["account_id"], 700000, desk["clerk"], approver=desk["boss"])["order"]
    cash_desk.reverse(conn, orders[1]["order_id"], desk["boss"], "typo")
    cash_desk.reverse(conn, big["order_id"], desk["boss"], "typo")
    for call in (lambda: cash_desk.recharge(conn, desk["account_id"], 2000000, desk["clerk"], approver=desk["boss"]),
                 lambda: cash_desk.reverse(conn, big["order_id"], desk["boss"], "again")):
        with pytest.raises(ServiceError):
            call()
    wallets, cash = held()
    assert wallets - start_wallets == 105 == -(cash - start_desk)
    _ledger_sound(conn)


# --- the command line ----------------------------------------------------------------------------

def _ykt(data_dir, *arguments, stdin=""):
    result = subprocess.run([sys.executable, "-m", "ykt", *arguments, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, input=stdin, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return result.returncode, result.stdout + result.stderr


@pytest.mark.usefixtures("store_environment")
def test_the_hall_commands_take_numbers_and_yuan_and_follow_the_cap(tmp_path):
    data_dir = tmp_path / "data"
    assert _ykt(data_dir, "server", "init")[0] == 0
    assert _ykt(data_dir, "hall", "person-add", "--name", "李四", "--staff-number", "T1001",
                "--id-number", "110101199001011234")[0] == 0
    for username, role in (("boss", "supervisor"), ("clerk2", "hall")):
        assert _ykt(data_dir, "hall", "staff-add", "--username", username, "--role", role, "--role", "hall",
                    "--password-stdin", stdin=PASSWORD + "\n")[0] == 0
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T1001", "--amount", "12.50", "--operator", "desk1")
    assert code == 0 and "12.50" in out and "李四" in out
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T1001", "--amount", "1200", "--operator", "desk1")
    assert code == 2 and "超过单笔限额 1000.00 元" in out and "--approver" in out and "Traceback" not in out
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T1001", "--amount", "500000", "--operator", "desk1",
                     "--approver", "boss", "--lang", "en", stdin=PASSWORD + "\n")
    assert code == 2 and "10000.00 yuan" in out
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T1001", "--amount", "1200", "--operator", "desk1",
                     "--approver", "boss", stdin="wrong password\n")
    assert code == 2 and "密码错误" in out
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T9999", "--amount", "1")
    assert code == 6 and "T9999" in out        # unknown number: exit code 6
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T1001", "--amount", "12.345")
    assert code == 7 and "12.50" in out          # malformed amount (exit code 7): the message shows how
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T1001", "--amount", "1200", "--operator", "desk1",
                     "--approver", "boss", stdin=PASSWORD + "\n")
    assert code == 0 and "审批人 boss" in out
    order_id = out.split("单号 ")[1].split("，")[0]

    code, out = _ykt(data_dir, "hall", "recharge-reverse", "--order", order_id, "--reason", "typo",
                     "--supervisor", "clerk2", stdin=PASSWORD + "\n")
    assert code == 2 and "主管" in out
    code, out = _ykt(data_dir, "hall", "recharge-reverse", "--order", order_id, "--reason", "typo",
                     "--supervisor", "boss", stdin=PASSWORD + "\n")
    assert code == 0 and "1200.00" in out and "desk1" in out and "boss" in out
    code, out = _ykt(data_dir, "hall", "recharge-reverse", "--order", order_id, "--reason", "typo",
                     "--supervisor", "boss", stdin=PASSWORD + "\n")
    assert code == 2 and "已冲正" in out

    code, out = _ykt(data_dir, "hall", "cash-close", "--operator", "desk1", "--json")
    assert code == 0 and json.loads(out)["expected_fen"] == 1250
    code, out = _ykt(data_dir, "hall", "cash-close", "--operator", "desk1", "--counted", "12", "--lang", "en")
    assert code == 0 and "short by 0.50 yuan" in out
    code, out = _ykt(data_dir, "hall", "cash-close", "--operator", "desk1", "--json")
    assert code == 0 and json.loads(out)["expected_fen"] == 0

    code, out = _ykt(data_dir, "hall", "cash-limits", "--cap", "2000")
    assert code == 0 and "2000.00" in out and "10000.00" in out
    code, out = _ykt(data_dir, "hall", "cash-limits", "--cap", "20000")
    assert code == 2 and "限额无效" in out
    code, out = _ykt(data_dir, "hall", "recharge", "--number", "T1001", "--amount", "1500", "--operator", "desk1")
    assert code == 0
