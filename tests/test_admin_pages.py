"""The admin console over HTTP against the real server process (SQLite and PostgreSQL): only the admin
role gets in and every form needs the session's CSRF token; registering a terminal downloads the very
document `registry.provisioning_document` makes (no-store), whose keys then sync; settings and a menu
typed in yuan reach the terminal's next sync answer; merchants added and renamed; a key rotated and a
terminal revoked only through its confirm page; a signed bundle uploaded, a forged one refused, and
its rollout offered to the terminal named. Every refused input answers 400 with its reason on the
page and leaves the database exactly as it was.
"""
import html
import json
import os
import re
import sys

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware.apps.sync_client import SyncRefused
from firmware.core import sam as sam_keys, wallets
from sync_server import registry, releases, terminal_settings
from sync_server.web import auth

from server_process import SyncClient
from staff_site import PASSWORD, token_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import release  # noqa: E402

POS = wallets.CATEGORY_CANTEEN


class Browser:
    """One person at the pages: an httpx client keeping the session cookie."""

    def __init__(self, server):
        self.http = httpx.Client(base_url=server.url, timeout=60)

    def sign_in(self, username, door="/admin/sign-in"):
        answer = self.http.post(door, data={"csrf_token": token_of(self.http.get(door).text), "username": username,
                                            "password": PASSWORD})
        assert answer.status_code == 302, answer.text
        return self

    def token(self, path="/admin/terminals"):
        return token_of(self.http.get(path).text)

    def post(self, path, data=None, files=None, token=True):
        data = dict(data or {})
        if token is True:
            data["csrf_token"] = self.token()
        elif token:
            data["csrf_token"] = token
        return self.http.post(path, data=data, files=files)

    def close(self):
        self.http.close()


def refusal(answer):
    """The error line of a page answered again."""
    found = re.findall(r'class="flash flash-error"[^>]*>([^<]*)<', answer.text)
    return html.unescape(" ".join(found))


@pytest.fixture(scope="module")
def site(live_server):
    conn = live_server.connect()
    try:
        auth.add_staff_user(conn, "tech", "李技术", ["admin"], PASSWORD)
        auth.add_staff_user(conn, "clerk", "王柜员", ["hall"], PASSWORD)
    finally:
        conn.close()
    admin = Browser(live_server).sign_in("tech")
    yield live_server, admin
    admin.close()


def setup(server, category=POS, terminals=1, name="一食堂"):
    """A merchant of `category` with terminals: (merchant id, [terminal ids])."""
    conn = server.connect()
    try:
        merchant = registry.add_merchant(conn, name, "merchant", category)
        return merchant, [registry.register_terminal(conn, merchant) for _ in range(terminals)]
    finally:
        conn.close()


def client_of(server, document):
    """A terminal speaking the sync protocol with the keys of its provisioning document."""
    sam = sam_keys.SoftwareSAM({purpose: bytes.fromhex(key) for purpose, key in document["sam_keys"].items()
                                if purpose != registry.LEGACY_MASTER})
    return SyncClient(server.url, document["terminal_id"], sam, document["merchant_id"], document["category"])


def test_only_administrators_get_in(site):
    server, _admin = site
    _merchant, (terminal_id,) = setup(server)
    paths = ("/admin/merchants", "/admin/terminals", "/admin/terminals/%d" % terminal_id, "/admin/releases",
             "/admin/terminals/%d/revoke" % terminal_id)
    visitor = Browser(server)
    clerk = Browser(server).sign_in("clerk", door="/hall/sign-in")
    try:
        for path in paths:
            away = visitor.http.get(path)
            assert away.status_code == 302 and away.headers["Location"].startswith("/admin/sign-in?next="), path
            refused = clerk.http.get(path)
            assert refused.status_code == 403 and "管理员" in refused.text, path
        count = server.query("SELECT count(*) FROM terminals")[0][0]
        hall_token = clerk.token("/hall/")
        merchant_id = str(_merchant)
        assert clerk.post("/admin/terminals/register", {"merchant_id": merchant_id}, token=hall_token).status_code == 403
        assert clerk.post("/admin/terminals/%d/revoke" % terminal_id, {"confirm": "yes"},
                          token=hall_token).status_code == 403
        assert visitor.post("/admin/terminals/register", {"merchant_id": merchant_id}, token=None).status_code == 400
        assert server.query("SELECT count(*) FROM terminals")[0][0] == count
        assert server.query("SELECT status FROM terminals WHERE id = ?", (terminal_id,)) == [("active",)]
    finally:
        visitor.close()
        clerk.close()


