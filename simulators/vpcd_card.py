"""A virtual ACR122U-class contactless reader with a MIFARE Classic card, plugged into the real pcscd.

Debian's `vsmartcard-vpcd` is a pcscd reader driver that listens on a TCP port and forwards every
power/reset/ATR request and APDU to whatever connects there (the "vicc"). This module is such a
vicc, standing for the reader firmware and the card together: a `VpcdCard` connects to vpcd when a
card is inserted and hangs up when it is removed, which pcscd reports as card insertion and removal.

Wire protocol (vsmartcard, virtualsmartcard "Creating a virtual smart card"): every message is a
2-byte big-endian length and a payload. A 1-byte payload is a control message - 0x00 power off,
0x01 power on, 0x02 reset (no answer to these three), 0x04 "send the ATR"; anything longer is a
command APDU, answered by one response APDU.

`Acr122Firmware.answer(apdu)` is the sans-IO part: the pseudo-APDUs of PC/SC Part 3 section 3.2.2.1
that the ACR122U implements (ACR122U API v2.04 sections 4-5), over a
`reader_drivers.sim.classic_card.ClassicCard`:

    FF CA 00 00 Le             Get Data: the UID (Part 3 3.2.2.1.3)
    FF 82 00 nn 06 key         Load Keys into volatile slot nn = 0 or 1 (Part 3 3.2.2.1.4)
    FF 86 00 00 05 01 00 blk t nn   General Authenticate, t = 60 key A / 61 key B (3.2.2.1.6)
    FF B0 00 blk 10            Read Binary, one 16-byte block (3.2.2.1.8)
    FF D6 00 blk 10 data       Update Binary (3.2.2.1.9)
    FF D7 00 blk 05 op value   ACR122U value operation, op 00 store / 01 increment / 02 decrement,
                               value 4 bytes big-endian; increment and decrement are followed by a
                               transfer to the same block, as the reader firmware does
    FF D7 00 src 02 03 dst     ACR122U restore value block: restore src, transfer to dst
    FF B1 00 blk 04            ACR122U read value block
    FF 88 00 blk t nn          ACR122U authentication, the obsolete form (API 5.2): t = 60 / 61, slot nn
    FF 00 48 00 00             get the reader's firmware version: 10 ASCII bytes, no status word
                               ("ACR122U203"; API 6.3, and what libnfc's acr122_pcsc.c reads)
    FF 00 40 P2 04 T1 T2 n b   bi-colour LED and buzzer (API 6.2): P2 bit 0/1 final red/green, bit 2/3
                               their masks; T1, T2 blink times (100 ms), n repetitions, b buzzer link.
                               Answer 90 and the LED state (bit 0 red, bit 1 green); blinking ends in
                               the final state, which is all that is kept
    FF 00 00 00 Lc D4 cc ...   direct transmit to the reader's PN532 (API 6.1, libnfc's acr122_pcsc_send):
                               D5 cc+1 ... 90 00. The PN532 is the emulator's (`Pn532Emulator.
                               behind_reader_firmware`) on the same card: GetFirmwareVersion,
                               GetGeneralStatus, Read/WriteRegister, InListPassiveTarget,
                               InDataExchange, InCommunicateThru, InDeselect, InRelease; any other
                               command (one that could wait for ever, like InAutoPoll) 63 00

Status words (ACR122U API): 90 00 done; 63 00 the operation failed (wrong key, card NAK, card not
selected); 6A 81 function not supported; 6C xx wrong Le (xx is the right one); 62 82 UID shorter than
Le; 67 00 wrong length; 6B 00 block or parameter out of range; 6E 00 class not supported.

Limits: one card per reader; no RF timing; the ATR is the Part 3 one for a Classic 1K
(`ATR_CLASSIC_1K`), whatever the UID length; the buzzer is a counter of beeps.
"""
import socket
import struct
import threading
import time

