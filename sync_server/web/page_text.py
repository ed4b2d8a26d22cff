"""What a page says and how: its language (Chinese first; `?lang=en` or `?lang=zh` sets a `lang`
cookie that later pages follow) and the formats of money, times and dates that templates and views
share. Filled into the Jinja environment by sync_server/web/__init__.py's init_app.
"""
import datetime

from flask import current_app, g, request

LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE_S = 365 * 24 * 3600
BEIJING = datetime.timezone(datetime.timedelta(hours=8))


def pick_lang():
    asked = request.args.get("lang")
    if asked in ("zh", "en"):
        g.lang, g.set_lang_cookie = asked, True
    else:
        g.lang, g.set_lang_cookie = ("en" if request.cookies.get(LANG_COOKIE) == "en" else "zh"), False


def remember_lang(response):
    if getattr(g, "set_lang_cookie", False):
        response.set_cookie(LANG_COOKIE, g.lang, max_age=LANG_COOKIE_MAX_AGE_S, httponly=True, samesite="Lax",
                            secure=current_app.config["SESSION_COOKIE_SECURE"])
    return response


def t(zh, en):
    """The text in the page's language (templates call it as t("余额", "Balance"))."""
    return en if getattr(g, "lang", "zh") == "en" else zh


def yuan(fen):
    """Fen as yuan with two decimals, from integers only (no float rounding on money)."""
    if fen is None:
        return ""
    sign = "-" if fen < 0 else ""
    return "%s%d.%02d" % (sign, abs(fen) // 100, abs(fen) % 100)


def signed_yuan(fen):
    return ("+" if fen > 0 else "") + yuan(fen)


def error_text(error):
    """A refusal's text in the page language (BilingualError), else the exception's own text."""
    text = getattr(error, "text", None)
    return text(g.lang) if callable(text) else str(error)


def beijing_time(time_ms):
    return datetime.datetime.fromtimestamp(time_ms / 1000, BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def expiry_date(yyyymmdd):
    if not yyyymmdd:
        return ""
    year, month, day = yyyymmdd // 10000, yyyymmdd // 100 % 100, yyyymmdd % 100
    return ("%d-%02d-%02d" % (year, month, day)) if getattr(g, "lang", "zh") == "en" else \
        ("%d年%d月%d日" % (year, month, day))


# The phone app's messages that its scripts show (sync_server/web/phone_app.py hands the page those of
# its language). The server's own refusals carry both languages already (message_zh / message_en).
# "%s" / "%d" are filled in by the script.
PHONE_APP_TEXTS = {
    "offline": ("离线", "Offline"),
    "balance_as_of": ("余额更新于 %s", "Balance as of %s"),
    "seconds_left": ("%d 秒后自动刷新", "New code in %d s"),
    "paid": ("支付成功 ¥%s", "Paid ¥%s"),
    "network_needed": ("网络不可用，请联网后重试", "No network: try again when online"),
    "cert_expired": ("付款码已过期，请联网后打开本页更新", "The payment code has expired: open this page online to renew it"),
    "stopped": ("付款码已停用", "The payment code is stopped"),
    "stop_confirm": ("再点一次确认停用", "Tap again to stop it"),
    "pin_changed": ("交易密码已修改，请用新密码开通付款码", "PIN changed: enable the payment code with the new PIN"),
    "pin_mismatch": ("两次输入的新密码不一致", "the two new PINs differ"),
    "pin_required": ("请输入交易密码", "enter the card PIN"),
    "fields_required": ("请填写姓名、学工号和交易密码", "enter the name, the staff/student number and the PIN"),
    "no_ed25519": ("此浏览器不支持付款码所需的 Ed25519 签名，请升级浏览器",
                   "this browser lacks the Ed25519 signatures the payment code needs: update it"),
    "offline_tip": ("离线时，每次付款后请点刷新再付下一笔", "Offline: tap refresh after each payment before the next"),
    "error": ("出错了，请重试", "Something went wrong: try again"),
}
