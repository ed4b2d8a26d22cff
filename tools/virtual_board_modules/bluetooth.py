"""bluetooth for the virtual board: MicroPython's low-level BLE interface, peripheral role, on a
virtual radio whose other end is the control channel, where a test or a technician acts as a phone.

    UUID, FLAG_* and the GATTS error codes; BLE() (one radio): active, config ('mac', 'gap_name',
    'mtu', ...), irq, gap_advertise, gap_disconnect, gatts_register_services, gatts_read, gatts_write,
    gatts_notify, gatts_indicate, gatts_set_buffer. The central role (scanning, connecting out, GATT
    client calls) raises OSError(EOPNOTSUPP).

The phone's side (control ops, see tools/virtual_board.py's BoardControl):
    ble_scan        what the board advertises (payloads in hex), or advertising: false
    ble_connect     connect while it advertises connectably -> conn; advertising stops, as it does
                    on the ESP32 when a central connects
    ble_read        read a characteristic by UUID: _IRQ_GATTS_READ_REQUEST first, whose non-zero answer
                    refuses the read with that ATT error code
    ble_write       write one: a remote write keeps at most the value's buffer (20 bytes unless
                    gatts_set_buffer said more), then _IRQ_GATTS_WRITE
    ble_disconnect  the phone goes
Notifications go to the control channel's queue for that connection (the phone is taken to have
subscribed). MicroPython's NimBLE port delivers every event but the read request through its
scheduler; here they all come where the program waits, the read request too.
"""
import _board
import _board_host as host

FLAG_BROADCAST = 0x0001
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020
FLAG_AUTHENTICATED_SIGNED_WRITE = 0x0040
FLAG_AUX_WRITE = 0x0100
FLAG_READ_ENCRYPTED = 0x0200
FLAG_READ_AUTHENTICATED = 0x0400
FLAG_READ_AUTHORIZED = 0x0800
FLAG_WRITE_ENCRYPTED = 0x1000
FLAG_WRITE_AUTHENTICATED = 0x2000
FLAG_WRITE_AUTHORIZED = 0x4000

GATTS_NO_ERROR = 0x00
GATTS_ERROR_READ_NOT_PERMITTED = 0x02
GATTS_ERROR_WRITE_NOT_PERMITTED = 0x03
GATTS_ERROR_INSUFFICIENT_AUTHENTICATION = 0x05
GATTS_ERROR_INSUFFICIENT_AUTHORIZATION = 0x08
GATTS_ERROR_INSUFFICIENT_ENCRYPTION = 0x0F

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_GATTS_READ_REQUEST = 4
_IRQ_GATTS_INDICATE_DONE = 20
_IRQ_MTU_EXCHANGED = 21

_EOPNOTSUPP = 95
_DEFAULT_BUFFER_BYTES = 20
_MAX_CONNECTIONS = 4
_MAX_VALUE_BYTES = 512      # ATT's longest attribute value
_ADDR_RANDOM = 1
_CCCD_UUID = 0x2902


class UUID:
    """A 16-bit, 32-bit or 128-bit UUID, kept little-endian as MicroPython's is."""

    def __init__(self, value):
        if isinstance(value, UUID):
            self._le = value._le
        elif isinstance(value, int):
            if not 0 <= value <= 0xFFFF:
                raise ValueError("invalid UUID")
            self._le = value.to_bytes(2, "little")
        elif isinstance(value, str):
            digits = value.replace("-", "")
            if len(digits) != 32:
                raise ValueError("invalid UUID")
            self._le = bytes(reversed(bytes.fromhex(digits)))
        else:
            data = bytes(value)
            if len(data) not in (2, 4, 16):
                raise ValueError("invalid UUID")
            self._le = data

    def text(self):
        """The UUID as a phone writes it: 4 hex digits, or the 8-4-4-4-12 form, lower case."""
        digits = bytes(reversed(self._le)).hex()
        if len(digits) != 32:
            return digits
        return "%s-%s-%s-%s-%s" % (digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:])

    def __eq__(self, other):
        return isinstance(other, UUID) and other._le == self._le

    def __hash__(self):
        return hash(self._le)

    def __repr__(self):
        if len(self._le) == 16:
            return "UUID('%s')" % self.text()
        return "UUID(0x%s)" % self.text()


class _Attribute:
    def __init__(self, handle, uuid, flags):
        self.handle = handle
        self.uuid = uuid
        self.flags = flags
        self.value = b""
        self.buffer_bytes = _DEFAULT_BUFFER_BYTES
        self.append = False


