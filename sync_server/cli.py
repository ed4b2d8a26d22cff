"""`ykt server ...` and `ykt hall ...`: run the sync server (sync_server/serving.py), and service-hall commands.

    ykt server [--data-dir D] [--host 127.0.0.1] [--port 8080] [--workers N] [--threads T]
               [--idle-timeout-s S] [--request-timeout-s S] [--max-connections C]
    ykt server init [--data-dir D]
    ykt hall merchant-add | person-add | card-issue | recharge | report-loss | transactions |
             terminal-register | terminal-revoke | staff-add | staff-password | staff-disable |
             recharge-reverse | cash-close | cash-limits  [--data-dir D] [--lang en]
    (and the cardholder-service commands of sync_server/services/hall_cli.py: reissue, unfreeze
    alias cancel-loss, ...)

Output is Chinese unless `--lang en` (or YKT_LANG=en). Keys are never printed: terminal provisioning
goes to a file created with mode 0600.
"""
import getpass
import json
import os
import sys

from firmware.core import card_layout, wallets as wallet_rules
from sync_server import (backups, db as dbmod, fleet_status, keys, numbers, pg_store, private_dir, registry,
                         releases, serving, services, terminal_settings)
from sync_server.cli_common import (account_of, add_person_options, add_station_options, carry_card_job,
                                    check_output_file, data_dir_checked, data_dir_of, lang_of, log_staff_action, open_database,
                                    open_station, operator_of, print_table, require_known, say, uid_of,
                                    write_at_station)
from sync_server.mistakes import MalformedInput
from sync_server.services import card_jobs, cards, cash_desk, hall_cli, history

DEFAULT_PORT = 8080


def init_data_dir(data_dir, database_url=None):
    """Create the data directory (0700, an existing one tightened), the database (0600; or migrate the
    PostgreSQL database of `database_url`) and the master key if missing; returns what was created."""
    private_dir.secure_dir(data_dir)
    created = []
    key_path = keys.master_key_path(data_dir)
    if keys.ensure_master_key(key_path):
        created.append(key_path)
    if database_url is not None:
        dbmod.init_db(database_url).close()
        return created
    path = dbmod.db_path(data_dir)
    if private_dir.create_private_file(path):
        created.append(path)
    dbmod.init_db(path).close()
    return created


# --- server ---------------------------------------------------------------------------------------

def cmd_server_init(args):
    data_dir = data_dir_of(args)
    created = init_data_dir(data_dir, pg_store.database_setting()[1])
    say(args, "数据目录已就绪：%s（新建 %d 个文件）" % (data_dir, len(created)),
        "data directory ready: %s (%d files created)" % (data_dir, len(created)))


def cmd_server_backup(args):
    backups.check_keep(args.keep)
    data_dir = data_dir_checked(args)
    manifest = backups.take_backup(dbmod.store_location(data_dir), os.path.abspath(args.to), args.keep)
    say(args, "已备份：%s（%.1f MB，SHA-256 %s…）%s" % (
        os.path.join(args.to, manifest["file"]), manifest["bytes"] / 1e6, manifest["sha256"][:16],
        "，移除旧备份 %d 个" % len(manifest["removed"]) if manifest["removed"] else ""),
        "backed up: %s (%.1f MB, SHA-256 %s...)%s" % (
        os.path.join(args.to, manifest["file"]), manifest["bytes"] / 1e6, manifest["sha256"][:16],
        "; %d old backups removed" % len(manifest["removed"]) if manifest["removed"] else ""))


def cmd_server_restore(args):
    data_dir = data_dir_checked(args)
    manifest, replaced = backups.restore_backup(os.path.abspath(args.file), data_dir, args.force)
    taken = backups.time_text(manifest["taken_ms"])
    say(args, "已恢复 %s（备份于 %s）到 %s%s" % (manifest["file"], taken, data_dir,
                                         "；原数据库保留为 %s" % replaced if replaced else ""),
        "restored %s (taken %s) into %s%s" % (manifest["file"], taken, data_dir,
                                            "; the replaced database is kept as %s" % replaced if replaced else ""))


def cmd_server(args):
    command = getattr(args, "server_command", None)
    if command is not None:
        return {"init": cmd_server_init, "backup": cmd_server_backup, "restore": cmd_server_restore}[command](args)
    bounds = serving.option_bounds_error(args.workers, args.threads, args.idle_timeout_s, args.request_timeout_s,
                                         args.max_connections)
    if bounds:
        raise registry.HallError(*bounds)
    try:
        store, database_url = pg_store.database_setting(args.database)
    except pg_store.StoreSettingError as error:
        raise registry.HallError(*str(error).split(" / ", 1))
    data_dir = data_dir_of(args)
    init_data_dir(data_dir, database_url)
    os.environ["YKT_DATA_DIR"] = data_dir
    if database_url is not None:
        os.environ[pg_store.DATABASE_URL_ENV] = database_url
        pg_store.pool_max_size = max(pg_store.POOL_MAX_SIZE, args.threads)
    from sync_server.app import create_app
    app = create_app()          # loaded once, before the workers fork (a bad key or database fails here)
    try:
        listener = serving.bind(args.host, args.port)
    except OSError as error:
        raise registry.HallError("无法监听 %s:%d：%s" % (args.host, args.port, error.strerror or error),
                                 "cannot listen on %s:%d: %s" % (args.host, args.port, error.strerror or error))
    options = serving.server_options(args.threads, args.idle_timeout_s, args.request_timeout_s, args.max_connections)
    start_close = stop_close = None
    if args.backup_dir:                # taken by the scheduler process, never by a worker
        if database_url is not None:
            backups.refuse_postgresql(database_url)
        backups.check_interval_s(args.backup_interval_s)
        backups.check_keep(args.backup_keep)
        os.environ.update({scheduler_env: str(value) for scheduler_env, value in (
            ("YKT_BACKUP_DIR", os.path.abspath(args.backup_dir)), ("YKT_BACKUP_INTERVAL_S", args.backup_interval_s),
            ("YKT_BACKUP_KEEP", args.backup_keep))})
    if os.environ.get("YKT_FINANCE_CLOSE", "on") != "off" or args.backup_dir:
        from sync_server.finance import scheduler     # the nightly close (sync_server/finance), backups
        start_close, stop_close = scheduler.hooks(dbmod.store_location(data_dir, database_url))
    where = data_dir if database_url is None else "%s，%s" % (data_dir, pg_store.describe(database_url))
    say(args, "同步服务器启动：http://%s:%d（数据目录 %s，%d 个进程 × %d 线程）"
        % (args.host, args.port, where, args.workers, args.threads),
        "sync server on http://%s:%d (data directory %s, %d processes x %d threads)"
        % (args.host, args.port, where.replace("，", ", "), args.workers, args.threads))
    sys.stdout.flush()
    return serving.serve(app, listener, args.workers, options, start_close, stop_close)


