"""The BlueZ stand-in (`simulators/bluez_air.py`) against what bleak and BlueZ's documents expect of it.

In one process: bumble virtual controllers on one LocalLink, the dispenser's real GATT server on one of
them (with test_dispenser_ble's FakeDispenser, the real GrantGate behind it), the stand-in's adapters on
the others, its private dbus-daemon as a child, and bleak itself - BleakScanner, BleakClient - pointed at
it with DBUS_SYSTEM_BUS_ADDRESS. Raw dbus-fast calls check what bleak does not show: object paths, the
types of properties, signals and where they come from, and the errors' names and texts, as BlueZ's
src/adapter.c, src/device.c and src/gatt-client.c give them. Every wait is bounded.
"""
import asyncio
import contextlib
import os

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakGATTProtocolError
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from firmware.apps.dispenser_ble import DispenserRadio
from firmware.core import water_grants as wg
from simulators.ble_air import LocalAir
from simulators.bluez_air import BluezAir
from test_dispenser_ble import DISPENSER_ID, FakeDispenser, make_grant, run

# Debian's dbus-daemon is needed (make test installs it): without it the stand-in says so and these fail
pytestmark = pytest.mark.stores("sqlite")

DEVICE_PATH = "/org/bluez/hci0/dev_" + wg.static_address(DISPENSER_ID).replace(":", "_")
BLUEZ = "org.bluez"


@contextlib.asynccontextmanager
async def rig(monkeypatch, adapters=1, fake=None):
    """The dispenser's radio on controller 0, the stand-in's adapters on the next ones, and this
    process's D-Bus system bus pointed at the stand-in's."""
    async with LocalAir(1 + adapters) as air:
        fake = fake or FakeDispenser()
        async with DispenserRadio(air.controllers[0], DISPENSER_ID, fake) as radio:
            fake.radio = radio
            async with BluezAir(air.controllers[1:]) as bluez:
                monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.bus_address)
                yield air, radio, fake, bluez


class Watcher:
    """A plain D-Bus client: calls, and every signal from org.bluez kept in order."""

    def __init__(self, bus):
        self.bus = bus
        self.signals = []
        bus.add_message_handler(self._on_message)

    @classmethod
    async def connect(cls, address):
        watcher = cls(await MessageBus(bus_address=address).connect())
        for rule in ("type='signal',interface='org.freedesktop.DBus.ObjectManager'",
                     "type='signal',path_namespace='/org/bluez'"):
            await watcher.call("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule],
                               destination="org.freedesktop.DBus")
        return watcher

    def _on_message(self, msg):
        if msg.message_type is MessageType.SIGNAL and msg.sender != "org.freedesktop.DBus":
            self.signals.append(msg)

    async def call(self, path, interface, member, signature="", body=(), destination=BLUEZ):
        return await asyncio.wait_for(self.bus.call(Message(destination=destination, path=path, interface=interface,
                                                            member=member, signature=signature, body=list(body))), 5)

    async def error(self, *args, **kwargs):
        reply = await self.call(*args, **kwargs)
        assert reply.message_type is MessageType.ERROR, reply.body
        return reply.error_name, reply.body[0] if reply.body else None

    async def properties(self, path, interface):
        reply = await self.call(path, "org.freedesktop.DBus.Properties", "GetAll", "s", [interface])
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return {name: variant for name, variant in reply.body[0].items()}

    async def wait_for(self, predicate, timeout_s=5):
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            found = [msg for msg in self.signals if predicate(msg)]
            if found:
                return found
            assert asyncio.get_running_loop().time() < deadline, "no such signal within %s s" % timeout_s
            await asyncio.sleep(0.01)

    def close(self):
        self.bus.disconnect()


def _dispenser_of(advertisement):
    for company, data in advertisement.manufacturer_data.items():
        found = wg.dispenser_from_manufacturer_data(company, data)
        if found is not None:
            return found
    return None


