"""Recharge through the channels' own formats, against the real server on each store.

The channels' sandboxes (simulators/pay_gateways.py) make their own test keys, write the server's
channel configuration and sign (WeChat Pay: also encrypt) their notices exactly as Alipay, WeChat
Pay v3 and CCB 龙支付 do; the server verifies them with python-alipay-sdk, wechatpayv3 and RSA-MD5
(sync_server/channels/). Here: what the phone is handed to pay (checked by the sandbox as the channel
would; for WeChat Pay the h5_url the server got from the sandbox's API, which verified our request's
signature first), an order still made, pending and uncredited, with a clear message when WeChat Pay
refuses, fails, times out or answers unsigned, each paid order credited once (retried, out of order,
concurrently), every kind of bad notice refused in the channel's own failure form, logged, and
changing nothing else, the answers the channels expect, and the configuration's own refusals.
"""
import concurrent.futures
import json
import os
import shutil
import time
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import hypothesis
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric import rsa
from schemathesis import GenerationMode
from wechatpayv3.utils import build_authorization

from server_process import running_server
from simulators import pay_gateways
from sync_server import channels, openapi
from sync_server.channels import wechat as wechat_channel
from sync_server.services import recharge
from test_cardholder_api import Holder

CHANNELS = list(channels.NAMES)
ACCEPTED_TEXT = {"alipay": ("success", "text/plain"), "ccb": ("SUCCESS", "text/plain")}


@pytest.fixture(scope="module")
def forger():
    """Sandboxes with keys of their own: what they sign is a forgery to our server."""
    return pay_gateways.PayGateways()


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database, gateways):
    data_dir = tmp_path_factory.mktemp("server")
    gateways.install(data_dir)
    with running_server(data_dir, database=module_database) as handle:
        yield handle


def _order(holder, channel, amount_fen):
    answer = holder.http.post(holder.url("recharge-orders"), json={"amount_fen": amount_fen, "channel": channel})
    assert answer.status_code == 201, answer.text
    return answer.json()


def _credited_once(server, order):
    conn = server.connect()
    try:
        return conn.execute("SELECT count(*), sum(amount_fen) FROM transfers WHERE id = ?",
                            ("o/" + order["order_id"],)).fetchone()
    finally:
        conn.close()


def _accepted_as_the_channel_expects(channel, answer):
    assert answer.status == 200 and answer.accepted, answer
    if channel == "wechat":
        assert json.loads(answer.text) == {"code": "SUCCESS", "message": "成功"}
    else:
        assert answer.text == ACCEPTED_TEXT[channel][0]


# --- what the phone is handed, and a payment notified as the channel does -----------------------------

@pytest.mark.parametrize("channel", CHANNELS)
def test_a_paid_order_is_credited_once_through_the_channels_own_formats(server, gateways, channel):
    holder = Holder(server)
    order = _order(holder, channel, 4321)
    pay = order["pay"]
    assert pay["channel"] == channel
    if channel == "alipay":
        params = dict(parse_qsl(urlsplit(pay["url"]).query))
        biz = json.loads(params["biz_content"])
        assert params["method"] == "alipay.trade.wap.pay" and params["sign_type"] == "RSA2"
        assert biz["out_trade_no"] == order["order_id"] and biz["total_amount"] == "43.21"
        assert biz["product_code"] == "QUICK_WAP_WAY" and "time_expire" in biz
        assert params["notify_url"] == server.url + "/api/v1/channels/alipay/notify"
        assert params["return_url"] == server.url + "/app/recharge"      # back to the phone page
    elif channel == "wechat":
        # the server sent the prepay request to the sandbox's API, which verified our signature, and
        # hands the phone the h5_url it answered, with the way back to the phone page
        assert pay["method"] == "GET" and "error" not in pay
        prepay, redirect_url = gateways.wechat.open(pay["url"])
        assert pay["url"] == "%s?prepay_id=%s&package=%s&redirect_url=%s" % (
            pay_gateways.H5_PAGE, prepay.prepay_id, prepay.package, quote(server.url + "/app/recharge", safe=""))
        assert redirect_url == server.url + "/app/recharge"
        assert (prepay.order_id, prepay.amount_fen) == (order["order_id"], 4321)
        assert prepay.notify_url == server.url + "/api/v1/channels/wechat/notify"
        assert _api_calls(gateways, order) == [("POST", wechat_channel.H5_PATH, order["order_id"], True, 200, None)]
        again = holder.http.get(holder.url("recharge-orders/%s" % order["order_id"])).json()
        assert again["status"] == "pending" and again["pay"]["url"].startswith(pay_gateways.H5_PAGE)
    else:
        params = dict(parse_qsl(urlsplit(pay["url"]).query, keep_blank_values=True))
        assert params["CCB_IBSVersion"] == "V6" and params["TXCODE"] == "520100" and params["PAYMENT"] == "43.21"
        assert "PUB" not in params and len(params["MAC"]) == 32
    # the sandbox checks our request as the channel would (Alipay: our app key's RSA2; CCB: the MAC)
    assert gateways[channel].check_request(pay)[:2] == (order["order_id"], 4321)

    answers = gateways.pay(server.url, order, times=3)           # the channel retries: same notice again
    assert [answer.outcome for answer in answers] == ["credited", "duplicate", "duplicate"]
    for answer in answers:
        _accepted_as_the_channel_expects(channel, answer)
        assert answer.order_status == "paid"
    assert _credited_once(server, order) == (1, 4321)
    assert holder.balance()["wallets"]["main"] == 4321
    paid = holder.http.get(holder.url("recharge-orders/%s" % order["order_id"])).json()
    assert paid["status"] == "paid" and "pay" not in paid
    if channel != "ccb":                                            # CCB's notice carries no number of its own
        assert paid["channel_trade_no"]


