"""The OpenAPI 3 document of the cardholder API (`GET /api/v1/openapi.json`).

Written by hand from sync_server/cardholder_api.py and the services it calls: every endpoint, its
parameters and body, and every status it answers, each error with the one error body. `document()`
assembles it; a change to an endpoint changes its entry here (tests/test_openapi.py fuzzes the real
server against it with schemathesis, so a status or field missing here fails there). Phone binding
sits in `_binding_paths` alone, so that its rules can change in one place.
"""
from sync_server import numbers
from sync_server.services import electricity, history, limits, recharge
from sync_server.services import wallet_move

ID = {"type": "integer", "minimum": 1, "maximum": numbers.MAX_ID}
FEN = {"type": "integer"}
TEXT = {"type": "string"}
PIN = {"type": "string", "description": "the card PIN: 6 digits"}
IDEMPOTENCY_KEY = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,100}$",
                   "description": "new for each payment the holder means to make; a repeat books once"}
DATE = {"type": "string", "format": "date", "description": "a Beijing calendar date, YYYY-MM-DD"}
METER_STATUS = {"type": "string", "enum": ["none", "pending", "delivered", "failed"],
                "description": "none: the building has no meter system (booked only); pending: owed to the "
                               "meter system; delivered: the meter has it; failed: flagged for the service hall"}

ERROR_TEXT = {
    400: "the request is malformed: a bad id, number, date, PIN format, amount or body (`error` says which); "
         "or a new PIN too easy to guess (pin_weak_same_digit, pin_weak_run, pin_weak_birthday, pin_weak_initial)",
    401: "no bearer token, or an expired or unknown one (bad_token); for channels: bad_signature",
    403: "another cardholder's account (not_yours), a wrong PIN (pin_wrong, with `tries_left`), binding refused "
         "(bind_failed)",
    404: "no such account, order, card, bound phone or channel, or a room or building not on the hall's lists",
    405: "the method is not one the path takes",
    409: "refused in the current state (blocked, in debt, no card, insufficient balance, too many phones...)",
    413: "the request body is too large",
    415: "the body is not of a content type the operation takes (photos: image/jpeg or image/png)",
    422: "the photo was refused by its checks (`error` says which: no face, several faces, blurred, too dark...); "
         "nothing was stored",
    423: "locked after too many wrong PINs or bindings; try later (pin_locked: `locked_until_ms`, `retry_after_s` "
         "and a Retry-After header say when)",
    429: "too many unfinished recharge orders, or water sessions",
}


def _ref(name):
    return {"$ref": "#/components/schemas/%s" % name}


def _object(required, optional=None):
    properties = dict(required)
    properties.update(optional or {})
    return {"type": "object", "required": sorted(required), "properties": properties}


