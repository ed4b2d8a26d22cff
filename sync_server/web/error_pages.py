"""The pages people get when a page is not there (404), not theirs to see (403) or broke (500):
Chinese first with the English under it, in the site's style, and always a way on (the home of the
area they were in, its sign-in, the areas their roles open). A 500 says only that something went
wrong: the traceback goes to the server log (Flask logs it), never to the page.

Only the pages: the JSON API (/api/v1) and the terminals' API (/api/terminal) keep their own error
answers (sync_server/app.py sends only other paths here). The phone app (/app/) gets the page in its
own layout and under its own Content-Security-Policy. Other codes (400 of a stale form, 405...) keep
Flask's answer.

A 403 of auth.staff_required names the role the page needs (g.needed_role) and, for a signed-in
staff user, the areas their roles do open.
"""
from flask import current_app, g, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

from sync_server.web import phone_app as phone_app_module

HANDLED = (403, 404, 500)
# path prefix: (name zh, name en, home endpoint, sign-in endpoint or None), the first that matches
AREAS = (
    ("/finance", "财务结算", "finance pages", "finance_pages.index", "finance_pages.sign_in"),
    ("/hall", "服务大厅", "service hall", "hall_pages.search", "hall_pages.sign_in"),
    ("/portal", "校园卡网上服务", "campus card web service", "portal.home", "portal.sign_in"),
    ("/app", "手机一卡通", "campus card app", "phone_app.home", None),
)
ROLE_NAMES = {"hall": ("服务大厅", "service hall"), "finance": ("财务", "finance"), "admin": ("管理员", "admin"),
              "supervisor": ("主管", "supervisor")}
HEADINGS = {
    403: ("无权访问此页", "You may not open this page"),
    404: ("页面不存在", "Page not found"),
    500: ("服务器出错了", "Something went wrong on the server"),
}
EXPLANATIONS = {
    404: ("您访问的页面不存在或已移走，请检查地址，或从下面的链接继续。",
          "There is no page at this address: check it, or go on from a link below."),
    500: ("处理您的请求时出错，已记录在服务器日志中。请稍后再试；如果反复出现，请联系网络与信息化中心。",
          "The server could not finish your request; it has been logged. Try again later, and if it keeps "
          "happening, contact the Network and Information Centre."),
}


def _area():
    path = request.path
    return next((area for area in AREAS if path == area[0] or path.startswith(area[0] + "/")), None)


def _staff():
    staff = getattr(g, "staff", None)
    return staff if session.get("kind") == "staff" and staff else None


def _ways(code, area):
    """[(id, zh, en, url)] of the links the page offers: the area's home (not on a 403: that is the
    page refused), the homes of the areas the signed-in staff user's roles open, the area's sign-in;
    outside every area the three front doors."""
    if area is None:
        return [("go-portal", "校园卡网上服务", "Campus card web service", url_for("portal.home")),
                ("go-hall", "服务大厅（工作人员）", "Service hall (staff)", url_for("hall_pages.sign_in")),
                ("go-finance", "财务结算（工作人员）", "Finance (staff)", url_for("finance_pages.sign_in"))]
    prefix, zh, en, home, sign_in = area
    staff = _staff()
    ways = []
    if code != 403:
        ways.append(("go-home", "返回%s首页" % zh, "Back to the %s home page" % en, url_for(home)))
    if staff is not None:
        for other_prefix, other_zh, other_en, other_home, _sign_in in AREAS:
            if other_prefix != prefix and other_prefix.strip("/") in staff["roles"]:
                ways.append(("go-" + other_prefix.strip("/"), "前往%s" % other_zh, "Go to the %s" % other_en,
                             url_for(other_home)))
    if sign_in and (code == 403 or staff is None):
        ways.append(("go-sign-in", "以其他账号登录" if code == 403 else "登录",
                     "Sign in as someone else" if code == 403 else "Sign in", url_for(sign_in)))
    return ways


def _forbidden_text():
    """Why a 403: the role the page needs and who is signed in, in both languages."""
    role = getattr(g, "needed_role", None)
    staff = _staff()
    zh = en = ""
    if staff is not None:
        zh = "您当前以 %s（%s）登录。" % (staff["display_name"], staff["username"])
        en = "You are signed in as %s (%s). " % (staff["display_name"], staff["username"])
    if role is None:
        return (zh + "您的账号没有打开此页的权限。", en + "Your account may not open this page.")
    role_zh, role_en = ROLE_NAMES.get(role, (role, role))
    return (zh + "此页需要「%s」角色：请联系管理员开通，或前往下面您有权限的页面。" % role_zh,
            en + "This page needs the %s role: ask an administrator for it, or go where your roles let you "
            "(below)." % role_en)


def _texts(code):
    heading = HEADINGS[code]
    explanation = _forbidden_text() if code == 403 else EXPLANATIONS[code]
    return heading, explanation


def _sign_out_endpoint(area):
    """The sign-out of the signed-in staff user's area (a form on the page), None for others."""
    if _staff() is None:
        return None
    return "finance_pages.sign_out" if area is not None and area[0] == "/finance" else "hall_pages.sign_out"


def error_page(error):
    """The answer to an HTTP error on a page: ours for 403 / 404 / 500, Flask's for the rest."""
    if not isinstance(error, HTTPException) or error.code not in HANDLED:
        return error
    code = error.code
    area = _area()
    try:
        heading, explanation = _texts(code)
        context = {"code": code, "heading": heading, "explanation": explanation, "ways": _ways(code, area),
                   "area": area, "sign_out": _sign_out_endpoint(area)}
        if area is not None and area[0] == "/app":
            response = current_app.make_response((render_template(
                "app/error.html", texts=phone_app_module._texts(), config=phone_app_module.LIMITS,
                asset_url=phone_app_module.asset_url, page="error", **context), code))
            response.headers["Content-Security-Policy"] = phone_app_module.CONTENT_SECURITY_POLICY
        else:
            response = current_app.make_response((render_template("error.html", **context), code))
    except Exception:       # the error page itself must not fail: a plain answer, still without details
        current_app.logger.exception("error page %d could not be drawn", code)
        heading = HEADINGS[code]
        response = current_app.make_response(("%s / %s" % heading, code, {"Content-Type": "text/plain; charset=utf-8"}))
    response.headers["Cache-Control"] = "no-store"
    return response
