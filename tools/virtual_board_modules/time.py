"""time, with sleeps that wait for the board's events as the ESP32's do (its scheduler runs pin and
Bluetooth callbacks and Ctrl-C during a sleep) instead of spinning the WebAssembly port's busy loop.
Everything else is MicroPython's own time module."""
from utime import *  # noqa: F403
import utime

import _board


def sleep_ms(ms):
    deadline = utime.ticks_add(utime.ticks_ms(), int(ms))
    while True:     # bounded by the deadline: idle() returns early only on events
        left = utime.ticks_diff(deadline, utime.ticks_ms())
        if left <= 0:
            return
        _board.idle(left)


def sleep(seconds):
    sleep_ms(int(seconds * 1000))


def sleep_us(us):
    us = int(us)
    if us >= 1000:
        sleep_ms(us // 1000)
    utime.sleep_us(us % 1000)