class _Radio:
    """What the controller holds: the GATT table, the advertisement, the links."""

    def __init__(self):
        self.active = False
        self.handler = None
        self.attributes = {}        # value handle -> _Attribute
        self.next_handle = 1
        self.advertising = None     # dict while advertising
        self.links = {}             # conn handle -> peer address (bytes)
        self.next_conn = 1
        self.mtu = 23
        self.gap_name = b"MPY ESP32"
        self.queued = []            # IRQs that come after the call that caused them

    def irq(self, event, data):
        if self.handler is None:
            return None
        return self.handler(event, data)

    def run_queued(self):
        while self.queued:          # bounded: each queued IRQ is one the program caused
            event, data = self.queued.pop(0)
            self.irq(event, data)


_radio = _Radio()


class BLE:
    """The board's one radio: BLE() always gives the same."""

    _instance = None

    def __new__(cls):
        if BLE._instance is None:
            BLE._instance = object.__new__(cls)
        return BLE._instance

    def active(self, change=None):
        if change is None:
            return _radio.active
        change = bool(change)
        if not change and _radio.active:
            for conn in list(_radio.links):
                host.link_lost(conn)
            _radio.__init__()
        _radio.active = change
        return change

    def _check_active(self):
        if not _radio.active:
            raise OSError(1, "BLE not active")      # EPERM, as MicroPython says

    def config(self, *names, **values):
        if names and values:
            raise TypeError("config takes a name or values")
        if values:
            for key, value in values.items():
                if key == "gap_name":
                    _radio.gap_name = value.encode() if isinstance(value, str) else bytes(value)
                elif key == "mtu":
                    if not 23 <= value <= 517:
                        raise ValueError("invalid MTU")
                    _radio.mtu = value
                elif key not in ("rxbuf", "addr_mode", "bond", "mitm", "io", "le_secure"):
                    raise ValueError("unknown config param")
            return None
        if len(names) != 1:
            raise TypeError("config takes one name")
        name = names[0]
        if name == "mac":
            self._check_active()
            return (0, bytes.fromhex(host.mac()))
        if name == "gap_name":
            return _radio.gap_name
        if name == "mtu":
            return _radio.mtu
        if name == "rxbuf":
            return 256
        raise ValueError("unknown config param")

    def irq(self, handler):
        _radio.handler = handler

    def gap_advertise(self, interval_us, adv_data=None, *, resp_data=None, connectable=True):
        self._check_active()
        if interval_us is None:
            _radio.advertising = None
            return
        _radio.advertising = {"interval_us": int(interval_us),
                              "adv_data": bytes(adv_data or b"").hex(), "resp_data": bytes(resp_data or b"").hex(),
                              "connectable": bool(connectable)}

    def gap_disconnect(self, conn_handle):
        self._check_active()
        if conn_handle not in _radio.links:
            return False
        address = _radio.links.pop(conn_handle)
        host.link_lost(conn_handle)
        _radio.queued.append((_IRQ_CENTRAL_DISCONNECT, (conn_handle, _ADDR_RANDOM, address)))
        return True

    def gap_scan(self, *args, **kwargs):
        raise OSError(_EOPNOTSUPP, "the virtual radio is a peripheral only")

    gap_connect = gap_scan
    gattc_discover_services = gap_scan
    gattc_discover_characteristics = gap_scan
    gattc_read = gap_scan
    gattc_write = gap_scan
    gattc_exchange_mtu = gap_scan
    gap_pair = gap_scan

    def gatts_register_services(self, services_definition):
        self._check_active()
        _radio.attributes = {}
        _radio.next_handle = 1
        handles = []
        for service in services_definition:
            service_uuid, characteristics = service[0], service[1]
            if not isinstance(service_uuid, UUID):
                raise TypeError("a service needs a UUID")
            _radio.next_handle += 1                     # the service declaration
            service_handles = []
            for characteristic in characteristics:
                service_handles.append(self._add(characteristic[0], characteristic[1]))
                if characteristic[1] & (FLAG_NOTIFY | FLAG_INDICATE):
                    _radio.next_handle += 1             # its CCCD
                for descriptor in (characteristic[2] if len(characteristic) > 2 else ()):
                    service_handles.append(self._add(descriptor[0], descriptor[1]))
            handles.append(tuple(service_handles))
        return tuple(handles)

    def _add(self, uuid, flags):
        if not isinstance(uuid, UUID):
            raise TypeError("a characteristic needs a UUID")
        _radio.next_handle += 1                         # the characteristic declaration
        handle = _radio.next_handle
        _radio.next_handle += 1
        _radio.attributes[handle] = _Attribute(handle, uuid, flags)
        return handle

    def _attribute(self, value_handle):
        attribute = _radio.attributes.get(value_handle)
        if attribute is None:
            raise ValueError("invalid handle")
        return attribute

    def gatts_read(self, value_handle):
        return self._attribute(value_handle).value

    def gatts_write(self, value_handle, data, send_update=False):
        attribute = self._attribute(value_handle)
        attribute.value = bytes(data)
        if send_update:
            for conn in _radio.links:
                host.notify(conn, attribute.uuid.text(), attribute.value.hex())

    def gatts_notify(self, conn_handle, value_handle, data=None):
        attribute = self._attribute(value_handle)
        if conn_handle not in _radio.links:
            raise OSError(128, "not connected")         # ENOTCONN on the ESP32 port
        value = attribute.value if data is None else bytes(data)
        host.notify(conn_handle, attribute.uuid.text(), value.hex())

    def gatts_indicate(self, conn_handle, value_handle, data=None):
        self.gatts_notify(conn_handle, value_handle, data)
        _radio.queued.append((_IRQ_GATTS_INDICATE_DONE, (conn_handle, value_handle, 0)))

    def gatts_set_buffer(self, value_handle, length, append=False):
        attribute = self._attribute(value_handle)
        attribute.buffer_bytes = int(length)
        attribute.append = bool(append)


