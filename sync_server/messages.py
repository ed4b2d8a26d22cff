"""User-facing texts of the server, Chinese first, English available.

API errors carry both ("中文 / English") because a terminal or a technician may read either; the CLI
picks one with `--lang` (or YKT_LANG).
"""
import os


class BilingualError(Exception):
    """A refusal a person reads: carries the Chinese and the English text; `text(lang)` picks one."""

    def __init__(self, zh, en):
        Exception.__init__(self, "%s / %s" % (zh, en))
        self.zh = zh
        self.en = en

    def text(self, lang="zh"):
        return self.en if lang == "en" else self.zh


MESSAGES = {
    # sync API errors
    "bad_auth": ("认证头缺失或格式错误", "authentication headers missing or malformed"),
    "unknown_terminal": ("未登记的终端", "unknown terminal"),
    "bad_mac": ("请求签名无效", "request MAC does not verify"),
    "terminal_revoked": ("终端已停用", "terminal revoked"),
    "not_activation_unit": ("该终端不是激活机", "this terminal is not an activation unit"),
    "replayed_counter": ("请求计数器未递增（重放）", "request counter not increasing (replay)"),
    "body_too_large": ("请求体过大", "request body too large"),
    "batch_too_large": ("一次上传的记录过多", "too many records in one batch"),
    "malformed_cbor": ("请求体不是有效的 CBOR", "request body is not valid CBOR"),
    "bad_request": ("请求格式错误", "request does not have the expected shape"),
    "bad_record": ("记录无效", "invalid record"),
    "wrong_terminal": ("记录属于其他终端", "record belongs to another terminal"),
    "wrong_merchant": ("记录的商户与终端不符", "record merchant does not match the terminal"),
    "wrong_category": ("记录的消费类别与终端商户不符", "record category does not match the terminal's merchant"),
    "conflicting_records": ("同一序号的两条不同记录", "two different records with the same seq"),
    "journal_mismatch": ("终端流水与服务器已存记录不符，请重新登记（初始化）该终端",
                         "terminal journal does not match the server: re-provision the terminal"),
    "not_found": ("不存在", "not found"),
    "method_not_allowed": ("不支持该请求方法", "method not allowed"),
    # PIN check
    "pin_ok": ("密码正确", "PIN correct"),
    "pin_wrong": ("密码错误", "wrong PIN"),
    "pin_locked": ("密码错误次数过多，已锁定，请稍后再试或到服务大厅办理",
                   "too many wrong PINs: locked, try later or visit the service hall"),
    "pin_format": ("密码应为6位数字", "the PIN must be 6 digits"),
    "account_unknown": ("账户不存在", "unknown account"),
    "account_blocked": ("账户已冻结", "account blocked"),
    "account_in_debt": ("账户余额为负，请先充值", "account balance negative: recharge first"),
}


def lang_from_env(default="zh"):
    value = os.environ.get("YKT_LANG", default)
    return "en" if value.lower().startswith("en") else "zh"


def text(code, lang="zh"):
    zh, en = MESSAGES[code]
    return en if lang == "en" else zh


def both(code):
    zh, en = MESSAGES[code]
    return "%s / %s" % (zh, en)
