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
    "key_retired": ("终端密钥已更换，旧密钥不再有效：请重新刷机（tools/flash.py）",
                    "this terminal's key was replaced and the old one no longer works: flash it again (tools/flash.py)"),
    "not_activation_unit": ("该终端不是激活机", "this terminal is not an activation unit"),
    "replayed_counter": ("请求计数器未递增（重放）", "request counter not increasing (replay)"),
    "no_release": ("没有向本终端推送这个固件版本", "this release is not offered to this terminal"),
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
    "pin_wrong_tries": ("密码错误，还可尝试 %d 次", "wrong PIN: %d tries left"),
    "pin_wrong_last_try": ("密码错误，还可尝试 1 次；再错将锁定 %d 分钟", "wrong PIN: 1 try left, then it locks for %d minutes"),
    "pin_locked_until": ("密码错误次数过多，已锁定，请 %d 分钟后（北京时间 %s 以后）再试，或到服务大厅办理",
                         "too many wrong PINs: locked, try again in %d minutes (after %s Beijing time) or visit "
                         "the service hall"),
    # a chosen PIN refused as too easy to guess (pin_rules.weak_pin_reason)
    "pin_weak_same_digit": ("新密码不能是同一数字重复六次（如 111111），请另选",
                            "the new PIN cannot be one digit six times (like 111111): choose another"),
    "pin_weak_run": ("新密码不能是连续数字（如 123456、654321），请另选",
                     "the new PIN cannot be a run of digits (like 123456 or 654321): choose another"),
    "pin_weak_birthday": ("新密码不能含有身份证号中的出生日期（月日或年月），请另选",
                          "the new PIN cannot contain the birth date of the ID number (month and day, or year and "
                          "month): choose another"),
    "pin_weak_initial": ("新密码不能是初始密码（身份证号后六位），请另选",
                         "the new PIN cannot be the initial PIN (the last six of the ID number): choose another"),
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
