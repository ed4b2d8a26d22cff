"""asyncio for the virtual board: MicroPython's asyncio interface on a loop that waits in the board.

The WebAssembly port's own asyncio hands its tasks to JavaScript's event loop and has no run(); on
the virtual board the interpreter blocks like an ESP32's, so this loop waits for its next timer in
_board.idle(), where pin and Bluetooth events arrive (their handlers may set a ThreadSafeFlag and so
wake a task) and Ctrl-C raises KeyboardInterrupt out of run(), as on a board.

    run, create_task, current_task, gather, sleep, sleep_ms, wait_for, wait_for_ms, Event,
    ThreadSafeFlag, Lock, Task (cancel, done, await), CancelledError, TimeoutError,
    get_event_loop / new_event_loop (run_forever, run_until_complete, stop, close, exception handler)

Not here: streams (open_connection, start_server, StreamReader), which need sockets the board has not.
A task is a coroutine (a generator); what it yields says what it waits for: None (run again soon),
a _Sleep, a Task, or one of the waitables below.
"""
import heapq
import sys
import time

import _board

POLL_EVERY_MS = 5           # a busy loop still looks at the board's events this often


class CancelledError(BaseException):
    pass


class TimeoutError(Exception):
    pass


_now_ms = 0                 # the loop's clock: ticks_ms added up, so it never wraps
_last_ticks = time.ticks_ms()


def _clock_ms():
    global _now_ms, _last_ticks
    ticks = time.ticks_ms()
    _now_ms += max(0, time.ticks_diff(ticks, _last_ticks))
    _last_ticks = ticks
    return _now_ms


class _Sleep:
    def __init__(self, ms):
        self.ms = ms

    def __iter__(self):
        yield self

    __await__ = __iter__


def sleep_ms(ms):
    return _Sleep(max(0, int(ms)))


def sleep(seconds):
    return _Sleep(max(0, int(seconds * 1000)))


class _Waitable:
    """Something tasks wait on in a list, woken in order."""

    def __init__(self):
        self.waiting = []

    def _add(self, task):
        self.waiting.append(task)

    def _remove(self, task):
        if task in self.waiting:
            self.waiting.remove(task)

    def _wake_all(self):
        waiting, self.waiting = self.waiting, []
        for task in waiting:
            _loop._ready(task)

    def _wake_one(self):
        if self.waiting:
            _loop._ready(self.waiting.pop(0))
            return True
        return False


class Task(_Waitable):
    def __init__(self, coro):
        _Waitable.__init__(self)
        self.coro = coro
        self._done = False
        self._result = None
        self._error = None
        self._send = None
        self._throw = None
        self._blocker = None        # what it waits on: a _Waitable, or the loop's timers
        self._timer = None          # the key of its entry in the timer heap
        self._retrieved = False

    def __iter__(self):
        if not self._done:
            yield self
        self._retrieved = True
        if self._error is not None:
            raise self._error
        return self._result

    __await__ = __iter__

    def done(self):
        return self._done

    def cancel(self):
        if self._done:
            return False
        if self._throw is None:
            self._throw = CancelledError()
        _loop._unblock(self)
        if self is not _loop.current:
            _loop._ready(self)
        return True

    def _finish(self, result, error):
        self._done = True
        self._result = result
        self._error = error
        waiters = bool(self.waiting)
        self._wake_all()
        if isinstance(error, Exception) and not waiters:     # not CancelledError, Ctrl-C, SystemExit
            _loop.call_exception_handler({"message": "Task exception wasn't retrieved", "future": self,
                                          "exception": error})

    def __repr__(self):
        return "<Task>"


class _Flag(_Waitable):
    """What Event and ThreadSafeFlag share: a state that set() raises, waking every waiter."""

    def __init__(self):
        _Waitable.__init__(self)
        self.state = False

    def set(self):
        self.state = True
        self._wake_all()

    def clear(self):
        self.state = False


class Event(_Flag):
    def is_set(self):
        return self.state

    def wait(self):
        while not self.state:       # woken when set; set and cleared at once, it waits again
            yield self
        return True


class ThreadSafeFlag(_Flag):
    """Set from an IRQ handler; one waiter takes it and it is clear again."""

    def wait(self):
        while not self.state:
            yield self
        self.state = False


class Lock(_Waitable):
    def __init__(self):
        _Waitable.__init__(self)
        self.state = False

    def locked(self):
        return self.state

    def release(self):
        if not self.state:
            raise RuntimeError("Lock not acquired")
        self.state = False
        self._wake_one()

    def acquire(self):
        while self.state:
            yield self
        self.state = True
        return True

    async def __aenter__(self):
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info):
        self.release()


