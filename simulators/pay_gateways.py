"""The payment channels' sandboxes, for the tests and the demo: Alipay, WeChat Pay v3 and CCB 龙支付,
each signing (and for WeChat Pay encrypting) its notifications exactly as the real channel does,
with test keys of its own made here with `cryptography`.

    gateways = PayGateways()                 # fresh test keys: RSA 2048 for each channel's own key,
                                             # our Alipay app key and WeChat merchant key, an APIv3 key
    gateways.install(data_dir)               # the server's side: <data_dir>/channels/*.json, the
                                             # channels' public keys and our private ones (0600)
    order = phone.recharge_order(5000, "wechat")            # the order, with its `pay` request
    gateways.pay(server_url, order, times=2)               # the cardholder pays; the channel
                                             # checks our request's signature / MAC, then notifies
                                             # twice (as channels retry) -> [Answer, Answer]
    delivery = gateways.notice(order, "paid", amount_fen=1)   # any notice, for tests: Delivery
    gateways.post(server_url, delivery)      # -> Answer(status, text, outcome, order_status, error)
    gateways.close()                         # also stops WeChat Pay's API server (below)

A Delivery is what goes on the wire: the body bytes and the headers (Alipay and CCB a form, WeChat
Pay JSON with its Wechatpay-* headers). `after_signing={field: value}` changes fields after the
signature was made (an altered notice); `signed_by` another sandbox's key makes a forged one. The
channel's private keys stay in this process: the server only ever sees the public halves.
Formats: sync_server/channels/ (the server's side of each, with the sources looked up).

WeChat Pay's API: the server itself asks WeChat Pay for the page the phone opens (H5 下单), so the
WeChat sandbox also serves `POST /v3/pay/transactions/h5` over HTTP on a free loopback port, started
when the configuration is first written (its address is wechat.json's api_base_url) and stopped by
close(). It verifies the request as WeChat Pay does: the Authorization header's RSA signature over
"POST\n<path>\n<timestamp>\n<nonce>\n<body>\n" with our merchant key's public half, its mchid and
serial_no, a fresh timestamp and an unseen nonce (401 SIGN_ERROR otherwise), then mchid / appid,
amount, notify_url and the H5 scene (400 PARAM_ERROR / APPID_MCHID_NOT_MATCH), and answers
{"h5_url": "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=...&package=..."} signed
with the platform key in Wechatpay-* headers. `wechat.api_calls` lists what it was sent;
`with wechat.api_fault(kind):` makes it misbehave (API_FAULTS). Paying "opens" the URL the phone was
handed (`wechat.open(url)`: the prepay it names, and the redirect_url to come back to), then notifies.
Alipay's configuration sends the holder back to the phone page (return_url /app/recharge).
"""
import base64
import collections
import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import string
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sync_server import channels, keys
from sync_server.channels import ccb as ccb_format, wechat as wechat_format

_TIMEOUT_S = 30.0
FORM = "application/x-www-form-urlencoded; charset=utf-8"

Delivery = collections.namedtuple("Delivery", "channel body headers url", defaults=(None,))


class Answer(collections.namedtuple("Answer", "status text outcome order_status error")):
    """The server's answer to one notice: HTTP status, body text, and our X-Ykt-* headers."""

    @property
    def accepted(self):
        """Answered as the channel expects of a notice received (Alipay success, CCB SUCCESS, WeChat
        Pay's {"code": "SUCCESS"})."""
        if self.status != 200:
            return False
        if self.text in ("success", "SUCCESS"):
            return True
        try:
            return json.loads(self.text).get("code") == "SUCCESS"
        except (ValueError, AttributeError):
            return False


class SandboxRefused(Exception):
    """The sandbox would not take this payment request (its signature or MAC does not verify...)."""


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _digits(count):
    return "".join(secrets.choice(string.digits) for _ in range(count))


def _sign_rsa(key, data, algorithm):
    return key.sign(data, padding.PKCS1v15(), algorithm)


def _verify_rsa(public_key, signature, data, algorithm):
    try:
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
    except Exception:
        return False
    return True


def _trade_no(prefix, order_id):
    """The channel's own number for a payment: the same on every retry, as channels do."""
    return prefix + str(int(hashlib.sha256(order_id.encode()).hexdigest(), 16))[:20]


