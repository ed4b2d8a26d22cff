"""The administrators' and technicians' pages (`/admin/...`), for staff with the `admin` role.

    GET  /admin/sign-in        the admin front door (POST: username + password, CSRF checked)
    POST /admin/sign-out       ends this user's sessions
    GET  /admin/fleet          every terminal, failing and stale first (sync_server/fleet_status.py);
                               the same as `ykt fleet status`
    GET  /admin/merchants      merchants; POST adds one (registry.add_merchant), POST .../names renames
    GET  /admin/terminals      every terminal; POST /admin/terminals/register (csrf_token, merchant_id,
                               location) answers the new terminal's provisioning JSON as a download, the
                               same document `ykt hall terminal-register --out` writes; tools/flash.py
                               signs in with the staff form and posts exactly these fields
    GET  /admin/terminals/<id> one terminal: location, its own settings and dish menu
                               (sync_server/terminal_settings.py), key rotation, revocation (a confirm page)
    GET  /admin/releases       firmware releases (sync_server/releases.py), their rollouts and who runs
                               what; POST uploads a signed bundle, POST .../rollout offers a release to
                               one terminal, a merchant's terminals or all of its kind

Each change is logged in the staff action log (who, what, when; the terminal, merchant or release in
its detail) in the change's own transaction where the operation joins one; releases.py opens its own,
so those lines follow right after. Refused input answers the page again with the reason (status 400)
having changed nothing. Release keys are shown, never added, here: a key decides which firmware newly
provisioned terminals accept, so trusting one stays a command at the server (`ykt fleet
release-key-add`). Nothing on these pages may be cached, the provisioning download least of all.
"""
import json
import os
import shutil
import tempfile
import zipfile

from flask import (Blueprint, Response, abort, current_app, flash, g, redirect, render_template, request,
                   url_for)

from firmware.core import bundle_format, wallets
from sync_server import db as dbmod, fleet_status, keys, numbers, registry, releases, terminal_settings
from sync_server.web import auth
from sync_server.web.page_text import error_text, t, yuan

admin_pages = Blueprint("admin_pages", __name__, url_prefix="/admin")
admin_pages.before_request(auth.check_csrf)
admin_required = auth.staff_required("admin")

MERCHANT_CATEGORIES = {wallets.CATEGORY_CANTEEN: ("食堂", "canteen"), wallets.CATEGORY_WATER: ("热水", "water"),
                       wallets.CATEGORY_ELECTRICITY: ("电费", "electricity"),
                       wallets.CATEGORY_ACTIVATION: ("激活机", "activation units")}
MAX_NAME_ZH_CHARS = 32
MAX_NAME_EN_CHARS = 64
BLANK_MENU_ROWS = 3               # empty rows under a menu, for new dishes
MAX_MENU_FORM_ROWS = terminal_settings.MAX_MENU_DISHES + 20      # a form with more rows is not ours
UPLOAD_FORM_ALLOWANCE = 64 * 1024        # the multipart wrapping around a bundle
RELEASE_UPLOAD_ENDPOINT = "admin_pages.upload_release"


@admin_pages.after_request
def _no_store(response):
    # the pages show terminals' state and the register answer holds keys: never kept by any cache
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@admin_pages.url_value_preprocessor
def _bundle_upload_limit(endpoint, _values):
    """A bundle may be as large as a terminal takes one; set before check_csrf parses the form (URL
    value preprocessors run before before_request)."""
    if endpoint == RELEASE_UPLOAD_ENDPOINT:
        request.max_content_length = bundle_format.MAX_BUNDLE_BYTES + UPLOAD_FORM_ALLOWANCE


@admin_pages.app_template_filter("merchant_category")
def merchant_category(code):
    return t(*MERCHANT_CATEGORIES.get(code, (str(code), str(code))))


def _log(conn, action, **detail):
    """The staff action log's line for an admin change (no person: what it touched is in the detail)."""
    return auth.log_action(conn, g.staff, action, detail=detail)


def _refused(error, page, *args, **kwargs):
    """The page again with the refusal's text, status 400: nothing was changed."""
    flash(error if isinstance(error, str) else error_text(error), "error")
    return page(*args, status=400, **kwargs)


