"""The water dispenser state machine: card and grant sessions, cap, timeouts, power cut (plain asserts)."""
from collections import namedtuple

from firmware.core import card_layout, dispenser as d, messages, water_grants as w
from firmware.core.decide import AccountView, DenyView, NOT_DENIED

CardView = namedtuple("CardView", ("uid", "identity", "name", "tap_counter"))
TapFacts = namedtuple("TapFacts", ("deny", "account"))
UID = b"\x04\x11\x22\x33"
CONFIG = {"pulses_per_litre": 450, "price_fen_per_litre": 30, "persist_interval_ml": 100,
          "idle_timeout_ms": 30000, "stall_ms": 5000, "max_session_fen": 500,
          "offline_cap_count": 5, "offline_cap_amount_fen": 2000, "tap_starts": False}


def view():
    return CardView(UID, card_layout.Identity(1001, 501, 1, card_layout.HOLDER_STUDENT, 20291231), "张小明", 5)


def facts(water=0, legacy=120, main=1000, deny=NOT_DENIED):
    return TapFacts(deny, AccountView(True, {"water": water, "legacy": legacy, "main": main}, 0, 0, 0, 0, 0))


def machine(persisted=None, **config):
    merged = dict(CONFIG)
    merged.update(config)
    m = d.Dispenser(merged)
    actions = m.handle(d.PowerUp(1000, persisted))
    assert actions[0] == d.CloseValve()
    return m, actions


def kinds(actions):
    return [type(a).__name__ for a in actions]


def journals(actions):
    return [a.record_fields for a in actions if isinstance(a, d.Journal)]


def test_card_session_charges_by_volume_and_shows_legacy_balance():
    m, _ = machine()
    actions = m.handle(d.CardRead(view(), facts(), True))
    assert actions[0] == d.Show(messages.WATER_AUTHORISED, {"balance_fen": 120})
    assert m.state == d.AUTHORISED
    actions = m.handle(d.Start())
    assert d.OpenValve() in actions and m.valve_open
    persisted = []
    for _ in range(10):                       # 10 x 45 pulses = 1 litre
        persisted += [a for a in m.handle(d.Pulses(45)) if isinstance(a, d.PersistProgress)]
    assert [p.progress.ml for p in persisted] == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    actions = m.handle(d.End())
    assert actions[0] == d.CloseValve() and not m.valve_open
    (record,) = journals(actions)
    assert record["ml"] == 1000 and record["fen"] == 30 and record["source"] == ("card", 1001, 501, 1, 5) and record["end_reason"] == w.END_BUTTON
    actions = m.handle(d.Journaled(1))
    assert actions[0] == d.Show(messages.WATER_DONE, {"amount_fen": 30})
    assert m.state == d.IDLE


def test_price_rounds_down_for_the_cardholder():
    assert d.fen_for_ml(33, 30) == 0
    assert d.fen_for_ml(999, 30) == 29


def test_tap_again_stops_but_another_card_does_not():
    m, _ = machine()
    m.handle(d.CardRead(view(), facts(), True))
    m.handle(d.Start())
    m.handle(d.Pulses(90))
    assert m.handle(d.CardTapped(b"\x01\x02\x03\x04"))[0].message_code == messages.WATER_BUSY
    assert m.state == d.DISPENSING
    actions = m.handle(d.CardTapped(UID))
    assert journals(actions)[0]["ml"] == 200 and m.state == d.SETTLING


def test_grant_session_cap_closes_the_valve():
    m, _ = machine()
    m.handle(d.GrantVerified("g-1", 501, 15, 60000))
    m.handle(d.Start())
    actions = m.handle(d.Pulses(450))         # 1 litre = 30 fen, over the 15 fen cap
    assert d.CloseValve() in actions and not m.valve_open
    (record,) = journals(actions)
    assert record["fen"] == 15 and record["source"] == ("grant", "g-1", 501)
    assert record["end_reason"] == w.END_CAP
    m.handle(d.Pulses(10))                    # drops after the close are not charged
    assert m.handle(d.Journaled(2))[0] == d.Show(messages.WATER_CAP_REACHED, {"amount_fen": 15})


