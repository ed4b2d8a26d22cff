"""Figures of a closed day shared by every output: the one-line summary, anomaly counts, labels, and
the report as flat tables (the CSV files, the workbook sheets and the HTML tables are all built from
`tables()`, so they always say the same thing).
"""
from sync_server.finance import names as code_names, unusual

ANOMALY_KINDS = (
    # key in report["anomalies"] (count), Chinese, English
    ("negative_account_count", "脱机透支（账户已冻结）", "accounts driven negative (blocked)"),
    ("cloned_card_count", "疑似复制卡（已禁用）", "cloned cards suspected (denied)"),
    ("revoked_terminal_record_count", "已停用终端的记录", "records from revoked terminals"),
    ("impossible_time_count", "时间不可能的记录", "records with impossible times"),
    ("unbooked_record_count", "未入账记录（账户未知）", "records not booked (unknown account)"),
    ("card_mismatch_count", "卡号与账户不符（未扣款、未结算）", "card not the named account's (not charged, not settled)"),
    ("paycode_double_use_count", "付款码脱机重复使用（已停用该手机）", "pay codes used twice offline (phone stopped)"),
)


GAP_REASON_LABELS = {
    # card tap-counter gap reasons (counter_gaps.GAP_REASONS): Chinese, English
    "torn_tap": ("卡已计数但未记账（刷卡中途拿开，未扣款）", "torn tap, nothing charged"),
    "pending": ("有终端尚未上传完毕", "a terminal has not sent everything yet"),
}


def card_counter_gaps(report):
    """The report's card tap-counter gaps, or None for a day closed before they were reported."""
    return report.get("card_counter_gaps")


def gap_reason_text(reason, lang="zh"):
    zh, en = GAP_REASON_LABELS.get(reason, (reason, reason))
    return en if lang == "en" else zh


def anomaly_counts(report):
    counts = {key: report["anomalies"].get(key, 0) for key, _zh, _en in ANOMALY_KINDS}   # older days lack newer kinds
    counts["statement_mismatches"] = report["totals"].get("statement_mismatches", 0)
    return counts


def summary(report):
    """The one JSON line of `ykt finance close --json`: totals, gaps, anomalies, balanced."""
    totals = report["totals"]
    counts = anomaly_counts(report)
    gaps = card_counter_gaps(report)
    return {
        "day": report["day"],
        "balanced": report["invariants"]["balanced"],
        "records": totals["records"],
        "sales_count": totals["sales_count"],
        "gross_fen": totals["gross_fen"],
        "refunds_fen": totals["refunds_fen"],
        "net_fen": totals["net_fen"],
        "late_records": totals["late_records"],
        "late_fen": totals["late_fen"],
        "recharges_fen": totals["recharges_fen"],
        "paycode_sales_count": totals.get("paycode_sales_count", 0),      # days closed before pay codes: 0
        "paycode_sales_fen": totals.get("paycode_sales_fen", 0),
        "merchants": {str(row["merchant_id"]): row["net_fen"] for row in report["merchants"]},
        "gaps": totals["open_gaps"],
        "missing_seqs": totals["missing_seqs"],
        "card_counter_gaps": None if gaps is None else gaps["count"],
        "card_counter_gaps_by_reason": None if gaps is None else gaps["by_reason"],
        "terminals_silent": len(report["terminals_silent"]),
        "anomalies": sum(counts.values()),
        "anomaly_counts": counts,
        "trial_balance_fen": report["invariants"]["trial_balance_fen"],
        "ledger_check": ledger_check_summary(report),
        "unusual": unusual.flagged_count(report),
        "closed_ms": report["closed_ms"],
    }


def ledger_check_summary(report):
    """{ok, problem_count} of the full ledger check run after the close, None before it ran."""
    check = report.get("ledger_check")
    return None if check is None else {"ok": check["ok"], "problem_count": check["problem_count"]}


def ledger_check_text(report, lang="zh"):
    check = report.get("ledger_check")
    en = lang == "en"
    if check is None:
        return "not run yet" if en else "尚未进行"
    if check["ok"]:
        return "every balance equals its transfers" if en else "各账户余额与流水一致"
    return ("%d problems" if en else "%d 处不符") % check["problem_count"]


