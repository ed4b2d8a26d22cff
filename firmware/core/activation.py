"""The activation unit (激活机) as a sans-IO state machine: events in, actions out (h11 style, as pos.py).

At go-live every old card (legacy_card.py: the money on the card) is tapped once at a unit by the
canteen doors: it speaks «卡片激活中，请勿移开卡片», moves what the old purses hold into the ledger,
locks them so no old terminal can spend them again, writes the new identity (card_layout.py) and
speaks «卡片激活成功». The shell (firmware/apps) carries out the actions on a reader and a journal
and feeds their results back; nothing here touches the reader, the disk, the network or a clock.

Tickets: the server's migration import gives every old serial that may be activated a ticket, the
new identity and the person's category. The shell looks it up (its synced cache or the server) and
also says whether this serial's activation is already recorded (in this unit's journal, or the
server says so); the machine only sees the answer.

    IDLE --CardPresented--> READING        [Show(ACTIVATING), Speak(«卡片激活中…»), ReadOldCard]
    READING --OldCardRead--> LOOKING       [LookUpTicket(serial)]
            (a purse unreadable: refused; new identity on the card and both purses locked: already
            activated, shown again, nothing recorded)
    LOOKING --TicketFound--> LOCKING       [LockPurses]     (no ticket: refused)
    LOCKING --PursesLocked--> JOURNALING   [JournalActivation(fields)]
            (already recorded: straight to WRITING, no second record)
    JOURNALING --Journaled--> WRITING      [WriteIdentity]
    WRITING --IdentityWritten--> IDLE      [Show(ACTIVATED_AMOUNTS), Speak(«卡片激活成功»), Beep, Outcome]

Why the purses are locked BEFORE the record is journaled: the record must name amounts that can no
longer change. The seed keeps old terminals working through the transition (the dorms' 购电机 take
the old balance), so a card journaled and then pulled before its lock could still be spent there,
and the ledger would book money the card no longer holds. A locked purse keeps its balance
readable (legacy_card.lock_plan), so nothing is lost when the unit stops between the lock and the
record: the card's next tap, here or at the service hall, reads the same locked amounts and records
them. Every record of one serial therefore carries the same amounts, and the server books the first
one it gets by serial (records.py, KIND_ACTIVATION).

Tear-safety: a card pulled at any step is refused ("请重新刷卡"), nothing shown as success, and the
next tap resumes: the lock plan carries on from what the card holds, a recorded activation is not
recorded again, the identity is written again whole. Success is shown only after IdentityWritten.
A refusal is a Show, an error Beep and an Outcome(accepted False), back to IDLE.

Every (state, event) pair the machine accepts is in `TRANSITIONS`, with the states it may lead to;
any other pair raises ActivationError (a shell bug, never silently ignored).
"""
from collections import namedtuple

from firmware.core import legacy_card, messages, records

# States
IDLE = "idle"                  # waiting for an old card
READING = "reading"            # ReadOldCard issued
LOOKING = "looking"            # LookUpTicket issued
LOCKING = "locking"            # LockPurses issued
JOURNALING = "journaling"      # JournalActivation issued
WRITING = "writing"            # WriteIdentity issued; success only after IdentityWritten
STATES = (IDLE, READING, LOOKING, LOCKING, JOURNALING, WRITING)

# What an activation needs from the server's import for one old serial: the new card identity
# (card_layout.Identity, generation 1), the person's category (legacy_card.TEACHER / STUDENT /
# TEMPORARY: it decides which wallet the old balance goes to) and the name for the new card's name
# block, as text (the old card's GBK bytes cannot be decoded under MicroPython).
Ticket = namedtuple("Ticket", ("identity", "category", "name"))
# One old purse as read: legacy_card.inspect_purse's verdict (a PurseReading works the same way).
PurseView = namedtuple("PurseView", ("balance_fen", "counter", "state", "locked"))
# The old card as read: its legacy_card.OldIdentity, both purses, and the new identity already on it
# (card_layout.Identity whose MAC verified) or None when its new sectors are blank.
OldCardView = namedtuple("OldCardView", ("uid", "old_identity", "main", "water", "new_identity"))

# Events
CardPresented = namedtuple("CardPresented", ("uid",))
OldCardRead = namedtuple("OldCardRead", ("view",))                  # OldCardView
OldCardReadFailed = namedtuple("OldCardReadFailed", ("reason",))    # FAILURE_*
TicketFound = namedtuple("TicketFound", ("ticket", "journaled"))    # Ticket or None; recorded already?
TicketLookupFailed = namedtuple("TicketLookupFailed", ("reason",))  # neither cache nor server answered
PursesLocked = namedtuple("PursesLocked", ())
LockFailed = namedtuple("LockFailed", ("reason",))                  # FAILURE_*
Journaled = namedtuple("Journaled", ("seq",))
JournalFailed = namedtuple("JournalFailed", ("reason",))
IdentityWritten = namedtuple("IdentityWritten", ())
IdentityWriteFailed = namedtuple("IdentityWriteFailed", ("reason",))  # FAILURE_*
Tick = namedtuple("Tick", ("now_ms",))
EVENTS = (CardPresented, OldCardRead, OldCardReadFailed, TicketFound, TicketLookupFailed, PursesLocked, LockFailed,
          Journaled, JournalFailed, IdentityWritten, IdentityWriteFailed, Tick)

