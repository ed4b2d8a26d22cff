"""BlueZ on the simulated air: the org.bluez D-Bus API, served on a private bus, with each adapter's
radio a bumble host on the simulated Bluetooth air.

Why: on Linux, bleak drives Bluetooth through BlueZ's D-Bus API on the system bus, and BlueZ's
bluetoothd needs a kernel adapter (AF_BLUETOOTH, /dev/vhci) a test machine does not have. This
stand-in keeps BlueZ's interface - object paths, properties and their D-Bus types, signals, error names
and texts, as doc/org.bluez.*.rst documents them and src/adapter.c, src/device.c and src/gatt-client.c
shape them - and puts a real radio behind it: every advertisement heard, connection made, ATT request
and notification goes over the simulated air (`simulators/ble_air.py`) to the real dispenser process.
So the phone's bleak code (`simulators/phone_bleak.py`) runs unchanged here in tests and against BlueZ
on a Raspberry Pi.

    python -m simulators.bluez_air --ble tcp-client:127.0.0.1:41733 [--ble tcp-client:127.0.0.1:P2]
    {"adapters": [{"address": "F0:00:00:00:00:01", "name": "hci0", "path": "/org/bluez/hci0", ...}],
     "bus": "unix:path=/tmp/bluez-air-.../system_bus_socket,guid=..."}
    DBUS_SYSTEM_BUS_ADDRESS=unix:path=/tmp/bluez-air-.../system_bus_socket ykt phone water --ble bleak ...

One adapter (hci0, hci1, ...) per --ble transport, in order. The bus is a `dbus-daemon` of its own
(Debian's), run with a configuration written to a temporary directory: private to this machine, open
to every local user, org.bluez ownable, gone with the process. `BluezAir` is the same in-process (its
transports may then be bumble Controller objects).

What is served - what bleak 3.x calls, and the rest of those interfaces' shape:
- "/": org.freedesktop.DBus.ObjectManager. GetManagedObjects, and InterfacesAdded / InterfacesRemoved
  sent from "/" with all of an object's interfaces in one signal, as BlueZ's gdbus sends them; every
  object also lists org.freedesktop.DBus.Introspectable and .Properties. Properties Get / GetAll / Set
  answer with gdbus' errors; PropertiesChanged carries an optional property that went away (RSSI at
  the end of a discovery) in its invalidated list.
- /org/bluez/hciN: org.bluez.Adapter1. StartDiscovery, StopDiscovery, SetDiscoveryFilter (UUIDs, RSSI,
  Pathloss, Transport, DuplicateData, Discoverable, Pattern, AutoConnect, type-checked as BlueZ does),
  GetDiscoveryFilters, RemoveDevice. One discovery session per D-Bus client, ended when the client
  leaves the bus; the clients' filters combine as a logical OR; RSSI is reported on every
  advertisement while a filter is set, else on changes of 8 dBm or more; at the end of a discovery
  the RSSI is invalidated. Properties: Address (the controller's public address), Powered,
  Discovering, Roles, ...
- .../dev_XX_XX_XX_XX_XX_XX: org.bluez.Device1. Connect (answered once the link is up; the GATT
  database is then discovered after an MTU exchange asking for 517, and ServicesResolved follows),
  Disconnect (also cancels a Connect under way, which then fails with BlueZ's
  "br-connection-canceled"), the Disconnected signal with BlueZ's reasons. Address, AddressType,
  Name, Alias, RSSI, ManufacturerData, ServiceData, UUIDs, TxPower, AdvertisingFlags,
  AdvertisingData, Connected, ServicesResolved, Trusted, ... A device never connected and not heard
  for TemporaryTimeout (30 s) is removed; one connected once is kept until RemoveDevice.
- .../serviceXXXX, .../charYYYY, .../descZZZZ (start, declaration and descriptor handles): GattService1;
  GattCharacteristic1 with ReadValue (long reads, an offset), WriteValue ("request", with Write Long
  above the MTU, and "command"), StartNotify / StopNotify per D-Bus client (re-registered after a
  reconnection, as BlueZ does), Value updated by every read and notification with a
  PropertiesChanged each time, Notifying, Flags, MTU; GattDescriptor1 with ReadValue and WriteValue
  (the CCCD refused: notifications go through StartNotify). Concurrent reads at one offset share one
  ATT read; a second write while one is under way is InProgress (bleak retries those). The GATT
  database is kept across connections (BlueZ's default Cache = always) and rediscovered at each.
- errors as BlueZ shapes them: a peer's ATT error is org.bluez.Error.Failed
  "Operation failed with ATT error: 0x80" for application codes, NotPermitted "Read not permitted" /
  "Write not permitted", InvalidArguments "Invalid offset" / "Invalid Length", NotAuthorized,
  NotSupported for the standard ones; a request cut by a lost link, or unanswered for the ATT timeout
  (30 s, after which the link is dropped), fails with ATT error 0x0e; a GATT call on a device not
  connected is Failed "Not connected"; a call on an object that is gone is UnknownObject.

Not served: pairing (Pair, CancelPairing, agents), AcquireWrite / AcquireNotify (so the WriteAcquired
and NotifyAcquired properties are left out, and clients fall back to WriteValue / StartNotify, as
bleak does by default), reliable writes (NotSupported), included services, advertisement monitors,
advertising, BR/EDR, ConnectDevice. Only Trusted and Alias may be Set. Disconnect drops the link at
once, where BlueZ first waits up to 2 s for connected profiles to let go (there are none here).
"""
import argparse
import asyncio
import contextlib
import contextvars
import json
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
from typing import Annotated
from xml.sax.saxutils import escape

from bumble import att, core, hci
from bumble.device import Connection, Device
from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBytes, DBusDict, DBusObjectPath, DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

from firmware.apps.dispenser_ble import BleError, close_hci, open_hci

logger = logging.getLogger(__name__)

BLUEZ = "org.bluez"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
STANDARD_INTERFACES = (INTROSPECTABLE, PROPERTIES)
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
GATT_SERVICE = "org.bluez.GattService1"
GATT_CHARACTERISTIC = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR = "org.bluez.GattDescriptor1"

TEMPORARY_TIMEOUT_MS = 30_000     # main.conf TemporaryTimeout: an unconnected device not heard for this long goes
LE_CONNECT_TIMEOUT_MS = 20_000    # the kernel's LE connection attempt
ATT_TIMEOUT_MS = 30_000           # the ATT transaction timeout (Core spec, BlueZ): then the link is dropped
GATT_MTU = 517                    # main.conf [GATT] ExchangeMTU: what BlueZ asks for
RADIO_TIMEOUT_MS = 5_000          # one HCI exchange: scanning on or off, a disconnection
POWER_ON_TIMEOUT_MS = 10_000
BUS_START_TIMEOUT_MS = 5_000
BUS_STOP_TIMEOUT_MS = 2_000
RSSI_THRESHOLD = 8                # dBm: the RSSI change BlueZ reports while no discovery filter is set
RSSI_NOT_AVAILABLE = 127
PATHLOSS_MAX = 137
MAX_ADAPTERS = 16
MAX_DEVICES = 256                 # per adapter: a crowded air cannot grow the bus without bound
MAX_CLIENTS = 64                  # discovery sessions and filters per adapter, notify sessions per characteristic
MAX_ATTRIBUTES = 512              # services + characteristics + descriptors of one device
MAX_VALUE_BYTES = 512             # an attribute value's largest (Core spec Vol 3 Part F 3.2.9)
ATT_UNLIKELY = 0x0E
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
EXTENDED_PROPERTIES_UUID = "00002900-0000-1000-8000-00805f9b34fb"
LOCAL_UUIDS = ["00001800-0000-1000-8000-00805f9b34fb", "00001801-0000-1000-8000-00805f9b34fb"]
DISCOVERY_FILTERS = ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern",
                     "AutoConnect"]

# Characteristic properties as BlueZ lists them in Flags, in its order (src/gatt-client.c chrc_props)
_FLAGS = ((0x01, "broadcast"), (0x02, "read"), (0x04, "write-without-response"), (0x08, "write"),
          (0x10, "notify"), (0x20, "indicate"), (0x40, "authenticated-signed-writes"),
          (0x80, "extended-properties"))
_EXTENDED_FLAGS = ((0x0001, "reliable-write"), (0x0002, "writable-auxiliaries"))
_NOTIFY, _INDICATE, _WRITE, _WRITE_WITHOUT_RESPONSE = 0x10, 0x20, 0x08, 0x04

