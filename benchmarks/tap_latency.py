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
rate, plus the MIFARE Classic datasheet's RF times. The comparison runs the same card exchanges
(card_io.read_card, card_io.count_tap) through nfcpy's own PN532 driver (the `nfcpy:` reader) on the
same emulator at the same baud rate; it has no decision and no journal, so it is the cheaper span.

    .venv/bin/python benchmarks/tap_latency.py [--taps 200] [--cards 20] [--warmup 5]

Prints one JSON line on stdout, progress on stderr. Limits: the emulator does not model the PN532
firmware's own processing time or a USB-serial adapter's latency, so a real reader adds a few ms;
numbers from a shared 2-core machine vary between runs.
"""
import argparse
import json
import os
import sys
import tempfile
import time

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.core import card_layout, pos, sam as sam_module, wallets
from reader_drivers.base import open_reader
from simulators.classic_card import ClassicCard
from simulators.pn532_emulator import Pn532Emulator

BAUD = 115200
TERMINAL_ID = 11
MERCHANT_ID = 4
FIRST_CARD_NUMBER = 710001
FIRST_ACCOUNT_ID = 81001
BALANCE_FEN = 50_000_000          # far above anything the run spends
MAX_TAPS_PER_CARD = 15            # stays under the default offline cap per account at a terminal
MAX_AMOUNT_FEN = 1000
POLL_TIMEOUT_MS = 1000            # the card is already in the field; this only bounds a lost card
PROGRESS_EVERY_TAPS = 50


class _Decisions:
    """The terminal's output stream: keeps the last decision line, drops the rest."""

    def __init__(self):
        self.last = None

    def write(self, text):
        if '"decision"' in text:
            self.last = json.loads(text)

    def flush(self):
        pass


def _progress(text):
    print(text, file=sys.stderr, flush=True)


def _percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _p50_p95_ms(samples_s):
    ordered = sorted(samples_s)
    return _percentile(ordered, 0.50) * 1000.0, _percentile(ordered, 0.95) * 1000.0


def _issue_cards(master_key, count):
    """Blank cards issued on the in-process sim: reader (fast); the emulator's field takes them after."""
    issuer = sam_module.SoftwareSAM(sam_module.site_purpose_keys(master_key, include_issuer=True))
    reader = open_reader("sim:")
    cards = []
    for index in range(count):
        card = ClassicCard((0x05000000 + index).to_bytes(4, "big"))
        reader.field.place(card)
        identity = card_layout.Identity(FIRST_CARD_NUMBER + index, FIRST_ACCOUNT_ID + index, 1,
                                        card_layout.HOLDER_STUDENT, 20991231)
        card_io.issue_card(reader, issuer, reader.poll(0), identity, "测试%d" % index)
        reader.field.pull()
        cards.append(card)
    return cards


def _terminal(master_key, data_dir, reader, account_count, out):
    keys = sam_module.site_purpose_keys(master_key)
    provisioning = {
        "terminal_id": TERMINAL_ID, "merchant_id": MERCHANT_ID, "category": wallets.CATEGORY_CANTEEN,
        "terminal_key": sam_module.terminal_key(master_key, TERMINAL_ID).hex(),
        "card_key_a": keys[sam_module.CARD_KEY_A].hex(), "card_mac": keys[sam_module.CARD_MAC].hex(),
    }
    terminal = PosTerminal(provisioning, data_dir, reader, out=out, display=False, sync=False)
    rows = [[FIRST_ACCOUNT_ID + index, "main", BALANCE_FEN, 0, None, None] for index in range(account_count)]
    terminal.store.apply_answer({"acked_seq": 0, "balances": {"version": 1, "rows": rows}},
                                today_yyyymmdd=0, terminal_id=TERMINAL_ID)
    return terminal


def measure_pos_taps(emulator, terminal, cards, taps, warmup, out):
    """-> (tap seconds, floor seconds) per timed tap, through the POS shell on the pn532: driver."""
    tap_s, floor_s = [], []
    for index in range(warmup + taps):
        card = cards[index % len(cards)]
        # Consecutive taps differ in card and amount: never the "same card, same amount" prompt.
        terminal.feed(pos.AmountKeyed(1 + index % MAX_AMOUNT_FEN))
        emulator.field.place(card)
        out.last = None
        modelled_before_s = emulator.modelled_s
        started = time.perf_counter()
        answered = terminal.present_card(POLL_TIMEOUT_MS)
        elapsed = time.perf_counter() - started
        # The emulator accounts each exchange before its answer leaves: nothing of this tap is missing.
        modelled_s = emulator.modelled_s - modelled_before_s
        emulator.field.pull()
        if not answered or out.last is None or not out.last["accepted"]:
            raise SystemExit("tap %d was not accepted: %r (state %s)" % (index, out.last, terminal.machine.state))
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
        card_io.count_tap(reader, sam, target, view.tap_counter)
        elapsed = time.perf_counter() - started
        emulator.field.pull()
        if index >= warmup:
            tap_s.append(elapsed)
            if len(tap_s) % PROGRESS_EVERY_TAPS == 0:
                _progress("nfcpy: %d/%d taps" % (len(tap_s), taps))
    return tap_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", type=int, default=200)
    parser.add_argument("--cards", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dir", help="where the terminal's SQLite files go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not 0 < args.taps <= 100_000 or not 0 < args.cards <= 10_000 or args.warmup < 0:
        parser.error("--taps 1..100000, --cards 1..10000, --warmup >= 0")
    if (args.taps + args.warmup) > args.cards * MAX_TAPS_PER_CARD:
        parser.error("more than %d taps per card would reach the offline cap: raise --cards" % MAX_TAPS_PER_CARD)

    master_key = os.urandom(32)      # a throwaway site for this run only
    cards = _issue_cards(master_key, args.cards)
    _progress("issued %d cards; PN532 emulator at %d baud" % (len(cards), BAUD))
    with tempfile.TemporaryDirectory(prefix="ykt-tap-latency-", dir=args.dir) as data_dir, \
            Pn532Emulator(baud=BAUD) as emulator:
        out = _Decisions()
        terminal = _terminal(master_key, os.path.join(data_dir, "terminal"),
                             open_reader("pn532:%s?baud=%d" % (emulator.path, BAUD)), len(cards), out)
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
