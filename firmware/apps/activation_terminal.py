"""The activation unit's shell (激活机): a reader, a journal and a voice around firmware.core.activation.

Thin on purpose, as pos_terminal.py: the core machine decides; this file turns reader results, the
ticket answer and script lines into its events, and carries out its actions:

    ReadOldCard        legacy_card_io.read_old_card (the old purses, and any new identity already on it)
    LookUpTicket       the server online (sync_client.activation_ticket, at most TICKET_TIMEOUT_S), else
                       the ticket cache the unit keeps (store.ticket, refreshed from the server); and
                       whether the serial is recorded already (this unit's journal, or the server)
    LockPurses         legacy_card_io.lock_purses (old key B; resumable)
    JournalActivation  store.append_activation: durable, once per old serial, before the card is written
    WriteIdentity      legacy_card_io.write_identity (issuer keys; resumable)
    Show/Beep/Outcome  JSON lines on stdout; Speak: the voice (firmware/apps/voice.py: espeak-ng
                       Mandarin, aplay on the device, a sound sink in tests) and a "speak" line

With the server away the unit still activates every card its ticket cache knows: the record waits in
the journal and the sync thread delivers it; the server books it by serial, once. A card the cache
does not know gets «暂时无法激活，请稍后再试» (nothing is written to it).

Scripted mode (tests, the demo), one JSON object per line (an optional "tap_id" is echoed):
    {"card": "cards/04a1b2c3.card"}                       tap that old card image
    {"card": "...", "pull_after": 5, "pull_done": false}  the card leaves at its 5th command
    {"sync": true} | {"tickets": true} | {"sleep_ms": 200}
Output: "decision" lines (exactly one per scripted tap: accepted, reason, seq, serial, card_number,
main_fen, water_fen, elapsed_ms from the tap to the decision), and, with display on, "show", "beep",
"speak", "sync"; "drained" at the end.
"""
import contextlib
import os
import sqlite3
import sys
import time
import traceback

from firmware.apps import legacy_card_io, provisioning as provisioning_keys
from firmware.apps.pos_terminal import DB_FILE, make_owner_only
from firmware.apps.store import StoreError, TerminalStore
from firmware.apps.sync_client import SharedClock
from firmware.apps.terminal_shell import SyncedShell, card_path, scripted_card
from firmware.core import activation, card_layout, legacy_card, messages, records, sam as sam_module
from reader_drivers.base import AuthenticationError, CardGone, ReaderError

LEGACY_MASTER = "legacy_master"         # provisioning purpose of the old system's master key
TAP_TIMEOUT_MS = 5000
MAX_EVENTS_PER_INPUT = 16
DEFAULT_SYNC_INTERVAL_MS = 5000
TICKET_REFRESH_MS = 60000
REMOVAL_POLL_MS = 100                   # --serve: how often a finished card is checked for leaving
REMOVAL_TIMEOUT_S = 60.0                # ... and for how long at most (then the next tap is served)               # the ticket cache is brought up to date this often while online


def keys_from_provisioning(document):
    """(SoftwareSAM with the terminal and issuer keys, the old master key): an activation unit writes
    new cards, and opens and locks the old purses."""
    wanted = (sam_module.TERMINAL, sam_module.CARD_KEY_A, sam_module.CARD_KEY_B, sam_module.CARD_MAC,
              LEGACY_MASTER)
    keys = provisioning_keys.purpose_keys(document, wanted)
    missing = [purpose for purpose in wanted if purpose not in keys]
    if missing:
        raise ValueError("provisioning file lacks keys: %s (is the terminal's merchant an activation "
                         "merchant, category 4?)" % ", ".join(missing))
    legacy_master = keys.pop(LEGACY_MASTER)
    return sam_module.SoftwareSAM(keys), legacy_master


def ticket_from(entry):
    """A ticket as the server or the cache gives it -> activation.Ticket."""
    identity = card_layout.Identity(entry["card_number"], entry["account_id"], entry["generation"],
                                    entry["holder_category"], entry["expiry_yyyymmdd"])
    return activation.Ticket(identity, entry["category"], entry["name"])


