"""Several `ykt server` processes on one PostgreSQL (standing for hosts behind a load balancer), and a
synchronous hot standby promoted in the middle of a rush.

Terminals spread their syncs over the servers at random and send some batches to two servers at
once (a resend racing its original); a channel delivers one payment to every server at once; a
cash desk's double click lands on two servers. Afterwards: each (terminal, seq) is stored once,
every terminal's journal is acknowledged whole, each payment credited once, and the ledger balances.
With the standby: the primary is SIGKILLed mid-rush and the standby promoted; every record a server
acknowledged before the kill is there, the terminals carry on through the same servers (their
multi-host URL follows the promotion), and nothing is stored twice.
"""
import concurrent.futures
import contextlib
import random
import threading
import time

import cbor2
import httpx
import pytest

import pg_cluster
from firmware.core import protocol
from server_process import running_server
from simulators import pay_gateways
from sync_server import db as dbmod, ledger, registry
from sync_server.ledger_store import SqliteStore
from sync_server.services import recharge

pytestmark = pytest.mark.usefixtures("postgresql_store")

SERVERS = 2
TERMINALS = 6
BATCHES = 12
RECORDS_PER_BATCH = 5
ACCOUNTS = 12
BALANCE_FEN = 100000
RUSH_DEADLINE_S = 240       # a deadline to give up, not a performance assertion
QUIET_ENV = {"YKT_FINANCE_CLOSE": "off"}


class RoamingTerminal:
    """A terminal whose syncs go to any of several servers (a load balancer's choice), one at a time
    as a terminal sends them, except that some batches are also sent to a second server at once."""

    def __init__(self, client, urls, rng):
        self.client = client
        self.rng = rng
        self.https = [httpx.Client(base_url=url, timeout=60) for url in urls]
        self.counter_lock = threading.Lock()
        self.acked_seq = 0

    def close(self):
        for http in self.https:
            http.close()

    def _post_to(self, http, body):
        with self.counter_lock:
            self.client.counter += 1
            counter = self.client.counter
        headers = protocol.auth_headers(self.client.sam, "POST", protocol.SYNC_PATH, self.client.terminal_id,
                                        counter, body)
        headers["Content-Type"] = protocol.CONTENT_TYPE
        try:
            response = http.post(protocol.SYNC_PATH, content=body, headers=headers)
        except httpx.HTTPError:
            return None           # no answer: as good as a lost one
        if response.status_code != 200:
            return None
        return cbor2.loads(response.content)["acked_seq"]

    def upload(self, records_list, last_seq, race=False, deadline=None):
        """Send until the server acknowledges through last_seq; returns the number of sends."""
        body = self.client.body(records_list)
        sends = 0
        while True:
            targets = self.rng.sample(self.https, 2) if race else [self.rng.choice(self.https)]
            with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
                answers = list(pool.map(lambda http: self._post_to(http, body), targets))
            sends += len(targets)
            acked = max([a for a in answers if a is not None], default=None)
            if acked is not None:
                self.acked_seq = max(self.acked_seq, acked)
            if self.acked_seq >= last_seq:
                return sends
            if deadline is not None and time.monotonic() > deadline:
                raise AssertionError("terminal %d: seq %d never acknowledged" % (self.client.terminal_id, last_seq))
            time.sleep(0.05)


def _people(conn, count):
    accounts = []
    for index in range(count):
        _person, account = registry.add_person(conn, "并发%d" % index, 2, staff_number="C%04d" % index,
                                               set_initial_pin=False)
        registry.recharge(conn, account, BALANCE_FEN)
        identity, _name = registry.issue_card_record(conn, account, bytes([0x30, 0, index >> 8, index & 0xFF]))
        accounts.append((account, identity.card_number))
    return accounts


def _rush(terminals, accounts, rng, batches=BATCHES, on_batch=None):
    """Every terminal uploads `batches` batches, in order, on a thread of its own; returns the seqs
    each terminal had acknowledged."""
    deadline = time.monotonic() + RUSH_DEADLINE_S
    counters = {}

    def run(terminal):
        local = random.Random(rng.random())
        for batch in range(batches):
            records_list = []
            for _ in range(RECORDS_PER_BATCH):
                account, card = local.choice(accounts)
                counters[card] = counters.get(card, 0) + 1
                records_list.append(terminal.client.record(account, card, local.randint(1, 900),
                                                           tap_counter=counters[card]))
            terminal.upload(records_list, terminal.client.next_seq - 1, race=local.random() < 0.3, deadline=deadline)
            if on_batch is not None:
                on_batch(terminal, batch)
        return terminal.acked_seq
    with concurrent.futures.ThreadPoolExecutor(len(terminals)) as pool:
        return list(pool.map(run, terminals))


