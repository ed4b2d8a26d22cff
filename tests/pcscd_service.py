"""Start the real pcscd with Debian's vpcd reader driver for tests, and stop it afterwards.

    with running_pcscd(workdir) as service:      # PcscdService(port, readers, log_path)
        slot = VpcdCard(service.port)            # the first vpcd reader; service.port + 1 is the second
        reader = open_reader("pcsc:" + service.readers[0])

pcscd gets a reader.conf.d of its own (`pcscd --config DIR`) in which vpcd listens on a free pair of
ports (vpcd opens two reader slots, on CHANNELID and CHANNELID + 1), so a vpcd configured elsewhere on
the machine is never touched. pcscd 1.9 keeps its socket and pid file in /run/pcscd whatever the
configuration, so only one pcscd can run at a time: when another one already runs, the tests fail and
say so rather than talk to a daemon whose readers they do not know. YKT_PCSCD_APDU_LOG=1 makes pcscd
log every APDU to pcscd.log in the test's directory (keys included: for test keys only).

`make test` installs pcscd, vsmartcard-vpcd and pyscard; without them these tests fail with the
command that installs them (they are never skipped: CI must run them).
"""
import contextlib
import fcntl
import os
import random
import signal
import socket
import subprocess
import time

PCSCD = "/usr/sbin/pcscd"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
PID_FILE = "/run/pcscd/pcscd.pid"
STARTUP_DEADLINE_S = 20   # a deadline to give up waiting, not a performance assertion
LOCK_PATH = "/tmp/ykt-tests-pcscd.lock"
LOCK_DEADLINE_S = 900     # another worker's pcsc tests of one file take well under a minute
READER_PREFIX = "Virtual PCD"


class PcscdUnavailable(RuntimeError):
    pass


class PcscdService:
    def __init__(self, process, port, readers, log_path):
        self.process = process
        self.port = port
        self.readers = readers
        self.log_path = log_path

    def log_tail(self, lines=40):
        with open(self.log_path, "r", errors="replace") as stream:
            return "".join(stream.readlines()[-lines:])


def _require_installed():
    missing = [path for path in (PCSCD, VPCD_DRIVER) if not os.path.exists(path)]
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        missing.append("pyscard (Python package)")
    if missing:
        raise PcscdUnavailable("缺少 PC/SC 组件 / missing %s: run `make test` (it installs pcscd, vsmartcard-vpcd, "
                               "libpcsclite-dev, swig and pyscard)" % ", ".join(missing))
    if os.geteuid() != 0:
        raise PcscdUnavailable("pcscd keeps its socket in /run/pcscd: the PC/SC tests must run as root")


def _running_pcscd_pid():
    try:
        with open(PID_FILE) as stream:
            pid = int(stream.read().strip("\0\n ") or 0)   # pcscd ends the file with a NUL
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _port_pair_free(port):
    for candidate in (port, port + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("0.0.0.0", candidate))
            except OSError:
                return False
    return True


def free_port_pair(rng=None, attempts=50):
    rng = rng or random.Random()
    for _ in range(attempts):
        port = rng.randrange(20000, 60000)
        if _port_pair_free(port):
            return port
    raise PcscdUnavailable("no free pair of TCP ports for vpcd")


def _write_config(config_dir, port):
    os.makedirs(config_dir, exist_ok=True)
    # Same entry as Debian's /etc/reader.conf.d/vpcd, on our port: "/dev/null:PORT" makes vpcd listen.
    with open(os.path.join(config_dir, "vpcd"), "w") as stream:
        stream.write('FRIENDLYNAME "%s"\nDEVICENAME   /dev/null:%d\nLIBPATH      %s\nCHANNELID    %d\n'
                     % (READER_PREFIX, port, VPCD_DRIVER, port))


def _list_readers():
    from smartcard import scard
    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if result != scard.SCARD_S_SUCCESS:
        return []
    try:
        result, readers = scard.SCardListReaders(context, [])
        return list(readers) if result == scard.SCARD_S_SUCCESS else []
    finally:
        scard.SCardReleaseContext(context)


def _wait_for_readers(process, deadline):
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        readers = [name for name in _list_readers() if name.startswith(READER_PREFIX)]
        if len(readers) >= 2:
            return sorted(readers)
        time.sleep(0.05)
    return None


def _stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def _one_at_a_time():
    """Only one pcscd can run on the machine: `make test` runs test files on two workers at once
    (pytest-xdist), so a rig waits here, bounded, while another worker's rig has pcscd."""
    descriptor = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_DEADLINE_S
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PcscdUnavailable("等待 pcscd 超时 / another test run held pcscd for %d s (%s)"
                                           % (LOCK_DEADLINE_S, LOCK_PATH))
                time.sleep(0.1)
        yield
    finally:
        os.close(descriptor)            # closing it lets go of the lock


@contextlib.contextmanager
def running_pcscd(workdir):
    """pcscd in the foreground with our vpcd configuration; stopped (SIGTERM) on exit."""
    _require_installed()
    with _one_at_a_time():
        with _running_pcscd(workdir) as service:
            yield service


@contextlib.contextmanager
def _running_pcscd(workdir):
    other = _running_pcscd_pid()
    if other is not None:
        raise PcscdUnavailable("另一个 pcscd 正在运行 / another pcscd is already running (pid %d); stop it "
                               "(e.g. `kill %d`) so the tests can start their own with a vpcd reader" % (other, other))
    port = free_port_pair()
    config_dir = os.path.join(str(workdir), "reader.conf.d")
    _write_config(config_dir, port)
    log_path = os.path.join(str(workdir), "pcscd.log")
    with open(log_path, "wb") as log:
        # --auto-exit: should this test process die without stopping it, pcscd leaves by itself
        # once no client has been connected for 60 s.
        command = [PCSCD, "--foreground", "--auto-exit", "--config", config_dir]
        if os.environ.get("YKT_PCSCD_APDU_LOG") == "1":
            # Off unless asked for: the APDU log holds every key loaded into the reader (FF 82).
            command.append("--apdu")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        readers = _wait_for_readers(process, time.monotonic() + STARTUP_DEADLINE_S)
        if readers is None:
            with open(log_path, "r", errors="replace") as stream:
                tail = stream.read()[-3000:]
            raise PcscdUnavailable("pcscd 未能启动 / pcscd did not come up with the vpcd readers (exit code %s); "
                                   "its log:\n%s" % (process.poll(), tail))
        yield PcscdService(process, port, readers, log_path)
    finally:
        _stop(process)


def wait_for_card(reader_name, present, deadline_s=STARTUP_DEADLINE_S):
    """Block until pcscd reports a card in `reader_name` (present=True) or none (False); True if it did."""
    from smartcard import scard
    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert result == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(result)
    try:
        deadline = time.monotonic() + deadline_s
        known_state = scard.SCARD_STATE_UNAWARE
        while True:
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            wait_ms = 0 if known_state == scard.SCARD_STATE_UNAWARE else min(remaining_ms, 1000)
            result, states = scard.SCardGetStatusChange(context, wait_ms, [(reader_name, known_state)])
            if result == scard.SCARD_S_SUCCESS:
                known_state = states[0][1] & ~scard.SCARD_STATE_CHANGED
                if bool(known_state & scard.SCARD_STATE_PRESENT) == present:
                    return True
            elif result != scard.SCARD_E_TIMEOUT:
                raise PcscdUnavailable("pcscd: %s" % scard.SCardGetErrorMessage(result))
            if remaining_ms == 0:
                return False
    finally:
        scard.SCardReleaseContext(context)
