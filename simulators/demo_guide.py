"""What `ykt demo` ends with: the next steps on the demo's own data, so a newcomer goes from
`make demo` to the portal, hall, finance and admin pages in a minute.

    the server command with the demo's data directory, and the pages' addresses
    a few demo cardholders with their staff/student numbers and PINs (checked against the data)
    demo staff users for the hall, finance and admin pages, with their passwords (the admin's page
    is the fleet: the terminals the demo ran, with the firmware its rollout left on each)
    the command that closes today (`ykt finance close --date <today> --before-day-end`)

The staff users are created here, in the demo's database only (a fresh directory or an empty
database the demo refuses to reuse), with passwords printed for anyone to read: demo data, never
a real site's. A cardholder is listed only while its PIN is still the initial one and its card works,
checked without counting anything towards the PIN lockout (pin_rules.prepare_pin writes nothing).
On PostgreSQL the commands read the database from $YKT_DATABASE_URL; the URL itself is not printed
(it may hold a password).
"""
import os
import shlex
import shutil
import sys

from sync_server import business_day, db as dbmod, pin_rules, pg_store
from sync_server.cli import DEFAULT_PORT
from sync_server.web import auth

# username, display name, roles, password - the demo's own, printed at the end
STAFF = (("demo-hall", "大厅演示员", ("hall",), "demo-hall-pass"),
         ("demo-supervisor", "大厅主管演示员", ("hall", "supervisor"), "demo-supervisor-pass"),
         ("demo-finance", "财务演示员", ("finance",), "demo-finance-pass"),
         ("demo-admin", "管理员演示员", ("admin",), "demo-admin-pass"))
PAGES = (("portal/", "持卡人网上服务大厅", "cardholders' web portal"),
         ("hall/", "服务大厅（工作人员）", "service hall (staff)"),
         ("finance/", "财务", "finance"),
         ("admin/fleet", "终端、固件与升级（管理员、技术员）", "terminals, firmware and rollouts (admins, technicians)"),
         ("app/", "手机应用", "phone app"))
_ROLE_NAMES = {"hall": ("服务大厅", "service hall"), "supervisor": ("主管审批", "supervisor approvals"),
               "finance": ("财务", "finance"), "admin": ("终端管理", "terminal administration")}
_CANDIDATES = 20          # people looked at per kind; each check costs a scrypt


def _say(lang, zh, en):
    return en if lang == "en" else zh


def add_staff(conn):
    """The demo's staff users (roles this server knows); returns [(username, password, roles)]."""
    added = []
    for username, display_name, roles, password in STAFF:
        roles = [role for role in roles if role in auth.ROLES]
        if conn.execute("SELECT 1 FROM web_staff_users WHERE username = ?", (username,)).fetchone() is None:
            auth.add_staff_user(conn, username, display_name, roles, password)
        added.append((username, password, roles))
    return added


def _usable_with_initial_pin(conn, account_id, id_number, staff_number, now_ms):
    """The initial PIN when it still opens this account and the account and its card work, else None."""
    row = conn.execute("SELECT a.blocked, a.in_debt, a.pin_failures, a.pin_locked_until_ms, "
                       "(SELECT status FROM cards c WHERE c.account_id = a.id ORDER BY c.issued_ms DESC, "
                       "c.generation DESC LIMIT 1) FROM accounts a WHERE a.id = ?", (account_id,)).fetchone()
    if row is None or row[0] or row[1] or row[2] or row[3] > now_ms or row[4] != "active":
        return None
    pin = pin_rules.initial_pin(id_number, staff_number)
    attempt = pin_rules.prepare_pin(conn, account_id, pin, now_ms)
    return pin if isinstance(attempt, pin_rules.PinAttempt) and attempt.matched else None


