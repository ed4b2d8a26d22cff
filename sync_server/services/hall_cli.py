"""`ykt hall` commands for the cardholder services (registered by sync_server/cli.py):

    import-people --file F --category staff|student|self_employed|temporary|identity [--json]
    reissue --number N | --account A --uid HEX [--fee-cash] [--json]   补办: next generation, fee booked
                                                             (a hall page's card job: carried through, fee once)
    station --reader URL [--card-file F] [--station NAME]    发卡机: writes the cards the hall pages ask for
    unfreeze --number N | --card N                          解挂 by staff (no PIN rule); alias cancel-loss
    set-limits --number N --single 50 --daily 200           消费限额, in yuan
    change-pin --number N [--new-pin-stdin]                 staff reset (to the initial PIN by default)
    electricity --number N --building B --floor N --room R --amount 12.50 [--kind lighting|aircon]
    rooms-import --file rooms.csv [--json]                  电费房间名单 (楼栋,楼层,房间,电表号), repeatable
    rooms-list [--building B] [--json]                       the rooms, inactive ones marked
    building-set --building B [--name-zh] [--name-en] [--campus] [--meter-system none|online] [--kinds K,K]
    rooms-deactivate --building B [--floor N --room R]       stop payments for a room (or the building);
    rooms-activate --building B [--floor N --room R]         rooms-activate takes them again
    meter-deliver [--json]                                   send the payments due to meter systems (one pass)
    meter-pending [--json]                                   payments not yet delivered to their meter
    meter-retry (--payment P | --all)                        send flagged (failed) meter payments again
    recharge-channel --number N --amount 12.50 --channel alipay|wechat|ccb   (simulated payment)
    dispenser-sticker --terminal T --out FILE.png|FILE.svg   the QR sticker of a water dispenser
    paycode-list --number N [--json]                         付款码: the phones with the code and their state
    paycode-stop --number N (--credential C | --all)         停用付款码 (a lost phone): every terminal refuses it
    paycode-rotate-key                                       sign new certificates with a new pay-code key
    migration-import --people people.csv --water water_purses.csv [--json]   the old card centre's export
    migration-report [--json]                                old money, credited, outstanding (go-live)
    migration-replace --serial N [--reader R | --card-file F | --uid U]   a card broken by activation, free
    migration-water --serial N                               a late 小钱包 registration, moved in once
    wallet-move --number N --from main --to water --amount 12.50 [--request-id ID] [--json]
                                                             圈存 / the old balance into main: prints the receipt

People are named by their staff/student number (`--number`, 学工号); `--account` (the internal id)
still works for scripts but is not shown in the help. Amounts are typed and shown in yuan ("12.50").
Staff commands record who acted (`--operator`, default the login name). Output follows --lang; a PIN
is never printed, nor any key. Lists are tables (cli_common.print_table) that line up with Chinese
text on a terminal; `--json` is the form for scripts.
"""
import json
import signal
import sys

from sync_server import keys, registry
from sync_server.cli_common import (account_of, add_person_options, add_station_options, carry_card_job,
                                    check_output_file, data_dir_of, issuing_station, job_receipt, lang_of,
                                    log_staff_action, open_database, open_station, operator_of, print_table,
                                    read_text_file, require_known, say, station_name, uid_of, write_at_station,
                                    yuan_of)
from sync_server.mistakes import UnknownRecord
from sync_server.services import (card_jobs, cards, electricity, history, limits, paycode, people_import,
                                  pins as pin_service, recharge, sticker, wallet_move)


def _yuan(fen):
    return "%.2f" % (fen / 100)


def cmd_import_people(args):
    conn = open_database(args)
    text = read_text_file(args.file, people_import.MAX_CSV_BYTES + 1)
    report = people_import.import_people(conn, text, args.category)
    if args.json:
        print(json.dumps(report))
        return
    say(args, "导入完成：新建 %(created)d，更新 %(updated)d，未变 %(unchanged)d（共 %(rows)d 行）" % report,
        "import done: %(created)d created, %(updated)d updated, %(unchanged)d unchanged (%(rows)d rows)" % report)


