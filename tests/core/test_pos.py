"""The canteen POS state machine: every path, pulled cards at each step, repeat taps, PIN (plain asserts)."""
from collections import namedtuple

from firmware.core import card_layout, messages, pos, records
from firmware.core.decide import AccountView, DenyView, NOT_DENIED

CardView = namedtuple("CardView", ("uid", "identity", "name", "tap_counter"))
UID = b"\x04\x11\x22\x33"
NOW_MS = 1741600000000     # 2025-03-10 in Beijing
CONFIG = {"terminal_id": 7, "merchant_id": 3, "category": 1, "dishes": {"rice": ["米饭", 100], "pork": ["红烧肉", 800]},
          "double_tap_window_ms": 10000, "offline_cap_count": 2, "offline_cap_amount_fen": 5000}


def view(counter=5, generation=1, holder=card_layout.HOLDER_STUDENT):
    return CardView(UID, card_layout.Identity(1001, 501, generation, holder, 20291231), "张小明", counter)


def facts(main=10000, single=0, daily=0, unacked=0, count=0, deny=NOT_DENIED):
    return pos.TapFacts(deny, AccountView(True, {"main": main}, 0, single, daily, unacked, count))


def machine(online=True, **config):
    merged = dict(CONFIG)
    merged.update(config)
    m = pos.CanteenPos(merged)
    m.handle(pos.Tick(NOW_MS))
    m.handle(pos.SyncAnswered(online))
    return m


def kinds(actions):
    return [type(a).__name__ for a in actions]


def shown(actions):
    return [a.message_code for a in actions if isinstance(a, pos.Show)]


def outcome(actions):
    found = [a for a in actions if isinstance(a, pos.Outcome)]
    assert len(found) <= 1
    return found[0] if found else None


def tap_to_counting(m, amount=1200, card=None, card_facts=None):
    m.handle(pos.AmountKeyed(amount))
    actions = m.handle(pos.CardPresented(UID))
    assert pos.ReadCard(UID) in actions
    return m.handle(pos.CardRead(card or view(), card_facts or facts()))


def full_tap(m, amount=1200, seq=1, card=None, card_facts=None):
    actions = tap_to_counting(m, amount, card, card_facts)
    assert actions == [pos.CountTap(5)]
    actions = m.handle(pos.TapCounted(6))
    assert len(actions) == 1 and isinstance(actions[0], pos.Journal)
    journal = actions[0].record_fields
    done = m.handle(pos.Journaled(seq))
    return journal, done


def test_happy_path_shows_success_only_after_journaled():
    m = machine()
    actions = tap_to_counting(m)
    assert messages.ACCEPTED not in shown(actions)
    actions = m.handle(pos.TapCounted(6))
    assert messages.ACCEPTED not in shown(actions)     # counted but not yet committed: no success
    record = actions[0].record_fields
    assert record == {"terminal_id": 7, "card_number": 1001, "account_id": 501, "card_generation": 1,
                      "category": 1, "tap_counter": 6, "amount_fen": 1200, "merchant_id": 3, "flags": 0}
    record_bytes = records.encode_purchase(seq=1, time_ms=NOW_MS, **record)
    assert records.decode(record_bytes)["amount_fen"] == 1200
    done = m.handle(pos.Journaled(1))
    assert done[0] == pos.Show(messages.ACCEPTED, {"amount_fen": 1200, "balance_fen": 8800, "name": "张*明"})
    assert pos.Beep(pos.BEEP_OK) in done
    assert outcome(done) == pos.Outcome(True, messages.ACCEPTED, 1, 1200, 8800, 1001)
    speak = [a for a in done if isinstance(a, pos.Speak)][0]
    assert speak.text == "交易成功 消费12.00元 余额88.00元"       # the screen's words, never the name aloud
    assert m.state == pos.IDLE and m.amount_fen == 0