# --- fleet ----------------------------------------------------------------------------------------

def cmd_fleet_status(args):
    if not 1 <= args.stale_min <= 7 * 24 * 60:
        raise registry.HallError("--stale-min 须在 1 到 10080 之间", "--stale-min must be 1 to 10080")
    conn = open_database(args)
    rows = fleet_status.fleet(conn, stale_after_ms=args.stale_min * 60000)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    en = lang_of(args) == "en"
    table = []
    for row in rows:
        problems = "、".join(fleet_status.problem_text(key, lang_of(args)) for key in row["problems"])
        offset = row["clock_offset_ms"]
        table.append([row["terminal_id"], row["kind"] if en else row["kind_zh"],
                      row["where_en"] if en else row["where"], row["firmware"] or "—",
                      fleet_status.since_text(row["since_sync_s"], lang_of(args)),
                      "—" if offset is None else "%+.1f s" % (offset / 1000), row["backlog"], row["reader_errors"],
                      (row["status"] if row["status"] != "active" else "") + problems or ("ok" if en else "正常")])
    print_table(args, [("编号", "id"), ("类型", "kind"), ("位置", "location"), ("固件", "firmware"),
                       ("上次同步", "last sync"), ("时钟偏差", "clock"), ("积压", "backlog"),
                       ("读卡器故障", "reader errors"), ("状态", "state")], table, right=(0, 6, 7))
    failing = sum(1 for row in rows if row["problems"])
    say(args, "共 %d 台终端，%d 台需要处理" % (len(rows), failing), "%d terminals, %d need attention" % (len(rows), failing))


def cmd_fleet_release_key_add(args):
    conn = open_database(args)
    key = releases.add_release_key(conn, args.key)
    say(args, "已登记发布公钥 %s…；此后登记的终端配置文件中都会带上它" % key[:16],
        "release key %s... registered; terminals provisioned from now on carry it" % key[:16])


def cmd_fleet_release_add(args):
    conn = open_database(args)
    release_id = releases.add_release(conn, data_dir_of(args), os.path.abspath(args.file))
    say(args, "已登记固件版本，编号 %d" % release_id, "release registered: id %d" % release_id)


def cmd_fleet_rollout(args):
    conn = open_database(args)
    rollout_id = releases.add_rollout(conn, args.release, args.terminal, args.merchant)
    scope_zh = "终端 %d" % args.terminal if args.terminal else "商户 %d 的终端" % args.merchant if args.merchant \
        else "全部同类终端"
    scope_en = "terminal %d" % args.terminal if args.terminal else "merchant %d's terminals" % args.merchant \
        if args.merchant else "every terminal of its kind"
    say(args, "已推送（第 %d 次）：%s 在下次同步时升级" % (rollout_id, scope_zh),
        "rollout %d: %s update at their next sync" % (rollout_id, scope_en))


def cmd_fleet_releases(args):
    rows = releases.list_releases(open_database(args))
    if args.json:
        print(json.dumps(rows))
        return
    print_table(args, [("编号", "id"), ("类型", "kind"), ("版本", "version"), ("大小", "bytes"), ("推送", "rollouts")],
                [[row["id"], row["kind"], row["version"], row["bytes"], row["rollouts"]] for row in rows],
                right=(0, 3, 4))


def cmd_fleet_rotate_key(args):
    conn = open_database(args)
    require_known(conn, "SELECT 1 FROM terminals WHERE id = ?", (args.terminal,), "终端 %d 不存在" % args.terminal,
                  "terminal %d does not exist" % args.terminal)
    version = registry.rotate_terminal_key(conn, args.terminal)
    say(args, "终端 %d 将在下次同步时换用第 %d 版密钥，之后旧密钥失效" % (args.terminal, version),
        "terminal %d takes key version %d at its next sync; the old key stops working after that"
        % (args.terminal, version))


def _setting_assignment(text):
    """KEY=VALUE of `--set` as (key, value); values as terminal_settings reads them (fen, ms, counts
    as whole numbers, the menu as JSON)."""
    key, equals, value = text.partition("=")
    if not equals:
        raise MalformedInput("--set 应为 键=值，如 offline_cap_count=3：%s" % text[:40],
                             "--set takes KEY=VALUE, like offline_cap_count=3: %s" % text[:40])
    return key.strip(), terminal_settings.value_from_text(key.strip(), value.strip())