def _check_store(conn, terminals):
    for terminal in terminals:
        last = terminal.client.next_seq - 1
        rows = conn.execute("SELECT seq, count(*) FROM terminal_records WHERE terminal_id = ? GROUP BY seq",
                            (terminal.client.terminal_id,)).fetchall()
        assert sorted(seq for seq, _count in rows) == list(range(1, last + 1)), "a record missing"
        assert all(count == 1 for _seq, count in rows), "a record stored twice"
        assert conn.execute("SELECT acked_seq FROM terminals WHERE id = ?",
                            (terminal.client.terminal_id,)).fetchone() == (last,)
    booked = conn.execute("SELECT count(*) FROM terminal_records WHERE booked = 1").fetchone()[0]
    purchases = conn.execute("SELECT count(*) FROM transfers WHERE kind = 'purchase'").fetchone()[0]
    assert booked == purchases == sum(t.client.next_seq - 1 for t in terminals), "one transfer per record"
    assert ledger.check_balances(SqliteStore(conn)) == []
    assert conn.execute("SELECT sum(balance_fen) FROM balances").fetchone() == (0,)


def test_several_servers_share_one_database_and_store_each_record_once(postgresql_dsn, tmp_path):
    rng = random.Random(20261203)
    with contextlib.ExitStack() as stack:
        gateways = pay_gateways.PayGateways()
        gateways.install(tmp_path / "server")          # the servers' payment channels: the sandboxes
        stack.callback(gateways.close)
        first = stack.enter_context(running_server(tmp_path / "server", database=postgresql_dsn, env=QUIET_ENV))
        others = [stack.enter_context(running_server(tmp_path / "server", database=postgresql_dsn, env=QUIET_ENV))
                  for _ in range(SERVERS - 1)]
        urls = [first.url] + [server.url for server in others]
        conn = first.connect()
        accounts = _people(conn, ACCOUNTS)
        clients = [first.add_terminal() for _ in range(TERMINALS)]
        terminals = [RoamingTerminal(client, urls, rng) for client in clients]

        # one payment delivered to every server, four times each, all at once: credited once
        account, _card = accounts[0]
        order = recharge.create_order(conn, account, 5000, "alipay")
        delivery = gateways.notice(order, "paid")

        def deliver(url):
            return gateways.post(url, delivery).outcome
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = sorted(pool.map(deliver, urls * 4))
        assert outcomes == ["credited"] + ["duplicate"] * (4 * len(urls) - 1)

        acked = _rush(terminals, accounts, rng)
        assert acked == [t.client.next_seq - 1 for t in terminals]
        _check_store(conn, terminals)
        assert conn.execute("SELECT count(*) FROM transfers WHERE id = ?", ("o/" + order["order_id"],)).fetchone() \
            == (1,)
        for terminal in terminals:
            terminal.close()
        conn.close()


@pytest.fixture
def replicated_cluster(postgresql_store):
    with pg_cluster.PgCluster.start(standby=True) as cluster:
        with cluster.connect(cluster.primary) as admin:
            admin.execute("CREATE DATABASE ykt")
        cluster.wait_for_streaming("sync")
        yield cluster


def test_primary_killed_mid_rush_loses_no_acknowledged_record(replicated_cluster, tmp_path):
    cluster = replicated_cluster
    database = cluster.multi_host_dsn("ykt")
    rng = random.Random(7)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(running_server(tmp_path / "server", database=database, env=QUIET_ENV))
        others = [stack.enter_context(running_server(tmp_path / "server", database=database, env=QUIET_ENV))
                  for _ in range(SERVERS - 1)]
        urls = [first.url] + [server.url for server in others]
        conn = first.connect()
        accounts = _people(conn, ACCOUNTS)
        conn.close()
        terminals = [RoamingTerminal(first.add_terminal(), urls, rng) for _ in range(TERMINALS)]

        acked_before_kill = {}
        killed = threading.Event()
        kill_lock = threading.Lock()

        def kill_once(terminal, batch):
            """A third of the way through, the first terminal to get there pulls the plug."""
            with kill_lock:
                if batch == BATCHES // 3 and not killed.is_set():
                    for other in terminals:
                        acked_before_kill[other.client.terminal_id] = other.acked_seq
                    cluster.kill_primary()
                    killed.set()
                    threading.Thread(target=cluster.promote_standby).start()
        acked = _rush(terminals, accounts, rng, on_batch=kill_once)
        assert killed.is_set()
        assert acked == [t.client.next_seq - 1 for t in terminals]
        assert sum(acked_before_kill.values()) > 0, "the kill came after some acknowledgements"

        promoted = dbmod.connect(cluster.standby.dsn("ykt"))
        try:
            assert promoted.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            _check_store(promoted, terminals)
        finally:
            promoted.close()
        for terminal in terminals:
            terminal.close()
