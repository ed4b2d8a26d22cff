"""A/B firmware slots on a terminal, and the supervisor that starts the terminal from the active one
and rolls a bad update back by itself.

    <root>/a/, <root>/b/      two copies of the firmware (the packages of a bundle, bundles.py)
    <root>/state.json         {"active": "a", "version": "1.2.0", "trial": null, "history": [...]}

`install(bundle)` verifies the bundle against the running version, unpacks it into the inactive slot
(emptied first) and makes it active *on trial*: state.json names the slot it came from. The trial's
time (`trial_s`, 300 s by default) runs from the new version's first start. The
supervisor (`python -m firmware.apps.slots --root R --data-dir D -- terminal ...`, what the systemd
unit runs) then starts `ykt` from the active slot and watches the trial:

  - the new version syncs with the server (the shell touches <data-dir>/synced after each answered
    sync; its time must pass the trial's start): confirmed, the trial ends;
  - it exits with an error, or is still running without a sync when `--trial-s` has passed: the
    supervisor stops it, makes the previous slot active again (rolled back, with the reason in the
    history) and starts that.

The journal lives in the data directory, never in a slot, and every version opens it the same way,
so an update or a rollback loses nothing journaled: records made on trial are uploaded by whichever
version runs next. A confirmed version that crashes is restarted (with a growing pause), not rolled
back: rollback is for a version that never proved itself. state.json is replaced atomically (written,
flushed, renamed, the directory flushed), so a power cut leaves the old state or the new, never half.

The supervisor also watches that the terminal is alive, not only running: it gives the terminal
sd_notify's variables for a socket of its own (NOTIFY_SOCKET, WATCHDOG_USEC for `--hang-s`), and the
shell sends WATCHDOG=1 as its serve loop goes round (terminal_shell.py). A terminal silent for longer
(a deadlock, a driver stuck in a read) gets SIGABRT, which with faulthandler on writes every thread's
stack to the log, and is then counted as a crash: restarted, or rolled back on trial. Only datagrams
whose kernel-given sender is the terminal's process count. systemd in turn watches the supervisor.
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from firmware.apps import bundles, systemd_notify
from firmware.apps.sync_client import FIRMWARE_VERSION_ENV

SYNC_MARK_ENV = "YKT_SYNC_MARK"      # a file the shell touches after every answered sync
SLOTS_ROOT_ENV = "YKT_SLOTS_ROOT"    # where the supervisor keeps the slots (an update goes there)
TRIAL_ENV = "YKT_TRIAL_S"            # how long an update taken through sync has to reach the server
SLOTS = ("a", "b")
STATE_MODE = 0o644
STATE_FILE = "state.json"
SYNC_MARK = "synced"               # in the data directory: touched by the shell after an answered sync
DEFAULT_TRIAL_S = 300
MAX_HISTORY = 50
RESTART_PAUSES_S = (1, 2, 5, 10, 30)
DEFAULT_HANG_S = 120                 # a terminal whose serve loop is silent this long is hung
MAX_SECONDS = 7 * 24 * 3600           # --trial-s and --hang-s at most a week
ABORT_WAIT_S = 10                    # after SIGABRT, for the stacks to be written, before SIGKILL


def mark_synced():
    """Tell the supervisor this version reached the server: it confirms an update on trial. (The
    shell calls this; outside a supervisor the variable is unset and nothing is written.)"""
    path = os.environ.get(SYNC_MARK_ENV)
    if path:
        with open(path, "a"):
            pass
        os.utime(path)


def _now_ms():
    return int(time.time() * 1000)


class Slots:
    def __init__(self, root):
        self.root = os.path.abspath(root)

    # -- state ----------------------------------------------------------------------------------

    def state(self):
        try:
            with open(os.path.join(self.root, STATE_FILE), encoding="utf-8") as handle:
                state = json.load(handle)
        except FileNotFoundError:
            return None
        assert state["active"] in SLOTS, state
        return state

    def _save(self, state):
        state["history"] = state.get("history", [])[-MAX_HISTORY:]
        path = os.path.join(self.root, STATE_FILE)
        partial = path + ".partial"
        # 0644 whatever the process's umask: the flashing tool's manifest records it (tools/flash.py verify)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, STATE_MODE)
        os.fchmod(descriptor, STATE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(state, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
        descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def slot_dir(self, name):
        return os.path.join(self.root, name)

    def active_dir(self):
        return self.slot_dir(self.state()["active"])

    # -- changes --------------------------------------------------------------------------------

    def first_install(self, bundle, kind, keys):
        """The factory install (tools/flash.py): into slot a, confirmed at once."""
        if self.state() is not None:
            raise bundles.BundleRefused("installed", "已安装固件，请用升级", "firmware is installed already: update it")
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        manifest = bundles.unpack_bundle(bundle, kind, None, keys, self._emptied("a"))
        self._save({"active": "a", "version": manifest["version"], "kind": kind, "trial": None,
                    "history": [{"at_ms": _now_ms(), "event": "installed", "version": manifest["version"]}]})
        return manifest

    def install(self, bundle, keys, trial_s=DEFAULT_TRIAL_S):
        """Unpack a newer bundle into the inactive slot and make it active on trial."""
        state = self.state()
        if state is None:
            raise bundles.BundleRefused("not_installed", "尚未安装固件", "no firmware installed yet")
        if state["trial"] is not None:
            raise bundles.BundleRefused("on_trial", "上一次升级仍在试运行", "the last update is still on trial")
        target = "b" if state["active"] == "a" else "a"
        manifest = bundles.unpack_bundle(bundle, state["kind"], state["version"], keys, self._emptied(target))
        now_ms = _now_ms()
        state["trial"] = {"slot": target, "version": manifest["version"], "previous": state["active"],
                          "previous_version": state["version"], "trial_s": trial_s, "since_ms": None,
                          "deadline_ms": None}
        state["active"], state["version"] = target, manifest["version"]
        state["history"].append({"at_ms": now_ms, "event": "trial", "version": manifest["version"]})
        self._save(state)
        return manifest

    def start_trial(self):
        """The trial's clock starts when the new version first starts, not at install: a sync by the
        old version in between proves nothing, and a supervisor restarted mid-trial keeps the deadline."""
        state = self.state()
        trial = state["trial"]
        if trial is None or trial["since_ms"] is not None:
            return
        trial["since_ms"] = _now_ms()
        trial["deadline_ms"] = trial["since_ms"] + trial["trial_s"] * 1000
        self._save(state)

    def confirm(self):
        state = self.state()
        if state["trial"] is None:
            return False
        state["trial"] = None
        state["history"].append({"at_ms": _now_ms(), "event": "confirmed", "version": state["version"]})
        self._save(state)
        return True

    def rollback(self, reason):
        """Back to the slot the trial came from; the failed slot stays for a look until the next install."""
        state = self.state()
        trial = state["trial"]
        if trial is None:
            return False
        state["active"], state["version"], state["trial"] = trial["previous"], trial["previous_version"], None
        state["history"].append({"at_ms": _now_ms(), "event": "rolled_back", "version": trial["version"],
                                 "reason": reason})
        self._save(state)
        return True

    def _emptied(self, name):
        path = self.slot_dir(name)
        shutil.rmtree(path, ignore_errors=True)
        return path


# -- the supervisor ------------------------------------------------------------------------------

class Heartbeats:
    """The supervisor's end of sd_notify(3) for the terminal it runs: a datagram socket in the
    abstract namespace, with SO_PASSCRED so the kernel names each sender. `watch(pid)` starts the
    clock for a new child; `silent_s()` is how long that child has not sent WATCHDOG=1."""

    MAX_DATAGRAMS = 64               # read per poll: a flood cannot hold the watch loop

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = "ykt-slots-%d-%s" % (os.getpid(), secrets.token_hex(6))
        self.sock.bind("\0" + name)
        self.sock.setblocking(False)
        self.address = "@" + name
        self.pid = None
        self.last_s = clock()

    def environ(self, hang_s):
        """What the child needs to ping us (WATCHDOG_PID is left out: the child's pid is not known
        before it starts, and systemd's own value names the supervisor)."""
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(int(hang_s * 1000000))}

    def watch(self, pid):
        self.poll()                  # what an earlier child sent is not this one's
        self.pid, self.last_s = pid, self.clock()

    def poll(self):
        for _ in range(self.MAX_DATAGRAMS):
            try:
                data, ancillary, _flags, _address = self.sock.recvmsg(1024, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return
            if _sender_pid(ancillary) == self.pid and b"WATCHDOG=1" in data.split(b"\n"):
                self.last_s = self.clock()

    def silent_s(self):
        self.poll()
        return self.clock() - self.last_s

    def close(self):
        self.sock.close()


def _sender_pid(ancillary):
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            return struct.unpack("iII", data[:12])[0]
    return None


def synced_since(data_dir, since_ms):
    try:
        return os.stat(os.path.join(data_dir, SYNC_MARK)).st_mtime * 1000 >= since_ms
    except FileNotFoundError:
        return False


def supervise(slots, data_dir, command, stop, poll_s=0.2, log=print, trial_s=DEFAULT_TRIAL_S,
              hang_s=DEFAULT_HANG_S):
    """Run `python -m ykt <command>` from the active slot until `stop()` is true (see the module
    docstring); returns the last exit code."""
    heartbeats = Heartbeats()
    try:
        return _supervise(slots, data_dir, command, stop, poll_s, log, trial_s, hang_s, heartbeats)
    finally:
        heartbeats.close()


def _supervise(slots, data_dir, command, stop, poll_s, log, trial_s, hang_s, heartbeats):
    restarts = 0
    code = 0
    notifier = systemd_notify.Notifier()     # READY/WATCHDOG for the Type=notify unit (tools/flash.py)
    while not stop():
        slots.start_trial()
        state = slots.state()
        env = dict(os.environ, PYTHONPATH=slots.active_dir(), **{
            SYNC_MARK_ENV: os.path.join(data_dir, SYNC_MARK), SLOTS_ROOT_ENV: slots.root,
            TRIAL_ENV: str(trial_s),
            FIRMWARE_VERSION_ENV: "ykt-%s/%s" % (state["kind"], state["version"])})
        env.pop("WATCHDOG_PID", None)
        env.update(heartbeats.environ(hang_s))
        log("启动固件 %s（槽 %s）/ starting firmware %s from slot %s" % (state["version"], state["active"],
                                                                   state["version"], state["active"]))
        child = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "ykt", *command],
                                 cwd=slots.active_dir(), env=env)
        heartbeats.watch(child.pid)
        notifier.ready("firmware %s, slot %s" % (state["version"], state["active"]))
        code, failure, on_trial = _watch(slots, data_dir, child, stop, poll_s, state["active"], notifier.alive,
                                         heartbeats, hang_s)
        if failure is not None and on_trial:
            log("固件 %s 试运行失败（%s），回退 / the trial of %s failed (%s): rolling back"
                % (state["version"], failure, state["version"], failure))
            slots.rollback(failure)
            restarts = 0
            continue
        if stop():
            break
        if slots.state()["active"] != state["active"]:
            continue        # it installed an update and left for it: the new version starts at once
        pause = RESTART_PAUSES_S[min(restarts, len(RESTART_PAUSES_S) - 1)]
        if failure is not None:
            log("固件无响应（%s），已终止，%d 秒后重启 / firmware %s; stopped, restarting in %d s"
                % (_HANG_ZH % hang_s, pause, failure, pause))
        else:
            log("固件退出（%s），%d 秒后重启 / firmware exited (%s); restarting in %d s" % (code, pause, code, pause))
        restarts += 1
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not stop():
            notifier.alive()
            time.sleep(poll_s)
    return code