def _api_calls(gateways, order):
    return [tuple(call) for call in gateways.wechat.api_calls if call.out_trade_no == order["order_id"]]


# (fault, reason in `pay`, attempts: a timeout, a dropped connection or a 5xx is tried once more)
WECHAT_API_FAULTS = [("refuse", "refused", 1), ("system_error", "unavailable", 2), ("slow", "unreachable", 2),
                     ("drop", "unreachable", 2), ("forged_answer", "bad_answer", 1), ("other_serial", "bad_answer", 1)]


@pytest.mark.parametrize("fault, reason, attempts", WECHAT_API_FAULTS, ids=[fault for fault, _, _ in WECHAT_API_FAULTS])
def test_without_wechats_h5_url_the_order_waits_pending_with_a_clear_message(server, gateways, fault, reason,
                                                                             attempts):
    holder = Holder(server)
    with gateways.wechat.api_fault(fault):
        answer = holder.http.post(holder.url("recharge-orders"), json={"amount_fen": 880, "channel": "wechat"})
    assert answer.status_code == 201, answer.text                   # the order is made all the same, no 500
    order = answer.json()
    pay = order["pay"]
    assert order["status"] == "pending" and (pay["error"], pay["reason"]) == ("channel_unavailable", reason)
    assert pay["message_zh"] == "暂时无法发起微信支付，请稍后重试" and pay["message"].startswith(pay["message_zh"] + " / ")
    assert pay["method"] == "POST" and not pay["url"].startswith(pay_gateways.H5_PAGE)    # nothing to open
    calls = _api_calls(gateways, order)
    assert len(calls) == attempts and all(call[3] for call in calls), calls     # our signature verified each time
    assert not any(call.path == "/v3/certificates" for call in gateways.wechat.api_calls)   # never downloaded
    assert "wechat prepay for order %s failed (%s)" % (order["order_id"], reason) in server.log()
    assert _credited_once(server, order) == (0, None) and holder.balance()["wallets"]["main"] == 0
    kept = holder.http.get(holder.url("recharge-orders/%s" % order["order_id"])).json()
    assert kept["status"] == "pending"


def test_the_sandbox_refuses_a_prepay_request_not_signed_with_our_merchant_key(server, gateways):
    body = json.dumps({"appid": gateways.wechat.appid, "mchid": gateways.wechat.mchid, "out_trade_no": "R123456",
                       "description": "x", "notify_url": server.url + "/api/v1/channels/wechat/notify",
                       "amount": {"total": 1, "currency": "CNY"},
                       "scene_info": {"payer_client_ip": "127.0.0.1", "h5_info": {"type": "Wap"}}})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    authorization = build_authorization(wechat_channel.H5_PATH, "POST", gateways.wechat.mchid,
                                        gateways.wechat.merchant_serial, stranger, data=body)
    answer = httpx.post(gateways.wechat.api_base_url + wechat_channel.H5_PATH, content=body,
                        headers={"Authorization": authorization, "Content-Type": "application/json"})
    assert answer.status_code == 401 and answer.json()["code"] == "SIGN_ERROR"
    assert not any(prepay.order_id == "R123456" for prepay in gateways.wechat.prepays.values())


