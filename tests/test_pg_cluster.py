"""The private PostgreSQL rig (tests/pg_cluster.py), proved with psycopg 3 alone, before any server code
uses it: a synchronous hot standby, failover by SIGKILL and promotion, a multi-host DSN and a pool
that follow the promotion, and the per-test databases of the `postgresql_dsn` fixture.

Runs under --store=postgresql or --store=both (make test); skipped under the default --store=sqlite.
"""
import contextlib
import threading

import pytest

from pg_cluster import STANDBY_NAME, PgCluster

pytestmark = pytest.mark.usefixtures("postgresql_store")
CLIENT_TIMEOUT_S = 30     # turns a hang into a failure; not a performance assertion


def connect(dsn):
    import psycopg
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def create_payments(dsn):
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE payment (id bigint PRIMARY KEY, amount_fen bigint NOT NULL)")


def payment_ids(dsn):
    with connect(dsn) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM payment")}


def server_port(conn):
    return int(conn.execute("SHOW port").fetchone()[0])


@pytest.fixture(scope="module")
def replicated():
    """A durable primary and its synchronous standby, shared by the tests that kill nothing."""
    with PgCluster.start(standby=True) as cluster:
        create_payments(cluster.primary.dsn())
        yield cluster


def test_commit_is_applied_on_the_standby_before_it_returns(replicated):
    with connect(replicated.primary.dsn()) as primary, connect(replicated.standby.dsn()) as standby:
        settings = dict(primary.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('fsync', 'synchronous_commit', 'synchronous_standby_names', 'full_page_writes')").fetchall())
        assert settings == {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "remote_apply",
                            "synchronous_standby_names": STANDBY_NAME}
        assert primary.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                               (STANDBY_NAME,)).fetchall() == [("sync",)]
        for payment_id in range(1, 41):
            primary.execute("INSERT INTO payment VALUES (%s, %s)", (payment_id, 100 * payment_id))
            # No waiting: remote_apply means the standby replayed the commit before it returned here.
            assert standby.execute("SELECT amount_fen FROM payment WHERE id = %s",
                                   (payment_id,)).fetchone() == (100 * payment_id,)


def test_the_standby_refuses_writes(replicated):
    import psycopg
    before = payment_ids(replicated.standby.dsn())
    with connect(replicated.standby.dsn()) as standby:
        assert standby.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            standby.execute("INSERT INTO payment VALUES (-1, 1)")
    assert payment_ids(replicated.standby.dsn()) == before == payment_ids(replicated.primary.dsn())


def keep_paying(dsn, acknowledged, started, first_id):
    """Commit one payment after another until the primary dies; record each commit that returned."""
    import psycopg
    try:
        with connect(dsn) as conn:
            for payment_id in range(first_id, first_id + 1_000_000):   # bounded; the kill comes far sooner
                conn.execute("INSERT INTO payment VALUES (%s, 100)", (payment_id,))
                acknowledged.append(payment_id)
                if len(acknowledged) == 50:
                    started.set()
    except psycopg.OperationalError:
        return


def test_failover_keeps_every_acknowledged_commit_and_takes_writes():
    import psycopg
    with PgCluster.start(standby=True) as cluster:
        create_payments(cluster.primary.dsn())
        acknowledged, started = [], threading.Event()
        writer = threading.Thread(target=keep_paying, args=(cluster.primary.dsn(), acknowledged, started, 1))
        writer.start()
        assert started.wait(CLIENT_TIMEOUT_S)
        backends = cluster.primary.children()
        open_transaction = connect(cluster.primary.dsn())       # a payment begun, never committed
        open_transaction.execute("BEGIN")
        open_transaction.execute("INSERT INTO payment VALUES (0, 100)")
        cluster.kill_primary()                                  # mid-stream, as a power cut would
        open_transaction.close()
        writer.join(CLIENT_TIMEOUT_S)
        assert not writer.is_alive()
        assert not [pid for pid in backends if cluster.primary.stat_field(pid, 0) not in (None, "Z")]
        with pytest.raises(psycopg.OperationalError):
            connect(cluster.primary.dsn())

        new_dsn = cluster.promote_standby()
        rows = payment_ids(new_dsn)
        assert set(acknowledged) <= rows                          # nothing a client was told is lost
        assert rows - set(acknowledged) <= {acknowledged[-1] + 1}   # at most the one in flight at the kill
        assert 0 not in rows                                      # the uncommitted payment is not there
        with connect(new_dsn) as promoted:
            assert promoted.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            promoted.execute("INSERT INTO payment VALUES (0, 100)")
        assert 0 in payment_ids(new_dsn)