def test_grant_expiry_and_bad_grant():
    m, _ = machine()
    assert m.handle(d.GrantVerified("g-2", 501, 0, 60000))[0].message_code == messages.INVALID_AMOUNT
    assert m.handle(d.GrantVerified("g-2", 501, 100, 500))[0].message_code == messages.WATER_GRANT_EXPIRED
    m.handle(d.GrantVerified("g-2", 501, 100, 5000))
    assert m.handle(d.Tick(5000))[0].message_code == messages.WATER_GRANT_EXPIRED
    assert m.state == d.IDLE


def test_idle_timeout_drops_the_authorisation():
    m, _ = machine()
    m.handle(d.CardRead(view(), facts(), True))
    assert m.handle(d.Tick(20000)) == []
    assert m.handle(d.Tick(31000))[0].message_code == messages.WATER_READY
    assert m.state == d.IDLE and m.handle(d.Start()) == [] and not m.valve_open


def test_stalled_meter_closes_the_valve_and_alarms():
    m, _ = machine()
    m.handle(d.CardRead(view(), facts(), True))
    m.handle(d.Start())
    m.handle(d.Pulses(45))
    actions = m.handle(d.Tick(7000))
    assert actions[0] == d.CloseValve() and d.Alarm(messages.WATER_METER_STALLED) in actions
    assert journals(actions)[0]["fen"] == 3
    m.handle(d.Journaled(3))
    assert m.state == d.FAULT and m.handle(d.Start()) == []


def test_power_cut_settles_from_the_persisted_volume_once():
    m, _ = machine()
    m.handle(d.CardRead(view(), facts(), True))
    m.handle(d.Start())
    last = None
    for _ in range(7):
        for a in m.handle(d.Pulses(45)):
            if isinstance(a, d.PersistProgress):
                last = a.progress
    m.handle(d.Pulses(20))                    # not yet persisted when the power goes
    m2, actions = machine(persisted=last)
    assert kinds(actions)[:2] == ["CloseValve", "Journal"]
    (record,) = journals(actions)
    assert record["ml"] == 700 and record["fen"] == 21
    assert d.PersistProgress(None) in actions  # cleared: a second power cut charges nothing again
    assert m2.handle(d.Journaled(4))[0] == d.Show(messages.WATER_RESUMED, {"amount_fen": 21})


def test_deny_list_and_insufficient_balance_refuse():
    m, _ = machine()
    lost = DenyView(False, "lost", None, None, 0)
    assert m.handle(d.CardRead(view(), facts(deny=lost), True))[0].message_code == messages.CARD_LOST
    assert m.state == d.IDLE
    poor = facts(water=0, legacy=0, main=0)
    assert m.handle(d.CardRead(view(), poor, True))[0].message_code == messages.INSUFFICIENT_BALANCE
    assert m.state == d.IDLE and not m.valve_open


def test_wallet_order_and_offline_cap_bound_the_session():
    m, _ = machine()
    m.handle(d.CardRead(view(), facts(water=50, legacy=20, main=0), True))
    assert m.cap_fen == 70
    m, _ = machine(offline_cap_amount_fen=40)
    m.handle(d.CardRead(view(), facts(), False))
    assert m.cap_fen == 40


def test_second_start_while_dispensing_is_refused():
    m, _ = machine()
    m.handle(d.CardRead(view(), facts(), True))
    m.handle(d.Start())
    actions = m.handle(d.Start())
    assert actions[0].message_code == messages.WATER_BUSY and d.OpenValve() not in actions