# --- Alipay ----------------------------------------------------------------------------------------

class AlipaySandbox:
    """Alipay: signs trade_status_sync notices with Alipay's key (RSA2), checks our app's requests."""
    name = "alipay"

    def __init__(self):
        self.app_id = "2021" + _digits(12)
        self.seller_id = "2088" + _digits(12)
        self._alipay_key = _rsa_key()        # Alipay's own: signs notices, never leaves the sandbox
        self._app_key = _rsa_key()           # our app's: Alipay keeps the public half to check requests

    def __repr__(self):
        return "AlipaySandbox(app_id=%s, <keys hidden>)" % self.app_id

    def server_files(self):
        """{file name: (bytes, private)} of the server's channels directory."""
        config = {"app_id": self.app_id, "seller_id": self.seller_id,
                  "app_private_key_pem_file": "alipay_app_private_key.pem",
                  "alipay_public_key_pem_file": "alipay_public_key.pem", "return_url": "/app/recharge"}
        return {"alipay.json": (json.dumps(config, indent=2).encode(), False),
                "alipay_app_private_key.pem": (private_pem(self._app_key), True),
                "alipay_public_key.pem": (public_pem(self._alipay_key), False)}

    def check_request(self, pay):
        """Read an alipay.trade.wap.pay request as Alipay does: our app's RSA2 signature over every
        parameter but sign, sorted; -> (order id, amount in fen, notify_url)."""
        params = dict(parse_qsl(urlsplit(pay["url"]).query, keep_blank_values=True))
        signature = params.pop("sign", "")
        content = "&".join("%s=%s" % item for item in sorted(params.items()))
        if params.get("app_id") != self.app_id or params.get("method") != "alipay.trade.wap.pay" or \
                not _verify_rsa(self._app_key.public_key(), base64.b64decode(signature), content.encode(),
                                hashes.SHA256()):
            raise SandboxRefused("alipay: the order string's signature does not verify")
        biz = json.loads(params["biz_content"])
        return biz["out_trade_no"], channels.yuan_to_fen(biz["total_amount"]), params.get("notify_url")

    def fields(self, order_id, amount_fen, trade_status="TRADE_SUCCESS", app_id=None, **extra):
        now_s = time.time()
        fields = {"notify_time": channels.beijing_time(now_s), "notify_type": "trade_status_sync",
                  "notify_id": uuid.uuid4().hex + _digits(2), "app_id": app_id or self.app_id, "charset": "utf-8",
                  "version": "1.0", "sign_type": "RSA2", "trade_no": _trade_no("2026", order_id),
                  "out_trade_no": order_id, "trade_status": trade_status,
                  "total_amount": channels.fen_to_yuan(amount_fen), "seller_id": self.seller_id,
                  "subject": "校园一卡通充值", "gmt_create": channels.beijing_time(now_s - 30)}
        if trade_status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
            fields.update(receipt_amount=fields["total_amount"], buyer_pay_amount=fields["total_amount"],
                          gmt_payment=channels.beijing_time(now_s - 5))
        fields.update(extra)
        return fields

    def sign(self, fields, key=None):
        """Alipay's notice signature: every field but sign and sign_type, sorted, k=v joined."""
        content = "&".join("%s=%s" % item for item in sorted(fields.items()) if item[0] not in ("sign", "sign_type"))
        signature = _sign_rsa(key or self._alipay_key, content.encode("utf-8"), hashes.SHA256())
        return dict(fields, sign=base64.b64encode(signature).decode())

    def notice(self, order_id, amount_fen, status="paid", app_id=None, after_signing=None, signed_by=None,
               url=None, **extra):
        trade_status = {"paid": "TRADE_SUCCESS", "finished": "TRADE_FINISHED", "closed": "TRADE_CLOSED",
                        "waiting": "WAIT_BUYER_PAY"}[status]
        fields = self.sign(self.fields(order_id, amount_fen, trade_status, app_id, **extra),
                           signed_by._alipay_key if signed_by else None)
        fields.update(after_signing or {})
        return Delivery(self.name, urlencode(fields).encode(), {"Content-Type": FORM}, url)

    def retry(self, delivery):
        return delivery                      # Alipay sends the same form again


# --- WeChat Pay v3 -----------------------------------------------------------------------------------

