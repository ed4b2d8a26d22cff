"""The water dispenser's Bluetooth LE radio: a GATT server on the bumble host stack.

A phone finds the dispenser by its advertisement, connects, reads a fresh challenge, writes the grant
the server signed for it, follows the progress notifications and reads the receipt (DESIGN.md section
5; the bytes, UUIDs and refusal codes are `firmware.core.water_grants`). This module is only the radio:
every read and write goes to a `handler` object, which owns the GrantGate and the dispenser's state
machine, so what the valve does never depends on Bluetooth details. bumble is a complete host stack in
Python, so the same code runs on a Raspberry Pi over its HCI socket (`hci-socket:0`) and in tests over
bumble's virtual controllers (`simulators/ble_air.py`: a `tcp-client:` spec, or a Controller object in
the same process).

    radio = DispenserRadio("hci-socket:0", dispenser_id=7, handler=handler)
    async with radio:                       # powers on, advertises, serves until closed
        ...
        await radio.notify_progress(water_grants.encode_progress(...), link)

The handler (its methods may be plain functions or coroutines; `link` is a `Link`, a small hashable
id of one connection, never reused while the radio runs):

    read_challenge(link) -> bytes          CHALLENGE read
    write_grant(link, data)                GRANT write: the 53 grant bytes, or 54 with the start byte
    write_control(link, data)              CONTROL write: CONTROL_START or CONTROL_END
    read_progress(link) -> bytes           PROGRESS read (notifications go through notify_progress)
    read_receipt(link) -> bytes            RECEIPT read
    link_lost(link)                        the connection ended, however it ended

A handler raising `water_grants.WaterMessageError` answers the phone with an ATT error response whose
code is `error.code` (the REFUSED_* application errors 0x80-0x9F), so the phone shows why. Anything
else a handler raises is logged and answered with ATT "unlikely error": the radio keeps serving. A
value longer than MAX_WRITE_BYTES is refused with REFUSED_MALFORMED before the handler sees it.

Bounds, so one phone cannot block the dispenser for the others:
- at most `max_links` connections (3 by default): at the limit the dispenser stops advertising, so
  nobody else can connect, and advertises again as soon as one ends;
- a connection with no ATT traffic for `idle_timeout_ms` (30 s by default) is disconnected by the
  dispenser. Traffic is what the phone sends, plus the progress notified to that link in particular
  (a phone following its own session is not idle; one merely subscribed is);
- a handler gets `handler_timeout_ms` to answer; the read cache and write sizes are bounded.

What bumble needed, and why some of it is here:
- The GRANT write is 54 bytes, above the 20 a write carries at the default ATT MTU of 23. A phone
  should exchange a larger MTU first (bumble's client: `peer.request_mtu(247)`); one that does not
  gets bumble's Write Long procedure (prepare + execute writes), which bumble's server reassembles
  before calling us, so both work. The server offers an MTU of at most MAX_MTU.
- A RECEIPT (46 bytes) read at the default MTU arrives as a Read then Read Blobs, and bumble calls the
  read function again for every blob. Each link keeps the value it read last per characteristic and
  answers a blob at a non-zero offset from it, so the pieces come from one value.
- bumble's server does not check a characteristic's properties on Write Command (write without
  response); none of ours allows it, so such writes are dropped before they reach the handler.
- bumble raises out of its ATT parser on a truncated PDU; a PDU that does not parse is answered with
  ATT "invalid PDU" here instead of unwinding through the host.
- On a Raspberry Pi, `hci-socket:0` is the HCI user channel: the adapter must be down and left alone
  by BlueZ (bluetoothd stopped, or the adapter powered off there), and the process needs CAP_NET_ADMIN.
- Cancelling a bumble call is not reliable on Python 3.11 (asyncio.wait_for, used for every HCI
  command, can swallow the cancellation), so the radio's tasks are stopped by a flag and bounded waits.
- Advertising: flags, the complete local name ADVERT_NAME_PREFIX + id and the manufacturer data
  (MANUFACTURER_ID, advert_manufacturer_data) fill the 31 bytes of a legacy advertisement for a
  10-digit id, so the 128-bit service UUID goes in the scan response. bumble uses extended
  advertising commands with legacy PDUs where the controller has them, and a finished connection
  stops advertising either way; the radio restarts it itself (not bumble's auto_restart) so it can
  hold it off at the connection limit.
"""
import asyncio
import contextvars
import dataclasses
import inspect
import logging
import struct
import time

