"""How `ykt server` serves the app: waitress, which reads every request whole before a thread runs it.

Waitress's main loop reads request lines, headers and bodies from all sockets asynchronously and only
hands a complete request to one of `threads` worker threads. A client that sends half a request and
goes silent costs one socket, never a worker: `/health` and terminal syncs keep being answered. We
left gunicorn for this: its sync worker serves one connection per process, and its gthread worker
reads the rest of a request with a blocking socket once the first bytes arrive, so a few idle
half-requests took every worker for a minute.

Bounds (each a `ykt server` option):

    idle_timeout_s     a connection with no byte in or out for this long is closed, half-read
                       request line, headers or body included (waitress channel_timeout)
    max_connections    sockets held at once; past it waitress stops accepting until one closes
    threads            worker threads running the app (`--workers`)
    header bytes       MAX_HEADER_BYTES; body bytes 2 x app.MAX_REQUEST_BYTES (the app answers a
                       body over its own limit with its clear 413; waitress refuses larger ones)

The idle limit counts silence, not the whole request: a client trickling one byte at a time keeps
its socket, and only max_connections bounds how many such sockets there are. A reverse proxy in
front (README: nginx) adds whole-header deadlines and buffers bodies.

Behind a proxy, `trusted_proxy` names its address: only requests from that peer have their
X-Forwarded-For/-Proto/-Host applied (one hop); from anyone else those headers are removed.
"""
import signal

from sync_server.app import MAX_REQUEST_BYTES

DEFAULT_IDLE_TIMEOUT_S = 30
DEFAULT_MAX_CONNECTIONS = 500
DEFAULT_THREADS = 4
MAX_HEADER_BYTES = 32 * 1024
MAX_BODY_BYTES = 2 * MAX_REQUEST_BYTES
PROXY_HEADERS = "x-forwarded-for x-forwarded-proto x-forwarded-host"


THREADS_RANGE = (1, 64)
IDLE_TIMEOUT_S_RANGE = (1, 3600)
MAX_CONNECTIONS_RANGE = (1, 10000)


def option_bounds_error(threads, idle_timeout_s, max_connections):
    """(zh, en) naming the first option out of its range, or None."""
    for name, value, (low, high) in (("--workers", threads, THREADS_RANGE),
                                     ("--idle-timeout-s", idle_timeout_s, IDLE_TIMEOUT_S_RANGE),
                                     ("--max-connections", max_connections, MAX_CONNECTIONS_RANGE)):
        if not low <= value <= high:
            return ("%s 须在 %d 到 %d 之间（给的是 %d）" % (name, low, high, value),
                    "%s must be between %d and %d (got %d)" % (name, low, high, value))
    return None


def server_options(host, port, threads, idle_timeout_s, max_connections, trusted_proxy=None):
    """The waitress adjustments for our bounds."""
    assert idle_timeout_s >= 1 and max_connections >= 1 and threads >= 1
    options = dict(
        host=host, port=port, threads=threads, ident="ykt",
        channel_timeout=idle_timeout_s,
        cleanup_interval=max(1, idle_timeout_s // 5),     # idle sockets close within 1.2 x the limit
        connection_limit=max_connections,
        asyncore_use_poll=True,            # select() cannot watch descriptors past 1024
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=MAX_BODY_BYTES,
        clear_untrusted_proxy_headers=True,
        expose_tracebacks=False,
    )
    if trusted_proxy:
        options.update(trusted_proxy=trusted_proxy, trusted_proxy_count=1, trusted_proxy_headers=PROXY_HEADERS)
    return options


def _stop_on_sigterm(_signal, _frame):
    raise SystemExit(0)


def serve(app, options, before_serving=None, after_serving=None):
    """Serve until SIGTERM or SIGINT; `before_serving()` runs once the socket is bound, `after_serving()`
    on the way out (the nightly close's scheduler process starts and stops there)."""
    from waitress.server import create_server
    server = create_server(app, **options)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        if before_serving is not None:
            before_serving()
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        if after_serving is not None:
            after_serving()
