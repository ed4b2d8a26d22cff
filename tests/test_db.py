"""sync_server/db.py's helpers for many rows at once, on each store (--store): a ManyRows write changes
the same rows whether it runs as executemany (SQLite) or as one statement over arrays (PostgreSQL),
and in_lists selects exactly the values asked for, beyond one SQLite IN list's bound."""
import pytest

from sync_server import db as dbmod, registry
from sync_server.ingest import UPDATE_ACCOUNTS, UPSERT_CARD_COUNTERS
from sync_server.ledger_store import ADD_TO_BALANCES


@pytest.fixture
def conn(database_location):
    connection = dbmod.init_db(database_location)
    registry.provision_population(connection, 2, 1, initial_balance_fen=1000)
    yield connection
    connection.close()


def test_in_lists_select_every_value_asked_for_and_no_other(conn):
    refs = list(range(1, 2 * dbmod.IN_LIST_MAX + 7))
    with dbmod.transaction(conn):
        dbmod.write_rows(conn, UPSERT_CARD_COUNTERS, [(ref, ref * 10) for ref in refs])
    wanted = refs[::2] + [10 ** 12]          # one value that is not there
    found = {}
    for condition, values in dbmod.in_lists(conn, wanted):
        found.update(conn.execute("SELECT card_ref, max_tap_counter FROM card_counters WHERE card_ref %s" % condition,
                                  values).fetchall())
    assert found == {ref: ref * 10 for ref in refs[::2]}
    assert dbmod.in_lists(conn, []) == []


def test_many_rows_writes_change_exactly_their_rows(conn):
    with dbmod.transaction(conn):
        assert dbmod.write_rows(conn, UPSERT_CARD_COUNTERS, [(1, 5), (2, 7)]) == 2
        dbmod.write_rows(conn, UPSERT_CARD_COUNTERS, [(2, 9), (3, 1)])     # one update, one insert
    assert dict(conn.execute("SELECT card_ref, max_tap_counter FROM card_counters").fetchall()) == {1: 5, 2: 9, 3: 1}

    ledger_ids = [row[0] for row in conn.execute("SELECT ledger_account_id FROM balances ORDER BY 1 LIMIT 2").fetchall()]
    before = dict(conn.execute("SELECT ledger_account_id, balance_fen FROM balances").fetchall())
    with dbmod.transaction(conn):
        assert dbmod.write_rows(conn, ADD_TO_BALANCES, [(250, ledger_ids[0]), (-250, ledger_ids[1])]) == 2
        assert dbmod.write_rows(conn, ADD_TO_BALANCES, []) == 0
    after = dict(conn.execute("SELECT ledger_account_id, balance_fen FROM balances").fetchall())
    expected = dict(before)
    expected[ledger_ids[0]] += 250
    expected[ledger_ids[1]] -= 250
    assert after == expected


def test_spending_of_a_new_day_starts_again_and_of_the_same_day_adds_up(conn):
    accounts = [row[0] for row in conn.execute("SELECT id FROM accounts ORDER BY id").fetchall()]
    with dbmod.transaction(conn):
        for account_id, day in zip(accounts, (100, 99)):
            conn.execute("UPDATE accounts SET spent_day = ?, spent_today_fen = 300 WHERE id = ?", (day, account_id))
        # (today, spent, spent, today, balance_version, account_id): same day adds, a new day starts from it
        changed = dbmod.write_rows(conn, UPDATE_ACCOUNTS, [(100, 50, 50, 100, 7, accounts[0]),
                                                           (100, 50, 50, 100, 8, accounts[1])])
    assert changed == 2
    rows = conn.execute("SELECT id, spent_day, spent_today_fen, balance_version FROM accounts WHERE id IN (?, ?) "
                        "ORDER BY id", accounts).fetchall()
    assert [tuple(row) for row in rows] == [(accounts[0], 100, 350, 7), (accounts[1], 100, 50, 8)]