# Why a card step failed (the same words as pos.READ_FAILURE_*)
FAILURE_GONE = "gone"          # the card left the field: tap again, the next tap resumes
FAILURE_FORMAT = "format"      # not an old card of this campus (blank, foreign, damaged identity)
FAILURE_AUTH = "auth"          # the card refused the keys
FAILURE_READER = "reader"      # the reader itself failed

# Actions
Show = namedtuple("Show", ("message_code", "fields"))
Speak = namedtuple("Speak", ("text",))
Beep = namedtuple("Beep", ("kind",))                        # BEEP_*
ReadOldCard = namedtuple("ReadOldCard", ("uid",))
LookUpTicket = namedtuple("LookUpTicket", ("serial",))
LockPurses = namedtuple("LockPurses", ("uid",))             # both purses: legacy_card.lock_plan, to the end
JournalActivation = namedtuple("JournalActivation", ("record_fields",))  # records.encode_activation kwargs minus seq/time_ms
WriteIdentity = namedtuple("WriteIdentity", ("uid", "identity", "name"))  # card_layout.issue_plan
# One line for the operator log: a tap was decided. seq is None when nothing was journaled by it.
Outcome = namedtuple("Outcome", ("accepted", "message_code", "seq", "serial", "card_number", "main_fen",
                                 "water_fen"))

BEEP_OK = "ok"
BEEP_ERROR = "error"

DEFAULT_CONFIG = {
    "terminal_id": 0,
    "lang": "zh",
}

# Old purse states that were torn and read from one copy -> the record's flag saying so.
_RECOVERED = (legacy_card.RECOVERED_FROM_BACKUP, legacy_card.RECOVERED_FROM_MAIN)


def purse_view(reading):
    """A legacy_card.PurseReading as the machine's PurseView."""
    return PurseView(reading.balance_fen, reading.counter, reading.state, reading.locked)


class ActivationError(Exception):
    """An event the machine does not accept in its current state (a shell bug)."""


class _Pending:
    """The card being activated: what was read, its ticket, whether it is already recorded."""
    __slots__ = ("view", "ticket", "journaled", "seq")

    def __init__(self, view):
        self.view = view
        self.ticket = None
        self.journaled = False
        self.seq = None


