"""The phone app (H5 pages for the cardholder's phone, as campus apps run inside WeChat, 企业微信 and
Alipay), under `/app/...`: the home page with the balance card and the services, and one page per
service, all on the cardholder API (`/api/v1`, bearer token).

    GET /app/                       home: the balance card (主钱包, 小钱包, 原卡余额) and the services
    GET /app/paycode                付款码 (static/app/paycode.js; works offline once enabled)
    GET /app/bills                  账单: date range and type, pages loaded as the holder scrolls
    GET /app/loss                   挂失 / 解挂 with the card PIN
    GET /app/pin                    修改密码
    GET /app/limits                 消费限额
    GET /app/phones                 绑定的手机: list, remove one
    GET /app/wallet-move            圈存: main -> water, with a receipt, booked once per form
    GET /app/water                  用水: the water wallet, recent water use, how to start water
    GET /app/recharge               充值: an order, the hand-off to the channel, its outcome
    GET /app/electricity            电费: building -> floor -> room, recent payments, pay
    GET /app/photo?kind=face|id_photo   人脸采集 / 证件照采集: camera or picked photo, uploaded
    GET /app/offline                what the service worker shows for a page it cannot fetch
    GET /app/sw.js                  the service worker: which files to keep, under a cache named by
                                    their contents, so a changed file reaches phones at once
    GET /app/manifest.webmanifest   lets the phone put the app on its home screen

The pages are shells that hold no cardholder data: what they show comes from the cardholder API with
the holder's own token and from the phone's own IndexedDB (the token, the pay-code key pair whose
private half is a non-extractable WebCrypto key, the last balance). So the server renders every page
the same for everyone (only the language differs), the service worker may keep them all, and a page
can never show another person's data: the API answers only for the token's own account. Each page
is plain HTML with one script module of its own (static/app/<page>.js) on the shared ones
(app_shell.js: sign-in and binding, fields and their messages, money in yuan).

Headers: a strict Content-Security-Policy (scripts, styles, images and connections only to this
origin; no inline script or style; no framing), and no-store on every answer, so the HTTP cache never
holds a copy: the service worker keeps its own copy of each page for offline use, refreshed on every
online visit.
"""
import functools
import hashlib
import json
import os

from flask import Blueprint, Response, current_app, g, render_template, url_for

from sync_server.services import electricity, history, limits, photos, recharge, wallet_move
from sync_server.web.page_text import PHONE_APP_TEXTS

phone_app = Blueprint("phone_app", __name__, url_prefix="/app")

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
# The files the service worker keeps, under the web blueprint's /web/static/ (each URL carries a hash
# of its contents, so a page never gets an old file from a cache under a new name).
ASSET_FILES = ("app/phone_app.css", "app/icon.svg", "app/icon-192.png", "app/icon-512.png", "vendor/qrcode.js",
               "app/base45.js", "app/app_store.js", "app/api.js", "app/app_shell.js", "app/paycode_wallet.js",
               "app/paycode.js", "app/home.js", "app/bills.js", "app/loss.js", "app/pin.js", "app/limits.js",
               "app/phones.js", "app/wallet_move.js", "app/water.js", "app/recharge.js", "app/electricity.js",
               "app/photo.js", "app/offline.js")
# endpoint: (path, template). Every one is a shell the service worker keeps.
PAGE_ROUTES = {
    "home": ("/", "app/home.html"),
    "paycode": ("/paycode", "app/paycode.html"),
    "bills": ("/bills", "app/bills.html"),
    "loss": ("/loss", "app/loss.html"),
    "pin": ("/pin", "app/pin.html"),
    "limits": ("/limits", "app/limits.html"),
    "phones": ("/phones", "app/phones.html"),
    "wallet_move": ("/wallet-move", "app/wallet_move.html"),
    "water": ("/water", "app/water.html"),
    "recharge": ("/recharge", "app/recharge.html"),
    "electricity": ("/electricity", "app/electricity.html"),
    "photo": ("/photo", "app/photo.html"),
    "offline": ("/offline", "app/offline.html"),
}
PAGES = tuple("phone_app." + endpoint for endpoint in PAGE_ROUTES)
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
    "worker-src 'self'", "manifest-src 'self'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"))
