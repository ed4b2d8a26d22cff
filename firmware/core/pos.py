"""The canteen POS (消费机) as a sans-IO state machine: events in, actions out (h11 style).

The shell (firmware/apps/pos_terminal.py) turns keys, reader results, journal commits and sync
answers into events, feeds them to `CanteenPos.handle(event)` and carries out the actions it gets
back. Nothing here touches the reader, the disk, the network or a clock.

One tap, the happy path:

    IDLE --AmountKeyed/DishChosen--> WAIT_CARD --CardPresented--> READING  [ReadCard]
    READING --CardRead--> (decide) --Accept--> COUNTING                    [CountTap]
    COUNTING --TapCounted--> JOURNALING                                    [Journal]
    JOURNALING --Journaled--> IDLE       [Show(ACCEPTED), Beep, Speak, Outcome] only now

A payment code (付款码, firmware/core/paycode.py) instead of a card:

    WAIT_CARD --CodeScanned--> (shape, minute, replay cache) --> VERIFYING   [VerifyCode]
    VERIFYING --CodeVerified--> (revoked? decide) --online--> CLAIMING       [ClaimCode]
                                                  --offline--> JOURNALING    [JournalPayCode]
    CLAIMING --CodeClaimed(ok)--> JOURNALING; (used/revoked/blocked) -> refused;
             (no answer) -> decided again offline, within the certificate's offline cap
    JOURNALING --Journaled--> IDLE       the code joins the replay cache: accepted once here

The shell checks the two Ed25519 signatures (VerifyCode) and asks the server (ClaimCode); everything
else is decided here. A code that fails any check is refused with its own message, nothing journaled.

Side paths: NeedPin -> WAIT_PIN -> CHECKING_PIN (online check) -> COUNTING; the same card for the
same amount within `double_tap_window_ms` of one of its recent successes -> WAIT_CONFIRM until
CashierConfirmed; a card pulled during reading or counting (CardReadFailed/TapCountFailed) ->
"请重新刷卡", back to WAIT_CARD with the amount kept, shown and nothing charged. The tap counter is counted on the card before
the journal commit, so a failed count never leaves a record, and a journal row always names a tap
the card really made.

What a tap charges is always the amount on the screen when the card was presented: every Show at
WAIT_CARD (prompts and refusals alike) carries the amount due, and a refused or cancelled amount or
dish clears it (back to IDLE), so a tap with nothing shown charges nothing. No key changes the
amount of a tap under way: keys during a read, a PIN check, the count or the journal are dropped,
and keys while a card waits on its PIN or the cashier drop that card (a new order).

Every (state, event) pair the machine accepts is in `TRANSITIONS`, with the states it may lead to;
any other pair raises PosError (a shell bug, never silently ignored). Pairs that are deliberately
ignored (a key press while the card is being counted) are listed as such.
"""
from collections import namedtuple

from firmware.core import card_layout, clock, decide as decide_module, messages, paycode, records

# States
IDLE = "idle"                  # no amount yet
WAIT_CARD = "wait_card"        # amount known, waiting for a tap
READING = "reading"            # ReadCard issued
WAIT_CONFIRM = "wait_confirm"  # repeat tap, the cashier must confirm
WAIT_PIN = "wait_pin"          # over a limit, waiting for the cardholder's PIN
CHECKING_PIN = "checking_pin"  # CheckPin issued
COUNTING = "counting"          # CountTap issued
JOURNALING = "journaling"      # Journal issued; success is shown only after Journaled
VERIFYING = "verifying"        # VerifyCode issued (a payment code's signatures)
CLAIMING = "claiming"          # ClaimCode issued (online: the server's yes for this code)
STATES = (IDLE, WAIT_CARD, READING, WAIT_CONFIRM, WAIT_PIN, CHECKING_PIN, COUNTING, JOURNALING, VERIFYING,
          CLAIMING)

# Committed taps remembered for repeat detection: every one still inside the repeat window, up to this
# bound (a till clearing a backlog after an outage can commit dozens within the window).
RECENT_SUCCESSES = 256