H5_PAGE = "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb"
API_FAULTS = {
    "refuse": "answer 403 NO_AUTH (WeChat Pay refuses: this merchant may not use H5 payment)",
    "system_error": "answer 500 SYSTEM_ERROR every time",
    "slow": "hold the answer longer than the server waits for it, then close the connection",
    "drop": "close the connection without an answer",
    "forged_answer": "sign the answer with a key that is not the platform key",
    "other_serial": "sign the answer under another platform serial (certificates would be needed)",
}
# the answer held back longer than the server's timeout
_SLOW_S = wechat_format.PREPAY_TIMEOUT_S + 2.0
_MAX_API_BODY = 64 * 1024
_OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_|*-]{6,32}$")

# one request to the sandbox's API: `authorized` when its Authorization verified
ApiCall = collections.namedtuple("ApiCall", "method path out_trade_no authorized status code")
# an h5_url the sandbox answered: what paying through it pays
Prepay = collections.namedtuple("Prepay", "prepay_id package order_id amount_fen notify_url expires_s")


class WeChatSandbox:
    """WeChat Pay: encrypts the transaction under our APIv3 key, signs the body with the platform key;
    answers the server's H5 prepay requests over HTTP (module text)."""
    name = "wechat"

    def __init__(self):
        self.mchid = "19" + _digits(8)
        self.appid = "wx" + secrets.token_hex(8)
        self.platform_serial = "PUB_KEY_ID_" + _digits(28)
        self.merchant_serial = secrets.token_hex(20).upper()
        self._apiv3_key = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        self._platform_key = _rsa_key()      # WeChat Pay's own: signs notices and API answers
        self._merchant_key = _rsa_key()      # ours (apiclient_key.pem): signs our API requests
        self._lock = threading.Lock()
        self._http = None                    # the API server, once started
        self._stopping = threading.Event()
        self._fault = None
        self._other_key = None
        self._nonces = set()
        self.prepays = {}                    # prepay_id -> Prepay
        self.api_calls = []                  # [ApiCall]

    def __repr__(self):
        return "WeChatSandbox(mchid=%s, <keys hidden>)" % self.mchid

    def server_files(self):
        config = {"mchid": self.mchid, "appid": self.appid, "apiv3_key_file": "wechat_apiv3.key",
                  "platform_public_key_pem_file": "wechat_platform_public_key.pem",
                  "platform_serial": self.platform_serial,
                  "merchant_private_key_pem_file": "wechat_merchant_private_key.pem",
                  "merchant_serial": self.merchant_serial, "api_base_url": self.api_base_url}
        return {"wechat.json": (json.dumps(config, indent=2).encode(), False),
                "wechat_apiv3.key": (self._apiv3_key.encode(), True),
                "wechat_platform_public_key.pem": (public_pem(self._platform_key), False),
                "wechat_merchant_private_key.pem": (private_pem(self._merchant_key), True)}

    # -- the API over HTTP ---------------------------------------------------------------------------

    @property
    def api_base_url(self):
        """http://127.0.0.1:<port> of the sandbox's API, started on first use."""
        with self._lock:
            if self._http is None:
                self._stopping.clear()
                self._http = ThreadingHTTPServer(("127.0.0.1", 0), _ApiHandler)
                self._http.daemon_threads = True
                self._http.sandbox = self
                threading.Thread(target=self._http.serve_forever, name="wechat-sandbox-api", daemon=True).start()
            return "http://127.0.0.1:%d" % self._http.server_address[1]

    def close(self):
        with self._lock:
            server, self._http = self._http, None
        if server is not None:
            self._stopping.set()             # a held ("slow") answer gives up at once
            server.shutdown()
            server.server_close()

    @contextlib.contextmanager
    def api_fault(self, kind):
        """The API misbehaves in one of the API_FAULTS ways inside the block."""
        assert kind in API_FAULTS, kind
        self._fault = kind
        try:
            yield self
        finally:
            self._fault = None

    def api(self, method, path, headers, body):
        """One API request -> (status, headers, body bytes), or None: the connection is dropped."""
        fault = self._fault
        if method != "POST" or path != wechat_format.H5_PATH:
            self._called(method, path, None, False, 404, "NOT_FOUND")
            return self._error(404, "NOT_FOUND", "接口不存在")
        authorized = self._authorization_holds(method, path, headers, body)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        out_trade_no = request.get("out_trade_no") if isinstance(request, dict) else None
        if not authorized:
            self._called(method, path, out_trade_no, False, 401, "SIGN_ERROR")
            return self._error(401, "SIGN_ERROR", "签名错误")
        if fault == "drop":
            self._called(method, path, out_trade_no, True, None, "dropped")
            return None
        if fault == "slow":                  # by the time it would answer, the server has given up
            self._called(method, path, out_trade_no, True, None, "held")
            self._stopping.wait(_SLOW_S)
            return None
        if fault in ("refuse", "system_error"):
            status, code, message = (403, "NO_AUTH", "商户无此接口权限") if fault == "refuse" else \
                (500, "SYSTEM_ERROR", "系统错误")
            self._called(method, path, out_trade_no, True, status, code)
            return self._error(status, code, message)
        problem = self._prepay_problem(request)
        if problem:
            code, message = problem
            self._called(method, path, out_trade_no, True, 400, code)
            return self._error(400, code, message)
        prepay = Prepay("wx%s%s" % (time.strftime("%d%H%M%S"), secrets.token_hex(12)), _digits(10),
                        out_trade_no, request["amount"]["total"], request["notify_url"], time.time() + 300)
        with self._lock:
            self.prepays[prepay.prepay_id] = prepay
        answer = json.dumps({"h5_url": "%s?prepay_id=%s&package=%s" % (H5_PAGE, prepay.prepay_id, prepay.package)}
                            ).encode()
        key, serial = None, None
        if fault == "forged_answer":
            key = self._other_key = self._other_key or _rsa_key()
        elif fault == "other_serial":
            serial = "PUB_KEY_ID_" + _digits(28)
        self._called(method, path, out_trade_no, True, 200, None)
        return 200, dict(self.signed_headers(answer, key=key, serial=serial), **{"Request-ID": str(uuid.uuid4())}), \
            answer

    def _called(self, *call):
        with self._lock:
            self.api_calls.append(ApiCall(*call))

    @staticmethod
    def _error(status, code, message):
        return status, {"Content-Type": "application/json; charset=utf-8"}, \
            json.dumps({"code": code, "message": message}, ensure_ascii=False).encode()

    def _authorization_holds(self, method, path, headers, body):
        """WECHATPAY2-SHA256-RSA2048 mchid="...",nonce_str="...",signature="...",timestamp="...",
        serial_no="..." over "<method>\n<path>\n<timestamp>\n<nonce>\n<body>\n", our merchant key."""
        scheme, _, rest = (headers.get("Authorization") or "").partition(" ")
        fields = dict(re.findall(r'([a-z_]+)="([^"]*)"', rest))
        timestamp, nonce = fields.get("timestamp", ""), fields.get("nonce_str", "")
        if scheme != "WECHATPAY2-SHA256-RSA2048" or fields.get("mchid") != self.mchid or \
                fields.get("serial_no") != self.merchant_serial or not (timestamp.isdigit() and len(timestamp) <= 12) \
                or abs(int(timestamp) - time.time()) > 300 or not nonce:
            return False
        try:
            signature = base64.b64decode(fields.get("signature", ""), validate=True)
        except ValueError:
            return False
        message = b"%s\n%s\n%s\n%s\n%s\n" % (method.encode(), path.encode(), timestamp.encode(), nonce.encode(), body)
        if not _verify_rsa(self._merchant_key.public_key(), signature, message, hashes.SHA256()):
            return False
        with self._lock:
            if nonce in self._nonces:
                return False                 # a replayed request
            self._nonces.add(nonce)
        return True

    def _prepay_problem(self, request):
        """(code, message) of what WeChat Pay would refuse in an H5 prepay request, or None."""
        if not isinstance(request, dict):
            return "PARAM_ERROR", "请求体不是 JSON 对象"
        if request.get("mchid") != self.mchid or request.get("appid") != self.appid:
            return "APPID_MCHID_NOT_MATCH", "appid 和 mch_id 不匹配"
        amount, scene = request.get("amount"), request.get("scene_info")
        notify = request.get("notify_url")
        try:
            notify_parts = urlsplit(notify) if isinstance(notify, str) else None
            notify_host = notify_parts.hostname if notify_parts else None
        except ValueError:
            notify_parts = notify_host = None
        if not isinstance(request.get("description"), str) or not 0 < len(request["description"]) <= 127:
            return "PARAM_ERROR", "description 不合法"
        if not isinstance(request.get("out_trade_no"), str) or not _OUT_TRADE_NO.match(request["out_trade_no"]):
            return "PARAM_ERROR", "out_trade_no 不合法"
        if not isinstance(amount, dict) or type(amount.get("total")) is not int or amount["total"] < 1 or \
                amount.get("currency", "CNY") != "CNY":
            return "PARAM_ERROR", "amount 不合法"
        if notify_parts is None or not notify_host or notify_parts.query or notify_parts.fragment or \
                len(notify) > 256 or not (notify_parts.scheme == "https" or (
                    notify_parts.scheme == "http" and notify_host in ("127.0.0.1", "localhost"))):
            return "PARAM_ERROR", "notify_url 不合法"
        if not isinstance(scene, dict) or not scene.get("payer_client_ip") or \
                not isinstance(scene.get("h5_info"), dict) or scene["h5_info"].get("type") not in ("Wap", "iOS",
                                                                                                   "Android"):
            return "PARAM_ERROR", "scene_info 不合法"
        if "time_expire" in request:
            try:
                datetime.datetime.fromisoformat(request["time_expire"])
            except (TypeError, ValueError):
                return "PARAM_ERROR", "time_expire 不合法"
        with self._lock:
            earlier = [prepay for prepay in self.prepays.values() if prepay.order_id == request["out_trade_no"]]
        if any((prepay.amount_fen, prepay.notify_url) != (amount["total"], notify) for prepay in earlier):
            return "OUT_TRADE_NO_USED", "商户订单号重复"
        return None

    def open(self, url):
        """The phone opens an h5_url the sandbox answered (with its redirect_url) -> (Prepay,
        redirect_url or None); SandboxRefused for any other URL or an expired one."""
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        with self._lock:
            prepay = self.prepays.get(params.get("prepay_id"))
        if "%s://%s%s" % (parts.scheme, parts.netloc, parts.path) != H5_PAGE or prepay is None or \
                params.get("package") != prepay.package:
            raise SandboxRefused("wechat: not an h5_url of this sandbox")
        if time.time() > prepay.expires_s:
            raise SandboxRefused("wechat: the h5_url has expired")
        return prepay, params.get("redirect_url")

    def check_request(self, pay):
        """Open the h5_url the phone was handed, as WeChat Pay's page does -> (order id, amount in fen,
        notify_url of the prepay request)."""
        prepay, _redirect_url = self.open(pay["url"])
        return prepay.order_id, prepay.amount_fen, prepay.notify_url

    def transaction(self, order_id, amount_fen, trade_state="SUCCESS", mchid=None, appid=None):
        return {"mchid": mchid or self.mchid, "appid": appid or self.appid, "out_trade_no": order_id,
                "transaction_id": _trade_no("42", order_id)[:28], "trade_type": "MWEB",
                "trade_state": trade_state, "trade_state_desc": "支付成功" if trade_state == "SUCCESS" else trade_state,
                "bank_type": "OTHERS", "attach": "", "success_time": channels.rfc3339(),
                "payer": {"openid": "o" + secrets.token_hex(13)},
                "amount": {"total": amount_fen, "payer_total": amount_fen, "currency": "CNY", "payer_currency": "CNY"}}

    def envelope(self, resource, event_type="TRANSACTION.SUCCESS", bad_tag=False, apiv3_key=None):
        nonce = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12))
        associated_data = "transaction"
        ciphertext = AESGCM((apiv3_key or self._apiv3_key).encode()).encrypt(
            nonce.encode(), json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode(),
            associated_data.encode())
        if bad_tag:
            ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 0x01])
        return {"id": str(uuid.uuid4()), "create_time": channels.rfc3339(), "resource_type": "encrypt-resource",
                "event_type": event_type, "summary": "支付成功",
                "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                             "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": associated_data,
                             "nonce": nonce}}

    def signed_headers(self, body, timestamp=None, key=None, serial=None):
        """The Wechatpay-* headers of one delivery of `body` (each retry is signed anew)."""
        timestamp = str(int(time.time()) if timestamp is None else int(timestamp))
        nonce = secrets.token_hex(16).upper()
        message = b"%s\n%s\n%s\n" % (timestamp.encode(), nonce.encode(), body)
        signature = _sign_rsa(key or self._platform_key, message, hashes.SHA256())
        return {"Content-Type": "application/json", "Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce,
                "Wechatpay-Signature": base64.b64encode(signature).decode(),
                "Wechatpay-Serial": serial or self.platform_serial,
                "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048"}

    def notice(self, order_id, amount_fen, status="paid", mchid=None, appid=None, after_signing=None, signed_by=None,
               bad_tag=False, timestamp=None, event_type="TRANSACTION.SUCCESS", url=None):
        trade_state = {"paid": "SUCCESS", "closed": "CLOSED", "waiting": "NOTPAY"}[status]
        envelope = self.envelope(self.transaction(order_id, amount_fen, trade_state, mchid, appid), event_type,
                                 bad_tag)
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        headers = self.signed_headers(body, timestamp, signed_by._platform_key if signed_by else None)
        if after_signing:
            body = json.dumps(dict(envelope, **after_signing), ensure_ascii=False, separators=(",", ":")).encode()
        return Delivery(self.name, body, headers, url)

    def retry(self, delivery):
        """WeChat Pay sends the same body again, signed with a new timestamp and nonce."""
        return delivery._replace(headers=self.signed_headers(delivery.body))


