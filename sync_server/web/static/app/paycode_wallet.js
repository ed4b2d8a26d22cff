/* The payment code (付款码) as the phone keeps it: its own Ed25519 key pair, the server's certificate
   for the public half, the use counter and the clock offset - and a fresh code each minute and after
   each use, with or without the network. simulators/phone_paycode.py (PayCodeWallet) is the same in
   Python; firmware/core/paycode.py fixes the bytes:

     code = certificate (123 bytes, from the server) + time_step (4, big-endian) + counter (4)
            + Ed25519 signature (64) over "ykt-paycode-v1" + the first 131 bytes
     text = "YK1:" + base45(code)                          297 characters

   time_step is the campus's minute: floor((phone clock + offset_ms) / 60000), where offset_ms is the
   server's clock minus the phone's at the last answer, so a phone whose clock is off still shows the
   minute the POS expects. The private key is made by WebCrypto as non-extractable and kept as a
   CryptoKey in IndexedDB (app_store.js): it never leaves the browser's key store. */
"use strict";
(function (ykt) {
  const PREFIX = "YK1:";
  const CODE_DOMAIN = new TextEncoder().encode("ykt-paycode-v1");
  const CERT_SIZE = 123;
  const CERT_ACCOUNT_OFFSET = 10;
  const CERT_PHONE_KEY_OFFSET = 27;
  const PUBLIC_KEY_SIZE = 32;
  const CODE_BODY_SIZE = CERT_SIZE + 8;
  const STEP_MS = 60000;
  const MAX_COUNTER = 0xFFFFFFFF;
  const RENEW_BEFORE_MS = 2 * 86400 * 1000;   // renew a certificate with less than two days left
  const RENEW_RETRY_MS = 10 * 60 * 1000;      // a refused renewal (a lost card, say) is not asked again each poll
  const USES_LOOKBACK_MS = 10 * 60 * 1000;    // ask for uses this far back: a sale may reach the server late
  const ED25519 = {name: "Ed25519"};

  function toHex(bytes) {
    return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  function fromHex(text) {
    if (typeof text !== "string" || text.length % 2 || /[^0-9a-f]/i.test(text)) throw new Error("not hex");
    const bytes = new Uint8Array(text.length / 2);
    for (let index = 0; index < bytes.length; index += 1) bytes[index] = parseInt(text.substr(index * 2, 2), 16);
    return bytes;
  }

  function sameBytes(a, b) {
    return a.length === b.length && a.every((byte, index) => byte === b[index]);
  }

  /* Whether this browser can make and use Ed25519 keys in WebCrypto (Chromium 137 and later). */
  async function supported() {
    if (!self.crypto || !crypto.subtle || !self.indexedDB) return false;
    try {
      await crypto.subtle.generateKey(ED25519, false, ["sign", "verify"]);
      return true;
    } catch (error) {
      return false;
    }
  }

  class PayCodeWallet {
    constructor(state) {
      this.state = state;           // what IndexedDB keeps under "paycode"
      this.shown = null;            // {time_step, counter, text}: the last code made, not signed again
      this.renew_not_before_ms = 0;
    }

    static async load() {
      const state = await ykt.store.get("paycode");
      return state ? new PayCodeWallet(state) : null;
    }

    static async forget() {
      await ykt.store.remove("paycode");
    }

    /* 开通付款码: a key pair made here, its public half certified by the server against the card PIN.
       The pair waits in "pending_key" until the answer is stored, so a retry after a lost answer
       sends the same key (the server then answers with the same credential). */
    static async enable(session, pin) {
      let pending = await ykt.store.get("pending_key");
      if (!pending || pending.account_id !== session.account_id) {
        const keys = await crypto.subtle.generateKey(ED25519, false, ["sign", "verify"]);
        pending = {account_id: session.account_id, keys};
        await ykt.store.put("pending_key", pending);
      }
      const public_key = new Uint8Array(await crypto.subtle.exportKey("raw", pending.keys.publicKey));
      const {answer, phone_ms} = await ykt.api.call("POST", "/paycode/credentials",
        {token: session.token, body: {public_key: toHex(public_key), pin}});
      const wallet = new PayCodeWallet({account_id: session.account_id, keys: pending.keys, public_key,
                                        counter: 0, last_uses_ms: answer.server_ms});
      wallet.take(answer, phone_ms);
      await wallet.save();
      await ykt.store.remove("pending_key");
      return wallet;
    }

    /* A certificate from the server (enabling or renewing); it must certify this phone's own key
       for this account, or the codes it would make are worthless. */
    take(answer, phone_ms) {
      const certificate = fromHex(answer.certificate);
      if (certificate.length !== CERT_SIZE) throw new Error("certificate size");
      const phone_key = certificate.subarray(CERT_PHONE_KEY_OFFSET, CERT_PHONE_KEY_OFFSET + PUBLIC_KEY_SIZE);
      const account_id = new DataView(certificate.buffer).getUint32(CERT_ACCOUNT_OFFSET);
      if (!sameBytes(phone_key, this.state.public_key) || account_id !== this.state.account_id) {
        throw new Error("the certificate is not for this phone's key");
      }
      Object.assign(this.state, {certificate, credential_id: answer.credential_id, cert_serial: answer.cert_serial,
                                 expiry_ms: answer.expiry_ms, offline_cap_fen: answer.offline_cap_fen,
                                 offset_ms: answer.server_ms - phone_ms});
    }

    save() {
      return ykt.store.put("paycode", this.state);
    }

    campus_ms(phone_ms) {
      return phone_ms + this.state.offset_ms;
    }

    expired(phone_ms) {
      return this.campus_ms(phone_ms) >= this.state.expiry_ms;
    }

    /* The code to show now: this minute (campus time), the current counter, signed here. */
    async code(phone_ms) {
      const time_step = Math.floor(this.campus_ms(phone_ms) / STEP_MS);
      const counter = this.state.counter;
      if (this.shown && this.shown.time_step === time_step && this.shown.counter === counter) return this.shown;
      const body = new Uint8Array(CODE_BODY_SIZE);
      body.set(this.state.certificate, 0);
      const view = new DataView(body.buffer);
      view.setUint32(CERT_SIZE, time_step);
      view.setUint32(CERT_SIZE + 4, counter);
      const message = new Uint8Array(CODE_DOMAIN.length + CODE_BODY_SIZE);
      message.set(CODE_DOMAIN, 0);
      message.set(body, CODE_DOMAIN.length);
      const signature = new Uint8Array(await crypto.subtle.sign(ED25519, this.state.keys.privateKey, message));
      const code = new Uint8Array(CODE_BODY_SIZE + signature.length);
      code.set(body, 0);
      code.set(signature, CODE_BODY_SIZE);
      this.shown = {time_step, counter, text: PREFIX + ykt.base45.encode(code)};
      return this.shown;
    }

    /* The code on the screen was used, or the holder asked for a new one: never show it again. */
    async next() {
      if (this.state.counter >= MAX_COUNTER) throw new Error("counter exhausted");
      this.state.counter += 1;
      await this.save();
    }

    /* Online: the uses the server saw (moving past every used code), the clock offset, and a new
       certificate when the old one has less than two days left. Resolves to the use of the code
       that was on the screen ({amount_fen, ...}) when it was used, else null. */
    async refresh(token) {
      const state = this.state;
      const {answer, phone_ms} = await ykt.api.call(
        "GET", `/paycode/credentials/${state.credential_id}/uses?since_ms=${state.last_uses_ms}`, {token});
      let paid = null;
      if (answer.highest_counter !== null && answer.highest_counter >= state.counter) {
        paid = answer.uses.find((use) => use.counter === answer.highest_counter) || null;
        state.counter = answer.highest_counter + 1;
      }
      state.offset_ms = answer.server_ms - phone_ms;
      state.last_uses_ms = Math.max(state.last_uses_ms, answer.server_ms - USES_LOOKBACK_MS);
      await this.save();
      if (state.expiry_ms - this.campus_ms(phone_ms) < RENEW_BEFORE_MS && phone_ms >= this.renew_not_before_ms) {
        this.renew_not_before_ms = phone_ms + RENEW_RETRY_MS;
        await this.renew(token);
      }
      return paid;
    }

    async renew(token) {
      const {answer, phone_ms} = await ykt.api.call(
        "POST", `/paycode/credentials/${this.state.credential_id}/certificate`, {token, body: {}});
      this.take(answer, phone_ms);
      this.shown = null;
      await this.save();
    }

    /* 停用付款码: the server tells every terminal; this phone forgets the key. */
    async stop(token) {
      await ykt.api.call("POST", `/paycode/credentials/${this.state.credential_id}/stop`, {token, body: {}});
      await PayCodeWallet.forget();
    }

    /* Whether the server still counts this phone's credential as active (it may have been stopped
       from the portal, another phone or the service hall, or after a double use). */
    async still_active(token) {
      const {answer} = await ykt.api.call("GET", "/paycode/credentials", {token});
      return answer.credentials.some((credential) =>
        credential.credential_id === this.state.credential_id && credential.status === "active");
    }
  }

  ykt.PayCodeWallet = PayCodeWallet;
  ykt.paycode = {STEP_MS, supported, toHex};
})(self.ykt = self.ykt || {});
