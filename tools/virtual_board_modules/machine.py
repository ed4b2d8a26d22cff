"""machine for the virtual board: the part of the ESP32 port's interface a dispenser uses.

    Pin     GPIO0..GPIO39 (34..39 input only): IN, OUT, OPEN_DRAIN, PULL_UP, PULL_DOWN, value(), on(),
            off(), irq(handler, trigger) with IRQ_RISING / IRQ_FALLING; a pin's level outside the
            board is the control channel's (buttons, the flow meter), an output's is the program's
    WDT     a watchdog the program cannot stop: not fed within its timeout, the board resets
            (a soft reset does not stop it; only a reset does, as on the ESP32)
    reset, soft_reset, reset_cause, unique_id, freq, idle, disable_irq, enable_irq, lightsleep

Pin handlers run where the program waits (see _board), not between any two bytecodes.
"""
import _board
import _board_host as host

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_PIN_COUNT = 40
_INPUT_ONLY = (34, 35, 36, 37, 38, 39)
_MODE_NAMES = {1: "in", 3: "out", 7: "od"}
_PULL_NAMES = {-1: "none", None: "none", 1: "down", 2: "up"}
_pins = {}


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __new__(cls, id, *args, **kwargs):
        pin = _pins.get(id)
        if pin is None:
            if not isinstance(id, int) or not 0 <= id < _PIN_COUNT:
                raise ValueError("invalid pin")
            pin = object.__new__(cls)
            pin._id = id
            pin._mode = 1
            pin._pull = -1
            pin._out = 0
            pin._trigger = 0
            pin._handler = None
            _pins[id] = pin
        return pin

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        if mode != -1 or pull != -1 or value is not None:
            self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        if mode != -1:
            if mode not in _MODE_NAMES:
                raise ValueError("invalid pin mode")
            if mode != Pin.IN and self._id in _INPUT_ONLY:
                raise ValueError("pin can only be input")
            self._mode = mode
        if pull != -1:
            if pull not in _PULL_NAMES:
                raise ValueError("invalid pull")
            self._pull = pull
        if value is not None:
            self._out = 1 if value else 0
        host.pin_init(self._id, _MODE_NAMES[self._mode], _PULL_NAMES[self._pull], self._out, self._trigger)

    def value(self, x=None):
        if x is None:
            return host.pin_read(self._id)
        self._out = 1 if x else 0
        host.pin_write(self._id, self._out)
        return None

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
        self._handler = handler
        self._trigger = trigger if handler is not None else 0
        if handler is None:
            _board.irq_handlers.pop(self._id, None)
        else:
            pin = self
            _board.irq_handlers[self._id] = lambda count: _fire(pin, count)
        host.pin_irq(self._id, self._trigger)
        return self

    def __repr__(self):
        return "Pin(%d)" % self._id


def _fire(pin, count):
    handler = pin._handler
    for _ in range(count):      # bounded by the edges the control channel sent
        if handler is None:
            return
        handler(pin)


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        self._timeout_ms = int(timeout)
        host.wdt(self._timeout_ms)

    def feed(self):
        host.wdt(self._timeout_ms)


def reset():
    host.hard_reset(SOFT_RESET)      # ESP_RST_SW: the ESP32 reports machine.reset() as SOFT_RESET


def soft_reset():
    raise SystemExit


def reset_cause():
    return host.reset_cause()


def unique_id():
    return bytes.fromhex(host.mac())


def freq(hz=None):
    if hz is None:
        return 160000000
    return None


def idle():
    _board.idle(1)


def lightsleep(time_ms=None):
    if time_ms is None:
        _board.idle(-1)
    else:
        import time
        time.sleep_ms(time_ms)


def disable_irq():
    state = _board.irq_enabled
    _board.irq_enabled = False
    return state


def enable_irq(state=True):
    _board.irq_enabled = bool(state)
    _board.fire_edges()
