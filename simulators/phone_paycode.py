"""The phone's payment code (付款码) as the app keeps it: its own Ed25519 key, the server's certificate
for it, and a fresh code each minute and after each use - with or without the network.

    wallet = PayCodeWallet.create()                 # a key pair made on the phone; the private half stays
    wallet.enable(app, pin)                         # the server certifies the public half (card PIN)
    text = wallet.code(now_ms)                      # "YK1:..." - what the QR code on the screen holds
    wallet.refresh(app)                             # online: learn of uses (a new code) and renew the
                                                    # certificate when it is old

`now_ms` is the phone's clock; the app keeps the offset the server told it at enabling so its codes
carry the campus's minute even when the phone's own clock is off. The state saves to a dict (the
developer phone's profile file, mode 0600); the browser app keeps the same in IndexedDB with a
non-extractable key.
"""
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from firmware.core import paycode

RENEW_BEFORE_MS = 2 * 86400 * 1000      # renew a certificate with less than two days left


class PayCodeWallet:
    def __init__(self, private_key, certificate=None, credential_id=None, counter=0, offset_ms=0, expiry_ms=0):
        self.private_key = private_key
        self.certificate = certificate  # bytes (paycode.CERT_SIZE) once enabled
        self.credential_id = credential_id
        self.counter = counter          # next code's counter: moves on after each use the phone learns of
        self.offset_ms = offset_ms      # server clock - phone clock at the last answer
        self.expiry_ms = expiry_ms
        self.last_uses_ms = 0

    @classmethod
    def create(cls):
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self):
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def _take(self, answer, phone_ms):
        self.certificate = answer["certificate"]
        self.credential_id = answer["credential_id"]
        self.expiry_ms = answer["expiry_ms"]
        self.offset_ms = answer["server_ms"] - phone_ms

    def enable(self, app, pin, phone_ms=None):
        phone_ms = _now_ms(phone_ms)
        self._take(app.paycode_enable(self.public_key, pin), phone_ms)
        self.last_uses_ms = phone_ms + self.offset_ms
        return self

    def code(self, phone_ms=None):
        """The code to show now: this minute (campus time), the current counter, signed by the phone."""
        assert self.certificate is not None, "enable the payment code first"
        campus_ms = _now_ms(phone_ms) + self.offset_ms
        body = paycode.code_body(self.certificate, paycode.step_of(campus_ms), self.counter)
        return paycode.to_text(body + self.private_key.sign(paycode.code_message(body)))

    def used(self):
        """A payment took the current code (the app was told, or the holder pressed refresh)."""
        self.counter += 1

    def refresh(self, app, phone_ms=None):
        """Online: move past every code the server saw used, and renew an old certificate. Returns the
        uses the server listed (newest first)."""
        phone_ms = _now_ms(phone_ms)
        answer = app.paycode_uses(self.credential_id, self.last_uses_ms)
        if answer["highest_counter"] is not None and answer["highest_counter"] >= self.counter:
            self.counter = answer["highest_counter"] + 1
        self.offset_ms = answer["server_ms"] - phone_ms
        self.last_uses_ms = max(self.last_uses_ms, answer["server_ms"] - 10 * 60 * 1000)
        if self.expiry_ms - (phone_ms + self.offset_ms) < RENEW_BEFORE_MS:
            self._take(app.paycode_renew(self.credential_id), phone_ms)
        return answer["uses"]

    def to_dict(self):
        raw = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {"key": raw.hex(), "certificate": self.certificate.hex() if self.certificate else None,
                "credential_id": self.credential_id, "counter": self.counter, "offset_ms": self.offset_ms,
                "expiry_ms": self.expiry_ms}

    @classmethod
    def from_dict(cls, saved):
        certificate = bytes.fromhex(saved["certificate"]) if saved.get("certificate") else None
        return cls(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(saved["key"])), certificate,
                   saved.get("credential_id"), saved.get("counter", 0), saved.get("offset_ms", 0),
                   saved.get("expiry_ms", 0))


def _now_ms(phone_ms):
    return int(time.time() * 1000) if phone_ms is None else phone_ms