# Events
AmountKeyed = namedtuple("AmountKeyed", ("amount_fen",))
DishChosen = namedtuple("DishChosen", ("dish_id",))
Cancel = namedtuple("Cancel", ())
CardPresented = namedtuple("CardPresented", ("uid",))
CardRead = namedtuple("CardRead", ("view", "facts"))          # view: card_io.CardView
CardReadFailed = namedtuple("CardReadFailed", ("reason",))    # READ_FAILURE_*
TapCounted = namedtuple("TapCounted", ("new_counter",))
TapCountFailed = namedtuple("TapCountFailed", ("reason",))
Journaled = namedtuple("Journaled", ("seq",))
JournalFailed = namedtuple("JournalFailed", ("reason",))
PinEntered = namedtuple("PinEntered", ("pin",))
# ok: True, False, or None (no network); after a wrong PIN the server's count: tries_left (None when
# not told), locked_minutes (None unless the account's PIN is now locked)
PinChecked = namedtuple("PinChecked", ("ok", "tries_left", "locked_minutes"))
CashierConfirmed = namedtuple("CashierConfirmed", ())
Tick = namedtuple("Tick", ("now_ms",))    # the shell feeds one before each event, results included
SyncAnswered = namedtuple("SyncAnswered", ("online",))
CodeScanned = namedtuple("CodeScanned", ("text",))             # one line from the code scanner
CodeVerified = namedtuple("CodeVerified", ("ok", "facts"))     # signatures good? facts: PayCodeFacts
CodeClaimed = namedtuple("CodeClaimed", ("result",))           # CLAIM_* or None (the server not reached)

# What the shell looked up for the card just read (deny view and account view, see decide.py).
TapFacts = namedtuple("TapFacts", ("deny", "account"))
# ...and for a payment code: the tap's facts for the certificate's card and account, the deny list's
# reasons for its credential and certificate (None when not denied), and what this terminal journaled
# offline under the credential and the server has not reflected yet (the certificate's offline cap).
PayCodeFacts = namedtuple("PayCodeFacts", ("tap", "credential_reason", "certificate_reason", "offline_fen"))

# ClaimCode answers (the server's, sync_server/paycode.py)
CLAIM_OK = "ok"
CLAIM_USED = "used"
CLAIM_REVOKED = "revoked"
CLAIM_BLOCKED = "blocked"
CLAIM_UNKNOWN = "unknown"

READ_FAILURE_GONE = "gone"          # card left the field: tap again
READ_FAILURE_FORMAT = "format"      # blank, foreign or forged card
READ_FAILURE_AUTH = "auth"          # the card refused our keys: not one of ours
READ_FAILURE_READER = "reader"      # the reader itself failed

# Actions
Show = namedtuple("Show", ("message_code", "fields"))
Beep = namedtuple("Beep", ("kind",))                # BEEP_*
Speak = namedtuple("Speak", ("text",))
ReadCard = namedtuple("ReadCard", ("uid",))
CountTap = namedtuple("CountTap", ("expected",))
Journal = namedtuple("Journal", ("record_fields",))  # records.encode_purchase kwargs minus seq/time_ms
CheckPin = namedtuple("CheckPin", ("account_id", "pin", "amount_fen"))
VerifyCode = namedtuple("VerifyCode", ("code",))                # paycode.Code: check both signatures
ClaimCode = namedtuple("ClaimCode", ("credential_id", "cert_serial", "time_step", "counter", "account_id",
                                     "amount_fen"))
JournalPayCode = namedtuple("JournalPayCode", ("record_fields",))  # records.encode_paycode kwargs minus seq/time_ms
# One line for the operator log / scripted output: a decision was made and (if accepted) committed.
Outcome = namedtuple("Outcome", ("accepted", "message_code", "seq", "amount_fen", "balance_after_fen",
                                 "card_number"))

BEEP_OK = "ok"
BEEP_ERROR = "error"
BEEP_ATTENTION = "attention"

PIN_DIGITS = 6