from firmware.core import mifare, pn532_frames as frames
from reader_drivers.base import AuthenticationError, CardGone, CardNak
from reader_drivers.sim.card_file import MEMORY_CHANGING_COMMANDS
from reader_drivers.sim.field import AFTER, VirtualField
from simulators.pn532_emulator import Pn532Emulator

DEFAULT_PORT = 35963   # 0x8C7B, CHANNELID of /etc/reader.conf.d/vpcd

CONTROL_POWER_OFF = 0x00
CONTROL_POWER_ON = 0x01
CONTROL_RESET = 0x02
CONTROL_ATR = 0x04

CLA_PSEUDO = 0xFF
INS_GET_DATA = 0xCA
INS_LOAD_KEYS = 0x82
INS_GENERAL_AUTHENTICATE = 0x86
INS_READ_BINARY = 0xB0
INS_UPDATE_BINARY = 0xD6
INS_VALUE = 0xD7
INS_READ_VALUE = 0xB1
INS_AUTHENTICATE_OBSOLETE = 0x88
INS_READER = 0x00              # FF 00 P1 ...: the ACR122U's own commands, told apart by P1
READER_DIRECT_TRANSMIT = 0x00
READER_LED_BUZZER = 0x40
READER_FIRMWARE_VERSION = 0x48

FIRMWARE_VERSION_TEXT = b"ACR122U203"
SW1_LED_STATE = 0x90
LED_RED = 0x01
LED_GREEN = 0x02
# The PN532 commands the direct transmit passes on: none of them waits for the host.
_DIRECT_TRANSMIT_COMMANDS = frozenset((
    frames.CMD_GET_FIRMWARE_VERSION, frames.CMD_GET_GENERAL_STATUS, frames.CMD_READ_REGISTER,
    frames.CMD_WRITE_REGISTER, frames.CMD_IN_LIST_PASSIVE_TARGET, frames.CMD_IN_DATA_EXCHANGE,
    frames.CMD_IN_COMMUNICATE_THRU, frames.CMD_IN_DESELECT, frames.CMD_IN_RELEASE))

SW_OK = b"\x90\x00"
SW_FAILED = b"\x63\x00"
SW_NOT_SUPPORTED = b"\x6a\x81"
SW_WRONG_LENGTH = b"\x67\x00"
SW_WRONG_PARAMETERS = b"\x6b\x00"
SW_CLASS_NOT_SUPPORTED = b"\x6e\x00"
SW_END_OF_DATA = b"\x62\x82"

KEY_TYPE_A = 0x60
KEY_TYPE_B = 0x61
VALUE_STORE = 0x00
VALUE_INCREMENT = 0x01
VALUE_DECREMENT = 0x02
VALUE_RESTORE = 0x03
KEY_SLOTS = 2

STANDARD_ISO14443A_PART3 = 0x03
CARD_NAME_CLASSIC_1K = 0x0001

_CONNECT_DEADLINE_S = 10.0      # vpcd listens as soon as pcscd loaded its driver
_MAX_MESSAGE_BYTES = 0xFFFF     # the length prefix is 16 bits
_MAX_HOOKS = 16


def contactless_storage_atr(standard, card_name):
    """The ATR a PC/SC reader builds for a contactless storage card (PC/SC Part 3 supplement,
    "ATR for contactless storage cards"): 3B 8F 80 01, historical bytes 80 4F 0C + RID A0 00 00 03 06
    + standard + card name (2 bytes) + 4 RFU bytes, then TCK, the XOR of T0 .. the last historical byte."""
    historical = bytes((0x80, 0x4F, 0x0C)) + bytes.fromhex("a000000306") + bytes((standard,)) \
        + struct.pack(">H", card_name) + bytes(4)
    body = bytes((0x8F, 0x80, 0x01)) + historical
    assert len(historical) == 0x0F
    check = 0
    for byte in body:
        check ^= byte
    return b"\x3b" + body + bytes((check,))


ATR_CLASSIC_1K = contactless_storage_atr(STANDARD_ISO14443A_PART3, CARD_NAME_CLASSIC_1K)
assert ATR_CLASSIC_1K == bytes.fromhex("3b8f8001804f0ca000000306030001000000006a")