SCHEMAS = {
    "Error": _object({"error": TEXT, "message": {"type": "string", "description": "中文 / English"},
                      "message_zh": TEXT, "message_en": TEXT}, {
        "tries_left": {"type": "integer", "minimum": 1, "description": "pin_wrong: tries before the lockout"},
        "locked_until_ms": {"type": "integer", "description": "pin_locked: when the lockout ends"},
        "retry_after_s": {"type": "integer", "minimum": 1, "description": "pin_locked: seconds until it ends"}}),
    "Ok": _object({"ok": {"type": "boolean"}}),
    "Token": _object({"token": TEXT, "person_id": ID, "account_id": ID, "expires_ms": {"type": "integer"},
                      "phone_id": TEXT}),
    "Phones": _object({"phones": {"type": "array", "items": _object({
        "phone_id": TEXT, "app_user": TEXT, "bound_ms": {"type": "integer"},
        "last_used_ms": {"type": "integer", "nullable": True}, "this_phone": {"type": "boolean"}})}}),
    "PhotoStored": _object({
        "ok": {"type": "boolean"}, "kind": {"type": "string", "enum": ["face", "id_photo"]},
        "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1},
        "face": _object({name: {"type": "integer", "minimum": 0} for name in ("x", "y", "w", "h")}),
        "checked_ms": {"type": "integer"}}),
    "Photos": _object({"photos": {"type": "array", "items": _object(
        {"kind": {"type": "string", "enum": ["face", "id_photo"]}, "taken": {"type": "boolean"}},
        {"checked_ms": {"type": "integer", "nullable": True},
         "source": {"type": "string", "nullable": True, "description": "app or hall"},
         "width": {"type": "integer", "nullable": True}, "height": {"type": "integer", "nullable": True}})}}),
    "Card": _object({"card_number": {"type": "integer"}, "generation": {"type": "integer"}, "status": TEXT,
                     "expiry_yyyymmdd": {"type": "integer"}}),
    "Balance": _object({
        "account_id": ID, "name": TEXT, "staff_number": {"type": "string", "nullable": True},
        "category": {"type": "integer"}, "wallets": {"type": "object", "additionalProperties": FEN},
        "total_fen": FEN, "blocked": {"type": "boolean"}, "in_debt": {"type": "boolean"},
        "single_limit_fen": {"type": "integer", "nullable": True}, "daily_limit_fen": {"type": "integer", "nullable": True},
        "cards": {"type": "array", "items": _ref("Card")}}),
    "StatementRow": _object({
        "transfer_id": TEXT, "kind": TEXT, "type": {"type": "string", "enum": ["consumption", "recharge", "other"]},
        "time_ms": {"type": "integer"}, "time": TEXT, "place_zh": TEXT, "place_en": TEXT,
        "wallet": TEXT, "amount_fen": FEN, "wallet_balance_fen_after": FEN, "balance_fen_after": FEN,
        "category": {"type": "string", "nullable": True, "enum": list(history.CATEGORY_NAMES.values()) + [None],
                     "description": "the merchant's category (water also for a Bluetooth water grant's hold "
                                    "and release); null when no merchant is involved"}},
        {"place_kind": {"type": "string", "nullable": True}}),
    "Statement": _object({
        "rows": {"type": "array", "items": _ref("StatementRow")}, "page": {"type": "integer"},
        "page_size": {"type": "integer"}, "total_rows": {"type": "integer"}, "total_pages": {"type": "integer"},
        "from_date": DATE, "to_date": DATE, "kind": TEXT}),
    "Order": _object({
        "order_id": TEXT, "account_id": ID, "wallet": TEXT, "amount_fen": FEN, "channel": TEXT,
        "status": {"type": "string", "enum": ["pending", "paid", "closed"]}},
        dict({name: {"type": kind, "nullable": True} for name, kind in (
            ("channel_trade_no", "string"), ("transfer_id", "string"), ("operator", "string"),
            ("created_ms", "integer"), ("paid_ms", "integer"), ("closed_ms", "integer"))},
             pay=_ref("PayRequest"))),
    "PayRequest": dict(_object(
        {"channel": {"type": "string", "enum": list(recharge.ONLINE_CHANNELS)},
         "kind": {"type": "string", "enum": ["alipay.trade.wap.pay", "wechatpay.v3.h5_prepay", "ccb.520100"]},
         "method": {"type": "string", "enum": ["GET", "POST"]}, "url": TEXT},
        {"order_string": {"type": "string", "description": "Alipay: the order string signed RSA2 with our app key"},
         "body": {"type": "object", "description": "WeChat Pay: the H5 prepay request the server sent (signed "
                                                   "with the merchant key)"},
         "error": {"type": "string", "enum": ["channel_unavailable"],
                   "description": "the channel could not start the payment now: no url to open (method POST)"},
         "reason": {"type": "string", "enum": ["refused", "unreachable", "unavailable", "bad_answer"]},
         "message": TEXT, "message_zh": TEXT, "message_en": TEXT}),
        description="what the phone needs to pay a pending order in its channel: a url opened with GET (Alipay's "
                    "order signed RSA2, CCB's MD5 MAC, WeChat's h5_url from the prepay the server sent, with a "
                    "redirect_url back to /app/recharge); with `error` the order stays pending and `message` says "
                    "to try again; present while the order is pending and its channel configured"),
    "CardChange": _object({"card_number": {"type": "integer"}, "generation": {"type": "integer"},
                           "deny_version": {"type": "integer"}}),
    "Limits": _object({"single_limit_fen": {"type": "integer", "nullable": True},
                       "daily_limit_fen": {"type": "integer", "nullable": True}}),
    "ElectricityPayment": _object({
        "payment_id": TEXT, "repeated": {"type": "boolean"},
        "parts": {"type": "array", "items": {"type": "array", "items": {}, "minItems": 2, "maxItems": 2},
                  "description": "[wallet, fen] drawn, in order"},
        "balances": {"type": "object", "additionalProperties": FEN},
        "kind": {"type": "string", "enum": list(electricity.KINDS)}, "meter_status": METER_STATUS}),
    "ElectricityBuildings": _object({"buildings": {"type": "array", "items": _object({
        "code": TEXT, "name": TEXT, "name_en": TEXT, "campus": TEXT,
        "floors": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": electricity.MAX_FLOOR}},
        "kinds": {"type": "array", "items": _ref("ElectricityKind")},
        "meter_system": {"type": "string", "enum": list(electricity.METER_SYSTEMS)}})}}),
    "ElectricityKind": _object({"kind": {"type": "string", "enum": list(electricity.KINDS)},
                                "name_zh": {"type": "string", "description": "照明用电, 空调用电"}, "name_en": TEXT}),
    "ElectricityRooms": _object({
        "building": TEXT, "floor": {"type": "integer"}, "kinds": {"type": "array", "items": _ref("ElectricityKind")},
        "rooms": {"type": "array", "items": _object({"room": TEXT})}}),
    "ElectricityRoomPayments": _object({
        "building": TEXT, "floor": {"type": "integer"}, "room": TEXT, "payments": {"type": "array", "items": _object({
            "time_ms": {"type": "integer"}, "time": {"type": "string", "description": "Beijing time"},
            "amount_fen": FEN, "kind": {"type": "string", "enum": list(electricity.KINDS)},
            "payer": {"type": "string", "description": "the payer's name masked: 李*龙"},
            "meter_status": METER_STATUS,
            "mine": {"type": "boolean", "description": "paid by the signed-in holder"}})}}),
    "PayCodeCertificate": _object({
        "credential_id": ID, "cert_serial": ID, "key_id": {"type": "integer", "minimum": 1, "maximum": 255},
        "certificate": {"type": "string", "description": "hex: the %d-byte certificate the phone puts in its "
                                                         "codes (firmware/core/paycode.py)" % 123},
        "expiry_ms": {"type": "integer"}, "offline_cap_fen": FEN, "account_id": ID,
        "card_number": {"type": "integer", "minimum": 0}, "server_ms": {"type": "integer"}}),
    "PayCodeCredentials": _object({"credentials": {"type": "array", "items": _object(
        {"credential_id": ID, "status": {"type": "string", "enum": ["active", "revoked"]},
         "created_ms": {"type": "integer"}},
        {"revoked_ms": {"type": "integer", "nullable": True}, "revoked_reason": {"type": "integer", "nullable": True}})}}),
    "PayCodeStopped": _object({"credential_id": ID, "revoked": {"type": "boolean"}}),
    "PayCodeUses": _object({"uses": {"type": "array", "items": _object(
        {"time_step": {"type": "integer"}, "counter": {"type": "integer"}, "terminal_id": ID, "amount_fen": FEN,
         "at_ms": {"type": "integer"}, "double_use": {"type": "boolean"}})},
        "highest_counter": {"type": "integer", "nullable": True}, "server_ms": {"type": "integer"}}),
    "WaterGrant": _object({"grant_id": ID, "grant": {"type": "string", "description": "hex: write it to the "
                                                     "dispenser's GRANT characteristic"},
                           "cap_fen": FEN, "expires_ms": {"type": "integer"}, "dispenser_id": ID}),
    "WaterGrantState": _object({
        "grant_id": ID, "dispenser_id": ID,
        "status": {"type": "string", "enum": ["held", "settled", "released"]}, "cap_fen": FEN,
        "issued_ms": {"type": "integer"}, "expires_ms": {"type": "integer"}},
        dict({name: {"type": "integer", "nullable": True} for name in ("settled_fen", "settled_ml", "end_reason")},
             settled_via={"type": "string", "nullable": True},
             outcome={"type": "string", "enum": ["settled", "late", "already"]})),
    "WalletMoveReceipt": _object({
        "receipt_no": TEXT, "account_id": ID, "person_id": ID, "name": TEXT,
        "staff_number": {"type": "string", "nullable": True},
        "from_wallet": {"type": "string", "enum": ["main", "water", "legacy"]},
        "to_wallet": {"type": "string", "enum": ["main", "water", "legacy"]}, "amount_fen": FEN,
        "from_balance_fen_after": FEN, "to_balance_fen_after": FEN, "transfer_id": TEXT,
        "operator": {"type": "string", "nullable": True, "description": "the clerk at the hall; null: the holder"},
        "staff_action_id": {"type": "integer", "nullable": True}, "time_ms": {"type": "integer"},
        "time": {"type": "string", "description": "Beijing time, YYYY-MM-DD HH:MM:SS"}},
        {"repeated": {"type": "boolean", "description": "true: this request_id was booked before; nothing "
                                                        "booked now, the first receipt"}}),
    "WalletMoves": _object({"moves": {"type": "array", "items": _ref("WalletMoveReceipt")}}),
    "WeChatPayAnswer": _object({"code": {"type": "string", "enum": ["SUCCESS", "FAIL"]}, "message": TEXT}),
}


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def _body(required, optional=None):
    return dict(_json(_object(required, optional)), required=True)


