"""The reader interface every driver implements, its errors, and the scheme registry.

A driver talks to one contactless reader and exposes ISO 14443-A card selection plus the MIFARE
Classic command set (MIFARE Classic EV1 1K datasheet, section 9: authenticate, read, write,
increment, decrement, restore, transfer). Blocks are absolute block numbers (0..63 for a 1K card);
data is 16 bytes. Each driver lists what it supports in `supports` and in its docstring.

Errors are the same for every driver, so the terminal core never sees driver details:

    CardGone             the card left the field (or never answered): the operation did not happen
                         or its outcome is unknown - the caller must not assume either
    AuthenticationError  the card refused the key; the card is halted and must be selected again
    CardNak              the card refused a command (access conditions, not a value block,
                         overflow); like a failed authentication, it leaves the card halted
    ReaderTimeout        the reader itself did not answer in time
    ReaderError          anything else the reader reported
"""


class ReaderError(Exception):
    pass


class CardGone(ReaderError):
    pass


class AuthenticationError(ReaderError):
    pass


class CardNak(ReaderError):
    pass


class ReaderTimeout(ReaderError):
    pass


class UnsupportedOperation(ReaderError):
    pass


class Target:
    """One selected ISO 14443-A card."""
    __slots__ = ("uid", "atqa", "sak")

    def __init__(self, uid, atqa, sak):
        self.uid = bytes(uid)
        self.atqa = atqa
        self.sak = sak

    @property
    def is_mifare_classic_1k(self):
        return self.sak & 0x18 == 0x08

    def __repr__(self):
        return "Target(uid=%s, atqa=%04x, sak=%02x)" % (self.uid.hex(), self.atqa, self.sak)


class Reader:
    """Base class; drivers override every method they support."""

    url = ""
    supports = frozenset()

    def poll(self, timeout_ms):
        """Wait up to timeout_ms for a card; select it and return a Target, or None."""
        raise NotImplementedError

    def authenticate(self, block, key_type, key):
        """Authenticate the sector holding `block` with key_type 'A' or 'B' and a 6-byte key."""
        raise NotImplementedError

    def read_block(self, block):
        raise NotImplementedError

    def write_block(self, block, data):
        raise NotImplementedError

    def increment(self, block, delta):
        raise NotImplementedError

    def decrement(self, block, delta):
        raise NotImplementedError

    def restore(self, block):
        raise NotImplementedError

    def transfer(self, block):
        raise NotImplementedError

    def release(self):
        """Deselect (HALT) the current card."""
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_SCHEMES = {}


def register_scheme(scheme, factory):
    """factory(url) -> Reader. Drivers register themselves on import."""
    _SCHEMES[scheme] = factory


def _load_builtin(scheme):
    import importlib
    module = {"sim": "reader_drivers.sim", "pn532": "reader_drivers.pn532",
              "pcsc": "reader_drivers.pcsc", "nfcpy": "reader_drivers.nfcpy_driver"}.get(scheme)
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ReaderError("reader driver %r is not available: %s" % (scheme, error))


def open_reader(url, **options):
    scheme = url.split(":", 1)[0]
    if scheme not in _SCHEMES:
        _load_builtin(scheme)
    if scheme not in _SCHEMES:
        raise ReaderError("unknown reader %r (known: %s)" % (url, ", ".join(sorted(_SCHEMES)) or "none"))
    return _SCHEMES[scheme](url, **options)