def cmd_fleet_settings(args):
    """Show a terminal's settings (its own and the site's), or change them: every --set and --clear
    is checked first, then all are stored together (and every terminal fetches config at its next
    sync)."""
    conn = open_database(args)
    require_known(conn, "SELECT 1 FROM terminals WHERE id = ?", (args.terminal,), "终端 %d 不存在" % args.terminal,
                  "terminal %d does not exist" % args.terminal)
    changes = dict(_setting_assignment(text) for text in args.set or ())
    if changes or args.clear:
        terminal_settings.set_settings(conn, args.terminal, changes, operator_of(args), clear=args.clear or ())
    own = terminal_settings.settings_of(conn, args.terminal)
    site = terminal_settings.site_settings(conn)
    if args.json:
        effective = dict(site, **{terminal_settings.DISHES: {}})
        effective.update(own)
        print(json.dumps({"terminal_id": args.terminal, "settings": own, "site": site, "effective": effective},
                         ensure_ascii=False))
        return
    en = lang_of(args) == "en"
    rows = [[setting.key, setting.en if en else setting.zh, own.get(setting.key, "—"), site[setting.key]]
            for setting in terminal_settings.SETTINGS]
    menu = own.get(terminal_settings.DISHES) or {}
    rows.append([terminal_settings.DISHES, "menu" if en else "菜单",
                 ", ".join("%s %s %s" % (dish_id, name, cash_desk.yuan(price_fen))
                           for dish_id, (name, price_fen) in menu.items()) or "—", "—"])
    print_table(args, [("键", "key"), ("设置", "setting"), ("本终端", "this terminal"), ("全站", "site")], rows,
                right=(2, 3))
    if changes or args.clear:
        say(args, "已保存；各终端下次同步时取得新配置", "saved; terminals fetch the new configuration at their next sync")


# --- hall -----------------------------------------------------------------------------------------

def cmd_merchant_add(args):
    conn = open_database(args)
    merchant_id = registry.add_merchant(conn, args.name_zh, args.name_en or args.name_zh, args.category)
    say(args, "商户已添加：编号 %d" % merchant_id, "merchant added: id %d" % merchant_id)


def cmd_person_add(args):
    conn = open_database(args)
    person_id, account_id = registry.add_person(conn, args.name, args.category, id_number=args.id_number,
                                                staff_number=args.staff_number)
    say(args, "已建档：人员 %d，账户 %d（初始密码为证件号后六位）" % (person_id, account_id),
        "person %d created with account %d (initial PIN: last six of the ID number)" % (person_id, account_id))


def _issue_now(args, conn, account_id):
    station = open_station(args)
    try:
        uid = station.uid if station is not None else uid_of(args)
        issued = cards.issue_card(conn, account_id, uid, operator=args.operator or getpass.getuser())
        identity, name = issued["identity"], issued["name"]
        if station is not None:
            write_at_station(args, conn, station, identity, name)
    finally:
        if station is not None:
            station.close()
    return identity, name, uid, station is not None, None


def cmd_card_issue(args):
    """The account's first card. An account that has a card gets a reissue (`ykt hall reissue`), which
    books the fee and its record; the checks (UID not in use, no card yet) are services.cards'. When the
    hall page asked for the account's card (a card job, first or reissue), that job is carried through
    here, its fee booked once."""
    conn = open_database(args)
    account_id = account_of(conn, args)
    job = card_jobs.open_job(conn, account_id)
    if job is not None:
        job, identity, name, uid, written = carry_card_job(args, conn, job)
        job_id = job["id"]
    else:
        identity, name, uid, written, job_id = _issue_now(args, conn, account_id)
    if args.json:
        print(json.dumps({"card_number": identity.card_number, "account_id": identity.account_id,
                          "generation": identity.generation, "holder_category": identity.holder_category,
                          "expiry_yyyymmdd": identity.expiry_yyyymmdd, "name": name, "uid": uid.hex(),
                          "written": written, "job_id": job_id}, ensure_ascii=False))
        return
    say(args, "发卡：卡号 %d 第 %d 代，账户 %d，持卡人 %s，有效期至 %d，UID %s；%s"
        % (identity.card_number, identity.generation, identity.account_id, name, identity.expiry_yyyymmdd, uid.hex(),
           "卡片已写好" if written else "请在发卡机上写卡"),
        "card: number %d generation %d, account %d, holder %s, expires %d, UID %s; %s"
        % (identity.card_number, identity.generation, identity.account_id, name, identity.expiry_yyyymmdd, uid.hex(),
           "card written" if written else "write it at the issuing station"))


def _approver_password(username):
    """The approver's / supervisor's password: a prompt on a terminal, else the first line of stdin
    (never the command line, which every user of the machine can read)."""
    if sys.stdin.isatty():
        return getpass.getpass("%s 的密码 / password of %s: " % (username, username))
    return sys.stdin.readline().rstrip("\n")


def _signed_in(conn, username):
    """The web staff user `username` after their password: the second person of a cash-desk action."""
    from sync_server.web import auth     # Flask: imported only by the commands that need it
    try:
        staff_id = auth.check_staff_password(conn, username, _approver_password(username), dbmod.now_ms())
    except auth.AuthError as error:
        raise registry.HallError("%s：%s" % (username, error.zh), "%s: %s" % (username, error.en))
    return auth.staff_user(conn, staff_id)