from bumble import att, gatt, hci
from bumble.core import AdvertisingData, UUID
from bumble.device import Connection, Device
from bumble.host import Host
from bumble.transport import open_transport

from firmware.core import water_grants

logger = logging.getLogger(__name__)

MAX_LINKS = 3
IDLE_TIMEOUT_MS = 30_000
ADVERTISING_INTERVAL_MS = 100      # short: a phone scanning finds the dispenser within a few intervals
MIN_ADVERTISING_INTERVAL_MS = 20   # the Core spec's floor for connectable advertising
MAX_ADVERTISING_INTERVAL_MS = 10_240
HANDLER_TIMEOUT_MS = 5_000
MAX_MTU = 247
DISCONNECT_TIMEOUT_MS = 2_000
POWER_ON_TIMEOUT_MS = 10_000
MAX_ADVERTISING_FAILURES = 20      # consecutive; then the radio reports a fault and stops retrying
MAX_READ_VALUE_BYTES = 512         # what a GATT attribute value may be

_DROPPED_COMMANDS = (att.ATT_Write_Command, att.ATT_Signed_Write_Command)

# The ATT request being served, seen by the characteristic callbacks. bumble serves each request in a
# task of its own created while this is set, and a task keeps the context it was created in, so the
# callbacks see their own request even when several arrive together.
_ATT_REQUEST = contextvars.ContextVar("dispenser_ble_att_request", default=None)


class BleError(Exception):
    """The radio could not start or stopped working; the text is Chinese first, then English."""


@dataclasses.dataclass(frozen=True)
class Link:
    """One connection, as the handler sees it: a serial number and the phone's address."""
    number: int
    address: str


@dataclasses.dataclass
class _LinkState:
    link: Link
    connection: Connection
    last_activity_s: float
    closing: bool = False
    reads: dict = dataclasses.field(default_factory=dict)   # characteristic uuid -> last value read


async def open_hci(transport):
    """A bumble Host on `transport`: a transport spec ("hci-socket:0", "tcp-client:127.0.0.1:P") or a
    bumble Controller object in this process. Returns (host, close) with `close` a coroutine function."""
    if isinstance(transport, str):
        try:
            opened = await open_transport(transport)
        except Exception as error:
            raise BleError("无法打开蓝牙控制器 %s / cannot open the Bluetooth controller %s: %s"
                           % (transport, transport, error))
        return Host(opened.source, opened.sink), opened.close
    if not (hasattr(transport, "on_packet") and hasattr(transport, "set_packet_sink")):
        raise TypeError("transport must be a bumble transport spec or a bumble Controller, not %r" % (transport,))

    async def detach():
        transport.set_packet_sink(None)
    return Host(transport, transport), detach


async def close_hci(device, close):
    """Power `device` off and run `close` (open_hci's), each within DISCONNECT_TIMEOUT_MS; either may
    be None. Never raises: a controller that is gone is what closing is for."""
    if device is not None:
        try:
            await asyncio.wait_for(device.power_off(), DISCONNECT_TIMEOUT_MS / 1000)
        except Exception:
            logger.debug("power off failed", exc_info=True)
    if close is not None:
        try:
            await asyncio.wait_for(close(), DISCONNECT_TIMEOUT_MS / 1000)
        except Exception:
            logger.debug("closing the transport failed", exc_info=True)


