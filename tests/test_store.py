"""The terminal's SQLite store: durable journal, gap-free seq, ack/prune, deny list, balance cache, counter."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from firmware.apps.store import JournalFull, StoreError, TerminalStore
from firmware.core import decide, protocol, records
from firmware.core.decide import NOT_DENIED

TERMINAL_ID = 7
TODAY = 20250310


def fields(amount_fen=1200, account_id=501, card_number=1001, tap_counter=1):
    return {"terminal_id": TERMINAL_ID, "card_number": card_number, "account_id": account_id,
            "card_generation": 1, "category": 1, "tap_counter": tap_counter, "amount_fen": amount_fen,
            "merchant_id": 3, "flags": 0}


def answer(acked_seq, deny=None, balances=None, config=None, commands=()):
    return {"acked_seq": acked_seq, "server_ms": 1741600000000, "deny": deny or {"version": 0, "entries": [], "more": False},
            "balances": balances or {"version": 0, "rows": [], "more": False}, "config": config,
            "commands": list(commands)}


@pytest.fixture
def store(tmp_path):
    s = TerminalStore(str(tmp_path / "terminal.db"), keep_acked=3)
    yield s
    s.close()


def test_journal_is_gap_free_and_survives_reopen(tmp_path):
    path = str(tmp_path / "terminal.db")
    s = TerminalStore(path)
    seqs = [s.append_purchase(fields(100 + i, tap_counter=i + 1), 1741600000000 + i) for i in range(5)]
    s.close()
    assert seqs == [1, 2, 3, 4, 5]
    reopened = TerminalStore(path)
    stored = reopened.journal()
    assert [seq for seq, _, _ in stored] == seqs
    decoded = [records.decode(bytes(record)) for _, record, _ in stored]
    assert [d["amount_fen"] for d in decoded] == [100, 101, 102, 103, 104]
    assert decoded[2]["time_ms"] == 1741600000002 and decoded[2]["seq"] == 3
    assert reopened.append_purchase(fields(), 1741600000010) == 6
    reopened.close()


def test_every_returned_seq_survives_sigkill(tmp_path):
    """A child journals as fast as it can and prints each seq once append returns; we kill -9 it."""
    path = str(tmp_path / "terminal.db")
    child = textwrap.dedent("""
        import sys
        from firmware.apps.store import TerminalStore
        s = TerminalStore(sys.argv[1])
        f = {"terminal_id": 7, "card_number": 1, "account_id": 2, "card_generation": 1, "category": 1,
             "tap_counter": 1, "amount_fen": 100, "merchant_id": 3, "flags": 0}
        for i in range(100000):
            print(s.append_purchase(f, 1000 + i), flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", child, path], stdout=subprocess.PIPE, text=True)
    shown = []
    for line in process.stdout:
        shown.append(int(line))
        if len(shown) == 40:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait()
    shown.extend(int(line) for line in process.stdout.read().split())
    s = TerminalStore(path)
    stored = [seq for seq, _, _ in s.journal(limit=100000)]
    assert stored == list(range(1, len(stored) + 1))     # gap-free
    assert set(shown) <= set(stored)                    # nothing reported as committed is missing
    assert s.append_purchase(fields(), 5000) == len(stored) + 1
    s.close()


def test_upload_batch_is_bounded_and_ascending(store):
    for i in range(10):
        store.append_purchase(fields(tap_counter=i + 1), 1000 + i)
    batch = store.upload_batch(limit=4)
    assert [seq for seq, _ in batch] == [1, 2, 3, 4]
    assert all(len(record) == records.RECORD_SIZE for _, record in batch)


def test_ack_marks_prunes_old_acked_and_keeps_recent_for_recollection(store):
    for i in range(10):
        store.append_purchase(fields(tap_counter=i + 1), 1000 + i)
    result = store.apply_answer(answer(8), TODAY, TERMINAL_ID)
    assert result.acked_seq == 8 and store.unacked_count() == 2
    kept = [(seq, acked) for seq, _, acked in store.journal()]
    assert kept == [(6, 1), (7, 1), (8, 1), (9, 0), (10, 0)]     # keep_acked=3
    assert [seq for seq, _ in store.upload_batch()] == [9, 10]
    # A repeated answer changes nothing.
    store.apply_answer(answer(8), TODAY, TERMINAL_ID)
    assert store.unacked_count() == 2 and [seq for seq, _, _ in store.journal()] == [6, 7, 8, 9, 10]


def test_unacked_rows_are_never_pruned(store):
    for i in range(6):
        store.append_purchase(fields(tap_counter=i + 1), 1000 + i)
    store.apply_answer(answer(0), TODAY, TERMINAL_ID)
    assert store.unacked_count() == 6 and len(store.journal()) == 6


def test_resend_command_sends_acked_records_again_once(store):
    for i in range(6):
        store.append_purchase(fields(tap_counter=i + 1), 1000 + i)
    store.apply_answer(answer(6, commands=[{"op": "resend", "from_seq": 4, "to_seq": 5}]), TODAY, TERMINAL_ID)
    assert [seq for seq, _ in store.upload_batch()] == [4, 5]
    store.apply_answer(answer(6), TODAY, TERMINAL_ID, sent_through_seq=5)
    assert store.upload_batch() == []


def test_server_ahead_of_journal_moves_seq_on(store):
    store.append_purchase(fields(), 1000)
    store.apply_answer(answer(50), TODAY, TERMINAL_ID)
    assert store.append_purchase(fields(), 1001) == 51
    assert store.health()["seq_jumped_from"] == 1


def test_journal_full_refuses_without_change(tmp_path):
    s = TerminalStore(str(tmp_path / "t.db"), max_unacked=3)
    for i in range(3):
        s.append_purchase(fields(), 1000 + i)
    with pytest.raises(JournalFull):
        s.append_purchase(fields(), 2000)
    assert s.last_seq() == 3
    s.apply_answer(answer(3), TODAY, TERMINAL_ID)
    assert s.append_purchase(fields(), 2001) == 4
    s.close()


def test_bad_record_fields_leave_no_row(store):
    with pytest.raises(records.RecordError):
        store.append_purchase(fields(amount_fen=0), 1000)
    assert store.last_seq() == 0 and store.journal() == []


def test_deny_entries_apply_and_lift(store):
    ref = protocol.card_deny_ref(1001, 1)
    deny = {"version": 5, "entries": [["card", ref, True, 1], ["account", 777, True, 3],
                                      ["card", protocol.card_deny_ref(2002, 1), True, 2],
                                      ["card", protocol.card_deny_ref(2002, 2), False, None]], "more": False}
    store.apply_answer(answer(0, deny=deny), TODAY, TERMINAL_ID)
    assert store.versions()[0] == 5
    assert store.deny_view(1001, 1, 501, TERMINAL_ID).card_reason == 1
    assert store.deny_view(1001, 2, 501, TERMINAL_ID).card_reason is None
    assert store.deny_view(5, 1, 777, TERMINAL_ID).account_reason == 3
    assert store.deny_view(2002, 1, 9, TERMINAL_ID).newest_generation == 2    # a newer card exists
    assert store.deny_view(3, 1, 9, TERMINAL_ID) == NOT_DENIED
    lift = {"version": 6, "entries": [["card", ref, False, None]], "more": False}
    store.apply_answer(answer(0, deny=lift), TODAY, TERMINAL_ID)
    assert store.deny_view(1001, 1, 501, TERMINAL_ID).card_reason is None


def test_terminal_revocation_is_seen(store):
    deny = {"version": 1, "entries": [["terminal", TERMINAL_ID, True, 5]], "more": False}
    store.apply_answer(answer(0, deny=deny), TODAY, TERMINAL_ID)
    assert store.deny_view(1, 1, 1, TERMINAL_ID).terminal_revoked
    assert not store.deny_view(1, 1, 1, TERMINAL_ID + 1).terminal_revoked


def test_balance_cache_and_own_unacked_spend(store):
    balances = {"version": 9, "rows": [[501, "main", 10000, 1500, 3000, 8000], [501, "water", 200, 1500, 3000, 8000]],
                "more": False}
    store.apply_answer(answer(0, balances=balances), TODAY, TERMINAL_ID)
    store.append_purchase(fields(1200), 1000)
    store.append_purchase(fields(300), 1001)
    store.append_purchase(fields(999, account_id=502), 1002)
    view = store.account_view(501, TODAY)
    assert view.known and view.balances_fen == {"main": 10000, "water": 200}
    assert (view.spent_today_fen, view.single_limit_fen, view.daily_limit_fen) == (1500, 3000, 8000)
    assert (view.unacked_fen, view.unacked_count) == (1500, 2)
    assert store.account_view(501, TODAY + 1).spent_today_fen == 0     # yesterday's spend
    assert not store.account_view(999, TODAY).known
    store.apply_answer(answer(2), TODAY, TERMINAL_ID)
    assert store.account_view(501, TODAY).unacked_count == 0


def test_failed_apply_changes_nothing(store):
    store.append_purchase(fields(), 1000)
    bad = answer(1, balances={"version": 3, "rows": [[501, "main", 100]], "more": False})   # short row
    with pytest.raises(ValueError):
        store.apply_answer(bad, TODAY, TERMINAL_ID)
    assert store.unacked_count() == 1 and store.versions() == (0, 0, 0)


def test_request_counter_is_persisted_and_increasing(tmp_path):
    path = str(tmp_path / "t.db")
    s = TerminalStore(path)
    assert [s.next_request_counter() for _ in range(3)] == [1, 2, 3]
    s.close()
    s = TerminalStore(path)
    assert s.next_request_counter() == 4
    s.close()


def test_clock_floor_persists_with_the_journal_row(tmp_path):
    path = str(tmp_path / "t.db")
    s = TerminalStore(path)
    clock = s.clock()
    time_ms = clock.stamp_ms(1741600000000)
    s.append_purchase(fields(), time_ms, clock.floor_ms)
    s.close()
    after_reboot = TerminalStore(path).clock()
    assert after_reboot.stamp_ms(0) > time_ms


def test_config_from_server(store):
    store.apply_answer(answer(0, config={"version": 4, "offline_cap_count": 5, "repeat_window_ms": 8000}),
                       TODAY, TERMINAL_ID)
    assert store.config()["offline_cap_count"] == 5
    assert store.versions()[2] == 4


def sqlite_work(store, action):
    """SQLite VM instructions (in hundreds) that `action` runs on the store's connection."""
    steps = [0]

    def count():
        steps[0] += 1
        return 0
    store._db.set_progress_handler(count, 100)
    try:
        action()
    finally:
        store._db.set_progress_handler(None, 100)
    return steps[0]


def test_a_tap_costs_the_same_with_a_long_unacked_backlog(tmp_path):
    """A terminal cut off all day still commits each tap at once: nothing per tap walks the backlog."""
    small = TerminalStore(str(tmp_path / "small.db"))
    for i in range(10):
        small.append_purchase(fields(tap_counter=i + 1), 1000 + i)
    big = TerminalStore(str(tmp_path / "big.db"))
    backlog = 20000
    raw = records.encode_purchase(seq=1, time_ms=1000, **fields())
    with big._transaction() as db:      # the backlog as append_purchase leaves it, written in one go
        db.executemany("INSERT INTO journal (seq, record, account_id, amount_fen, time_ms) VALUES (?, ?, ?, ?, ?)",
                       [(seq, raw, 9000 + seq % 3000, 1200, 1000 + seq) for seq in range(1, backlog + 1)])
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (backlog,))
    assert big.unacked_count() == backlog
    small_work = sqlite_work(small, lambda: small.append_purchase(fields(), 5000))
    big_work = sqlite_work(big, lambda: big.append_purchase(fields(), 5000))
    assert big_work <= 2 * small_work + 10, (small_work, big_work)
    assert sqlite_work(big, big.unacked_count) <= 10
    assert big.account_view(501, TODAY).unacked_count == 1
    small.close()
    big.close()


