"""The cashier's keys (firmware/core/keypad.py): the entry line, the hidden PIN, each state's rules,
and random key runs against the machine's own transition table (plain asserts, seeded)."""
import random

from firmware.core import keypad, pos

BUSY = (pos.READING, pos.CHECKING_PIN, pos.COUNTING, pos.JOURNALING, pos.VERIFYING, pos.CLAIMING)
DISHES = {"rice": ["米饭", 100], "pork": ["红烧肉", 800], "egg": ["鸡蛋", 150]}
EVENT_TYPES = (pos.AmountKeyed, pos.DishChosen, pos.Cancel, pos.PinEntered, pos.CashierConfirmed)


def typed(keys, state=pos.IDLE, entry=None):
    """Press each key in `state`; (the entry, every event) after them."""
    entry = entry or keypad.KeyEntry(keypad.dish_shortcuts(DISHES))
    events = []
    for key in keys:
        events.extend(entry.press(key, state))
    return entry, events


def line(keys, state=pos.IDLE):
    return typed(keys, state)[0].entry


def keyed(text, state=pos.IDLE):
    entry, events = typed(list(text) + ["enter"], state)
    assert entry.entry == ""
    return events


def test_dish_shortcuts_follow_sorted_ids_and_stop_at_twelve():
    assert keypad.dish_shortcuts(DISHES) == {"f1": "egg", "f2": "pork", "f3": "rice"}
    assert keypad.dish_shortcuts({}) == {}
    many = {}
    for number in range(20):
        many["d%02d" % number] = ["菜%d" % number, 100 + number]
    shortcuts = keypad.dish_shortcuts(many)
    assert len(shortcuts) == 12 and shortcuts["f1"] == "d00" and shortcuts["f12"] == "d11"


def test_amounts_in_yuan_become_fen():
    assert keyed("12") == [pos.AmountKeyed(1200)]
    assert keyed("12.5") == [pos.AmountKeyed(1250)]
    assert keyed("12.50") == [pos.AmountKeyed(1250)]
    assert keyed("0.05") == [pos.AmountKeyed(5)]
    assert keyed(".5") == [pos.AmountKeyed(50)]
    assert keyed("7.") == [pos.AmountKeyed(700)]
    assert keyed("999999.99") == [pos.AmountKeyed(99999999)]
    # nothing worth charging still goes to the machine, which refuses it with its message and beep
    assert keyed(".") == [pos.AmountKeyed(0)]
    assert keyed("0") == [pos.AmountKeyed(0)]
    assert keyed("12", pos.WAIT_CARD) == [pos.AmountKeyed(1200)]


def test_the_entry_line_keeps_the_shape_of_an_amount():
    assert line("1.2.3") == "1.23"                      # one dot
    assert line("1.234") == "1.23"                      # a third decimal is ignored
    assert line("12345678") == "123456"                 # six digits of yuan at most
    assert line("1234567.891") == "123456.89"
    assert line("05") == "5"                            # a leading zero is replaced
    assert line("007") == "7"
    assert line("0.5") == "0.5" and line("0.05") == "0.05"
    assert line("..") == "."
    assert line(["1", "2", ".", "5", "back"]) == "12."
    assert line(["1", "back", "back", "back"]) == ""
    assert line(["1", "2", "back", "3"]) == "13"


def test_enter_with_nothing_typed_does_nothing():
    assert typed(["enter"])[1] == []
    assert typed(["enter"], pos.WAIT_CARD)[1] == []


def test_cancel_clears_the_entry_first_then_the_order():
    entry, events = typed(["1", "2", "cancel"], pos.WAIT_CARD)
    assert events == [] and entry.entry == ""
    assert entry.press("cancel", pos.WAIT_CARD) == [pos.Cancel()]
    assert typed(["cancel"])[1] == [pos.Cancel()]