def _reissue_now(args, conn, account_id):
    """补办 without a hall card job: the new card and its fee booked here."""
    station = open_station(args)
    try:
        uid = station.uid if station is not None else uid_of(args)
        result = cards.reissue(conn, account_id, uid, operator_of(args),
                               fee_source="cash" if args.fee_cash else "balance")
        if station is not None:
            write_at_station(args, conn, station, result["identity"], result["name"])
    finally:
        if station is not None:
            station.close()
    return dict(result, uid=uid, written=station is not None, job_id=None)


def _reissue_job(args, conn, account_id, job):
    """The hall page's card job for the account, carried through here: its fee booked once in all."""
    job, identity, name, uid, written = carry_card_job(args, conn, job, "cash" if args.fee_cash else None)
    return {"identity": identity, "name": name, "fee_fen": job["fee_fen"], "fee_source": job["fee_source"],
            "replaced_generation": identity.generation - 1, "balances": registry.balances_of(conn, account_id),
            "uid": uid, "written": written, "job_id": job["id"]}


def cmd_reissue(args):
    """补办. When the hall page asked for this account's card (a card job), the job is carried through
    (no second fee, whoever writes the card); otherwise the new card and its fee are booked here."""
    conn = open_database(args)
    account_id = account_of(conn, args)
    job = card_jobs.open_job(conn, account_id)
    result = _reissue_job(args, conn, account_id, job) if job else _reissue_now(args, conn, account_id)
    identity, written = result["identity"], result["written"]
    if args.json:
        print(json.dumps({"card_number": identity.card_number, "generation": identity.generation,
                          "account_id": identity.account_id, "holder_category": identity.holder_category,
                          "expiry_yyyymmdd": identity.expiry_yyyymmdd, "name": result["name"],
                          "fee_fen": result["fee_fen"], "fee_source": result["fee_source"],
                          "balances": result["balances"], "uid": result["uid"].hex(), "written": written,
                          "job_id": result["job_id"]}, ensure_ascii=False))
        return
    job_zh = "（发卡任务 #%d，补卡费只收一次）" % result["job_id"] if result["job_id"] else ""
    job_en = " (card job #%d: the fee is booked once)" % result["job_id"] if result["job_id"] else ""
    say(args, "补卡成功：卡号 %d 第 %d 代（旧卡第 %d 代已停用），补卡费 %s 元%s，主钱包余额 %s 元；%s"
        % (identity.card_number, identity.generation, result["replaced_generation"], _yuan(result["fee_fen"]), job_zh,
           _yuan(result["balances"]["main"]), "新卡已写好" if written else "请在发卡机上写卡"),
        "card reissued: number %d generation %d (generation %d denied), fee %s yuan%s, main wallet %s yuan; %s"
        % (identity.card_number, identity.generation, result["replaced_generation"], _yuan(result["fee_fen"]), job_en,
           _yuan(result["balances"]["main"]), "new card written" if written else "write it at the issuing station"))


def cmd_station(args):
    """发卡机: carry the hall page's card jobs through at this reader until stopped (Ctrl-C, SIGTERM)
    or, with --jobs N, after N jobs."""
    if not (args.reader or args.card_file):
        raise registry.HallError("请指定发卡读卡器（--reader）或卡片映像（--card-file）",
                                 "give the issuing reader (--reader) or a card image (--card-file)")
    conn = open_database(args)
    issuing = issuing_station(args)
    desk = card_jobs.StationDesk(conn, station_name(args), receipt=job_receipt)
    master_key = keys.load_master_key(keys.master_key_path(data_dir_of(args)))
    stop = []
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.append(True))

    def tell(zh, en):
        say(args, zh, en)
        sys.stdout.flush()
    issuing.run_station(desk, master_key, args.reader, args.card_file, say=tell, max_jobs=args.jobs,
                        stopping=lambda: bool(stop))       # a reader that cannot be opened: StationError
    tell("发卡机已停止", "issuing station stopped")


def cmd_unfreeze(args):
    conn = open_database(args)
    account_id = account_of(conn, args)
    result = cards.unfreeze(conn, account_id, operator=operator_of(args))
    log_staff_action(conn, args, "unfreeze", account_id, card_number=result["card_number"])
    say(args, "解挂成功：卡号 %(card_number)d（黑名单版本 %(deny_version)d）" % result,
        "card %(card_number)d unfrozen (deny version %(deny_version)d)" % result)


