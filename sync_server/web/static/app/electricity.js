/* 学生公寓电费 (/app/electricity), as the manual's app does it: 楼栋 -> 楼层 -> 房间 from select lists
   (GET /api/v1/electricity/buildings; GET .../buildings/<code>/floors/<floor>/rooms), the room's recent
   payments (GET /api/v1/electricity/rooms/<building>/<floor>/<room>/payments: the time, the amount,
   the payer's masked name, ours marked), then the kind the building sells (照明用电, 空调用电), the
   amount and the card PIN: POST /accounts/<id>/electricity, with an idempotency key made once per form, so a
   double tap or a retry pays once. The receipt shows which wallets paid (the old card's balance first,
   then the main wallet). */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, config, lang, $, say, fill} = shell;
  const page = {buildings: [], key: null};
  const LIGHTING = {kind: "lighting", name_zh: "照明用电", name_en: "Lighting"};

  function text_of(entry, names) {
    for (const name of names) if (entry[name] !== undefined && entry[name] !== null && entry[name] !== "") return String(entry[name]);
    return "";
  }

  /* A building as the list gives it: {code, name, floors: [numbers]}. */
  function building_of(entry) {
    if (typeof entry !== "object" || entry === null) return {code: String(entry), name: String(entry), floors: []};
    const code = text_of(entry, ["code", "building", "id"]);
    const name = (lang === "en" ? text_of(entry, ["name_en", "name", "name_zh"]) : text_of(entry, ["name", "name_zh", "name_en"])) || code;
    let floors = entry.floors;
    if (typeof floors === "number") floors = Array.from({length: floors}, (_, index) => index + 1);
    else if (!Array.isArray(floors)) {
      const count = Number(entry.floor_count || entry.floors_count || 0);
      floors = Array.from({length: count}, (_, index) => index + 1);
    }
    floors = floors.map((floor) => typeof floor === "object" && floor !== null ? Number(floor.floor) : Number(floor))
      .filter((floor) => Number.isInteger(floor) && floor > 0);
    return {code, name, floors, kinds: kinds_of(entry.kinds)};
  }

  function kinds_of(entries) {
    const kinds = (Array.isArray(entries) ? entries : []).map((entry) => typeof entry === "string" ?
      {kind: entry, name_zh: entry, name_en: entry} : entry).filter((entry) => entry && entry.kind);
    return kinds.length ? kinds : [LIGHTING];
  }

  /* The kinds of electricity the building sells, as radio buttons (the first one chosen). */
  function show_kinds(kinds) {
    const chosen = (document.querySelector("input[name=elec-kind]:checked") || {}).value;
    const keep = kinds.some((entry) => entry.kind === chosen) ? chosen : kinds[0].kind;
    $("elec-kinds").replaceChildren(...kinds.map((entry) => {
      const label = document.createElement("label");
      label.className = "choice";
      label.htmlFor = "elec-kind-" + entry.kind;
      const input = document.createElement("input");
      Object.assign(input, {type: "radio", name: "elec-kind", id: "elec-kind-" + entry.kind, value: entry.kind,
                            checked: entry.kind === keep});
      label.append(input, " " + (lang === "en" ? entry.name_en || entry.name_zh : entry.name_zh || entry.name_en));
      return label;
    }));
  }

  function room_of(entry) {
    if (typeof entry !== "object" || entry === null) return {room: String(entry), name: String(entry)};
    const room = text_of(entry, ["room", "code", "number", "id"]);
    return {room, name: text_of(entry, lang === "en" ? ["name_en", "name", "name_zh"] : ["name_zh", "name", "name_en"]) || room};
  }

  function options(select_id, first_text, entries) {
    const first = new Option(first_text, "");
    $(select_id).replaceChildren(first, ...entries.map(([value, label]) => new Option(label, value)));
  }

  function failed(field_id, error) {
    if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
    if (!(error instanceof shell.ApiError && error.status === 401)) shell.field_error(field_id, shell.error_text(error));
  }

  async function load_buildings() {
    try {
      const answer = await shell.call("GET", "/electricity/buildings");
      page.buildings = (answer.buildings || []).map(building_of);
      options("elec-building", texts.choose_building, page.buildings.map((one) => [one.code, one.name]));
      shell.field_error("elec-building", "");
    } catch (error) {
      failed("elec-building", error);
    }
  }

  function on_building() {
    const building = page.buildings.find((one) => one.code === $("elec-building").value);
    options("elec-floor", building ? texts.choose_floor : texts.choose_building_first,
            (building ? building.floors : []).map((floor) => [String(floor), fill(texts.floor_name, floor)]));
    options("elec-room", texts.choose_floor_first, []);
    $("elec-room-box").hidden = true;
    shell.field_error("elec-building", "");
    show_kinds(building ? building.kinds : [LIGHTING]);
  }

  async function on_floor() {
    const building = $("elec-building").value, floor = $("elec-floor").value;
    options("elec-room", floor ? texts.loading : texts.choose_floor_first, []);
    $("elec-room-box").hidden = true;
    shell.field_error("elec-floor", "");
    if (!building || !floor) return;
    try {
      const answer = await shell.call("GET", "/electricity/buildings/" + encodeURIComponent(building) + "/floors/" +
                                      encodeURIComponent(floor) + "/rooms");
      if ($("elec-building").value !== building || $("elec-floor").value !== floor) return;
      options("elec-room", texts.choose_room, (answer.rooms || []).map(room_of).map((one) => [one.room, one.name]));
      if (answer.kinds) show_kinds(kinds_of(answer.kinds));
    } catch (error) {
      options("elec-room", texts.choose_floor_first, []);
      failed("elec-floor", error);
    }
  }

  function room_path() {
    return [$("elec-building").value, $("elec-floor").value, $("elec-room").value].map(encodeURIComponent).join("/");
  }

  async function on_room() {
    shell.field_error("elec-room", "");
    $("elec-room-box").hidden = !$("elec-room").value;
    if (!$("elec-room").value) return;
    const asked = room_path();
    $("elec-payments").replaceChildren();
    $("elec-payments-empty").hidden = true;
    say("elec-payments-error", "");
    try {
      const answer = await shell.call("GET", "/electricity/rooms/" + asked + "/payments");
      if (room_path() !== asked) return;
      const payments = answer.payments || [];
      $("elec-payments").replaceChildren(...payments.map(payment_line));
      $("elec-payments-empty").hidden = payments.length > 0;
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      if (!(error instanceof shell.ApiError && error.status === 401)) say("elec-payments-error", shell.error_text(error));
    }
  }

  function payment_line(payment) {
    const item = document.createElement("li");
    item.className = "bill elec-payment";
    const head = document.createElement("div");
    head.className = "bill-head";
    const who = document.createElement("span");
    who.className = "bill-place";
    who.textContent = (payment.payer || "") + (payment.mine ? " (" + texts.payer_me + ")" : "");
    const amount = document.createElement("span");
    amount.className = "bill-amount";
    amount.textContent = shell.yuan(payment.amount_fen || 0);
    head.append(who, amount);
    const meta = document.createElement("div");
    meta.className = "bill-meta";
    const kind = texts["electricity_" + payment.kind];
    const status = texts["meter_" + payment.meter_status];
    meta.textContent = [payment.time || (payment.time_ms ? shell.beijing_time(payment.time_ms) : ""), kind, status]
      .filter(Boolean).join(" · ");
    if (payment.mine) item.classList.add("mine");
    item.append(head, meta);
    return item;
  }

  function show_receipt(answer, amount_fen) {
    say("elec-receipt-room", fill(texts.room_name, $("elec-building").selectedOptions[0].text,
                                  $("elec-floor").value, $("elec-room").selectedOptions[0].text));
    say("elec-receipt-amount", shell.yuan(amount_fen));
    say("elec-receipt-parts", (answer.parts || []).map(([wallet, fen]) => shell.wallet_name(wallet) + " " + shell.yuan(fen)).join("，"));
    say("elec-receipt-id", answer.payment_id);
    $("elec-form").hidden = true;
    $("elec-receipt").hidden = false;
    $("elec-receipt").focus();
  }

  async function on_submit(event) {
    event.preventDefault();
    const form = $("elec-form");
    shell.clear_errors(form);
    for (const [id, text] of [["elec-building", texts.choose_building], ["elec-floor", texts.choose_floor],
                              ["elec-room", texts.choose_room]]) {
      if (!$(id).value) shell.field_error(id, text);
    }
    const amount_fen = shell.amount_field("elec-amount", config.electricity_max_fen);
    const pin = shell.pin_field("elec-pin");
    if (!$("elec-building").value || !$("elec-floor").value || !$("elec-room").value || amount_fen === null || pin === null) {
      return shell.focus_error(form);
    }
    const key = page.key;
    const kind = (document.querySelector("input[name=elec-kind]:checked") || {}).value || "lighting";
    const body = {building: $("elec-building").value, floor: Number($("elec-floor").value), room: $("elec-room").value,
                  kind, amount_fen, pin, idempotency_key: key};
    const button = $("elec-submit");
    button.disabled = true;
    try {
      const answer = await shell.call("POST", shell.account_path("/electricity"), {body});
      if (key !== page.key) return;
      $("elec-pin").value = "";
      show_receipt(answer, amount_fen);
      page.key = shell.request_id();
      on_room();
    } catch (error) {
      if (key === page.key) {
        shell.refuse(form, error, Object.assign({
          bad_room: "elec-room", unknown_room: "elec-room", room_inactive: "elec-room", no_meter: "elec-room",
          unknown_building: "elec-building", bad_electricity_kind: "elec-kind", kind_unavailable: "elec-kind",
          bad_amount: "elec-amount", insufficient_funds: "elec-amount", idempotency_conflict: "elec-amount"},
          shell.pin_errors("elec-pin")));
      }
    } finally {
      button.disabled = false;
    }
  }

  async function start() {
    shell.show("view-page");
    page.key = shell.request_id();
    await load_buildings();
  }

  $("elec-building").addEventListener("change", on_building);
  $("elec-floor").addEventListener("change", on_floor);
  $("elec-room").addEventListener("change", on_room);
  $("elec-form").addEventListener("submit", on_submit);
  $("elec-again").addEventListener("click", () => {
    $("elec-receipt").hidden = true;
    $("elec-form").hidden = false;
    $("elec-amount").value = "";
    $("elec-amount").focus();
  });
  shell.page(start);
})(self.ykt = self.ykt || {});
