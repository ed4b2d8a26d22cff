"""One test rig per reader driver: start what the driver talks to, open its Reader, and give the test a
card slot where it places, pulls, and pulls-at-the-n-th-command virtual cards, the same way on every
driver. This is what lets one POS test run on sim:, pn532:, pcsc: and nfcpy: alike.

    with start_rig("pcsc", workdir) as rig:      # rig.name, rig.url, rig.slot
        reader = rig.open_reader()
        rig.slot.place(card); rig.slot.pull_after(3, done=False); ...

    rig         what runs                                  card slot
    ----------  -----------------------------------------  ------------------------------------------
    sim         nothing (in-process VirtualField)          the reader's VirtualField
    pn532       Pn532Emulator on a pseudo-terminal         the emulator's VirtualField
    pcsc        the real pcscd with vpcd + VpcdCard        PcscCardSlot: a VirtualField whose card is
                                                           inserted in vpcd (pcscd sees it arrive)
    nfcpy       Pn532Emulator, opened through nfcpy        the emulator's VirtualField

The slot has VirtualField's interface (place, pull, pull_after, on_operation), so a pull point is
counted in card commands (authenticate, read, decrement, transfer, ...) whatever carries them: a
PN532 frame, or an ACR122U value APDU that does decrement and transfer in one.

`available_rigs()` says which rigs can start on this machine (and why not), for the `--reader`
option in conftest.py.
"""
import contextlib
import os

from reader_drivers.base import open_reader
from reader_drivers.sim.field import VirtualField

RIG_NAMES = ("sim", "pn532", "pcsc", "nfcpy")
# Waiting for pcscd to notice a card come or go: a deadline to give up, not a speed claim.
PCSCD_CARD_DEADLINE_S = 10


class Rig:
    def __init__(self, name, url, slot, close=None):
        self.name = name
        self.url = url
        self.slot = slot
        self._close = close

    def open_reader(self):
        """A Reader on this rig; the caller closes it. The sim: reader shares the rig's field."""
        if self.name == "sim":
            return open_reader(self.url, field=self.slot)
        return open_reader(self.url)

    def close(self):
        self.slot.pull()
        if self._close is not None:
            self._close()

    def __repr__(self):
        return "Rig(%s, %s)" % (self.name, self.url)


class PcscCardSlot(VirtualField):
    """A VirtualField behind the vpcd reader slot. Placing a card inserts a stand-in for it into vpcd
    whose every MIFARE command goes through this field (`operate`), so field hooks - pull_after,
    card image write-through - see PC/SC commands as they see PN532 ones. Pulling the card, also
    from a hook in the middle of an APDU, hangs up on vpcd: pcscd sees the card leave, and the
    answer to that APDU is lost as it would be with a real card."""

    def __init__(self, vpcd_slot, reader_name):
        super().__init__()
        self.vpcd_slot = vpcd_slot
        self.reader_name = reader_name

    def place(self, card):
        from pcscd_service import wait_for_card
        self.pull()
        # pcscd must have seen the last card leave, or the terminal would take the new one for it.
        assert wait_for_card(self.reader_name, present=False, deadline_s=PCSCD_CARD_DEADLINE_S), \
            "pcscd still reports the card pulled before"
        super().place(card)
        self.vpcd_slot.insert(_CardThroughField(self, card))

    def pull(self):
        card = super().pull()
        # Never while holding the field's lock: the vpcd thread takes the slot lock, then the field's.
        self.vpcd_slot.remove()
        return card


class _CardThroughField:
    """What vpcd's ACR122U firmware holds as its card: selection and power go to the card, MIFARE
    commands through the field, so hooks and pulls apply to them."""

    _COMMANDS = frozenset(("authenticate", "read", "write", "increment", "decrement", "restore", "transfer"))

    def __init__(self, field, card):
        self._field = field
        self._card = card

    def __getattr__(self, name):
        if name in self._COMMANDS:
            return lambda *arguments: self._field.operate(name, *arguments)
        return getattr(self._card, name)


# --- starting each rig ------------------------------------------------------------------------------

@contextlib.contextmanager
def _sim_rig(_workdir):
    rig = Rig("sim", "sim:", VirtualField())
    try:
        yield rig
    finally:
        rig.close()


@contextlib.contextmanager
def _pn532_rig(_workdir):
    from simulators.pn532_emulator import Pn532Emulator
    with Pn532Emulator() as emulator:
        rig = Rig("pn532", "pn532:%s?baud=115200" % emulator.path, emulator.field)
        rig.emulator = emulator
        try:
            yield rig
        finally:
            rig.close()


@contextlib.contextmanager
def _pcsc_rig(workdir):
    from pcscd_service import running_pcscd
    from simulators.vpcd_card import VpcdCard
    with running_pcscd(workdir) as service:
        vpcd_slot = VpcdCard(service.port)
        reader_name = service.readers[0]
        rig = Rig("pcsc", "pcsc:" + reader_name, PcscCardSlot(vpcd_slot, reader_name), close=vpcd_slot.close)
        rig.service = service
        try:
            yield rig
        finally:
            rig.close()


@contextlib.contextmanager
def _nfcpy_rig(_workdir):
    from simulators.pn532_emulator import Pn532Emulator
    with Pn532Emulator() as emulator:
        rig = Rig("nfcpy", "nfcpy:tty:%s" % emulator.path, emulator.field)
        rig.emulator = emulator
        try:
            yield rig
        finally:
            rig.close()


_STARTERS = {"sim": _sim_rig, "pn532": _pn532_rig, "pcsc": _pcsc_rig, "nfcpy": _nfcpy_rig}


def start_rig(name, workdir):
    """Context manager yielding a started Rig; what it started stops on exit."""
    assert name in _STARTERS, "unknown reader rig %r (known: %s)" % (name, ", ".join(RIG_NAMES))
    os.makedirs(str(workdir), exist_ok=True)
    return _STARTERS[name](workdir)


# --- what can start here ----------------------------------------------------------------------------

def _module_file(module):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *module.split(".")) + ".py"


def why_not(name):
    """None when the rig can start on this machine, else the reason it cannot (for the test report)."""
    if name == "sim":
        return None
    if name in ("pn532", "nfcpy"):
        if not hasattr(os, "openpty"):
            return "no pseudo-terminals on this system"
        if name == "nfcpy":
            if not os.path.exists(_module_file("reader_drivers.nfcpy_driver")):
                return "reader_drivers/nfcpy_driver.py does not exist yet"
            try:
                import nfc  # noqa: F401
            except ImportError as error:
                return "nfcpy is not installed: %s" % error
        return None
    if name == "pcsc":
        import pcscd_service
        try:
            pcscd_service._require_installed()
        except pcscd_service.PcscdUnavailable as error:
            return str(error)
        other = pcscd_service._running_pcscd_pid()
        if other is not None:
            return "another pcscd is running (pid %d)" % other
        return None
    return "unknown reader rig %r" % name


def available_rigs():
    """{name: None or the reason it cannot start}, for every known rig."""
    return {name: why_not(name) for name in RIG_NAMES}


def rig_exists(name):
    """Whether the rig's driver is in the tree at all (nfcpy: lands separately)."""
    return name != "nfcpy" or os.path.exists(_module_file("reader_drivers.nfcpy_driver"))


__all__ = ("RIG_NAMES", "Rig", "PcscCardSlot", "start_rig", "why_not", "available_rigs", "rig_exists")
