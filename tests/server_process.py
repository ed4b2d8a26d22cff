"""Start the real sync server (`ykt server` in a subprocess, free loopback port) and talk to it as a terminal.

    with running_server(data_dir) as server:          # ServerHandle(url, data_dir, stop())
        terminal = server.add_terminal()              # registers a canteen terminal, returns a SyncClient
        answer = terminal.sync([record_bytes, ...])   # signed CBOR request; raises SyncRefused on 4xx

The data directory is initialised (database + 0600 master key) before the server starts, so tests can
also open the database directly (`server.connect()`) to set up people and check results. `database`
is a postgresql:// URL to run the server on PostgreSQL; left out, SQLite in the data directory.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import cbor2
import httpx

from firmware.apps.sync_client import SyncRefused  # the terminal's own 4xx answer: {"error", "message"}
from firmware.core import protocol, records, sam as sam_keys
from firmware.core import wallets as wallet_rules
from sync_server import db as dbmod, keys, registry
from sync_server.cli import init_data_dir

STARTUP_DEADLINE_S = 60   # a deadline to give up waiting, not a performance assertion
PIN_CHECK_PATH = "/api/terminal/v1/pin-check"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SyncClient:
    """One terminal speaking the sync protocol over HTTP, with its own key and request counter."""

    def __init__(self, url, terminal_id, sam, merchant_id, category=wallet_rules.CATEGORY_CANTEEN):
        self.url = url
        self.terminal_id = terminal_id
        self.sam = sam
        self.merchant_id = merchant_id
        self.category = category
        self.counter = 0
        self.next_seq = 1
        self.http = httpx.Client(base_url=url, timeout=60)

    def close(self):
        self.http.close()

    def record(self, account_id, card_number, amount_fen, seq=None, tap_counter=1, generation=1, time_ms=None,
               flags=0):
        """An encoded purchase record from this terminal (seq allocated when not given)."""
        if seq is None:
            seq = self.next_seq
            self.next_seq += 1
        return records.encode_purchase(self.terminal_id, seq, int(time.time() * 1000) if time_ms is None else time_ms,
                                       card_number, account_id, generation, self.category, tap_counter, amount_fen,
                                       self.merchant_id, flags)

    def water_record(self, account_id, amount_fen, ml, card_number=0, grant_id=None, seq=None, tap_counter=1,
                     generation=1, end_reason=1, duration_s=30, time_ms=None):
        """An encoded water session record: a card's, or with `grant_id` a phone's (no card)."""
        if seq is None:
            seq = self.next_seq
            self.next_seq += 1
        grant = grant_id is not None
        return records.encode_water(self.terminal_id, seq, int(time.time() * 1000) if time_ms is None else time_ms,
                                    0 if grant else card_number, account_id, 0 if grant else generation,
                                    wallet_rules.CATEGORY_WATER, grant_id if grant else tap_counter, amount_fen,
                                    self.merchant_id, ml, duration_s, end_reason, grant=grant)

    def body(self, records_list=(), deny_version=0, balance_version=0, config_version=0, clock_ms=None, **extra):
        message = {"terminal_id": self.terminal_id,
                   "clock_ms": int(time.time() * 1000) if clock_ms is None else clock_ms,
                   "records": list(records_list), "deny_version": deny_version,
                   "balance_version": balance_version, "config_version": config_version,
                   "health": {"journal_depth": len(records_list)}}
        message.update(extra)
        return cbor2.dumps(message)

    def post(self, body, path=protocol.SYNC_PATH, counter=None, mac_sam=None, key_version=None):
        """Send raw body bytes signed with the next counter; returns the httpx response."""
        if counter is None:
            self.counter += 1
            counter = self.counter
        headers = protocol.auth_headers(mac_sam or self.sam, "POST", path, self.terminal_id, counter, body,
                                        key_version)
        headers["Content-Type"] = protocol.CONTENT_TYPE
        return self.http.post(path, content=body, headers=headers)

    def sync(self, records_list=(), **fields):
        response = self.post(self.body(records_list, **fields))
        return decode_answer(response)

    def pin_check(self, account_id, pin, amount_fen):
        response = self.post(cbor2.dumps({"account_id": account_id, "pin": pin, "amount_fen": amount_fen}),
                             path=PIN_CHECK_PATH)
        return decode_answer(response)


def decode_answer(response):
    answer = cbor2.loads(response.content) if response.content else {}
    if response.status_code != 200:
        raise SyncRefused(response.status_code, answer.get("error"), answer.get("message"))
    return answer


class ServerHandle:
    def __init__(self, url, data_dir, process, log_path, database=None):
        self.url = url
        self.data_dir = data_dir
        self.process = process
        self.log_path = log_path
        self.db_path = dbmod.db_path(data_dir)
        self.database = database or self.db_path      # what dbmod.connect opens: file or URL

    @property
    def store(self):
        return "sqlite" if self.database == self.db_path else "postgresql"

    def connect(self):
        """A direct connection to the server's database (same PRAGMAs on SQLite, the same interface
        on PostgreSQL)."""
        return dbmod.connect(self.database)

    def query(self, sql, parameters=()):
        """All rows of one statement, on a connection of its own."""
        conn = self.connect()
        try:
            return conn.execute(sql, parameters).fetchall()
        finally:
            conn.close()

    def master_key(self):
        return keys.load_master_key(keys.master_key_path(self.data_dir))

    def add_cardholder(self, name, staff_number, balance_fen, uid, **person):
        """A student with `balance_fen` in the main wallet and a card record for `uid`; -> (account id,
        the card's identity). field_cards.card_image writes the card itself."""
        conn = self.connect()
        try:
            _person, account_id = registry.add_person(conn, name, 2, staff_number=staff_number, **person)
            if balance_fen:
                registry.recharge(conn, account_id, balance_fen)
            identity, _name = registry.issue_card_record(conn, account_id, uid)
        finally:
            conn.close()
        return account_id, identity

    def ykt(self, *args):
        """`ykt ARGS --data-dir <this server's>` as a process, on this server's store."""
        env = dict(os.environ)
        env.pop("YKT_DATABASE_URL", None)
        if self.store == "postgresql":
            env["YKT_DATABASE_URL"] = self.database
        return subprocess.run([sys.executable, "-m", "ykt", *args, "--data-dir", self.data_dir],
                              capture_output=True, text=True, timeout=120, env=env)

    def add_terminal(self, merchant_id=None, category=wallet_rules.CATEGORY_CANTEEN, legacy_master_key=None):
        """Register a terminal (and a merchant when none is given) and return its SyncClient; its
        provisioning document (keys included) is the client's `document`."""
        conn = self.connect()
        try:
            if merchant_id is None:
                merchant_id = registry.add_merchant(conn, "测试窗口", "test window", category)
            terminal_id = registry.register_terminal(conn, merchant_id)
            document = registry.provisioning_document(conn, self.master_key(), terminal_id, self.url,
                                                      legacy_master_key)
        finally:
            conn.close()
        sam = sam_keys.SoftwareSAM({purpose: bytes.fromhex(key) for purpose, key in document["sam_keys"].items()
                                    if purpose != registry.LEGACY_MASTER})
        client = SyncClient(self.url, terminal_id, sam, merchant_id, category)
        client.document = document
        return client

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_server(data_dir, workers=2, env=None, server_args=(), database=None):
    """Run `python -m sync_server server` on a free loopback port until the block ends (`server_args`:
    more `ykt server` options; `database`: a postgresql:// URL, by default $YKT_DATABASE_URL (the
    store_environment fixture), else SQLite in the data directory)."""
    if database is None:
        database = os.environ.get("YKT_DATABASE_URL") or None
    data_dir = os.path.abspath(str(data_dir))
    init_data_dir(data_dir, database)
    port = free_port()
    log_path = os.path.join(data_dir, "server.log")
    process_env = dict(os.environ, YKT_DATA_DIR=data_dir, PYTHONUNBUFFERED="1")
    process_env.pop("YKT_MASTER_KEY_FILE", None)
    process_env.pop("YKT_DATABASE_URL", None)
    if database is not None:
        process_env["YKT_DATABASE_URL"] = database      # not on the command line: `ps` shows that
    process_env.update(env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sync_server", "server", "--data-dir", data_dir, "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(workers), *server_args],
            stdout=log, stderr=subprocess.STDOUT, env=process_env)
    handle = ServerHandle("http://127.0.0.1:%d" % port, data_dir, process, log_path, database)
    try:
        _wait_healthy(handle)
        yield handle
    finally:
        handle.stop()


def _wait_healthy(handle):
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        if handle.process.poll() is not None:
            raise RuntimeError("server exited with %s:\n%s" % (handle.process.returncode, handle.log()))
        try:
            if httpx.get(handle.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not become healthy:\n%s" % handle.log())
        time.sleep(0.1)
