"""Cardholder JSON API for the phone app and kiosks: `/api/v1/...`.

    POST /api/v1/bind                         {app_user_id, name, staff_number, pin} -> {token, account_id,
                                                                                          phone_id, ...}
    POST /api/v1/sign-in                      {app_user_id, staff_number, pin}   -> {token, ...}
    POST /api/v1/sign-out
    GET  /api/v1/me
    GET  /api/v1/phones                       the bearer's own bound phones -> {phones: [{phone_id, app_user,
                                              bound_ms, last_used_ms, this_phone}]}
    DELETE /api/v1/phones/<phone_id>          unbind one of them (its tokens stop at once); another
                                              holder's phone id is 404, like an unknown one
    POST /api/v1/photos/<kind>                人脸采集 (face) / 证件照采集 (id_photo): the image itself as the body
                                              (Content-Type image/jpeg or image/png, at most 1 MiB), checked on
                                              the server (services/photos.py) -> {ok, kind, width, height, face:
                                              {x, y, w, h}, checked_ms}; refused: 422 (413, 415) with the reason
    GET  /api/v1/photos                       the holder's photos: {photos: [{kind, taken, checked_ms, source,
                                              width, height}]}, never the images
    GET  /api/v1/photos/<kind>                the holder's own stored photo (image/jpeg, no-store); none: 404
    GET  /api/v1/accounts/<id>/balance
    GET  /api/v1/accounts/<id>/transactions   ?from=YYYY-MM-DD&to=YYYY-MM-DD&type=all|consumption|recharge|water
                                              &page=1&page_size=10
    POST /api/v1/accounts/<id>/recharge-orders            {amount_fen, channel, wallet?} -> the order, with
                                              `pay`: what the phone needs to pay it in the channel
    GET  /api/v1/accounts/<id>/recharge-orders/<order_id>   (`pay` again while the order is pending)
    POST /api/v1/accounts/<id>/report-loss    {pin}
    POST /api/v1/accounts/<id>/unfreeze       {pin}
    POST /api/v1/accounts/<id>/pin            {old_pin, new_pin, confirm_pin?}
    GET  /api/v1/accounts/<id>/limits
    PUT  /api/v1/accounts/<id>/limits         {pin, single_limit_fen, daily_limit_fen}
    POST /api/v1/accounts/<id>/electricity    {pin, building, floor, room, amount_fen, kind?, idempotency_key?}
                                              a room from the lists below; kind lighting (照明用电, default)
                                              or aircon (空调用电) where the building sells it
    GET  /api/v1/electricity/buildings        the hall's active buildings -> {buildings: [{code, name, name_en,
                                              campus, floors, kinds, meter_system}]}
    GET  /api/v1/electricity/buildings/<code>/floors/<floor>/rooms   -> {building, floor, kinds, rooms: [{room}]}
    GET  /api/v1/electricity/rooms/<building>/<floor>/<room>/payments?limit=10   the room's recent payments,
                                              newest first: time, amount, kind, payer (masked: 李*龙),
                                              meter_status, mine - never an account id
    POST /api/v1/water/grants                 {dispenser_id, challenge (hex)} -> {grant_id, grant (hex), cap_fen,
                                              expires_ms}: money held until the session is settled
    POST /api/v1/water/receipts               {receipt (hex)}: the dispenser's usage receipt -> the grant's
                                              state and outcome (settled, late, already)
    GET  /api/v1/water/grants/<grant_id>      the state of one of the bearer's grants
    POST /api/v1/water/grants/<grant_id>/cancel  give up a grant the dispenser refused: its hold goes back
    POST /api/v1/paycode/credentials          {public_key (hex), pin} -> {credential_id, cert_serial, certificate (hex),
                                              key_id, expiry_ms, offline_cap_fen, ...}: the phone's key certified
    GET  /api/v1/paycode/credentials          the holder's pay-code credentials and their state
    POST /api/v1/paycode/credentials/<id>/certificate   renew the certificate of an active credential
    POST /api/v1/paycode/credentials/<id>/stop          stop the code on that phone (every terminal refuses it)
    GET  /api/v1/paycode/credentials/<id>/uses?since_ms=  recent uses, newest first: the app refreshes its code
    POST /api/v1/wallet-move                  {from_wallet: "main", to_wallet: "water", amount_fen, pin, request_id}
                                              圈存: the signed-in holder's main -> water, booked once per
                                              request_id -> the receipt (services/wallet_move.py)
    GET  /api/v1/wallet-moves?limit=20        the holder's wallet-move receipts, newest first
    POST /api/v1/channels/<channel>/notify    the channel's own asynchronous notification, in its own
                                              format, answered in its own format (no bearer token)
    GET  /api/v1/openapi.json                 all of the above as an OpenAPI 3 document (sync_server/openapi.py)

Ids in paths and numbers in query strings are read by sync_server/numbers.py (ASCII or full-width
digits, bounded; anything else is a 400). Every account endpoint needs `Authorization: Bearer <token>`
(from bind or sign-in) and answers only for the cardholder the token is bound to: another account id
is 403, whatever else is asked. Errors are JSON {"error": code, "message": "中文 / English",
"message_zh", "message_en"} with a 4xx status, routing errors under /api/v1 (unknown path, wrong
method) included. A wrong PIN (403 pin_wrong) adds `tries_left`; a PIN lockout (423 pin_locked) adds
`locked_until_ms` and `retry_after_s`, with the same seconds in a Retry-After header; a chosen PIN
too easy to guess is a 400 pin_weak_same_digit, pin_weak_run, pin_weak_birthday or pin_weak_initial.
The views only translate HTTP to the functions of sync_server/services/.

A payment the app may send twice (a retry after a lost answer, a double tap) carries an
`idempotency_key` (8-100 of A-Z a-z 0-9 - _, new for each payment the holder means to make): every
copy books once and gets the first one's answer; the same key with other details is a 409.

Payment channels (sync_server/channels/): each configured by its file in <data_dir>/channels/,
read at start-up; an unconfigured channel's orders and notices are refused (channel_not_configured).
A notice is answered the way its channel expects - Alipay the plain text `success`, WeChat Pay
{"code": "SUCCESS"}, CCB SUCCESS - for every notice we accepted (duplicates too) so the channel stops
notifying, and in the channel's failure form with a 4xx otherwise. The headers X-Ykt-Outcome
(credited, duplicate, closed, ignored) and X-Ykt-Order-Status, or X-Ykt-Error (the refusal's code),
say what happened, for our own tools; channels ignore them.
"""
from flask import Blueprint, Response, current_app, jsonify, request, url_for

