"""A loopback TCP relay that can cut a terminal off the network and bring it back.

The demo and the tests put one relay between each terminal and the server, so a "network outage"
is a real one: while cut, open connections are reset and new ones are accepted and closed at once,
exactly what a terminal sees when the canteen's switch loses its uplink. Loopback only.
"""
import socket
import threading

_CHUNK_BYTES = 65536
_MAX_CONNECTIONS = 64


class Relay:
    def __init__(self, target_host, target_port, listen_host="127.0.0.1"):
        assert listen_host.startswith("127.") or listen_host == "localhost", "loopback only"
        self._target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self.url = "http://%s:%d" % (listen_host, self.port)
        self._lock = threading.Lock()
        self._open = set()
        self._cut = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="relay-%d" % self.port, daemon=True)
        self._thread.start()

    @property
    def is_cut(self):
        return self._cut

    def cut(self):
        """Drop every open connection and refuse new ones until restore()."""
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, set()
        for sock in sockets:
            _hard_close(sock)

    def restore(self):
        with self._lock:
            self._cut = False

    def close(self):
        self._closed = True
        self.cut()
        try:
            self._listener.close()
        except OSError:
            pass

    def _accept_loop(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._cut or len(self._open) >= _MAX_CONNECTIONS
            if refuse:
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _hard_close(client)
                continue
            upstream.settimeout(None)
            # a relay forwards as it receives: Nagle's wait on either leg (against the peer's delayed
            # ACK) would add ~40 ms to every request a cable does not add
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while True:
                data = source.recv(_CHUNK_BYTES)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            _hard_close(source)
            _hard_close(sink)


def _hard_close(sock):
    """Close with RST (SO_LINGER 0), as a pulled cable looks to the peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