@pytest.mark.parametrize("channel", CHANNELS)
def test_notices_out_of_order_and_at_once_credit_once(server, gateways, channel):
    holder = Holder(server)
    first, second = _order(holder, channel, 1500), _order(holder, channel, 2500)
    not_paid = "failed" if channel == "ccb" else "closed"
    expected = "ignored" if channel == "ccb" else "closed"
    assert gateways.post(server.url, gateways.notice(second, not_paid)).outcome == expected
    # the first order's payment, delivered eight times at once (the channel's retries racing each other)
    delivery = gateways.notice(first, "paid")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda index: gateways.post(server.url, delivery if index % 2
                                                            else gateways.retry(delivery)), range(8)))
    assert sorted(answer.outcome for answer in answers) == ["credited"] + ["duplicate"] * 7
    assert all(answer.accepted for answer in answers)
    # the second order is paid after all (after its close, or after a failed attempt): credited once;
    # a late close changes nothing
    assert gateways.post(server.url, gateways.notice(second, "paid")).outcome == "credited"
    assert gateways.post(server.url, gateways.notice(second, not_paid)).outcome == "ignored"
    assert gateways.post(server.url, gateways.notice(second, "paid")).outcome == "duplicate"
    assert _credited_once(server, first) == (1, 1500) and _credited_once(server, second) == (1, 2500)
    assert holder.balance()["wallets"]["main"] == 4000


def test_a_finished_trade_after_a_paid_one_is_a_duplicate(server, gateways):
    holder = Holder(server)
    order = _order(holder, "alipay", 800)
    assert gateways.post(server.url, gateways.notice(order, "paid")).outcome == "credited"
    assert gateways.post(server.url, gateways.notice(order, "finished")).outcome == "duplicate"
    assert gateways.post(server.url, gateways.notice(order, "waiting")).outcome == "ignored"
    assert _credited_once(server, order) == (1, 800)


# --- refusals: logged, and nothing else changes ---------------------------------------------------------

def _without_log(snapshot):
    """A database snapshot without the notification log (the one thing a refusal adds)."""
    if snapshot and isinstance(snapshot[0], str):       # SQLite's dump lines
        return [line for line in snapshot if 'INSERT INTO "channel_notifications"' not in line]
    columns, rows = snapshot
    return [columns, [(table, table_rows) for table, table_rows in rows if table != "channel_notifications"]]


def _bad_notices(gateways, forger, channel, order, other_order, paid_elsewhere):
    """(what, delivery, status, error code, logged outcome) for one channel."""
    sandbox = gateways[channel]
    notice = gateways.notice(order, "paid")
    field = {"alipay": ("total_amount", "out_trade_no"), "ccb": ("PAYMENT", "ORDERID")}.get(channel)
    cases = [
        ("forged signature", gateways.notice(order, signed_by=forger), 401, "bad_signature", "bad_signature"),
        ("signed amount differs from the order", gateways.notice(order, amount_fen=order["amount_fen"] + 1), 409,
         "amount_mismatch", "amount_mismatch"),
        ("unknown order", gateways.notice(dict(order, order_id="R404" + order["order_id"][4:])), 404,
         "unknown_order", "unknown_order"),
        ("another channel's order", gateways[channel].notice(paid_elsewhere["order_id"],
                                                             paid_elsewhere["amount_fen"]), 409, "wrong_channel",
         "wrong_channel"),
        ("not the channel's format", notice._replace(body=b'{"order_id": "%s"}' % order["order_id"].encode()),
         401 if channel == "wechat" else 400, "bad_signature" if channel == "wechat" else "bad_notification",
         "bad_signature" if channel == "wechat" else "malformed"),
    ]
    if channel == "wechat":
        other = gateways.notice(other_order, "paid")
        envelope = json.loads(notice.body)
        spliced = json.dumps(dict(envelope, resource=json.loads(other.body)["resource"])).encode()
        cases += [
            ("unsigned", notice._replace(headers={"Content-Type": "application/json"}), 401, "bad_signature",
             "bad_signature"),
            ("another order's resource in a signed envelope (replay)", notice._replace(body=spliced), 401,
             "bad_signature", "bad_signature"),
            ("body altered after signing", gateways.notice(order, after_signing={"event_type": "TRANSACTION.SUCCESS ",
                                                                                 "summary": "x"}), 401,
             "bad_signature", "bad_signature"),
            ("bad GCM tag", gateways.notice(order, bad_tag=True), 400, "bad_resource", "bad_resource"),
            ("another merchant (mchid)", gateways.notice(order, mchid="1900000109"), 409, "other_merchant",
             "other_merchant"),
            ("another app (appid)", gateways.notice(order, appid="wx0000000000000000"), 409, "other_merchant",
             "other_merchant"),
            ("unknown platform serial", notice._replace(headers=dict(notice.headers, **{
                "Wechatpay-Serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"})), 401, "bad_signature",
             "bad_signature"),
            ("stale timestamp (an old notice replayed)", sandbox.notice(order["order_id"], order["amount_fen"],
                                                                         timestamp=time.time() - 3600), 401,
             "stale_notification", "stale_notification"),
        ]
    else:
        amount, order_field = field
        cases += [
            ("amount altered after signing", gateways.notice(order, after_signing={amount: "0.01"}), 401,
             "bad_signature", "bad_signature"),
            ("another order's number put in a signed notice (replay)",
             gateways.notice(order, after_signing={order_field: other_order["order_id"]}), 401, "bad_signature",
             "bad_signature"),
            ("unsigned", gateways.notice(order, after_signing={"sign" if channel == "alipay" else "SIGN": ""}),
             400 if channel == "alipay" else 401, "bad_notification" if channel == "alipay" else "bad_signature",
             "malformed" if channel == "alipay" else "bad_signature"),
        ]
        if channel == "alipay":
            cases.append(("another app (app_id)", gateways.notice(order, app_id="2021000000000000"), 409,
                          "other_merchant", "other_merchant"))
            cases.append(("RSA instead of RSA2", gateways.notice(order, after_signing={"sign_type": "RSA"}), 401,
                          "bad_signature", "bad_signature"))
        else:
            cases.append(("another merchant (POSID)", gateways.notice(order, pos_id="000000001"), 409,
                          "other_merchant", "other_merchant"))
            cases.append(("another branch (BRANCHID)", gateways.notice(order, branch_id="440000000"), 409,
                          "other_merchant", "other_merchant"))
    return cases