from sync_server import db as dbmod, numbers, openapi
from sync_server.services import (ServiceError, binding, cards, electricity, history, holder_actions, limits,
                                  paycode, pins as pin_service, recharge, register_messages, water)
from sync_server.services import wallet_move
from sync_server.services import photos

cardholder_api = Blueprint("cardholder_api", __name__, url_prefix="/api/v1")

MAX_JSON_BYTES = 16 * 1024
VIA = holder_actions.VIA_APP     # where the holder's own actions were taken, in the hall's action log
DEFAULT_QUERY_DAYS = 30

register_messages({
    "not_yours": (403, "无权访问他人的账户", "that account is not yours"),
    "body_too_large": (413, "请求体过大", "request body too large"),
})


@cardholder_api.errorhandler(ServiceError)
def _service_error(error):
    body = dict(error.details)
    body.update({"error": error.code, "message": "%s / %s" % (error.zh, error.en), "message_zh": error.zh,
                 "message_en": error.en})
    response = jsonify(body)
    response.status_code = error.status
    if "retry_after_s" in error.details:
        response.headers["Retry-After"] = str(error.details["retry_after_s"])
    return response


def _body():
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise ServiceError("body_too_large")
    message = request.get_json(silent=True, force=True)
    if not isinstance(message, dict):
        raise ServiceError("bad_request", "JSON object expected")
    return message


