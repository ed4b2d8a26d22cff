"""The `pcsc:` driver through the real pcscd, with a virtual MIFARE Classic card behind vpcd.

Every card command here travels pyscard -> libpcsclite -> pcscd -> Debian's vpcd driver -> TCP ->
simulators.vpcd_card, and the card steps are the ones the POS and the service hall use
(firmware.apps.card_io). These tests are never skipped: without pcscd they fail and say what to
install (`make test` installs it).
"""
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from firmware.apps import card_io
from firmware.core import card_layout, mifare, sam as sam_module
from field_cards import counter_on
from pcscd_service import running_pcscd, wait_for_card
from reader_drivers import pcsc
from reader_drivers.base import (AuthenticationError, CardGone, CardNak, ReaderError, UnsupportedOperation,
                                 open_reader)
from simulators import vpcd_card
from reader_drivers.sim.classic_card import ClassicCard

MASTER_KEY = bytes(range(60, 92))
ISSUER = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY, include_issuer=True))
TERMINAL = sam_module.SoftwareSAM(sam_module.site_purpose_keys(MASTER_KEY))
OTHER_SITE = sam_module.SoftwareSAM(sam_module.site_purpose_keys(bytes(32)))
UID = bytes.fromhex("5a17c0de")
IDENTITY = card_layout.Identity(20250042, 990042, 1, card_layout.HOLDER_STUDENT, 20290630)
NAME = "王芳"
POLL_MS = 5000   # how long to wait for pcscd to notice a card: a deadline, not a speed claim


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory):
    with running_pcscd(tmp_path_factory.mktemp("pcscd")) as service:
        yield service


@pytest.fixture
def slot(pcscd):
    """The first vpcd reader's card slot; empty again (as pcscd sees it) after the test."""
    card_slot = vpcd_card.VpcdCard(pcscd.port)
    yield card_slot
    card_slot.close()
    assert wait_for_card(pcscd.readers[0], present=False), "pcscd still sees a card after the test"


@pytest.fixture
def reader(pcscd):
    with open_reader("pcsc:" + pcscd.readers[0]) as pcsc_reader:
        yield pcsc_reader


def insert_and_poll(slot, reader, card):
    slot.insert(card)
    target = reader.poll(POLL_MS)
    assert target is not None, "pcscd did not report the inserted card"
    return target


def issued(slot, reader, uid=UID):
    card = ClassicCard(uid)
    target = insert_and_poll(slot, reader, card)
    card_io.issue_card(reader, ISSUER, target, IDENTITY, NAME)
    return card, reader.poll(0)


# --- readers and selection -----------------------------------------------------------------------

def test_pcscd_lists_the_vpcd_readers_and_the_url_picks_one_by_name(pcscd):
    assert pcsc.list_readers() == pcscd.readers == ["Virtual PCD 00 00", "Virtual PCD 00 01"]
    with open_reader("pcsc:") as first, open_reader("pcsc:virtual%20pcd%2000%2001") as second:
        assert (first.reader_name, second.reader_name) == ("Virtual PCD 00 00", "Virtual PCD 00 01")
    with pytest.raises(ReaderError) as refused:
        open_reader("pcsc:ACR122")
    assert "Virtual PCD 00 00" in str(refused.value)   # the message tells the technician what exists


def test_an_empty_reader_polls_none_and_a_card_inserted_while_waiting_is_selected(slot, reader):
    assert reader.poll(0) is None
    card = ClassicCard(UID)
    inserter = threading.Timer(0.3, slot.insert, args=(card,))
    inserter.start()
    try:
        target = reader.poll(POLL_MS)
    finally:
        inserter.join()
    assert (target.uid, target.sak, target.atqa) == (UID, 0x08, 0x0004)
    assert target.is_mifare_classic_1k


def test_pcscd_reports_the_part3_atr_of_a_classic_1k_and_a_seven_byte_uid(slot, reader):
    uid7 = bytes.fromhex("04a1b2c3d4e5f6")
    target = insert_and_poll(slot, reader, ClassicCard(uid7))
    assert (target.uid, target.atqa, target.is_mifare_classic_1k) == (uid7, 0x0044, True)
    assert reader.atr == bytes.fromhex("3b8f8001804f0ca000000306030001000000006a")   # as pcscd holds it


# --- the card steps the terminals use --------------------------------------------------------------