# The bounds the services enforce, handed to the scripts so a form refuses what the server would,
# before sending it (the server's refusal is still shown next to the field when it comes).
LIMITS = {
    "recharge_max_fen": recharge.MAX_ORDER_FEN,
    "move_max_fen": wallet_move.MAX_MOVE_FEN[("main", "water")],
    "electricity_max_fen": electricity.MAX_PAYMENT_FEN,
    "single_limit_max_fen": limits.MAX_SINGLE_LIMIT_FEN,
    "daily_limit_max_fen": limits.MAX_DAILY_LIMIT_FEN,
    "bills_max_days": history.MAX_RANGE_DAYS,
    "photo_max_bytes": photos.MAX_PHOTO_BYTES,
    "channels": list(recharge.ONLINE_CHANNELS),
}


@phone_app.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@functools.lru_cache(maxsize=1)
def _file_hashes(static_dir):
    """{file: first 12 hex digits of its SHA-256}, read once per process (files change with a deploy)."""
    hashes = {}
    for name in ASSET_FILES:
        with open(os.path.join(static_dir, name), "rb") as handle:
            hashes[name] = hashlib.sha256(handle.read()).hexdigest()[:12]
    return hashes


def asset_url(name):
    return url_for("web.static", filename=name, v=_file_hashes(STATIC_DIR)[name])


def _texts():
    index = 1 if g.lang == "en" else 0
    return {key: pair[index] for key, pair in PHONE_APP_TEXTS.items()}


def _page_view(endpoint, template):
    def view():
        return render_template(template, texts=_texts(), config=LIMITS, asset_url=asset_url, page=endpoint)
    view.__name__ = endpoint
    return view


for _endpoint, (_path, _template) in PAGE_ROUTES.items():
    phone_app.add_url_rule(_path, _endpoint, _page_view(_endpoint, _template), methods=("GET",))


@phone_app.get("/sw.js")
def service_worker():
    """The worker is served from /app/ so that its scope covers every page of the phone app."""
    assets = [asset_url(name) for name in ASSET_FILES]
    pages = [url_for(page) for page in PAGES]
    version = hashlib.sha256(json.dumps([assets, pages]).encode()).hexdigest()[:12]
    body = render_template("app/service_worker.js", assets=assets, pages=pages, version=version,
                           offline_page=url_for("phone_app.offline"), scope=url_for("phone_app.home"))
    return Response(body, mimetype="text/javascript")


@phone_app.get("/manifest.webmanifest")
def manifest():
    en = g.lang == "en"
    manifest_document = {
        "name": "Campus card" if en else "校园一卡通",
        "short_name": "Campus card" if en else "一卡通",
        "description": "Balance, payment code, bills and card services" if en else "余额、付款码、账单与卡务自助",
        "lang": "en" if en else "zh-CN",
        "start_url": url_for("phone_app.home"), "scope": url_for("phone_app.home"), "id": url_for("phone_app.home"),
        "display": "standalone", "orientation": "portrait",
        "background_color": "#eef1f5", "theme_color": "#1f4e8c",
        "icons": [{"src": asset_url("app/icon.svg"), "sizes": "any", "type": "image/svg+xml"},
                  {"src": asset_url("app/icon-192.png"), "sizes": "192x192", "type": "image/png"},
                  {"src": asset_url("app/icon-512.png"), "sizes": "512x512", "type": "image/png"}],
        "shortcuts": [{"name": "Payment code" if en else "付款码", "url": url_for("phone_app.paycode")},
                      {"name": "Bills" if en else "账单", "url": url_for("phone_app.bills")}],
    }
    return current_app.response_class(json.dumps(manifest_document, ensure_ascii=False),
                                      mimetype="application/manifest+json")