def cmd_set_limits(args):
    single_fen, daily_fen = yuan_of(args.single, "单笔限额", "the per-payment limit"), yuan_of(args.daily, "每日限额",
                                                                                             "the daily limit")
    conn = open_database(args)
    account_id = account_of(conn, args)

    def log(conn, before, after):
        log_staff_action(conn, args, "limits", account_id, detail=dict(after, before=before))
    result = limits.set_limits(conn, account_id, single_fen, daily_fen, operator=operator_of(args), also=log)
    say(args, "限额已设置：单笔 %s 元，每日 %s 元" % (_yuan(result["single_limit_fen"]),
                                               _yuan(result["daily_limit_fen"])),
        "limits set: %s yuan per transaction, %s yuan per day" % (_yuan(result["single_limit_fen"]),
                                                               _yuan(result["daily_limit_fen"])))


def cmd_change_pin(args):
    new_pin = sys.stdin.readline().strip() if args.new_pin_stdin else None
    conn = open_database(args)
    account_id = account_of(conn, args)
    initial = pin_service.reset_pin(conn, account_id, operator_of(args), new_pin,
                                    also=lambda conn: log_staff_action(conn, args, "pin_reset", account_id,
                                                                       detail={"to_initial": new_pin is None}))
    if initial:
        say(args, "密码已重置为初始密码（证件号后六位），请持卡人尽快修改",
            "PIN reset to the initial one (last six of the ID number); the holder should change it")
    else:
        say(args, "密码已重置", "PIN reset")


def cmd_electricity(args):
    amount_fen = yuan_of(args.amount)
    conn = open_database(args)
    account_id = account_of(conn, args)
    result = electricity.pay(conn, account_id, args.building, args.floor, args.room, amount_fen,
                             operator=operator_of(args), kind=args.kind)
    log_staff_action(conn, args, "electricity", account_id, amount_fen=amount_fen,
                     detail={"payment_id": result["payment_id"], "room": "%s %d %s" % (args.building, args.floor,
                                                                                     args.room)})
    say(args, "电费缴纳成功：%s %d层 %s 房间 %s 元（单号 %s）" % (args.building, args.floor, args.room,
                                                      _yuan(amount_fen), result["payment_id"]),
        "electricity paid: %s floor %d room %s, %s yuan (payment %s)" % (args.building, args.floor, args.room,
                                                                    _yuan(amount_fen), result["payment_id"]))


def cmd_rooms_import(args):
    text = read_text_file(args.file, electricity.MAX_CSV_BYTES + 1)
    report = electricity.import_rooms(open_database(args), text)
    if args.json:
        print(json.dumps(report))
        return
    say(args, "房间名单导入完成：新建 %(created)d，更新 %(updated)d，未变 %(unchanged)d（共 %(rows)d 行，新楼栋 "
        "%(buildings_created)d）" % report,
        "rooms imported: %(created)d created, %(updated)d updated, %(unchanged)d unchanged (%(rows)d rows, "
        "%(buildings_created)d new buildings)" % report)


def cmd_rooms_list(args):
    conn = open_database(args)
    rooms = electricity.list_rooms(conn, args.building)
    if args.json:
        print(json.dumps({"buildings": electricity.list_buildings(conn), "rooms": rooms}, ensure_ascii=False))
        return
    for building in electricity.list_buildings(conn):
        if args.building is None or building["code"] == args.building:
            say(args, "%s %s（%s）电控：%s，%s，%d 个房间（%d 个可缴费）%s" % (
                building["code"], building["name_zh"], building["campus"] or "-",
                {"none": "无（购电机）", "online": "在线"}[building["meter_system"]],
                "、".join(electricity.KINDS[kind][0] for kind in building["kinds"]), building["rooms"],
                building["active_rooms"], "" if building["active"] else "，已停用"),
                "%s %s (%s) meters: %s, %s, %d rooms (%d take payments)%s" % (
                building["code"], building["name_en"], building["campus"] or "-", building["meter_system"],
                ", ".join(building["kinds"]), building["rooms"], building["active_rooms"],
                "" if building["active"] else ", stopped"))
    en = lang_of(args) == "en"
    state = (("可缴费", "已停用"), ("takes payments", "stopped"))[en]
    print_table(args, (("楼栋", "building"), ("楼层", "floor"), ("房间", "room"), ("电表号", "meter"), ("状态", "state")),
                [(room["building"], room["floor"], room["room"], room["meter_id"] or "-",
                  state[0] if room["active"] else state[1]) for room in rooms], right=(1,))


