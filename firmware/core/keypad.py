"""The cashier's keys as the POS machine's events, and the entry line they build on the screen.

The keypad knows nothing of cards: `KeyEntry.press(key, state)` takes one key name and the POS
machine's current state (firmware/core/pos.py) and returns the events to feed it, usually none or
one. Digits build an amount in yuan (`12.5` is 1250 fen) shown on the entry line until Enter keys
it; while the machine asks for a PIN the same digits go to a hidden buffer instead, of which only
the count ever leaves this object (the screen shows dots; `repr` shows the count too).

Key names (the evdev reader, firmware/apps/keypad.py, and the screen's touch buttons use these):

    "0".."9" "."       the amount, or the PIN's digits while one is asked
    "back"             delete the last character (or PIN digit)
    "enter"            key the amount / send the PIN / confirm a repeat tap
    "cancel"           clear what is typed; with nothing typed, cancel the order
    "f1".."f12"        dish shortcuts (`dish_shortcuts`), "dish:<id>" a dish's touch button

Any other name, or something that is not a string, is ignored: a stray key on a full keyboard must
never stop the till. What the machine refuses (an amount of 0, an unknown dish) it refuses with its
own message and beep, which is the cashier's feedback; the entry line only keeps the shape of an
amount (at most 6 digits of yuan and 2 of fen, so at most 99999999 fen reaches the machine).

While a tap is under way (reading, PIN check, counting, journaling, a payment code checked) the
cashier may already type the next amount, but Enter, Cancel and dishes do nothing: that tap charges
what was on the screen when the card came (pos.py).
"""
from firmware.core import pos

DIGITS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
DISH_PREFIX = "dish:"
FUNCTION_KEYS = ("f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "f11", "f12")
MAX_YUAN_DIGITS = 6            # 999999 yuan: far above any canteen's max_amount_fen, refused there
MAX_FEN_DIGITS = 2

# States in which a card or code is being handled: keys may edit the entry line, nothing more.
_BUSY = (pos.READING, pos.CHECKING_PIN, pos.COUNTING, pos.JOURNALING, pos.VERIFYING, pos.CLAIMING)


def dish_shortcuts(dishes):
    """{"f1": dish_id, ...} for a dishes dict {dish_id: [name, price_fen]}, in sorted id order, so
    the same menu puts the same dish under the same key at every till (at most 12 keys)."""
    shortcuts = {}
    for index, dish_id in enumerate(sorted(dishes)[:len(FUNCTION_KEYS)]):
        shortcuts[FUNCTION_KEYS[index]] = dish_id
    return shortcuts


def amount_fen(entry):
    """The entry line "12.5" -> 1250; "", "." and "0" -> 0 (the machine refuses 0 itself)."""
    dot = entry.find(".")
    if dot < 0:
        yuan, fen = entry, ""
    else:
        yuan, fen = entry[:dot], entry[dot + 1:]
    fen = (fen + "00")[:MAX_FEN_DIGITS]
    return int(yuan or "0") * 100 + int(fen)


class KeyEntry:
    """Key names in, POS events out; `entry` is the amount being typed (see the module docstring)."""

    def __init__(self, dish_keys=None):
        self.dish_keys = dict(dish_keys or {})
        self._entry = ""
        self._pin = ""

    @property
    def entry(self):
        return self._entry

    @property
    def pin_digits(self):
        """How many PIN digits are typed (the shell shows this only while a PIN is asked)."""
        return len(self._pin)

    def forget_pin(self):
        self._pin = ""

    def __repr__(self):
        return "KeyEntry(entry=%r, pin=<%d digits>)" % (self._entry, len(self._pin))

    def press(self, key, state):
        """One key while the machine is in `state`: the list of events to feed it, in order."""
        assert state in pos.STATES, state
        if state != pos.WAIT_PIN:
            # the prompt ended without us (timeout, result): its digits must not wait for the next one
            self._pin = ""
        if not isinstance(key, str):
            return []
        dish_id = self._dish(key)
        if dish_id is not None:
            return self._dish_chosen(dish_id, state)
        if state == pos.WAIT_PIN:
            return self._pin_key(key)
        if key in DIGITS or key == "." or key == "back":
            self._edit(key)
            return []
        if state in _BUSY:
            return []
        if key == "enter":
            return self._enter(state)
        if key == "cancel":
            return self._cancel(state)
        return []

    def _dish(self, key):
        if key.startswith(DISH_PREFIX):
            return key[len(DISH_PREFIX):] or None
        return self.dish_keys.get(key)

    def _dish_chosen(self, dish_id, state):
        if state in _BUSY:
            return []
        # the order is now by dishes: a half-typed amount would replace their total if keyed later
        self._entry = ""
        self._pin = ""
        return [pos.DishChosen(dish_id)]

    def _pin_key(self, key):
        if key in DIGITS:
            if len(self._pin) < pos.PIN_DIGITS:
                self._pin += key
            return []
        if key == "back":
            self._pin = self._pin[:-1]
            return []
        if key == "enter":
            if len(self._pin) < pos.PIN_DIGITS:
                return []
            pin, self._pin = self._pin, ""
            return [pos.PinEntered(pin)]
        if key == "cancel":
            self._pin = ""
            return [pos.Cancel()]
        return []

    def _edit(self, key):
        entry = self._entry
        if key == "back":
            self._entry = entry[:-1]
            return
        dot = entry.find(".")
        if key == ".":
            if dot < 0:
                self._entry = entry + "."
        elif dot >= 0:
            if len(entry) - dot - 1 < MAX_FEN_DIGITS:
                self._entry = entry + key
        elif entry == "0":
            self._entry = key            # "05" is "5"
        elif len(entry) < MAX_YUAN_DIGITS:
            self._entry = entry + key

    def _enter(self, state):
        if self._entry:
            fen, self._entry = amount_fen(self._entry), ""
            return [pos.AmountKeyed(fen)]
        if state == pos.WAIT_CONFIRM:
            return [pos.CashierConfirmed()]
        return []

    def _cancel(self, state):
        if state == pos.WAIT_CONFIRM:
            # the card waiting on the cashier is dropped; what was typed goes with the order
            self._entry = ""
            return [pos.Cancel()]
        if self._entry:
            self._entry = ""
            return []
        return [pos.Cancel()]