@pytest.mark.parametrize("channel", CHANNELS)
def test_bad_notices_are_refused_logged_and_change_nothing(server, gateways, forger, snapshot, channel):
    holder = Holder(server)
    order, other_order = _order(holder, channel, 3000), _order(holder, channel, 1000)
    paid_elsewhere = _order(holder, "ccb" if channel != "ccb" else "alipay", 700)
    conn = server.connect()
    try:
        for what, delivery, status, code, outcome in _bad_notices(gateways, forger, channel, order, other_order,
                                                                 paid_elsewhere):
            before = _without_log(snapshot(conn))
            last_logged = conn.execute("SELECT coalesce(max(id), 0) FROM channel_notifications").fetchone()[0]
            answer = gateways.post(server.url, delivery)
            assert (answer.status, answer.error) == (status, code), (what, answer)
            assert not answer.accepted, what
            if channel == "wechat":
                assert json.loads(answer.text)["code"] == "FAIL", what
            else:
                assert answer.text == ("fail" if channel == "alipay" else "FAIL"), what
            assert _without_log(snapshot(conn)) == before, what
            logged = conn.execute("SELECT channel, outcome FROM channel_notifications WHERE id > ?",
                                  (last_logged,)).fetchall()
            assert logged == [(channel, outcome)], what
    finally:
        conn.close()
    assert "notification refused" in server.log()
    # the genuine notice still goes through afterwards, once
    assert gateways.post(server.url, gateways.notice(order, "paid")).outcome == "credited"
    assert holder.balance()["wallets"]["main"] == 3000


def test_the_log_keeps_what_was_notified_for_the_audit(server, gateways):
    holder = Holder(server)
    order = _order(holder, "wechat", 600)
    assert gateways.post(server.url, gateways.notice(order, "paid")).outcome == "credited"
    conn = server.connect()
    try:
        (body,) = conn.execute("SELECT body FROM channel_notifications WHERE order_id = ? AND outcome = 'credited'",
                               (order["order_id"],)).fetchone()
    finally:
        conn.close()
    logged = json.loads(body)        # the decrypted transaction, not the ciphertext
    assert logged["event_type"] == "TRANSACTION.SUCCESS" and logged["resource"]["out_trade_no"] == order["order_id"]
    assert logged["resource"]["amount"]["total"] == 600 and logged["resource"]["trade_state"] == "SUCCESS"


# --- configuration ----------------------------------------------------------------------------------------

