"""A simulated dorm meter system (电控系统) speaking sync_server/meter_gateway.py's wire, for tests and demos.

    meters = SimulatedMeterSystem(key="...", auth="hmac")    # a thread serving on a free loopback port
    meters.start(); meters.url                                 # http://127.0.0.1:<port>
    meters.fail_next(2)          # the next 2 credits answer 503 and apply nothing
    meters.slow_next(1, 2.0)     # the next credit is applied, then answered after 2 s
    meters.drop_next(1)          # the next credit is applied, then the connection closes unanswered
    meters.credit_of("M-0101")   # fen credited to a meter (per kind)
    meters.stop()

    python -m simulators.meter_gateway --port 8090 --key-file KEY [--auth bearer]   (a process of its own)

It keeps a credit per (meter, kind) and the payments it applied, by payment id: a payment id it has
applied is answered with the same reference and credits nothing (the gateway's idempotency); the same
payment id with another meter, kind or amount is a 409. Unknown meters are a 404 when `meters` was
given. The faults count down per request, so a test says how many requests fail, hang or lose their
answer. Over HTTP the same controls are POST /_control {"fail": n, "slow": [n, seconds], "drop": n}
and GET /_state, for a simulator running as a process.
"""
import argparse
import hmac
import http.server
import json
import socket
import threading
import time

from sync_server import meter_gateway

MAX_BODY_BYTES = 64 * 1024
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000


class SimulatedMeterSystem:
    def __init__(self, key="simulated-meter-key-0001", auth="hmac", meters=None, host="127.0.0.1", port=0):
        self.key = key.encode() if isinstance(key, str) else bytes(key)
        self.auth = auth
        self.meters = set(meters) if meters is not None else None
        self.host, self.port = host, port
        self.lock = threading.Lock()
        self.credits = {}           # (meter_id, kind) -> fen
        self.payments = {}          # payment_id -> {meter_id, kind, amount_fen, ref}
        self.requests = 0           # credit requests received (repeats included)
        self.applied = []           # payment ids in the order they were applied (each once)
        self.faults = {"fail": 0, "slow": 0, "drop": 0}
        self.slow_s = 0.0
        self.fail_status = 503
        self.server = None
        self.thread = None

    # --- controls ---
    def fail_next(self, count, status=503):
        with self.lock:
            self.faults["fail"], self.fail_status = count, status

    def slow_next(self, count, seconds):
        with self.lock:
            self.faults["slow"], self.slow_s = count, float(seconds)

    def drop_next(self, count):
        with self.lock:
            self.faults["drop"] = count

    def credit_of(self, meter_id, kind="lighting"):
        with self.lock:
            return self.credits.get((meter_id, kind), 0)

    def state(self):
        with self.lock:
            return {"credits": {"%s/%s" % key: fen for key, fen in self.credits.items()},
                    "payments": dict(self.payments), "requests": self.requests, "applied": list(self.applied),
                    "faults": dict(self.faults)}

    # --- the server ---
    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.server.server_address[1])

    def start(self):
        simulator = self

        class Handler(_Handler):
            system = simulator
        self.server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="meter-gateway-sim", daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- the meter system's logic ---
    def authorised(self, headers, body):
        if self.auth == "bearer":
            return hmac.compare_digest(headers.get("Authorization", "").encode(), b"Bearer " + self.key)
        timestamp = headers.get(meter_gateway.TIMESTAMP_HEADER, "")
        if not timestamp.isdigit() or abs(int(timestamp) - time.time() * 1000) > MAX_CLOCK_SKEW_MS:
            return False
        expected = meter_gateway.sign(self.key, timestamp, body)
        return hmac.compare_digest(headers.get(meter_gateway.SIGNATURE_HEADER, ""), expected)

    def credit(self, request):
        """(status, answer, fault) for one credit request; fault is None, "slow" or "drop" (applied)."""
        with self.lock:
            self.requests += 1
            if self.faults["fail"]:
                self.faults["fail"] -= 1
                return self.fail_status, {"error": "unavailable"}, None
            payment_id, meter_id = request.get("payment_id"), request.get("meter_id")
            kind, amount_fen = request.get("kind", "lighting"), request.get("amount_fen")
            if not (isinstance(payment_id, str) and payment_id and isinstance(meter_id, str) and meter_id
                    and isinstance(kind, str) and type(amount_fen) is int and amount_fen > 0):
                return 400, {"error": "bad_request"}, None
            if self.meters is not None and meter_id not in self.meters:
                return 404, {"error": "unknown_meter"}, None
            done = self.payments.get(payment_id)
            if done is None:
                ref = "MS%06d" % (len(self.payments) + 1)
                done = self.payments[payment_id] = {"meter_id": meter_id, "kind": kind, "amount_fen": amount_fen,
                                                    "ref": ref}
                self.credits[(meter_id, kind)] = self.credits.get((meter_id, kind), 0) + amount_fen
                self.applied.append(payment_id)
            elif (done["meter_id"], done["kind"], done["amount_fen"]) != (meter_id, kind, amount_fen):
                return 409, {"error": "payment_id_conflict"}, None
            answer = {"payment_id": payment_id, "ref": done["ref"], "meter_id": meter_id, "kind": kind,
                      "credit_fen": self.credits[(meter_id, kind)]}
            fault = None
            if self.faults["drop"]:
                self.faults["drop"] -= 1
                fault = "drop"
            elif self.faults["slow"]:
                self.faults["slow"] -= 1
                fault = "slow"
            return 200, answer, fault


