"""`ykt finance ...`: close a business day, import a channel statement, export a closed day.

    ykt finance close --date YYYY-MM-DD [--json] [--before-day-end]   (default: yesterday, Beijing time)
    ykt finance import-statement --channel alipay --date D FILE
    ykt finance export --date D --out DIR                  CSV files and an Excel workbook
    ykt finance migration-report [--json]                  the go-live migration: old money in = credited +
                                                           outstanding, per category and wallet

All take --data-dir (default $YKT_DATA_DIR or ./data) and --lang. `close --json` prints exactly one
JSON line (totals, gaps, anomaly counts, balanced, ledger_check); the readable summary goes to stderr
then. `balanced` is decided under the close's lock; `ledger_check` is the full ledger check run right
after it. The readable summary ends with the day's unusual totals (unusual.py: a channel or the cash
desk far above its usual, a cash recharge above the cap); they do not change the exit status.
Exit status: 0 done, 2 refused (message says why), 3 closed but not balanced or the full
ledger check found problems; the other mistakes (a missing file, a malformed date, an uninitialised
data directory) have the codes of sync_server/mistakes.py.
"""
import json
import os
import sys

from sync_server import db as dbmod, messages, pg_store, private_dir
from sync_server.mistakes import EXIT_UNBALANCED, FileMistake, MalformedInput, NotReady
from sync_server.finance import FinanceError, day_number, day_of_ms, day_text
from sync_server.finance import channel_statements, close as close_module, report as report_module

MAX_PROBLEMS_PRINTED = 20


def _lang(args):
    return "en" if (getattr(args, "lang", None) or messages.lang_from_env()).startswith("en") else "zh"


def _open(args):
    data_dir = os.path.abspath(args.data_dir or os.environ.get("YKT_DATA_DIR", "./data"))
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise FileMistake("数据目录 %s 不是目录" % data_dir, "the data directory %s is not a directory" % data_dir)
    path = dbmod.store_location(data_dir)
    if not pg_store.is_postgresql(path) and not os.path.exists(path):
        raise NotReady("数据目录尚未初始化：%s" % data_dir, "data directory not initialised: %s" % data_dir)
    private_dir.secure_dir(data_dir)
    return dbmod.init_db(path)


def _day(args):
    if args.date:
        try:
            return day_number(args.date)
        except FinanceError as error:       # not a date at all: malformed input, not a refusal
            raise MalformedInput(error.zh, error.en)
    return day_of_ms(dbmod.now_ms()) - 1


def _cells(text, width):
    """`text` padded to `width` terminal cells (a Chinese character takes two): merchant names line up."""
    from rich.cells import cell_len
    return text + " " * max(0, width - cell_len(text))


def readable(report, lang):
    """A few lines for people at a terminal."""
    summary = report_module.summary(report)
    en = lang == "en"
    yuan = report_module.yuan
    lines = [("Day close %s" if en else "日结 %s") % report["day"]]
    lines.append(("  sales %d, gross %s, refunds %s, net %s yuan" if en else "  交易 %d 笔，交易额 %s 元，退款 %s 元，净额 %s 元")
                 % (summary["sales_count"], yuan(summary["gross_fen"]), yuan(summary["refunds_fen"]),
                    yuan(summary["net_fen"])))
    for row in report["merchants"]:
        lines.append("    %s %6d  %12s" % (_cells(row["name_en"] if en else row["name_zh"], 24), row["count"],
                                         yuan(row["net_fen"])))
    lines.append(("  late records booked today %d, recharges %s yuan" if en else "  补入往日记录 %d 笔，充值 %s 元")
                 % (summary["late_records"], yuan(summary["recharges_fen"])))
    lines.append(("  open gaps %d, silent terminals %d, anomalies %d" if en else "  未补齐缺号段 %d，当日未同步终端 %d，异常 %d")
                 % (summary["gaps"], summary["terminals_silent"], summary["anomalies"]))
    gaps = report_module.card_counter_gaps(report)
    if gaps is not None:
        lines.append(("  card tap-counter gaps %d: %s" if en else "  卡计数缺口 %d：%s") % (gaps["count"], ", ".join(
            "%s %d" % (report_module.gap_reason_text(reason, lang), count)
            for reason, count in sorted(gaps["by_reason"].items()))))
    for key, zh, english in report_module.ANOMALY_KINDS:
        if summary["anomaly_counts"][key]:
            lines.append("    %s: %d" % (english if en else zh, summary["anomaly_counts"][key]))
    if summary["anomaly_counts"]["statement_mismatches"]:
        lines.append("    %s: %d" % ("statement mismatches" if en else "渠道对账差异",
                                      summary["anomaly_counts"]["statement_mismatches"]))
    lines.append(("  balanced: %s (trial balance %d fen)" if en else "  账实相符：%s（试算差额 %d 分）")
                 % (("yes" if en else "是") if summary["balanced"] else ("NO" if en else "否"),
                    summary["trial_balance_fen"]))
    lines.append(("  full ledger check: %s" if en else "  全账核对：%s") % report_module.ledger_check_text(report, lang))
    flags = report_module.unusual_lines(report, lang)
    if flags:
        lines.append(("  UNUSUAL, please check (%d):" if en else "  异常大额，请核实（%d 项）：") % len(flags))
        lines.extend("    " + flag for flag in flags)
    for problem in (report.get("ledger_check") or {}).get("problems", [])[:MAX_PROBLEMS_PRINTED]:
        lines.append("    " + problem)
    return "\n".join(lines)