def test_an_unconfigured_channel_is_refused_not_faked(tmp_path, new_database, gateways, snapshot):
    data_dir = tmp_path / "server"
    gateways.install(data_dir, names=("alipay",))
    with running_server(data_dir, database=new_database()) as only_alipay:
        holder = Holder(only_alipay)
        conn = only_alipay.connect()
        try:
            before = snapshot(conn)
            answer = holder.http.post(holder.url("recharge-orders"), json={"amount_fen": 100, "channel": "wechat"})
            assert answer.status_code == 404 and answer.json()["error"] == "channel_not_configured"
            assert answer.json()["message"].startswith("该充值渠道未开通")          # Chinese first
            notice = gateways.notice({"order_id": "R1", "amount_fen": 100, "channel": "ccb"})
            refused = gateways.post(only_alipay.url, notice)
            assert refused.status == 404 and json.loads(refused.text)["error"] == "channel_not_configured"
            assert snapshot(conn) == before
        finally:
            conn.close()
        assert _order(holder, "alipay", 100)["pay"]["channel"] == "alipay"


def _site(tmp_path, gateways, name="site"):
    return gateways.install(tmp_path / name)


def test_configuration_is_checked_before_anything_is_served(tmp_path, gateways):
    directory = _site(tmp_path, gateways)
    loaded = channels.load(directory)
    assert sorted(loaded) == sorted(CHANNELS)
    for channel in loaded.values():
        assert "BEGIN" not in repr(channel) and "PRIVATE" not in repr(channel)
    assert channels.load(str(tmp_path / "nothing")) == {}

    def refused(change, *expected):
        site = str(tmp_path / ("case%d" % len(os.listdir(tmp_path))))
        shutil.copytree(directory, site)
        change(site)
        with pytest.raises(channels.ChannelConfigError) as raised:
            channels.load(site)
        text = str(raised.value)
        assert text.startswith("充值渠道配置错误") and "BEGIN" not in text, text
        for part in expected:
            assert part in text, text

    def edit(name, **changes):
        def change(site):
            path = os.path.join(site, name)
            with open(path, encoding="utf-8") as handle:
                values = json.load(handle)
            values.update(changes)
            values = {key: value for key, value in values.items() if value is not None}
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(values, handle)
        return change

    refused(lambda site: os.chmod(os.path.join(site, "alipay_app_private_key.pem"), 0o644), "chmod 600")
    refused(lambda site: os.chmod(os.path.join(site, "wechat_apiv3.key"), 0o640), "chmod 600")
    refused(lambda site: os.chmod(os.path.join(site, "wechat_merchant_private_key.pem"), 0o604), "chmod 600")
    refused(edit("alipay.json", app_id=None), "missing app_id")
    refused(edit("wechat.json", apiv3_key="inline keys are not taken"), "unknown settings apiv3_key")
    refused(edit("ccb.json", ccb_public_key_pem_file="missing.pem"), "cannot read")
    refused(lambda site: open(os.path.join(site, "alipay_public_key.pem"), "w").write("not a key"), "does not load")
    refused(lambda site: open(os.path.join(site, "wechat_apiv3.key"), "w").write("short"), "32 characters")
    refused(lambda site: open(os.path.join(site, "ccb.json"), "w").write("[1, 2]"), "JSON object")
    refused(edit("wechat.json", api_base_url="http://api.mch.weixin.qq.com"), "api_base_url", "https")
    refused(edit("wechat.json", api_base_url="https://api.mch.weixin.qq.com/v3"), "api_base_url", "base URL")
    refused(edit("wechat.json", redirect_url="javascript:alert(1)"), "redirect_url")
    refused(edit("alipay.json", return_url="http://m.example.edu/app/recharge"), "return_url", "https")
    refused(edit("alipay.json", return_url="//m.example.edu/app/recharge"), "return_url")
    accepted = str(tmp_path / "accepted")
    shutil.copytree(directory, accepted)
    edit("wechat.json", api_base_url="https://api.mch.weixin.qq.com/", redirect_url="https://m.example.edu/app/recharge")(
        accepted)
    assert channels.load(accepted)["wechat"].api_base_url == "https://api.mch.weixin.qq.com"