def _yuan_argument(text, what_zh, what_en):
    fen = numbers.parse_yuan(text or "", maximum_fen=10 ** 9)
    if fen is None:
        raise MalformedInput("%s应为元，最多两位小数，如 12.50" % what_zh,
                             "%s is in yuan with at most two decimals, like 12.50" % what_en)
    return fen


def cmd_recharge(args):
    """Cash at the desk, by the person's staff/student number and an amount in yuan: the same rules as
    the hall page (services.cash_desk): above the cap a second staff member (`--approver`, with their
    password) approves, above the maximum it is refused. The receipt number is the action log's."""
    conn = open_database(args)
    amount_fen = _yuan_argument(args.amount, "金额", "the amount")
    account_id = cash_desk.account_of_number(conn, args.number)
    clerk = args.operator or getpass.getuser()
    needs_approval = cash_desk.check_amount_allowed(conn, amount_fen)
    if needs_approval and not args.approver:
        cap = cash_desk.yuan(cash_desk.limits(conn)["cap_fen"])
        raise registry.HallError("金额 %s 元超过单笔限额 %s 元：需另一位工作人员审批（--approver 用户名，密码从标准输入读取）"
                                 % (cash_desk.yuan(amount_fen), cap),
                                 "%s yuan is above the per-transaction cap of %s yuan: a second staff member "
                                 "approves it (--approver USER, password on stdin)" % (cash_desk.yuan(amount_fen), cap))
    approver = _signed_in(conn, args.approver) if needs_approval else None
    done = cash_desk.recharge(conn, account_id, amount_fen, clerk, wallet=args.wallet, approver=approver)
    holder = services.person_row(conn, account_id)
    after = registry.balances_of(conn, account_id)[args.wallet]
    order = done["order"]
    say(args, "充值成功：%s（%s）%s %s 元，余额 %s 元（单号 %s，回执 %d%s）"
        % (holder["name"], holder["staff_number"], cash_desk.wallet_name(args.wallet), cash_desk.yuan(amount_fen),
           cash_desk.yuan(after), order["order_id"], done["receipt_id"], "，审批人 %s" % args.approver if approver else ""),
        "recharged %s (%s): %s yuan into the %s, balance %s yuan (order %s, receipt %d%s)"
        % (holder["name"], holder["staff_number"], cash_desk.yuan(amount_fen), cash_desk.wallet_name(args.wallet, "en"),
           cash_desk.yuan(after), order["order_id"], done["receipt_id"],
           ", approved by %s" % args.approver if approver else ""))


def cmd_recharge_reverse(args):
    """冲正: a supervisor (their password) takes back a mistaken cash recharge with a reason."""
    conn = open_database(args)
    supervisor = _signed_in(conn, args.supervisor)
    done = cash_desk.reverse(conn, args.order, supervisor, args.reason)
    say(args, "已冲正：单号 %s，%s退回 %s 元，余额 %s 元（原经办人 %s，主管 %s，回执 %d）"
        % (done["order_id"], cash_desk.wallet_name(done["wallet"]), cash_desk.yuan(done["amount_fen"]),
           cash_desk.yuan(done["balance_fen_after"]), done["clerk"], done["supervisor"], done["staff_action_id"]),
        "reversed order %s: %s yuan back out of the %s, balance %s yuan (booked by %s, reversed by %s, receipt %d)"
        % (done["order_id"], cash_desk.yuan(done["amount_fen"]), cash_desk.wallet_name(done["wallet"], "en"),
           cash_desk.yuan(done["balance_fen_after"]), done["clerk"], done["supervisor"], done["staff_action_id"]))


def cmd_cash_close(args):
    """结账: what the clerk took in since their last close; with --counted the shift is closed."""
    conn = open_database(args)
    clerk = args.operator or getpass.getuser()
    en = lang_of(args) == "en"
    if args.counted is None:
        shift = cash_desk.open_shift(conn, clerk)
        lines, expected_fen = shift["lines"], shift["expected_fen"]
    else:
        close = cash_desk.close_shift(conn, clerk, _yuan_argument(args.counted, "清点现金", "the cash counted"),
                                      note=args.note)
        lines, expected_fen = close["lines"], close["expected_fen"]
    if args.json:
        print(json.dumps(close if args.counted is not None else shift, ensure_ascii=False, sort_keys=True))
        return
    for line in lines:
        name = cash_desk.KIND_NAMES[line["kind"]][1 if en else 0]
        wallet = "" if line["kind"] == cash_desk.KIND_FEE else cash_desk.wallet_name(line["wallet"], lang_of(args))
        print("%s %s: %d, %s" % (name, wallet, line["count"], cash_desk.yuan(line["fen"])))
    say(args, "应收现金 %s 元" % cash_desk.yuan(expected_fen), "cash expected: %s yuan" % cash_desk.yuan(expected_fen))
    if args.counted is not None:
        say(args, "已结账：结账单 %d，实收 %s 元，%s" % (close["id"], cash_desk.yuan(close["counted_fen"]),
                                              cash_desk.difference_text(close["difference_fen"])),
            "closed: close %d, counted %s yuan, %s" % (close["id"], cash_desk.yuan(close["counted_fen"]),
                                                     cash_desk.difference_text(close["difference_fen"], "en")))


