"""Tell systemd how the terminal's supervisor is doing (sd_notify(3)): READY=1 once the first firmware
is started, WATCHDOG=1 while its watch loop runs, STATUS= a line for `systemctl status`. The terminal
under the supervisor speaks the same protocol one level down: the supervisor gives it NOTIFY_SOCKET
and WATCHDOG_USEC for a socket of its own (firmware/apps/slots.py, Heartbeats), and the shell's serve
loop sends WATCHDOG=1 through this class.

The service unit that tools/flash.py installs is Type=notify with WatchdogSec=: if the supervisor
hangs (a stuck filesystem, a deadlock) and stops pinging, systemd kills and restarts it, the one
failure Restart=always alone cannot see. Outside systemd $NOTIFY_SOCKET is unset and every call does
nothing, so the same supervisor runs by hand, in tests and in the demo. Standard library only: the
messages are single datagrams on a unix socket (a leading "@" names one in the abstract namespace).
"""
import os
import socket
import time


class Notifier:
    def __init__(self, environ=None, clock=time.monotonic):
        environ = os.environ if environ is None else environ
        self.address = environ.get("NOTIFY_SOCKET") or None
        if self.address is not None and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]
        self.watchdog_s = _watchdog_s(environ)
        self.clock = clock
        self.ready_sent = False
        self.last_ping_s = None

    def send(self, message):
        """One datagram; False when there is nobody to tell, the socket is gone or its queue is full
        (never raises, never waits: the terminal must run whether or not anyone listens)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect(self.address)
                sock.sendall(message.encode("utf-8"))
            return True
        except OSError:
            return False

    def ready(self, status=None):
        """READY=1 the first time (with a STATUS line); later calls only update the status."""
        lines = [] if self.ready_sent else ["READY=1"]
        if status:
            lines.append("STATUS=" + status.replace("\n", " "))
        self.ready_sent = True
        if lines:
            self.send("\n".join(lines))

    def alive(self):
        """WATCHDOG=1 when half the watchdog period has passed since the last one (systemd's advice:
        ping at half the interval); nothing when no watchdog was asked for."""
        if self.watchdog_s is None:
            return
        now_s = self.clock()
        if self.last_ping_s is None or now_s - self.last_ping_s >= self.watchdog_s / 2:
            self.last_ping_s = now_s
            self.send("WATCHDOG=1")


def _watchdog_s(environ):
    """The watchdog period in seconds, or None: unset, malformed, or meant for another process (a
    child inherits the variables; WATCHDOG_PID says whose they are)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6
