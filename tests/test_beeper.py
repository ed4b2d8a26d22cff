"""The beeper (firmware/apps/beeper.py) on gpiozero's mock pins: each Beep kind's pattern as the pin's
own history of highs, a bounded queue that drops rather than holds the till up, and the POS shell
beeping what its core decided - refusals three times, a repeat tap for the cashier twice long."""
import json
import subprocess
import sys
import threading

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from firmware.apps import beeper as beeper_module
from reader_drivers.base import open_reader
from test_pos_terminal import provisioning, shell_on

PIN = "GPIO18"


@pytest.fixture
def pin():
    previous = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory.pin(PIN)
    Device.pin_factory.reset()
    Device.pin_factory = previous


class Slept:
    """A sleep that records what it was asked for, without waiting."""

    def __init__(self):
        self.seconds = []

    def __call__(self, seconds):
        self.seconds.append(seconds)


def highs(pin):
    """How many times the pin went high since the device was made (its history starts low)."""
    states = [state.state for state in pin.states]
    return sum(1 for before, after in zip(states, states[1:]) if not before and after)


@pytest.mark.parametrize("kind, beeps, seconds", [
    ("ok", 1, [0.08]),
    ("error", 3, [0.07, 0.07] * 3),
    ("attention", 2, [0.3, 0.15] * 2),
    ("a kind the core may add later", 3, [0.07, 0.07] * 3),       # never silent: the error pattern
])
def test_each_kind_plays_its_pattern_and_leaves_the_pin_low(pin, kind, beeps, seconds):
    slept = Slept()
    device = beeper_module.Beeper(PIN, sleep=slept)
    assert device.beep(kind) is True
    assert device.wait_idle()
    assert highs(pin) == beeps and slept.seconds == seconds and device.played == 1
    device.close()
    assert not pin.state


def test_a_full_queue_drops_beeps_instead_of_holding_the_till(pin):
    release = threading.Event()
    started = threading.Event()

    def held_sleep(_seconds):
        started.set()
        release.wait(5)
    device = beeper_module.Beeper(PIN, max_queued=2, sleep=held_sleep)
    device.beep("ok")                     # the worker takes it and sits in its beep
    assert started.wait(5)
    assert device.beep("ok") and device.beep("ok")
    assert device.beep("error") is False and device.dropped == 1      # returned at once, counted
    release.set()
    assert device.wait_idle()
    assert device.played == 3 and highs(pin) == 3
    device.close()


def test_the_pos_shell_beeps_what_the_core_decided(pin, tmp_path):
    slept = Slept()
    device = beeper_module.Beeper(PIN, sleep=slept)
    terminal, card_path, out = shell_on(tmp_path, open_reader("sim:"), beeper=device)
    try:
        terminal.run_line({"amount_fen": 800, "card": card_path})          # accepted: one short
        assert device.wait_idle() and highs(pin) == 1
        terminal.run_line({"amount_fen": 800, "card": card_path})          # 重复刷卡: two long for the cashier
        assert device.wait_idle() and highs(pin) >= 3
        before = highs(pin)
        terminal.run_line({"amount_fen": 999999, "card": card_path})       # 金额无效: three short
        assert device.wait_idle() and highs(pin) - before == 3
    finally:
        terminal.close()
        device.close()
    beeps = [line for line in out.getvalue().splitlines() if '"beep"' in line]
    assert len(beeps) >= 3          # the JSON lines still say so, for scripts


def test_ykt_terminal_refuses_a_pin_it_cannot_open(tmp_path):
    """Off a Raspberry Pi the Pi's pins do not open: one line, the device exit code, no traceback."""
    provision = tmp_path / "provision.json"
    provision.write_text(json.dumps(provisioning()))
    done = subprocess.run([sys.executable, "-m", "ykt", "terminal", "--provision", str(provision), "--data-dir",
                           str(tmp_path / "t"), "--no-sync", "--beeper", "GPIO999", "--script", "-"],
                          input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 5 and "Traceback" not in done.stderr and "蜂鸣器" in done.stderr


def test_the_dispenser_beeps_when_the_water_may_start(live_server, tmp_path):
    from test_dispenser_terminal import Rig
    rig = Rig(live_server, tmp_path)            # gpiozero's mock pins for the valve, the meter and the beeper
    device = beeper_module.Beeper("GPIO21", sleep=Slept())
    rig.terminal.beeper = device
    try:
        rig.run({"sync": True}, {"card": rig.card_path})
        assert "water_authorised" in [line["code"] for line in rig.lines("show")] and rig.valve.is_open
        assert device.wait_idle() and highs(rig.factory.pin("GPIO21")) == 1
    finally:
        device.close()
        rig.close()


def test_the_activation_unit_opens_its_beeper_and_closes_it_on_a_refusal(tmp_path):
    """`ykt activation --beeper mock:GPIO18`: the beeper opens on gpiozero's mock pins before the unit,
    and a unit that then cannot start (a canteen's provisioning, no old keys) says so in one line and
    closes it on the way out."""
    provision = tmp_path / "provision.json"
    provision.write_text(json.dumps(provisioning()))
    done = subprocess.run([sys.executable, "-m", "ykt", "activation", "--provision", str(provision), "--data-dir",
                           str(tmp_path / "unit"), "--no-sync", "--voice", "off", "--beeper", "mock:GPIO18",
                           "--script", "-"], input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "激活机无法启动" in done.stderr and len(done.stderr.strip().splitlines()) == 1