def spendable_fen(store, account_id):
    view = store.account_view(account_id, TODAY)
    return decide.spendable_after_unacked(view.balances_fen, 1, view.unacked_fen)["main"]


def test_acked_spend_counts_until_the_balance_pages_show_it(store):
    """The server acks our taps in one answer, but the account's new balance may come pages later:
    until then the spend must still count, or the terminal would let the card spend the money twice."""
    first = {"version": 5, "rows": [[501, "main", 1000, 0, None, None]], "more": False}
    store.apply_answer(answer(0, balances=first), TODAY, TERMINAL_ID)
    for tap in range(4):            # more than keep_acked=3: pruning must not drop them either
        store.append_purchase(fields(200, tap_counter=tap + 1), 1000 + tap)
    assert spendable_fen(store, 501) == 200
    page = {"version": 300, "rows": [[999, "main", 5, 0, None, None]], "more": True}
    store.apply_answer(answer(4, balances=page), TODAY, TERMINAL_ID, sent_through_seq=4)
    assert store.unacked_count() == 0                   # the server holds them: nothing to send
    assert spendable_fen(store, 501) == 200             # ... but the cache does not show them yet
    last_page = {"version": 301, "rows": [[501, "main", 200, 800, None, None]], "more": False}
    store.apply_answer(answer(4, balances=last_page), TODAY, TERMINAL_ID)
    assert spendable_fen(store, 501) == 200
    assert store.account_view(501, TODAY).unacked_count == 0


