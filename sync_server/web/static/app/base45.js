/* Base45 (RFC 9285), the encoding half: what the phone needs to turn a pay code's bytes into the text
   its QR code carries. The alphabet is QR's alphanumeric set, so the QR code uses its denser
   alphanumeric mode. The same as firmware/core/paycode.py's b45encode (RFC 9285 section 4: two bytes
   are one number n = a * 256 + b, written as c + d * 45 + e * 45 * 45, least significant first; a
   last single byte as c + d * 45). */
"use strict";
(function (ykt) {
  const ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

  function encode(bytes) {
    const out = [];
    for (let start = 0; start + 1 < bytes.length; start += 2) {
      const value = bytes[start] * 256 + bytes[start + 1];
      out.push(ALPHABET[value % 45], ALPHABET[Math.floor(value / 45) % 45], ALPHABET[Math.floor(value / 2025)]);
    }
    if (bytes.length % 2) {
      const last = bytes[bytes.length - 1];
      out.push(ALPHABET[last % 45], ALPHABET[Math.floor(last / 45)]);
    }
    return out.join("");
  }

  ykt.base45 = {ALPHABET, encode};
})(self.ykt = self.ykt || {});