def _identity(conn):
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        raise ServiceError("bad_token")
    return binding.authenticate(conn, token.strip())


def _own(conn, account_id):
    """The caller's identity, when `account_id` is the caller's own account."""
    identity = _identity(conn)
    if identity["account_id"] != account_id:
        raise ServiceError("not_yours")
    return identity


def _int(message, name):
    """A JSON integer within SQLite's 64 bits; the services bound each one tighter, with their own
    messages."""
    value = numbers.check_int(message.get(name), -numbers.MAX_ID - 1, numbers.MAX_ID)
    if value is None:
        raise ServiceError("bad_request", "%s must be an integer" % name)
    return value


def _str(message, name):
    value = message.get(name)
    if not isinstance(value, str):
        raise ServiceError("bad_request", "%s must be a string" % name)
    return value


@cardholder_api.get("/openapi.json")
def openapi_document():
    """This API described as OpenAPI 3 (sync_server/openapi.py), for app developers and the fuzz test."""
    return jsonify(openapi.document())


# --- sign-in -------------------------------------------------------------------------------------

@cardholder_api.post("/bind")
def bind():
    message = _body()
    result = binding.bind(dbmod.get_db(), _str(message, "app_user_id"), _str(message, "name"),
                          _str(message, "staff_number"), message.get("pin"), client_address=request.remote_addr)
    return jsonify(result)


@cardholder_api.post("/sign-in")
def sign_in():
    message = _body()
    result = binding.sign_in(dbmod.get_db(), _str(message, "app_user_id"), _str(message, "staff_number"),
                             _str(message, "pin"))
    return jsonify(result)


@cardholder_api.post("/sign-out")
def sign_out():
    conn = dbmod.get_db()
    _identity(conn)
    binding.sign_out(conn, request.headers["Authorization"].partition(" ")[2].strip())
    return jsonify({"ok": True})


@cardholder_api.get("/me")
def me():
    conn = dbmod.get_db()
    identity = _identity(conn)
    return jsonify(dict(identity, **history.balance(conn, identity["account_id"])))


@cardholder_api.get("/phones")
def list_phones():
    conn = dbmod.get_db()
    identity = _identity(conn)
    return jsonify({"phones": binding.phones(conn, identity["person_id"], identity["app_user_id"])})


@cardholder_api.delete("/phones/<phone_id>")
def remove_phone(phone_id):
    conn = dbmod.get_db()
    identity = _identity(conn)
    binding.remove_phone(conn, identity["person_id"], phone_id, via=VIA)
    return jsonify({"ok": True})


# --- 人脸采集 / 证件照采集: the holder's own photos (sync_server/services/photos.py) -----------------------
# Only the token's own person: there is no person id in these paths to try another one's with.

PHOTO_CONTENT_TYPES = ("image/jpeg", "image/png")


@cardholder_api.post("/photos/<kind>")
def upload_photo(kind):
    conn = dbmod.get_db()
    identity = _identity(conn)
    if kind not in photos.KINDS:
        raise ServiceError("photo_kind_unknown")
    if request.mimetype not in PHOTO_CONTENT_TYPES:
        raise ServiceError("photo_content_type")
    if (request.content_length or 0) > photos.MAX_PHOTO_BYTES:
        raise ServiceError("photo_too_large")           # before reading a byte of it
    request.max_content_length = photos.MAX_PHOTO_BYTES  # a body without a length is cut off there (413)
    stored = photos.store_photo(conn, identity["person_id"], kind, request.get_data(cache=False), "app",
                                also=lambda conn, stored: holder_actions.record(
                                    conn, identity["account_id"], "photo", VIA, now_ms=stored["checked_ms"],
                                    detail={"kind": kind, "sha256": stored["sha256"]}))
    return jsonify({"ok": True, "kind": kind, "width": stored["width"], "height": stored["height"],
                    "face": stored["face"], "checked_ms": stored["checked_ms"]})


