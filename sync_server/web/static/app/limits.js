/* 消费限额 (/app/limits): the limits now (GET /accounts/<id>/limits), then both set at once with the PIN
   (PUT, yuan typed, fen sent). Refused here first: empty, not yuan, above the campus's caps, a
   per-payment limit above the daily one; the server's refusal goes next to its field. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, config, $, say, field_error} = shell;

  function shown(fen) {
    return fen === null || fen === undefined ? texts.limit_none : shell.yuan(fen) + " " + texts.yuan_unit;
  }

  function render(limits, fill_form) {
    say("limits-single-now", shown(limits.single_limit_fen));
    say("limits-daily-now", shown(limits.daily_limit_fen));
    if (fill_form) {
      if (limits.single_limit_fen) $("limits-single").value = shell.yuan(limits.single_limit_fen);
      if (limits.daily_limit_fen) $("limits-daily").value = shell.yuan(limits.daily_limit_fen);
    }
  }

  async function on_submit(event) {
    event.preventDefault();
    const form = event.target;
    shell.clear_errors(form);
    say("limits-result", "");
    let single = shell.amount_field("limits-single", config.single_limit_max_fen);
    const daily = shell.amount_field("limits-daily", config.daily_limit_max_fen);
    if (single !== null && daily !== null && single > daily) single = field_error("limits-single", texts.limit_order);
    const pin = shell.pin_field("limits-pin");
    if (single === null || daily === null || pin === null) return shell.focus_error(form);
    await shell.busy($("limits-submit"), async () => {
      try {
        const limits = await shell.call("PUT", shell.account_path("/limits"),
                                        {body: {single_limit_fen: single, daily_limit_fen: daily, pin}});
        $("limits-pin").value = "";
        render(limits, true);
        say("limits-result", texts.limits_saved);
      } catch (error) {
        shell.refuse(form, error, Object.assign({bad_limits: "limits-single", bad_request: "limits-single"},
                                                shell.pin_errors("limits-pin")));
      }
    });
  }

  async function start() {
    shell.show("view-page");
    try {
      render(await shell.call("GET", shell.account_path("/limits")), true);
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      if (!(error instanceof shell.ApiError && error.status === 401)) say("limits-load-error", shell.error_text(error));
    }
  }

  $("limits-form").addEventListener("submit", on_submit);
  shell.page(start);
})(self.ykt = self.ykt || {});