class _ApiHandler(BaseHTTPRequestHandler):
    """The HTTP side of WeChatSandbox.api()."""

    def do_POST(self):
        self._serve()

    def do_GET(self):
        self._serve()

    def _serve(self):
        length = self.headers.get("Content-Length", "0")
        length = int(length) if length.isdigit() else 0
        body = self.rfile.read(min(length, _MAX_API_BODY))
        answer = self.server.sandbox.api(self.command, urlsplit(self.path).path, self.headers, body)
        if answer is None:
            self.close_connection = True
            return
        status, headers, data = answer
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass                              # the caller gave up waiting (a "slow" answer)

    def log_message(self, *args):
        pass


# --- CCB 龙支付 --------------------------------------------------------------------------------------

class CcbSandbox:
    """CCB: signs server notifications MD5withRSA with the bank's key, checks our payment URL's MAC."""
    name = "ccb"

    def __init__(self):
        self.merchant_id = "105" + _digits(12)
        self.pos_id = _digits(9)
        self.branch_id = "110000000"
        self._ccb_key = _rsa_key()           # the bank's: signs notices; the merchant gets the public half

    def __repr__(self):
        return "CcbSandbox(merchant_id=%s, <keys hidden>)" % self.merchant_id

    @property
    def public_key_hex(self):
        return ccb_format.public_key_hex(self._ccb_key.public_key())

    def server_files(self, hex_key=False):
        """The bank hands its public key over as hex DER; `hex_key` writes it that way, else PEM."""
        config = {"merchant_id": self.merchant_id, "pos_id": self.pos_id, "branch_id": self.branch_id,
                  "ccb_public_key_pem_file": "ccb_public_key.hex" if hex_key else "ccb_public_key.pem"}
        key = (self.public_key_hex.encode(), False) if hex_key else (public_pem(self._ccb_key), False)
        return {"ccb.json": (json.dumps(config, indent=2).encode(), False), config["ccb_public_key_pem_file"]: key}

    def check_request(self, pay):
        """Check the payment URL's MAC as the bank does -> (order id, amount in fen, None: CCB notifies the
        merchant URL set up with the bank, not one from the request)."""
        params = dict(parse_qsl(urlsplit(pay["url"]).query, keep_blank_values=True))
        expected = ccb_format.payment_parameters(params.get("MERCHANTID", ""), params.get("POSID", ""),
                                                 params.get("BRANCHID", ""), params.get("ORDERID", ""),
                                                 channels.yuan_to_fen(params.get("PAYMENT", "")) or 0,
                                                 self.public_key_hex, params.get("CLIENTIP", ""),
                                                 params.get("TIMEOUT"))
        if params.get("MERCHANTID") != self.merchant_id or params.get("POSID") != self.pos_id or \
                params.get("MAC") != dict(expected)["MAC"]:
            raise SandboxRefused("ccb: the payment URL's MAC does not verify")
        return params["ORDERID"], channels.yuan_to_fen(params["PAYMENT"]), None

    def notice(self, order_id, amount_fen, status="paid", pos_id=None, branch_id=None, after_signing=None,
               signed_by=None, url=None):
        fields = {"POSID": pos_id or self.pos_id, "BRANCHID": branch_id or self.branch_id, "ORDERID": order_id,
                  "PAYMENT": channels.fen_to_yuan(amount_fen), "CURCODE": "01", "REMARK1": "", "REMARK2": "",
                  "ACC_TYPE": "12", "SUCCESS": {"paid": "Y", "failed": "N", "gave_up": "E"}[status], "TYPE": "1",
                  "REFERER": "", "CLIENTIP": "127.0.0.1", "ACCDATE": channels.beijing_time(None, "%Y%m%d")}
        key = signed_by._ccb_key if signed_by else self._ccb_key
        fields["SIGN"] = _sign_rsa(key, ccb_format.signed_string(fields).encode("utf-8"), hashes.MD5()).hex()
        fields.update(after_signing or {})
        return Delivery(self.name, urlencode(fields).encode(), {"Content-Type": FORM}, url)

    def retry(self, delivery):
        return delivery