class Acr122Firmware:
    """What an ACR122U answers to Part 3 pseudo-APDUs, over one ClassicCard (or none)."""

    def __init__(self, card=None):
        # The card sits in a field so that the reader's PN532 (direct transmit) reaches the same card
        # the pseudo-APDUs do.
        self.field = VirtualField()
        self.field.on_operation(self._after_pn532_card_command)
        self.pn532 = Pn532Emulator.behind_reader_firmware(self.field)
        self.card = card
        self.key_slots = [None] * KEY_SLOTS   # volatile: kept while the reader is plugged in
        self.led_state = 0
        self.buzzer_beeps = 0
        # Called with the card after every command that changed its memory (write, transfer), before
        # the answer leaves: a card image file kept by it never lags the card (card_file.py).
        self.on_memory_change = None

    @property
    def card(self):
        return self.field.card

    @card.setter
    def card(self, card):
        if card is None:
            self.field.pull()
        else:
            self.field.place(card)

    def _after_pn532_card_command(self, field, _number, name, phase):
        if phase == AFTER and name in MEMORY_CHANGING_COMMANDS and self.on_memory_change is not None:
            self.on_memory_change(field.card)

    # --- control messages ---------------------------------------------------------------------

    def power_on(self):
        """Power on / reset: the reader's PN532 lists (selects) the card as target 1, as the ACR122U
        firmware does; a halted card wakes up (WUPA)."""
        if self.card is not None:
            self.pn532.answer(frames.CMD_IN_LIST_PASSIVE_TARGET, bytes((1, frames.BRTY_106A)))

    def power_off(self):
        self.pn532.answer(frames.CMD_IN_RELEASE, b"\x00")
        if self.card is not None:
            self.card.power_off()

    @property
    def atr(self):
        return ATR_CLASSIC_1K if self.card is not None else b""

    # --- APDUs --------------------------------------------------------------------------------

    def answer(self, apdu):
        """One command APDU -> its response APDU (data + SW1 SW2)."""
        apdu = bytes(apdu)
        if len(apdu) < 4:
            return SW_WRONG_LENGTH
        if apdu[0] != CLA_PSEUDO:
            return SW_CLASS_NOT_SUPPORTED
        handler = self._HANDLERS.get(apdu[1])
        if handler is None:
            return SW_NOT_SUPPORTED
        return handler(self, apdu[2], apdu[3], apdu[4:])

    def _get_data(self, p1, p2, body):
        if p1 != 0x00 or p2 != 0x00:    # P1 01 asks for the ATS, which a Classic card has none of
            return SW_NOT_SUPPORTED
        if len(body) != 1:
            return SW_WRONG_LENGTH
        if self.card is None:
            return SW_FAILED
        uid = self.card.uid
        expected = body[0]
        if expected == 0 or expected == len(uid):
            return uid + SW_OK
        if expected < len(uid):
            return b"\x6c" + bytes((len(uid),))
        return uid + SW_END_OF_DATA

    def _load_keys(self, key_structure, slot, body):
        if key_structure != 0x00 or slot >= KEY_SLOTS:   # only volatile slots 0 and 1 (ACR122U 5.1)
            return SW_FAILED
        if len(body) != 1 + mifare.KEY_SIZE or body[0] != mifare.KEY_SIZE:
            return SW_WRONG_LENGTH
        self.key_slots[slot] = bytes(body[1:])
        return SW_OK

    def _general_authenticate(self, p1, p2, body):
        if len(body) != 6 or body[0] != 5:
            return SW_WRONG_LENGTH
        version, msb, block, key_type, slot = body[1:6]
        if version != 0x01 or msb != 0x00 or key_type not in (KEY_TYPE_A, KEY_TYPE_B) or slot >= KEY_SLOTS:
            return SW_WRONG_PARAMETERS
        key = self.key_slots[slot]
        if key is None:
            return SW_FAILED
        return self._on_card(lambda card: card.authenticate(
            block, mifare.A if key_type == KEY_TYPE_A else mifare.B, key))

    def _authenticate_obsolete(self, p1, block, body):
        """FF 88 00 block keytype keynumber (API 5.2, kept by the ACR122U for older software)."""
        if p1 != 0x00:
            return SW_WRONG_PARAMETERS
        if len(body) != 2:
            return SW_WRONG_LENGTH
        return self._general_authenticate(0x00, 0x00, bytes((5, 0x01, 0x00, block)) + bytes(body))

    def _reader_command(self, p1, p2, body):
        if p1 == READER_FIRMWARE_VERSION and p2 == 0x00 and len(body) == 1:
            return FIRMWARE_VERSION_TEXT
        if p1 == READER_LED_BUZZER:
            return self._led_and_buzzer(p2, body)
        if p1 == READER_DIRECT_TRANSMIT and p2 == 0x00:
            return self._direct_transmit(body)
        return SW_NOT_SUPPORTED

    def _led_and_buzzer(self, control, body):
        if len(body) != 5 or body[0] != 4:
            return SW_WRONG_LENGTH
        _t1, _t2, repetitions, buzzer_link = body[1:5]
        for led, final_bit, mask_bit in ((LED_RED, 0x01, 0x04), (LED_GREEN, 0x02, 0x08)):
            if control & mask_bit:
                self.led_state = (self.led_state & ~led) | (led if control & final_bit else 0)
        if buzzer_link & 0x03:
            self.buzzer_beeps += repetitions * (2 if buzzer_link & 0x03 == 0x03 else 1)
        return bytes((SW1_LED_STATE, self.led_state))

    def _direct_transmit(self, body):
        if not body or body[0] != len(body) - 1 or len(body) < 3:
            return SW_WRONG_LENGTH
        if body[1] != frames.TFI_HOST or body[2] not in _DIRECT_TRANSMIT_COMMANDS:
            return SW_FAILED
        params = self.pn532.answer(body[2], body[3:])
        if params is None:
            return SW_FAILED
        return bytes((frames.TFI_CHIP, body[2] + 1)) + params + SW_OK

    def _read_binary(self, p1, block, body):
        if p1 != 0x00:
            return SW_WRONG_PARAMETERS
        if len(body) != 1:
            return SW_WRONG_LENGTH
        if body[0] != mifare.BLOCK_SIZE:
            return b"\x6c" + bytes((mifare.BLOCK_SIZE,))
        return self._on_card(lambda card: card.read(block))

    def _update_binary(self, p1, block, body):
        if p1 != 0x00:
            return SW_WRONG_PARAMETERS
        if len(body) != 1 + mifare.BLOCK_SIZE or body[0] != mifare.BLOCK_SIZE:
            return SW_WRONG_LENGTH
        return self._on_card(lambda card: card.write(block, body[1:]), changes_memory=True)

    def _value(self, p1, block, body):
        if p1 != 0x00:
            return SW_WRONG_PARAMETERS
        if len(body) == 3 and body[0] == 2 and body[1] == VALUE_RESTORE:
            target_block = body[2]

            def restore_and_transfer(card):
                card.restore(block)
                card.transfer(target_block)
            return self._on_card(restore_and_transfer, changes_memory=True)
        if len(body) != 6 or body[0] != 5:
            return SW_WRONG_LENGTH
        operation = body[1]
        value = struct.unpack(">i", body[2:6])[0]
        if operation == VALUE_STORE:
            return self._on_card(lambda card: card.write(block, mifare.encode_value_block(value, block)),
                                 changes_memory=True)
        if operation not in (VALUE_INCREMENT, VALUE_DECREMENT):
            return SW_WRONG_PARAMETERS
        if value < 0:
            return SW_FAILED    # the card takes only a non-negative delta

        def change_and_transfer(card):
            if operation == VALUE_INCREMENT:
                card.increment(block, value)
            else:
                card.decrement(block, value)
            card.transfer(block)
        return self._on_card(change_and_transfer, changes_memory=True)

    def _read_value(self, p1, block, body):
        if p1 != 0x00:
            return SW_WRONG_PARAMETERS
        if len(body) != 1 or body[0] != 4:
            return SW_WRONG_LENGTH

        def read_value(card):
            data = card.read(block)
            try:
                value, _address = mifare.decode_value_block(data)
            except mifare.FormatError:
                raise CardNak("not a value block")
            return struct.pack(">i", value)
        return self._on_card(read_value)

    def _on_card(self, operation, changes_memory=False):
        """Run one card operation; every refusal of the card is 63 00 on an ACR122U."""
        if self.card is None:
            return SW_FAILED
        try:
            data = operation(self.card)
        except (AuthenticationError, CardNak, CardGone, ValueError):
            # CardGone here is CardHalted: the card is in the field but not selected.
            return SW_FAILED
        if changes_memory and self.on_memory_change is not None:
            self.on_memory_change(self.card)
        return (data or b"") + SW_OK

    _HANDLERS = {
        INS_READER: _reader_command,
        INS_AUTHENTICATE_OBSOLETE: _authenticate_obsolete,
        INS_GET_DATA: _get_data,
        INS_LOAD_KEYS: _load_keys,
        INS_GENERAL_AUTHENTICATE: _general_authenticate,
        INS_READ_BINARY: _read_binary,
        INS_UPDATE_BINARY: _update_binary,
        INS_VALUE: _value,
        INS_READ_VALUE: _read_value,
    }


