"""Payment channels (充值渠道) in their own formats: Alipay, WeChat Pay v3, CCB 龙支付.

One module per channel (alipay.py, wechat.py, ccb.py), each a class that

    verify(headers, body, now_s) -> Notice      the channel's asynchronous notification, verified and
                                                read; NoticeRefused when it does not verify or is not
                                                for this merchant (nothing about orders: that is
                                                sync_server/services/recharge.py's part)
    answer(accepted, message) -> (body, mimetype)   what the channel expects back
    payment_request(order, notify_url, client_ip, now_s) -> dict   what the phone needs to pay the
                                                order in the channel (signed where the channel signs):
                                                {channel, kind, method, url, ...}; `method` GET: the phone
                                                opens `url`. `notify_url` is our own notify address as the
                                                request reached us: the base of a configured path such as
                                                "/app/recharge". WeChat Pay's sends the H5 prepay request
                                                to WeChat first and hands on the h5_url it answers; when
                                                WeChat refuses or cannot be reached the order stays pending
                                                and `pay` says so instead: `error` channel_unavailable,
                                                `reason`, `message_zh`, `message_en` and `message`
                                                ("中文 / English"), `method` POST (nothing for the phone to
                                                open). Never raises for the channel's own failures.

Configuration: one JSON file per channel in the channels directory (`<data_dir>/channels/`, or the
app's CHANNELS_DIR), read once when the app starts. A channel without its file is not configured:
its orders and notices are refused (channel_not_configured), there is no fallback. Key material is
never in the JSON itself, only file names (relative to the channels directory, or absolute); a file
holding a private key or the WeChat APIv3 key must be readable by its owner only (0600), as the
master key must. A file that is missing, malformed or too open stops the server at start-up
(ChannelConfigError) rather than leaving the channel half-configured.

    alipay.json  {"app_id", "app_private_key_pem_file", "alipay_public_key_pem_file",
                  optional "seller_id", "gateway", "notify_url", "return_url"}
    wechat.json  {"mchid", "appid", "apiv3_key_file", "platform_public_key_pem_file", "platform_serial",
                  "merchant_private_key_pem_file", "merchant_serial",
                  optional "notify_url", "api_base_url", "redirect_url"}
    ccb.json     {"merchant_id", "pos_id", "branch_id", "ccb_public_key_pem_file",
                  optional "gateway"}

URLs in the files: https only (http only to 127.0.0.1 / localhost, for tests and the demo's
sandboxes). Alipay's "return_url" and WeChat Pay's "redirect_url" (where the phone comes back after
paying: the phone app's /app/recharge, which picks the open order up again) may also be a path on this
server, "/app/recharge", completed with the address the phone reached us at; without return_url Alipay
leaves the holder in its own page, without redirect_url WeChat Pay comes back to /app/recharge.
WeChat Pay's "api_base_url" is where the server sends its API requests (default
https://api.mch.weixin.qq.com: scheme, host and port only).

Keys and key texts are never logged and never put in exceptions; `repr()` of a channel hides them.
"""
import collections
import datetime
import json
import os
import re
import stat
import time
from urllib.parse import urljoin, urlsplit

from sync_server import keys

NAMES = ("alipay", "wechat", "ccb")
CONFIG_DIR_NAME = "channels"
MAX_NOTICE_BYTES = 16 * 1024          # a notice is a few kB; anything larger is refused unread
MAX_KEY_FILE_BYTES = 16 * 1024
BEIJING = datetime.timezone(datetime.timedelta(hours=8))
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

PAID, CLOSED, OTHER = "paid", "closed", "other"

# What recharge.py needs from a verified notice. status: PAID, CLOSED, or OTHER (acknowledged and
# ignored: a payment still waiting, a failed attempt, an event we do not act on). amount_fen: the
# amount the notice states (int), trade_no: the channel's own number for the payment (or None).
# text: what the notification log keeps for the audit (the notice as received; decrypted for WeChat).
Notice = collections.namedtuple("Notice", "order_id status amount_fen trade_no text")


