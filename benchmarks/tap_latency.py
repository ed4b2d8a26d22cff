"""Tap latency benchmark: milliseconds from polling a card to the decision, through a PN532 on a serial
line at 115200 baud (the emulator on a pseudo-terminal, with its wire and RF timing model).

Each timed tap is a canteen tap through the real POS shell (firmware.apps.pos_terminal.PosTerminal)
on the `pn532:` driver: InListPassiveTarget, read and MAC-check the identity (authenticate, read 4,
5, 6), read the tap counter (authenticate, read 8), the decision, the counter decrement on the card
(authenticate, decrement, transfer, read 8) and the journal commit (WAL, synchronous=FULL). The
terminal runs with no sync client and its accounts cached, so it decides offline; cards and amounts
are spread so no offline cap or repeat-tap prompt is hit, and every timed tap must be accepted.

The protocol floor of each tap is what the emulator's timing model charges for the same exchanges
(`Pn532Emulator.modelled_s`): every byte of command, ACK and answer at 10 bits per byte at the baud
rate, the PN532 firmware's 1.7 ms per command before its ACK (`pn532_emulator.PROCESSING_S`, measured
on a real chip: nfcpy issue #131), plus the MIFARE Classic datasheet's RF times. The emulator spends
the same times, so the ratio is against what a real PN532 at this baud rate could at best do. The comparison runs the same card exchanges
(card_io.read_card, card_io.count_tap) through nfcpy's own PN532 driver (the `nfcpy:` reader) on the
same emulator at the same baud rate; it has no decision and no journal, so it is the cheaper span.

    .venv/bin/python benchmarks/tap_latency.py [--taps 200] [--cards 20] [--warmup 5]

Prints one JSON line on stdout, progress on stderr. Limits: the emulator does not model a USB-serial
adapter's latency or firmware time that differs between commands, so a real reader may add a few ms;
numbers from a shared 2-core machine vary between runs.
"""
import json
import os
import sys
import tempfile
import time

from firmware.apps import card_io
from reader_drivers.base import open_reader
from simulators.pn532_emulator import Pn532Emulator

import terminal_rig  # benchmarks/: a script's own folder is on sys.path

BAUD = 115200
NUMBERING = terminal_rig.Numbering(terminal_id=11, merchant_id=4, first_card_number=710001,
                                   first_account_id=81001, first_uid=0x05000000)
POLL_TIMEOUT_MS = 1000            # the card is already in the field; this only bounds a lost card
PROGRESS_EVERY_TAPS = 50


def _progress(text):
    print(text, file=sys.stderr, flush=True)


def _p50_p95_ms(samples_s):
    ordered = sorted(samples_s)
    return terminal_rig.percentile(ordered, 0.50) * 1000.0, terminal_rig.percentile(ordered, 0.95) * 1000.0


def measure_pos_taps(emulator, terminal, cards, taps, warmup, out):
    """-> (tap seconds, floor seconds) per timed tap, through the POS shell on the pn532: driver."""
    tap_s, floor_s = [], []
    for index in range(warmup + taps):
        terminal_rig.key_and_place(terminal, emulator.field, cards, index, out)
        modelled_before_s = emulator.modelled_s
        started = time.perf_counter()
        answered = terminal.present_card(POLL_TIMEOUT_MS)
        elapsed = time.perf_counter() - started
        # The emulator accounts each exchange before its answer leaves: nothing of this tap is missing.
        modelled_s = emulator.modelled_s - modelled_before_s
        terminal_rig.pull_and_require_accepted(terminal, emulator.field, index, answered, out)
        if index >= warmup:
            tap_s.append(elapsed)
            floor_s.append(modelled_s)
            if len(tap_s) % PROGRESS_EVERY_TAPS == 0:
                _progress("pn532: %d/%d taps" % (len(tap_s), taps))
    return tap_s, floor_s


def measure_nfcpy_taps(emulator, reader, cards, sam, taps, warmup):
    """-> seconds per timed tap for the same card exchanges through nfcpy's PN532 driver."""
    tap_s = []
    for index in range(warmup + taps):
        emulator.field.place(cards[index % len(cards)])
        started = time.perf_counter()
        target = reader.poll(POLL_TIMEOUT_MS)
        if target is None:
            raise SystemExit("nfcpy tap %d: the card was not found" % index)
        view = card_io.read_card(reader, sam, target)
        card_io.count_tap(reader, sam, target, view.tap_counter, authenticated=True)   # as the POS does
        elapsed = time.perf_counter() - started
        emulator.field.pull()
        if index >= warmup:
            tap_s.append(elapsed)
            if len(tap_s) % PROGRESS_EVERY_TAPS == 0:
                _progress("nfcpy: %d/%d taps" % (len(tap_s), taps))
    return tap_s


def main(argv=None):
    args = terminal_rig.parse_arguments(__doc__.split("\n\n")[0], argv, taps=200, cards=20, warmup=5,
                                        max_taps=100_000,
                                        dir_help="where the terminal's SQLite files go (default: a temporary folder)")

    master_key = os.urandom(32)      # a throwaway site for this run only
    cards = terminal_rig.issue_cards(master_key, args.cards, NUMBERING)
    _progress("issued %d cards; PN532 emulator at %d baud" % (len(cards), BAUD))
    with tempfile.TemporaryDirectory(prefix="ykt-tap-latency-", dir=args.dir) as data_dir, \
            Pn532Emulator(baud=BAUD) as emulator:
        out = terminal_rig.Decisions()
        terminal = terminal_rig.offline_terminal(master_key, os.path.join(data_dir, "terminal"),
                                                 open_reader("pn532:%s?baud=%d" % (emulator.path, BAUD)),
                                                 len(cards), NUMBERING, out)
        try:
            tap_s, floor_s = measure_pos_taps(emulator, terminal, cards, args.taps, args.warmup, out)
            sam = terminal.sam
        finally:
            terminal.reader.close()
            terminal.close()
        with open_reader("nfcpy:tty:%s?baud=%d" % (emulator.path, BAUD)) as nfcpy_reader:
            nfcpy_s = measure_nfcpy_taps(emulator, nfcpy_reader, cards, sam, args.taps, args.warmup)

    p50_ms, p95_ms = _p50_p95_ms(tap_s)
    floor_p50_ms, floor_p95_ms = _p50_p95_ms(floor_s)
    nfcpy_p50_ms, nfcpy_p95_ms = _p50_p95_ms(nfcpy_s)
    print(json.dumps({
        "benchmark": "tap_latency",
        "taps": len(tap_s),
        "baud": BAUD,
        "p50_ms": round(p50_ms, 2),
        "p95_ms": round(p95_ms, 2),
        "floor_p50_ms": round(floor_p50_ms, 2),
        "floor_p95_ms": round(floor_p95_ms, 2),
        "ratio_p95": round(p95_ms / floor_p95_ms, 3),
        "nfcpy_p50_ms": round(nfcpy_p50_ms, 2),
        "nfcpy_p95_ms": round(nfcpy_p95_ms, 2),
        "reader": "pn532:",
        "cards": args.cards,
        "python": "%d.%d.%d" % sys.version_info[:3],
    }))


if __name__ == "__main__":
    main()