class ActivationUnit:
    def __init__(self, config=None):
        merged = dict(DEFAULT_CONFIG)
        if config:
            merged.update(config)
        self.config = merged
        self.state = IDLE
        self.now_ms = 0
        self.uid = None
        self.pending = None

    def handle(self, event):
        """Feed one event; returns the list of actions for the shell, in order."""
        entry = TRANSITIONS.get((self.state, type(event)))
        if entry is None:
            raise ActivationError("event %s not accepted in state %s" % (type(event).__name__, self.state))
        handler, allowed = entry
        new_state, actions = handler(self, event)
        assert new_state in allowed, "%s led %s to %s" % (type(event).__name__, self.state, new_state)
        if new_state == IDLE:
            self.uid = None
            self.pending = None
        self.state = new_state
        return actions

    # -- helpers ---------------------------------------------------------------------------------

    def _text(self, code, **fields):
        return messages.text(code, self.config["lang"], **fields)

    def _serial(self):
        pending = self.pending
        return pending.view.old_identity.serial if pending is not None else None

    def _card_number(self):
        pending = self.pending
        if pending is None or pending.ticket is None:
            return None
        return pending.ticket.identity.card_number

    def _refuse(self, code):
        return IDLE, [Show(code, {}), Beep(BEEP_ERROR),
                      Outcome(False, code, None, self._serial(), self._card_number(), None, None)]

    def _card_failure(self, reason, refusal):
        """A card step failed: a pulled card taps again, a card that refuses the keys or is not one of
        ours gets `refusal`."""
        if reason == FAILURE_GONE:
            return self._refuse(messages.TAP_AGAIN)
        if reason in (FAILURE_FORMAT, FAILURE_AUTH):
            return self._refuse(refusal)
        return self._refuse(messages.READER_ERROR)

    # -- handlers: one per table entry -----------------------------------------------------------

    def _ignore(self, event):
        return self.state, []

    def _tick(self, event):
        if event.now_ms > self.now_ms:     # time handed in never goes backwards here either
            self.now_ms = event.now_ms
        return self.state, []

    def _present(self, event):
        self.uid = event.uid
        return READING, [Show(messages.ACTIVATING, {}), Speak(self._text(messages.ACTIVATING)),
                         ReadOldCard(event.uid)]

    def _read_failed(self, event):
        return self._card_failure(event.reason, messages.UNKNOWN_CARD)

    def _read(self, event):
        view = event.view
        self.pending = _Pending(view)
        if view.main.state == legacy_card.UNREADABLE or view.water.state == legacy_card.UNREADABLE:
            return self._refuse(messages.CARD_UNREADABLE_OLD)
        if view.new_identity is not None and view.main.locked and view.water.locked:
            # Finished before (the identity is written last): the card works; nothing is recorded again.
            return IDLE, [Show(messages.ALREADY_ACTIVATED, {}), Speak(self._text(messages.ALREADY_ACTIVATED)),
                          Beep(BEEP_OK),
                          Outcome(True, messages.ALREADY_ACTIVATED, None, view.old_identity.serial,
                                  view.new_identity.card_number, view.main.balance_fen, view.water.balance_fen)]
        return LOOKING, [LookUpTicket(view.old_identity.serial)]

    def _ticket_found(self, event):
        ticket = event.ticket
        if ticket is None or ticket.category not in legacy_card.CATEGORIES:
            return self._refuse(messages.ACTIVATION_REFUSED)
        self.pending.ticket = ticket
        self.pending.journaled = bool(event.journaled)
        return LOCKING, [LockPurses(self.uid)]

    def _lookup_failed(self, event):
        # Not "cannot be activated": the ticket may exist, the unit just could not reach it.
        return self._refuse(messages.ACTIVATION_UNAVAILABLE)

    def _locked(self, event):
        pending = self.pending
        if pending.journaled:
            return self._write_identity()
        view = pending.view
        identity = pending.ticket.identity
        flags = 0
        if view.main.state in _RECOVERED:
            flags |= records.ACTIVATION_MAIN_RECOVERED
        if view.water.state in _RECOVERED:
            flags |= records.ACTIVATION_WATER_RECOVERED
        fields = {
            "terminal_id": self.config["terminal_id"],
            "card_number": identity.card_number,
            "account_id": identity.account_id,
            "card_generation": identity.generation,
            "category": pending.ticket.category,
            "serial": view.old_identity.serial,
            "main_fen": view.main.balance_fen,
            "main_counter": view.main.counter,
            "water_fen": view.water.balance_fen,
            "water_counter": view.water.counter,
            "flags": flags,
        }
        return JOURNALING, [JournalActivation(fields)]

    def _lock_failed(self, event):
        # The lock plan is resumable: the next tap plans again from what the card now holds.
        return self._card_failure(event.reason, messages.ACTIVATION_REFUSED)

    def _journaled(self, event):
        self.pending.journaled = True
        self.pending.seq = event.seq
        return self._write_identity()

    def _journal_failed(self, event):
        # The purses are locked and keep their amounts; the next tap records them.
        return self._refuse(messages.ACTIVATION_NOT_RECORDED)

    def _write_identity(self):
        ticket = self.pending.ticket
        return WRITING, [WriteIdentity(self.uid, ticket.identity, ticket.name)]

    def _written(self, event):
        pending = self.pending
        view = pending.view
        main_fen = view.main.balance_fen
        water_fen = view.water.balance_fen
        return IDLE, [Show(messages.ACTIVATED_AMOUNTS, {"main_fen": main_fen, "water_fen": water_fen}),
                      Speak(self._text(messages.ACTIVATED)), Beep(BEEP_OK),
                      Outcome(True, messages.ACTIVATED, pending.seq, view.old_identity.serial,
                              pending.ticket.identity.card_number, main_fen, water_fen)]

    def _write_failed(self, event):
        # Recorded and locked already: the next tap finds the record and writes the identity again.
        return self._card_failure(event.reason, messages.ACTIVATION_REFUSED)


_H = ActivationUnit


def _table():
    rows = [
        # state        event                handler              may lead to
        (IDLE, CardPresented, _H._present, (READING,)),
        (READING, OldCardRead, _H._read, (IDLE, LOOKING)),
        (READING, OldCardReadFailed, _H._read_failed, (IDLE,)),
        (LOOKING, TicketFound, _H._ticket_found, (IDLE, LOCKING)),
        (LOOKING, TicketLookupFailed, _H._lookup_failed, (IDLE,)),
        (LOCKING, PursesLocked, _H._locked, (JOURNALING, WRITING)),
        (LOCKING, LockFailed, _H._lock_failed, (IDLE,)),
        (JOURNALING, Journaled, _H._journaled, (WRITING,)),
        (JOURNALING, JournalFailed, _H._journal_failed, (IDLE,)),
        (WRITING, IdentityWritten, _H._written, (IDLE,)),
        (WRITING, IdentityWriteFailed, _H._write_failed, (IDLE,)),
    ]
    # The card being worked on, seen again by the reader's poll: one card at a time.
    for state in (READING, LOOKING, LOCKING, JOURNALING, WRITING):
        rows.append((state, CardPresented, _H._ignore, (state,)))
    table = {}
    for state, event_type, handler, allowed in rows:
        table[(state, event_type)] = (handler, allowed)
    for state in STATES:
        table[(state, Tick)] = (_H._tick, (state,))
    return table


# (state, event type) -> (handler, states it may lead to). The one place transitions live.
TRANSITIONS = _table()