_HANG_ZH = "%d 秒无心跳"
_HANG = "stopped responding for %d s"


def _watch(slots, data_dir, child, stop, poll_s, running_slot, alive=lambda: None, heartbeats=None,
           hang_s=DEFAULT_HANG_S):
    """(exit code, failure or None, on trial) of one run of the child, started from `running_slot`.
    The failure is why a trial failed (exited with an error, no sync in time) or that the child
    stopped responding, on trial or not. A trial is this run's only when it is of that slot and has
    started: an update the running version installed itself is on trial from the next start."""
    while True:
        alive()
        trial = slots.state()["trial"]
        if trial is not None and (trial["slot"] != running_slot or trial["since_ms"] is None):
            trial = None
        if trial is not None and synced_since(data_dir, trial["since_ms"]):
            slots.confirm()
            trial = None
        code = child.poll()
        if code is not None:
            if trial is not None and code != 0:
                return code, "exited with %d" % code, True
            return code, None, False
        if trial is not None and _now_ms() > trial["deadline_ms"]:
            _stop_child(child)
            return child.returncode, "no sync within the trial", True
        if heartbeats is not None and heartbeats.silent_s() > hang_s:
            _abort_child(child)
            return child.returncode, _HANG % hang_s, trial is not None
        if stop():
            _stop_child(child)
            return child.returncode, None, False
        time.sleep(poll_s)


