"""Activation benchmark: seconds from the tap of an old card to «卡片激活成功» on the activation unit (激活机),
through a PN532 on a serial line at 115200 baud (the emulator on a pseudo-terminal, with its wire and
RF timing model), beside the protocol floor of the same exchanges and the prompts the unit speaks.

Each timed activation is one tap of a fresh old-system card (simulators/legacy_campus.py: a seeded
campus; only readable, non-lost cards with no oddity on the card itself, so every tap is the same 59
card commands) through the real shell (firmware.apps.activation_terminal.ActivationTerminal) on the
`pn532:` driver: the poll (InListPassiveTarget), read_old_card, the ticket from the unit's cache,
lock_purses, the journal record (WAL, synchronous=FULL), write_identity (legacy_card_io). The unit
runs offline (no sync client, its first-sync answer applied and its ticket cache filled), with its
voice on. Each card image is a private copy placed in the card slot by a scripted tap
(run_line({"card": path})), so it is written back as the card takes each write. Every timed tap
must be accepted with reason "activated", or the run stops with the decision line.

What is timed: from just before the shell polls the reader (its present_card, called by the
scripted tap) to the moment it writes its decision line. Loading the card image into the slot
before, and pulling it after, are outside. (The decision line's own elapsed_ms starts after the
poll's answer, so it leaves the poll out; it is not used here.)

The protocol floor of each tap is what the emulator's timing model charges for the same exchanges
(the change of `Pn532Emulator.modelled_s` over the tap): every byte of command, ACK and answer at 10
bits per byte at the baud rate, the PN532 firmware's 1.7 ms per command before its ACK
(pn532_emulator.PROCESSING_S), plus the MIFARE Classic datasheet's RF times. The emulator spends the
same times, so the ratio is against what a real PN532 at this baud rate could at best do. The
comparison measured in the same run: the same three card steps called directly (legacy_card_io,
no shell, no journal, no ticket, no voice) on fresh cards through the same reader: the card work alone.

Voice (firmware/apps/voice.py): espeak-ng's Mandarin prompts into a sound sink directory, which
takes each prompt's real duration as a speaker does. first_prompt_s is how long «卡片激活中，请勿移开卡片»
lasts; spoken_success_*_s is the time from the tap to the START of «卡片激活成功» (the sink's start_s,
time.monotonic(), against the tap's start on the same clock). Prompts are never cut off, so the
success prompt waits for the first to end: it can start no earlier than first_prompt_s after the
tap. The unit is left idle (every prompt played) between taps, outside the timing.

    .venv/bin/python benchmarks/activation.py [--activations 40] [--warmup 3] [--no-voice]

Prints one JSON line on stdout (sorted keys), progress on stderr. aim_met: p95_s <= 3,
ratio_p95_vs_floor <= 1.3 and spoken_success_p95_s <= 3; with --no-voice the voice figures and
aim_met are null (the aim includes the voice). Limits: the emulator does not model a USB-serial
adapter's latency or firmware time that differs between commands, so a real reader may add a few
ms per command (59 of them here); the journal's fsync is whatever this machine's disk does; the
sound sink is not a sound card; numbers from a shared 2-core machine vary between runs.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from firmware.apps import legacy_card_io
from firmware.apps.activation_terminal import LEGACY_MASTER, ActivationTerminal, keys_from_provisioning, ticket_from
from firmware.apps.store import TerminalStore
from firmware.core import legacy_card, messages, sam as sam_module
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from reader_drivers.sim.field import BEFORE
from simulators import legacy_campus
from simulators.pn532_emulator import Pn532Emulator

import terminal_rig  # benchmarks/: a script's own folder is on sys.path

BAUD = 115200
SEED = 20260301                   # the old campus: a seed, so runs replay
TERMINAL_ID = 41
MERCHANT_ID = 12
TODAY_YYYYMMDD = 20260301
FIRST_CARD_NUMBER = 720001
FIRST_ACCOUNT_ID = 91001
HOLDER = {"teacher": 1, "student": 2, "temporary": 4}
CATEGORY = {"teacher": legacy_card.TEACHER, "student": legacy_card.STUDENT, "temporary": legacy_card.TEMPORARY}
# Oddities of the export that leave the card as a normal one (the others change what a tap does).
CARD_NEUTRAL_ODDITIES = {"water_unregistered", "missing_id_number"}
MAX_ACTIVATIONS = 2000
POLL_TIMEOUT_MS = 1000            # the card is already in the field; this only bounds a lost card
VOICE_IDLE_TIMEOUT_S = 20.0       # both prompts last under 4 s; this only bounds a stuck player
AIM_P95_S = 3.0
AIM_RATIO = 1.3
AIM_SPOKEN_S = 3.0
PROGRESS_EVERY = 10
ACTIVATING_TEXT = messages.text(messages.ACTIVATING, "zh")
ACTIVATED_TEXT = messages.text(messages.ACTIVATED, "zh")


def _progress(text):
    print(text, file=sys.stderr, flush=True)


def _p50_p95(samples):
    ordered = sorted(samples)
    return terminal_rig.percentile(ordered, 0.50), terminal_rig.percentile(ordered, 0.95)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activations", type=int, default=40,
                        help="timed activations, each of a fresh old card (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed activations first (default 3)")
    parser.add_argument("--no-voice", action="store_true",
                        help="run the unit without its voice and skip the voice figures (no espeak-ng needed)")
    parser.add_argument("--dir", help="where the campus, the unit's files and the sound sink go "
                                      "(default: a temporary folder; removed after the run)")
    args = parser.parse_args(argv)
    if not 0 < args.activations <= MAX_ACTIVATIONS or not 0 <= args.warmup <= MAX_ACTIVATIONS:
        parser.error("--activations 1..%d, --warmup 0..%d" % (MAX_ACTIVATIONS, MAX_ACTIVATIONS))
    return args


# --- the old campus and the unit --------------------------------------------------------------------

def normal_cards(campus_dir, wanted):
    """Generate an old campus with at least `wanted` normal cards -> their truth entries."""
    people = max(legacy_campus.PEOPLE_MIN, wanted + wanted // 4 + 12)
    legacy_campus.generate(campus_dir, people, SEED)
    with open(os.path.join(campus_dir, legacy_campus.TRUTH_JSON), encoding="utf-8") as stream:
        truth = json.load(stream)["cards"]
    cards = [card for card in truth
             if not card["lost"] and card["main_state"] != legacy_card.UNREADABLE
             and set(card["oddities"]) <= CARD_NEUTRAL_ODDITIES]
    if len(cards) < wanted:
        raise SystemExit("the campus of %d has %d normal cards, %d wanted" % (people, len(cards), wanted))
    return cards[:wanted]


def tickets_for(cards):
    """A ticket per card, as the server's cache pages give them."""
    return [{"serial": card["serial"], "category": CATEGORY[card["category"]], "card_number": FIRST_CARD_NUMBER + index,
             "generation": 1, "account_id": FIRST_ACCOUNT_ID + index, "holder_category": HOLDER[card["category"]],
             "expiry_yyyymmdd": 20301231, "name": card["name"]}
            for index, card in enumerate(cards)]