def test_dishes_add_up():
    m = machine()
    m.handle(pos.DishChosen("rice"))
    actions = m.handle(pos.DishChosen("pork"))
    assert actions == [pos.Show(messages.AMOUNT_DUE, {"amount_fen": 900})]
    assert m.state == pos.WAIT_CARD and m.amount_fen == 900


def test_unknown_dish_and_invalid_amount_change_nothing():
    m = machine()
    assert shown(m.handle(pos.DishChosen("caviar"))) == [messages.UNKNOWN_DISH]
    assert m.state == pos.IDLE
    assert shown(m.handle(pos.AmountKeyed(0))) == [messages.INVALID_AMOUNT]
    assert shown(m.handle(pos.AmountKeyed(100001))) == [messages.INVALID_AMOUNT]
    assert m.state == pos.IDLE


def test_a_refused_amount_clears_what_was_due():
    """The cashier keys ¥15.00, then 999999 fen (refused): the screen shows no amount, so the next
    tap must charge nothing, not the earlier ¥15.00."""
    for refused in (pos.AmountKeyed(999999), pos.AmountKeyed(-1), pos.AmountKeyed(True), pos.DishChosen("caviar")):
        m = machine()
        m.handle(pos.AmountKeyed(1500))
        actions = m.handle(refused)
        assert actions[0].fields == {} and pos.Beep(pos.BEEP_ERROR) in actions
        assert m.state == pos.IDLE and m.amount_fen == 0
        actions = m.handle(pos.CardPresented(UID))
        assert shown(actions) == [messages.ENTER_AMOUNT]
        assert not any(isinstance(a, (pos.ReadCard, pos.CountTap, pos.Journal)) for a in actions)


def test_a_dish_over_the_limit_clears_the_order():
    m = machine(max_amount_fen=1000)
    m.handle(pos.DishChosen("pork"))
    assert shown(m.handle(pos.DishChosen("pork"))) == [messages.INVALID_AMOUNT]
    assert m.state == pos.IDLE and m.amount_fen == 0


def test_a_refusal_that_keeps_the_amount_shows_it():
    """Back at WAIT_CARD after a refusal the amount is still due, so the refusal's screen says so."""
    m = machine()
    actions = tap_to_counting(m, amount=1200, card_facts=facts(main=100))
    assert actions[0] == pos.Show(messages.INSUFFICIENT_BALANCE, {"amount_fen": 1200})
    assert m.state == pos.WAIT_CARD and m.amount_fen == 1200
    m = machine()
    m.handle(pos.AmountKeyed(1200))
    m.handle(pos.CardPresented(UID))
    actions = m.handle(pos.CardReadFailed(pos.READ_FAILURE_GONE))
    assert actions[0] == pos.Show(messages.TAP_AGAIN, {"amount_fen": 1200})
    assert messages.text(messages.TAP_AGAIN, "zh", **actions[0].fields) == "请重新刷卡（应付12.00元）"
    assert m.due_fields() == {"amount_fen": 1200}


def test_a_new_amount_while_a_card_waits_drops_that_card():
    m = machine()
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    assert m.state == pos.WAIT_PIN
    actions = m.handle(pos.AmountKeyed(800))          # the cashier starts a new order
    assert outcome(actions) == pos.Outcome(False, messages.CANCELLED, None, 3000, None, 1001)
    assert actions[-1] == pos.Show(messages.AMOUNT_DUE, {"amount_fen": 800})
    assert m.state == pos.WAIT_CARD and m.pending is None
    journal, _ = full_tap(m, 800)                      # the next tap pays what is on the screen now
    assert journal["amount_fen"] == 800
    m.handle(pos.Tick(NOW_MS + 1000))
    tap_to_counting(m, 800, card=view(counter=6))
    assert m.state == pos.WAIT_CONFIRM
    actions = m.handle(pos.AmountKeyed(999999))        # refused while the cashier decides: nothing due
    assert outcome(actions).accepted is False and shown(actions) == [messages.INVALID_AMOUNT]
    assert m.state == pos.IDLE and m.amount_fen == 0
    assert m.handle(pos.CardPresented(UID)) == [pos.Show(messages.ENTER_AMOUNT, {})]


