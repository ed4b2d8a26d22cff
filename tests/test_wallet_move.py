"""Moving money between one holder's own wallets (sync_server/services/wallet_move.py), on each store:
圈存 main -> water by the holder (PIN) or a clerk, the old-system balance legacy -> main by a clerk only;
each move is one `wallet_move` transfer booked once per request id, with the same receipt for every
copy; every refusal (a disallowed direction, an unknown wallet, a bad amount, more than the wallet
holds, legacy -> main without staff) changes nothing. Then the hall command (`ykt hall wallet-move`)
and the cardholder API (POST /api/v1/wallet-move, GET /api/v1/wallet-moves) over the real server."""
import json
import os
import subprocess
import sys

import pytest

from conftest import database_snapshot
from firmware.core import card_layout, protocol
from sync_server import db as dbmod, ledger, pin_rules, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import ServiceError, wallet_move
from test_cardholder_api import Holder, _error

ID_NUMBER = "110101199005050012"
NUMBER = "S2024001"
PIN = pin_rules.initial_pin(ID_NUMBER, NUMBER)


def _person(conn, main_fen=5000, legacy_fen=3000, number=NUMBER, id_number=ID_NUMBER, name="李圈存",
            category=card_layout.HOLDER_STUDENT):
    _, account_id = registry.add_person(conn, name, category, id_number=id_number, staff_number=number)
    if main_fen:
        registry.recharge(conn, account_id, main_fen)
    if legacy_fen:
        registry.recharge(conn, account_id, legacy_fen, wallet=protocol.WALLET_LEGACY,
                          channel=dbmod.LEDGER_LEGACY_SOURCE)        # the old card's balance, as migrated
    return account_id


def _moves(conn):
    return conn.execute("SELECT count(*) FROM transfers WHERE kind = ?", (ledger.KIND_WALLET_MOVE,)).fetchone()[0]


def _balance_version(conn, account_id):
    return conn.execute("SELECT balance_version FROM accounts WHERE id = ?", (account_id,)).fetchone()[0]


def _refused(code, call):
    with pytest.raises(ServiceError) as refusal:
        call()
    assert refusal.value.code == code, refusal.value
    assert refusal.value.zh and refusal.value.en
    return refusal.value


def _same_receipt(first, second):
    return {k: v for k, v in first.items() if k != "repeated"} == {k: v for k, v in second.items() if k != "repeated"}


@pytest.fixture
def conn(database_location):
    conn = dbmod.init_db(database_location)
    yield conn
    conn.close()


# --- the service -----------------------------------------------------------------------------------

def test_a_move_books_once_with_one_receipt_and_terminals_see_it(conn):
    account_id = _person(conn)
    version = _balance_version(conn, account_id)
    receipt = wallet_move.move(conn, account_id, "main", "water", 1250, pin=PIN, request_id="app-move-0001",
                               now_ms=1700000000000)
    assert not receipt["repeated"]
    assert (receipt["from_balance_fen_after"], receipt["to_balance_fen_after"]) == (3750, 1250)
    assert (receipt["name"], receipt["staff_number"], receipt["operator"], receipt["staff_action_id"]) == \
        ("李圈存", NUMBER, None, None)
    assert receipt["transfer_id"] == "wm/" + receipt["receipt_no"] and receipt["time"] == "2023-11-15 06:13:20"
    assert _balance_version(conn, account_id) > version              # terminals fetch the new balances
    snapshot = database_snapshot(conn)
    again = wallet_move.move(conn, account_id, "main", "water", 1250, pin=PIN, request_id="app-move-0001",
                             now_ms=1700000005000)
    assert again["repeated"] and _same_receipt(again, receipt)
    assert database_snapshot(conn) == snapshot                       # the repeat booked nothing at all
    assert _moves(conn) == 1
    assert registry.balances_of(conn, account_id) == {"main": 3750, "water": 1250, "legacy": 3000}
    transfer = conn.execute("SELECT debit_id, credit_id, amount_fen, kind FROM transfers WHERE id = ?",
                            (receipt["transfer_id"],)).fetchone()
    assert tuple(transfer) == (registry.wallet_ledger_id(conn, account_id, "main"),
                               registry.wallet_ledger_id(conn, account_id, "water"), 1250, "wallet_move")
    assert wallet_move.list_moves(conn, account_id) == [{k: v for k, v in receipt.items() if k != "repeated"}]
    assert wallet_move.get_receipt(conn, receipt["receipt_no"], account_id)["amount_fen"] == 1250
    assert ledger.check_balances(SqliteStore(conn)) == []
    # the same request id for another amount or direction is another request: refused
    _refused("idempotency_conflict", lambda: wallet_move.move(conn, account_id, "main", "water", 1300, pin=PIN,
                                                              request_id="app-move-0001"))
    # without a request id, each call is a move of its own
    first = wallet_move.move(conn, account_id, "main", "water", 100, pin=PIN)
    second = wallet_move.move(conn, account_id, "main", "water", 100, pin=PIN)
    assert first["receipt_no"] != second["receipt_no"] and _moves(conn) == 3
    assert registry.balances_of(conn, account_id) == {"main": 3550, "water": 1450, "legacy": 3000}
    text = wallet_move.receipt_text(receipt)
    assert "钱包转账凭证" in text and "12.50 元" in text and "37.50 元" in text and "李圈存" in text and NUMBER in text
    assert "12.50 yuan" in wallet_move.receipt_text(receipt, "en")