def test_garbage_events_raise_and_change_nothing():
    m, _ = machine()
    for event in ("start", None, d.Journaled(1)):
        try:
            m.handle(event)
        except d.DispenserError:
            pass
        else:
            raise AssertionError("accepted %r" % (event,))
    m.handle(d.CardRead(view(), facts(), True))
    m.handle(d.Start())
    for count in (-1, "3", d.MAX_PULSES_PER_EVENT + 1):
        try:
            m.handle(d.Pulses(count))
        except d.DispenserError:
            pass
        else:
            raise AssertionError("accepted %r pulses" % (count,))
    assert m.pulses == 0 and m.state == d.DISPENSING
    try:
        d.Dispenser(dict(CONFIG, pulses_per_litre=0))
    except d.DispenserError:
        pass
    else:
        raise AssertionError("bad config accepted")


def test_a_second_card_while_authorised_takes_over():
    m, _ = machine()
    m.handle(d.GrantVerified("g-3", 501, 100, 60000))
    m.handle(d.CardRead(view(), facts(water=40, legacy=0, main=0), True))
    assert m.state == d.AUTHORISED and m.source[:2] == ("card", 1001) and m.cap_fen == 40


def test_tap_to_start_opens_at_once_and_tap_again_stops():
    m, _ = machine(tap_starts=True)
    actions = m.handle(d.CardRead(view(), facts(), True))
    assert actions[0] == d.Show(messages.WATER_AUTHORISED, {"balance_fen": 120})
    assert d.OpenValve() in actions and m.state == d.DISPENSING and m.valve_open
    m.handle(d.Pulses(45))
    actions = m.handle(d.CardTapped(UID))
    assert journals(actions)[0]["ml"] == 100 and not m.valve_open


def test_the_session_ends_at_max_session_ms():
    m, _ = machine(max_session_ms=60000, stall_ms=100000)
    m.handle(d.GrantVerified("g-4", 501, 400, 60000))
    m.handle(d.Start())
    for second in range(1, 60):
        m.handle(d.Tick(1000 + second * 1000))
        m.handle(d.Pulses(1))
    actions = m.handle(d.Tick(61000))
    assert actions[0] == d.CloseValve() and journals(actions)[0]["end_reason"] == w.END_TIMEOUT


def test_a_lost_link_ends_a_grant_session_but_not_a_card_session():
    m, _ = machine()
    m.handle(d.GrantVerified("g-5", 501, 400, 60000))
    assert m.handle(d.LinkLost()) == [d.Show(messages.WATER_READY, {})] and m.state == d.IDLE
    m.handle(d.GrantVerified("g-6", 501, 400, 60000))
    m.handle(d.Start())
    m.handle(d.Pulses(90))
    actions = m.handle(d.LinkLost())
    assert not m.valve_open and journals(actions)[0]["end_reason"] == w.END_LINK_LOST
    card, _ = machine()
    card.handle(d.CardRead(view(), facts(), True))
    card.handle(d.Start())
    assert card.handle(d.LinkLost()) == [] and card.valve_open


def test_a_power_cut_settles_with_the_cut_as_the_reason():
    m, _ = machine(persisted=d.Progress(("grant", "g-7", 501), 300, 500, 400))
    assert journals(m.handle(d.Tick(2000)) or [])== []
    m2, actions = machine(persisted=d.Progress(("grant", "g-7", 501), 300, 500, 400))
    (record,) = journals(actions)
    assert record["end_reason"] == w.END_POWER_CUT and record["source"] == ("grant", "g-7", 501)


def test_card_refusal_asks_without_changing_anything():
    m, _ = machine(tap_starts=True)
    lost = DenyView(False, "lost", None, None, 0)
    assert m.card_refusal(view(), facts(deny=lost), True) == messages.CARD_LOST
    assert m.card_refusal(view(), facts(water=0, legacy=0, main=2), True) == messages.INSUFFICIENT_BALANCE
    assert m.card_refusal(view(), facts(), True) is None
    assert m.state == d.IDLE and m.source is None and not m.valve_open
    m.handle(d.CardRead(view(), facts(), True))
    assert m.card_refusal(view(), facts(), True) == messages.WATER_BUSY