def cmd_building_set(args):
    kinds = [kind.strip() for kind in args.kinds.split(",")] if args.kinds else None
    building = electricity.set_building(open_database(args), args.building, args.name_zh, args.name_en, args.campus,
                                        args.meter_system, kinds)
    if args.json:
        print(json.dumps(building, ensure_ascii=False))
        return
    say(args, "楼栋已设置：%s %s，电控 %s，%s" % (building["code"], building["name_zh"], building["meter_system"],
                                          "、".join(electricity.KINDS[kind][0] for kind in building["kinds"])),
        "building set: %s %s, meters %s, %s" % (building["code"], building["name_en"], building["meter_system"],
                                                ", ".join(building["kinds"])))


def _set_rooms_active(args, active):
    if (args.floor is None) != (args.room is None):
        raise registry.HallError("请同时给出 --floor 和 --room，或都不给（整栋楼）",
                                 "give both --floor and --room, or neither (the whole building)")
    changed = electricity.set_active(open_database(args), args.building, args.floor, args.room, active)
    what_zh = args.building if args.room is None else "%s %d层 %s" % (args.building, args.floor, args.room)
    what_en = args.building if args.room is None else "%s floor %d room %s" % (args.building, args.floor, args.room)
    say(args, "%s：%s%s" % (what_zh, "已恢复缴费" if active else "已停止缴费", "" if changed else "（原已如此）"),
        "%s: %s%s" % (what_en, "takes payments again" if active else "payments stopped",
                      "" if changed else " (already so)"))


def cmd_rooms_deactivate(args):
    _set_rooms_active(args, False)


def cmd_rooms_activate(args):
    _set_rooms_active(args, True)


def cmd_meter_deliver(args):
    from sync_server import meter_gateway
    try:
        counts = meter_gateway.deliver_from_config(open_database(args), data_dir_of(args))
    except meter_gateway.ConfigError as error:
        raise registry.HallError("电控网关配置无效：%s" % error, "meter gateway configuration invalid: %s" % error)
    if args.json:
        print(json.dumps(counts))
        return
    say(args, "电控缴费发送：到账 %(delivered)d，稍后重试 %(retrying)d，失败待处理 %(failed)d，未配置网关 %(unconfigured)d"
        % counts, "meter payments: %(delivered)d delivered, %(retrying)d to retry, %(failed)d flagged, "
        "%(unconfigured)d without a gateway" % counts)


def cmd_meter_pending(args):
    from sync_server import meter_gateway
    rows = meter_gateway.undelivered(open_database(args))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    if not rows:
        say(args, "没有未到账的电控缴费", "no meter payment is undelivered")
        return
    states = {"pending": ("待发送", "to send"), "failed": ("失败，需处理", "failed, needs a look")}
    en = lang_of(args) == "en"
    print_table(args, (("单号", "payment"), ("楼栋", "building"), ("楼层", "floor"), ("房间", "room"),
                       ("电表号", "meter"), ("金额(元)", "yuan"), ("状态", "state"), ("已试次数", "attempts"),
                       ("最近错误", "last error")),
                [(row["payment_id"], row["building"], row["floor"], row["room"], row["meter_id"],
                  _yuan(row["amount_fen"]), states[row["status"]][en], row["attempts"], row["last_error"] or "")
                 for row in rows], right=(2, 5, 7))


def cmd_meter_retry(args):
    from sync_server import meter_gateway
    count = meter_gateway.requeue(open_database(args), None if args.all else args.payment)
    if not count and not args.all:
        raise UnknownRecord("没有失败待处理的缴费 %s" % args.payment, "no flagged meter payment %s" % args.payment)
    say(args, "已重新排队 %d 笔电控缴费" % count, "%d meter payments queued again" % count)


