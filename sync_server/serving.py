"""How `ykt server` serves the app: worker processes running waitress, which reads every request whole
before a thread runs it.

Waitress's main loop reads request lines, headers and bodies from all sockets asynchronously and only
hands a complete request to one of `threads` worker threads. A client that sends half a request and
goes silent costs one socket, never a thread: `/health` and terminal syncs keep being answered. We
left gunicorn for this: its sync worker serves one connection per process, and its gthread worker
reads the rest of a request with a blocking socket once the first bytes arrive, so a few idle
half-requests took every worker for a minute.

Booking is Python work under the GIL, so one process would use one core: the parent binds the socket,
loads the app, and forks `workers` processes that each run waitress on that shared socket. The parent
only supervises: a worker that dies is replaced (at most MAX_RESTARTS_PER_MINUTE), SIGTERM or SIGINT
stops them all, and a worker whose parent is gone (killed) stops by itself.

Bounds (each a `ykt server` option):

    idle_timeout_s     a connection with no byte in or out for this long is closed, half-read
                       request line, headers or body included (waitress channel_timeout)
    request_timeout_s  a request not whole this long after its first byte is dropped with its
                       connection, however it trickles (our _DeadlineServer; checked with the idle one)
    max_connections    sockets one worker holds at once; past it, it stops accepting until one closes
    threads            threads per worker running the app
    header bytes       MAX_HEADER_BYTES; body bytes 2 x app.MAX_REQUEST_BYTES (the app answers a
                       body over its own limit with its clear 413; waitress refuses larger ones)

The request deadline rests on three waitress internals, kept to one small subclass each: the
channel's `parser_class` (a parser is made at a request's first byte), `channel.request` (the
request being read) and the server's `maintenance()` sweep; pyproject pins waitress 3.

Forwarded headers (X-Forwarded-For, -Proto) pass through untouched: whether to believe them is the
app's decision (YKT_PROXY_HOPS, werkzeug's ProxyFix in app.py), so there is one place to configure.
"""
import collections
import logging
import os
import signal
import socket
import threading
import time

DEFAULT_IDLE_TIMEOUT_S = 30
DEFAULT_REQUEST_TIMEOUT_S = 60
DEFAULT_MAX_CONNECTIONS = 500
# Two processes per core: a terminal keeps its connection, and a connection stays with the process
# that accepted it, so with fewer processes than busy terminals some cores idle while one process
# queues. Measured with benchmarks/ingest.py on 2 cores, four terminals: 2 processes 9,200
# records/s, 4 processes 14,400 (gunicorn's sync workers, one request per connection: 13,900 / 13,100).
DEFAULT_WORKERS = min(16, max(2, 2 * (os.cpu_count() or 1)))
DEFAULT_THREADS = 2
MAX_HEADER_BYTES = 32 * 1024
BACKLOG = 1024
MAX_RESTARTS_PER_MINUTE = 10
STOP_GRACE_S = 30
ORPHAN_CHECK_S = 1.0

WORKERS_RANGE = (1, 32)
THREADS_RANGE = (1, 64)
IDLE_TIMEOUT_S_RANGE = (1, 3600)
REQUEST_TIMEOUT_S_RANGE = (1, 3600)
MAX_CONNECTIONS_RANGE = (1, 10000)

log = logging.getLogger(__name__)


def option_bounds_error(workers, threads, idle_timeout_s, request_timeout_s, max_connections):
    """(zh, en) naming the first option out of its range, or None."""
    for name, value, (low, high) in (("--workers", workers, WORKERS_RANGE), ("--threads", threads, THREADS_RANGE),
                                     ("--idle-timeout-s", idle_timeout_s, IDLE_TIMEOUT_S_RANGE),
                                     ("--request-timeout-s", request_timeout_s, REQUEST_TIMEOUT_S_RANGE),
                                     ("--max-connections", max_connections, MAX_CONNECTIONS_RANGE)):
        if not low <= value <= high:
            return ("%s 须在 %d 到 %d 之间（给的是 %d）" % (name, low, high, value),
                    "%s must be between %d and %d (got %d)" % (name, low, high, value))
    return None