def test_the_whole_balance_may_move_but_never_more(conn):
    account_id = _person(conn, main_fen=800, legacy_fen=0)
    snapshot = database_snapshot(conn)
    _refused("insufficient_funds", lambda: wallet_move.move(conn, account_id, "main", "water", 801, pin=PIN))
    assert database_snapshot(conn) == snapshot
    receipt = wallet_move.move(conn, account_id, "main", "water", 800, pin=PIN)
    assert (receipt["from_balance_fen_after"], receipt["to_balance_fen_after"]) == (0, 800)
    _refused("insufficient_funds", lambda: wallet_move.move(conn, account_id, "main", "water", 1, pin=PIN))
    assert ledger.check_balances(SqliteStore(conn)) == []


def test_refused_moves_change_nothing(conn, snapshot):
    account_id = _person(conn)
    _, identity_only = registry.add_person(conn, "王身份", card_layout.HOLDER_IDENTITY_ONLY, staff_number="V0001")
    before = snapshot(conn)
    cases = [
        ("move_not_allowed", dict(from_wallet="water", to_wallet="main", amount_fen=100, operator="hall-7")),
        ("move_not_allowed", dict(from_wallet="main", to_wallet="legacy", amount_fen=100, operator="hall-7")),
        ("move_not_allowed", dict(from_wallet="water", to_wallet="legacy", amount_fen=100, operator="hall-7")),
        ("move_not_allowed", dict(from_wallet="main", to_wallet="main", amount_fen=100, pin=PIN)),
        ("move_hall_only", dict(from_wallet="legacy", to_wallet="main", amount_fen=100, pin=PIN)),
        ("bad_wallet", dict(from_wallet="main", to_wallet="gold", amount_fen=100, pin=PIN)),
        ("bad_wallet", dict(from_wallet=None, to_wallet="water", amount_fen=100, pin=PIN)),
        ("bad_amount", dict(from_wallet="main", to_wallet="water", amount_fen=-100, pin=PIN)),
        ("bad_amount", dict(from_wallet="main", to_wallet="water", amount_fen=0, pin=PIN)),
        ("bad_amount", dict(from_wallet="main", to_wallet="water", amount_fen=10 ** 12, pin=PIN)),
        ("bad_amount", dict(from_wallet="main", to_wallet="water", amount_fen=12.5, pin=PIN)),
        ("bad_amount", dict(from_wallet="main", to_wallet="water", amount_fen=True, pin=PIN)),
        ("bad_amount", dict(from_wallet="main", to_wallet="water", operator="hall-7",
                            amount_fen=wallet_move.MAX_MOVE_FEN[("main", "water")] + 1)),
        ("bad_amount", dict(from_wallet="legacy", to_wallet="main", operator="hall-7",
                            amount_fen=wallet_move.MAX_MOVE_FEN[("legacy", "main")] + 1)),
        ("insufficient_funds", dict(from_wallet="main", to_wallet="water", amount_fen=5001, pin=PIN)),
        ("insufficient_funds", dict(from_wallet="legacy", to_wallet="main", amount_fen=3001, operator="hall-7")),
        ("pin_required", dict(from_wallet="main", to_wallet="water", amount_fen=100)),
        ("pin_format", dict(from_wallet="main", to_wallet="water", amount_fen=100, pin="12ab")),
        ("bad_idempotency_key", dict(from_wallet="main", to_wallet="water", amount_fen=100, pin=PIN,
                                     request_id="short")),
    ]
    for code, arguments in cases:
        _refused(code, lambda arguments=arguments: wallet_move.move(conn, account_id, **arguments))
        assert snapshot(conn) == before, (code, arguments)
    _refused("no_wallet", lambda: wallet_move.move(conn, identity_only, "main", "water", 100, operator="hall-7"))
    _refused("account_unknown", lambda: wallet_move.move(conn, 999999, "main", "water", 100, operator="hall-7"))
    assert snapshot(conn) == before
    assert _moves(conn) == 0 and ledger.check_balances(SqliteStore(conn)) == []


