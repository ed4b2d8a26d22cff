/* The home page (/app/): the balance card (主钱包, 小钱包, 原卡余额 from GET /accounts/<id>/balance;
   the last one known, marked 离线, when the server cannot be reached) and the services. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, $, say, yuan, fill} = shell;

  function render(record) {
    say("holder-name", record.name);
    say("holder-number", record.staff_number);
    for (const wallet of ["main", "water", "legacy"]) say("balance-" + wallet, yuan(record.wallets[wallet] || 0));
  }

  function card_state(answer) {
    const card = (answer.cards || []).find((one) => one.status !== "replaced");
    const notes = [];
    if (!card) notes.push(texts.card_none);
    else if (card.status === "lost") notes.push(texts.card_lost);
    if (answer.blocked) notes.push(texts.account_blocked);
    if (answer.in_debt) notes.push(texts.account_in_debt);
    say("card-state", notes.join(" · "));
  }

  function offline_mark(record) {
    $("balance-state").hidden = false;
    say("balance-state", texts.offline + (record ? " · " + fill(texts.balance_as_of, shell.beijing_time(record.at_ms)) : ""));
  }

  async function refresh() {
    try {
      const {record, answer} = await shell.fetch_balance();
      render(record);
      card_state(answer);
      $("balance-state").hidden = true;
      say("home-error", "");
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) {
        shell.note_offline(true);
        return offline_mark(await shell.stored_balance());
      }
      if (!(error instanceof shell.ApiError && error.status === 401)) say("home-error", shell.error_text(error));
    }
  }

  async function start() {
    shell.show("view-page");
    const stored = await shell.stored_balance();
    if (stored) render(stored);
    await refresh();
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden && shell.session()) refresh(); });
  shell.page(start);
})(self.ykt = self.ykt || {});
