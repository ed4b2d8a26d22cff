"""Every prompt and refusal a terminal shows or speaks, as a code with Chinese and English text.

The core only ever emits codes (`Show(code, fields)`); the shell turns them into text for the
display, the speaker or a log line. Chinese is the default, English is available for visiting
staff and for logs. Fields are filled with `%(name)s`; money fields are given in fen and shown in
yuan with two decimals (`amount_fen` -> `amount`, `balance_fen` -> `balance`). A message given an
`amount_fen` it does not name (a refusal while the amount is still due) ends with "（应付…元）".

Limits: no plural rules, no locale other than zh/en; an unknown language falls back to Chinese.
"""

TAP_CARD = "tap_card"
ENTER_AMOUNT = "enter_amount"
AMOUNT_DUE = "amount_due"
PROCESSING = "processing"
ACCEPTED = "accepted"
INSUFFICIENT_BALANCE = "insufficient_balance"
CARD_LOST = "card_lost"
UNKNOWN_CARD = "unknown_card"
ACCOUNT_NOT_SYNCED = "account_not_synced"
LAST_TAP = "last_tap"
CARD_EXPIRED = "card_expired"
CARD_REPLACED = "card_replaced"
ACCOUNT_BLOCKED = "account_blocked"
NO_WALLET = "no_wallet"
OVER_SINGLE_LIMIT_PIN = "over_single_limit_pin"
OVER_DAILY_LIMIT_PIN = "over_daily_limit_pin"
PIN_NEEDS_NETWORK = "pin_needs_network"
PIN_CHECKING = "pin_checking"
PIN_WRONG = "pin_wrong"
PIN_WRONG_TRIES = "pin_wrong_tries"
PIN_LOCKED = "pin_locked"
PIN_INVALID = "pin_invalid"
PIN_TIMEOUT = "pin_timeout"
OFFLINE_CAP_REACHED = "offline_cap_reached"
TAP_AGAIN = "tap_again"
REPEAT_TAP = "repeat_tap"
TERMINAL_REVOKED = "terminal_revoked"
TERMINAL_NOT_SYNCED = "terminal_not_synced"
INVALID_AMOUNT = "invalid_amount"
UNKNOWN_DISH = "unknown_dish"
CANCELLED = "cancelled"
WATER_READY = "water_ready"
WATER_AUTHORISED = "water_authorised"
WATER_DISPENSING = "water_dispensing"
WATER_DONE = "water_done"
WATER_CAP_REACHED = "water_cap_reached"
WATER_METER_STALLED = "water_meter_stalled"
WATER_GRANT_EXPIRED = "water_grant_expired"
WATER_BUSY = "water_busy"
WATER_RESUMED = "water_resumed"
JOURNAL_FAILED = "journal_failed"
READER_ERROR = "reader_error"
PAYCODE_CHECKING = "paycode_checking"
PAYCODE_INVALID = "paycode_invalid"
PAYCODE_FOREIGN = "paycode_foreign"
PAYCODE_EXPIRED = "paycode_expired"
PAYCODE_FUTURE = "paycode_future"
PAYCODE_CERT_EXPIRED = "paycode_cert_expired"
PAYCODE_USED = "paycode_used"
PAYCODE_REVOKED = "paycode_revoked"
PAYCODE_OFFLINE_CAP = "paycode_offline_cap"
PAYCODE_BUSY = "paycode_busy"
ACTIVATING = "activating"
ACTIVATED = "activated"
ACTIVATED_AMOUNTS = "activated_amounts"
ALREADY_ACTIVATED = "already_activated"
ACTIVATION_REFUSED = "activation_refused"
ACTIVATION_UNAVAILABLE = "activation_unavailable"
ACTIVATION_NOT_RECORDED = "activation_not_recorded"
CARD_UNREADABLE_OLD = "card_unreadable_old"

