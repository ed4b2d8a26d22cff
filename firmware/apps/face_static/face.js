// The terminal's two screens: the cashier's (/cashier) and the cardholder's (/holder, facing the
// queue). Both only draw the state the terminal process serves at /state; they decide nothing. The
// state is fetched by long poll (the server holds the request until the version passes ours), so a
// tap's result shows as soon as the terminal has journaled it, without polling in a tight loop.
//
// Everything the state carries (names, message texts) goes in as textContent: a cardholder's name
// is data, never markup. Money arrives as integer fen and is written out with integer arithmetic
// only, so 0.1 + 0.2 never reaches a screen.
"use strict";

(function () {
  var RETRY_MS = 1000;          // after a failed poll: the terminal is restarting or busy
  var POLL_ABORT_MS = 30000;    // the server answers within ~20 s; longer than that is a dead link
  var PIN_PLACES = 6;
  var TONES = ["info", "ok", "error", "attention"];

  var LABELS = {
    zh: {
      due: "应付", yuan: "元", entry: "输入", cancel: "取消", enter: "确认",
      paid: "消费", amount: "金额", balance: "余额", accepted: "交易成功", refused: "交易失败",
      lastTap: "上笔交易", lastTapRestored: "上笔交易（开机恢复）", noTap: "暂无",
      seq: "流水", card: "卡号",
      online: "在线", offline: "离线", unknown: "尚未同步", lastSync: "上次同步",
      backlog: function (n) { return "待上传 " + n + " 笔"; },
      dispensed: function (ml) { return "已出水 " + ml + " 毫升"; },
      prompt: {
        idle: "欢迎使用", wait_card: "请刷卡", busy: "请稍候，请勿移开卡片",
        wait_pin: "请输入密码", wait_confirm: "请稍候，等待收银员确认"
      }
    },
    en: {
      due: "Due", yuan: "yuan", entry: "Typed", cancel: "Cancel", enter: "Enter",
      paid: "Paid", amount: "Amount", balance: "Balance", accepted: "Paid", refused: "Refused",
      lastTap: "Last tap", lastTapRestored: "Last tap (restored at start-up)", noTap: "none yet",
      seq: "seq", card: "card",
      online: "Online", offline: "Offline", unknown: "Not synced yet", lastSync: "last sync",
      backlog: function (n) { return n + " to upload"; },
      dispensed: function (ml) { return ml + " ml dispensed"; },
      prompt: {
        idle: "Welcome", wait_card: "Please tap your card", busy: "Please wait, keep the card in place",
        wait_pin: "Please enter your PIN", wait_confirm: "Please wait for the cashier"
      }
    }
  };

  var view = document.body.getAttribute("data-view");
  var drawnDishes = null;       // the dish list last drawn, as JSON: buttons are rebuilt only when it changes

  function $(id) { return document.getElementById(id); }

  function labelsFor(state) { return LABELS[state.lang] || LABELS.zh; }

  // 1250 -> "12.50"; anything that is not an integer count of fen shows as a dash, never a guess.
  function yuan(fen) {
    if (typeof fen !== "number" || !Number.isInteger(fen)) { return "—"; }
    var sign = fen < 0 ? "-" : "";
    var whole = Math.abs(fen);
    var cents = String(whole % 100);
    return sign + String(Math.floor(whole / 100)) + "." + (cents.length < 2 ? "0" + cents : cents);
  }

  function pinDots(count) {
    var typed = Math.max(0, Math.min(PIN_PLACES, count));
    return "●".repeat(typed) + "○".repeat(PIN_PLACES - typed);
  }

  function show(element, visible) {
    if (element) { element.hidden = !visible; }
  }

  function setText(element, text) {
    if (element && element.textContent !== text) { element.textContent = text; }
  }

  // A line of spans: [[className, text], ...]; replaced whole, only when what it says has changed.
  function setParts(element, parts) {
    if (!element) { return; }
    var key = JSON.stringify(parts);
    if (element.getAttribute("data-drawn") === key) { return; }
    element.setAttribute("data-drawn", key);
    while (element.firstChild) { element.removeChild(element.firstChild); }
    parts.forEach(function (part) {
      var node = document.createElement(part[2] || "span");
      node.className = part[0];
      node.textContent = part[1];
      element.appendChild(node);
    });
  }

  function sendKey(key) {
    fetch("/key", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: key }), cache: "no-store"
    }).then(function (response) {
      if (!response.ok) { flash(key); }
    }).catch(function () { flash(key); });
  }

  // A key the terminal did not take: the button shakes briefly so the cashier presses it again.
  function flash(key) {
    var button = document.querySelector("[data-key='" + key.replace(/[^a-z0-9:_-]/gi, "") + "']");
    if (!button) { return; }
    button.classList.add("refused");
    setTimeout(function () { button.classList.remove("refused"); }, 600);
  }

  // -- both screens ------------------------------------------------------------------------------

  function renderCommon(state, labels) {
    document.documentElement.lang = state.lang === "en" ? "en" : "zh-CN";
    document.body.setAttribute("data-kind", state.kind || "pos");
    Array.prototype.forEach.call(document.querySelectorAll("[data-label]"), function (element) {
      var text = labels[element.getAttribute("data-label")];
      if (typeof text === "string") { setText(element, text); }
    });
    var message = state.message || {};
    var tone = TONES.indexOf(message.tone) >= 0 ? message.tone : "info";
    var messageElement = $("message");
    setText(messageElement, message.text || "");
    messageElement.className = "message tone-" + tone;
    var pin = $("pin");
    var asking = typeof state.pin_digits === "number";
    show(pin, asking);
    setText(pin, asking ? pinDots(state.pin_digits) : "");
  }

  // -- the cashier's screen ----------------------------------------------------------------------

  function renderCashier(state, labels) {
    var due = typeof state.amount_fen === "number";
    setText($("amount"), due ? yuan(state.amount_fen) : "—");
    $("amount").classList.toggle("none", !due);
    setText($("entry"), state.entry || "");
    document.querySelector(".entry-row").classList.toggle("empty", !state.entry);

    var result = state.result;
    var resultElement = $("result");
    show(resultElement, !!result);
    if (result) {
      resultElement.className = "result " + (result.accepted ? "ok" : "error");
      var details = [];
      if (typeof result.amount_fen === "number") {
        details.push((result.accepted ? labels.paid : labels.amount) + " " + yuan(result.amount_fen) + " " + labels.yuan);
      }
      if (typeof result.balance_after_fen === "number") {
        details.push(labels.balance + " " + yuan(result.balance_after_fen) + " " + labels.yuan);
      }
      setParts(resultElement, [
        ["mark", result.accepted ? "✓" : "✗"],
        ["result-text", result.text || (result.accepted ? labels.accepted : labels.refused)],
        ["result-details", details.join(" · "), "div"]
      ]);
    }
    hideRepeatedMessage(state, !!result);

    renderNetwork(state, labels);
    renderLastTap(state, labels);
    renderDishes(state);
  }

  function renderNetwork(state, labels) {
    var network = state.network || {};
    var networkElement = $("network");
    var status = network.online === true ? "online" : network.online === false ? "offline" : "unknown";
    networkElement.className = "network " + status;
    var parts = [["dot", "●"], ["state", labels[status]]];
    if (network.last_sync) { parts.push(["detail", labels.lastSync + " " + network.last_sync, "div"]); }
    if (network.error && network.online !== true) { parts.push(["detail error-text", String(network.error), "div"]); }
    setParts(networkElement, parts);

    var backlog = typeof state.backlog === "number" ? state.backlog : 0;
    var backlogElement = $("backlog");
    backlogElement.className = "backlog" + (backlog > 0 && network.online === false ? " warn" : "") +
      (backlog === 0 ? " clear" : "");
    setText(backlogElement, labels.backlog(backlog));
  }

  function renderLastTap(state, labels) {
    var tap = state.last_tap;
    var element = $("last-tap");
    element.classList.toggle("restored", !!(tap && tap.restored));
    if (!tap) {
      setParts(element, [["heading", labels.lastTap, "div"], ["detail", labels.noTap, "div"]]);
      return;
    }
    var parts = [["heading", tap.restored ? labels.lastTapRestored : labels.lastTap, "div"],
                 ["tap-amount", yuan(tap.amount_fen) + " " + labels.yuan, "div"]];
    if (typeof tap.balance_after_fen === "number") {
      parts.push(["detail", labels.balance + " " + yuan(tap.balance_after_fen) + " " + labels.yuan, "div"]);
    }
    if (tap.card) { parts.push(["detail", labels.card + " " + tap.card, "div"]); }
    var when = [];
    if (tap.seq !== null && tap.seq !== undefined) { when.push(labels.seq + " #" + tap.seq); }
    if (tap.time) { when.push(tap.time); }
    if (when.length) { parts.push(["detail", when.join(" · "), "div"]); }
    setParts(element, parts);
  }

  function renderDishes(state) {
    var dishes = Array.isArray(state.dishes) ? state.dishes : [];
    var key = JSON.stringify(dishes);
    if (key === drawnDishes) { return; }     // rebuilding would drop a button under the cashier's finger
    drawnDishes = key;
    var grid = $("dishes");
    while (grid.firstChild) { grid.removeChild(grid.firstChild); }
    dishes.forEach(function (dish) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "dish";
      button.setAttribute("data-dish", String(dish.id));
      button.setAttribute("data-key", "dish:" + dish.id);
      var name = document.createElement("span");
      name.className = "dish-name";
      name.textContent = dish.name;
      var price = document.createElement("span");
      price.className = "dish-price";
      price.textContent = yuan(dish.price_fen);
      var line = document.createElement("span");
      line.className = "dish-line";
      line.appendChild(price);
      if (dish.key) {
        var shortcut = document.createElement("span");
        shortcut.className = "dish-key";
        shortcut.textContent = dish.key;
        line.appendChild(shortcut);
      }
      button.appendChild(name);
      button.appendChild(line);
      grid.appendChild(button);
    });
  }

  // -- the cardholder's screen -------------------------------------------------------------------

  function renderHolder(state, labels) {
    var kind = state.kind || "pos";
    var result = state.result;
    var amountElement = $("amount");
    var due = kind !== "activation" && typeof state.amount_fen === "number";
    show(amountElement, due);
    setText(amountElement.querySelector(".figure"), due ? yuan(state.amount_fen) : "");

    // What to do now; the dispenser and the activation unit say it in their message instead.
    var prompt = kind === "pos" && !(result && state.phase === "idle") ? labels.prompt[state.phase] || "" : "";
    show($("prompt"), !!prompt);
    setText($("prompt"), prompt);

    var resultElement = $("result");
    var showResult = !!result && kind !== "activation" && state.phase !== "wait_pin";
    show(resultElement, showResult);
    if (showResult) {
      resultElement.className = "result " + (result.accepted ? "ok" : "error");
      var parts = [["mark", result.accepted ? "✓" : "✗"],
                   ["result-text", result.accepted ? labels.accepted : (result.text || labels.refused)]];
      if (result.accepted && typeof result.amount_fen === "number") {
        parts.push(["result-details", labels.paid + " " + yuan(result.amount_fen) + " " + labels.yuan, "div"]);
      }
      setParts(resultElement, parts);
    }

    // Only the balance of the card that was just accepted, and only with its result.
    var balance = showResult && result.accepted && typeof result.balance_after_fen === "number";
    show($("balance"), balance);
    setText($("balance"), balance ? labels.balance + " " + yuan(result.balance_after_fen) + " " + labels.yuan : "");

    var dispensed = typeof state.dispensed_ml === "number";
    show($("dispensed"), dispensed);
    setText($("dispensed"), dispensed ? labels.dispensed(state.dispensed_ml) : "");

    hideRepeatedMessage(state, showResult);
    // "请输入金额" is the cashier's cue; the queue sees the welcome instead.
    if (kind === "pos" && (state.message || {}).code === "enter_amount") { show($("message"), false); }
  }

  // The decision's text is already the result's headline: said twice, it pushes the rest off the panel.
  function hideRepeatedMessage(state, resultShown) {
    var message = state.message || {};
    show($("message"), !(resultShown && message.text && message.text === state.result.text));
  }

  // -- the poll loop -----------------------------------------------------------------------------

  function render(state) {
    var labels = labelsFor(state);
    renderCommon(state, labels);
    if (view === "cashier") { renderCashier(state, labels); } else { renderHolder(state, labels); }
    document.body.setAttribute("data-phase", String(state.phase || "idle"));
    document.body.setAttribute("data-version", String(state.version));
  }

  function connected(ok) {
    show($("connection"), !ok);
    document.body.classList.toggle("disconnected", !ok);
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  async function poll() {
    var version = null;           // null: ask for the state at once (first load, or after a lost link)
    for (;;) {
      var abort = new AbortController();
      var timer = setTimeout(function () { abort.abort(); }, POLL_ABORT_MS);
      try {
        var url = version === null ? "/state" : "/state?after=" + encodeURIComponent(version);
        var response = await fetch(url, { cache: "no-store", signal: abort.signal });
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        var state = await response.json();
        connected(true);
        render(state);
        version = state.version;
      } catch (error) {
        // A restarted terminal counts its versions from 1 again: ask afresh rather than wait past it.
        version = null;
        connected(false);
        await sleep(RETRY_MS);
      } finally {
        clearTimeout(timer);
      }
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-key]") : null;
    if (button && !button.disabled) { sendKey(button.getAttribute("data-key")); }
  });

  poll();
})();