class VpcdCard:
    """The reader slot behind one vpcd port: insert a ClassicCard, remove it, at any moment.

        slot = VpcdCard(port)          # vpcd's port: CHANNELID in reader.conf (35963 by default)
        slot.insert(card)              # connects to vpcd: pcscd sees a card
        slot.pull_on(INS_VALUE, done=True)   # the next value operation happens, its answer is lost
        slot.remove()                  # hangs up: pcscd sees the card gone
        slot.close()

    Every APDU and control message is served on a thread of its own; `remove()` and the pull hooks
    may run from any thread, including from inside a hook.
    """

    def __init__(self, port=DEFAULT_PORT, host="127.0.0.1"):
        self.host = host
        self.port = port
        self.firmware = Acr122Firmware()
        self._lock = threading.RLock()
        self._socket = None
        self._thread = None
        self._hooks = []
        self.apdu_count = 0

    @property
    def card(self):
        return self.firmware.card

    def insert(self, card, deadline_s=_CONNECT_DEADLINE_S):
        """Put `card` on the reader: connect to vpcd (retrying while vpcd is not listening yet)."""
        self.remove()
        connection = _connect(self.host, self.port, deadline_s)
        with self._lock:
            card.power_off()
            self.firmware.card = card
            self._socket = connection
            self._thread = threading.Thread(target=self._serve, args=(connection,), daemon=True,
                                            name="vpcd-card-%d" % self.port)
            self._thread.start()

    def remove(self):
        """Take the card off the reader (hang up on vpcd); returns it, or None if there was none."""
        with self._lock:
            connection, self._socket = self._socket, None
            card, self.firmware.card = self.firmware.card, None
            thread, self._thread = self._thread, None
        if card is not None:
            card.power_off()
        if connection is not None:
            _hang_up(connection)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        return card

    def close(self):
        self.remove()

    # The names the sim: reader's VirtualField uses, so a test can put and take cards the same way
    # on the sim: reader and on this one.
    def place(self, card):
        self.insert(card)

    def pull(self):
        return self.remove()

    def pull_on(self, instruction, done=True, occurrence=1):
        """Remove the card at the `occurrence`-th APDU from now whose INS is `instruction`: after the
        card executed it (done, the answer is lost) or before it reaches the card (not done)."""
        assert occurrence >= 1
        state = {"seen": 0}

        def hook(apdu, phase):
            if len(apdu) < 2 or apdu[1] != instruction or phase != ("after" if done else "before"):
                return False
            state["seen"] += 1
            if state["seen"] < occurrence:
                return False
            self.remove()
            return True
        with self._lock:
            assert len(self._hooks) < _MAX_HOOKS, "too many pull hooks"
            self._hooks.append(hook)

    # --- the connection to vpcd ---------------------------------------------------------------

    def _serve(self, connection):
        try:
            while True:
                message = _receive(connection)
                if message is None:
                    return
                reply = self._handle(connection, message)
                if reply is None:
                    continue
                with self._lock:
                    if self._socket is not connection:
                        return   # removed while answering: the answer is lost with the card
                    connection.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError:
            return   # hung up by remove(), or vpcd went away

    def _handle(self, connection, message):
        with self._lock:
            if self._socket is not connection:
                return None
            if len(message) == 1:
                return self._control(message[0])
            self.apdu_count += 1
            if self._run_hooks(message, "before"):
                return None
            reply = self.firmware.answer(message)
            if self._run_hooks(message, "after"):
                return None
            return reply

    def _control(self, code):
        if code == CONTROL_ATR:
            return self.firmware.atr
        if code in (CONTROL_POWER_ON, CONTROL_RESET):
            self.firmware.power_on()
        elif code == CONTROL_POWER_OFF:
            self.firmware.power_off()
        return None

    def _run_hooks(self, apdu, phase):
        for hook in list(self._hooks):
            if hook(apdu, phase):
                self._hooks.remove(hook)
                return True
        return False