def cmd_recharge_channel(args):
    """A simulated channel payment on the local database: an order, booked paid as the channel's
    (recharge.simulate_payment: no channel notice, so the channel's statement will not list it)."""
    amount_fen = yuan_of(args.amount)
    conn = open_database(args)
    account_id = account_of(conn, args)
    order = recharge.create_order(conn, account_id, amount_fen, args.channel)
    outcome, order = recharge.simulate_payment(conn, order["order_id"])
    main_fen = history.balance(conn, account_id)["wallets"]["main"]
    say(args, "充值成功：订单 %s，%s 元，主钱包余额 %s 元" % (order["order_id"], _yuan(order["amount_fen"]),
                                                      _yuan(main_fen)),
        "recharged: order %s, %s yuan, main wallet %s yuan" % (order["order_id"], _yuan(order["amount_fen"]),
                                                              _yuan(main_fen)))


def cmd_dispenser_sticker(args):
    conn = open_database(args)
    require_known(conn, "SELECT 1 FROM terminals WHERE id = ?", (args.terminal,), "终端 %d 不存在" % args.terminal,
                  "terminal %d does not exist" % args.terminal)
    check_output_file(args.out)
    sticker.check_dispenser(conn, args.terminal)
    path = sticker.render(args.terminal, args.out)
    say(args, "已生成开水机 %d 的二维码贴纸：%s" % (args.terminal, path),
        "sticker of dispenser %d written: %s" % (args.terminal, path))


def cmd_paycode_list(args):
    conn = open_database(args)
    credentials = paycode.listing(conn, account_of(conn, args))["credentials"]
    if args.json:
        print(json.dumps(credentials))
        return
    if not credentials:
        say(args, "该账户未开通付款码", "no phone has the payment code for this account")
        return
    states = {"active": ("使用中", "active"), "revoked": ("已停用", "stopped")}
    en = lang_of(args) == "en"
    print_table(args, (("凭证", "credential"), ("状态", "state")),
                [(line["credential_id"], states[line["status"]][en]) for line in credentials], right=(0,))


def cmd_paycode_stop(args):
    conn = open_database(args)
    account_id = account_of(conn, args)
    wanted = [line["credential_id"] for line in paycode.listing(conn, account_id)["credentials"]
              if line["status"] == "active" and (args.all or line["credential_id"] == args.credential)]
    if not args.all and args.credential not in wanted:
        raise UnknownRecord("该账户没有使用中的付款码凭证 %s" % args.credential,
                            "the account has no active payment code credential %s" % args.credential)
    for credential_id in wanted:
        paycode.stop(conn, account_id, credential_id)
        log_staff_action(conn, args, "paycode_stop", account_id, detail={"credential_id": credential_id})
    say(args, "已停用付款码：%d 台手机，终端下次同步后拒收" % len(wanted),
        "payment code stopped on %d phone(s): terminals refuse it after their next sync" % len(wanted))


def cmd_paycode_rotate_key(args):
    key_id = paycode.rotate_key(open_database(args))["key_id"]
    say(args, "付款码签名密钥已更换为第 %d 代；旧密钥签发的证书在到期前仍有效" % key_id,
        "pay-code signing key is now generation %d; certificates of the old one stay valid until they expire"
        % key_id)


def _migration_lines(args, report):
    from sync_server import legacy_migration
    print("\n".join(legacy_migration.report_lines(report, lang_of(args))))


def cmd_migration_import(args):
    from sync_server import legacy_migration
    texts = []
    for path in (args.people, args.water):
        texts.append(read_text_file(path, legacy_migration.MAX_EXPORT_BYTES + 1))
    conn = open_database(args)
    if args.old_keys:                # before the import: a bad key file changes nothing
        keys.store_legacy_key(data_dir_of(args), args.old_keys)
    result = legacy_migration.import_export(conn, texts[0], texts[1])
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return
    say(args, "导入完成：新建人员 %(people_created)d，沿用 %(people_kept)d；新卡 %(cards_new)d，已导入过 %(cards_known)d；"
        "教工余额入账 %(teacher_yuan)s 元" % dict(result, teacher_yuan=_yuan(result["teacher_fen_booked"])),
        "imported: %(people_created)d people created, %(people_kept)d kept; %(cards_new)d new cards, %(cards_known)d "
        "imported before; teachers' balances booked %(teacher_yuan)s yuan"
        % dict(result, teacher_yuan=_yuan(result["teacher_fen_booked"])))
    _migration_lines(args, result)