def test_keys_during_a_tap_do_not_change_what_it_charges():
    m = machine()
    m.handle(pos.AmountKeyed(1200))
    m.handle(pos.CardPresented(UID))
    assert m.handle(pos.AmountKeyed(200)) == [] and m.handle(pos.DishChosen("rice")) == []
    assert m.handle(pos.CardPresented(UID)) == []      # the card being read, seen again
    assert m.handle(pos.CardRead(view(), facts())) == [pos.CountTap(5)]
    assert m.handle(pos.AmountKeyed(999999)) == []
    journal = m.handle(pos.TapCounted(6))[0].record_fields
    assert m.handle(pos.AmountKeyed(300)) == []
    assert journal["amount_fen"] == 1200
    assert shown(m.handle(pos.Journaled(1))) == [messages.ACCEPTED] and m.amount_fen == 0


def test_pin_timeout_and_refusal_show_the_amount_still_due():
    m = machine(pin_timeout_ms=30000)
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    assert m.handle(pos.Tick(NOW_MS + 30001))[0] == pos.Show(messages.PIN_TIMEOUT, {"amount_fen": 3000})
    m = machine()
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    m.handle(pos.PinEntered("123456"))
    assert m.handle(pos.PinChecked(None, None, None))[0] == pos.Show(messages.PIN_NEEDS_NETWORK, {"amount_fen": 3000})


def test_tap_without_amount_asks_for_amount():
    m = machine()
    assert shown(m.handle(pos.CardPresented(UID))) == [messages.ENTER_AMOUNT]
    assert m.state == pos.IDLE


def test_cancel_clears_amount():
    m = machine()
    m.handle(pos.AmountKeyed(500))
    assert shown(m.handle(pos.Cancel())) == [messages.CANCELLED]
    assert m.state == pos.IDLE and m.amount_fen == 0


def test_card_pulled_while_reading_charges_nothing_and_keeps_amount():
    m = machine()
    m.handle(pos.AmountKeyed(1200))
    m.handle(pos.CardPresented(UID))
    actions = m.handle(pos.CardReadFailed(pos.READ_FAILURE_GONE))
    assert shown(actions) == [messages.TAP_AGAIN]
    assert not any(isinstance(a, (pos.Journal, pos.CountTap)) for a in actions)
    assert m.state == pos.WAIT_CARD and m.amount_fen == 1200
    journal, done = full_tap(m)          # the tap again goes through
    assert journal["amount_fen"] == 1200 and shown(done)[0] == messages.ACCEPTED


def test_card_pulled_while_counting_charges_nothing():
    m = machine()
    tap_to_counting(m)
    actions = m.handle(pos.TapCountFailed(pos.READ_FAILURE_GONE))
    assert shown(actions) == [messages.TAP_AGAIN]
    assert not any(isinstance(a, pos.Journal) for a in actions)
    assert outcome(actions).accepted is False
    assert m.state == pos.WAIT_CARD and m.amount_fen == 1200


def test_card_pulled_after_counting_is_still_journaled():
    m = machine()
    tap_to_counting(m)
    m.handle(pos.TapCounted(6))
    assert m.handle(pos.CardPresented(UID)) == []      # the reader sees a card again: ignored
    assert m.handle(pos.Cancel()) == []                # the tap is counted, the record must land
    done = m.handle(pos.Journaled(1))
    assert shown(done)[0] == messages.ACCEPTED


def test_journal_failure_reports_and_charges_nothing():
    m = machine()
    tap_to_counting(m)
    m.handle(pos.TapCounted(6))
    actions = m.handle(pos.JournalFailed("disk full"))
    assert shown(actions) == [messages.JOURNAL_FAILED]
    assert outcome(actions).accepted is False and m.state == pos.IDLE


