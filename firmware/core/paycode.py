"""The payment code (付款码): what the phone shows, what the POS checks with no network.

A phone holds an Ed25519 key pair of its own. The server certifies the public half once the card
PIN was given (account, the card it stands for, an expiry and an offline cap), signing with its
pay-code key, whose public halves every POS receives through sync (by key id, so a rotation keeps the
old key valid until the codes under it expire). The phone signs each code with its own key:

    certificate (CERT_SIZE = 123 bytes, signed by the server's pay-code key)
    offset  size  field
    0       1     version (= 1)
    1       1     key_id            which server pay-code key signed it
    2       4     cert_serial       this certificate (revocable on its own)
    6       4     credential_id     the phone's key (revocable: every certificate of it)
    10      4     account_id
    14      4     card_number       the account's card at issue (a lost card stops its codes too)
    18      1     card_generation
    19      4     expiry_min        minutes since the Unix epoch (UTC): no code after this
    23      4     offline_cap_fen   what the code may spend at one terminal that cannot reach the server
    27      32    phone_key         the phone's Ed25519 public key
    59      64    server signature  over CERT_DOMAIN + bytes 0..58

    code (CODE_SIZE = 195 bytes) = certificate +
    123     4     time_step         minutes since the Unix epoch on the phone's clock (a new code each minute)
    127     4     counter           the phone's use counter (a new code after each payment)
    131     64    phone signature   over CODE_DOMAIN + bytes 0..130

On the screen and through the scanner the code is text: "YK1:" then the bytes in base45 (RFC 9285),
whose alphabet is QR's alphanumeric set, so the QR code uses its denser alphanumeric mode and both
line scanners and keyboard-wedge scanners pass it through unchanged (no lower case, no control bytes).
297 characters in all.

Signatures are checked by the shell (Ed25519 is not in MicroPython); this module fixes the bytes they
cover (`cert_message`, `code_message`) and everything else a POS decides before the ledger sees the
code: the shape, the certificate's expiry, the code's minute against the terminal's clock with a
stated skew, the deny list and a replay cache. It has no I/O and no clock, and runs under MicroPython.
"""
from collections import namedtuple
import struct

VERSION = 1
PREFIX = "YK1:"
CERT_DOMAIN = b"ykt-paycode-cert-v1"
CODE_DOMAIN = b"ykt-paycode-v1"