def provisioning(master_key):
    keys = sam_module.site_purpose_keys(master_key, include_issuer=True)
    keys[sam_module.TERMINAL] = sam_module.terminal_key(master_key, TERMINAL_ID)
    keys[LEGACY_MASTER] = legacy_campus.old_master_key(SEED)
    return {"terminal_id": TERMINAL_ID, "merchant_id": MERCHANT_ID, "category": 4, "server_url": None,
            "sam_keys": {purpose: key.hex() for purpose, key in keys.items()}}


def prepare_store(unit_dir, tickets):
    """The unit's journal as after its first sync, with its ticket cache filled."""
    os.makedirs(unit_dir)
    store = TerminalStore(os.path.join(unit_dir, "terminal.db"))
    try:
        store.apply_answer({"acked_seq": 0, "server_ms": 0, "config": None, "commands": [],
                            "deny": {"version": 1, "entries": [], "more": False},
                            "balances": {"version": 1, "more": False, "rows": []}}, TODAY_YYYYMMDD, TERMINAL_ID)
        store.save_tickets(tickets, 1)
    finally:
        store.close()


def copy_cards(campus_dir, cards, cards_dir):
    """A private copy of each card's image (the campus's stays as generated) -> their paths."""
    os.makedirs(cards_dir)
    paths = []
    for card in cards:
        path = os.path.join(cards_dir, os.path.basename(card["file"]))
        shutil.copy(os.path.join(campus_dir, card["file"]), path)
        paths.append(path)
    return paths


