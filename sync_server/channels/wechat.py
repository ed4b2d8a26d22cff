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

Prepay (H5 下单, POST /v3/pay/transactions/h5): the request body the server sends, signed at sending
time with the merchant key (WECHATPAY2-SHA256-RSA2048 Authorization); WeChat answers the h5_url the
phone opens. It is built here in the shape wechatpayv3's transaction.pay() sends; not sent offline.

Sources: wechatpayv3 2.0 (core.py `callback`, `decrypt_callback`, `_verify_signature`; utils.py
`rsa_verify`, `aes_decrypt`; transaction.py `pay`); WeChat Pay v3 docs chapter3_3_5 "支付通知API"
(通知应答: 200/204, else 4xx/5xx with {"code": "FAIL", "message"}), as quoted in easywechat #2689.
"""
import json
import time

from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import load_public_key, rsa_verify

from sync_server.channels import (CLOSED, OTHER, PAID, Notice, NoticeRefused, header, rfc3339, text_of)

H5_URL = "https://api.mch.weixin.qq.com/v3/pay/transactions/h5"
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
TIMESTAMP_WINDOW_S = 300
HEADERS = ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial",
           "Wechatpay-Signature-Type")
DESCRIPTION = "校园一卡通充值"


class WeChatChannel:
    name = "wechat"

    def __init__(self, config):
        config.check_keys(("mchid", "appid", "apiv3_key_file", "platform_public_key_pem_file", "platform_serial",
                           "merchant_private_key_pem_file", "merchant_serial"), ("notify_url",))
        self.mchid = config["mchid"]
        self.appid = config["appid"]
        self.platform_serial = config["platform_serial"]
        self.notify_url = config.get("notify_url")
        apiv3_key = config.read_file("apiv3_key_file", private=True).strip()
        if len(apiv3_key) != 32:
            raise config.error("APIv3 密钥应为 32 个字符", "the APIv3 key must be 32 characters")
        platform_pem = config.read_file("platform_public_key_pem_file", private=False)
        merchant_pem = config.read_file("merchant_private_key_pem_file", private=True)
        try:
            self._platform_key = load_public_key(platform_pem)
            self._pay = WeChatPay(wechatpay_type=WeChatPayType.H5, mchid=self.mchid, private_key=merchant_pem,
                                  cert_serial_no=config["merchant_serial"], appid=self.appid, apiv3_key=apiv3_key,
                                  public_key=platform_pem, public_key_id=self.platform_serial)
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
        """The H5 prepay request the server sends to WeChat Pay for this order (its answer's h5_url
        is what the phone opens)."""
        body = {"appid": self.appid, "mchid": self.mchid, "description": DESCRIPTION,
                "out_trade_no": order["order_id"], "notify_url": self.notify_url or notify_url,
                "amount": {"total": order["amount_fen"], "currency": "CNY"},
                "scene_info": {"payer_client_ip": client_ip or "127.0.0.1", "h5_info": {"type": "Wap"}}}
        if expire_s is not None:
            body["time_expire"] = rfc3339(expire_s)
        return {"channel": self.name, "kind": "wechatpay.v3.h5_prepay", "method": "POST", "url": H5_URL,
                "body": body}