def _operation(summary, ok_status, ok_schema, errors, body=None, parameters=(), secured=True):
    responses = {str(ok_status): dict(_json(_ref(ok_schema)), description=summary)}
    for status in errors:
        responses[str(status)] = dict(_json(_ref("Error")), description=ERROR_TEXT[status])
    if 423 in errors:
        responses["423"]["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                       "description": "pin_locked: seconds until the lockout ends"}}
    operation = {"summary": summary, "parameters": list(parameters), "responses": responses}
    if body is not None:
        operation["requestBody"] = body
    operation["security"] = [{"bearer": []}] if secured else []
    return operation


def _query(name, schema, description):
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ACCOUNT = {"name": "account_id", "in": "path", "required": True, "schema": ID,
           "description": "the token's own account; any other is 403"}
SIGNED_IN = (401, 404)                  # every call with a token: no token, or its person has no account
OWN = (400, 401, 403, 404)              # plus a path id: bad id, another person's account
WITH_BODY = (400, 413)
WITH_PIN = (400, 403, 423)              # PIN missing or malformed, wrong, locked


def _errors(*groups):
    return sorted(set(status for group in groups for status in group))


def _binding_paths():
    """绑卡 and the kiosk sign-in: the part of the API that changes with the binding rules."""
    return {
        "/bind": {"post": _operation(
            "bind a phone app user to a cardholder with name + staff/student number + card PIN", 200, "Token",
            _errors(WITH_BODY, WITH_PIN, (404, 409)), secured=False,
            body=_body({"app_user_id": {"type": "string", "minLength": 1, "maxLength": 64}, "name": TEXT,
                        "staff_number": TEXT, "pin": PIN}))},
        "/sign-in": {"post": _operation(
            "sign in with staff/student number + card PIN (kiosks, re-installed apps)", 200, "Token",
            _errors(WITH_BODY, WITH_PIN, (404,)), secured=False,
            body=_body({"app_user_id": {"type": "string", "minLength": 1, "maxLength": 64}, "staff_number": TEXT,
                        "pin": PIN}))},
        "/sign-out": {"post": _operation("end this token", 200, "Ok", _errors(SIGNED_IN))},
        "/phones": {"get": _operation("the holder's bound phones", 200, "Phones", _errors(SIGNED_IN))},
        "/phones/{phone_id}": {"delete": _operation(
            "unbind one of the holder's phones (its tokens stop at once); another holder's is 404", 200, "Ok",
            _errors(SIGNED_IN), parameters=[{"name": "phone_id", "in": "path", "required": True, "schema": TEXT}])},
    }


def _photo_paths():
    """人脸采集 / 证件照采集: the holder's own photos, checked on the server (services/photos.py). The paths
    carry no person: the token's own, so another holder's photo cannot even be named."""
    kind = {"name": "kind", "in": "path", "required": True, "schema": {"type": "string", "enum": ["face", "id_photo"]},
            "description": "face (人脸采集) or id_photo (证件照采集)"}
    binary = {"type": "string", "format": "binary"}
    upload = _operation(
        "check and store the holder's photo of this kind (JPEG or PNG, at most 1 MiB, short side at least 480 "
        "px, one frontal face, sharp and well lit); the previous one is kept as the one before", 200,
        "PhotoStored", _errors(SIGNED_IN, (413, 415, 422)), parameters=[kind],
        body={"required": True, "content": {"image/jpeg": {"schema": binary}, "image/png": {"schema": binary}}})
    image = _operation("the holder's own stored photo: JPEG, upright, without metadata (Cache-Control: no-store)",
                       200, "Ok", _errors(SIGNED_IN), parameters=[kind])
    image["responses"]["200"] = {"description": image["summary"], "content": {"image/jpeg": {"schema": binary}}}
    return {
        "/photos": {"get": _operation("which photos the holder has and when they were checked (not the images)",
                                      200, "Photos", _errors(SIGNED_IN))},
        "/photos/{kind}": {"post": upload, "get": image},
    }


def _account_paths():
    wallet = {"type": "string", "enum": ["main", "water", "legacy"]}
    return {
        "/me": {"get": _operation("the cardholder the token speaks for, with balances", 200, "Balance",
                                  _errors(SIGNED_IN))},
        "/accounts/{account_id}/balance": {"get": _operation(
            "balances per wallet, limits and cards", 200, "Balance", _errors(OWN), parameters=[ACCOUNT])},
        "/accounts/{account_id}/transactions": {"get": _operation(
            "the statement (流水查询), newest first", 200, "Statement", _errors(OWN), parameters=[
                ACCOUNT,
                _query("from", DATE, "first day (default: 30 days ago)"),
                _query("to", DATE, "last day (default: today); at most %d days in all" % history.MAX_RANGE_DAYS),
                _query("type", {"type": "string", "enum": list(history.KINDS)},
                       "default all; water (用水): purchases at water merchants from any wallet, and the holds "
                       "and releases of Bluetooth water grants"),
                _query("page", {"type": "integer", "minimum": 1, "maximum": numbers.MAX_PAGE}, "default 1"),
                _query("page_size", {"type": "integer", "minimum": 1, "maximum": history.MAX_PAGE_SIZE},
                       "default 10")])},
        "/accounts/{account_id}/recharge-orders": {"post": _operation(
            "a pending recharge order for an online channel", 201, "Order", _errors(OWN, WITH_BODY, (409, 429)),
            parameters=[ACCOUNT], body=_body(
                {"amount_fen": {"type": "integer", "minimum": 1, "maximum": recharge.MAX_ORDER_FEN},
                 "channel": {"type": "string", "enum": list(recharge.ONLINE_CHANNELS)}}, {"wallet": wallet}))},
        "/accounts/{account_id}/recharge-orders/{order_id}": {"get": _operation(
            "one of the holder's recharge orders", 200, "Order", _errors(OWN), parameters=[
                ACCOUNT, {"name": "order_id", "in": "path", "required": True, "schema": TEXT}])},
        "/accounts/{account_id}/report-loss": {"post": _operation(
            "挂失: terminals refuse the card within seconds", 200, "CardChange",
            _errors(OWN, WITH_BODY, WITH_PIN, (409,)), parameters=[ACCOUNT], body=_body({"pin": PIN}))},
        "/accounts/{account_id}/unfreeze": {"post": _operation(
            "解挂 (not with the initial PIN)", 200, "CardChange", _errors(OWN, WITH_BODY, WITH_PIN, (409,)),
            parameters=[ACCOUNT], body=_body({"pin": PIN}))},
        "/accounts/{account_id}/pin": {"post": _operation(
            "change the card PIN with the old one", 200, "Ok", _errors(OWN, WITH_BODY, WITH_PIN),
            parameters=[ACCOUNT], body=_body({"old_pin": PIN, "new_pin": PIN}, {"confirm_pin": PIN}))},
        "/accounts/{account_id}/limits": {
            "get": _operation("consumption limits (消费限额)", 200, "Limits", _errors(OWN), parameters=[ACCOUNT]),
            "put": _operation(
                "set both limits; terminals apply them at their next sync", 200, "Limits",
                _errors(OWN, WITH_BODY, WITH_PIN), parameters=[ACCOUNT], body=_body({
                    "pin": PIN,
                    "single_limit_fen": {"type": "integer", "minimum": 1, "maximum": limits.MAX_SINGLE_LIMIT_FEN},
                    "daily_limit_fen": {"type": "integer", "minimum": 1, "maximum": limits.MAX_DAILY_LIMIT_FEN}}))},
        "/accounts/{account_id}/electricity": {"post": _operation(
            "pay dorm electricity for a room of the hall's lists (legacy wallet first, then main); unknown "
            "room 404, a stopped one 409", 200, "ElectricityPayment",
            _errors(OWN, WITH_BODY, WITH_PIN, (409,)), parameters=[ACCOUNT], body=_body({
                "pin": PIN, "building": {"type": "string", "pattern": "^[0-9A-Za-z\\u4e00-\\u9fff-]{1,16}$"},
                "floor": {"type": "integer", "minimum": 1, "maximum": electricity.MAX_FLOOR},
                "room": {"type": "string", "pattern": "^[0-9A-Za-z-]{1,8}$"},
                "amount_fen": {"type": "integer", "minimum": 1, "maximum": electricity.MAX_PAYMENT_FEN}},
                {"idempotency_key": IDEMPOTENCY_KEY,
                 "kind": {"type": "string", "enum": list(electricity.KINDS), "default": electricity.DEFAULT_KIND,
                          "description": "lighting 照明用电; aircon 空调用电 where the building lists it (else 409)"}}))},
    }


def _channel_paths():
    """Each channel's asynchronous notification (sync_server/channels/), in the channel's own format and
    answered in it; no bearer token: the channel's signature is the credential."""
    def plain(*values):
        return {"text/plain": {"schema": {"type": "string", "enum": list(values)}}}

    wechat_answer = {"application/json": {"schema": _ref("WeChatPayAnswer")}}
    error = {"application/json": {"schema": _ref("Error")}}
    outcome_headers = {
        "X-Ykt-Outcome": {"schema": {"type": "string", "enum": ["credited", "duplicate", "closed", "ignored"]}},
        "X-Ykt-Order-Status": {"schema": {"type": "string", "enum": ["pending", "paid", "closed"]}}}
    refused = {
        400: "bad_notification (not the channel's format), bad_resource (WeChat Pay: does not decrypt)",
        401: "bad_signature (forged, altered, unsigned), stale_notification (WeChat Pay: timestamp off by 5 min)",
        404: "unknown_order; or, in the API's JSON error, channel_not_configured",
        409: "amount_mismatch, wrong_channel, other_merchant (another app_id / mchid / POSID)"}

    def notify(summary, body, accepted, failed, parameters=()):
        responses = {"200": {"description": "received (duplicates too): the channel stops notifying",
                             "headers": outcome_headers, "content": accepted},
                     "413": {"description": ERROR_TEXT[413], "content": error}}
        for status, text in refused.items():
            content = dict(failed)
            if status == 404:
                content = {kind: {"schema": {"anyOf": [entry["schema"], _ref("Error")]}} if kind in error else entry
                           for kind, entry in failed.items()}
                content.setdefault("application/json", error["application/json"])
            responses[str(status)] = {"description": "refused and logged, nothing changed: " + text,
                                      "headers": {"X-Ykt-Error": {"schema": TEXT}}, "content": content}
        return {"post": {"summary": summary, "parameters": list(parameters), "security": [], "responses": responses,
                         "requestBody": {"required": True, "content": body}}}

    def form(required, optional=None):
        return {"application/x-www-form-urlencoded": {"schema": _object(required, optional)}}

    yuan = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?$", "description": "yuan"}
    wechat_headers = [{"name": name, "in": "header", "required": True, "schema": schema} for name, schema in (
        ("Wechatpay-Timestamp", {"type": "string", "pattern": "^[0-9]{1,12}$"}), ("Wechatpay-Nonce", TEXT),
        ("Wechatpay-Signature", TEXT), ("Wechatpay-Serial", TEXT),
        ("Wechatpay-Signature-Type", {"type": "string", "enum": ["WECHATPAY2-SHA256-RSA2048"]}))]
    return {
        "/channels/alipay/notify": notify(
            "Alipay's asynchronous notification (trade_status_sync), RSA2-signed form; answered success / fail",
            form({"notify_time": TEXT, "notify_type": {"type": "string", "enum": ["trade_status_sync"]},
                  "notify_id": TEXT, "app_id": TEXT, "sign_type": {"type": "string", "enum": ["RSA2"]},
                  "sign": TEXT, "trade_no": TEXT, "out_trade_no": TEXT,
                  "trade_status": {"type": "string", "enum": ["TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED",
                                                              "WAIT_BUYER_PAY"]},
                  "total_amount": yuan}, {"charset": TEXT, "version": TEXT, "seller_id": TEXT}),
            plain("success"), plain("fail")),
        "/channels/wechat/notify": notify(
            "WeChat Pay v3's payment notification: JSON with an AEAD_AES_256_GCM resource, signed in the "
            "Wechatpay-* headers; answered {code: SUCCESS} or {code: FAIL, message}",
            {"application/json": {"schema": _object(
                {"id": TEXT, "create_time": TEXT, "event_type": TEXT,
                 "resource_type": {"type": "string", "enum": ["encrypt-resource"]},
                 "resource": _object({"algorithm": {"type": "string", "enum": ["AEAD_AES_256_GCM"]},
                                      "ciphertext": TEXT, "nonce": TEXT},
                                     {"associated_data": TEXT, "original_type": TEXT})},
                {"summary": TEXT})}},
            wechat_answer, wechat_answer, parameters=wechat_headers),
        "/channels/ccb/notify": notify(
            "CCB 龙支付's server notification, MD5withRSA-signed form (SIGN, hex); answered SUCCESS / FAIL",
            form({"POSID": TEXT, "BRANCHID": TEXT, "ORDERID": TEXT, "PAYMENT": yuan,
                  "CURCODE": {"type": "string", "enum": ["01"]}, "REMARK1": TEXT, "REMARK2": TEXT, "ACC_TYPE": TEXT,
                  "SUCCESS": {"type": "string", "enum": ["Y", "N", "E"]}, "SIGN": TEXT},
                 {"TYPE": TEXT, "REFERER": TEXT, "CLIENTIP": TEXT, "ACCDATE": TEXT}),
            plain("SUCCESS"), plain("FAIL")),
    }


def _water_paths():
    """扫码用水: the phone's side of Bluetooth water (sync_server/services/water.py)."""
    hex_bytes = {"type": "string", "maxLength": 128, "description": "hex"}
    return {
        "/water/grants": {"post": _operation(
            "hold money and sign a grant for a dispenser's challenge (read from its CHALLENGE characteristic)",
            201, "WaterGrant", _errors(SIGNED_IN, WITH_BODY, (409, 429)),
            body=_body({"dispenser_id": ID, "challenge": hex_bytes}))},
        "/water/receipts": {"post": _operation(
            "hand in the dispenser's usage receipt: the grant is settled once, the rest of its hold released",
            200, "WaterGrantState", _errors(SIGNED_IN, WITH_BODY, (403,)), body=_body({"receipt": hex_bytes}))},
        "/water/grants/{grant_id}/cancel": {"post": _operation(
            "give up a grant the dispenser refused (or never used): its hold goes back at once", 200,
            "WaterGrantState", _errors(SIGNED_IN, (400, 403)),
            parameters=[{"name": "grant_id", "in": "path", "required": True, "schema": ID}])},
        "/water/grants/{grant_id}": {"get": _operation(
            "the state of one of the holder's grants", 200, "WaterGrantState", _errors(SIGNED_IN, (400, 403)),
            parameters=[{"name": "grant_id", "in": "path", "required": True, "schema": ID}])},
    }


def _paycode_paths():
    """付款码: the phone's credential and certificate (sync_server/services/paycode.py)."""
    credential = [{"name": "credential_id", "in": "path", "required": True, "schema": ID}]
    return {
        "/paycode/credentials": {
            "post": _operation(
                "enable the payment code: certify the phone's Ed25519 public key (needs the card PIN, not the "
                "initial one)", 201, "PayCodeCertificate", _errors(SIGNED_IN, WITH_BODY, WITH_PIN, (409,)),
                body=_body({"public_key": {"type": "string", "description": "hex, 32 bytes"}, "pin": PIN})),
            "get": _operation("the holder's pay-code credentials", 200, "PayCodeCredentials", _errors(SIGNED_IN))},
        "/paycode/credentials/{credential_id}/certificate": {"post": _operation(
            "renew the certificate of an active credential", 200, "PayCodeCertificate",
            _errors(SIGNED_IN, (400, 409)), parameters=credential)},
        "/paycode/credentials/{credential_id}/stop": {"post": _operation(
            "stop the payment code on that phone: every terminal refuses its codes after its next sync", 200,
            "PayCodeStopped", _errors(SIGNED_IN, (400,)), parameters=credential)},
        "/paycode/credentials/{credential_id}/uses": {"get": _operation(
            "recent uses of the credential's codes, newest first", 200, "PayCodeUses", _errors(SIGNED_IN, (400,)),
            parameters=credential + [_query("since_ms", {"type": "integer", "minimum": 0},
                                            "only uses at or after this server time")])},
    }


def _wallet_move_paths():
    """钱包间转账 by the holder: 圈存 main -> water only (sync_server/services/wallet_move.py); the
    old-system balance moves into main at the service hall, never here."""
    wallet = {"type": "string", "enum": ["main", "water", "legacy"]}
    return {
        "/wallet-move": {"post": _operation(
            "圈存: move money from the main wallet to the water wallet (card PIN); the same request_id again "
            "books nothing and answers the first receipt, with other details it is a 409", 200,
            "WalletMoveReceipt", _errors(SIGNED_IN, WITH_BODY, WITH_PIN, (409,)), body=_body({
                "from_wallet": dict(wallet, description="main (legacy -> main is done at the service hall: 403)"),
                "to_wallet": dict(wallet, description="water"),
                "amount_fen": {"type": "integer", "minimum": 1,
                               "maximum": wallet_move.MAX_MOVE_FEN[("main", "water")],
                               "description": "at most what the main wallet holds"},
                "pin": PIN, "request_id": IDEMPOTENCY_KEY}))},
        "/wallet-moves": {"get": _operation(
            "the holder's wallet-move receipts, newest first", 200, "WalletMoves", _errors(SIGNED_IN, (400,)),
            parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": wallet_move.MAX_LISTED},
                               "default 20")])},
    }


