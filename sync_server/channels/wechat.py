"""WeChat Pay API v3 (微信支付): the signed, AES-GCM encrypted payment notification, and the H5 prepay.

Notification (支付结果通知): WeChat Pay POSTs JSON to the order's notify_url:

    {"id", "create_time", "event_type": "TRANSACTION.SUCCESS", "resource_type": "encrypt-resource",
     "summary", "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                             "ciphertext" (base64), "associated_data", "nonce"}}

with the headers Wechatpay-Timestamp, Wechatpay-Nonce, Wechatpay-Signature, Wechatpay-Serial and
Wechatpay-Signature-Type (WECHATPAY2-SHA256-RSA2048). The signature is RSA PKCS#1 v1.5 / SHA-256
with the platform key over "<timestamp>\\n<nonce>\\n<body>\\n", base64. The resource decrypts with
AES-256-GCM under the merchant's APIv3 key (32 bytes), nonce and associated_data as given, the
16-byte tag at the end of the ciphertext; the plaintext is the transaction: mchid, appid,
out_trade_no, transaction_id, trade_type, trade_state (SUCCESS), success_time, payer.openid,
amount {total (fen), payer_total, currency CNY}. Only successful payments are notified (a refund's
REFUND.* events, if they come here, are acknowledged and ignored). Answer: HTTP 200 or 204 when
received (a body is not needed; we send {"code": "SUCCESS", "message": "成功"}); 4xx/5xx with
{"code": "FAIL", "message": ...} otherwise, and WeChat Pay notifies again (each retry signed anew).

Verification goes through wechatpayv3's `WeChatPay.callback(headers, body)` (signature, then
decryption) in its "WeChat Pay public key" mode (public_key + public_key_id): built that way the
library never fetches platform certificates over the network. It would still fetch them for a
notice whose Wechatpay-Serial is not the configured one, so such a notice is refused here before the
library sees it (and a platform certificate's own key works too: set platform_serial to the
certificate's serial number). The timestamp must be within 5 minutes of our clock, against replays.
On a failure callback() only says None; the library's own rsa_verify then tells a bad signature from
a resource that does not decrypt (a bad GCM tag).

Prepay (H5 下单, POST /v3/pay/transactions/h5): when an order is made (and while the phone asks
after it) the server sends the prepay request itself through wechatpayv3's `WeChatPay.pay()`, signed
with the merchant key (the `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=...,nonce_str=...,
signature=...,timestamp=...,serial_no=...` header), to the configured API base URL ("api_base_url",
default https://api.mch.weixin.qq.com). WeChat answers {"h5_url": ...} signed in Wechatpay-* headers
with the platform key, which the library verifies (an answer that does not verify is refused). The
phone is handed `pay` = {"method": "GET", "url": h5_url + "&redirect_url=" + the phone page,
URL-encoded, "body": the request as sent}; the phone page ("redirect_url" in wechat.json, default
/app/recharge on this server) is where WeChat sends the holder back after paying.

Each attempt waits PREPAY_TIMEOUT_S to connect and as long to read; a timeout, a dropped connection,
a 5xx or a 429 is tried once more (PREPAY_ATTEMPTS), any other 4xx is WeChat's refusal and is not.
When no h5_url comes the order stays pending (it was made before the request; nothing is credited)
and `pay` says 暂时无法发起微信支付，请稍后重试 instead of a URL (`error` channel_unavailable, `reason`
refused / unreachable / unavailable / bad_answer, message_zh / message_en / message; `method` POST:
nothing for the phone to open), the cause in the server log; never a server error. The phone's polls
ask again: an h5_url is reused for H5_URL_KEPT_S (WeChat keeps one valid 5 minutes; asking again for
the same out_trade_no with the same parameters is allowed), a failure for FAILURE_KEPT_S, per server
process. The library runs in public-key mode with its certificate download disabled (_Core below):
it never fetches platform certificates, and an answer signed under another serial is refused without
going anywhere.

Sources: wechatpayv3 2.0 (core.py `callback`, `decrypt_callback`, `_verify_signature`, `request`
(the base URL `_gate_way`, `_update_certificates`); utils.py `rsa_verify`, `aes_decrypt`,
`build_authorization`; transaction.py `pay`); WeChat Pay v3 H5 下单 (the answer's h5_url, valid 5
minutes, and its redirect_url parameter, URL-encoded); WeChat Pay v3 docs chapter3_3_5 "支付通知API"
(通知应答: 200/204, else 4xx/5xx with {"code": "FAIL", "message"}), as quoted in easywechat #2689.
"""
import collections
import json
import logging
import threading
import time
from urllib.parse import quote, urlsplit

