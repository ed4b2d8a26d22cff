"""Shared pytest fixtures. Sync server: a real `ykt server` process on a free loopback port."""
import contextlib
import itertools

import pytest

from server_process import running_server


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, module_database):
    """One running server per test module (each test registers its own terminals and people), on each
    selected store (--store)."""
    with running_server(tmp_path_factory.mktemp("server"), database=module_database) as server:
        yield server


@pytest.fixture(scope="module")
def gateways():
    """The payment channels' sandboxes (simulators/pay_gateways.py), with test keys of their own."""
    from simulators import pay_gateways
    sandboxes = pay_gateways.PayGateways()
    yield sandboxes
    sandboxes.close()


@pytest.fixture
def fresh_server(tmp_path, new_database):
    """A server of its own for one test, on an empty data directory and an empty database."""
    with running_server(tmp_path / "server", database=new_database()) as server:
        yield server


def database_snapshot(conn):
    """Every row of every table (schema included), to prove a refused request changed nothing."""
    if hasattr(conn, "iterdump"):
        return list(conn.iterdump())
    tables = [row[0] for row in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "ORDER BY table_name")]
    columns = sorted(conn.execute(
        "SELECT table_name, column_name, data_type, column_default, is_nullable FROM information_schema.columns "
        "WHERE table_schema = current_schema()").fetchall())
    rows = [(table, sorted(map(repr, conn.execute('SELECT * FROM "%s"' % table).fetchall()))) for table in tables]
    return [columns, rows]


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
    config.addinivalue_line("markers", "stores(*names): run a store_name test only on these of the selected "
                                       "stores (for a test about something other than the store)")


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
        stores = selected_stores(metafunc.config)
        only = metafunc.definition.get_closest_marker("stores")
        if only is not None:
            stores = [name for name in stores if name in only.args] or stores[:1]
        metafunc.parametrize("store_name", stores, scope="module")


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
        with cluster.connect(cluster.primary) as conn:
            conn.execute("CREATE DATABASE %s" % POSTGRESQL_TEMPLATE)
        from sync_server import db
        db.init_db(cluster.primary.dsn(POSTGRESQL_TEMPLATE)).close()    # the schema, migrated once
        yield cluster


@pytest.fixture
def postgresql_dsn(postgresql_server):
    """A fresh database of this test's own (CREATE DATABASE ... TEMPLATE), dropped afterwards."""
    with _postgresql_databases(postgresql_server) as create:
        yield create()


@contextlib.contextmanager
def _postgresql_databases(cluster):
    """create() -> the URL of a new database with the schema (from the template); all dropped at the end."""
    names = []

    def create():
        name = "test_%d" % next(POSTGRESQL_DATABASE_NUMBERS)
        with cluster.connect(cluster.primary) as conn:
            conn.execute("CREATE DATABASE %s TEMPLATE %s" % (name, POSTGRESQL_TEMPLATE))
        names.append(name)
        return cluster.primary.dsn(name)
    try:
        yield create
    finally:
        with cluster.connect(cluster.primary) as conn:
            for name in names:
                conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


@contextlib.contextmanager
def _databases_of(store, request, tmp_path_factory):
    """create() -> a new database of `store`: None for SQLite (the file in a server's data directory,
    which running_server makes) or a postgresql:// URL."""
    if store == "sqlite":
        yield lambda: None
        return
    cluster = request.getfixturevalue("postgresql_server")
    with _postgresql_databases(cluster) as create:
        yield create


@pytest.fixture
def new_database(store_name, request, tmp_path_factory):
    """create() -> an empty database of the store under test, for one more server (None: SQLite)."""
    with _databases_of(store_name, request, tmp_path_factory) as create:
        yield create


@pytest.fixture(scope="module")
def module_database(store_name, request, tmp_path_factory):
    """One database of the store under test for a module's live_server (None: SQLite)."""
    with _databases_of(store_name, request, tmp_path_factory) as create:
        yield create()


@pytest.fixture
def store_environment(store_name, new_database, monkeypatch):
    """For tests that run `ykt` commands: on PostgreSQL, $YKT_DATABASE_URL names a new database for
    this test (the commands and dbmod.store_location read it); on SQLite it is unset."""
    monkeypatch.delenv("YKT_DATABASE_URL", raising=False)
    database = new_database()
    if database is not None:
        monkeypatch.setenv("YKT_DATABASE_URL", database)
    return database


@pytest.fixture
def new_location(store_name, request, tmp_path_factory):
    """create() -> where one more database lives, for tests that open several: a new SQLite file or a
    new PostgreSQL database."""
    with _databases_of(store_name, request, tmp_path_factory) as create:
        yield lambda: create() or str(tmp_path_factory.mktemp("store") / "ykt.sqlite3")


@pytest.fixture
def database_location(store_name, request, tmp_path):
    """Where a test that opens the store itself (dbmod.init_db / connect) keeps it: a SQLite file in
    tmp_path or a new PostgreSQL database."""
    with _databases_of(store_name, request, None) as create:
        yield create() or str(tmp_path / "ykt.sqlite3")
