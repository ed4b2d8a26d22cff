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