class Loop:
    def __init__(self):
        self.queue = []             # tasks ready to run, in order
        self.timers = []            # heap of (due_ms, key, task)
        self.current = None
        self.stopping = False
        self.handler = None
        self._keys = 0

    # -- bookkeeping --------------------------------------------------------------------------------
    def _ready(self, task):
        task._blocker = None
        if task not in self.queue:
            self.queue.append(task)

    def _unblock(self, task):
        blocker = task._blocker
        task._blocker = None
        task._timer = None          # its heap entry, if any, is skipped when it comes due
        if isinstance(blocker, _Waitable):
            blocker._remove(task)

    def _sleep(self, task, ms):
        self._keys += 1
        task._timer = self._keys
        task._blocker = self
        heapq.heappush(self.timers, (_clock_ms() + ms, self._keys, task))

    def _due(self):
        now = _clock_ms()
        while self.timers and self.timers[0][0] <= now:
            _due_ms, key, task = heapq.heappop(self.timers)
            if task._timer == key:
                task._timer = None
                self._ready(task)

    def _next_timer_ms(self):
        while self.timers and self.timers[0][2]._timer != self.timers[0][1]:
            heapq.heappop(self.timers)          # cancelled sleeps
        if not self.timers:
            return -1
        return max(0, self.timers[0][0] - _clock_ms())

    # -- one step of one task -------------------------------------------------------------------------
    def _step(self, task):
        self.current = task
        try:
            if task._throw is not None:
                error, task._throw = task._throw, None
                waited = task.coro.throw(error)
            else:
                value, task._send = task._send, None
                waited = task.coro.send(value)
        except StopIteration as stop:
            task._finish(stop.value if stop.args else None, None)
            return
        except (KeyboardInterrupt, SystemExit) as error:
            task._finish(None, error)
            raise
        except BaseException as error:
            task._finish(None, error)
            return
        finally:
            self.current = None
        if task._throw is not None:                 # cancelled itself while running: at once
            self._ready(task)
        elif waited is None:
            self._ready(task)
        elif isinstance(waited, _Sleep):
            self._sleep(task, waited.ms)
        elif isinstance(waited, _Waitable):
            if isinstance(waited, Task) and waited._done:
                self._ready(task)
            else:
                task._blocker = waited
                waited._add(task)
        else:
            task._throw = RuntimeError("a task awaited %r, which is not awaitable here" % (waited,))
            self._ready(task)

    def _run(self, until=None):
        polled_ms = _clock_ms()
        while True:                 # the board's loop: until `until` is done or stop()
            if until is not None and until._done:
                return
            if self.stopping:
                self.stopping = False
                return
            self._due()
            if not self.queue:
                _board.idle(self._next_timer_ms())
                polled_ms = _clock_ms()
                continue
            if _clock_ms() - polled_ms >= POLL_EVERY_MS:
                _board.idle(0)
                polled_ms = _clock_ms()
            self._step(self.queue.pop(0))

    # -- the public loop ------------------------------------------------------------------------------
    def create_task(self, coro):
        return create_task(coro)

    def run_forever(self):
        self._run()

    def run_until_complete(self, awaitable):
        task = _promote(awaitable)
        self._run(task)
        task._retrieved = True
        if task._error is not None:
            raise task._error
        return task._result

    def stop(self):
        self.stopping = True

    def close(self):
        pass

    def set_exception_handler(self, handler):
        self.handler = handler

    def get_exception_handler(self):
        return self.handler

    def default_exception_handler(self, loop, context):
        print(context["message"])
        print("future:", context["future"], "coro=", context["future"].coro)
        sys.print_exception(context["exception"])

    def call_exception_handler(self, context):
        (self.handler or self.default_exception_handler)(self, context)


_loop = Loop()


def get_event_loop():
    return _loop


def new_event_loop():
    global _loop
    _loop = Loop()
    return _loop


def current_task():
    if _loop.current is None:
        raise RuntimeError("no running task")
    return _loop.current


def create_task(coro):
    if not hasattr(coro, "send"):
        raise TypeError("coroutine expected")
    task = Task(coro)
    _loop._ready(task)
    return task


async def _awaiting(awaitable):
    return await awaitable


def _promote(awaitable):
    if isinstance(awaitable, Task):
        return awaitable
    return create_task(awaitable if hasattr(awaitable, "send") else _awaiting(awaitable))


def run(coro):
    return new_event_loop().run_until_complete(create_task(coro))


async def _cancel_after(task, timeout_ms, fired):
    await sleep_ms(timeout_ms)
    fired.append(True)
    task.cancel()


async def wait_for_ms(awaitable, timeout_ms):
    task = _promote(awaitable)
    if timeout_ms is None:
        return await task
    fired = []
    canceller = create_task(_cancel_after(task, timeout_ms, fired))
    try:
        return await task
    except CancelledError:
        if fired:
            raise TimeoutError
        task.cancel()           # we were cancelled ourselves: so is what we waited for
        raise
    finally:
        canceller.cancel()


def wait_for(awaitable, timeout):
    return wait_for_ms(awaitable, None if timeout is None else int(timeout * 1000))


async def gather(*awaitables, return_exceptions=False):
    tasks = [_promote(awaitable) for awaitable in awaitables]
    results = []
    try:
        for task in tasks:
            try:
                results.append(await task)
            except Exception as error:
                if not return_exceptions:
                    raise
                results.append(error)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return results
