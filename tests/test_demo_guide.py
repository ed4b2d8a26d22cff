"""The demo's next steps work as printed: `ykt demo` (its smallest run) ends with a server command,
cardholders, staff users and a close command; the test runs the printed server command, signs in
with each printed number / PIN on the portal and each printed staff user on the hall, finance or
admin sign-in (the admin's fleet page listing the demo's terminals), then runs the printed close
command - on each store (--store)."""
import html
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import httpx
import pytest

from server_process import free_port
from simulators import demo_guide
from sync_server import business_day, db as dbmod

ROOT = pathlib.Path(__file__).resolve().parent.parent
READY_DEADLINE_S = 60           # a deadline to give up waiting, not a performance assertion

pytestmark = pytest.mark.usefixtures("store_environment")   # on PostgreSQL $YKT_DATABASE_URL names the demo's


def _printed(text):
    """The next-steps block as printed: {server, close, people: [(number, pin)], staff: [(user, password, url)]}."""
    block = text[text.index("== 接下来"):]
    command = re.compile(r"^\s+(\S+ (?:server|finance close) --data-dir .+)$", re.M)
    server, close = (match.group(1) for match in command.finditer(block))
    return {"server": server, "close": close,
            "people": re.findall(r"^\s+(\S+) / (\d{6})\s+（", block, re.M),
            "staff": re.findall(r"^\s+(demo-\S+) / (\S+)\s+(http://\S+)", block, re.M)}


@pytest.fixture
def demo_run(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "ykt", "demo", "--people", "20", "--terminals", "2",
                                "--duration-s", "5", "--data-dir", str(tmp_path / "run")],
                               capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:] + completed.stdout[-2500:]
    return completed.stdout, tmp_path / "run"


def _csrf(page):
    return html.unescape(re.search(r'name="csrf_token" value="([^"]+)"', page).group(1))


def _sign_in_form(page):
    """(action, csrf token) of the sign-in form with a password field on a page."""
    for form in re.findall(r"<form\b.*?</form>", page, re.S):
        if 'name="password"' in form:
            return html.unescape(re.search(r'action="([^"]+)"', form).group(1)), _csrf(form)
    raise AssertionError("no sign-in form on the page")


def _staff_signs_in(base, username, password, page_url):
    """Open the printed page, sign in where it leads, and come back to it signed in."""
    with httpx.Client(base_url=base, timeout=60, follow_redirects=True) as http:
        door = http.get(page_url)
        action, token = _sign_in_form(door.text)
        http.post(action, data={"username": username, "password": password, "csrf_token": token})
        landed = http.get(page_url)
        assert landed.status_code == 200 and 'name="password"' not in landed.text, (username, landed.text[:500])
        display_name = {user: name for user, name, _, _ in demo_guide.STAFF}[username]
        assert display_name in landed.text
        return landed.text


def _cardholder_signs_in(base, number, pin):
    with httpx.Client(base_url=base, timeout=60) as http:
        token = _csrf(http.get("/portal/sign-in").text)
        answer = http.post("/portal/sign-in", data={"staff_number": number, "pin": pin, "csrf_token": token})
        assert answer.status_code == 302, (number, answer.text[:500])
        home = http.get("/portal/")
        assert home.status_code == 200 and number in home.text
        return home.text


def _wait_until_up(base, process):
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "the printed server command stopped"
        try:
            if httpx.get(base + "/portal/sign-in", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the printed server command never answered")


def test_the_printed_next_steps_open_the_pages_and_close_today(demo_run):
    stdout, run_dir = demo_run
    printed = _printed(stdout)
    server_dir = str(run_dir / "server")
    assert shlex.split(printed["server"])[1:] == ["server", "--data-dir", server_dir]
    today = business_day.day_text(business_day.day_of_ms(dbmod.now_ms()))
    assert shlex.split(printed["close"])[1:] == ["finance", "close", "--data-dir", server_dir, "--date", today,
                                                 "--before-day-end"]
    assert len(printed["people"]) == 2 and {url.split("/")[3] for _, _, url in printed["staff"]} == \
        {"hall", "finance", "admin"}
    port = free_port()
    base = "http://127.0.0.1:%d" % port
    server = subprocess.Popen(shlex.split(printed["server"]) + ["--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_until_up(base, server)
        for number, pin in printed["people"]:
            _cardholder_signs_in(base, number, pin)
        for username, password, url in printed["staff"]:
            page = _staff_signs_in(base, username, password, url.replace("http://127.0.0.1:8080", base))
            if "/admin/" in url:                   # the fleet: the rush's tills (2) and its water dispenser
                assert len(re.findall(r'<tr id="terminal-\d+"', page)) >= 3, page[:2000]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    closed = subprocess.run(shlex.split(printed["close"]), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert closed.returncode == 0, closed.stderr[-2000:]
    assert today in closed.stdout
    again = subprocess.run(shlex.split(printed["close"]) + ["--json"], capture_output=True, text=True, timeout=300,
                           cwd=ROOT)
    summary = json.loads(again.stdout.splitlines()[-1])
    assert again.returncode == 0 and summary["day"] == today and summary["sales_count"] > 0    # the rush's lunches


def test_the_next_steps_read_in_english_and_never_print_a_database_password():
    prepared = {"staff": [("demo-hall", "demo-hall-pass", ["hall"]), ("demo-finance", "demo-finance-pass",
                                                                       ["finance"])],
                "people": [{"name": "田明", "staff_number": "S1", "pin": "000001", "id_number": None}]}
    text = demo_guide.render("/tmp/a demo/server", "postgresql://ykt:s3cret@db:5432/ykt", prepared, "en")
    assert "s3cret" not in text and "export YKT_DATABASE_URL" in text
    assert "server --data-dir '/tmp/a demo/server'" in text and "close today" in text
    assert "S1 / 000001" in text and "demo-finance / demo-finance-pass" in text and "接下来" not in text
    assert "持卡人" in demo_guide.render("/d", None, prepared, "zh")