DEFAULT_CONFIG = {
    "terminal_id": 0,
    "merchant_id": 0,
    "category": 1,                  # wallets.CATEGORY_CANTEEN
    "dishes": {},                   # dish_id -> [name, price_fen]
    "double_tap_window_ms": 10000,      # same card, same amount within this -> cashier confirms
    "offline_cap_count": 20,        # per account at this terminal while offline
    "offline_cap_amount_fen": 20000,
    "pin_timeout_ms": 30000,
    "max_pin_attempts": 3,
    "max_amount_fen": 100000,       # one canteen payment above 1000 yuan is a keying error
    "max_dishes": 20,
    "utc_offset_min": 480,
    "lang": "zh",
    "paycode_skew_ms": paycode.DEFAULT_SKEW_MS,
}

_CODE_REFUSALS = {
    paycode.CERT_EXPIRED: messages.PAYCODE_CERT_EXPIRED, paycode.EXPIRED: messages.PAYCODE_EXPIRED,
    paycode.FUTURE: messages.PAYCODE_FUTURE, paycode.REPLAYED: messages.PAYCODE_USED,
    paycode.REPLAY_FULL: messages.PAYCODE_BUSY,
}
_CLAIM_REFUSALS = {CLAIM_USED: messages.PAYCODE_USED, CLAIM_REVOKED: messages.PAYCODE_REVOKED,
                   CLAIM_BLOCKED: messages.ACCOUNT_BLOCKED, CLAIM_UNKNOWN: messages.PAYCODE_FOREIGN}


class _CodeView:
    """A payment code where a card view would be: the certificate's card and account stand for the
    identity (so the deny list's lost card and frozen account apply), no name, no tap counter."""
    __slots__ = ("code", "identity", "name", "tap_counter")

    def __init__(self, code):
        cert = code.cert
        self.code = code
        self.identity = card_layout.Identity(cert.card_number, cert.account_id, cert.card_generation,
                                             card_layout.HOLDER_STUDENT, 0)
        self.name = ""
        self.tap_counter = None


class PosError(Exception):
    """An event the machine does not accept in its current state (a shell bug)."""


class _Pending:
    """The tap in progress: the card read, its facts, and what was decided."""
    __slots__ = ("view", "facts", "flags", "balance_after_fen", "pin_attempts", "pin_since_ms", "code_facts")

    def __init__(self, view, facts):
        self.view = view
        self.facts = facts
        self.flags = 0
        self.balance_after_fen = 0
        self.pin_attempts = 0
        self.pin_since_ms = 0
        self.code_facts = None          # PayCodeFacts when this is a payment code


