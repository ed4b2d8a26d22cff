"""The air between phones and water dispensers: bumble virtual Bluetooth LE controllers on one link.

Tests and the demo need real Bluetooth LE without a radio: bumble's `Controller` is a software LE
controller that speaks HCI to a host stack above it, and a `LocalLink` carries advertisements,
connections and ATT traffic between the controllers attached to it. Everything above the HCI line
(the dispenser's GATT server, the phone's GATT client) is then the same bumble host code that runs on
a Raspberry Pi over `hci-socket:0`.

Two ways to use it:

    async with LocalAir(2) as air:          # one process: hand the controllers out directly
        DispenserRadio(air.controllers[0], ...); PhoneRadio(air.controllers[1])

    async with Air(2) as air:               # several processes: each controller is an HCI
        air.transport_specs                 # transport over TCP, ["tcp-client:127.0.0.1:P", ...]

and from a shell (what a test starts as a subprocess):

    python -m simulators.ble_air --controllers 2
    {"transports": ["tcp-client:127.0.0.1:41733", "tcp-client:127.0.0.1:39251"]}

The TCP side speaks what bumble's `tcp-server:` transport speaks (H4 HCI packets on a stream, the
format bumble's apps/controllers.py serves), so any bumble host connects with `tcp-client:HOST:PORT`.
It is served here by a small protocol of our own rather than bumble's `tcp-server` transport for two
reasons: bumble's accepts any number of clients onto one controller and interleaves them, and it says
nothing when its host goes away. Here a port takes one host at a time (a second is closed at once), and
a host that vanishes - its process killed, its socket closed - looks to the other side of each of its
connections like a supervision timeout (HCI reason 0x08), which is what a phone walking out of range
looks like to a real dispenser. The controller is then left quiet (no connections, advertising or
scanning) for the next host. Ports are bound on loopback only, to port 0 so the kernel picks free ones.
"""
import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import socket
import sys

from bumble import hci, ll
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport.common import PacketParser

logger = logging.getLogger(__name__)

MAX_CONTROLLERS = 64
DEFAULT_HOST = "127.0.0.1"


def _check_loopback(host):
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError("只能监听本机回环地址 / loopback addresses only, not %r" % (host,))


def _check_count(count):
    if type(count) is not int or not 1 <= count <= MAX_CONTROLLERS:
        raise ValueError("控制器数量应为1到%d / controllers must be 1 to %d, not %r"
                         % (MAX_CONTROLLERS, MAX_CONTROLLERS, count))


def lose_host(controller, reason=hci.HCI_CONNECTION_TIMEOUT_ERROR):
    """Every LE connection of `controller` ends, on both sides, with `reason` (a supervision timeout by
    default), and the controller stops advertising and scanning: what a radio going out of range, or a
    host vanishing, looks like. Its own host (if any is left) hears the disconnection too."""
    for connection in list(controller.le_connections.values()):
        try:
            connection.send_ll_control_pdu(ll.TerminateInd(reason))
        except Exception:  # the peer may already be gone from the link
            logger.debug("peer of %s already gone", connection.peer_address)
        controller.on_le_disconnected(connection, reason)
    controller.le_legacy_advertiser.stop()
    for advertising_set in controller.advertising_sets.values():
        advertising_set.stop()
    controller.advertising_sets.clear()
    controller.le_scan_enable = False


class AirController(Controller):
    """bumble's virtual controller, with LE Create Connection Cancel doing what the Core spec asks
    (Vol 4, Part E, 7.8.13): bumble's answers "success" but keeps the connection pending and never
    reports its end, so a phone whose connect timed out would connect later, unasked, the moment the
    dispenser advertised again. Here the pending connection is dropped and the host hears an LE
    Connection Complete with status Unknown Connection Identifier, as from a real controller."""

    def on_hci_le_create_connection_cancel_command(self, command):
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        event = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, connection_handle=0, role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address_type, peer_address=pending.peer_address, connection_interval=0,
            peripheral_latency=0, supervision_timeout=0, central_clock_accuracy=0)
        # after the Command Complete the caller sends once this returns (send_hci_packet queues in order)
        asyncio.get_running_loop().call_soon(self.send_hci_packet, event)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)


def _no_delay(transport):
    """HCI packets are small and answered one by one: Nagle's algorithm against the peer's delayed ACK
    would add ~40 ms to every ATT round trip."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _AirBase:
    """N controllers on one LocalLink; subclasses decide how hosts reach them."""

    def __init__(self, count):
        _check_count(count)
        self.count = count
        self.link = None
        self.controllers = []

    def _new_controller(self, index):
        # Distinct public addresses keep the link's address lookups unambiguous.
        return AirController("C%d" % index, link=self.link, public_address="F0:00:00:00:%02X:%02X" % (index >> 8,
                                                                                                   index & 0xFF))

    async def __aenter__(self):
        self.link = LocalLink()
        try:
            for index in range(self.count):
                self.controllers.append(self._new_controller(index))
                await self._attach(index, self.controllers[-1])
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info):
        await self.close()

    async def _attach(self, index, controller):
        pass

    def lose(self, index, reason=hci.HCI_CONNECTION_TIMEOUT_ERROR):
        """Make controller `index`'s links drop as if its radio went out of range."""
        lose_host(self.controllers[index], reason)

    async def close(self):
        for controller in self.controllers:
            lose_host(controller, hci.HCI_REMOTE_DEVICE_TERMINATED_CONNECTION_DUE_TO_POWER_OFF_ERROR)
            if self.link is not None and controller in self.link.controllers:
                self.link.remove_controller(controller)
        self.controllers = []


