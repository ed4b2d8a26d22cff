/* 绑定/解绑 (/app/phones): the phones bound to the holder's card (GET /api/v1/phones, this one marked 本机)
   and 解除绑定 of any of them (DELETE /api/v1/phones/<phone_id>; its token and payment code stop at
   once). The first tap only asks; the second, within CONFIRM_MS, removes. Removing this phone also
   forgets the session and the payment code kept here. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, $, say, fill} = shell;
  const CONFIRM_MS = 5000;

  function when(time_ms) {
    return time_ms ? shell.beijing_time(time_ms).slice(0, 16) : texts.never;
  }

  function item(phone) {
    const row = document.createElement("li");
    row.className = "phone";
    row.dataset.phoneId = phone.phone_id;
    const name = document.createElement("div");
    name.className = "phone-name";
    name.textContent = phone.app_user;
    if (phone.this_phone) {
      const mark = document.createElement("span");
      mark.className = "this-phone";
      mark.textContent = texts.this_phone;
      name.append(mark);
      row.classList.add("is-this-phone");
    }
    const facts = document.createElement("p");
    facts.className = "hint";
    facts.textContent = fill(texts.phone_facts, when(phone.bound_ms), when(phone.last_used_ms));
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.id = "remove-phone-" + phone.phone_id;
    button.textContent = phone.this_phone ? texts.remove_this_phone : texts.remove_phone;
    button.dataset.label = button.textContent;
    button.addEventListener("click", () => on_remove(button, phone));
    row.append(name, facts, button);
    return row;
  }

  async function load() {
    try {
      const answer = await shell.call("GET", "/phones");
      $("phones").replaceChildren(...answer.phones.map(item));
      say("phones-error", "");
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      if (!(error instanceof shell.ApiError && error.status === 401)) say("phones-error", shell.error_text(error));
    }
  }

  async function on_remove(button, phone) {
    if (!button.dataset.armed) {
      button.dataset.armed = "1";
      button.textContent = texts.remove_confirm;
      setTimeout(() => { delete button.dataset.armed; button.textContent = button.dataset.label; }, CONFIRM_MS);
      return;
    }
    say("phones-result", "");
    say("phones-error", "");
    await shell.busy(button, async () => {
      try {
        await shell.call("DELETE", "/phones/" + encodeURIComponent(phone.phone_id));
      } catch (error) {
        if (!(error instanceof shell.ApiError && error.status === 401)) say("phones-error", shell.error_text(error));
        return;
      }
      if (phone.this_phone) {
        await ykt.store.remove("paycode");
        await ykt.store.remove("balance");
        return shell.signed_out(texts.this_phone_removed);
      }
      say("phones-result", texts.phone_removed);
      await load();
    });
  }

  async function start() {
    shell.show("view-page");
    await load();
  }

  shell.page(start);
})(self.ykt = self.ykt || {});