def cmd_cash_limits(args):
    """Show, or with --cap / --maximum set, the cash recharge cap (above it a second person approves)
    and the absolute maximum (above it refused), in yuan."""
    conn = open_database(args)
    if args.cap is not None or args.maximum is not None:
        cap = None if args.cap is None else _yuan_argument(args.cap, "单笔限额", "the cap")
        maximum = None if args.maximum is None else _yuan_argument(args.maximum, "上限", "the maximum")
        cash_desk.set_limits(conn, cap, maximum, operator=args.operator or getpass.getuser())
    bounds = cash_desk.limits(conn)
    say(args, "现金充值：单笔限额 %s 元（以上须另一人审批），上限 %s 元（以上拒绝）"
        % (cash_desk.yuan(bounds["cap_fen"]), cash_desk.yuan(bounds["maximum_fen"])),
        "cash recharge: cap %s yuan (above it a second person approves), maximum %s yuan (above it refused)"
        % (cash_desk.yuan(bounds["cap_fen"]), cash_desk.yuan(bounds["maximum_fen"])))


def cmd_report_loss(args):
    """挂失 by staff: the card number of a found-lost card, or the holder's staff/student number (the
    card in use); logged on the person's action log."""
    conn = open_database(args)
    account_id = account_of(conn, args)
    if args.card is not None:
        version = registry.report_loss(conn, args.card)
        card_number = args.card
    else:
        done = cards.report_loss(conn, account_id, operator=operator_of(args))
        card_number, version = done["card_number"], done["deny_version"]
    log_staff_action(conn, args, "report_loss", account_id, card_number=card_number)
    say(args, "挂失成功：卡号 %d（黑名单版本 %d）" % (card_number, version),
        "card %d reported lost (deny version %d)" % (card_number, version))


def cmd_transactions(args):
    """One page of the statement, newest first: the same query as the portal and the app."""
    conn = open_database(args)
    account_id = account_of(conn, args)
    if args.date_from or args.date_to:
        latest = history.recent(conn, account_id, page_size=1)     # its from_date / to_date are the defaults
        result = history.query(conn, account_id, args.date_from or latest["from_date"],
                               args.date_to or latest["to_date"], args.type, args.page, args.limit)
    else:
        result = history.recent(conn, account_id, args.type, args.page, args.limit)
    en = lang_of(args) == "en"
    print_table(args, (("时间", "time"), ("地点", "place"), ("金额(元)", "amount"), ("余额(元)", "balance")),
                [(row["time"], row["place_en"] if en else row["place_zh"], "%.2f" % (row["amount_fen"] / 100),
                  "%.2f" % (row["balance_fen_after"] / 100)) for row in result["rows"]], right=(2, 3))
    if not result["rows"]:
        say(args, "（无交易）", "(no transactions)")
    elif result["total_pages"] > 1:
        say(args, "第 %d / %d 页，共 %d 条" % (result["page"], result["total_pages"], result["total_rows"]),
            "page %d of %d, %d rows" % (result["page"], result["total_pages"], result["total_rows"]))


def cmd_terminal_register(args):
    conn = open_database(args)
    master_key = keys.load_master_key(keys.master_key_path(data_dir_of(args)))
    require_known(conn, "SELECT 1 FROM merchants WHERE id = ?", (args.merchant,), "商户 %d 不存在" % args.merchant,
                  "merchant %d does not exist" % args.merchant)
    check_output_file(args.out)
    location = terminal_settings.clean_location(args.location)
    terminal_id = registry.register_terminal(conn, args.merchant, location=location)
    document = registry.provisioning_document(conn, master_key, terminal_id, args.server_url,
                                              keys.load_legacy_key(data_dir_of(args)))
    keys.write_private_file(args.out, json.dumps(document, indent=2).encode())
    say(args, "终端已登记：编号 %d；配置文件（含密钥，权限 0600）已写入 %s" % (terminal_id, args.out),
        "terminal %d registered; provisioning file (holds keys, mode 0600) written to %s" % (terminal_id, args.out))


def cmd_terminal_revoke(args):
    conn = open_database(args)
    require_known(conn, "SELECT 1 FROM terminals WHERE id = ?", (args.terminal,), "终端 %d 不存在" % args.terminal,
                  "terminal %d does not exist" % args.terminal)
    registry.revoke_terminal(conn, args.terminal)
    say(args, "终端 %d 已停用" % args.terminal, "terminal %d revoked" % args.terminal)


def _read_password(args):
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass
    password = getpass.getpass("密码 / password: ")
    if password != getpass.getpass("再次输入 / again: "):
        raise registry.HallError("两次输入的密码不一致", "the passwords differ")
    return password


def _known_staff(conn, username):
    require_known(conn, "SELECT 1 FROM web_staff_users WHERE username = ?", (username,),
                  "没有用户名为 %s 的工作人员" % username[:40], "no staff user named %s" % username[:40])


def cmd_staff_password(args):
    """Change or reset a staff user's password (stdin or prompt, as staff-add); every web session of
    that user ends at once."""
    from sync_server.web import auth     # Flask: imported only by the commands that need it
    conn = open_database(args)
    _known_staff(conn, args.username)
    try:
        auth.set_staff_password(conn, args.username, _read_password(args))
    except auth.AuthError as error:
        raise registry.HallError(error.zh, error.en)
    say(args, "密码已更改，%s 的所有网页会话已结束" % args.username,
        "password changed; every web session of %s has ended" % args.username)


def cmd_staff_disable(args):
    """Disable a staff user (or enable again with --enable); every web session of that user ends."""
    from sync_server.web import auth     # Flask: imported only by the commands that need it
    conn = open_database(args)
    _known_staff(conn, args.username)
    try:
        auth.set_staff_disabled(conn, args.username, disabled=not args.enable)
    except auth.AuthError as error:
        raise registry.HallError(error.zh, error.en)
    say(args, "%s 已%s，其所有网页会话已结束" % (args.username, "启用" if args.enable else "停用"),
        "%s %s; every web session of that user has ended" % (args.username, "enabled" if args.enable else "disabled"))


