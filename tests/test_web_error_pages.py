"""The error pages of the web pages (sync_server/web/error_pages.py), on each store (--store): 403, 404
and 500 say what happened in Chinese, then English, in the site's layout, and lead somewhere (the
area's home, its sign-in, the front doors); a 500 shows nothing of the failure. The APIs keep their own
answers (JSON under /api/v1), and the phone app gets the page in its own layout and headers.
"""
import os
import re

import pytest

from sync_server import db as dbmod
from sync_server.app import create_app
from sync_server.cli import init_data_dir
from sync_server.web import auth

PASSWORD = "correct horse battery"
SECRET_DETAIL = "db password is hunter2"


@pytest.fixture
def site(tmp_path, store_environment):
    data_dir = str(tmp_path / "data")
    init_data_dir(data_dir, os.environ.get("YKT_DATABASE_URL"))
    # TESTING off: an exception becomes the 500 answer, as on a real site (TESTING would re-raise it)
    app = create_app({"DATA_DIR": data_dir})

    def boom():
        raise RuntimeError(SECRET_DETAIL)
    for path in ("/hall/boom", "/finance/boom", "/app/boom", "/api/v1/boom", "/boom"):
        app.add_url_rule(path, "boom" + path.replace("/", "_"), boom)
    conn = dbmod.connect(dbmod.store_location(data_dir))
    auth.add_staff_user(conn, "caiwu", "财务一", ["finance"], PASSWORD)
    yield {"app": app, "conn": conn}
    conn.close()


def links(page):
    return dict(re.findall(r'<a id="(go-[a-z-]+)" href="([^"]+)"', page))


def test_a_missing_page_says_so_in_chinese_then_english_and_leads_home(site):
    client = site["app"].test_client()
    for path, expected in (
            ("/hall/no-such-page", {"go-home": "/hall/", "go-sign-in": "/hall/sign-in"}),
            ("/finance/sign-in/x", {"go-home": "/finance/", "go-sign-in": "/finance/sign-in"}),
            ("/portal/no-such-page", {"go-home": "/portal/", "go-sign-in": "/portal/sign-in"}),
            ("/no-such-page", {"go-portal": "/portal/", "go-hall": "/hall/sign-in", "go-finance": "/finance/sign-in"})):
        answer = client.get(path)
        page = answer.get_data(as_text=True)
        assert answer.status_code == 404 and answer.mimetype == "text/html", path
        assert page.index("页面不存在") < page.index("Page not found"), path
        assert "ykt_web.css" in page and 'id="error-404"' in page
        assert links(page) == expected, path
    english = client.get("/hall/no-such-page?lang=en").get_data(as_text=True)
    assert "Back to the service hall home page" in english and "页面不存在" in english


def test_a_missing_day_for_signed_in_finance_staff_leads_back_to_the_days(site):
    client = site["app"].test_client()
    page = client.get("/finance/sign-in").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post("/finance/sign-in", data={"csrf_token": token, "username": "caiwu", "password": PASSWORD})
    answer = client.get("/finance/2001-01-01")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 404 and links(page) == {"go-home": "/finance/"}
    assert "财务一（caiwu）" in page and 'id="sign-out"' in page and 'action="/finance/sign-out"' in page
    assert answer.headers["Cache-Control"] == "no-store"


def test_a_failure_is_a_500_page_without_any_detail(site):
    client = site["app"].test_client()
    for path, home in (("/hall/boom", "/hall/"), ("/finance/boom", "/finance/"), ("/boom", None)):
        answer = client.get(path)
        page = answer.get_data(as_text=True)
        assert answer.status_code == 500, path
        assert "服务器出错了" in page and "Something went wrong on the server" in page
        assert SECRET_DETAIL not in page and "Traceback" not in page and "RuntimeError" not in page
        assert links(page).get("go-home") == home if home else "go-portal" in links(page)


def test_the_apis_keep_their_own_error_answers(site):
    client = site["app"].test_client()
    missing = client.get("/api/v1/no-such-thing")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    wrong_method = client.delete("/api/v1/boom")
    assert wrong_method.status_code == 405 and wrong_method.get_json()["error"] == "method_not_allowed"
    broken = client.get("/api/v1/boom")
    assert broken.status_code == 500 and "error-page" not in broken.get_data(as_text=True)
    assert SECRET_DETAIL not in broken.get_data(as_text=True)
    terminal = client.get("/api/terminal/v1/no-such-thing")
    assert terminal.status_code == 404 and "error-page" not in terminal.get_data(as_text=True)


def test_the_phone_app_gets_the_page_in_its_own_layout(site):
    client = site["app"].test_client()
    for path, code in (("/app/no-such-page", 404), ("/app/boom", 500)):
        answer = client.get(path)
        page = answer.get_data(as_text=True)
        assert answer.status_code == code
        assert 'class="phone page-error"' in page and "phone_app.css" in page and "ykt_web.css" not in page
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert re.search(r'<a class="button primary" id="go-home" href="/app/">', page)
        assert "<script src" not in page and SECRET_DETAIL not in page
    assert "页面不存在" in client.get("/app/no-such-page").get_data(as_text=True)


def test_other_errors_keep_their_answer(site):
    client = site["app"].test_client()
    answer = client.post("/hall/sign-in", data={"username": "caiwu", "password": PASSWORD})   # no CSRF token
    assert answer.status_code == 400 and "error-page" not in answer.get_data(as_text=True)
    assert client.get("/finance").status_code == 308         # the slash redirect still works
