"""The terminal's beeper (蜂鸣器) on a Raspberry Pi, through gpiozero: the core's `Beep(kind)` as a
pattern a cashier tells apart without looking.

    ok          one short beep                     交易成功
    error       three short beeps                  refused: 余额不足, 卡片已挂失, a wrong PIN ...
    attention   two long beeps                     the cashier is needed: 重复刷卡, a PIN to enter

An active buzzer on one output pin (a transistor in front of it on a real board): on is sound. The
patterns play on one worker thread, one after another, so the loop that reads cards never waits on a
beep; the queue is bounded (MAX_QUEUED) and a beep that finds it full is dropped and counted - a beep
behind several others is about a tap long gone. An unknown kind plays the error pattern: a new core
kind must never be silent. `close()` finishes the pattern under way and leaves the pin low.

`ykt terminal --beeper GPIO18` (or `mock:GPIO18`, gpiozero's mock pins, for tests and development).
"""
import queue
import threading
import time

from gpiozero import OutputDevice

MAX_QUEUED = 4
# (on seconds, off seconds) per beep
PATTERNS_S = {
    "ok": ((0.08, 0.0),),
    "error": ((0.07, 0.07),) * 3,
    "attention": ((0.3, 0.15),) * 2,
}
_STOP = object()


class Beeper:
    """Plays beep patterns on an output pin; `beep(kind)` returns at once."""

    def __init__(self, pin, active_high=True, max_queued=MAX_QUEUED, sleep=time.sleep):
        assert max_queued > 0
        self._device = OutputDevice(pin, active_high=active_high, initial_value=False)
        self._sleep = sleep
        self._queue = queue.Queue(maxsize=max_queued)
        self.dropped = 0
        self.played = 0
        self._worker = threading.Thread(target=self._play_all, name="beeper", daemon=True)
        self._worker.start()

    def beep(self, kind):
        """Queue the pattern of `kind`; False (and counted in `dropped`) when the queue is full."""
        try:
            self._queue.put_nowait(PATTERNS_S.get(kind, PATTERNS_S["error"]))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def wait_idle(self, timeout_s=5.0):
        """Until every queued pattern has played (tests; a shell never waits on its beeper)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._queue.unfinished_tasks

    def _play_all(self):
        while True:
            pattern = self._queue.get()
            try:
                if pattern is _STOP:
                    return
                for on_s, off_s in pattern:
                    self._device.on()
                    self._sleep(on_s)
                    self._device.off()
                    if off_s:
                        self._sleep(off_s)
                self.played += 1
            finally:
                self._queue.task_done()

    def close(self):
        self._queue.put(_STOP)          # after what is queued: the pattern under way ends whole
        self._worker.join(timeout=5.0)
        self._device.off()
        self._device.close()


def open_beeper(spec):
    """A Beeper from `--beeper`: "GPIO18" (the Pi's pins) or "mock:GPIO18" (gpiozero's mock pins)."""
    if spec.startswith("mock:"):
        from gpiozero import Device
        from gpiozero.pins.mock import MockFactory
        if not isinstance(Device.pin_factory, MockFactory):
            Device.pin_factory = MockFactory()
        spec = spec[len("mock:"):]
    return Beeper(spec)
