/* 用水 (/app/water): the water wallet (小钱包), how to start water (the native app's 扫码用水: the phone's
   Bluetooth talks to the dispenser, which a web page cannot do), and the holder's water use of the
   last 30 days: the transaction history's water type (purchases at water dispensers, whichever wallet
   paid, one line per wallet drawn on, and the holds and releases of the app's Bluetooth water
   grants). */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, lang, $, say, fill} = shell;
  const DAYS = 30;
  const PAGE_SIZE = 100;
  const MAX_PAGES = 5;

  function line(row) {
    const item = document.createElement("li");
    item.className = "bill water-session";
    item.dataset.transferId = row.transfer_id;
    const head = document.createElement("div");
    head.className = "bill-head";
    const place = document.createElement("span");
    place.className = "bill-place";
    place.textContent = (lang === "en" ? row.place_en || row.place_zh : row.place_zh || row.place_en) || texts.place_unknown;
    const amount = document.createElement("span");
    amount.className = "bill-amount " + (row.amount_fen > 0 ? "plus" : "minus");
    amount.textContent = shell.signed_yuan(row.amount_fen);
    head.append(place, amount);
    const meta = document.createElement("div");
    meta.className = "bill-meta";
    for (const [class_name, text] of [["bill-time", row.time], ["bill-wallet", shell.wallet_name(row.wallet)],
                                      ["bill-after", fill(texts.balance_after, shell.yuan(row.wallet_balance_fen_after))]]) {
      const part = document.createElement("span");
      part.className = class_name;
      part.textContent = text;
      meta.append(part);
    }
    item.append(head, meta);
    return item;
  }

  async function load_sessions() {
    const to = shell.beijing_date(Date.now()), from = shell.beijing_date(Date.now() - (DAYS - 1) * shell.DAY_MS);
    const found = [];
    say("water-status", texts.loading);
    try {
      for (let page = 1; page <= MAX_PAGES; page += 1) {
        const query = new URLSearchParams({from, to, type: "water", page: String(page), page_size: String(PAGE_SIZE)});
        const answer = await shell.call("GET", shell.account_path("/transactions?" + query));
        found.push(...answer.rows);
        if (page >= answer.total_pages) break;
      }
      $("water-sessions").replaceChildren(...found.map(line));
      $("water-empty").hidden = found.length > 0;
      say("water-status", found.length ? fill(texts.water_count, found.length) : "");
      say("water-error", "");
    } catch (error) {
      say("water-status", "");
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      if (!(error instanceof shell.ApiError && error.status === 401)) say("water-error", shell.error_text(error));
    }
  }

  async function load_balance() {
    try {
      const {record} = await shell.fetch_balance();
      say("water-balance", shell.yuan(record.wallets.water || 0));
    } catch (error) {
      const stored = await shell.stored_balance();
      if (stored) say("water-balance", shell.yuan(stored.wallets.water || 0));
    }
  }

  async function start() {
    shell.show("view-page");
    await Promise.all([load_balance(), load_sessions()]);
  }

  shell.page(start);
})(self.ykt = self.ykt || {});