def test_bleaks_own_scanner_finds_the_dispenser_by_its_manufacturer_data(monkeypatch):
    async def body():
        async with rig(monkeypatch):
            device = await BleakScanner.find_device_by_filter(lambda d, ad: _dispenser_of(ad) == DISPENSER_ID,
                                                              timeout=5)
            assert device is not None, "bleak heard no dispenser"
            assert device.address == wg.static_address(DISPENSER_ID) and device.name == "YKT-W-%d" % DISPENSER_ID
            assert device.details["path"] == DEVICE_PATH
            props = device.details["props"]
            assert props["AddressType"] == "random" and props["Adapter"] == "/org/bluez/hci0"
            assert props["Connected"] is False and props["ServicesResolved"] is False and props["RSSI"] < 0
            assert props["AdvertisingFlags"] == bytes([0x06])

            heard = await BleakScanner.discover(timeout=0.5, return_adv=True)
            (found_device, advertisement), = heard.values()
            assert found_device.address == wg.static_address(DISPENSER_ID)
            assert advertisement.local_name == "YKT-W-%d" % DISPENSER_ID
            assert advertisement.manufacturer_data == {
                wg.MANUFACTURER_ID: wg.advert_manufacturer_data(DISPENSER_ID)}
            assert -127 < advertisement.rssi < 0
    run(body())