def test_unknown_keys_are_ignored_never_raised():
    for state in pos.STATES:
        entry = keypad.KeyEntry(keypad.dish_shortcuts(DISHES))
        entry.press("1", state)
        before = entry.entry
        for key in ("", "12", "x", "F1", "f13", "f4", "ENTER", "dish:", " ", "tab", "+", "-", "1.", None, 5,
                    b"1", ("enter",)):
            assert entry.press(key, state) == [], (key, state)
        assert entry.entry == before


def test_dish_keys_and_touch_buttons_choose_dishes():
    entry = keypad.KeyEntry({"f1": "rice"})
    for state in (pos.IDLE, pos.WAIT_CARD, pos.WAIT_CONFIRM, pos.WAIT_PIN):
        assert entry.press("f1", state) == [pos.DishChosen("rice")]
        assert entry.press("dish:pork", state) == [pos.DishChosen("pork")]
    assert entry.press("f2", pos.IDLE) == []            # no dish under that key
    assert keypad.KeyEntry().press("f1", pos.IDLE) == []
    # a dish drops a half-typed amount: keyed later it would replace the dishes' total
    entry, events = typed(["1", "2", "f2"], pos.WAIT_CARD)
    assert events == [pos.DishChosen("pork")] and entry.entry == ""


def test_pin_digits_go_to_a_hidden_buffer():
    entry = keypad.KeyEntry()
    entry.press("8", pos.IDLE)
    for key in "12345":
        assert entry.press(key, pos.WAIT_PIN) == []
    assert entry.pin_digits == 5 and entry.entry == "8"     # the amount line is left alone
    assert entry.press(".", pos.WAIT_PIN) == [] and entry.pin_digits == 5
    assert entry.press("enter", pos.WAIT_PIN) == []          # five digits: nothing sent, kept
    assert entry.pin_digits == 5
    assert entry.press("back", pos.WAIT_PIN) == [] and entry.pin_digits == 4
    for key in "6789":                                       # the seventh and eighth are ignored
        entry.press(key, pos.WAIT_PIN)
    assert entry.pin_digits == 6
    assert entry.press("enter", pos.WAIT_PIN) == [pos.PinEntered("123467")]
    assert entry.pin_digits == 0 and entry.entry == "8"


def test_cancel_and_dishes_clear_the_pin():
    entry, events = typed(["1", "2", "cancel"], pos.WAIT_PIN)
    assert events == [pos.Cancel()] and entry.pin_digits == 0
    entry, events = typed(["1", "2", "f1"], pos.WAIT_PIN)
    assert events == [pos.DishChosen("egg")] and entry.pin_digits == 0
    entry, events = typed(["back", "back", "enter"], pos.WAIT_PIN)
    assert events == [] and entry.pin_digits == 0


def test_the_pin_never_outlives_its_prompt():
    for state in pos.STATES:
        if state == pos.WAIT_PIN:
            continue
        entry, _ = typed("1234", pos.WAIT_PIN)
        entry.press("nothing", state)                         # any key once the prompt has gone
        assert entry.pin_digits == 0, state
        # and the next prompt starts empty: the old digits are not sent with two new ones
        entry, _ = typed("1234", pos.WAIT_PIN, entry)
        entry.press("5", state)
        entry, _ = typed("12", pos.WAIT_PIN, entry)
        assert typed(["enter"], pos.WAIT_PIN, entry)[1] == []
    entry, _ = typed("123", pos.WAIT_PIN)
    entry.forget_pin()
    assert entry.pin_digits == 0


def test_repr_never_shows_the_pin():
    entry, _ = typed("12.5")
    typed("314159", pos.WAIT_PIN, entry)
    text = repr(entry)
    assert text == "KeyEntry(entry='12.5', pin=<6 digits>)"
    assert "314" not in text and "159" not in text