def open_voice(data_dir):
    from firmware.apps.voice import Voice, VoiceUnavailable   # only when the voice is wanted
    try:
        return Voice(os.path.join(data_dir, "voice-cache"), os.path.join(data_dir, "sound"), lang="zh")
    except VoiceUnavailable as error:
        raise SystemExit("%s (or run with --no-voice)" % error)


class TapRecorder:
    """The unit's output stream and a stopwatch around its poll: per tap, the start (perf_counter and
    monotonic), the modelled time before it, the decision line and the moment it was written, the
    card commands the field saw."""

    def __init__(self, emulator):
        self.emulator = emulator
        self.decision = self.decided_at = None
        self.started = self.started_monotonic = self.modelled_before = None
        self.commands = 0

    def attach(self, terminal):
        """Time `terminal`'s polls and count the card commands; returns a function that stops counting."""
        emulator = self.emulator
        original = terminal.present_card

        def timed_present_card(*args, **kwargs):
            self.modelled_before = emulator.modelled_s
            self.started_monotonic = time.monotonic()
            self.started = time.perf_counter()
            return original(*args, **kwargs)
        terminal.present_card = timed_present_card      # run_line's tap calls it through the instance
        return emulator.field.on_operation(self._count)

    def _count(self, _field, _number, _name, phase):
        if phase == BEFORE:
            self.commands += 1

    def write(self, text):
        if '"decision"' in text:
            self.decided_at = time.perf_counter()
            self.decision = json.loads(text)

    def flush(self):
        pass

    def arm(self):
        self.decision = self.decided_at = self.started = None
        self.commands = 0
        self.emulator.exchanges.clear()     # the emulator is idle between taps


