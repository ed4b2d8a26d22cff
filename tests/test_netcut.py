"""The outage relay really cuts: a request through a cut relay fails, and works again after restore."""
import http.server
import threading
import urllib.request

import pytest

from simulators.netcut import Relay


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_cut_and_restore():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    relay = Relay("127.0.0.1", server.server_address[1])
    try:
        assert urllib.request.urlopen(relay.url, timeout=5).read() == b"ok"
        relay.cut()
        with pytest.raises(OSError):
            urllib.request.urlopen(relay.url, timeout=5).read()
        relay.restore()
        assert urllib.request.urlopen(relay.url, timeout=5).read() == b"ok"
    finally:
        relay.close()
        server.shutdown()
