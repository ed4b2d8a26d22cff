"""Tap benchmark: microseconds from a card answering the reader to the tap being durably journaled.

One canteen tap through the real POS shell (firmware.apps.pos_terminal.PosTerminal) on the `sim:`
reader: poll and select, read and MAC-check the identity, deny-list and balance-cache lookups in the
terminal's SQLite store, the decision (firmware.core.decide via the POS state machine), the tap
counter decrement on the card, and the journal commit (WAL, synchronous=FULL). Keying the amount and
placing/pulling the card are outside the timed span. The terminal runs with no sync client, so it
decides offline (offline caps apply; the cards and amounts are spread so no cap or repeat-tap prompt
is hit, and every timed tap must be accepted or the run aborts).

The floor, measured in the same run on the same disk: one bare INSERT + COMMIT of the same 52-byte
record into a WAL, synchronous=FULL SQLite file - the cost no tap can avoid. Prints one JSON line.

    .venv/bin/python benchmarks/tap_cpu.py [--taps 2000] [--cards 200] [--warmup 50]

Limits: the sim: reader has no RF timing, so this is CPU and disk only; a PN532 adds its serial and
radio time on top. Numbers from a shared 2-core machine vary by tens of percent between runs.
"""
import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.core import card_layout, records, sam as sam_module, wallets
from firmware.core import pos
from reader_drivers.base import open_reader
from simulators.classic_card import ClassicCard

TERMINAL_ID = 9
MERCHANT_ID = 3
FIRST_CARD_NUMBER = 700001
FIRST_ACCOUNT_ID = 80001
BALANCE_FEN = 50_000_000          # far above anything the run spends
MAX_TAPS_PER_CARD = 15            # stays under the default offline cap per account at a terminal
MAX_AMOUNT_FEN = 1000


class _Decisions:
    """The terminal's output stream: keeps the last decision line, drops the rest."""

    def __init__(self):
        self.last = None

    def write(self, text):
        if '"decision"' in text:
            self.last = json.loads(text)

    def flush(self):
        pass


def _percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _summary(samples_ns):
    ordered = sorted(samples_ns)
    return statistics.median(ordered) / 1000.0, _percentile(ordered, 0.99) / 1000.0


def _issue_cards(master_key, count):
    issuer = sam_module.SoftwareSAM(sam_module.site_purpose_keys(master_key, include_issuer=True))
    reader = open_reader("sim:")
    cards = []
    for index in range(count):
        uid = (0x04000000 + index).to_bytes(4, "big")
        card = ClassicCard(uid)
        reader.field.place(card)
        target = reader.poll(0)
        identity = card_layout.Identity(FIRST_CARD_NUMBER + index, FIRST_ACCOUNT_ID + index, 1,
                                        card_layout.HOLDER_STUDENT, 20991231)
        card_io.issue_card(reader, issuer, target, identity, "测试%d" % index)
        reader.field.pull()
        cards.append(card)
    return cards


def _terminal(master_key, data_dir, cards, out):
    keys = sam_module.site_purpose_keys(master_key)
    provisioning = {
        "terminal_id": TERMINAL_ID, "merchant_id": MERCHANT_ID, "category": wallets.CATEGORY_CANTEEN,
        "terminal_key": sam_module.terminal_key(master_key, TERMINAL_ID).hex(),
        "card_key_a": keys[sam_module.CARD_KEY_A].hex(), "card_mac": keys[sam_module.CARD_MAC].hex(),
    }
    terminal = PosTerminal(provisioning, data_dir, open_reader("sim:"), out=out, display=False, sync=False)
    rows = [[FIRST_ACCOUNT_ID + index, "main", BALANCE_FEN, 0, None, None] for index in range(len(cards))]
    terminal.store.apply_answer({"acked_seq": 0, "balances": {"version": 1, "rows": rows}},
                                today_yyyymmdd=0, terminal_id=TERMINAL_ID)
    return terminal


def measure_taps(terminal, cards, taps, warmup, out):
    samples_ns = []
    for index in range(warmup + taps):
        card = cards[index % len(cards)]
        # Consecutive taps differ in card and amount: never the "same card, same amount" prompt.
        terminal.feed(pos.AmountKeyed(1 + index % MAX_AMOUNT_FEN))
        terminal.reader.field.place(card)
        out.last = None
        started_ns = time.perf_counter_ns()
        answered = terminal.present_card(0)
        elapsed_ns = time.perf_counter_ns() - started_ns
        terminal.reader.field.pull()
        if not answered or out.last is None or not out.last["accepted"]:
            raise SystemExit("tap %d was not accepted: %r (state %s)" % (index, out.last, terminal.machine.state))
        if index >= warmup:
            samples_ns.append(elapsed_ns)
    return samples_ns


def measure_floor(data_dir, record, count, warmup):
    """Bare INSERT + COMMIT of one 52-byte record, WAL and synchronous=FULL, one transaction each."""
    db = sqlite3.connect(os.path.join(data_dir, "floor.db"), isolation_level=None)
    assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() == "wal"
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY, record BLOB NOT NULL)")
    samples_ns = []
    for seq in range(1, warmup + count + 1):
        started_ns = time.perf_counter_ns()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO journal (seq, record) VALUES (?, ?)", (seq, record))
        db.execute("COMMIT")
        elapsed_ns = time.perf_counter_ns() - started_ns
        if seq > warmup:
            samples_ns.append(elapsed_ns)
    db.close()
    return samples_ns


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", type=int, default=2000)
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--dir", help="where the SQLite files go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not 0 < args.taps <= 1_000_000 or not 0 < args.cards <= 10_000 or args.warmup < 0:
        parser.error("--taps 1..1000000, --cards 1..10000, --warmup >= 0")
    if (args.taps + args.warmup) > args.cards * MAX_TAPS_PER_CARD:
        parser.error("more than %d taps per card would reach the offline cap: raise --cards" % MAX_TAPS_PER_CARD)

    master_key = os.urandom(32)      # a throwaway site for this run only
    with tempfile.TemporaryDirectory(prefix="ykt-tap-bench-", dir=args.dir) as data_dir:
        cards = _issue_cards(master_key, args.cards)
        out = _Decisions()
        terminal = _terminal(master_key, os.path.join(data_dir, "terminal"), cards, out)
        try:
            tap_ns = measure_taps(terminal, cards, args.taps, args.warmup, out)
            record = terminal.store.journal(from_seq=1, limit=1)[0][1]
        finally:
            terminal.close()
        assert len(record) == records.RECORD_SIZE
        floor_ns = measure_floor(data_dir, bytes(record), args.taps, args.warmup)

    median_us, p99_us = _summary(tap_ns)
    floor_median_us, floor_p99_us = _summary(floor_ns)
    print(json.dumps({
        "benchmark": "tap_cpu",
        "taps": len(tap_ns),
        "reader": "sim:",
        "median_us": round(median_us, 1),
        "p99_us": round(p99_us, 1),
        "journal_floor_median_us": round(floor_median_us, 1),
        "journal_floor_p99_us": round(floor_p99_us, 1),
        "median_over_floor_us": round(median_us - floor_median_us, 1),
        "cards": args.cards,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "sqlite": sqlite3.sqlite_version,
    }))


if __name__ == "__main__":
    main()