def demo_people(conn, now_ms=None):
    """Two cardholders to sign in as: a student numbered by the demo (no ID number) and a dorm resident
    with an ID number. [{name, staff_number, pin, id_number}]"""
    now_ms = dbmod.now_ms() if now_ms is None else now_ms
    chosen = []
    for with_id in (False, True):
        condition = "p.id_number IS NOT NULL" if with_id else "p.id_number IS NULL"
        rows = conn.execute("SELECT p.name, p.staff_number, p.id_number, a.id FROM persons p JOIN accounts a "
                            "ON a.person_id = p.id WHERE p.staff_number IS NOT NULL AND " + condition +
                            " ORDER BY p.id LIMIT ?", (_CANDIDATES,)).fetchall()
        for name, staff_number, id_number, account_id in rows:
            pin = _usable_with_initial_pin(conn, account_id, id_number, staff_number, now_ms)
            if pin is not None:
                chosen.append({"name": name, "staff_number": staff_number, "pin": pin, "id_number": id_number})
                break
    return chosen


def prepare(location, now_ms=None):
    """Staff users added and cardholders picked, on the demo's database: what render() shows."""
    conn = dbmod.init_db(location)
    try:
        return {"staff": add_staff(conn), "people": demo_people(conn, now_ms)}
    finally:
        conn.close()


def ykt_command():
    """How this shell runs `ykt`: plain `ykt` when that is the one on PATH, else the script beside this
    Python (`.venv/bin/ykt` after `make demo`, which does not put the virtual environment on PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), "ykt")
    on_path = shutil.which("ykt")
    if on_path and os.path.realpath(on_path) == os.path.realpath(beside) or not os.path.exists(beside):
        return "ykt"
    relative = os.path.relpath(beside)
    return shlex.quote(beside if relative.startswith("..") else relative)


def commands(server_dir, now_ms=None):
    """The exact commands: {server, close, today}."""
    today = business_day.day_text(business_day.day_of_ms(dbmod.now_ms() if now_ms is None else now_ms))
    where, ykt = shlex.quote(server_dir), ykt_command()
    return {"server": "%s server --data-dir %s" % (ykt, where), "today": today,
            "close": "%s finance close --data-dir %s --date %s --before-day-end" % (ykt, where, today)}


def render(server_dir, database, prepared, lang, now_ms=None):
    """The closing block, Chinese or English."""
    said = commands(server_dir, now_ms)
    base = "http://127.0.0.1:%d" % DEFAULT_PORT
    lines = ["", "== %s ==" % _say(lang, "接下来：在演示数据上打开网页", "Next: the pages on the demo's data")]
    if database is not None:
        lines.append(_say(lang, "先设置数据库（演示用的 %s）：export YKT_DATABASE_URL='...'" % pg_store.describe(database),
                          "first set the database (the demo's %s): export YKT_DATABASE_URL='...'"
                          % pg_store.describe(database)))
    lines += [_say(lang, "1. 启动服务器：", "1. start the server:"), "     " + said["server"],
              _say(lang, "   然后在浏览器中打开：", "   then open in a browser:")]
    for path, name_zh, name_en in PAGES:
        lines.append("     %-34s %s" % ("%s/%s" % (base, path), _say(lang, name_zh, name_en)))
    lines.append(_say(lang, "2. 持卡人登录 %s/portal/ 或 /app/（学工号 / 交易密码，仍是初始密码）：" % base,
                      "2. cardholders sign in at %s/portal/ or /app/ (staff/student number / card PIN, still the "
                      "initial one):" % base))
    for person in prepared["people"]:
        source = _say(lang, "身份证号后六位", "last six of the ID number") if person["id_number"] else \
            _say(lang, "学工号后六位", "last six of the number")
        lines.append("     %-24s %s" % ("%s / %s" % (person["staff_number"], person["pin"]),
                                       _say(lang, "（%s，%s）", "(%s, %s)") % (person["name"], source)))
    lines.append(_say(lang, "3. 工作人员登录（用户名 / 密码）：", "3. staff sign in with (username / password):"))
    for username, password, roles in prepared["staff"]:
        duties = (", " if lang == "en" else "、").join(_say(lang, *_ROLE_NAMES.get(r, (r, r))) for r in roles)
        page = "finance/" if "finance" in roles else "admin/fleet" if "admin" in roles else "hall/"
        lines.append("     %-40s %-34s %s" % ("%s / %s" % (username, password), "%s/%s" % (base, page),
                                               _say(lang, "（%s）", "(%s)") % duties))
    lines += [_say(lang, "4. 今日日结（%s，营业日未结束也结算）：" % said["today"],
                   "4. close today (%s, before the day ends):" % said["today"]),
              "     " + said["close"], ""]
    return "\n".join(lines)
