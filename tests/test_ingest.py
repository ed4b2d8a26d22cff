"""Record ingest over HTTP against the real server: the booking paths a canteen-only run never takes
(wallet splits, unknown accounts) and many terminals uploading at once through several workers."""
import threading

from firmware.core import protocol, wallets as wallet_rules
from sync_server import ledger, registry
from sync_server.services import cards as services_cards
from sync_server.ledger_store import SqliteStore


def _person(conn, staff_number):
    _person_id, account_id = registry.add_person(conn, "周七", 2, staff_number=staff_number, set_initial_pin=False)
    identity, _name = registry.issue_card_record(conn, account_id, staff_number.encode()[-4:].rjust(4, b"\x02"))
    return account_id, identity.card_number


def test_water_batch_splits_over_water_legacy_main_and_blocks_the_overdrawn(live_server):
    conn = live_server.connect()
    account, card = _person(conn, "ING-W1")
    registry.recharge(conn, account, 100, wallet="water")
    registry.recharge(conn, account, 50, wallet="legacy")
    registry.recharge(conn, account, 1000)
    canteen = live_server.add_terminal()
    water = live_server.add_terminal(category=wallet_rules.CATEGORY_WATER)
    # one canteen tap first, then water taps: the split sees the balances each earlier tap left
    canteen.sync([canteen.record(account, card, 200, tap_counter=1)])
    answer = water.sync([water.record(account, card, 120, tap_counter=2),
                         water.record(account, card, 700, tap_counter=3),
                         water.record(account, card, 150, tap_counter=4)])
    assert registry.balances_of(conn, account) == {"main": -20, "water": 0, "legacy": 0}
    assert answer["acked_seq"] == 3
    assert [e for e in answer["deny"]["entries"] if e[1] == account] == [[protocol.DENY_ACCOUNT, account, True, 4]]
    parts = conn.execute("SELECT t.id, la.wallet, t.amount_fen FROM transfers t JOIN ledger_accounts la "
                         "ON la.id = t.debit_id WHERE t.reference LIKE ? ORDER BY t.rowid",
                         ("%d/%%" % water.terminal_id,)).fetchall()
    assert [(p[1], p[2]) for p in parts] == [("water", 100), ("legacy", 20), ("legacy", 30), ("main", 670),
                                             ("main", 150)]
    assert ledger.check_balances(SqliteStore(conn)) == []