def test_issue_read_back_and_count_taps_through_pcscd(slot, reader):
    card, target = issued(slot, reader)
    assert card_io.read_card(reader, TERMINAL, target) == card_io.CardView(UID, IDENTITY, NAME, 0)
    assert card_io.count_tap(reader, TERMINAL, reader.poll(0), 0) == 1
    assert card_io.count_tap(reader, TERMINAL, reader.poll(0), 1) == 2
    assert card_io.read_card(reader, TERMINAL, reader.poll(0)).tap_counter == 2
    assert counter_on(card) == 2   # the card itself, not just what the reader said


def test_a_second_issue_is_refused_through_pcscd(slot, reader):
    card, target = issued(slot, reader)
    before = card.to_bytes()
    with pytest.raises(card_io.CardNotBlank):
        card_io.issue_card(reader, ISSUER, target, IDENTITY, NAME)
    assert card.to_bytes() == before


def test_a_wrong_key_is_an_authentication_error_and_the_card_answers_again_after_a_poll(slot, reader):
    _card, _target = issued(slot, reader)
    with pytest.raises(AuthenticationError):
        reader.authenticate(card_layout.IDENTITY_BLOCK, mifare.A, mifare.TRANSPORT_KEY)
    with pytest.raises(CardNak):   # halted after the failed authentication, as on the sim: reader
        reader.read_block(card_layout.IDENTITY_BLOCK)
    assert card_io.read_card(reader, TERMINAL, reader.poll(0)).identity == IDENTITY


def test_a_card_of_another_site_is_refused_by_its_keys(slot, reader):
    _card, target = issued(slot, reader)
    with pytest.raises(AuthenticationError):
        card_io.read_card(reader, OTHER_SITE, target)


def test_a_blank_card_reads_as_not_issued(slot, reader):
    target = insert_and_poll(slot, reader, ClassicCard(UID))
    with pytest.raises(card_layout.CardFormatError):
        card_io.read_card(reader, TERMINAL, target)


# --- a card pulled in the middle of a tap ----------------------------------------------------------

# count_tap sends: FF 82 (key, skipped when cached) FF 86 authenticate, FF D7 decrement+transfer,
# FF B0 read back. Pulling before the value operation leaves the counter; after it, it moved once.
@pytest.mark.parametrize("instruction, done, counted", [
    (vpcd_card.INS_GENERAL_AUTHENTICATE, False, False),
    (vpcd_card.INS_VALUE, False, False),
    (vpcd_card.INS_VALUE, True, True),
    (vpcd_card.INS_READ_BINARY, False, True),
], ids=["before-authenticate", "before-decrement", "after-decrement", "before-read-back"])
def test_a_card_pulled_mid_tap_is_card_gone_and_charged_at_most_once(pcscd, slot, reader, instruction,
                                                                     done, counted):
    card, target = issued(slot, reader)
    assert card_io.read_card(reader, TERMINAL, target).tap_counter == 0
    slot.pull_on(instruction, done=done)
    with pytest.raises(CardGone):
        card_io.count_tap(reader, TERMINAL, target, 0)
    assert slot.card is None
    assert counter_on(card) == (1 if counted else 0)
    # The cardholder taps again: the terminal reads the counter afresh and counts exactly one more.
    assert wait_for_card(pcscd.readers[0], present=False)
    target = insert_and_poll(slot, reader, card)
    view = card_io.read_card(reader, TERMINAL, target)
    assert view.tap_counter == (1 if counted else 0)
    assert card_io.count_tap(reader, TERMINAL, reader.poll(0), view.tap_counter) == view.tap_counter + 1
    assert counter_on(card) == view.tap_counter + 1


def test_a_command_after_the_card_left_is_card_gone_and_poll_finds_nothing(pcscd, slot, reader):
    insert_and_poll(slot, reader, ClassicCard(UID))
    slot.remove()
    with pytest.raises(CardGone):
        reader.authenticate(3, mifare.A, mifare.TRANSPORT_KEY)
    assert wait_for_card(pcscd.readers[0], present=False)
    assert reader.poll(0) is None


def test_a_released_card_answers_nothing_until_polled_again(slot, reader):
    _card, target = issued(slot, reader)
    reader.release()
    with pytest.raises(CardGone):   # as a halted card on the sim: reader (CardHalted is a CardGone)
        reader.read_block(card_layout.IDENTITY_BLOCK)
    assert card_io.read_card(reader, TERMINAL, reader.poll(0)).uid == target.uid


# --- memory and value commands ---------------------------------------------------------------------

@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.sampled_from([b for b in range(1, mifare.BLOCKS) if not mifare.is_trailer(b)]),
       data=st.binary(min_size=16, max_size=16))