import requests                      # wechatpayv3's HTTP client: its timeouts and connection errors
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.core import Core
from wechatpayv3.utils import load_public_key, rsa_verify

from sync_server.channels import (CLOSED, LOOPBACK_HOSTS, OTHER, PAID, Notice, NoticeRefused, header, on_server,
                                  rfc3339, text_of)

log = logging.getLogger(__name__)

API_BASE_URL = "https://api.mch.weixin.qq.com"
H5_PATH = "/v3/pay/transactions/h5"
H5_URL = API_BASE_URL + H5_PATH
PHONE_PAGE = "/app/recharge"
KIND = "wechatpay.v3.h5_prepay"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
TIMESTAMP_WINDOW_S = 300
HEADERS = ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial",
           "Wechatpay-Signature-Type")
DESCRIPTION = "校园一卡通充值"
PREPAY_TIMEOUT_S = 3.0               # to connect, and to read the answer, each attempt
PREPAY_ATTEMPTS = 2                  # a timeout, a dropped connection or a 5xx is tried once more
RETRY_PAUSE_S = 0.2
H5_URL_KEPT_S = 240                  # WeChat's h5_url is valid 5 minutes: the phone's polls reuse it
FAILURE_KEPT_S = 10                  # a failure is answered again this long before WeChat is asked anew
MAX_KEPT = 4096
UNAVAILABLE = ("暂时无法发起微信支付，请稍后重试", "WeChat Pay cannot take the payment right now; please try again later")


class PrepayFailed(Exception):
    """No h5_url: `reason` refused (a 4xx), unreachable (no answer in time, the connection refused or
    dropped), unavailable (a 5xx or 429), bad_answer (not signed by the platform key, or no h5_url in it)."""

    def __init__(self, reason, detail):
        Exception.__init__(self, "%s: %s" % (reason, detail))
        self.reason = reason
        self.detail = detail


class _Core(Core):
    """wechatpayv3's Core sending to the configured API base URL, in public-key mode only: an answer
    or notice signed under a serial other than the configured one is refused here (the library would
    download platform certificates to look for it), and certificates are never downloaded."""

    def __init__(self, api_base_url, **arguments):
        Core.__init__(self, **arguments)
        self._gate_way = api_base_url

    def _update_certificates(self):
        self._certificates.clear()

    def _verify_signature(self, headers, body):
        if header(headers, "Wechatpay-Serial") != self._public_key_id:
            return False
        return Core._verify_signature(self, headers, body)


def _refusal_of(text):
    """WeChat's error answer {"code", "message"} as a short text for the log."""
    try:
        answer = json.loads(text)
        return "%s %s" % (str(answer.get("code"))[:40], str(answer.get("message"))[:120])
    except (ValueError, TypeError, AttributeError):
        return "(no JSON error)"