def _stop_child(child):
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _abort_child(child):
    """A hung child: SIGABRT (faulthandler writes its threads' stacks), then SIGKILL if it lingers."""
    child.send_signal(signal.SIGABRT)
    try:
        child.wait(timeout=ABORT_WAIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _seconds(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError("秒数须为 1 到 %d 的整数 / seconds: a whole number from 1 to %d, not %r"
                                         % (MAX_SECONDS, MAX_SECONDS, text))
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m firmware.apps.slots",
        description="从当前固件槽启动终端，新版本试运行失败时自动回退 / run the terminal from the active firmware "
                    "slot; roll a new version back when its trial fails",
        epilog="示例 / example:  python -m firmware.apps.slots --root /opt/ykt --data-dir /var/lib/ykt -- terminal "
               "--provision /etc/ykt/terminal.json --data-dir /var/lib/ykt --serve --face 8800")
    parser.add_argument("--root", required=True, help="the slots' directory")
    parser.add_argument("--data-dir", required=True, help="the terminal's data directory (its journal)")
    parser.add_argument("--trial-s", type=_seconds, default=DEFAULT_TRIAL_S,
                        help="how long an update taken through sync has to reach the server (default %d)"
                             % DEFAULT_TRIAL_S)
    parser.add_argument("--hang-s", type=_seconds, default=DEFAULT_HANG_S,
                        help="how long the terminal may go without a heartbeat before it is stopped as hung "
                             "and restarted (default %d)" % DEFAULT_HANG_S)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the ykt command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    slots = Slots(args.root)
    if slots.state() is None:
        print("尚未安装固件：%s / no firmware installed in %s" % (args.root, args.root), file=sys.stderr)
        return 4
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    code = supervise(slots, args.data_dir, command, lambda: bool(stopping),
                     log=lambda text: print(text, file=sys.stderr, flush=True), trial_s=args.trial_s,
                     hang_s=args.hang_s)
    if stopping and code == -signal.SIGTERM:
        return 0            # asked to stop, and the terminal stopped (before its own handler was set)
    return code if code >= 0 else 128 - code         # killed by a signal: the shell's convention


if __name__ == "__main__":
    sys.exit(main())
