"""The phone's side of Bluetooth water on bleak: the radio and link of `simulators/phone_ble.py`, over
the operating system's Bluetooth stack instead of bumble's.

bleak is the cross-platform Bluetooth LE client library. On Linux it drives BlueZ over D-Bus (the
system bus, or the one DBUS_SYSTEM_BUS_ADDRESS names), so a Raspberry Pi or a laptop draws water with
its own adapter, with bluetoothd left in charge of it (bumble's `hci-socket:0` needs the adapter taken
away from BlueZ). In tests bleak runs against `simulators/bluez_air.py`, a BlueZ stand-in on a private
bus whose radio is on the simulated air. `ykt phone water --ble bleak` (or `bleak:hci1`) picks it.

    async with PhoneRadio(adapter="hci0") as phone:       # None: BlueZ's first powered adapter
        nearby = await phone.find(dispenser_id=7)
        link = await phone.connect(nearby.address, on_progress=print)
        dispenser_id, challenge = await link.read_challenge()
        ...                                               # as with phone_ble's DispenserLink

The same interface, bounded waits, texts and errors as phone_ble (its timeouts, PhoneBleError,
NearbyDispenser; the link's message-level methods are phone_ble.DispenserLink's). What bleak and BlueZ
change:
- Scanning is a BlueZ discovery; a dispenser is known by its manufacturer data, as with bumble. BlueZ
  remembers what it heard, so a connection goes to the device a scan found, or bleak scans for the
  address (a sticker's) itself within the connection's timeout.
- BlueZ exchanges the MTU itself when it connects (asking for 517; the dispenser grants 247), so the
  54-byte grant and the 46-byte receipt each take one ATT exchange; `link.mtu` is what BlueZ reports.
  `connect_ms` includes BlueZ's service discovery, which bleak waits for.
- A refusal is BlueZ's "Operation failed with ATT error: 0x86", which bleak raises as
  BleakGATTProtocolError with that code: PhoneBleError.refused(code), as with bumble. BlueZ fails a
  request cut by a lost link with ATT error 0x0e too, and the disconnection reaches bleak on another
  D-Bus connection than the reply: a 0x0e is the lost link when the link is seen to go within
  LINK_LOST_GRACE_MS.
- Progress notifications are BlueZ's Value changes after StartNotify. A read of PROGRESS changes
  Value too, so `read_progress()` also arrives as a notification (BlueZ's doing, not the dispenser's).
"""
import asyncio
import contextlib
import logging
import re
import time

from bleak import BleakAdapter, BleakClient, BleakScanner
from bleak.exc import BleakGATTProtocolError

from firmware.core import water_grants
from simulators import phone_ble
from simulators.phone_ble import (CONNECT_FAILED, CONNECT_TIMEOUT_MS, DISCONNECT_TIMEOUT_MS, LINK_LOST, MAX_NEARBY,
                                  MAX_PROGRESS_QUEUED, NO_ANSWER, NOT_A_DISPENSER, POWER_ON_TIMEOUT_MS,
                                  RADIO_FAILED, REQUEST_TIMEOUT_MS, SCAN_TIMEOUT_MS, FindsDispensers, NearbyDispenser,
                                  PhoneBleError, strongest_first)

logger = logging.getLogger(__name__)

LINK_LOST_GRACE_MS = 300
ATT_DEFAULT_MTU = 23
ATT_UNLIKELY = 0x0E
ADAPTER_NAME = re.compile(r"hci[0-9]{1,3}")
_ADDRESS = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){5}")
_SERVICE_CHARACTERISTICS = (water_grants.CHALLENGE_UUID, water_grants.GRANT_UUID, water_grants.CONTROL_UUID,
                            water_grants.PROGRESS_UUID, water_grants.RECEIPT_UUID)


def _dispenser_in(manufacturer_data):
    """The dispenser id an advertisement's manufacturer data ({company id: bytes}) announces, or None."""
    for company_id, data in manufacturer_data.items():
        dispenser_id = water_grants.dispenser_from_manufacturer_data(company_id, data)
        if dispenser_id is not None:
            return dispenser_id
    return None


