/* The cardholder API (/api/v1) as the phone app calls it: JSON in and out, the bearer token, a time
   limit, and the phone's clock around each call.

   call() resolves to {answer, phone_ms}: phone_ms is the middle of the round trip on the phone's
   clock, so server_ms - phone_ms is the clock offset with at most half the trip as its error. It
   rejects with an ApiError: status 0 when the server could not be reached (offline: the caller keeps
   what it has), else the server's status and its {error, message_zh, message_en}. options: token,
   body (sent as JSON), raw ({data, type}: bytes sent as they are, e.g. a photo), timeout_ms. */
"use strict";
(function (ykt) {
  const BASE = "/api/v1";
  const TIMEOUT_MS = 8000;

  class ApiError extends Error {
    constructor(status, body) {
      const code = (body && body.error) || (status ? "http_" + status : "network");
      super(code);
      this.status = status;
      this.code = code;
      this.message_zh = body && body.message_zh;
      this.message_en = body && body.message_en;
    }

    /* No answer, or a gateway's instead of the server's: the phone keeps what it has. */
    get offline() { return this.status === 0 || (this.status >= 502 && this.status <= 504 && !this.message_zh); }

    /* The refusal in the page's language. */
    text(lang, texts) {
      if (this.offline) return texts.network_needed;
      return (lang === "en" ? this.message_en : this.message_zh) || texts.error;
    }
  }

  async function call(method, path, options = {}) {
    const headers = {"Accept": "application/json"};
    if (options.token) headers["Authorization"] = "Bearer " + options.token;
    const init = {method, headers, credentials: "omit", cache: "no-store"};
    if (options.raw !== undefined) {            // bytes as they are (a photo): {data: Blob, type}
      headers["Content-Type"] = options.raw.type;
      init.body = options.raw.data;
    } else if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), options.timeout_ms || TIMEOUT_MS);
    init.signal = controller.signal;
    const sent_ms = Date.now();
    let response, text;
    try {
      response = await fetch(BASE + path, init);
      text = await response.text();
    } catch (error) {
      throw new ApiError(0, null);          // no answer, or none within TIMEOUT_MS
    } finally {
      clearTimeout(timer);
    }
    const phone_ms = Math.round((sent_ms + Date.now()) / 2);
    let body = null;
    try { body = JSON.parse(text); } catch (error) { body = null; }
    if (!response.ok || body === null || typeof body !== "object") throw new ApiError(response.status, body);
    return {answer: body, phone_ms};
  }

  ykt.api = {call, ApiError};
})(self.ykt = self.ykt || {});
