/* What every page of the phone app shares (after app_store.js and api.js, before the page's own
   script): the holder's session and the bind form, calls with the bearer token, the fields of a form
   and the messages next to them, money in yuan, Beijing dates.

   A page starts with ykt.shell.page(start): with no session on the phone it shows the bind form
   (姓名, 学工号, 交易密码 -> POST /api/v1/bind: app_user_id is this phone's own id, made once) and calls
   start(session, {just_bound: true}) once bound; with one it calls start(session, {just_bound: false})
   at once. The session ({token, account_id}) lives in IndexedDB only; an answer 401 (the token expired,
   or this phone was unbound) forgets it and shows the bind form again.

   Fields: each input #x has its message in #x-error right below it (aria-describedby), and each form
   one more by its button (.form-error). field_error(id, text) puts a refusal there; refuse(form,
   error, fields) puts the server's refusal next to the field its code is about ({code: input id}),
   else by the button. Amounts are typed in yuan and sent in fen (parse_yuan: ASCII or full-width
   digits, at most two decimals, never through a float). Nothing here logs, and nothing from the
   server is ever put into the page as HTML: text only. */
"use strict";
(function (ykt) {
  const ApiError = ykt.api.ApiError;
  const texts = JSON.parse(document.getElementById("app-texts").textContent);
  const config_element = document.getElementById("app-config");
  const config = config_element ? JSON.parse(config_element.textContent) : {};
  const lang = document.documentElement.lang === "en" ? "en" : "zh";
  const YUAN = /^([0-9]{1,7})(?:\.([0-9]{1,2}))?$/;
  const PIN = /^[0-9]{6}$/;
  const FULL_WIDTH = /[\uFF10-\uFF19\uFF0E\uFF0D]/g;      // ０-９ ． －: what a Chinese input method types
  const BEIJING_OFFSET_MS = 8 * 3600 * 1000;
  const DAY_MS = 86400 * 1000;
  // the server's PIN refusals: next to the PIN field of whatever form sent it
  const PIN_CODES = ["pin_wrong", "pin_locked", "pin_format", "pin_required"];
  const state = {session: null, start: null, on_signed_out: null};

  const $ = (id) => document.getElementById(id);

  function fill(template, ...values) {
    let index = 0;
    return template.replace(/%[sd]/g, () => String(values[index++]));
  }

  function say(id, text) {
    const element = $(id);
    if (element) element.textContent = text || "";
  }

  function show(view) {
    for (const section of document.querySelectorAll("section.view")) section.hidden = section.id !== view;
  }

  // -- money and dates --------------------------------------------------------------------------------

  function yuan(fen) {
    const sign = fen < 0 ? "-" : "";
    const whole = Math.abs(fen);
    return sign + Math.floor(whole / 100) + "." + String(whole % 100).padStart(2, "0");
  }

  function signed_yuan(fen) {
    return (fen > 0 ? "+" : "") + yuan(fen);
  }

  function normalise(text) {
    return String(text || "").trim().replace(FULL_WIDTH, (ch) => String.fromCharCode(ch.charCodeAt(0) - 0xFEE0));
  }

  /* '12', '12.5', '１２．５０' -> 1200, 1250, 1250 fen; null for anything else. */
  function parse_yuan(text) {
    const match = YUAN.exec(normalise(text));
    if (!match) return null;
    return Number(match[1]) * 100 + Number((match[2] || "").padEnd(2, "0"));
  }

  function beijing_date(time_ms) {
    return new Date(time_ms + BEIJING_OFFSET_MS).toISOString().slice(0, 10);
  }

  function beijing_time(time_ms) {
    return new Date(time_ms + BEIJING_OFFSET_MS).toISOString().slice(0, 19).replace("T", " ");
  }

  function wallet_name(wallet) {
    return texts["wallet_" + wallet] || wallet;
  }

  // -- fields and their messages ------------------------------------------------------------------------

  /* The message next to field `id` (empty text clears it); returns null, so a check can end with it. */
  function field_error(id, text) {
    say(id + "-error", text);
    const input = $(id);
    if (input) {
      if (text) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
    return null;
  }

  function form_error(form, text) {
    const note = form.querySelector(".form-error");
    if (note) note.textContent = text || "";
  }

  function clear_errors(form) {
    for (const note of form.querySelectorAll(".field-error")) note.textContent = "";
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  }

  /* The first refused field gets the focus (a screen reader reads its message with it). */
  function focus_error(form) {
    const first = form.querySelector("[aria-invalid=true]");
    if (first) first.focus();
    return null;
  }

  function pin_field(id) {
    const pin = normalise($(id).value);
    if (!pin) return field_error(id, texts.pin_required);
    if (!PIN.test(pin)) return field_error(id, texts.pin_six_digits);
    return pin;
  }

  /* The amount in fen typed in field `id` (yuan), or null with the reason next to the field. */
  function amount_field(id, max_fen, available_fen) {
    const typed = normalise($(id).value);
    if (!typed) return field_error(id, texts.amount_required);
    const fen = parse_yuan(typed);
    if (fen === null) return field_error(id, texts.amount_format);
    if (fen <= 0) return field_error(id, texts.amount_positive);
    if (max_fen !== undefined && fen > max_fen) return field_error(id, fill(texts.amount_over_cap, yuan(max_fen)));
    if (available_fen !== undefined && available_fen !== null && fen > available_fen) {
      return field_error(id, fill(texts.amount_over_balance, yuan(Math.max(0, available_fen))));
    }
    return fen;
  }

  function pin_errors(id) {
    return Object.fromEntries(PIN_CODES.map((code) => [code, id]));
  }

  function error_text(error) {
    return error instanceof ApiError ? error.text(lang, texts) : texts.error;
  }

  /* The server's refusal of a form: next to the field its code names in `fields`, else by the button. */
  function refuse(form, error, fields = {}) {
    if (error instanceof ApiError && error.status === 401) return null;     // signed out already
    if (error instanceof ApiError && error.offline) note_offline(true);
    const field = error instanceof ApiError ? fields[error.code] : null;
    if (field) {
      field_error(field, error_text(error));
      return focus_error(form);
    }
    form_error(form, error_text(error));
    return null;
  }

  /* The button shows it is working and cannot be tapped again until the answer came. */
  async function busy(button, work) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      return await work();
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  /* A new id for one payment or move the holder means to make: the server books each id once. */
  function request_id() {
    return "h5-" + crypto.randomUUID();
  }

  function note_offline(offline) {
    const banner = $("offline-banner");
    if (banner) banner.hidden = !offline;
    document.body.classList.toggle("offline", offline);
  }

  // -- the session ----------------------------------------------------------------------------------------

  function session() {
    return state.session;
  }

  function account_path(suffix) {
    return "/accounts/" + encodeURIComponent(state.session.account_id) + suffix;
  }

  /* A call with this phone's token; resolves to the answer. A 401 signs the phone out. */
  async function call(method, path, options = {}) {
    try {
      const {answer} = await ykt.api.call(method, path, Object.assign({token: state.session && state.session.token},
                                                                      options));
      note_offline(false);
      return answer;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401 && state.session) await signed_out(texts.signed_out);
      throw error;
    }
  }

  async function device_id() {
    let device = await ykt.store.get("device");
    if (!device) {
      device = {app_user_id: "h5-" + crypto.randomUUID()};
      await ykt.store.put("device", device);
    }
    return device.app_user_id;
  }

  function show_bind(note) {
    say("bind-note", note || "");
    show("view-bind");
  }

  async function on_bind(event) {
    event.preventDefault();
    const form = event.target;
    clear_errors(form);
    const name = $("bind-name").value.trim(), staff_number = normalise($("bind-number").value);
    if (!name) field_error("bind-name", texts.name_required);
    if (!staff_number) field_error("bind-number", texts.number_required);
    const pin = pin_field("bind-pin");
    if (!name || !staff_number || pin === null) return focus_error(form);
    await busy($("bind-submit"), async () => {
      try {
        const {answer} = await ykt.api.call("POST", "/bind",
          {body: {app_user_id: await device_id(), name, staff_number, pin}});
        state.session = {token: answer.token, account_id: answer.account_id};
        await ykt.store.put("session", state.session);
        $("bind-pin").value = "";
        say("bind-note", "");
      } catch (error) {
        return refuse(form, error, Object.assign({bind_failed: "bind-number", bad_app_user: "bind-number"},
                                                 pin_errors("bind-pin")));
      }
    });
    if (!state.session) return;
    try {
      await state.start(state.session, {just_bound: true});
    } catch (error) {
      form_error(form, error_text(error));
    }
  }

  async function signed_out(note) {
    await ykt.store.remove("session");
    state.session = null;
    if (state.on_signed_out) state.on_signed_out();
    show_bind(note);
  }

  // -- the balance the server gave last (shown offline) -----------------------------------------------

  async function fetch_balance() {
    const answer = await call("GET", account_path("/balance"));
    const record = {account_id: state.session.account_id, wallets: answer.wallets, name: answer.name,
                    staff_number: answer.staff_number, at_ms: Date.now()};
    await ykt.store.put("balance", record);
    return {record, answer};
  }

  async function stored_balance() {
    const record = await ykt.store.get("balance");
    return record && state.session && record.account_id === state.session.account_id ? record : null;
  }

  // -- the page -----------------------------------------------------------------------------------------

  function register_service_worker() {
    if (!("serviceWorker" in navigator)) return;
    navigator.serviceWorker.register(document.body.dataset.serviceWorker, {scope: document.body.dataset.scope})
      .catch(() => {});              // no worker (a private window, say): the page works online all the same
  }

  /* The language link keeps the page's own query (the photo page's kind, say). */
  function fix_lang_link() {
    const link = $("lang-switch");
    if (!link) return;
    const url = new URL(location.href);
    url.searchParams.set("lang", lang === "en" ? "zh" : "en");
    link.href = url.pathname + url.search;
  }

  async function page(start, options = {}) {
    state.start = start;
    state.on_signed_out = options.on_signed_out || null;
    register_service_worker();
    fix_lang_link();
    window.addEventListener("online", () => note_offline(false));
    const bind_form = $("bind-form");
    if (bind_form) bind_form.addEventListener("submit", on_bind);
    try {
      state.session = (await ykt.store.get("session")) || null;
      if (!state.session) return show_bind("");
      await start(state.session, {just_bound: false});
    } catch (error) {
      say("loading-note", error_text(error));
    }
  }

  ykt.shell = {
    texts, config, lang, ApiError, DAY_MS, $, fill, say, show, yuan, signed_yuan, normalise, parse_yuan,
    beijing_date, beijing_time, wallet_name, field_error, form_error, clear_errors, focus_error, pin_field,
    amount_field, pin_errors, error_text, refuse, busy, request_id, note_offline, session, account_path, call,
    device_id, signed_out, fetch_balance, stored_balance, page,
  };
})(self.ykt = self.ykt || {});