def test_multi_host_dsn_and_pool_follow_the_promotion():
    import psycopg
    from psycopg_pool import ConnectionPool
    with PgCluster.start(standby=True) as cluster:
        create_payments(cluster.primary.dsn())
        multi_dsn = cluster.multi_host_dsn(connect_timeout="5")
        with connect(multi_dsn) as conn:
            assert server_port(conn) == cluster.primary.port
        # check: each connection is tested (an empty query) as it leaves the pool; a dead one is replaced.
        with ConnectionPool(multi_dsn, min_size=2, max_size=4, check=ConnectionPool.check_connection,
                            kwargs={"autocommit": True}, timeout=CLIENT_TIMEOUT_S, open=True) as pool:
            pool.wait(CLIENT_TIMEOUT_S)
            with pool.connection() as conn:
                conn.execute("INSERT INTO payment VALUES (1, 100)")
                assert server_port(conn) == cluster.primary.port

            cluster.kill_primary()
            with pytest.raises(psycopg.OperationalError):   # the standby alone is not read-write
                connect(multi_dsn)
            cluster.promote_standby()

            with connect(multi_dsn) as conn:
                assert server_port(conn) == cluster.standby.port
            with contextlib.ExitStack() as held:              # more than min_size at once: every pooled one
                for payment_id in (2, 3, 4):
                    conn = held.enter_context(pool.connection())
                    assert server_port(conn) == cluster.standby.port
                    conn.execute("INSERT INTO payment VALUES (%s, 100)", (payment_id,))
        assert payment_ids(cluster.standby.dsn()) == {1, 2, 3, 4}


def test_each_test_gets_a_fresh_fast_database(postgresql_dsn, postgresql_server):
    with connect(postgresql_dsn) as conn:
        from sync_server import migrations      # the schema comes migrated from the template, empty
        assert conn.execute("SELECT max(number) FROM _migrations").fetchone() == (migrations.load()[-1].number,)
        assert conn.execute("SELECT count(*) FROM persons").fetchone() == (0,)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)      # speed where durability is not tested
        conn.execute("CREATE TABLE payment (id bigint PRIMARY KEY)")
    with connect(postgresql_server.primary.dsn()) as admin:
        assert admin.execute("SELECT current_setting('is_superuser'), pg_is_in_recovery()").fetchone() == \
            ("on", False)


def test_a_second_test_does_not_see_the_first_ones_tables(postgresql_dsn):
    with connect(postgresql_dsn) as conn:
        conn.execute("CREATE TABLE payment (id bigint PRIMARY KEY)")   # would collide in a shared database


def test_missing_server_binaries_are_named(tmp_path, monkeypatch):
    import pg_cluster
    monkeypatch.setenv("YKT_PG_BINDIR", str(tmp_path))
    with pytest.raises(pg_cluster.PgClusterError, match="找不到 PostgreSQL .*YKT_PG_BINDIR"):
        PgCluster.start().__enter__()


def test_loopback_port_needs_the_password(postgresql_server):
    import psycopg
    with connect(postgresql_server.primary.tcp_dsn()) as conn:           # the cluster's own password
        assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(postgresql_server.primary.tcp_dsn().replace(postgresql_server.password, "wrong"))
