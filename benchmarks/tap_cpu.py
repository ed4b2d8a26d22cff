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
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time

from firmware.core import records
from reader_drivers.base import open_reader

import terminal_rig  # benchmarks/: a script's own folder is on sys.path

NUMBERING = terminal_rig.Numbering(terminal_id=9, merchant_id=3, first_card_number=700001,
                                   first_account_id=80001, first_uid=0x04000000)


def _summary(samples_ns):
    ordered = sorted(samples_ns)
    return statistics.median(ordered) / 1000.0, terminal_rig.percentile(ordered, 0.99) / 1000.0


def measure_taps(terminal, cards, taps, warmup, out):
    samples_ns = []
    for index in range(warmup + taps):
        terminal_rig.key_and_place(terminal, terminal.reader.field, cards, index, out)
        started_ns = time.perf_counter_ns()
        answered = terminal.present_card(0)
        elapsed_ns = time.perf_counter_ns() - started_ns
        terminal_rig.pull_and_require_accepted(terminal, terminal.reader.field, index, answered, out)
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
    args = terminal_rig.parse_arguments(__doc__.split("\n\n")[0], argv, taps=2000, cards=200, warmup=50,
                                        max_taps=1_000_000,
                                        dir_help="where the SQLite files go (default: a temporary folder)")

    master_key = os.urandom(32)      # a throwaway site for this run only
    with tempfile.TemporaryDirectory(prefix="ykt-tap-bench-", dir=args.dir) as data_dir:
        cards = terminal_rig.issue_cards(master_key, args.cards, NUMBERING)
        out = terminal_rig.Decisions()
        terminal = terminal_rig.offline_terminal(master_key, os.path.join(data_dir, "terminal"), open_reader("sim:"),
                                                 len(cards), NUMBERING, out)
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
