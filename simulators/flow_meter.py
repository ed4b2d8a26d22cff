"""A simulated flow meter: drives pulses on a gpiozero mock pin as water flows at a given rate.

Deterministic (no clock, no thread): `flow(ml_per_s, seconds)` drives the pulses that volume makes
at the meter's calibration, and remembers the fraction of a pulse left over for the next call.
It only flows while `valve_open()` says so, as real water would.
"""


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