# code -> (Chinese, English)
TEXTS = {
    TAP_CARD: ("请刷卡", "Please tap your card"),
    AMOUNT_DUE: ("应付%(amount)s元，请刷卡", "%(amount)s yuan: please tap your card"),
    ENTER_AMOUNT: ("请输入金额", "Please enter the amount"),
    PROCESSING: ("正在处理，请勿移开卡片", "Processing, keep the card in place"),
    ACCEPTED: ("交易成功 消费%(amount)s元 余额%(balance)s元 %(name)s",
               "Paid %(amount)s yuan, balance %(balance)s yuan, %(name)s"),
    INSUFFICIENT_BALANCE: ("余额不足", "Insufficient balance"),
    CARD_LOST: ("卡片已挂失", "This card has been reported lost"),
    UNKNOWN_CARD: ("未知卡片", "Unknown card"),
    LAST_TAP: ("上笔交易 %(time)s 卡号%(card_number)s 消费%(amount)s元 流水%(seq)s",
               "Last tap %(time)s card %(card_number)s paid %(amount)s yuan, seq %(seq)s"),
    ACCOUNT_NOT_SYNCED: ("本机尚无该账户信息，请稍后再刷", "This terminal has no balance for the account yet; try again shortly"),
    CARD_EXPIRED: ("卡片已过期", "This card has expired"),
    CARD_REPLACED: ("卡片已补办，旧卡失效", "This card was replaced; the old card is no longer valid"),
    ACCOUNT_BLOCKED: ("账户已冻结", "This account is blocked"),
    NO_WALLET: ("身份卡不能消费", "Identity-only card: no payments"),
    OVER_SINGLE_LIMIT_PIN: ("超过单笔限额，请输入密码", "Over the single-payment limit: please enter your PIN"),
    OVER_DAILY_LIMIT_PIN: ("超过当日限额，请输入密码", "Over the daily limit: please enter your PIN"),
    PIN_NEEDS_NETWORK: ("超过限额，脱机无法验证密码", "Over the limit: the PIN cannot be checked offline"),
    PIN_CHECKING: ("正在验证密码", "Checking the PIN"),
    PIN_WRONG: ("密码错误", "Wrong PIN"),
    PIN_WRONG_TRIES: ("密码错误，还可尝试%(tries)s次", "Wrong PIN: %(tries)s tries left"),
    PIN_LOCKED: ("密码已锁定，请%(minutes)s分钟后再试", "PIN locked: try again in %(minutes)s minutes"),
    PIN_INVALID: ("请输入6位数字密码", "The PIN is 6 digits"),
    PIN_TIMEOUT: ("密码输入超时", "PIN entry timed out"),
    OFFLINE_CAP_REACHED: ("脱机消费已达上限", "Offline spending cap reached"),
    TAP_AGAIN: ("请重新刷卡", "Card removed too early: please tap again"),
    REPEAT_TAP: ("重复刷卡，请收银员确认", "Repeated tap: cashier, please confirm"),
    TERMINAL_REVOKED: ("终端已停用", "This terminal has been revoked"),
    TERMINAL_NOT_SYNCED: ("终端未完成首次同步", "This terminal has not completed its first sync"),
    INVALID_AMOUNT: ("金额无效", "Invalid amount"),
    UNKNOWN_DISH: ("菜品不存在", "Unknown dish"),
    CANCELLED: ("交易已取消", "Cancelled"),
    WATER_READY: ("请刷卡或扫码用水", "Tap a card or scan to draw water"),
    WATER_AUTHORISED: ("余额%(balance)s元，按开始出水", "Balance %(balance)s yuan: press Start"),
    WATER_DISPENSING: ("出水中，再次刷卡或按结束停止", "Dispensing: tap again or press End to stop"),
    WATER_DONE: ("用水结束，扣款%(amount)s元", "Done: %(amount)s yuan charged"),
    WATER_CAP_REACHED: ("已达本次额度，扣款%(amount)s元", "Limit reached: %(amount)s yuan charged"),
    WATER_METER_STALLED: ("水表无脉冲，已关阀，请联系管理员", "Meter stalled: valve closed, call staff"),
    WATER_GRANT_EXPIRED: ("授权已过期，请重新扫码", "Grant expired: scan again"),
    WATER_BUSY: ("正在出水，请先结束", "Already dispensing: press End first"),
    WATER_RESUMED: ("断电前的用水已结算，扣款%(amount)s元", "Water before the power cut settled: %(amount)s yuan"),
    JOURNAL_FAILED: ("记账失败，未扣款，请联系管理员", "Could not record the payment; nothing charged"),
    READER_ERROR: ("读卡器故障，请重新刷卡", "Reader error: please tap again"),
    PAYCODE_CHECKING: ("正在验证付款码", "Checking the payment code"),
    PAYCODE_INVALID: ("无效的付款码，请出示校园卡付款码", "Not a campus payment code"),
    PAYCODE_FOREIGN: ("付款码校验失败，非本校付款码", "The payment code does not verify: not issued by this campus"),
    PAYCODE_EXPIRED: ("付款码已过期，请刷新后重试", "Payment code expired: refresh it and scan again"),
    PAYCODE_FUTURE: ("付款码时间异常，请校准手机时间", "Payment code from the future: check the phone's clock"),
    PAYCODE_CERT_EXPIRED: ("付款码需联网更新，请打开网络后刷新", "The phone must go online to renew its payment code"),
    PAYCODE_USED: ("付款码已使用，请刷新后重试", "Payment code already used: refresh it"),
    PAYCODE_REVOKED: ("付款码已停用", "This payment code has been stopped"),
    PAYCODE_OFFLINE_CAP: ("付款码脱机消费已达上限，请刷卡支付", "Offline payment-code limit reached: pay by card"),
    PAYCODE_BUSY: ("付款码暂时无法受理，请刷卡支付", "Payment codes cannot be taken right now: pay by card"),
    # The activation unit (激活机): ACTIVATING and ACTIVATED are also what it speaks, word for word
    # as the go-live notice gives them; the screen shows ACTIVATED_AMOUNTS.
    ACTIVATING: ("卡片激活中，请勿移开卡片", "Activating the card: keep it in place"),
    ACTIVATED: ("卡片激活成功", "Card activated"),
    ACTIVATED_AMOUNTS: ("卡片激活成功 原卡余额%(main)s元 小钱包%(water)s元",
                        "Card activated: old balance %(main)s yuan, water purse %(water)s yuan"),
    ALREADY_ACTIVATED: ("卡片已激活", "This card is already activated"),
    ACTIVATION_REFUSED: ("该卡无法激活，请到原一卡通中心处理",
                         "This card cannot be activated: please take it to the old card centre"),
    ACTIVATION_UNAVAILABLE: ("暂时无法激活，请稍后重新刷卡", "Activation is not available right now: tap again later"),
    ACTIVATION_NOT_RECORDED: ("激活记录失败，请稍后重新刷卡", "Could not record the activation: tap again later"),
    CARD_UNREADABLE_OLD: ("卡内余额无法读取，请到原一卡通中心处理",
                          "The card's old balance cannot be read: please take it to the old card centre"),
}

LANGUAGES = ("zh", "en")

# Added to a message that does not name the amount itself when an amount is still due.
DUE_SUFFIX = ("（应付%(amount)s元）", " (%(amount)s yuan due)")


def yuan(amount_fen):
    """12345 -> '123.45'; negative balances keep their sign."""
    sign = "-" if amount_fen < 0 else ""
    amount_fen = abs(amount_fen)
    return "%s%d.%02d" % (sign, amount_fen // 100, amount_fen % 100)


def text(code, lang="zh", **fields):
    """The display text of `code` in `lang`, with `*_fen` fields also offered in yuan."""
    zh, en = TEXTS[code]
    template = en if lang == "en" else zh
    if "amount_fen" in fields and "%(amount)s" not in template:
        template += DUE_SUFFIX[1 if lang == "en" else 0]
    values = {"amount": "", "balance": "", "name": "", "time": "", "card_number": "", "seq": "", "main": "",
              "water": "", "tries": "", "minutes": ""}
    for name in fields:
        value = fields[name]
        values[name] = value
        if name.endswith("_fen") and isinstance(value, int):
            values[name[:-4]] = yuan(value)
    return (template % values).strip()
