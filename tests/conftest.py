"""Shared pytest fixtures. Sync server: a real gunicorn process on a free loopback port."""
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