def advertising_data(dispenser_id):
    """The advertisement: flags, the complete local name and our manufacturer data (31 bytes at most)."""
    name = (water_grants.ADVERT_NAME_PREFIX + str(dispenser_id)).encode()
    flags = AdvertisingData.LE_GENERAL_DISCOVERABLE_MODE_FLAG | AdvertisingData.BR_EDR_NOT_SUPPORTED_FLAG
    data = bytes(AdvertisingData([
        (AdvertisingData.FLAGS, bytes([flags])),
        (AdvertisingData.COMPLETE_LOCAL_NAME, name),
        (AdvertisingData.MANUFACTURER_SPECIFIC_DATA,
         struct.pack("<H", water_grants.MANUFACTURER_ID) + water_grants.advert_manufacturer_data(dispenser_id)),
    ]))
    assert len(data) <= 31, "legacy advertising data holds 31 bytes"
    return data


def scan_response_data():
    """The scan response: our service's 128-bit UUID, for phones that filter on it (Web Bluetooth)."""
    return bytes(AdvertisingData([
        (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, UUID(water_grants.SERVICE_UUID).to_bytes()),
    ]))


class _RadioDevice(Device):
    """A bumble Device that lets the radio see every ATT PDU a phone sends before bumble serves it."""

    radio = None

    def on_gatt_pdu(self, connection_handle, pdu):
        # bumble's ATT channel hands over the connection handle (Device.on_gatt_pdu looks it up)
        connection = self.lookup_connection(connection_handle)
        if connection is None:
            logger.warning("ATT PDU on unknown connection 0x%04X", connection_handle)
            return
        radio = self.radio
        if radio is not None:
            radio._touch(connection)
        try:
            request = att.ATT_PDU.from_bytes(pdu)
        except Exception:
            self._answer_unparsable(connection, pdu)
            return
        if isinstance(request, _DROPPED_COMMANDS):
            logger.warning("dropped %s from %s: our characteristics take writes with response only",
                           request.name, connection.peer_address)
            return
        token = _ATT_REQUEST.set(request)
        try:
            super().on_gatt_pdu(connection_handle, pdu)
        except Exception:
            # bumble has already answered a request it failed on with "unlikely error"
            logger.exception("ATT %s from %s failed", request.name, connection.peer_address)
        finally:
            _ATT_REQUEST.reset(token)

    def _answer_unparsable(self, connection, pdu):
        pdu = bytes(pdu)
        logger.warning("unparsable ATT PDU from %s: %s", connection.peer_address, pdu[:32].hex())
        if pdu and pdu[0] in att.ATT_REQUESTS and connection.gatt_server is not None:
            connection.gatt_server.send_response(connection, att.ATT_Error_Response(
                request_opcode_in_error=pdu[0], attribute_handle_in_error=0,
                error_code=att.ATT_INVALID_PDU_ERROR))


