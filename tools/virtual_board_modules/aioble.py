"""aioble for the virtual board: the peripheral half of micropython-lib's aioble interface, written
for this board's bluetooth module. On a real board `mpremote mip install aioble` brings the real one;
here it is frozen, so flashing finds it importable and leaves it alone.

    config, stop, GattError, DeviceDisconnectedError, Device, DeviceConnection (is_connected,
    disconnected, disconnect, exchange_mtu, timeout, async with), Service, Characteristic (read,
    write, notify, indicate, written, on_read, capture), BufferedCharacteristic (max_len, append),
    Descriptor, register_services, advertise (the advertising payload built from name, services,
    appearance and manufacturer data; what does not fit 31 bytes goes into the scan response)

Not here: the central role (scan, Device.connect, clients), pairing, L2CAP.
"""
import struct

import asyncio
import bluetooth

ADDR_PUBLIC = 0
ADDR_RANDOM = 1

log_level = 1

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_GATTS_READ_REQUEST = 4
_IRQ_GATTS_INDICATE_DONE = 20
_IRQ_MTU_EXCHANGED = 21

_WRITE_CAPTURE_QUEUE_LIMIT = 10
_ADV_MAX_BYTES = 31
_ADV_FLAGS = 0x01
_ADV_COMPLETE_16 = 0x03
_ADV_COMPLETE_32 = 0x05
_ADV_COMPLETE_128 = 0x07
_ADV_NAME = 0x09
_ADV_APPEARANCE = 0x19
_ADV_MANUFACTURER = 0xFF

ble = bluetooth.BLE()


def log_info(*args):
    if log_level > 2:
        print("[aioble] I:", *args)


def log_warn(*args):
    if log_level > 1:
        print("[aioble] W:", *args)


def log_error(*args):
    if log_level > 0:
        print("[aioble] E:", *args)


class GattError(Exception):
    def __init__(self, status):
        super().__init__(status)
        self._status = status


class DeviceDisconnectedError(Exception):
    pass


def ensure_active():
    if not ble.active():
        ble.active(True)
        ble.irq(_irq)


def config(*args, **kwargs):
    ensure_active()
    return ble.config(*args, **kwargs)


def stop():
    ble.active(False)
    DeviceConnection._connected.clear()


# --- devices and connections ---------------------------------------------------------------------------

class Device:
    def __init__(self, addr_type, addr):
        self.addr_type = addr_type
        self.addr = bytes.fromhex(addr.replace(":", "")) if isinstance(addr, str) else bytes(addr)

    def __eq__(self, other):
        return isinstance(other, Device) and self.addr_type == other.addr_type and self.addr == other.addr

    def __hash__(self):
        return hash((self.addr_type, self.addr))

    def addr_hex(self):
        return ":".join("%02x" % b for b in self.addr)

    def __repr__(self):
        return "Device(%s, %s)" % ("ADDR_PUBLIC" if self.addr_type == ADDR_PUBLIC else "ADDR_RANDOM",
                                   self.addr_hex())

    async def connect(self, timeout_ms=10000, scan_duration_ms=None, min_conn_interval_us=None,
                      max_conn_interval_us=None):
        raise OSError(95, "the virtual board's radio is a peripheral only")


class DeviceTimeout:
    """`with connection.timeout(ms):` around awaits on a connection: TimeoutError after `ms`,
    DeviceDisconnectedError when the link goes first."""

    def __init__(self, connection, timeout_ms):
        self._connection = connection
        self._timeout_ms = timeout_ms
        self._task = asyncio.current_task()
        self._timer = None
        self._fired = False

    async def _expire(self):
        await asyncio.sleep_ms(self._timeout_ms)
        self._fired = True
        self._task.cancel()

    def __enter__(self):
        if self._connection is not None:
            self._connection._timeouts.append(self)
        if self._timeout_ms:
            self._timer = asyncio.create_task(self._expire())

    def _link_lost(self):
        self._task.cancel()

    def __exit__(self, exc_type, exc_val, exc_traceback):
        if self._connection is not None and self in self._connection._timeouts:
            self._connection._timeouts.remove(self)
        if self._timer is not None:
            self._timer.cancel()
        if exc_type is asyncio.CancelledError:
            if self._fired:
                raise asyncio.TimeoutError
            if self._connection is not None and not self._connection.is_connected():
                raise DeviceDisconnectedError


