"""Trustworthy record time on a board with no battery clock.

A Raspberry Pi boots with whatever time the system last saved (or 1970) and learns the real time
only when it reaches the network. Records must nevertheless be ordered and roughly right (DESIGN.md
section 3). The rules:

- `floor_ms` is one past the last time ever handed out. The shell persists it (in the same
  transaction as the journal row that used the time), so time never goes backwards, even across a
  reboot that resets the raw clock.
- `offset_ms` is added to the raw reading. The server's `server_ms` in each sync answer (and the
  explicit `set_time` command) sets it; the shell persists it so a reboot keeps the correction as
  long as the raw clock keeps running (fake-hwclock, NTP-less networks).
- A correction that moves time backwards does not move handed-out times backwards: the floor wins
  until real time catches up. Times stay strictly increasing, at the cost of a short plateau.

Sans-IO: the shell passes raw readings in and stores `floor_ms`/`offset_ms` out; nothing here reads
a clock or a file.
"""

# A server time this far from the raw reading is a corrupt answer, not a correction: ignored.
MAX_SANE_OFFSET_MS = 100 * 365 * 24 * 3600 * 1000


class Clock:
    __slots__ = ("floor_ms", "offset_ms", "corrected")

    def __init__(self, floor_ms=0, offset_ms=0):
        assert floor_ms >= 0
        self.floor_ms = floor_ms
        self.offset_ms = offset_ms
        self.corrected = False     # True once a server time was seen since start

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

        Returns True when the correction was taken, False for an impossible server time.
        """
        offset_ms = server_ms - raw_ms
        if server_ms <= 0 or not -MAX_SANE_OFFSET_MS < offset_ms < MAX_SANE_OFFSET_MS:
            return False
        self.offset_ms = offset_ms
        self.corrected = True
        return True

    def state(self):
        """What the shell persists: (floor_ms, offset_ms)."""
        return self.floor_ms, self.offset_ms


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
