"""Hypothesis over dispenser event sequences: the valve, the money and the journal stay consistent."""
from hypothesis import given, settings, strategies as st

from firmware.core import dispenser as d, water_grants as w
from tests.core.test_dispenser import CONFIG, UID, facts, view

EVENTS = st.one_of(
    st.builds(d.CardRead, st.just(view()), st.builds(facts, water=st.integers(0, 30),
                                                     legacy=st.integers(0, 30), main=st.integers(0, 30)),
              st.booleans()),
    st.builds(d.GrantVerified, st.sampled_from(["g-1", "g-2"]), st.just(501), st.integers(1, 40), st.integers(0, 200000)),
    st.just(d.LinkLost()),
    st.just(d.Start()), st.just(d.End()), st.just(d.CardTapped(UID)),
    st.builds(d.Pulses, st.integers(0, 1000)),
    st.builds(d.Tick, st.integers(0, 200000)),
    st.builds(d.Journaled, st.integers(1, 99)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=60), st.booleans())
def test_valve_money_and_journal_invariants(events, tap_starts):
    m = d.Dispenser(dict(CONFIG, tap_starts=tap_starts))
    m.handle(d.PowerUp(0, None))
    sessions = 0
    records = []
    for event in events:
        was_dispensing = m.state == d.DISPENSING
        try:
            actions = m.handle(event)
        except d.DispenserError:
            continue
        if m.state == d.DISPENSING and not was_dispensing:
            sessions += 1
        if m.valve_open:
            assert m.state == d.DISPENSING and m.source is not None
        for action in actions:
            if isinstance(action, d.Journal):
                rec = action.record_fields
                price = d.fen_for_ml(rec["ml"], CONFIG["price_fen_per_litre"])
                assert rec["fen"] == min(price, rec["cap_fen"]) and rec["fen"] <= rec["cap_fen"]
                assert rec["end_reason"] in w.END_REASONS
                records.append(rec)
    assert len(records) <= sessions
