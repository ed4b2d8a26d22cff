"""Cards on a virtual field, for the driver tests: a blank card placed and issued through the reader
under test with firmware/apps/card_io.py (the issuing station's own steps), and the tap counter read
straight off a card or a saved card image file (a test's view, bypassing every reader).

Each test module keeps its own site (issuer, identity, name, UIDs) and passes it in.
"""
from firmware.apps import card_io
from firmware.core import card_layout, mifare, sam
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard


def issue_blank_card(field, reader, issuer, identity, name, uid):
    """A blank card with this UID, placed in `field` and issued through `reader`; -> the card."""
    card = ClassicCard(uid)
    field.place(card)
    card_io.issue_card(reader, issuer, reader.poll(1000), identity, name)
    return card


def card_image(master_key, identity, name, uid, path):
    """A blank card issued with the site's keys on a sim: field and saved at `path`; -> path."""
    issuer = sam.SoftwareSAM(sam.site_purpose_keys(master_key, include_issuer=True))
    reader = open_reader("sim:")
    card = issue_blank_card(reader.field, reader, issuer, identity, name, uid)
    reader.field.pull()
    card.save(str(path))
    return str(path)


def counter_on(card):
    """The tap counter as stored on the card (a test's view, bypassing the reader)."""
    value, _address = mifare.decode_value_block(card.dump_block(card_layout.COUNTER_BLOCK))
    return card_layout.tap_counter_from_value(value)


def counter_on_image(path):
    """The tap counter stored on the card saved at `path` (a ClassicCard image file)."""
    return counter_on(ClassicCard.load(path))