class CanteenPos:
    def __init__(self, config=None):
        merged = dict(DEFAULT_CONFIG)
        if config:
            merged.update(config)
        assert merged["max_amount_fen"] <= records.MAX_AMOUNT_FEN
        self.config = merged
        self.state = IDLE
        self.amount_fen = 0
        self.dish_count = 0
        self.now_ms = 0
        self.online = False
        self.pending = None
        # (card_number, amount_fen, time_ms) of the latest committed taps, newest last. More than one:
        # a card tapped twice is still a repeat when another cardholder paid in between.
        self.recent_successes = []
        self.pin_verified_for = None  # (card_number, amount_fen) verified online for this amount
        self.codes_seen = paycode.ReplayCache(self.config["paycode_skew_ms"])

    def remember_success(self, card_number, amount_fen, time_ms):
        """A card payment this terminal journaled before a restart (the shell replays its journal at
        start, oldest first): a quick repeat of it right after the restart still asks the cashier."""
        self.recent_successes.append((card_number, amount_fen, time_ms))
        if len(self.recent_successes) > RECENT_SUCCESSES:
            self.recent_successes.pop(0)

    def remember_code(self, key, now_ms):
        """A payment code this terminal journaled before (the shell replays its journal at start)."""
        self.codes_seen.add(key, now_ms)

    def handle(self, event):
        """Feed one event; returns the list of actions for the shell, in order."""
        entry = TRANSITIONS.get((self.state, type(event)))
        if entry is None:
            raise PosError("event %s not accepted in state %s" % (type(event).__name__, self.state))
        handler, allowed = entry
        new_state, actions = handler(self, event)
        assert new_state in allowed, "%s led %s to %s" % (type(event).__name__, self.state, new_state)
        if new_state == WAIT_CARD:
            _assert_due_shown(actions, self.amount_fen)
        if new_state in (IDLE, WAIT_CARD) and new_state != self.state:
            self.pending = None
        if new_state == IDLE:
            self.amount_fen = 0
            self.dish_count = 0
            self.pin_verified_for = None
        self.state = new_state
        return actions

    # -- helpers ---------------------------------------------------------------------------------

    def _config(self, name):
        return self.config[name]

    def _caps(self):
        return decide_module.OfflineCaps(self._config("offline_cap_count"), self._config("offline_cap_amount_fen"))

    def _today(self):
        return clock.date_yyyymmdd(self.now_ms, self._config("utc_offset_min"))

    def _refuse(self, code, state, card_number=0, fields=None):
        # Back at WAIT_CARD the amount is still due, so the refusal shows it too: what a tap charges
        # is always on the screen (messages.text adds "应付…元" to a refusal given amount_fen).
        fields = dict(fields or {})
        if state == WAIT_CARD:
            fields["amount_fen"] = self.amount_fen
        return state, [Show(code, fields), Beep(BEEP_ERROR),
                       Outcome(False, code, None, self.amount_fen, None, card_number)]

    def _refuse_entry(self, code):
        # A refused amount or dish clears what was due: the screen shows no amount, so no tap may
        # charge one (IDLE clears it in handle()).
        return IDLE, self._drop_waiting_card() + [Show(code, {}), Beep(BEEP_ERROR)]

    def _drop_waiting_card(self):
        """Keys while a card waits on its PIN or the cashier start a new order: that card pays nothing."""
        if self.pending is None:
            return []
        return [Outcome(False, messages.CANCELLED, None, self.amount_fen, None,
                        self.pending.view.identity.card_number)]

    def due_fields(self):
        """The amount due as Show fields, for a message the shell shows on its own (reader errors)."""
        return {"amount_fen": self.amount_fen} if self.state == WAIT_CARD else {}

    def _wait_card(self):
        return WAIT_CARD, [Show(messages.AMOUNT_DUE, {"amount_fen": self.amount_fen})]

    # -- handlers: one per table entry -----------------------------------------------------------

    def _key_amount(self, event):
        amount_fen = event.amount_fen
        if type(amount_fen) is not int or not 0 < amount_fen <= self._config("max_amount_fen"):
            return self._refuse_entry(messages.INVALID_AMOUNT)
        dropped = self._drop_waiting_card()
        self.amount_fen = amount_fen
        self.dish_count = 0
        state, actions = self._wait_card()
        return state, dropped + actions

    def _choose_dish(self, event):
        dish = self._config("dishes").get(event.dish_id)
        if dish is None:
            return self._refuse_entry(messages.UNKNOWN_DISH)
        price_fen = dish[1]
        total_fen = self.amount_fen + price_fen
        if self.dish_count >= self._config("max_dishes") or not 0 < total_fen <= self._config("max_amount_fen"):
            return self._refuse_entry(messages.INVALID_AMOUNT)
        dropped = self._drop_waiting_card()
        self.amount_fen = total_fen
        self.dish_count += 1
        state, actions = self._wait_card()
        return state, dropped + actions

    def _cancel(self, event):
        actions = [Show(messages.CANCELLED, {})]
        if self.pending is not None:      # a card was waiting on the cashier or a PIN: a decision
            actions.append(Outcome(False, messages.CANCELLED, None, self.amount_fen, None,
                                   self.pending.view.identity.card_number))
        return IDLE, actions

    def _ignore(self, event):
        return self.state, []

    def _tap_without_amount(self, event):
        return IDLE, [Show(messages.ENTER_AMOUNT, {})]

    def _present(self, event):
        return READING, [Show(messages.PROCESSING, {}), ReadCard(event.uid)]

    def _read_failed(self, event):
        code = {READ_FAILURE_GONE: messages.TAP_AGAIN, READ_FAILURE_FORMAT: messages.UNKNOWN_CARD,
                READ_FAILURE_AUTH: messages.UNKNOWN_CARD}.get(event.reason, messages.READER_ERROR)
        return self._refuse(code, WAIT_CARD)

    def _card_read(self, event):
        self.pending = _Pending(event.view, event.facts)
        identity = event.view.identity
        if self._is_repeat(identity.card_number):
            return WAIT_CONFIRM, [Show(messages.REPEAT_TAP, {"amount_fen": self.amount_fen}),
                                  Beep(BEEP_ATTENTION)]
        return self._decide()

    def _is_repeat(self, card_number):
        window_ms = self._config("double_tap_window_ms")
        for success_card, success_amount_fen, success_ms in self.recent_successes:
            if success_card == card_number and success_amount_fen == self.amount_fen and \
                    0 <= self.now_ms - success_ms <= window_ms:
                return True
        return False

    def _confirmed(self, event):
        self.pending.flags |= records.FLAG_CONFIRMED_REPEAT
        return self._decide()

    def _decide(self, offline=False):
        """decide() for the pending card or code; `offline`: as if offline for this one payment (the
        server did not answer its claim), whatever the sync says."""
        pending = self.pending
        identity = pending.view.identity
        pin_verified = self.pin_verified_for == (identity.card_number, self.amount_fen)
        result = decide_module.decide(
            identity, self.amount_fen, self._config("category"), self._today(), pending.facts.deny,
            pending.facts.account, self.online and not offline, self._caps(), pin_verified=pin_verified,
            max_amount_fen=self._config("max_amount_fen"))
        if isinstance(result, decide_module.NeedPin):
            pending.pin_since_ms = self.now_ms
            return WAIT_PIN, [Show(result.message_code, {"amount_fen": self.amount_fen}), Beep(BEEP_ATTENTION)]
        if isinstance(result, decide_module.Decline):
            code = result.message_code
            if code == messages.CARD_REPLACED and isinstance(pending.view, _CodeView):
                code = messages.PAYCODE_CERT_EXPIRED    # the certificate names the old card: renew it online
            return self._refuse(code, WAIT_CARD, identity.card_number)
        pending.flags |= result.flags
        pending.balance_after_fen = result.balance_after_fen
        if isinstance(pending.view, _CodeView):
            return self._code_decided()
        return COUNTING, [CountTap(pending.view.tap_counter)]

    def _pin_entered(self, event):
        pin = event.pin
        if not isinstance(pin, str) or len(pin) != PIN_DIGITS or not pin.isdigit():
            return WAIT_PIN, [Show(messages.PIN_INVALID, {}), Beep(BEEP_ERROR)]
        return CHECKING_PIN, [Show(messages.PIN_CHECKING, {}),
                              CheckPin(self.pending.view.identity.account_id, pin, self.amount_fen)]

    def _pin_checked(self, event):
        pending = self.pending
        if event.ok is None:
            return self._refuse(messages.PIN_NEEDS_NETWORK, WAIT_CARD, pending.view.identity.card_number)
        if not event.ok:
            card_number = pending.view.identity.card_number
            if event.locked_minutes:        # the server locked the PIN: no point asking again at this till
                return self._refuse(messages.PIN_LOCKED, WAIT_CARD, card_number, {"minutes": event.locked_minutes})
            code, fields = messages.PIN_WRONG, {}
            if event.tries_left is not None:
                code, fields = messages.PIN_WRONG_TRIES, {"tries": event.tries_left}
            pending.pin_attempts += 1
            if pending.pin_attempts >= self._config("max_pin_attempts"):
                return self._refuse(code, WAIT_CARD, card_number, fields)
            pending.pin_since_ms = self.now_ms
            return WAIT_PIN, [Show(code, fields), Beep(BEEP_ERROR)]
        self.pin_verified_for = (pending.view.identity.card_number, self.amount_fen)
        return self._decide()

    def _count_failed(self, event):
        # CardGone while counting: the decrement may or may not have happened. Nothing is
        # journaled, so nothing is charged; the server sees the counter gap and reports it.
        return self._refuse(messages.TAP_AGAIN, WAIT_CARD, self.pending.view.identity.card_number)

    def _counted(self, event):
        pending = self.pending
        assert event.new_counter == pending.view.tap_counter + 1, "tap counter moved by more than one"
        identity = pending.view.identity
        fields = {
            "terminal_id": self._config("terminal_id"),
            "card_number": identity.card_number,
            "account_id": identity.account_id,
            "card_generation": identity.generation,
            "category": self._config("category"),
            "tap_counter": event.new_counter,
            "amount_fen": self.amount_fen,
            "merchant_id": self._config("merchant_id"),
            "flags": pending.flags,
        }
        return JOURNALING, [Journal(fields)]

    def _journaled(self, event):
        pending = self.pending
        identity = pending.view.identity
        fields = {"amount_fen": self.amount_fen, "balance_fen": pending.balance_after_fen,
                  "name": card_layout.mask_name(pending.view.name)}
        # spoken without the name: the queue behind the cardholder hears the amount and balance only
        spoken = messages.text(messages.ACCEPTED, self._config("lang"), amount_fen=fields["amount_fen"],
                               balance_fen=fields["balance_fen"])
        if isinstance(pending.view, _CodeView):
            self.codes_seen.add(paycode.use_key(pending.view.code), self.now_ms)
        else:
            window_ms = self._config("double_tap_window_ms")
            self.recent_successes = [success for success in self.recent_successes
                                     if 0 <= self.now_ms - success[2] <= window_ms]
            self.recent_successes.append((identity.card_number, self.amount_fen, self.now_ms))
            if len(self.recent_successes) > RECENT_SUCCESSES:
                self.recent_successes.pop(0)
        return IDLE, [Show(messages.ACCEPTED, fields), Beep(BEEP_OK), Speak(spoken),
                      Outcome(True, messages.ACCEPTED, event.seq, self.amount_fen, pending.balance_after_fen,
                              identity.card_number)]

    def _journal_failed(self, event):
        return self._refuse(messages.JOURNAL_FAILED, IDLE, self.pending.view.identity.card_number)

    # -- payment codes ---------------------------------------------------------------------------

    def _code_without_amount(self, event):
        return IDLE, [Show(messages.ENTER_AMOUNT, {}), Beep(BEEP_ERROR)]

    def _code_scanned(self, event):
        try:
            code = paycode.parse(event.text)
        except paycode.PayCodeError:
            return self._refuse(messages.PAYCODE_INVALID, WAIT_CARD)
        refusal = paycode.check_time(code, self.now_ms, self._config("paycode_skew_ms")) or \
            self.codes_seen.check(paycode.use_key(code), self.now_ms)
        if refusal is not None:
            return self._refuse(_CODE_REFUSALS[refusal], WAIT_CARD)
        self.pending = _Pending(_CodeView(code), None)
        return VERIFYING, [Show(messages.PAYCODE_CHECKING, {}), VerifyCode(code)]

    def _code_verified(self, event):
        pending = self.pending
        if not event.ok:
            return self._refuse(messages.PAYCODE_FOREIGN, WAIT_CARD)
        facts = event.facts
        pending.facts = facts.tap
        if facts.credential_reason is not None or facts.certificate_reason is not None:
            return self._refuse(messages.PAYCODE_REVOKED, WAIT_CARD, pending.view.identity.card_number)
        pending.code_facts = facts
        return self._decide()

    def _code_decided(self):
        """decide() accepted the code: ask the server when online, else stay within the offline cap."""
        pending = self.pending
        code = pending.view.code
        if self.online and not pending.flags & records.FLAG_OFFLINE:
            cert = code.cert
            return CLAIMING, [ClaimCode(cert.credential_id, cert.cert_serial, code.time_step, code.counter,
                                        cert.account_id, self.amount_fen)]
        if pending.code_facts.offline_fen + self.amount_fen > code.cert.offline_cap_fen:
            return self._refuse(messages.PAYCODE_OFFLINE_CAP, WAIT_CARD, pending.view.identity.card_number)
        return self._journal_code()

    def _code_claimed(self, event):
        if event.result == CLAIM_OK:
            return self._journal_code()
        if event.result is None:             # the server did not answer: this code is decided offline
            self.pending.flags = 0
            return self._decide(offline=True)
        return self._refuse(_CLAIM_REFUSALS.get(event.result, messages.PAYCODE_FOREIGN), WAIT_CARD,
                            self.pending.view.identity.card_number)

    def _journal_code(self):
        pending = self.pending
        code = pending.view.code
        cert = code.cert
        fields = {
            "terminal_id": self._config("terminal_id"),
            "credential_id": cert.credential_id,
            "account_id": cert.account_id,
            "category": self._config("category"),
            "counter": code.counter,
            "amount_fen": self.amount_fen,
            "merchant_id": self._config("merchant_id"),
            "time_step": code.time_step,
            "flags": pending.flags,
        }
        return JOURNALING, [JournalPayCode(fields)]

    def _tick(self, event):
        if event.now_ms > self.now_ms:     # time handed in never goes backwards here either
            self.now_ms = event.now_ms
        if self.state == WAIT_PIN and self.now_ms - self.pending.pin_since_ms > self._config("pin_timeout_ms"):
            return self._refuse(messages.PIN_TIMEOUT, WAIT_CARD, self.pending.view.identity.card_number)
        return self.state, []

    def _sync_answered(self, event):
        self.online = bool(event.online)
        return self.state, []


