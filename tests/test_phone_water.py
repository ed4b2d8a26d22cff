"""The phone's water session logic over a link that plays back what a dispenser notifies: the end
note, and a refusal reported on PROGRESS (as the ESP32 board does, its aioble stack having no ATT
error for a write)."""
import asyncio

import pytest

from firmware.core import water_grants as w
from simulators.phone_ble import PhoneBleError
from simulators.phone_water import WaterSession


class PlayedBackLink:
    """The DispenserLink calls WaterSession makes, answering with the notes given."""

    def __init__(self, notes):
        self.notes = list(notes)

    async def next_progress(self, timeout_ms):
        return self.notes.pop(0)


def test_the_session_ends_on_the_end_note():
    link = PlayedBackLink([w.Progress(w.PROGRESS_DISPENSING, 100, 3, 300), w.Progress(w.PROGRESS_ENDED, 150, 4, 300)])
    session = WaterSession(None, link)
    assert asyncio.run(session.wait_for_end()).ml == 150


def test_a_refusal_on_progress_is_the_dispensers_refusal():
    link = PlayedBackLink([w.Progress(w.REFUSED_BUSY, 0, 0, 0)])
    with pytest.raises(PhoneBleError) as refused:
        asyncio.run(WaterSession(None, link).wait_for_end())
    assert refused.value.code == w.REFUSED_BUSY and "正在出水" in str(refused.value)
