"""The phone's side of Bluetooth water, on the bumble host stack: scan, connect, challenge, grant, progress,
receipt.

The developer phone simulator (and `ykt phone`) drives a dispenser through this the way the app does
through the phone's Bluetooth: a GATT client of the service in `firmware.core.water_grants`, over any
bumble transport (a `tcp-client:` spec from `simulators/ble_air.py`, an in-process Controller, or a
real adapter such as `usb:0`). Every wait is bounded; what goes wrong comes back as `PhoneBleError`
with a text in Chinese first, then English, and - when the dispenser refused - its REFUSED_* code.

    async with PhoneRadio(spec) as phone:
        nearby = await phone.find(dispenser_id=7)             # or scan_nearby() for all of them
        link = await phone.connect(nearby.address)
        dispenser_id, challenge = await link.read_challenge()
        ...                                                   # the server turns that into a grant
        await link.write_grant(grant_bytes)                   # with the start byte: water flows
        progress = await link.next_progress()                 # water_grants.Progress
        receipt = await link.read_receipt()
        await link.disconnect()

Timeouts are integer milliseconds. A connection asks for an ATT MTU of 247 first, so the 54-byte grant
write and the 46-byte receipt each take one ATT exchange; `mtu=None` keeps the default 23 and bumble then
uses the long write and long read procedures (which the dispenser serves as well).
"""
import asyncio
import collections
import logging
import time

from bumble import att, core, hci
from bumble.core import AdvertisingData
from bumble.device import Connection, Device, Peer

from firmware.apps.dispenser_ble import BleError, close_hci, open_hci
from firmware.core import water_grants

logger = logging.getLogger(__name__)

SCAN_TIMEOUT_MS = 3_000
CONNECT_TIMEOUT_MS = 5_000
REQUEST_TIMEOUT_MS = 5_000
PROGRESS_TIMEOUT_MS = 10_000
POWER_ON_TIMEOUT_MS = 10_000
DISCONNECT_TIMEOUT_MS = 2_000
MTU = 247
MAX_PROGRESS_QUEUED = 64
MAX_NEARBY = 64

NearbyDispenser = collections.namedtuple("NearbyDispenser", ("dispenser_id", "address", "rssi"))

NO_DISPENSER = ("附近没有找到开水机，请靠近后重试", "no water dispenser found nearby: move closer and try again")
CONNECT_FAILED = ("连接开水机失败，请重试", "could not connect to the dispenser: try again")
NOT_A_DISPENSER = ("这台设备不是开水机", "that device is not a water dispenser")
NO_ANSWER = ("开水机无响应，请重试", "the dispenser did not answer in time: try again")
LINK_LOST = ("蓝牙连接已断开", "the Bluetooth link to the dispenser was lost")
BAD_ANSWER = ("开水机返回的数据有误", "the dispenser's answer is malformed")
RADIO_FAILED = ("手机蓝牙不可用", "the phone's Bluetooth is not available")


class PhoneBleError(Exception):
    """What went wrong, in Chinese then English. `code` is the dispenser's REFUSED_* code (or another ATT
    error code) when it refused a request, else None."""

    def __init__(self, texts, code=None, detail=None):
        self.zh, self.en = texts
        self.code = code
        self.detail = detail
        text = "%s / %s" % (self.zh, self.en)
        Exception.__init__(self, text if detail is None else "%s (%s)" % (text, detail))

    @classmethod
    def refused(cls, code):
        texts = water_grants.REFUSAL_TEXTS.get(code)
        if texts is None:
            texts = ("开水机拒绝了请求（错误 0x%02X）" % code, "the dispenser refused the request (ATT error 0x%02X)" % code)
        return cls(texts, code=code)


def _dispenser_in(advertisement):
    """The dispenser id an advertisement announces, or None."""
    try:
        for company_id, data in advertisement.data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA):
            dispenser_id = water_grants.dispenser_from_manufacturer_data(company_id, data)
            if dispenser_id is not None:
                return dispenser_id
    except Exception:   # someone else's malformed advertisement
        return None
    return None