# AD types BlueZ parses into properties of their own (src/eir.c); the rest go to AdvertisingData
_AD_FLAGS, _AD_NAME_SHORT, _AD_NAME_COMPLETE, _AD_TX_POWER, _AD_MANUFACTURER = 0x01, 0x08, 0x09, 0x0A, 0xFF
_AD_UUIDS = {0x02: 2, 0x03: 2, 0x04: 4, 0x05: 4, 0x06: 16, 0x07: 16}
_AD_SERVICE_DATA = {0x16: 2, 0x20: 4, 0x21: 16}
_AD_PARSED = {_AD_FLAGS, _AD_NAME_SHORT, _AD_NAME_COMPLETE, _AD_TX_POWER, _AD_MANUFACTURER, 0x0D, 0x0E, 0x0F, 0x10,
              0x19, 0x30} | set(_AD_UUIDS) | set(_AD_SERVICE_DATA)

# HCI disconnection reasons -> the kernel's MGMT reason -> Device1.Disconnected (src/device.c)
_DISCONNECTED = {
    hci.HCI_CONNECTION_TIMEOUT_ERROR: ("org.bluez.Reason.Timeout", "Connection timeout"),
    hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR: ("org.bluez.Reason.Remote", "Connection terminated by remote user"),
    hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_LOW_RESOURCES_ERROR:
        ("org.bluez.Reason.Remote", "Connection terminated by remote user"),
    hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR:
        ("org.bluez.Reason.Remote", "Connection terminated by remote user"),
    hci.HCI_CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR:
        ("org.bluez.Reason.Local", "Connection terminated by local host"),
}

# The D-Bus client (its unique name) whose call is being served: discovery and notify sessions are
# per client, as in BlueZ. dbus-fast serves each call in a task created while this is set.
_SENDER = contextvars.ContextVar("bluez_air_sender", default=None)


class BluezAirError(Exception):
    """The stand-in could not start; the text is Chinese first, then English."""


# --- BlueZ's errors (src/error.c, src/gatt-client.c) ------------------------------------------------

def _error(name, text):
    return DBusError("org.bluez.Error." + name, text)


def failed(text):
    return _error("Failed", text)


def in_progress(text="In Progress"):
    return _error("InProgress", text)


def invalid_args(text="Invalid arguments in method call"):
    return _error("InvalidArguments", text)


def not_supported():
    return _error("NotSupported", "Operation is not supported")


def gatt_error(code):
    """The D-Bus error BlueZ answers a client with when the peer answered an ATT request with `code`
    (create_gatt_dbus_error): bleak reads application codes back from the text."""
    if code == 0x02:
        return _error("NotPermitted", "Read not permitted")
    if code == 0x03:
        return _error("NotPermitted", "Write not permitted")
    if code in (0x05, 0x0C, 0x0F):
        return _error("NotPermitted", "Not paired")
    if code == 0x07:
        return invalid_args("Invalid offset")
    if code == 0x0D:
        return invalid_args("Invalid Length")
    if code == 0x08:
        return _error("NotAuthorized", "Operation Not Authorized")
    if code == 0x06:
        return not_supported()
    if code == 0:
        return failed("Operation failed")
    return failed("Operation failed with ATT error: 0x%02x" % code)


def _no_such_method(msg, name="org.freedesktop.DBus.Error.UnknownMethod"):
    """libdbus' answer to a call nothing handles."""
    return Message.new_error(msg, name, 'Method "%s" with signature "%s" on interface "%s" doesn\'t exist\n'
                             % (msg.member, msg.signature, msg.interface))


def _uuid128(uuid):
    """BlueZ's spelling of a UUID: 128 bits, lower case."""
    raw = bytes(reversed(core.UUID(uuid).to_bytes(force_128=True) if isinstance(uuid, str)
                         else uuid.to_bytes(force_128=True)))
    text = raw.hex()
    return "%s-%s-%s-%s-%s" % (text[:8], text[8:12], text[12:16], text[16:20], text[20:])


def _spawn(coroutine, tasks):
    """Run a short task, keeping a reference (asyncio holds tasks weakly) and logging its failure."""
    task = asyncio.ensure_future(coroutine)
    tasks.add(task)

    def done(finished):
        tasks.discard(finished)
        if not finished.cancelled() and finished.exception() is not None:
            logger.warning("background task failed: %r", finished.exception())
    task.add_done_callback(done)
    return task


# --- the object tree and the bus ----------------------------------------------------------------------

class _Interface(ServiceInterface):
    """One org.bluez interface of one object. Its methods are dbus-fast's; its properties are
    `properties()` (name -> Variant, only those present now, as BlueZ's `exists` functions decide),
    so an optional property can come and go, which dbus-fast's property decorators cannot express."""

    ALL_PROPERTIES = ()
    WRITABLE = {}            # name -> D-Bus signature of the properties a client may Set

    def __init__(self, interface_name, tree, path):
        super().__init__(interface_name)
        self.tree = tree
        self.path = path

    def properties(self):
        raise NotImplementedError

    def set_property(self, name, value):
        raise AssertionError("no writable properties")

    def changed(self, *names):
        self.tree.changed(self, names)


class _Tree:
    """The exported objects, and the ObjectManager / Properties side of them as BlueZ's gdbus serves it."""

    def __init__(self):
        self.bus = None
        self.objects = {}          # path -> {interface name: _Interface}

    def add(self, path, interfaces):
        exported = self.objects.setdefault(path, {})
        for interface in interfaces:
            self.bus.export(path, interface)
            exported[interface.name] = interface
        self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}",
                     [path, {interface.name: interface.properties() for interface in interfaces}
                      | {name: {} for name in STANDARD_INTERFACES}])

    def remove(self, path):
        exported = self.objects.pop(path, None)
        if exported is None:
            return
        self.bus.unexport(path)
        self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(exported) + list(STANDARD_INTERFACES)])

    def changed(self, interface, names):
        if self.objects.get(interface.path, {}).get(interface.name) is not interface or not names:
            return
        present = interface.properties()
        names = list(dict.fromkeys(names))
        self._signal(interface.path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                     [interface.name, {name: present[name] for name in names if name in present},
                      [name for name in names if name not in present]])

    def emit(self, interface, member, signature, body):
        """A signal of an interface of ours (Device1.Disconnected), from its object."""
        self._signal(interface.path, interface.name, member, signature, body)

    def managed_objects(self):
        return {path: {name: interface.properties() for name, interface in exported.items()}
                | {name: {} for name in STANDARD_INTERFACES}
                for path, exported in sorted(self.objects.items())}

    def _signal(self, path, interface, member, signature, body):
        bus = self.bus
        if bus is None or not bus.connected:
            return
        bus.send(Message.new_signal(path, interface, member, signature, body))

    def route(self, msg):
        """Answer a call nothing here serves as libdbus does (an object that is gone: UnknownObject), so
        dbus-fast never invents answers of its own. Returns the error message, or None to go on."""
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        if msg.interface is not None and msg.interface.startswith("org.freedesktop.DBus."):
            return None     # Introspectable, Peer, Properties, ObjectManager: dbus-fast and _BluezBus answer
        exported = self.objects.get(msg.path)
        if exported is None:
            return _no_such_method(msg, "org.freedesktop.DBus.Error.UnknownObject")
        candidates = [exported[msg.interface]] if msg.interface in exported else (
            [] if msg.interface is not None else list(exported.values()))
        for interface in candidates:
            for known in ServiceInterface._get_methods(interface):
                if known.name == msg.member and known.in_signature == msg.signature and not known.disabled:
                    return None
        return _no_such_method(msg)

    def properties_call(self, msg):
        """org.freedesktop.DBus.Properties as gdbus answers it (gdbus/object.c)."""
        exported = self.objects.get(msg.path)
        if exported is None:
            return _no_such_method(msg, "org.freedesktop.DBus.Error.UnknownObject")
        if {"Get": "ss", "GetAll": "s", "Set": "ssv"}.get(msg.member) != msg.signature:
            return _no_such_method(msg)
        name = msg.body[0]
        interface = exported.get(name)
        if interface is None:
            if name in STANDARD_INTERFACES and msg.member == "GetAll":
                return Message.new_method_return(msg, "a{sv}", [{}])
            return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "No such interface '%s'" % name)
        present = interface.properties()
        if msg.member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [present])
        prop = msg.body[1]
        if msg.member == "Get":
            if prop not in present:
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", "No such property '%s'" % prop)
            return Message.new_method_return(msg, "v", [present[prop]])
        if prop not in interface.ALL_PROPERTIES:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownProperty", "No such property '%s'" % prop)
        if prop not in interface.WRITABLE:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.PropertyReadOnly",
                                     "Property '%s' is not writable" % prop)
        if prop not in present:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownProperty", "No such property '%s'" % prop)
        value = msg.body[2]
        if value.signature != interface.WRITABLE[prop]:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidSignature",
                                     "Invalid signature for '%s'" % prop)
        try:
            interface.set_property(prop, value.value)
        except DBusError as error:
            return Message.new_error(msg, error.type, error.text)
        return Message.new_method_return(msg)