def cmd_staff_add(args):
    """Create a web staff user; the password comes from stdin or a prompt, never from the command line
    (argv is visible to every user of the machine) and is never printed."""
    from sync_server.web import auth     # Flask: imported only by the commands that need it
    conn = open_database(args)
    password = _read_password(args)
    try:
        staff_id = auth.add_staff_user(conn, args.username, args.name or args.username, args.role, password)
    except auth.AuthError as error:
        raise registry.HallError(error.zh, error.en)
    say(args, "工作人员已添加：%s（编号 %d，角色 %s）" % (args.username, staff_id, " ".join(sorted(set(args.role)))),
        "staff user added: %s (id %d, roles %s)" % (args.username, staff_id, " ".join(sorted(set(args.role)))))


def _guard(handler):
    """The command as it is: a mistake it raises is reported by the front door (`ykt`, `python -m
    sync_server`) through sync_server/mistakes.py, with the exit code of its kind."""
    return handler


def register(subparsers):
    common = _common_parser()
    server = subparsers.add_parser("server", parents=[common], help="运行同步服务器 / run the sync server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default %d)" % DEFAULT_PORT)
    server.add_argument("--workers", type=int, default=serving.DEFAULT_WORKERS,
                        help="worker processes (each uses a core for booking)")
    server.add_argument("--threads", type=int, default=serving.DEFAULT_THREADS,
                        help="threads per worker running whole requests (slow clients never hold one)")
    server.add_argument("--idle-timeout-s", type=int, default=serving.DEFAULT_IDLE_TIMEOUT_S,
                        help="close a connection silent this long, half-sent requests included")
    server.add_argument("--request-timeout-s", type=int, default=serving.DEFAULT_REQUEST_TIMEOUT_S,
                        help="drop a request not whole this long after its first byte, however it trickles")
    server.add_argument("--max-connections", type=int, default=serving.DEFAULT_MAX_CONNECTIONS,
                        help="open connections per worker at most; more wait in the listen backlog")
    server.add_argument("--database", default=None,
                        help="postgresql://... to keep the data in PostgreSQL (default $YKT_DATABASE_URL, "
                             "else SQLite in the data directory)")
    server.add_argument("--backup-dir", help="take an online backup of the SQLite file into this directory "
                                             "every --backup-interval-s (sync_server/backups.py)")
    server.add_argument("--backup-interval-s", type=int, default=3600, help="seconds between backups (default 3600)")
    server.add_argument("--backup-keep", type=int, default=backups.DEFAULT_KEEP,
                        help="backups kept, the oldest removed first (default %d)" % backups.DEFAULT_KEEP)
    server.set_defaults(handler=_guard(cmd_server))
    server_commands = server.add_subparsers(dest="server_command", metavar="{init,backup,restore}")
    server_commands.add_parser("init", parents=[_common_parser(suppress=True)], help="初始化数据目录与主密钥 / create data dir and master key") \
        .set_defaults(handler=_guard(cmd_server_init))
    backup = server_commands.add_parser(
        "backup", parents=[_common_parser(suppress=True)],
        help="立即在线备份数据库 / take an online backup of the database now",
        description="服务器运行时也可备份：复制为一个完整一致的 SQLite 文件，附校验清单。主密钥不在备份中，须另行保管。"
                    " / Works while the server runs: one consistent SQLite file with a manifest (SHA-256). The "
                    "master key is not in it; keep that apart.",
        epilog="示例 / example:  ykt server backup --data-dir /var/lib/ykt --to /mnt/backup/ykt --keep 30")
    backup.add_argument("--to", required=True, metavar="DIR", help="the backup directory (made owner-only)")
    backup.add_argument("--keep", type=int, default=backups.DEFAULT_KEEP,
                        help="backups kept there, the oldest removed first (default %d)" % backups.DEFAULT_KEEP)
    backup.set_defaults(handler=_guard(cmd_server_backup))
    restore = server_commands.add_parser(
        "restore", parents=[_common_parser(suppress=True)],
        help="从备份恢复数据库（先停止服务器）/ put a backup back (stop the server first)",
        description="校验备份（清单哈希与 SQLite 完整性检查）后放回数据目录；原数据库改名保留，不删除。"
                    " / Verifies the backup (its manifest's hash, SQLite's integrity check) and puts it in the data "
                    "directory; the database it replaces is renamed and kept, never deleted.",
        epilog="示例 / example:  ykt server restore --data-dir /var/lib/ykt --file /mnt/backup/ykt/"
               "ykt-20261204T031500000Z.db --force")
    restore.add_argument("--file", required=True, metavar="FILE", help="a backup's .db file (its .json manifest "
                                                                        "beside it)")
    restore.add_argument("--force", action="store_true", help="replace the database already there (kept as "
                                                               "ykt.db.replaced-<time>)")
    restore.set_defaults(handler=_guard(cmd_server_restore))

    fleet_parser = subparsers.add_parser("fleet", help="终端运维 / the terminals, for technicians")
    fleet_commands = fleet_parser.add_subparsers(dest="fleet_command", metavar="COMMAND")
    fleet_commands.required = True
    status = fleet_commands.add_parser(
        "status", parents=[_common_parser(suppress=True)],
        help="各终端状态，异常与久未同步的在前 / every terminal, failing and stale first",
        description="每台终端：类型、位置、固件版本、上次同步、时钟偏差、积压、读卡器故障、上传被拒、报警。"
                    " / Every terminal: kind, location, firmware, last sync, clock offset, backlog, reader "
                    "errors, upload refusals, alarms; failing and stale first (also on /admin/fleet).",
        epilog="示例 / examples:  ykt fleet status   |   ykt fleet status --stale-min 30 --json")
    status.add_argument("--stale-min", type=int, default=fleet_status.STALE_AFTER_MS // 60000,
                        help="minutes without a sync before a terminal counts as stale (default %d)"
                             % (fleet_status.STALE_AFTER_MS // 60000))
    status.add_argument("--json", action="store_true", help="one JSON list (for programs)")
    status.set_defaults(handler=_guard(cmd_fleet_status))
    key = fleet_commands.add_parser(
        "release-key-add", parents=[_common_parser(suppress=True)],
        help="登记发布公钥（私钥离线保管）/ trust bundles signed by this release key (its public half)",
        epilog="示例 / example:  ykt fleet release-key-add --key $(python tools/release.py keygen --out k)")
    key.add_argument("--key", required=True, metavar="HEX", help="the public key tools/release.py keygen printed")
    key.set_defaults(handler=_guard(cmd_fleet_release_key_add))
    release_add = fleet_commands.add_parser(
        "release-add", parents=[_common_parser(suppress=True)],
        help="登记固件包（先校验签名）/ register a signed firmware bundle (its signature checked first)",
        epilog="示例 / example:  ykt fleet release-add --file dist/ykt-pos-1.3.0.zip")
    release_add.add_argument("--file", required=True, help="a bundle from tools/release.py build")
    release_add.set_defaults(handler=_guard(cmd_fleet_release_add))
    rollout = fleet_commands.add_parser(
        "rollout", parents=[_common_parser(suppress=True)],
        help="分阶段推送：一台、一个商户、全部 / offer a release to one terminal, a merchant's, or all",
        epilog="示例 / examples:  ykt fleet rollout --release 3 --terminal 12   |   ykt fleet rollout --release 3 "
               "--merchant 2   |   ykt fleet rollout --release 3 --all")
    rollout.add_argument("--release", required=True, type=int, help="the release id (ykt fleet releases)")
    scope = rollout.add_mutually_exclusive_group(required=True)
    scope.add_argument("--terminal", type=int, help="one terminal first")
    scope.add_argument("--merchant", type=int, help="then a merchant's terminals")
    scope.add_argument("--all", action="store_true", help="then every terminal of the release's kind")
    rollout.set_defaults(handler=_guard(cmd_fleet_rollout))
    listing = fleet_commands.add_parser("releases", parents=[_common_parser(suppress=True)],
                                        help="已登记的固件版本 / registered releases")
    listing.add_argument("--json", action="store_true", help="one JSON list (for programs)")
    listing.set_defaults(handler=_guard(cmd_fleet_releases))
    rotate = fleet_commands.add_parser(
        "rotate-key", parents=[_common_parser(suppress=True)],
        help="更换终端密钥：下次同步时下发新密钥，旧密钥随后失效 / give a terminal a new key at its next sync; "
             "the old one stops working after that",
        epilog="示例 / example:  ykt fleet rotate-key --terminal 12   (ykt fleet status shows when it is done)")
    rotate.add_argument("--terminal", required=True, type=int, help="the terminal's id")
    rotate.set_defaults(handler=_guard(cmd_fleet_rotate_key))
    settings = fleet_commands.add_parser(
        "settings", parents=[_common_parser(suppress=True)],
        help="终端自己的设置（同步间隔、离线限额、菜单等）/ a terminal's own settings (sync interval, offline caps, "
             "menu, ...)",
        description="不带 --set/--clear 时显示；金额以分计，时间以毫秒计，菜单为 JSON。可设：%s。"
                    " / Without --set or --clear it shows them; money in fen, times in ms, the menu as JSON. Keys: %s."
                    % ("、".join(terminal_settings.KEYS), ", ".join(terminal_settings.KEYS)),
        epilog="示例 / examples:  ykt fleet settings --terminal 12   |   ykt fleet settings --terminal 12 --set "
               "offline_cap_count=3 --set 'dishes={\"rice\": [\"米饭\", 100]}'   |   ykt fleet settings --terminal 12 "
               "--clear offline_cap_count")
    settings.add_argument("--terminal", required=True, type=int, help="the terminal's id")
    settings.add_argument("--set", action="append", metavar="KEY=VALUE", help="set one (repeat for several)")
    settings.add_argument("--clear", action="append", metavar="KEY", help="back to the site's value (repeat for several)")
    settings.add_argument("--operator", help="who changes them (default: login name)")
    settings.add_argument("--json", action="store_true", help="one JSON object (for programs)")
    settings.set_defaults(handler=_guard(cmd_fleet_settings))

    hall_parser = subparsers.add_parser("hall", help="服务大厅业务 / service hall operations")
    commands = hall_parser.add_subparsers(dest="hall_command", metavar="COMMAND")
    commands.required = True

    def add(name, handler, help_text, aliases=()):
        parser = commands.add_parser(name, parents=[common], help=help_text, aliases=list(aliases))
        parser.set_defaults(handler=_guard(handler))
        return parser

    p = add("merchant-add", cmd_merchant_add, "添加商户 / add a merchant")
    p.add_argument("--name-zh", required=True, help="the merchant's Chinese name, e.g. 二食堂")
    p.add_argument("--name-en", help="English name (default: the Chinese one)")
    p.add_argument("--category", type=int, default=wallet_rules.CATEGORY_CANTEEN,
                   help="1 食堂 canteen, 2 热水 water, 3 电费 electricity, 4 激活机 activation units")
    p = add("person-add", cmd_person_add, "建档 / create a person and account")
    p.add_argument("--name", required=True, help="the person's name")
    p.add_argument("--id-number", help="ID card number (its last six digits are the initial PIN)")
    p.add_argument("--staff-number", help="staff/student number (学工号), how the hall finds the person")
    p.add_argument("--category", type=int, default=card_layout.HOLDER_STUDENT,
                   help="1 教工 staff, 2 学生 student, 3 自聘 self-employed, 4 临时 temporary, 5 身份卡 identity")
    p = add("card-issue", cmd_card_issue, "发卡（在发卡机上写卡；已有卡请补办）/ issue the first card (written at "
                                          "the issuing station; an account with a card gets a reissue)")
    add_person_options(p)
    p.add_argument("--operator", help="staff user acting (default: login name)")
    add_station_options(p)
    p.add_argument("--station", help="this station's name for card jobs (default: the machine's name)")
    p.add_argument("--json", action="store_true", help="print the new card as JSON")
    p = add("recharge", cmd_recharge, "现金充值 / cash recharge")
    p.add_argument("--number", required=True, help="the person's staff/student number (学工号)")
    p.add_argument("--amount", required=True, help="amount in yuan, like 12.50")
    p.add_argument("--wallet", default="main", choices=("main", "water", "legacy"), help="wallet credited")
    p.add_argument("--operator", help="staff user who took the cash (default: login name)")
    p.add_argument("--approver", help="a second staff user (hall or supervisor role) approving an amount above "
                                      "the cap; their password is read from stdin or a prompt")
    p = add("recharge-reverse", cmd_recharge_reverse, "现金充值冲正 / reverse a mistaken cash recharge")
    p.add_argument("--order", required=True, help="the cash recharge's order number (单号)")
    p.add_argument("--reason", required=True, help="why it is reversed (kept in the log)")
    p.add_argument("--supervisor", required=True, help="staff user with the supervisor role; password from "
                                                       "stdin or a prompt")
    p = add("cash-close", cmd_cash_close, "收款结账 / close a clerk's cash desk shift")
    p.add_argument("--operator", help="the clerk (default: login name)")
    p.add_argument("--counted", help="cash counted, in yuan: closes the shift (without it: only show the figures)")
    p.add_argument("--note", help="a note kept with the close")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p = add("cash-limits", cmd_cash_limits, "现金充值限额 / the cash recharge cap and maximum")
    p.add_argument("--cap", help="per-transaction cap in yuan; above it a second staff member approves")
    p.add_argument("--maximum", help="absolute maximum in yuan; above it refused")
    p.add_argument("--operator", help="who changes them (default: login name)")
    p = add("report-loss", cmd_report_loss, "挂失 / report a card lost")
    add_person_options(p, card=True)
    p.add_argument("--operator", help="staff user acting (default: login name)")
    p = add("transactions", cmd_transactions, "流水查询（最新在前）/ a person's statement, newest first")
    add_person_options(p)
    p.add_argument("--from", dest="date_from", help="first day, YYYY-MM-DD (default: a year ago)")
    p.add_argument("--to", dest="date_to", help="last day, YYYY-MM-DD (default: today)")
    p.add_argument("--type", default="all", choices=("all", "consumption", "recharge", "water"),
                   help="which transactions (default: all)")
    p.add_argument("--page", type=int, default=1, help="page number, 1 the newest")
    p.add_argument("--limit", type=int, default=50, help="rows per page (at most 100)")
    p = add("terminal-register", cmd_terminal_register, "登记终端 / register a terminal")
    p.add_argument("--merchant", type=int, required=True, help="the merchant's id (from merchant-add)")
    p.add_argument("--location", help="where it stands, e.g. 一食堂二楼 3号窗口 (at most %d characters)"
                   % terminal_settings.MAX_LOCATION_CHARS)
    p.add_argument("--out", required=True, help="provisioning file to write (mode 0600)")
    p.add_argument("--server-url", default="http://127.0.0.1:%d" % DEFAULT_PORT,
                   help="the sync server the terminal talks to")
    p = add("terminal-revoke", cmd_terminal_revoke, "停用终端 / revoke a terminal")
    p.add_argument("--terminal", type=int, required=True, help="the terminal's id")
    p = add("staff-add", cmd_staff_add, "添加网页工作人员 / add a web staff user")
    p.add_argument("--username", required=True, help="sign-in name")
    p.add_argument("--name", help="display name")
    p.add_argument("--role", action="append", required=True, choices=("hall", "finance", "admin", "supervisor"),
                   help="a role; repeat for several")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p = add("staff-password", cmd_staff_password, "更改或重置网页工作人员密码 / change or reset a staff password")
    p.add_argument("--username", required=True, help="the staff user's sign-in name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p = add("staff-disable", cmd_staff_disable, "停用网页工作人员 / disable a web staff user")
    p.add_argument("--username", required=True, help="the staff user's sign-in name")
    p.add_argument("--enable", action="store_true", help="enable the user again instead")
    hall_cli.register(add)     # cardholder services: import-people, reissue, unfreeze, ...


def _common_parser(suppress=False):
    """--data-dir and --lang; with suppress, a nested parser leaves the outer parser's values alone."""
    import argparse
    default = argparse.SUPPRESS if suppress else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=default, help="data directory (default $YKT_DATA_DIR or ./data)")
    common.add_argument("--lang", choices=("zh", "en"), default=default,
                        help="language of messages (default $YKT_LANG, else zh)")
    return common