def strongest_first(heard, dispenser_id=None):
    """The dispensers heard, strongest first (then by id); only `dispenser_id`'s when given."""
    nearby = sorted(heard, key=lambda d: (-d.rssi, d.dispenser_id))
    if dispenser_id is not None:
        nearby = [d for d in nearby if d.dispenser_id == dispenser_id]
    return nearby


class FindsDispensers:
    """`find` on top of a radio's `scan_nearby` (bumble's here, bleak's in simulators/phone_bleak.py)."""

    async def find(self, dispenser_id=None, timeout_ms=SCAN_TIMEOUT_MS):
        """The nearby dispenser with that id (or the strongest one heard); PhoneBleError when none is."""
        nearby = await self.scan_nearby(timeout_ms, dispenser_id)
        if not nearby:
            raise PhoneBleError(NO_DISPENSER)
        return nearby[0]


class PhoneRadio(FindsDispensers):
    """A phone's Bluetooth LE central on one bumble transport (spec string or in-process Controller)."""

    def __init__(self, transport, *, address=None, mtu=MTU, name="ykt-phone"):
        self.transport = transport
        self.address = str(address) if address is not None else str(hci.Address.generate_static_address())
        self.mtu = mtu
        self.name = name
        self.device = None
        self._close_transport = None
        self._connect_lock = asyncio.Lock()
        self._links = []

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc_info):
        await self.stop()

    async def start(self):
        try:
            host, self._close_transport = await asyncio.wait_for(open_hci(self.transport), POWER_ON_TIMEOUT_MS / 1000)
        except (BleError, asyncio.TimeoutError) as error:
            raise PhoneBleError(RADIO_FAILED, detail=str(error) or "timeout")
        self.device = Device(name=self.name, address=hci.Address(self.address, hci.Address.RANDOM_DEVICE_ADDRESS),
                             host=host)
        try:
            await asyncio.wait_for(self.device.power_on(), POWER_ON_TIMEOUT_MS / 1000)
        except Exception as error:
            await self.stop()
            raise PhoneBleError(RADIO_FAILED, detail=repr(error))

    async def stop(self):
        for link in list(self._links):
            await link.disconnect()
        device, self.device = self.device, None
        close, self._close_transport = self._close_transport, None
        await close_hci(device, close)

    def _require_device(self):
        if self.device is None:
            raise PhoneBleError(RADIO_FAILED, detail="not started")
        return self.device

    async def scan_nearby(self, timeout_ms=SCAN_TIMEOUT_MS, dispenser_id=None):
        """The dispensers heard within `timeout_ms`, strongest first ([] when none). With `dispenser_id`,
        returns as soon as that one is heard."""
        device = self._require_device()
        found = {}
        heard = asyncio.Event()

        def on_advertisement(advertisement):
            if not advertisement.is_connectable:
                return
            seen = _dispenser_in(advertisement)
            if seen is None:
                return
            address = str(advertisement.address)
            if address in found or len(found) < MAX_NEARBY:
                found[address] = NearbyDispenser(seen, address, advertisement.rssi)
            if dispenser_id is not None and seen == dispenser_id:
                heard.set()

        device.on(Device.EVENT_ADVERTISEMENT, on_advertisement)
        try:
            await asyncio.wait_for(device.start_scanning(active=False, filter_duplicates=False),
                                   REQUEST_TIMEOUT_MS / 1000)
            try:
                await asyncio.wait_for(heard.wait(), timeout_ms / 1000)
            except asyncio.TimeoutError:
                pass
        except asyncio.TimeoutError:
            raise PhoneBleError(RADIO_FAILED, detail="scan did not start")
        finally:
            device.remove_listener(Device.EVENT_ADVERTISEMENT, on_advertisement)
            if device.is_scanning:
                try:
                    await asyncio.wait_for(device.stop_scanning(), REQUEST_TIMEOUT_MS / 1000)
                except Exception:
                    logger.warning("could not stop scanning", exc_info=True)
        return strongest_first(found.values(), dispenser_id)

    async def connect(self, address, timeout_ms=CONNECT_TIMEOUT_MS, on_progress=None):
        """A DispenserLink to the dispenser at `address` (a NearbyDispenser's, or a sticker's), its
        service discovered and its progress subscribed. `on_progress(Progress)` is called for each
        notification as well as queueing it."""
        device = self._require_device()
        if isinstance(address, NearbyDispenser):
            address = address.address
        try:
            peer_address = hci.Address(str(address), hci.Address.RANDOM_DEVICE_ADDRESS)
        except Exception:
            raise PhoneBleError(CONNECT_FAILED, detail="bad address %r" % (address,))
        started_s = time.perf_counter()
        async with self._connect_lock:
            try:
                connection = await asyncio.wait_for(
                    device.connect(peer_address, transport=core.PhysicalTransport.LE, timeout=timeout_ms / 1000),
                    timeout_ms / 1000 + 1)
            except Exception as error:
                raise PhoneBleError(CONNECT_FAILED, detail=repr(error))
        link = DispenserLink(self, connection, on_progress)
        link.connect_ms = (time.perf_counter() - started_s) * 1000
        try:
            await asyncio.wait_for(link._set_up(self.mtu), REQUEST_TIMEOUT_MS / 1000 * 3)
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