class LocalAir(_AirBase):
    """Controllers for hosts in this process: `air.controllers[i]` is what a radio is built from."""


class _Port(asyncio.Protocol):
    """One accepted TCP client of a controller's port."""

    def __init__(self, owner):
        self._owner = owner
        self._transport = None
        self._parser = None

    def connection_made(self, transport):
        self._transport = transport
        if self._owner.client is not None:
            logger.warning("controller %s already has a host: refusing a second one", self._owner.controller.name)
            transport.close()
            return
        self._owner.client = transport
        _no_delay(transport)
        # A fresh parser per host: a host killed mid-packet must not garble the next one.
        self._parser = PacketParser(self._owner.controller)

    def data_received(self, data):
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except Exception:
            logger.exception("bad HCI bytes from the host of %s: closing it", self._owner.controller.name)
            self._transport.close()

    def connection_lost(self, exc):
        if self._owner.client is self._transport and self._parser is not None:
            self._owner.client = None
            logger.info("host of %s went away", self._owner.controller.name)
            lose_host(self._owner.controller)


class _ControllerPort:
    """The controller's HCI sink towards whichever host is connected (packets are dropped with none)."""

    def __init__(self, controller):
        self.controller = controller
        self.client = None
        self.server = None
        self.port = None
        controller.host = self

    def on_packet(self, packet):
        if self.client is not None and not self.client.is_closing():
            self.client.write(packet)


class Air(_AirBase):
    """Controllers served as HCI transports over loopback TCP: `air.transport_specs[i]` is the bumble
    transport a host in any process opens (`tcp-client:127.0.0.1:PORT`)."""

    def __init__(self, count, host=DEFAULT_HOST):
        _check_loopback(host)
        super().__init__(count)
        self.host = host
        self._ports = []

    async def _attach(self, index, controller):
        port = _ControllerPort(controller)
        self._ports.append(port)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((self.host, 0))
            sock.listen(4)
            sock.setblocking(False)
            port.server = await asyncio.get_running_loop().create_server(lambda: _Port(port), sock=sock)
        except BaseException:
            sock.close()
            raise
        port.port = sock.getsockname()[1]

    @property
    def ports(self):
        return [port.port for port in self._ports]

    @property
    def transport_specs(self):
        # bumble splits the spec at its last colon, so an IPv6 host goes in bare ("tcp-client:::1:PORT")
        return ["tcp-client:%s:%d" % (self.host, port.port) for port in self._ports]

    async def close(self):
        for port in self._ports:
            if port.server is not None:
                port.server.close()
            if port.client is not None:
                port.client.close()
                port.client = None
        for port in self._ports:
            if port.server is not None:
                await port.server.wait_closed()
        self._ports = []
        await super().close()


async def _serve(count, host, out):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Air(count, host) as air:
        out.write(json.dumps({"transports": air.transport_specs}) + "\n")
        out.flush()
        await stop.wait()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m simulators.ble_air",
        description="蓝牙低功耗虚拟空口：在同一条虚拟链路上运行N个bumble虚拟控制器，每个以TCP上的HCI传输提供给其他进程。"
                    " / The Bluetooth LE air for tests: N bumble virtual controllers on one link, each served to "
                    "other processes as an HCI transport over loopback TCP. Prints one JSON line "
                    '{"transports": ["tcp-client:127.0.0.1:PORT", ...]} once listening, then runs until '
                    "SIGTERM or Ctrl-C. A host opens its controller with bumble's transport spec from that list "
                    "(one host per controller at a time); a host that disconnects looks like a supervision "
                    "timeout to its peers.",
        epilog="示例 / example:  python -m simulators.ble_air --controllers 2  ->  "
               '{"transports": ["tcp-client:127.0.0.1:41733", "tcp-client:127.0.0.1:39251"]}; then '
               'DispenserRadio("tcp-client:127.0.0.1:41733", 7, handler) in one process and '
               'PhoneRadio("tcp-client:127.0.0.1:39251") in another.')
    parser.add_argument("--controllers", type=int, default=2, metavar="N",
                        help="how many controllers to put on the link (1-%d, default 2) / 控制器数量" % MAX_CONTROLLERS)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="loopback address to listen on (default 127.0.0.1) / 监听的回环地址")
    parser.add_argument("--verbose", action="store_true", help="log the air's events to stderr / 输出日志")
    options = parser.parse_args(argv)
    try:
        _check_count(options.controllers)
        _check_loopback(options.host)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=logging.INFO if options.verbose else logging.WARNING, stream=sys.stderr)
    return asyncio.run(_serve(options.controllers, options.host, sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