class NoticeRefused(Exception):
    """A notice that does not verify or is not ours. `reason`: bad_signature, malformed,
    other_merchant, bad_resource, stale_notification; `detail`: a short text for the log (no keys)."""

    def __init__(self, reason, detail="", order_id=None):
        Exception.__init__(self, "%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason
        self.detail = detail
        self.order_id = order_id


class ChannelConfigError(keys.MasterKeyError):
    """A channel's configuration that cannot be used; reported at start-up like a bad master key."""


def config_dir(data_dir):
    return os.path.join(data_dir, CONFIG_DIR_NAME)


def _classes():
    from sync_server.channels import alipay, ccb, wechat
    return {"alipay": alipay.AlipayChannel, "wechat": wechat.WeChatChannel, "ccb": ccb.CcbChannel}


def load(directory):
    """{name: channel} for every channel configured in `directory` (none when it does not exist)."""
    loaded = {}
    for name, cls in _classes().items():
        path = os.path.join(directory, name + ".json")
        if os.path.exists(path):
            loaded[name] = cls(Config(directory, name, path))
    return loaded


class Config:
    """One channel's JSON settings and the files they name."""

    def __init__(self, directory, name, path):
        self.directory = directory
        self.name = name
        self.file_name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as handle:
                self.values = json.load(handle)
        except (OSError, ValueError) as error:
            raise self.error("无法读取", "cannot read it: %s" % type(error).__name__)
        if not isinstance(self.values, dict):
            raise self.error("应为 JSON 对象", "it must hold a JSON object")

    def error(self, zh, en):
        return ChannelConfigError("充值渠道配置错误（%s）：%s / payment channel configuration error (%s): %s"
                                  % (self.file_name, zh, self.file_name, en))

    def check_keys(self, required, optional=()):
        missing = [key for key in required if not isinstance(self.values.get(key), str) or not self.values[key]]
        if missing:
            raise self.error("缺少 %s" % ", ".join(missing), "missing %s" % ", ".join(missing))
        unknown = sorted(set(self.values) - set(required) - set(optional))
        if unknown:
            raise self.error("未知的设置 %s" % ", ".join(unknown), "unknown settings %s" % ", ".join(unknown))
        for key in optional:
            if key in self.values and not isinstance(self.values[key], str):
                raise self.error("%s 应为字符串" % key, "%s must be a string" % key)

    def url(self, key, default=None, base=False, path_ok=False):
        """The setting `key` as a URL (or `default` when absent): https, or http to 127.0.0.1 / localhost;
        `base`: scheme, host and port only (returned without a trailing slash); `path_ok`: a path on this
        server ("/app/recharge") is taken as it is (see on_server())."""
        value = self.values.get(key, default)
        if value is None:
            return None
        if not _url_acceptable(value, base, path_ok):
            zh_what = "https 根地址（协议、主机和端口）" if base else "https 地址"
            en_what = "an https base URL (scheme, host and port)" if base else "an https URL"
            if path_ok:
                zh_what, en_what = zh_what + "或本服务器上的路径", en_what + " or a path on this server"
            raise self.error("%s 应为%s（http 仅限 127.0.0.1 / localhost）" % (key, zh_what),
                             "%s must be %s (http only to 127.0.0.1 / localhost)" % (key, en_what))
        return value.rstrip("/") if base else value

    def get(self, key, default=None):
        return self.values.get(key, default)

    def __getitem__(self, key):
        return self.values[key]

    def read_file(self, key, private):
        """The text of the file the setting `key` names; a private one must be owner-only."""
        path = self.values[key]
        path = path if os.path.isabs(path) else os.path.join(self.directory, path)
        try:
            mode = os.stat(path).st_mode
            with open(path, "rb") as handle:
                data = handle.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as error:
            raise self.error("无法读取 %s 指定的文件" % key, "cannot read the file %s names: %s"
                             % (key, error.strerror or type(error).__name__))
        if private and stat.S_IMODE(mode) & 0o077:
            raise self.error("%s 指定的文件权限过宽，请 chmod 600" % key,
                             "the file %s names is readable by others; chmod 600 it" % key)
        if len(data) > MAX_KEY_FILE_BYTES:
            raise self.error("%s 指定的文件过大" % key, "the file %s names is too large" % key)
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise self.error("%s 指定的文件不是 PEM 文本" % key, "the file %s names is not PEM text" % key)


def _url_acceptable(value, base, path_ok):
    if not value.isascii() or any(ord(char) <= 32 or ord(char) == 127 for char in value) or "\\" in value:
        return False
    if path_ok and value.startswith("/") and not value.startswith("//"):
        return True
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port        # a port that is not a number raises here
    except ValueError:
        return False
    if not host or not (parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS)):
        return False
    if parts.username is not None or parts.password is not None or parts.fragment:
        return False
    return not base or (parts.path in ("", "/") and not parts.query)


# --- shared helpers -------------------------------------------------------------------------------

_YUAN = re.compile(r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$")


def yuan_to_fen(text):
    """'12.30' -> 1230; None for anything that is not a plain non-negative yuan amount."""
    if not isinstance(text, str) or not _YUAN.match(text):
        return None
    whole, _, cents = text.partition(".")
    return int(whole) * 100 + int((cents + "00")[:2])


def fen_to_yuan(fen):
    return "%d.%02d" % divmod(fen, 100)


def beijing_time(now_s=None, fmt="%Y-%m-%d %H:%M:%S"):
    return datetime.datetime.fromtimestamp(time.time() if now_s is None else now_s, BEIJING).strftime(fmt)


def rfc3339(now_s=None):
    """'2026-12-04T12:30:00+08:00', as WeChat Pay writes times."""
    return datetime.datetime.fromtimestamp(int(time.time() if now_s is None else now_s), BEIJING).isoformat()


def on_server(url, server_url):
    """A configured URL that is a path on this server ("/app/recharge") completed with the address
    `server_url` (one of our own URLs as a request reached us); any other URL as it is."""
    if url is None or not url.startswith("/"):
        return url
    return urljoin(server_url, url)


def header(headers, name):
    """A header's value from a case-insensitive mapping or a plain dict, '' when absent."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value if isinstance(value, str) else ""


def text_of(body):
    """The notice body as UTF-8 text, or NoticeRefused(malformed)."""
    if len(body) > MAX_NOTICE_BYTES:
        raise NoticeRefused("malformed", "too large")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise NoticeRefused("malformed", "not UTF-8")


def form_fields(text):
    """'a=1&b=2' (application/x-www-form-urlencoded) -> {name: value}; a name twice, or a part that
    is not name=value, is malformed (a signed form never has either)."""
    from urllib.parse import unquote_plus
    fields = {}
    if not text:
        return fields
    for part in text.split("&"):
        name, equals, value = part.partition("=")
        if not equals:
            raise NoticeRefused("malformed", "not a form")
        try:
            name = unquote_plus(name, errors="strict")
            value = unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            raise NoticeRefused("malformed", "form not UTF-8")
        if not name or name in fields:
            raise NoticeRefused("malformed", "field named twice")
        fields[name] = value
    return fields
