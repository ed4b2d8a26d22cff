"""Trustworthy record time on a board with no battery clock.

A Raspberry Pi boots with whatever time the system last saved (or 1970) and learns the real time
only when it reaches the network. Records must nevertheless be ordered and roughly right (DESIGN.md
section 3). The rules:

- `floor_ms` is one past the last time ever handed out. The shell persists it (in the same
  transaction as the journal row that used the time), so time never goes backwards, even across a
  reboot that resets the raw clock.
- `offset_ms` is added to the raw reading. The server's `server_ms` in each sync answer sets it
  (`correct`); the shell persists it so a reboot keeps the correction as long as the raw clock keeps
  running (fake-hwclock, NTP-less networks).
- A correction that moves time backwards does not move handed-out times backwards: the floor wins
  until real time catches up, so times stay strictly increasing at the cost of a plateau as long as
  the step back. Because nothing but an explicit set_time lowers the floor, a wrong time far in the
  future would freeze the clock (and make every card look expired). So once the clock reads a real
  date (EARLIEST_SET_MS), an answer more than MAX_UNCONFIRMED_JUMP_MS ahead of it is only taken when
  the next answer agrees: a terminal that was off over a holiday catches up one sync later, one
  corrupt answer changes nothing. A clock still reading 1970 takes its first sane answer.
- `set_time` is the server's explicit command (inside an authenticated answer): taken at once, however
  far it moves, and it lowers the floor when that lies ahead of the time set - the one way out of a
  floor stuck in the future. Times handed out before it may then be later than the ones after it;
  records stay ordered by seq.

Sans-IO: the shell passes raw readings in and stores `floor_ms`/`offset_ms` out; nothing here reads
a clock or a file.
"""
# A server time this far from the raw reading is a corrupt answer, not a correction: ignored.
MAX_SANE_OFFSET_MS = 100 * 365 * 24 * 3600 * 1000
# A correction further ahead than this needs a second answer that agrees (module doc): a day, so a
# weekend with the board off is two syncs away, not refused.
MAX_UNCONFIRMED_JUMP_MS = 24 * 3600 * 1000
# A clock that reads earlier than this (2020-01-01 UTC) was never set: its first answer is taken.
EARLIEST_SET_MS = 1577836800000
# How closely the confirming answer must agree (network delay differs between the two calls).
CONFIRM_TOLERANCE_MS = 60 * 1000


class Clock:
    __slots__ = ("floor_ms", "offset_ms", "_unconfirmed_offset_ms")

    def __init__(self, floor_ms=0, offset_ms=0):
        assert floor_ms >= 0
        self.floor_ms = floor_ms
        self.offset_ms = offset_ms
        self._unconfirmed_offset_ms = None   # a far jump ahead seen once, waiting for a second answer

    def peek_ms(self, raw_ms):
        """Best current time without consuming it (for display, day boundaries, timeouts)."""
        return max(raw_ms + self.offset_ms, self.floor_ms)

    def stamp_ms(self, raw_ms):
        """A time for a record: never lower than any time handed out before, strictly increasing.

        The caller must persist `floor_ms` together with whatever uses the returned time.
        """
        now_ms = self.peek_ms(raw_ms)
        self.floor_ms = now_ms + 1
        return now_ms

    def correct(self, server_ms, raw_ms):
        """The server says it is `server_ms` at our raw reading `raw_ms` (midpoint of the call).

        Returns True when the correction was taken; False for an impossible server time, and for a
        jump far ahead that no second answer has confirmed yet (module doc).
        """
        offset_ms = server_ms - raw_ms
        if not _sane(server_ms, offset_ms):
            return False
        now_ms = self.peek_ms(raw_ms)
        if now_ms >= EARLIEST_SET_MS and server_ms - now_ms > MAX_UNCONFIRMED_JUMP_MS:
            seen_ms = self._unconfirmed_offset_ms
            self._unconfirmed_offset_ms = offset_ms
            if seen_ms is None or abs(offset_ms - seen_ms) > CONFIRM_TOLERANCE_MS:
                return False
        self._unconfirmed_offset_ms = None
        self.offset_ms = offset_ms
        return True

    def set_time(self, server_ms, raw_ms):
        """The server's explicit set_time command, from an authenticated answer: `server_ms` at our
        raw reading `raw_ms`. Taken however far it moves; lowers the floor to it when the floor lies
        ahead (the way out of a wrong future time). False only for an impossible time.

        The caller persists both values, letting the floor go down (the one place it may).
        """
        offset_ms = server_ms - raw_ms
        if not _sane(server_ms, offset_ms):
            return False
        self._unconfirmed_offset_ms = None
        self.offset_ms = offset_ms
        if self.floor_ms > server_ms:
            self.floor_ms = server_ms
        return True

    def state(self):
        """What the shell persists: (floor_ms, offset_ms)."""
        return self.floor_ms, self.offset_ms


def _sane(server_ms, offset_ms):
    """A server time this far from the raw reading is a corrupt answer, not a correction."""
    return server_ms > 0 and -MAX_SANE_OFFSET_MS < offset_ms < MAX_SANE_OFFSET_MS


def date_yyyymmdd(time_ms, utc_offset_min=480):
    """Calendar day (as 20250301) of a time in ms, in the site's zone (China Standard Time default).

    Civil-from-days (H. Hinnant's algorithm), so no `time` module is needed on MicroPython.
    """
    days = (time_ms // 1000 + utc_offset_min * 60) // 86400
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return y * 10000 + m * 100 + d


def clock_text(time_ms, utc_offset_min=480):
    """'2025-03-01 12:05:09' for a time in ms, in the site's zone (no `time` module needed)."""
    day = date_yyyymmdd(time_ms, utc_offset_min)
    seconds = (time_ms // 1000 + utc_offset_min * 60) % 86400
    return "%04d-%02d-%02d %02d:%02d:%02d" % (day // 10000, day // 100 % 100, day % 100,
                                              seconds // 3600, seconds // 60 % 60, seconds % 60)
