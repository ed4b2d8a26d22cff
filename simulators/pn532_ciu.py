"""The PN532's contactless interface unit (CIU) as far as a MIFARE Classic exchange depends on it: the
registers a host reads and writes with ReadRegister / WriteRegister (UM0701-02 7.2.4, 7.2.5) and what
they do to the frames on the air.

The CIU is the PN512's (PN532 C1 data sheet, "CIU register map"; the PN512 data sheet describes the
same TxModeReg, RxModeReg, Status2Reg, ControlReg, BitFramingReg bit by bit):

    0x6302 CIU_TxMode      bit 7 TxCRCEn: the CIU appends CRC_A to every frame it sends
    0x6303 CIU_RxMode      bit 7 RxCRCEn: the CIU checks the CRC_A of every frame it receives and strips it
    0x6338 CIU_Status2     bit 3 MFCrypto1On: set only by a successful MIFARE authentication; software may
                           clear it, after which frames go out in plain
    0x6339 CIU_FIFOData    nfcpy reads it after an empty poll (REQA still there: nobody answered)
    0x633C CIU_Control     bits 2-0 RxLastBits: valid bits in the last byte received (read-only)
    0x633D CIU_BitFraming  bits 2-0 TxLastBits: bits of the last byte sent (0: all eight)

What a MIFARE Classic card makes of it (ISO/IEC 14443-3 6.2.4 and MF1S50yyX/V1 section 9.3): a frame
whose CRC_A is missing or wrong, or a short frame that is not REQA/WUPA, is not a command: the card
stays silent (the chip times out, status 0x01). A card answer carries a CRC_A on the air; with
RxCRCEn off it reaches the host still attached. Every other register is a plain register file.

Limits: no Crypto1 cipher (the emulator knows whether both sides have it on, not the stream), no
REQA/WUPA short frames, no parity control (CIU_ManualRCV).
"""
from nfc.clf.device import Device as _NfcpyDevice

CIU_TX_MODE = 0x6302
CIU_RX_MODE = 0x6303
CIU_STATUS2 = 0x6338
CIU_FIFO_DATA = 0x6339
CIU_CONTROL = 0x633C
CIU_BIT_FRAMING = 0x633D

CRC_ENABLE = 0x80
MF_CRYPTO1_ON = 0x08
LAST_BITS = 0x07
INITIATOR = 0x10              # CIU_Control bit 4: the CIU acts as initiator (reader)

# Values after the firmware's own set-up at 106 kbps type A (what nfcpy and libnfc read back from a
# freshly configured chip: CRC on in both directions, 8-bit framing, no Crypto1).
_DEFAULTS = {CIU_TX_MODE: 0x80, CIU_RX_MODE: 0x80, 0x6304: 0x80, 0x6305: 0x00, CIU_STATUS2: 0x00,
             CIU_FIFO_DATA: 0x00, 0x633A: 0x00, CIU_CONTROL: INITIATOR, CIU_BIT_FRAMING: 0x00}


def add_crc_a(data):
    """data + its CRC_A (ISO/IEC 14443-3 annex B), through nfcpy's implementation."""
    return bytes(_NfcpyDevice.add_crc_a(bytearray(data)))


def has_crc_a(data):
    return len(data) > 2 and _NfcpyDevice.check_crc_a(bytearray(data))


class CiuRegisters:
    def __init__(self):
        self._values = dict(_DEFAULTS)

    def read(self, address):
        return self._values.get(address, 0)

    def write(self, address, value):
        """A host's WriteRegister: read-only bits keep what the chip put there."""
        old = self.read(address)
        if address == CIU_STATUS2:
            value = (value & ~MF_CRYPTO1_ON) | (value & old & MF_CRYPTO1_ON)   # clear only, never set
        elif address == CIU_CONTROL:
            value = (value & ~LAST_BITS) | (old & LAST_BITS)
        self._values[address] = value & 0xFF

    def set_fifo(self, value):
        self._values[CIU_FIFO_DATA] = value

    # --- what the chip itself changes -------------------------------------------------------------

    @property
    def crypto1_on(self):
        return bool(self._values[CIU_STATUS2] & MF_CRYPTO1_ON)

    def set_crypto1(self, on):
        self._values[CIU_STATUS2] = (self._values[CIU_STATUS2] & ~MF_CRYPTO1_ON) | (MF_CRYPTO1_ON if on else 0)

    def set_rx_last_bits(self, bits):
        assert 0 <= bits <= 7
        self._values[CIU_CONTROL] = (self._values[CIU_CONTROL] & ~LAST_BITS) | bits

    # --- frames on the air ------------------------------------------------------------------------

    def card_receives(self, data):
        """The command a card decodes from the host's bytes, or None when it is no command to it."""
        if self._values[CIU_BIT_FRAMING] & LAST_BITS:
            return None
        if self._values[CIU_TX_MODE] & CRC_ENABLE:
            return bytes(data)
        return bytes(data[:-2]) if has_crc_a(data) else None

    def host_receives(self, answer):
        """A card's answer (a full-byte frame, CRC_A on the air) as the host gets it."""
        if self._values[CIU_RX_MODE] & CRC_ENABLE:
            return bytes(answer)
        return add_crc_a(answer)

    @property
    def rx_crc(self):
        return bool(self._values[CIU_RX_MODE] & CRC_ENABLE)