class DispenserRadio:
    """The dispenser's GATT server and advertiser on one bumble transport (see the module docstring).

    `transport`: a bumble transport spec or an in-process Controller. `dispenser_id`: the u32 id; the
    radio uses the static random address water_grants.static_address(dispenser_id). `handler`: the
    object that answers reads and writes.
    """

    def __init__(self, transport, dispenser_id, handler, *, max_links=MAX_LINKS, idle_timeout_ms=IDLE_TIMEOUT_MS,
                 advertising_interval_ms=ADVERTISING_INTERVAL_MS, handler_timeout_ms=HANDLER_TIMEOUT_MS):
        if type(max_links) is not int or not 1 <= max_links <= 8:
            raise ValueError("max_links must be 1 to 8")
        if type(idle_timeout_ms) is not int or idle_timeout_ms < 100:
            raise ValueError("idle_timeout_ms must be an int of at least 100")
        if (type(advertising_interval_ms) is not int
                or not MIN_ADVERTISING_INTERVAL_MS <= advertising_interval_ms <= MAX_ADVERTISING_INTERVAL_MS):
            raise ValueError("advertising_interval_ms must be %d to %d" % (MIN_ADVERTISING_INTERVAL_MS,
                                                                           MAX_ADVERTISING_INTERVAL_MS))
        if type(handler_timeout_ms) is not int or handler_timeout_ms < 1:
            raise ValueError("handler_timeout_ms must be a positive int")
        self.transport = transport
        self.dispenser_id = dispenser_id
        self.handler = handler
        self.max_links = max_links
        self.idle_timeout_ms = idle_timeout_ms
        self.advertising_interval_ms = advertising_interval_ms
        self.handler_timeout_ms = handler_timeout_ms
        self.address = water_grants.static_address(dispenser_id)
        self.name = water_grants.ADVERT_NAME_PREFIX + str(dispenser_id)
        self.fault = None          # a BleError once advertising could not be restarted
        self.device = None
        self._close_transport = None
        self._loop = None
        self._states = {}          # Connection -> _LinkState
        self._serial = 0
        self._running = False
        self._tasks = []
        self._side_tasks = set()   # disconnections and async link_lost calls under way
        self._advertising_wanted = None
        self._progress = None
        self._advertising_data = advertising_data(dispenser_id)

    # --- life ---------------------------------------------------------------------------------------

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc_info):
        await self.stop()

    async def start(self):
        """Power on, serve the GATT service and advertise. BleError when the controller does not answer."""
        if self.device is not None:
            raise BleError("蓝牙已启动 / the radio is already started")
        self._loop = asyncio.get_running_loop()
        try:
            host, self._close_transport = await asyncio.wait_for(open_hci(self.transport), POWER_ON_TIMEOUT_MS / 1000)
        except asyncio.TimeoutError:
            raise BleError("无法打开蓝牙控制器 / the Bluetooth controller %s did not open in time" % (self.transport,))
        device = _RadioDevice(name=self.name, address=hci.Address(self.address, hci.Address.RANDOM_DEVICE_ADDRESS),
                              host=host)
        device.radio = self
        device.gatt_server.max_mtu = MAX_MTU
        device.add_service(self._service())
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        self.device = device
        try:
            await asyncio.wait_for(device.power_on(), POWER_ON_TIMEOUT_MS / 1000)
        except Exception as error:
            await self._release()
            raise BleError("蓝牙控制器无响应 / the Bluetooth controller did not answer: %r" % (error,))
        self._running = True
        self._advertising_wanted = asyncio.Event()
        self._advertising_wanted.set()
        self._tasks = [asyncio.create_task(self._keep_advertising(), name="dispenser-ble-advertising"),
                       asyncio.create_task(self._watch_idle(), name="dispenser-ble-idle")]
        logger.info("dispenser %s advertising as %s at %s", self.dispenser_id, self.name, self.address)

    async def stop(self):
        """Stop advertising, end every connection (the handler hears link_lost) and release the controller.
        Bounded: a controller that no longer answers costs a few seconds, not a hang."""
        if self.device is None:
            return
        # The keeper is asked to stop, not only cancelled: on Python 3.11 asyncio.wait_for (which bumble
        # uses for every HCI command) can swallow a cancellation that lands as its answer arrives, and
        # with a virtual controller the answer is always about to arrive.
        self._running = False
        self._advertising_wanted.set()      # the keeper stops advertising and returns
        (keeper, watcher), self._tasks = self._tasks, []
        watcher.cancel()
        _done, pending = await asyncio.wait([keeper, watcher], timeout=DISCONNECT_TIMEOUT_MS / 1000)
        for task in pending:
            task.cancel()
        states = list(self._states.values())
        await asyncio.gather(*(self._disconnect(state, hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR)
                               for state in states))
        for state in list(self._states.values()):   # the controller did not confirm: the link is gone for us
            self._forget(state.connection)
        if self._side_tasks:
            await asyncio.wait(list(self._side_tasks), timeout=self.handler_timeout_ms / 1000)
        await self._release()

    async def _release(self):
        device, self.device = self.device, None
        if device is not None:
            device.radio = None
        close, self._close_transport = self._close_transport, None
        await close_hci(device, close)

    @property
    def links(self):
        """The links connected now."""
        return tuple(state.link for state in self._states.values())

    # --- the GATT service ---------------------------------------------------------------------------

    def _service(self):
        props, perms = gatt.Characteristic.Properties, gatt.Characteristic.Permissions

        def readable(uuid, method, notify=False):
            return gatt.Characteristic(uuid, props.READ | (props.NOTIFY if notify else 0), perms.READABLE,
                                       gatt.CharacteristicValue(read=self._reader(uuid, method)))

        def writable(uuid, method):
            return gatt.Characteristic(uuid, props.WRITE, perms.WRITEABLE,
                                       gatt.CharacteristicValue(write=self._writer(method)))

        self._progress = readable(water_grants.PROGRESS_UUID, "read_progress", notify=True)
        return gatt.Service(water_grants.SERVICE_UUID, [
            readable(water_grants.CHALLENGE_UUID, "read_challenge"),
            writable(water_grants.GRANT_UUID, "write_grant"),
            writable(water_grants.CONTROL_UUID, "write_control"),
            self._progress,
            readable(water_grants.RECEIPT_UUID, "read_receipt"),
        ])

    def _state_for(self, connection):
        state = self._states.get(connection)
        if state is None or state.closing:
            raise att.ATT_Error(att.ATT_INSUFFICIENT_RESOURCES_ERROR)
        return state

    def _reader(self, uuid, method):
        async def read(connection):
            state = self._state_for(connection)
            request = _ATT_REQUEST.get()
            if isinstance(request, att.ATT_Read_Blob_Request) and request.value_offset > 0:
                cached = state.reads.get(uuid)
                if cached is not None:
                    return cached
            value = await self._call(method, state.link)
            if not isinstance(value, (bytes, bytearray)) or len(value) > MAX_READ_VALUE_BYTES:
                logger.error("handler.%s returned %r, not bytes", method, type(value))
                raise att.ATT_Error(att.ATT_UNLIKELY_ERROR_ERROR)
            value = bytes(value)
            state.reads[uuid] = value
            return value
        return read

    def _writer(self, method):
        async def write(connection, value):
            state = self._state_for(connection)
            if isinstance(_ATT_REQUEST.get(), _DROPPED_COMMANDS):
                return
            if len(value) > water_grants.MAX_WRITE_BYTES:
                logger.info("%s: %d bytes written to %s: refused", state.link, len(value), method)
                raise att.ATT_Error(water_grants.REFUSED_MALFORMED)
            await self._call(method, state.link, bytes(value))
        return write

    async def _call(self, method, *args):
        """The handler's answer; its refusals become ATT errors carrying the refusal code."""
        try:
            result = getattr(self.handler, method)(*args)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.handler_timeout_ms / 1000)
            return result
        except water_grants.WaterMessageError as error:
            code = error.code
            if type(code) is not int or not 0x80 <= code <= 0x9F:
                logger.error("handler.%s refused with code %r, not an application error", method, code)
                code = att.ATT_UNLIKELY_ERROR_ERROR
            logger.info("%s refused %s: 0x%02X %s", args[0], method, code, error)
            raise att.ATT_Error(code)
        except asyncio.TimeoutError:
            logger.error("handler.%s did not answer within %d ms", method, self.handler_timeout_ms)
            raise att.ATT_Error(att.ATT_UNLIKELY_ERROR_ERROR)
        except Exception:
            logger.exception("handler.%s failed", method)
            raise att.ATT_Error(att.ATT_UNLIKELY_ERROR_ERROR)

    # --- progress -----------------------------------------------------------------------------------

    async def notify_progress(self, data, link=None):
        """Notify PROGRESS `data` to `link` (which counts as that link's activity), or with no link to
        every subscriber. Returns whether anything was sent towards a subscriber."""
        data = bytes(data)
        if len(data) > att.ATT_DEFAULT_MTU - 3:
            raise ValueError("a progress note must fit one notification at the default MTU")
        if self.device is None or not self._running:
            return False
        if link is None:
            await self.device.notify_subscribers(self._progress, data)
            return bool(self._states)
        for state in list(self._states.values()):
            if state.link == link and not state.closing:
                state.last_activity_s = time.monotonic()
                await self.device.notify_subscriber(state.connection, self._progress, data)
                return True
        return False

    def notify_progress_threadsafe(self, data, link=None):
        """notify_progress from another thread (a meter loop, say): a concurrent.futures.Future."""
        if self._loop is None:
            raise BleError("蓝牙未启动 / the radio is not started")
        return asyncio.run_coroutine_threadsafe(self.notify_progress(data, link), self._loop)

    # --- connections --------------------------------------------------------------------------------

    def _touch(self, connection):
        state = self._states.get(connection)
        if state is not None:
            state.last_activity_s = time.monotonic()

    def _on_connection(self, connection):
        if connection.transport != hci.PhysicalTransport.LE or connection.role != hci.Role.PERIPHERAL:
            return
        if not self._running or len(self._states) >= self.max_links:
            logger.warning("connection from %s over the limit of %d: refused", connection.peer_address,
                           self.max_links)
            self._spawn(self._drop(connection))
            return
        self._serial += 1
        state = _LinkState(Link(self._serial, str(connection.peer_address)), connection, time.monotonic())
        self._states[connection] = state
        connection.on(Connection.EVENT_DISCONNECTION, lambda reason: self._on_disconnection(connection, reason))
        logger.info("%s connected", state.link)
        self._advertising_wanted.set()

    async def _drop(self, connection):
        try:
            await asyncio.wait_for(
                connection.disconnect(hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_LOW_RESOURCES_ERROR),
                DISCONNECT_TIMEOUT_MS / 1000)
        except Exception:
            logger.debug("could not drop %s", connection.peer_address, exc_info=True)

    def _on_disconnection(self, connection, reason):
        state = self._states.get(connection)
        if state is not None:
            logger.info("%s disconnected (reason 0x%02X)", state.link, reason)
        self._forget(connection)

    def _forget(self, connection):
        state = self._states.pop(connection, None)
        if state is None:
            return
        if self._advertising_wanted is not None:
            self._advertising_wanted.set()
        try:
            result = self.handler.link_lost(state.link)
            if inspect.isawaitable(result):
                self._spawn(self._await_link_lost(result))
        except Exception:
            logger.exception("handler.link_lost failed")

    async def _await_link_lost(self, result):
        try:
            await asyncio.wait_for(result, self.handler_timeout_ms / 1000)
        except Exception:
            logger.exception("handler.link_lost failed")

    def _spawn(self, coroutine):
        """Run a short task, keeping a reference to it (asyncio holds tasks weakly)."""
        task = asyncio.ensure_future(coroutine)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return task

    async def _disconnect(self, state, reason):
        state.closing = True
        try:
            await asyncio.wait_for(state.connection.disconnect(reason), DISCONNECT_TIMEOUT_MS / 1000)
        except Exception:
            logger.debug("disconnecting %s failed", state.link, exc_info=True)

    async def _watch_idle(self):
        period_s = min(max(self.idle_timeout_ms / 4000, 0.05), 1.0)
        while self._running:
            await asyncio.sleep(period_s)
            now_s = time.monotonic()
            for state in list(self._states.values()):
                if not state.closing and (now_s - state.last_activity_s) * 1000 >= self.idle_timeout_ms:
                    logger.info("%s idle for %d ms: disconnecting", state.link, self.idle_timeout_ms)
                    self._spawn(self._disconnect(state, hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR))

    async def _keep_advertising(self):
        """Advertise whenever the radio runs below the connection limit, until it stops (then stop
        advertising and return); retry a failure a bounded number of times, then record the fault."""
        failures = 0
        while True:
            await self._advertising_wanted.wait()
            self._advertising_wanted.clear()
            running = self._running
            want = running and len(self._states) < self.max_links
            try:
                if want and not self.device.is_advertising:
                    await self.device.start_advertising(
                        advertising_data=self._advertising_data, scan_response_data=scan_response_data(),
                        advertising_interval_min=self.advertising_interval_ms,
                        advertising_interval_max=self.advertising_interval_ms, auto_restart=False)
                elif not want and self.device.is_advertising:
                    await self.device.stop_advertising()
                failures = 0
            except Exception as error:
                failures += 1
                logger.warning("advertising change failed (%d): %r", failures, error)
                if failures >= MAX_ADVERTISING_FAILURES:
                    self.fault = BleError("蓝牙广播失败 / advertising failed %d times: %r" % (failures, error))
                    logger.error("%s", self.fault)
                    return
                if running:
                    await asyncio.sleep(min(0.1 * 2 ** failures, 5.0))
                self._advertising_wanted.set()
                continue
            if not running:
                return
