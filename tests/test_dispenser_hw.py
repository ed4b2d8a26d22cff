"""The dispenser's valve and flow meter on gpiozero's mock pins, driven by the core machine."""
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from firmware.apps import dispenser_hw
from firmware.core import dispenser as d
from firmware.apps.dispenser_hw import SimFlowMeter
from tests.core.test_dispenser import CONFIG, facts, view

VALVE_PIN = 17
METER_PIN = 27


@pytest.fixture
def pins():
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    valve = dispenser_hw.Valve(VALVE_PIN)
    meter = dispenser_hw.FlowMeter(METER_PIN)
    sim = SimFlowMeter(Device.pin_factory.pin(METER_PIN), CONFIG["pulses_per_litre"], lambda: valve.is_open)
    yield valve, meter, sim
    valve.shut()
    meter.close()
    Device.pin_factory.reset()
    Device.pin_factory = previous


def test_valve_pin_follows_the_core_and_pulses_are_counted(pins):
    valve, meter, sim = pins
    pin = Device.pin_factory.pin(VALVE_PIN)
    m = d.Dispenser(dict(CONFIG))
    dispenser_hw.carry_out(m.handle(d.PowerUp(0, None)), valve)
    assert pin.state == 0 and not valve.is_open
    assert sim.flow(100, 5) == 0                  # closed valve: no water, no pulses
    dispenser_hw.carry_out(m.handle(d.CardRead(view(), facts(), True)), valve)
    dispenser_hw.carry_out(m.handle(d.Start()), valve)
    assert pin.state == 1 and valve.is_open
    assert sim.flow(100, 5) == 225                # 500 ml at 450 pulses per litre
    pulses = meter.take()
    assert pulses == d.Pulses(225) and meter.take() == d.Pulses(0)
    dispenser_hw.carry_out(m.handle(pulses), valve)
    actions = dispenser_hw.carry_out(m.handle(d.End()), valve)
    assert pin.state == 0 and not valve.is_open
    (journal,) = [a for a in actions if isinstance(a, d.Journal)]
    assert journal.record_fields["ml"] == 500 and journal.record_fields["fen"] == 15


def test_meter_overflow_is_reported_not_wrapped():
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    try:
        meter = dispenser_hw.FlowMeter(METER_PIN, max_pending=3)
        sim = SimFlowMeter(Device.pin_factory.pin(METER_PIN), 1000)
        sim.flow(5, 1)
        with pytest.raises(dispenser_hw.MeterOverflow):
            meter.take()
        assert meter.take() == d.Pulses(0)
        meter.close()
    finally:
        Device.pin_factory.reset()
        Device.pin_factory = previous