def _electricity_paths():
    """学生公寓电费: the service hall's room lists and a room's recent payments (services/electricity.py)."""
    building = {"name": "building", "in": "path", "required": True, "description": "a building's code",
                "schema": {"type": "string", "pattern": "^[0-9A-Za-z\\u4e00-\\u9fff-]{1,16}$"}}
    floor = {"name": "floor", "in": "path", "required": True,
             "schema": {"type": "integer", "minimum": 1, "maximum": electricity.MAX_FLOOR}}
    room = {"name": "room", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9A-Za-z-]{1,8}$"}}
    return {
        "/electricity/buildings": {"get": _operation(
            "the active buildings with their floors and kinds of electricity (选择楼栋)", 200, "ElectricityBuildings",
            _errors(SIGNED_IN))},
        "/electricity/buildings/{building}/floors/{floor}/rooms": {"get": _operation(
            "the active rooms of a floor (选择房间); an unknown or stopped building is 404", 200, "ElectricityRooms",
            _errors(SIGNED_IN, (400,)), parameters=[building, floor])},
        "/electricity/rooms/{building}/{floor}/{room}/payments": {"get": _operation(
            "a listed room's recent payments, newest first, payers' names masked (anyone signed in: roommates "
            "pay for one meter)", 200, "ElectricityRoomPayments", _errors(SIGNED_IN, (400,)),
            parameters=[building, floor, room, _query("limit", {"type": "integer", "minimum": 1,
                                                                "maximum": electricity.MAX_LISTED_PAYMENTS},
                                                      "default %d" % electricity.DEFAULT_LISTED_PAYMENTS)])},
    }


def document():
    """The whole OpenAPI document as a dict (JSON-ready)."""
    paths = {}
    for group in (_binding_paths(), _account_paths(), _water_paths(), _paycode_paths(), _channel_paths()):
        paths.update(group)
    paths.update(_wallet_move_paths())
    paths.update(_electricity_paths())
    paths.update(_photo_paths())
    paths["/openapi.json"] = {"get": {"summary": "this document", "security": [], "parameters": [], "responses": {
        "200": dict(_json({"type": "object"}), description="the OpenAPI document")}}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "ykt cardholder API", "version": "1",
                 "description": "The phone app's and kiosks' JSON API. Errors are JSON {error, message "
                                "(中文 / English), message_zh, message_en} with a 4xx status."},
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "the token from /bind or /sign-in"}}},
    }
