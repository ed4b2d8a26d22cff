/* 账单 (/app/bills): the manual's 明细查询 - a date range (起始日期, 截止日期, both Beijing dates) and a type
   (全部, 消费流水, 充值流水) - over GET /accounts/<id>/transactions, newest first, PAGE_SIZE lines a page.
   The next page loads when the list's end comes into view, or on 加载更多. Each line: the place (the
   merchant, channel or fee), the time, the amount with its sign, the wallet's balance after it and the
   wallet. A new query drops the answers of the one before it that are still on their way. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, config, lang, $, say, fill, field_error} = shell;
  const PAGE_SIZE = 15;
  const DEFAULT_DAYS = 30;
  const DATE = /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/;
  const list = {query: null, page: 0, total_pages: 0, total_rows: 0, shown: 0, loading: false, generation: 0};

  function defaults() {
    $("bills-to").value = shell.beijing_date(Date.now());
    $("bills-from").value = shell.beijing_date(Date.now() - (DEFAULT_DAYS - 1) * shell.DAY_MS);
    $("bills-type").value = "all";
  }

  function days_between(from, to) {
    return Math.round((Date.parse(to + "T00:00:00Z") - Date.parse(from + "T00:00:00Z")) / shell.DAY_MS);
  }

  /* The query the form asks for, or null with the reason next to the field. */
  function read_form(form) {
    shell.clear_errors(form);
    const from = shell.normalise($("bills-from").value), to = shell.normalise($("bills-to").value);
    const type = $("bills-type").value;
    if (!DATE.test(from)) field_error("bills-from", texts.date_required);
    if (!DATE.test(to)) field_error("bills-to", texts.date_required);
    if (!DATE.test(from) || !DATE.test(to)) return shell.focus_error(form);
    if (days_between(from, to) < 0) {
      field_error("bills-from", texts.date_order);
      return shell.focus_error(form);
    }
    if (days_between(from, to) >= config.bills_max_days) {
      field_error("bills-from", fill(texts.date_span, config.bills_max_days));
      return shell.focus_error(form);
    }
    return {from, to, type};
  }

  function new_query(query) {
    list.generation += 1;
    Object.assign(list, {query, page: 0, total_pages: 1, total_rows: 0, shown: 0, loading: false});
    $("bills").replaceChildren();
    $("bills-empty").hidden = true;
    $("bills-end").hidden = true;
    $("bills-more").hidden = true;
    say("bills-error", "");
    say("bills-status", "");
    return load_next();
  }

  async function load_next() {
    if (list.loading || !list.query || list.page >= list.total_pages) return;
    list.loading = true;
    const generation = list.generation;
    const {from, to, type} = list.query;
    const query = new URLSearchParams({from, to, type, page: String(list.page + 1), page_size: String(PAGE_SIZE)});
    say("bills-status", texts.loading);
    try {
      const answer = await shell.call("GET", shell.account_path("/transactions?" + query));
      if (generation !== list.generation) return;        // an answer to a query the holder replaced
      list.page = answer.page;
      list.total_pages = answer.total_pages;
      list.total_rows = answer.total_rows;
      $("bills").append(...answer.rows.map(line));
      list.shown += answer.rows.length;
      say("bills-error", "");
    } catch (error) {
      if (generation !== list.generation) return;
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      if (error instanceof shell.ApiError && ["bad_date", "bad_range"].includes(error.code)) {
        field_error("bills-from", shell.error_text(error));
      } else if (error instanceof shell.ApiError && error.code === "bad_kind") {
        field_error("bills-type", shell.error_text(error));
      } else {
        say("bills-error", shell.error_text(error));
      }
    } finally {
      if (generation === list.generation) {
        list.loading = false;
        show_state();
      }
    }
    if (generation === list.generation && !$("bills-more").hidden && in_view($("bills-more"))) load_next();
  }

  function show_state() {
    const done = list.page >= list.total_pages;
    const failed = Boolean($("bills-error").textContent);
    $("bills-empty").hidden = !(done && list.total_rows === 0 && !failed);
    $("bills-end").hidden = !(done && list.total_rows > 0);
    $("bills-more").hidden = (done && !failed) || (list.page === 0 && failed);   // after a failed page: try again
    say("bills-status", list.page === 0 ? "" : fill(texts.bills_count, list.total_rows, list.shown));
  }

  function in_view(element) {
    const box = element.getBoundingClientRect();
    return box.top < window.innerHeight && box.bottom > 0;
  }

  /* One line, as text only (no server text is ever read as HTML). */
  function line(row) {
    const item = document.createElement("li");
    item.className = "bill";
    item.dataset.transferId = row.transfer_id;
    item.dataset.wallet = row.wallet;
    const head = element("div", "bill-head");
    const place = (lang === "en" ? row.place_en || row.place_zh : row.place_zh || row.place_en) || texts.place_unknown;
    head.append(element("span", "bill-place", place),
                element("span", "bill-amount " + (row.amount_fen > 0 ? "plus" : "minus"),
                        shell.signed_yuan(row.amount_fen)));
    const meta = element("div", "bill-meta");
    const time = element("time", "bill-time", row.time);
    time.dateTime = row.time.replace(" ", "T") + "+08:00";
    const wallet = element("span", "bill-wallet", shell.wallet_name(row.wallet));
    const after = element("span", "bill-after", fill(texts.balance_after, shell.yuan(row.wallet_balance_fen_after)));
    meta.append(time, wallet, after);
    item.append(head, meta);
    return item;
  }

  function element(tag, class_name, text) {
    const made = document.createElement(tag);
    made.className = class_name;
    if (text !== undefined) made.textContent = text;
    return made;
  }

  /* Once per page load (start may run again: after a sign-in that expired, the card bound again). */
  function bind_handlers() {
    const form = $("bills-form");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const query = read_form(form);
      if (query) new_query(query);
    });
    form.addEventListener("reset", (event) => {          // 重置: the last month, every type, at once
      event.preventDefault();
      shell.clear_errors(form);
      defaults();
      new_query(read_form(form));
    });
    $("bills-more").addEventListener("click", () => load_next());
    if ("IntersectionObserver" in window) {
      new IntersectionObserver((entries) => {
        if (entries.some((entry) => entry.isIntersecting)) load_next();
      }, {rootMargin: "0px 0px 120px 0px"}).observe($("bills-more"));
    }
  }

  function start() {
    shell.show("view-page");
    defaults();
    return new_query(read_form($("bills-form")));
  }

  bind_handlers();
  shell.page(start);
})(self.ykt = self.ykt || {});