def test_a_missing_or_forged_csrf_token_is_refused(site, snapshot):
    server, admin = site
    merchant, (terminal_id,) = setup(server)
    posts = [("/admin/terminals/register", {"merchant_id": str(merchant), "location": "窗口"}),
             ("/admin/merchants", {"name_zh": "三食堂", "category": "1"}),
             ("/admin/merchants/%d/names" % merchant, {"name_zh": "改名"}),
             ("/admin/terminals/%d/location" % terminal_id, {"location": "二楼"}),
             ("/admin/terminals/%d/settings" % terminal_id, {"offline_cap_count": "3"}),
             ("/admin/terminals/%d/menu" % terminal_id, {"dish_id": "rice", "dish_name": "米饭", "dish_price": "1"}),
             ("/admin/terminals/%d/rotate-key" % terminal_id, {}),
             ("/admin/terminals/%d/revoke" % terminal_id, {"confirm": "yes"}),
             ("/admin/releases/1/rollout", {"scope": "all"})]
    conn = server.connect()
    try:
        before = snapshot(conn)
        for path, data in posts:
            assert admin.post(path, data, token=None).status_code == 400, path
            assert admin.post(path, data, token="forged-" + admin.token()[:20]).status_code == 400, path
        assert admin.post("/admin/releases", token=None, files={"bundle": ("x.zip", b"PK", "application/zip")}
                          ).status_code == 400
        assert snapshot(conn) == before
    finally:
        conn.close()


