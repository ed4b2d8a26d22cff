"""_thread for the virtual board. The WebAssembly port runs one thread, so a lock is only ever
contended by the thread holding it: acquiring it again blocks (the board hangs, and its watchdog
resets it, as a deadlock on the ESP32 would), and no thread can be started."""
import time


class LockType:
    def __init__(self):
        self._locked = False

    def acquire(self, waitflag=1, timeout=-1):
        if not self._locked:
            self._locked = True
            return True
        if not waitflag:
            return False
        if timeout < 0:
            while self._locked:     # nobody else can release it: the deadlock the watchdog ends
                time.sleep_ms(1000)
        else:
            time.sleep_ms(int(timeout * 1000))
        return False

    def release(self):
        if not self._locked:
            raise RuntimeError("release unlocked lock")
        self._locked = False

    def locked(self):
        return self._locked

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def allocate_lock():
    return LockType()


def get_ident():
    return 1


def stack_size(size=None):
    return 0


def start_new_thread(function, args, kwargs=None):
    raise OSError(95, "the virtual board runs one thread (WebAssembly)")    # EOPNOTSUPP
