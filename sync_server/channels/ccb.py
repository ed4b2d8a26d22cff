"""CCB 龙支付 (建设银行网上支付 / 龙支付): the bank's signed server notification, and the payment URL.

Notification (服务器通知): CCB POSTs a form to the merchant URL set up with the bank, with

    POSID, BRANCHID, ORDERID, PAYMENT (yuan, two decimals), CURCODE (01: RMB), REMARK1, REMARK2,
    ACC_TYPE, SUCCESS (Y paid; N failed; E the payer gave up), and, for a V6 request sent with TYPE=1,
    TYPE, REFERER, CLIENTIP; ACCDATE when the merchant asked for it; then SIGN.

SIGN is the bank's signature over the string "POSID=..&BRANCHID=..&ORDERID=..&PAYMENT=..&CURCODE=..
&REMARK1=..&REMARK2=..&ACC_TYPE=..&SUCCESS=.." (values as received, empty ones kept, in this fixed
order, not sorted), followed by "&TYPE=..&REFERER=..&CLIENTIP=.." and "&ACCDATE=.." when those are
in the notice: RSA PKCS#1 v1.5 over MD5 ("MD5withRSA"), hex-encoded, verified with the public key CCB
gives the merchant (a hex string of its DER SubjectPublicKeyInfo; a PEM file of it works too).
There is no CCB trade number in the notice: the order number is the reference (the bank's
statement lists it). Only POSID and BRANCHID identify the merchant in it: both must be ours.
Answer: CCB looks for an HTTP 200; we write SUCCESS (FAIL with a 4xx when refused).

Payment (TXCODE 520100, CCB_IBSVersion V6): the phone opens
`https://ibsbjstar.ccb.com.cn/CCBIS/ccbMain?CCB_IBSVersion=V6&MERCHANTID=..&POSID=..&BRANCHID=..
&ORDERID=..&PAYMENT=..&CURCODE=01&TXCODE=520100&REMARK1=&REMARK2=&TYPE=1&GATEWAY=&CLIENTIP=..&REGINFO=
&PROINFO=&REFERER=[&TIMEOUT=yyyyMMddHHmmss]&MAC=..`, where MAC is the MD5 (hex) of the same
parameters joined the same way with PUB=<the last 30 characters of the bank's public key hex> after
TYPE (PUB is in the MAC, never in the URL). In the 龙支付 app the same request carries THIRDAPPINFO
for the jump back to our app (not used here).

What was checked, and where: the nine-field notice and its signature string, MD5withRSA with a hex
SIGN and a hex DER public key - smshen/jpayi (CcbB2cServerPayResultObject.verify, RSASig.
verifySigature, after CCB's own RSASig and "建行网上商户接口文档"); the V6 payment parameters and
PUB = public key[-30:] in the MD5 MAC - an open-source CCB integration (a Django bank proxy: MAC over
MERCHANTID..REMARK2 + RETURNTYPE, TIMEOUT, PUB for TXCODE 530550) and CcbB2cPayObject (520100 with
MD5 MAC). The V6 additions (TYPE, REFERER, CLIENTIP appended to the signed string, ACCDATE after them;
GATEWAY, CLIENTIP, REGINFO, PROINFO, REFERER after PUB in the MAC) follow CCB's V6 merchant manual as
integrations quote it; no primary CCB document was at hand here, so check both strings against the
bank's test environment before going live. The plain SUCCESS answer is ours: the sources define no
answer body.
"""
import binascii
import hashlib
from urllib.parse import urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sync_server.channels import (OTHER, PAID, Notice, NoticeRefused, beijing_time, fen_to_yuan, form_fields, text_of,
                                  yuan_to_fen)

GATEWAY = "https://ibsbjstar.ccb.com.cn/CCBIS/ccbMain"
SIGNED_FIELDS = ("POSID", "BRANCHID", "ORDERID", "PAYMENT", "CURCODE", "REMARK1", "REMARK2", "ACC_TYPE", "SUCCESS")
SIGNED_IF_PRESENT = ("TYPE", "REFERER", "CLIENTIP", "ACCDATE")
STATUSES = {"Y": PAID, "N": OTHER, "E": OTHER}
MAX_SIGN_HEX = 1024                 # a 4096-bit key's signature


def public_key_hex(key):
    """The key as CCB writes it: hex of its DER SubjectPublicKeyInfo."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def signed_string(fields):
    """The string CCB signs, from a notice's fields."""
    names = SIGNED_FIELDS + tuple(name for name in SIGNED_IF_PRESENT if name in fields)
    return "&".join("%s=%s" % (name, fields[name]) for name in names)


