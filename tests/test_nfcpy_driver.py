"""The nfcpy: driver against the PN532 emulator over a real pseudo-terminal, through nfcpy's own TTY
transport and PN532 driver: cards issued, read and counted with firmware/apps/card_io.py (the POS's
own steps), a wrong key, cards pulled mid-tap; nfcpy's errors mapped to the shared ones like the
pn532: driver maps the same status bytes.
"""
import errno
import io
import json

import nfc.clf
import nfc.clf.pn53x
import pytest

from firmware.apps import card_io
from firmware.apps.pos_terminal import PosTerminal
from firmware.core import card_layout, mifare, pos, records, sam as sam_module, wallets
from reader_drivers import nfcpy_driver
from reader_drivers.base import AuthenticationError, CardGone, CardNak, ReaderError, ReaderTimeout, open_reader
from reader_drivers.sim.classic_card import ClassicCard
from simulators.pn532_emulator import Pn532Emulator

from field_cards import counter_on, issue_blank_card

MASTER_KEY = bytes(range(11, 43))
ISSUER = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY, include_issuer=True))
TERMINAL = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY))
UID4 = bytes.fromhex("c0ffee02")
UID7 = bytes.fromhex("04b1b2c3d4e5f7")
TERMINAL_ID = 12
IDENTITY = card_layout.Identity(20240888, 880888, 1, card_layout.HOLDER_STAFF, 20300630)
NAME = "李四"


@pytest.fixture
def emulator():
    with Pn532Emulator() as running:
        yield running


@pytest.fixture
def reader(emulator):
    opened = open_reader("nfcpy:tty:%s?baud=115200" % emulator.path)
    yield opened
    opened.close()


def issued(emulator, reader, uid=UID4):
    return issue_blank_card(emulator.field, reader, ISSUER, IDENTITY, NAME, uid)


# --- paths ---------------------------------------------------------------------------------------

def test_url_names_a_device_file_or_an_nfcpy_search_path():
    assert nfcpy_driver.parse_url("nfcpy:tty:/dev/pts/7?baud=115200") == ("device", "/dev/pts/7", 115200)
    assert nfcpy_driver.parse_url("nfcpy:tty:ttyUSB0") == ("device", "/dev/ttyUSB0", None)
    assert nfcpy_driver.parse_url("nfcpy:tty:USB0:pn532") == ("search", "tty:USB0:pn532", None)
    assert nfcpy_driver.parse_url("nfcpy:usb:072f:2200") == ("search", "usb:072f:2200", None)
    for bad in ("nfcpy:", "nfcpy:tty:ttyS0?baud=12345", "nfcpy:usb?baud=115200"):
        with pytest.raises(ReaderError):
            nfcpy_driver.parse_url(bad)


@pytest.mark.parametrize("url, message", [("nfcpy:tty:/nonexistent/ttyS9", "no such serial device"),
                                          ("nfcpy:usb:072f:2200", "found no reader"),
                                          ("nfcpy:udp", "not a PN53x")])
def test_readers_that_cannot_be_used_are_refused_clearly(url, message):
    with pytest.raises(ReaderError, match=message):
        open_reader(url)


# --- against the emulator ------------------------------------------------------------------------

def test_nfcpy_sets_the_chip_up_and_the_line_runs_at_the_asked_rate(emulator, reader):
    assert isinstance(reader, nfcpy_driver.NfcpyReader)
    assert str(reader.device).startswith("PN532v1.6")
    assert emulator.sam_configured
    assert emulator.baud == reader.chipset.transport.baudrate == 115200


def test_without_a_rate_nfcpys_own_line_set_up_reads_the_card(emulator):
    # nfcpy raises the rate on Linux (921600 where the line takes it). Whether the emulator's timing
    # model follows depends on nfcpy's ACK surviving its own port reopen, so only the outcome is
    # checked here; ?baud= pins the rate on both ends (test above).
    card = ClassicCard(UID4)
    emulator.field.place(card)
    with open_reader("nfcpy:tty:%s" % emulator.path) as reader:
        assert reader.chipset.transport.baudrate >= 115200
        reader.poll(1000)
        reader.authenticate(4, "A", mifare.TRANSPORT_KEY)
        reader.write_block(5, b"nfcpy line rate!")
        assert reader.read_block(5) == b"nfcpy line rate!" == card.dump_block(5)


