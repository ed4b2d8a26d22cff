/* 挂失 / 解挂 (/app/loss): the card's state from the balance answer (its newest card not replaced), then
   the form it calls for: 确认挂失 (POST /accounts/<id>/report-loss {pin}) for a card in use, 确认解挂
   (POST .../unfreeze {pin}) for a lost one. Self-service unfreezing is refused while the PIN is still
   the initial one (manual 5.2); the server's reason shows next to the PIN field. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, $, say} = shell;

  async function load_state() {
    try {
      const answer = await shell.call("GET", shell.account_path("/balance"));
      const card = (answer.cards || []).find((one) => one.status !== "replaced");
      say("loss-load-error", "");
      render(card || null);
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      if (!(error instanceof shell.ApiError && error.status === 401)) say("loss-load-error", shell.error_text(error));
    }
  }

  function render(card) {
    const status = $("card-status");
    status.classList.toggle("bad", Boolean(card && card.status === "lost"));
    status.classList.toggle("good", Boolean(card && card.status === "active"));
    say("card-status", !card ? texts.card_none : card.status === "lost" ? texts.card_lost : texts.card_active);
    say("card-number", card ? shell.fill(texts.card_number, card.card_number) : "");
    $("loss-form").hidden = !(card && card.status === "active");
    $("unfreeze-form").hidden = !(card && card.status === "lost");
  }

  function on_submit(form, pin_id, button_id, path, done_text) {
    return async (event) => {
      event.preventDefault();
      shell.clear_errors(form);
      say("loss-result", "");
      const pin = shell.pin_field(pin_id);
      if (pin === null) return shell.focus_error(form);
      await shell.busy($(button_id), async () => {
        try {
          await shell.call("POST", shell.account_path(path), {body: {pin}});
          $(pin_id).value = "";
          say("loss-result", done_text);
        } catch (error) {
          shell.refuse(form, error, Object.assign({initial_pin_unfreeze: pin_id}, shell.pin_errors(pin_id)));
        }
      });
      await load_state();
    };
  }

  async function start() {
    shell.show("view-page");
    await load_state();
  }

  $("loss-form").addEventListener("submit", on_submit($("loss-form"), "loss-pin", "loss-submit", "/report-loss",
                                                      texts.loss_done));
  $("unfreeze-form").addEventListener("submit", on_submit($("unfreeze-form"), "unfreeze-pin", "unfreeze-submit",
                                                          "/unfreeze", texts.unfreeze_done));
  shell.page(start);
})(self.ykt = self.ykt || {});