def test_tap_facts_are_one_moment_while_a_sync_commits(tmp_path):
    """The POS reads balances and its own spend while the sync thread may commit an answer: the
    tap must see both before that answer or both after it, never the cache from before and the
    spend from after (that showed 1000 fen spendable where 200 was true)."""
    path = str(tmp_path / "terminal.db")
    pos_store, sync_store = TerminalStore(path), TerminalStore(path)
    sync_store.apply_answer(answer(0, balances={"version": 5, "rows": [[501, "main", 1000, 0, None, None]],
                                                "more": False}), TODAY, TERMINAL_ID)
    pos_store.append_purchase(fields(800), 1000)
    reads = []

    def sync_commits_between_reads(statement):
        if "FROM balance" in statement or "FROM journal" in statement:
            reads.append(statement)
            if len(reads) == 2:
                booked = {"version": 6, "rows": [[501, "main", 200, 800, None, None]], "more": False}
                sync_store.apply_answer(answer(1, balances=booked), TODAY, TERMINAL_ID, sent_through_seq=1)
    pos_store._db.set_trace_callback(sync_commits_between_reads)
    deny, account = pos_store.tap_facts(1001, 1, 501, TERMINAL_ID, TODAY)
    pos_store._db.set_trace_callback(None)
    assert len(reads) >= 2 and deny == NOT_DENIED
    assert decide.spendable_after_unacked(account.balances_fen, 1, account.unacked_fen)["main"] == 200
    after = pos_store.account_view(501, TODAY)          # and the next tap sees the answer
    assert (after.balances_fen, after.unacked_fen) == ({"main": 200}, 0)
    pos_store.close()
    sync_store.close()


