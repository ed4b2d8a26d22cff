"""The sync server killed with SIGKILL (its whole process group at once, like a power cut) mid-upload.

Terminals keep uploading batches while the whole server process group is killed at random moments
and restarted on the same SQLite file. An acknowledgement is a promise: the acked sequence a terminal
was told may never go backwards after a restart, every record ends up stored exactly once, and the
ledger still balances. Seeded; the seed is printed on failure (YKT_SERVER_CRASH_SEED replays it,
YKT_SERVER_CRASH_ROUNDS soaks).
"""
import os

import pytest
import random
import signal
import subprocess
import sys
import threading
import time

import httpx

from firmware.core import records, sam as sam_keys
from server_process import SyncClient, SyncRefused, free_port
from sync_server import db as dbmod, keys, ledger, registry
from sync_server.cli import init_data_dir
from sync_server.ledger_store import SqliteStore

pytestmark = pytest.mark.usefixtures("store_environment")   # each store (--store)

ROUNDS = int(os.environ.get("YKT_SERVER_CRASH_ROUNDS", "5"))
SEED = int(os.environ.get("YKT_SERVER_CRASH_SEED", str(random.SystemRandom().randrange(1 << 30))))
TERMINALS = 3
PEOPLE = 20
OPENING_FEN = 10_000_000
BATCH_RECORDS = 40


def start_server(data_dir, port):
    log = open(os.path.join(data_dir, "server.log"), "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_server", "server", "--data-dir", data_dir, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, YKT_DATA_DIR=data_dir))
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited during start-up"
        try:
            if httpx.get("http://127.0.0.1:%d/health" % port, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("server did not start")


class Uploader(threading.Thread):
    """One terminal: appends records to its own journal and uploads everything not yet acknowledged."""

    def __init__(self, client, people, rng):
        threading.Thread.__init__(self, daemon=True)
        self.client = client
        self.people = people
        self.rng = rng
        self.journal = {}          # seq -> record bytes
        self.acked_seq = 0         # highest acknowledgement ever received
        self.stop = threading.Event()

    def append(self, count):
        for _ in range(count):
            seq = len(self.journal) + 1
            person = self.rng.choice(self.people)
            self.journal[seq] = self.client.record(person["account_id"], person["identity"].card_number,
                                                   self.rng.randrange(100, 2000), seq=seq, tap_counter=seq)

    def sync_once(self):
        pending = [self.journal[seq] for seq in range(self.acked_seq + 1, len(self.journal) + 1)][:BATCH_RECORDS * 2]
        answer = self.client.sync(pending)
        assert answer["acked_seq"] >= self.acked_seq, \
            "terminal %d: server forgot acknowledged records (acked %d, was %d)" % (
                self.client.terminal_id, answer["acked_seq"], self.acked_seq)
        self.acked_seq = answer["acked_seq"]

    def run(self):
        while not self.stop.is_set():
            if len(self.journal) - self.acked_seq < BATCH_RECORDS * 4:
                self.append(self.rng.randrange(1, BATCH_RECORDS))
            try:
                self.sync_once()
            except (httpx.HTTPError, SyncRefused):
                time.sleep(0.02)       # the server is down (or restarting): try again


def test_server_killed_mid_upload_keeps_every_acknowledged_record_once(tmp_path):
    rng = random.Random(SEED)
    data_dir = str(tmp_path / "server")
    init_data_dir(data_dir, os.environ.get('YKT_DATABASE_URL'))
    conn = dbmod.connect(dbmod.store_location(data_dir))
    master = keys.load_master_key(keys.master_key_path(data_dir))
    people = registry.provision_population(conn, PEOPLE, SEED % 1000, initial_balance_fen=OPENING_FEN)
    clients = []
    port = free_port()
    for _ in range(TERMINALS):
        merchant_id = registry.add_merchant(conn, "测试窗口", "test window", 1)
        terminal_id = registry.register_terminal(conn, merchant_id)
        document = registry.provisioning_document(conn, master, terminal_id, "")
        sam = sam_keys.SoftwareSAM({purpose: bytes.fromhex(key) for purpose, key in document["sam_keys"].items()})
        clients.append(SyncClient("http://127.0.0.1:%d" % port, terminal_id, sam, merchant_id))
    conn.close()
    uploaders = [Uploader(client, people, random.Random(rng.random())) for client in clients]
    try:
        for round_number in range(ROUNDS):
            process = start_server(data_dir, port)
            if round_number == 0:
                for uploader in uploaders:
                    uploader.start()
            time.sleep(rng.uniform(0.2, 1.2))
            os.killpg(process.pid, signal.SIGKILL)          # server and scheduler, mid-request
            process.wait()
        process = start_server(data_dir, port)
        deadline = time.monotonic() + 120
        for uploader in uploaders:
            uploader.stop.set()
            uploader.join(timeout=30)
        for uploader in uploaders:
            while uploader.acked_seq < len(uploader.journal):
                assert time.monotonic() < deadline, "seed %d: could not drain terminal uploads" % SEED
                uploader.sync_once()
        check_server(data_dir, uploaders, people)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except BaseException:
        print("server crash test seed: %d (YKT_SERVER_CRASH_SEED=%d replays it)" % (SEED, SEED))
        raise
    finally:
        for client in clients:
            client.close()


def check_server(data_dir, uploaders, people):
    conn = dbmod.connect(dbmod.store_location(data_dir))
    try:
        for uploader in uploaders:
            rows = conn.execute("SELECT seq, raw FROM terminal_records WHERE terminal_id = ? ORDER BY seq",
                                (uploader.client.terminal_id,)).fetchall()
            assert [seq for seq, _ in rows] == list(range(1, len(uploader.journal) + 1)), \
                "seed %d: terminal %d records missing or doubled" % (SEED, uploader.client.terminal_id)
            assert all(bytes(raw) == uploader.journal[seq] for seq, raw in rows)
        assert ledger.check_balances(SqliteStore(conn)) == []
        spent = {}
        for uploader in uploaders:
            for raw in uploader.journal.values():
                fields = records.decode(raw)
                spent[fields["account_id"]] = spent.get(fields["account_id"], 0) + fields["amount_fen"]
        for person in people:
            balance = registry.balances_of(conn, person["account_id"])["main"]
            assert balance == OPENING_FEN - spent.get(person["account_id"], 0), "seed %d" % SEED
    finally:
        conn.close()