def test_wait_confirm_enter_confirms_unless_an_amount_is_typed():
    assert typed(["enter"], pos.WAIT_CONFIRM)[1] == [pos.CashierConfirmed()]
    assert typed(["cancel"], pos.WAIT_CONFIRM)[1] == [pos.Cancel()]
    assert keyed("15", pos.WAIT_CONFIRM) == [pos.AmountKeyed(1500)]          # a new order
    entry, events = typed(["1", "5", "cancel"], pos.WAIT_CONFIRM)
    assert events == [pos.Cancel()] and entry.entry == ""
    entry, events = typed(["1", "back", "enter"], pos.WAIT_CONFIRM)
    assert events == [pos.CashierConfirmed()]


def test_while_a_tap_is_under_way_only_the_entry_line_moves():
    for state in BUSY:
        entry, events = typed(["1", "2", ".", "5", "back", "5", "enter", "cancel", "f1", "dish:rice"], state)
        assert events == [], state
        assert entry.entry == "12.5"
        # once the result shows, Enter keys what was typed meanwhile
        assert entry.press("enter", pos.IDLE) == [pos.AmountKeyed(1250)]


def _entry_shape_ok(text):
    """^\\d{0,6}(\\.\\d{0,2})?$ (MicroPython's re has no counted repeats)."""
    dot = text.find(".")
    yuan, fen = (text, "") if dot < 0 else (text[:dot], text[dot + 1:])
    if len(yuan) > 6 or len(fen) > 2:
        return False
    if len(yuan) > 1 and yuan[0] == "0":
        return False
    for char in yuan + fen:
        if char not in keypad.DIGITS:
            return False
    return True


KEYS = ["0", "1", "2", "5", "9", ".", ".", "back", "enter", "enter", "cancel", "f1", "f2", "f5", "dish:rice",
        "x", "", "F3"] + list("0123456789") * 2


def test_random_key_runs_give_only_events_the_machine_takes():
    random.seed(20260315)
    for _ in range(120):
        entry = keypad.KeyEntry(keypad.dish_shortcuts(DISHES))
        state = pos.IDLE
        for _ in range(random.randrange(1, 60)):
            if random.randrange(4) == 0:
                state = random.choice(pos.STATES)
            key = random.choice(KEYS)
            events = entry.press(key, state)
            assert len(events) <= 1, (key, state, events)
            for event in events:
                assert type(event) in EVENT_TYPES, event
                # every event is one the machine accepts in that state (no PosError in the shell)
                assert (state, type(event)) in pos.TRANSITIONS, (state, event)
                if type(event) is pos.AmountKeyed:
                    assert type(event.amount_fen) is int and 0 <= event.amount_fen <= 99999999
                if type(event) is pos.PinEntered:
                    assert state == pos.WAIT_PIN and len(event.pin) == 6
                    for digit in event.pin:
                        assert digit in keypad.DIGITS
                if type(event) is pos.CashierConfirmed:
                    assert state == pos.WAIT_CONFIRM and key == "enter"
                assert state not in BUSY, "an event while a tap is under way: %r" % (event,)
            assert _entry_shape_ok(entry.entry), entry.entry
            assert 0 <= entry.pin_digits <= pos.PIN_DIGITS
            assert state == pos.WAIT_PIN or entry.pin_digits == 0
            assert "pin=<%d digits>" % entry.pin_digits in repr(entry)


def test_random_runs_drive_a_real_machine_without_errors():
    """The keys' events fed to a real CanteenPos (no cards: it stays at IDLE and WAIT_CARD)."""
    random.seed(7)
    config = {"dishes": DISHES}
    for _ in range(40):
        machine = pos.CanteenPos(config)
        entry = keypad.KeyEntry(keypad.dish_shortcuts(config["dishes"]))
        for _ in range(40):
            for event in entry.press(random.choice(KEYS), machine.state):
                machine.handle(event)
            assert machine.state in (pos.IDLE, pos.WAIT_CARD)
            assert machine.amount_fen <= machine.config["max_amount_fen"]