class _BluezBus(MessageBus):
    """dbus-fast's bus with the standard interfaces answered from the tree: dbus-fast would send
    InterfacesAdded from each object's own path, one interface at a time, and build properties from
    its decorators, where BlueZ sends them from "/" per object and has optional properties. Every
    method call also runs with its sender in _SENDER."""

    def __init__(self, tree, **options):
        super().__init__(**options)
        self._tree = tree

    def _make_method_handler(self, interface, method):
        handler = super()._make_method_handler(interface, method)

        def with_sender(msg, send_reply):
            token = _SENDER.set(msg.sender)
            try:
                handler(msg, send_reply)
            finally:
                _SENDER.reset(token)
        return with_sender

    def _emit_interface_added(self, path, interface):
        pass                  # the tree sends one InterfacesAdded per object, from "/"

    def _emit_interface_removed(self, path, removed_interfaces):
        pass

    def _default_get_managed_objects_handler(self, msg, send_reply):
        if msg.path != "/" or msg.signature != "":
            send_reply(_no_such_method(msg))
            return
        send_reply(Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._tree.managed_objects()]))

    def _default_properties_handler(self, msg, send_reply):
        send_reply(self._tree.properties_call(msg))


def _die_with_parent():
    """In the child, before exec: SIGTERM when the process that started it dies (Linux's
    PR_SET_PDEATHSIG), so a stand-in killed with SIGKILL leaves no bus behind."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _PrivateBus:
    """A dbus-daemon of our own: a configuration in a temporary directory, a socket there, every local
    user allowed to connect, own names and call anything (it is a test bus, not the system's)."""

    CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

    def __init__(self):
        self.directory = None
        self.process = None
        self.address = None
        self._log = None

    async def start(self):
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise BluezAirError("找不到 dbus-daemon，请安装 Debian 的 dbus-daemon 软件包 / dbus-daemon not found: "
                                "install Debian's dbus-daemon package")
        self.directory = tempfile.mkdtemp(prefix="bluez-air-")
        config = os.path.join(self.directory, "bus.conf")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(self.CONFIG % escape(os.path.join(self.directory, "system_bus_socket")))
        self._log = open(os.path.join(self.directory, "dbus-daemon.log"), "wb")
        # a session of its own, so a signal to our process group is ours to handle (the bus goes after
        # the links), and told to go when we die, so a SIGKILL leaves no bus behind either
        self.process = await asyncio.create_subprocess_exec(
            daemon, "--config-file=" + config, "--nofork", "--nopidfile", "--print-address=1",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            start_new_session=True, preexec_fn=_die_with_parent)
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), BUS_START_TIMEOUT_MS / 1000)
        except asyncio.TimeoutError:
            line = b""
        self.address = line.decode(errors="replace").strip()
        if not self.address.startswith("unix:"):
            log = self._read_log()
            await self.stop()
            raise BluezAirError("dbus-daemon 未能启动 / dbus-daemon did not start: %s" % log)

    def _read_log(self):
        try:
            with open(os.path.join(self.directory, "dbus-daemon.log"), "rb") as handle:
                return handle.read()[-2000:].decode(errors="replace").strip()
        except OSError:
            return ""

    async def stop(self):
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), BUS_STOP_TIMEOUT_MS / 1000)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.wait_for(process.wait(), BUS_STOP_TIMEOUT_MS / 1000)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


# --- advertisements -------------------------------------------------------------------------------

class _Advert:
    """What BlueZ takes from one advertising report's AD structures (src/eir.c eir_parse)."""

    def __init__(self, structures):
        self.flags = None
        self.name = None
        self.name_complete = False
        self.tx_power = None
        self.uuids = set()
        self.manufacturer = {}
        self.service_data = {}
        self.other = {}
        for ad_type, data in structures:
            ad_type, data = int(ad_type), bytes(data)
            try:
                self._take(ad_type, data)
            except (ValueError, struct.error, IndexError):
                logger.debug("malformed AD structure 0x%02X: %s", ad_type, data.hex())

    def _take(self, ad_type, data):
        if ad_type == _AD_FLAGS and data:
            self.flags = data[0]
        elif ad_type in (_AD_NAME_SHORT, _AD_NAME_COMPLETE, 0x30):
            self.name = data.rstrip(b"\0").decode("utf-8", errors="replace")
            self.name_complete = ad_type != _AD_NAME_SHORT
        elif ad_type == _AD_TX_POWER and data:
            self.tx_power = struct.unpack("b", data[:1])[0]
        elif ad_type in _AD_UUIDS:
            size = _AD_UUIDS[ad_type]
            for start in range(0, len(data) - size + 1, size):
                self.uuids.add(_uuid128(core.UUID.from_bytes(data[start:start + size])))
        elif ad_type in _AD_SERVICE_DATA:
            size = _AD_SERVICE_DATA[ad_type]
            if len(data) >= size:
                uuid = _uuid128(core.UUID.from_bytes(data[:size]))
                self.service_data[uuid] = data[size:]
                self.uuids.add(uuid)
        elif ad_type == _AD_MANUFACTURER and len(data) >= 2:
            self.manufacturer[struct.unpack("<H", data[:2])[0]] = data[2:]
        elif ad_type not in _AD_PARSED:
            self.other[ad_type] = data


class _Filter:
    """One client's SetDiscoveryFilter, parsed and type-checked as src/adapter.c does."""

    def __init__(self, entries):
        self.uuids = set()
        self.rssi = None
        self.pathloss = None
        self.transport = "auto"
        self.duplicate = False
        self.discoverable = False
        self.pattern = None
        self.auto_connect = False
        for key, value in entries.items():
            if not isinstance(value, Variant) or not self._take(key, value.signature, value.value):
                raise invalid_args()
        if self.rssi is not None and self.pathloss is not None:
            raise invalid_args()

    def _take(self, key, signature, value):
        if key == "UUIDs" and signature == "as":
            try:
                self.uuids = {_uuid128(uuid) for uuid in value}
            except (ValueError, TypeError, core.InvalidArgumentError):
                return False
            return True
        if key == "RSSI" and signature == "n":
            self.rssi = value
            return -127 <= value <= 20
        if key == "Pathloss" and signature == "q":
            self.pathloss = value
            return value <= PATHLOSS_MAX
        if key == "Transport" and signature == "s":
            self.transport = value
            return value in ("auto", "le", "bredr")
        if key in ("DuplicateData", "Discoverable", "AutoConnect") and signature == "b":
            setattr(self, {"DuplicateData": "duplicate", "Discoverable": "discoverable",
                           "AutoConnect": "auto_connect"}[key], value)
            return True
        if key == "Pattern" and signature == "s":
            self.pattern = value
            return True
        return False

    def matches(self, address, name, uuids, rssi, tx_power):
        if self.transport == "bredr":
            return False
        if self.uuids and not self.uuids & uuids:
            return False
        if self.rssi is not None and (rssi == 0 or rssi < self.rssi):
            return False
        if self.pathloss is not None and (tx_power is None or tx_power - rssi > self.pathloss):
            return False
        if self.pattern and not (address.startswith(self.pattern.upper()) or (name or "").startswith(self.pattern)):
            return False
        return True


# --- GATT objects ---------------------------------------------------------------------------------

def _parse_options(options, with_type=False):
    """(offset, type) from ReadValue / WriteValue options, checked as BlueZ's parse_options()."""
    offset, kind = 0, None
    for key, value in options.items():
        if key.lower() == "offset":
            if not isinstance(value, Variant) or value.signature != "q":
                raise invalid_args()
            offset = value.value
        elif with_type and key.lower() == "type":
            if not isinstance(value, Variant) or value.signature != "s":
                raise invalid_args()
            kind = value.value
    return offset, kind