class DispenserLink:
    """One connection to one dispenser."""

    def __init__(self, radio, connection, on_progress=None):
        self.radio = radio
        self.connection = connection
        self.address = str(connection.peer_address)
        self.peer = Peer(connection)
        self.mtu = att.ATT_DEFAULT_MTU
        self.progress = asyncio.Queue(MAX_PROGRESS_QUEUED)   # water_grants.Progress, oldest dropped when full
        self.lost = asyncio.Event()
        self.disconnect_reason = None
        self.connect_ms = self.setup_ms = None   # how long the link took to come up, then to be set up
        self._on_progress = on_progress
        self._characteristics = {}
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)

    @property
    def connected(self):
        return not self.lost.is_set()

    def _on_disconnection(self, reason):
        self.disconnect_reason = reason
        self.lost.set()
        if self in self.radio._links:
            self.radio._links.remove(self)

    async def _set_up(self, mtu):
        if mtu is not None:
            self.mtu = await self.peer.request_mtu(mtu)
        services = await self.peer.discover_service(water_grants.SERVICE_UUID)
        if not services:
            raise PhoneBleError(NOT_A_DISPENSER)
        characteristics = await services[0].discover_characteristics()
        for characteristic in characteristics:
            self._characteristics[str(characteristic.uuid).lower()] = characteristic
        for uuid in (water_grants.CHALLENGE_UUID, water_grants.GRANT_UUID, water_grants.CONTROL_UUID,
                     water_grants.PROGRESS_UUID, water_grants.RECEIPT_UUID):
            if uuid.lower() not in self._characteristics:
                raise PhoneBleError(NOT_A_DISPENSER, detail="no characteristic %s" % uuid)
        await self.peer.subscribe(self._characteristic(water_grants.PROGRESS_UUID), self._on_notification)

    def _characteristic(self, uuid):
        return self._characteristics[uuid.lower()]

    def _on_notification(self, value):
        try:
            progress = water_grants.decode_progress(value)
        except water_grants.WaterMessageError:
            logger.warning("malformed progress notification: %s", bytes(value).hex())
            return
        if self.progress.full():
            self.progress.get_nowait()
        self.progress.put_nowait(progress)
        if self._on_progress is not None:
            try:
                self._on_progress(progress)
            except Exception:
                logger.exception("on_progress failed")

    async def _request(self, coroutine, timeout_ms=REQUEST_TIMEOUT_MS):
        """Await one ATT exchange, bounded; ATT errors and a lost link become PhoneBleError."""
        if self.lost.is_set():
            coroutine.close()
            raise PhoneBleError(LINK_LOST)
        try:
            return await asyncio.wait_for(coroutine, timeout_ms / 1000)
        except att.ATT_Error as error:
            raise PhoneBleError.refused(error.error_code)
        except asyncio.CancelledError:
            # bumble cancels the pending response when the link drops; our own cancellation goes on
            if self.lost.is_set() and asyncio.current_task().cancelling() == 0:
                raise PhoneBleError(LINK_LOST)
            raise
        except (asyncio.TimeoutError, core.TimeoutError):
            if self.lost.is_set():
                raise PhoneBleError(LINK_LOST)
            raise PhoneBleError(NO_ANSWER)
        except PhoneBleError:
            raise
        except Exception as error:
            if self.lost.is_set():
                raise PhoneBleError(LINK_LOST)
            raise PhoneBleError(NO_ANSWER, detail=repr(error))

    async def read(self, uuid, timeout_ms=REQUEST_TIMEOUT_MS):
        """The raw value of one of the service's characteristics."""
        return bytes(await self._request(self._characteristic(uuid).read_value(), timeout_ms))

    async def write(self, uuid, value, timeout_ms=REQUEST_TIMEOUT_MS):
        """Write (with response) raw bytes to one of the service's characteristics."""
        await self._request(self._characteristic(uuid).write_value(bytes(value), with_response=True), timeout_ms)

    async def read_challenge(self, timeout_ms=REQUEST_TIMEOUT_MS):
        """(dispenser_id, challenge): a fresh single-use challenge for the server to sign a grant on."""
        value = await self.read(water_grants.CHALLENGE_UUID, timeout_ms)
        try:
            return water_grants.decode_challenge(value)
        except water_grants.WaterMessageError as error:
            raise PhoneBleError(BAD_ANSWER, detail=str(error))

    async def write_grant(self, grant_bytes, start=True, timeout_ms=REQUEST_TIMEOUT_MS):
        """Hand the dispenser the server's grant; with `start`, the start byte follows it in the same write
        so water flows at once. PhoneBleError with the refusal code when the dispenser refuses it."""
        await self.write(water_grants.GRANT_UUID, bytes(grant_bytes) + (bytes([water_grants.CONTROL_START])
                                                                       if start else b""), timeout_ms)

    async def control(self, code, timeout_ms=REQUEST_TIMEOUT_MS):
        """CONTROL_START or CONTROL_END."""
        await self.write(water_grants.CONTROL_UUID, bytes([code]), timeout_ms)

    async def read_progress(self, timeout_ms=REQUEST_TIMEOUT_MS):
        value = await self.read(water_grants.PROGRESS_UUID, timeout_ms)
        try:
            return water_grants.decode_progress(value)
        except water_grants.WaterMessageError as error:
            raise PhoneBleError(BAD_ANSWER, detail=str(error))

    async def next_progress(self, timeout_ms=PROGRESS_TIMEOUT_MS):
        """The next progress notification (a water_grants.Progress)."""
        if not self.progress.empty():
            return self.progress.get_nowait()
        getter = asyncio.ensure_future(self.progress.get())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({getter, lost}, timeout=timeout_ms / 1000,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (getter, lost):
                if not task.done():
                    task.cancel()
        if getter in done:
            return getter.result()
        raise PhoneBleError(LINK_LOST if lost in done else NO_ANSWER, detail="progress")

    async def read_receipt(self, timeout_ms=REQUEST_TIMEOUT_MS):
        """The dispenser's MAC'd receipt of the last session, raw (the phone hands it to the server)."""
        return await self.read(water_grants.RECEIPT_UUID, timeout_ms)

    async def disconnect(self, timeout_ms=DISCONNECT_TIMEOUT_MS):
        """End the connection (no error when it is already gone)."""
        if self in self.radio._links:
            self.radio._links.remove(self)
        if self.lost.is_set():
            return
        try:
            await asyncio.wait_for(self.connection.disconnect(), timeout_ms / 1000)
        except Exception:
            logger.debug("disconnect failed", exc_info=True)
        self.lost.set()