@pytest.mark.parametrize("uid, atqa", [(UID4, 0x0004), (UID7, 0x0044)])
def test_poll_selects_4_and_7_byte_uid_cards(emulator, reader, uid, atqa):
    assert reader.poll(0) is None
    assert reader.poll(50) is None
    emulator.field.place(ClassicCard(uid))
    target = reader.poll(1000)
    assert (target.uid, target.atqa, target.sak) == (uid, atqa, 0x08)
    # nfcpy switched the receive CRC check off for a non-ISO 14443-4 card; InDataExchange needs it.
    assert reader.chipset.read_register("CIU_RxMode") & 0x80
    reader.authenticate(4, "A", mifare.TRANSPORT_KEY)
    assert reader.read_block(4) == bytes(16)


@pytest.mark.parametrize("uid", [UID4, UID7])
def test_issue_read_and_count_taps_through_card_io(emulator, reader, uid):
    card = issued(emulator, reader, uid)
    view = card_io.read_card(reader, TERMINAL, reader.poll(1000))
    assert view == card_io.CardView(uid, IDENTITY, NAME, 0)
    assert card_io.count_tap(reader, TERMINAL, reader.poll(1000), 0) == 1
    assert card_io.count_tap(reader, TERMINAL, reader.poll(1000), 1) == 2
    assert card_io.read_card(reader, TERMINAL, reader.poll(1000)).tap_counter == 2 == counter_on(card)


def test_a_card_issued_by_nfcpy_reads_the_same_on_the_pn532_driver(emulator, reader):
    issued(emulator, reader)
    reader.close()                      # nfcpy leaves the chip at 115200 baud, powered down
    with open_reader("pn532:%s" % emulator.path) as serial_reader:
        view = card_io.read_card(serial_reader, TERMINAL, serial_reader.poll(1000))
    assert (view.identity, view.name, view.tap_counter) == (IDENTITY, NAME, 0)


def test_wrong_key_then_a_new_poll_selects_the_card_again(emulator, reader):
    emulator.field.place(ClassicCard(UID4))
    reader.poll(1000)
    with pytest.raises(AuthenticationError, match="0x14"):
        reader.authenticate(4, "A", b"\x01" * 6)
    with pytest.raises(CardGone, match="poll"):
        reader.read_block(4)            # halted: nothing without a new poll
    assert reader.poll(1000).uid == UID4
    reader.authenticate(4, "A", mifare.TRANSPORT_KEY)
    assert reader.read_block(4) == bytes(16)


def test_a_foreign_card_is_told_apart_from_a_blank_one(emulator, reader):
    emulator.field.place(ClassicCard(UID4))
    with pytest.raises(card_layout.CardFormatError, match="空白卡"):
        card_io.read_card(reader, TERMINAL, reader.poll(1000))


def test_a_refused_command_is_a_nak(emulator, reader):
    emulator.field.place(ClassicCard(UID4))
    reader.poll(1000)
    reader.authenticate(0, "A", mifare.TRANSPORT_KEY)
    with pytest.raises(CardNak):
        reader.write_block(0, bytes(16))        # the manufacturer block is read-only


def test_release_halts_the_card_until_the_next_poll(emulator, reader):
    emulator.field.place(ClassicCard(UID4))
    reader.poll(1000)
    reader.release()
    with pytest.raises(CardGone):
        reader.authenticate(4, "A", mifare.TRANSPORT_KEY)
    reader.poll(1000)
    reader.authenticate(4, "A", mifare.TRANSPORT_KEY)


# count_tap: authenticate (1), decrement (2), transfer (3), read back (4)
@pytest.mark.parametrize("operation", [1, 2, 3, 4])
@pytest.mark.parametrize("done", [False, True])
def test_card_pulled_mid_tap_is_card_gone_and_counts_at_most_once(emulator, reader, operation, done):
    card = issued(emulator, reader)
    assert card_io.count_tap(reader, TERMINAL, reader.poll(1000), 0) == 1
    emulator.field.pull_after(operation, done=done)
    with pytest.raises(CardGone):
        card_io.count_tap(reader, TERMINAL, reader.poll(1000), 1)
    assert reader.poll(0) is None
    on_card = counter_on(card)
    transferred = operation == 4 or (operation == 3 and done)
    assert on_card == (2 if transferred else 1)
    # The cardholder taps again: one more count, from whatever the card holds.
    emulator.field.place(card)
    view = card_io.read_card(reader, TERMINAL, reader.poll(1000))
    assert view.tap_counter == on_card
    assert card_io.count_tap(reader, TERMINAL, reader.poll(1000), on_card) == on_card + 1 == counter_on(card)