class PhoneRadio(FindsDispensers):
    """A phone's Bluetooth LE central through bleak, on one adapter (BlueZ's "hci0", ...; None: the
    first powered one)."""

    def __init__(self, adapter=None):
        if adapter is not None and not ADAPTER_NAME.fullmatch(adapter):
            raise ValueError("蓝牙适配器名称应为 hci0、hci1 …… / an adapter is named hci0, hci1, ..., not %r"
                             % (adapter,))
        self.adapter = adapter
        self._bluez = {"adapter": adapter} if adapter is not None else {}
        self._devices = {}               # address -> the BLEDevice the last scan heard there
        self._links = []
        self._connect_lock = asyncio.Lock()
        self._started = False

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc_info):
        await self.stop()

    async def start(self):
        """Reach the Bluetooth stack (on Linux: BlueZ on the system bus, and a powered adapter when none
        is named); PhoneBleError RADIO_FAILED when it is not there."""
        try:
            await asyncio.wait_for(BleakAdapter.get(bluez=self._bluez), POWER_ON_TIMEOUT_MS / 1000)
        except asyncio.TimeoutError:
            raise PhoneBleError(RADIO_FAILED, detail="no answer from the Bluetooth stack")
        except Exception as error:      # no bus, no BlueZ on it, no adapter: bleak and dbus-fast say which
            raise PhoneBleError(RADIO_FAILED, detail=repr(error))
        self._started = True

    async def stop(self):
        for link in list(self._links):
            await link.disconnect()
        self._started = False

    def _require_started(self):
        if not self._started:
            raise PhoneBleError(RADIO_FAILED, detail="not started")

    async def scan_nearby(self, timeout_ms=SCAN_TIMEOUT_MS, dispenser_id=None):
        """The dispensers heard within `timeout_ms`, strongest first ([] when none). With `dispenser_id`,
        returns as soon as that one is heard."""
        self._require_started()
        found = {}
        devices = {}
        heard = asyncio.Event()

        def on_advertisement(device, advertisement):
            seen = _dispenser_in(advertisement.manufacturer_data)
            if seen is None:
                return
            address = device.address.upper()
            if address in found or len(found) < MAX_NEARBY:
                found[address] = NearbyDispenser(seen, address, advertisement.rssi)
                devices[address] = device
            if dispenser_id is not None and seen == dispenser_id:
                heard.set()

        scanner = BleakScanner(on_advertisement, bluez=self._bluez)
        try:
            await asyncio.wait_for(scanner.start(), REQUEST_TIMEOUT_MS / 1000)
        except asyncio.TimeoutError:
            raise PhoneBleError(RADIO_FAILED, detail="scan did not start")
        except Exception as error:      # the adapter is not there, or not powered
            raise PhoneBleError(RADIO_FAILED, detail=repr(error))
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(heard.wait(), timeout_ms / 1000)
        finally:
            try:
                await asyncio.wait_for(scanner.stop(), REQUEST_TIMEOUT_MS / 1000)
            except Exception:
                logger.warning("could not stop scanning", exc_info=True)
        self._devices = devices
        return strongest_first(found.values(), dispenser_id)

    async def connect(self, address, timeout_ms=CONNECT_TIMEOUT_MS, on_progress=None):
        """A DispenserLink to the dispenser at `address` (a NearbyDispenser's, or a sticker's), its
        service discovered and its progress subscribed. `on_progress(Progress)` is called for each
        notification as well as queueing it."""
        self._require_started()
        if isinstance(address, NearbyDispenser):
            address = address.address
        address = str(address).upper()
        if not _ADDRESS.fullmatch(address):
            raise PhoneBleError(CONNECT_FAILED, detail="bad address %r" % (address,))
        link = DispenserLink(self, address, on_progress)
        link.client = BleakClient(self._devices.get(address, address), disconnected_callback=link._on_disconnected,
                                  timeout=timeout_ms / 1000, bluez=self._bluez)
        started_s = time.perf_counter()
        async with self._connect_lock:
            try:
                await asyncio.wait_for(link.client.connect(), timeout_ms / 1000 + 1)
            except Exception as error:  # not found, refused, timed out: bleak has let the attempt go
                raise PhoneBleError(CONNECT_FAILED, detail=repr(error))
        link.connect_ms = (time.perf_counter() - started_s) * 1000
        try:
            await asyncio.wait_for(link._set_up(), REQUEST_TIMEOUT_MS / 1000 * 3)
        except BaseException as error:
            await link.disconnect()
            if isinstance(error, PhoneBleError):
                raise
            if isinstance(error, asyncio.TimeoutError):
                raise PhoneBleError(NO_ANSWER, detail="service discovery")
            if isinstance(error, Exception):
                raise PhoneBleError(CONNECT_FAILED, detail=repr(error))
            raise
        link.setup_ms = (time.perf_counter() - started_s) * 1000 - link.connect_ms
        self._links.append(link)
        return link


