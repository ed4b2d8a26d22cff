/* 修改密码 (/app/pin): 旧密码, 新密码, 确认新密码 -> POST /accounts/<id>/pin {old_pin, new_pin, confirm_pin}.
   Refused here first, next to the field: empty, not 6 digits, a PIN anyone would guess (one digit six
   times, a straight run up or down), the two new ones differing, the new one the same as the old; the
   server's own refusal (wrong old PIN with the tries left, locked until when, a birth date or the initial
   PIN as the new one, ...) goes next to the field it is about. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, $, say, field_error} = shell;
  const RUNS = "0123456789012345";
  const SERVER_FIELDS = Object.assign(shell.pin_errors("pin-old"), {
    pin_format: "pin-new", pin_same: "pin-new", pin_weak: "pin-new", pin_too_simple: "pin-new",
    pin_weak_same_digit: "pin-new", pin_weak_run: "pin-new", pin_weak_birthday: "pin-new", pin_weak_initial: "pin-new",
    pin_mismatch: "pin-confirm"});

  function weak(pin) {
    return /^(\d)\1{5}$/.test(pin) || RUNS.includes(pin) || RUNS.includes([...pin].reverse().join(""));
  }

  async function on_submit(event) {
    event.preventDefault();
    const form = event.target;
    shell.clear_errors(form);
    say("pin-result", "");
    const old_pin = shell.pin_field("pin-old");
    let new_pin = shell.pin_field("pin-new");
    if (new_pin !== null && weak(new_pin)) new_pin = field_error("pin-new", texts.pin_weak);
    if (new_pin !== null && new_pin === old_pin) new_pin = field_error("pin-new", texts.pin_same);
    const confirm_pin = shell.normalise($("pin-confirm").value);
    if (!confirm_pin) field_error("pin-confirm", texts.pin_confirm_required);
    else if (new_pin !== null && confirm_pin !== new_pin) field_error("pin-confirm", texts.pin_mismatch);
    if (old_pin === null || new_pin === null || confirm_pin !== new_pin) return shell.focus_error(form);
    await shell.busy($("pin-change-submit"), async () => {
      try {
        await shell.call("POST", shell.account_path("/pin"), {body: {old_pin, new_pin, confirm_pin}});
        for (const id of ["pin-old", "pin-new", "pin-confirm"]) $(id).value = "";
        say("pin-result", texts.pin_changed_here);
      } catch (error) {
        shell.refuse(form, error, SERVER_FIELDS);
      }
    });
  }

  async function start() {
    shell.show("view-page");
    const stored = await shell.stored_balance();
    if (stored) say("pin-holder", stored.name + " " + (stored.staff_number || ""));
  }

  $("pin-change-form").addEventListener("submit", on_submit);
  shell.page(start);
})(self.ykt = self.ykt || {});