def test_unknown_account_is_stored_unbooked_and_reported(live_server):
    conn = live_server.connect()
    account, card = _person(conn, "ING-U1")
    registry.recharge(conn, account, 500)
    terminal = live_server.add_terminal()
    answer = terminal.sync([terminal.record(account, card, 100, tap_counter=1),
                            terminal.record(999999, 999999, 100, tap_counter=1)])
    assert answer["acked_seq"] == 2
    assert conn.execute("SELECT seq, booked FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                        (terminal.terminal_id,)).fetchall() == [(1, 1), (2, 0)]
    assert conn.execute("SELECT seq, reason FROM record_anomalies WHERE terminal_id = ?",
                        (terminal.terminal_id,)).fetchall() == [(2, "unknown_account")]
    assert registry.balances_of(conn, account)["main"] == 400


def test_a_card_that_is_not_the_named_accounts_debits_nobody_and_flags_the_terminal(live_server):
    """Records signed by a valid terminal key but naming an account that does not hold the card (a
    forged or broken terminal): another person's card, a card number nobody holds. Stored once and
    acknowledged, never booked, noted with the real owner, the terminal flagged and logged; the
    card's owner's own tap and a tap with the same person's older card generation book as usual."""
    conn = live_server.connect()
    victim, victim_card = _person(conn, "ING-M1")
    thief, thief_card = _person(conn, "ING-M2")
    registry.recharge(conn, victim, 5000)
    registry.recharge(conn, thief, 5000)
    reissued = services_cards.reissue(conn, thief, b"\x0b\x0c\x0d\x0e", operator="desk")["identity"]
    assert reissued.card_number == thief_card and reissued.generation == 2
    terminal = live_server.add_terminal()
    forged = [terminal.record(victim, thief_card, 900, tap_counter=5),             # the thief's card, victim named
              terminal.record(victim, 987654, 700, tap_counter=1),                 # a card nobody holds
              terminal.record(thief, thief_card, 100, tap_counter=6, generation=1),  # own older generation
              terminal.record(victim, victim_card, 50, tap_counter=1)]               # an honest tap
    balances_before = {account: registry.balances_of(conn, account)["main"] for account in (victim, thief)}
    answer = terminal.sync(forged)
    assert answer["acked_seq"] == 4 and answer["commands"] == []
    assert registry.balances_of(conn, victim)["main"] == balances_before[victim] - 50
    assert registry.balances_of(conn, thief)["main"] == balances_before[thief] - 100
    assert conn.execute("SELECT seq, booked FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                        (terminal.terminal_id,)).fetchall() == [(1, 0), (2, 0), (3, 1), (4, 1)]
    assert conn.execute("SELECT seq, card_number, named_account_id, owner_account_id, amount_fen FROM card_mismatches "
                        "WHERE terminal_id = ? ORDER BY seq", (terminal.terminal_id,)).fetchall() == [
        (1, thief_card, victim, thief, 900), (2, 987654, victim, None, 700)]
    assert conn.execute("SELECT seq, reason FROM record_anomalies WHERE terminal_id = ? ORDER BY seq",
                        (terminal.terminal_id,)).fetchall() == [(1, "card_mismatch"), (2, "card_mismatch")]
    assert conn.execute("SELECT card_mismatch_count FROM terminals WHERE id = ?",
                        (terminal.terminal_id,)).fetchone()[0] == 2
    assert "terminal %d flagged: 2 records whose card is not the named account's" % terminal.terminal_id \
        in live_server.log()
    assert ledger.check_balances(SqliteStore(conn)) == []

    again = terminal.sync(forged)                       # sent again (a lost answer): stored and noted once
    assert again["acked_seq"] == 4 and again["commands"] == []
    assert conn.execute("SELECT count(*) FROM card_mismatches WHERE terminal_id = ?",
                        (terminal.terminal_id,)).fetchone()[0] == 2
    assert registry.balances_of(conn, victim)["main"] == balances_before[victim] - 50


def test_many_terminals_at_once_store_every_record_once_and_the_ledger_balances(live_server):
    conn = live_server.connect()
    people = [_person(conn, "ING-C%d" % i) for i in range(40)]
    for account, _card in people:
        registry.recharge(conn, account, 100000)
    before = {account: registry.balances_of(conn, account)["main"] for account, _card in people}
    terminals = [live_server.add_terminal() for _ in range(4)]
    taps = {}
    failures = []

    def run(terminal, offset):
        try:
            for batch_number in range(5):
                batch = []
                for index in range(60):
                    account, card = people[(offset + batch_number * 60 + index) % len(people)]
                    taps[card] = taps.get(card, 0) + 1       # dict updates are atomic under the GIL
                    batch.append(terminal.record(account, card, 1 + index, tap_counter=1000 + batch_number))
                terminal.sync(batch)
                terminal.sync(batch[:30])                      # a repeat of part of the batch: stored once
        except Exception as error:  # surfaced in the main thread below
            failures.append(error)

    threads = [threading.Thread(target=run, args=(t, i * 7)) for i, t in enumerate(terminals)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]
    for terminal in terminals:
        seqs = [row[0] for row in conn.execute("SELECT seq FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                                               (terminal.terminal_id,))]
        assert seqs == list(range(1, 301))
    spent = sum(before.values()) - sum(registry.balances_of(conn, a)["main"] for a, _card in people)
    assert spent == 4 * 5 * sum(range(1, 61))
    assert ledger.check_balances(SqliteStore(conn)) == []
