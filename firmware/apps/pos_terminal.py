"""The canteen POS shell: real input in, `firmware.core.pos` events out; its actions carried out here.

Thin on purpose. Decisions live in the core state machine; this file only
  - turns reader results, keys and script lines into events (`CardPresented`, `CardRead`, ...),
  - carries out actions: card steps through `firmware.apps.card_io`, the journal through
    `firmware.apps.store` (success is printed only after `Journaled`, i.e. after the commit),
    PIN checks through the sync client, display/beep/voice as JSON lines on stdout,
  - runs the sync client in a background thread with its own SQLite connection,
  - and, with a face (firmware/apps/face.py), keeps the screens told where the machine stands.

At the counter (`serve`, `ykt terminal --serve`): keys by name from the keypad's thread and the
screen's buttons (firmware/core/keypad.py turns them into AmountKeyed, DishChosen, PinEntered, ...),
payment codes from the scanner's thread, and the reader polled while an amount is due.

Scripted mode (tests, the demo, a cashier keyboard wedge): one JSON object per line (an optional
"tap_id" is echoed in the decision line), e.g.
    {"amount_fen": 1200, "card": "cards/04a1b2c3.card"}      key an amount, tap that card image
    {"dishes": ["rice", "pork"], "card": "04a1b2c3"}          dishes; a card by UID (in --cards-dir)
    {"card": "...", "pin": "123456"}                          PIN if the terminal asks for one
    {"card": "...", "confirm": true}                          cashier confirms a repeat tap
    {"card": "...", "pull_after": 3, "pull_done": false}      the card leaves at its 3rd command
    {"amount_fen": 800, "code": "YK1:..."}                    a payment code, as the scanner typed it
    {"amount_fen": 800, "scan": true}                         wait for the code scanner (--scanner)
    {"keys": ["1", "2", ".", "5", "enter"]}                   keypad keys by name (firmware/core/keypad.py)
    {"cancel": true} | {"sync": true} | {"sleep_ms": 200}
Card images go into the terminal's card slot (`card_slot=`, by default the sim: reader's field; test
rigs pass the PN532 emulator's field or a PC/SC card slot). Lines without "card" wait for a real tap. Output lines carry a "type": "decision"
(exactly one per scripted tap: seq, accepted, reason, amount_fen, balance_after_fen; an accepted
one is printed only once the record is committed; reason "no_card" when no card answered), and,
with display on, "show", "beep", "speak", "sync"; "drained" at the end.
"""
import contextlib
import json
import os
import queue
import sqlite3
import stat
import sys
import time
import traceback

from firmware.apps import card_io, provisioning as provisioning_keys
from firmware.apps.store import StoreError, TerminalStore
from firmware.apps.sync_client import SharedClock
from firmware.apps.terminal_shell import SyncedShell, card_path, scripted_card
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from firmware.core import card_layout, clock as clock_module, keypad, messages, paycode, pos, records, \
    sam as sam_module
from reader_drivers.base import AuthenticationError, CardGone, ReaderError

DB_FILE = "terminal.db"
TAP_TIMEOUT_MS = 5000
MAX_EVENTS_PER_INPUT = 64           # a runaway event loop is a bug: fail loudly
DEFAULT_SYNC_INTERVAL_MS = 5000
# Server configuration keys the POS machine takes over (same names on both sides).
SERVER_CONFIG_KEYS = ("offline_cap_count", "offline_cap_amount_fen", "double_tap_window_ms", "paycode_skew_ms")
SCAN_TIMEOUT_MS = 10000             # a scripted {"scan": true} waits this long for the scanner
SERVE_POLL_MS = 150                 # serve(): one reader poll, or the wait for a key, at most this long
FACE_PHASES = {pos.IDLE: "idle", pos.WAIT_CARD: "wait_card", pos.WAIT_PIN: "wait_pin",
               pos.WAIT_CONFIRM: "wait_confirm"}      # any other state: "busy" (a card or code under way)


def menu_of(dishes):
    """The dish menu of the server's configuration ({dish_id: [name, price_fen]}, set per till on the
    admin console), its malformed entries left out: a bad row must not stop the till; {} when none."""
    if not isinstance(dishes, dict):
        return {}
    return {dish_id: [entry[0], entry[1]] for dish_id, entry in dishes.items()
            if isinstance(dish_id, str) and isinstance(entry, (list, tuple)) and len(entry) == 2
            and isinstance(entry[0], str) and type(entry[1]) is int and entry[1] > 0}


