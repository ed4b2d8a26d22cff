/* 圈存 (/app/wallet-move): main -> water, the amount typed in yuan (sent in fen) with the card PIN, to
   POST /api/v1/wallet-move. The form carries one request id from the moment it is shown until a
   receipt came back: every copy of it the phone sends (a double tap, a retry after a lost answer)
   books once on the server and gets the same receipt. The receipt is shown, then the balances and
   the recent moves (GET /api/v1/wallet-moves) follow. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, config, $, say} = shell;
  const form_state = {request_id: null, main_fen: null};

  function new_form() {
    form_state.request_id = shell.request_id();
    $("move-form").dataset.requestId = form_state.request_id;     // for the curious: one id per form
  }

  async function load_balances() {
    try {
      const {record} = await shell.fetch_balance();
      form_state.main_fen = record.wallets.main || 0;
      say("move-main", shell.yuan(record.wallets.main || 0));
      say("move-water", shell.yuan(record.wallets.water || 0));
      say("move-load-error", "");
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      if (!(error instanceof shell.ApiError && error.status === 401)) say("move-load-error", shell.error_text(error));
    }
  }

  async function load_moves() {
    try {
      const answer = await shell.call("GET", "/wallet-moves?limit=10");
      $("moves").replaceChildren(...answer.moves.map(move_line));
      $("moves-empty").hidden = answer.moves.length > 0;
    } catch (error) {
      $("moves-empty").hidden = true;
    }
  }

  function move_line(move) {
    const item = document.createElement("li");
    item.className = "bill";
    const head = document.createElement("div");
    head.className = "bill-head";
    const what = document.createElement("span");
    what.className = "bill-place";
    what.textContent = shell.wallet_name(move.from_wallet) + " → " + shell.wallet_name(move.to_wallet);
    const amount = document.createElement("span");
    amount.className = "bill-amount";
    amount.textContent = shell.yuan(move.amount_fen);
    head.append(what, amount);
    const meta = document.createElement("div");
    meta.className = "bill-meta";
    meta.textContent = move.time + " · " + move.receipt_no;
    item.append(head, meta);
    return item;
  }

  function show_receipt(receipt) {
    say("receipt-no", receipt.receipt_no);
    say("receipt-time", receipt.time);
    say("receipt-amount", shell.yuan(receipt.amount_fen));
    say("receipt-from-after", shell.yuan(receipt.from_balance_fen_after));
    say("receipt-to-after", shell.yuan(receipt.to_balance_fen_after));
    $("move-receipt").dataset.receiptNo = receipt.receipt_no;
    $("move-form").hidden = true;
    $("move-receipt").hidden = false;
    $("move-receipt").focus();
  }

  /* Every submit sends; the button is off while one is on its way, and the request id makes the
     server book any copies once. */
  async function on_submit(event) {
    event.preventDefault();
    const form = $("move-form");
    shell.clear_errors(form);
    const amount_fen = shell.amount_field("move-amount", config.move_max_fen, form_state.main_fen);
    const pin = shell.pin_field("move-pin");
    if (amount_fen === null || pin === null) return shell.focus_error(form);
    const request_id = form_state.request_id;
    const button = $("move-submit");
    button.disabled = true;
    try {
      const receipt = await shell.call("POST", "/wallet-move",
                                       {body: {from_wallet: "main", to_wallet: "water", amount_fen, pin, request_id}});
      if (request_id !== form_state.request_id) return;          // this form's receipt is shown already
      $("move-pin").value = "";
      $("move-amount").value = "";
      show_receipt(receipt);
      new_form();
      await Promise.all([load_balances(), load_moves()]);
    } catch (error) {
      if (request_id === form_state.request_id) {
        shell.refuse(form, error, Object.assign({bad_amount: "move-amount", insufficient_funds: "move-amount",
                                                 idempotency_conflict: "move-amount"}, shell.pin_errors("move-pin")));
      }
    } finally {
      button.disabled = false;
    }
  }

  async function start() {
    shell.show("view-page");
    new_form();
    await Promise.all([load_balances(), load_moves()]);
  }

  $("move-form").addEventListener("submit", on_submit);
  $("move-again").addEventListener("click", () => {
    $("move-receipt").hidden = true;
    $("move-form").hidden = false;
    $("move-amount").focus();
  });
  shell.page(start);
})(self.ykt = self.ykt || {});