def test_a_wrong_pin_moves_nothing_and_counts_towards_the_lockout(conn):
    account_id = _person(conn)
    wrong = "000000" if PIN != "000000" else "111111"
    _refused("pin_wrong", lambda: wallet_move.move(conn, account_id, "main", "water", 100, pin=wrong,
                                                   request_id="app-move-wrong-pin"))
    assert conn.execute("SELECT pin_failures FROM accounts WHERE id = ?", (account_id,)).fetchone()[0] == 1
    assert _moves(conn) == 0 and registry.balances_of(conn, account_id)["main"] == 5000
    assert conn.execute("SELECT count(*) FROM wallet_moves").fetchone()[0] == 0


def test_the_old_balance_moves_into_main_by_staff_only_and_is_logged(conn):
    account_id = _person(conn)
    snapshot = database_snapshot(conn)
    _refused("move_hall_only", lambda: wallet_move.move(conn, account_id, "legacy", "main", 1000, pin=PIN))
    _refused("move_hall_only", lambda: wallet_move.move(conn, account_id, "legacy", "main", 1000))
    assert database_snapshot(conn) == snapshot
    receipt = wallet_move.move(conn, account_id, "legacy", "main", 1000, operator="hall-7",
                               request_id="desk-0000000001")
    assert (receipt["from_balance_fen_after"], receipt["to_balance_fen_after"], receipt["operator"]) == \
        (2000, 6000, "hall-7")
    logged = conn.execute("SELECT staff_user_id, username, action, account_id, amount_fen, detail FROM staff_actions "
                          "WHERE id = ?", (receipt["staff_action_id"],)).fetchone()
    assert tuple(logged[:5]) == (0, "hall-7", "wallet_move", account_id, 1000)
    assert json.loads(logged[5])["receipt_no"] == receipt["receipt_no"]
    again = wallet_move.move(conn, account_id, "legacy", "main", 1000, operator="hall-7",
                             request_id="desk-0000000001")
    assert again["repeated"] and _same_receipt(again, receipt)
    assert conn.execute("SELECT count(*) FROM staff_actions").fetchone()[0] == 1      # logged once
    # a web staff user (the hall pages' g.staff) is logged under their id; staff may also do 圈存
    web = wallet_move.move(conn, account_id, "main", "water", 500, operator={"id": 7, "username": "hall-web"})
    assert conn.execute("SELECT staff_user_id, username FROM staff_actions WHERE id = ?",
                        (web["staff_action_id"],)).fetchone() == (7, "hall-web")
    assert registry.balances_of(conn, account_id) == {"main": 5500, "water": 500, "legacy": 2000}
    assert ledger.check_balances(SqliteStore(conn)) == []
    # the migration's money is unchanged: what came from the old system is still all there
    assert SqliteStore(conn).balances([dbmod.LEDGER_LEGACY_SOURCE])[dbmod.LEDGER_LEGACY_SOURCE] == -3000


