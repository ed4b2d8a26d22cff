"""The offline canteen terminal both tap benchmarks time: a throwaway site's issued cards, a POS shell
(firmware.apps.pos_terminal.PosTerminal) provisioned for it with every account's balance cached, and
the keyed-amount tap that must be accepted.

Imported by benchmarks/tap_cpu.py and benchmarks/tap_latency.py, which run as scripts (a script's own
folder is on sys.path). Limits: the terminal has no sync client, so it decides offline; a run keeps
to MAX_TAPS_PER_CARD taps per card so the default offline cap per account is never reached.
"""
import argparse
import collections
import json

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.core import card_layout, pos, sam as sam_module, wallets
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard

BALANCE_FEN = 50_000_000          # far above anything the run spends
MAX_TAPS_PER_CARD = 15            # stays under the default offline cap per account at a terminal
MAX_AMOUNT_FEN = 1000
MAX_CARDS = 10_000

# Each benchmark numbers its own terminal, cards and accounts, so their runs never look alike.
Numbering = collections.namedtuple(
    "Numbering", "terminal_id merchant_id first_card_number first_account_id first_uid")


class Decisions:
    """The terminal's output stream: keeps the last decision line, drops the rest."""

    def __init__(self):
        self.last = None

    def write(self, text):
        if '"decision"' in text:
            self.last = json.loads(text)

    def flush(self):
        pass


def percentile(sorted_values, fraction):
    index = min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def parse_arguments(description, argv, taps, cards, warmup, max_taps, dir_help):
    """--taps, --cards, --warmup and --dir with this benchmark's defaults; refuses a run that would
    reach the offline cap."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--taps", type=int, default=taps)
    parser.add_argument("--cards", type=int, default=cards)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--dir", help=dir_help)
    args = parser.parse_args(argv)
    if not 0 < args.taps <= max_taps or not 0 < args.cards <= MAX_CARDS or args.warmup < 0:
        parser.error("--taps 1..%d, --cards 1..%d, --warmup >= 0" % (max_taps, MAX_CARDS))
    if (args.taps + args.warmup) > args.cards * MAX_TAPS_PER_CARD:
        parser.error("more than %d taps per card would reach the offline cap: raise --cards" % MAX_TAPS_PER_CARD)
    return args


def issue_cards(master_key, count, numbering):
    """Blank cards issued on the in-process sim: reader (fast); the benchmark's own field takes them after."""
    issuer = sam_module.SoftwareSAM(sam_module.site_purpose_keys(master_key, include_issuer=True))
    reader = open_reader("sim:")
    cards = []
    for index in range(count):
        card = ClassicCard((numbering.first_uid + index).to_bytes(4, "big"))
        reader.field.place(card)
        identity = card_layout.Identity(numbering.first_card_number + index, numbering.first_account_id + index, 1,
                                        card_layout.HOLDER_STUDENT, 20991231)
        card_io.issue_card(reader, issuer, reader.poll(0), identity, "测试%d" % index)
        reader.field.pull()
        cards.append(card)
    return cards


def offline_terminal(master_key, data_dir, reader, account_count, numbering, out):
    """A canteen POS shell on `reader` with no sync client and the first `account_count` accounts cached."""
    keys = sam_module.site_purpose_keys(master_key)
    provisioning = {
        "terminal_id": numbering.terminal_id, "merchant_id": numbering.merchant_id,
        "category": wallets.CATEGORY_CANTEEN,
        "terminal_key": sam_module.terminal_key(master_key, numbering.terminal_id).hex(),
        "card_key_a": keys[sam_module.CARD_KEY_A].hex(), "card_mac": keys[sam_module.CARD_MAC].hex(),
    }
    terminal = PosTerminal(provisioning, data_dir, reader, out=out, display=False, sync=False)
    rows = [[numbering.first_account_id + index, "main", BALANCE_FEN, 0, None, None]
            for index in range(account_count)]
    terminal.store.apply_answer({"acked_seq": 0, "balances": {"version": 1, "rows": rows}},
                                today_yyyymmdd=0, terminal_id=numbering.terminal_id)
    return terminal


def key_and_place(terminal, field, cards, index, out):
    """Tap `index`: key its amount and place its card; the caller times terminal.present_card."""
    # Consecutive taps differ in card and amount: never the "same card, same amount" prompt.
    terminal.feed(pos.AmountKeyed(1 + index % MAX_AMOUNT_FEN))
    field.place(cards[index % len(cards)])
    out.last = None


def pull_and_require_accepted(terminal, field, index, answered, out):
    """Pull the card; a tap that was not accepted aborts the run (its time would be some other path's)."""
    field.pull()
    if not answered or out.last is None or not out.last["accepted"]:
        raise SystemExit("tap %d was not accepted: %r (state %s)" % (index, out.last, terminal.machine.state))