def test_alipays_signed_order_carries_return_url_only_when_configured(tmp_path, gateways):
    directory = _site(tmp_path, gateways)
    order = {"order_id": "R9", "amount_fen": 900, "channel": "alipay"}

    def params_with(return_url):
        with open(os.path.join(directory, "alipay.json"), encoding="utf-8") as handle:
            config = json.load(handle)
        config.pop("return_url", None)
        if return_url is not None:
            config["return_url"] = return_url
        with open(os.path.join(directory, "alipay.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        pay = channels.load(directory)["alipay"].payment_request(
            order, "https://ykt.example.edu/api/v1/channels/alipay/notify")
        assert gateways.alipay.check_request(pay)[:2] == ("R9", 900)       # return_url is under the signature
        return dict(parse_qsl(urlsplit(pay["url"]).query))
    assert params_with("/app/recharge")["return_url"] == "https://ykt.example.edu/app/recharge"
    assert params_with("https://m.example.edu/app/recharge?from=alipay")["return_url"] == \
        "https://m.example.edu/app/recharge?from=alipay"
    assert "return_url" not in params_with(None)


def test_ccbs_hex_public_key_works_as_the_bank_hands_it_over(tmp_path, gateways):
    directory = str(tmp_path / "channels")
    os.makedirs(directory)
    for name, (data, _private) in gateways.ccb.server_files(hex_key=True).items():
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(data)
    ccb = channels.load(directory)["ccb"]
    notice = gateways.notice({"order_id": "R42", "amount_fen": 1234, "channel": "ccb"})
    assert ccb.verify(notice.headers, notice.body) == channels.Notice("R42", "paid", 1234, None, notice.body.decode())


def test_wechat_pay_verification_never_goes_to_the_network(tmp_path, gateways, monkeypatch):
    """wechatpayv3 fetches platform certificates for a serial it does not know: such a notice is refused
    before the library sees it, and a known one is verified and decrypted offline."""
    import requests
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise AssertionError("network")
    for method in ("get", "post", "request"):
        monkeypatch.setattr(requests, method, no_network)
    wechat = channels.load(_site(tmp_path, gateways))["wechat"]
    order = {"order_id": "R7", "amount_fen": 700, "channel": "wechat"}
    notice = gateways.notice(order)
    assert wechat.verify(notice.headers, notice.body).amount_fen == 700
    other_serial = dict(notice.headers, **{"Wechatpay-Serial": "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C"})
    with pytest.raises(channels.NoticeRefused) as refused:
        wechat.verify(other_serial, notice.body)
    assert refused.value.reason == "bad_signature"
    assert calls == []


def test_notice_readers_refuse_garbage_without_failing(tmp_path, gateways):
    handlers = channels.load(_site(tmp_path, gateways))
    genuine = {name: gateways.notice({"order_id": "R1", "amount_fen": 100, "channel": name}) for name in CHANNELS}
    bodies = [b"", b"\x00\xff\xfe", b"a=1&a=2", b"=", b"&&&", b"%zz=1", b"%ff=%fe", b"{}", b"[]", b"null",
              b'{"resource": 1}', b"x" * (channels.MAX_NOTICE_BYTES + 1), b"sign=%s" % (b"A" * 5000),
              b"SIGN=" + b"0" * 2000]
    for name, handler in handlers.items():
        for body in bodies + [genuine[other].body for other in CHANNELS if other != name]:
            for headers in ({}, genuine[name].headers, dict(genuine[name].headers, **{"Wechatpay-Timestamp": "x"})):
                with pytest.raises(channels.NoticeRefused):
                    handler.verify(headers, body)


# --- the documented notify operations, fuzzed against a configured server ----------------------------------

NOTIFY_OPERATIONS = [(path, mode) for path in openapi.document()["paths"] if path.startswith("/channels/")
                     for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
CHECKS = [getattr(schemathesis.checks, name) for name in (
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")]


@pytest.mark.parametrize("path, mode", NOTIFY_OPERATIONS,
                         ids=["%s %s" % (path, mode.value) for path, mode in NOTIFY_OPERATIONS])
def test_every_notify_answer_is_documented(server, path, mode):
    operation = schemathesis.openapi.from_url(server.url + "/api/v1/openapi.json")[path]["POST"]

    @hypothesis.settings(max_examples=25, derandomize=True, database=None, deadline=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=operation.as_strategy(mode))
    def call(case):
        response = case.call_and_validate(base_url=server.url + "/api/v1", checks=CHECKS, timeout=60)
        assert response.status_code != 200          # nothing unsigned gets through
    call()


def test_the_services_refuse_a_handler_of_another_channel(tmp_path, gateways):
    handlers = channels.load(_site(tmp_path, gateways))
    with pytest.raises(recharge.ServiceError):
        recharge.handle_notification(None, "alipay", handlers["wechat"], {}, b"")
