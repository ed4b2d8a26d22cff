"""Alipay (支付宝): the asynchronous notification signed RSA2, and the `alipay.trade.wap.pay` order.

Notification (异步通知): Alipay POSTs `application/x-www-form-urlencoded; charset=utf-8` to the
notify_url the order string named, with (among others) notify_time, notify_type=trade_status_sync,
notify_id, app_id, charset, version, sign_type=RSA2, sign, trade_no (Alipay's number), out_trade_no
(ours), trade_status, total_amount (yuan, two decimals), seller_id, gmt_payment. The signature covers
every other parameter: sign and sign_type removed, the rest sorted by name and joined as
`k=v&k=v` (values as received, not URL-encoded), RSA PKCS#1 v1.5 over SHA-256 with Alipay's key,
base64 in `sign`. trade_status: TRADE_SUCCESS and TRADE_FINISHED are paid (FINISHED also follows a
SUCCESS when the refund window ends: a duplicate here), TRADE_CLOSED closed (an unpaid order timed
out, or a paid one refunded in full: only a pending order closes), WAIT_BUYER_PAY is not normally
notified. The merchant must check that app_id (and seller_id) are its own and the amount is the
order's, answer the plain text `success` (anything else and Alipay notifies again, 8 times over about
25 hours: 4m, 10m, 10m, 1h, 2h, 6h, 15h). The verification itself is python-alipay-sdk's
`AliPay.verify(data, signature)` (sign removed, sign_type popped and checked by the library).

Order (alipay.trade.wap.pay, 手机网站支付): the SDK's `client_api` signs the request parameters with the
app private key (RSA2) into an order string; the phone opens `<gateway>?<order string>`.
biz_content: out_trade_no, total_amount, subject, product_code QUICK_WAP_WAY, time_expire (when we
close the order ourselves). With "return_url" configured (alipay.json; a path such as "/app/recharge"
is completed with the address the phone reached us at) the signed order carries return_url: Alipay
sends the holder's browser back there after paying, and the page picks the open order up again.

Sources: python-alipay-sdk 3.4 (README "Notification verification" and alipay/__init__.py:
`verify`, `sign_data`, `client_api`); Alipay open platform "异步通知说明" / antom.com "Verifying the
Asynchronous Notification" (the `success` answer and the retry schedule); the parameter list as in
the Alipay notify documentation quoted by integrations (rust_pay_wf's alipay/notify.rs: sign and
sign_type excluded, sorted k=v).
"""
from alipay import AliPay

from sync_server.channels import (CLOSED, OTHER, PAID, Notice, NoticeRefused, beijing_time, fen_to_yuan, form_fields,
                                  on_server, text_of, yuan_to_fen)

GATEWAY = "https://openapi.alipay.com/gateway.do"
REQUIRED = ("notify_time", "notify_type", "notify_id", "app_id", "sign_type", "sign", "trade_no", "out_trade_no",
            "trade_status", "total_amount")
STATUSES = {"TRADE_SUCCESS": PAID, "TRADE_FINISHED": PAID, "TRADE_CLOSED": CLOSED, "WAIT_BUYER_PAY": OTHER}
SUBJECT = "校园一卡通充值"


class AlipayChannel:
    name = "alipay"

    def __init__(self, config):
        config.check_keys(("app_id", "app_private_key_pem_file", "alipay_public_key_pem_file"),
                          ("seller_id", "gateway", "notify_url", "return_url"))
        self.app_id = config["app_id"]
        self.seller_id = config.get("seller_id")
        self.gateway = config.get("gateway", GATEWAY)
        self.notify_url = config.get("notify_url")
        self.return_url = config.url("return_url", path_ok=True)
        try:
            self._sdk = AliPay(appid=self.app_id, app_notify_url=None,
                               app_private_key_string=config.read_file("app_private_key_pem_file", private=True),
                               alipay_public_key_string=config.read_file("alipay_public_key_pem_file", private=False),
                               sign_type="RSA2")
        except (ValueError, IndexError, TypeError):
            raise config.error("密钥无法读取（应为 PEM 格式的 RSA 密钥）", "a key does not load (PEM RSA keys expected)")

    def __repr__(self):
        return "AlipayChannel(app_id=%s, <keys hidden>)" % self.app_id

    def verify(self, headers, body, now_s=None):
        fields = form_fields(text_of(body))
        missing = [name for name in REQUIRED if not fields.get(name)]
        if missing:
            raise NoticeRefused("malformed", "missing " + ",".join(missing))
        if fields["sign_type"] != "RSA2":
            raise NoticeRefused("bad_signature", "sign_type %s" % fields["sign_type"][:16])
        unsigned = {name: value for name, value in fields.items() if name != "sign"}
        try:
            verified = self._sdk.verify(unsigned, fields["sign"])
        except Exception:            # bad base64, a sign_type the library refuses: not a signature of Alipay's
            verified = False
        if not verified:
            raise NoticeRefused("bad_signature")
        order_id = fields["out_trade_no"]
        if fields["app_id"] != self.app_id or (self.seller_id and fields.get("seller_id") != self.seller_id):
            raise NoticeRefused("other_merchant", "app_id %s" % fields["app_id"][:32], order_id)
        if fields.get("charset", "utf-8").lower() != "utf-8" or fields["notify_type"] != "trade_status_sync":
            raise NoticeRefused("malformed", "charset or notify_type", order_id)
        status = STATUSES.get(fields["trade_status"])
        amount_fen = yuan_to_fen(fields["total_amount"])
        if status is None or amount_fen is None:
            raise NoticeRefused("malformed", "trade_status or total_amount", order_id)
        return Notice(order_id, status, amount_fen, fields["trade_no"], text_of(body))

    def answer(self, accepted, message=""):
        return (b"success" if accepted else b"fail"), "text/plain"

    def payment_request(self, order, notify_url, client_ip=None, now_s=None, expire_s=None):
        """The signed order string of alipay.trade.wap.pay, and the URL the phone opens."""
        biz_content = {"out_trade_no": order["order_id"], "total_amount": fen_to_yuan(order["amount_fen"]),
                       "subject": SUBJECT, "product_code": "QUICK_WAP_WAY"}
        if expire_s is not None:
            biz_content["time_expire"] = beijing_time(expire_s)
        order_string = self._sdk.client_api("alipay.trade.wap.pay", biz_content,
                                            notify_url=self.notify_url or notify_url,
                                            return_url=on_server(self.return_url, notify_url),
                                            timestamp=beijing_time(now_s))
        return {"channel": self.name, "kind": "alipay.trade.wap.pay", "method": "GET",
                "url": "%s?%s" % (self.gateway, order_string), "order_string": order_string}