def payment_parameters(merchant_id, pos_id, branch_id, order_id, amount_fen, pub_hex, client_ip="", timeout=None):
    """The payment URL's parameters in order, MAC last."""
    head = [("MERCHANTID", merchant_id), ("POSID", pos_id), ("BRANCHID", branch_id), ("ORDERID", order_id),
            ("PAYMENT", fen_to_yuan(amount_fen)), ("CURCODE", "01"), ("TXCODE", "520100"), ("REMARK1", ""),
            ("REMARK2", ""), ("TYPE", "1")]
    tail = [("GATEWAY", ""), ("CLIENTIP", client_ip or ""), ("REGINFO", ""), ("PROINFO", ""), ("REFERER", "")]
    if timeout:
        tail.append(("TIMEOUT", timeout))
    source = "&".join("%s=%s" % item for item in head + [("PUB", pub_hex[-30:])] + tail)
    return head + tail + [("MAC", hashlib.md5(source.encode("utf-8")).hexdigest())]


class CcbChannel:
    name = "ccb"

    def __init__(self, config):
        config.check_keys(("merchant_id", "pos_id", "branch_id", "ccb_public_key_pem_file"), ("gateway",))
        self.merchant_id = config["merchant_id"]
        self.pos_id = config["pos_id"]
        self.branch_id = config["branch_id"]
        self.gateway = config.get("gateway", GATEWAY)
        text = config.read_file("ccb_public_key_pem_file", private=False).strip()
        try:
            if text.startswith("-----BEGIN"):
                key = serialization.load_pem_public_key(text.encode())
            else:
                key = serialization.load_der_public_key(bytes.fromhex("".join(text.split())))
        except ValueError:
            key = None
        if not isinstance(key, rsa.RSAPublicKey):
            raise config.error("建行公钥无法读取（应为 PEM 或十六进制 DER 格式的 RSA 公钥）",
                               "the CCB public key does not load (an RSA key, PEM or hex DER)")
        self._key = key
        self._pub_hex = public_key_hex(key)

    def __repr__(self):
        return "CcbChannel(merchant_id=%s, pos_id=%s)" % (self.merchant_id, self.pos_id)

    def verify(self, headers, body, now_s=None):
        text = text_of(body)
        fields = form_fields(text)
        missing = [name for name in SIGNED_FIELDS if name not in fields]
        if missing or not fields.get("SIGN"):
            raise NoticeRefused("bad_signature" if not missing else "malformed",
                                "missing " + ",".join(missing or ["SIGN"]))
        try:
            if len(fields["SIGN"]) > MAX_SIGN_HEX:
                raise ValueError
            signature = binascii.unhexlify(fields["SIGN"].strip())
            self._key.verify(signature, signed_string(fields).encode("utf-8"), padding.PKCS1v15(), hashes.MD5())
        except (ValueError, binascii.Error, InvalidSignature):
            raise NoticeRefused("bad_signature")
        order_id = fields["ORDERID"]
        if fields["POSID"] != self.pos_id or fields["BRANCHID"] != self.branch_id:
            raise NoticeRefused("other_merchant", "POSID %s BRANCHID %s" % (fields["POSID"][:16], fields["BRANCHID"][:16]),
                                order_id)
        status = STATUSES.get(fields["SUCCESS"])
        amount_fen = yuan_to_fen(fields["PAYMENT"])
        if status is None or amount_fen is None or fields["CURCODE"] != "01" or not order_id:
            raise NoticeRefused("malformed", "SUCCESS, PAYMENT or CURCODE", order_id or None)
        return Notice(order_id, status, amount_fen, None, text)

    def answer(self, accepted, message=""):
        return (b"SUCCESS" if accepted else b"FAIL"), "text/plain"

    def payment_request(self, order, notify_url=None, client_ip=None, now_s=None, expire_s=None):
        """The URL the phone opens to pay in CCB's page (the bank notifies the merchant URL set up with it)."""
        parameters = payment_parameters(self.merchant_id, self.pos_id, self.branch_id, order["order_id"],
                                        order["amount_fen"], self._pub_hex, client_ip,
                                        beijing_time(expire_s, "%Y%m%d%H%M%S") if expire_s is not None else None)
        return {"channel": self.name, "kind": "ccb.520100", "method": "GET",
                "url": "%s?%s" % (self.gateway, urlencode([("CCB_IBSVersion", "V6")] + parameters))}
