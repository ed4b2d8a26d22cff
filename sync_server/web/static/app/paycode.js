/* The payment code page (/app/paycode): bind the card, enable the code, then show it - big, fresh
   each minute, with the balance above it - online or not.

   Three views: bind (app_shell.js's, shared by every page), enable (交易密码 -> a key pair made here,
   certified by the server; the change-PIN form appears when the PIN is still the initial one) and the
   code. The code view ticks each second (the countdown, and a new code when the campus's minute
   changes) and, online, asks the server every POLL_MS for the uses of this phone's codes: when the code
   on the screen was used it says 支付成功 and moves to the next counter, so the next code differs.
   With no network the code still comes from IndexedDB, the balance is the last one known, marked 离线.
   Nothing here logs; the token and the key stay in IndexedDB. */
"use strict";
(function (ykt) {
  const POLL_MS = 3000;                  // uses: "paid" shows within seconds of the sale
  const BALANCE_EVERY_MS = 30000;
  const BALANCE_AFTER_PAID_MS = 30000;   // after a payment, the balance each poll: the till books it within seconds
  const TICK_MS = 1000;
  const PAID_SHOWN_MS = 10000;
  const STOP_ARMED_MS = 5000;            // the second tap on 停用付款码 must come within this
  const QUIET_ZONE_MODULES = 4;          // ISO/IEC 18004: four modules of white around the symbol
  const MAX_QR_CSS_PX = 360;
  const shell = ykt.shell;
  const {ApiError, texts, lang, $, fill, say, show, yuan} = shell;
  const page = {session: null, wallet: null, online: true, polling: false, timers: [], drawn_text: null,
                balance_at_ms: 0, balance_watch_until_ms: 0, paid_timer: null, stop_timer: null};

  function clock_text(time_ms) {
    const at = new Date(time_ms);
    return String(at.getHours()).padStart(2, "0") + ":" + String(at.getMinutes()).padStart(2, "0");
  }

  // -- start: the session is there (the shell bound the card first when it was not) -------------------

  async function start(session, {just_bound}) {
    page.session = session;
    page.wallet = await ykt.PayCodeWallet.load();
    if (page.wallet && page.wallet.state.account_id !== page.session.account_id) await forget_wallet();
    const balance = await shell.stored_balance();
    if (balance) render_balance(balance);
    if (just_bound) await refresh_balance();
    if (!page.wallet) return show_enable("");
    show_code();
    check_still_active();           // unbinding a phone stops its codes: the sign-in may follow one
  }

  function bind_handlers() {
    $("enable-form").addEventListener("submit", on_enable);
    $("pin-form").addEventListener("submit", on_change_pin);
    $("refresh").addEventListener("click", on_refresh);
    $("stop").addEventListener("click", on_stop);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
    window.addEventListener("resize", () => { page.drawn_text = null; tick(); });
  }

  async function signed_out() {
    page.session = null;
    await shell.signed_out(texts.signed_out);      // stop_timers runs as the shell's on_signed_out
  }

  // -- enable, and the PIN change it may need first --------------------------------------------------

  function show_enable(note) {
    stop_timers();
    say("enable-note", note);
    show("view-enable");
  }

  async function on_enable(event) {
    event.preventDefault();
    const pin = $("enable-pin").value;
    if (!pin) return say("enable-error", texts.pin_required);
    say("enable-error", "");
    $("enable-submit").disabled = true;
    try {
      if (!await ykt.paycode.supported()) return say("enable-error", texts.no_ed25519);
      page.wallet = await ykt.PayCodeWallet.enable(page.session, pin);
      $("enable-pin").value = "";
      $("pin-form").hidden = true;
      show_code();
    } catch (error) {
      if (!(error instanceof ApiError)) return say("enable-error", texts.error);
      if (error.status === 401) return signed_out();
      say("enable-error", error.text(lang, texts));
      if (error.code === "paycode_initial_pin") $("pin-form").hidden = false;
    } finally {
      $("enable-submit").disabled = false;
    }
  }

  async function on_change_pin(event) {
    event.preventDefault();
    const old_pin = $("pin-old").value, new_pin = $("pin-new").value, confirm_pin = $("pin-confirm").value;
    if (!old_pin || !new_pin) return say("pin-error", texts.pin_required);
    if (new_pin !== confirm_pin) return say("pin-error", texts.pin_mismatch);
    say("pin-error", "");
    $("pin-submit").disabled = true;
    try {
      await ykt.api.call("POST", `/accounts/${page.session.account_id}/pin`,
        {token: page.session.token, body: {old_pin, new_pin, confirm_pin}});
      for (const id of ["pin-old", "pin-new", "pin-confirm", "enable-pin"]) $(id).value = "";
      $("pin-form").hidden = true;
      say("enable-error", "");
      say("enable-note", texts.pin_changed);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return signed_out();
      say("pin-error", error instanceof ApiError ? error.text(lang, texts) : texts.error);
    } finally {
      $("pin-submit").disabled = false;
    }
  }

  // -- the code --------------------------------------------------------------------------------------

  function show_code() {
    show("view-code");
    stop_timers();
    page.drawn_text = null;
    page.timers.push(setInterval(tick, TICK_MS), setInterval(poll, POLL_MS));
    tick();
    poll();
  }

  function stop_timers() {
    for (const timer of page.timers) clearInterval(timer);
    page.timers = [];
  }

  /* Each second: the countdown, and a new code when the minute or the counter moved. */
  async function tick() {
    const wallet = page.wallet;
    if (!wallet) return;
    const phone_ms = Date.now();
    const left_s = Math.ceil((ykt.paycode.STEP_MS - wallet.campus_ms(phone_ms) % ykt.paycode.STEP_MS) / 1000);
    say("countdown", fill(texts.seconds_left, left_s));
    if (wallet.expired(phone_ms)) {
      $("paycode").hidden = true;
      return say("code-note", texts.cert_expired);
    }
    const code = await wallet.code(phone_ms);
    if (wallet !== page.wallet || code.text === page.drawn_text) return;
    draw(code);
    $("paycode").hidden = false;
    if ($("code-note").textContent === texts.cert_expired) say("code-note", "");
  }

  /* The QR code (qrcode-generator: alphanumeric mode, error correction M, the smallest version that
     holds the text - 10 for a pay code) on a canvas of whole device pixels per module, so no module
     is smeared across two pixels and a scanner sees sharp edges. */
  function draw(code) {
    const symbol = self.qrcode(0, "M");
    symbol.addData(code.text, "Alphanumeric");
    symbol.make();
    const modules = symbol.getModuleCount();
    const side_modules = modules + 2 * QUIET_ZONE_MODULES;
    const ratio = window.devicePixelRatio || 1;
    const box_css_px = Math.min($("qr-box").clientWidth || MAX_QR_CSS_PX, MAX_QR_CSS_PX);
    const module_px = Math.max(1, Math.floor(box_css_px * ratio / side_modules));
    const canvas = $("paycode");
    canvas.width = canvas.height = module_px * side_modules;
    canvas.style.width = canvas.style.height = (module_px * side_modules / ratio) + "px";
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.fillStyle = "#000";
    for (let row = 0; row < modules; row += 1) {
      for (let column = 0; column < modules; column += 1) {
        if (symbol.isDark(row, column)) {
          context.fillRect((column + QUIET_ZONE_MODULES) * module_px, (row + QUIET_ZONE_MODULES) * module_px,
                           module_px, module_px);
        }
      }
    }
    Object.assign(canvas.dataset, {version: (modules - 17) / 4, modules, modulePx: module_px,
                                   timeStep: code.time_step, counter: code.counter});
    page.drawn_text = code.text;
  }

  /* Online: uses (paid -> the next counter), the clock offset, renewal, and now and then the balance. */
  async function poll() {
    if (page.polling || !page.wallet || !page.session || document.hidden) return;
    page.polling = true;
    try {
      const paid = await page.wallet.refresh(page.session.token);
      set_online(true);
      if (paid) {
        show_paid(paid.amount_fen);
        page.balance_watch_until_ms = Date.now() + BALANCE_AFTER_PAID_MS;
      }
      if (Date.now() < page.balance_watch_until_ms || Date.now() - page.balance_at_ms > BALANCE_EVERY_MS) {
        await refresh_balance();
      }
      tick();
    } catch (error) {
      await background_error(error);
    } finally {
      page.polling = false;
    }
  }

  function show_paid(amount_fen) {
    say("paid", fill(texts.paid, yuan(amount_fen)));
    $("paid").hidden = false;
    clearTimeout(page.paid_timer);
    page.paid_timer = setTimeout(() => { $("paid").hidden = true; }, PAID_SHOWN_MS);
  }

  async function on_refresh() {
    if (!page.wallet) return;
    await page.wallet.next();
    $("paid").hidden = true;
    tick();
    poll();
  }

  async function check_still_active() {
    try {
      if (page.wallet && !await page.wallet.still_active(page.session.token)) {
        await forget_wallet();
        show_enable(texts.stopped);
      }
    } catch (error) {
      await background_error(error);
    }
  }

  /* A failed call the holder did not ask for: offline keeps everything; a stopped or unknown
     credential ends the code on this phone; an expired sign-in asks to bind again. */
  async function background_error(error) {
    if (!(error instanceof ApiError)) return say("code-note", texts.error);
    if (error.offline) return set_online(false);
    set_online(true);
    if (error.status === 401) return signed_out();
    if (error.code === "paycode_unknown" || error.code === "paycode_revoked") {
      await forget_wallet();
      return show_enable(error.text(lang, texts));
    }
    say("code-note", error.text(lang, texts));
  }

  async function forget_wallet() {
    await ykt.PayCodeWallet.forget();
    page.wallet = null;
    page.drawn_text = null;
  }

  // -- stop --------------------------------------------------------------------------------------------

  async function on_stop() {
    const button = $("stop");
    if (!button.dataset.armed) {              // a first tap only asks: a stopped code needs the PIN again
      button.dataset.armed = "1";
      button.textContent = texts.stop_confirm;
      page.stop_timer = setTimeout(disarm_stop, STOP_ARMED_MS);
      return;
    }
    disarm_stop();
    say("stop-error", "");
    try {
      await page.wallet.stop(page.session.token);
      page.wallet = null;
      page.drawn_text = null;
      show_enable(texts.stopped);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return signed_out();
      say("stop-error", error instanceof ApiError ? error.text(lang, texts) : texts.error);
    }
  }

  function disarm_stop() {
    clearTimeout(page.stop_timer);
    delete $("stop").dataset.armed;
    $("stop").textContent = $("stop").dataset.label;
  }

  // -- balance and the offline mark -----------------------------------------------------------------

  async function refresh_balance() {
    try {
      const {record} = await shell.fetch_balance();
      page.balance_at_ms = record.at_ms;
      render_balance(record);
      set_online(true);
    } catch (error) {
      await background_error(error);
    }
  }

  function render_balance(record) {
    if (!record) return;
    say("holder-name", record.name);
    say("holder-number", record.staff_number);
    for (const wallet of ["main", "water", "legacy"]) say("balance-" + wallet, yuan(record.wallets[wallet] || 0));
    page.balance_record = record;
    set_online(page.online);
  }

  function set_online(online) {
    page.online = online;
    document.body.classList.toggle("offline", !online);
    const record = page.balance_record;
    $("balance-state").hidden = online;
    say("balance-state", online ? "" : texts.offline + (record ? " · " + fill(texts.balance_as_of, clock_text(record.at_ms)) : ""));
    $("offline-tip").hidden = online;
    say("offline-tip", online ? "" : texts.offline_tip);
  }

  bind_handlers();
  shell.page(start, {on_signed_out: () => { page.session = null; stop_timers(); }});
})(self.ykt = self.ykt || {});
