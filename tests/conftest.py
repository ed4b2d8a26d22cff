"""Shared pytest fixtures. Sync server: a real `ykt server` process on a free loopback port."""
import itertools

import pytest

from server_process import running_server


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """One running server per test module (each test registers its own terminals and people)."""
    with running_server(tmp_path_factory.mktemp("server")) as server:
        yield server


@pytest.fixture
def fresh_server(tmp_path):
    """A server of its own for one test, on an empty data directory."""
    with running_server(tmp_path / "server") as server:
        yield server


def database_snapshot(conn):
    """Every row of every table (schema included), to prove a refused request changed nothing."""
    return list(conn.iterdump())


@pytest.fixture
def snapshot():
    return database_snapshot


# --- reader drivers: --reader picks the rigs (tests/reader_rigs.py) -------------------------------
# A test that takes `reader_name` runs once per selected driver; `reader_rig` is that driver's rig,
# started once per module (pcscd can run only once at a time, so one rig is up at a time).

def pytest_addoption(parser):
    parser.addoption(
        "--reader", default="auto",
        help="reader drivers for the driver-parametrized tests: sim, pn532, pcsc, nfcpy, a comma list, "
             "all (every driver in the tree; one that cannot start fails), or auto (default: sim plus "
             "every driver whose rig can start here)")
    parser.addoption(
        "--store", default="sqlite", choices=STORES + ("both",),
        help="server storage for the store-parametrized tests: sqlite (default), postgresql (a private "
             "cluster, tests/pg_cluster.py) or both")


def pytest_configure(config):
    config.addinivalue_line("markers", "readers(*names): run a reader_name test only on these rigs")


def selected_reader_rigs(config):
    import reader_rigs
    wanted = config.getoption("--reader")
    if wanted == "auto":
        return [name for name, reason in reader_rigs.available_rigs().items() if reason is None]
    if wanted == "all":
        return [name for name in reader_rigs.RIG_NAMES if reader_rigs.rig_exists(name)]
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in reader_rigs.RIG_NAMES]
    if unknown:
        raise pytest.UsageError("--reader: unknown %s (known: %s, all, auto)"
                                % (", ".join(unknown), ", ".join(reader_rigs.RIG_NAMES)))
    return names


def pytest_generate_tests(metafunc):
    if "reader_name" in metafunc.fixturenames:
        names = selected_reader_rigs(metafunc.config)
        only = metafunc.definition.get_closest_marker("readers")
        if only is not None:                 # a test about one kind of reader runs on that rig only
            names = [name for name in names if name in only.args]
        metafunc.parametrize("reader_name", names, scope="module")
    if "store_name" in metafunc.fixturenames:
        metafunc.parametrize("store_name", selected_stores(metafunc.config), scope="module")


def pytest_report_header(config):
    import reader_rigs
    lines = ["reader rigs: %s" % ", ".join(selected_reader_rigs(config)),
             "stores: %s" % ", ".join(selected_stores(config))]
    if config.getoption("--reader") == "auto":
        skipped = ["%s (%s)" % (name, reason) for name, reason in reader_rigs.available_rigs().items() if reason]
        if skipped:
            lines.append("reader rigs not started here: %s" % "; ".join(skipped))
    return lines


@pytest.fixture(scope="module")
def reader_rig(reader_name, tmp_path_factory):
    import reader_rigs
    with reader_rigs.start_rig(reader_name, tmp_path_factory.mktemp("rig-%s" % reader_name)) as rig:
        yield rig


# --- storage: --store picks the databases (SQLite always works; PostgreSQL is a private cluster) --------
# A test that takes `store_name` runs once per selected store. `postgresql_dsn` is an empty database of
# the test's own, cloned from a template on one fast cluster per session; a test that needs PostgreSQL
# is skipped under --store=sqlite and fails (not skips) when PostgreSQL was asked for but cannot start.

STORES = ("sqlite", "postgresql")
POSTGRESQL_TEMPLATE = "ykt_template"
POSTGRESQL_DATABASE_NUMBERS = itertools.count(1)


def selected_stores(config):
    wanted = config.getoption("--store")
    return list(STORES) if wanted == "both" else [wanted]


@pytest.fixture(scope="session")
def postgresql_store(request):
    """Skips unless --store includes postgresql; then the server binaries and psycopg must be here."""
    if "postgresql" not in selected_stores(request.config):
        pytest.skip("PostgreSQL not selected (--store=%s; use --store=postgresql or both)"
                    % request.config.getoption("--store"))
    import pg_cluster
    import psycopg  # noqa: F401  (the `postgresql` extra; a clear ImportError if it is missing)
    return pg_cluster.find_bindir()


@pytest.fixture(scope="session")
def postgresql_server(postgresql_store):
    """One private primary with fast settings (fsync off) for the whole session, and its template."""
    import pg_cluster
    with pg_cluster.PgCluster.start(fast=True) as cluster:
        with cluster.connect(cluster.primary) as conn:   # the schema, once the port has one, loads here once
            conn.execute("CREATE DATABASE %s" % POSTGRESQL_TEMPLATE)
        yield cluster


@pytest.fixture
def postgresql_dsn(postgresql_server):
    """A fresh database of this test's own (CREATE DATABASE ... TEMPLATE), dropped afterwards."""
    name = "test_%d" % next(POSTGRESQL_DATABASE_NUMBERS)
    with postgresql_server.connect(postgresql_server.primary) as conn:
        conn.execute("CREATE DATABASE %s TEMPLATE %s" % (name, POSTGRESQL_TEMPLATE))
    yield postgresql_server.primary.dsn(name)
    with postgresql_server.connect(postgresql_server.primary) as conn:
        conn.execute("DROP DATABASE %s WITH (FORCE)" % name)