class GattService(_Interface):
    ALL_PROPERTIES = ("Handle", "UUID", "Device", "Primary", "Includes")

    def __init__(self, tree, device, handle, end_handle, uuid):
        super().__init__(GATT_SERVICE, tree, "%s/service%04x" % (device.path, handle))
        self.device = device
        self.handle = handle
        self.end_handle = end_handle
        self.uuid = uuid
        self.characteristics = []

    def properties(self):
        return {"Handle": Variant("q", self.handle), "UUID": Variant("s", self.uuid),
                "Device": Variant("o", self.device.path), "Primary": Variant("b", True),
                "Includes": Variant("ao", [])}

    def layout(self):
        return (self.handle, self.end_handle, self.uuid, tuple(c.layout() for c in self.characteristics))


class _Attribute(_Interface):
    """What characteristics and descriptors share: a cached Value, one read at a time per offset (later
    readers at that offset share it), one write at a time."""

    def __init__(self, interface_name, tree, path, device, handle, uuid):
        super().__init__(interface_name, tree, path)
        self.device = device
        self.handle = handle             # the handle read and written (a characteristic's value handle)
        self.uuid = uuid
        self.value = b""
        self._read = None                # (offset, task)
        self._writing = False

    async def _read_value(self, options):
        offset, _ = _parse_options(options)
        self.device.require_connected()
        if self._read is not None:
            if self._read[0] != offset:
                raise in_progress()
            return await asyncio.shield(self._read[1])
        task = asyncio.ensure_future(self._do_read(offset))
        self._read = (offset, task)
        try:
            return await asyncio.shield(task)
        finally:
            if self._read is not None and self._read[1] is task:
                self._read = None

    async def _do_read(self, offset):
        value = await self.device.att(lambda client: _read_long(client, self.handle, offset))
        self.value = (self.value[:offset] if offset else b"") + bytes(value)
        self.changed("Value")
        return self.value[offset:]

    async def _write_value(self, value, offset, with_response):
        self.device.require_connected()
        if self._writing:
            raise in_progress()
        self._writing = True
        try:
            await self.device.att(lambda client: _write(client, self.handle, bytes(value), offset, with_response))
        finally:
            self._writing = False


async def _read_long(client, handle, offset):
    """A Read Request from offset 0 (or a Read Blob from `offset`), then Read Blobs while the answers
    come full: what bt_gatt_client_read_long_value() does. At most MAX_VALUE_BYTES, an attribute's
    largest value, so a peer cannot make it read forever."""
    if offset == 0:
        response = await client.send_request(att.ATT_Read_Request(attribute_handle=handle))
        if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
            raise att.ATT_Error(error_code=response.error_code, message=response)
        value = bytes(response.attribute_value)
        if len(value) < client.mtu - 1:
            return value
    else:
        value = b""
    while offset + len(value) < MAX_VALUE_BYTES:
        response = await client.send_request(att.ATT_Read_Blob_Request(attribute_handle=handle,
                                                                       value_offset=offset + len(value)))
        if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
            if value and response.error_code in (att.ATT_ATTRIBUTE_NOT_LONG_ERROR, att.ATT_INVALID_OFFSET_ERROR):
                return value
            raise att.ATT_Error(error_code=response.error_code, message=response)
        part = bytes(response.part_attribute_value)
        value += part
        if len(part) < client.mtu - 1:
            break
    return value[:MAX_VALUE_BYTES - offset]


async def _write(client, handle, value, offset, with_response):
    """Write Command, Write Request, or Write Long (prepare + execute) from `offset` when the value does
    not fit one request or starts further in: BlueZ's choice in characteristic_write_value()."""
    if not with_response:
        await client.write_value(handle, value, with_response=False)
        return
    if offset == 0 and len(value) <= client.mtu - 3:
        await client.write_value(handle, value, with_response=True)
        return
    part_size = client.mtu - 5
    for start in range(0, max(len(value), 1), part_size):
        response = await client.send_request(att.ATT_Prepare_Write_Request(
            attribute_handle=handle, value_offset=offset + start, part_attribute_value=value[start:start + part_size]))
        if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
            await client.send_request(att.ATT_Execute_Write_Request(flags=0x00))
            raise att.ATT_Error(error_code=response.error_code, message=response)
    response = await client.send_request(att.ATT_Execute_Write_Request(flags=0x01))
    if response.op_code == att.Opcode.ATT_ERROR_RESPONSE:
        raise att.ATT_Error(error_code=response.error_code, message=response)


class GattCharacteristic(_Attribute):
    ALL_PROPERTIES = ("Handle", "UUID", "Service", "Value", "Notifying", "Flags", "WriteAcquired", "NotifyAcquired",
                      "MTU")

    def __init__(self, tree, service, declaration_handle, value_handle, uuid, props, extended_props=0):
        super().__init__(GATT_CHARACTERISTIC, tree, "%s/char%04x" % (service.path, declaration_handle),
                         service.device, value_handle, uuid)
        self.service = service
        self.declaration_handle = declaration_handle
        self.props = props
        self.extended_props = extended_props
        self.descriptors = []
        self.notifying = False
        self.sessions = {}               # D-Bus client -> registered with the peer (bool)
        self.subscribed = False          # the CCCD is on over the current connection
        self.proxy = None                # bumble's CharacteristicProxy on the current connection

    def layout(self):
        return (self.declaration_handle, self.handle, self.uuid, self.props, self.extended_props,
                tuple(d.layout() for d in self.descriptors))

    def properties(self):
        present = {"Handle": Variant("q", self.declaration_handle), "UUID": Variant("s", self.uuid),
                   "Service": Variant("o", self.service.path)}
        if self.value:
            present["Value"] = Variant("ay", self.value)
        if self.props & (_NOTIFY | _INDICATE):
            present["Notifying"] = Variant("b", self.notifying)
        present["Flags"] = Variant("as", [name for bit, name in _FLAGS if self.props & bit]
                                   + [name for bit, name in _EXTENDED_FLAGS if self.extended_props & bit])
        if self.device.mtu is not None:
            present["MTU"] = Variant("q", self.device.mtu)
        return present

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        return await self._read_value(options)

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict):
        offset, kind = _parse_options(options, with_type=True)
        self.device.require_connected()
        if self._writing:
            raise in_progress()
        if kind is not None and kind.lower() == "reliable" or kind is None and self.extended_props & 0x0001:
            raise not_supported()
        if (kind is None and self.props & _WRITE) or (kind is not None and kind.lower() == "request"):
            await self._write_value(value, offset, True)
            return
        if (kind is not None and kind.lower() != "command") or offset or (
                kind is None and not self.props & _WRITE_WITHOUT_RESPONSE):
            raise not_supported()
        await self._write_value(value, 0, False)

    @dbus_method()
    async def StartNotify(self):
        if self.device.disconnecting:
            raise _error("NotConnected", "Not Connected")
        if not self.props & (_NOTIFY | _INDICATE):
            raise not_supported()
        sender = _SENDER.get()
        if sender in self.sessions:
            if self.sessions[sender]:
                return
            raise in_progress()
        if len(self.sessions) >= MAX_CLIENTS:
            raise failed("Failed allocate notify session")
        self.sessions[sender] = False
        if self.device.connection is None:
            return                       # registered with the peer when the device connects
        try:
            await self.register()
        except DBusError:
            self.sessions.pop(sender, None)
            raise

    @dbus_method()
    def StopNotify(self):
        if self.sessions.pop(_SENDER.get(), None) is None:
            raise failed("No notify session started")
        self.session_ended()

    async def register(self):
        """Turn the CCCD on (once per connection) and mark every session registered. Before the
        database is discovered the sessions wait: the discovery registers them."""
        if self.proxy is None:
            return
        if not self.subscribed:
            proxy = self.proxy
            await self.device.att(lambda client: client.subscribe(proxy, self._on_value, prefer_notify=True))
            self.subscribed = True
        for sender in self.sessions:
            self.sessions[sender] = True
        if self.sessions and not self.notifying:
            self.notifying = True
            self.changed("Notifying")

    def session_ended(self):
        if not any(self.sessions.values()) and self.notifying:
            self.notifying = False
            self.changed("Notifying")
        if not self.sessions and self.subscribed and self.device.connection is not None:
            self.subscribed = False
            proxy = self.proxy
            _spawn(self.device.att(lambda client: client.unsubscribe(proxy, self._on_value)),
                   self.device.adapter.tasks)

    def _on_value(self, value):
        # a notification or indication: BlueZ updates Value and signals it even when it did not change
        self.value = bytes(value)
        self.changed("Value")

    def link_lost(self):
        self.subscribed = False
        self.proxy = None
        self._read = None
        for sender in self.sessions:
            self.sessions[sender] = False