# --- sign in / out, fleet ------------------------------------------------------------------------

@admin_pages.route("/sign-in", methods=("GET", "POST"))
def sign_in():
    return auth.staff_sign_in("admin", "admin/sign_in.html")


@admin_pages.post("/sign-out")
def sign_out():
    auth.end_staff_sessions(dbmod.get_db())
    return redirect(url_for("admin_pages.sign_in"))


@admin_pages.get("/")
@admin_required
def home():
    return redirect(url_for("admin_pages.fleet"))


def _with_texts(rows):
    lang = getattr(g, "lang", "zh")
    for row in rows:
        row["problem_texts"] = [fleet_status.problem_text(key, lang) for key in row["problems"]]
        row["since_text"] = fleet_status.since_text(row["since_sync_s"], lang)
    return rows


@admin_pages.get("/fleet")
@admin_required
def fleet():
    try:
        stale_min = int(request.args.get("stale_min", fleet_status.STALE_AFTER_MS // 60000))
    except ValueError:
        stale_min = fleet_status.STALE_AFTER_MS // 60000
    stale_min = min(max(stale_min, 1), 7 * 24 * 60)
    rows = _with_texts(fleet_status.fleet(dbmod.get_db(), stale_after_ms=stale_min * 60000))
    return render_template("admin/fleet.html", rows=rows, stale_min=stale_min,
                           failing=sum(1 for row in rows if row["problems"]))


# --- merchants -----------------------------------------------------------------------------------

def _merchant_rows(conn):
    rows = conn.execute("SELECT m.id, m.name_zh, m.name_en, m.category, "
                        "(SELECT count(*) FROM terminals t WHERE t.merchant_id = m.id AND t.status = 'active') "
                        "FROM merchants m ORDER BY m.id").fetchall()
    return [dict(zip(("id", "name_zh", "name_en", "category", "terminals"), row)) for row in rows]


def _names(form):
    """(name_zh, name_en) of a merchant form (English defaults to the Chinese); a refusal text else."""
    name_zh = " ".join(form.get("name_zh", "").split())
    name_en = " ".join(form.get("name_en", "").split()) or name_zh
    if not 1 <= len(name_zh) <= MAX_NAME_ZH_CHARS or not name_zh.isprintable():
        return t("中文名称应为 1 至 %d 个字符" % MAX_NAME_ZH_CHARS,
                 "The Chinese name needs 1 to %d characters" % MAX_NAME_ZH_CHARS)
    if len(name_en) > MAX_NAME_EN_CHARS or not name_en.isprintable():
        return t("英文名称最多 %d 个字符" % MAX_NAME_EN_CHARS, "The English name has at most %d characters"
                 % MAX_NAME_EN_CHARS)
    return name_zh, name_en


def _merchants_page(status=200):
    return render_template("admin/merchants.html", merchants=_merchant_rows(dbmod.get_db()),
                           categories=MERCHANT_CATEGORIES), status


@admin_pages.get("/merchants")
@admin_required
def merchants():
    return _merchants_page()


@admin_pages.post("/merchants")
@admin_required
def add_merchant():
    names = _names(request.form)
    category = numbers.parse_int(request.form.get("category"), 1, 99)
    if isinstance(names, str):
        return _refused(names, _merchants_page)
    if category not in MERCHANT_CATEGORIES:
        return _refused(t("请选择商户类别", "Choose the merchant's category"), _merchants_page)
    conn = dbmod.get_db()
    with dbmod.transaction(conn):
        merchant_id = registry.add_merchant(conn, names[0], names[1], category)
        _log(conn, "merchant_add", merchant_id=merchant_id, name_zh=names[0], name_en=names[1], category=category)
    flash(t("商户已添加：编号 %d" % merchant_id, "Merchant added: id %d" % merchant_id), "ok")
    return redirect(url_for("admin_pages.merchants") + "#merchant-%d" % merchant_id)


@admin_pages.post("/merchants/<id:merchant_id>/names")
@admin_required
def rename(merchant_id):
    names = _names(request.form)
    if isinstance(names, str):
        return _refused(names, _merchants_page)
    conn = dbmod.get_db()
    try:
        with dbmod.transaction(conn):
            change = registry.rename_merchant(conn, merchant_id, *names)
            _log(conn, "merchant_rename", merchant_id=merchant_id, **change)
    except registry.HallError:
        abort(404)
    flash(t("商户 %d 已改名" % merchant_id, "Merchant %d renamed" % merchant_id), "ok")
    return redirect(url_for("admin_pages.merchants") + "#merchant-%d" % merchant_id)


# --- terminals -----------------------------------------------------------------------------------

def _fleet_by_id(conn):
    return {row["terminal_id"]: row for row in _with_texts(fleet_status.fleet(conn))}


def _terminals_page(status=200, location=""):
    conn = dbmod.get_db()
    rows = sorted(_fleet_by_id(conn).values(), key=lambda row: row["terminal_id"])
    return render_template("admin/terminals.html", rows=rows, merchants=_merchant_rows(conn),
                           location=location, max_location=terminal_settings.MAX_LOCATION_CHARS), status


@admin_pages.get("/terminals")
@admin_required
def terminals():
    return _terminals_page()


@admin_pages.post("/terminals/register")
@admin_required
def register_terminal():
    """The new terminal's provisioning document as a download (it holds the terminal's keys: no-store,
    never shown on a page). Registering and the document are one transaction, so an activation unit
    the site has no old-system key for is refused without leaving a terminal behind."""
    location_text = request.form.get("location", "")
    merchant_id = numbers.parse_id(request.form.get("merchant_id"))
    if merchant_id is None:
        return _refused(t("请选择商户", "Choose the merchant"), _terminals_page, location=location_text[:80])
    conn = dbmod.get_db()
    state = current_app.extensions["ykt"]
    try:
        location = terminal_settings.clean_location(location_text)
        with dbmod.transaction(conn):
            terminal_id = registry.register_terminal(conn, merchant_id, location=location)
            document = registry.provisioning_document(conn, state.master_key, terminal_id, request.url_root.rstrip("/"),
                                                      keys.load_legacy_key(current_app.config["DATA_DIR"]))
            _log(conn, "terminal_register", terminal_id=terminal_id, merchant_id=merchant_id, location=location)
    except registry.HallError as error:
        return _refused(error, _terminals_page, location=location_text[:80])
    response = Response(json.dumps(document, indent=2, ensure_ascii=False), 200, mimetype="application/json")
    response.headers["Content-Disposition"] = "attachment; filename=terminal-%d.json" % terminal_id
    return response


def _terminal_or_404(conn, terminal_id):
    row = _fleet_by_id(conn).get(terminal_id)
    if row is None:
        abort(404)
    return row


def _menu_rows(menu):
    """The menu editor's rows: each dish, then blank ones for new dishes."""
    rows = [{"dish_id": dish_id, "name": name, "price": yuan(price_fen)} for dish_id, (name, price_fen) in menu.items()]
    return rows + [{"dish_id": "", "name": "", "price": ""}] * BLANK_MENU_ROWS


def _terminal_page(terminal_id, status=200, typed=None, menu_rows=None):
    conn = dbmod.get_db()
    terminal = _terminal_or_404(conn, terminal_id)
    own = terminal_settings.settings_of(conn, terminal_id)
    site = terminal_settings.site_settings(conn)
    settings = [dict(setting._asdict(), own=own.get(setting.key), site=site[setting.key],
                     bounds=terminal_settings.bounds_text(setting, getattr(g, "lang", "zh")))
                for setting in terminal_settings.SETTINGS if terminal["category"] in setting.categories]
    takes_menu = terminal_settings.applies_to(terminal_settings.DISHES, terminal["category"])
    return render_template("admin/terminal.html", terminal=terminal, settings=settings, typed=typed or {},
                           last_change=terminal_settings.last_change(conn, terminal_id), takes_menu=takes_menu,
                           menu_rows=menu_rows if menu_rows is not None else
                           _menu_rows(own.get(terminal_settings.DISHES) or {}),
                           max_dishes=terminal_settings.MAX_MENU_DISHES,
                           max_location=terminal_settings.MAX_LOCATION_CHARS), status


@admin_pages.get("/terminals/<id:terminal_id>")
@admin_required
def terminal(terminal_id):
    return _terminal_page(terminal_id)


def _to_terminal(terminal_id, anchor=""):
    return redirect(url_for("admin_pages.terminal", terminal_id=terminal_id) + anchor)


@admin_pages.post("/terminals/<id:terminal_id>/location")
@admin_required
def set_location(terminal_id):
    conn = dbmod.get_db()
    _terminal_or_404(conn, terminal_id)
    try:
        with dbmod.transaction(conn):
            location = terminal_settings.set_location(conn, terminal_id, request.form.get("location", ""))
            _log(conn, "terminal_location", terminal_id=terminal_id, location=location)
    except registry.HallError as error:
        return _refused(error, _terminal_page, terminal_id)
    flash(t("位置已保存", "Location saved"), "ok")
    return _to_terminal(terminal_id)


@admin_pages.post("/terminals/<id:terminal_id>/settings")
@admin_required
def save_settings(terminal_id):
    """Each setting the terminal's kind runs with: a value overrides the site's, a blank field goes
    back to it. Money is typed in yuan."""
    conn = dbmod.get_db()
    terminal = _terminal_or_404(conn, terminal_id)
    changes, clear, typed = {}, [], {}
    try:
        for key in request.form:         # a field the page does not have is a mistake, not ignored
            if key != auth.CSRF_FIELD:
                terminal_settings.check_applies(key, terminal["category"])
        for setting in terminal_settings.SETTINGS:
            if terminal["category"] not in setting.categories:
                continue
            text = request.form.get(setting.key, "").strip()
            typed[setting.key] = text[:80]
            if text:
                changes[setting.key] = terminal_settings.value_from_text(setting.key, text, yuan=True)
            else:
                clear.append(setting.key)
        with dbmod.transaction(conn):
            after = terminal_settings.set_settings(conn, terminal_id, changes, g.staff["username"], clear=clear)
            _log(conn, "terminal_settings", terminal_id=terminal_id,
                 settings={key: value for key, value in after.items() if key != terminal_settings.DISHES})
    except registry.HallError as error:
        return _refused(error, _terminal_page, terminal_id, typed=typed)
    flash(t("设置已保存；终端下次同步时生效", "Settings saved: the terminal takes them at its next sync"), "ok")
    return _to_terminal(terminal_id, "#settings")


def _submitted_menu(form):
    """(menu, rows as typed) of the menu editor: rows left blank are skipped, a row ticked 删除 is
    dropped, prices are yuan. SettingsError for a half-filled row, a price that is not yuan, a dish
    id twice."""
    ids, names, prices = form.getlist("dish_id"), form.getlist("dish_name"), form.getlist("dish_price")
    removed = set(form.getlist("remove"))
    if not len(ids) == len(names) == len(prices) or len(ids) > MAX_MENU_FORM_ROWS:
        raise terminal_settings.SettingsError("菜单表单不完整，请刷新页面后重试", "the menu form is incomplete: reload the page")
    rows = [{"dish_id": dish_id.strip()[:40], "name": name.strip()[:40], "price": price.strip()[:40]}
            for dish_id, name, price in zip(ids, names, prices)]
    menu = {}
    for number, row in enumerate(rows, 1):
        if not (row["dish_id"] or row["name"] or row["price"]) or row["dish_id"] in removed:
            continue
        if not (row["dish_id"] and row["name"] and row["price"]):
            raise terminal_settings.SettingsError("第 %d 行不完整：编号、名称、价格都要填" % number,
                                                  "row %d is incomplete: it needs an id, a name and a price" % number)
        price_fen = numbers.parse_yuan(row["price"], maximum_fen=numbers.MAX_AMOUNT_FEN)
        if price_fen is None:
            raise terminal_settings.SettingsError(
                "第 %d 行的价格 %s 无效：应为元，最多两位小数，如 12.50" % (number, row["price"]),
                "the price %s of row %d is not valid: yuan with at most two decimals, like 12.50" % (row["price"], number))
        if row["dish_id"] in menu:
            raise terminal_settings.SettingsError("菜品编号 %s 重复" % row["dish_id"], "dish id %s twice" % row["dish_id"])
        menu[row["dish_id"]] = [row["name"], price_fen]
    return terminal_settings.check_menu(menu), rows


@admin_pages.post("/terminals/<id:terminal_id>/menu")
@admin_required
def save_menu(terminal_id):
    """A POS's dish menu; with `for_merchant` ticked, the same menu for every active terminal of its
    merchant, in one transaction."""
    conn = dbmod.get_db()
    terminal = _terminal_or_404(conn, terminal_id)
    rows = None
    try:
        menu, rows = _submitted_menu(request.form)
        with dbmod.transaction(conn):
            if request.form.get("for_merchant") == "yes":
                changed = terminal_settings.set_menu_for_merchant(conn, terminal["merchant_id"], menu,
                                                                  g.staff["username"])
            else:
                terminal_settings.set_settings(conn, terminal_id, {terminal_settings.DISHES: menu},
                                               g.staff["username"])
                changed = [terminal_id]
            _log(conn, "terminal_menu", terminal_id=terminal_id, terminals=changed, dishes=menu)
    except registry.HallError as error:
        return _refused(error, _terminal_page, terminal_id, menu_rows=rows)
    flash(t("菜单已保存（%d 台终端），下次同步时生效" % len(changed),
            "Menu saved (%d terminals): they take it at their next sync" % len(changed)), "ok")
    return _to_terminal(terminal_id, "#menu")


@admin_pages.post("/terminals/<id:terminal_id>/rotate-key")
@admin_required
def rotate_key(terminal_id):
    conn = dbmod.get_db()
    _terminal_or_404(conn, terminal_id)
    try:
        with dbmod.transaction(conn):
            version = registry.rotate_terminal_key(conn, terminal_id, dbmod.now_ms())
            _log(conn, "terminal_rotate_key", terminal_id=terminal_id, key_version=version)
    except registry.HallError as error:
        return _refused(error, _terminal_page, terminal_id)
    flash(t("终端 %d 将在下次同步时换用第 %d 版密钥，之后旧密钥失效" % (terminal_id, version),
            "Terminal %d takes key version %d at its next sync; the old key stops working after that"
            % (terminal_id, version)), "ok")
    return _to_terminal(terminal_id, "#key")


@admin_pages.get("/terminals/<id:terminal_id>/revoke")
@admin_required
def revoke_confirm(terminal_id):
    return render_template("admin/terminal_revoke.html", terminal=_terminal_or_404(dbmod.get_db(), terminal_id))


@admin_pages.post("/terminals/<id:terminal_id>/revoke")
@admin_required
def revoke(terminal_id):
    """停用: only from the confirm page (its `confirm` field); the terminal's syncs are refused from
    then on and the deny list tells every other terminal."""
    if request.form.get("confirm") != "yes":
        return redirect(url_for("admin_pages.revoke_confirm", terminal_id=terminal_id))
    conn = dbmod.get_db()
    _terminal_or_404(conn, terminal_id)
    try:
        with dbmod.transaction(conn):
            registry.revoke_terminal(conn, terminal_id)
            _log(conn, "terminal_revoke", terminal_id=terminal_id)
    except registry.HallError as error:
        return _refused(error, _terminal_page, terminal_id)
    flash(t("终端 %d 已停用" % terminal_id, "Terminal %d revoked" % terminal_id), "ok")
    return _to_terminal(terminal_id)


# --- releases and rollouts -----------------------------------------------------------------------

def _rollouts(conn):
    """{release id: [{id, terminal_id, merchant_id, created_ms}]}, oldest first."""
    found = {}
    for row in conn.execute("SELECT id, release_id, terminal_id, merchant_id, created_ms FROM firmware_rollouts "
                            "ORDER BY id"):
        found.setdefault(row[1], []).append({"id": row[0], "terminal_id": row[2], "merchant_id": row[3],
                                             "created_ms": row[4]})
    return found


def _running(rows):
    """[(firmware, [terminal rows])] of the active terminals, most common first: who runs what."""
    groups = {}
    for row in rows:
        if row["status"] == "active":
            groups.setdefault(row["firmware"] or "", []).append(row)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


def _releases_page(status=200):
    conn = dbmod.get_db()
    rows = sorted(_fleet_by_id(conn).values(), key=lambda row: row["terminal_id"])
    return render_template("admin/releases.html", releases=releases.list_releases(conn), rollouts=_rollouts(conn),
                           release_keys=releases.release_keys(conn), running=_running(rows),
                           merchants={row["id"]: row for row in _merchant_rows(conn)}), status


@admin_pages.get("/releases")
@admin_required
def releases_page():
    return _releases_page()


@admin_pages.post("/releases")
@admin_required
def upload_release():
    """A bundle signed offline (tools/release.py build), checked as a terminal would check it before
    it is kept (releases.add_release)."""
    upload = request.files.get("bundle")
    if upload is None or not upload.filename:
        return _refused(t("请选择固件包文件", "Choose a bundle file"), _releases_page)
    file_name = os.path.basename(upload.filename)[:80]
    data_dir = current_app.config["DATA_DIR"]
    directory = os.path.join(data_dir, releases.RELEASES_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    descriptor, path = tempfile.mkstemp(prefix="upload-", suffix=".zip", dir=directory)
    conn = dbmod.get_db()
    try:
        with os.fdopen(descriptor, "wb") as handle:
            shutil.copyfileobj(upload.stream, handle)
        if not zipfile.is_zipfile(path):
            return _refused(t("%s 不是固件包" % file_name, "%s is not a firmware bundle" % file_name), _releases_page)
        release_id = releases.add_release(conn, data_dir, path)
    except registry.HallError as error:
        return _refused(t("%s：%s" % (file_name, error.zh), "%s: %s" % (file_name, error.en)), _releases_page)
    finally:
        os.unlink(path)
    row = next(row for row in releases.list_releases(conn) if row["id"] == release_id)
    with dbmod.transaction(conn):
        _log(conn, "release_add", release_id=release_id, kind=row["kind"], version=row["version"],
             sha256=row["sha256"], file_name=file_name)
    flash(t("已登记固件 %s %s（编号 %d）" % (row["kind"], row["version"], release_id),
            "Release %s %s registered (id %d)" % (row["kind"], row["version"], release_id)), "ok")
    return redirect(url_for("admin_pages.releases_page") + "#release-%d" % release_id)


@admin_pages.post("/releases/<id:release_id>/rollout")
@admin_required
def rollout(release_id):
    """Offer a release: to one terminal first, then a merchant's terminals, then all of its kind."""
    scope = request.form.get("scope")
    terminal_id = merchant_id = None
    if scope == "terminal":
        terminal_id = numbers.parse_id(request.form.get("terminal_id"))
        if terminal_id is None:
            return _refused(t("请填写终端编号", "Enter the terminal's id"), _releases_page)
    elif scope == "merchant":
        merchant_id = numbers.parse_id(request.form.get("merchant_id"))
        if merchant_id is None:
            return _refused(t("请选择商户", "Choose the merchant"), _releases_page)
    elif scope != "all":
        return _refused(t("请选择推送范围", "Choose whom to offer it to"), _releases_page)
    conn = dbmod.get_db()
    try:
        rollout_id = releases.add_rollout(conn, release_id, terminal_id, merchant_id)
    except registry.HallError as error:
        return _refused(error, _releases_page)
    with dbmod.transaction(conn):
        _log(conn, "rollout", release_id=release_id, rollout_id=rollout_id, terminal_id=terminal_id,
             merchant_id=merchant_id)
    whom_zh = "终端 %d" % terminal_id if terminal_id else "商户 %d 的终端" % merchant_id if merchant_id else "全部同类终端"
    whom_en = "terminal %d" % terminal_id if terminal_id else "merchant %d's terminals" % merchant_id \
        if merchant_id else "every terminal of its kind"
    flash(t("已推送：%s 在下次同步时升级" % whom_zh, "Offered: %s update at their next sync" % whom_en), "ok")
    return redirect(url_for("admin_pages.releases_page") + "#release-%d" % release_id)
