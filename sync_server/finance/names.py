"""What finance's pages and exports call the codes the server stores: one table per kind of code,
(Chinese, English) each, so the day page, the CSV files, the workbook and `ykt finance close` never
show `canteen`, `cash_desk` or `alipay` to a person. The stored report and the .json export keep the
codes (they are for programs).

    name(kind, code, lang)   the code's name in the language; an unknown code shows as itself, so a
                             code added later is still visible rather than silently blank
"""
from firmware.core import wallets as wallet_rules
from sync_server.services.wallet_move import WALLET_NAMES

MERCHANT_CATEGORIES = {
    wallet_rules.CATEGORY_CANTEEN: ("食堂", "canteen"),
    wallet_rules.CATEGORY_WATER: ("用水", "water"),
    wallet_rules.CATEGORY_ELECTRICITY: ("电费", "electricity"),
    wallet_rules.CATEGORY_ACTIVATION: ("旧卡激活", "old card activation"),
}
TERMINAL_STATUSES = {"active": ("在用", "in use"), "revoked": ("已停用", "revoked")}
LEDGER_KINDS = {
    "wallet": ("持卡人钱包", "cardholder wallets"),
    "cash_desk": ("服务大厅现金", "service hall cash desk"),
    "channel": ("线上充值渠道", "online recharge channel"),
    "merchant": ("商户", "merchants"),
    "fee_income": ("手续费收入", "fee income"),
    "legacy_source": ("旧系统余额迁移", "old system balances"),
    "hold": ("用水授权冻结", "water grant holds"),
}
RECHARGE_CHANNELS = {
    "cash": ("现金（服务大厅）", "cash (service hall)"),
    "alipay": ("支付宝", "Alipay"),
    "wechat": ("微信支付", "WeChat Pay"),
    "ccb": ("建行龙支付", "CCB Long Pay"),
}
# the day totals the close compares with the usual (unusual.py): each recharge channel and the cash desk
CHECKED_TOTALS = dict(RECHARGE_CHANNELS, cash_desk=("服务大厅收现合计（充值与手续费）",
                                                    "service hall cash taken (recharges and fees)"))
CLONE_KINDS = {"repeat": ("计数重复", "counter repeated"), "backwards": ("计数倒退", "counter ran backwards")}
UNBOOKED_REASONS = {
    "unknown_account": ("账户不存在", "unknown account"),
    "card_mismatch": ("卡号与账户不符", "card not the account's"),
    "unknown_grant": ("用水授权无效", "unknown water grant"),
    "unknown_credential": ("付款码无效", "unknown payment code"),
    "unknown_serial": ("旧卡序列号不在导出中", "old card serial not in the export"),
    "not_the_ticket": ("新卡与旧卡不对应", "new card not the old serial's"),
    "unbooked": ("未入账", "not booked"),
}
WALLETS = {wallet: (zh, en) for wallet, (zh, en) in WALLET_NAMES.items()}

TABLES = {"merchant_category": MERCHANT_CATEGORIES, "terminal_status": TERMINAL_STATUSES, "ledger_kind": LEDGER_KINDS,
          "recharge_channel": RECHARGE_CHANNELS, "checked_total": CHECKED_TOTALS, "clone_kind": CLONE_KINDS, "unbooked_reason": UNBOOKED_REASONS,
          "wallet": WALLETS}


def name(kind, code, lang="zh"):
    """The name of `code` among the codes of `kind` (a key of TABLES) in `lang`."""
    if code is None:
        return ""
    names = TABLES[kind].get(code)
    if names is None:
        return str(code)
    return names[1] if lang == "en" else names[0]


def every_code():
    """Every code with a name, for the tests that look for a raw code on a page."""
    return {str(code) for table in TABLES.values() for code in table if isinstance(code, str)}