class GattDescriptor(_Attribute):
    ALL_PROPERTIES = ("Handle", "UUID", "Characteristic", "Value")

    def __init__(self, tree, characteristic, handle, uuid):
        super().__init__(GATT_DESCRIPTOR, tree, "%s/desc%04x" % (characteristic.path, handle),
                         characteristic.device, handle, uuid)
        self.characteristic = characteristic

    def layout(self):
        return (self.handle, self.uuid)

    def properties(self):
        present = {"Handle": Variant("q", self.handle), "UUID": Variant("s", self.uuid),
                   "Characteristic": Variant("o", self.characteristic.path)}
        if self.value:
            present["Value"] = Variant("ay", self.value)
        return present

    @dbus_method()
    async def ReadValue(self, options: DBusDict) -> DBusBytes:
        return await self._read_value(options)

    @dbus_method()
    async def WriteValue(self, value: DBusBytes, options: DBusDict):
        offset, _ = _parse_options(options)
        self.device.require_connected()
        if self._writing:
            raise in_progress()
        if self.uuid == CCCD_UUID:
            raise _error("NotPermitted", "Write not permitted")
        await self._write_value(value, offset, True)

    def link_lost(self):
        self._read = None


# --- devices ----------------------------------------------------------------------------------------

class BluezDevice(_Interface):
    """org.bluez.Device1: one remote device heard by (or connected to) one adapter."""

    ALL_PROPERTIES = ("Address", "AddressType", "Name", "Alias", "Class", "Appearance", "Icon", "Paired", "Bonded",
                      "Trusted", "Blocked", "LegacyPairing", "CablePairing", "RSSI", "Connected", "UUIDs", "Modalias",
                      "Adapter", "ManufacturerData", "ServiceData", "TxPower", "ServicesResolved",
                      "AdvertisingFlags", "AdvertisingData", "WakeAllowed", "Sets", "PreferredBearer")
    WRITABLE = {"Trusted": "b", "Alias": "s"}

    def __init__(self, adapter, address, address_type):
        super().__init__(DEVICE, adapter.tree, "%s/dev_%s" % (adapter.path, address.replace(":", "_")))
        self.adapter = adapter
        self.address = address
        self.address_type = address_type
        self.remote_name = None          # (ServiceInterface.name is the interface's)
        self.name_complete = False
        self.alias = None
        self.trusted = False
        self.rssi = 0
        self.tx_power = None
        self.flags = None
        self.eir_uuids = set()
        self.resolved_uuids = set()
        self.manufacturer = {}
        self.service_data = {}
        self.other_data = {}
        self.connectable = False
        self.temporary = True
        self.connection = None           # bumble Connection while connected
        self.client = None               # its GATT client
        self.mtu = None
        self.services_resolved = False
        self.services = []               # the cached GATT database: GattService objects
        self.connecting = False
        self.cancelled = False
        self.disconnecting = False
        self.lost = None                 # asyncio.Event, set when the current link ends
        self.remove_when_disconnected = False
        self._timer = None

    # --- properties --------------------------------------------------------------------------------

    def properties(self):
        present = {"Address": Variant("s", self.address), "AddressType": Variant("s", self.address_type)}
        if self.remote_name is not None:
            present["Name"] = Variant("s", self.remote_name)
        present["Alias"] = Variant("s", self.alias or self.remote_name or self.address.replace(":", "-"))
        for name in ("Paired", "Bonded"):
            present[name] = Variant("b", False)
        present["Trusted"] = Variant("b", self.trusted)
        for name in ("Blocked", "LegacyPairing", "CablePairing"):
            present[name] = Variant("b", False)
        if self.rssi:
            present["RSSI"] = Variant("n", self.rssi)
        present["Connected"] = Variant("b", self.connection is not None)
        present["UUIDs"] = Variant("as", sorted(self.eir_uuids | self.resolved_uuids))
        present["Adapter"] = Variant("o", self.adapter.path)
        if self.manufacturer:
            present["ManufacturerData"] = Variant("a{qv}", {company: Variant("ay", data)
                                                            for company, data in sorted(self.manufacturer.items())})
        if self.service_data:
            present["ServiceData"] = Variant("a{sv}", {uuid: Variant("ay", data)
                                                       for uuid, data in sorted(self.service_data.items())})
        if self.tx_power is not None:
            present["TxPower"] = Variant("n", self.tx_power)
        present["ServicesResolved"] = Variant("b", self.services_resolved)
        if self.flags is not None:
            present["AdvertisingFlags"] = Variant("ay", bytes([self.flags]))
        if self.other_data:
            present["AdvertisingData"] = Variant("a{yv}", {ad_type: Variant("ay", data)
                                                           for ad_type, data in sorted(self.other_data.items())})
        return present

    def set_property(self, name, value):
        if name == "Trusted":
            if value != self.trusted:
                self.trusted = value
                self.changed("Trusted")
        elif name == "Alias":
            self.alias = value or None
            self.changed("Alias")

    # --- advertisements ----------------------------------------------------------------------------

    def heard(self, advert, rssi, delta_threshold, duplicate):
        """Take one advertising report (src/adapter.c device found); returns the properties that changed."""
        changed = []
        if self._set_rssi(rssi, delta_threshold):
            changed.append("RSSI")
        if advert.flags is not None and advert.flags != self.flags:
            self.flags = advert.flags
            changed.append("AdvertisingFlags")
        if (advert.name is not None and (advert.name_complete or not self.name_complete)
                and advert.name != self.remote_name):
            self.remote_name, self.name_complete = advert.name, advert.name_complete
            changed += ["Name", "Alias"]
        if advert.tx_power is not None and advert.tx_power != self.tx_power:
            self.tx_power = advert.tx_power
            changed.append("TxPower")
        new_uuids = advert.uuids - self.eir_uuids - self.resolved_uuids
        if new_uuids:
            self.eir_uuids |= new_uuids
            changed.append("UUIDs")
        for attribute, name, fresh in (("manufacturer", "ManufacturerData", advert.manufacturer),
                                       ("service_data", "ServiceData", advert.service_data),
                                       ("other_data", "AdvertisingData", advert.other)):
            known = getattr(self, attribute)
            if duplicate and fresh:
                known.clear()
            if any(known.get(key) != value for key, value in fresh.items()) or duplicate and fresh:
                known.update(fresh)
                changed.append(name)
        return changed

    def _set_rssi(self, rssi, delta_threshold):
        """device_set_rssi_with_delta(): a change from or to "unknown" always counts, else one of at
        least `delta_threshold` dBm (0 while a discovery filter is set: every report counts)."""
        if rssi == RSSI_NOT_AVAILABLE:
            return False
        if rssi == 0 or self.rssi == 0:
            if self.rssi == rssi:
                return False
        elif abs(self.rssi - rssi) < delta_threshold:
            return False
        self.rssi = rssi
        return True

    def seen(self, connectable):
        self.connectable = connectable
        if self.temporary:
            self._restart_timer()

    def set_temporary(self, temporary):
        self.temporary = temporary
        if temporary:
            self._restart_timer()
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _restart_timer(self):
        if self._timer is not None:
            self._timer.cancel()
        timeout_ms = self.adapter.air.temporary_timeout_ms
        if timeout_ms > 0:
            self._timer = asyncio.get_running_loop().call_later(timeout_ms / 1000, self._disappeared)

    def _disappeared(self):
        self._timer = None
        if self.connection is not None or self.connecting:
            self._restart_timer()
            return
        self.adapter.remove_device(self)

    # --- connection --------------------------------------------------------------------------------

    def require_connected(self):
        if self.connection is None or self.client is None:
            raise failed("Not connected")

    @dbus_method()
    async def Connect(self):
        if self.connecting:
            raise in_progress()
        if self.connection is not None:
            return
        self.set_temporary(False)
        self.connecting, self.cancelled = True, False
        try:
            connection = await self.adapter.connect(self)
        except (asyncio.TimeoutError, core.TimeoutError):
            raise failed("br-connection-canceled" if self.cancelled else "le-connection-timeout")
        except Exception as error:
            if self.cancelled:
                raise failed("br-connection-canceled")
            logger.info("connection to %s failed: %r", self.address, error)
            raise failed("le-connection-unknown")
        finally:
            self.connecting = False
        if self.cancelled:
            _spawn(self._drop(connection, hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR), self.adapter.tasks)
            raise failed("br-connection-canceled")
        self._attach(connection)

    @dbus_method()
    async def Disconnect(self):
        if self.connecting:
            self.cancelled = True
            await self.adapter.cancel_connect(self)
            return
        if self.connection is None:
            return
        await self._drop(self.connection, hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR)

    @dbus_signal()
    def Disconnected(self, name, message) -> Annotated[tuple[str, str], DBusSignature("ss")]:
        return (name, message)

    def _attach(self, connection):
        self.connection = connection
        self.client = connection.gatt_client
        self.lost = asyncio.Event()
        self.disconnecting = False
        connection.on(Connection.EVENT_DISCONNECTION, lambda reason: self._on_disconnection(connection, reason))
        self.changed("Connected")
        _spawn(self._browse(connection), self.adapter.tasks)

    async def _drop(self, connection, reason):
        """End the link and wait (bounded) until it has ended."""
        if connection is not self.connection:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.disconnect(reason), RADIO_TIMEOUT_MS / 1000)
            return
        self.disconnecting = True
        lost = self.lost
        try:
            await asyncio.wait_for(connection.disconnect(reason), RADIO_TIMEOUT_MS / 1000)
            await asyncio.wait_for(lost.wait(), RADIO_TIMEOUT_MS / 1000)
        except Exception as error:
            logger.info("disconnecting %s: %r: taken as gone", self.address, error)
            self._on_disconnection(connection, hci.HCI_CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR)

    def _on_disconnection(self, connection, reason):
        if connection is not self.connection:
            return
        self.connection = self.client = None
        self.mtu = None
        self.disconnecting = False
        self.lost.set()
        for service in self.services:
            for characteristic in service.characteristics:
                characteristic.link_lost()
                for descriptor in characteristic.descriptors:
                    descriptor.link_lost()
        name, message = _DISCONNECTED.get(reason, ("org.bluez.Reason.Unknown", "Unspecified"))
        if self.tree.objects.get(self.path, {}).get(DEVICE) is self:
            self.Disconnected(name, message)
        resolved, self.services_resolved = self.services_resolved, False
        self.changed(*(["ServicesResolved"] if resolved else []), "Connected")
        if self.remove_when_disconnected:
            self.adapter.remove_device(self)
        elif self.temporary:
            self._restart_timer()

    async def att(self, request, timeout_ms=ATT_TIMEOUT_MS):
        """Run one GATT procedure on the current link (`request(client)` returns its coroutine), bounded
        by the ATT timeout and by the link: the peer's ATT errors become BlueZ's D-Bus errors, a lost
        link and a timeout ATT error 0x0e (the link is dropped after a timeout, as BlueZ does)."""
        self.require_connected()
        connection, lost = self.connection, self.lost
        task = asyncio.ensure_future(request(self.client))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        waiter = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({task, waiter}, timeout=timeout_ms / 1000,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task in done and not task.cancelled():
            error = task.exception()
            if error is None:
                return task.result()
            if isinstance(error, att.ATT_Error):
                raise gatt_error(error.error_code)
            if not lost.is_set():
                logger.warning("GATT request to %s failed: %r", self.address, error)
            raise gatt_error(ATT_UNLIKELY)
        task.cancel()
        if not lost.is_set() and task not in done:
            logger.warning("no ATT answer from %s in %d ms: dropping the link", self.address, timeout_ms)
            _spawn(self._drop(connection, hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR), self.adapter.tasks)
        raise gatt_error(ATT_UNLIKELY)

    async def _browse(self, connection):
        """MTU exchange, then the whole GATT database (primary services, characteristics, descriptors,
        extended properties), exported or checked against the cache; then notify sessions registered
        again, then ServicesResolved."""
        try:
            self.mtu = await self.att(lambda client: client.request_mtu(GATT_MTU))
            layout = await self._discover()
            if layout != tuple(service.layout() for service in self.services):
                self._replace_services(layout)
            else:
                self._bind_proxies()
                for service in self.services:
                    for characteristic in service.characteristics:
                        characteristic.changed("MTU")
            uuids = {service.uuid for service in self.services}
            if uuids != self.resolved_uuids:
                self.resolved_uuids = uuids
                self.changed("UUIDs")
        except DBusError as error:
            if connection is self.connection:
                logger.warning("GATT discovery of %s failed (%s): dropping the link", self.address, error.text)
                await self._drop(connection, hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR)
            return
        for service in self.services:
            for characteristic in service.characteristics:
                if characteristic.sessions and connection is self.connection:
                    try:
                        await characteristic.register()
                    except DBusError as error:     # that session waits; the others go on
                        logger.warning("re-registering notifications of %s failed: %s", characteristic.path,
                                       error.text)
        if connection is self.connection:
            self.services_resolved = True
            self.changed("ServicesResolved")

    async def _discover(self):
        async def everything(client):
            found = []
            count = 0
            for service in await client.discover_services():
                characteristics = []
                for characteristic in await client.discover_characteristics([], service):
                    descriptors = await client.discover_descriptors(characteristic)
                    extended = 0
                    for descriptor in descriptors:
                        if _uuid128(descriptor.type) == EXTENDED_PROPERTIES_UUID:
                            raw = await client.read_value(descriptor.handle)
                            extended = struct.unpack("<H", raw[:2])[0] if len(raw) >= 2 else 0
                    count += 1 + len(descriptors)
                    characteristics.append((characteristic.handle - 1, characteristic.handle,
                                            _uuid128(characteristic.uuid), int(characteristic.properties), extended,
                                            tuple((d.handle, _uuid128(d.type)) for d in descriptors)))
                count += 1
                if count > MAX_ATTRIBUTES:
                    raise att.ATT_Error(error_code=att.ATT_INSUFFICIENT_RESOURCES_ERROR)
                found.append((service.handle, service.end_group_handle, _uuid128(service.uuid), tuple(characteristics)))
            return tuple(found)
        return await self.att(everything)

    def _replace_services(self, layout):
        self._remove_services()
        for handle, end_handle, uuid, characteristics in layout:
            service = GattService(self.tree, self, handle, end_handle, uuid)
            self.services.append(service)
            self.tree.add(service.path, [service])
            for declaration, value_handle, char_uuid, props, extended, descriptors in characteristics:
                characteristic = GattCharacteristic(self.tree, service, declaration, value_handle, char_uuid, props,
                                                    extended)
                service.characteristics.append(characteristic)
                self.tree.add(characteristic.path, [characteristic])
                for descriptor_handle, descriptor_uuid in descriptors:
                    descriptor = GattDescriptor(self.tree, characteristic, descriptor_handle, descriptor_uuid)
                    characteristic.descriptors.append(descriptor)
                    self.tree.add(descriptor.path, [descriptor])
        self._bind_proxies()

    def _bind_proxies(self):
        proxies = {characteristic.handle: characteristic
                   for service in (self.client.services if self.client is not None else [])
                   for characteristic in service.characteristics}
        for service in self.services:
            for characteristic in service.characteristics:
                characteristic.proxy = proxies.get(characteristic.handle)

    def _remove_services(self):
        for service in self.services:
            for characteristic in service.characteristics:
                for descriptor in characteristic.descriptors:
                    self.tree.remove(descriptor.path)
                self.tree.remove(characteristic.path)
            self.tree.remove(service.path)
        self.services = []

    def drop_sessions_of(self, client):
        for service in self.services:
            for characteristic in service.characteristics:
                if characteristic.sessions.pop(client, None) is not None:
                    characteristic.session_ended()

    def removed(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._remove_services()


# --- adapters ---------------------------------------------------------------------------------------

class BluezAdapter(_Interface):
    """org.bluez.Adapter1 on one bumble host: discovery sessions per D-Bus client, the devices heard."""

    ALL_PROPERTIES = ("Address", "AddressType", "Name", "Alias", "Class", "Connectable", "Powered", "PowerState",
                      "Discoverable", "DiscoverableTimeout", "Pairable", "PairableTimeout", "Discovering", "UUIDs",
                      "Modalias", "Roles", "ExperimentalFeatures", "Manufacturer", "Version")
    WRITABLE = {"Alias": "s"}

    def __init__(self, air, index, transport):
        super().__init__(ADAPTER, air.tree, "/org/bluez/hci%d" % index)
        self.air = air
        self.hci = "hci%d" % index
        self.transport = transport
        self.radio = None
        self._close_transport = None
        self.address = None
        self.system_name = socket.gethostname()
        self.alias = None
        self.version = (0, 0)            # HCI version, company identifier
        self.devices = {}                # path -> BluezDevice
        self.sessions = {}               # D-Bus client -> _Filter or None: discovering
        self.preset = {}                 # D-Bus client -> _Filter: set before StartDiscovery
        self.discovering = False
        self.found = set()               # devices heard in this discovery
        self.tasks = set()
        self._scan_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._attempt = None             # the device the controller is connecting to now
        self._too_many_logged = False

    async def start(self):
        try:
            host, self._close_transport = await asyncio.wait_for(open_hci(self.transport), POWER_ON_TIMEOUT_MS / 1000)
        except (BleError, asyncio.TimeoutError) as error:
            raise BluezAirError("无法打开蓝牙控制器 %s / cannot open the Bluetooth controller %s: %s"
                                % (self.transport, self.transport, error or "timeout"))
        self.radio = Device(name=self.system_name, address=hci.Address.generate_static_address(), host=host)
        try:
            await asyncio.wait_for(self.radio.power_on(), POWER_ON_TIMEOUT_MS / 1000)
        except Exception as error:
            await self.stop()
            raise BluezAirError("蓝牙控制器无响应 / the Bluetooth controller did not answer: %r" % (error,))
        self.address = self.radio.public_address.to_string(False)
        if self.radio.public_address.address_bytes[5] >> 6 == 3:
            # bumble's simulated link routes LE traffic by random address: the radio takes its public
            # address as its static random address (valid for the air's F0:... addresses), so peers
            # see the adapter's Address, as they see a BlueZ adapter's public address
            own = hci.Address(self.address, hci.Address.RANDOM_DEVICE_ADDRESS)
            await asyncio.wait_for(self.radio.send_sync_command(hci.HCI_LE_Set_Random_Address_Command(
                random_address=own)), RADIO_TIMEOUT_MS / 1000)
            self.radio.random_address = self.radio.static_address = own
        local = getattr(host, "local_version", None)
        if local is not None:
            self.version = (local.hci_version, local.company_identifier)
        self.radio.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        self.tree.add(self.path, [self])

    async def stop(self):
        for device in list(self.devices.values()):
            if device.connection is not None:
                await device._drop(device.connection, hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR)
        if self.radio is not None and self.radio.is_scanning:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.radio.stop_scanning(), RADIO_TIMEOUT_MS / 1000)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=RADIO_TIMEOUT_MS / 1000)
        radio, self.radio = self.radio, None
        close, self._close_transport = self._close_transport, None
        await close_hci(radio, close)

    def properties(self):
        return {
            "Address": Variant("s", self.address or "00:00:00:00:00:00"), "AddressType": Variant("s", "public"),
            "Name": Variant("s", self.system_name), "Alias": Variant("s", self.alias or self.system_name),
            "Class": Variant("u", 0), "Connectable": Variant("b", True), "Powered": Variant("b", True),
            "PowerState": Variant("s", "on"), "Discoverable": Variant("b", False),
            "DiscoverableTimeout": Variant("u", 180), "Pairable": Variant("b", True),
            "PairableTimeout": Variant("u", 0), "Discovering": Variant("b", self.discovering),
            "UUIDs": Variant("as", LOCAL_UUIDS), "Roles": Variant("as", ["central", "peripheral"]),
            "Manufacturer": Variant("q", self.version[1] & 0xFFFF), "Version": Variant("y", self.version[0] & 0xFF),
        }

    def set_property(self, name, value):
        self.alias = value or None
        self.changed("Alias")

    # --- discovery ---------------------------------------------------------------------------------

    @dbus_method()
    async def StartDiscovery(self):
        sender = _SENDER.get()
        if sender in self.sessions:
            raise in_progress("Operation already in progress")
        if len(self.sessions) >= MAX_CLIENTS:
            raise failed("Too many open files")
        self.sessions[sender] = self.preset.pop(sender, None)
        try:
            await self._update_scanning()
        except DBusError:
            self.sessions.pop(sender, None)
            raise

    @dbus_method()
    async def StopDiscovery(self):
        sender = _SENDER.get()
        if sender not in self.sessions:
            raise failed("No discovery started")
        del self.sessions[sender]
        await self._update_scanning()

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict):
        discovery_filter = _Filter(properties) if properties else None
        sender = _SENDER.get()
        if sender in self.sessions:
            self.sessions[sender] = discovery_filter
        elif discovery_filter is None:
            self.preset.pop(sender, None)
        else:
            if sender not in self.preset and len(self.preset) >= MAX_CLIENTS:
                raise failed("Too many open files")
            self.preset[sender] = discovery_filter

    @dbus_method()
    def GetDiscoveryFilters(self) -> Annotated[list[str], DBusSignature("as")]:
        return list(DISCOVERY_FILTERS)

    @dbus_method()
    async def RemoveDevice(self, device: DBusObjectPath):
        target = self.devices.get(device)
        if target is None:
            raise _error("DoesNotExist", "Does Not Exist")
        target.set_temporary(True)
        if target.connecting:
            target.cancelled = True
            await self.cancel_connect(target)
        if target.connection is not None:
            target.remove_when_disconnected = True
            await target._drop(target.connection, hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR)
        self.remove_device(target)

    def client_left(self, client):
        """A D-Bus client left the bus: its discovery session and filter end (and its notify sessions)."""
        self.preset.pop(client, None)
        if client in self.sessions:
            del self.sessions[client]
            _spawn(self._update_scanning(), self.tasks)
        for device in list(self.devices.values()):
            device.drop_sessions_of(client)

    async def _update_scanning(self):
        async with self._scan_lock:
            want = bool(self.sessions)
            if want == self.discovering or self.radio is None:
                return
            try:
                if want:
                    self.found = set()
                    await asyncio.wait_for(self.radio.start_scanning(
                        active=True, filter_duplicates=False, own_address_type=hci.OwnAddressType.RANDOM),
                        RADIO_TIMEOUT_MS / 1000)
                else:
                    await asyncio.wait_for(self.radio.stop_scanning(), RADIO_TIMEOUT_MS / 1000)
            except Exception as error:
                logger.warning("%s: scanning %s failed: %r", self.hci, "on" if want else "off", error)
                if want:
                    raise failed("Input/output error")
            self.discovering = want
            self.changed("Discovering")
            if not want:
                self._discovery_cleanup()

    def _discovery_cleanup(self):
        """The end of a discovery (src/adapter.c discovery_cleanup): RSSI and TxPower of the devices heard
        become unknown, and devices heard but not connectable are removed unless connected."""
        found, self.found = self.found, set()
        for device in found:
            changed = []
            if device.rssi:
                device.rssi = 0
                changed.append("RSSI")
            if device.tx_power is not None:
                device.tx_power = None
                changed.append("TxPower")
            device.changed(*changed)
        for device in list(self.devices.values()):
            if device.temporary and not device.connectable and device.connection is None and not device.connecting:
                self.remove_device(device)

    def _on_advertisement(self, advertisement):
        if not self.discovering:
            return
        advert = _Advert(advertisement.data.ad_structures)
        address = advertisement.address.to_string(False)
        rssi = advertisement.rssi
        path = "%s/dev_%s" % (self.path, address.replace(":", "_"))
        device = self.devices.get(path)
        filters = list(self.sessions.values())
        uuids = advert.uuids | (device.eir_uuids | device.resolved_uuids if device is not None else set())
        name = advert.name or (device.remote_name if device is not None else None)
        tx_power = advert.tx_power if advert.tx_power is not None else (device.tx_power if device else None)
        if not any(f is None or f.matches(address, name, uuids, rssi, tx_power) for f in filters):
            return
        delta = RSSI_THRESHOLD if all(f is None for f in filters) else 0
        duplicate = any(f is not None and f.duplicate for f in filters)
        if device is None:
            if len(self.devices) >= MAX_DEVICES:
                if not self._too_many_logged:
                    logger.warning("%s: %d devices known: ignoring new ones", self.hci, MAX_DEVICES)
                    self._too_many_logged = True
                return
            device = BluezDevice(self, address, "public" if advertisement.address.is_public else "random")
            device.heard(advert, rssi, delta, duplicate)
            self.devices[path] = device
            self.tree.add(path, [device])
        else:
            device.changed(*device.heard(advert, rssi, delta, duplicate))
        device.seen(advertisement.is_connectable)
        self.found.add(device)

    def remove_device(self, device):
        if self.devices.get(device.path) is not device:
            return
        del self.devices[device.path]
        self.found.discard(device)
        device.removed()
        self.tree.remove(device.path)

    # --- connections -------------------------------------------------------------------------------

    async def connect(self, device):
        """An LE connection to `device` (one attempt at a time per controller, as the kernel queues them)."""
        address = hci.Address(device.address, hci.Address.PUBLIC_DEVICE_ADDRESS if device.address_type == "public"
                              else hci.Address.RANDOM_DEVICE_ADDRESS)
        async with self._connect_lock:
            if device.cancelled:
                raise ConnectionAbortedError("cancelled while waiting for the controller")
            self._attempt = device
            try:
                return await asyncio.wait_for(
                    self.radio.connect(address, transport=core.PhysicalTransport.LE,
                                       own_address_type=hci.OwnAddressType.RANDOM,
                                       timeout=LE_CONNECT_TIMEOUT_MS / 1000),
                    LE_CONNECT_TIMEOUT_MS / 1000 + RADIO_TIMEOUT_MS / 1000)
            finally:
                self._attempt = None

    async def cancel_connect(self, device):
        """Cancel `device`'s connection attempt if it is the one the controller is making (one waiting
        for its turn sees its `cancelled` flag instead)."""
        if self._attempt is not device:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.radio.cancel_connection(), RADIO_TIMEOUT_MS / 1000)


