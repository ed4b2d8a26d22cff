"""The proof of issue 5 on the main job: `ykt demo` with the three injected faults, then the day
closed as finance closes it. Balanced, per-merchant totals equal to the accepted taps the terminals
showed (decisions.jsonl), no open gaps, exactly the injected anomalies, the same report twice.
The seed is printed on failure so the run can be replayed.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

from firmware.core import card_layout
from reader_drivers.sim.classic_card import ClassicCard
from sync_server import db as dbmod
from sync_server.finance import close

from field_cards import counter_on


SEED = int(os.environ.get("YKT_DEMO_SEED", "3"))


def _ykt(*args, database=None, timeout=600):
    env = dict(os.environ, YKT_FINANCE_CLOSE="off")
    env.pop("YKT_DATABASE_URL", None)
    if database is not None:        # PostgreSQL: the demo's two servers and the finance commands use it
        env["YKT_DATABASE_URL"] = database
    return subprocess.run([sys.executable, "-m", "ykt"] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def closed_demo(tmp_path_factory, module_database):
    """The demo with injected faults on the store under test, its statement imported, its day closed
    twice; tests reach its database through `_connect(run_dir)`."""
    run_dir = tmp_path_factory.mktemp("finance-demo") / "run"
    demo = _ykt("demo", "--seed", str(SEED), "--people", "300", "--terminals", "3", "--duration-s", "10",
                "--data-dir", str(run_dir), "--json", "--lang", "en", "--inject-double-spend", "--inject-clone",
                "--inject-statement-mismatch", database=module_database)
    assert demo.returncode == 0, "seed %d: %s" % (SEED, demo.stderr[-3000:])
    injected = json.loads((run_dir / "injected.json").read_text(encoding="utf-8"))
    server_dir = str(run_dir / "server")
    imported = _ykt("finance", "import-statement", "--channel", "alipay", "--date", injected["day"],
                    "--data-dir", server_dir, injected["statement"]["path"], database=module_database)
    assert imported.returncode == 0, imported.stderr
    # the demo's day is today: closing it before midnight needs the operator's override
    first, second = (_ykt("finance", "close", "--date", injected["day"], "--json", "--before-day-end", "--data-dir",
                          server_dir, database=module_database) for _ in range(2))
    _locations[str(run_dir)] = dbmod.store_location(server_dir, module_database)
    return run_dir, injected, first, second


_locations = {}


def _connect(run_dir):
    return dbmod.connect(_locations[str(run_dir)])


def test_demo_day_closes_balanced_with_no_open_gaps(closed_demo):
    _run_dir, _injected, first, _second = closed_demo
    assert first.returncode == 0, "seed %d: %s" % (SEED, first.stderr)
    summary = json.loads(first.stdout)
    assert summary["balanced"] is True and summary["trial_balance_fen"] == 0, "seed %d" % SEED
    assert summary["gaps"] == 0 and summary["missing_seqs"] == 0
    assert summary["terminals_silent"] == 0


def test_per_merchant_totals_equal_the_accepted_taps(closed_demo):
    run_dir, _injected, first, _second = closed_demo
    summary = json.loads(first.stdout)
    conn = _connect(run_dir)
    merchant_of_index = [row[0] for row in conn.execute("SELECT merchant_id FROM terminals ORDER BY id")]
    canteens = {str(row[0]) for row in conn.execute("SELECT id FROM merchants WHERE category = 1")}
    conn.close()
    accepted = {}
    for line in open(run_dir / "decisions.jsonl", encoding="utf-8"):
        decision = json.loads(line)
        if decision["accepted"]:
            merchant = str(merchant_of_index[decision["terminal_index"]])
            accepted[merchant] = accepted.get(merchant, 0) + decision["amount_fen"]
    # the canteens' figures are the POS decisions; the dorm dispensers' water is on merchants of its own
    assert accepted and {m: fen for m, fen in summary["merchants"].items() if m in canteens} == accepted, \
        "seed %d" % SEED
    water_fen = sum(fen for m, fen in summary["merchants"].items() if m not in canteens)
    assert summary["gross_fen"] == sum(accepted.values()) + water_fen


def test_exactly_the_injected_anomalies(closed_demo):
    run_dir, injected, first, _second = closed_demo
    summary = json.loads(first.stdout)
    assert summary["anomaly_counts"] == {
        "negative_account_count": 1, "cloned_card_count": 1, "statement_mismatches": 1,
        "revoked_terminal_record_count": 0, "impossible_time_count": 0, "unbooked_record_count": 0,
        "card_mismatch_count": 0, "paycode_double_use_count": 0}, "seed %d" % SEED
    conn = _connect(run_dir)
    report = close.load_report(conn, injected["day"])
    conn.close()
    negative = report["anomalies"]["negative_accounts"][0]
    assert negative["account_id"] == injected["double_spend"]["account_id"] and negative["blocked"]
    clone = report["anomalies"]["cloned_cards"][0]
    assert clone["card_number"] == injected["clone"]["card_number"] and clone["denied"]
    statement = next(row["statement"] for row in report["channels"] if row["statement"])
    assert [item["order_ref"] for item in statement["amount_mismatch"]] == [injected["statement"]["mismatched_order"]]
    assert statement["matched"] == len(injected["statement"]["orders"]) - 1


def test_closing_twice_gives_the_same_report(closed_demo):
    _run_dir, _injected, first, second = closed_demo
    assert second.returncode == 0
    assert second.stdout == first.stdout


def _counted_on_cards(run_dir):
    """{(card_number, generation): highest tap counter on any image of the card (clones included)}."""
    counted = {}
    for path in (glob.glob(str(run_dir / "cards" / "*.card")) + glob.glob(str(run_dir / "clones" / "*.card"))
                 + glob.glob(str(run_dir / "water-cards" / "*.card"))):
        card = ClassicCard.load(path)
        identity = card_layout.decode_identity(card.dump_block(card_layout.IDENTITY_BLOCK))
        key = (identity.card_number, identity.generation)
        counted[key] = max(counted.get(key, 0), counter_on(card))
    return counted


def test_card_counter_gaps_are_the_torn_taps_the_cards_show(closed_demo):
    """Every terminal synced at the end, so no gap is pending; the torn taps listed are exactly the
    counts the card images hold between journaled taps with no record on the server. (The demo pulls
    cards while they are being read, before the count, so it has none: a late record of an offline
    window must not show up as one.)"""
    run_dir, injected, first, _second = closed_demo
    summary = json.loads(first.stdout)
    conn = _connect(run_dir)
    journaled = {}
    for card, generation, counter in conn.execute(
            "SELECT card_number, card_generation, tap_counter FROM terminal_records WHERE kind NOT IN (3, 4)"):
        # a phone's water session names its grant (kind 3), a pay-code sale its credential (kind 4), not a card
        journaled.setdefault((card, generation), set()).add(counter)
    report = close.load_report(conn, injected["day"])
    conn.close()
    counted = _counted_on_cards(run_dir)
    torn = []
    for key, counters in journaled.items():
        assert counted[key] >= max(counters), "a record names a tap the card never made: %r" % (key,)
        skipped = [c for c in range(min(counters), max(counters)) if c not in counters]
        torn.extend(key + (c,) for c in skipped if c - 1 not in skipped)     # one per run
    assert summary["card_counter_gaps_by_reason"] == {"pending": 0, "torn_tap": len(torn)}, "seed %d" % SEED
    assert sorted((row["card_number"], row["generation"], row["from_counter"])
                  for row in report["card_counter_gaps"]["rows"]) == sorted(torn), "seed %d" % SEED