def test_foreign_and_forged_cards_are_unknown():
    for reason in (pos.READ_FAILURE_FORMAT, pos.READ_FAILURE_AUTH):
        m = machine()
        m.handle(pos.AmountKeyed(100))
        m.handle(pos.CardPresented(UID))
        assert shown(m.handle(pos.CardReadFailed(reason))) == [messages.UNKNOWN_CARD]
    m = machine()
    m.handle(pos.AmountKeyed(100))
    m.handle(pos.CardPresented(UID))
    assert shown(m.handle(pos.CardReadFailed(pos.READ_FAILURE_READER))) == [messages.READER_ERROR]


def test_declines_go_back_to_wait_card_with_outcome():
    m = machine()
    lost = DenyView(False, 1, None, None, 0)
    actions = tap_to_counting(m, card_facts=facts(deny=lost))
    assert shown(actions) == [messages.CARD_LOST]
    assert pos.Beep(pos.BEEP_ERROR) in actions
    assert outcome(actions) == pos.Outcome(False, messages.CARD_LOST, None, 1200, None, 1001)
    assert m.state == pos.WAIT_CARD
    m2 = machine()
    assert shown(tap_to_counting(m2, 1200, card_facts=facts(main=100))) == [messages.INSUFFICIENT_BALANCE]


def test_quick_repeat_tap_needs_cashier_confirmation():
    m = machine()
    full_tap(m, 1200, seq=1)
    m.handle(pos.Tick(NOW_MS + 3000))
    actions = tap_to_counting(m, 1200, card=view(counter=6))
    assert shown(actions) == [messages.REPEAT_TAP]
    assert not any(isinstance(a, pos.CountTap) for a in actions)
    assert m.state == pos.WAIT_CONFIRM
    assert m.handle(pos.CardPresented(UID)) == []      # tapping again does not bypass the cashier
    actions = m.handle(pos.CashierConfirmed())
    assert actions == [pos.CountTap(6)]
    journal = m.handle(pos.TapCounted(7))[0].record_fields
    assert journal["flags"] & records.FLAG_CONFIRMED_REPEAT


def test_repeat_tap_cancelled_charges_nothing():
    m = machine()
    full_tap(m, 1200, seq=1)
    tap_to_counting(m, 1200, card=view(counter=6))
    actions = m.handle(pos.Cancel())
    assert shown(actions) == [messages.CANCELLED]
    assert outcome(actions) == pos.Outcome(False, messages.CANCELLED, None, 1200, None, 1001)
    assert m.state == pos.IDLE


def test_repeat_is_caught_when_another_card_paid_in_between():
    m = machine()
    full_tap(m, 1200, seq=1)
    other = CardView(b"\x0a\x0b\x0c\x0d", card_layout.Identity(2002, 602, 1, card_layout.HOLDER_STUDENT, 20291231),
                     "李四", 5)
    full_tap(m, 1200, seq=2, card=other)
    m.handle(pos.Tick(NOW_MS + 2000))
    actions = tap_to_counting(m, 1200, card=view(counter=6))
    assert shown(actions) == [messages.REPEAT_TAP]
    assert m.state == pos.WAIT_CONFIRM


def test_repeat_window_and_amount_matter():
    m = machine()
    full_tap(m, 1200, seq=1)
    m.handle(pos.Tick(NOW_MS + 10001))                 # outside the window
    assert tap_to_counting(m, 1200, card=view(counter=6)) == [pos.CountTap(6)]
    m = machine()
    full_tap(m, 1200, seq=1)
    assert tap_to_counting(m, 1300, card=view(counter=6)) == [pos.CountTap(6)]   # another amount