# --- all three -----------------------------------------------------------------------------------------

class PayGateways:
    """The three sandboxes, their server-side configuration, and delivery of their notices over HTTP."""

    def __init__(self):
        self.alipay = AlipaySandbox()
        self.wechat = WeChatSandbox()
        self.ccb = CcbSandbox()
        self._http = None

    def __getitem__(self, name):
        return {"alipay": self.alipay, "wechat": self.wechat, "ccb": self.ccb}[name]

    def install(self, data_dir, names=channels.NAMES):
        """Write the server's channel configuration (<data_dir>/channels/), owner-only like the rest of
        the data directory; the server reads it when it starts."""
        directory = channels.config_dir(str(data_dir))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for name in names:
            for file_name, (data, _private) in self[name].server_files().items():
                keys.write_private_file(os.path.join(directory, file_name), data)
        return directory

    def notice(self, order, status="paid", amount_fen=None, **changes):
        """A notice for `order` (a dict with order_id, amount_fen, channel) from its channel; `signed_by`
        other PayGateways: forged with their keys."""
        if isinstance(changes.get("signed_by"), PayGateways):
            changes["signed_by"] = changes["signed_by"][order["channel"]]
        return self[order["channel"]].notice(order["order_id"], order["amount_fen"] if amount_fen is None
                                             else amount_fen, status, **changes)

    def retry(self, delivery):
        return self[delivery.channel].retry(delivery)

    def http(self):
        if self._http is None:
            self._http = httpx.Client(timeout=_TIMEOUT_S)
        return self._http

    def close(self):
        if self._http is not None:
            self._http.close()
            self._http = None
        self.wechat.close()

    def post(self, server_url, delivery):
        """POST one notice to the server (to the notify_url our request named, else the channel's
        notify path on `server_url`) -> Answer."""
        url = delivery.url or "%s/api/v1/channels/%s/notify" % (server_url.rstrip("/"), delivery.channel)
        response = self.http().post(url, content=delivery.body, headers=delivery.headers)
        return Answer(response.status_code, response.text, response.headers.get("X-Ykt-Outcome"),
                      response.headers.get("X-Ykt-Order-Status"), response.headers.get("X-Ykt-Error"))

    def pay(self, server_url, order, times=1):
        """The cardholder pays `order` (as the server created it, with `pay`) in its channel: the
        channel checks our request, then notifies the payment `times` times -> [Answer]."""
        sandbox = self[order["channel"]]
        order_id, amount_fen, notify_url = sandbox.check_request(order["pay"])
        if order_id != order["order_id"] or amount_fen != order["amount_fen"]:
            raise SandboxRefused("%s: the request is not for this order" % order["channel"])
        delivery = sandbox.notice(order_id, amount_fen, "paid", url=notify_url)
        answers = []
        for attempt in range(times):
            answers.append(self.post(server_url, delivery if attempt == 0 else sandbox.retry(delivery)))
        return answers
