"""The ledger on each store (a real SQLite file, a real PostgreSQL database), driven by Hypothesis: conservation and no transfer twice."""
import shutil
import tempfile

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from firmware.core import wallets as wallet_rules
from sync_server import db as dbmod, ledger, registry
from sync_server.ledger_store import SqliteStore

ACCOUNTS = 4
amounts = st.integers(min_value=1, max_value=5000)


class LedgerMachine(RuleBasedStateMachine):
    new_location = None         # set by test_ledger_machine: each example's database of the store under test
    @initialize()
    def open_database(self):
        self.directory = tempfile.mkdtemp(prefix="ledger-")
        self.conn = dbmod.init_db(self.new_location() if self.new_location else dbmod.db_path(self.directory))
        self.merchant_ledger = []
        for category in (wallet_rules.CATEGORY_CANTEEN, wallet_rules.CATEGORY_WATER):
            merchant_id = registry.add_merchant(self.conn, "窗口", "window", category)
            self.merchant_ledger.append((category, self.conn.execute(
                "SELECT ledger_account_id FROM merchants WHERE id = ?", (merchant_id,)).fetchone()[0]))
        self.accounts = [registry.add_person(self.conn, "王五", 2, staff_number="L%d" % i, set_initial_pin=False)[1]
                         for i in range(ACCOUNTS)]
        self.wallets = SqliteStore(self.conn).wallet_ids(self.accounts)
        self.posted = {}          # the model: id -> Transfer
        self.next_seq = 1

    def teardown(self):
        if hasattr(self, "conn"):
            self.conn.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _post(self, transfers):
        with dbmod.transaction(self.conn):
            new = ledger.post(SqliteStore(self.conn), transfers)
        for transfer in new:
            assert transfer.id not in self.posted
            self.posted[transfer.id] = transfer
        return new

    @rule(account=st.integers(0, ACCOUNTS - 1), wallet=st.sampled_from(("main", "water", "legacy")),
          number=st.integers(0, 30))
    def recharge(self, account, wallet, number):
        """Recharge ids come from a small pool, so the same recharge is often posted again."""
        transfer = ledger.recharge_transfer("r/%d" % number, dbmod.LEDGER_CASH_DESK,
                                            self.wallets[self.accounts[account]][wallet],
                                            1 + number * 37 % 5000, 1000 + number)
        earlier = self.posted.get(transfer.id)
        if earlier is not None and earlier != transfer:    # same id, other wallet: refused, no change
            with pytest.raises(ledger.TransferError):
                self._post([transfer])
            return
        new = self._post([transfer, transfer])
        assert len(new) == (0 if earlier else 1)

    @rule(number=st.integers(0, 30), amount_fen=amounts)
    def conflicting_reuse_of_an_id_is_refused(self, number, amount_fen):
        transfer_id = "r/%d" % number
        if transfer_id not in self.posted or self.posted[transfer_id].amount_fen == amount_fen:
            return
        before = SqliteStore(self.conn).all_balances()
        with pytest.raises(ledger.TransferError):
            self._post([self.posted[transfer_id]._replace(amount_fen=amount_fen)])
        assert SqliteStore(self.conn).all_balances() == before

    @rule(taps=st.lists(st.tuples(st.integers(0, ACCOUNTS - 1), st.integers(0, 1), amounts), min_size=1, max_size=8))
    def purchases(self, taps):
        batch = []
        for account, merchant, amount_fen in taps:
            category, merchant_ledger = self.merchant_ledger[merchant]
            batch.append(ledger.Purchase(1, self.next_seq, 5000 + self.next_seq, self.accounts[account], category,
                                         amount_fen, merchant_ledger))
            self.next_seq += 1
        with dbmod.transaction(self.conn):
            transfers, _balances, _ids = ledger.book_purchases(SqliteStore(self.conn), batch)
        assert sum(t.amount_fen for t in transfers) == sum(p.amount_fen for p in batch)
        for transfer in transfers:
            assert transfer.id not in self.posted
            self.posted[transfer.id] = transfer

    @rule(data=st.data())
    def replaying_a_purchase_batch_books_nothing(self, data):
        purchase_ids = [tid for tid in self.posted if tid.startswith("p/")]
        if not purchase_ids:
            return
        chosen = data.draw(st.lists(st.sampled_from(purchase_ids), min_size=1, max_size=5))
        assert self._post([self.posted[tid] for tid in chosen]) == []

    @invariant()
    def balances_match_transfers_and_sum_to_zero(self):
        if not hasattr(self, "conn"):
            return
        store = SqliteStore(self.conn)
        assert ledger.check_balances(store) == []
        assert sum(store.all_balances().values()) == 0
        cached = store.all_balances()
        derived = ledger.derive_balances(self.posted.values())
        for ledger_id in set(cached) | set(derived):
            assert cached.get(ledger_id, 0) == derived.get(ledger_id, 0)

    @invariant()
    def every_transfer_stored_once(self):
        if not hasattr(self, "conn"):
            return
        rows = self.conn.execute("SELECT id FROM transfers").fetchall()
        assert sorted(row[0] for row in rows) == sorted(self.posted)


def test_ledger_machine(new_location, monkeypatch):
    monkeypatch.setattr(LedgerMachine, "new_location", staticmethod(new_location))
    run_state_machine_as_test(LedgerMachine, settings=settings(max_examples=25, stateful_step_count=15,
                                                                deadline=None))


def test_check_balances_notices_a_tampered_cache(database_location):
    conn = dbmod.init_db(database_location)
    _person, account = registry.add_person(conn, "赵六", 2, staff_number="T1", set_initial_pin=False)
    registry.recharge(conn, account, 500)
    assert ledger.check_balances(SqliteStore(conn)) == []
    conn.execute("UPDATE balances SET balance_fen = balance_fen + 1 WHERE ledger_account_id = ?",
                 (registry.wallet_ledger_id(conn, account, "main"),))
    problems = ledger.check_balances(SqliteStore(conn))
    assert len(problems) == 2 and "not 0" in problems[1]


def test_water_purchase_spends_water_then_legacy_then_main():
    balances = {10: 100, 11: 50, 12: 1000}
    wallet_ids = {"water": 10, "legacy": 11, "main": 12}
    planned = ledger.plan_purchase(balances, wallet_ids, ledger.Purchase(1, 1, 0, 7, wallet_rules.CATEGORY_WATER,
                                                                         300, 99))
    assert [(t.debit_id, t.amount_fen) for t in planned] == [(10, 100), (11, 50), (12, 150)]
    assert balances == {10: 0, 11: 0, 12: 850, 99: 300}


def test_transfer_to_itself_or_without_amount_is_refused():
    with pytest.raises(ledger.TransferError):
        ledger.validate(ledger.Transfer("x", 1, 1, 5, ledger.KIND_RECHARGE, None, 0))
    with pytest.raises(ledger.TransferError):
        ledger.validate(ledger.Transfer("x", 1, 2, 0, ledger.KIND_RECHARGE, None, 0))