def test_pin_path_online():
    m = machine()
    actions = tap_to_counting(m, 3000, card_facts=facts(single=2000))
    assert shown(actions) == [messages.OVER_SINGLE_LIMIT_PIN]
    assert m.state == pos.WAIT_PIN
    assert shown(m.handle(pos.PinEntered("12a456"))) == [messages.PIN_INVALID]
    actions = m.handle(pos.PinEntered("123456"))
    assert pos.CheckPin(501, "123456", 3000) in actions
    assert m.state == pos.CHECKING_PIN
    assert m.handle(pos.Cancel()) == []
    actions = m.handle(pos.PinChecked(True, None, None))
    assert actions == [pos.CountTap(5)]
    journal = m.handle(pos.TapCounted(6))[0].record_fields
    assert journal["flags"] == records.FLAG_PIN_VERIFIED
    assert shown(m.handle(pos.Journaled(1)))[0] == messages.ACCEPTED


def test_wrong_pin_retries_then_gives_up():
    m = machine(max_pin_attempts=2)
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    m.handle(pos.PinEntered("000000"))
    assert shown(m.handle(pos.PinChecked(False, None, None))) == [messages.PIN_WRONG]
    assert m.state == pos.WAIT_PIN
    m.handle(pos.PinEntered("000001"))
    actions = m.handle(pos.PinChecked(False, None, None))
    assert shown(actions) == [messages.PIN_WRONG] and outcome(actions).accepted is False
    assert m.state == pos.WAIT_CARD


def test_a_wrong_pin_says_the_tries_left_and_a_lockout_its_minutes():
    m = machine(max_pin_attempts=3)
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    m.handle(pos.PinEntered("000000"))
    actions = m.handle(pos.PinChecked(False, 4, None))
    assert actions[0] == pos.Show(messages.PIN_WRONG_TRIES, {"tries": 4})
    assert messages.text(messages.PIN_WRONG_TRIES, **actions[0].fields) == "密码错误，还可尝试4次"
    assert m.state == pos.WAIT_PIN
    m.handle(pos.PinEntered("000001"))
    actions = m.handle(pos.PinChecked(False, None, 30))        # the server locked the PIN: no more tries here
    assert actions[0] == pos.Show(messages.PIN_LOCKED, {"minutes": 30, "amount_fen": 3000})
    assert outcome(actions).accepted is False and outcome(actions).message_code == messages.PIN_LOCKED
    assert messages.text(messages.PIN_LOCKED, "en", **actions[0].fields).startswith("PIN locked: try again in 30 minutes")
    assert m.state == pos.WAIT_CARD


def test_pin_check_without_network_declines():
    m = machine()
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    m.handle(pos.PinEntered("123456"))
    assert shown(m.handle(pos.PinChecked(None, None, None))) == [messages.PIN_NEEDS_NETWORK]
    assert m.state == pos.WAIT_CARD


def test_over_limit_offline_is_declined_without_pin_prompt():
    m = machine(online=False)
    actions = tap_to_counting(m, 3000, card_facts=facts(single=2000))
    assert shown(actions) == [messages.PIN_NEEDS_NETWORK]
    assert m.state == pos.WAIT_CARD


def test_pin_times_out():
    m = machine(pin_timeout_ms=30000)
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    assert m.handle(pos.Tick(NOW_MS + 30000)) == []
    assert shown(m.handle(pos.Tick(NOW_MS + 30001))) == [messages.PIN_TIMEOUT]
    assert m.state == pos.WAIT_CARD


def test_a_pin_typed_after_the_timeout_is_dropped():
    m = machine(pin_timeout_ms=30000)
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    # The shell feeds a Tick before the PIN: the timeout wins, the late PIN changes nothing.
    actions = m.handle(pos.Tick(NOW_MS + 31000))
    assert shown(actions) == [messages.PIN_TIMEOUT] and outcome(actions).accepted is False
    assert m.handle(pos.PinEntered("123456")) == []
    assert m.state == pos.WAIT_CARD and m.amount_fen == 3000
    m.handle(pos.CardPresented(UID))                  # the cardholder taps again for the same amount
    assert shown(m.handle(pos.CardRead(view(), facts(single=2000)))) == [messages.OVER_SINGLE_LIMIT_PIN]


