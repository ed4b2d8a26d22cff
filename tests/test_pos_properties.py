"""The POS never charges an amount that is not on the screen (Hypothesis over whole sessions).

A cashier's session is a random sequence of what people do at a canteen till: amounts keyed (valid,
zero, negative, huge, not numbers), dishes (known and unknown), cancels, taps, cards pulled while
read or counted, declines, repeat taps confirmed or cancelled, PIN prompts with right, wrong,
malformed, late and offline PINs, journal failures, time passing and the network coming and going.
The world answers each action the machine asks for (ReadCard, CountTap, CheckPin, Journal) the way
the reader, the server and the journal could.

What the cardholder saw is the last Show before the card was presented; the property: every
Journal charges exactly the amount due on that screen, and nothing is journaled when that screen
showed no amount due. Seen by a cashier as: a refused 999999 after ¥15.00, then a tap, charged ¥15.
"""
from collections import namedtuple

from hypothesis import given, settings, strategies as st

from firmware.core import card_layout, messages, pos
from firmware.core.decide import AccountView, NOT_DENIED

CardView = namedtuple("CardView", ("uid", "identity", "name", "tap_counter"))
UID = b"\x04\x11\x22\x33"
START_MS = 1741600000000
DISHES = {"rice": ["米饭", 100], "pork": ["红烧肉", 800]}
CONFIG = {"terminal_id": 7, "merchant_id": 3, "category": 1, "dishes": DISHES, "max_amount_fen": 5000,
          "double_tap_window_ms": 10000, "offline_cap_count": 3, "offline_cap_amount_fen": 5000,
          "pin_timeout_ms": 30000}
# Messages whose amount_fen is what was paid, not what is due.
NOT_DUE = (messages.ACCEPTED,)

amounts = st.one_of(st.integers(min_value=-10, max_value=6000), st.sampled_from([0, 999999, 2 ** 64, -2 ** 63]),
                    st.sampled_from([None, "1500", 15.0, True]))
keys = st.one_of(
    st.builds(pos.AmountKeyed, amounts),
    st.builds(pos.DishChosen, st.sampled_from(["rice", "pork", "caviar"])),
    st.just(pos.Cancel()),
    st.just(pos.CardPresented(UID)),
    st.just(pos.CashierConfirmed()),
    st.builds(pos.PinEntered, st.sampled_from(["123456", "000000", "12", "abcdef"])),
    st.builds(pos.SyncAnswered, st.booleans()),
    st.builds(lambda step_ms: Wait(step_ms), st.sampled_from([0, 500, 11000, 31000])),
)


Wait = namedtuple("Wait", ("step_ms",))      # time passes at the till


def card_view(counter, generation):
    return CardView(UID, card_layout.Identity(1001, 501, generation, card_layout.HOLDER_STUDENT, 20291231),
                    "张小明", counter)


def account_facts(data):
    main_fen = data.draw(st.sampled_from([0, 300, 1500, 100000]), label="balance")
    single_fen = data.draw(st.sampled_from([0, 1000]), label="single limit")
    return pos.TapFacts(NOT_DENIED, AccountView(True, {"main": main_fen}, 0, single_fen, 0, 0, 0))


class Session:
    """The machine, the world answering it, and what the screen showed."""

    def __init__(self):
        self.machine = pos.CanteenPos(CONFIG)
        self.now_ms = START_MS
        self.counter = 5
        self.seq = 0
        self.screen_due = None       # amount due on the screen now, None when none is shown
        self.due_at_tap = None       # the screen when the card was presented
        self.charged = []

    def feed(self, event, data):
        queue = [pos.Tick(self.now_ms), event]
        steps = 0
        while queue:
            steps += 1
            assert steps < 20, "the machine did not settle"
            event = queue.pop(0)
            if isinstance(event, pos.CardPresented):
                self.due_at_tap = self.screen_due
            for action in self.machine.handle(event):
                answer = self.carry_out(action, data)
                if answer is not None:
                    queue.append(pos.Tick(self.now_ms))
                    queue.append(answer)

    def carry_out(self, action, data):
        if isinstance(action, pos.Show):
            due = action.fields.get("amount_fen")
            self.screen_due = None if action.message_code in NOT_DUE else due
            return None
        if isinstance(action, pos.ReadCard):
            if data.draw(st.booleans(), label="read ok"):
                return pos.CardRead(card_view(self.counter, 1), account_facts(data))
            return pos.CardReadFailed(data.draw(st.sampled_from(
                [pos.READ_FAILURE_GONE, pos.READ_FAILURE_FORMAT, pos.READ_FAILURE_READER]), label="read failure"))
        if isinstance(action, pos.CountTap):
            if data.draw(st.integers(0, 4), label="count") == 0:
                return pos.TapCountFailed(pos.READ_FAILURE_GONE)
            self.counter += 1
            return pos.TapCounted(self.counter)
        if isinstance(action, pos.CheckPin):
            return pos.PinChecked(data.draw(st.sampled_from([True, False, None]), label="pin answer"))
        if isinstance(action, pos.Journal):
            amount_fen = action.record_fields["amount_fen"]
            assert self.due_at_tap is not None, "charged %d fen with no amount on the screen" % amount_fen
            assert amount_fen == self.due_at_tap, \
                "charged %d fen, the screen showed %d fen due" % (amount_fen, self.due_at_tap)
            self.charged.append(amount_fen)
            if data.draw(st.integers(0, 9), label="journal") == 0:
                return pos.JournalFailed("disk full")
            self.seq += 1
            return pos.Journaled(self.seq)
        return None


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_amount_charged_is_the_amount_on_the_screen(data):
    session = Session()
    session.machine.handle(pos.Tick(START_MS))
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        event = data.draw(keys, label="key")
        if isinstance(event, Wait):
            session.now_ms += event.step_ms
            event = pos.Tick(session.now_ms)
        if (session.machine.state, type(event)) not in pos.TRANSITIONS:
            continue                                    # the shell never feeds what the state refuses
        session.feed(event, data)
        assert session.machine.state in pos.STATES


def test_the_cashiers_sequence_is_a_counterexample_to_the_old_machine():
    """The exact sequence reported from the canteen, driven through the same model."""
    class Always:
        @staticmethod
        def draw(strategy, label=None):
            return {"read ok": True, "count": 1, "journal": 1, "balance": 100000, "single limit": 0}[label]

    session = Session()
    session.machine.handle(pos.Tick(START_MS))
    session.feed(pos.AmountKeyed(1500), Always)
    session.feed(pos.AmountKeyed(999999), Always)
    assert session.screen_due is None
    session.feed(pos.CardPresented(UID), Always)
    assert session.charged == []
