"""Shared pytest fixtures. Sync server: a real `ykt server` process on a free loopback port."""
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


def pytest_report_header(config):
    import reader_rigs
    lines = ["reader rigs: %s" % ", ".join(selected_reader_rigs(config))]
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