# --- the phone's side, from the control channel ------------------------------------------------------

class AttError(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.att_error = code


def _require_link(request):
    if not _radio.active:
        raise OSError(1, "the board's Bluetooth is off")
    conn = request.get("conn")
    if conn not in _radio.links:
        raise OSError(128, "no such connection")
    return conn


def _find(uuid_text):
    wanted = UUID(uuid_text if len(uuid_text) > 4 else int(uuid_text, 16))
    for handle in sorted(_radio.attributes):
        if _radio.attributes[handle].uuid == wanted:
            return _radio.attributes[handle]
    raise AttError(0x0A, "no attribute %s" % uuid_text)     # attribute not found


def _scan(request):
    answer = {"advertising": _radio.active and _radio.advertising is not None, "mac": host.mac()}
    if answer["advertising"]:
        answer.update(_radio.advertising)
    return answer


def _connect(request):
    if not _radio.active or _radio.advertising is None or not _radio.advertising["connectable"]:
        raise OSError(113, "the board is not advertising")      # EHOSTUNREACH: nobody answers
    if len(_radio.links) >= _MAX_CONNECTIONS:
        raise OSError(12, "too many connections")
    conn = _radio.next_conn
    _radio.next_conn += 1
    address = bytes.fromhex(request.get("address", "c0ffee%06x" % conn))
    _radio.links[conn] = address
    _radio.advertising = None
    _radio.irq(_IRQ_CENTRAL_CONNECT, (conn, _ADDR_RANDOM, memoryview(address)))
    if request.get("mtu"):
        mtu = max(23, min(int(request["mtu"]), _radio.mtu if _radio.mtu > 23 else 256))
        _radio.irq(_IRQ_MTU_EXCHANGED, (conn, mtu))
    return {"conn": conn}


def _read(request):
    conn = _require_link(request)
    attribute = _find(request["uuid"])
    if not attribute.flags & FLAG_READ:
        raise AttError(GATTS_ERROR_READ_NOT_PERMITTED, "read not permitted")
    refused = _radio.irq(_IRQ_GATTS_READ_REQUEST, (conn, attribute.handle))
    if refused:
        raise AttError(refused, "the board refused the read")
    return {"value": attribute.value.hex()}


def _write(request):
    conn = _require_link(request)
    attribute = _find(request["uuid"])
    if not attribute.flags & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE):
        raise AttError(GATTS_ERROR_WRITE_NOT_PERMITTED, "write not permitted")
    value = bytes.fromhex(request["value"])
    if len(value) > _MAX_VALUE_BYTES:
        raise AttError(0x0D, "invalid attribute value length")
    if attribute.append:
        value = attribute.value + value
    attribute.value = value[:attribute.buffer_bytes]
    _radio.irq(_IRQ_GATTS_WRITE, (conn, attribute.handle))
    return {}


def _disconnect(request):
    conn = _require_link(request)
    address = _radio.links.pop(conn)
    _radio.irq(_IRQ_CENTRAL_DISCONNECT, (conn, _ADDR_RANDOM, memoryview(address)))
    return {}


_board.request_handlers.update({"ble_scan": _scan, "ble_connect": _connect, "ble_read": _read,
                                "ble_write": _write, "ble_disconnect": _disconnect})
_board.after_dispatch.append(_radio.run_queued)