def test_pin_timeout_runs_from_the_prompt():
    m = machine(pin_timeout_ms=30000)
    m.handle(pos.AmountKeyed(3000))
    m.handle(pos.CardPresented(UID))
    m.handle(pos.Tick(NOW_MS + 20000))                # a slow read: the prompt shows 20 s after the tap
    m.handle(pos.CardRead(view(), facts(single=2000)))
    assert m.handle(pos.Tick(NOW_MS + 45000)) == [] and m.state == pos.WAIT_PIN


def test_card_pulled_after_pin_then_tap_again_needs_no_second_pin():
    m = machine()
    tap_to_counting(m, 3000, card_facts=facts(single=2000))
    m.handle(pos.PinEntered("123456"))
    m.handle(pos.PinChecked(True, None, None))
    assert shown(m.handle(pos.TapCountFailed(pos.READ_FAILURE_GONE))) == [messages.TAP_AGAIN]
    m.handle(pos.CardPresented(UID))
    assert m.handle(pos.CardRead(view(), facts(single=2000))) == [pos.CountTap(5)]


def test_offline_tap_is_flagged_and_capped():
    m = machine(online=False)
    journal, _ = full_tap(m, 1200)
    assert journal["flags"] == records.FLAG_OFFLINE
    m2 = machine(online=False)
    assert shown(tap_to_counting(m2, 100, card_facts=facts(unacked=200, count=2))) == \
        [messages.OFFLINE_CAP_REACHED]


def test_coming_back_online_lifts_offline_caps():
    m = machine(online=False)
    m.handle(pos.SyncAnswered(True))
    assert tap_to_counting(m, 100, card_facts=facts(unacked=200, count=2)) == [pos.CountTap(5)]


def test_unexpected_events_are_errors():
    m = machine()
    for event in (pos.TapCounted(1), pos.Journaled(1), pos.CardRead(view(), facts()), pos.PinChecked(True, None, None),
                  pos.CashierConfirmed(), pos.PinEntered("123456")):
        try:
            m.handle(event)
        except pos.PosError:
            pass
        else:
            raise AssertionError("accepted %r in idle" % (event,))
    m.handle(pos.AmountKeyed(100))
    m.handle(pos.CardPresented(UID))
    try:
        m.handle(pos.PinEntered("123456"))     # nobody asked for a PIN
    except pos.PosError:
        pass
    else:
        raise AssertionError("a PIN was taken while the card was being read")


def test_counter_must_move_by_exactly_one():
    m = machine()
    tap_to_counting(m)
    try:
        m.handle(pos.TapCounted(8))
    except AssertionError:
        pass
    else:
        raise AssertionError("a tap counter that moved by two was accepted")


def test_every_table_entry_names_known_states():
    for (state, _event_type), (_handler, allowed) in pos.TRANSITIONS.items():
        assert state in pos.STATES
        for target in allowed:
            assert target in pos.STATES
    for state in pos.STATES:
        assert (state, pos.Tick) in pos.TRANSITIONS and (state, pos.SyncAnswered) in pos.TRANSITIONS


def test_a_repeat_after_a_burst_of_other_taps_still_needs_the_cashier():
    """A till clearing a backlog commits many taps inside the repeat window: the first card's quick
    repeat must still be caught, however many others paid in between."""
    m = machine(online=True, double_tap_window_ms=60000)
    full_tap(m, 1200, seq=1)
    for index in range(40):
        other = view(counter=5)
        other.identity.card_number = 5000 + index
        m.handle(pos.AmountKeyed(300 + index))
        m.handle(pos.CardPresented(UID))
        m.handle(pos.CardRead(other, facts()))
        m.handle(pos.TapCounted(6))
        m.handle(pos.Journaled(2 + index))
    m.handle(pos.AmountKeyed(1200))
    m.handle(pos.CardPresented(UID))
    actions = m.handle(pos.CardRead(view(counter=6), facts()))
    assert m.state == pos.WAIT_CONFIRM and messages.REPEAT_TAP in shown(actions)
