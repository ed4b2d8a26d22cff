"""`sim:` - the reader interface on an in-process virtual RF field, and the model behind it.

    field.py         the virtual RF field: cards placed and pulled at any command (VirtualField)
    classic_card.py  the MIFARE Classic 1K card model, saved as image files (ClassicCard)
    card_file.py     write-through card images: the file follows every write and transfer

    open_reader("sim:")                      a fresh VirtualField, reachable as reader.field
    open_reader("sim:", field=shared_field)  several readers (or a test) share one field

    feature                           sim:   notes
    --------------------------------  -----  ------------------------------------------------
    ISO 14443-A poll + select         yes    one card at a time, no anticollision
    MIFARE Classic 1K (4/7-byte UID)  yes    classic_card.ClassicCard
    authenticate A / B                yes    no Crypto-1; failure halts the card (poll again)
    read / write                      yes    access conditions enforced (datasheet tables 7, 8)
    increment / decrement / restore   yes    through the card's transfer buffer
    transfer                          yes
    release (HALT)                    yes
    timing, RF collisions, 4K cards   no

Semantics follow the PN53x chips the real drivers use: poll selects a card; after a failed
authentication or a NAK the card answers nothing until polled again; a card that left the field
raises CardGone, whose outcome is unknown when it left during a command.
"""
from reader_drivers.base import Reader, register_scheme
from reader_drivers.sim.field import VirtualField

SUPPORTS = frozenset(("iso14443a", "mifare_classic_1k", "authenticate", "read", "write", "increment",
                      "decrement", "restore", "transfer", "release"))


class SimReader(Reader):
    supports = SUPPORTS

    def __init__(self, url="sim:", field=None):
        self.url = url
        self.field = field if field is not None else VirtualField()

    def poll(self, timeout_ms):
        return self.field.poll(timeout_ms)

    def authenticate(self, block, key_type, key):
        self.field.operate("authenticate", block, key_type, bytes(key))

    def read_block(self, block):
        return self.field.operate("read", block)

    def write_block(self, block, data):
        self.field.operate("write", block, bytes(data))

    def increment(self, block, delta):
        self.field.operate("increment", block, delta)

    def decrement(self, block, delta):
        self.field.operate("decrement", block, delta)

    def restore(self, block):
        self.field.operate("restore", block)

    def transfer(self, block):
        self.field.operate("transfer", block)

    def release(self):
        self.field.halt()

    def __repr__(self):
        return "SimReader(%r)" % self.url


register_scheme("sim", SimReader)