def test_registering_downloads_the_provisioning_document(site):
    server, admin = site
    merchant, _ = setup(server, terminals=0, name="二食堂")
    answer = admin.post("/admin/terminals/register", {"merchant_id": str(merchant), "location": " 二食堂一楼  5号窗口 "})
    assert answer.status_code == 200, refusal(answer)
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    terminal_id = answer.json()["terminal_id"]
    assert answer.headers["Content-Disposition"] == "attachment; filename=terminal-%d.json" % terminal_id
    conn = server.connect()
    try:
        assert answer.json() == registry.provisioning_document(conn, server.master_key(), terminal_id, server.url)
        assert conn.execute("SELECT location, merchant_id FROM terminals WHERE id = ?",
                            (terminal_id,)).fetchone() == ("二食堂一楼 5号窗口", merchant)
        logged = conn.execute("SELECT username, detail FROM staff_actions WHERE action = 'terminal_register' "
                              "ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    assert logged[0] == "tech" and json.loads(logged[1])["terminal_id"] == terminal_id
    keys = answer.json()["sam_keys"]
    assert all(key not in admin.http.get("/admin/terminals/%d" % terminal_id).text for key in keys.values())
    terminal = client_of(server, answer.json())
    try:
        assert terminal.sync()["acked_seq"] == 0          # the downloaded keys are the terminal's
    finally:
        terminal.close()
    listing = admin.http.get("/admin/terminals").text
    assert 'id="terminal-%d"' % terminal_id in listing and "二食堂一楼 5号窗口" in listing
    assert 'href="/admin/terminals/%d"' % terminal_id in admin.http.get("/admin/fleet").text


def test_an_activation_unit_without_the_old_systems_key_is_not_registered(site):
    server, admin = site
    merchant, _ = setup(server, category=wallets.CATEGORY_ACTIVATION, terminals=0, name="激活点")
    count = server.query("SELECT count(*) FROM terminals")[0][0]
    answer = admin.post("/admin/terminals/register", {"merchant_id": str(merchant), "location": "服务大厅"})
    assert answer.status_code == 400 and "旧系统主密钥" in refusal(answer)
    assert 'value="服务大厅"' in answer.text and answer.headers["Content-Type"].startswith("text/html")
    assert server.query("SELECT count(*) FROM terminals")[0][0] == count


def test_bad_input_answers_why_and_changes_nothing(site, snapshot, tmp_path):
    server, admin = site
    merchant, (pos,) = setup(server)
    _water_merchant, (dispenser,) = setup(server, category=wallets.CATEGORY_WATER, name="开水房")

    def menu(*rows):
        return {"dish_id": [row[0] for row in rows], "dish_name": [row[1] for row in rows],
                "dish_price": [row[2] for row in rows]}
    not_a_zip = tmp_path / "bundle.zip"
    not_a_zip.write_bytes(b"not a zip at all")
    cases = [
        ("/admin/terminals/%d/menu" % pos, menu(("rice", "米饭", "abc")), "abc"),
        ("/admin/terminals/%d/menu" % pos, menu(("rice", "米" * 17, "1.00")), "名称"),
        ("/admin/terminals/%d/menu" % pos, menu(("rice", "米饭", "")), "第 1 行不完整"),
        ("/admin/terminals/%d/menu" % pos, menu(("Rice!", "米饭", "1")), "菜品编号"),
        ("/admin/terminals/%d/menu" % pos, menu(("rice", "米饭", "1"), ("rice", "白饭", "2")), "重复"),
        ("/admin/terminals/%d/menu" % pos, menu(*[("d%d" % n, "菜", "1") for n in range(21)]), "最多 20"),
        ("/admin/terminals/%d/menu" % pos, menu(("rice", "米饭", "99999999999999999999")), "价格"),
        ("/admin/terminals/%d/menu" % dispenser, menu(("rice", "米饭", "1")), "不适用"),
        ("/admin/terminals/%d/settings" % pos, {"offline_cap_count": "-1"}, "离线限次"),
        ("/admin/terminals/%d/settings" % pos, {"offline_cap_count": "9" * 40}, "离线限次"),
        ("/admin/terminals/%d/settings" % pos, {"offline_cap_amount_fen": "1000.01"}, "离线限额"),
        ("/admin/terminals/%d/settings" % pos, {"offline_cap_amount_fen": "-5"}, "离线限额"),
        ("/admin/terminals/%d/settings" % pos, {"offline_cap_count": "3", "nope": "5"}, "未知的设置项 nope"),
        ("/admin/terminals/%d/settings" % pos, {"water_price_fen_per_litre": "0.30"}, "不适用于消费机"),
        ("/admin/terminals/%d/settings" % dispenser, {"water_price_fen_per_litre": "abc"}, "水价"),
        ("/admin/terminals/%d/location" % pos, {"location": "位" * 41}, "位置最多"),
        ("/admin/merchants", {"name_zh": "食" * 33, "category": "1"}, "中文名称"),
        ("/admin/merchants", {"name_zh": "  ", "category": "1"}, "中文名称"),
        ("/admin/merchants", {"name_zh": "五食堂", "category": "9"}, "类别"),
        ("/admin/merchants/%d/names" % merchant, {"name_zh": "一食堂", "name_en": "e" * 65}, "英文名称"),
        ("/admin/terminals/register", {"merchant_id": "abc", "location": "x"}, "商户"),
        ("/admin/terminals/register", {"merchant_id": "99999", "location": "x"}, "商户 99999 不存在"),
        ("/admin/terminals/register", {"merchant_id": str(merchant), "location": "x" * 41}, "位置最多"),
        ("/admin/releases/1/rollout", {"scope": "everyone"}, "推送范围"),
        ("/admin/releases/1/rollout", {"scope": "terminal", "terminal_id": "x"}, "终端编号"),
        ("/admin/releases/99999/rollout", {"scope": "all"}, "没有固件版本 99999"),
    ]
    conn = server.connect()
    try:
        before = snapshot(conn)
        for path, data, reason in cases:
            answer = admin.post(path, data)
            assert answer.status_code == 400 and reason in refusal(answer), (path, data, refusal(answer))
            assert snapshot(conn) == before, (path, data)
        for files in ({"bundle": ("bundle.zip", not_a_zip.read_bytes(), "application/zip")}, None):
            answer = admin.post("/admin/releases", files=files)
            assert answer.status_code == 400 and ("不是固件包" in refusal(answer) or "请选择" in refusal(answer))
        assert snapshot(conn) == before
    finally:
        conn.close()
    assert not [name for name in os.listdir(os.path.join(server.data_dir, releases.RELEASES_DIR))
                if name.startswith("upload-")]
    english = admin.post("/admin/terminals/%d/settings?lang=en" % pos, {"offline_cap_count": "-1"})
    assert "offline cap, taps per account" in refusal(english) and "0 to 1000 taps" in refusal(english)
    admin.http.get("/admin/fleet?lang=zh")


def test_settings_and_a_menu_reach_the_terminals_next_sync(site):
    server, admin = site
    merchant, _ = setup(server, terminals=0, name="三食堂")
    terminals = [server.add_terminal(merchant_id=merchant) for _ in range(2)]
    pos, neighbour = terminals
    page = "/admin/terminals/%d" % pos.terminal_id
    try:
        saved = admin.post(page + "/settings", {"offline_cap_count": "3", "offline_cap_amount_fen": "12.50",
                                                "sync_interval_ms": "", "double_tap_window_ms": ""})
        assert saved.status_code == 302 and saved.headers["Location"].endswith("#settings")
        rows = {"dish_id": ["rice", "pork", "", ""], "dish_name": ["米饭", "红烧肉", "", ""],
                "dish_price": ["1.50", "１２", "", ""]}
        assert admin.post(page + "/menu", rows).status_code == 302
        shown = admin.http.get(page).text
        assert 'value="12.50"' in shown and 'value="红烧肉"' in shown and 'value="12.00"' in shown
        assert "设置已保存" in shown or "菜单已保存" in shown
        config = pos.sync()["config"]
        assert config["offline_cap_count"] == 3 and config["offline_cap_amount_fen"] == 1250
        assert config["dishes"] == {"pork": ["红烧肉", 1200], "rice": ["米饭", 150]}
        assert neighbour.sync()["config"]["dishes"] == {}

        rows = dict(rows, remove=["pork"], for_merchant="yes")
        assert admin.post(page + "/menu", rows).status_code == 302
        version = config["version"]
        assert pos.sync(config_version=version)["config"]["dishes"] == {"rice": ["米饭", 150]}
        assert neighbour.sync(config_version=version)["config"]["dishes"] == {"rice": ["米饭", 150]}

        assert admin.post(page + "/settings", {"offline_cap_count": "", "offline_cap_amount_fen": ""}).status_code == 302
        conn = server.connect()
        try:
            assert terminal_settings.settings_of(conn, pos.terminal_id) == {"dishes": {"rice": ["米饭", 150]}}
            assert terminal_settings.last_change(conn, pos.terminal_id)[1] == "tech"
            actions = [row[0] for row in conn.execute("SELECT action FROM staff_actions WHERE username = 'tech' "
                                                      "AND action IN ('terminal_settings', 'terminal_menu')")]
        finally:
            conn.close()
        assert actions.count("terminal_settings") >= 2 and actions.count("terminal_menu") >= 2
    finally:
        for terminal in terminals:
            terminal.close()
    _water, (dispenser,) = setup(server, category=wallets.CATEGORY_WATER, name="开水房二")
    water_page = admin.http.get("/admin/terminals/%d" % dispenser).text
    assert 'name="water_price_fen_per_litre"' in water_page and 'id="menu-form"' not in water_page
    assert 'name="double_tap_window_ms"' not in water_page


def test_merchants_are_added_and_renamed(site):
    server, admin = site
    added = admin.post("/admin/merchants", {"name_zh": "  四食堂 ", "name_en": "", "category": str(POS)})
    assert added.status_code == 302
    merchant_id = int(added.headers["Location"].split("#merchant-")[1])
    assert server.query("SELECT name_zh, name_en, category FROM merchants WHERE id = ?",
                 (merchant_id,)) == [("四食堂", "四食堂", POS)]
    renamed = admin.post("/admin/merchants/%d/names" % merchant_id, {"name_zh": "四食堂（清真）", "name_en": "Canteen 4"})
    assert renamed.status_code == 302
    assert server.query("SELECT m.name_zh, m.name_en, l.name_zh, l.name_en FROM merchants m JOIN ledger_accounts l "
                 "ON l.id = m.ledger_account_id WHERE m.id = ?", (merchant_id,)) == [("四食堂（清真）", "Canteen 4") * 2]
    listing = admin.http.get("/admin/merchants").text
    assert 'id="merchant-%d"' % merchant_id in listing and "四食堂（清真）" in listing
    assert admin.post("/admin/merchants/99999/names", {"name_zh": "无"}).status_code == 404


def test_a_key_is_rotated_and_a_terminal_revoked_only_when_confirmed(site):
    server, admin = site
    terminal = server.add_terminal()
    page = "/admin/terminals/%d" % terminal.terminal_id
    try:
        assert admin.post(page + "/rotate-key").status_code == 302
        assert server.query("SELECT key_version, next_key_version FROM terminals WHERE id = ?",
                     (terminal.terminal_id,)) == [(1, 2)]
        assert "1 → 2" in admin.http.get(page).text
        unconfirmed = admin.post(page + "/revoke")
        assert unconfirmed.status_code == 302 and unconfirmed.headers["Location"].endswith("/revoke")
        assert server.query("SELECT status FROM terminals WHERE id = ?", (terminal.terminal_id,)) == [("active",)]
        assert 'id="revoke-confirm-button"' in admin.http.get(page + "/revoke").text
        assert admin.post(page + "/revoke", {"confirm": "yes"}).status_code == 302
        assert server.query("SELECT status FROM terminals WHERE id = ?", (terminal.terminal_id,)) == [("revoked",)]
        with pytest.raises(SyncRefused) as refused:
            terminal.sync()
        assert refused.value.error == "terminal_revoked"
        again = admin.post(page + "/rotate-key")
        assert again.status_code == 400 and "已停用" in refusal(again)
        assert 'id="revoked-note"' in admin.http.get(page).text
    finally:
        terminal.close()
    assert admin.http.get("/admin/terminals/99999").status_code == 404


def test_a_signed_bundle_is_uploaded_and_rolled_out_to_one_terminal(site, tmp_path):
    server, admin = site
    key = Ed25519PrivateKey.generate()
    conn = server.connect()
    try:
        releases.add_release_key(conn, key.public_key().public_bytes_raw().hex())
    finally:
        conn.close()
    files = {"ykt/__init__.py": os.path.join(ROOT, "ykt", "__init__.py")}
    bundle = release.build("pos", "9.1.0", key, str(tmp_path / "dist"), files=files)
    forged = release.build("pos", "9.2.0", Ed25519PrivateKey.generate(), str(tmp_path / "forged"), files=files)
    with open(bundle, "rb") as handle:
        bundle_bytes = handle.read()
    uploaded = admin.post("/admin/releases", files={"bundle": ("ykt-pos-9.1.0.zip", bundle_bytes, "application/zip")})
    assert uploaded.status_code == 302, refusal(uploaded)
    release_id = int(uploaded.headers["Location"].split("#release-")[1])
    twice = admin.post("/admin/releases", files={"bundle": ("again.zip", bundle_bytes, "application/zip")})
    assert twice.status_code == 400 and "已登记" in refusal(twice)
    with open(forged, "rb") as handle:
        refused = admin.post("/admin/releases", files={"bundle": ("forged.zip", handle.read(), "application/zip")})
    assert refused.status_code == 400 and "签名无效" in refusal(refused)
    assert server.query("SELECT version FROM firmware_releases") == [("9.1.0",)]

    chosen, bystander = server.add_terminal(), server.add_terminal()
    try:
        health = {"firmware": "ykt-pos/9.0.0"}
        assert not [c for c in chosen.sync(health=health)["commands"] if c["op"] == "update"]
        unknown = admin.post("/admin/releases/%d/rollout" % release_id, {"scope": "terminal", "terminal_id": "99999"})
        assert unknown.status_code == 400 and "没有终端 99999" in refusal(unknown)
        rolled = admin.post("/admin/releases/%d/rollout" % release_id,
                            {"scope": "terminal", "terminal_id": str(chosen.terminal_id), "merchant_id": "1"})
        assert rolled.status_code == 302
        (offer,) = [c for c in chosen.sync(health=health)["commands"] if c["op"] == "update"]
        assert offer["release_id"] == release_id and offer["version"] == "9.1.0"
        assert not [c for c in bystander.sync(health=health)["commands"] if c["op"] == "update"]
        page = admin.http.get("/admin/releases").text
        assert "9.1.0" in page and 'href="/admin/terminals/%d"' % chosen.terminal_id in page
        assert "ykt-pos/9.0.0" in page                     # who runs what
    finally:
        chosen.close()
        bystander.close()
    logged = server.query("SELECT action FROM staff_actions WHERE action IN ('release_add', 'rollout')")
    assert sorted(row[0] for row in logged) == ["release_add", "rollout"]
