"""A third party checks the emulator: nfcpy's own PN532 driver (nfc.clf.pn532), opened through its
tty transport on the emulator's pseudo-terminal, completes its initialisation (firmware version,
SAMConfiguration, the baud rate switch nfcpy makes on Linux, the Diagnose line test, RF settings),
lists the virtual card, exchanges MIFARE commands through the chip, and closes the chip down.

nfcpy's path syntax ("tty:<name>:pn532") only finds devices directly under /dev, and a pty lives in
/dev/pts/, so the test builds the same objects nfc.clf.device.connect builds for that path: a
nfc.clf.transport.TTY on the device file and nfc.clf.pn532.init on it.
"""
import nfc
import nfc.clf
import nfc.clf.device
import nfc.clf.pn532
import nfc.clf.transport
import nfc.tag
import nfc.tag.tt2
import nfc.tag.tt2_nxp
import pytest

from firmware.core import mifare
from reader_drivers.base import open_reader
from reader_drivers.sim.classic_card import ClassicCard
from simulators.pn532_emulator import Pn532Emulator

UID4 = bytes.fromhex("c0ffee01")
UID7 = bytes.fromhex("04a1b2c3d4e5f6")


def open_nfcpy(emulator):
    transport = nfc.clf.transport.TTY(emulator.path)
    device = nfc.clf.pn532.init(transport)
    device._path = emulator.path       # what nfc.clf.device.connect records for a found device
    frontend = nfc.ContactlessFrontend()
    frontend.device = device
    return frontend


@pytest.fixture
def emulator():
    with Pn532Emulator() as running:
        yield running


@pytest.mark.parametrize("uid, sens_res", [(UID4, "0400"), (UID7, "4400")])
def test_nfcpy_initialises_and_senses_the_virtual_card(emulator, uid, sens_res):
    emulator.field.place(ClassicCard(uid))
    frontend = open_nfcpy(emulator)
    try:
        assert str(frontend.device).startswith("PN532v1.6")
        target = frontend.sense(nfc.clf.RemoteTarget("106A"))
        assert target is not None
        assert bytes(target.sdd_res) == uid
        assert bytes(target.sel_res) == b"\x08"                  # MIFARE Classic 1K
        assert bytes(target.sens_res).hex() == sens_res          # ATQA as sent on the air
    finally:
        frontend.close()


def test_nfcpy_senses_nothing_in_an_empty_field(emulator):
    frontend = open_nfcpy(emulator)
    try:
        assert frontend.sense(nfc.clf.RemoteTarget("106A")) is None
    finally:
        frontend.close()


def test_mifare_commands_through_nfcpys_chipset(emulator):
    card = ClassicCard(UID7)
    emulator.field.place(card)
    frontend = open_nfcpy(emulator)
    try:
        assert frontend.sense(nfc.clf.RemoteTarget("106A")) is not None
        chipset = frontend.device.chipset
        chipset.in_data_exchange(bytearray(b"\x60\x04" + mifare.TRANSPORT_KEY + UID7[-4:]), 0.5)
        chipset.in_data_exchange(bytearray(b"\xa0\x05" + b"written by nfcpy"), 0.5)
        data, _more = chipset.in_data_exchange(bytearray(b"\x30\x05"), 0.5)
        # nfcpy's sense_tta switched CIU_RxMode's RxCRCEn off (it reads Type 2 Tags raw), so the block
        # arrives with the CRC_A it carried on the air, as from a real PN532.
        assert bytes(data) == bytes(nfc.clf.device.Device.add_crc_a(bytearray(b"written by nfcpy")))
        chipset.write_register("CIU_RxMode", chipset.read_register("CIU_RxMode") | 0x80)
        data, _more = chipset.in_data_exchange(bytearray(b"\x30\x05"), 0.5)
        assert bytes(data) == b"written by nfcpy" == card.dump_block(5)
        with pytest.raises(nfc.clf.pn532.Chipset.Error) as refused:
            chipset.in_data_exchange(bytearray(b"\x60\x08" + b"\x01" * 6 + UID7[-4:]), 0.5)
        assert refused.value.errno == 0x14                        # MIFARE authentication error
    finally:
        frontend.close()


def test_nfcpys_card_probe_gets_the_timeouts_and_naks_of_a_real_chip(emulator):
    emulator.field.place(ClassicCard(UID7))
    frontend = open_nfcpy(emulator)
    try:
        target = frontend.sense(nfc.clf.RemoteTarget("106A"))
        # nfc/tag/tt2_nxp.py probes an NXP UID with AUTHENTICATE (1A 00) and GET_VERSION (60) through
        # InCommunicateThru; a Classic card answers neither (timeouts, each followed by a new sense),
        # so nfcpy ends at its Ultralight guess, as with a real PN532.
        tag = nfc.tag.activate(frontend, target)
        assert isinstance(tag, nfc.tag.tt2_nxp.MifareUltralight)
        with pytest.raises(nfc.tag.tt2.Type2TagCommandError, match="invalid page"):
            tag.read(0)                                   # READ before authentication: a 4-bit NAK
        with pytest.raises(nfc.clf.TimeoutError):
            frontend.exchange(b"\x1a\x00", 0.01)         # and the NAK halted the card
    finally:
        frontend.close()


def test_after_nfcpy_closes_the_chip_both_drivers_open_it_again(emulator):
    emulator.field.place(ClassicCard(UID4))
    open_nfcpy(emulator).close()        # back to 115200 baud and PowerDown, as nfcpy leaves a chip
    again = open_nfcpy(emulator)
    try:
        assert again.sense(nfc.clf.RemoteTarget("106A")) is not None
    finally:
        again.close()
    with open_reader("pn532:%s" % emulator.path) as reader:
        assert reader.poll(1000).uid == UID4