class DeviceConnection:
    _connected = {}         # conn handle -> DeviceConnection: one object per link, so `is` compares links

    def __init__(self, device):
        self.device = device
        self.encrypted = False
        self.authenticated = False
        self.bonded = False
        self.key_size = False
        self.mtu = None
        self._conn_handle = None
        self._gone = asyncio.Event()
        self._timeouts = []

    def is_connected(self):
        return self._conn_handle is not None

    def timeout(self, timeout_ms):
        return DeviceTimeout(self, timeout_ms)

    async def disconnected(self, timeout_ms=None, disconnect=False):
        if not self.is_connected():
            return
        if disconnect:
            ble.gap_disconnect(self._conn_handle)
        if timeout_ms is None:
            await self._gone.wait()
        else:
            await asyncio.wait_for_ms(self._gone.wait(), timeout_ms)

    async def disconnect(self, timeout_ms=2000):
        await self.disconnected(timeout_ms, disconnect=True)

    async def exchange_mtu(self, mtu=None, timeout_ms=1000):
        if mtu is not None:
            ble.config(mtu=mtu)
        return self.mtu

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc_val, exc_traceback):
        await self.disconnect()

    def __repr__(self):
        return "DeviceConnection(%s)" % self._conn_handle

    def _lost(self):
        self._conn_handle = None
        self._gone.set()
        for timeout in list(self._timeouts):
            timeout._link_lost()


# --- the GATT server -------------------------------------------------------------------------------------

class Service:
    def __init__(self, uuid):
        self.uuid = uuid
        self.characteristics = []

    def _tuple(self):
        return (self.uuid, tuple(characteristic._tuple() for characteristic in self.characteristics))


_by_handle = {}             # value handle -> characteristic or descriptor


class BaseCharacteristic:
    _value_handle = None
    _initial = None
    _capture = False
    _write_flag = None
    _write_queue = None
    _max_len = None
    _append = False

    def _register(self, value_handle):
        self._value_handle = value_handle
        _by_handle[value_handle] = self
        if self._initial is not None:
            self.write(self._initial)
        if self._max_len is not None:
            ble.gatts_set_buffer(value_handle, self._max_len, self._append)

    def read(self):
        return ble.gatts_read(self._value_handle)

    def write(self, data, send_update=False):
        ble.gatts_write(self._value_handle, data, send_update)

    def _setup_write(self, capture):
        self._capture = capture
        self._write_flag = asyncio.ThreadSafeFlag()
        self._write_queue = []

    async def written(self, timeout_ms=None):
        if self._write_flag is None:
            raise ValueError("Not writable")
        while not self._write_queue:
            if timeout_ms is None:
                await self._write_flag.wait()
            else:
                await asyncio.wait_for_ms(self._write_flag.wait(), timeout_ms)
        return self._write_queue.pop(0)

    def on_read(self, connection):
        return 0

    def _remote_write(self, conn_handle):
        if self._write_queue is None:
            return
        connection = DeviceConnection._connected.get(conn_handle)
        entry = (connection, self.read()) if self._capture else connection
        self._write_queue.append(entry)
        if len(self._write_queue) > _WRITE_CAPTURE_QUEUE_LIMIT:
            self._write_queue.pop(0)        # the oldest write is dropped, as aioble does
        self._write_flag.set()

    def _remote_read(self, conn_handle):
        return self.on_read(DeviceConnection._connected.get(conn_handle))


class Characteristic(BaseCharacteristic):
    def __init__(self, service, uuid, read=False, write=False, write_no_response=False, notify=False,
                 indicate=False, initial=None, capture=False):
        service.characteristics.append(self)
        self.descriptors = []
        self.uuid = uuid
        self.flags = 0
        if read:
            self.flags |= bluetooth.FLAG_READ
        if write or write_no_response:
            self.flags |= (bluetooth.FLAG_WRITE if write else 0) | (
                bluetooth.FLAG_WRITE_NO_RESPONSE if write_no_response else 0)
            self._setup_write(capture)
        if notify:
            self.flags |= bluetooth.FLAG_NOTIFY
        if indicate:
            self.flags |= bluetooth.FLAG_INDICATE
            self._indicated = asyncio.ThreadSafeFlag()
        self._initial = initial

    def _tuple(self):
        return (self.uuid, self.flags, tuple(descriptor._tuple() for descriptor in self.descriptors))

    def notify(self, connection, data=None):
        if not self.flags & bluetooth.FLAG_NOTIFY:
            raise ValueError("Not supported")
        ble.gatts_notify(connection._conn_handle, self._value_handle, data)

    async def indicate(self, connection, data=None, timeout_ms=1000):
        if not self.flags & bluetooth.FLAG_INDICATE:
            raise ValueError("Not supported")
        ble.gatts_indicate(connection._conn_handle, self._value_handle, data)
        await asyncio.wait_for_ms(self._indicated.wait(), timeout_ms)


class BufferedCharacteristic(Characteristic):
    def __init__(self, *args, max_len=20, append=False, **kwargs):
        Characteristic.__init__(self, *args, **kwargs)
        self._max_len = max_len
        self._append = append


