"""The Flask app factory: configuration from a data directory, one blueprint per audience.

    YKT_DATA_DIR          data directory (default ./data): holds ykt.sqlite3 and master.key
    YKT_MASTER_KEY_FILE   site master key file (default <data_dir>/master.key), mode 0600
    <data_dir>/channels/  the payment channels' settings and keys (config CHANNELS_DIR), one JSON file
                          per channel (sync_server/channels/); a channel without one is not configured
    YKT_PROXY_HOPS        (config PROXY_HOPS) how many reverse proxies stand in front of the server
                          (default 0): their X-Forwarded-For / -Proto are then believed, so the
                          client's own address is what binding throttles by, not the proxy's. With
                          0 those headers are ignored, so a client cannot pick its address.

The master key lives in `app.extensions["ykt"]`, never in `app.config` (which tools like to print).
Blueprints, one per audience: `terminal_api` (sync, PIN check, CBOR), `cardholder_api` (phone app and
kiosks, JSON under /api/v1), the web pages (`sync_server/web`: cardholder portal /portal, service hall
/hall), `finance` (/finance day-close reports) and `health`.
"""
import os

import cbor2
from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from firmware.core import protocol
from sync_server import channels, db, keys, messages, numbers, pg_store, private_dir, web

# Cap on any request body (Flask MAX_CONTENT_LENGTH): forms and JSON are parsed in memory, and no
# audience needs more (the terminal API has its own, lower protocol.MAX_BODY_BYTES).
MAX_REQUEST_BYTES = 1024 * 1024
assert protocol.MAX_BODY_BYTES <= MAX_REQUEST_BYTES

health = Blueprint("health", __name__)


@health.get("/health")
def health_check():
    conn = db.get_db()
    conn.execute("SELECT 1").fetchone()
    return jsonify({"status": "ok"})


def request_too_large(_error):
    """413 for a request over MAX_REQUEST_BYTES, in the shape its audience reads."""
    code = "body_too_large"
    zh, en = messages.MESSAGES[code]
    text = "%s / %s (limit %d bytes)" % (zh, en, MAX_REQUEST_BYTES)
    if request.path.startswith("/api/terminal/"):
        return Response(cbor2.dumps({"error": code, "message": text}), 413, mimetype=protocol.CONTENT_TYPE)
    if request.path.startswith("/api/"):
        return jsonify({"error": code, "message": text, "message_zh": zh, "message_en": en}), 413
    return Response(text, 413, mimetype="text/plain")


def bad_id(error):
    """400 for an id in the path that parse_id refuses (numbers.IdConverter)."""
    if request.path.startswith("/api/"):
        return jsonify({"error": error.code_name, "message": "%s / %s" % (error.zh, error.en),
                        "message_zh": error.zh, "message_en": error.en}), 400
    return Response("%s / %s" % (error.zh, error.en), 400, mimetype="text/plain")


API_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}


def http_error(error):
    """An HTTP error (403, 404, 500 and the rest) in the shape its audience reads: the APIs under
    /api/ as before (api_http_error), the pages get a page that leads somewhere (web/error_pages.py)."""
    if request.path.startswith("/api/"):
        return api_http_error(error)
    return web.error_page(error)


def api_http_error(error):
    """The JSON API answers its routing errors (unknown path, wrong method) in JSON like its own."""
    if not request.path.startswith("/api/v1/") or error.code not in API_HTTP_ERRORS:
        return error
    code = API_HTTP_ERRORS[error.code]
    zh, en = messages.MESSAGES[code]
    response = jsonify({"error": code, "message": "%s / %s" % (zh, en), "message_zh": zh, "message_en": en})
    response.status_code = error.code
    if error.code == 405:
        response.headers["Allow"] = ", ".join(error.valid_methods or ())
    return response


class ServerState:
    """Per-app secrets and caches (bounded)."""
    MAX_CACHED_TERMINAL_KEYS = 4096

    def __init__(self, master_key):
        self.master_key = master_key
        self.terminal_keys = {}

    def __repr__(self):  # never show the key
        return "ServerState(<master key hidden>)"


def _trust_proxies(app):
    hops = app.config.get("PROXY_HOPS", os.environ.get("YKT_PROXY_HOPS", "0"))
    try:
        hops = int(hops)
    except (TypeError, ValueError):
        hops = -1
    if hops < 0:
        raise ValueError("YKT_PROXY_HOPS 应为 0 或正整数 / YKT_PROXY_HOPS must be 0 or a positive number")
    app.config["PROXY_HOPS"] = hops
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)


def create_app(test_config=None):
    app = Flask(__name__)
    data_dir = os.path.abspath(os.environ.get("YKT_DATA_DIR", "./data"))
    if test_config and "DATA_DIR" in test_config:
        data_dir = os.path.abspath(test_config["DATA_DIR"])
    store, database_url = pg_store.database_setting()
    app.config.from_mapping(
        DATA_DIR=data_dir,
        DATABASE=database_url if store == "postgresql" else db.db_path(data_dir),
        MASTER_KEY_FILE=keys.master_key_path(data_dir),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
    )
    if test_config:
        app.config.update({k: v for k, v in test_config.items() if k != "DATA_DIR"})
    _trust_proxies(app)
    private_dir.secure_dir(data_dir)
    if store == "sqlite":
        private_dir.create_private_file(app.config["DATABASE"])
    db.init_db(app.config["DATABASE"]).close()
    app.extensions["ykt"] = ServerState(keys.load_master_key(app.config["MASTER_KEY_FILE"]))
    # the payment channels' keys and settings (sync_server/channels): read once, a bad file stops the start
    app.extensions["ykt_channels"] = channels.load(app.config.get("CHANNELS_DIR") or channels.config_dir(data_dir))

    from sync_server.terminal_api import terminal_api
    app.url_map.converters["id"] = numbers.IdConverter   # before any route that uses <id:...>
    app.register_blueprint(health)
    app.register_error_handler(413, request_too_large)
    app.register_error_handler(numbers.BadId, bad_id)
    app.register_error_handler(HTTPException, http_error)      # an unexpected exception arrives as a 500
    app.register_blueprint(terminal_api)
    from sync_server.cardholder_api import cardholder_api
    app.register_blueprint(cardholder_api)   # phone app and kiosks: /api/v1 (JSON, bearer tokens)
    web.init_app(app)   # cardholder portal and service-hall pages (sync_server/web)
    from sync_server.finance.pages import finance_pages
    app.register_blueprint(finance_pages)   # day close reports for finance staff (/finance)
    return app