# --- the POS on nfcpy: -------------------------------------------------------------------------------

def pos_terminal(tmp_path, reader, out):
    """A canteen terminal deciding offline, with the card's account cached."""
    keys = sam_module.site_purpose_keys(MASTER_KEY)
    provisioning = {"terminal_id": TERMINAL_ID, "merchant_id": 5, "category": wallets.CATEGORY_CANTEEN,
                    "terminal_key": sam_module.terminal_key(MASTER_KEY, TERMINAL_ID).hex(),
                    "card_key_a": keys[sam_module.CARD_KEY_A].hex(), "card_mac": keys[sam_module.CARD_MAC].hex()}
    terminal = PosTerminal(provisioning, str(tmp_path / "terminal"), reader, out=out, sync=False)
    terminal.store.apply_answer({"acked_seq": 0, "balances": {"version": 1, "rows": [
        [IDENTITY.account_id, "main", 100000, 0, None, None]]}}, today_yyyymmdd=0, terminal_id=TERMINAL_ID)
    return terminal


def decisions(out):
    return [line for line in map(json.loads, out.getvalue().splitlines()) if line["type"] == "decision"]


# Field operations of one tap: read_card 1-6 (authenticate, read 4, 5, 6, authenticate, read 8),
# count_tap 7-9 in the sector read_card left authenticated (decrement, transfer, read 8).
@pytest.mark.parametrize("operation, done", [(2, False), (6, True), (7, True), (8, False), (8, True), (9, True)])
def test_a_pos_tap_with_the_card_pulled_asks_again_and_charges_once(emulator, reader, tmp_path, operation, done):
    card = issued(emulator, reader)
    out = io.StringIO()
    terminal = pos_terminal(tmp_path, reader, out)
    try:
        terminal.feed(pos.AmountKeyed(750))
        emulator.field.pull_after(operation, done=done)
        assert terminal.present_card(1000)
        assert [(line["accepted"], line["reason"]) for line in decisions(out)] == [(False, "tap_again")]
        assert terminal.store.journal() == []
        emulator.field.place(card)              # the cardholder taps again; the amount is still keyed
        assert terminal.present_card(1000)
        last = decisions(out)[-1]
        assert (last["accepted"], last["amount_fen"], last["seq"]) == (True, 750, 1)
        stored = [records.decode(bytes(raw)) for _, raw, _ in terminal.store.journal()]
        assert len(stored) == 1 and stored[0]["tap_counter"] == counter_on(card)
    finally:
        terminal.close()


# --- error mapping -------------------------------------------------------------------------------

@pytest.mark.parametrize("status, error", [(0x14, AuthenticationError), (0x05, CardNak), (0x01, CardGone),
                                           (0x02, CardGone), (0x27, CardGone), (0x2B, CardGone),
                                           (0x0E, ReaderError), (0x7F, ReaderError)])
def test_chipset_status_bytes_map_like_the_pn532_driver(status, error):
    mapped = nfcpy_driver._reader_error(nfc.clf.pn53x.Chipset.Error(status, "from the chip"), "read 4")
    assert type(mapped) is error
    assert "0x%02X" % status in str(mapped)


@pytest.mark.parametrize("raised, error", [
    (nfc.clf.TimeoutError("no answer"), CardGone),
    (nfc.clf.TransmissionError("crc_a check error"), CardGone),
    (nfc.clf.BrokenLinkError("field off"), CardGone),
    (IOError(errno.ETIMEDOUT, "timed out"), ReaderTimeout),
    (IOError(errno.EIO, "input/output error"), ReaderError),
])
def test_nfcpy_errors_map_to_the_shared_ones(raised, error):
    assert type(nfcpy_driver._reader_error(raised, "poll")) is error
