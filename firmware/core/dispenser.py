"""The water dispenser (开水机) as a sans-IO state machine: events in, actions out, like pos.py.

    POWERING_UP --PowerUp--> IDLE              [CloseValve first; a cut session is settled]
    IDLE --CardRead/GrantVerified--> AUTHORISED [Show(WATER_AUTHORISED, legacy balance)]
    IDLE --CardRead (tap_starts)--> DISPENSING  [tap to start: the two steps at once]
    AUTHORISED --Start--> DISPENSING           [PersistProgress, OpenValve]
    DISPENSING --Pulses--> DISPENSING          [PersistProgress every persist_interval_ml]
    DISPENSING --End/CardTapped/cap/max_session_ms/LinkLost--> SETTLING [CloseValve, Journal]
    SETTLING --Journaled--> IDLE               [Show(WATER_DONE), Beep]
    DISPENSING --Tick with no pulses for stall_ms--> SETTLING, then FAULT [CloseValve, Alarm]

Charged by volume: pulses -> ml (pulses_per_litre) -> fen (price_fen_per_litre), rounded down
(the cardholder's favour) and never above the session's cap; the valve closes at the cap.
A power cut mid-session is settled at power-up from the last persisted volume, so at most
persist_interval_ml of water goes free and nothing is charged twice: the journal record is
written once, at settling, and the shell must commit Journal and the PersistProgress(None) that
follows it in one store transaction (else a cut between them would settle the session again).

A session's source is ("card", card_number, account_id, generation, tap_counter) or
("grant", grant_id, account_id); it is persisted with the progress, so a session cut by the power
is settled against the same card or grant. Every Journal names why the session ended
(water_grants.END_*). LinkLost (the phone's Bluetooth link dropped) ends a grant's session and is
nothing to a card's. The times in events must never go backwards, across power cuts too (the
shells' clocks see to it): a Tick from the past is ignored, so a clock that went back would hold
every timeout until it caught up. The grant's checks (MAC, challenge, dispenser, cap, lifetime) are made by
water_grants.GrantGate before GrantVerified reaches this machine.
"""
from collections import namedtuple

from firmware.core import decide as decide_module, messages, wallets, water_grants

POWERING_UP = "powering_up"
IDLE = "idle"
AUTHORISED = "authorised"
DISPENSING = "dispensing"
SETTLING = "settling"
FAULT = "fault"
STATES = (POWERING_UP, IDLE, AUTHORISED, DISPENSING, SETTLING, FAULT)

# Events
PowerUp = namedtuple("PowerUp", ("now_ms", "persisted"))   # persisted: Progress or None
Tick = namedtuple("Tick", ("now_ms",))
CardRead = namedtuple("CardRead", ("view", "facts", "online"))   # facts: pos.TapFacts-like (deny, account)
GrantVerified = namedtuple("GrantVerified", ("grant_id", "account_id", "cap_fen", "expiry_ms"))
Start = namedtuple("Start", ())
End = namedtuple("End", ())
CardTapped = namedtuple("CardTapped", ("uid",))             # tap again to stop
Pulses = namedtuple("Pulses", ("count",))
Journaled = namedtuple("Journaled", ("seq",))
LinkLost = namedtuple("LinkLost", ())                        # the phone that holds the grant went away

# Actions
OpenValve = namedtuple("OpenValve", ())
CloseValve = namedtuple("CloseValve", ())
Show = namedtuple("Show", ("message_code", "fields"))
Beep = namedtuple("Beep", ("kind",))
PersistProgress = namedtuple("PersistProgress", ("progress",))
Journal = namedtuple("Journal", ("record_fields",))
Alarm = namedtuple("Alarm", ("message_code",))

# What survives a power cut: the session's source and cap and the metered volume so far.
Progress = namedtuple("Progress", ("source", "cap_fen", "start_ms", "ml"))

MAX_PULSES_PER_EVENT = 100000
DEFAULT_MAX_SESSION_MS = 10 * 60 * 1000


class DispenserError(Exception):
    """An event the machine does not accept in its state, or a malformed one (a shell bug)."""


def fen_for_ml(ml, price_fen_per_litre):
    """Price of ml millilitres, rounded down in the cardholder's favour."""
    return ml * price_fen_per_litre // 1000