def load_provisioning(path):
    """The JSON a technician gets from `ykt hall terminal-register --out F` (mode 0600, holds keys)."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    for name in ("terminal_id", "merchant_id", "category"):
        if not isinstance(document.get(name), int):
            raise ValueError("provisioning file lacks %s" % name)
    return document


def sam_from_provisioning(document):
    """Only the purpose keys a POS needs; key bytes never leave the key holder afterwards."""
    wanted = (sam_module.TERMINAL, sam_module.CARD_KEY_A, sam_module.CARD_MAC)
    keys = provisioning_keys.purpose_keys(document, wanted)
    missing = [purpose for purpose in wanted if purpose not in keys]
    if missing:
        raise ValueError("provisioning file lacks keys: %s" % ", ".join(missing))
    return sam_module.SoftwareSAM(keys)


def make_owner_only(data_dir):
    """The terminal's data directory 0700 and what is in it 0600/0700 (the journal holds card numbers
    and accounts); the journal file is made 0600 before SQLite opens it, and its WAL and SHM files
    take its mode. An existing directory is tightened, with one line on stderr."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    changed = 0
    for directory, _subdirectories, files in os.walk(data_dir):
        for entry in [directory] + [os.path.join(directory, name) for name in files]:
            mode = os.lstat(entry)
            if not stat.S_ISLNK(mode.st_mode) and stat.S_IMODE(mode.st_mode) & 0o077:
                os.chmod(entry, stat.S_IMODE(mode.st_mode) & 0o700)
                changed += 1
    if changed:
        print("终端数据目录权限已收紧为仅属主可读写（%d 项）/ terminal data directory made owner-only (%d entries): %s"
              % (changed, changed, data_dir), file=sys.stderr)
    try:
        os.close(os.open(os.path.join(data_dir, DB_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class PosTerminal(SyncedShell):
    def __init__(self, provisioning, data_dir, reader, lang="zh", out=None, display=True, sync=True,
                 server_url=None, cards_dir=None, sync_interval_ms=None, raw_ms=None, card_slot=None, scanner=None,
                 beeper=None, voice=None, face=None):
        make_owner_only(data_dir)
        provisioning = provisioning_keys.with_rotated_keys(provisioning, data_dir)   # its rotated keys, if any
        self.provisioning = provisioning
        self.terminal_id = provisioning["terminal_id"]
        self.reader = reader
        # Where scripted card images go: anything with VirtualField's place / pull / pull_after /
        # on_operation. The sim: reader's own field by default; test rigs pass the PN532 emulator's
        # field or a PC/SC card slot, so the same scripts run on every driver.
        self.card_slot = card_slot if card_slot is not None else getattr(reader, "field", None)
        self.lang = lang
        self.out = out if out is not None else sys.stdout
        self.display = display
        self.cards_dir = cards_dir or os.path.join(data_dir, "cards")
        self.sam = sam_from_provisioning(provisioning)
        db_path = os.path.join(data_dir, DB_FILE)
        self.store = TerminalStore(db_path)
        self.clock = SharedClock(self.store, raw_ms) if raw_ms else SharedClock(self.store)
        self.machine = pos.CanteenPos(self._machine_config())
        self.scanner = scanner          # firmware.apps.code_scanner: payment codes, or None
        self.beeper = beeper            # firmware.apps.beeper: the core's Beep as a sound, or None
        self.voice = voice              # firmware.apps.voice.Voice: the core's Speak aloud, or None
        self.face = face                # firmware.apps.face.Face: the screens, or None
        self.keys = keypad.KeyEntry(keypad.dish_shortcuts(self.machine.config["dishes"]))
        if face is not None:            # the menu the server last sent, else the provisioning file's
            face.set_menu(self.machine.config["dishes"], self.keys.dish_keys)
        self._paycode_keys = self._load_paycode_keys()
        self._remember_codes()
        self._remember_successes()
        self._target = None
        # The selection read_card last read in full: its counter sector is still authenticated.
        self._read_target = None
        self._online_seen = None
        self._decisions = 0            # decision lines printed so far
        self._tap_id = None            # the script's own id for the tap under way, echoed back
        self._code_credential = None   # the payment code under way: its credential once verified, else 0
        self._last_shown = None
        self._first_sync_seen = False  # once True it stays: a store never needs its first sync again
        self._lingering_uid = None     # serve(): the last tapped card, until it leaves the field
        self.reader_errors = 0         # the reader itself failed (not a card): reported in health
        self._open_sync(db_path, server_url, sync, sync_interval_ms, DEFAULT_SYNC_INTERVAL_MS)
        if self.sync_client is not None:
            self.sync_client.health_extra = lambda: {"reader_errors": self.reader_errors}
        self._show_last_tap()

    def _show_last_tap(self):
        """Show the last committed tap at start-up (上笔交易).

        Power can fail between the journal commit and the display: that tap is charged but nobody saw
        it succeed. Showing it after the restart lets the cashier see it was paid instead of asking
        the cardholder to tap (and pay) again.
        """
        last_seq = self.store.last_seq()
        rows = self.store.journal(from_seq=last_seq, limit=1) if last_seq else []
        if not rows:
            return
        fields = records.decode(bytes(rows[0][1]))
        values = {"seq": fields["seq"], "card_number": fields["card_number"], "amount_fen": fields["amount_fen"],
                  "time": clock_module.clock_text(fields["time_ms"], self.machine.config["utc_offset_min"])}
        if self.face is not None:
            self.face.restore_last_tap(fields["seq"], fields["amount_fen"], fields["card_number"], values["time"])
        self.emit({"type": "show", "code": messages.LAST_TAP, "seq": fields["seq"],
                   "text": messages.text(messages.LAST_TAP, self.lang, **values)}, always=False)

    # -- configuration -------------------------------------------------------------------------

    def _server_config(self):
        return self.store.config()

    def _machine_config(self):
        server = self._server_config()
        config = {"terminal_id": self.terminal_id, "merchant_id": self.provisioning["merchant_id"],
                  "category": self.provisioning["category"], "lang": self.lang,
                  "dishes": menu_of(server.get("dishes")) or self.provisioning.get("dishes") or {}}
        for key in SERVER_CONFIG_KEYS:
            if server.get(key) is not None:
                config[key] = server[key]
        return config

    def _refresh_config(self):
        """Take over the server's configuration once a sync (either thread) brought a new one: its
        limits, pay-code keys and this till's dish menu (keys and screen buttons with it)."""
        if self.sync_client is not None and self.sync_client.config_changed.is_set():
            self.sync_client.config_changed.clear()     # before reading: a newer one sets it again
            dishes_before = self.machine.config["dishes"]
            self.machine.config.update(self._machine_config())
            self._paycode_keys = self._load_paycode_keys()
            dishes = self.machine.config["dishes"]
            if dishes != dishes_before:
                self.keys.dish_keys = keypad.dish_shortcuts(dishes)
                if self.face is not None:
                    self.face.set_menu(dishes, self.keys.dish_keys)

    def _load_paycode_keys(self):
        """{key_id: Ed25519PublicKey} of the server's pay-code keys (the configuration's hex list)."""
        keys = {}
        for entry in self._server_config().get("paycode_keys") or ():
            try:
                key_id, public_hex = entry
                keys[int(key_id)] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
            except (TypeError, ValueError):
                continue                # a broken entry verifies nothing; the rest still do
        return keys

    def _remember_codes(self):
        """Fill the machine's replay cache from the journal: a restart forgets no accepted code."""
        now_ms = self.clock.peek_ms()
        window_ms = paycode.live_until_ms(0, self.machine.config["paycode_skew_ms"])
        for key in self.store.paycode_uses_since(now_ms - window_ms):
            self.machine.remember_code(tuple(key), now_ms)

    def _remember_successes(self):
        """The card payments of the repeat-tap window, from the journal: a restart (a power cut, an
        update) between a payment and a quick second tap of the same card must not charge it again
        without the cashier."""
        last_seq = self.store.last_seq()
        if not last_seq:
            return
        since_ms = self.clock.peek_ms() - self.machine.config["double_tap_window_ms"]
        for _seq, raw, _acked in self.store.journal(from_seq=max(1, last_seq - pos.RECENT_SUCCESSES + 1),
                                                    limit=pos.RECENT_SUCCESSES):
            fields = records.decode(bytes(raw))
            if fields["kind"] == records.KIND_PURCHASE and fields["time_ms"] >= since_ms:
                self.machine.remember_success(fields["card_number"], fields["amount_fen"], fields["time_ms"])

    def close(self):
        self.stop_sync()
        self.store.close()

    def _emit_decision(self, seq, accepted, reason, amount_fen, balance_after_fen, card_number):
        line = {"type": "decision", "seq": seq, "accepted": accepted, "reason": reason, "amount_fen": amount_fen,
                "balance_after_fen": balance_after_fen, "card_number": card_number}
        if self._tap_id is not None:
            line["tap_id"] = self._tap_id
        if self._code_credential is not None:           # paid (or refused) by code: which phone credential
            line["paid_by"] = "code"
            line["credential_id"] = self._code_credential
        self.emit(line)

    # -- events in, actions out ------------------------------------------------------------------

    def feed(self, event):
        """Feed one outside event (after a Tick and the current online state)."""
        online = bool(self.sync_client and self.sync_client.online)
        queue = [pos.Tick(self.clock.peek_ms())]
        if online != self._online_seen:
            self._online_seen = online
            queue.append(pos.SyncAnswered(online))
        queue.append(event)
        handled = 0
        while queue:
            handled += 1
            assert handled <= MAX_EVENTS_PER_INPUT, "event loop did not settle"
            for action in self.machine.handle(queue.pop(0)):
                follow = self._execute(action)
                if follow is not None:
                    # A card read or a PIN check takes time: the machine times what follows (the
                    # PIN prompt's timeout, the repeat window) from when the result came back.
                    queue.append(pos.Tick(self.clock.peek_ms()))
                    queue.append(follow)
        self._show_moment()

    def _show_moment(self):
        """The screens' view of where the machine stands: its phase, what is due, what the cashier is
        typing, and how many PIN digits (never which) are typed."""
        if self.face is None:
            return
        state = self.machine.state
        waiting_pin = state == pos.WAIT_PIN
        self.face.set(phase=FACE_PHASES.get(state, "busy"),
                      amount_fen=self.machine.amount_fen if state != pos.IDLE else None,
                      entry=self.keys.entry, pin_digits=self.keys.pin_digits if waiting_pin else None)

    def _execute(self, action):
        kind = type(action)
        if kind is pos.Show:
            self._last_shown = action.message_code
            self.emit({"type": "show", "code": action.message_code,
                       "text": messages.text(action.message_code, self.lang, **action.fields)}, always=False)
        elif kind is pos.Beep:
            if self.beeper is not None:
                self.beeper.beep(action.kind)
            self.emit({"type": "beep", "kind": action.kind}, always=False)
        elif kind is pos.Speak:
            if self.voice is not None:
                self.voice.say(action.text)
            self.emit({"type": "speak", "text": action.text}, always=False)
        elif kind is pos.Outcome:
            self._decisions += 1
            self._emit_decision(action.seq, action.accepted, action.message_code, action.amount_fen,
                                action.balance_after_fen, action.card_number)
        elif kind is pos.ReadCard:
            return self._read_card()
        elif kind is pos.CountTap:
            return self._count_tap(action.expected)
        elif kind is pos.Journal:
            return self._journal(action.record_fields)
        elif kind is pos.VerifyCode:
            return self._verify_code(action.code)
        elif kind is pos.ClaimCode:
            result = self.sync_client.claim_paycode(*action) if self.sync_client is not None else None
            return pos.CodeClaimed(result)
        elif kind is pos.JournalPayCode:
            return self._journal(action.record_fields, paycode=True)
        elif kind is pos.CheckPin:
            answer = self.sync_client.check_pin(action.account_id, action.pin, action.amount_fen) \
                if self.sync_client is not None else None
            return pos.PinChecked(*answer) if answer is not None else pos.PinChecked(None, None, None)
        else:
            raise AssertionError("unknown action %r" % (action,))
        return None

    def _read_card(self):
        try:
            view = card_io.read_card(self.reader, self.sam, self._target)
        except CardGone:
            return pos.CardReadFailed(pos.READ_FAILURE_GONE)
        except card_layout.CardFormatError:
            return pos.CardReadFailed(pos.READ_FAILURE_FORMAT)
        except AuthenticationError:
            return pos.CardReadFailed(pos.READ_FAILURE_AUTH)
        except ReaderError:
            self.reader_errors += 1
            return pos.CardReadFailed(pos.READ_FAILURE_READER)
        except Exception:               # a driver bug must not leave the tap stuck half-way
            self._log_fault("read_card")
            self.reader_errors += 1
            return pos.CardReadFailed(pos.READ_FAILURE_READER)
        self._read_target = self._target
        identity = view.identity
        today = clock_module.date_yyyymmdd(self.clock.peek_ms(), self.machine.config["utc_offset_min"])
        facts = pos.TapFacts(*self.store.tap_facts(identity.card_number, identity.generation, identity.account_id,
                                                    self.terminal_id, today))
        return pos.CardRead(view, facts)

    def _count_tap(self, expected):
        # Straight on from read_card with no poll in between (a PIN check or the cashier's
        # confirmation sends nothing to the reader): the counter sector needs no new authentication.
        authenticated, self._read_target = self._read_target is self._target, None
        try:
            return pos.TapCounted(card_io.count_tap(self.reader, self.sam, self._target, expected, authenticated))
        except CardGone:
            return pos.TapCountFailed(pos.READ_FAILURE_GONE)
        except card_layout.CardFormatError:
            return pos.TapCountFailed(pos.READ_FAILURE_FORMAT)
        except ReaderError:
            return pos.TapCountFailed(pos.READ_FAILURE_READER)
        except Exception:               # as in _read_card: never stuck counting; nothing is journaled
            self._log_fault("count_tap")
            return pos.TapCountFailed(pos.READ_FAILURE_READER)

    def _log_fault(self, step):
        """An exception the reader interface does not promise: the traceback goes to stderr (the
        service log) while the cashier sees READER_ERROR."""
        print("读卡器异常 / unexpected reader failure during %s:" % step, file=sys.stderr)
        traceback.print_exc(file=sys.stderr)

    def _verify_code(self, code):
        """Both Ed25519 signatures: the certificate under a pay-code key the server sent, the code under
        the phone key it certifies. Then the code's facts from the store."""
        self._code_credential = code.cert.credential_id
        (key_id, cert_message, cert_signature), (phone_key, code_message, code_signature) = paycode.signed_parts(code)
        server_key = self._paycode_keys.get(key_id)
        try:
            if server_key is None:
                raise InvalidSignature()
            server_key.verify(cert_signature, cert_message)
            Ed25519PublicKey.from_public_bytes(phone_key).verify(code_signature, code_message)
        except (InvalidSignature, ValueError):
            return pos.CodeVerified(False, None)
        today = clock_module.date_yyyymmdd(self.clock.peek_ms(), self.machine.config["utc_offset_min"])
        return pos.CodeVerified(True, self.store.paycode_facts(code.cert, self.terminal_id, today))

    def _journal(self, record_fields, paycode=False):
        time_ms, floor_ms = self.clock.stamp_ms()
        try:
            append = self.store.append_paycode if paycode else self.store.append_purchase
            seq = append(record_fields, time_ms, floor_ms)
        except (StoreError, sqlite3.Error, records.RecordError) as error:
            return pos.JournalFailed(str(error))
        self._wake.set()        # a new record: sync soon rather than at the next interval
        return pos.Journaled(seq)

    # -- inputs ----------------------------------------------------------------------------------

    def present_card(self, timeout_ms=TAP_TIMEOUT_MS):
        """Poll the reader; feed CardPresented when a card answers. Returns True when one did."""
        self._read_target = None        # a poll selects the card anew: its authentication is gone
        if not self._first_sync_seen:
            self._first_sync_seen = not self.store.needs_first_sync()
            if not self._first_sync_seen:
                # A new or replaced journal would number from seq 1, which the server may hold for
                # this terminal already: no card is read (or counted) before one answer applied.
                self._execute(pos.Show(messages.TERMINAL_NOT_SYNCED, self.machine.due_fields()))
                return False
        try:
            target = self.reader.poll(timeout_ms)
        except ReaderError:
            # No Target to go on (a silent chip, a reader that gave no UID): say so, state unchanged.
            self.reader_errors += 1
            self._execute(pos.Show(messages.READER_ERROR, self.machine.due_fields()))
            return False
        if target is None:
            self._last_shown = "no_card"
            return False
        self._target = target
        self.feed(pos.CardPresented(target.uid))
        return True

    def run_line(self, line):
        """One scripted step (see the module docstring)."""
        self._refresh_config()
        self._tap_id = line.get("tap_id")
        if line.get("cancel"):
            self.feed(pos.Cancel())
        if line.get("sync"):
            self.sync_now()
        if line.get("sleep_ms"):
            time.sleep(min(int(line["sleep_ms"]), 60000) / 1000.0)
        for key in line.get("keys") or ():
            self.press(key)
        if "amount_fen" in line:
            self.feed(pos.AmountKeyed(line["amount_fen"]))
        for dish_id in line.get("dishes") or ():
            self.feed(pos.DishChosen(dish_id))
        if "card" in line or line.get("tap"):
            self._tap(line)
        elif "code" in line or line.get("scan"):
            self._scan(line)

    def _tap(self, line):
        card = line.get("card")
        with scripted_card(self.card_slot, card_path(self.cards_dir, card), line.get("pull_after"),
                           line.get("pull_done", True), self.reader) if card else contextlib.nullcontext():
            decisions_before = self._decisions
            self.present_card()
            self._resolve_prompts(line)
            if self._decisions == decisions_before:
                # A scripted tap always gets one decision line, even when the machine refused it
                # before any card decision (no amount keyed, no card in the field).
                self._decisions += 1
                self._emit_decision(None, False, self._last_shown, self.machine.amount_fen, None, None)

    def scan_code(self, text):
        """A payment code from the scanner (or typed by a wedge): one decision."""
        if not self._first_sync_seen:
            self._first_sync_seen = not self.store.needs_first_sync()
            if not self._first_sync_seen:
                self._execute(pos.Show(messages.TERMINAL_NOT_SYNCED, self.machine.due_fields()))
                return False
        self._code_credential = 0              # named once the code is verified (_verify_code)
        try:
            self.feed(pos.CodeScanned(text))
        finally:
            self._code_credential = None
        return True

    def _scan(self, line):
        """A scripted code ("code") or the next one from the scanner ("scan"): exactly one decision line."""
        decisions_before = self._decisions
        self._last_shown = "no_code"
        text = line.get("code")
        if text is None and self.scanner is not None:
            from firmware.apps.code_scanner import ScanError
            try:
                text = self.scanner.read_code(int(line.get("timeout_ms", SCAN_TIMEOUT_MS)))
            except ScanError as error:      # a garbled line: shown as what it is, never fed on as a code
                self._execute(pos.Show(messages.PAYCODE_INVALID, self.machine.due_fields()))
                self.emit({"type": "scan_error", "error": str(error)}, always=False)
        if text is not None:
            self.scan_code(text if isinstance(text, str) else "")
            self._resolve_prompts(line)
        if self._decisions == decisions_before:
            self._decisions += 1
            self._emit_decision(None, False, self._last_shown, self.machine.amount_fen, None, None)

    # -- the counter: keys, codes and taps as they come -------------------------------------------

    def idle_for_update(self):
        return self.machine.state == pos.IDLE

    def press(self, key):
        """One key by name (firmware/core/keypad.py): from the keypad, or a button on the screen."""
        for event in self.keys.press(key, self.machine.state):
            self.feed(event)
        self._show_moment()

    def serve(self, inputs, stop, poll_ms=SERVE_POLL_MS):
        """Serve the counter until `stop` is set. `inputs` is the bounded queue the keypad's and the
        scanner's threads and the screen's buttons put into: a key name, or ("code", text) for a
        payment code. While an amount is due the reader is polled between inputs; otherwise the
        machine gets a Tick now and then, so a PIN prompt times out with nobody pressing anything."""
        while not stop.is_set():
            if self.leaving_for_update():
                return                  # between orders: the supervisor starts the new version
            self._refresh_config()
            waiting = self.machine.state == pos.WAIT_CARD
            watching = self._lingering_uid is not None and self.machine.state == pos.IDLE
            try:
                item = inputs.get(timeout=0 if waiting or watching else poll_ms / 1000.0)
            except queue.Empty:
                item = None
            if isinstance(item, tuple):
                self.scan_code(item[1])
            elif item is not None:
                self.press(item)
            elif waiting and self._lingering_uid is None:
                if self.present_card(poll_ms):
                    self._lingering_uid = self._target.uid
            elif waiting or watching:
                self._watch_lift(poll_ms)
            else:
                self.feed(pos.Tick(self.clock.peek_ms()))

    def _watch_lift(self, poll_ms):
        """Poll until the card of the last tap has left the field. Until then it is not taken again:
        the next order must not be charged to a card its holder left lying on the reader (a repeat
        within the window would only ask the cashier). Watched between orders too, so a holder who
        lifts the card and taps again is served at once."""
        try:
            target = self.reader.poll(poll_ms)
        except ReaderError:
            return
        if target is None or target.uid != self._lingering_uid:
            self._lingering_uid = None

    def _resolve_prompts(self, line):
        pins = line.get("pin")
        pins = list(pins) if isinstance(pins, list) else ([pins] if pins else [])
        for _ in range(8):              # bounded: a PIN retry or a confirmation, then done
            state = self.machine.state
            if state == pos.WAIT_CONFIRM:
                self.feed(pos.CashierConfirmed() if line.get("confirm") else pos.Cancel())
            elif state == pos.WAIT_PIN:
                self.feed(pos.PinEntered(pins.pop(0)) if pins else pos.Cancel())
            else:
                return