def test_the_bus_answers_as_bluez_does(monkeypatch):
    async def body():
        async with rig(monkeypatch, adapters=2) as (_air, _radio, _fake, bluez):
            watcher = await Watcher.connect(bluez.bus_address)
            other = await Watcher.connect(bluez.bus_address)
            try:
                reply = await watcher.call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
                objects = reply.body[0]
                assert sorted(objects) == ["/org/bluez/hci0", "/org/bluez/hci1"]
                hci0 = objects["/org/bluez/hci0"]
                assert set(hci0) == {"org.bluez.Adapter1", "org.freedesktop.DBus.Introspectable",
                                     "org.freedesktop.DBus.Properties"}
                adapter = hci0["org.bluez.Adapter1"]
                assert adapter["Address"] == Variant("s", "F0:00:00:00:00:01")
                assert adapter["Powered"] == Variant("b", True) and adapter["Discovering"] == Variant("b", False)
                assert "central" in adapter["Roles"].value and adapter["AddressType"].value == "public"

                # gdbus' answers for properties
                got = await watcher.call("/org/bluez/hci0", "org.freedesktop.DBus.Properties", "Get", "ss",
                                         ["org.bluez.Adapter1", "Powered"])
                assert got.body == [Variant("b", True)]
                assert await watcher.error("/org/bluez/hci0", "org.freedesktop.DBus.Properties", "Get", "ss",
                                           ["org.bluez.Adapter1", "Modalias"]) == (
                    "org.freedesktop.DBus.Error.InvalidArgs", "No such property 'Modalias'")
                assert await watcher.error("/org/bluez/hci0", "org.freedesktop.DBus.Properties", "Set", "ssv",
                                           ["org.bluez.Adapter1", "Powered", Variant("b", False)]) == (
                    "org.freedesktop.DBus.Error.PropertyReadOnly", "Property 'Powered' is not writable")

                # discovery: one session per client, BlueZ's errors, filters type-checked
                adapter_call = ("/org/bluez/hci0", "org.bluez.Adapter1")
                assert await watcher.error(*adapter_call, "StopDiscovery") == (
                    "org.bluez.Error.Failed", "No discovery started")
                assert await watcher.error(*adapter_call, "SetDiscoveryFilter", "a{sv}",
                                           [{"RSSI": Variant("s", "-60")}]) == (
                    "org.bluez.Error.InvalidArguments", "Invalid arguments in method call")
                assert await watcher.error(*adapter_call, "SetDiscoveryFilter", "a{sv}",
                                           [{"Colour": Variant("s", "blue")}])
                filters = await watcher.call(*adapter_call, "GetDiscoveryFilters")
                assert "DuplicateData" in filters.body[0] and "Pattern" in filters.body[0]
                reply = await watcher.call(*adapter_call, "SetDiscoveryFilter", "a{sv}",
                                           [{"Transport": Variant("s", "le"), "DuplicateData": Variant("b", False)}])
                assert reply.message_type is MessageType.METHOD_RETURN
                assert (await watcher.call(*adapter_call, "StartDiscovery")).message_type is MessageType.METHOD_RETURN
                assert await watcher.error(*adapter_call, "StartDiscovery") == (
                    "org.bluez.Error.InProgress", "Operation already in progress")
                assert (await other.call(*adapter_call, "StartDiscovery")).message_type is MessageType.METHOD_RETURN

                # the dispenser appears: one InterfacesAdded from "/", all of Device1 in it
                added = await watcher.wait_for(lambda m: m.member == "InterfacesAdded" and m.body[0] == DEVICE_PATH)
                assert added[0].path == "/" and added[0].interface == "org.freedesktop.DBus.ObjectManager"
                device = added[0].body[1]["org.bluez.Device1"]
                assert device["Address"] == Variant("s", wg.static_address(DISPENSER_ID))
                assert device["ManufacturerData"].signature == "a{qv}"
                assert device["ManufacturerData"].value[wg.MANUFACTURER_ID] == Variant(
                    "ay", wg.advert_manufacturer_data(DISPENSER_ID))
                assert device["RSSI"].signature == "n" and device["Adapter"] == Variant("o", "/org/bluez/hci0")
                assert "org.freedesktop.DBus.Properties" in added[0].body[1]
                # with a filter set, every advertisement reports the RSSI again (bleak sees repeats by it)
                await watcher.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == DEVICE_PATH
                                       and "RSSI" in m.body[1])
                assert not [m for m in watcher.signals if m.path.startswith("/org/bluez/hci1/dev_")]

                # a client leaving the bus ends its session; the last StopDiscovery ends the discovery,
                # and the RSSI heard in it goes (invalidated, as BlueZ does)
                other.close()
                await asyncio.sleep(0.1)
                assert (await watcher.properties(*adapter_call))["Discovering"] == Variant("b", True)
                assert (await watcher.call(*adapter_call, "StopDiscovery")).message_type is MessageType.METHOD_RETURN
                await watcher.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == "/org/bluez/hci0"
                                       and m.body[1].get("Discovering") == Variant("b", False))
                await watcher.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == DEVICE_PATH
                                       and "RSSI" in m.body[2])
                assert "RSSI" not in await watcher.properties(DEVICE_PATH, "org.bluez.Device1")

                # objects that are not there, methods that are not there, and a device not connected
                assert (await watcher.error(DEVICE_PATH + "_nope", "org.bluez.Device1", "Connect"))[0] == \
                    "org.freedesktop.DBus.Error.UnknownObject"
                assert (await watcher.error(DEVICE_PATH, "org.bluez.Device1", "Pair"))[0] == \
                    "org.freedesktop.DBus.Error.UnknownMethod"
                assert (await watcher.call(DEVICE_PATH, "org.bluez.Device1", "Disconnect")).message_type \
                    is MessageType.METHOD_RETURN
                assert await watcher.error(*adapter_call, "RemoveDevice", "o", ["/org/bluez/hci0/dev_00"]) == (
                    "org.bluez.Error.DoesNotExist", "Does Not Exist")
                assert (await watcher.call(*adapter_call, "RemoveDevice", "o", [DEVICE_PATH])).message_type \
                    is MessageType.METHOD_RETURN
                removed = await watcher.wait_for(lambda m: m.member == "InterfacesRemoved" and m.body[0] == DEVICE_PATH)
                assert "org.bluez.Device1" in removed[0].body[1] and removed[0].path == "/"
            finally:
                watcher.close()
                other.close()
    run(body(), timeout_s=20)