def test_any_block_written_through_pcscd_reads_back_and_lands_on_the_card(slot, reader, block, data):
    if slot.card is None:
        insert_and_poll(slot, reader, ClassicCard(UID))
    reader.poll(0)
    reader.authenticate(block, mifare.A, mifare.TRANSPORT_KEY)
    reader.write_block(block, data)
    assert reader.read_block(block) == data
    assert slot.card.dump_block(block) == data


def test_value_operations_restore_and_what_the_acr122u_cannot_do(slot, reader):
    card = ClassicCard(UID)
    insert_and_poll(slot, reader, card)
    reader.authenticate(4, mifare.A, mifare.TRANSPORT_KEY)
    reader.write_block(4, mifare.encode_value_block(100, 4))
    reader.increment(4, 25)
    assert mifare.decode_value_block(card.dump_block(4))[0] == 100   # nothing sent before transfer
    reader.transfer(4)
    reader.decrement(4, 5)
    reader.transfer(4)
    assert mifare.decode_value_block(reader.read_block(4)) == (120, 4)
    reader.restore(4)
    reader.transfer(5)   # a backup copy of the value, as a purse keeps one
    assert mifare.decode_value_block(card.dump_block(5))[0] == 120
    reader.increment(4, 1)
    with pytest.raises(UnsupportedOperation):
        reader.transfer(6)
    with pytest.raises(CardNak):
        reader.transfer(4)   # nothing held any more
    reader.poll(0)
    reader.authenticate(4, mifare.A, mifare.TRANSPORT_KEY)
    reader.write_block(6, b"not a value blk!")
    reader.decrement(6, 1)
    with pytest.raises(CardNak):   # the card refuses: block 6 is not a value block
        reader.transfer(6)
    assert mifare.decode_value_block(card.dump_block(4))[0] == 120


