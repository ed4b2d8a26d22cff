"""The POS shell when things go wrong around a tap: a PIN typed after its prompt timed out, a reader that
fails or raises what it should not. The terminal must show what happened and take the next tap; it must never crash or hang in the
middle of a tap. Real card images on the sim: reader, the real journal, a fake raw clock (no sleeps)."""
import pytest

from firmware.core import messages, pn532_frames as frames, pos
from reader_drivers.base import ReaderTimeout, open_reader
from reader_drivers.sim import SimReader

from test_pos_terminal import journal, lines, shell_on

START_MS = 1741600000000


class RawClock:
    """The board's clock, moved by the test."""

    def __init__(self):
        self.now_ms = START_MS

    def __call__(self):
        return self.now_ms


@pytest.fixture
def shell(tmp_path):
    raw = RawClock()
    reader = open_reader("sim:")
    cache = {"single_fen": 2000}                      # 30.00 yuan needs the PIN
    terminal, card_path, out = shell_on(tmp_path, reader, cache=cache, raw_ms=raw)
    yield terminal, reader, card_path, out, raw
    terminal.close()


def _prompt_for_pin(terminal, reader, card_path, slow_read_ms=0, raw=None):
    """Key 30.00 yuan, tap the card with the terminal online: it asks for the PIN."""
    from reader_drivers.sim.classic_card import ClassicCard
    terminal.feed(pos.AmountKeyed(3000))
    terminal.machine.handle(pos.SyncAnswered(True))   # the PIN prompt needs the terminal online
    reader.field.place(ClassicCard.load(card_path))
    if slow_read_ms:
        def slow(field, number, name, phase):
            if phase == "after" and name == "read":
                raw.now_ms += slow_read_ms // 4       # four reads in read_card
        reader.field.on_operation(slow)
    assert terminal.present_card()
    assert terminal.machine.state == pos.WAIT_PIN


def test_a_pin_typed_after_the_timeout_shows_the_timeout_and_the_terminal_goes_on(shell):
    terminal, reader, card_path, out, raw = shell
    _prompt_for_pin(terminal, reader, card_path)
    raw.now_ms += 31000
    terminal.feed(pos.PinEntered("123456"))           # typed after the 30 s prompt ran out
    assert lines(out, "show")[-1]["code"] == messages.PIN_TIMEOUT
    assert [(d["accepted"], d["reason"]) for d in lines(out, "decision")] == [(False, messages.PIN_TIMEOUT)]
    assert terminal.machine.state == pos.WAIT_CARD and journal(terminal) == []


def test_the_pin_timeout_counts_from_the_prompt_not_from_the_tap(shell):
    terminal, reader, card_path, out, raw = shell
    _prompt_for_pin(terminal, reader, card_path, slow_read_ms=20000, raw=raw)
    raw.now_ms += 15000                               # 35 s after the tap, 15 s after the prompt
    terminal.feed(pos.PinEntered("123456"))
    # Not timed out: the PIN goes to the server, which this terminal cannot reach.
    assert [(d["accepted"], d["reason"]) for d in lines(out, "decision")] == [(False, messages.PIN_NEEDS_NETWORK)]


class FailingReader(SimReader):
    """The sim: reader with one failure planted: `fail[name]` is raised by the next call of `name`."""

    def __init__(self):
        SimReader.__init__(self)
        self.fail = {}

    def _maybe_fail(self, name):
        error = self.fail.pop(name, None)
        if error is not None:
            raise error

    def poll(self, timeout_ms):
        self._maybe_fail("poll")
        return SimReader.poll(self, timeout_ms)

    def decrement(self, block, delta):
        self._maybe_fail("decrement")
        SimReader.decrement(self, block, delta)


@pytest.fixture
def failing(tmp_path):
    reader = FailingReader()
    terminal, card_path, out = shell_on(tmp_path, reader)
    yield terminal, reader, card_path, out
    terminal.close()


def test_a_reader_that_fails_to_poll_shows_reader_error_and_keeps_the_amount(failing):
    terminal, reader, card_path, out = failing
    reader.fail["poll"] = ReaderTimeout("the PN532 did not answer")     # PC/SC without a UID says ReaderError
    terminal.run_line({"amount_fen": 500, "card": card_path})
    assert lines(out, "show")[-1]["code"] == messages.READER_ERROR
    assert lines(out, "show")[-1]["text"] == "读卡器故障，请重新刷卡（应付5.00元）"   # what a tap again pays
    assert [(d["accepted"], d["reason"]) for d in lines(out, "decision")] == [(False, messages.READER_ERROR)]
    assert terminal.machine.state == pos.WAIT_CARD and journal(terminal) == []
    terminal.run_line({"card": card_path})                             # the same payment, tapped again
    assert lines(out, "decision")[-1]["accepted"] and len(journal(terminal)) == 1


def test_an_exception_outside_the_reader_interface_never_leaves_the_tap_stuck(failing, capsys):
    terminal, reader, card_path, out = failing
    reader.fail["decrement"] = frames.CommandError("answer has no status byte")
    terminal.run_line({"amount_fen": 500, "card": card_path})
    assert [(d["accepted"], d["reason"]) for d in lines(out, "decision")] == [(False, messages.TAP_AGAIN)]
    assert terminal.machine.state == pos.WAIT_CARD and journal(terminal) == []
    assert "CommandError" in capsys.readouterr().err                   # the service log has the traceback
    terminal.run_line({"card": card_path})
    assert lines(out, "decision")[-1]["accepted"] and len(journal(terminal)) == 1