def cmd_close(args):
    lang = _lang(args)
    conn = _open(args)
    try:
        report, newly = close_module.close_day(conn, _day(args), before_day_end=args.before_day_end)
    finally:
        conn.close()
    if not newly:
        print(("%s was already closed: the stored figures" if lang == "en" else "%s 已结算，以下为存档数据")
              % report["day"], file=sys.stderr)
    print(readable(report, lang), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report_module.summary(report), ensure_ascii=False, sort_keys=True))
    check = report.get("ledger_check")
    return 0 if report["invariants"]["balanced"] and (check is None or check["ok"]) else EXIT_UNBALANCED


def cmd_import_statement(args):
    lang = _lang(args)
    with open(args.file, "rb") as handle:
        data = handle.read()
    conn = _open(args)
    try:
        summary, newly = channel_statements.import_statement(conn, args.channel, _day(args), data)
    finally:
        conn.close()
    en = lang == "en"
    text = ("statement of %s: %d lines, %s yuan%s" if en else "%s 对账单：%d 行，%s 元%s") % (
        summary["day"], summary["lines"], report_module.yuan(summary["total_fen"]),
        "" if newly else (" (already imported)" if en else "（此前已导入）"))
    matched = summary["matched"]
    if matched:
        text += ("; matched %d, missing ours %d, missing theirs %d, amount mismatch %d" if en else
                 "；已勾对 %d，我方缺失 %d，对方缺失 %d，金额不符 %d") % (
            matched["matched"], matched["missing_ours_count"], matched["missing_theirs_count"],
            matched["amount_mismatch_count"])
    else:
        text += "; matched when the day closes" if en else "；该日结算时勾对"
    print(text)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, sort_keys=True))


def cmd_export(args):
    from sync_server.finance import exports
    lang = _lang(args)
    existing = os.path.abspath(args.out)
    while not os.path.exists(existing):          # the export makes the missing folders; a file in the way stops it
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise FileMistake("无法在 %s 写入导出文件：%s 是文件，不是目录" % (args.out, existing),
                          "cannot write the exports into %s: %s is a file, not a folder" % (args.out, existing))
    conn = _open(args)
    try:
        report = close_module.load_report(conn, _day(args))
    finally:
        conn.close()
    if report is None:
        raise FinanceError("%s 尚未结算" % day_text(_day(args)), "%s is not closed yet" % day_text(_day(args)))
    paths = exports.write_all(report, args.out, lang)
    for path in paths:
        print(path)


def cmd_migration_report(args):
    """The go-live migration's money (sync_server/legacy_migration.py): exit 3 when it does not add up."""
    from sync_server import legacy_migration
    conn = _open(args)
    try:
        report = legacy_migration.report(conn)
    finally:
        conn.close()
    print("\n".join(legacy_migration.report_lines(report, _lang(args))), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, sort_keys=True))
    return 0 if report["conservation_ok"] else EXIT_UNBALANCED


def _guard(handler):
    """The command as it is: `ykt` reports a refusal (FinanceError: EXIT_REFUSED) and the other mistakes
    through sync_server/mistakes.py."""
    return handler


def register(subparsers):
    import argparse
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data directory (default $YKT_DATA_DIR or ./data)")
    common.add_argument("--lang", choices=("zh", "en"), help="language of messages (default $YKT_LANG, else zh)")
    common.add_argument("--date", help="business day YYYY-MM-DD, Beijing time (default: yesterday)")
    finance = subparsers.add_parser("finance", help="财务日结与对账 / finance: day close and reconciliation")
    commands = finance.add_subparsers(dest="finance_command", metavar="COMMAND")
    commands.required = True
    parser = commands.add_parser("close", parents=[common], help="日结 / close a business day")
    parser.add_argument("--json", action="store_true", help="print one JSON line of results")
    parser.add_argument("--before-day-end", action="store_true",
                        help="今日未结束也结算（此后的交易记为次日补入）/ close a day still in progress "
                             "(later taps of it become late records of the next day)")
    parser.set_defaults(handler=_guard(cmd_close))
    parser = commands.add_parser("import-statement", parents=[common], help="导入渠道对账单 / import a channel statement")
    parser.add_argument("--channel", required=True, help="channel name (alipay, wechat, ccb) or ledger account id")
    parser.add_argument("--json", action="store_true", help="also print the import's summary as JSON")
    parser.add_argument("file", help="statement CSV")
    parser.set_defaults(handler=_guard(cmd_import_statement))
    parser = commands.add_parser("migration-report", parents=[common],
                                 help="旧卡迁移对账：已激活、按类别与钱包迁入、待迁移 / the go-live migration's money")
    parser.add_argument("--json", action="store_true", help="print one JSON line of the figures")
    parser.set_defaults(handler=_guard(cmd_migration_report))
    parser = commands.add_parser("export", parents=[common], help="导出 CSV 与 Excel / export CSV files and a workbook")
    parser.add_argument("--out", required=True, help="directory to write into")
    parser.set_defaults(handler=_guard(cmd_export))
