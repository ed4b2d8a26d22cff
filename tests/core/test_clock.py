"""Terminal clock: never backwards across reboots, corrected by the server (plain asserts)."""
from firmware.core import clock
from firmware.core.clock import Clock, date_yyyymmdd


def test_stamps_strictly_increase_even_when_raw_clock_stands_still():
    c = Clock()
    times = [c.stamp_ms(1000) for _ in range(5)]
    assert times == [1000, 1001, 1002, 1003, 1004]


def test_reboot_with_reset_raw_clock_never_goes_backwards():
    c = Clock()
    c.correct(1741600000000, 5000)
    last = c.stamp_ms(6000)
    floor_ms, offset_ms = c.state()
    rebooted = Clock(floor_ms, 0)           # the Pi came back at 1970 and lost nothing else
    first = rebooted.stamp_ms(10)
    assert first > last


def test_server_correction_moves_time_forward():
    c = Clock(floor_ms=0)
    assert c.stamp_ms(1000) == 1000
    assert c.correct(1741600000000, 2000)
    assert c.stamp_ms(2000) == 1741600000000
    assert c.stamp_ms(2500) == 1741600000500


def test_backward_correction_plateaus_instead_of_going_back():
    c = Clock()
    c.correct(1741600100000, 1000)
    before = c.stamp_ms(1000)
    c.correct(1741600000000, 1000)          # server says we were 100 s fast
    after = c.stamp_ms(2000)
    assert after == before + 1
    assert c.peek_ms(200000) == 1741600000000 + 199000


def test_impossible_server_time_is_ignored():
    c = Clock()
    c.correct(1741600000000, 0)
    assert not c.correct(0, 5)
    assert not c.correct(-1, 5)
    assert c.offset_ms == 1741600000000


def test_peek_does_not_consume():
    c = Clock(floor_ms=50)
    assert c.peek_ms(10) == 50
    assert c.peek_ms(10) == 50
    assert c.stamp_ms(10) == 50
    assert c.peek_ms(10) == 51


def test_calendar_day_in_beijing_time():
    assert date_yyyymmdd(0) == 19700101
    assert date_yyyymmdd(0, 0) == 19700101
    assert date_yyyymmdd(1741600000000) == 20250310
    # 2024-02-29 16:00 UTC is already 2024-03-01 in Beijing
    assert date_yyyymmdd(1709222400000) == 20240301
    assert date_yyyymmdd(1709222400000 - 1) == 20240229
    assert date_yyyymmdd(1735660800000) == 20250101    # 2024-12-31 16:00 UTC


def test_clock_text_in_china_standard_time():
    # 2025-03-01 04:05:09 UTC is 12:05:09 in Beijing.
    assert clock.clock_text(1740801909000) == "2025-03-01 12:05:09"
    assert clock.clock_text(1740801909000, 0) == "2025-03-01 04:05:09"
    assert clock.clock_text(0) == "1970-01-01 08:00:00"


DAY_MS = 24 * 3600 * 1000
NOW_MS = 1741600000000           # 2025-03-10


def _running_clock():
    """A terminal that has been set and has handed out times: raw clock 1000 ms = NOW_MS."""
    c = Clock()
    assert c.correct(NOW_MS, 1000)
    c.stamp_ms(1000)
    return c


def test_one_answer_far_in_the_future_does_not_freeze_the_clock():
    c = _running_clock()
    assert not c.correct(NOW_MS + 20 * 365 * DAY_MS, 2000)     # one corrupt answer: not taken
    stamped = c.stamp_ms(3000)
    assert stamped == NOW_MS + 2000
    assert date_yyyymmdd(c.peek_ms(3000)) == 20250310          # cards keep their real expiry day
    assert c.correct(NOW_MS + 5000, 4000)                      # the next sane answer is taken
    assert c.stamp_ms(5000) == NOW_MS + 5000 + 1000


def test_a_far_jump_is_taken_once_a_second_answer_agrees():
    """A terminal switched off over a holiday: the first answer is held back, the next one confirms it."""
    c = _running_clock()
    later_ms = NOW_MS + 3 * DAY_MS
    assert not c.correct(later_ms, 2000)
    assert c.correct(later_ms + 5000, 7000 + 20)               # 5 s later, a little network noise
    assert date_yyyymmdd(c.stamp_ms(7020)) == 20250313


def test_disagreeing_far_answers_are_never_taken():
    c = _running_clock()
    for years in (5, 10, 20):
        assert not c.correct(NOW_MS + years * 365 * DAY_MS, 2000)
    assert c.peek_ms(2000) == NOW_MS + 1000


def test_a_clock_never_set_takes_its_first_answer():
    c = Clock()
    c.stamp_ms(5)                                               # a Pi that booted at 1970
    assert c.correct(NOW_MS, 10)
    assert c.peek_ms(10) == NOW_MS


def test_set_time_moves_anywhere_and_lowers_a_floor_stuck_in_the_future():
    future_ms = NOW_MS + 30 * 365 * DAY_MS
    c = Clock(floor_ms=future_ms, offset_ms=NOW_MS)            # persisted from an earlier bad answer
    assert date_yyyymmdd(c.peek_ms(0)) > 20500000
    assert c.correct(NOW_MS, 0)                                 # an ordinary answer cannot lower it
    assert c.peek_ms(0) == future_ms
    assert c.set_time(NOW_MS, 0)
    floor_ms, offset_ms = c.state()
    assert floor_ms == NOW_MS and offset_ms == NOW_MS
    assert c.stamp_ms(0) == NOW_MS and c.stamp_ms(0) == NOW_MS + 1
    assert not c.set_time(0, 0) and not c.set_time(-5, 0)


def test_set_time_takes_a_far_jump_at_once():
    c = _running_clock()
    assert c.set_time(NOW_MS + 3 * DAY_MS, 2000)
    assert c.stamp_ms(2000) == NOW_MS + 3 * DAY_MS
