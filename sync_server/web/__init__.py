"""Web pages for people: the cardholder portal (`/portal/...`), the service-hall pages (`/hall/...`) and
the phone app's pages (`/app/...`, with their own headers: sync_server/web/phone_app.py).

`init_app(app)` wires them into the app factory: the session secret (derived from the master key),
cookie flags, the language switch and the template helpers (sync_server/web/page_text.py). Views
are thin: they check who is signed in, read the form, call the service functions on a db connection
and render. Business rules live in `sync_server/registry.py` and `sync_server/services/`, not here.

    YKT_SIMULATED_PAYMENTS=1   shows a "simulated payment" button on pending recharge orders (demo)
    YKT_COOKIE_SECURE=1        (config COOKIE_SECURE) marks every cookie the server sets Secure, for a
                               site served over HTTPS (also behind a TLS-terminating proxy); off by
                               default so plain-HTTP test and demo sites keep working
Session timeouts: see sync_server/web/auth.py. Error pages (403, 404, 500 of the pages, not of the
APIs): sync_server/web/error_pages.py, called by the app factory's HTTP error handler.
"""
import os

from flask import Blueprint, request

from sync_server.web import auth
from sync_server.web.error_pages import error_page  # noqa: F401  (the app factory's HTTP error handler uses it)
from sync_server.web.hall_pages import hall_pages
from sync_server.web.phone_app import phone_app
from sync_server.web.page_text import (beijing_time, expiry_date, pick_lang, remember_lang, signed_yuan, t,
                                       yuan)
from sync_server.web.portal import portal


def _no_store(response):
    # pages show balances and names: never kept by shared caches or the browser's back-forward cache
    if request.blueprint in ("portal", "hall_pages"):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
    return response


def _flag(variable):
    """An on/off environment setting; anything unrecognised stops the start rather than guessing
    (a mistyped YKT_COOKIE_SECURE must not quietly leave cookies without Secure)."""
    value = os.environ.get(variable, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("%s 应为 1 或 0 / %s must be 1 or 0, not %r" % (variable, variable, value))


def init_app(app):
    master_key = app.extensions["ykt"].master_key
    app.secret_key = auth.session_secret(master_key)
    app.config.setdefault("COOKIE_SECURE", _flag("YKT_COOKIE_SECURE"))
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_NAME="ykt_session", SESSION_COOKIE_SECURE=bool(app.config["COOKIE_SECURE"]))
    auth.configure_session_timeouts(app)
    # The portal's "simulated payment" button plays the payment channel: for demos and tests only,
    # never on a real site (it would credit money nobody paid).
    app.config.setdefault("SIMULATED_PAYMENTS", os.environ.get("YKT_SIMULATED_PAYMENTS") == "1")
    app.before_request(pick_lang)
    app.after_request(remember_lang)
    app.after_request(_no_store)
    app.jinja_env.globals.update(t=t, csrf_token=auth.csrf_token, csrf_field=auth.CSRF_FIELD,
                                 form_key=auth.form_key, form_key_field=auth.FORM_KEY_FIELD)
    app.jinja_env.filters.update(yuan=yuan, signed_yuan=signed_yuan, beijing_time=beijing_time,
                                 expiry_date=expiry_date)

    app.register_blueprint(Blueprint("web", __name__, template_folder="templates", static_folder="static",
                                     static_url_path="/web/static"))
    app.register_blueprint(portal)
    app.register_blueprint(hall_pages)
    from sync_server.web.admin_pages import admin_pages
    app.register_blueprint(admin_pages)      # administrators and technicians (/admin)
    app.register_blueprint(phone_app)