class Dispenser:
    def __init__(self, config):
        for name in ("pulses_per_litre", "price_fen_per_litre", "persist_interval_ml", "idle_timeout_ms",
                     "stall_ms", "max_session_fen"):
            if not isinstance(config.get(name), int) or config[name] <= 0:
                raise DispenserError("配置错误 / bad config: %s" % name)
        assert config["persist_interval_ml"] <= 100
        max_session_ms = config.get("max_session_ms", DEFAULT_MAX_SESSION_MS)
        if not isinstance(max_session_ms, int) or max_session_ms <= 0:
            raise DispenserError("配置错误 / bad config: max_session_ms")
        self.max_session_ms = max_session_ms
        self.tap_starts = bool(config.get("tap_starts", True))
        self.config = config
        self.state = POWERING_UP
        self.now_ms = 0
        self.valve_open = False
        self._reset()

    def _reset(self):
        self.source = None
        self.uid = None
        self.cap_fen = 0
        self.expiry_ms = None
        self.start_ms = 0
        self.pulses = 0
        self.persisted_ml = 0
        self.last_change_ms = 0
        self.journaled_sessions = 0

    # -- derived -----------------------------------------------------------------------------------
    def ml(self):
        return self.pulses * 1000 // self.config["pulses_per_litre"]

    def charged_fen(self):
        return min(fen_for_ml(self.ml(), self.config["price_fen_per_litre"]), self.cap_fen)

    def handle(self, event):
        entry = TRANSITIONS.get((self.state, type(event)))
        if entry is None:
            raise DispenserError("event %s not accepted in state %s" % (type(event).__name__, self.state))
        handler, allowed = entry
        new_state, actions = handler(self, event)
        assert new_state in allowed, "%s led %s to %s" % (type(event).__name__, self.state, new_state)
        for action in actions:
            if isinstance(action, OpenValve):
                assert self.source is not None and new_state == DISPENSING
                self.valve_open = True
            elif isinstance(action, CloseValve):
                self.valve_open = False
        assert not self.valve_open or (new_state == DISPENSING and self.source is not None)
        self.state = new_state
        return actions

    # -- handlers ----------------------------------------------------------------------------------
    def _power_up(self, event):
        self.now_ms = event.now_ms
        actions = [CloseValve()]
        p = event.persisted
        if p is None:
            return IDLE, actions + [Show(messages.WATER_READY, {})]
        self.source, self.cap_fen, self.start_ms = p.source, p.cap_fen, p.start_ms
        self.pulses = p.ml * self.config["pulses_per_litre"] // 1000
        return SETTLING, actions + self._settle_actions(messages.WATER_RESUMED, p.ml, water_grants.END_POWER_CUT)

    def _tick(self, event):
        if event.now_ms < self.now_ms:
            return self.state, []
        self.now_ms = event.now_ms
        if self.state == AUTHORISED:
            if self.expiry_ms is not None and self.now_ms >= self.expiry_ms:
                self._reset()
                return IDLE, [Show(messages.WATER_GRANT_EXPIRED, {})]
            if self.now_ms - self.last_change_ms >= self.config["idle_timeout_ms"]:
                self._reset()
                return IDLE, [Show(messages.WATER_READY, {})]
        if self.state == DISPENSING and self.now_ms - self.last_change_ms >= self.config["stall_ms"]:
            actions = [CloseValve(), Alarm(messages.WATER_METER_STALLED), Beep("error")]
            return SETTLING, actions + self._settle_actions(messages.WATER_METER_STALLED, self.ml(),
                                                            water_grants.END_STALLED)
        if self.state == DISPENSING and self.now_ms - self.start_ms >= self.max_session_ms:
            return SETTLING, [CloseValve()] + self._settle_actions(messages.WATER_DONE, self.ml(),
                                                                   water_grants.END_TIMEOUT)
        return self.state, []

    def card_refusal(self, view, facts, online):
        """The message code a card tapped now would be refused with, or None when it would start.
        Changes nothing: the shell asks before it counts the tap on the card, so that a refused
        card's counter does not move (the server would see a gap)."""
        if self.state not in (IDLE, AUTHORISED):
            return messages.WATER_BUSY
        return self._decide(view, facts, online)[0]

    def _decide(self, view, facts, online):
        """(None, cap_fen) for a card that may draw water, else (refusal message code, 0)."""
        account = facts.account
        caps = decide_module.OfflineCaps(self.config.get("offline_cap_count"), self.config.get("offline_cap_amount_fen"))
        minimum_fen = max(1, self.config["price_fen_per_litre"] // 10)
        outcome = decide_module.decide(view.identity, minimum_fen, wallets.CATEGORY_WATER,
                                       self.config.get("today_yyyymmdd", 0), facts.deny, account, online, caps)
        if not isinstance(outcome, decide_module.Accept):
            return getattr(outcome, "message_code", messages.INSUFFICIENT_BALANCE), 0
        adjusted = decide_module.spendable_after_unacked(account.balances_fen, wallets.CATEGORY_WATER,
                                                         account.unacked_fen)
        cap_fen = min(self.config["max_session_fen"], wallets.spendable_fen(adjusted, wallets.CATEGORY_WATER))
        if not online and caps.amount_fen is not None:
            cap_fen = min(cap_fen, caps.amount_fen - account.unacked_fen)
        if cap_fen < minimum_fen:
            return messages.INSUFFICIENT_BALANCE, 0
        return None, cap_fen

    def _card_read(self, event):
        view, facts = event.view, event.facts
        account = facts.account
        refusal, cap_fen = self._decide(view, facts, event.online)
        if refusal is not None:
            return IDLE, [Show(refusal, {}), Beep("error")]
        identity = view.identity
        self.source = ("card", identity.card_number, identity.account_id, identity.generation, view.tap_counter)
        self.uid = view.uid
        self.cap_fen = cap_fen
        self.last_change_ms = self.now_ms
        legacy_fen = account.balances_fen.get("legacy", 0)
        actions = [Show(messages.WATER_AUTHORISED, {"balance_fen": legacy_fen}), Beep("ok")]
        if not self.tap_starts:
            return AUTHORISED, actions
        state, started = self._start(None)
        return state, actions + started

    def _grant(self, event):
        if not isinstance(event.cap_fen, int) or event.cap_fen <= 0 or not event.grant_id:
            return IDLE, [Show(messages.INVALID_AMOUNT, {}), Beep("error")]
        if event.expiry_ms <= self.now_ms:
            return IDLE, [Show(messages.WATER_GRANT_EXPIRED, {}), Beep("error")]
        self.source = ("grant", event.grant_id, event.account_id)
        self.cap_fen = min(event.cap_fen, self.config["max_session_fen"])
        self.expiry_ms = event.expiry_ms
        self.last_change_ms = self.now_ms
        return AUTHORISED, [Show(messages.WATER_AUTHORISED, {"balance_fen": self.cap_fen}), Beep("ok")]

    def _start(self, event):
        self.start_ms = self.now_ms
        self.last_change_ms = self.now_ms
        progress = Progress(self.source, self.cap_fen, self.start_ms, 0)
        return DISPENSING, [PersistProgress(progress), OpenValve(), Show(messages.WATER_DISPENSING, {})]

    def _busy(self, event):
        return DISPENSING, [Show(messages.WATER_BUSY, {}), Beep("error")]

    def _cancel(self, event):
        self._reset()
        return IDLE, [Show(messages.CANCELLED, {})]

    def _pulses(self, event):
        if not isinstance(event.count, int) or not 0 <= event.count <= MAX_PULSES_PER_EVENT:
            raise DispenserError("脉冲数无效 / bad pulse count: %r" % (event.count,))
        if event.count == 0:
            return self.state, []
        self.pulses += event.count
        if self.state != DISPENSING:
            return self.state, []       # the last drops after the valve closed: not charged above the cap
        self.last_change_ms = self.now_ms
        ml = self.ml()
        actions = []
        if ml - self.persisted_ml >= self.config["persist_interval_ml"]:
            self.persisted_ml = ml
            actions.append(PersistProgress(Progress(self.source, self.cap_fen, self.start_ms, ml)))
        if fen_for_ml(ml, self.config["price_fen_per_litre"]) >= self.cap_fen:
            return SETTLING, actions + [CloseValve()] + self._settle_actions(messages.WATER_CAP_REACHED, ml,
                                                                             water_grants.END_CAP)
        return DISPENSING, actions

    def _stop(self, event):
        if isinstance(event, CardTapped) and (self.source[0] != "card" or event.uid != self.uid):
            return DISPENSING, [Show(messages.WATER_BUSY, {})]
        return SETTLING, [CloseValve()] + self._settle_actions(messages.WATER_DONE, self.ml(), water_grants.END_BUTTON)

    def _link_lost(self, event):
        if self.source is None or self.source[0] != "grant":
            return self.state, []
        if self.state == AUTHORISED:
            self._reset()
            return IDLE, [Show(messages.WATER_READY, {})]
        return SETTLING, [CloseValve()] + self._settle_actions(messages.WATER_DONE, self.ml(),
                                                               water_grants.END_LINK_LOST)

    def _settle_actions(self, code, ml, end_reason):
        self.settle_code = code
        fen = min(fen_for_ml(ml, self.config["price_fen_per_litre"]), self.cap_fen)
        self.settled = {"source": self.source, "start_ms": self.start_ms, "end_ms": self.now_ms,
                        "ml": ml, "fen": fen, "cap_fen": self.cap_fen, "end_reason": end_reason}
        return [Journal(dict(self.settled)), PersistProgress(None)]

    def _journaled(self, event):
        fen = self.settled["fen"]
        code = self.settle_code
        self._reset()
        if code == messages.WATER_METER_STALLED:
            return FAULT, [Show(code, {"amount_fen": fen})]
        return IDLE, [Show(self.settle_code, {"amount_fen": fen}), Beep("ok")]

    def _reauthorise(self, event):
        self._reset()
        if isinstance(event, CardRead):
            return self._card_read(event)
        return self._grant(event)

    def _out_of_order(self, event):
        return FAULT, [Show(messages.WATER_METER_STALLED, {}), Beep("error")]

    def _ignore(self, event):
        return self.state, []


_D = Dispenser
TRANSITIONS = {
    (POWERING_UP, PowerUp): (_D._power_up, (IDLE, SETTLING)),
    (POWERING_UP, Tick): (_D._ignore, (POWERING_UP,)),
    (IDLE, Tick): (_D._tick, (IDLE,)),
    (IDLE, CardRead): (_D._card_read, (IDLE, AUTHORISED, DISPENSING)),
    (IDLE, GrantVerified): (_D._grant, (IDLE, AUTHORISED)),
    (IDLE, Start): (_D._ignore, (IDLE,)),
    (IDLE, End): (_D._ignore, (IDLE,)),
    (IDLE, Pulses): (_D._ignore, (IDLE,)),
    (IDLE, CardTapped): (_D._ignore, (IDLE,)),
    (AUTHORISED, Tick): (_D._tick, (AUTHORISED, IDLE)),
    (AUTHORISED, Start): (_D._start, (DISPENSING,)),
    (AUTHORISED, End): (_D._cancel, (IDLE,)),
    (AUTHORISED, Pulses): (_D._ignore, (AUTHORISED,)),
    (AUTHORISED, CardTapped): (_D._ignore, (AUTHORISED,)),
    (AUTHORISED, CardRead): (_D._reauthorise, (IDLE, AUTHORISED, DISPENSING)),  # the last card or grant wins
    (AUTHORISED, GrantVerified): (_D._reauthorise, (IDLE, AUTHORISED)),
    (DISPENSING, Tick): (_D._tick, (DISPENSING, SETTLING)),
    (DISPENSING, Pulses): (_D._pulses, (DISPENSING, SETTLING)),
    (DISPENSING, Start): (_D._busy, (DISPENSING,)),
    (DISPENSING, End): (_D._stop, (SETTLING,)),
    (DISPENSING, CardTapped): (_D._stop, (DISPENSING, SETTLING)),
    (DISPENSING, CardRead): (_D._busy, (DISPENSING,)),
    (DISPENSING, GrantVerified): (_D._busy, (DISPENSING,)),
    (SETTLING, Journaled): (_D._journaled, (IDLE, FAULT)),
    (SETTLING, Tick): (_D._ignore, (SETTLING,)),
    (SETTLING, Pulses): (_D._ignore, (SETTLING,)),
    (SETTLING, Start): (_D._ignore, (SETTLING,)),
    (SETTLING, End): (_D._ignore, (SETTLING,)),
    (SETTLING, CardTapped): (_D._ignore, (SETTLING,)),
    (SETTLING, CardRead): (_D._ignore, (SETTLING,)),
    (SETTLING, GrantVerified): (_D._ignore, (SETTLING,)),
    (FAULT, Tick): (_D._ignore, (FAULT,)),      # until staff power-cycle it
    (FAULT, Start): (_D._ignore, (FAULT,)),
    (FAULT, End): (_D._ignore, (FAULT,)),
    (FAULT, Pulses): (_D._ignore, (FAULT,)),
    (FAULT, CardTapped): (_D._ignore, (FAULT,)),
    (FAULT, CardRead): (_D._out_of_order, (FAULT,)),
    (FAULT, GrantVerified): (_D._out_of_order, (FAULT,)),
    (POWERING_UP, LinkLost): (_D._ignore, (POWERING_UP,)),
    (IDLE, LinkLost): (_D._ignore, (IDLE,)),
    (AUTHORISED, LinkLost): (_D._link_lost, (AUTHORISED, IDLE)),
    (DISPENSING, LinkLost): (_D._link_lost, (DISPENSING, SETTLING)),
    (SETTLING, LinkLost): (_D._ignore, (SETTLING,)),
    (FAULT, LinkLost): (_D._ignore, (FAULT,)),
}