class SinkReader:
    """The prompts the voice's sound sink played, read on from where the last call stopped."""

    def __init__(self, sink_dir):
        self.path = os.path.join(sink_dir, "played.jsonl")
        self.offset = 0

    def new_prompts(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as stream:
            stream.seek(self.offset)
            text = stream.read()
            self.offset = stream.tell()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- the timed parts --------------------------------------------------------------------------------

def measure_activations(terminal, recorder, voice, sink, paths, warmup):
    """-> per timed tap: (tap seconds, floor seconds, card commands, PN532 exchanges, spoken success
    seconds or None), through the shell on the pn532: driver."""
    samples = []
    timed = len(paths) - warmup
    for index, path in enumerate(paths):
        recorder.arm()
        terminal.run_line({"card": path, "tap_id": index})
        decision = recorder.decision
        if decision is None or recorder.started is None or not decision["accepted"] \
                or decision["reason"] != messages.ACTIVATED:
            raise SystemExit("activation %d (%s) was not accepted as activated: %r (state %s)"
                             % (index, os.path.basename(path), decision, terminal.machine.state))
        elapsed = recorder.decided_at - recorder.started
        floor = recorder.emulator.modelled_s - recorder.modelled_before
        spoken = None
        if voice is not None:
            if not voice.wait_idle(VOICE_IDLE_TIMEOUT_S):
                raise SystemExit("activation %d: the voice did not finish its prompts" % index)
            prompts = sink.new_prompts()
            if [prompt["text"] for prompt in prompts] != [ACTIVATING_TEXT, ACTIVATED_TEXT]:
                raise SystemExit("activation %d: the voice said %r" % (index, [p["text"] for p in prompts]))
            spoken = prompts[1]["start_s"] - recorder.started_monotonic
        if index >= warmup:
            samples.append((elapsed, floor, recorder.commands, len(recorder.emulator.exchanges), spoken))
            if len(samples) % PROGRESS_EVERY == 0 or len(samples) == timed:
                _progress("activation unit: %d/%d activations" % (len(samples), timed))
    return samples


def measure_card_steps(emulator, reader, provisioning_document, tickets, paths, warmup):
    """-> seconds per timed card: the three card steps called directly on the same reader."""
    sam, legacy_master = keys_from_provisioning(provisioning_document)
    samples = []
    for index, (path, entry) in enumerate(zip(paths, tickets)):
        ticket = ticket_from(entry)
        emulator.field.place(ClassicCard.load(path))
        started = time.perf_counter()
        target = reader.poll(POLL_TIMEOUT_MS)
        if target is None:
            raise SystemExit("card steps %d: the card was not found" % index)
        view = legacy_card_io.read_old_card(reader, legacy_master, sam, target)
        legacy_card_io.lock_purses(reader, legacy_master, target, expected=view)
        legacy_card_io.write_identity(reader, sam, target, ticket.identity, ticket.name)
        elapsed = time.perf_counter() - started
        emulator.field.pull()
        if index >= warmup:
            samples.append(elapsed)
    _progress("card steps alone: %d cards" % len(samples))
    return samples


def main(argv=None):
    args = parse_arguments(argv)
    count = args.warmup + args.activations
    master_key = os.urandom(32)      # a throwaway new site for this run only
    with tempfile.TemporaryDirectory(prefix="ykt-activation-", dir=args.dir) as data_dir, \
            Pn532Emulator(baud=BAUD) as emulator:
        campus_dir = os.path.join(data_dir, "campus")
        cards = normal_cards(campus_dir, 2 * count)          # half for the unit, half for the steps alone
        unit_cards, step_cards = cards[:count], cards[count:]
        tickets = tickets_for(cards)
        document = provisioning(master_key)
        unit_dir = os.path.join(data_dir, "unit")
        prepare_store(unit_dir, tickets[:count])
        unit_paths = copy_cards(campus_dir, unit_cards, os.path.join(data_dir, "cards"))
        step_paths = copy_cards(campus_dir, step_cards, os.path.join(data_dir, "cards-steps"))
        _progress("old campus: %d normal cards; PN532 emulator at %d baud; voice %s"
                  % (len(cards), BAUD, "off" if args.no_voice else "on (espeak-ng, sound sink)"))
        voice = None if args.no_voice else open_voice(data_dir)
        first_prompt_s = voice.duration_s(ACTIVATING_TEXT) if voice is not None else None
        reader = open_reader("pn532:%s?baud=%d" % (emulator.path, BAUD))
        try:
            recorder = TapRecorder(emulator)
            terminal = ActivationTerminal(document, unit_dir, reader, out=recorder, display=False, sync=False,
                                          card_slot=emulator.field, voice=voice)
            try:
                stop_counting = recorder.attach(terminal)
                try:
                    samples = measure_activations(terminal, recorder, voice,
                                                  SinkReader(os.path.join(data_dir, "sound")) if voice else None,
                                                  unit_paths, args.warmup)
                finally:
                    stop_counting()
            finally:
                terminal.close()            # closes the voice too
            steps_s = measure_card_steps(emulator, reader, document, tickets[count:], step_paths, args.warmup)
        finally:
            reader.close()

    tap_s = [sample[0] for sample in samples]
    floor_s = [sample[1] for sample in samples]
    commands = sorted(set(sample[2] for sample in samples))
    exchanges = sorted(set(sample[3] for sample in samples))
    p50_s, p95_s = _p50_p95(tap_s)
    floor_p50_s, floor_p95_s = _p50_p95(floor_s)
    steps_p50_s, steps_p95_s = _p50_p95(steps_s)
    ratio = p95_s / floor_p95_s
    spoken_p50_s = spoken_p95_s = aim_met = None
    if not args.no_voice:
        spoken_p50_s, spoken_p95_s = _p50_p95([sample[4] for sample in samples])
        aim_met = p95_s <= AIM_P95_S and ratio <= AIM_RATIO and spoken_p95_s <= AIM_SPOKEN_S

    def seconds(value):
        return None if value is None else round(value, 4)

    print(json.dumps({
        "benchmark": "activation",
        "activations": len(tap_s),
        "baud": BAUD,
        "p50_s": seconds(p50_s),
        "p95_s": seconds(p95_s),
        "floor_p50_s": seconds(floor_p50_s),
        "floor_p95_s": seconds(floor_p95_s),
        "ratio_p95_vs_floor": round(ratio, 3),
        "steps_p50_s": seconds(steps_p50_s),
        "steps_p95_s": seconds(steps_p95_s),
        "first_prompt_s": seconds(first_prompt_s),
        "spoken_success_p50_s": seconds(spoken_p50_s),
        "spoken_success_p95_s": seconds(spoken_p95_s),
        # one figure when every tap took the same commands (normal cards do), else the list seen
        "commands_per_activation": commands[0] if len(commands) == 1 else commands,
        "exchanges_per_activation": exchanges[0] if len(exchanges) == 1 else exchanges,
        "aim_met": aim_met,
        "reader": "pn532:",
        "voice": not args.no_voice,
        "python": "%d.%d.%d" % sys.version_info[:3],
    }, sort_keys=True))


if __name__ == "__main__":
    main()