def test_the_vpcd_card_command_writes_every_change_through_to_its_card_file(pcscd, reader, tmp_path):
    path = str(tmp_path / "card.bin")
    ClassicCard(UID).save(path)
    process = subprocess.Popen([sys.executable, "-m", "simulators.vpcd_card", "--port", str(pcscd.port),
                                "--card", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert reader.poll(POLL_MS) is not None, "pcscd did not report the card of simulators.vpcd_card"
        reader.authenticate(4, mifare.A, mifare.TRANSPORT_KEY)
        reader.write_block(4, b"written via vpcd")
        reader.write_block(5, mifare.encode_value_block(50, 5))
        reader.decrement(5, 8)
        reader.transfer(5)
        # The card is still on the reader: the file already holds what the card holds.
        image = ClassicCard.load(path)
        assert image.dump_block(4) == b"written via vpcd"
        assert mifare.decode_value_block(image.dump_block(5)) == (42, 5)
    finally:
        process.terminate()
        process.wait(10)
    assert wait_for_card(pcscd.readers[0], present=False), "pcscd still sees a card after the test"


# --- the ACR122U's own commands, as PC/SC tools (libnfc's acr122_pcsc driver among them) send them ----

def raw_connection(reader_name):
    """A plain pyscard connection: APDUs as a tool writes them, answers byte for byte."""
    from smartcard.System import readers
    connection = next(found for found in readers() if str(found) == reader_name).createConnection()
    connection.connect()
    return connection


def transmit(connection, apdu_hex):
    data, sw1, sw2 = connection.transmit(list(bytes.fromhex(apdu_hex)))
    return bytes(data + [sw1, sw2])


def test_firmware_version_leds_buzzer_and_the_obsolete_authenticate_through_pcscd(pcscd, slot):
    slot.insert(ClassicCard(UID))
    assert wait_for_card(pcscd.readers[0], present=True)
    connection = raw_connection(pcscd.readers[0])
    try:
        assert transmit(connection, "ff00480000") == b"ACR122U203"        # ASCII, no status word
        assert transmit(connection, "ff00400f0401010201") == b"\x90\x03"  # red and green on, 2 beeps in T1
        assert transmit(connection, "ff0040040400000000") == b"\x90\x02"  # red off (masked), green kept
        assert slot.firmware.buzzer_beeps == 2
        assert transmit(connection, "ff82000006" + mifare.TRANSPORT_KEY.hex()) == b"\x90\x00"
        assert transmit(connection, "ff88000460" "00") == b"\x90\x00"    # FF 88 00 block keytype slot
        assert transmit(connection, "ffb0000410") == bytes(16) + b"\x90\x00"
        assert transmit(connection, "ff88000860" "01") == b"\x63\x00"    # no key in slot 1
    finally:
        connection.disconnect()


def test_pn532_commands_pass_through_the_direct_transmit_to_the_same_card(pcscd, slot, tmp_path):
    card = ClassicCard(UID)
    slot.insert(card)
    image = str(tmp_path / "card.bin")
    slot.firmware.on_memory_change = lambda changed: changed.save(image)
    assert wait_for_card(pcscd.readers[0], present=True)
    connection = raw_connection(pcscd.readers[0])
    uid = UID.hex()
    try:
        assert transmit(connection, "ff00000002d402") == bytes.fromhex("d503320106079000")
        assert transmit(connection, "ff00000004d44a0100") == bytes.fromhex("d54b01010004080" "4" + uid + "9000")
        assert transmit(connection, "ff0000000fd440016004ffffffffffff" + uid) == bytes.fromhex("d5410090" "00")
        written = b"via D4 40 direct"
        assert transmit(connection, "ff00000015d44001a005" + written.hex()) == bytes.fromhex("d54100" "9000")
        assert card.dump_block(5) == written == ClassicCard.load(image).dump_block(5)
        assert transmit(connection, "ff00000004d4423005") == b"\xd5\x43\x00" + written + b"\x90\x00"
        assert transmit(connection, "ff00000005d440013004") == b"\xd5\x41\x00" + bytes(16) + b"\x90\x00"
        assert transmit(connection, "ff00000005d46001" "0110") == b"\x63\x00"   # InAutoPoll: not passed on
    finally:
        connection.disconnect()


# --- the virtual reader firmware on its own (exact bytes) -------------------------------------------

def test_the_virtual_reader_answers_with_the_acr122u_status_words():
    firmware = vpcd_card.Acr122Firmware(ClassicCard(UID))
    firmware.power_on()
    assert firmware.answer(bytes.fromhex("ffca000000")) == UID + b"\x90\x00"
    assert firmware.answer(bytes.fromhex("ffca000002")) == b"\x6c\x04"
    assert firmware.answer(bytes.fromhex("ffca010000")) == b"\x6a\x81"      # no ATS on a Classic card
    assert firmware.answer(bytes.fromhex("ff820000060102030405")) == b"\x67\x00"
    assert firmware.answer(bytes.fromhex("ff82000206ffffffffffff")) == b"\x63\x00"   # slots 0 and 1 only
    assert firmware.answer(bytes.fromhex("ff82000006ffffffffffff")) == b"\x90\x00"
    assert firmware.answer(bytes.fromhex("ffb0000110")) == b"\x63\x00"      # not authenticated
    firmware.power_on()
    assert firmware.answer(bytes.fromhex("ff860000050100076000")) == b"\x90\x00"
    assert firmware.answer(bytes.fromhex("ffb0000120")) == b"\x6c\x10"
    assert firmware.answer(bytes.fromhex("ffb0000410")) == bytes(16) + b"\x90\x00"
    assert firmware.answer(bytes.fromhex("ffd7000505000000002a")) == b"\x90\x00"
    assert firmware.answer(bytes.fromhex("ffb1000504")) == bytes.fromhex("0000002a9000")
    assert firmware.answer(bytes.fromhex("ffd7000505020000000a")) == b"\x90\x00"
    assert firmware.answer(bytes.fromhex("ffb1000504")) == bytes.fromhex("000000209000")
    assert firmware.answer(bytes.fromhex("ffb0000110")) == b"\x63\x00"      # sector 0: not this session
    assert firmware.answer(bytes.fromhex("ffb0000410")) == b"\x63\x00"      # ...and the NAK halted the card
    assert firmware.answer(bytes.fromhex("ff99000000")) == b"\x6a\x81"
    assert firmware.answer(bytes.fromhex("00a4040000")) == b"\x6e\x00"


def test_the_driver_builds_the_part3_apdus_byte_for_byte():
    assert pcsc.load_keys_apdu(1, bytes.fromhex("a0a1a2a3a4a5")) == bytes.fromhex("ff82000106a0a1a2a3a4a5")
    assert pcsc.general_authenticate_apdu(7, mifare.B, 1) == bytes.fromhex("ff860000050100076101")
    assert pcsc.read_binary_apdu(9) == bytes.fromhex("ffb0000910")
    assert pcsc.value_apdu(9, pcsc.VALUE_DECREMENT, 1) == bytes.fromhex("ffd700090502" "00000001")
    assert pcsc.restore_apdu(9, 10) == bytes.fromhex("ffd7000902030a")
    assert pcsc.target_from(UID, vpcd_card.contactless_storage_atr(3, 0x0002)).sak == 0x18   # Classic 4K
    assert not pcsc.target_from(UID, bytes.fromhex("3b8180018080")).is_mifare_classic_1k   # a DESFire ATS
