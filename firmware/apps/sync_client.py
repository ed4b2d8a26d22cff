"""The terminal's side of `POST /api/terminal/v1/sync` (firmware/core/protocol.py), over httpx + cbor2.

One `sync_once()`:
  1. takes the next request counter from the store (committed BEFORE sending, so a crash can never
     make us reuse a counter the server has seen; at least the clock in ms, so a new or replaced
     store starts above what the server saw, and a replay refusal naming the server's last counter
     moves it above that),
  2. builds the request from the store: a bounded batch of unacked records (plus any range the server
     asked for again), the cache versions and health; signs it with the terminal key (SAM),
  3. applies the answer in ONE local transaction (ack, prune, deny and balance deltas, config,
     commands), then corrects the clock with `server_ms` (or `set_time`).

A network failure or a 5xx marks the terminal offline; `run()` retries with capped exponential
backoff. A 4xx is the server refusing this request; `terminal_revoked` is remembered in the store.
An upload refused for its records (a record the server cannot take) is followed at once by the same
request without records, so the deny list and balances keep coming; the records stay in the journal,
the refusal goes into health and the log, and the terminal decides as if offline meanwhile.
Every HTTP call (sync and PIN check) holds one lock: the server requires strictly increasing counters,
so two requests of one terminal must never race each other.
"""
import logging
import os
import re
import threading
import time

import cbor2
import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware.apps import provisioning as provisioning_keys
from firmware.core import clock as clock_module
from firmware.core import protocol
from firmware.core import sam as sam_module

PIN_CHECK_PATH = "/api/terminal/v1/pin-check"
PAYCODE_CLAIM_PATH = "/api/terminal/v1/paycode-claim"
ACTIVATION_TICKET_PATH = "/api/terminal/v1/activation-ticket"
ACTIVATION_TICKETS_PATH = "/api/terminal/v1/activation-tickets"
TICKET_TIMEOUT_S = 1.0              # an activation unit waits this long for a ticket, then uses its cache
MAX_TICKET_PAGES = 100              # pages of the ticket cache fetched in one refresh
CLAIM_TIMEOUT_S = 2.0               # a cashier waits this long at most before the code is decided offline
DEFAULT_TIMEOUT_S = 5.0
MIN_BACKOFF_MS = 500
MAX_BACKOFF_MS = 30000
BACKOFF_CAP_INTERVALS = 2          # back from an outage, a terminal learns of a loss within ~2 intervals
MAX_FOLLOW_UPS = 50          # immediate re-syncs while the server says "more" or records wait
MAX_ADOPTED_COUNTER = 2 ** 53    # ~285,000 years of milliseconds; far below the server's 2^63 bound
_LAST_COUNTER = re.compile(r"last (\d+)\s*$")
MAX_REFUSAL_TEXT = 300

_log = logging.getLogger("ykt.sync")
ROTATING_PURPOSES = {sam_module.TERMINAL, sam_module.WATER}
ROTATED_KEY_BYTES = 32


def raw_clock_ms():
    """The board's own wall clock (may be 1970 after a reboot without network)."""
    return int(time.time() * 1000)


class SharedClock:
    """The terminal clock (core Clock) shared by the POS thread and the sync thread."""

    def __init__(self, store, raw_ms=raw_clock_ms):
        self._lock = threading.Lock()
        self._clock = store.clock()
        self._raw_ms = raw_ms

    def peek_ms(self):
        with self._lock:
            return self._clock.peek_ms(self._raw_ms())

    def stamp_ms(self):
        """(time_ms, floor_ms): the caller persists floor_ms with whatever uses time_ms."""
        with self._lock:
            time_ms = self._clock.stamp_ms(self._raw_ms())
            return time_ms, self._clock.floor_ms

    def correct(self, server_ms, raw_ms, explicit=False):
        """explicit: the server's set_time command, which may lower the floor (core Clock.set_time)."""
        with self._lock:
            taken = (self._clock.set_time if explicit else self._clock.correct)(server_ms, raw_ms)
            return taken, self._clock.state()

    def raw_ms(self):
        return self._raw_ms()


class SyncRefused(Exception):
    """The server answered 4xx: {"error": code, "message": text}."""

    def __init__(self, status, error, message):
        Exception.__init__(self, "%d %s: %s" % (status, error, message))
        self.status = status
        self.error = error
        self.message = message