@cardholder_api.get("/photos")
def list_photos():
    conn = dbmod.get_db()
    summary = photos.photo_summary(conn, _identity(conn)["person_id"])
    return jsonify({"photos": [{"kind": kind, "taken": summary[kind] is not None,
                                **{name: (summary[kind] or {}).get(name)
                                   for name in ("checked_ms", "source", "width", "height")}}
                               for kind in photos.KINDS]})


@cardholder_api.get("/photos/<kind>")
def own_photo(kind):
    conn = dbmod.get_db()
    image = photos.photo_image(conn, _identity(conn)["person_id"], kind)
    response = Response(image, 200, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# --- queries -------------------------------------------------------------------------------------

@cardholder_api.get("/accounts/<id:account_id>/balance")
def balance(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    return jsonify(history.balance(conn, account_id))


@cardholder_api.get("/accounts/<id:account_id>/transactions")
def transactions(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    now_ms = dbmod.now_ms()
    page = numbers.parse_page(request.args.get("page"))
    page_size = numbers.parse_page(request.args.get("page_size"), history.MAX_PAGE_SIZE, default=10)
    if page is None or page_size is None:
        raise ServiceError("bad_page")
    to_date = request.args.get("to") or history.today(now_ms)
    from_date = request.args.get("from") or history.today(now_ms - (DEFAULT_QUERY_DAYS - 1) * 86400000)
    return jsonify(history.query(conn, account_id, from_date, to_date, request.args.get("type", "all"),
                                 page, page_size))


# --- Bluetooth water -----------------------------------------------------------------------------

@cardholder_api.post("/water/grants")
def water_grant():
    conn = dbmod.get_db()
    identity = _identity(conn)
    message = _body()
    result = water.issue_grant(conn, current_app.extensions["ykt"].master_key, identity["account_id"],
                               _int(message, "dispenser_id"), _str(message, "challenge"))
    return jsonify(result), 201


@cardholder_api.post("/water/receipts")
def water_receipt():
    conn = dbmod.get_db()
    identity = _identity(conn)
    message = _body()
    return jsonify(water.hand_in_receipt(conn, current_app.extensions["ykt"].master_key, identity["account_id"],
                                         _str(message, "receipt")))


@cardholder_api.post("/water/grants/<id:grant_id>/cancel")
def water_grant_cancel(grant_id):
    conn = dbmod.get_db()
    identity = _identity(conn)
    return jsonify(water.give_up(conn, identity["account_id"], grant_id))


@cardholder_api.get("/water/grants/<id:grant_id>")
def water_grant_state(grant_id):
    conn = dbmod.get_db()
    identity = _identity(conn)
    return jsonify(water.grant_state(conn, identity["account_id"], grant_id))


# --- payment code --------------------------------------------------------------------------------

@cardholder_api.post("/paycode/credentials")
def paycode_enable():
    conn = dbmod.get_db()
    identity = _identity(conn)
    message = _body()
    return jsonify(paycode.enable(conn, current_app.extensions["ykt"].master_key, identity["account_id"],
                                  identity["app_user_id"], _str(message, "public_key"), message.get("pin"))), 201


@cardholder_api.get("/paycode/credentials")
def paycode_list():
    conn = dbmod.get_db()
    return jsonify(paycode.listing(conn, _identity(conn)["account_id"]))


@cardholder_api.post("/paycode/credentials/<id:credential_id>/certificate")
def paycode_renew(credential_id):
    conn = dbmod.get_db()
    identity = _identity(conn)
    return jsonify(paycode.renew(conn, current_app.extensions["ykt"].master_key, identity["account_id"],
                                 credential_id))


@cardholder_api.post("/paycode/credentials/<id:credential_id>/stop")
def paycode_stop(credential_id):
    conn = dbmod.get_db()
    return jsonify(paycode.stop(conn, _identity(conn)["account_id"], credential_id, via=VIA))


@cardholder_api.get("/paycode/credentials/<id:credential_id>/uses")
def paycode_uses(credential_id):
    conn = dbmod.get_db()
    identity = _identity(conn)
    since_ms = numbers.parse_int(request.args.get("since_ms", "0"), 0, numbers.MAX_ID)
    if since_ms is None:
        raise ServiceError("bad_request", "since_ms must be a non-negative integer")
    return jsonify(paycode.recent_uses(conn, identity["account_id"], credential_id, since_ms))


# --- recharge ------------------------------------------------------------------------------------

@cardholder_api.post("/accounts/<id:account_id>/recharge-orders")
def create_order(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    message = _body()
    amount_fen, channel = _int(message, "amount_fen"), _str(message, "channel")
    recharge.check_order(amount_fen, channel)
    handler = _configured_channel(channel)
    order = recharge.create_order(conn, account_id, amount_fen, channel, message.get("wallet", "main"))
    return jsonify(_with_payment(order, handler)), 201


@cardholder_api.get("/accounts/<id:account_id>/recharge-orders/<order_id>")
def get_order(account_id, order_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    order = recharge.get_order(conn, order_id, account_id)
    return jsonify(_with_payment(order, current_app.extensions["ykt_channels"].get(order["channel"])))


def _configured_channel(channel):
    """The channel's handler (sync_server/channels), or channel_not_configured."""
    handler = current_app.extensions["ykt_channels"].get(channel)
    if handler is None:
        raise ServiceError("channel_not_configured")
    return handler


def _with_payment(order, handler):
    """The order; a pending one with `pay`, what the phone needs to pay it in the channel (the
    channel's signed order string or URL, or for WeChat Pay the prepay request the server sends)."""
    if order["status"] != recharge.STATUS_PENDING or handler is None:
        return order
    notify_url = url_for("cardholder_api.channel_notify", channel=order["channel"], _external=True)
    pay = handler.payment_request(order, notify_url, request.remote_addr, now_s=dbmod.now_ms() / 1000.0,
                                  expire_s=(order["created_ms"] + recharge.PENDING_ORDER_TTL_MS) / 1000.0)
    return dict(order, pay=pay)


@cardholder_api.post("/channels/<channel>/notify")
def channel_notify(channel):
    """A channel's asynchronous notification, verified its own way and answered in its own format."""
    if channel not in recharge.ONLINE_CHANNELS:
        raise ServiceError("unknown_channel")
    handler = _configured_channel(channel)
    body = request.get_data(cache=False)[:recharge.MAX_NOTIFICATION_BYTES + 1]
    try:
        outcome, order = recharge.handle_notification(dbmod.get_db(), channel, handler, request.headers, body)
    except ServiceError as refusal:
        text, mimetype = handler.answer(False, "%s / %s" % (refusal.zh, refusal.en))
        response = Response(text, refusal.status, mimetype=mimetype)
        response.headers["X-Ykt-Error"] = refusal.code
        return response
    text, mimetype = handler.answer(True)
    response = Response(text, 200, mimetype=mimetype)
    response.headers["X-Ykt-Outcome"] = outcome
    response.headers["X-Ykt-Order-Status"] = order["status"]
    return response


# --- card and account operations -----------------------------------------------------------------

@cardholder_api.post("/accounts/<id:account_id>/report-loss")
def report_loss(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    return jsonify(cards.report_loss(conn, account_id, pin=_str(_body(), "pin"), via=VIA))


@cardholder_api.post("/accounts/<id:account_id>/unfreeze")
def unfreeze(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    return jsonify(cards.unfreeze(conn, account_id, pin=_str(_body(), "pin"), via=VIA))


@cardholder_api.post("/accounts/<id:account_id>/pin")
def change_pin(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    message = _body()
    confirm = message.get("confirm_pin")
    pin_service.change_pin(conn, account_id, _str(message, "old_pin"), _str(message, "new_pin"),
                           confirm if isinstance(confirm, str) else None, via=VIA)
    return jsonify({"ok": True})


@cardholder_api.get("/accounts/<id:account_id>/limits")
def get_limits(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    return jsonify(limits.get_limits(conn, account_id))


@cardholder_api.put("/accounts/<id:account_id>/limits")
def set_limits(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    message = _body()
    return jsonify(limits.set_limits(conn, account_id, _int(message, "single_limit_fen"),
                                     _int(message, "daily_limit_fen"), pin=_str(message, "pin"), via=VIA))


@cardholder_api.post("/accounts/<id:account_id>/electricity")
def pay_electricity(account_id):
    conn = dbmod.get_db()
    _own(conn, account_id)
    message = _body()
    kind = message.get("kind", electricity.DEFAULT_KIND)
    if not isinstance(kind, str):
        raise ServiceError("bad_request", "kind must be a string")
    result = electricity.pay(conn, account_id, _str(message, "building"), _int(message, "floor"),
                             _str(message, "room"), _int(message, "amount_fen"), pin=_str(message, "pin"),
                             idempotency_key=message.get("idempotency_key"), kind=kind)
    return jsonify(dict(result, parts=[list(part) for part in result["parts"]]))


# --- dorm electricity: the service hall's room lists (选择楼栋，楼层，房间) --------------------------------

@cardholder_api.get("/electricity/buildings")
def electricity_buildings():
    conn = dbmod.get_db()
    _identity(conn)
    return jsonify({"buildings": electricity.buildings(conn)})


@cardholder_api.get("/electricity/buildings/<building>/floors/<floor>/rooms")
def electricity_rooms(building, floor):
    conn = dbmod.get_db()
    _identity(conn)
    return jsonify(electricity.rooms(conn, building, electricity.parse_floor(floor)))


@cardholder_api.get("/electricity/rooms/<building>/<floor>/<room>/payments")
def electricity_room_payments(building, floor, room):
    """Anyone signed in may see a room's recent payments (roommates pay for one meter): masked names."""
    conn = dbmod.get_db()
    identity = _identity(conn)
    limit = numbers.parse_page(request.args.get("limit"), electricity.MAX_LISTED_PAYMENTS,
                               default=electricity.DEFAULT_LISTED_PAYMENTS)
    if limit is None:
        raise ServiceError("bad_request", "limit must be an integer from 1 to %d" % electricity.MAX_LISTED_PAYMENTS)
    return jsonify(electricity.room_payments(conn, building, electricity.parse_floor(floor), room, limit,
                                             viewer_account_id=identity["account_id"]))


# --- moves between the holder's own wallets --------------------------------------------------------

@cardholder_api.post("/wallet-move")
def move_between_wallets():
    """圈存 (main -> water) by the signed-in holder with the card PIN; the old-system balance moves into
    main at the service hall only (the service refuses it here: no operator)."""
    conn = dbmod.get_db()
    identity = _identity(conn)
    message = _body()
    receipt = wallet_move.move(conn, identity["account_id"], _str(message, "from_wallet"), _str(message, "to_wallet"),
                               _int(message, "amount_fen"), pin=_str(message, "pin"),
                               request_id=_str(message, "request_id"), via=VIA)
    return jsonify(receipt)


@cardholder_api.get("/wallet-moves")
def list_wallet_moves():
    conn = dbmod.get_db()
    identity = _identity(conn)
    limit = numbers.parse_page(request.args.get("limit"), wallet_move.MAX_LISTED, default=20)
    if limit is None:
        raise ServiceError("bad_request", "limit must be an integer from 1 to %d" % wallet_move.MAX_LISTED)
    return jsonify({"moves": wallet_move.list_moves(conn, identity["account_id"], limit)})
