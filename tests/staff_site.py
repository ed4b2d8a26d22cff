"""What the staff page tests share: the app on a fresh data directory of the store under test (its
PostgreSQL database named by $YKT_DATABASE_URL, else SQLite), a page's CSRF token, and a staff user
signed in at one of the front doors."""
import os
import re

from sync_server import db as dbmod
from sync_server.app import create_app
from sync_server.cli import init_data_dir
from sync_server.web import auth

PASSWORD = "correct horse battery"


def new_site(tmp_path, staff=()):
    """(app, conn, data_dir) of a new data directory; `staff`: (username, display name, roles) added
    with PASSWORD."""
    data_dir = str(tmp_path / "data")
    init_data_dir(data_dir, os.environ.get("YKT_DATABASE_URL"))
    app = create_app({"DATA_DIR": data_dir, "TESTING": True})
    conn = dbmod.connect(dbmod.store_location(data_dir))
    for username, name, roles in staff:
        auth.add_staff_user(conn, username, name, roles, PASSWORD)
    return app, conn, data_dir


def token_of(page):
    """The CSRF token of a page (its text, or a test client's response)."""
    text = page if isinstance(page, str) else page.get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)


def sign_in(client, door, username, password=PASSWORD, next_path=None):
    """POST the sign-in form of a front door ("/hall/sign-in", "/finance/sign-in"); the answer."""
    page = client.get(door + ("?next=" + next_path if next_path else "")).get_data(as_text=True)
    data = {"csrf_token": token_of(page), "username": username, "password": password}
    hidden_next = re.search(r'name="next" value="([^"]*)"', page)
    if hidden_next:
        data["next"] = hidden_next.group(1)
    return client.post(door, data=data)


def signed_in(app, username, door="/hall/sign-in", password=PASSWORD):
    """A test client of `app` with `username` signed in at `door`."""
    client = app.test_client()
    assert sign_in(client, door, username, password).status_code == 302
    return client