def test_gatt_through_bleak_reaches_the_dispenser_and_its_refusals_come_back_as_bluez_words_them(monkeypatch):
    async def body():
        async with rig(monkeypatch) as (air, radio, fake, bluez):
            watcher = await Watcher.connect(bluez.bus_address)
            lost = asyncio.Event()
            notes = []
            try:
                device = await BleakScanner.find_device_by_filter(lambda d, ad: _dispenser_of(ad) == DISPENSER_ID,
                                                                  timeout=5)
                client = BleakClient(device, disconnected_callback=lambda _client: lost.set(), timeout=5)
                await client.connect()
                assert radio.links and radio.links[0].address == "F0:00:00:00:00:01"
                service = client.services.get_service(wg.SERVICE_UUID)
                flags = {c.uuid: sorted(c.properties) for c in service.characteristics}
                assert flags == {wg.CHALLENGE_UUID: ["read"], wg.GRANT_UUID: ["write"], wg.CONTROL_UUID: ["write"],
                                 wg.PROGRESS_UUID: ["notify", "read"], wg.RECEIPT_UUID: ["read"]}
                progress = service.get_characteristic(wg.PROGRESS_UUID)
                assert progress.max_write_without_response_size == 247 - 3     # BlueZ's MTU exchange, 517 asked
                char_path = progress.obj[0]
                assert char_path.startswith(DEVICE_PATH + "/service") and "/char" in char_path
                assert progress.obj[1]["Notifying"] is False and "NotifyAcquired" not in progress.obj[1]
                device_props = await watcher.properties(DEVICE_PATH, "org.bluez.Device1")
                assert device_props["Connected"] == Variant("b", True)
                assert device_props["ServicesResolved"] == Variant("b", True)
                assert wg.SERVICE_UUID in device_props["UUIDs"].value

                await client.start_notify(progress, lambda _c, data: notes.append(wg.decode_progress(data)))
                challenge_bytes = await client.read_gatt_char(wg.CHALLENGE_UUID)
                dispenser_id, challenge = wg.decode_challenge(challenge_bytes)
                assert dispenser_id == DISPENSER_ID
                # every read updates the cached Value, which bleak keeps from PropertiesChanged
                await watcher.wait_for(lambda m: m.member == "PropertiesChanged" and "Value" in m.body[1])
                assert bytes(await client.read_gatt_char(wg.CHALLENGE_UUID, use_cached=True)) == challenge_bytes

                # garbage written to GRANT: the dispenser's ATT error 0x80, in BlueZ's words, to any client
                assert await watcher.error(service.get_characteristic(wg.GRANT_UUID).obj[0],
                                           "org.bluez.GattCharacteristic1", "WriteValue", "aya{sv}",
                                           [b"\x00garbage", {"type": Variant("s", "request")}]) == (
                    "org.bluez.Error.Failed", "Operation failed with ATT error: 0x%02x" % wg.REFUSED_MALFORMED)
                await client.write_gatt_char(wg.GRANT_UUID, make_grant(challenge) + bytes([wg.CONTROL_START]),
                                             response=True)
                for _ in range(200):
                    if len(notes) >= fake.meter_notes:
                        break
                    await asyncio.sleep(0.01)
                assert [note.ml for note in notes] == [100, 200, 300]

                # a second Start while the water runs: the dispenser's ATT error 0x86, BlueZ's words for it
                _, second = wg.decode_challenge(await client.read_gatt_char(wg.CHALLENGE_UUID))
                with pytest.raises(BleakGATTProtocolError) as refused:
                    await client.write_gatt_char(wg.GRANT_UUID, make_grant(second, grant_id=2), response=True)
                assert int(refused.value.code) == wg.REFUSED_BUSY
                grant_path = service.get_characteristic(wg.GRANT_UUID).obj[0]
                assert await watcher.error(grant_path, "org.bluez.GattCharacteristic1", "WriteValue", "aya{sv}",
                                           [b"\x00", {"type": Variant("s", "reliable")}]) == (
                    "org.bluez.Error.NotSupported", "Operation is not supported")
                assert await watcher.error(grant_path, "org.bluez.GattCharacteristic1", "WriteValue", "aya{sv}",
                                           [b"\x00", {"offset": Variant("s", "1")}]) == (
                    "org.bluez.Error.InvalidArguments", "Invalid arguments in method call")
                cccd = progress.descriptors[0]
                assert cccd.uuid == "00002902-0000-1000-8000-00805f9b34fb"
                assert await watcher.error(cccd.obj[0], "org.bluez.GattDescriptor1", "WriteValue", "aya{sv}",
                                           [b"\x01\x00", {}]) == ("org.bluez.Error.NotPermitted", "Write not permitted")
                assert (await watcher.properties(char_path, "org.bluez.GattCharacteristic1"))["Notifying"] == \
                    Variant("b", True)

                # a plain client's notify session, which BlueZ keeps across reconnections
                reply = await watcher.call(char_path, "org.bluez.GattCharacteristic1", "StartNotify")
                assert reply.message_type is MessageType.METHOD_RETURN, reply.body

                # the phone goes out of range: a supervision timeout, in BlueZ's terms
                air.lose(1)
                await asyncio.wait_for(lost.wait(), 5)
                disconnected = await watcher.wait_for(lambda m: m.member == "Disconnected" and m.path == DEVICE_PATH)
                assert disconnected[0].body == ["org.bluez.Reason.Timeout", "Connection timeout"]
                changed = await watcher.wait_for(lambda m: m.member == "PropertiesChanged" and m.path == DEVICE_PATH
                                                 and m.body[1].get("Connected") == Variant("b", False))
                assert changed[0].body[1]["ServicesResolved"] == Variant("b", False)   # in the same signal
                assert await watcher.error(char_path, "org.bluez.GattCharacteristic1", "ReadValue", "a{sv}",
                                           [{}]) == ("org.bluez.Error.Failed", "Not connected")
                # the database stays cached (BlueZ's Cache = always), without an MTU while unconnected
                assert "MTU" not in await watcher.properties(char_path, "org.bluez.GattCharacteristic1")
                await client.disconnect()

                # back in range: the same objects, and the plain client's session registered again, so
                # the next session's progress reaches it without a new StartNotify
                again = BleakClient(device, timeout=5)
                await again.connect()
                assert again.services.get_service(wg.SERVICE_UUID).get_characteristic(wg.PROGRESS_UUID).obj[0] \
                    == char_path
                before = len(watcher.signals)
                _, challenge = wg.decode_challenge(await again.read_gatt_char(wg.CHALLENGE_UUID))
                await again.write_gatt_char(wg.GRANT_UUID, make_grant(challenge, grant_id=3) + bytes([wg.CONTROL_START]),
                                            response=True)
                await watcher.wait_for(lambda m: m in watcher.signals[before:] and m.path == char_path
                                       and m.member == "PropertiesChanged" and "Value" in m.body[1]
                                       and wg.decode_progress(m.body[1]["Value"].value).state == wg.PROGRESS_DISPENSING)
                await again.disconnect()
            finally:
                watcher.close()
    run(body(), timeout_s=20)


def test_the_stand_in_leaves_nothing_behind(monkeypatch):
    async def body():
        async with LocalAir(1) as air:
            bluez = BluezAir(air.controllers)
            await bluez.start()
            directory = bluez._private_bus.directory
            pid = bluez._private_bus.process.pid
            assert os.path.exists(os.path.join(directory, "system_bus_socket"))
            await bluez.stop()
            assert not os.path.exists(directory)
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    run(body())