class _Handler(http.server.BaseHTTPRequestHandler):
    system = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):       # quiet
        pass

    def _answer(self, status, document):
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length)

    def do_GET(self):
        if self.path == "/_state":
            return self._answer(200, self.system.state())
        if self.path.startswith("/v1/meters/"):
            meter_id, _, kind = self.path[len("/v1/meters/"):].partition("?kind=")
            return self._answer(200, {"meter_id": meter_id, "kind": kind or "lighting",
                                      "credit_fen": self.system.credit_of(meter_id, kind or "lighting")})
        return self._answer(404, {"error": "not_found"})

    def do_POST(self):
        body = self._body()
        if body is None:
            return self._answer(413, {"error": "too_large"})
        if self.path == "/_control":
            control = json.loads(body or b"{}")
            if "fail" in control:
                self.system.fail_next(int(control["fail"]), int(control.get("status", 503)))
            if "slow" in control:
                self.system.slow_next(int(control["slow"][0]), float(control["slow"][1]))
            if "drop" in control:
                self.system.drop_next(int(control["drop"]))
            return self._answer(200, self.system.state()["faults"])
        if self.path != meter_gateway.CREDIT_PATH:
            return self._answer(404, {"error": "not_found"})
        if not self.system.authorised(self.headers, body):
            return self._answer(401, {"error": "unauthorised"})
        try:
            request = json.loads(body)
        except ValueError:
            return self._answer(400, {"error": "bad_json"})
        status, answer, fault = self.system.credit(request if isinstance(request, dict) else {})
        if fault == "drop":                 # applied, and the answer is lost on the way back
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if fault == "slow":
            time.sleep(self.system.slow_s)
        try:
            return self._answer(status, answer)
        except OSError:                     # the client gave up waiting
            self.close_connection = True
            return None


def main(argv=None):
    parser = argparse.ArgumentParser(description="a simulated dorm meter system (电控系统)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-file", required=True, help="the shared key (the gateway's `key`), one line")
    parser.add_argument("--auth", choices=meter_gateway.AUTH_MODES, default="hmac")
    args = parser.parse_args(argv)
    with open(args.key_file, encoding="utf-8") as handle:
        key = handle.read().strip()
    system = SimulatedMeterSystem(key, args.auth, host=args.host, port=args.port).start()
    print(system.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        system.stop()


if __name__ == "__main__":
    main()