def _assert_due_shown(actions, amount_fen):
    """WAIT_CARD charges the next tap: its screen must show that amount (or be left as it was)."""
    shows = [action for action in actions if isinstance(action, Show)]
    if shows:
        last = shows[-1]
        assert last.message_code != messages.ACCEPTED and last.fields.get("amount_fen") == amount_fen > 0, \
            "waiting for a card without showing what is due: %r" % (last,)


_H = CanteenPos
_ALWAYS = ((Tick, _H._tick), (SyncAnswered, _H._sync_answered))


def _table():
    rows = [
        # state        event             handler                 may lead to
        (IDLE, AmountKeyed, _H._key_amount, (IDLE, WAIT_CARD)),
        (IDLE, DishChosen, _H._choose_dish, (IDLE, WAIT_CARD)),
        (IDLE, Cancel, _H._cancel, (IDLE,)),
        (IDLE, CardPresented, _H._tap_without_amount, (IDLE,)),
        (WAIT_CARD, AmountKeyed, _H._key_amount, (WAIT_CARD, IDLE)),    # a refused amount clears the due
        (WAIT_CARD, DishChosen, _H._choose_dish, (WAIT_CARD, IDLE)),
        (WAIT_CARD, Cancel, _H._cancel, (IDLE,)),
        (WAIT_CARD, CardPresented, _H._present, (READING,)),
        # The PIN prompt timed out (a Tick) just before the cardholder's PIN arrived: the timeout
        # was shown, the late PIN is dropped. (WAIT_CONFIRM has no timeout, so no late confirm.)
        (WAIT_CARD, PinEntered, _H._ignore, (WAIT_CARD,)),
        (READING, CardRead, _H._card_read, (WAIT_CARD, WAIT_CONFIRM, WAIT_PIN, COUNTING)),
        (READING, CardReadFailed, _H._read_failed, (WAIT_CARD,)),
        (READING, Cancel, _H._ignore, (READING,)),              # the read finishes first
        (READING, CardPresented, _H._ignore, (READING,)),       # the card being read, seen again
        (WAIT_CONFIRM, CashierConfirmed, _H._confirmed, (WAIT_CARD, WAIT_PIN, COUNTING)),
        (WAIT_CONFIRM, Cancel, _H._cancel, (IDLE,)),
        (WAIT_CONFIRM, CardPresented, _H._ignore, (WAIT_CONFIRM,)),
        (WAIT_CONFIRM, AmountKeyed, _H._key_amount, (WAIT_CARD, IDLE)),    # a new order: card dropped
        (WAIT_CONFIRM, DishChosen, _H._choose_dish, (WAIT_CARD, IDLE)),
        (WAIT_PIN, PinEntered, _H._pin_entered, (WAIT_PIN, CHECKING_PIN)),
        (WAIT_PIN, Cancel, _H._cancel, (IDLE,)),
        (WAIT_PIN, CardPresented, _H._ignore, (WAIT_PIN,)),
        (WAIT_PIN, AmountKeyed, _H._key_amount, (WAIT_CARD, IDLE)),
        (WAIT_PIN, DishChosen, _H._choose_dish, (WAIT_CARD, IDLE)),
        (CHECKING_PIN, PinChecked, _H._pin_checked, (WAIT_PIN, WAIT_CARD, COUNTING, CLAIMING, JOURNALING)),
        (CHECKING_PIN, Cancel, _H._ignore, (CHECKING_PIN,)),    # the server call is in flight
        (CHECKING_PIN, CardPresented, _H._ignore, (CHECKING_PIN,)),
        (COUNTING, TapCounted, _H._counted, (JOURNALING,)),
        (COUNTING, TapCountFailed, _H._count_failed, (WAIT_CARD,)),
        (COUNTING, Cancel, _H._ignore, (COUNTING,)),            # the card write is in flight
        (COUNTING, CardPresented, _H._ignore, (COUNTING,)),
        (JOURNALING, Journaled, _H._journaled, (IDLE,)),
        (JOURNALING, JournalFailed, _H._journal_failed, (IDLE,)),
        (JOURNALING, Cancel, _H._ignore, (JOURNALING,)),        # the tap is already counted
        (JOURNALING, CardPresented, _H._ignore, (JOURNALING,)),
        (IDLE, CodeScanned, _H._code_without_amount, (IDLE,)),
        (WAIT_CARD, CodeScanned, _H._code_scanned, (WAIT_CARD, VERIFYING)),
        (VERIFYING, CodeVerified, _H._code_verified, (WAIT_CARD, WAIT_PIN, CLAIMING, JOURNALING)),
        (CLAIMING, CodeClaimed, _H._code_claimed, (WAIT_CARD, WAIT_PIN, JOURNALING)),
        (VERIFYING, Cancel, _H._ignore, (VERIFYING,)),
        (CLAIMING, Cancel, _H._ignore, (CLAIMING,)),            # the server call is in flight
        (VERIFYING, CardPresented, _H._ignore, (VERIFYING,)),
        (CLAIMING, CardPresented, _H._ignore, (CLAIMING,)),
    ]
    # A second code while one is handled, or a card or code while a card waits on its PIN or the
    # cashier: dropped (one payment at a time; the scanner beeps, the screen says what is under way).
    for state in (READING, WAIT_CONFIRM, WAIT_PIN, CHECKING_PIN, COUNTING, JOURNALING, VERIFYING, CLAIMING):
        rows.append((state, CodeScanned, _H._ignore, (state,)))
    # Keys while a tap is under way: it charges what was on the screen when the card came; the
    # cashier keys again once its result shows.
    for state in (READING, CHECKING_PIN, COUNTING, JOURNALING, VERIFYING, CLAIMING):
        rows.append((state, AmountKeyed, _H._ignore, (state,)))
        rows.append((state, DishChosen, _H._ignore, (state,)))
    table = {}
    for state, event_type, handler, allowed in rows:
        table[(state, event_type)] = (handler, allowed)
    for state in STATES:
        for event_type, handler in _ALWAYS:
            allowed = (state, WAIT_CARD) if state == WAIT_PIN else (state,)
            table[(state, event_type)] = (handler, allowed)
    return table


# (state, event type) -> (handler, states it may lead to). The one place transitions live.
TRANSITIONS = _table()