def _connect(host, port, deadline_s):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=deadline_s)
            connection.settimeout(None)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return connection
        except OSError as error:
            if time.monotonic() >= deadline:
                raise ConnectionError("vpcd 未在端口 %d 监听 / vpcd is not listening on %s:%d (is pcscd "
                                      "running with the vpcd driver?): %s" % (port, host, port, error))
            time.sleep(0.05)


def _receive_exactly(connection, size):
    chunks = []
    while size > 0:
        chunk = connection.recv(size)
        if not chunk:
            return None
        _acknowledge_now(connection)
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _acknowledge_now(connection):
    """vpcd writes the length prefix and the APDU as two sends on a socket with Nagle's algorithm on,
    so the APDU waits until the prefix is acknowledged; a delayed ACK here would add ~40 ms to every
    command. Linux drops quick-ACK mode by itself, so it is asked for again after every read."""
    quick_ack = getattr(socket, "TCP_QUICKACK", None)
    if quick_ack is not None:
        connection.setsockopt(socket.IPPROTO_TCP, quick_ack, 1)


def _receive(connection):
    header = _receive_exactly(connection, 2)
    if header is None:
        return None
    (length,) = struct.unpack(">H", header)
    assert length <= _MAX_MESSAGE_BYTES
    if length == 0:
        return b""
    return _receive_exactly(connection, length)


def _hang_up(connection):
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


def main(argv=None):
    """Serve one card image file on vpcd until interrupted (for trying a PC/SC tool by hand)."""
    import argparse
    from reader_drivers.sim.classic_card import ClassicCard, random_nuid
    import random

    parser = argparse.ArgumentParser(description="虚拟非接触卡（vpcd）/ a virtual MIFARE Classic card on vpcd")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--card", help="card image (UID + 1024 bytes), saved back after every write and transfer; "
                        "a blank card when left out")
    arguments = parser.parse_args(argv)
    card = ClassicCard.load(arguments.card) if arguments.card else ClassicCard(random_nuid(random.Random()))
    slot = VpcdCard(arguments.port)
    if arguments.card:
        # The image follows every write and transfer, as the card's EEPROM would (card_file.py).
        slot.firmware.on_memory_change = lambda changed: changed.save(arguments.card)
    slot.insert(card)
    print("卡片已放上读卡器 / card %s inserted on vpcd port %d; Ctrl-C removes it" % (card.uid.hex(), arguments.port))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        slot.remove()
        if arguments.card:
            card.save(arguments.card)


if __name__ == "__main__":
    main()
