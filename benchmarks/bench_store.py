"""Where a benchmark keeps its databases: `--database` of benchmarks/ingest.py and close_day.py.

    (left out)              SQLite files in the benchmark's temporary directory, as the server's default
    postgresql://...        that PostgreSQL database; each measurement gets a schema of its own there
                            (CREATE SCHEMA, dropped at the end), so the user needs CREATE on it
    private                 a private PostgreSQL cluster started for the run (tests/pg_cluster.py:
                            initdb in a temporary directory, fsync on), for a machine without one

`databases(setting, work_dir)` yields new(name) -> the location dbmod.init_db / running_server take.
"""
import contextlib
import itertools
import os
import sys
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from sync_server import db as dbmod, pg_store

PRIVATE = "private"
_numbers = itertools.count(1)


def add_database_option(parser):
    parser.add_argument("--database", default=None, metavar="URL|private",
                        help="postgresql://... (each measurement in a schema of its own there) or `private` "
                             "(a PostgreSQL cluster of the run's own); default: SQLite files")


def store_name(setting):
    return "sqlite" if setting is None else "postgresql"


def with_search_path(url, schema):
    """`url` with its sessions' search_path set to `schema` (libpq's `options`, kept with any others)."""
    base, _, query_text = url.partition("?")      # not urlunsplit: it drops the // of postgresql:///db
    query = urllib.parse.parse_qsl(query_text, keep_blank_values=True)
    options = " ".join([value for key, value in query if key == "options"] + ["-c search_path=%s" % schema])
    query = [(key, value) for key, value in query if key != "options"] + [("options", options)]
    return base + "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)   # libpq: %20, not +


@contextlib.contextmanager
def _schemas(url):
    created = []

    def new(name):
        schema = "ykt_bench_%d_%d_%s" % (os.getpid(), next(_numbers), name)
        conn = dbmod.connect(url)
        try:
            conn.execute('CREATE SCHEMA "%s"' % schema)
        finally:
            conn.close()
        created.append(schema)
        return with_search_path(url, schema)
    try:
        yield new
    finally:
        if created:
            conn = dbmod.connect(url)
            try:
                for schema in created:
                    conn.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)
            finally:
                conn.close()


@contextlib.contextmanager
def databases(setting, work_dir):
    """new(name) -> a fresh, empty database location of the chosen store (see the module text)."""
    if setting is None:
        def new_file(name):
            directory = os.path.join(work_dir, name)
            os.makedirs(directory, exist_ok=True)
            return os.path.join(directory, dbmod.DB_FILE_NAME)
        yield new_file
        return
    if setting == PRIVATE:
        import pg_cluster
        with pg_cluster.PgCluster.start() as cluster:
            with cluster.connect(cluster.primary) as admin:
                admin.execute("CREATE DATABASE ykt_bench")
            with _schemas(cluster.primary.dsn("ykt_bench")) as new:
                yield new
        return
    if not pg_store.is_postgresql(setting):
        raise SystemExit("--database: postgresql://... or private, not %r" % setting)
    with _schemas(setting) as new:
        yield new