def cmd_migration_replace(args):
    """A card activation left broken (or one that could not be activated), replaced free against the
    old card: its money booked once, a new card written at the issuing station."""
    from sync_server import legacy_migration
    conn = open_database(args)
    _known_serial(conn, args.serial)
    station = open_station(args)
    try:
        uid = station.uid if station is not None else uid_of(args)
        identity, name, booked = legacy_migration.replace_broken(conn, args.serial, uid)
        if station is not None:
            write_at_station(args, conn, station, identity, name)
    finally:
        if station is not None:
            station.close()
    moved_fen = sum(fen for _id, fen in booked)
    if args.json:
        print(json.dumps({"serial": args.serial, "card_number": identity.card_number, "generation": identity.generation,
                          "account_id": identity.account_id, "name": name, "fee_fen": 0, "booked_fen": moved_fen,
                          "uid": uid.hex()}, ensure_ascii=False, sort_keys=True))
        return
    say(args, "旧卡 %d 已免费换卡：卡号 %d 第 %d 代，免收补卡费；本次迁入 %s 元；%s" % (
        args.serial, identity.card_number, identity.generation, _yuan(moved_fen),
        "新卡已写好" if station is not None else "请在发卡机上写卡"),
        "old card %d replaced free: card %d generation %d, no reissue fee; %s yuan moved in now; %s" % (
        args.serial, identity.card_number, identity.generation, _yuan(moved_fen),
        "new card written" if station is not None else "write it at the issuing station"))


def _known_serial(conn, serial):
    require_known(conn, "SELECT 1 FROM legacy_cards WHERE serial = ?", (serial,), "原一卡通卡号 %d 不在导入的名单中" % serial,
                  "old card %d is not in the imported export" % serial)


def cmd_migration_water(args):
    from sync_server import legacy_migration
    conn = open_database(args)
    _known_serial(conn, args.serial)
    fen = legacy_migration.register_water(conn, args.serial)
    say(args, "旧卡 %d 的小钱包已登记，转入水钱包 %s 元" % (args.serial, _yuan(fen)),
        "old card %d: 小钱包 registered, %s yuan moved to the water wallet" % (args.serial, _yuan(fen)))


def cmd_migration_report(args):
    from sync_server import legacy_migration
    report = legacy_migration.report(open_database(args))
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return
    _migration_lines(args, report)


def cmd_wallet_move(args):
    """钱包间转账 at the hall: the holder named by 学工号 (ID checked by the clerk), one move, its receipt."""
    cap_fen = wallet_move.check_direction(args.from_wallet, args.to_wallet, operator_of(args))
    amount_fen = yuan_of(args.amount)
    if not amount_fen:
        raise registry.HallError("金额无效：%s（应为大于 0 的元数，最多两位小数）" % args.amount,
                                 "invalid amount: %s (yuan above 0, at most two decimals)" % args.amount)
    if amount_fen > cap_fen:
        raise registry.HallError("金额 %s 元超过单笔上限 %s 元" % (_yuan(amount_fen), _yuan(cap_fen)),
                                 "%s yuan is above the per-move cap of %s yuan" % (_yuan(amount_fen), _yuan(cap_fen)))
    conn = open_database(args)
    receipt = wallet_move.move(conn, account_of(conn, args), args.from_wallet, args.to_wallet, amount_fen, operator=operator_of(args),
                               request_id=args.request_id)
    if args.json:
        print(json.dumps(receipt, ensure_ascii=False, sort_keys=True))
        return
    print(wallet_move.receipt_text(receipt, lang_of(args)), end="")
    if receipt["repeated"]:
        say(args, "（该请求已办理过，未重复入账，以上为原凭证）",
            "(this request was done before: nothing booked again; the receipt above is the first one)")