class WeChatChannel:
    name = "wechat"

    def __init__(self, config):
        config.check_keys(("mchid", "appid", "apiv3_key_file", "platform_public_key_pem_file", "platform_serial",
                           "merchant_private_key_pem_file", "merchant_serial"),
                          ("notify_url", "api_base_url", "redirect_url"))
        self.mchid = config["mchid"]
        self.appid = config["appid"]
        self.platform_serial = config["platform_serial"]
        self.notify_url = config.get("notify_url")
        self.api_base_url = config.url("api_base_url", API_BASE_URL, base=True)
        self.redirect_url = config.url("redirect_url", PHONE_PAGE, path_ok=True)
        self._kept = collections.OrderedDict()          # order id -> (monotonic time until, pay)
        self._kept_lock = threading.Lock()
        apiv3_key = config.read_file("apiv3_key_file", private=True).strip()
        if len(apiv3_key) != 32:
            raise config.error("APIv3 密钥应为 32 个字符", "the APIv3 key must be 32 characters")
        platform_pem = config.read_file("platform_public_key_pem_file", private=False)
        merchant_pem = config.read_file("merchant_private_key_pem_file", private=True)
        try:
            self._platform_key = load_public_key(platform_pem)
            keys = dict(mchid=self.mchid, private_key=merchant_pem, cert_serial_no=config["merchant_serial"],
                        apiv3_key=apiv3_key, public_key=platform_pem, public_key_id=self.platform_serial,
                        timeout=(PREPAY_TIMEOUT_S, PREPAY_TIMEOUT_S),
                        # a sandbox on loopback is reached directly, whatever proxy the environment names
                        proxy={"http": None, "https": None} if urlsplit(self.api_base_url).hostname in LOOPBACK_HOSTS
                        else None)
            self._pay = WeChatPay(wechatpay_type=WeChatPayType.H5, appid=self.appid, **keys)
            self._pay._core = _Core(self.api_base_url, **keys)      # the library's own, with our base URL
        except Exception:           # the library says only "failed to load private key." (no key text)
            raise config.error("密钥无法读取（商户私钥应为 PKCS#8 PEM，平台公钥应为 PEM）",
                               "a key does not load (merchant key: PKCS#8 PEM; platform key: PEM public key)")

    def __repr__(self):
        return "WeChatChannel(mchid=%s, <keys hidden>)" % self.mchid

    def verify(self, headers, body, now_s=None):
        text = text_of(body)
        signed = {name: header(headers, name) for name in HEADERS}
        if not signed["Wechatpay-Signature"] or signed["Wechatpay-Signature-Type"] != SIGNATURE_TYPE:
            raise NoticeRefused("bad_signature", "unsigned")
        if signed["Wechatpay-Serial"] != self.platform_serial:
            raise NoticeRefused("bad_signature", "serial %s" % signed["Wechatpay-Serial"][:48])
        timestamp = signed["Wechatpay-Timestamp"]
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise NoticeRefused("malformed", "Wechatpay-Timestamp")
        if abs(int(timestamp) - (time.time() if now_s is None else now_s)) > TIMESTAMP_WINDOW_S:
            raise NoticeRefused("stale_notification", "timestamp %s" % timestamp)
        try:
            data = self._pay.callback(signed, text)
        except Exception:           # the signature verified but the body is not the envelope it should be
            data = None
            if self._signature_holds(signed, text):
                raise NoticeRefused("malformed", "envelope")
        if data is None:
            if not self._signature_holds(signed, text):
                raise NoticeRefused("bad_signature")
            envelope = json.loads(text)    # it parsed inside callback() already
            resource = envelope.get("resource")
            if envelope.get("resource_type") != "encrypt-resource" or not isinstance(resource, dict) \
                    or not resource.get("nonce") or not resource.get("ciphertext"):
                raise NoticeRefused("malformed", "resource")
            raise NoticeRefused("bad_resource", "resource does not decrypt")
        resource = data.get("resource")
        if not isinstance(resource, dict):
            raise NoticeRefused("malformed", "resource")
        order_id = resource.get("out_trade_no")
        if not isinstance(order_id, str) or not order_id:
            raise NoticeRefused("malformed", "out_trade_no")
        if resource.get("mchid") != self.mchid or resource.get("appid") != self.appid:
            raise NoticeRefused("other_merchant", "mchid %s" % str(resource.get("mchid"))[:32], order_id)
        amount = resource.get("amount")
        total = amount.get("total") if isinstance(amount, dict) else None
        if type(total) is not int or total < 0 or amount.get("currency", "CNY") != "CNY":
            raise NoticeRefused("malformed", "amount", order_id)
        if data.get("event_type") == "TRANSACTION.SUCCESS" and resource.get("trade_state") == "SUCCESS":
            status = PAID
        elif resource.get("trade_state") == "CLOSED":
            status = CLOSED
        else:
            status = OTHER
        trade_no = resource.get("transaction_id")
        logged = json.dumps({"id": data.get("id"), "create_time": data.get("create_time"),
                             "event_type": data.get("event_type"), "resource": resource},
                            ensure_ascii=False, sort_keys=True)
        return Notice(order_id, status, total, trade_no if isinstance(trade_no, str) else None, logged)

    def _signature_holds(self, signed, text):
        return rsa_verify(signed["Wechatpay-Timestamp"], signed["Wechatpay-Nonce"], text,
                          signed["Wechatpay-Signature"], self._platform_key)

    def answer(self, accepted, message=""):
        answer = {"code": "SUCCESS", "message": "成功"} if accepted else {"code": "FAIL", "message": message or "失败"}
        return json.dumps(answer, ensure_ascii=False).encode(), "application/json"

    def payment_request(self, order, notify_url, client_ip=None, now_s=None, expire_s=None):
        """What the phone opens to pay the order: the h5_url WeChat Pay answered our H5 prepay request
        with (module text), or, when none came, the order's `pay` saying so (never an exception)."""
        order_id = order["order_id"]
        kept = self._kept_pay(order_id)
        if kept is not None:
            return kept
        body = self.prepay_body(order, notify_url, client_ip, expire_s)
        try:
            h5_url = self._prepay(body)
        except PrepayFailed as failure:
            log.warning("wechat prepay for order %s failed (%s): %s", order_id, failure.reason, failure.detail)
            pay = {"channel": self.name, "kind": KIND, "method": "POST", "url": self.api_base_url + H5_PATH,
                   "body": body, "error": "channel_unavailable", "reason": failure.reason,
                   "message_zh": UNAVAILABLE[0], "message_en": UNAVAILABLE[1], "message": "%s / %s" % UNAVAILABLE}
            return self._keep(order_id, pay, FAILURE_KEPT_S)
        back = on_server(self.redirect_url, notify_url)
        pay = {"channel": self.name, "kind": KIND, "method": "GET",
               "url": "%s&redirect_url=%s" % (h5_url, quote(back, safe="")), "body": body}
        return self._keep(order_id, pay, H5_URL_KEPT_S)

    def prepay_body(self, order, notify_url, client_ip=None, expire_s=None):
        """The H5 prepay request's body, as wechatpayv3's pay() sends it (kept in `pay` as `body`)."""
        body = {"appid": self.appid, "mchid": self.mchid, "description": DESCRIPTION,
                "out_trade_no": order["order_id"], "notify_url": self.notify_url or notify_url,
                "amount": {"total": order["amount_fen"], "currency": "CNY"},
                "scene_info": {"payer_client_ip": client_ip or "127.0.0.1", "h5_info": {"type": "Wap"}}}
        if expire_s is not None:
            body["time_expire"] = rfc3339(expire_s)
        return body

    def _prepay(self, body):
        """POST /v3/pay/transactions/h5 through wechatpayv3 -> the h5_url; PrepayFailed otherwise."""
        arguments = dict(body, pay_type=WeChatPayType.H5)
        failure = None
        for attempt in range(PREPAY_ATTEMPTS):
            if attempt:
                time.sleep(RETRY_PAUSE_S)
            try:
                status, text = self._pay.pay(**arguments)
            except requests.RequestException as error:
                failure = PrepayFailed("unreachable", type(error).__name__)
                continue
            except Exception as error:       # the library: "failed to verify the signature" (no key text)
                raise PrepayFailed("bad_answer", str(error)[:120])
            if 200 <= status < 300:
                return self._h5_url(text)
            again = status >= 500 or status == 429            # WeChat busy: worth one more try
            failure = PrepayFailed("unavailable" if again else "refused", "HTTP %d %s" % (status, _refusal_of(text)))
            if not again:
                raise failure
        raise failure

    @staticmethod
    def _h5_url(text):
        try:
            h5_url = json.loads(text).get("h5_url")
        except (ValueError, TypeError, AttributeError):
            h5_url = None
        if not isinstance(h5_url, str) or len(h5_url) > 2048 or not h5_url.isascii() or \
                not h5_url.startswith("https://") or "?" not in h5_url or any(ord(c) <= 32 for c in h5_url):
            raise PrepayFailed("bad_answer", "no usable h5_url")
        return h5_url

    def _kept_pay(self, order_id):
        with self._kept_lock:
            until, pay = self._kept.get(order_id, (0, None))
            if pay is not None and time.monotonic() < until:
                return dict(pay)
            self._kept.pop(order_id, None)
            return None

    def _keep(self, order_id, pay, for_s):
        with self._kept_lock:
            self._kept[order_id] = (time.monotonic() + for_s, pay)
            self._kept.move_to_end(order_id)
            while len(self._kept) > MAX_KEPT:
                self._kept.popitem(last=False)
        return dict(pay)
