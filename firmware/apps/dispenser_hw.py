"""The water dispenser's valve and flow meter on a Raspberry Pi, through gpiozero.

`Valve` drives the solenoid relay on one output pin; `FlowMeter` counts the Hall-effect meter's
rising edges on one input pin in gpiozero's edge callback and hands them to the shell as
`dispenser.Pulses` (bounded: more than `max_pending` uncollected pulses is a fault, not a silent
wrap). `carry_out` applies the core's valve actions, so the pin follows OpenValve/CloseValve.

An ESP32 variant follows the same three pieces with `machine.Pin(n, Pin.OUT)` for the valve and
`Pin.irq(trigger=Pin.IRQ_RISING)` incrementing a counter for the meter; the core does not change.
The shell that ties these to the reader, the journal and the display is
firmware/apps/dispenser_terminal.py. `SimFlowMeter` stands in for the water on gpiozero's mock pins
(development, tests, the demo: `ykt dispenser --pins mock`): deterministic, no clock, no thread -
`flow(ml_per_s, seconds)` drives the pulses that volume makes at the meter's calibration, keeps the
fraction of a pulse left over for the next call, and flows only while `valve_open()` says so, as
real water would.
"""
import threading

from gpiozero import DigitalInputDevice, OutputDevice

from firmware.core import dispenser

MAX_PENDING_PULSES = dispenser.MAX_PULSES_PER_EVENT


class MeterOverflow(Exception):
    """More pulses arrived than the shell collected: the meter or the loop is broken."""


class Valve:
    """The normally-closed solenoid valve: closed when the object is made and when closed."""

    def __init__(self, pin, active_high=True):
        self._device = OutputDevice(pin, active_high=active_high, initial_value=False)

    @property
    def is_open(self):
        return bool(self._device.value)

    def open(self):
        self._device.on()

    def close(self):
        self._device.off()

    def shut(self):
        self._device.off()
        self._device.close()


class FlowMeter:
    """Counts rising edges of the flow meter's output; `take()` returns and clears the count."""

    def __init__(self, pin, max_pending=MAX_PENDING_PULSES):
        self._lock = threading.Lock()
        self._pending = 0
        self._max_pending = max_pending
        self._overflowed = False
        self._device = DigitalInputDevice(pin, pull_up=None, active_state=True)
        self._device.when_activated = self._edge

    def _edge(self):
        with self._lock:
            if self._pending >= self._max_pending:
                self._overflowed = True
            else:
                self._pending += 1

    def take(self):
        """The pulses since the last take, as a dispenser.Pulses event."""
        with self._lock:
            count, self._pending = self._pending, 0
            overflowed, self._overflowed = self._overflowed, False
        if overflowed:
            raise MeterOverflow("水表脉冲溢出 / flow meter pulses overflowed")
        return dispenser.Pulses(count)

    def close(self):
        self._device.close()


def carry_out(actions, valve):
    """Apply the valve actions among the core's actions, in order; return the others for the shell."""
    rest = []
    for action in actions:
        if isinstance(action, dispenser.OpenValve):
            valve.open()
        elif isinstance(action, dispenser.CloseValve):
            valve.close()
        else:
            rest.append(action)
    return rest


class SimFlowMeter:
    def __init__(self, mock_pin, pulses_per_litre, valve_open=lambda: True):
        assert pulses_per_litre > 0
        self.pin = mock_pin
        self.pulses_per_litre = pulses_per_litre
        self.valve_open = valve_open
        self._milli_pulses = 0
        self.pulses_driven = 0

    def flow(self, ml_per_s, seconds):
        """Let ml_per_s flow for seconds (if the valve is open); returns the pulses driven."""
        if not self.valve_open():
            return 0
        self._milli_pulses += int(ml_per_s * seconds * self.pulses_per_litre)
        count, self._milli_pulses = divmod(self._milli_pulses, 1000)
        for _ in range(count):
            self.pin.drive_high()
            self.pin.drive_low()
        self.pulses_driven += count
        return count