class Yuan(str):
    """An amount as text, marked so that the exports write it as a number and never mistake a name
    that looks like one (or like a formula) for an amount."""
    __slots__ = ()


def yuan(fen):
    """'12.34' (negative with a leading minus), exact: fen are integers."""
    sign = "-" if fen < 0 else ""
    return Yuan("%s%d.%02d" % (sign, abs(fen) // 100, abs(fen) % 100))


def _clock(time_ms):
    if time_ms is None:
        return ""
    minute_of_day = (time_ms + 8 * 3600 * 1000) % 86400000 // 60000
    return "%02d:%02d" % (minute_of_day // 60, minute_of_day % 60)


def _duration_s(ms):
    return "" if ms is None else ms // 1000


def _name(row, lang):
    return row["name_en"] if lang == "en" else row["name_zh"]


def tables(report, lang="zh"):
    """[(sheet name, header, rows)] of the report; names and headers in the chosen language."""
    en = lang == "en"
    t = (lambda zh, english: english if en else zh)
    result = []
    totals = report["totals"]
    invariants = report["invariants"]
    result.append((t("汇总", "summary"), [t("项目", "item"), t("数值", "value")], [
        [t("营业日", "business day"), report["day"]],
        [t("交易笔数", "sales"), totals["sales_count"]],
        [t("交易额（元）", "gross (yuan)"), yuan(totals["gross_fen"])],
        [t("退款（元）", "refunds (yuan)"), yuan(totals["refunds_fen"])],
        [t("净额（元）", "net (yuan)"), yuan(totals["net_fen"])],
        [t("补入的往日记录", "late records booked today"), totals["late_records"]],
        [t("充值（元）", "recharges (yuan)"), yuan(totals["recharges_fen"])],
        [t("付款码交易笔数", "pay-code sales"), totals.get("paycode_sales_count", 0)],
        [t("付款码交易额（元）", "pay-code sales (yuan)"), yuan(totals.get("paycode_sales_fen", 0))],
        [t("未补齐的缺号段", "open sequence gaps"), totals["open_gaps"]],
    ] + _gap_summary_rows(report, lang) + [
        [t("试算平衡（分）", "trial balance (fen)"), invariants["trial_balance_fen"]],
        [t("账实相符", "balanced"), t("是", "yes") if invariants["balanced"] else t("否", "no")],
        [t("全账核对（结算后）", "full ledger check (after the close)"), ledger_check_text(report, lang)],
    ] + [[zh if not en else english, report["anomalies"].get(key, 0)] for key, zh, english in ANOMALY_KINDS]
      + [[t("渠道对账差异", "statement mismatches"), totals.get("statement_mismatches", 0)]]))
    result.append((t("商户结算", "merchants"),
                   [t("商户号", "merchant"), t("商户", "name"), t("类别", "category"), t("笔数", "count"),
                    t("交易额（元）", "gross (yuan)"), t("退款笔数", "refunds"), t("退款（元）", "refunds (yuan)"),
                    t("净额（元）", "net (yuan)"), t("往日补入笔数", "late count"), t("往日补入（元）", "late (yuan)")],
                   [[row["merchant_id"], _name(row, lang), code_names.name("merchant_category", row["category"], lang),
                     row["count"], yuan(row["gross_fen"]), row["refund_count"], yuan(row["refunds_fen"]),
                     yuan(row["net_fen"]), row["late_count"], yuan(row["late_fen"])] for row in report["merchants"]]))
    hour_rows = []
    for row in report["merchants"]:
        for hour, (count, fen) in enumerate(row["by_hour"]):
            if count:
                hour_rows.append([row["merchant_id"], _name(row, lang), "%02d:00" % hour, count, yuan(fen)])
    result.append((t("分时段", "by hour"), [t("商户号", "merchant"), t("商户", "name"), t("时段", "hour"),
                                            t("笔数", "count"), t("金额（元）", "amount (yuan)")], hour_rows))
    result.append((t("终端", "terminals"),
                   [t("终端号", "terminal"), t("商户", "merchant"), t("状态", "status"), t("记录数", "records"),
                    t("起始序号", "first seq"), t("结束序号", "last seq"), t("未补齐缺号段", "open gaps"),
                    t("缺失序号数", "missing seqs"), t("距上次同步（秒）", "since last sync (s)"),
                    t("时钟偏差（毫秒）", "clock offset (ms)"), t("脱机记录", "offline records"),
                    t("脱机时段", "offline periods"), t("当日未同步", "silent")],
                   [[row["terminal_id"], _name(row, lang), code_names.name("terminal_status", row["status"], lang),
                     row["records"], row["first_seq"],
                     row["last_seq"], row["open_gap_count"], row["missing_seqs"],
                     _duration_s(row["since_last_sync_ms"]), row["clock_offset_ms"], row["offline_records"],
                     " ".join("%s-%s(%d)" % (_clock(p[0]), _clock(p[1]), p[2]) for p in row["offline_periods"]),
                     t("是", "yes") if row["silent"] else ""] for row in report["terminals"]]))
    channel_rows = []
    for row in report["channels"]:
        statement = row.get("statement")
        channel_rows.append([row["ledger_account_id"], _name(row, lang), code_names.name("ledger_kind", row["kind"], lang),
                             row["count"],
                             yuan(row["total_fen"]), row["late_count"],
                             "" if not statement else statement["matched"],
                             "" if not statement else statement["missing_ours_count"],
                             "" if not statement else statement["missing_theirs_count"],
                             "" if not statement else statement["amount_mismatch_count"]])
    result.append((t("充值渠道", "channels"),
                   [t("账户", "account"), t("渠道", "channel"), t("类型", "kind"), t("笔数", "count"),
                    t("金额（元）", "amount (yuan)"), t("往日补入", "late"), t("已勾对", "matched"),
                    t("我方缺失", "missing ours"), t("对方缺失", "missing theirs"), t("金额不符", "amount mismatch")],
                   channel_rows))
    result.append((t("异常", "anomalies"), [t("类型", "kind"), t("详情", "detail")], anomaly_rows(report, lang)))
    result.append((t("卡计数缺口", "card counter gaps"),
                   [t("卡号", "card"), t("代", "generation"), t("账户", "account"), t("缺失计数起", "missing from"),
                    t("缺失计数止", "missing to"), t("缺失次数", "missing taps"), t("发现于终端", "seen at terminal"),
                    t("序号", "seq"), t("发现时间", "noticed"), t("原因", "reason"),
                    t("待上传终端", "terminals to wait for")],
                   gap_rows(report, lang)))
    kinds = invariants["kinds"]
    result.append((t("试算", "invariants"),
                   [t("账户类型", "account kind"), t("期初（元）", "opening (yuan)"), t("发生额（元）", "movements (yuan)"),
                    t("期末（元）", "closing (yuan)"), t("相符", "ok")],
                   [[code_names.name("ledger_kind", kind, lang), yuan(row["opening_fen"]), yuan(row["movements_fen"]),
                     yuan(row["closing_fen"]),
                     t("是", "yes") if row["ok"] else t("否", "no")] for kind, row in sorted(kinds.items())]))
    names = {row["merchant_id"]: _name(row, lang) for row in report["merchants"]}
    result.append((t("商户核对", "merchant checks"),
                   [t("商户号", "merchant"), t("商户", "name"), t("期初待结（元）", "opening pending (yuan)"),
                    t("账户发生额（元）", "ledger movement (yuan)"), t("结算净额（元）", "settled net (yuan)"),
                    t("期末待结（元）", "closing pending (yuan)"), t("相符", "ok")],
                   [[row["merchant_id"], names.get(row["merchant_id"], ""),
                     "" if row["opening_pending_fen"] is None else yuan(row["opening_pending_fen"]),
                     yuan(row["movement_fen"]), yuan(row["net_fen"]), yuan(row["closing_pending_fen"]),
                     "" if row["ok"] is None else (t("是", "yes") if row["ok"] else t("否", "no"))]
                    for row in invariants.get("merchants", ())]))
    result.append((t("异常大额", "unusual totals"),
                   [t("项目", "line"), t("笔数", "count"), t("当日（元）", "today (yuan)"),
                    t("通常（元）", "usual (yuan)"), t("参考天数", "days of history"), t("提示", "flag")],
                   unusual_rows(report, lang)))
    return result


def _gap_summary_rows(report, lang):
    gaps = card_counter_gaps(report)
    if gaps is None:
        return []
    en = lang == "en"
    rows = [["card counter gaps" if en else "卡计数缺口", gaps["count"]]]
    for reason in sorted(gaps["by_reason"]):
        rows.append([("  " if en else "  其中：") + gap_reason_text(reason, lang), gaps["by_reason"][reason]])
    return rows


def gap_rows(report, lang="zh"):
    """The listed card tap-counter gaps (at most close_window.MAX_LISTED; the counts cover them all)."""
    gaps = card_counter_gaps(report)
    if gaps is None:
        return []
    rows = [[item["card_number"], item["generation"], item["account_id"], item["from_counter"], item["to_counter"],
             item["missing"], item["terminal_id"], item["seq"], _clock(item["noticed_ms"]),
             gap_reason_text(item["reason"], lang), " ".join(str(t) for t in item["waiting_terminals"])]
            for item in gaps["rows"]]
    if gaps["count"] > len(rows):
        rows.append([("%d more not listed" if lang == "en" else "另有 %d 条未列出") % (gaps["count"] - len(rows))]
                    + [""] * 10)
    return rows


def _who(holder, account_id, lang):
    """A person as finance reads them: name and staff/student number; the account id only in a
    report stored before holders were named."""
    if holder and holder.get("staff_number"):
        return "%s（%s）" % (holder["name"], holder["staff_number"])
    return ("account %d" if lang == "en" else "账户 %d") % account_id


def anomaly_rows(report, lang="zh"):
    en = lang == "en"
    t = (lambda zh, english: english if en else zh)
    anomalies = report["anomalies"]
    rows = []
    for item in anomalies["negative_accounts"]:
        rows.append([t("脱机透支", "driven negative"), t("%s 余额 %s，%s", "%s balances %s, %s") % (
            _who(item, item["account_id"], lang), ", ".join("%s %s" % (code_names.name("wallet", w, lang), yuan(f))
                                   for w, f in sorted(item["wallets_fen"].items())),
            t("已冻结", "blocked") if item["blocked"] else t("未冻结", "not blocked"))])
    for item in anomalies["cloned_cards"]:
        rows.append([t("疑似复制卡", "cloned card"), t("卡号 %d 第 %d 代（%s），%s", "card %d generation %d (%s), %s") % (
            item["card_number"], item["generation"],
            ", ".join(code_names.name("clone_kind", kind, lang) for kind in item["kinds"]),
            t("已禁用", "denied") if item["denied"] else t("未禁用", "not denied"))])
    for item in anomalies["revoked_terminal_records"]:
        rows.append([t("停用终端记录", "revoked terminal"), t("终端 %d 序号 %d", "terminal %d seq %d")
                     % (item["terminal_id"], item["seq"])])
    for item in anomalies["impossible_times"]:
        rows.append([t("时间不可能", "impossible time"), t("终端 %d 序号 %d", "terminal %d seq %d")
                     % (item["terminal_id"], item["seq"])])
    for item in anomalies["unbooked_records"]:
        rows.append([t("未入账", "not booked"), t("终端 %d 序号 %d（%s）", "terminal %d seq %d (%s)")
                     % (item["terminal_id"], item["seq"], code_names.name("unbooked_reason", item["reason"], lang))])
    for item in anomalies.get("card_mismatches", ()):
        owner = item["owner_account_id"]
        rows.append([t("卡号与账户不符", "card not the account's"),
                     t("终端 %d 序号 %d：卡号 %d 记在 %s 名下，卡属于%s，%s 元未扣款、未结算",
                       "terminal %d seq %d: card %d named %s, the card is %s; %s yuan not charged, not settled")
                     % (item["terminal_id"], item["seq"], item["card_number"],
                        _who(item.get("named"), item["named_account_id"], lang),
                        _who(item.get("owner"), owner, lang) if owner is not None else t("无人", "nobody's"),
                        yuan(item["amount_fen"]))])
    for channel in report["channels"]:
        statement = channel.get("statement")
        if not statement:
            continue
        for item in statement["amount_mismatch"]:
            rows.append([t("渠道金额不符", "channel amount mismatch"), "%s %s: %s / %s" % (
                _name(channel, lang), item["order_ref"], yuan(item["ours_fen"]), yuan(item["theirs_fen"]))])
        for item in statement["missing_ours"]:
            rows.append([t("我方缺失", "missing ours"), "%s %s %s" % (_name(channel, lang), item["order_ref"],
                                                                    yuan(item["amount_fen"]))])
        for item in statement["missing_theirs"]:
            rows.append([t("对方缺失", "missing theirs"), "%s %s %s" % (_name(channel, lang), item["order_ref"],
                                                                      yuan(item["amount_fen"]))])
    for item in anomalies["late_records"]:
        rows.append([t("往日补入", "late record"), t("终端 %d 序号 %d 属于 %s", "terminal %d seq %d belongs to %s")
                     % (item["terminal_id"], item["seq"], item["own_day"])])
    return rows


def cash_desk_section(closes):
    """The day's cash-desk closes (结账, sync_server/services/cash_desk.py) with their totals: what the
    clerks should have held, what they counted, and the closes that did not match (短款 / 长款)."""
    return {"closes": closes,
            "expected_fen": sum(close["expected_fen"] for close in closes),
            "counted_fen": sum(close["counted_fen"] for close in closes),
            "difference_fen": sum(close["difference_fen"] for close in closes),
            "with_difference": sum(1 for close in closes if close["difference_fen"])}


def sales_by_hour(report):
    """[(hour, count, fen)] over all merchants (own-day records)."""
    hours = [[0, 0] for _ in range(24)]
    for row in report["merchants"]:
        for hour, (count, fen) in enumerate(row["by_hour"]):
            hours[hour][0] += count
            hours[hour][1] += fen
    return [(hour, count, fen) for hour, (count, fen) in enumerate(hours)]



def unusual_line_name(line, lang="zh"):
    """A checked line's name: the channel's or the cash desk's, else the name stored with the line."""
    if line["key"] in code_names.CHECKED_TOTALS:
        return code_names.name("checked_total", line["key"], lang)
    return (line.get("name_en") if lang == "en" else line.get("name_zh")) or line["key"]


def unusual_rows(report, lang="zh"):
    """The checked lines and the cash recharges above the cap as table rows (unusual.py); a day
    closed before the check has none."""
    section = report.get("unusual")
    if section is None:
        return []
    en = lang == "en"
    t = (lambda zh, english: english if en else zh)
    factor = section["rule"]["factor"]
    rows = [[unusual_line_name(line, lang), line["count"], yuan(line["total_fen"]), yuan(line["usual_fen"]),
             line["history_days"],
             t("超过通常的 %d 倍", "above %d times the usual") % factor if line["flagged"] else ""]
            for line in section["lines"]]
    for item in section["large_cash_recharges"]:
        rows.append([t("单笔现金充值 %s %s（收款员 %s）", "one cash recharge %s %s (clerk %s)") % (
            item["staff_number"] or "", item["person_name"] or "", item["clerk"] or ""), 1, yuan(item["amount_fen"]),
            "", "", t("超过单笔上限 %s 元", "above the per-transaction cap of %s yuan") % yuan(section["cash_cap_fen"])])
    return rows


def unusual_lines(report, lang="zh"):
    """The flags of the day in words, one per line (the CLI summary and the day page's banner)."""
    section = report.get("unusual")
    if section is None:
        return []
    en = lang == "en"
    lines = []
    for line in section["lines"]:
        if line["flagged"]:
            lines.append(("%s: %s yuan, above %d times the usual %s yuan" if en else "%s：%s 元，超过通常（%s 元）的 %d 倍")
                         % ((unusual_line_name(line, lang), yuan(line["total_fen"]), section["rule"]["factor"],
                             yuan(line["usual_fen"])) if en else
                            (unusual_line_name(line, lang), yuan(line["total_fen"]), yuan(line["usual_fen"]),
                             section["rule"]["factor"])))
    for item in section["large_cash_recharges"]:
        lines.append(("one cash recharge of %s yuan to %s by %s, above the cap of %s yuan" if en else
                      "单笔现金充值 %s 元（%s，收款员 %s），超过单笔上限 %s 元")
                     % (yuan(item["amount_fen"]), item["staff_number"] or "?", item["clerk"] or "?",
                        yuan(section["cash_cap_fen"])))
    return lines