class Descriptor(BaseCharacteristic):
    def __init__(self, characteristic, uuid, read=False, write=False, initial=None):
        characteristic.descriptors.append(self)
        self.uuid = uuid
        self.flags = (bluetooth.FLAG_READ if read else 0) | (bluetooth.FLAG_WRITE if write else 0)
        if write:
            self._setup_write(False)
        self._initial = initial

    def _tuple(self):
        return (self.uuid, self.flags)


def register_services(*services):
    ensure_active()
    _by_handle.clear()
    handles = ble.gatts_register_services(tuple(service._tuple() for service in services))
    for service, service_handles in zip(services, handles):
        attributes = []
        for characteristic in service.characteristics:
            attributes.append(characteristic)
            attributes.extend(characteristic.descriptors)
        for attribute, handle in zip(attributes, service_handles):
            attribute._register(handle)


# --- advertising -------------------------------------------------------------------------------------------

_incoming = []              # connections that came while advertising
_connected_flag = asyncio.ThreadSafeFlag()


def _field(kind, data):
    return bytes((len(data) + 1, kind)) + data


def _payload(limited_disc, br_edr, name, services, appearance, manufacturer):
    fields = [_field(_ADV_FLAGS, bytes(((0x01 if limited_disc else 0x02) | (0x00 if br_edr else 0x04),)))]
    if name:
        fields.append(_field(_ADV_NAME, name.encode() if isinstance(name, str) else bytes(name)))
    for uuid in services or ():
        size = len(uuid._le)
        kind = _ADV_COMPLETE_16 if size == 2 else _ADV_COMPLETE_32 if size == 4 else _ADV_COMPLETE_128
        fields.append(_field(kind, uuid._le))
    if appearance:
        fields.append(_field(_ADV_APPEARANCE, struct.pack("<H", appearance)))
    if manufacturer:
        fields.append(_field(_ADV_MANUFACTURER, struct.pack("<H", manufacturer[0]) + bytes(manufacturer[1])))
    adv, resp = b"", b""
    for field in fields:
        if len(adv) + len(field) <= _ADV_MAX_BYTES:
            adv += field
        elif len(resp) + len(field) <= _ADV_MAX_BYTES:
            resp += field
        else:
            raise ValueError("advertising payload too long")
    return adv, resp


async def advertise(interval_us, adv_data=None, resp_data=None, connectable=True, limited_disc=False, br_edr=False,
                    name=None, services=None, appearance=0, manufacturer=None, timeout_ms=None):
    """Advertise until a central connects (-> its DeviceConnection), timeout_ms passes
    (asyncio.TimeoutError) or the task is cancelled (None: advertising stopped)."""
    ensure_active()
    if adv_data is None and resp_data is None:
        adv_data, resp_data = _payload(limited_disc, br_edr, name, services, appearance, manufacturer)
    del _incoming[:]
    ble.gap_advertise(interval_us, adv_data, resp_data=resp_data, connectable=connectable)
    try:
        while not _incoming:
            if timeout_ms is None:
                await _connected_flag.wait()
            else:
                await asyncio.wait_for_ms(_connected_flag.wait(), timeout_ms)
    except asyncio.CancelledError:
        ble.gap_advertise(None)
        return None
    except asyncio.TimeoutError:
        ble.gap_advertise(None)
        raise
    return _incoming.pop(0)


# --- the radio's events ----------------------------------------------------------------------------------

def _irq(event, data):
    if event == _IRQ_CENTRAL_CONNECT:
        conn_handle, addr_type, addr = data
        connection = DeviceConnection(Device(addr_type, bytes(addr)))
        connection._conn_handle = conn_handle
        DeviceConnection._connected[conn_handle] = connection
        _incoming.append(connection)
        _connected_flag.set()
    elif event == _IRQ_CENTRAL_DISCONNECT:
        connection = DeviceConnection._connected.pop(data[0], None)
        if connection is not None:
            connection._lost()
    elif event == _IRQ_GATTS_WRITE:
        attribute = _by_handle.get(data[1])
        if attribute is not None:
            attribute._remote_write(data[0])
    elif event == _IRQ_GATTS_READ_REQUEST:
        attribute = _by_handle.get(data[1])
        return attribute._remote_read(data[0]) if attribute is not None else 0
    elif event == _IRQ_MTU_EXCHANGED:
        connection = DeviceConnection._connected.get(data[0])
        if connection is not None:
            connection.mtu = data[1]
    elif event == _IRQ_GATTS_INDICATE_DONE:
        attribute = _by_handle.get(data[1])
        if attribute is not None and hasattr(attribute, "_indicated"):
            attribute._indicated.set()
    return None