class ActivationTerminal(SyncedShell):
    def __init__(self, provisioning, data_dir, reader, lang="zh", out=None, display=True, sync=True,
                 server_url=None, cards_dir=None, sync_interval_ms=None, raw_ms=None, card_slot=None, voice=None,
                 beeper=None, face=None):
        make_owner_only(data_dir)
        provisioning = provisioning_keys.with_rotated_keys(provisioning, data_dir)   # its rotated keys, if any
        self.face = face            # firmware.apps.face.Face: the cardholder's screen, or None
        self.provisioning = provisioning
        self.terminal_id = provisioning["terminal_id"]
        self.reader = reader
        self.card_slot = card_slot if card_slot is not None else getattr(reader, "field", None)
        self.lang = lang
        self.out = out if out is not None else sys.stdout
        self.display = display
        self.cards_dir = cards_dir or os.path.join(data_dir, "cards")
        self.voice = voice                  # firmware.apps.voice.Voice or None
        self.beeper = beeper                # firmware.apps.beeper.Beeper or None
        self.sam, self._legacy_master = keys_from_provisioning(provisioning)
        db_path = os.path.join(data_dir, DB_FILE)
        self.store = TerminalStore(db_path)
        self.clock = SharedClock(self.store, raw_ms) if raw_ms else SharedClock(self.store)
        self.machine = activation.ActivationUnit({"terminal_id": self.terminal_id, "lang": lang})
        self._target = None
        self._view = None                   # the old card as this tap read it
        self._ticket_source = None          # "server" or "cache" once this tap looked its ticket up
        self._ticket_ms = None
        self._tap_id = None
        self._tap_started = None
        self._decisions = 0
        self._last_shown = None
        self._first_sync_seen = False
        self._tickets_at = None             # monotonic time of the last ticket refresh
        self._open_sync(db_path, server_url, sync, sync_interval_ms, DEFAULT_SYNC_INTERVAL_MS)
        if self.voice is not None:
            # spoken from the first tap on without waiting for synthesis
            self.voice.prepare([messages.text(code, lang) for code in (messages.ACTIVATING, messages.ACTIVATED,
                                                                       messages.ALREADY_ACTIVATED)])

    def _refresh_config(self):
        if self.sync_client is not None and self.sync_client.config_changed.is_set():
            self.sync_client.config_changed.clear()

    def _on_sync(self, result):
        SyncedShell._on_sync(self, result)
        if result.online and (self._tickets_at is None
                              or time.monotonic() - self._tickets_at > TICKET_REFRESH_MS / 1000.0):
            self.refresh_tickets()

    def refresh_tickets(self):
        """Bring the ticket cache up to date now; returns the tickets taken or None (server away)."""
        if self.sync_client is None:
            return None
        try:
            taken = self.sync_client.refresh_tickets()
        except StoreError as error:         # a malformed page or a full cache: keep what we have
            self.emit({"type": "tickets", "error": str(error)}, always=False)
            return None
        if taken is not None:
            self._tickets_at = time.monotonic()
            self.emit({"type": "tickets", "taken": taken}, always=False)
        return taken

    def close(self):
        self.stop_sync()
        if self.voice is not None:
            self.voice.close()
        self.store.close()

    # -- events in, actions out ------------------------------------------------------------------

    def feed(self, event):
        queue = [activation.Tick(self.clock.peek_ms()), event]
        handled = 0
        while queue:
            handled += 1
            assert handled <= MAX_EVENTS_PER_INPUT, "event loop did not settle"
            for action in self.machine.handle(queue.pop(0)):
                follow = self._execute(action)
                if follow is not None:
                    queue.append(follow)

    def _execute(self, action):
        kind = type(action)
        if kind is activation.Show:
            self._last_shown = action.message_code
            self.emit({"type": "show", "code": action.message_code,
                       "text": messages.text(action.message_code, self.lang, **action.fields)}, always=False)
        elif kind is activation.Speak:
            if self.voice is not None:
                self.voice.say(action.text)
            self.emit({"type": "speak", "text": action.text}, always=False)
        elif kind is activation.Beep:
            if self.beeper is not None:
                self.beeper.beep(action.kind)
            self.emit({"type": "beep", "kind": action.kind}, always=False)
        elif kind is activation.Outcome:
            self._emit_decision(action)
        elif kind is activation.ReadOldCard:
            return self._card_step(self._read, activation.OldCardReadFailed, "read_old_card")
        elif kind is activation.LookUpTicket:
            return self._look_up(action.serial)
        elif kind is activation.LockPurses:
            return self._card_step(self._lock, activation.LockFailed, "lock_purses")
        elif kind is activation.JournalActivation:
            return self._journal(action.record_fields)
        elif kind is activation.WriteIdentity:
            return self._card_step(lambda: self._write(action), activation.IdentityWriteFailed, "write_identity")
        else:
            raise AssertionError("unknown action %r" % (action,))
        return None

    def _emit_decision(self, outcome):
        self._decisions += 1
        line = {"type": "decision", "accepted": outcome.accepted, "reason": outcome.message_code, "seq": outcome.seq,
                "serial": outcome.serial, "card_number": outcome.card_number, "main_fen": outcome.main_fen,
                "water_fen": outcome.water_fen}
        if self._tap_started is not None:
            line["elapsed_ms"] = round((time.monotonic() - self._tap_started) * 1000, 1)
        if self._ticket_source is not None:       # where the ticket came from, and how long the server took
            line["ticket"] = self._ticket_source
            line["ticket_ms"] = self._ticket_ms
        if self._tap_id is not None:
            line["tap_id"] = self._tap_id
        self.emit(line)

    def _card_step(self, step, failed, name):
        try:
            return step()
        except (CardGone, AuthenticationError, ReaderError, card_layout.CardFormatError,
                legacy_card.LegacyCardError) as error:
            return failed(legacy_card_io.failure_reason(error))
        except Exception:               # a driver bug must not leave the tap stuck half-way
            print("读卡器异常 / unexpected reader failure during %s:" % name, file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return failed(activation.FAILURE_READER)

    def _read(self):
        self._view = legacy_card_io.read_old_card(self.reader, self._legacy_master, self.sam, self._target)
        return activation.OldCardRead(self._view)

    def _lock(self):
        # against what this tap read: a card spent since (another reader in between) is not locked, and
        # the record never names amounts the card no longer holds
        legacy_card_io.lock_purses(self.reader, self._legacy_master, self._target, expected=self._view)
        return activation.PursesLocked()

    def _write(self, action):
        legacy_card_io.write_identity(self.reader, self.sam, self._target, action.identity, action.name)
        return activation.IdentityWritten()

    def _look_up(self, serial):
        """The server when it answers in time, else the cache; recorded here or there (module text)."""
        started = time.monotonic()
        answer = self.sync_client.activation_ticket(serial, self._target.uid) if self.sync_client else None
        self._ticket_ms = round((time.monotonic() - started) * 1000, 1)
        journaled = self.store.activation_seq(serial) is not None
        if answer is not None:
            entry = answer["ticket"]
            journaled = journaled or answer["recorded"]
            self._ticket_source = "server"
        else:
            entry = self.store.ticket(serial)
            self._ticket_source = "cache"
            if entry is None:
                return activation.TicketLookupFailed("no ticket in the cache and no server")
        try:
            ticket = ticket_from(entry) if entry is not None else None
        except (KeyError, TypeError):
            ticket = None
        return activation.TicketFound(ticket, journaled)

    def _journal(self, record_fields):
        time_ms, floor_ms = self.clock.stamp_ms()
        try:
            seq, _new = self.store.append_activation(record_fields, time_ms, floor_ms)
        except (StoreError, sqlite3.Error, records.RecordError) as error:
            return activation.JournalFailed(str(error))
        self._wake.set()
        return activation.Journaled(seq)

    # -- inputs ----------------------------------------------------------------------------------

    def present_card(self, timeout_ms=TAP_TIMEOUT_MS):
        """Poll the reader; feed CardPresented when a card answers. Returns True when one did."""
        if not self._first_sync_seen:
            self._first_sync_seen = not self.store.needs_first_sync()
            if not self._first_sync_seen:
                # as a POS: a new journal numbers from seq 1, which the server may hold for this unit
                self._execute(activation.Show(messages.TERMINAL_NOT_SYNCED, {}))
                return False
        try:
            target = self.reader.poll(timeout_ms)
        except ReaderError:
            self._execute(activation.Show(messages.READER_ERROR, {}))
            return False
        if target is None:
            self._last_shown = "no_card"
            return False
        self._target = target
        self._tap_started = time.monotonic()
        self._ticket_source = self._ticket_ms = None
        self.feed(activation.CardPresented(target.uid))
        return True

    def idle_for_update(self):
        return self.machine.state == activation.IDLE

    def serve_once(self, timeout_ms=200, removal_timeout_s=REMOVAL_TIMEOUT_S):
        """One tap at the door (--serve): wait for a card, activate it, then wait until it leaves the
        field, so a card left lying on the reader is not activated (and announced) again and again."""
        if not self.present_card(timeout_ms):
            return False
        uid = self._target.uid
        deadline = time.monotonic() + removal_timeout_s
        while time.monotonic() < deadline:
            try:
                again = self.reader.poll(REMOVAL_POLL_MS)
            except ReaderError:
                break
            if again is None or again.uid != uid:
                break
            time.sleep(REMOVAL_POLL_MS / 1000.0)
        return True

    def run_line(self, line):
        self._tap_id = line.get("tap_id")
        if line.get("sync"):
            self.sync_now()
        if line.get("tickets"):
            self.refresh_tickets()
        if line.get("sleep_ms"):
            time.sleep(min(int(line["sleep_ms"]), 60000) / 1000.0)
        if "card" in line or line.get("tap"):
            self._tap(line)

    def _tap(self, line):
        card = line.get("card")
        with scripted_card(self.card_slot, card_path(self.cards_dir, card), line.get("pull_after"),
                           line.get("pull_done", True), self.reader) if card else contextlib.nullcontext():
            self._present_scripted()

    def _present_scripted(self):
        decisions_before = self._decisions
        try:
            self.present_card()
            if self._decisions == decisions_before:
                # a scripted tap always gets one decision line, even when no card answered
                self._decisions += 1
                self.emit({"type": "decision", "accepted": False, "reason": self._last_shown, "seq": None,
                           "serial": None, "card_number": None, "main_fen": None, "water_fen": None,
                           **({"tap_id": self._tap_id} if self._tap_id is not None else {})})
        finally:
            self._tap_started = None