def test_an_account_in_debt_may_only_have_its_old_balance_moved_in(conn):
    account_id = _person(conn, main_fen=0, legacy_fen=3000)
    main = registry.wallet_ledger_id(conn, account_id, "main")
    with dbmod.transaction(conn):          # an offline tap the terminal accepted drove main negative
        ledger.post(SqliteStore(conn), [ledger.Transfer("test/debt", main, dbmod.LEDGER_FEE_INCOME, 700,
                                                        ledger.KIND_FEE, "test", 1)])
        conn.execute("UPDATE accounts SET in_debt = 1 WHERE id = ?", (account_id,))
    _refused("account_in_debt", lambda: wallet_move.move(conn, account_id, "main", "water", 1, operator="hall-7"))
    receipt = wallet_move.move(conn, account_id, "legacy", "main", 1000, operator="hall-7")
    assert receipt["to_balance_fen_after"] == 300
    assert conn.execute("SELECT in_debt FROM accounts WHERE id = ?", (account_id,)).fetchone()[0] == 0
    assert ledger.check_balances(SqliteStore(conn)) == []


# --- the hall command ------------------------------------------------------------------------------

def _run(data_dir, *args, lang="zh"):
    result = subprocess.run([sys.executable, "-m", "sync_server", *args, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, env=dict(os.environ, YKT_LANG=lang))
    return result.returncode, result.stdout, result.stderr


@pytest.mark.usefixtures("store_environment")
def test_the_hall_command_prints_the_receipt_and_refuses_in_one_line(tmp_path):
    data_dir = tmp_path / "data"
    assert _run(data_dir, "server", "init")[0] == 0
    conn = dbmod.connect(dbmod.store_location(str(data_dir)))
    try:
        account_id = _person(conn)
        move = ("hall", "wallet-move", "--number", NUMBER, "--operator", "hall-3")
        code, out, err = _run(data_dir, *move, "--from", "main", "--to", "water", "--amount", "12.50",
                              "--request-id", "desk-move-000001")
        assert code == 0, err
        assert "钱包转账凭证" in out and "金额：12.50 元" in out and "主钱包余额：37.50 元" in out
        assert "小钱包（热水）余额：12.50 元" in out and "hall-3" in out and NUMBER in out
        receipt_line = next(line for line in out.splitlines() if line.startswith("凭证号："))
        code, again, err = _run(data_dir, *move, "--from", "main", "--to", "water", "--amount", "12.50",
                                "--request-id", "desk-move-000001", "--json")
        assert code == 0, err
        receipt = json.loads(again)
        assert receipt["repeated"] and receipt["receipt_no"] == receipt_line.split("：", 1)[1]
        assert registry.balances_of(conn, account_id) == {"main": 3750, "water": 1250, "legacy": 3000}

        code, out, err = _run(data_dir, *move, "--from", "legacy", "--to", "main", "--amount", "30", lang="en")
        assert code == 0, err
        assert "Amount: 30.00 yuan" in out and "Main wallet after: 67.50 yuan" in out
        assert registry.balances_of(conn, account_id) == {"main": 6750, "water": 1250, "legacy": 0}

        snapshot = database_snapshot(conn)
        for amount in ("abc", "-5", "0", "12.345", "1e3", ""):
            code, out, err = _run(data_dir, *move, "--from", "main", "--to", "water", "--amount", amount)
            assert code != 0 and out == "" and len(err.strip().splitlines()) == 1, (amount, err)
            assert "金额" in err and "Traceback" not in err
        for arguments, words in ((("--from", "water", "--to", "main", "--amount", "1"), "不能从小钱包"),
                                 (("--from", "main", "--to", "gold", "--amount", "1"), "钱包名称无效"),
                                 (("--from", "main", "--to", "water", "--amount", "500.01"), "单笔上限 500.00 元"),
                                 (("--from", "main", "--to", "water", "--amount", "67.51"), "余额不足")):
            code, out, err = _run(data_dir, *move, *arguments)
            assert code != 0 and len(err.strip().splitlines()) == 1 and words in err, (arguments, err)
        code, out, err = _run(data_dir, "hall", "wallet-move", "--number", "NOBODY", "--from", "main", "--to",
                              "water", "--amount", "1", lang="en")
        assert code == 6 and err.strip() == "nobody has the staff/student number NOBODY"
        assert database_snapshot(conn) == snapshot
        assert ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()


# --- the cardholder API ----------------------------------------------------------------------------

def test_the_holder_moves_main_to_water_with_the_pin(live_server):
    holder = Holder(live_server, balance_fen=5000, legacy_fen=2000)
    other = Holder(live_server, balance_fen=1000)
    terminal = live_server.add_terminal()
    version = terminal.sync([])["balances"]["version"]
    request = {"from_wallet": "main", "to_wallet": "water", "amount_fen": 1250, "pin": holder.pin,
               "request_id": "phone-0c9a77e1"}
    answer = holder.http.post("/api/v1/wallet-move", json=request)
    assert answer.status_code == 200, answer.text
    receipt = answer.json()
    assert (receipt["account_id"], receipt["name"], receipt["staff_number"]) == \
        (holder.account_id, holder.name, holder.staff_number)
    assert (receipt["from_balance_fen_after"], receipt["to_balance_fen_after"], receipt["repeated"]) == \
        (3750, 1250, False)
    again = holder.http.post("/api/v1/wallet-move", json=request)
    assert again.status_code == 200 and again.json()["repeated"] and _same_receipt(again.json(), receipt)
    assert holder.balance()["wallets"] == {"main": 3750, "water": 1250, "legacy": 2000}
    rows = terminal.sync([], balance_version=version)["balances"]["rows"]
    assert sorted(row[1:3] for row in rows if row[0] == holder.account_id) == \
        [["legacy", 2000], ["main", 3750], ["water", 1250]]

    listed = holder.http.get("/api/v1/wallet-moves")
    assert listed.status_code == 200 and [move["receipt_no"] for move in listed.json()["moves"]] == \
        [receipt["receipt_no"]]
    assert other.http.get("/api/v1/wallet-moves").json() == {"moves": []}      # each holder their own
    _error(holder.http.get("/api/v1/wallet-moves?limit=0"), 400, "bad_request")

    conn = live_server.connect()
    try:
        snapshot = database_snapshot(conn)
    finally:
        conn.close()
    wrong = "000000" if holder.pin != "000000" else "111111"
    for changes, status, code in (({"from_wallet": "legacy", "to_wallet": "main"}, 403, "move_hall_only"),
                                  ({"from_wallet": "water", "to_wallet": "main"}, 400, "move_not_allowed"),
                                  ({"to_wallet": "gold"}, 400, "bad_wallet"),
                                  ({"amount_fen": 3751}, 409, "insufficient_funds"),
                                  ({"amount_fen": -1}, 400, "bad_amount"),
                                  ({"amount_fen": 10 ** 30}, 400, "bad_request"),
                                  ({"amount_fen": 1300, "request_id": request["request_id"]}, 409,
                                   "idempotency_conflict"),
                                  ({"request_id": None}, 400, "bad_request")):
        body = dict(request, request_id="phone-refused-%s" % code)     # a new request each time...
        body.update(changes)                                             # ...but for the conflict
        _error(holder.http.post("/api/v1/wallet-move", json=body), status, code)
    _error(holder.http.post("/api/v1/wallet-move", json=dict(request, pin=wrong, request_id="phone-wrong-pin")),
           403, "pin_wrong")
    _error(holder.http.post("/api/v1/wallet-move", json=dict(request, request_id="phone-no-token"),
                            headers={"Authorization": ""}), 401, "bad_token")
    assert holder.balance()["wallets"] == {"main": 3750, "water": 1250, "legacy": 2000}
    conn = live_server.connect()
    try:
        after = database_snapshot(conn)
        assert _moves(conn) == 1 and ledger.check_balances(SqliteStore(conn)) == []
    finally:
        conn.close()
    # only the wrong PIN wrote anything: its count towards the lockout (and the accounts' request stamps)
    assert _without_accounts(after) == _without_accounts(snapshot)


def _without_accounts(snapshot):
    """The snapshot less the accounts table (a wrong PIN is counted there, on purpose) and the phones'
    last-use times."""
    if isinstance(snapshot[0], str):     # SQLite: INSERT statements
        return [line for line in snapshot if not line.startswith(('INSERT INTO "accounts"', 'INSERT INTO "app_users"'))]
    columns, rows = snapshot
    return [columns, [(table, table_rows) for table, table_rows in rows if table not in ("accounts", "app_users")]]