def server_options(threads, idle_timeout_s, request_timeout_s, max_connections):
    """(waitress adjustments, request deadline in seconds) of one worker for our bounds."""
    from sync_server.app import MAX_REQUEST_BYTES      # here, not at the top: every `ykt` command imports us
    assert idle_timeout_s >= 1 and request_timeout_s >= 1 and max_connections >= 1 and threads >= 1
    options = dict(
        threads=threads, ident="ykt", backlog=BACKLOG,
        channel_timeout=idle_timeout_s,
        cleanup_interval=max(1, min(idle_timeout_s, request_timeout_s) // 5),   # closed within 1.2 x a limit
        connection_limit=max_connections,
        asyncore_use_poll=True,            # select() cannot watch descriptors past 1024
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=2 * MAX_REQUEST_BYTES,
        clear_untrusted_proxy_headers=False,   # the app's ProxyFix decides (module text)
        expose_tracebacks=False,
    )
    return options, request_timeout_s


class _Stop(SystemExit):
    """Raised from the SIGTERM/SIGINT handler to leave a blocking wait or the server loop.

    A SystemExit, not an Exception: waitress's event loop wraps each socket handler in a bare
    `except:` that re-raises only SystemExit, KeyboardInterrupt and its ExitNow, so a stop raised while
    a handler ran would be swallowed as a channel error and the worker would serve on until killed."""


def _raise_stop(_signal, _frame):
    raise _Stop()


def bind(host, port):
    """The listening socket every worker accepts on (SO_REUSEADDR: a restart reuses the port at once)."""
    family, socktype, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, socktype, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(BACKLOG)
    return listener


def serve(app, listener, workers, options, before_serving=None, after_serving=None):
    """Fork `workers` processes serving `app` on `listener` and supervise them until SIGTERM or SIGINT;
    `before_serving()` runs before the first fork, `after_serving()` on the way out (the nightly
    close's scheduler process starts and stops there)."""
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    children = set()
    restarts = collections.deque()
    try:
        if before_serving is not None:
            before_serving()
        for _ in range(workers):
            children.add(_fork_worker(app, listener, options))
        while True:
            pid, status = os.wait()
            if pid not in children:
                continue                  # the scheduler process, say: not ours to replace
            children.discard(pid)
            now = time.monotonic()
            restarts.append(now)
            while restarts and restarts[0] < now - 60:
                restarts.popleft()
            if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                log.error("server workers keep dying (%d in a minute): stopping", len(restarts))
                return 1
            log.warning("server worker %d ended (%s): starting another", pid, _status_text(status))
            children.add(_fork_worker(app, listener, options))
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_workers(children)
        if after_serving is not None:
            after_serving()


def _status_text(status):
    if os.WIFSIGNALED(status):
        return "signal %d" % os.WTERMSIG(status)
    return "exit %d" % os.waitstatus_to_exitcode(status)


def _stop_workers(children):
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for pid in children:
        while True:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)


def _fork_worker(app, listener, options):
    parent_pid = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:                          # the child never returns into the parent's code
        status = _run_worker(app, listener, options, parent_pid)
    except Exception:             # say why, or the parent can only report "exit 1" again and again
        log.exception("server worker %d failed", os.getpid())
    finally:
        logging.shutdown()
        os._exit(status)


def _run_worker(app, listener, options, parent_pid):
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    server = _deadline_server(app, listener, options)
    threading.Thread(target=_stop_when_orphaned, args=(parent_pid,), daemon=True).start()
    try:
        server.run()
    except _Stop:
        pass
    finally:
        server.close()
    return 0


def _stop_when_orphaned(parent_pid):
    """The supervisor was killed: stop this worker too (SIGTERM to itself, handled in the main thread)."""
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)


def _deadline_server(app, listener, options):
    """A waitress server on `listener` that also drops requests not whole within their deadline."""
    from waitress.adjustments import Adjustments
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.server import TcpWSGIServer
    adjustments, request_timeout_s = options

    class TimedParser(HTTPRequestParser):
        def __init__(self, adj):
            HTTPRequestParser.__init__(self, adj)
            self.first_byte_at = time.monotonic()     # made when a request's first byte arrives

    class TimedChannel(HTTPChannel):
        parser_class = TimedParser

    class DeadlineServer(TcpWSGIServer):
        channel_class = TimedChannel

        def maintenance(self, now):
            TcpWSGIServer.maintenance(self, now)      # the idle sweep
            cutoff = time.monotonic() - request_timeout_s
            for channel in self.active_channels.values():
                request = channel.request             # still being read (complete ones are in .requests)
                if request is not None and not channel.requests and request.first_byte_at < cutoff:
                    channel.will_close = True

    sockinfo = (listener.family, listener.type, listener.proto, listener.getsockname())
    return DeadlineServer(app, _sock=listener, adj=Adjustments(sockets=[listener], **adjustments),
                          sockinfo=sockinfo, bind_socket=False)