def register(add):
    """Add the commands through sync_server/cli.py's `add(name, handler, help)`."""
    def staff(parser):
        parser.add_argument("--operator", help="staff user acting (default: login name)")
        return parser

    p = add("import-people", cmd_import_people, "从人事/学籍导入人员 / import people from a registry CSV")
    p.add_argument("--file", required=True, help="the registry's CSV export (UTF-8)")
    p.add_argument("--category", required=True, choices=sorted(people_import.CATEGORIES),
                   help="who the file lists: staff 教工, student 学生, self_employed 自聘, temporary 临时, identity 身份卡")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p = staff(add("reissue", cmd_reissue, "补办卡片（收补卡费；网页已提交的补卡任务在此办完，不重复收费）/ reissue a "
                                          "card (fee charged once; a card job from the hall page is carried through)"))
    add_person_options(p)
    add_station_options(p)
    p.add_argument("--fee-cash", action="store_true", help="fee paid in cash instead of from the balance")
    p.add_argument("--station", help="this station's name for card jobs (default: the machine's name)")
    p.add_argument("--json", action="store_true", help="print the new card as JSON")
    p = add("station", cmd_station, "发卡机：办理服务大厅网页提交的发卡/补卡任务 / issuing station: write the cards "
                                    "the hall pages ask for")
    p.add_argument("--reader", help="issuing reader, e.g. pcsc:ACR122, pn532:/dev/ttyUSB0 or sim: (with --card-file)")
    p.add_argument("--card-file", help="a virtual card image on the sim: reader (a blank one is created if missing)")
    p.add_argument("--station", help="this station's name; the hall page may ask for it (default: the machine's "
                                     "name)")
    p.add_argument("--jobs", type=int, help="stop after this many jobs (default: run until stopped)")
    p = staff(add("unfreeze", cmd_unfreeze, "解挂（服务大厅）/ unfreeze a lost card at the hall",
                  aliases=("cancel-loss",)))
    add_person_options(p, card=True)
    p = staff(add("set-limits", cmd_set_limits, "设置消费限额（元）/ set consumption limits (yuan)"))
    add_person_options(p)
    p.add_argument("--single", required=True, help="per-payment limit in yuan, like 50")
    p.add_argument("--daily", required=True, help="daily limit in yuan, like 200")
    p = staff(add("change-pin", cmd_change_pin, "重置交易密码 / reset the card PIN"))
    add_person_options(p)
    p.add_argument("--new-pin-stdin", action="store_true", help="read the new PIN from stdin (default: initial PIN)")
    p = staff(add("electricity", cmd_electricity, "缴纳电费 / pay dorm electricity"))
    add_person_options(p)
    p.add_argument("--building", required=True, help="building code as on the rooms list, e.g. 南1")
    p.add_argument("--floor", type=int, required=True, help="floor number")
    p.add_argument("--room", required=True, help="room as on the rooms list, e.g. 101")
    p.add_argument("--amount", required=True, help="amount in yuan, like 12.50")
    p.add_argument("--kind", default=electricity.DEFAULT_KIND, choices=sorted(electricity.KINDS),
                   help="lighting 照明用电 (default) or aircon 空调用电")
    p = add("rooms-import", cmd_rooms_import, "导入电费房间名单 / import the dorm rooms list (楼栋,楼层,房间,电表号)")
    p.add_argument("--file", required=True, help="rooms CSV (UTF-8): 楼栋,楼层,房间,电表号")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p = add("rooms-list", cmd_rooms_list, "查看电费房间名单 / list the dorm rooms")
    p.add_argument("--building", help="only this building (its code)")
    p.add_argument("--json", action="store_true", help="print buildings and rooms as JSON")
    p = add("building-set", cmd_building_set, "设置楼栋（名称、校区、电控系统）/ set a building's names and meter system")
    p.add_argument("--building", required=True, help="the code the rooms file uses, e.g. 南1")
    p.add_argument("--name-zh", help="Chinese name shown to people")
    p.add_argument("--name-en", help="English name")
    p.add_argument("--campus", help="campus name")
    p.add_argument("--meter-system", choices=electricity.METER_SYSTEMS,
                   help="none: the old 购电机 (booked only); online: sent to the meter gateway")
    p.add_argument("--kinds", help="comma list: lighting (照明用电), aircon (空调用电)")
    p.add_argument("--json", action="store_true", help="print the building as JSON")
    for name, handler, summary in (("rooms-deactivate", cmd_rooms_deactivate, "停止房间或楼栋缴费 / stop payments"),
                                   ("rooms-activate", cmd_rooms_activate, "恢复房间或楼栋缴费 / take payments again")):
        p = add(name, handler, summary)
        p.add_argument("--building", required=True, help="building code")
        p.add_argument("--floor", type=int, help="floor (with --room; without both: the whole building)")
        p.add_argument("--room", help="room (with --floor)")
    p = add("meter-deliver", cmd_meter_deliver, "向电控系统发送待到账的电费 / send due payments to meter systems")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p = add("meter-pending", cmd_meter_pending, "未到账的电控缴费 / payments not yet on their meter")
    p.add_argument("--json", action="store_true", help="print the payments as JSON")
    p = add("meter-retry", cmd_meter_retry, "重新发送失败的电控缴费 / send flagged meter payments again")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--payment", help="the payment id (see meter-pending)")
    which.add_argument("--all", action="store_true", help="every flagged payment")
    p = add("dispenser-sticker", cmd_dispenser_sticker, "开水机二维码贴纸 / a water dispenser's QR sticker")
    p.add_argument("--terminal", type=int, required=True, help="the dispenser's terminal id")
    p.add_argument("--out", required=True, help="FILE.png or FILE.svg")
    p = add("paycode-list", cmd_paycode_list, "查看付款码开通情况 / list the phones with the payment code")
    add_person_options(p)
    p.add_argument("--json", action="store_true", help="print the credentials as JSON")
    p = staff(add("paycode-stop", cmd_paycode_stop, "停用付款码（手机丢失）/ stop the payment code (lost phone)"))
    add_person_options(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--credential", type=int, help="one phone's credential (see paycode-list)")
    which.add_argument("--all", action="store_true", help="every phone of the account")
    add("paycode-rotate-key", cmd_paycode_rotate_key, "更换付款码签名密钥 / rotate the pay-code signing key")
    p = add("migration-import", cmd_migration_import, "导入原一卡通中心的导出 / import the old card centre's export")
    p.add_argument("--people", required=True, help="people.csv: 姓名,学工号,证件号码,身份,卡号,卡状态,余额(元)")
    p.add_argument("--water", required=True, help="water_purses.csv: 卡号,小钱包余额(元)")
    p.add_argument("--old-keys", help="the old system's card master key file (32 bytes), kept for the "
                                      "activation units' provisioning")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = add("migration-report", cmd_migration_report, "迁移对账：旧系统余额、已入账、待迁移 / the migration's money")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p = add("migration-replace", cmd_migration_replace,
            "激活损坏的卡凭旧卡免费更换 / replace a card broken by activation, free, against the old card")
    p.add_argument("--serial", type=int, required=True, help="the old card's 卡号 (printed on its face)")
    add_station_options(p)
    p.add_argument("--json", action="store_true", help="print the new card as JSON")
    p = add("migration-water", cmd_migration_water,
            "登记已激活旧卡的小钱包并转入水钱包 / register an activated old card's 小钱包 and move it in")
    p.add_argument("--serial", type=int, required=True, help="the old card's 卡号")
    p = add("recharge-channel", cmd_recharge_channel, "渠道充值（模拟支付）/ recharge through a channel (simulated)")
    add_person_options(p)
    p.add_argument("--amount", required=True, help="amount in yuan, like 12.50")
    p.add_argument("--channel", required=True, choices=recharge.ONLINE_CHANNELS, help="the payment channel")
    p = staff(add("wallet-move", cmd_wallet_move, "钱包间转账：圈存（主钱包→小钱包），原一卡通余额→主钱包 / "
                                                   "move money between a holder's wallets"))
    p.add_argument("--number", required=True, help="学工号 staff/student number (ID card checked)")
    p.add_argument("--from", dest="from_wallet", required=True, help="main or legacy")
    p.add_argument("--to", dest="to_wallet", required=True, help="water or main")
    p.add_argument("--amount", required=True, help="yuan, e.g. 12.50")
    p.add_argument("--request-id", help="8-100 of A-Z a-z 0-9 - _: the same id again books nothing and "
                                        "prints the first receipt")
    p.add_argument("--json", action="store_true", help="print the receipt as JSON")