# --- the whole ---------------------------------------------------------------------------------------

class BluezAir:
    """The stand-in: a private bus, org.bluez on it, one adapter per transport (a bumble transport spec
    such as "tcp-client:127.0.0.1:P", or a bumble Controller in this process)."""

    def __init__(self, transports, *, temporary_timeout_ms=TEMPORARY_TIMEOUT_MS):
        transports = list(transports)
        if not 1 <= len(transports) <= MAX_ADAPTERS:
            raise ValueError("传输应为1到%d个 / 1 to %d transports, not %d" % (MAX_ADAPTERS, MAX_ADAPTERS,
                                                                             len(transports)))
        if type(temporary_timeout_ms) is not int or temporary_timeout_ms < 0:
            raise ValueError("temporary_timeout_ms 应为非负整数 / temporary_timeout_ms must be an int >= 0")
        self.transports = transports
        self.temporary_timeout_ms = temporary_timeout_ms
        self.tree = _Tree()
        self.adapters = []
        self.bus = None
        self._private_bus = _PrivateBus()

    @property
    def bus_address(self):
        return self._private_bus.address

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc_info):
        await self.stop()

    async def start(self):
        try:
            await self._private_bus.start()
            self.bus = _BluezBus(self.tree, bus_address=self.bus_address, bus_type=BusType.SYSTEM)
            await asyncio.wait_for(self.bus.connect(), BUS_START_TIMEOUT_MS / 1000)
            self.tree.bus = self.bus
            self.bus.add_message_handler(self._on_message)
            await asyncio.wait_for(self.bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                member="AddMatch", signature="s",
                body=["type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                      "member='NameOwnerChanged'"])), BUS_START_TIMEOUT_MS / 1000)
            for index, transport in enumerate(self.transports):
                adapter = BluezAdapter(self, index, transport)
                self.adapters.append(adapter)
                await adapter.start()
            reply = await asyncio.wait_for(self.bus.request_name(BLUEZ), BUS_START_TIMEOUT_MS / 1000)
            if reply.name != "PRIMARY_OWNER":
                raise BluezAirError("无法取得总线名 org.bluez / could not own org.bluez: %s" % reply.name)
        except BaseException:
            await self.stop()
            raise

    def _on_message(self, msg):
        if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.interface == "org.freedesktop.DBus" and msg.sender == "org.freedesktop.DBus"):
            name, _old, new = msg.body
            if name.startswith(":") and not new:
                for adapter in self.adapters:
                    adapter.client_left(name)
            return None
        return self.tree.route(msg)

    async def wait_closed(self):
        """Until the bus goes away (its daemon killed)."""
        await self.bus.wait_for_disconnect()

    async def stop(self):
        """Let every link go, power the radios off, leave the bus and stop its daemon (each step bounded;
        the daemon is stopped whatever happened before)."""
        try:
            for adapter in self.adapters:
                try:
                    await adapter.stop()
                except Exception:
                    logger.warning("stopping %s failed", adapter.hci, exc_info=True)
            self.adapters = []
            bus, self.bus = self.bus, None
            self.tree.bus = None
            if bus is not None:
                bus.disconnect()
                closing = asyncio.ensure_future(bus.wait_for_disconnect())
                await asyncio.wait({closing}, timeout=BUS_STOP_TIMEOUT_MS / 1000)
                if closing.done() and not closing.cancelled():
                    closing.exception()      # how the connection ended is not news here
                closing.cancel()
        finally:
            await self._private_bus.stop()

    def describe(self):
        return {"bus": self.bus_address,
                "adapters": [{"name": a.hci, "path": a.path, "address": a.address,
                              "transport": a.transport if isinstance(a.transport, str) else repr(a.transport)}
                             for a in self.adapters]}


async def _serve(transports, temporary_timeout_ms, out):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with BluezAir(transports, temporary_timeout_ms=temporary_timeout_ms) as air:
        out.write(json.dumps(air.describe(), sort_keys=True) + "\n")
        out.flush()
        stopped = asyncio.ensure_future(stop.wait())
        closed = asyncio.ensure_future(air.wait_closed())
        done, pending = await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if closed in done:
            closed.exception()           # how it went (EOF, as a rule) is not news
        if closed in done and not stop.is_set():
            print("D-Bus 总线已关闭 / the D-Bus bus went away", file=sys.stderr)
            return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m simulators.bluez_air",
        description="BlueZ 的 D-Bus 替身：在私有总线上提供 org.bluez 接口，每个适配器的射频是模拟空口上的 bumble 主机。"
                    " / A BlueZ stand-in: the org.bluez D-Bus API (what bleak uses) on a private dbus-daemon, each "
                    "adapter's radio a bumble host on the simulated air. Prints one JSON line {\"bus\": ADDRESS, "
                    "\"adapters\": [...]} once serving, then runs until SIGTERM or Ctrl-C. Point bleak at it with "
                    "DBUS_SYSTEM_BUS_ADDRESS=ADDRESS.",
        epilog="示例 / example:  python -m simulators.ble_air --controllers 2; python -m simulators.bluez_air "
               "--ble tcp-client:127.0.0.1:39251  ->  {\"adapters\": [{\"name\": \"hci0\", ...}], \"bus\": "
               "\"unix:path=...\"}; then DBUS_SYSTEM_BUS_ADDRESS=unix:path=... ykt phone water --ble bleak --nearby")
    parser.add_argument("--ble", action="append", required=True, metavar="TRANSPORT",
                        help="下一个适配器的 bumble 传输，可重复 / a bumble transport for the next adapter (hci0, hci1, "
                             "...), e.g. tcp-client:127.0.0.1:P from python -m simulators.ble_air; repeat for more")
    parser.add_argument("--temporary-timeout-ms", type=int, default=TEMPORARY_TIMEOUT_MS, metavar="MS",
                        help="临时设备保留时长 / forget a device never connected and not heard for this long "
                             "(BlueZ's TemporaryTimeout; 0: never; default %d)" % TEMPORARY_TIMEOUT_MS)
    parser.add_argument("--verbose", action="store_true", help="输出日志 / log to stderr")
    options = parser.parse_args(argv)
    if len(options.ble) > MAX_ADAPTERS:
        parser.error("适配器最多 %d 个 / at most %d adapters" % (MAX_ADAPTERS, MAX_ADAPTERS))
    if options.temporary_timeout_ms < 0:
        parser.error("--temporary-timeout-ms 不能为负 / --temporary-timeout-ms must be 0 or more")
    logging.basicConfig(level=logging.INFO if options.verbose else logging.WARNING, stream=sys.stderr)
    try:
        return asyncio.run(_serve(options.ble, options.temporary_timeout_ms, sys.stdout))
    except BluezAirError as error:
        print(str(error), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
