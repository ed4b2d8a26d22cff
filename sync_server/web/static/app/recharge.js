/* 充值 (/app/recharge): the amount (yuan typed, fen sent) and the channel (支付宝, 微信支付, 建行龙支付) make
   an order (POST /accounts/<id>/recharge-orders); the phone is then handed to the channel with what
   the order's answer carries for it in `pay` - a URL the phone opens (`method` GET: Alipay's
   alipay.trade.wap.pay, CCB's page, WeChat Pay's h5_url the server obtained, with its redirect_url
   back here) as the link 去支付, or an order string / JSAPI parameters for the channel's own bridge
   when the page runs inside that channel's app (the button 去支付). Nothing with `method` POST is
   ever opened by the phone: when the server could not get WeChat Pay's h5_url, `pay` says why in
   message_zh / message_en (暂时无法发起微信支付，请稍后重试), shown as the order's error until a later
   answer brings the URL. Then
   the order's status is asked every POLL_MS (and at once when the holder comes back to the page)
   until the channel's notification reached the server: 充值成功 with the new balance. The open order
   is kept on the phone ("recharge_order"), so the page picks it up again after the channel's app. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, config, $, say, fill} = shell;
  const POLL_MS = 2000;
  const POLL_FOR_MS = 30 * 60 * 1000;          // the server closes what stayed pending this long
  const URL_FIELDS = ["h5_url", "mweb_url", "pay_url", "cashier_url", "payment_url"];   // opened as they are
  const STRING_FIELDS = ["order_string", "order_str", "orderStr", "pay_string"];
  const JSAPI_FIELDS = ["jsapi", "jsapi_params", "wechat_jsapi", "pay_params"];
  const SAFE_SCHEMES = ["https:", "http:", "alipays:", "alipay:", "weixin:", "ccbmobilebank:", "ccb:"];
  const page = {order: null, timer: null, asking: false, until_ms: 0, handoff: null};

  function channel_name(channel) {
    return texts["channel_" + channel] || channel;
  }

  // -- the hand-off: whatever the order's answer holds for the channel ---------------------------------

  function safe_url(text) {
    if (typeof text !== "string" || !text) return null;
    try {
      const url = new URL(text, location.href);
      return SAFE_SCHEMES.includes(url.protocol) ? url.href : null;
    } catch (error) {
      return null;
    }
  }

  function handoff_of(order) {
    const places = [order.pay, order.handoff, order.payment, order].filter((place) => place && typeof place === "object");
    const found = {url: null, order_string: null, jsapi: null};
    for (const place of places) {
      for (const name of URL_FIELDS) found.url = found.url || safe_url(place[name]);
      const method = typeof place.method === "string" ? place.method.toUpperCase() : "GET";
      if (place !== order && method === "GET") found.url = found.url || safe_url(place.url);
      for (const name of STRING_FIELDS) {
        if (!found.order_string && typeof place[name] === "string" && place[name]) found.order_string = place[name];
      }
      for (const name of JSAPI_FIELDS) {
        if (!found.jsapi && place[name] && typeof place[name] === "object") found.jsapi = place[name];
      }
    }
    return found;
  }

  function show_handoff(order) {
    const handoff = page.handoff = handoff_of(order);
    const link = $("order-pay-link"), button = $("order-pay-app");
    const pending = order.status === "pending";
    link.hidden = !(pending && handoff.url);
    button.hidden = !(pending && !handoff.url && (handoff.order_string || handoff.jsapi));
    if (handoff.url) link.href = handoff.url;
    else link.removeAttribute("href");
    if (!pending) return say("order-handoff", "");
    const pay = order.pay && typeof order.pay === "object" ? order.pay : {};
    const problem = !handoff.url && typeof pay.error === "string" ? (shell.lang === "en" ? pay.message_en : pay.message_zh) : "";
    say("order-error", problem || "");
    say("order-handoff", problem ? "" : fill(handoff.url || handoff.order_string || handoff.jsapi ? texts.pay_go
                                                                                               : texts.pay_waiting,
                                             channel_name(order.channel)));
  }

  /* An order string or JSAPI parameters: the channel's bridge, present only inside its own app. */
  function pay_in_app() {
    say("order-pay-error", "");
    const order = page.order, handoff = page.handoff || {};
    const done = () => ask();
    if (handoff.order_string && self.AlipayJSBridge) {
      return self.AlipayJSBridge.call("tradePay", {orderStr: handoff.order_string}, done);
    }
    if (handoff.jsapi && self.WeixinJSBridge) {
      return self.WeixinJSBridge.invoke("getBrandWCPayRequest", handoff.jsapi, done);
    }
    say("order-pay-error", fill(texts.pay_in_channel_app, channel_name(order.channel)));
  }

  // -- the order and its status ---------------------------------------------------------------------

  function render(order) {
    page.order = order;
    say("order-id", order.order_id);
    say("order-amount", shell.yuan(order.amount_fen));
    say("order-channel", channel_name(order.channel));
    say("order-status", texts["order_" + order.status] || order.status);
    $("order-view").dataset.status = order.status;
    show_handoff(order);
    $("recharge-form").hidden = true;
    $("order-view").hidden = false;
  }

  function watch() {
    clearInterval(page.timer);
    page.until_ms = Date.now() + POLL_FOR_MS;
    page.timer = setInterval(ask, POLL_MS);
  }

  async function ask() {
    if (page.asking || !page.order || page.order.status !== "pending") return;
    if (Date.now() > page.until_ms) return clearInterval(page.timer);
    page.asking = true;
    const asked = page.order.order_id;
    const still_shown = () => page.order && page.order.order_id === asked;   // not left for a new order meanwhile
    try {
      const order = await shell.call("GET", shell.account_path("/recharge-orders/" + encodeURIComponent(asked)));
      if (!still_shown()) return;
      say("order-error", "");
      render(order);
      if (order.status !== "pending") await finished(order);
    } catch (error) {
      if (!still_shown()) return;
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      else if (!(error instanceof shell.ApiError && error.status === 401)) say("order-error", shell.error_text(error));
    } finally {
      page.asking = false;
    }
  }

  async function finished(order) {
    clearInterval(page.timer);
    await ykt.store.remove("recharge_order");
    if (order.status !== "paid") return;
    let text = texts.recharge_done;
    try {
      const {record} = await shell.fetch_balance();
      say("recharge-balance", shell.yuan(record.wallets.main || 0));
      text = fill(texts.recharge_done_balance, shell.yuan(record.wallets[order.wallet] || 0));
    } catch (error) {
      // the money is there all the same: the balance shows on the next visit
    }
    $("order-result").textContent = text;
    $("order-result").hidden = false;
    $("order-view").focus();
  }

  async function on_submit(event) {
    event.preventDefault();
    const form = event.target;
    shell.clear_errors(form);
    const amount_fen = shell.amount_field("recharge-amount", config.recharge_max_fen);
    const chosen = form.querySelector("input[name=channel]:checked");
    if (!chosen) shell.field_error("recharge-channel", texts.channel_required);
    if (amount_fen === null || !chosen) return shell.focus_error(form);
    await shell.busy($("recharge-submit"), async () => {
      try {
        const order = await shell.call("POST", shell.account_path("/recharge-orders"),
                                       {body: {amount_fen, channel: chosen.value}});
        await ykt.store.put("recharge_order", {account_id: shell.session().account_id, order});
        $("order-result").hidden = true;
        render(order);
        watch();
        $("order-view").focus();
      } catch (error) {
        shell.refuse(form, error, {bad_amount: "recharge-amount", unknown_channel: "recharge-channel",
                                   too_many_pending: "recharge-amount"});
      }
    });
  }

  function new_order() {
    clearInterval(page.timer);
    page.order = null;
    ykt.store.remove("recharge_order");
    $("order-view").hidden = true;
    $("order-result").hidden = true;
    $("recharge-form").hidden = false;
    $("recharge-amount").value = "";
    $("recharge-amount").focus();
  }

  async function start() {
    shell.show("view-page");
    const kept = await ykt.store.get("recharge_order");
    if (kept && kept.account_id === shell.session().account_id && kept.order.status === "pending") {
      render(kept.order);
      watch();
      ask();
    }
    try {
      const {record} = await shell.fetch_balance();
      say("recharge-balance", shell.yuan(record.wallets.main || 0));
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      else if (!(error instanceof shell.ApiError && error.status === 401)) shell.form_error($("recharge-form"), shell.error_text(error));
    }
  }

  $("recharge-form").addEventListener("submit", on_submit);
  for (const chip of document.querySelectorAll(".chip[data-amount]")) {
    chip.addEventListener("click", () => {
      $("recharge-amount").value = chip.dataset.amount;
      shell.field_error("recharge-amount", "");
    });
  }
  $("order-pay-app").addEventListener("click", pay_in_app);
  $("order-pay-link").addEventListener("click", () => setTimeout(ask, POLL_MS));
  $("order-new").addEventListener("click", new_order);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) ask(); });
  window.addEventListener("pageshow", () => ask());
  shell.page(start);
})(self.ykt = self.ykt || {});