class SyncResult:
    __slots__ = ("online", "sent", "acked_seq", "more", "error")

    def __init__(self, online, sent=0, acked_seq=0, more=False, error=None):
        self.online = online
        self.sent = sent
        self.acked_seq = acked_seq
        self.more = more
        self.error = error

    def __repr__(self):
        return "SyncResult(online=%s, sent=%d, acked_seq=%d, more=%s, error=%r)" % (
            self.online, self.sent, self.acked_seq, self.more, self.error)


FIRMWARE_VERSION_ENV = "YKT_FIRMWARE_VERSION"
FIRMWARE_PATH = "/api/terminal/v1/firmware"
FETCH_TIMEOUT_S = 120


class SyncClient:
    def __init__(self, store, sam, terminal_id, server_url, clock, utc_offset_min=480,
                 timeout_s=DEFAULT_TIMEOUT_S, transport=None, firmware_version="ykt-pos/0.1", key_version=None,
                 data_dir=None):
        self.store = store
        self.sam = sam
        self.terminal_id = terminal_id
        # the version of the key the SAM holds (sent with each request); a key rotation moves it on, and
        # keeps the new keys in `data_dir` (provisioning.ROTATED_KEYS_FILE); without one, none is taken
        self.key_version = key_version
        self.data_dir = data_dir
        self.clock = clock
        self.utc_offset_min = utc_offset_min
        # the slots' supervisor says which bundle runs (firmware/apps/slots.py); else the build's own name
        self.firmware_version = os.environ.get(FIRMWARE_VERSION_ENV) or firmware_version
        self.online = False
        self.update_offer = None       # the last sync answer's firmware update command, until taken
        self.last_error = None
        self.failures = 0
        self.upload_refused = None     # the server's refusal of our last upload, until one is taken
        self.health_extra = None       # a shell's own health fields: a callable returning a dict
        self.on_rekey = None           # called (on the sync thread) with the new key version after a rotation
        self.config_changed = threading.Event()    # set when an answer brought new configuration
        self._lock = threading.Lock()
        self._started_raw_ms = clock.raw_ms()
        self._http = httpx.Client(base_url=server_url, timeout=timeout_s, transport=transport)

    def close(self):
        self._http.close()

    def _post(self, path, message, timeout_s=None):
        """Sign and send one request (counter committed first); returns (answer map, raw send/recv ms)."""
        response, midpoint_raw_ms = self._send(path, cbor2.dumps(message), timeout_s)
        try:
            answer = cbor2.loads(response.content) if response.content else {}
        except Exception as error:  # cbor2 raises several types for broken input
            raise httpx.DecodingError("answer is not CBOR: %s" % error)
        if response.status_code != 200:
            answer = answer if isinstance(answer, dict) else {}
            raise SyncRefused(response.status_code, answer.get("error"), answer.get("message"))
        if not isinstance(answer, dict):
            raise httpx.DecodingError("answer is not a CBOR map")
        return answer, midpoint_raw_ms

    def fetch_release(self, release_id, path):
        """The bundle of an offered release into `path` (written whole, then renamed); the caller
        checks its signature (firmware/apps/bundles.py) before it is trusted."""
        response, _midpoint = self._send(FIRMWARE_PATH, cbor2.dumps({"release_id": release_id}), FETCH_TIMEOUT_S)
        if response.status_code != 200:
            raise SyncRefused(response.status_code, "no_release", "release %d not offered" % release_id)
        with open(path + ".partial", "wb") as handle:
            handle.write(response.content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(path + ".partial", path)
        return path

    def _note_offer(self, answer):
        """Keep the sync answer's update command (sync_server/releases.py) for the shell to take."""
        for command in answer.get("commands") or ():
            if isinstance(command, dict) and command.get("op") == "update" and type(command.get("release_id")) is int \
                    and isinstance(command.get("version"), str):
                self.update_offer = command

    def _take_rekey(self, answer, one_time):
        """The answer's rekey command (sync_server/key_rotation.py): the new keys opened with this
        request's one-time secret, stored, then used from the next request on. One that does not open
        or is not newer is ignored: the old key keeps working until the server has seen the new one."""
        for command in answer.get("commands") or ():
            if not isinstance(command, dict) or command.get("op") != "rekey":
                continue
            version = command.get("key_version")
            if type(version) is not int or not version > self.key_version:
                continue
            try:
                shared = one_time.exchange(X25519PublicKey.from_public_bytes(bytes(command["server_public"])))
                key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=protocol.REKEY_INFO).derive(shared)
                plain = AESGCM(key).decrypt(bytes(command["nonce"]), bytes(command["sealed"]),
                                            protocol.rekey_aad(self.terminal_id, version))
                keys = {purpose: bytes(value) for purpose, value in cbor2.loads(plain).items()}
                if sam_module.TERMINAL not in keys or not set(keys) <= ROTATING_PURPOSES \
                        or any(len(key) != ROTATED_KEY_BYTES for key in keys.values()):
                    raise ValueError("not a rotation's keys")
            except (KeyError, TypeError, ValueError, InvalidTag) as error:
                _log.warning("密钥更换指令无法解开，忽略 / a key rotation that does not open was ignored: %s",
                             type(error).__name__)
                continue
            # stored before used (under the request lock: no request is signed half way through)
            provisioning_keys.save_rotated_keys(self.data_dir, self.terminal_id, version, keys)
            self.sam.rotate(keys)
            self.key_version = version
            if self.on_rekey is not None:
                self.on_rekey(version)
            _log.warning("终端密钥已更换为第 %d 版 / this terminal's key is now version %d", version, version)

    def _send(self, path, body, timeout_s=None):
        """Sign and send one request body; returns (the authenticated response, raw send/recv ms)."""
        counter = self.store.next_request_counter(self.clock.peek_ms())
        headers = protocol.auth_headers(self.sam, "POST", path, self.terminal_id, counter, body, self.key_version)
        headers["Content-Type"] = protocol.CONTENT_TYPE
        sent_raw_ms = self.clock.raw_ms()
        response = self._http.post(path, content=body, headers=headers,
                                   **({"timeout": timeout_s} if timeout_s is not None else {}))
        received_raw_ms = self.clock.raw_ms()
        if response.status_code >= 500:
            raise httpx.HTTPStatusError("server error %d" % response.status_code, request=response.request,
                                        response=response)
        if not protocol.answer_is_authentic(self.sam, path, self.terminal_id, counter, response.status_code,
                                            response.content, response.headers.get(protocol.HEADER_ANSWER_MAC)):
            # Not from our server (or altered on the way): apply nothing - no acknowledgement that
            # would prune records, no deny list or balances, no time, no revocation.
            raise httpx.DecodingError("answer not authenticated (status %d)" % response.status_code)
        return response, (sent_raw_ms + received_raw_ms) // 2

    def sync_once(self):
        """One request/answer. Never raises for network trouble: returns SyncResult(online=False)."""
        with self._lock:
            try:
                result = self._sync_catching_up_the_counter()
            except (httpx.HTTPError, OSError) as error:
                self.online = False
                self.failures += 1
                self.last_error = str(error)
                return SyncResult(False, error=self.last_error)
            except SyncRefused as refused:
                if refused.error == "terminal_revoked":
                    self.store.mark_revoked()
                elif refused.error == "replayed_counter":
                    self._counter_above_servers(refused.message)
                self.online = False
                self.failures += 1
                self.last_error = "%s: %s" % (refused.error, refused.message)
                return SyncResult(False, error=self.last_error)
            except Exception as error:    # the sync thread must outlive any one answer
                # A malformed answer (refused whole by the store's shape check) or a local store
                # failure: nothing was applied (one transaction), the records stay unacknowledged and
                # go again next time; the server stores them once. Not knowing what the server holds,
                # the terminal decides as if offline (offline caps apply) until an answer applies.
                self.online = False
                self.failures += 1
                self.last_error = "answer not applied: %s: %s" % (type(error).__name__, error)
                return SyncResult(False, error=self.last_error)
            self.failures = 0
            if self.upload_refused:
                # Answers still apply (deny list, balances, clock), but our records do not reach the
                # server: decide as if offline (offline caps apply), without backing off.
                self.online = False
                self.last_error = result.error
                return result
            self.online = True
            self.last_error = None
            return result

    def _sync_catching_up_the_counter(self):
        """One exchange; when the server refuses its counter as a replay and names its last one, the
        counter is taken above that and the exchange made once more at once. A replaced store (a
        reflash, a new SD card) starts its counter from the clock, which may lie below what the
        server saw from the store before; the refused request changed nothing on the server."""
        try:
            return self._sync_locked()
        except SyncRefused as refused:
            if refused.error != "replayed_counter" or not self._counter_above_servers(refused.message):
                raise
        return self._sync_locked()

    def _counter_above_servers(self, message):
        """A replay refusal names the server's last counter ("... last N"): continue above it (True
        when taken).

        The counter starts from the clock, but a board that booted without network may read 1970;
        this lets a new or replaced store catch up anyway. The refusal is authenticated like every
        answer, and a named counter is still taken only below MAX_ADOPTED_COUNTER, so even a server
        bug can never use up the counter space.
        """
        match = _LAST_COUNTER.search(message or "")
        if match and int(match.group(1)) < MAX_ADOPTED_COUNTER:
            self.store.counter_at_least(int(match.group(1)))
            return True
        return False

    def _sync_locked(self):
        batch = self.store.upload_batch()
        try:
            result = self._exchange(batch)
        except SyncRefused as refused:
            if not batch or refused.status in (401, 403) or refused.error == "replayed_counter":
                raise
            # The server refuses what we uploaded (a record it cannot take). The records stay in
            # the journal (they are money and evidence: never deleted here), but the deny list and
            # balances must keep coming: the same request again without records.
            text = ("%s: %s" % (refused.error, refused.message))[:MAX_REFUSAL_TEXT]
            if text != self.upload_refused:
                _log.warning("上传被服务器拒绝，记录保留在终端 / upload refused, records kept: %s", text)
            self.upload_refused = text
            result = self._exchange([])
            result.online = False
            result.error = "upload refused: %s" % text
            return result
        self.upload_refused = None
        return result

    def _exchange(self, batch):
        deny_version, balance_version, config_version = self.store.versions()
        health = self.store.health()
        health["firmware"] = self.firmware_version
        health["uptime_s"] = max(0, (self.clock.raw_ms() - self._started_raw_ms) // 1000)
        if self.upload_refused:
            health["upload_refused"] = self.upload_refused
        if self.health_extra is not None:
            health.update(self.health_extra())
        message = {
            "terminal_id": self.terminal_id,
            "clock_ms": self.clock.peek_ms(),
            "records": [record for _, record in batch],
            "deny_version": deny_version,
            "balance_version": balance_version,
            "config_version": config_version,
            "health": health,
        }
        one_time = None
        if self.data_dir is not None and self.key_version is not None:
            one_time = X25519PrivateKey.generate()      # a rotation's new keys come sealed to it
            message["rekey_public"] = one_time.public_key().public_bytes(serialization.Encoding.Raw,
                                                                         serialization.PublicFormat.Raw)
        answer, midpoint_raw_ms = self._post(protocol.SYNC_PATH, message)
        today = clock_module.date_yyyymmdd(self.clock.peek_ms(), self.utc_offset_min)
        applied = self.store.apply_answer(answer, today, self.terminal_id,
                                          sent_through_seq=batch[-1][0] if batch else 0)
        if applied.config_changed:
            self.config_changed.set()
        self._note_offer(answer)
        if one_time is not None:
            self._take_rekey(answer, one_time)
        explicit = applied.set_time_ms is not None
        server_ms = applied.set_time_ms if explicit else answer.get("server_ms")
        if isinstance(server_ms, int):
            taken, (floor_ms, offset_ms) = self.clock.correct(server_ms, midpoint_raw_ms, explicit)
            if taken:
                self.store.save_clock(floor_ms, offset_ms, lower_floor=explicit)
        more = applied.more or self.store.unacked_count() > 0 and len(batch) == protocol.MAX_BATCH_RECORDS
        return SyncResult(True, len(batch), applied.acked_seq, more)

    def sync_until_settled(self):
        """Sync, and again at once while the server has more for us or a full batch waits (bounded)."""
        result = self.sync_once()
        follow_ups = 0
        while result.more and follow_ups < MAX_FOLLOW_UPS:      # more: an answer applied and said so
            result = self.sync_once()
            follow_ups += 1
        return result

    def check_pin(self, account_id, pin, amount_fen):
        """(ok, tries_left, locked_minutes) from the server - the count after a wrong PIN and the
        lockout's length in whole minutes, None where not told; None when it cannot be asked
        (offline): the PIN needs the network."""
        with self._lock:
            try:
                answer, _ = self._post(PIN_CHECK_PATH, {"account_id": account_id, "pin": pin,
                                                        "amount_fen": amount_fen})
            except (httpx.HTTPError, OSError, SyncRefused) as error:
                self.last_error = str(error)
                return None
            tries_left = answer.get("tries_left")
            retry_after_s = answer.get("retry_after_s")
            locked_minutes = -(-retry_after_s // 60) if isinstance(retry_after_s, int) and retry_after_s > 0 else None
            return (bool(answer.get("ok")), tries_left if isinstance(tries_left, int) else None, locked_minutes)

    def claim_paycode(self, credential_id, cert_serial, time_step, counter, account_id, amount_fen):
        """The server's answer to a payment code (pos.CLAIM_*), or None when it cannot be asked now:
        the POS then decides offline, within the certificate's cap. Bounded by CLAIM_TIMEOUT_S."""
        if not self.online:
            return None         # known offline: no cashier waits on a timeout
        message = {"credential_id": credential_id, "cert_serial": cert_serial, "time_step": time_step,
                   "counter": counter, "account_id": account_id, "amount_fen": amount_fen}
        # requests go one at a time (their counters must reach the server in order); a sync under way
        # longer than the claim may wait is treated like no network
        if not self._lock.acquire(timeout=CLAIM_TIMEOUT_S):
            return None
        try:
            answer, _ = self._post(PAYCODE_CLAIM_PATH, message, timeout_s=CLAIM_TIMEOUT_S)
        except (httpx.HTTPError, OSError, SyncRefused) as error:
            self.last_error = str(error)
            return None
        finally:
            self._lock.release()
        result = answer.get("result")
        return result if isinstance(result, str) else None

    def activation_ticket(self, serial, uid):
        """An activation unit's question at a tap: {"ticket": {...} or None, "recorded": bool}, or None
        when the server cannot be asked now (the unit then uses its ticket cache). Bounded by
        TICKET_TIMEOUT_S, like a payment code's claim."""
        if not self.online or not self._lock.acquire(timeout=TICKET_TIMEOUT_S):
            return None
        try:
            answer, _ = self._post(ACTIVATION_TICKET_PATH, {"serial": serial, "uid": bytes(uid)},
                                   timeout_s=TICKET_TIMEOUT_S)
        except (httpx.HTTPError, OSError, SyncRefused) as error:
            self.last_error = str(error)
            return None
        finally:
            self._lock.release()
        ticket = answer.get("ticket")
        if ticket is not None and not isinstance(ticket, dict):
            return None
        return {"ticket": ticket, "recorded": answer.get("recorded") is True}

    def refresh_tickets(self):
        """Bring the store's ticket cache up to the server's (paged); returns tickets taken, or None
        when the server could not be reached."""
        taken = 0
        for _page in range(MAX_TICKET_PAGES):
            # the store's connection is shared with the requests of the other thread: all under the lock
            with self._lock:
                try:
                    answer, _ = self._post(ACTIVATION_TICKETS_PATH, {"after_version": self.store.ticket_version()})
                except (httpx.HTTPError, OSError, SyncRefused) as error:
                    self.last_error = str(error)
                    return None
                tickets, version = answer.get("tickets"), answer.get("version")
                if not isinstance(tickets, list) or not isinstance(version, int):
                    return None
                taken += self.store.save_tickets(tickets, version)
            if answer.get("more") is not True:
                break
        return taken

    def backoff_ms(self, interval_ms):
        """Wait before the next attempt: the interval when healthy, doubling on failures, capped.

        The cap is also a few sync intervals: a terminal back from an outage must pick up deny-list
        changes (a loss report) within seconds, not after a long backoff it grew while cut off.
        """
        if self.failures == 0:
            return interval_ms
        cap_ms = min(MAX_BACKOFF_MS, max(MIN_BACKOFF_MS, BACKOFF_CAP_INTERVALS * interval_ms))
        return min(cap_ms, max(MIN_BACKOFF_MS, interval_ms) * 2 ** min(self.failures - 1, 10))

    def run(self, stop_event, interval_ms, on_result=None, wake_event=None):
        """Sync until stop_event is set. wake_event (optional) triggers an early sync (a new record).
        interval_ms: a number, or a callable asked before each wait (the configuration may change it)."""
        while not stop_event.is_set():
            try:
                result = self.sync_until_settled()
                if on_result is not None:
                    on_result(result)
            except Exception as error:    # a dead sync thread would leave taps unsent for good
                self.online = False
                self.failures += 1
                self.last_error = "sync failed: %s: %s" % (type(error).__name__, error)
            wait_s = self.backoff_ms(interval_ms() if callable(interval_ms) else interval_ms) / 1000.0
            if wake_event is not None and self.failures == 0:
                if wake_event.wait(wait_s):
                    wake_event.clear()
            else:
                stop_event.wait(wait_s)
