"""The phone app (H5 pages for the cardholder's phone), under `/app/...`: today the payment code
(付款码, `/app/paycode`); the rest of the phone app grows beside it.

The pages are shells that hold no cardholder data: what they show comes from the cardholder API
(`/api/v1`, bearer token) and from the phone's own IndexedDB (the token, the pay-code key pair whose
private half is a non-extractable WebCrypto key, the certificate, the counter, the clock offset). So
a service worker (`/app/sw.js`, scope `/app/`) may keep the pages and their files, and the payment
code opens and refreshes with no network: every code is made and signed on the phone.

    GET /app/paycode                the payment code page (static/app/paycode.js does the work)
    GET /app/sw.js                  the service worker: which files to keep, under a cache named by
                                    their contents, so a changed file reaches phones at once
    GET /app/manifest.webmanifest   lets the phone put the app on its home screen

Headers: a strict Content-Security-Policy (scripts, styles and connections only to this origin; no
inline script; no framing), and no-store on every answer, so the HTTP cache never holds a copy: the
service worker keeps its own copy of the page for offline use, refreshed on every online visit.
"""
import functools
import hashlib
import json
import os

from flask import Blueprint, Response, current_app, g, redirect, render_template, url_for

from sync_server.web.page_text import PHONE_APP_TEXTS

phone_app = Blueprint("phone_app", __name__, url_prefix="/app")

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
# The files the service worker keeps, under the web blueprint's /web/static/ (each URL carries a hash
# of its contents, so a page never gets an old file from a cache under a new name).
ASSET_FILES = ("app/phone_app.css", "app/icon.svg", "vendor/qrcode.js", "app/base45.js", "app/app_store.js",
               "app/api.js", "app/paycode_wallet.js", "app/paycode.js")
PAGES = ("phone_app.paycode",)
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
    "worker-src 'self'", "manifest-src 'self'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"))


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


@phone_app.get("/")
def home():
    return redirect(url_for("phone_app.paycode"))


@phone_app.get("/paycode")
def paycode():
    return render_template("app/paycode.html", texts=_texts(), asset_url=asset_url)


@phone_app.get("/sw.js")
def service_worker():
    """The worker is served from /app/ so that its scope covers every page of the phone app."""
    assets = [asset_url(name) for name in ASSET_FILES]
    pages = [url_for(page) for page in PAGES]
    version = hashlib.sha256(json.dumps([assets, pages]).encode()).hexdigest()[:12]
    body = render_template("app/service_worker.js", assets=assets, pages=pages, version=version)
    return Response(body, mimetype="text/javascript")


@phone_app.get("/manifest.webmanifest")
def manifest():
    manifest_document = {
        "name": "校园一卡通 付款码" if g.lang != "en" else "Campus card payment code",
        "short_name": "付款码" if g.lang != "en" else "Pay code",
        "start_url": url_for("phone_app.paycode"), "scope": url_for("phone_app.home"), "display": "standalone",
        "background_color": "#f4f6f8", "theme_color": "#1f4e8c",
        "icons": [{"src": asset_url("app/icon.svg"), "sizes": "any", "type": "image/svg+xml"}],
    }
    return current_app.response_class(json.dumps(manifest_document, ensure_ascii=False),
                                      mimetype="application/manifest+json")