def test_resend_wider_than_a_batch_moves_on_and_new_taps_still_go(tmp_path):
    """The server asks for more again than one request carries: each batch continues where the
    last one ended, so the range is served once and the taps made meanwhile are sent too."""
    s = TerminalStore(str(tmp_path / "t.db"))
    for i in range(10):
        s.append_purchase(fields(tap_counter=i + 1), 1000 + i)
    s.apply_answer(answer(10), TODAY, TERMINAL_ID, sent_through_seq=10)
    s.apply_answer(answer(10, commands=[{"op": "resend", "from_seq": 1, "to_seq": 10}]), TODAY, TERMINAL_ID)
    s.append_purchase(fields(tap_counter=11), 2000)                # a new tap while the resend runs
    sent = []
    for _ in range(5):
        batch = s.upload_batch(limit=4)
        if not batch:
            break
        sent.append([seq for seq, _ in batch])
        s.apply_answer(answer(11 if 11 in sent[-1] else 10), TODAY, TERMINAL_ID, sent_through_seq=batch[-1][0])
    assert sent == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]
    assert s.unacked_count() == 0
    s.close()


@pytest.mark.parametrize("broken", [
    {"deny": [["card", 1, True, 1]]},                          # a list where a map belongs
    {"deny": {"version": 2, "entries": [["card", "1", True, 1]]}},
    {"balances": {"version": 2, "rows": [[501, "main", "100", 0, None, None]]}},
    {"balances": {"version": 2, "rows": [[501, "main", 100, 0, None]]}},
    {"config": [1]},
    {"commands": [5]},
    {"commands": [{"op": "resend", "from_seq": "1", "to_seq": 2}]},
    {"acked_seq": None},
    {"acked_seq": True},
])
def test_malformed_answer_is_refused_whole(store, broken):
    store.append_purchase(fields(), 1000)
    good = answer(1, balances={"version": 3, "rows": [[501, "main", 100, 0, None, None]], "more": False})
    with pytest.raises(StoreError):
        store.apply_answer(dict(good, **broken), TODAY, TERMINAL_ID)
    assert store.unacked_count() == 1 and store.versions() == (0, 0, 0)
    assert not store.account_view(501, TODAY).known