_CERT_BODY = ">BBIIIIBII32s"
_CERT_BODY_SIZE = struct.calcsize(_CERT_BODY)
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
CERT_SIZE = _CERT_BODY_SIZE + SIGNATURE_SIZE
_CODE_TAIL = ">II"
_CODE_BODY_SIZE = CERT_SIZE + struct.calcsize(_CODE_TAIL)
CODE_SIZE = _CODE_BODY_SIZE + SIGNATURE_SIZE
assert CERT_SIZE == 123 and CODE_SIZE == 195
TEXT_SIZE = len(PREFIX) + (CODE_SIZE // 2) * 3 + (2 if CODE_SIZE % 2 else 0)
MAX_TEXT_SIZE = 1024                 # a scanned line longer than this is not one of ours, whatever it is

STEP_MS = 60_000                     # the code's time step: it changes every minute
DEFAULT_SKEW_MS = 120_000            # phone and POS clocks may differ by this much either way
MAX_REPLAY_ENTRIES = 4096            # codes remembered per terminal; far above a till's 4 minutes' work

Certificate = namedtuple("Certificate", ("key_id", "cert_serial", "credential_id", "account_id", "card_number",
                                         "card_generation", "expiry_min", "offline_cap_fen", "phone_key",
                                         "signature"))
Code = namedtuple("Code", ("cert", "cert_bytes", "time_step", "counter", "signature", "raw"))

# Why a code is refused before any money is looked at (the POS maps them to messages).
MALFORMED = "malformed"              # not a pay code of this format at all
FOREIGN = "foreign"                  # signed by no key this terminal knows: another campus, a forgery
CERT_EXPIRED = "cert_expired"        # the phone must go online to renew its certificate
EXPIRED = "expired"                  # the code's minute is past: refresh
FUTURE = "future"                    # the code's minute is ahead of this terminal's clock beyond the skew
REPLAYED = "replayed"                # this terminal accepted this very code already
REPLAY_FULL = "replay_full"          # the replay cache holds only live codes and is full: refuse, never forget


class PayCodeError(ValueError):
    """A code that cannot be parsed; `reason` is MALFORMED."""

    def __init__(self, message, reason=MALFORMED):
        super().__init__(message)
        self.reason = reason


# -- base45 (RFC 9285) -------------------------------------------------------------------------------

BASE45_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_BASE45_VALUES = {}
for _index, _char in enumerate(BASE45_ALPHABET):
    _BASE45_VALUES[_char] = _index


def b45encode(data):
    """Bytes to base45 text: each 2 bytes -> 3 characters, a last single byte -> 2 characters."""
    out = []
    for start in range(0, len(data) - 1, 2):
        value = data[start] * 256 + data[start + 1]
        value, c = divmod(value, 45)
        e, d = divmod(value, 45)
        out.append(BASE45_ALPHABET[c] + BASE45_ALPHABET[d] + BASE45_ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out.append(BASE45_ALPHABET[c] + BASE45_ALPHABET[d])
    return "".join(out)


def b45decode(text):
    """Base45 text to bytes; ValueError on a character outside the alphabet, a bad length or a group
    that does not fit its bytes (RFC 9285 section 6: such input is rejected, never wrapped)."""
    if len(text) % 3 == 1:
        raise ValueError("base45 length %d" % len(text))
    out = bytearray()
    for start in range(0, len(text), 3):
        group = text[start:start + 3]
        values = []
        for char in group:
            value = _BASE45_VALUES.get(char)
            if value is None:
                raise ValueError("not a base45 character: %r" % char)
            values.append(value)
        if len(values) == 3:
            number = values[0] + values[1] * 45 + values[2] * 2025
            if number > 0xFFFF:
                raise ValueError("base45 group out of range")
            out.append(number >> 8)
            out.append(number & 0xFF)
        else:
            number = values[0] + values[1] * 45
            if number > 0xFF:
                raise ValueError("base45 group out of range")
            out.append(number)
    return bytes(out)


# -- certificate and code bytes ----------------------------------------------------------------------

def cert_body(key_id, cert_serial, credential_id, account_id, card_number, card_generation, expiry_min,
              offline_cap_fen, phone_key):
    """The certificate's signed bytes (the server signs CERT_DOMAIN + these)."""
    if len(phone_key) != PUBLIC_KEY_SIZE:
        raise PayCodeError("phone key must be %d bytes" % PUBLIC_KEY_SIZE)
    for value, top in ((key_id, 0xFF), (card_generation, 0xFF), (cert_serial, 0xFFFFFFFF),
                       (credential_id, 0xFFFFFFFF), (account_id, 0xFFFFFFFF), (card_number, 0xFFFFFFFF),
                       (expiry_min, 0xFFFFFFFF), (offline_cap_fen, 0xFFFFFFFF)):
        if not 0 <= value <= top:
            raise PayCodeError("certificate field out of range: %d" % value)
    if key_id == 0 or cert_serial == 0 or credential_id == 0 or account_id == 0:
        raise PayCodeError("certificate ids start at 1")
    return struct.pack(_CERT_BODY, VERSION, key_id, cert_serial, credential_id, account_id, card_number,
                       card_generation, expiry_min, offline_cap_fen, bytes(phone_key))


def cert_message(body):
    return CERT_DOMAIN + bytes(body)


def code_body(cert_bytes, time_step, counter):
    """The code's signed bytes (the phone signs CODE_DOMAIN + these)."""
    if len(cert_bytes) != CERT_SIZE:
        raise PayCodeError("certificate must be %d bytes" % CERT_SIZE)
    if not 0 <= time_step <= 0xFFFFFFFF or not 0 <= counter <= 0xFFFFFFFF:
        raise PayCodeError("time step or counter out of range")
    return bytes(cert_bytes) + struct.pack(_CODE_TAIL, time_step, counter)


def code_message(body):
    return CODE_DOMAIN + bytes(body)


def to_text(code_bytes):
    """The code as the phone shows it (and the scanner types it)."""
    assert len(code_bytes) == CODE_SIZE
    return PREFIX + b45encode(code_bytes)


def parse_cert(data):
    if len(data) != CERT_SIZE:
        raise PayCodeError("certificate is %d bytes, expected %d" % (len(data), CERT_SIZE))
    values = struct.unpack(_CERT_BODY, data[:_CERT_BODY_SIZE])
    if values[0] != VERSION:
        raise PayCodeError("unknown pay code version %d" % values[0])
    if values[1] == 0 or values[2] == 0 or values[3] == 0 or values[4] == 0:
        raise PayCodeError("certificate ids start at 1")
    return Certificate(*(values[1:] + (bytes(data[_CERT_BODY_SIZE:]),)))


def parse(text):
    """A scanned line to a Code; PayCodeError when it is anything else (garbage, truncated, another
    kind of QR code). Only the shape is checked here: the signatures are the shell's."""
    if not isinstance(text, str):
        raise PayCodeError("a code is text")
    text = text.strip()
    if len(text) > MAX_TEXT_SIZE or not text.startswith(PREFIX):
        raise PayCodeError("not a pay code")
    try:
        raw = b45decode(text[len(PREFIX):])
    except ValueError as error:
        raise PayCodeError("not a pay code: %s" % error)
    if len(raw) != CODE_SIZE:
        raise PayCodeError("pay code is %d bytes, expected %d" % (len(raw), CODE_SIZE))
    cert_bytes = raw[:CERT_SIZE]
    cert = parse_cert(cert_bytes)
    time_step, counter = struct.unpack(_CODE_TAIL, raw[CERT_SIZE:_CODE_BODY_SIZE])
    return Code(cert, cert_bytes, time_step, counter, raw[_CODE_BODY_SIZE:], raw)


def signed_parts(code):
    """((key_id, message, signature) of the certificate, (phone_key, message, signature) of the code):
    what the shell verifies with Ed25519 before handing the code on."""
    return ((code.cert.key_id, cert_message(code.cert_bytes[:_CERT_BODY_SIZE]), code.cert.signature),
            (code.cert.phone_key, code_message(code.raw[:_CODE_BODY_SIZE]), code.signature))


# -- what the POS decides before the money ----------------------------------------------------------

def use_key(code):
    """One use of one code: a terminal accepts it once, the server once anywhere."""
    return (code.cert.credential_id, code.time_step, code.counter)


def step_of(now_ms):
    return now_ms // STEP_MS


def check_time(code, now_ms, skew_ms=DEFAULT_SKEW_MS):
    """None when the certificate is in date and the code's minute is current within the skew, else
    CERT_EXPIRED, EXPIRED or FUTURE. A code is good from its minute's start until one minute after
    its minute's end (it is on the screen for up to a minute, then scanned), widened by the skew."""
    assert skew_ms >= 0
    if now_ms > code.cert.expiry_min * STEP_MS + skew_ms:
        return CERT_EXPIRED
    start_ms = code.time_step * STEP_MS
    if now_ms < start_ms - skew_ms:
        return FUTURE
    if now_ms > start_ms + 2 * STEP_MS + skew_ms:
        return EXPIRED
    return None


def live_until_ms(time_step, skew_ms=DEFAULT_SKEW_MS):
    """After this a code of that minute is refused as EXPIRED anyway; the replay cache forgets it."""
    return time_step * STEP_MS + 2 * STEP_MS + skew_ms


class ReplayCache:
    """The codes this terminal accepted while they are still live: a code is accepted once here.

    Bounded: entries leave only when their code could no longer pass `check_time`. When the cache is
    full of live codes a new code is refused (REPLAY_FULL), never let through by forgetting one. The
    shell fills it again at start from its journal's pay-code records, so a restart forgets nothing.
    """

    def __init__(self, skew_ms=DEFAULT_SKEW_MS, max_entries=MAX_REPLAY_ENTRIES):
        self.skew_ms = skew_ms
        self.max_entries = max_entries
        self._until_ms = {}          # use_key -> live until (ms)

    def __len__(self):
        return len(self._until_ms)

    def __contains__(self, key):
        return key in self._until_ms

    def prune(self, now_ms):
        dead = [key for key, until_ms in self._until_ms.items() if until_ms < now_ms]
        for key in dead:
            del self._until_ms[key]

    def check(self, key, now_ms):
        """None when `key` may be accepted now, else REPLAYED or REPLAY_FULL. Adds nothing."""
        if key in self._until_ms:
            return REPLAYED
        if len(self._until_ms) >= self.max_entries:
            self.prune(now_ms)
            if len(self._until_ms) >= self.max_entries:
                return REPLAY_FULL
        return None

    def add(self, key, now_ms):
        """Remember an accepted code (after its record is journaled)."""
        if len(self._until_ms) >= self.max_entries:
            self.prune(now_ms)
        assert len(self._until_ms) < self.max_entries or key in self._until_ms, "replay cache over its bound"
        self._until_ms[key] = live_until_ms(key[1], self.skew_ms)