class DispenserLink(phone_ble.DispenserLink):
    """One connection to one dispenser through a BleakClient. The messages (challenge, grant, control,
    progress, receipt) are phone_ble.DispenserLink's; the ATT exchanges under them are bleak's."""

    def __init__(self, radio, address, on_progress=None):   # phone_ble's takes a bumble connection
        self.radio = radio
        self.address = address
        self.client = None
        self.mtu = ATT_DEFAULT_MTU
        self.progress = asyncio.Queue(MAX_PROGRESS_QUEUED)   # water_grants.Progress, oldest dropped when full
        self.lost = asyncio.Event()
        self.disconnect_reason = None                        # bleak does not say why a link ended
        self.connect_ms = self.setup_ms = None
        self._on_progress = on_progress
        self._characteristics = {}

    def _on_disconnected(self, _client):
        self.lost.set()
        if self in self.radio._links:
            self.radio._links.remove(self)

    async def _set_up(self):
        service = self.client.services.get_service(water_grants.SERVICE_UUID)
        if service is None:
            raise PhoneBleError(NOT_A_DISPENSER)
        for uuid in _SERVICE_CHARACTERISTICS:
            characteristic = service.get_characteristic(uuid)
            if characteristic is None:
                raise PhoneBleError(NOT_A_DISPENSER, detail="no characteristic %s" % uuid)
            self._characteristics[uuid.lower()] = characteristic
        progress = self._characteristic(water_grants.PROGRESS_UUID)
        self.mtu = progress.max_write_without_response_size + 3
        await self._request(self.client.start_notify(progress, lambda _sender, data: self._on_notification(data)))

    async def _lost_within(self, grace_ms=LINK_LOST_GRACE_MS):
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.lost.wait(), grace_ms / 1000)
        return self.lost.is_set()

    async def _request(self, coroutine, timeout_ms=REQUEST_TIMEOUT_MS):
        """Await one D-Bus call to BlueZ, bounded; the dispenser's ATT errors and a lost link become
        PhoneBleError."""
        if self.lost.is_set():
            coroutine.close()
            raise PhoneBleError(LINK_LOST)
        try:
            return await asyncio.wait_for(coroutine, timeout_ms / 1000)
        except BleakGATTProtocolError as error:
            code = int(error.code)
            if code == ATT_UNLIKELY and await self._lost_within():
                raise PhoneBleError(LINK_LOST)
            raise PhoneBleError.refused(code)
        except asyncio.TimeoutError:
            raise PhoneBleError(LINK_LOST if self.lost.is_set() else NO_ANSWER)
        except PhoneBleError:
            raise
        except Exception as error:      # bleak's "Not connected", BlueZ's Failed, the bus gone
            if await self._lost_within():
                raise PhoneBleError(LINK_LOST)
            raise PhoneBleError(NO_ANSWER, detail=repr(error))

    async def read(self, uuid, timeout_ms=REQUEST_TIMEOUT_MS):
        """The raw value of one of the service's characteristics."""
        return bytes(await self._request(self.client.read_gatt_char(self._characteristic(uuid)), timeout_ms))

    async def write(self, uuid, value, timeout_ms=REQUEST_TIMEOUT_MS):
        """Write (with response) raw bytes to one of the service's characteristics."""
        await self._request(self.client.write_gatt_char(self._characteristic(uuid), bytes(value), response=True),
                            timeout_ms)

    async def disconnect(self, timeout_ms=DISCONNECT_TIMEOUT_MS):
        """End the connection (no error when it is already gone)."""
        if self in self.radio._links:
            self.radio._links.remove(self)
        if self.lost.is_set() or self.client is None:
            self.lost.set()
            return
        try:
            await asyncio.wait_for(self.client.disconnect(), timeout_ms / 1000)
        except Exception:
            logger.debug("disconnect failed", exc_info=True)
        self.lost.set()
